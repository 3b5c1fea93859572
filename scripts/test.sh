#!/usr/bin/env bash
# Run every check keyd has: go vet, the tests (with the race detector), a short
# fuzzing run of every fuzz target, and the quick benchmark.
#
#   ./scripts/test.sh                 everything
#   ./scripts/test.sh ./internal/...  vet, test and fuzz only these packages (no benchmark)
#
# Meant for a fresh Debian 12 machine as root (or with sudo): it installs what
# is missing (a Go toolchain, linked into /usr/local/bin; a C compiler for
# -race; PostgreSQL; Node.js and npm for the widget's JavaScript tests;
# Chromium) and starts PostgreSQL.
# When everything is there already it just runs the checks.
#
# Environment:
#   KEYD_TEST_DATABASE_URL  a PostgreSQL server for the tests (a user that may
#                           CREATE DATABASE); if unset, PostgreSQL on
#                           127.0.0.1:5432 is installed/started and used
#   KEYD_BROWSER_TESTS=0    skip installing Chromium for the browser tests
#   KEYD_FUZZTIME           budget per fuzz target (default 50000x: executions,
#                           not seconds; a duration such as 10s hits Go 1.26's
#                           fuzzing race at the deadline, go.dev/issue/75804,
#                           which fails a run with no input found; 0 skips;
#                           FuzzAcceptedCommands runs at most 20000x)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$KEYD_ROOT"

PKGS=("$@")
[ ${#PKGS[@]} -gt 0 ] || PKGS=(./...)
FUZZTIME="${KEYD_FUZZTIME:-50000x}"
SUMMARY=()
T0=$SECONDS

print_summary() {
	printf '\n\033[1mSummary (%ss)\033[0m\n' "$((SECONDS - T0))" >&2
	printf '  %s\n' "${SUMMARY[@]}" >&2
}

# step NAME CMD...: run CMD, note the result in the summary, stop on failure.
step() {
	local name="$1" t=$SECONDS rc=0
	shift
	log "$name"
	"$@" || rc=$?
	if [ "$rc" -ne 0 ]; then
		SUMMARY+=("FAIL  $name (exit $rc)")
		print_summary
		exit "$rc"
	fi
	SUMMARY+=("ok    $name ($((SECONDS - t))s)")
}

# ---- set up ----
ensure_go
ensure_cc
if [ -n "${KEYD_TEST_DATABASE_URL:-}" ]; then
	log "PostgreSQL: KEYD_TEST_DATABASE_URL is set, using it"
else
	ensure_postgres
	export KEYD_TEST_DATABASE_URL="$KEYD_PG_ADMIN_URL"
fi
ensure_node
if [ "${KEYD_BROWSER_TESTS:-1}" != 0 ]; then
	ensure_chromium
fi

# ---- checks ----
# The first run downloads the modules and compiles everything (nats-server
# included) for a few silent minutes.
if [ ! -d "$(go env GOMODCACHE)/github.com/nats-io" ]; then
	log "First run: go vet downloads the modules and compiles everything, a few minutes without output"
fi
step "go vet ${PKGS[*]}" go vet "${PKGS[@]}"
step "go test -race ${PKGS[*]}" go test -race -count=1 -timeout 30m "${PKGS[@]}"

# Every `func FuzzXxx` in the selected packages' tests, fuzzed for FUZZTIME
# each (go test can fuzz only one target of one package at a time).
# Targets whose executions are slow get at most this many executions:
# FuzzAcceptedCommands runs each input through JetStream, the Postgres
# projector and the verifier (about 1-2 ms each).
declare -A FUZZ_MAX=([FuzzAcceptedCommands]=20000)
fuzz_all() {
	local dir rel name budget n=0
	while read -r dir; do
		rel="./${dir#"$KEYD_ROOT"/}"
		[ "$dir" = "$KEYD_ROOT" ] && rel=.
		# shellcheck disable=SC2013 # names are single words
		for name in $(grep -h -o '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
			budget="$FUZZTIME"
			if [[ -n "${FUZZ_MAX[$name]:-}" && "$budget" =~ ^[0-9]+x$ ]] && [ "${budget%x}" -gt "${FUZZ_MAX[$name]}" ]; then
				budget="${FUZZ_MAX[$name]}x"
			fi
			log "fuzz $name in $rel for $budget"
			go test -run '^$' -fuzz "^${name}\$" -fuzztime "$budget" -timeout 10m "$rel" || return 1
			n=$((n + 1))
		done
	done < <(go list -f '{{.Dir}}' "${PKGS[@]}")
	log "fuzzed $n targets"
}
if [ "$FUZZTIME" != 0 ] && [ "$FUZZTIME" != 0s ] && [ "$FUZZTIME" != 0x ]; then
	step "fuzz (${FUZZTIME} per target)" fuzz_all
fi

# The quick benchmark, once `keyd bench` exists.
if [ "${PKGS[*]}" = ./... ] && [ -d cmd/keyd ] && grep -rqs --include='*.go' --exclude='*_test.go' '"bench"' cmd/keyd; then
	step "keyd bench --quick" go run ./cmd/keyd bench --quick
else
	SUMMARY+=("skip  keyd bench --quick (no bench subcommand in cmd/keyd, or packages given)")
fi

print_summary
log "all checks passed"

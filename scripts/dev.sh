#!/usr/bin/env bash
# Run keyd locally: `keyd dev` (embedded NATS with JetStream, HTTP API, widget
# demo) against PostgreSQL on this machine.
#
#   ./scripts/dev.sh [keyd dev flags...]      for example: ./scripts/dev.sh --http 127.0.0.1:9090
#
# On a fresh Debian 12 machine (as root, or with sudo) it installs a Go
# toolchain (linked into /usr/local/bin, so `go` works in new shells), curl
# and PostgreSQL first. If KEYD_DATABASE_URL is set, that database
# is used and PostgreSQL is left alone.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$KEYD_ROOT"

ensure_go
ensure_cmd curl curl # the banner's and README's examples use it
if [ -z "${KEYD_DATABASE_URL:-}" ]; then
	ensure_postgres
	# keyd dev creates the database if it is missing.
	export KEYD_DATABASE_URL="postgres://postgres@127.0.0.1:${KEYD_PG_PORT}/keyd?sslmode=disable"
fi
log "go run ./cmd/keyd dev $* (the first time it compiles keyd for about a minute before printing anything)"
exec go run ./cmd/keyd dev "$@"

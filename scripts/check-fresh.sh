#!/usr/bin/env bash
# Proves the fresh-machine path in one command: clones this repository's HEAD into an empty
# folder, so no build, no cache and nothing ignored comes along, and runs `make demo` there
# (scripts/setup.sh with an empty .cache: every PostgreSQL build, the client tools, the test
# packages fetched from their pinned registries, then the build and the demo). With --test it
# then runs `make test` in the same clone. Prints the wall time of each step.
#
#   scripts/check-fresh.sh [--test] [--keep]
#
# What it cannot reset: Debian packages already installed stay installed (setup only adds the
# missing ones and says which it added), and the unprivileged `pgshift` OS user stays.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run_test=0 keep=0
for a in "$@"; do
  case "$a" in
    --test) run_test=1 ;;
    --keep) keep=1 ;;
    *) echo "usage: scripts/check-fresh.sh [--test] [--keep]" >&2; exit 2 ;;
  esac
done
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]; then
  echo "check-fresh: uncommitted changes are not part of the check (it clones HEAD)" >&2
fi

# Below /var/tmp, not /tmp: servers run as the unprivileged user and must reach the clone.
work="$(mktemp -d /var/tmp/pgshift-fresh.XXXXXX)"
chmod 755 "$work"
cleanup() {
  if [ -x "$work/pgshift/build/pgshift" ]; then
    PGSHIFT_LAB_DIR="$work/pgshift/.cache/demo-lab" "$work/pgshift/build/pgshift" lab down >/dev/null 2>&1 || true
  fi
  if [ "$keep" -eq 0 ]; then rm -rf "$work"; else echo "check-fresh: kept $work" >&2; fi
}
trap cleanup EXIT

git clone --quiet --no-hardlinks "$ROOT" "$work/pgshift"
cd "$work/pgshift"
echo "check-fresh: clone of $(git rev-parse --short HEAD) in $work/pgshift, empty .cache" >&2
# Nothing of the caller's environment points back at the old checkout.
unset PGSHIFT_CACHE PGSHIFT_HOME PGSHIFT_LAB_DIR PGSHIFT_PG_BIN PGSHIFT_BIN

timed() {
  local what="$1"; shift
  local t0=$SECONDS
  "$@"
  echo "check-fresh: $what passed in $((SECONDS - t0)) s" >&2
}
timed "make demo" make demo
if [ "$run_test" -eq 1 ]; then timed "make test" make test; fi

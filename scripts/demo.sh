#!/usr/bin/env bash
# The pgshift demo, the whole story on one machine: a PostgreSQL 15 "production" database with
# a small shop application, PgBouncer in front of it, the load client writing and reading
# through PgBouncer, and `pgshift upgrade --cutover auto` moving it to PostgreSQL 18 while the
# client runs. Ends with the upgrade report, the load verdict (every acknowledged write
# checked on the new server) and an HTML report of the whole run, whose path it prints last.
#
# DEMO_SIZE (default 1GB; e.g. 200MB, 4GB) sizes the shop's order history, so that the copy
# takes tens of seconds; a batch job writes half of that again while pgshift copies, so
# the target starts catching up behind and the lag visibly drains ("ready in ~N s").
# DEMO_RATE: the load client's operations per second (default 500). DEMO_OUT: where the state,
# the ledger and the reports go (default .cache/demo).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGSHIFT="${PGSHIFT_BIN:-$ROOT/build/pgshift}"
export PGSHIFT_LAB_DIR="${PGSHIFT_LAB_DIR:-$ROOT/.cache/demo-lab}"
OUT="${DEMO_OUT:-$ROOT/.cache/demo}"
RATE="${DEMO_RATE:-500}"
SIZE="${DEMO_SIZE:-1GB}"
PSQL="$ROOT/.cache/pgclient/bin/psql"
[ -x "$PSQL" ] || PSQL=psql

# DEMO_SIZE in bytes: a number with an optional kB/MB/GB suffix.
size_bytes() {
  local v="${1^^}" n unit
  n="${v%%[!0-9]*}"
  unit="${v#"$n"}"
  [ -n "$n" ] || { echo "DEMO_SIZE must be a size such as 200MB or 2GB, not '$1'" >&2; exit 2; }
  case "$unit" in
    ""|B) echo "$n" ;;
    K|KB) echo $((n * 1024)) ;;
    M|MB) echo $((n * 1024 * 1024)) ;;
    G|GB) echo $((n * 1024 * 1024 * 1024)) ;;
    *) echo "DEMO_SIZE must be a size such as 200MB or 2GB, not '$1'" >&2; exit 2 ;;
  esac
}
BYTES="$(size_bytes "$SIZE")"
# One row of shop.order_history takes about 370 bytes on disk (its index included).
ROWS=$((BYTES / 370))
BATCH_ROWS=$((ROWS / 2))

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

rm -rf "$OUT"
mkdir -p "$OUT"

"$PGSHIFT" lab down >/dev/null 2>&1 || true
for n in demo-bouncer demo-src demo-dst; do "$PGSHIFT" lab destroy "$n" >/dev/null 2>&1 || true; done

step "Source: PostgreSQL 15 (pgshift lab)"
SRC="$("$PGSHIFT" lab start demo-src --version 15 | tail -n1)"
echo "$SRC"
if [ "$("$PSQL" -X -At -d "$SRC" -c "SELECT to_regclass('shop.orders') IS NOT NULL")" != "t" ]; then
  step "Loading the sample application schema and data"
  "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$SRC" -f "$ROOT/scripts/demo/app-schema.sql"
fi
HAVE="$("$PSQL" -X -At -d "$SRC" -c "SELECT coalesce((SELECT count(*) FROM shop.order_history), -1)" 2>/dev/null || echo -1)"
if [ "$HAVE" != "$ROWS" ]; then
  step "Order history: $ROWS rows (DEMO_SIZE=$SIZE)"
  start=$(date +%s)
  "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$SRC" <<SQL
DROP TABLE IF EXISTS shop.order_history;
CREATE TABLE shop.order_history (id bigint PRIMARY KEY, placed_at timestamptz NOT NULL,
                                 customer_id int NOT NULL, total_cents bigint NOT NULL, note text NOT NULL);
INSERT INTO shop.order_history
  SELECT g, now() - g * interval '1 second', g % 5000, g % 100000, repeat(md5(g::text), 8)
  FROM generate_series(1, $ROWS) g;
VACUUM ANALYZE shop.order_history;
SQL
  echo "loaded in $(( $(date +%s) - start )) s"
fi
"$PSQL" -X -d "$SRC" -c "SELECT 'shop.' || relname AS table, n_live_tup AS rows, pg_size_pretty(pg_total_relation_size(relid)) AS size FROM pg_stat_user_tables WHERE schemaname = 'shop' ORDER BY 1"

step "PgBouncer in front of the source (transaction pooling)"
APP="$("$PGSHIFT" lab router demo-bouncer --backend demo-src --kind pgbouncer | tail -n1)"
echo "application DSN: $APP"

step "Target: PostgreSQL 18 (pgshift lab), empty"
"$PGSHIFT" lab destroy demo-dst >/dev/null 2>&1 || true
DST="$("$PGSHIFT" lab start demo-dst --version 18 | tail -n1)"
echo "$DST"
ADMIN="$("$PGSHIFT" lab list --json | python3 -c 'import json,sys; print([i for i in json.load(sys.stdin) if i["name"]=="demo-bouncer"][0]["admin_dsn"])')"
INI="$PGSHIFT_LAB_DIR/demo-bouncer/pgbouncer.ini"

step "Load client: $RATE ops/s through PgBouncer, in the background until the upgrade is done"
"$PGSHIFT" load run --dsn "$APP" --rate "$RATE" --duration 7200 --ledger "$OUT/load.ledger" \
  >"$OUT/load.out" 2>"$OUT/load.err" &
LOAD_PID=$!
trap 'kill "$LOAD_PID" 2>/dev/null || true' EXIT
sleep 3

step "pgshift check (preflight, changes nothing)"
"$PGSHIFT" check --source "$SRC" --target "$DST"

# The nightly batch: once pgshift copies, archive half as many rows again. pgshift's copy
# reads one snapshot, so these changes wait in the replication slot and the target works
# through them while catching up.
(
  for _ in $(seq 1 600); do
    phase="$("$PGSHIFT" status --state "$OUT/state" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["phase"])' 2>/dev/null || true)"
    [ "$phase" = "InitialCopy" ] && break
    sleep 0.5
  done
  echo "batch job: archiving $BATCH_ROWS more orders on the source while pgshift copies" >&2
  "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$SRC" -c "INSERT INTO shop.order_history SELECT g, now(), g % 5000, g % 100000, repeat(md5(g::text), 8) FROM generate_series($ROWS + 1, $ROWS + $BATCH_ROWS) g"
  echo "batch job: done" >&2
) &
BATCH_PID=$!

step "pgshift upgrade --cutover auto: 15 -> 18 while the client writes"
"$PGSHIFT" upgrade --source "$SRC" --target "$DST" --state "$OUT/state" \
  --router pgbouncer --router-admin "$ADMIN" --router-config "$INI" --report "$OUT/report.json"
wait "$BATCH_PID" || true

step "Upgrade report"
"$PGSHIFT" status --state "$OUT/state"
echo "JSON report: $OUT/report.json"

sleep 3  # the clients go on writing, now on PostgreSQL 18
kill -TERM "$LOAD_PID"
wait "$LOAD_PID"
trap - EXIT
cat "$OUT/load.out"

step "Verdict: every acknowledged write on the new server (PostgreSQL 18)"
"$PSQL" -X -At -d "$APP" -c "SELECT 'clients now reach: ' || version()"
"$PGSHIFT" load verify --dsn "$DST" --ledger "$OUT/load.ledger"
echo "per-second client series: $OUT/load.ledger.series.csv"

step "HTML report: phases, lag, copy progress, verification, what the clients felt"
"$PGSHIFT" report --state "$OUT/state" --load "$OUT/load.ledger" -o "$OUT/report.html"
echo
echo "Next: roll back with   $PGSHIFT rollback --state $OUT/state"
echo "   or keep the target: $PGSHIFT finish --state $OUT/state"
echo "The lab keeps running; stop it with: PGSHIFT_LAB_DIR=$PGSHIFT_LAB_DIR $PGSHIFT lab down"
echo
echo "Report (open it in a browser; it loads nothing from the network): $OUT/report.html"

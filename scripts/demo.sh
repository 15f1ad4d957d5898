#!/usr/bin/env bash
# The pgshift demo, the whole story on one machine: a PostgreSQL 15 "production" database with
# a small shop application, PgBouncer in front of it, the load client writing and reading
# through PgBouncer, and `pgshift upgrade --cutover auto` moving it to PostgreSQL 18 while the
# client runs. Ends with the upgrade report, the load verdict (every acknowledged write
# checked on the new server) and an HTML report of the whole run, whose path it prints last.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGSHIFT="${PGSHIFT_BIN:-$ROOT/build/pgshift}"
export PGSHIFT_LAB_DIR="${PGSHIFT_LAB_DIR:-$ROOT/.cache/demo-lab}"
OUT="$ROOT/.cache/demo"
RATE="${DEMO_RATE:-500}"
DURATION="${DEMO_DURATION:-25}"
PSQL="$ROOT/.cache/pgclient/bin/psql"
[ -x "$PSQL" ] || PSQL=psql

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
"$PSQL" -X -d "$SRC" -c "SELECT 'shop.' || relname AS table, n_live_tup AS rows FROM pg_stat_user_tables WHERE schemaname = 'shop' ORDER BY 1"

step "PgBouncer in front of the source (transaction pooling)"
APP="$("$PGSHIFT" lab router demo-bouncer --backend demo-src --kind pgbouncer | tail -n1)"
echo "application DSN: $APP"

step "Target: PostgreSQL 18 (pgshift lab), empty"
"$PGSHIFT" lab destroy demo-dst >/dev/null 2>&1 || true
DST="$("$PGSHIFT" lab start demo-dst --version 18 | tail -n1)"
echo "$DST"
ADMIN="$("$PGSHIFT" lab list --json | python3 -c 'import json,sys; print([i for i in json.load(sys.stdin) if i["name"]=="demo-bouncer"][0]["admin_dsn"])')"
INI="$PGSHIFT_LAB_DIR/demo-bouncer/pgbouncer.ini"

step "Load client: $RATE ops/s through PgBouncer for ${DURATION}s, in the background"
"$PGSHIFT" load run --dsn "$APP" --rate "$RATE" --duration "$DURATION" --ledger "$OUT/load.ledger" \
  >"$OUT/load.out" 2>"$OUT/load.err" &
LOAD_PID=$!
sleep 3

step "pgshift check (preflight, changes nothing)"
"$PGSHIFT" check --source "$SRC" --target "$DST"

step "pgshift upgrade --cutover auto: 15 -> 18 while the client writes"
"$PGSHIFT" upgrade --source "$SRC" --target "$DST" --state "$OUT/state" \
  --router pgbouncer --router-admin "$ADMIN" --router-config "$INI" --report "$OUT/report.json"

step "Upgrade report"
"$PGSHIFT" status --state "$OUT/state"
echo "JSON report: $OUT/report.json"

echo "waiting for the load client to finish..."
wait "$LOAD_PID"
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

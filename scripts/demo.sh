#!/usr/bin/env bash
# The pgshift demo: a PostgreSQL 15 "production" database with a small shop application,
# PgBouncer in front of it, and the load client writing and reading through PgBouncer. Ends
# with the load verdict: every acknowledged write checked on the server.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGSHIFT="${PGSHIFT_BIN:-$ROOT/build/pgshift}"
export PGSHIFT_LAB_DIR="${PGSHIFT_LAB_DIR:-$ROOT/.cache/demo-lab}"
OUT="$ROOT/.cache/demo"
RATE="${DEMO_RATE:-500}"
DURATION="${DEMO_DURATION:-20}"
PSQL="$ROOT/.cache/pgclient/bin/psql"
[ -x "$PSQL" ] || PSQL=psql

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

rm -rf "$OUT"
mkdir -p "$OUT"

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

step "Load client: $RATE ops/s for ${DURATION}s through PgBouncer"
"$PGSHIFT" load run --dsn "$APP" --rate "$RATE" --duration "$DURATION" --ledger "$OUT/load.ledger"

step "Verdict: every acknowledged write on the server"
"$PGSHIFT" load verify --dsn "$SRC" --ledger "$OUT/load.ledger"
echo "per-second series: $OUT/load.ledger.series.csv"
echo "the lab keeps running; stop it with: PGSHIFT_LAB_DIR=$PGSHIFT_LAB_DIR $PGSHIFT lab down"

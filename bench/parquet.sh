#!/usr/bin/env bash
# PostgreSQL → Parquet on local disk: `ferry export … --format parquet` against connectorx + pyarrow
# (`pip install connectorx pyarrow`), on the same table in the same run; rows/s and peak memory of
# each side (Ferry's server VmHWM growth, Python's max RSS). ROWS sizes the table (default 5,000,000).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ferry-target}"
ROWS="${ROWS:-5000000}"
PG_ADMIN="${FERRY_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}"
PG="${PG_ADMIN%/*}/ferry_bench_parquet"
PORT="${BENCH_PORT:-18450}"

cargo build --release --quiet --bin ferry
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
server_pid=
cleanup() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
rate() { echo "$ROWS / $1" | bc -l | xargs printf '%.0f'; }

echo "preparing $ROWS rows" >&2
psql "$PG_ADMIN" -q -c "drop database if exists ferry_bench_parquet" -c "create database ferry_bench_parquet" >/dev/null
psql "$PG" -q -v ON_ERROR_STOP=1 -c "create table orders as
  select g::bigint as order_id, (g * 7919 % 5000)::bigint as customer_id, 'Product ' || (g % 50) as product_name,
         (g % 200) + 0.25::float8 as price, ((g % 200) + 0.25::float8) * (1 + g % 5) as total_amount,
         date '2026-01-01' + (g % 300)::int as created_date
  from generate_series(1::bigint, $ROWS) g" -c "vacuum analyze orders" >/dev/null

t0=$(now)
/usr/bin/time -f %M -o "$work/cx.rss" python3 - "$PG" "$work/cx.parquet" <<'PY'
import sys, connectorx as cx, pyarrow.parquet as pq
table = cx.read_sql(sys.argv[1], "select * from orders", return_type="arrow")
pq.write_table(table, sys.argv[2], compression="zstd")
PY
t1=$(now); cx_secs=$(secs "$t0" "$t1"); cx_rss=$(cat "$work/cx.rss")

"$bin/ferry" serve --listen "127.0.0.1:$PORT" --data-dir "$work/data" 2>"$work/serve.log" &
server_pid=$!
export FERRY_SERVER="http://127.0.0.1:$PORT"
for _ in $(seq 1 100); do "$bin/ferry" instance list >/dev/null 2>&1 && break; sleep 0.1; done
"$bin/ferry" instance add src "$PG" >/dev/null
before=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")
t0=$(now); "$bin/ferry" export src orders "$work/ferry.parquet" --format parquet >/dev/null; t1=$(now)
ferry_secs=$(secs "$t0" "$t1")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$server_pid/status")
ratio=$(echo "$cx_secs / $ferry_secs" | bc -l | xargs printf '%.2f')
mem=$(echo "($hwm - $before) / $cx_rss" | bc -l | xargs printf '%.2f')

cat <<TABLE
## PostgreSQL → Parquet ($(date -u +%Y-%m-%d), $(nproc) cores, $ROWS rows, zstd)

| side | rows/s | peak memory |
|---|---|---|
| connectorx + pyarrow | $(rate "$cx_secs") ($(printf '%.1f' "$cx_secs") s) | $((cx_rss / 1024)) MB |
| ferry export | $(rate "$ferry_secs") ($(printf '%.1f' "$ferry_secs") s) | server +$(( (hwm - before) / 1024 )) MB (peak $((hwm / 1024)) MB) |
| ratio (Ferry / connectorx) | $ratio× speed | $mem× memory (goal ≥ 1× speed at ≤ 0.5× memory) |
TABLE

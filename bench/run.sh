#!/usr/bin/env bash
# Ferry's benchmarks for the console, side by side with the tool a user would otherwise pick,
# on the same data in the same run:
#   1. full export of an orders-like table to CSV: `ferry sql … --output csv` vs psql's \copy;
#   2. SELECT 1 in a Ferry SQL window vs on a direct connection (p50/p99 added latency).
# Prints a Markdown table; nothing here asserts on time. ROWS (default 5,000,000) sizes the table.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ferry-target}"
ROWS="${ROWS:-5000000}"
PG_ADMIN="${FERRY_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}"
PG="${PG_ADMIN%/*}/ferry_bench"
PORT="${BENCH_PORT:-18420}"

cargo build --release --quiet --bin ferry --bin ferry-bench
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
server_pid=
cleanup() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

echo "preparing $ROWS rows in ferry_bench.orders" >&2
psql "$PG_ADMIN" -q -c "drop database if exists ferry_bench" -c "create database ferry_bench" >/dev/null
psql "$PG" -q -v ON_ERROR_STOP=1 -c "create table orders as
  select g::bigint as order_id, (g * 7919 % 5000)::bigint as customer_id, 'Product ' || (g % 50) as product_name,
         (g % 200) + 0.25::float8 as price, ((g % 200) + 0.25::float8) * (1 + g % 5) as total_amount,
         date '2026-01-01' + (g % 300)::int as created_date
  from generate_series(1::bigint, $ROWS) g" -c "vacuum analyze orders" >/dev/null

seconds() { local s=$1 e=$2; echo "$e - $s" | bc -l; }
now() { date +%s.%N; }

# 1. CSV export. psql first, then Ferry; both write to a file on the same disk.
t0=$(now)
/usr/bin/time -f %M -o "$work/psql.rss" psql "$PG" -q -c "\copy (select * from orders) to stdout csv header" > "$work/psql.csv"
t1=$(now)
psql_secs=$(seconds "$t0" "$t1")
psql_rss_kb=$(cat "$work/psql.rss")

"$bin/ferry" serve --listen "127.0.0.1:$PORT" --data-dir "$work/data" 2>"$work/serve.log" &
server_pid=$!
export FERRY_SERVER="http://127.0.0.1:$PORT"
for _ in $(seq 1 100); do "$bin/ferry" instance list >/dev/null 2>&1 && break; sleep 0.1; done
"$bin/ferry" instance add bench "$PG" >/dev/null
rss_before_kb=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")
t0=$(now)
/usr/bin/time -f %M -o "$work/cli.rss" "$bin/ferry" sql bench "select * from orders" --output csv > "$work/ferry.csv"
t1=$(now)
ferry_secs=$(seconds "$t0" "$t1")
server_hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$server_pid/status")
cli_rss_kb=$(cat "$work/cli.rss")
psql_lines=$(wc -l < "$work/psql.csv")
ferry_lines=$(wc -l < "$work/ferry.csv")
if [[ "$psql_lines" != "$ferry_lines" ]]; then
  echo "row counts differ: psql $psql_lines lines, ferry $ferry_lines lines" >&2
  exit 1
fi

# 2. Latency of SELECT 1.
latency=$("$bin/ferry-bench" latency "$FERRY_SERVER" bench "$PG" "${ROUNDS:-2000}")
get() { awk -v k="$1" '$1 == k {print $2}' <<<"$latency"; }

rows_per_s() { echo "$ROWS / $1" | bc -l | xargs printf '%.0f'; }
psql_rate=$(rows_per_s "$psql_secs")
ferry_rate=$(rows_per_s "$ferry_secs")
ratio=$(echo "$ferry_rate / $psql_rate" | bc -l | xargs printf '%.2f')

cat <<TABLE
## Console benchmarks ($(date -u +%Y-%m-%d), $(nproc) cores, $ROWS rows)

| benchmark | anchor | Ferry | ratio (Ferry/anchor) | goal |
|---|---|---|---|---|
| CSV export, rows/s | psql \\copy: $psql_rate ($(printf '%.1f' "$psql_secs") s) | ferry sql --output csv: $ferry_rate ($(printf '%.1f' "$ferry_secs") s) | $ratio | ≥ 0.8 |
| CSV export, peak RSS | psql: $((psql_rss_kb / 1024)) MB | server: $((server_hwm_kb / 1024)) MB peak ($((rss_before_kb / 1024)) MB before); CLI: $((cli_rss_kb / 1024)) MB | | server < 200 MB |
| SELECT 1, p50 | direct: $(get direct_p50_ms) ms | SQL window: $(get ferry_p50_ms) ms | +$(get added_p50_ms) ms | ≤ +1 ms |
| SELECT 1, p99 | direct: $(get direct_p99_ms) ms | SQL window: $(get ferry_p99_ms) ms | +$(get added_p99_ms) ms | |
TABLE

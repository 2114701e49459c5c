#!/usr/bin/env bash
# Ferry's benchmarks for the console, side by side with the tool a user would otherwise pick,
# on the same data in the same run:
#   1. full export of an orders-like table to CSV: `ferry sql … --output csv` vs psql's \copy;
#   2. SELECT 1 in a Ferry SQL window vs on a direct connection (p50/p99 added latency).
# Prints a Markdown table; nothing here asserts on time. ROWS (default 5,000,000) sizes the table.
ROWS="${ROWS:-5000000}"
source "$(dirname "$0")/common.sh"
PG=$(pg_database ferry_bench)
make_orders "$PG"

# 1. CSV export. psql first, then Ferry; both write to a file on the same disk.
t0=$(now)
/usr/bin/time -f %M -o "$work/psql.rss" psql "$PG" -q -c "\copy (select * from orders) to stdout csv header" > "$work/psql.csv"
t1=$(now)
psql_secs=$(secs "$t0" "$t1")
psql_rss_kb=$(cat "$work/psql.rss")

start_ferry "${BENCH_PORT:-18420}"
"$bin/ferry" instance add bench "$PG" >/dev/null
rss_before_kb=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")
t0=$(now)
/usr/bin/time -f %M -o "$work/cli.rss" "$bin/ferry" sql bench "select * from orders" --output csv > "$work/ferry.csv"
t1=$(now)
ferry_secs=$(secs "$t0" "$t1")
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

psql_rate=$(rate "$psql_secs")
ferry_rate=$(rate "$ferry_secs")
export_ratio=$(ratio "$ferry_rate" "$psql_rate")

cat <<TABLE
## Console benchmarks ($(date -u +%Y-%m-%d), $(nproc) cores, $ROWS rows)

| benchmark | anchor | Ferry | ratio (Ferry/anchor) | goal |
|---|---|---|---|---|
| CSV export, rows/s | psql \\copy: $psql_rate ($(printf '%.1f' "$psql_secs") s) | ferry sql --output csv: $ferry_rate ($(printf '%.1f' "$ferry_secs") s) | $export_ratio | ≥ 0.8 |
| CSV export, peak RSS | psql: $((psql_rss_kb / 1024)) MB | server: $((server_hwm_kb / 1024)) MB peak ($((rss_before_kb / 1024)) MB before); CLI: $((cli_rss_kb / 1024)) MB | | server < 200 MB |
| SELECT 1, p50 | direct: $(get direct_p50_ms) ms | SQL window: $(get ferry_p50_ms) ms | +$(get added_p50_ms) ms | ≤ +1 ms |
| SELECT 1, p99 | direct: $(get direct_p99_ms) ms | SQL window: $(get ferry_p99_ms) ms | +$(get added_p99_ms) ms | |
TABLE

#!/usr/bin/env bash
# PostgreSQL → Parquet on local disk: `ferry export … --format parquet` against connectorx + pyarrow
# (`pip install connectorx pyarrow`), on the same table in the same run; rows/s and peak memory of
# each side (Ferry's server VmHWM growth, Python's max RSS). ROWS sizes the table (default 5,000,000).
ROWS="${ROWS:-5000000}"
source "$(dirname "$0")/common.sh"
PG=$(pg_database ferry_bench_parquet)
make_orders "$PG"

t0=$(now)
/usr/bin/time -f %M -o "$work/cx.rss" python3 - "$PG" "$work/cx.parquet" <<'PY'
import sys, connectorx as cx, pyarrow.parquet as pq
table = cx.read_sql(sys.argv[1], "select * from orders", return_type="arrow")
pq.write_table(table, sys.argv[2], compression="zstd")
PY
t1=$(now); cx_secs=$(secs "$t0" "$t1"); cx_rss=$(cat "$work/cx.rss")

start_ferry "${BENCH_PORT:-18450}"
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

#!/usr/bin/env bash
# Transfer benchmarks, each beside its anchor on the same data in the same run:
#   PostgreSQL → PostgreSQL: psql COPY TO STDOUT (FORMAT binary) | psql COPY FROM STDIN (FORMAT binary)
#   PostgreSQL → MySQL:      psql \copy … csv, then LOAD DATA LOCAL INFILE
#   MySQL → PostgreSQL:      pgloader (when installed: apt-get install pgloader)
# Ferry runs `ferry copy … --create` (verified, as users run it). ROWS sizes the table (default 1,000,000).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ferry-target}"
ROWS="${ROWS:-1000000}"
PG_ADMIN="${FERRY_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}"
PG_SRC="${PG_ADMIN%/*}/ferry_bench_src"
PG_DST="${PG_ADMIN%/*}/ferry_bench_dst"
MY="mysql -h 127.0.0.1 -u root"
PORT="${BENCH_PORT:-18430}"

cargo build --release --quiet --bin ferry
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
server_pid=
cleanup() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
rate() { echo "$ROWS / $1" | bc -l | xargs printf '%.0f'; }
ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }
columns="order_id bigint, customer_id bigint, product_name text, price double precision, total_amount double precision, created_date date"

echo "preparing $ROWS rows" >&2
for db in ferry_bench_src ferry_bench_dst; do
  psql "$PG_ADMIN" -q -c "drop database if exists $db" -c "create database $db" >/dev/null
done
psql "$PG_SRC" -q -v ON_ERROR_STOP=1 -c "create table orders as
  select g::bigint as order_id, (g * 7919 % 5000)::bigint as customer_id, 'Product ' || (g % 50) as product_name,
         (g % 200) + 0.25::float8 as price, ((g % 200) + 0.25::float8) * (1 + g % 5) as total_amount,
         date '2026-01-01' + (g % 300)::int as created_date
  from generate_series(1::bigint, $ROWS) g" -c "alter table orders add primary key (order_id)" -c "vacuum analyze orders" >/dev/null
$MY -e "drop database if exists ferry_bench_dst; create database ferry_bench_dst; set global local_infile = 1"

"$bin/ferry" serve --listen "127.0.0.1:$PORT" --data-dir "$work/data" 2>"$work/serve.log" &
server_pid=$!
export FERRY_SERVER="http://127.0.0.1:$PORT"
for _ in $(seq 1 100); do "$bin/ferry" instance list >/dev/null 2>&1 && break; sleep 0.1; done
"$bin/ferry" instance add src "$PG_SRC" >/dev/null
"$bin/ferry" instance add pgdst "$PG_DST" >/dev/null
"$bin/ferry" instance add mydst "mysql://root@127.0.0.1:3306/ferry_bench_dst" >/dev/null

# PostgreSQL → PostgreSQL
# Ferry creates its target with the source's primary key; the anchors' tables get one too.
psql "$PG_DST" -q -c "create table anchor ($columns, primary key (order_id))"
t0=$(now)
psql "$PG_SRC" -q -c "COPY orders TO STDOUT (FORMAT binary)" | psql "$PG_DST" -q -c "COPY anchor FROM STDIN (FORMAT binary)"
t1=$(now); pg_anchor=$(secs "$t0" "$t1")
t0=$(now); "$bin/ferry" copy src:orders pgdst:orders --create >/dev/null; t1=$(now); pg_ferry=$(secs "$t0" "$t1")

# PostgreSQL → MySQL
$MY ferry_bench_dst -e "create table anchor (order_id bigint primary key, customer_id bigint, product_name text, price double, total_amount double, created_date date)"
t0=$(now)
psql "$PG_SRC" -q -c "\copy orders to '$work/orders.csv' csv"
$MY --local-infile=1 ferry_bench_dst -e "load data local infile '$work/orders.csv' into table anchor fields terminated by ',' optionally enclosed by '\"'"
t1=$(now); my_anchor=$(secs "$t0" "$t1")
t0=$(now); "$bin/ferry" copy src:orders mydst:orders --create >/dev/null; t1=$(now); my_ferry=$(secs "$t0" "$t1")

# MySQL → PostgreSQL
if command -v pgloader >/dev/null; then
  t0=$(now)
  cat > "$work/load.pgl" <<LOAD
LOAD DATABASE FROM mysql://root@127.0.0.1:3306/ferry_bench_dst INTO $PG_DST
  INCLUDING ONLY TABLE NAMES MATCHING 'orders';
LOAD
  pgloader --quiet "$work/load.pgl" >"$work/pgloader.log" 2>&1 || { cat "$work/pgloader.log" >&2; exit 1; }
  t1=$(now); ml_anchor=$(secs "$t0" "$t1")
  t0=$(now); "$bin/ferry" copy mydst:orders pgdst:from_mysql --create >/dev/null; t1=$(now); ml_ferry=$(secs "$t0" "$t1")
  ml_row="| MySQL → PostgreSQL | pgloader: $(rate "$ml_anchor") rows/s | $(rate "$ml_ferry") rows/s | $(ratio "$ml_anchor" "$ml_ferry") | ≥ 2 |"
else
  ml_row="| MySQL → PostgreSQL | pgloader not installed | | | ≥ 2 |"
fi

cat <<TABLE
## Transfer benchmarks ($(date -u +%Y-%m-%d), $(nproc) cores, $ROWS rows, Ferry verified)

| transfer | anchor | Ferry | ratio (Ferry speed / anchor speed) | goal |
|---|---|---|---|---|
| PostgreSQL → PostgreSQL | binary COPY pipe: $(rate "$pg_anchor") rows/s | $(rate "$pg_ferry") rows/s | $(ratio "$pg_anchor" "$pg_ferry") | ≥ 0.8 |
| PostgreSQL → MySQL | \\copy csv + LOAD DATA LOCAL: $(rate "$my_anchor") rows/s | $(rate "$my_ferry") rows/s | $(ratio "$my_anchor" "$my_ferry") | ≥ 0.8 |
$ml_row
TABLE

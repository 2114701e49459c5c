#!/usr/bin/env bash
# Transfer benchmarks, each beside its anchor on the same data in the same run:
#   PostgreSQL → PostgreSQL: psql COPY TO STDOUT (FORMAT binary) | psql COPY FROM STDIN (FORMAT binary)
#   PostgreSQL → MySQL:      psql \copy … csv, then LOAD DATA LOCAL INFILE
#   MySQL → PostgreSQL:      pgloader (when installed: apt-get install pgloader)
# Ferry runs `ferry copy … --create` (verified, as users run it). ROWS sizes the table (default 1,000,000).
ROWS="${ROWS:-1000000}"
source "$(dirname "$0")/common.sh"
MY="mysql -h 127.0.0.1 -u root"
columns="order_id bigint, customer_id bigint, product_name text, price double precision, total_amount double precision, created_date date"
PG_SRC=$(pg_database ferry_bench_src)
PG_DST=$(pg_database ferry_bench_dst)
make_orders "$PG_SRC" key
$MY -e "drop database if exists ferry_bench_dst; create database ferry_bench_dst; set global local_infile = 1"

start_ferry "${BENCH_PORT:-18430}"
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

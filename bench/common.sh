# Shared by the bench scripts (sourced, not run): the release build, a scratch directory that is
# removed on exit, timing helpers, the orders-like test table and a Ferry server for the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ferry-target}"
PG_ADMIN="${FERRY_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}"

cargo build --release --quiet --bin ferry --bin ferry-bench
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
server_pid=
cleanup() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
rate() { echo "$ROWS / $1" | bc -l | xargs printf '%.0f'; }
ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }

# pg_database NAME: a fresh PostgreSQL database; prints its URL.
pg_database() {
  psql "$PG_ADMIN" -q -c "drop database if exists $1" -c "create database $1" >/dev/null
  echo "${PG_ADMIN%/*}/$1"
}

# make_orders URL [KEY]: the orders-like table with $ROWS rows; KEY adds a primary key on order_id.
make_orders() {
  echo "preparing $ROWS rows" >&2
  psql "$1" -q -v ON_ERROR_STOP=1 -c "create table orders as
    select g::bigint as order_id, (g * 7919 % 5000)::bigint as customer_id, 'Product ' || (g % 50) as product_name,
           (g % 200) + 0.25::float8 as price, ((g % 200) + 0.25::float8) * (1 + g % 5) as total_amount,
           date '2026-01-01' + (g % 300)::int as created_date
    from generate_series(1::bigint, $ROWS) g" >/dev/null
  if [[ "${2:-}" == key ]]; then psql "$1" -q -c "alter table orders add primary key (order_id)" >/dev/null; fi
  psql "$1" -q -c "vacuum analyze orders" >/dev/null
}

# start_ferry PORT: a Ferry server with its data in the scratch directory, signed in as its first
# administrator; sets FERRY_SERVER and FERRY_TOKEN.
start_ferry() {
  local password
  password="bench-$(date +%s%N)"
  FERRY_ADMIN_PASSWORD="$password" "$bin/ferry" serve --listen "127.0.0.1:$1" --data-dir "$work/data" 2>"$work/serve.log" &
  server_pid=$!
  export FERRY_SERVER="http://127.0.0.1:$1" FERRY_CONFIG_DIR="$work/config"
  for _ in $(seq 1 100); do
    if FERRY_PASSWORD="$password" "$bin/ferry" login --user admin >/dev/null 2>&1; then
      FERRY_TOKEN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["token"])' \
        "$work/config/credentials.json" "$FERRY_SERVER")
      export FERRY_TOKEN
      return 0
    fi
    sleep 0.1
  done
  echo "ferry serve did not start: $(cat "$work/serve.log")" >&2
  return 1
}

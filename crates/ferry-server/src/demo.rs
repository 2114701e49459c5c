//! The demo instance: a SQLite database in the data directory with `orders` (120,000 rows over
//! 120 days up to yesterday), `customers` and `products`, registered as instance `demo`.

use ferry_core::Feature;

use crate::SharedState;
use crate::instances::AddInstance;

pub const DEMO_INSTANCE: &str = "demo";

const SCHEMA: &str = "
create table if not exists products (
    product_id integer primary key,
    product_name varchar(32) not null,
    category varchar(16) not null,
    price double not null
);
create table if not exists customers (
    customer_id integer primary key,
    name varchar(64) not null,
    email varchar(128) not null,
    phone varchar(20),
    city varchar(32) not null,
    created_date date not null
);
create table if not exists orders (
    order_id bigint primary key,
    customer_id bigint not null,
    product_name varchar(32) not null,
    price double not null,
    quantity integer not null,
    total_amount double not null,
    created_date date not null
);
create index if not exists orders_created_date on orders (created_date);
";

/// Deterministic data: the same rows every time, spread evenly over the days.
const DATA: &str = "
insert into products (product_id, product_name, category, price)
with recursive n(i) as (select 1 union all select i + 1 from n where i < 50)
select i,
       (case i % 5 when 0 then 'Widget' when 1 then 'Gadget' when 2 then 'Gizmo' when 3 then 'Doohickey' else 'Sprocket' end) || ' ' || i,
       case i % 4 when 0 then 'tools' when 1 then 'toys' when 2 then 'garden' else 'kitchen' end,
       round(2.5 + (i * 37 % 200) + (i % 7) * 0.25, 2)
from n;
insert into customers (customer_id, name, email, phone, city, created_date)
with recursive n(i) as (select 1 union all select i + 1 from n where i < 5000)
select i,
       'Customer ' || i,
       'customer' || i || '@example.com',
       '+1-555-' || substr('0000' || (i * 7919 % 10000), -4, 4),
       case i % 6 when 0 then 'Lisbon' when 1 then 'Osaka' when 2 then 'Austin' when 3 then 'Nairobi' when 4 then 'Berlin' else 'Lima' end,
       date('now', '-' || (400 + i % 365) || ' days')
from n;
insert into orders (order_id, customer_id, product_name, price, quantity, total_amount, created_date)
with recursive n(i) as (select 1 union all select i + 1 from n where i < 120000)
select n.i,
       1 + (n.i * 7919) % 5000,
       p.product_name,
       p.price,
       1 + (n.i * 13 + n.i / 1000) % 5,
       round(p.price * (1 + (n.i * 13 + n.i / 1000) % 5), 2),
       date('now', '-' || (1 + (n.i - 1) / 1000) || ' days')
from n join products p on p.product_id = 1 + (n.i * 31 + (n.i / 1000) * 7) % 50;
";

/// Creates the demo database if missing and registers it as `demo` if not registered.
pub async fn ensure_demo(state: &SharedState) -> anyhow::Result<()> {
    let path = std::path::absolute(state.config.data_dir.join("demo.db"))?;
    if state.meta.get_instance(DEMO_INSTANCE).await?.is_none() {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        crate::instances::add(
            state,
            AddInstance {
                name: DEMO_INSTANCE.into(),
                url,
                environment: Some("dev".into()),
                max_connections: Some(5),
                settings: None,
                test: Some(true),
            },
        )
        .await?;
    }
    let pool = state.pool(DEMO_INSTANCE).await?;
    let mut lease = pool.acquire(Feature::System, None, "demo setup").await?;
    let conn = lease.conn();
    for statement in ferry_connect::script::split_statements(ferry_core::Engine::Sqlite, SCHEMA) {
        conn.run(&statement).await?;
    }
    let (_, batches) =
        ferry_connect::collect(conn.run("select count(*) as n from orders").await?).await?;
    let empty = batches.iter().all(|b| {
        b.column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .is_some_and(|a| a.value(0) == 0)
    });
    if empty {
        tracing::info!(path = %path.display(), "creating the demo database");
        conn.run("begin").await?;
        for statement in ferry_connect::script::split_statements(ferry_core::Engine::Sqlite, DATA) {
            conn.run(&statement).await?;
        }
        conn.run("commit").await?;
    }
    Ok(())
}

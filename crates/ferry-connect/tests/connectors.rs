//! Connectors and the pool against real servers: cancellation per engine, the cap and its queue.

use arrow::array::AsArray;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_connect::{
    ConnectOptions, Connection, InstancePool, StatementOutput, collect, connector_for,
};
use ferry_core::{ConnectionUrl, Feature, InstanceName, InstanceSettings};
use futures::StreamExt;

fn connector(url: &str) -> Arc<dyn ferry_connect::Connector> {
    connector_for(
        &ConnectionUrl::parse(url).unwrap(),
        &ConnectOptions::default(),
    )
    .unwrap()
}

/// Starts `sql` on `conn`, cancels it from another task after 300 ms, and returns the error.
async fn cancel_running(mut conn: Box<dyn Connection>, sql: &str) -> ferry_core::Error {
    let canceller = conn.canceller();
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        canceller.cancel().await.unwrap();
    });
    let started = Instant::now();
    let err = match conn.run(sql).await {
        Err(e) => e,
        Ok(StatementOutput::Rows { mut batches, .. }) => loop {
            match batches.next().await {
                Some(Err(e)) => break e,
                Some(Ok(_)) => continue,
                None => panic!("{sql} finished instead of being cancelled"),
            }
        },
        Ok(StatementOutput::Affected(_)) => panic!("{sql} finished instead of being cancelled"),
    };
    cancel.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{sql} was not cancelled in time"
    );
    err
}

#[tokio::test]
async fn postgres_statements_cancel_on_the_server() {
    let Some(url) = ferry_testkit::postgres() else {
        return;
    };
    let conn = connector(&url).connect(None).await.unwrap();
    let err = cancel_running(conn, "select pg_sleep(60)").await;
    assert_eq!(err.code(), "cancelled", "{err}");
}

#[tokio::test]
async fn mysql_statements_cancel_with_kill_query() {
    let Some(url) = ferry_testkit::mysql() else {
        return;
    };
    let c = connector(&url);
    let conn = c.connect(None).await.unwrap();
    let err = cancel_running(conn, "select sleep(60), 1").await;
    // MariaDB answers KILL QUERY on SLEEP() by ending the statement early with 1 instead of an error
    // on some versions; either way the statement no longer runs.
    assert!(err.code() == "cancelled" || err.code() == "engine", "{err}");
}

#[tokio::test]
async fn sqlite_statements_are_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display());
    let conn = connector(&url).connect(None).await.unwrap();
    let endless =
        "with recursive n(i) as (select 1 union all select i + 1 from n) select count(*) from n";
    let err = cancel_running(conn, endless).await;
    assert_eq!(err.code(), "cancelled", "{err}");
}

#[tokio::test]
async fn sqlite_values_keep_their_types() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display());
    let mut conn = connector(&url).connect(None).await.unwrap();
    conn.run("create table t (i integer, r real, s text, b blob, d date, n numeric(10,2))")
        .await
        .unwrap();
    conn.run("insert into t values (1, -1.7976931348623157e308, 'é🚀 ', x'00ff', '2026-11-22', '12.5'), (null, null, null, null, null, 9223372036854775807)").await.unwrap();
    let (schema, batches) = collect(conn.run("select *, i + 1 as expr from t").await.unwrap())
        .await
        .unwrap();
    // NUMERIC columns hold integers and reals side by side: both kept exactly, as text.
    let n = batches[0].column(5).as_string::<i32>();
    assert_eq!((n.value(0), n.value(1)), ("12.5", "9223372036854775807"));
    // Doubles come back whole, not as SQLite's 15-digit text.
    let r = batches[0]
        .column(1)
        .as_primitive::<arrow::datatypes::Float64Type>();
    assert_eq!(r.value(0), -f64::MAX);
    let types: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().to_string())
        .collect();
    assert_eq!(
        types,
        [
            "Int64", "Float64", "Utf8", "Binary", "Date32", "Utf8", "Int64"
        ]
    );
    assert_eq!(batches[0].num_rows(), 2);
    assert_eq!(batches[0].column(0).null_count(), 1);
    let empty = conn.run("select * from t where 1 = 0").await.unwrap();
    let (schema, batches) = collect(empty).await.unwrap();
    assert_eq!(
        schema.fields().len(),
        6,
        "a result without rows still has its columns"
    );
    assert!(batches.iter().all(|b| b.num_rows() == 0));
}

fn pool(url: &str, max: u32, acquire_timeout_secs: u64) -> Arc<InstancePool> {
    let settings = InstanceSettings {
        max_connections: max,
        acquire_timeout_secs,
        ..InstanceSettings::default()
    };
    InstancePool::new(
        InstanceName::new("t").unwrap(),
        connector(url),
        settings,
        Arc::new(|_| {}),
    )
}

#[tokio::test]
async fn the_pool_caps_queues_fairly_and_reuses() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display());
    let p = pool(&url, 2, 30);
    let a = p.acquire(Feature::Console, None, "a").await.unwrap();
    let b = p.acquire(Feature::Console, None, "b").await.unwrap();
    assert_eq!((p.stats().open, p.stats().in_use), (2, 2));
    // Two waiters queue in order; each release lets exactly the first waiter in.
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for name in ["first", "second"] {
        let (pool, order) = (p.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let lease = pool.acquire(Feature::Console, None, name).await.unwrap();
            order.lock().unwrap().push(name);
            lease
        }));
        while p.stats().waiting < waiters.len() {
            tokio::task::yield_now().await;
        }
    }
    drop(a);
    let first = waiters.remove(0).await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["first"]);
    drop(b);
    let second = waiters.remove(0).await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["first", "second"]);
    assert_eq!(
        p.stats().open,
        2,
        "released connections are reused, not reopened"
    );
    drop((first, second));
    assert_eq!((p.stats().idle, p.stats().in_use), (2, 0));
}

#[tokio::test]
async fn a_full_pool_answers_busy_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display());
    let p = pool(&url, 1, 1);
    let _held = p.acquire(Feature::Task, None, "held").await.unwrap();
    let err = p
        .acquire(Feature::Console, None, "late")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "busy");
    assert!(err.message().contains("instance \"t\" is busy"), "{err}");
    assert_eq!(p.stats().waiting, 0, "a timed-out request leaves the queue");
}

#[tokio::test]
async fn connections_in_a_transaction_are_not_reused() {
    let Some(url) = ferry_testkit::postgres() else {
        return;
    };
    let p = pool(&url, 2, 5);
    let mut lease = p.acquire(Feature::Console, None, "tx").await.unwrap();
    lease.conn().run("begin").await.unwrap();
    assert!(lease.connection().in_transaction());
    drop(lease);
    assert_eq!(
        (p.stats().open, p.stats().idle),
        (0, 0),
        "a connection left in a transaction must be closed"
    );
    let mut lease = p.acquire(Feature::Console, None, "ok").await.unwrap();
    lease.conn().run("select 1").await.unwrap();
    drop(lease);
    assert_eq!(p.stats().idle, 1);
}

#[tokio::test]
async fn an_acquire_dropped_while_connecting_gives_its_slot_back() {
    // A loopback listener that accepts and never answers: the PostgreSQL handshake waits, so
    // dropping the acquire interrupts it mid-connect.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("postgres://x@{}/db", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let p = pool(&url, 2, 30);
    let attempt = tokio::time::timeout(
        Duration::from_millis(300),
        p.acquire(Feature::Console, None, "slow"),
    );
    assert!(
        attempt.await.is_err(),
        "the connect should still be pending"
    );
    assert_eq!(
        p.stats().open,
        0,
        "a cancelled connect left a slot counted as open"
    );
    hold.abort();
}

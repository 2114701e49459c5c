//! SQL windows, the connection cap and the kill policies, checked against what PostgreSQL and
//! MariaDB themselves report.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

async fn open_window(server: &TestServer, instance: &str) -> String {
    let (status, v) = server
        .post("/api/v1/sessions", json!({ "instance": instance }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v["id"].as_str().unwrap().to_string()
}

async fn count_in(server: &TestServer, session: &str, table: &str) -> i64 {
    let v = server
        .session_sql(session, &format!("select count(*) as n from {table}"))
        .await;
    assert!(v["results"][0]["error"].is_null(), "{v}");
    v["results"][0]["rows"][0]["n"].as_i64().unwrap()
}

async fn windows_isolate_transactions(server: &TestServer, instance: &str) {
    server
        .sql(instance, "create table acct (id int primary key, v int)")
        .await;
    let a = open_window(server, instance).await;
    let b = open_window(server, instance).await;
    let v = server
        .session_sql(&a, "begin; insert into acct values (1, 10)")
        .await;
    assert_eq!(v["in_transaction"], true, "{v}");
    assert_eq!(
        count_in(server, &b, "acct").await,
        0,
        "uncommitted row visible in another window"
    );
    assert_eq!(
        count_in(server, &a, "acct").await,
        1,
        "a window sees its own uncommitted row"
    );
    server.session_sql(&a, "commit").await;
    assert_eq!(
        count_in(server, &b, "acct").await,
        1,
        "committed row invisible"
    );
    // Session state carries over between requests.
    server
        .session_sql(&b, "create temporary table scratch (x int)")
        .await;
    server
        .session_sql(&b, "insert into scratch values (1), (2)")
        .await;
    assert_eq!(count_in(server, &b, "scratch").await, 2);
    // Closing a window with an open transaction rolls it back.
    server
        .session_sql(&a, "begin; insert into acct values (2, 20)")
        .await;
    let (_, closed) = server.delete(&format!("/api/v1/sessions/{a}")).await;
    assert_eq!(closed["rolled_back"], true, "{closed}");
    assert_eq!(
        count_in(server, &b, "acct").await,
        1,
        "the closed window's insert survived"
    );
    let (status, _) = server
        .post(
            &format!("/api/v1/sessions/{a}/sql"),
            json!({ "sql": "select 1" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = server.get("/api/v1/sessions").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    server.delete(&format!("/api/v1/sessions/{b}")).await;
}

#[tokio::test]
async fn postgres_windows_keep_their_transactions() {
    let server = TestServer::start().await;
    if postgres_instance(&server, "pg", Value::Null)
        .await
        .is_none()
    {
        return;
    }
    windows_isolate_transactions(&server, "pg").await;
}

#[tokio::test]
async fn mysql_windows_keep_their_transactions() {
    let server = TestServer::start().await;
    if mysql_instance(&server, "my", Value::Null).await.is_none() {
        return;
    }
    windows_isolate_transactions(&server, "my").await;
}

/// Server-side connections Ferry holds to one PostgreSQL database.
async fn ferry_backends(admin: &tokio_postgres::Client, database: &str) -> i64 {
    admin
        .query_one(
            "select count(*) from pg_stat_activity where datname = $1 and application_name = 'ferry'",
            &[&database],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_cap_holds_under_ten_concurrent_queries() {
    let server = TestServer::start().await;
    let Some(url) = postgres_instance(
        &server,
        "pg",
        json!({ "max_connections": 3, "acquire_timeout_secs": 60 }),
    )
    .await
    else {
        return;
    };
    let admin = pg_direct(&ferry_testkit::postgres().unwrap()).await;
    let database = database_of(&url);
    let queries = (0..10).map(|i| {
        let http = server.http.clone();
        let path = format!("{}/api/v1/instances/pg/sql", server.base);
        async move {
            let body = json!({ "sql": format!("select pg_sleep(0.3), {i} as i") });
            let resp = http.post(path).json(&body).send().await.unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        }
    });
    let all = tokio::spawn(futures::future::join_all(queries));
    let mut most = 0;
    while !all.is_finished() {
        most = most.max(ferry_backends(&admin, &database).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (status, v) in all.await.unwrap() {
        assert_eq!(status, StatusCode::OK, "{v}");
        assert!(v["results"][0]["error"].is_null(), "{v}");
    }
    assert!(
        most <= 3,
        "saw {most} server-side connections with max_connections = 3"
    );
    assert!(most >= 2, "queries did not run concurrently (saw {most})");
    let (_, conns) = server.get("/api/v1/instances/pg/connections").await;
    assert!(conns["stats"]["open"].as_u64().unwrap() <= 3, "{conns}");
}

#[tokio::test]
async fn requests_past_the_queue_timeout_are_told_the_instance_is_busy() {
    let server = TestServer::start().await;
    let Some(_) = postgres_instance(
        &server,
        "pg",
        json!({ "max_connections": 1, "acquire_timeout_secs": 1 }),
    )
    .await
    else {
        return;
    };
    let window = open_window(&server, "pg").await;
    let (status, v) = server
        .post("/api/v1/instances/pg/sql", json!({ "sql": "select 1" }))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "busy");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("instance \"pg\" is busy: all 1 connections are in use"),
        "{v}"
    );
    server.delete(&format!("/api/v1/sessions/{window}")).await;
    assert_eq!(
        server.rows("pg", "select 1 as one").await,
        vec![json!({ "one": 1 })]
    );
}

#[tokio::test]
async fn runaway_statements_are_cancelled_on_the_server() {
    let server = TestServer::start().await;
    let Some(url) = postgres_instance(
        &server,
        "pg",
        json!({ "policy": { "max_statement_secs": 1 } }),
    )
    .await
    else {
        return;
    };
    let started = Instant::now();
    let results = server.sql("pg", "select pg_sleep(60)").await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the statement was not stopped"
    );
    assert_eq!(results[0]["error"]["code"], "cancelled", "{results:?}");
    assert!(
        results[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_statement_secs = 1"),
        "{results:?}"
    );
    // PostgreSQL no longer runs it.
    let admin = pg_direct(&ferry_testkit::postgres().unwrap()).await;
    let database = database_of(&url);
    let running: i64 = admin
        .query_one("select count(*) from pg_stat_activity where datname = $1 and query like '%pg_sleep(60)%' and state = 'active'", &[&database])
        .await
        .unwrap()
        .get(0);
    assert_eq!(running, 0);
    let actions = wait_for("the cancel action to be listed", 10, || async {
        let (_, v) = server.get("/api/v1/policy-actions?instance=pg").await;
        v.as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "cancel_statement")
            .then_some(v)
    })
    .await;
    assert!(
        actions[0]["detail"]
            .as_str()
            .unwrap()
            .contains("cancelled on the server"),
        "{actions}"
    );
    // Streamed statements obey the limit too.
    let (status, v) = server
        .post(
            "/api/v1/instances/pg/sql",
            json!({ "sql": "select pg_sleep(60)", "format": "csv" }),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("cancelled")),
        "{v}"
    );
}

#[tokio::test]
async fn idle_transactions_are_rolled_back_and_windows_closed() {
    let server = TestServer::start().await;
    let settings = json!({ "policy": { "idle_in_transaction_timeout_secs": 1, "session_idle_timeout_secs": 3600 } });
    let Some(_) = postgres_instance(&server, "pg", settings).await else {
        return;
    };
    server.sql("pg", "create table t (x int)").await;
    let idle = open_window(&server, "pg").await;
    let busy_free = open_window(&server, "pg").await;
    server
        .session_sql(&idle, "begin; insert into t values (1)")
        .await;
    server.session_sql(&busy_free, "select 1").await;
    wait_for("the idle transaction's window to close", 20, || async {
        let (s, _) = server.get(&format!("/api/v1/sessions/{idle}")).await;
        (s == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert_eq!(
        server.rows("pg", "select count(*) as n from t").await[0]["n"],
        0,
        "the idle transaction was not rolled back"
    );
    let (s, _) = server.get(&format!("/api/v1/sessions/{busy_free}")).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "a window outside a transaction was closed"
    );
    // The action is recorded in the store right after the window closes.
    wait_for(
        "the rollback to be listed among the policy actions",
        20,
        || async {
            let (_, actions) = server.get("/api/v1/policy-actions?instance=pg").await;
            actions
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["action"] == "rollback_idle_transaction")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn server_sessions_are_listed_and_killed() {
    let server = TestServer::start().await;
    let Some(_) = postgres_instance(&server, "pg", Value::Null).await else {
        return;
    };
    let window = open_window(&server, "pg").await;
    let (_, info) = server.get(&format!("/api/v1/sessions/{window}")).await;
    let pid = info["server_session_id"].as_i64().unwrap();
    let (_, procs) = server.get("/api/v1/instances/pg/processes").await;
    assert!(
        procs.as_array().unwrap().iter().any(|p| p["id"] == pid),
        "{procs}"
    );
    let (status, _) = server
        .delete(&format!("/api/v1/instances/pg/processes/{pid}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let v = server.session_sql(&window, "select 1").await;
    assert_eq!(v["results"][0]["error"]["code"], "connection", "{v}");
    let (status, _) = server.delete("/api/v1/instances/pg/processes/999999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn console_gives_way_to_waiting_async_queries() {
    let server = TestServer::start().await;
    let settings = json!({ "max_connections": 1, "acquire_timeout_secs": 20, "policy": { "preempt_after_secs": 1 } });
    let Some(_) = postgres_instance(&server, "pg", settings).await else {
        return;
    };
    let window = open_window(&server, "pg").await;
    let (status, q) = server
        .post(
            "/api/v1/queries",
            json!({ "instance": "pg", "sql": "select 42 as answer" }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = q["id"].as_str().unwrap().to_string();
    let done = wait_for("the async query to finish", 20, || async {
        let (_, v) = server.get(&format!("/api/v1/queries/{id}")).await;
        (v["status"] != "queued" && v["status"] != "running").then_some(v)
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    wait_for(
        "the preemption to be listed among the policy actions",
        20,
        || async {
            let (_, actions) = server.get("/api/v1/policy-actions?instance=pg").await;
            actions
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["action"] == "preempt" && a["feature"] == "console")
                .then_some(())
        },
    )
    .await;
    let (status, v) = server
        .post(
            &format!("/api/v1/sessions/{window}/sql"),
            json!({ "sql": "select 1" }),
        )
        .await;
    assert!(
        status == StatusCode::CONFLICT || status == StatusCode::NOT_FOUND,
        "{status} {v}"
    );
}

#[tokio::test]
async fn a_window_statement_can_be_cancelled_and_the_window_stays() {
    let server = TestServer::start().await;
    let Some(_) = postgres_instance(&server, "pg", Value::Null).await else {
        return;
    };
    let window = open_window(&server, "pg").await;
    let (_, idle) = server
        .post(&format!("/api/v1/sessions/{window}/cancel"), json!({}))
        .await;
    assert_eq!(idle["cancelled"], false, "nothing runs yet");
    let running = {
        let http = server.http.clone();
        let url = format!("{}/api/v1/sessions/{window}/sql", server.base);
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({ "sql": "select pg_sleep(60)" }))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    wait_for("the statement to start", 20, || async {
        let (_, v) = server.get(&format!("/api/v1/sessions/{window}")).await;
        (v["busy"] == true).then_some(())
    })
    .await;
    let (_, v) = server
        .post(&format!("/api/v1/sessions/{window}/cancel"), json!({}))
        .await;
    assert_eq!(v["cancelled"], true, "{v}");
    let answer = running.await.unwrap();
    assert_eq!(
        answer["results"][0]["error"]["code"], "cancelled",
        "{answer}"
    );
    let after = server.session_sql(&window, "select 1 as one").await;
    assert_eq!(
        after["results"][0]["rows"][0]["one"], 1,
        "the window still works: {after}"
    );
}

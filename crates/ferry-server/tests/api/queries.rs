//! Asynchronous queries: submitted, spooled, paged and downloaded without running again.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

async fn finished(server: &TestServer, id: &str) -> Value {
    wait_for("the async query to finish", 60, || async {
        let (_, v) = server.get(&format!("/api/v1/queries/{id}")).await;
        (v["status"] != "queued" && v["status"] != "running").then_some(v)
    })
    .await
}

#[tokio::test]
async fn results_are_spooled_paged_and_downloaded() {
    let server = TestServer::start_with(|c| c.demo = true).await;
    let (status, v) = server
        .post("/api/v1/queries", json!({ "instance": "demo", "sql": "select order_id, total_amount from orders order by order_id" }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let done = finished(&server, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["rows"], 120_000);
    assert!(done["bytes"].as_i64().unwrap() > 0);
    assert_eq!(done["columns"][0]["name"], "order_id");

    let (_, page) = server
        .get(&format!("/api/v1/queries/{id}/result?offset=4095&limit=3"))
        .await;
    let ids: Vec<_> = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["order_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [4096, 4097, 4098], "a page across a batch boundary");
    assert_eq!(page["total_rows"], 120_000);
    let (_, tail) = server
        .get(&format!(
            "/api/v1/queries/{id}/result?offset=119999&limit=10"
        ))
        .await;
    assert_eq!(tail["row_count"], 1);

    // The download reads the spool: the source may change without changing the result.
    server
        .sql("demo", "delete from orders where order_id <= 10")
        .await;
    let csv = server
        .http
        .get(format!(
            "{}/api/v1/queries/{id}/result?format=csv",
            server.base
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv.lines().count(), 120_001);
    assert!(csv.lines().nth(1).unwrap().starts_with("1,"));
    let (_, list) = server.get("/api/v1/queries").await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|q| q["id"] == id.as_str())
    );
}

#[tokio::test]
async fn failed_and_cancelled_queries_say_why() {
    let server = TestServer::start().await;
    let Some(_) = postgres_instance(&server, "pg", Value::Null).await else {
        return;
    };
    let (_, v) = server
        .post(
            "/api/v1/queries",
            json!({ "instance": "pg", "sql": "select * from missing" }),
        )
        .await;
    let failed = finished(&server, v["id"].as_str().unwrap()).await;
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("relation \"missing\" does not exist"),
        "{failed}"
    );
    let (status, r) = server
        .get(&format!(
            "/api/v1/queries/{}/result",
            v["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{r}");

    let (_, v) = server
        .post(
            "/api/v1/queries",
            json!({ "instance": "pg", "sql": "select pg_sleep(60)" }),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    wait_for("the query to run", 20, || async {
        let (_, v) = server.get(&format!("/api/v1/queries/{id}")).await;
        (v["status"] == "running").then_some(())
    })
    .await;
    let (status, c) = server.delete(&format!("/api/v1/queries/{id}")).await;
    assert_eq!(
        (status, c["status"].as_str()),
        (StatusCode::OK, Some("cancelled")),
        "{c}"
    );
    let (_, again) = server.get(&format!("/api/v1/queries/{id}")).await;
    assert_eq!(again["status"], "cancelled");

    let (status, v) = server
        .post(
            "/api/v1/queries",
            json!({ "instance": "pg", "sql": "select 1; select 2" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, _) = server.get("/api/v1/queries/no-such-id").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

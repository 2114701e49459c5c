//! Passwords stay secret: not in API answers, not in the data directory, not in the logs; and the
//! metadata store can live in PostgreSQL.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

const PASSWORD: &str = "Pw-4f1d9c2e-never-shown";

fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            hits.push(path.display().to_string());
        }
    }
    hits
}

#[tokio::test]
async fn instance_passwords_appear_nowhere() {
    let server = TestServer::start().await;
    let Some(admin) = ferry_testkit::postgres() else {
        return;
    };
    let url = ferry_testkit::fresh_postgres_db(&admin).await;
    // Loopback PostgreSQL trusts the test user, so the password is carried but not checked.
    let with_password = url.replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    assert!(with_password.contains(PASSWORD));
    server
        .add_instance("pg", &with_password, serde_json::Value::Null)
        .await;
    let mut answers = Vec::new();
    answers.push(server.get("/api/v1/instances").await.1);
    answers.push(server.get("/api/v1/instances/pg").await.1);
    answers.push(server.post("/api/v1/instances/pg/test", json!({})).await.1);
    answers.push(
        server
            .patch("/api/v1/instances/pg", json!({ "max_connections": 4 }))
            .await
            .1,
    );
    answers.push(
        server
            .post(
                "/api/v1/instances/pg/sql",
                json!({ "sql": "select current_user" }),
            )
            .await
            .1,
    );
    answers.push(
        server
            .post("/api/v1/instances/pg/sql", json!({ "sql": "selec" }))
            .await
            .1,
    );
    let dup = server
        .post(
            "/api/v1/instances",
            json!({ "name": "pg", "url": with_password }),
        )
        .await;
    assert_eq!(dup.0, StatusCode::CONFLICT);
    answers.push(dup.1);
    let shown = answers.iter().map(|a| a.to_string()).collect::<String>();
    assert!(
        !shown.contains(PASSWORD),
        "an API answer shows the password: {shown}"
    );
    assert!(
        answers[1]["url"]
            .as_str()
            .unwrap()
            .contains("postgres:***@"),
        "{}",
        answers[1]
    );
    assert!(
        files_containing(server.dir.path(), PASSWORD.as_bytes()).is_empty(),
        "the password is stored in plain text"
    );
    assert!(
        !captured_logs().contains(PASSWORD),
        "the password reached the log"
    );
}

#[tokio::test]
async fn metadata_can_live_in_postgres() {
    let Some(admin) = ferry_testkit::postgres() else {
        return;
    };
    let meta = ferry_testkit::fresh_postgres_db(&admin).await;
    let server = TestServer::start_with(|c| {
        c.meta_url = Some(meta.clone());
        c.demo = true;
    })
    .await;
    let (_, health) = server.get("/healthz").await;
    assert_eq!(health["metadata_store"], "postgres");
    assert_eq!(
        server
            .rows("demo", "select count(*) as n from products")
            .await[0]["n"],
        50
    );
    let store = pg_direct(&meta).await;
    let names: Vec<String> = store
        .query("select name from instances", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["demo"]);
}

//! Every flow template, rendered, applied and run against real servers.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

async fn flow_server() -> Option<TestServer> {
    let server = TestServer::start_with(|c| {
        c.scheduler_interval = Duration::from_millis(100);
    })
    .await;
    if !pg_and_my(&server).await {
        return None;
    }
    Some(server)
}

/// Renders a template and applies the flow.
async fn from_template(server: &TestServer, template: &str, flow: &str, params: Value) {
    let (status, v) = server
        .post(
            &format!("/api/v1/flow-templates/{template}"),
            json!({ "flow": flow, "params": params }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = server
        .post("/api/v1/flows", json!({ "toml": v["toml"] }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
}

/// Runs a flow for a business date and waits for it to end.
async fn run_for(server: &TestServer, flow: &str, bizdate: &str) -> Value {
    let (status, v) = server
        .post(
            &format!("/api/v1/flows/{flow}/runs"),
            json!({ "bizdate": bizdate }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    wait_run(server, v["id"].as_str().unwrap()).await
}

async fn wait_run(server: &TestServer, id: &str) -> Value {
    wait_for("the run to end", 90, || async {
        let (_, v) = server.get(&format!("/api/v1/runs/{id}")).await;
        (!matches!(v["status"].as_str(), Some("running" | "queued"))).then_some(v)
    })
    .await
}

fn day(offset: i64) -> String {
    (chrono::NaiveDate::from_ymd_opt(2026, 11, 21).unwrap() - chrono::Duration::days(offset))
        .to_string()
}

#[tokio::test]
async fn archive_template_backfills_seven_verified_partitions() {
    let Some(server) = flow_server().await else {
        return;
    };
    let Some(endpoint) = ferry_testkit::s3() else {
        return;
    };
    let bucket = ferry_testkit::fresh_bucket(&endpoint).await;
    let url = format!("s3://{bucket}/dla/orders");
    server
        .sql(
            "pg",
            "create table orders (id bigint primary key, created_date date not null, amount numeric(10,2));
             insert into orders select g, date '2026-11-21' - (g % 10), g / 100.0 from generate_series(1, 5000) g",
        )
        .await;
    let (status, v) = server
        .post("/api/v1/archives", json!({ "name": "arch_orders", "url": url, "format": "parquet", "partitions": ["y", "m", "d"], "options": ferry_testkit::s3_options(&endpoint) }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    from_template(
        &server,
        "archive-to-object-storage",
        "archive_orders",
        json!({ "instance": "pg", "table": "orders", "date_column": "created_date", "url": url, "archive": "arch_orders" }),
    )
    .await;
    let (_, flow) = server.get("/api/v1/flows/archive_orders").await;
    assert_eq!(flow["schedule"], "0 5 * * * (UTC)");
    // Seven days, backfilled three at a time: each verified against the archive.
    let (status, runs) = server
        .post(
            "/api/v1/flows/archive_orders/backfill",
            json!({ "from": day(6), "to": day(0), "parallel": 3 }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{runs}");
    for r in runs.as_array().unwrap() {
        let done = wait_run(&server, r["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "success", "{done}");
    }
    let location =
        ferry_move::files::open_location(&url, &ferry_testkit::s3_options(&endpoint)).unwrap();
    let partitions = ferry_move::export::list_partitions(&location)
        .await
        .unwrap();
    assert_eq!(partitions.len(), 7, "{partitions:?}");
    let archived = server
        .rows("archive", "select count(*) as n from arch_orders")
        .await;
    assert_eq!(archived[0]["n"], 3500);
    // A day again, after its rows changed: its partition is replaced and nothing else moves.
    server
        .sql(
            "pg",
            &format!(
                "delete from orders where created_date = '{}' and id % 20 = 0",
                day(0)
            ),
        )
        .await;
    let again = run_for(&server, "archive_orders", &day(0)).await;
    assert_eq!(again["status"], "success", "{again}");
    let after = ferry_move::export::list_partitions(&location)
        .await
        .unwrap();
    assert_eq!(after, partitions);
    let archived = server
        .rows("archive", "select count(*) as n from arch_orders")
        .await;
    assert_eq!(archived[0]["n"], 3250);

    // The same template with deletes: the day's rows leave the source in batches, after the
    // archive has been checked to hold them.
    from_template(
        &server,
        "archive-to-object-storage",
        "archive_and_delete",
        json!({ "instance": "pg", "table": "orders", "date_column": "created_date", "url": url, "archive": "arch_orders", "delete_source": "true", "batch": "90" }),
    )
    .await;
    let done = run_for(&server, "archive_and_delete", &day(1)).await;
    assert_eq!(done["status"], "success", "{done}");
    let left = server
        .rows(
            "pg",
            &format!(
                "select count(*) as n from orders where created_date = '{}'",
                day(1)
            ),
        )
        .await;
    assert_eq!(left[0]["n"], 0);
    let (_, logs) = server
        .get(&format!(
            "/api/v1/runs/{}/logs?node=delete_source",
            done["id"].as_str().unwrap()
        ))
        .await;
    assert!(logs.to_string().contains("done after 7 round(s)"), "{logs}");
    let archived = server
        .rows(
            "archive",
            &format!(
                "select count(*) as n from arch_orders where d = '{}'",
                &day(1)[8..]
            ),
        )
        .await;
    assert_eq!(archived[0]["n"], 500);
    // Cross-database SQL over the archive and the source, written to a CSV file.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("compare.csv");
    let (status, v) = server
        .post(
            "/api/v1/flows",
            json!({ "spec": {
                "name": "compare",
                "nodes": [{
                    "id": "compare",
                    "kind": "cross_sql",
                    "params": {
                        "sources": {
                            "a": { "instance": "archive", "sql": "select d, count(*) as archived from arch_orders group by d" },
                            "o": { "instance": "pg", "sql": "select to_char(created_date, 'DD') as d, count(*) as in_source from orders group by 1" }
                        },
                        "sql": "select a.d, a.archived, o.in_source from a left join o on o.d = a.d order by a.d",
                        "output": { "url": csv.display().to_string(), "format": "csv" }
                    }
                }]
            } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let done = run_for(&server, "compare", &day(0)).await;
    assert_eq!(done["status"], "success", "{done}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}");
    assert_eq!(lines[0], "d,archived,in_source");
    // The day deleted from the source after archiving: archived, no longer in the source.
    assert!(
        lines.contains(&format!("{},500,", &day(1)[8..]).as_str()),
        "{text}"
    );
}

#[tokio::test]
async fn maintenance_report_and_sync_templates_run() {
    let Some(server) = flow_server().await else {
        return;
    };
    // purge-history: rows older than 90 days go, in batches; newer ones stay.
    server
        .sql(
            "pg",
            "create table events (id bigint primary key, at date not null, user_id int not null);
             insert into events select g, current_date - 200, g % 7 from generate_series(1, 100) g;
             insert into events select g, date '2026-11-21', g % 5 from generate_series(101, 130) g",
        )
        .await;
    from_template(
        &server,
        "purge-history",
        "purge_events",
        json!({ "instance": "pg", "table": "events", "date_column": "at", "days": "90", "batch": "30" }),
    )
    .await;
    let done = run_for(&server, "purge_events", &day(0)).await;
    assert_eq!(done["status"], "success", "{done}");
    let n = server.rows("pg", "select count(*) as n from events").await;
    assert_eq!(n[0]["n"], 30);

    // analyze-tables: statistics refreshed.
    from_template(
        &server,
        "analyze-tables",
        "analyze_pg",
        json!({ "instance": "pg", "tables": "events" }),
    )
    .await;
    let done = run_for(&server, "analyze_pg", &day(0)).await;
    assert_eq!(done["status"], "success", "{done}");
    let analyzed = server
        .rows("pg", "select last_analyze is not null as yes from pg_stat_user_tables where relname = 'events'")
        .await;
    assert_eq!(analyzed[0]["yes"], true);

    // daily-uv-report: distinct users of the day from PostgreSQL into MariaDB; a rerun replaces.
    from_template(
        &server,
        "daily-uv-report",
        "uv",
        json!({ "source": "pg", "table": "events", "date_column": "at", "target": "my", "report_table": "daily_uv" }),
    )
    .await;
    let done = run_for(&server, "uv", &day(0)).await;
    assert_eq!(done["status"], "success", "{done}");
    server
        .sql(
            "pg",
            "insert into events values (1000, date '2026-11-21', 99)",
        )
        .await;
    let done = run_for(&server, "uv", &day(0)).await;
    assert_eq!(done["status"], "success", "{done}");
    let report = server.rows("my", "select day, uv from daily_uv").await;
    assert_eq!(report, [json!({ "day": "2026-11-21", "uv": 6 })]);

    // incremental-sync: each run moves only new rows, each once.
    server
        .sql("pg", "create table src (id bigint primary key, v text); insert into src select g, 'v' || g from generate_series(1, 50) g")
        .await;
    from_template(
        &server,
        "incremental-sync",
        "sync_src",
        json!({ "source": "pg", "table": "src", "target": "my", "target_table": "src_copy", "by": "id" }),
    )
    .await;
    let mut moved = Vec::new();
    for round in 0..3 {
        let done = run_for(&server, "sync_src", &day(0)).await;
        assert_eq!(done["status"], "success", "{done}");
        moved.push(done["tasks"][0]["rows"].as_i64().unwrap());
        let base = 50 + round * 10;
        server
            .sql(
                "pg",
                &format!(
                    "insert into src select g, 'v' || g from generate_series({}, {}) g",
                    base + 1,
                    base + 10
                ),
            )
            .await;
    }
    assert_eq!(moved, [50, 10, 10]);
    let ids: BTreeSet<i64> = server
        .rows("my", "select id from src_copy")
        .await
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 70);
    assert_eq!(
        server
            .rows("my", "select count(*) as n from src_copy")
            .await[0]["n"],
        70
    );
}

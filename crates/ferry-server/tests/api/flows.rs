//! Task flows end to end: definitions validated with the node and field named, runs whose nodes
//! pass variables and outputs along, retries, failures that stop or spare independent branches,
//! restore and rerun, timeouts and cancellation that stop the statement on the database, the
//! scheduler, and backfills.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

async fn flow_server() -> Option<TestServer> {
    let server = TestServer::start_with(|c| {
        c.scheduler_interval = Duration::from_millis(100);
        c.task_lease = Duration::from_secs(3);
    })
    .await;
    postgres_instance(&server, "pg", Value::Null).await?;
    Some(server)
}

async fn apply(server: &TestServer, toml: &str) -> Value {
    let (status, v) = server.post("/api/v1/flows", json!({ "toml": toml })).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

async fn start(server: &TestServer, flow: &str, body: Value) -> String {
    let (status, v) = server
        .post(&format!("/api/v1/flows/{flow}/runs"), body)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// Waits for a run to end and returns its detail.
async fn finished(server: &TestServer, id: &str) -> Value {
    wait_for("the run to end", 60, || async {
        let (_, v) = server.get(&format!("/api/v1/runs/{id}")).await;
        (!matches!(v["status"].as_str(), Some("running" | "queued"))).then_some(v)
    })
    .await
}

fn task<'a>(run: &'a Value, node: &str) -> &'a Value {
    run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["node"] == node)
        .unwrap_or_else(|| panic!("no node {node} in {run}"))
}

const DAILY: &str = r#"
name = "daily_orders"
description = "events of the business date, then a report named after it"

[variables]
region = "north"
day_key = "$[yyyyMMdd-1]"
month_ago = "yyyy-MM-dd|-1M"
target = { value = "report_$[yyyyMMdd-1]", raw = true }

[[nodes]]
id = "setup"
kind = "sql"
params = { instance = "pg", sql = "create table if not exists events (d date, region text, n int)" }

[[nodes]]
id = "load"
kind = "sql"
upstream = ["setup"]
params = { instance = "pg", sql = "insert into events values (${bizdate}::date, ${region}, 3); select max(n) as max_n, count(*) as c from events", output = ["max_n"] }

[[nodes]]
id = "report"
kind = "sql"
upstream = ["load"]
params = { instance = "pg", sql = "create table ${target} as select ${max_n}::int as m, ${day_key} as k, ${month_ago}::date as month_ago" }
"#;

#[tokio::test]
async fn a_flow_runs_its_dag_with_variables_and_outputs() {
    let Some(server) = flow_server().await else {
        return;
    };
    let flow = apply(&server, DAILY).await;
    assert_eq!(flow["version"], 1);
    let id = start(&server, "daily_orders", json!({ "bizdate": "2026-11-21" })).await;
    let run = finished(&server, &id).await;
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(run["bizdate"], "2026-11-21");
    let order: Vec<&str> = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["node"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["setup", "load", "report"]);
    assert_eq!(task(&run, "load")["outputs"], json!({ "max_n": "3" }));
    // The run keeps the settings of the instances it used, without their URLs.
    assert_eq!(run["instances"]["pg"]["engine"], "postgres");
    assert_eq!(
        run["instances"]["pg"]["settings"]["max_connections"], 10,
        "{run}"
    );
    assert!(!run["instances"].to_string().contains("127.0.0.1"), "{run}");
    assert_eq!(run["variables"]["target"], "report_20261121");
    let rows = server
        .rows(
            "pg",
            "select m, k, month_ago::text as month_ago from report_20261121",
        )
        .await;
    assert_eq!(
        rows,
        [json!({ "m": 3, "k": "20261121", "month_ago": "2026-10-22" })]
    );
    let events = server
        .rows("pg", "select d::text as d, region from events")
        .await;
    assert_eq!(events, [json!({ "d": "2026-11-21", "region": "north" })]);
    // Logs show the statements as they ran, values quoted as literals.
    let (_, logs) = server
        .get(&format!("/api/v1/runs/{id}/logs?node=load"))
        .await;
    let text = logs.to_string();
    assert!(
        text.contains("insert into events values ('2026-11-21'::date, 'north', 3)"),
        "{logs}"
    );
    // A new definition is a new version; the finished run stays pinned to version 1.
    let v2 = apply(&server, &DAILY.replace("\"north\"", "\"south\"")).await;
    assert_eq!(v2["version"], 2);
    let (_, again) = server.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(again["version"], 1);
    let (_, diff) = server
        .get("/api/v1/flows/daily_orders/diff?from=1&to=2")
        .await;
    assert_eq!(
        diff["changes"],
        json!(["variables.region: \"north\" → \"south\""])
    );
}

const FLAKY: &str = r#"
name = "flaky"
failure = "continue"

[[nodes]]
id = "retried"
kind = "sql"
retries = 2
retry_delay_secs = 0
params = { instance = "pg", sql = "insert into attempts values (1); select 1 / (count(*) - 1) from attempts" }

[[nodes]]
id = "bad"
kind = "sql"
params = { instance = "pg", sql = "select * from appears_later" }

[[nodes]]
id = "after_bad"
kind = "sql"
upstream = ["bad"]
params = { instance = "pg", sql = "insert into attempts values (100)" }

[[nodes]]
id = "after_retried"
kind = "sql"
upstream = ["retried"]
params = { instance = "pg", sql = "select 1" }
"#;

#[tokio::test]
async fn retries_failures_and_restore() {
    let Some(server) = flow_server().await else {
        return;
    };
    server.sql("pg", "create table attempts (n int)").await;
    apply(&server, FLAKY).await;
    let id = start(&server, "flaky", json!({})).await;
    let run = finished(&server, &id).await;
    assert_eq!(run["status"], "failed", "{run}");
    // The first attempt failed, the retry succeeded, and its branch went on.
    assert_eq!(task(&run, "retried")["status"], "success");
    assert_eq!(task(&run, "retried")["attempt"], 2);
    assert_eq!(task(&run, "after_retried")["status"], "success");
    // The failed node names its error; its downstream never ran.
    let bad = task(&run, "bad");
    assert_eq!(bad["status"], "failed");
    assert!(
        bad["error"].as_str().unwrap().contains("appears_later"),
        "{bad}"
    );
    assert_eq!(task(&run, "after_bad")["status"], "upstream_failed");
    assert!(
        run["error"].as_str().unwrap().contains("node bad failed"),
        "{run}"
    );
    // Restore runs only what failed or did not run.
    server.sql("pg", "create table appears_later (x int)").await;
    let (status, v) = server
        .post(&format!("/api/v1/runs/{id}/restore"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let run = finished(&server, &id).await;
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(
        task(&run, "retried")["attempt"],
        2,
        "a succeeded node is not run again"
    );
    assert_eq!(task(&run, "after_bad")["status"], "success");
    let n = server
        .rows("pg", "select count(*) as n from attempts where n = 100")
        .await;
    assert_eq!(n[0]["n"], 1);
    // Rerun runs everything again.
    let (status, _) = server
        .post(&format!("/api/v1/runs/{id}/rerun"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let run = finished(&server, &id).await;
    assert_eq!(run["status"], "success", "{run}");
    let n = server
        .rows("pg", "select count(*) as n from attempts where n = 100")
        .await;
    assert_eq!(n[0]["n"], 2);
}

/// Whether a statement containing `text` is running on the server.
async fn running_on_server(server: &TestServer, text: &str) -> bool {
    let rows = server
        .rows(
            "pg",
            &format!(
                "select count(*) as n from pg_stat_activity where query like '%{text}%' and query not like '%pg_stat_activity%'"
            ),
        )
        .await;
    rows[0]["n"] != 0
}

#[tokio::test]
async fn timeouts_and_cancels_stop_the_statement_on_the_database() {
    let Some(server) = flow_server().await else {
        return;
    };
    apply(
        &server,
        r#"
name = "slow"
[[nodes]]
id = "sleep"
kind = "sql"
timeout_secs = 1
params = { instance = "pg", sql = "select pg_sleep(30), 'timeout-marker'" }
"#,
    )
    .await;
    let id = start(&server, "slow", json!({})).await;
    let run = finished(&server, &id).await;
    assert_eq!(run["status"], "failed");
    let error = task(&run, "sleep")["error"].as_str().unwrap().to_string();
    assert!(error.contains("timeout of 1 s"), "{error}");
    assert!(
        !running_on_server(&server, "timeout-marker").await,
        "the statement still runs"
    );

    apply(
        &server,
        r#"
name = "slow2"
[[nodes]]
id = "sleep"
kind = "sql"
params = { instance = "pg", sql = "select pg_sleep(30), 'cancel-marker'" }
[[nodes]]
id = "later"
kind = "sql"
upstream = ["sleep"]
params = { instance = "pg", sql = "select 1" }
"#,
    )
    .await;
    let id = start(&server, "slow2", json!({})).await;
    wait_for("the statement to start", 30, || async {
        running_on_server(&server, "cancel-marker")
            .await
            .then_some(())
    })
    .await;
    let (status, v) = server
        .post(&format!("/api/v1/runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "cancelled");
    assert_eq!(task(&v, "later")["status"], "cancelled");
    let sleep = wait_for("the running task to stop", 30, || async {
        let (_, v) = server.get(&format!("/api/v1/runs/{id}")).await;
        let t = task(&v, "sleep").clone();
        (t["status"] == "cancelled").then_some(t)
    })
    .await;
    assert_eq!(sleep["status"], "cancelled");
    assert!(
        !running_on_server(&server, "cancel-marker").await,
        "the statement still runs"
    );
}

#[tokio::test]
async fn bad_flows_are_refused_naming_node_and_field() {
    let server = TestServer::start().await;
    let Some(_) = postgres_instance(&server, "pg", Value::Null).await else {
        return;
    };
    let node = |extra: &str| {
        format!(
            "name = \"f\"\n[[nodes]]\nid = \"a\"\nkind = \"sql\"\nparams = {{ instance = \"pg\", sql = \"select 1\" }}\n{extra}"
        )
    };
    let cases = [
        (
            node(
                "[[nodes]]\nid = \"b\"\nkind = \"sql\"\nupstream = [\"c\"]\nparams = { instance = \"pg\", sql = \"select 1\" }\n[[nodes]]\nid = \"c\"\nkind = \"sql\"\nupstream = [\"b\"]\nparams = { instance = \"pg\", sql = \"select 1\" }",
            ),
            "the nodes b, c form a cycle",
        ),
        (
            node("[[nodes]]\nid = \"b\"\nkind = \"spreadsheet\""),
            "node \"b\", field kind: unknown kind \"spreadsheet\"",
        ),
        (
            node(
                "[[nodes]]\nid = \"b\"\nkind = \"sql\"\nparams = { instance = \"pg\", sql = \"select 1\", sqll = \"x\" }",
            ),
            "node \"b\", field params: unknown field `sqll`",
        ),
        (
            node(
                "[[nodes]]\nid = \"b\"\nkind = \"sql\"\nparams = { instance = \"nowhere\", sql = \"select 1\" }",
            ),
            "node \"b\", field params: instance \"nowhere\" is not registered",
        ),
        (
            node(
                "[[nodes]]\nid = \"b\"\nkind = \"sql\"\nparams = { instance = \"pg\", sql = \"select ${nope}\" }",
            ),
            "node \"b\", field params: unknown variable ${nope}",
        ),
        (
            node(
                "[[nodes]]\nid = \"b\"\nkind = \"sql\"\nupstream = [\"zz\"]\nparams = { instance = \"pg\", sql = \"select 1\" }",
            ),
            "node \"b\", field upstream: there is no node \"zz\"",
        ),
        (
            format!("{}\n[schedule]\ncron = \"61 * * * *\"", node("")),
            "schedule, field cron",
        ),
        (
            format!(
                "{}\n[schedule]\ncron = \"0 5 * * *\"\ntimezone = \"Mars/Olympus\"",
                node("")
            ),
            "schedule, field timezone",
        ),
        (node("colour = \"red\""), "unknown field `colour`"),
    ];
    for (toml, fragment) in cases {
        let (status, v) = server.post("/api/v1/flows", json!({ "toml": toml })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{toml}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
    }
    let (_, flows) = server.get("/api/v1/flows").await;
    assert_eq!(flows, json!([]), "nothing invalid was saved");
    // YAML is the same structure; its errors name the line too.
    let yaml =
        "name: y\nnodes:\n  - id: a\n    kind: sql\n    params: { instance: pg, sql: select 1 }\n";
    let (status, v) = server.post("/api/v1/flows", json!({ "yaml": yaml })).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["spec"]["nodes"][0]["params"]["sql"], "select 1");
    let (status, v) = server
        .post("/api/v1/flows", json!({ "yaml": "name: y\nnodes: 3\n" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("line 2"),
        "{v}"
    );
}

#[tokio::test]
async fn the_scheduler_fires_each_time_once_and_stops_when_disabled() {
    let Some(server) = flow_server().await else {
        return;
    };
    server.sql("pg", "create table ticks (at text)").await;
    apply(
        &server,
        r#"
name = "every_second"
[schedule]
cron = "* * * * * *"
timezone = "Asia/Shanghai"
[[nodes]]
id = "tick"
kind = "sql"
params = { instance = "pg", sql = "insert into ticks values (${cyctime})" }
"#,
    )
    .await;
    let runs = wait_for("three scheduled runs to succeed", 60, || async {
        let (_, runs) = server
            .get("/api/v1/runs?flow=every_second&status=success")
            .await;
        (runs.as_array().unwrap().len() >= 3).then_some(runs)
    })
    .await;
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .all(|r| r["trigger"] == "schedule")
    );
    let disabled_at = chrono::Utc::now().timestamp_millis();
    let (status, v) = server
        .post("/api/v1/flows/every_second/disable", json!({}))
        .await;
    assert_eq!(
        (status, v["enabled"].clone()),
        (StatusCode::OK, json!(false))
    );
    // Runs already started finish.
    wait_for("started runs to finish", 30, || async {
        let (_, runs) = server
            .get("/api/v1/runs?flow=every_second&status=running")
            .await;
        runs.as_array().unwrap().is_empty().then_some(())
    })
    .await;
    // Every scheduled time ran exactly once.
    let rows = server
        .rows(
            "pg",
            "select count(*) as n, count(distinct at) as d from ticks",
        )
        .await;
    assert_eq!(rows[0]["n"], rows[0]["d"], "a time fired twice: {rows:?}");
    let (_, all) = server.get("/api/v1/runs?flow=every_second").await;
    let mut times: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["scheduled_ms"].as_i64().unwrap())
        .collect();
    let n = times.len();
    times.sort_unstable();
    times.dedup();
    assert_eq!(times.len(), n);
    // Nothing fired for a time after the schedule was turned off.
    assert!(
        times.iter().all(|t| *t <= disabled_at),
        "fired after disable: {times:?} > {disabled_at}"
    );
    // The time zone shows in ${cyctime}: the flow's wall clock, not UTC.
    let (_, first) = server
        .get(&format!("/api/v1/runs/{}", all[0]["id"].as_str().unwrap()))
        .await;
    let cyctime = first["variables"]["cyctime"].as_str().unwrap().to_string();
    let expected = chrono::DateTime::from_timestamp_millis(first["scheduled_ms"].as_i64().unwrap())
        .unwrap()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    assert_eq!(cyctime, expected);
}

#[tokio::test]
async fn a_backfill_runs_each_business_date_once() {
    let Some(server) = flow_server().await else {
        return;
    };
    server
        .sql("pg", "create table loaded (d date primary key)")
        .await;
    apply(
        &server,
        r#"
name = "by_day"
[[nodes]]
id = "load"
kind = "sql"
params = { instance = "pg", sql = "insert into loaded values (${bizdate}::date)" }
"#,
    )
    .await;
    let (status, runs) = server
        .post(
            "/api/v1/flows/by_day/backfill",
            json!({ "from": "2026-11-01", "to": "2026-11-05", "parallel": 2, "descending": true }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{runs}");
    let runs = runs.as_array().unwrap().clone();
    assert_eq!(runs.len(), 5);
    assert_eq!(runs[0]["bizdate"], "2026-11-05", "descending: newest first");
    // At most two at once: the rest wait their turn.
    assert_eq!(runs.iter().filter(|r| r["status"] == "running").count(), 2);
    for r in &runs {
        let done = finished(&server, r["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "success", "{done}");
    }
    let rows = server
        .rows(
            "pg",
            "select string_agg(d::text, ',' order by d) as days from loaded",
        )
        .await;
    assert_eq!(
        rows[0]["days"],
        "2026-11-01,2026-11-02,2026-11-03,2026-11-04,2026-11-05"
    );
    let (status, v) = server
        .post(
            "/api/v1/flows/by_day/backfill",
            json!({ "from": "2026-11-05", "to": "2026-11-01" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("is after"),
        "{v}"
    );
}

/// A loopback HTTP listener that answers 200 and hands over every request body it receives.
async fn webhook_receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&data).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            let _ = tx.send(serde_json::from_str(body).unwrap_or(Value::Null));
                            let _ = socket
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn failures_successes_and_overruns_are_notified() {
    let Some(server) = flow_server().await else {
        return;
    };
    let Some(maildir) = ferry_testkit::smtp() else {
        return;
    };
    let (hook, mut received) = webhook_receiver().await;
    let tag = uuid_tag();
    let flow = |name: &str, sql: &str, on: &str| {
        format!(
            r#"
name = "{name}"
[notify]
on = [{on}]
webhook = "{hook}"
email = ["ops-{tag}@example.com"]
expected_duration_secs = 1
[[nodes]]
id = "work"
kind = "sql"
params = {{ instance = "pg", sql = "{sql}" }}
"#
        )
    };
    apply(
        &server,
        &flow("fails", "select * from no_such_table", "\"failure\""),
    )
    .await;
    let id = start(&server, "fails", json!({ "bizdate": "2026-11-21" })).await;
    assert_eq!(finished(&server, &id).await["status"], "failed");
    let note = received.recv().await.unwrap();
    assert_eq!(
        (
            note["event"].as_str(),
            note["flow"].as_str(),
            note["run_id"].as_str()
        ),
        (Some("failure"), Some("fails"), Some(id.as_str()))
    );
    assert!(
        note["error"].as_str().unwrap().contains("no_such_table"),
        "{note}"
    );
    // The same notice by e-mail, through the real SMTP server.
    let mail = wait_for("the failure e-mail", 30, || async {
        mail_containing(
            &maildir,
            &format!("ops-{tag}@example.com"),
            "flow fails failed",
        )
    })
    .await;
    assert!(
        mail.contains("bizdate 2026-11-21") && mail.contains(&id),
        "{mail}"
    );

    // Success notifies only when asked; a slow run notifies once that it is overdue.
    apply(
        &server,
        &flow(
            "slow_ok",
            "select pg_sleep(2.5)",
            "\"success\", \"overdue\"",
        ),
    )
    .await;
    let id = start(&server, "slow_ok", json!({})).await;
    let first = received.recv().await.unwrap();
    assert_eq!(
        (first["event"].as_str(), first["status"].as_str()),
        (Some("overdue"), Some("running"))
    );
    assert_eq!(finished(&server, &id).await["status"], "success");
    let second = received.recv().await.unwrap();
    assert_eq!(
        (second["event"].as_str(), second["run_id"].as_str()),
        (Some("success"), Some(id.as_str()))
    );
    assert!(received.try_recv().is_err(), "one notice per event");
    // A bad notification target is refused when the flow is saved.
    let (status, v) = server
        .post(
            "/api/v1/flows",
            json!({ "toml": flow("bad", "select 1", "\"failure\"").replace(&hook, "ftp://x") }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("notify, field webhook"),
        "{v}"
    );
}

#[tokio::test]
async fn http_and_shell_nodes() {
    let Some(server) = flow_server().await else {
        return;
    };
    let (hook, mut received) = webhook_receiver().await;
    apply(
        &server,
        &format!(
            r#"
name = "calls"
[[nodes]]
id = "notify_bi"
kind = "http"
params = {{ url = "{hook}", body = {{ day = "${{bizdate}}", source = "ferry" }} }}
"#
        ),
    )
    .await;
    let id = start(&server, "calls", json!({ "bizdate": "2026-11-21" })).await;
    let run = finished(&server, &id).await;
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(
        task(&run, "notify_bi")["outputs"],
        json!({ "http_status": "200" })
    );
    assert_eq!(
        received.recv().await.unwrap(),
        json!({ "day": "2026-11-21", "source": "ferry" })
    );
    // Shell nodes are refused unless the server allows them.
    let shell = "name = \"sh\"\n[[nodes]]\nid = \"echo\"\nkind = \"shell\"\nparams = { command = \"echo day=$FERRY_BIZDATE; exit 3\" }\n";
    let (status, v) = server.post("/api/v1/flows", json!({ "toml": shell })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--enable-shell"),
        "{v}"
    );
    let allowed = TestServer::start_with(|c| c.enable_shell = true).await;
    let (status, v) = allowed
        .post("/api/v1/flows", json!({ "toml": shell }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (_, v) = allowed
        .post("/api/v1/flows/sh/runs", json!({ "bizdate": "2026-11-21" }))
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let run = wait_for("the shell run", 30, || async {
        let (_, v) = allowed.get(&format!("/api/v1/runs/{id}")).await;
        (v["status"] != "running").then_some(v)
    })
    .await;
    assert_eq!(run["status"], "failed");
    assert!(
        task(&run, "echo")["error"]
            .as_str()
            .unwrap()
            .contains("exit status: 3"),
        "{run}"
    );
    let (_, logs) = allowed.get(&format!("/api/v1/runs/{id}/logs")).await;
    assert!(logs.to_string().contains("day=2026-11-21"), "{logs}");
}

#[tokio::test]
async fn logs_stream_live_until_the_run_ends() {
    let Some(server) = flow_server().await else {
        return;
    };
    apply(
        &server,
        r#"
name = "streamed"
[[nodes]]
id = "first"
kind = "sql"
params = { instance = "pg", sql = "select pg_sleep(0.5) as slept" }
[[nodes]]
id = "second"
kind = "sql"
upstream = ["first"]
params = { instance = "pg", sql = "select 42 as answer" }
"#,
    )
    .await;
    let id = start(&server, "streamed", json!({})).await;
    // Opened while the run is going; the response ends with the run.
    let body = server
        .http
        .get(format!("{}/api/v1/runs/{id}/logs/stream", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        body.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let text = body.text().await.unwrap();
    let first = text.find("select pg_sleep(0.5)").expect(&text);
    let second = text.find("select 42 as answer").expect(&text);
    assert!(first < second, "{text}");
    assert!(text.contains("event: log"), "{text}");
    assert!(
        text.trim_end().ends_with("event: end\ndata: success"),
        "{text}"
    );
}

#[tokio::test]
async fn cross_database_sql_joins_instances_into_a_table() {
    let server = TestServer::start().await;
    if !pg_and_my(&server).await {
        return;
    }
    server
        .sql("pg", "create table visits (user_id int, d date); insert into visits select g % 40, date '2026-11-21' - (g % 3) from generate_series(1, 3000) g")
        .await;
    server
        .sql("my", "create table users (user_id int primary key, region varchar(10)); insert into users select seq, if(seq % 4 = 0, 'north', 'south') from seq_0_to_39")
        .await;
    apply(
        &server,
        r#"
name = "uv_by_region"
[[nodes]]
id = "join"
kind = "cross_sql"
params = { sources = { v = { instance = "pg", sql = "select user_id, d from visits where d = ${bizdate}" }, u = { instance = "my", table = "users" } }, sql = "select u.region, count(distinct v.user_id) as uv from v join u on u.user_id = v.user_id group by u.region", target = { instance = "pg", table = "uv_by_region" }, create = true }
"#,
    )
    .await;
    for _ in 0..2 {
        let id = start(&server, "uv_by_region", json!({ "bizdate": "2026-11-21" })).await;
        let run = finished(&server, &id).await;
        assert_eq!(run["status"], "success", "{run}");
        assert_eq!(task(&run, "join")["rows"], 2);
    }
    // The same answer as one database would give, and a rerun replaced rather than added.
    let expected = server
        .rows("pg", "select case when user_id % 4 = 0 then 'north' else 'south' end as region, count(distinct user_id) as uv from visits where d = '2026-11-21' group by 1 order by 1")
        .await;
    let got = server
        .rows("pg", "select region, uv from uv_by_region order by region")
        .await;
    assert_eq!(got, expected);
    assert_eq!(got.len(), 2);
}

#[tokio::test]
async fn backups_go_to_files_and_restore_back() {
    let server = TestServer::start().await;
    if !pg_and_my(&server).await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    server
        .sql("pg", "create table kept (id int primary key, v text); insert into kept select g, 'é' || g from generate_series(1, 1000) g")
        .await;
    server
        .sql("my", "create table kept (id int primary key, v text); insert into kept select seq, concat('é', seq) from seq_1_to_1000")
        .await;
    // PostgreSQL's dump goes to the S3 server, MariaDB's to a local file.
    let bucket = match ferry_testkit::s3() {
        Some(endpoint) => Some(ferry_testkit::fresh_bucket(&endpoint).await),
        None => None,
    };
    for engine in ["pg", "my"] {
        let (file, written) = match (&bucket, engine) {
            (Some(b), "pg") => (
                format!("s3://{b}/pg/${{bizdate}}.sql"),
                format!("s3://{b}/pg/2026-11-21.sql"),
            ),
            _ => (
                dir.path()
                    .join(format!("{engine}/${{bizdate}}.sql"))
                    .display()
                    .to_string(),
                dir.path()
                    .join(format!("{engine}/2026-11-21.sql"))
                    .display()
                    .to_string(),
            ),
        };
        apply(
            &server,
            &format!(
                r#"
name = "backup_{engine}"
[[nodes]]
id = "dump"
kind = "backup"
params = {{ instance = "{engine}", url = "{file}" }}
"#
            ),
        )
        .await;
        let id = start(
            &server,
            &format!("backup_{engine}"),
            json!({ "bizdate": "2026-11-21" }),
        )
        .await;
        let run = finished(&server, &id).await;
        assert_eq!(run["status"], "success", "{run}");
        assert_eq!(
            task(&run, "dump")["outputs"]["backup_bytes"]
                .as_str()
                .map(|b| b.parse::<u64>().unwrap() > 1000),
            Some(true),
            "{run}"
        );
        // The table goes; the restore brings every row back.
        server.sql(engine, "drop table kept").await;
        apply(
            &server,
            &format!(
                r#"
name = "restore_{engine}"
[[nodes]]
id = "load"
kind = "restore"
params = {{ instance = "{engine}", url = "{written}" }}
"#
            ),
        )
        .await;
        let id = start(&server, &format!("restore_{engine}"), json!({})).await;
        let run = finished(&server, &id).await;
        assert_eq!(run["status"], "success", "{run}");
        let rows = server
            .rows(engine, "select count(*) as n, max(v) as top from kept")
            .await;
        assert_eq!(rows[0]["n"], 1000, "{engine}");
        assert_eq!(rows[0]["top"], "é999", "{engine}");
    }
    // A file that is not a dump fails the restore with the client's own message in the log.
    let bad = dir.path().join("bad.sql");
    std::fs::write(&bad, "this is not sql;\n").unwrap();
    apply(
        &server,
        &format!(
            "name = \"bad_restore\"\n[[nodes]]\nid = \"load\"\nkind = \"restore\"\nparams = {{ instance = \"pg\", url = \"{}\" }}\n",
            bad.display()
        ),
    )
    .await;
    let id = start(&server, "bad_restore", json!({})).await;
    let run = finished(&server, &id).await;
    assert_eq!(run["status"], "failed");
    assert!(
        task(&run, "load")["error"]
            .as_str()
            .unwrap()
            .contains("psql exited"),
        "{run}"
    );
    let (_, logs) = server.get(&format!("/api/v1/runs/{id}/logs")).await;
    assert!(logs.to_string().contains("syntax error"), "{logs}");
}

#[tokio::test]
async fn spark_applications_run_in_local_mode() {
    let Some(_) = ferry_testkit::spark() else {
        return;
    };
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("count.py");
    std::fs::write(
        &app,
        "import sys\nfrom pyspark.sql import SparkSession\nspark = SparkSession.builder.getOrCreate()\nn = spark.range(1000).filter('id % 2 = 0').count()\nprint('counted', n)\nopen(sys.argv[1], 'w').write(sys.argv[2] + ' ' + str(n))\nspark.stop()\n",
    )
    .unwrap();
    let out = dir.path().join("out.txt");
    apply(
        &server,
        &format!(
            r#"
name = "spark_job"
[[nodes]]
id = "count"
kind = "spark"
timeout_secs = 300
params = {{ application = "{}", master = "local[2]", args = ["{}", "${{bizdate}}"], conf = {{ "spark.ui.enabled" = "false" }} }}
"#,
            app.display(),
            out.display()
        ),
    )
    .await;
    let id = start(&server, "spark_job", json!({ "bizdate": "2026-11-21" })).await;
    let run = wait_for("the Spark run", 300, || async {
        let (_, v) = server.get(&format!("/api/v1/runs/{id}")).await;
        (v["status"] != "running").then_some(v)
    })
    .await;
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "2026-11-21 500");
    let (_, logs) = server.get(&format!("/api/v1/runs/{id}/logs")).await;
    assert!(
        logs.to_string().contains("counted 500"),
        "the driver's output is logged"
    );
}

fn uuid_tag() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    )
}

/// The text of a message in the maildir sent to `to` whose text contains `needle`.
fn mail_containing(maildir: &std::path::Path, to: &str, needle: &str) -> Option<String> {
    std::fs::read_dir(maildir.join("new"))
        .ok()?
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .find(|text| text.contains(to) && text.contains(needle))
}

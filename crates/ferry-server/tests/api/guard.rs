//! Statement admission on real databases: grants by statement class, SQL rules on prod,
//! approvals, smuggled writes, masking, the audit log, key rotation and flows' owners.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

/// Registers a fresh PostgreSQL database as `name`, runs `setup` on it while it is a dev
/// instance (prod holds DDL for approval), then moves it to environment `env`; its URL.
async fn pg_with(server: &TestServer, name: &str, env: &str, setup: &str) -> Option<String> {
    let admin = ferry_testkit::postgres()?;
    let url = ferry_testkit::fresh_postgres_db(&admin).await;
    let (s, v) = server
        .post(
            "/api/v1/instances",
            json!({ "name": name, "url": url, "environment": "dev" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    if !setup.is_empty() {
        server.sql(name, setup).await;
    }
    let (s, v) = server
        .patch(
            &format!("/api/v1/instances/{name}"),
            json!({ "environment": env }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    Some(url)
}

async fn pg_in(server: &TestServer, name: &str, env: &str) -> Option<String> {
    pg_with(server, name, env, "").await
}

async fn my_in(server: &TestServer, name: &str, env: &str) -> Option<String> {
    let admin = ferry_testkit::mysql()?;
    let url = ferry_testkit::fresh_mysql_db(&admin).await;
    let (s, v) = server
        .post(
            "/api/v1/instances",
            json!({ "name": name, "url": url, "environment": env }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    Some(url)
}

/// Runs SQL as `c`; the status and the body.
async fn run(c: &Client, instance: &str, sql: &str) -> (StatusCode, Value) {
    c.post(
        &format!("/api/v1/instances/{instance}/sql"),
        json!({ "sql": sql }),
    )
    .await
}

fn message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn count(server: &TestServer, instance: &str, table: &str) -> i64 {
    let rows = server
        .rows(instance, &format!("select count(*) as n from {table}"))
        .await;
    rows[0]["n"].as_i64().unwrap()
}

#[tokio::test]
async fn a_developer_cannot_delete_on_prod_but_can_on_dev() {
    let server = TestServer::start().await;
    let setup = "create table orders (id int primary key, v text); insert into orders select g, 'x' from generate_series(1, 10) g";
    if pg_with(&server, "prod", "prod", setup).await.is_none() {
        return;
    }
    pg_with(&server, "dev", "dev", setup).await;
    let dev = server.user("dora", &["developer"], &[]).await;
    let (s, v) = run(&dev, "prod", "DELETE FROM orders WHERE id = 1").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let m = message(&v);
    assert!(
        m.contains("write") && m.contains("\"prod\"") && m.contains("dora"),
        "{m}"
    );
    assert_eq!(count(&server, "prod", "orders").await, 10);
    // A script with a read first: refused whole, nothing ran.
    let (s, v) = run(
        &dev,
        "prod",
        "select count(*) from orders; delete from orders where id = 2",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).contains("statement 2 of 2"), "{v}");
    assert_eq!(count(&server, "prod", "orders").await, 10);
    // Reads on prod and writes on dev are fine.
    let (s, v) = run(&dev, "prod", "select count(*) as n from orders").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = run(&dev, "dev", "delete from orders where id = 1").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(count(&server, "dev", "orders").await, 9);
    // An async query and a SQL window check the same way.
    let (s, v) = dev
        .post(
            "/api/v1/queries",
            json!({ "instance": "prod", "sql": "delete from orders returning *" }),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (_, w) = dev
        .post("/api/v1/sessions", json!({ "instance": "prod" }))
        .await;
    let (s, v) = dev
        .post(
            &format!("/api/v1/sessions/{}/sql", w["id"].as_str().unwrap()),
            json!({ "sql": "update orders set v = 'y'" }),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // Another user's window is not found.
    let (s, _) = server
        .client
        .get(&format!("/api/v1/sessions/{}", w["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, StatusCode::OK, "an administrator sees every window");
    let other = server.user("otto", &["developer"], &[]).await;
    let (s, _) = other
        .post(
            &format!("/api/v1/sessions/{}/sql", w["id"].as_str().unwrap()),
            json!({ "sql": "select 1" }),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Prod rules hold for a dba too: no DELETE without WHERE, no DROP.
    let dba = server.user("dana", &["dba"], &[]).await;
    let (s, v) = run(&dba, "prod", "delete from orders").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).contains("rule require-where"), "{v}");
    let (s, v) = run(&dba, "prod", "drop table orders").await;
    assert!(message(&v).contains("rule no-drop"), "{s} {v}");
    assert_eq!(count(&server, "prod", "orders").await, 10);
    // max-affected-rows rolls a change back.
    let (s, v) = server
        .post(
            "/api/v1/rules",
            json!({ "scope": "instance:prod", "rule": "max-affected-rows", "value": "3" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = run(&dba, "prod", "update orders set v = 'z' where id <= 5").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r = &v["results"][0];
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rule max-affected-rows"),
        "{r}"
    );
    let z = server
        .rows("prod", "select count(*) as n from orders where v = 'z'")
        .await;
    assert_eq!(z[0]["n"], 0, "the change was rolled back");
    let (_, v) = run(&dba, "prod", "update orders set v = 'z' where id <= 3").await;
    assert_eq!(v["results"][0]["affected"], 3, "{v}");
    // max-rows caps what a statement returns.
    server
        .post(
            "/api/v1/rules",
            json!({ "scope": "env:prod", "rule": "max-rows", "value": "4" }),
        )
        .await;
    let (_, v) = run(&dev, "prod", "select * from orders").await;
    assert_eq!(v["results"][0]["row_count"], 4, "{v}");
    assert_eq!(v["results"][0]["truncated"], true);
}

#[tokio::test]
async fn a_dba_ddl_on_prod_waits_for_approval_and_runs_once() {
    let server = TestServer::start().await;
    let Some(url) = pg_with(
        &server,
        "prod",
        "prod",
        "create table customers (id int primary key)",
    )
    .await
    else {
        return;
    };
    let dba = server.user("dana", &["dba"], &[]).await;
    let other = server.user("dirk", &["dba"], &[]).await;
    let dev = server.user("dora", &["developer"], &[]).await;
    let ddl = "ALTER TABLE customers ADD COLUMN email text";
    let (s, v) = run(&dba, "prod", ddl).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).contains("rule ddl-approval"), "{v}");
    // A developer cannot even ask: they hold no DDL grant on prod.
    let (s, _) = dev
        .post(
            "/api/v1/approvals",
            json!({ "instance": "prod", "sql": ddl }),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, a) = dba
        .post(
            "/api/v1/approvals",
            json!({ "instance": "prod", "sql": ddl, "reason": "CRM needs e-mail" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    let id = a["id"].as_str().unwrap().to_string();
    // Not run before approval, not approvable by the requester, not by a developer.
    let (s, _) = dba
        .post(&format!("/api/v1/approvals/{id}/run"), json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = dba
        .post(&format!("/api/v1/approvals/{id}/approve"), json!({}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = dev
        .post(&format!("/api/v1/approvals/{id}/approve"), json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A wrong hash (not the statement reviewed) is refused.
    let (s, _) = other
        .post(
            &format!("/api/v1/approvals/{id}/approve"),
            json!({ "statement_hash": "00" }),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = other
        .post(
            &format!("/api/v1/approvals/{id}/approve"),
            json!({ "statement_hash": a["statement_hash"] }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "approved");
    // Only the requester runs it, once.
    let (s, _) = other
        .post(&format!("/api/v1/approvals/{id}/run"), json!({}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = dba
        .post(&format!("/api/v1/approvals/{id}/run"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "executed");
    let pg = pg_direct(&url).await;
    let cols = pg
        .query("select column_name from information_schema.columns where table_name = 'customers' and column_name = 'email'", &[])
        .await
        .unwrap();
    assert_eq!(cols.len(), 1);
    let (s, _) = dba
        .post(&format!("/api/v1/approvals/{id}/run"), json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "an approval runs once");
    // The same DDL typed again is still held: the approval was for that one run.
    let (s, _) = run(&dba, "prod", "ALTER TABLE customers ADD COLUMN phone text").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, audit) = server.get("/api/v1/audit?action=sql:approval").await;
    let entries = audit.as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["statement"] == ddl && e["outcome"] == "ok" && e["user"] == "dana"),
        "{audit}"
    );
}

#[tokio::test]
async fn smuggled_writes_are_refused_to_readers() {
    let server = TestServer::start().await;
    if pg_in(&server, "pg", "dev").await.is_none() || my_in(&server, "my", "dev").await.is_none() {
        return;
    }
    server
        .sql(
            "pg",
            "create table t (id int primary key); insert into t values (1), (2)",
        )
        .await;
    server
        .sql(
            "my",
            "create table t (id int primary key); insert into t values (1), (2)",
        )
        .await;
    let viewer = server.user("vic", &["viewer"], &[]).await;
    let cases = [
        (
            "pg",
            "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
        ),
        ("pg", "SELECT * INTO t_copy FROM t"),
        ("pg", "COPY t TO PROGRAM 'cat > /tmp/ferry-smuggled'"),
        ("pg", "SELECT pg_terminate_backend(pg_backend_pid())"),
        (
            "pg",
            "select pg_catalog.pg_terminate_backend(pid) from pg_stat_activity where false",
        ),
        ("pg", "select 1; delete from t"),
        ("pg", "/* just a read */ dElEtE FROM t"),
        ("pg", "-- select\nDROP TABLE t"),
        ("pg", "EXPLAIN ANALYZE DELETE FROM t"),
        (
            "pg",
            "select (select count(*) from (with d as (delete from t returning 1) select * from d) s)",
        ),
        ("pg", "select nextval('no_such_seq')"),
        ("pg", "this is not sql"),
        ("my", "SELECT LOAD_FILE('/etc/passwd')"),
        ("my", "SELECT * FROM t INTO OUTFILE '/tmp/ferry-smuggled'"),
        ("my", "/*!50000 DROP TABLE t*/"),
        ("my", "select 1; DELETE FROM t"),
    ];
    for (instance, sql) in cases {
        let (s, v) = run(&viewer, instance, sql).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{instance}: {sql} → {v}");
    }
    assert_eq!(count(&server, "pg", "t").await, 2);
    assert_eq!(count(&server, "my", "t").await, 2);
    let tables = server
        .rows(
            "pg",
            "select count(*) as n from pg_tables where tablename = 't_copy'",
        )
        .await;
    assert_eq!(tables[0]["n"], 0);
    // Each refusal is in the audit log with its class.
    let (_, audit) = server
        .get("/api/v1/audit?user=vic&outcome=denied&action=sql:console&limit=1000")
        .await;
    assert_eq!(audit.as_array().unwrap().len(), cases.len(), "{audit}");
    // A copy's source query is checked too.
    let spec = json!({ "source": { "query": { "instance": "pg", "sql": "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x" } }, "target": table("pg", "t2"), "create": true });
    let (s, _) = server
        .user("dev", &["developer"], &[])
        .await
        .post("/api/v1/transfers", spec)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(count(&server, "pg", "t").await, 2);
}

#[tokio::test]
async fn a_viewer_sees_masked_phones_however_the_query_is_written() {
    let server = TestServer::start().await;
    let setup = "create table customers (id int primary key, name text, phone text); \
                 insert into customers values (1, 'Ann', '+1-555-0100'), (2, 'Bob', '+1-555-0199'); \
                 create table orders (id int primary key, customer_id int, total int); \
                 insert into orders values (10, 1, 5), (11, 2, 7)";
    if pg_with(&server, "crm", "prod", setup).await.is_none() {
        return;
    }
    let (s, v) = server
        .post(
            "/api/v1/masks",
            json!({ "column": ".*phone.*", "algorithm": "keep-last-4" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let viewer = server.user("vic", &["viewer"], &[]).await;
    let phones = |v: &Value| -> Vec<String> {
        let r = &v["results"][0];
        assert!(r["error"].is_null(), "{r}");
        r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_object().unwrap().values().cloned())
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    // The last four digits show; the rest is covered.
    let (_, v) = run(&viewer, "crm", "select * from customers order by id").await;
    let shown = phones(&v);
    assert!(
        shown
            .iter()
            .any(|p| p.ends_with("0100") && p.starts_with('*')),
        "{shown:?}"
    );
    let all_text = v.to_string();
    assert!(!all_text.contains("555-0100"), "{all_text}");
    for sql in [
        "select phone as p from customers",
        "select upper(phone) from customers",
        "select p from (select phone as p from customers) s",
        "with c as (select phone from customers) select * from c",
        "select name from customers union select phone from customers",
        "select o.id, c.phone from orders o join customers c on c.id = o.customer_id",
        "select o.*, c.* from orders o join customers c on c.id = o.customer_id",
        "select (select phone from customers limit 1) as x",
        "select concat(phone, '') from customers",
        // The database's error would quote the value: it is hidden.
        "select cast(phone as int) from customers",
        "select 1 from customers where cast(phone as int) > 0",
    ] {
        let (s, v) = run(&viewer, "crm", sql).await;
        let text = v.to_string();
        assert!(
            s == StatusCode::FORBIDDEN
                || !(text.contains("555-01") || text.contains("555-01".to_uppercase().as_str())),
            "{sql} leaked: {text}"
        );
        assert!(
            s == StatusCode::OK || s == StatusCode::FORBIDDEN,
            "{sql}: {s} {v}"
        );
    }
    // Streamed formats and async queries are masked too.
    let resp = viewer
        .http
        .post(format!("{}/api/v1/instances/crm/sql", viewer.base))
        .json(&json!({ "sql": "select phone from customers", "format": "csv" }))
        .send()
        .await
        .unwrap();
    let csv = resp.text().await.unwrap();
    assert!(csv.contains("0100") && !csv.contains("555-0100"), "{csv}");
    let (_, q) = viewer
        .post(
            "/api/v1/queries",
            json!({ "instance": "crm", "sql": "select name, phone from customers" }),
        )
        .await;
    let id = q["id"].as_str().unwrap().to_string();
    let page = wait_for("the async query", 30, || async {
        let (s, v) = viewer.get(&format!("/api/v1/queries/{id}/result")).await;
        (s == StatusCode::OK).then_some(v)
    })
    .await;
    assert!(!page.to_string().contains("555-0100"), "{page}");
    // An export is masked like a result; a copy into a table is refused (it would land in clear).
    let dev = server.user("dev", &["developer"], &["instances"]).await;
    let file = server.dir.path().join("customers.csv");
    let (s, v) = dev
        .post("/api/v1/exports", json!({ "source": { "table": table("crm", "customers") }, "url": file.display().to_string(), "format": "csv" }))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let done = wait_for("the export", 60, || async {
        let (_, v) = dev.get(&format!("/api/v1/transfers/{id}")).await;
        (v["status"] != "running").then_some(v)
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let csv = std::fs::read_to_string(&file).unwrap();
    assert!(
        csv.contains("Ann") && csv.contains("0100") && !csv.contains("555-0100"),
        "{csv}"
    );
    let (s, v) = dev
        .post("/api/v1/transfers", json!({ "source": { "table": table("crm", "customers") }, "target": table("crm", "leak"), "create": true }))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).contains("masked"), "{v}");
    let (_, v) = run(
        &server.client,
        "crm",
        "select phone from customers order by id",
    )
    .await;
    assert_eq!(v["results"][0]["rows"][0]["phone"], "+1-555-0100");
    // A flow's results are not masked: a developer cannot make one read a masked column.
    let flow = |sql: &str| {
        json!({ "spec": { "name": "leak", "nodes": [{ "id": "read", "kind": "sql",
            "params": { "instance": "crm", "sql": sql, "output": ["p"] } }] } })
    };
    let (s, v) = dev
        .post(
            "/api/v1/flows",
            flow("select phone as p from customers limit 1"),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).contains("masked"), "{v}");
    let (s, v) = dev
        .post(
            "/api/v1/flows",
            flow("select name as p from orders o join customers c on c.id = o.customer_id limit 1"),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = dev
        .post("/api/v1/flows", flow("select count(*) as p from orders"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn the_audit_log_holds_every_console_statement_and_no_password() {
    let server = TestServer::start().await;
    let Some(url) = pg_in(&server, "pg", "dev").await else {
        return;
    };
    // A URL with a password, registered and then used.
    let with_password = url.replacen("postgres://", "postgres://postgres:hunter2-url-secret@", 1);
    let (s, v) = server
        .post(
            "/api/v1/instances",
            json!({ "name": "pw", "url": with_password }),
        )
        .await;
    assert!(s.is_success() || s == StatusCode::BAD_GATEWAY, "{v}");
    let dba = server.user("dana", &["dba"], &[]).await;
    let role = format!("ferry_audit_{}", std::process::id());
    let statements = [
        "create table audited (id int, v text)".to_string(),
        "insert into audited values (1, 'one')".to_string(),
        "select * from audited".to_string(),
        format!("create role {role} with login password 'hunter2-sql-secret'"),
        format!("alter role {role} password 'hunter2-sql-secret'"),
        format!("drop role {role}"),
        "select nonsense from nowhere".to_string(),
    ];
    for sql in &statements {
        let (s, v) = run(&dba, "pg", sql).await;
        assert_eq!(s, StatusCode::OK, "{sql}: {v}");
    }
    let (_, w) = dba
        .post("/api/v1/sessions", json!({ "instance": "pg" }))
        .await;
    let wid = w["id"].as_str().unwrap().to_string();
    dba.post(
        &format!("/api/v1/sessions/{wid}/sql"),
        json!({ "sql": "begin; update audited set v = 'x'; commit" }),
    )
    .await;
    let (_, entries) = server.get("/api/v1/audit?user=dana&limit=1000").await;
    let entries = entries.as_array().unwrap();
    for sql in &statements {
        let redacted = sql.replace("'hunter2-sql-secret'", "'***'");
        let e = entries
            .iter()
            .find(|e| e["statement"] == redacted.as_str())
            .unwrap_or_else(|| panic!("{redacted} is not in the audit log"));
        assert_eq!(e["instance"], "pg");
        assert!(e["class"].is_string() && e["duration_ms"].is_i64(), "{e}");
    }
    let failed = entries
        .iter()
        .find(|e| e["statement"] == "select nonsense from nowhere")
        .unwrap();
    assert_eq!(failed["outcome"], "failed");
    let insert = entries
        .iter()
        .find(|e| e["statement"] == "insert into audited values (1, 'one')")
        .unwrap();
    assert_eq!(insert["rows"], 1);
    assert_eq!(insert["class"], "write");
    for s in ["begin", "update audited set v = 'x'", "commit"] {
        assert!(
            entries
                .iter()
                .any(|e| e["statement"] == s && e["action"] == "sql:session"),
            "{s}"
        );
    }
    // Nothing anywhere in the log holds a password: not the SQL ones, not the URL's.
    let export = server
        .http
        .get(format!(
            "{}/api/v1/audit/export?format=ndjson&limit=100000",
            server.base
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(export.lines().count() >= statements.len());
    for secret in [
        "hunter2-sql-secret",
        "hunter2-url-secret",
        ADMIN_PASSWORD,
        USER_PASSWORD,
    ] {
        assert!(!export.contains(secret), "the audit log holds {secret}");
    }
    assert!(!captured_logs().contains("hunter2-sql-secret"));
    // The store refuses to change or delete an entry.
    let store = server.dir.path().join("data/meta.db");
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", store.display()))
        .await
        .unwrap();
    let e = sqlx::query("delete from audit_log")
        .execute(&db)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    let e = sqlx::query("update audit_log set user_name = 'x'")
        .execute(&db)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
}

#[tokio::test]
async fn after_key_rotation_every_instance_connects_and_the_old_key_opens_nothing() {
    let server = TestServer::start().await;
    let Some(_) = pg_in(&server, "pg", "dev").await else {
        return;
    };
    if my_in(&server, "my", "dev").await.is_none() {
        return;
    }
    let lite = server.dir.path().join("k.db");
    server
        .add_instance(
            "lite",
            &format!("sqlite://{}?mode=rwc", lite.display()),
            Value::Null,
        )
        .await;
    let key_file = server.dir.path().join("data/master.key");
    let old_text = std::fs::read_to_string(&key_file).unwrap();
    let old = ferry_meta::MasterKey::from_base64(&old_text).unwrap();
    let before = server.state.meta.instance_secrets().await.unwrap();
    assert_eq!(before.len(), 3);
    for (_, s) in &before {
        old.decrypt(s).unwrap();
    }
    let dba = server.user("dana", &["dba"], &[]).await;
    let (s, _) = dba.post("/api/v1/admin/rotate-key", json!({})).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "only an administrator rotates the key"
    );
    let (s, v) = server.post("/api/v1/admin/rotate-key", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["secrets"], 3);
    let new_text = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(new_text, old_text);
    let new = ferry_meta::MasterKey::from_base64(&new_text).unwrap();
    for (name, s) in server.state.meta.instance_secrets().await.unwrap() {
        assert!(old.decrypt(&s).is_err(), "the old key still opens {name}");
        new.decrypt(&s).unwrap();
    }
    // A new server on the same data (as after a restart) connects to every instance.
    let config_dir = server.dir.path().join("data");
    let restarted = ferry_server::build_state(ferry_server::ServerConfig {
        data_dir: config_dir,
        admin_password: Some(ADMIN_PASSWORD.into()),
        ..Default::default()
    })
    .await
    .unwrap();
    for name in ["pg", "my", "lite"] {
        let pool = restarted.pool(name).await.unwrap();
        let mut lease = pool
            .acquire(ferry_core::Feature::System, None, "test")
            .await
            .unwrap();
        lease.conn().run("select 1").await.unwrap();
    }
    for name in ["pg", "my", "lite"] {
        let (s, v) = server
            .post(&format!("/api/v1/instances/{name}/test"), json!({}))
            .await;
        assert_eq!(s, StatusCode::OK, "{name}: {v}");
    }
}

#[tokio::test]
async fn sign_in_tokens_sessions_and_hardening() {
    let server = TestServer::start().await;
    let anon = reqwest::Client::new();
    let login = |body: Value| {
        let anon = anon.clone();
        let base = server.base.clone();
        async move {
            let r = anon
                .post(format!("{base}/api/v1/auth/login"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let cookie = r
                .headers()
                .get("set-cookie")
                .map(|v| v.to_str().unwrap().to_string());
            (
                status,
                r.json::<Value>().await.unwrap_or(Value::Null),
                cookie,
            )
        }
    };
    server.user("eve", &["viewer"], &[]).await;
    let (s, v, _) = login(json!({ "user": "eve", "password": "wrong-password-1" })).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, _, _) = login(json!({ "user": "nobody", "password": "wrong-password-1" })).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for _ in 0..4 {
        login(json!({ "user": "eve", "password": "wrong-password-1" })).await;
    }
    let (s, v, _) = login(json!({ "user": "eve", "password": USER_PASSWORD })).await;
    assert_eq!(
        s,
        StatusCode::TOO_MANY_REQUESTS,
        "five failures lock the pair out for a while: {v}"
    );
    // Tokens: listed without secrets, revoked for good.
    let (s, v, _) =
        login(json!({ "user": "admin", "password": ADMIN_PASSWORD, "name": "t2" })).await;
    assert_eq!(s, StatusCode::CREATED);
    let token = v["token"].as_str().unwrap().to_string();
    let (_, list) = server.get("/api/v1/tokens").await;
    assert!(!list.to_string().contains(&token));
    let with = |t: &str| {
        anon.get(format!("{}/api/v1/auth/whoami", server.base))
            .bearer_auth(t.to_string())
    };
    assert_eq!(with(&token).send().await.unwrap().status(), StatusCode::OK);
    let (s, _) = server
        .delete(&format!("/api/v1/tokens/{}", v["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        with(&token).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        with("fyt_made_up").send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    // A browser session: the cookie works for reads; changes need the CSRF token.
    let (s, v, cookie) =
        login(json!({ "user": "admin", "password": ADMIN_PASSWORD, "kind": "session" })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let cookie = cookie.unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    assert!(v["token"].is_null());
    let csrf = v["csrf_token"].as_str().unwrap().to_string();
    let get = anon
        .get(format!("{}/api/v1/instances", server.base))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(get.headers()["x-frame-options"], "DENY");
    assert_eq!(get.headers()["x-content-type-options"], "nosniff");
    assert!(
        get.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let body = json!({ "name": "via-cookie", "url": "sqlite::memory:" });
    let post = |csrf: Option<&str>| {
        let mut r = anon
            .post(format!("{}/api/v1/instances", server.base))
            .header("cookie", &pair)
            .json(&body);
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        r.send()
    };
    assert_eq!(post(None).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(
        post(Some("wrong")).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(Some(&csrf)).await.unwrap().status(),
        StatusCode::CREATED
    );
    // A session cookie is not a bearer token, nor the other way round.
    let secret = pair.split_once('=').unwrap().1;
    assert_eq!(
        with(secret).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    // Oversized requests are refused before they are read.
    let big = "x".repeat(9 << 20);
    let r = server
        .http
        .post(format!("{}/api/v1/flows", server.base))
        .json(&json!({ "toml": big }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The first administrator's password is never in the logs.
    assert!(!captured_logs().contains(ADMIN_PASSWORD));
}

#[tokio::test]
async fn a_flow_runs_with_its_owners_grants_checked_at_save_and_at_each_run() {
    let server = TestServer::start().await;
    let setup = "create table events (id int, d date)";
    if pg_with(&server, "prod", "prod", setup).await.is_none() {
        return;
    }
    pg_with(&server, "dev", "dev", setup).await;
    let dev = server.user("dora", &["developer"], &[]).await;
    let flow = |instance: &str| {
        json!({ "spec": { "name": "purge", "nodes": [{ "id": "purge", "kind": "sql",
            "params": { "instance": instance, "sql": "delete from events where d < ${bizdate}" } }] } })
    };
    let (s, v) = dev.post("/api/v1/flows", flow("prod")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).contains("node \"purge\""), "{v}");
    let (s, v) = dev.post("/api/v1/flows", flow("dev")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // A federated query runs inside Ferry: it may only read (DataFusion's COPY TO writes files).
    let cross = json!({ "spec": { "name": "fed", "nodes": [{ "id": "c", "kind": "cross_sql",
        "params": { "sources": { "e": { "instance": "dev", "table": "events" } },
                    "sql": "COPY (select * from e) TO '/tmp/ferry-cross.csv'",
                    "output": { "url": "s3://bucket/x.csv", "format": "csv" } } }] } });
    let (s, v) = dev.post("/api/v1/flows", cross).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).contains("may only read"), "{v}");
    let (s, v) = dev.post("/api/v1/flows/purge/runs", json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let status = |id: String| {
        let server = &server;
        async move {
            wait_for("the run to end", 60, || {
                let id = id.clone();
                async move {
                    let (_, r) = server.get(&format!("/api/v1/runs/{id}")).await;
                    (r["status"] != "running").then_some(r)
                }
            })
            .await
        }
    };
    let r = status(id).await;
    assert_eq!(r["status"], "success", "{r}");
    // The owner loses the developer role: the next run is refused at the node.
    let (s, v) = server
        .patch("/api/v1/users/dora", json!({ "roles": ["viewer"] }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = server.post("/api/v1/flows/purge/runs", json!({})).await;
    let r = status(v["id"].as_str().unwrap().to_string()).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        r.to_string()
            .contains("re-checked with the grants of \\\"dora\\\""),
        "{r}"
    );
}

#[tokio::test]
async fn instances_connect_over_tls_as_their_sslmode_says() {
    let server = TestServer::start().await;
    let Some((url, ca)) = ferry_testkit::postgres_tls() else {
        return;
    };
    let with = |host: &str, query: &str| url.replace("127.0.0.1", host) + query;
    // The server accepts only TLS: without it the connection is refused with its reason.
    let (s, v) = server
        .post(
            "/api/v1/instances",
            json!({ "name": "plain", "url": with("127.0.0.1", "") }),
        )
        .await;
    assert!(!s.is_success(), "{v}");
    assert!(message(&v).contains("no encryption"), "{v}");
    let ca_q = format!("&sslrootcert={ca}");
    for (name, u) in [
        ("req", with("127.0.0.1", "?sslmode=require")),
        (
            "ca",
            with("127.0.0.1", &format!("?sslmode=verify-ca{ca_q}")),
        ),
        (
            "full",
            with("localhost", &format!("?sslmode=verify-full{ca_q}")),
        ),
    ] {
        let (s, v) = server
            .post("/api/v1/instances", json!({ "name": name, "url": u }))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{name}: {v}");
        let rows = server
            .rows(
                name,
                "select ssl, version from pg_stat_ssl where pid = pg_backend_pid()",
            )
            .await;
        assert_eq!(rows[0]["ssl"], true, "{name}: {rows:?}");
        assert!(
            rows[0]["version"].as_str().unwrap().starts_with("TLS"),
            "{rows:?}"
        );
    }
    // verify-full checks the name: the certificate is for localhost, not 127.0.0.1.
    let (s, v) = server
        .post("/api/v1/instances", json!({ "name": "wrong-name", "url": with("127.0.0.1", &format!("?sslmode=verify-full{ca_q}")) }))
        .await;
    assert!(!s.is_success(), "{v}");
    assert!(message(&v).to_lowercase().contains("certificate"), "{v}");
    // verify-full against the system's roots does not trust a private CA.
    let (s, v) = server
        .post(
            "/api/v1/instances",
            json!({ "name": "untrusted", "url": with("localhost", "?sslmode=verify-full") }),
        )
        .await;
    assert!(!s.is_success(), "{v}");
}

#[tokio::test]
async fn mysql_instances_connect_over_tls_as_their_ssl_mode_says() {
    let server = TestServer::start().await;
    let Some((url, ca)) = ferry_testkit::mysql_tls() else {
        return;
    };
    let with = |host: &str, query: &str| url.replace("127.0.0.1", host) + query;
    let (s, v) = server
        .post(
            "/api/v1/instances",
            json!({ "name": "plain", "url": with("127.0.0.1", "?ssl-mode=DISABLED") }),
        )
        .await;
    assert!(!s.is_success(), "the server requires TLS: {v}");
    let ca_q = format!("&ssl-ca={ca}");
    for (name, u) in [
        ("req", with("127.0.0.1", "?ssl-mode=REQUIRED")),
        (
            "ca",
            with("127.0.0.1", &format!("?ssl-mode=VERIFY_CA{ca_q}")),
        ),
        (
            "full",
            with("localhost", &format!("?ssl-mode=VERIFY_IDENTITY{ca_q}")),
        ),
    ] {
        let (s, v) = server
            .post("/api/v1/instances", json!({ "name": name, "url": u }))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{name}: {v}");
        let rows = server.rows(name, "show status like 'Ssl_version'").await;
        let version = rows[0]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(version.contains("TLS"), "{name}: {rows:?}");
    }
    let (s, v) = server
        .post("/api/v1/instances", json!({ "name": "wrong-name", "url": with("127.0.0.1", &format!("?ssl-mode=VERIFY_IDENTITY{ca_q}")) }))
        .await;
    assert!(
        !s.is_success(),
        "the certificate names localhost, not 127.0.0.1: {v}"
    );
}

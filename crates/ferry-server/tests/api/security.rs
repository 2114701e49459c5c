//! Security end to end: every endpoint × every built-in role, grants and SQL rules on real
//! databases, smuggled writes, masking, approvals, the audit log, key rotation, sign-in.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

const ROLES: [&str; 4] = ["admin", "dba", "developer", "viewer"];

/// What a role gets from a call.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Allowed: any answer but 401, 403 and 5xx.
    Ok,
    /// Refused with 403 and nothing changed.
    Denied,
    /// Someone else's: 404, as if it did not exist.
    Hidden,
}

struct Call {
    method: &'static str,
    path: String,
    body: Value,
    expect: fn(&str) -> Expect,
}

fn all(_: &str) -> Expect {
    Expect::Ok
}
fn admin_only(r: &str) -> Expect {
    if r == "admin" {
        Expect::Ok
    } else {
        Expect::Denied
    }
}
fn admin_dba(r: &str) -> Expect {
    if r == "admin" || r == "dba" {
        Expect::Ok
    } else {
        Expect::Denied
    }
}
fn not_viewer(r: &str) -> Expect {
    if r == "viewer" {
        Expect::Denied
    } else {
        Expect::Ok
    }
}
fn admin_sees_others_hidden(r: &str) -> Expect {
    if r == "admin" {
        Expect::Ok
    } else {
        Expect::Hidden
    }
}
fn approvers_see(r: &str) -> Expect {
    if r == "admin" || r == "dba" {
        Expect::Ok
    } else {
        Expect::Hidden
    }
}

async fn status_of(c: &Client, method: &str, path: &str, body: &Value) -> StatusCode {
    let url = format!("{}{path}", c.base);
    let req = match method {
        "GET" => c.http.get(url),
        "POST" => c.http.post(url).json(body),
        "PUT" => c.http.put(url).json(body),
        "PATCH" => c.http.patch(url).json(body),
        "DELETE" => c.http.delete(url),
        other => panic!("method {other}"),
    };
    // Only the status: some answers (log streams) do not end.
    req.send().await.unwrap().status()
}

/// Everything a call could change, read from the store and the databases.
async fn fingerprint(server: &TestServer) -> String {
    let m = &server.state.meta;
    let mut out = Vec::new();
    for i in m.list_instances().await.unwrap() {
        out.push(format!(
            "instance {} {} {}",
            i.name, i.environment, i.settings
        ));
    }
    for u in m.list_users().await.unwrap() {
        out.push(format!(
            "user {} {} {} {} {}",
            u.name, u.roles, u.grants, u.disabled, u.password_hash
        ));
        for t in m.list_tokens(&u.name).await.unwrap() {
            out.push(format!("token {} {:?}", t.id, t.revoked_at_ms));
        }
    }
    for r in m.list_roles().await.unwrap() {
        out.push(format!("role {} {}", r.name, r.grants));
    }
    for f in m.list_flows().await.unwrap() {
        out.push(format!("flow {} {} {}", f.name, f.version, f.enabled));
    }
    out.push(format!(
        "runs {}",
        m.list_runs(None, None, 10_000).await.unwrap().len()
    ));
    out.push(format!(
        "queries {}",
        m.list_queries(10_000).await.unwrap().len()
    ));
    out.push(format!(
        "transfers {}",
        m.list_transfers(10_000).await.unwrap().len()
    ));
    out.push(format!("archives {:?}", m.list_archives().await.unwrap()));
    out.push(format!("rules {:?}", m.list_sql_rules().await.unwrap()));
    out.push(format!(
        "masks {}",
        m.list_mask_rules().await.unwrap().len()
    ));
    for a in m.list_approvals(None).await.unwrap() {
        out.push(format!("approval {} {}", a.id, a.status));
    }
    out.push(format!("sessions {}", server.state.sessions.list().len()));
    let rows = server.rows("lite", "select count(*) as n from t").await;
    out.push(format!("lite.t {}", rows[0]["n"]));
    out.join("\n")
}

const FLOW: &str = r#"{"name": "f1", "nodes": [{"id": "a", "kind": "sql", "params": {"instance": "lite", "sql": "select 1"}}]}"#;

/// A server with fixtures, and `u` signed in with `role`; the calls and their ids.
async fn fixture(role: &str) -> (TestServer, Client, Vec<Call>) {
    let server = TestServer::start().await;
    let lite = server.dir.path().join("lite.db");
    server
        .add_instance(
            "lite",
            &format!("sqlite://{}?mode=rwc", lite.display()),
            Value::Null,
        )
        .await;
    server
        .add_instance("gone", "sqlite::memory:", Value::Null)
        .await;
    server
        .sql(
            "lite",
            "create table t (id integer primary key, v text); insert into t values (1, 'a')",
        )
        .await;
    let (s, v) = server
        .post(
            "/api/v1/flows",
            json!({ "spec": serde_json::from_str::<Value>(FLOW).unwrap() }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, run) = server.post("/api/v1/flows/f1/runs", json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{run}");
    let run = run["id"].as_str().unwrap().to_string();
    let (s, v) = server
        .put("/api/v1/roles/c1", json!({ "grants": ["read"] }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    server.user("victim", &["viewer"], &[]).await;
    let (_, mask) = server
        .post(
            "/api/v1/masks",
            json!({ "table": "secrets", "column": "v", "algorithm": "full" }),
        )
        .await;
    let mask = mask["id"].as_str().unwrap().to_string();
    let (_, archive) = server.post("/api/v1/archives", json!({ "name": "arch", "url": server.dir.path().join("arch").display().to_string(), "format": "parquet" })).await;
    assert!(archive.is_object(), "{archive}");
    // Someone else's transfer, and approvals asked by the first administrator.
    let spec = json!({ "source": { "table": table("lite", "t") }, "target": table("lite", "t_copy"), "create": true });
    let (_, tr) = server.post("/api/v1/transfers", spec).await;
    let transfer = tr["id"].as_str().unwrap().to_string();
    let ask = |sql: &str| json!({ "instance": "lite", "sql": sql, "reason": "fixture" });
    let (_, a1) = server
        .post("/api/v1/approvals", ask("create table approved_1 (i int)"))
        .await;
    let (_, a2) = server
        .post("/api/v1/approvals", ask("create table approved_2 (i int)"))
        .await;
    let (a1, a2) = (
        a1["id"].as_str().unwrap().to_string(),
        a2["id"].as_str().unwrap().to_string(),
    );

    let u = server.user("u", &[role], &[]).await;
    // The caller's own things.
    let (_, session) = u
        .post("/api/v1/sessions", json!({ "instance": "lite" }))
        .await;
    let session = session["id"].as_str().unwrap().to_string();
    let (_, q) = u
        .post(
            "/api/v1/queries",
            json!({ "instance": "lite", "sql": "select 1 as one" }),
        )
        .await;
    let query = q["id"].as_str().unwrap().to_string();
    let (_, tok) = u.post("/api/v1/tokens", json!({ "name": "spare" })).await;
    let token = tok["id"].as_str().unwrap().to_string();

    let c = |method: &'static str, path: &str, body: Value, expect: fn(&str) -> Expect| Call {
        method,
        path: path.to_string(),
        body,
        expect,
    };
    let calls = vec![
        c("GET", "/metrics", json!(null), all),
        c("GET", "/api/v1/auth/whoami", json!(null), all),
        c(
            "POST",
            "/api/v1/auth/password",
            json!({ "old_password": USER_PASSWORD, "new_password": USER_PASSWORD }),
            all,
        ),
        c("GET", "/api/v1/instances", json!(null), all),
        c(
            "POST",
            "/api/v1/instances",
            json!({ "name": "added", "url": "sqlite::memory:" }),
            admin_dba,
        ),
        c("GET", "/api/v1/instances/lite", json!(null), all),
        c(
            "PATCH",
            "/api/v1/instances/lite",
            json!({ "environment": "test" }),
            admin_dba,
        ),
        c("POST", "/api/v1/instances/lite/test", json!(null), all),
        c("GET", "/api/v1/instances/lite/databases", json!(null), all),
        c("GET", "/api/v1/instances/lite/tables", json!(null), all),
        c("GET", "/api/v1/instances/lite/tables/t", json!(null), all),
        c(
            "GET",
            "/api/v1/instances/lite/processes",
            json!(null),
            admin_dba,
        ),
        c(
            "DELETE",
            "/api/v1/instances/lite/processes/1",
            json!(null),
            admin_dba,
        ),
        c(
            "GET",
            "/api/v1/instances/lite/connections",
            json!(null),
            all,
        ),
        c("GET", "/api/v1/instances/lite/trends", json!(null), all),
        c(
            "POST",
            "/api/v1/instances/lite/sql",
            json!({ "sql": "select count(*) from t" }),
            all,
        ),
        c(
            "POST",
            "/api/v1/instances/lite/sql",
            json!({ "sql": "insert into t (v) values ('w')" }),
            not_viewer,
        ),
        c(
            "POST",
            "/api/v1/instances/lite/sql",
            json!({ "sql": "pragma journal_mode = delete" }),
            admin_dba,
        ),
        c(
            "POST",
            "/api/v1/sessions",
            json!({ "instance": "lite" }),
            all,
        ),
        c("GET", "/api/v1/sessions", json!(null), all),
        c(
            "GET",
            &format!("/api/v1/sessions/{session}"),
            json!(null),
            all,
        ),
        c(
            "POST",
            &format!("/api/v1/sessions/{session}/sql"),
            json!({ "sql": "select 1" }),
            all,
        ),
        c(
            "POST",
            &format!("/api/v1/sessions/{session}/cancel"),
            json!(null),
            all,
        ),
        c(
            "POST",
            "/api/v1/queries",
            json!({ "instance": "lite", "sql": "select 2" }),
            all,
        ),
        c("GET", "/api/v1/queries", json!(null), all),
        c("GET", &format!("/api/v1/queries/{query}"), json!(null), all),
        c(
            "GET",
            &format!("/api/v1/queries/{query}/result"),
            json!(null),
            all,
        ),
        c(
            "DELETE",
            &format!("/api/v1/queries/{query}"),
            json!(null),
            all,
        ),
        c("GET", "/api/v1/policy-actions", json!(null), admin_dba),
        c(
            "POST",
            "/api/v1/transfers",
            json!({ "source": { "table": table("lite", "t") }, "target": table("lite", "t_mine"), "create": true }),
            not_viewer,
        ),
        c("GET", "/api/v1/transfers", json!(null), all),
        c(
            "GET",
            &format!("/api/v1/transfers/{transfer}"),
            json!(null),
            admin_sees_others_hidden,
        ),
        c(
            "DELETE",
            &format!("/api/v1/transfers/{transfer}"),
            json!(null),
            admin_sees_others_hidden,
        ),
        c(
            "POST",
            "/api/v1/exports",
            json!({ "source": { "query": { "instance": "lite", "sql": "select id from t" } }, "url": server.dir.path().join("out.csv").display().to_string(), "format": "csv" }),
            admin_dba,
        ),
        c(
            "GET",
            "/api/v1/schema-diff?source=lite:t&target=lite:t",
            json!(null),
            all,
        ),
        c("GET", "/api/v1/archives", json!(null), all),
        c(
            "POST",
            "/api/v1/archives",
            json!({ "name": "arch2", "url": server.dir.path().join("arch2").display().to_string(), "format": "parquet" }),
            admin_dba,
        ),
        c("GET", "/api/v1/flows", json!(null), all),
        c(
            "POST",
            "/api/v1/flows",
            json!({ "spec": serde_json::from_str::<Value>(&FLOW.replace("f1", "f2")).unwrap() }),
            not_viewer,
        ),
        c("GET", "/api/v1/flows/f1", json!(null), all),
        c("GET", "/api/v1/flows/f1/diff?from=1&to=1", json!(null), all),
        c("POST", "/api/v1/flows/f1/disable", json!(null), not_viewer),
        c("POST", "/api/v1/flows/f1/enable", json!(null), not_viewer),
        c("POST", "/api/v1/flows/f1/runs", json!({}), not_viewer),
        c(
            "POST",
            "/api/v1/flows/f1/backfill",
            json!({ "from": "2026-01-01", "to": "2026-01-01" }),
            not_viewer,
        ),
        c("GET", "/api/v1/flow-templates", json!(null), all),
        c(
            "POST",
            "/api/v1/flow-templates/analyze-tables",
            json!({ "flow": "x", "params": { "instance": "lite", "tables": "t" } }),
            all,
        ),
        c("GET", "/api/v1/runs", json!(null), all),
        c("GET", &format!("/api/v1/runs/{run}"), json!(null), all),
        c("GET", &format!("/api/v1/runs/{run}/logs"), json!(null), all),
        c(
            "GET",
            &format!("/api/v1/runs/{run}/logs/stream"),
            json!(null),
            all,
        ),
        c(
            "POST",
            &format!("/api/v1/runs/{run}/cancel"),
            json!(null),
            not_viewer,
        ),
        c(
            "POST",
            &format!("/api/v1/runs/{run}/restore"),
            json!(null),
            not_viewer,
        ),
        c(
            "POST",
            &format!("/api/v1/runs/{run}/rerun"),
            json!(null),
            not_viewer,
        ),
        c("GET", "/api/v1/tokens", json!(null), all),
        c("POST", "/api/v1/tokens", json!({ "name": "another" }), all),
        c(
            "DELETE",
            &format!("/api/v1/tokens/{token}"),
            json!(null),
            all,
        ),
        c("GET", "/api/v1/users", json!(null), admin_only),
        c(
            "POST",
            "/api/v1/users",
            json!({ "name": "new-user", "password": USER_PASSWORD, "roles": ["viewer"] }),
            admin_only,
        ),
        c("GET", "/api/v1/users/victim", json!(null), admin_only),
        c(
            "PATCH",
            "/api/v1/users/victim",
            json!({ "roles": ["developer"] }),
            admin_only,
        ),
        c("GET", "/api/v1/roles", json!(null), admin_only),
        c(
            "PUT",
            "/api/v1/roles/c2",
            json!({ "grants": ["read@env:dev"] }),
            admin_only,
        ),
        c("GET", "/api/v1/audit", json!(null), admin_dba),
        c(
            "GET",
            "/api/v1/audit/export?format=csv",
            json!(null),
            admin_dba,
        ),
        c("GET", "/api/v1/rules", json!(null), all),
        c(
            "POST",
            "/api/v1/rules",
            json!({ "scope": "env:dev", "rule": "max-rows", "value": "100" }),
            admin_only,
        ),
        c(
            "DELETE",
            "/api/v1/rules?scope=env:dev&rule=max-rows",
            json!(null),
            admin_only,
        ),
        c("GET", "/api/v1/masks", json!(null), all),
        c(
            "POST",
            "/api/v1/masks",
            json!({ "column": ".*secret.*", "algorithm": "hash" }),
            admin_only,
        ),
        c(
            "POST",
            "/api/v1/approvals",
            json!({ "instance": "lite", "sql": "create table asked (i int)" }),
            not_viewer,
        ),
        c("GET", "/api/v1/approvals", json!(null), all),
        c(
            "GET",
            &format!("/api/v1/approvals/{a1}"),
            json!(null),
            approvers_see,
        ),
        c(
            "POST",
            &format!("/api/v1/approvals/{a1}/approve"),
            json!({}),
            approvers_see,
        ),
        c(
            "POST",
            &format!("/api/v1/approvals/{a2}/reject"),
            json!({}),
            approvers_see,
        ),
        c(
            "POST",
            &format!("/api/v1/approvals/{a1}/run"),
            json!(null),
            |r| {
                if r == "admin" || r == "dba" {
                    Expect::Denied
                } else {
                    Expect::Hidden
                }
            },
        ),
        c("POST", "/api/v1/admin/rotate-key", json!(null), admin_only),
        // Removals last: they take fixtures away.
        c(
            "DELETE",
            &format!("/api/v1/masks/{mask}"),
            json!(null),
            admin_only,
        ),
        c("DELETE", "/api/v1/archives/arch", json!(null), admin_dba),
        c("DELETE", "/api/v1/roles/c1", json!(null), admin_only),
        c("DELETE", "/api/v1/users/victim", json!(null), admin_only),
        c("DELETE", "/api/v1/instances/gone", json!(null), admin_dba),
        c(
            "DELETE",
            &format!("/api/v1/sessions/{session}"),
            json!(null),
            all,
        ),
        c("POST", "/api/v1/auth/logout", json!(null), all),
    ];
    (server, u, calls)
}

fn documented_endpoints(doc: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    out
}

#[tokio::test]
async fn every_endpoint_answers_each_built_in_role_as_granted() {
    let mut covered = BTreeSet::new();
    for role in ROLES {
        let (server, u, calls) = fixture(role).await;
        for call in &calls {
            covered.insert(format!(
                "{} {}",
                call.method,
                call.path.split('?').next().unwrap()
            ));
            let expected = (call.expect)(role);
            let before = if expected == Expect::Ok {
                String::new()
            } else {
                fingerprint(&server).await
            };
            let status = status_of(&u, call.method, &call.path, &call.body).await;
            let what = format!("{role}: {} {} {}", call.method, call.path, call.body);
            match expected {
                Expect::Ok => assert!(
                    !matches!(status.as_u16(), 401 | 403) && !status.is_server_error(),
                    "{what} was refused or failed: {status}"
                ),
                Expect::Denied | Expect::Hidden => {
                    let want = if expected == Expect::Denied {
                        StatusCode::FORBIDDEN
                    } else {
                        StatusCode::NOT_FOUND
                    };
                    assert_eq!(status, want, "{what}");
                    assert_eq!(
                        fingerprint(&server).await,
                        before,
                        "{what} changed something"
                    );
                }
            }
        }
        // Without credentials every endpoint but the public ones answers 401.
        let anonymous = Client {
            base: server.base.clone(),
            http: reqwest::Client::new(),
        };
        for call in &calls {
            let status = status_of(&anonymous, call.method, &call.path, &call.body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "anonymous {} {}",
                call.method,
                call.path
            );
        }
        server.stop().await;
    }
    // Every endpoint of the OpenAPI document is in the matrix (templated ids as written).
    let server = TestServer::start().await;
    let (_, doc) = server.get("/api/v1/openapi.json").await;
    let public = [
        "GET /healthz",
        "GET /api/v1/openapi.json",
        "POST /api/v1/auth/login",
    ];
    let normalise = |s: &str| {
        s.split('/')
            .map(|p| {
                if p.len() == 36 && p.chars().filter(|c| *c == '-').count() == 4 {
                    "{id}"
                } else {
                    p
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    };
    let covered: BTreeSet<String> = covered.iter().map(|c| normalise(c)).collect();
    for endpoint in documented_endpoints(&doc) {
        if public.contains(&endpoint.as_str()) {
            continue;
        }
        let concrete = if endpoint == "DELETE /api/v1/instances/{name}" {
            "DELETE /api/v1/instances/gone".to_string()
        } else {
            endpoint.clone()
        };
        let concrete = concrete
            .replace("{name}/processes/{id}", "lite/processes/1")
            .replace("/instances/{name}", "/instances/lite")
            .replace("/tables/{table}", "/tables/t")
            .replace("/flows/{name}", "/flows/f1")
            .replace("/flow-templates/{name}", "/flow-templates/analyze-tables")
            .replace("/users/{name}", "/users/victim")
            .replace("/archives/{name}", "/archives/arch");
        let concrete = if endpoint.contains("/roles/{name}") {
            if endpoint.starts_with("PUT") {
                concrete.replace("{name}", "c2")
            } else {
                concrete.replace("{name}", "c1")
            }
        } else {
            concrete
        };
        assert!(
            covered.contains(&concrete),
            "the role matrix misses {endpoint} ({concrete})"
        );
    }
    server.stop().await;
}

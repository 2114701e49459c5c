//! The console on every engine: the demo, catalogs, type mapping, scripts, streamed formats
//! and the errors bad input gets.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn table_sizes_are_sampled_into_trends() {
    let server = TestServer::start_with(|c| {
        c.demo = true;
        c.trend_interval = std::time::Duration::from_millis(200);
    })
    .await;
    // Two samples of the demo's orders, taken in two different intervals.
    let samples = wait_for("two samples of orders", 30, || async {
        let (_, v) = server
            .get("/api/v1/instances/demo/trends?table=orders")
            .await;
        (v.as_array().unwrap().len() >= 2).then_some(v)
    })
    .await;
    let first = &samples[0];
    assert_eq!(first["table"], "orders");
    // SQLite keeps no sizes; its row counts are exact.
    assert_eq!(first["row_estimate"], 120_000, "{first}");
    assert!(samples[1]["at_ms"].as_i64() > first["at_ms"].as_i64());
    let (_, all) = server.get("/api/v1/instances/demo/trends").await;
    let tables: std::collections::BTreeSet<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["table"].as_str().unwrap())
        .collect();
    assert!(
        tables.contains("customers") && tables.contains("products"),
        "{tables:?}"
    );
    let (status, _) = server.get("/api/v1/instances/nope/trends").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn demo_instance_has_realistic_orders() {
    let server = TestServer::start_with(|c| c.demo = true).await;
    let rows = server
        .rows(
            "demo",
            "select count(*) as n, count(distinct created_date) as days from orders",
        )
        .await;
    assert!(rows[0]["n"].as_i64().unwrap() >= 100_000, "{rows:?}");
    assert!(rows[0]["days"].as_i64().unwrap() >= 90, "{rows:?}");
    let (status, tables) = server.get("/api/v1/instances/demo/tables").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<_> = tables
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["customers", "orders", "products"]);
    let (_, orders) = server.get("/api/v1/instances/demo/tables/orders").await;
    let columns: Vec<_> = orders["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["arrow_type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("order_id", "Int64"),
            ("customer_id", "Int64"),
            ("product_name", "Utf8"),
            ("price", "Float64"),
            ("quantity", "Int64"),
            ("total_amount", "Float64"),
            ("created_date", "Date32")
        ]
    );
    assert_eq!(orders["primary_key"], json!(["order_id"]));
    // Restarting on the same data directory keeps the demo and does not duplicate it.
    let data_dir = server.state.config.data_dir.clone();
    server.stop().await;
    let again = TestServer::start_with(|c| {
        c.demo = true;
        c.data_dir = data_dir;
    })
    .await;
    let rows = again.rows("demo", "select count(*) as n from orders").await;
    assert_eq!(rows[0]["n"], 120_000);
}

#[tokio::test]
async fn postgres_catalog_types_and_scripts() {
    let server = TestServer::start().await;
    let Some(_) = postgres_instance(&server, "pg", serde_json::Value::Null).await else {
        return;
    };
    let results = server
        .sql(
            "pg",
            "create table t (id bigint primary key, name varchar(20) not null default 'x', amount numeric(12,2), at timestamptz, tags int[], p point);
             create unique index t_name on t (name);
             insert into t values (1, 'é🚀 ', 12.5, '2026-11-22 10:00:00+02', '{1,2}', '(1,2)'), (2, 'b', null, null, null, null);
             select * from t order by id",
        )
        .await;
    assert_eq!(results.len(), 4);
    assert_eq!(results[2]["affected"], 2);
    let rows = results[3]["rows"].as_array().unwrap();
    assert_eq!(
        rows[0]["name"], "é🚀 ",
        "trailing spaces and unicode survive"
    );
    assert_eq!(rows[0]["amount"], 12.5);
    assert_eq!(rows[0]["at"], "2026-11-22T08:00:00Z");
    // Types Ferry does not map (arrays, geometric types) arrive as text, never as an error.
    assert_eq!(rows[0]["tags"], "{1,2}");
    assert_eq!(rows[0]["p"], "(1,2)");
    assert!(rows[1]["amount"].is_null());
    let types: Vec<_> = results[3]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        types,
        [
            "Int64",
            "Utf8",
            "Decimal128(12, 2)",
            "Timestamp(µs, \"+00:00\")",
            "Utf8",
            "Utf8"
        ]
    );

    // Values that COPY's text format escapes come back as they were.
    let tricky = server.rows("pg", "select E'tab\\there' as a, E'line\\nbreak' as b, E'back\\\\slash' as c, '\\N' as d, '\\x00ff'::bytea as e").await;
    assert_eq!(
        tricky[0],
        json!({ "a": "tab\there", "b": "line\nbreak", "c": "back\\slash", "d": "\\N", "e": "00ff" })
    );
    // A query COPY cannot run still runs.
    let modifying = server
        .rows(
            "pg",
            "with ins as (insert into t values (3, 'c') returning id) select id from ins",
        )
        .await;
    assert_eq!(modifying, vec![json!({ "id": 3 })]);

    let (_, detail) = server.get("/api/v1/instances/pg/tables/public.t").await;
    assert_eq!(detail["primary_key"], json!(["id"]));
    let name = &detail["columns"][1];
    assert_eq!(
        (name["data_type"].as_str(), name["nullable"].as_bool()),
        (Some("character varying(20)"), Some(false))
    );
    assert!(name["default"].as_str().unwrap().contains("'x'"));
    let unique: Vec<_> = detail["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["unique"] == true)
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(unique.contains(&"t_name"), "{detail}");
    let (_, tables) = server.get("/api/v1/instances/pg/tables").await;
    assert!(
        tables
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "t" && t["schema"] == "public")
    );
    let (_, dbs) = server.get("/api/v1/instances/pg/databases").await;
    assert!(dbs.as_array().unwrap().iter().any(|d| d == "postgres"));
    let (status, missing) = server.get("/api/v1/instances/pg/tables/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
}

#[tokio::test]
async fn mysql_catalog_and_types() {
    let server = TestServer::start().await;
    let Some(_) = mysql_instance(&server, "my", serde_json::Value::Null).await else {
        return;
    };
    let results = server
        .sql(
            "my",
            "create table t (id bigint unsigned primary key, flag tinyint(1), amount decimal(38,10), at datetime(6), data blob, note text, key by_note (note(10)));
             insert into t values (18446744073709551615, 1, 12345678901234567890.0123456789, '2026-11-22 10:00:00.5', x'00ff', 'é🚀 ');
             select * from t",
        )
        .await;
    let row = &results[2]["rows"][0];
    assert_eq!(row["id"], json!(18446744073709551615u64));
    assert_eq!(row["flag"], true);
    assert_eq!(
        row["amount"], "12345678901234567890.0123456789",
        "decimals stay exact"
    );
    assert_eq!(row["at"], "2026-11-22T10:00:00.500");
    assert_eq!(row["note"], "é🚀 ");
    let (_, detail) = server.get("/api/v1/instances/my/tables/t").await;
    assert_eq!(detail["primary_key"], json!(["id"]));
    assert!(
        detail["indexes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "by_note" && i["unique"] == false)
    );
    let (_, tables) = server.get("/api/v1/instances/my/tables").await;
    assert_eq!(tables.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn redis_commands_return_tables() {
    let server = TestServer::start().await;
    let Some(url) = ferry_testkit::redis() else {
        return;
    };
    server
        .add_instance("rd", &url.replace("/0", "/3"), serde_json::Value::Null)
        .await;
    let prefix = format!("ferry-test-{}", std::process::id());
    server
        .sql("rd", &format!("SET {prefix}:s \"hello world\"\nHSET {prefix}:h f1 v1 f2 v2\nEXPIRE {prefix}:h 600\nXADD {prefix}:x 1-1 a 1"))
        .await;
    let get = server.rows("rd", &format!("GET {prefix}:s")).await;
    assert_eq!(get, vec![json!({ "value": "hello world" })]);
    let hash = server.rows("rd", &format!("HGETALL {prefix}:h")).await;
    assert_eq!(
        hash,
        vec![
            json!({ "field": "f1", "value": "v1" }),
            json!({ "field": "f2", "value": "v2" })
        ]
    );
    let stream = server.rows("rd", &format!("XRANGE {prefix}:x - +")).await;
    assert_eq!(
        stream,
        vec![json!({ "id": "1-1", "field": "a", "value": "1" })]
    );
    let scan = server
        .rows("rd", &format!("SCAN 0 MATCH {prefix}:* COUNT 1000"))
        .await;
    assert!(
        scan.iter().any(|r| r["key"] == format!("{prefix}:s")),
        "{scan:?}"
    );
    let (_, keys) = server.get("/api/v1/instances/rd/tables").await;
    let h = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == format!("{prefix}:h"))
        .expect("hash key listed");
    assert_eq!(h["kind"], "hash");
    assert!(h["ttl_secs"].as_i64().unwrap() > 0);
    let bad = server.sql("rd", "NOSUCHCOMMAND x").await;
    assert_eq!(bad[0]["error"]["code"], "engine");
}

#[tokio::test]
async fn results_stream_as_csv_ndjson_and_arrow() {
    let server = TestServer::start().await;
    let Some(_) = postgres_instance(&server, "pg", serde_json::Value::Null).await else {
        return;
    };
    let sql = "select g as id, 'row ' || g as label from generate_series(1, 50000) g";
    let path = format!("{}/api/v1/instances/pg/sql", server.base);
    let csv = server
        .http
        .post(&path)
        .json(&json!({ "sql": sql, "format": "csv" }))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let text = csv.text().await.unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 50_001);
    assert_eq!((lines[0], lines[50_000]), ("id,label", "50000,row 50000"));

    let nd = server
        .http
        .post(&path)
        .json(&json!({ "sql": sql, "format": "ndjson", "limit": 10 }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(nd.lines().count(), 10);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(nd.lines().next().unwrap()).unwrap(),
        json!({ "id": 1, "label": "row 1" })
    );

    let ipc = server
        .http
        .post(&path)
        .json(&json!({ "sql": sql, "format": "arrow" }))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None).unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 50_000);

    // Interactive JSON keeps the limit and says so.
    let (_, v) = server
        .post(
            "/api/v1/instances/pg/sql",
            json!({ "sql": sql, "limit": 5 }),
        )
        .await;
    assert_eq!(
        (
            v["results"][0]["row_count"].as_u64(),
            v["results"][0]["truncated"].as_bool()
        ),
        (Some(5), Some(true))
    );
    let (_, v) = server
        .post(
            "/api/v1/instances/pg/sql",
            json!({ "sql": "select 1 as a" }),
        )
        .await;
    assert_eq!(v["results"][0]["truncated"], false);
    // The connection is usable after a truncated result.
    assert_eq!(
        server.rows("pg", "select 2 as b").await,
        vec![json!({ "b": 2 })]
    );
}

/// Sends one request and checks the error it gets: status, code, a fragment of the message,
/// and that the message never echoes a password.
async fn check_error(
    server: &TestServer,
    path: &str,
    body: serde_json::Value,
    want: (StatusCode, &str, &str),
) {
    let (status, v) = server.post(path, body.clone()).await;
    let (want_status, code, fragment) = want;
    assert_eq!(status, want_status, "{body}: {v}");
    assert_eq!(v["error"]["code"], code, "{body}: {v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(fragment),
        "{body}: {message:?} lacks {fragment:?}"
    );
    assert!(!message.contains("s3cret"), "{message}");
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let pg = postgres_instance(&server, "pg", serde_json::Value::Null).await;
    let add = "/api/v1/instances";
    let cases = [
        (
            json!({ "name": "x", "url": "postgres://u:s3cret@127.0.0.1:1/db" }),
            (
                StatusCode::BAD_GATEWAY,
                "connection",
                "could not connect to PostgreSQL at 127.0.0.1:1",
            ),
        ),
        (
            json!({ "name": "x", "url": "postgres://u:s3cret@@:x/" }),
            (
                StatusCode::BAD_REQUEST,
                "invalid_input",
                "malformed postgres connection URL",
            ),
        ),
        (
            json!({ "name": "x", "url": "oracle://u:s3cret@h/db" }),
            (
                StatusCode::BAD_REQUEST,
                "invalid_input",
                "unsupported connection URL scheme",
            ),
        ),
        (
            json!({ "name": "Bad Name", "url": "sqlite::memory:" }),
            (
                StatusCode::BAD_REQUEST,
                "invalid_input",
                "invalid instance name",
            ),
        ),
        (
            json!({ "name": "x", "url": "sqlite::memory:", "colour": 1 }),
            (
                StatusCode::BAD_REQUEST,
                "invalid_input",
                "unknown field `colour`",
            ),
        ),
        (
            json!({ "name": "x", "url": "sqlite::memory:", "max_connections": 0 }),
            (
                StatusCode::BAD_REQUEST,
                "invalid_input",
                "max_connections must be between 1 and 10000",
            ),
        ),
    ];
    for (body, want) in cases {
        check_error(&server, add, body, want).await;
    }
    check_error(
        &server,
        "/api/v1/instances/nope/sql",
        json!({ "sql": "select 1" }),
        (
            StatusCode::NOT_FOUND,
            "not_found",
            "instance \"nope\" is not registered",
        ),
    )
    .await;
    if let Some(admin) = ferry_testkit::mysql() {
        let wrong = admin.replacen("root@", "root:s3cret@", 1);
        check_error(
            &server,
            add,
            json!({ "name": "x", "url": wrong }),
            (
                StatusCode::BAD_GATEWAY,
                "connection",
                "Access denied for user 'root'",
            ),
        )
        .await;
    }
    if pg.is_some() {
        let sql = "/api/v1/instances/pg/sql";
        let r = server.sql("pg", "selec 1").await;
        assert_eq!(r[0]["error"]["code"], "engine");
        assert!(
            r[0]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("syntax error at or near \"selec\"")
        );
        let r = server.sql("pg", "select * from missing_table").await;
        assert!(
            r[0]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("relation \"missing_table\" does not exist")
        );
        // A script stops at its first error unless asked to go on.
        assert_eq!(
            server.sql("pg", "select 1; selec 2; select 3").await.len(),
            2
        );
        let (_, v) = server
            .post(
                sql,
                json!({ "sql": "select 1; selec 2; select 3", "continue_on_error": true }),
            )
            .await;
        assert_eq!(v["results"].as_array().unwrap().len(), 3);
        let cases = [
            (
                json!({ "sql": "select 1", "limit": 5_000_000 }),
                (
                    StatusCode::BAD_REQUEST,
                    "invalid_input",
                    "stream the result with format csv",
                ),
            ),
            (
                json!({ "sql": "select 1; select 2", "format": "csv" }),
                (
                    StatusCode::BAD_REQUEST,
                    "invalid_input",
                    "exactly one statement",
                ),
            ),
            (
                json!({ "sql": "select * from missing_table", "format": "csv" }),
                (StatusCode::UNPROCESSABLE_ENTITY, "engine", "missing_table"),
            ),
            (
                json!({ "sql": "  ;  " }),
                (StatusCode::BAD_REQUEST, "invalid_input", "no SQL statement"),
            ),
            (
                json!({ "sql": "select 1", "format": "xml" }),
                (
                    StatusCode::BAD_REQUEST,
                    "invalid_input",
                    "unknown variant `xml`",
                ),
            ),
        ];
        for (body, want) in cases {
            check_error(&server, sql, body, want).await;
        }
    }
    let (s, _) = server.get("/healthz").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn metrics_and_openapi_describe_the_server() {
    let server = TestServer::start_with(|c| c.demo = true).await;
    server.rows("demo", "select 1 as one").await;
    server.sql("demo", "selec").await;
    let text = server
        .http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("ferry_connections_max{instance=\"demo\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("ferry_statements_total{instance=\"demo\",outcome=\"ok\"}"),
        "{text}"
    );
    assert!(
        text.contains("ferry_statements_total{instance=\"demo\",outcome=\"error\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ferry_statement_duration_seconds_bucket"),
        "{text}"
    );
    let (s, doc) = server.get("/api/v1/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    for path in [
        "/api/v1/instances",
        "/api/v1/instances/{name}/sql",
        "/api/v1/sessions",
        "/api/v1/queries/{id}/result",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    let (s, v) = server.get("/api/v1/nothing-here").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

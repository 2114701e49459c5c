//! Transfers between engines: created targets, type round trips under verification, lossy
//! conversions refused by column, incremental runs that move each row once, upserts.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

const PG_TYPES: &str = "create table src (
    id bigint primary key, small smallint, num integer, name text, amount numeric(12,2), big numeric(38,10),
    ratio double precision, flag boolean, day date, at timestamp, data bytea);
  insert into src values
    (1, -32768, 2147483647, 'plain', 12.50, 12345678901234567890.0123456789, 0.1, true, '2026-11-22', '2026-11-22 10:00:00.123456', '\\x00ff'),
    (2, 0, -1, 'é🚀 trailing  ', -0.01, -1.5, 1e300, false, '1970-01-01', '1999-12-31 23:59:59', ''),
    (3, null, null, null, null, null, null, null, null, null, null),
    (4, 1, 1, 'tab\there, quote '' and backslash \\ ', 0, 0, -0.5, true, '2000-02-29', '2000-02-29 00:00:00', '\\x5c');";

#[tokio::test]
async fn postgres_to_mysql_sqlite_and_back_round_trips_verified() {
    let server = TestServer::start().await;
    if !pg_and_my(&server).await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    server
        .add_instance(
            "lite",
            &format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()),
            Value::Null,
        )
        .await;
    let setup = server.sql("pg", PG_TYPES).await;
    assert!(setup.iter().all(|r| r["error"].is_null()), "{setup:?}");

    for (target, back_table) in [("my", "from_my"), ("lite", "from_lite")] {
        let out = transfer(&server, json!({ "source": { "table": table("pg", "src") }, "target": table(target, "copy"), "create": true })).await;
        let report = succeeded(&out);
        assert_eq!(
            (report["rows"].as_u64(), report["verified"].as_bool()),
            (Some(4), Some(true)),
            "{out}"
        );
        assert_eq!(report["source_checksum"], report["target_checksum"]);
        // And back into PostgreSQL, then compare with the original row by row.
        let back = transfer(&server, json!({ "source": { "table": table(target, "copy") }, "target": table("pg", back_table), "create": true })).await;
        assert_eq!(succeeded(&back)["verified"], true, "{back}");
        let diff = server
            .rows(
                "pg",
                &format!(
                    "select count(*) as n from (select id, small, num, name, amount, big, ratio, flag, day, at, data from src
                     except select id, small::smallint, num::integer, name, amount::numeric(12,2), big::numeric(38,10), ratio, flag::boolean, day, at, data from {back_table}) d"
                ),
            )
            .await;
        assert_eq!(diff[0]["n"], 0, "{target} round trip changed values");
    }
    // The created MySQL table kept the primary key and exact decimals.
    let (_, detail) = server.get("/api/v1/instances/my/tables/copy").await;
    assert_eq!(detail["primary_key"], json!(["id"]));
    let big = server.rows("my", "select big from copy where id = 1").await;
    assert_eq!(big[0]["big"], "12345678901234567890.0123456789");
}

#[tokio::test]
async fn postgres_through_parquet_and_back_keeps_every_value() {
    let server = TestServer::start().await;
    let Some(_) = postgres_instance(&server, "pg", Value::Null).await else {
        return;
    };
    let setup = server.sql("pg", PG_TYPES).await;
    assert!(setup.iter().all(|r| r["error"].is_null()), "{setup:?}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("src.parquet").display().to_string();
    let export = server
        .post(
            "/api/v1/exports",
            json!({ "source": { "table": table("pg", "src") }, "url": file, "format": "parquet" }),
        )
        .await;
    assert_eq!(export.0, StatusCode::ACCEPTED, "{}", export.1);
    let id = export.1["id"].as_str().unwrap().to_string();
    let done = wait_for("the export", 60, || async {
        let (_, v) = server.get(&format!("/api/v1/transfers/{id}")).await;
        (v["status"] != "running").then_some(v)
    })
    .await;
    assert_eq!(succeeded(&done)["rows"], 4);
    let back = transfer(
        &server,
        json!({ "source": { "files": { "url": file, "format": "parquet" } }, "target": table("pg", "from_parquet"), "create": true }),
    )
    .await;
    assert_eq!(succeeded(&back)["verified"], true, "{back}");
    let diff = server
        .rows("pg", "select count(*) as n from (select * from src except select id, small, num, name, amount, big, ratio, flag, day, at, data from from_parquet) d")
        .await;
    assert_eq!(diff[0]["n"], 0, "the Parquet round trip changed values");
    let (_, detail) = server.get("/api/v1/instances/pg/tables/from_parquet").await;
    let types: Vec<_> = detail["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["data_type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        types,
        [
            "bigint",
            "smallint",
            "integer",
            "text",
            "numeric(12,2)",
            "numeric(38,10)",
            "double precision",
            "boolean",
            "date",
            "timestamp without time zone",
            "bytea"
        ]
    );
}

#[tokio::test]
async fn lossy_conversions_are_refused_by_column_unless_allowed() {
    let server = TestServer::start().await;
    if !pg_and_my(&server).await {
        return;
    }
    server.sql("pg", "create table src (id bigint primary key, at timestamptz, amount numeric(38,10)); insert into src values (1, now(), 1.5)").await;
    let refused = transfer(&server, json!({ "source": { "table": table("pg", "src") }, "target": table("my", "t1"), "create": true })).await;
    assert_eq!(refused["status"], "failed");
    assert!(
        refused["error"].as_str().unwrap().contains("column \"at\""),
        "{refused}"
    );
    assert!(
        refused["error"].as_str().unwrap().contains("--allow-lossy"),
        "{refused}"
    );
    let (_, tables) = server.get("/api/v1/instances/my/tables").await;
    assert!(
        tables.as_array().unwrap().is_empty(),
        "a refused transfer created a table: {tables}"
    );
    let allowed = transfer(&server, json!({ "source": { "table": table("pg", "src") }, "target": table("my", "t1"), "create": true, "allow_lossy": true })).await;
    assert_eq!(succeeded(&allowed)["rows"], 1);
    // An existing target whose column cannot hold the values exactly.
    server
        .sql(
            "my",
            "create table t2 (id bigint primary key, at datetime(6), amount double)",
        )
        .await;
    let refused = transfer(&server, json!({ "source": { "query": { "instance": "pg", "sql": "select id, amount from src" } }, "target": table("my", "t2") })).await;
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains("column \"amount\": Decimal128(38, 10) into double"),
        "{error}"
    );
}

#[tokio::test]
async fn incremental_runs_move_each_row_exactly_once() {
    let server = TestServer::start().await;
    if !pg_and_my(&server).await {
        return;
    }
    server.sql("pg", "create table events (id bigint primary key, payload text); insert into events select g, 'e' || g from generate_series(1, 100) g").await;
    let spec = json!({ "source": { "table": table("pg", "events") }, "target": table("my", "events"), "mode": "incremental", "by": "id", "create": true });
    let mut moved = 0;
    for run in 0..10 {
        let out = transfer(&server, spec.clone()).await;
        let report = succeeded(&out);
        moved += report["rows"].as_u64().unwrap();
        assert_eq!(report["verified"], true, "run {run}: {out}");
        // New rows arrive between runs; the last run sees none.
        if run < 9 {
            let base = 100 + run * 10;
            server
                .sql(
                    "pg",
                    &format!(
                        "insert into events select g, 'e' || g from generate_series({}, {}) g",
                        base + 1,
                        base + 10
                    ),
                )
                .await;
        }
    }
    let counts = server
        .rows(
            "my",
            "select count(*) as n, count(distinct id) as d, max(id) as m from events",
        )
        .await;
    assert_eq!(counts[0], json!({ "n": 190, "d": 190, "m": 190 }));
    assert_eq!(moved, 190, "each row moved once");
}

#[tokio::test]
async fn upserts_update_by_key_and_appends_add() {
    let server = TestServer::start().await;
    let Some(_) = postgres_instance(&server, "pg", Value::Null).await else {
        return;
    };
    server.sql("pg", "create table src (id int primary key, v text); insert into src values (1, 'new'), (2, 'two');
                      create table dst (id int primary key, v text); insert into dst values (1, 'old'), (3, 'three')").await;
    let out = transfer(&server, json!({ "source": { "table": table("pg", "src") }, "target": table("pg", "dst"), "mode": "upsert" })).await;
    assert_eq!(succeeded(&out)["rows"], 2);
    let rows = server.rows("pg", "select id, v from dst order by id").await;
    assert_eq!(
        rows,
        vec![
            json!({ "id": 1, "v": "new" }),
            json!({ "id": 2, "v": "two" }),
            json!({ "id": 3, "v": "three" })
        ]
    );
    let dup = transfer(&server, json!({ "source": { "table": table("pg", "src") }, "target": table("pg", "dst"), "mode": "append" })).await;
    assert_eq!(dup["status"], "failed");
    assert!(
        dup["error"].as_str().unwrap().contains("duplicate key"),
        "{dup}"
    );
    assert_eq!(
        server.rows("pg", "select count(*) as n from dst").await[0]["n"],
        3,
        "a failed append wrote nothing"
    );
}

#[tokio::test]
async fn the_demo_orders_copy_into_postgres() {
    let server = TestServer::start_with(|c| c.demo = true).await;
    let Some(_) = postgres_instance(&server, "pg", Value::Null).await else {
        return;
    };
    let out = transfer(&server, json!({ "source": { "table": table("demo", "orders") }, "target": table("pg", "orders"), "create": true })).await;
    let report = succeeded(&out);
    assert_eq!(
        out["rows_expected"], 120_000,
        "SQLite's catalog counts rows exactly: {out}"
    );
    assert_eq!(
        (report["rows"].as_u64(), report["verified"].as_bool()),
        (Some(120_000), Some(true))
    );
    let (_, detail) = server.get("/api/v1/instances/pg/tables/orders").await;
    let types: Vec<_> = detail["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["data_type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        types,
        [
            "bigint",
            "bigint",
            "text",
            "double precision",
            "bigint",
            "double precision",
            "date"
        ]
    );
    // Replace mode runs again without duplicating.
    let again = transfer(
        &server,
        json!({ "source": { "table": table("demo", "orders") }, "target": table("pg", "orders") }),
    )
    .await;
    assert_eq!(succeeded(&again)["rows"], 120_000);
    assert_eq!(
        server.rows("pg", "select count(*) as n from orders").await[0]["n"],
        120_000
    );
}

#[tokio::test]
async fn parallel_reads_split_by_key_and_stay_within_the_cap() {
    let server = TestServer::start().await;
    let Some(_) = postgres_instance(
        &server,
        "pg",
        json!({ "max_connections": 3, "acquire_timeout_secs": 60 }),
    )
    .await
    else {
        return;
    };
    let Some(_) = mysql_instance(&server, "my", Value::Null).await else {
        return;
    };
    server.sql("pg", "create table big (id bigint primary key, v text); insert into big select g, 'v' || g from generate_series(-5000, 94999) g;
                      create table nokey (v text); insert into nokey select 'x' || g from generate_series(1, 1000) g").await;
    let out = transfer(&server, json!({ "source": { "table": table("pg", "big") }, "target": table("my", "big"), "create": true, "parallel": 4 })).await;
    let report = succeeded(&out);
    assert_eq!(
        (report["rows"].as_u64(), report["verified"].as_bool()),
        (Some(100_000), Some(true)),
        "{out}"
    );
    let counts = server
        .rows(
            "my",
            "select count(*) as n, count(distinct id) as d, min(id) as lo, max(id) as hi from big",
        )
        .await;
    assert_eq!(
        counts[0],
        json!({ "n": 100000, "d": 100000, "lo": -5000, "hi": 94999 })
    );
    // Without an integer key the source is read over one connection, still correctly.
    let out = transfer(&server, json!({ "source": { "table": table("pg", "nokey") }, "target": table("my", "nokey"), "create": true, "parallel": 4 })).await;
    assert_eq!(succeeded(&out)["rows"], 1000);
    let (status, v) = server.post("/api/v1/transfers", json!({ "source": { "table": table("pg", "big") }, "target": table("my", "x"), "parallel": 0 })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (_, conns) = server.get("/api/v1/instances/pg/connections").await;
    assert!(conns["stats"]["open"].as_u64().unwrap() <= 3, "{conns}");
}

#[tokio::test]
async fn bad_transfers_are_explained() {
    let server = TestServer::start().await;
    let Some(_) = postgres_instance(&server, "pg", Value::Null).await else {
        return;
    };
    server.sql("pg", "create table src (id int)").await;
    let missing = transfer(&server, json!({ "source": { "table": table("pg", "nope") }, "target": table("pg", "x"), "create": true })).await;
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("source pg:nope"),
        "{missing}"
    );
    let no_target = transfer(
        &server,
        json!({ "source": { "table": table("pg", "src") }, "target": table("pg", "x") }),
    )
    .await;
    assert!(
        no_target["error"]
            .as_str()
            .unwrap()
            .contains("pass --create"),
        "{no_target}"
    );
    let (s, v) = server.post("/api/v1/transfers", json!({ "source": { "table": table("pg", "src") }, "target": table("pg", "x"), "mode": "incremental" })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--by COLUMN")
    );
    let (s, _) = server
        .post(
            "/api/v1/transfers",
            json!({ "source": { "table": table("nowhere", "src") }, "target": table("pg", "x") }),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = server.post("/api/v1/transfers", json!({ "source": { "table": table("pg", "src") }, "target": table("pg", "x"), "mode": "sideways" })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn a_connection_cut_mid_transfer_fails_clearly_and_writes_nothing() {
    let server = TestServer::start().await;
    let Some(url) = postgres_instance(&server, "pg", Value::Null).await else {
        return;
    };
    let Some(_) = mysql_instance(&server, "my", Value::Null).await else {
        return;
    };
    server.sql("pg", "create table big (id bigint primary key, v text); insert into big select g, repeat('x', 200) from generate_series(1, 300000) g").await;
    let (status, v) = server
        .post("/api/v1/transfers", json!({ "source": { "table": table("pg", "big") }, "target": table("my", "big"), "create": true }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    wait_for("rows to flow", 60, || async {
        let (_, v) = server.get(&format!("/api/v1/transfers/{id}")).await;
        (v["rows_written"].as_i64().unwrap_or(0) > 0 || v["status"] != "running").then_some(())
    })
    .await;
    // Cut the source's connection on the PostgreSQL side, as a network failure would.
    let admin = pg_direct(&ferry_testkit::postgres().unwrap()).await;
    admin
        .execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and application_name = 'ferry' and query like 'COPY%'",
            &[&database_of(&url)],
        )
        .await
        .unwrap();
    let done = wait_for("the transfer to end", 60, || async {
        let (_, v) = server.get(&format!("/api/v1/transfers/{id}")).await;
        (v["status"] != "running").then_some(v)
    })
    .await;
    if done["status"] == "succeeded" {
        return; // It finished before the cut landed; nothing to check.
    }
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("reading the source") || error.contains("connection"),
        "{error}"
    );
    // The table the transfer created is gone again: nothing half-written remains.
    let (_, tables) = server.get("/api/v1/instances/my/tables").await;
    assert!(
        !tables.to_string().contains("\"big\""),
        "a failed transfer left its table behind: {tables}"
    );
}

#[tokio::test]
async fn mysql_types_land_in_postgres_and_exotic_postgres_types_in_mysql() {
    let server = TestServer::start().await;
    if !pg_and_my(&server).await {
        return;
    }
    let setup = server
        .sql(
            "my",
            "create table t (id int primary key, ti tinyint, tu tinyint unsigned, su smallint unsigned, iu int unsigned,
               bu bigint unsigned, d decimal(38,10), f float, db double, bits bit(8), day date, dt datetime(6), ts timestamp(6) null,
               tm time, yr year, vc varchar(20), tx text, bl blob, js json, en enum('small','large'), st set('x','y'));
             insert into t values
               (1, -128, 255, 65535, 4294967295, 18446744073709551615, -12345678901234567890.0123456789, 1.5, -2.25e-300, b'10100101',
                '2026-11-22', '2026-11-22 10:00:00.123456', '2026-11-22 10:00:00.5', '-838:59:59', 2026, 'é🚀 spaces  ', 'line\nbreak', x'00ff',
                '{\"a\": [1, 2]}', 'large', 'x,y'),
               (2, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null)",
        )
        .await;
    assert!(setup.iter().all(|r| r["error"].is_null()), "{setup:?}");
    let out = transfer(&server, json!({ "source": { "table": table("my", "t") }, "target": table("pg", "from_mysql"), "create": true })).await;
    let report = succeeded(&out);
    assert_eq!(
        (report["rows"].as_u64(), report["verified"].as_bool()),
        (Some(2), Some(true)),
        "{out}"
    );
    let row = &server
        .rows("pg", "select * from from_mysql where id = 1")
        .await[0];
    assert_eq!(row["bu"], json!(18446744073709551615u64), "{row}");
    assert_eq!(
        row["d"],
        json!(-12345678901234567890.0123456789f64),
        "{row}"
    );
    assert_eq!(row["tm"], "-838:59:59");
    assert_eq!(row["vc"], "é🚀 spaces  ");
    assert_eq!(row["en"], "large");
    assert_eq!(row["ts"], "2026-11-22T10:00:00.500Z");
    let exact = server
        .rows(
            "pg",
            "select d::text as d, bu::text as bu from from_mysql where id = 1",
        )
        .await;
    assert_eq!(
        exact[0],
        json!({ "d": "-12345678901234567890.0123456789", "bu": "18446744073709551615" })
    );
    let (_, detail) = server.get("/api/v1/instances/pg/tables/from_mysql").await;
    let types: Vec<_> = detail["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["data_type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        &types[..6],
        [
            "integer",
            "smallint",
            "smallint",
            "integer",
            "bigint",
            "numeric(20,0)"
        ]
    );
    assert_eq!(types[6], "numeric(38,10)");

    // PostgreSQL types without a MySQL counterpart travel as their text; NaN cannot.
    server
        .sql(
            "pg",
            "create type mood as enum ('ok', 'meh');
             create table exotic (id int primary key, j jsonb, u uuid, iv interval, arr int[], m mood, n float8);
             insert into exotic values (1, '{\"k\": 1}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 day 02:00', '{1,2}', 'meh', 1.5)",
        )
        .await;
    let out = transfer(&server, json!({ "source": { "table": table("pg", "exotic") }, "target": table("my", "exotic"), "create": true })).await;
    assert_eq!(succeeded(&out)["verified"], true, "{out}");
    let row = &server.rows("my", "select * from exotic").await[0];
    assert_eq!(row["u"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(row["arr"], "{1,2}");
    assert_eq!(row["m"], "meh");
    assert_eq!(row["iv"], "1 day 02:00:00");
    server
        .sql(
            "pg",
            "insert into exotic values (2, null, null, null, null, null, 'NaN')",
        )
        .await;
    let refused = transfer(
        &server,
        json!({ "source": { "table": table("pg", "exotic") }, "target": table("my", "exotic") }),
    )
    .await;
    assert_eq!(refused["status"], "failed");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("column \"n\" holds NaN, which MySQL cannot store"),
        "{refused}"
    );
    assert_eq!(
        server.rows("my", "select count(*) as n from exotic").await[0]["n"],
        1,
        "the refused copy rolled back"
    );
}

#[tokio::test]
async fn rows_become_redis_hashes_under_a_key_template() {
    let server = TestServer::start_with(|c| c.demo = true).await;
    let Some(url) = ferry_testkit::redis() else {
        return;
    };
    server
        .add_instance("rd", &url.replace("/0", "/5"), Value::Null)
        .await;
    let prefix = format!("ferry-test-{}", std::process::id());
    let template = format!("{prefix}:product:{{product_id}}");
    let out = transfer(&server, json!({ "source": { "table": table("demo", "products") }, "target": table("rd", &template) })).await;
    assert_eq!(succeeded(&out)["rows"], 50, "{out}");
    let hash = server
        .rows("rd", &format!("HGETALL {prefix}:product:7"))
        .await;
    let expected = server
        .rows(
            "demo",
            "select product_name, category from products where product_id = 7",
        )
        .await;
    let field = |name: &str| {
        hash.iter()
            .find(|r| r["field"] == name)
            .map(|r| r["value"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(field("product_name"), expected[0]["product_name"]);
    assert_eq!(field("category"), expected[0]["category"]);
    assert_eq!(field("product_id"), "7");
    let bad = transfer(&server, json!({ "source": { "table": table("demo", "products") }, "target": table("rd", "no-template") })).await;
    assert!(
        bad["error"].as_str().unwrap().contains("key template"),
        "{bad}"
    );
    let bad = transfer(&server, json!({ "source": { "table": table("demo", "products") }, "target": table("rd", "p:{nope}") })).await;
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("\"nope\", which is not a source column"),
        "{bad}"
    );
}

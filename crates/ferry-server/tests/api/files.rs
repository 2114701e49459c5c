//! Exports to files and object storage, and imports back: the archiving scenario with daily
//! Hive-style partitions on an S3-compatible server, Azure Blob storage (Azurite), and CSV /
//! JSON Lines on local disk.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn daily_partitions_on_object_storage_replace_and_import() {
    let server = TestServer::start_with(|c| c.demo = true).await;
    let Some(endpoint) = ferry_testkit::s3() else {
        return;
    };
    let Some(_) = postgres_instance(&server, "pg", Value::Null).await else {
        return;
    };
    let bucket = ferry_testkit::fresh_bucket(&endpoint).await;
    let options = ferry_testkit::s3_options(&endpoint);
    let url = format!("s3://{bucket}/dla_demo/orders");
    let export = |filter: &str| {
        json!({
            "source": { "table": { "instance": "demo", "table": "orders" } },
            "url": url,
            "format": "parquet",
            "partition_by": "y=${yyyy}/m=${mm}/d=${dd}",
            "partition_column": "created_date",
            "where": filter,
            "options": options,
        })
    };
    // Three days, three partitions of 1,000 rows each.
    let out = run_job(
        &server,
        "/api/v1/exports",
        export("created_date >= date('now', '-3 days')"),
    )
    .await;
    let report = succeeded(&out);
    assert_eq!(report["rows"], 3000);
    let files = report["files"].as_array().unwrap();
    assert_eq!(files.len(), 3, "{report}");
    for f in files {
        assert_eq!(f["rows"], 1000);
        let p = f["path"].as_str().unwrap();
        assert!(
            p.starts_with("dla_demo/orders/y=")
                && p.contains("/m=")
                && p.contains("/d=")
                && p.ends_with("/part-00000.parquet"),
            "{p}"
        );
    }
    // Running one day again replaces its partition and leaves the others.
    let day = server
        .rows("demo", "select date('now', '-1 days') as d")
        .await[0]["d"]
        .as_str()
        .unwrap()
        .to_string();
    server
        .sql(
            "demo",
            &format!("delete from orders where created_date = '{day}' and order_id % 2 = 0"),
        )
        .await;
    let again = run_job(
        &server,
        "/api/v1/exports",
        export(&format!("created_date = '{day}'")),
    )
    .await;
    assert_eq!(succeeded(&again)["rows"], 500);
    let location = ferry_move::files::open_location(&url, &options).unwrap();
    let partitions = ferry_move::export::list_partitions(&location)
        .await
        .unwrap();
    assert_eq!(partitions.len(), 3, "{partitions:?}");
    // The archive answers SQL, and a partition filter reads only that partition.
    let (status, v) = server
        .post("/api/v1/archives", json!({ "name": "oss_orders", "url": url, "format": "parquet", "partitions": ["y", "m", "d"], "options": options }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(
        server
            .rows("archive", "select count(*) as n from oss_orders")
            .await[0]["n"],
        2500
    );
    let (y, m, d) = (&day[0..4], &day[5..7], &day[8..10]);
    let filter = format!("y = '{y}' and m = '{m}' and d = '{d}'");
    let one_day = server
        .rows(
            "archive",
            &format!(
                "select count(*) as n, min(created_date) as first from oss_orders where {filter}"
            ),
        )
        .await;
    assert_eq!(one_day[0], json!({ "n": 500, "first": day }));
    let plan = server
        .rows(
            "archive",
            &format!("explain select sum(total_amount) from oss_orders where {filter}"),
        )
        .await;
    let physical = plan
        .iter()
        .find(|r| r["plan_type"] == "physical_plan")
        .expect("a physical plan")["plan"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        physical.matches("part-00000.parquet").count(),
        1,
        "the plan reads more than the one partition:\n{physical}"
    );
    assert!(
        physical.contains(&format!("y={y}/m={m}/d={d}")),
        "{physical}"
    );
    let (_, tables) = server.get("/api/v1/instances/archive/tables").await;
    assert_eq!(tables[0]["name"], "oss_orders");

    // Importing the archive back gives 2,500 rows, verified.
    let import = run_job(
        &server,
        "/api/v1/transfers",
        json!({ "source": { "files": { "url": url, "format": "parquet", "options": options } }, "target": { "instance": "pg", "table": "archived" }, "create": true }),
    )
    .await;
    let report = succeeded(&import);
    assert_eq!(
        (report["rows"].as_u64(), report["verified"].as_bool()),
        (Some(2500), Some(true)),
        "{import}"
    );
    let per_day = server
        .rows(
            "pg",
            "select count(*) as n from archived group by created_date order by 1",
        )
        .await;
    assert_eq!(
        per_day,
        vec![
            json!({ "n": 500 }),
            json!({ "n": 1000 }),
            json!({ "n": 1000 })
        ]
    );
    // A glob picks partitions: only the replaced day.
    let glob = format!("{url}/y={y}/m={m}/d={d}/*.parquet");
    let one = run_job(
        &server,
        "/api/v1/transfers",
        json!({ "source": { "files": { "url": glob, "format": "parquet", "options": options } }, "target": { "instance": "pg", "table": "one_day" }, "create": true }),
    )
    .await;
    assert_eq!(succeeded(&one)["rows"], 500, "{one}");
    // Partition keys can come back as columns.
    let with_keys = run_job(
        &server,
        "/api/v1/transfers",
        json!({ "source": { "files": { "url": url, "format": "parquet", "options": options, "partitions": ["y", "m", "d"] } }, "target": { "instance": "pg", "table": "with_keys" }, "create": true }),
    )
    .await;
    assert_eq!(succeeded(&with_keys)["rows"], 2500, "{with_keys}");
    let keyed = server.rows("pg", &format!("select count(*) as n from with_keys where y = '{y}' and m = '{m}' and d = '{d}' and created_date = '{day}'")).await;
    assert_eq!(keyed[0]["n"], 500);
}

#[tokio::test]
async fn csv_and_jsonl_files_round_trip_through_local_disk() {
    let server = TestServer::start_with(|c| c.demo = true).await;
    let dir = tempfile::tempdir().unwrap();
    server
        .add_instance(
            "lite",
            &format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()),
            Value::Null,
        )
        .await;
    for format in ["csv", "jsonl"] {
        let path = dir.path().join(format!("products.{format}"));
        let out = run_job(
            &server,
            "/api/v1/exports",
            json!({ "source": { "query": { "instance": "demo", "sql": "select product_id, product_name, price from products" } }, "url": path.display().to_string(), "format": format }),
        )
        .await;
        assert_eq!(succeeded(&out)["rows"], 50);
        assert!(path.exists(), "{} was not written", path.display());
        let back = run_job(
            &server,
            "/api/v1/transfers",
            json!({ "source": { "files": { "url": path.display().to_string(), "format": format } }, "target": { "instance": "lite", "table": format!("p_{format}") }, "create": true }),
        )
        .await;
        assert_eq!(succeeded(&back)["verified"], true, "{back}");
        let rows = server
            .rows(
                "lite",
                &format!("select count(*) as n, sum(price) as total from p_{format}"),
            )
            .await;
        let expected = server
            .rows(
                "demo",
                "select count(*) as n, sum(price) as total from products",
            )
            .await;
        assert_eq!(rows, expected, "{format}");
    }
}

#[tokio::test]
async fn bad_exports_and_imports_are_explained() {
    let server = TestServer::start_with(|c| c.demo = true).await;
    let source = json!({ "table": { "instance": "demo", "table": "orders" } });
    let cases = [
        (
            json!({ "source": source, "url": "/tmp/x", "partition_by": "y=${yyyy}" }),
            "name the date column with --partition-column",
        ),
        (
            json!({ "source": source, "url": "/tmp/x", "partition_by": "r=${region}", "partition_column": "created_date" }),
            "${region}",
        ),
        (
            json!({ "source": source, "url": "s3://b/x", "options": { "secret_access_key": "s3cret" } }),
            "is a credential",
        ),
        (
            json!({ "source": source, "url": "ftp://host/x" }),
            "storage URL",
        ),
        (
            json!({ "source": source, "url": "/tmp/x", "partition_by": "d=${dd}", "partition_column": "created_date" }),
            "different dates in one partition",
        ),
        (
            json!({ "source": source, "url": "s3://b/x", "options": { "endpoint": "http://elsewhere" } }),
            "cannot be set per request",
        ),
        (
            json!({ "source": source, "url": "/proc/ferry-cannot-write-here/orders.parquet" }),
            "cannot create the directory /proc/ferry-cannot-write-here",
        ),
    ];
    for (spec, fragment) in cases {
        let (status, v) = server.post("/api/v1/exports", spec.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{spec}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
        assert!(!message.contains("s3cret"));
    }
    let missing = run_job(
        &server,
        "/api/v1/transfers",
        json!({ "source": { "files": { "url": "/nonexistent/ferry/dir", "format": "parquet" } }, "target": { "instance": "demo", "table": "x" }, "create": true }),
    )
    .await;
    assert_eq!(missing["status"], "failed");
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("no .parquet files under /nonexistent/ferry/dir"),
        "{missing}"
    );
    if let Some(endpoint) = ferry_testkit::s3() {
        let no_bucket = run_job(
            &server,
            "/api/v1/exports",
            json!({ "source": source, "url": "s3://ferry-no-such-bucket/x", "options": ferry_testkit::s3_options(&endpoint) }),
        )
        .await;
        assert_eq!(no_bucket["status"], "failed");
        assert!(
            no_bucket["error"]
                .as_str()
                .unwrap()
                .contains("ferry-no-such-bucket"),
            "{no_bucket}"
        );
    }
}

/// Exports the demo products to `url` twice (the second run replaces the first), imports them
/// back into the demo instance as `back`, and checks every row returned.
async fn round_trip_through(server: &TestServer, url: &str, back: &str) {
    let spec = json!({ "source": { "table": { "instance": "demo", "table": "products" } }, "url": url, "format": "parquet" });
    for _ in 0..2 {
        let out = run_job(server, "/api/v1/exports", spec.clone()).await;
        assert_eq!(succeeded(&out)["rows"], 50, "{out}");
    }
    let out = transfer(
        server,
        json!({ "source": { "files": { "url": url, "format": "parquet" } }, "target": table("demo", back), "create": true }),
    )
    .await;
    let report = succeeded(&out);
    assert_eq!(
        (report["rows"].as_u64(), report["verified"].as_bool()),
        (Some(50), Some(true)),
        "{out}"
    );
    let differ = server
        .rows(
            "demo",
            &format!(
                "select count(*) as n from (select * from products except select * from {back})"
            ),
        )
        .await;
    assert_eq!(differ[0]["n"], 0, "{url}: rows changed");
}

#[tokio::test]
async fn azure_blob_storage_by_url() {
    let server = TestServer::start_with(|c| c.demo = true).await;
    let Some(prefix) = ferry_testkit::azure() else {
        return;
    };
    let container = ferry_testkit::AZURE_CONTAINER;
    round_trip_through(
        &server,
        &format!("az://{container}/{prefix}/products/"),
        "from_azure",
    )
    .await;
}

//! Structure comparison across engines, and DDL that really makes the target match.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn diff_ddl_makes_a_mysql_table_match_postgres() {
    let server = TestServer::start().await;
    if !pg_and_my(&server).await {
        return;
    }
    server
        .sql("pg", "create table orders (id bigint primary key, customer text not null, amount numeric(12,2), at timestamp); create index orders_customer on orders (customer)")
        .await;
    server.sql("my", "create table orders (id int not null, amount decimal(12,2), legacy varchar(10)); create table only_here (x int)").await;
    let (status, v) = server
        .get("/api/v1/schema-diff?source=pg:public.orders&target=my:orders")
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let kinds: Vec<_> = v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d["kind"].as_str().unwrap(),
                d["column"].as_str().or(d["name"].as_str()).unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "column_type id",
            "missing_column customer",
            "missing_column at",
            "extra_column legacy",
            "primary_key ",
            "missing_index orders_customer",
        ]
    );
    // Applying the DDL leaves nothing to change.
    for statement in v["ddl"].as_array().unwrap() {
        let r = server.sql("my", statement.as_str().unwrap()).await;
        assert!(r[0]["error"].is_null(), "{statement}: {}", r[0]);
    }
    let (_, again) = server
        .get("/api/v1/schema-diff?source=pg:public.orders&target=my:orders")
        .await;
    assert_eq!(again["differences"], json!([]), "{again}");

    // A missing target gets CREATE TABLE in the target's dialect, which works.
    let (_, create) = server
        .get("/api/v1/schema-diff?source=pg:public.orders&target=my:orders_copy")
        .await;
    let ddl = create["ddl"][0].as_str().unwrap();
    assert!(ddl.starts_with("CREATE TABLE `orders_copy`"), "{ddl}");
    assert!(server.sql("my", ddl).await[0]["error"].is_null());

    let (_, dbs) = server
        .get("/api/v1/schema-diff?source=pg:&target=my:")
        .await;
    assert_eq!(dbs["missing_tables"], json!([]), "{dbs}");
    assert_eq!(
        dbs["extra_tables"],
        json!(["only_here", "orders_copy"]),
        "{dbs}"
    );
    assert_eq!(dbs["different_tables"], json!([]), "{dbs}");
    let (status, _) = server
        .get("/api/v1/schema-diff?source=pg:public.nope&target=my:orders")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .get("/api/v1/schema-diff?source=pg:public.orders&target=my:")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

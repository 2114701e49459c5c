//! Type-torture tables: every kind of column each engine has, at its limits and NULL, copied to
//! the other engines and to Parquet and back. Values must come back equal under the type map in
//! `docs/type-map.md`, checksums must agree, and every refused conversion names its column.

use serde_json::{Value, json};

use crate::common::*;

const PG_TORTURE: &str = r#"
create type torture_mood as enum ('ok', 'meh', '😀');
create table torture (
  id bigint primary key, i2 smallint, i4 integer, i8 bigint, dec numeric(38,10), r4 real,
  f8 double precision, b boolean, d date, t time, ts timestamp, tz timestamptz, iv interval,
  u uuid, j json, jb jsonb, by bytea, m torture_mood, arr integer[], tarr text[], s text,
  vc varchar(20));
insert into torture values
  (1, -32768, -2147483648, -9223372036854775808, -9999999999999999999999999999.9999999999,
   -3.4e38, -1.7976931348623157e308, false, '1970-01-01', '00:00:00', '1970-01-01 00:00:00',
   '1970-01-01 00:00:00+00', '-1 years -2 mons +3 days -04:05:06.789',
   '00000000-0000-0000-0000-000000000000', '{"a": [1, 2, {"b": null}]}', '{"z": 1, "a": "é"}',
   '\x00', 'ok', '{1,NULL,3}', '{"a b","c,d"}', 'é🚀 trailing  ', 'x  '),
  (2, 32767, 2147483647, 9223372036854775807, 9999999999999999999999999999.9999999999,
   3.4e38, 1.7976931348623157e308, true, '2026-11-22', '23:59:59.999999',
   '2026-11-22 10:11:12.123456', '2026-11-22 10:11:12.123456+05:30', '1 day 02:00',
   'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '[]', '{}', '\xdeadbeef00ff', '😀', '{}', '{}',
   E'中文 \t tab "quotes" \\ backslash\nnewline', ''),
  (3, 0, 0, 0, 0.0000000001, 'NaN', 'Infinity', true, '2000-02-29', '12:00:00.5',
   '2000-02-29 12:00:00', '2000-02-29 12:00:00-08', '0', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
   'null', '[1, "two", 3.5]', '', 'meh', '{-1}', '{NULL}', '', 'tab	'),
  (4, 1, 1, 1, 1, '-Infinity', '-Infinity', false, '1999-12-31', '01:02:03', '1999-12-31 23:59:59',
   '1999-12-31 23:59:59+00', '100 years', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', '1', '"s"',
   '\x5c', 'ok', '{2147483647}', '{"\"q\""}', ' lead', 'NULL'),
  (5, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null,
   null, null, null, null, null, null);
"#;

/// Every torture column as PostgreSQL text on both sides: a value that came back from another
/// engine is cast to the original column's type first, so values compare under the type map.
/// Zoned timestamps that went through a naive type come back as their UTC wall time.
const PG_COMPARE: &[(&str, &str)] = &[
    ("i2::text", "i2::smallint::text"),
    ("i4::text", "i4::integer::text"),
    ("i8::text", "i8::bigint::text"),
    ("dec::text", "dec::numeric(38,10)::text"),
    ("r4::text", "r4::real::text"),
    ("f8::text", "f8::double precision::text"),
    ("b::text", "b::boolean::text"),
    ("d::text", "d::date::text"),
    ("t::text", "t::time::text"),
    ("ts::text", "ts::timestamp::text"),
    ("tz::text", "(tz::timestamp at time zone 'UTC')::text"),
    ("iv::text", "iv::interval::text"),
    ("u::text", "u::uuid::text"),
    ("j::text", "j::json::text"),
    ("jb::text", "jb::jsonb::text"),
    ("by::text", "by::bytea::text"),
    ("m::text", "m::text"),
    ("arr::text", "arr::integer[]::text"),
    ("tarr::text", "tarr::text[]::text"),
    ("s", "s"),
    ("vc::text", "vc::text"),
];

/// Rows of `torture` (restricted by `filter`) that `back` does not hold equal, in either
/// direction.
async fn pg_differences(server: &TestServer, back: &str, filter: &str) -> i64 {
    let original: Vec<_> = PG_COMPARE.iter().map(|(a, _)| *a).collect();
    let returned: Vec<_> = PG_COMPARE.iter().map(|(_, b)| *b).collect();
    let (original, returned) = (original.join(", "), returned.join(", "));
    let sql = format!(
        "select (select count(*) from (select id, {original} from torture where {filter}
                 except select id, {returned} from {back}) a)
              + (select count(*) from (select id, {returned} from {back}
                 except select id, {original} from torture where {filter}) b) as n"
    );
    let rows = server.rows("pg", &sql).await;
    rows[0]["n"].as_i64().unwrap_or_else(|| panic!("{rows:?}"))
}

/// The columns (as text expressions) whose values differ between `torture` and `back` on
/// `instance`, in either direction; each compared by itself so a failure names its columns.
async fn differing(
    server: &TestServer,
    instance: &str,
    back: &str,
    columns: &[&str],
    text: &str,
) -> Vec<String> {
    let mut differ = Vec::new();
    for c in columns {
        let e = text.replace("{}", c);
        let sql = format!(
            "select (select count(*) from (select id, {e} from torture except select id, {e} from {back}) a)
                  + (select count(*) from (select id, {e} from {back} except select id, {e} from torture) b) as n"
        );
        let rows = server.rows(instance, &sql).await;
        if rows[0]["n"] != 0 {
            let values = server
                .rows(instance, &format!("select id, {e} as v from torture union all select id, {e} from {back} order by 1"))
                .await;
            differ.push(format!("{c}: {values:?}"));
        }
    }
    differ
}

fn error_of(out: &Value) -> &str {
    assert_eq!(out["status"], "failed", "{out}");
    out["error"].as_str().unwrap()
}

#[tokio::test]
async fn postgres_torture_table_through_mysql_sqlite_and_parquet() {
    let server = TestServer::start().await;
    if !pg_and_my(&server).await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lite = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    server.add_instance("lite", &lite, Value::Null).await;
    let setup = server.sql("pg", PG_TORTURE).await;
    assert!(setup.iter().all(|r| r["error"].is_null()), "{setup:?}");

    // Parquet keeps every value, NaN and infinities included.
    let file = dir.path().join("torture.parquet").display().to_string();
    parquet_round_trip(&server, "pg", "torture", &file, "from_parquet", false).await;
    assert_eq!(pg_differences(&server, "from_parquet", "true").await, 0);

    // MySQL stores no NaN nor infinity; SQLite keeps infinities but no NaN.
    for (target, finite) in [("my", "id not in (3, 4)"), ("lite", "id <> 3")] {
        // A zoned timestamp has no exact home in either engine: refused by column name.
        let spec = json!({ "source": { "table": table("pg", "torture") }, "target": table(target, "torture"), "create": true });
        let error = error_of(&transfer(&server, spec.clone()).await).to_string();
        assert!(error.contains("column \"tz\""), "{target}: {error}");
        assert!(error.contains("--allow-lossy"), "{target}: {error}");
        // With the loss accepted, NaN and infinities still cannot be stored: named, nothing kept.
        let mut lossy = spec.clone();
        lossy["allow_lossy"] = json!(true);
        let error = error_of(&transfer(&server, lossy.clone()).await).to_string();
        assert!(
            error.contains("column \"r4\" holds NaN") || error.contains("column \"r4\" holds"),
            "{target}: {error}"
        );
        let (_, tables) = server
            .get(&format!("/api/v1/instances/{target}/tables"))
            .await;
        assert!(
            !tables.to_string().contains("\"torture\""),
            "{target}: a failed copy left its created table: {tables}"
        );
        // The finite rows go through, verified, and come back equal.
        lossy["where"] = json!(finite);
        let out = transfer(&server, lossy).await;
        let report = succeeded(&out);
        assert_eq!(report["verified"], true, "{out}");
        assert_eq!(report["source_checksum"], report["target_checksum"]);
        let back = format!("from_{target}");
        let out = transfer(&server, json!({ "source": { "table": table(target, "torture") }, "target": table("pg", &back), "create": true })).await;
        assert_eq!(succeeded(&out)["verified"], true, "{out}");
        assert_eq!(
            pg_differences(&server, &back, finite).await,
            0,
            "{target} changed values"
        );
    }
}

const MY_TORTURE: &str = "create table torture (
    id int primary key, ti tinyint, tu tinyint unsigned, si smallint, su smallint unsigned,
    mi mediumint, mu mediumint unsigned, i int, iu int unsigned, bi bigint, bu bigint unsigned,
    dec38 decimal(38,10), f float, db double, bo boolean, bits bit(8), day date, dt datetime(6),
    ts timestamp(6) null, tm time(6), yr year, ch char(5), vc varchar(20), tx text, bin binary(3),
    vb varbinary(10), bl blob, js json, en enum('small','large','😀'), st set('x','y'));
  insert into torture values
    (1, -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,
     -9999999999999999999999999999.9999999999, -3.4e38, -1.7976931348623157e308, false, b'00000000',
     '1000-01-01', '1000-01-01 00:00:00', '1970-01-01 00:00:01', '-838:59:59', 1901, '', '', '',
     x'000000', x'', x'', '[]', 'small', ''),
    (2, 127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295, 9223372036854775807,
     18446744073709551615, 9999999999999999999999999999.9999999999, 3.4e38, 1.7976931348623157e308,
     true, b'11111111', '9999-12-31', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999',
     '838:59:59', 2155, 'abc', 'é🚀 trailing  ', '中文\\ttab \"q\" \\\\ back\\nline', x'ff00ff',
     x'deadbeef', x'00ff5c', '{\"a\": [1, {\"b\": null}], \"é\": \"😀\"}', '😀', 'x,y'),
    (3, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null,
     null, null, null, null, null, null, null, null, null, null, null, null, null, null)";

/// MySQL columns compared as text, the returned side cast back to the original type.
const MY_COMPARE: &[&str] = &[
    "ti",
    "tu",
    "si",
    "su",
    "mi",
    "mu",
    "i",
    "iu",
    "bi",
    "bu",
    "dec38",
    "f",
    "db",
    "bo",
    "hex(concat(bits))",
    "day",
    "dt",
    "ts",
    "tm",
    "yr",
    "ch",
    "vc",
    "tx",
    "hex(bin)",
    "hex(vb)",
    "hex(bl)",
    "js",
    "en",
    "st",
];

#[tokio::test]
async fn mysql_torture_table_through_postgres_and_parquet() {
    let server = TestServer::start().await;
    if !pg_and_my(&server).await {
        return;
    }
    let setup = server.sql("my", MY_TORTURE).await;
    assert!(setup.iter().all(|r| r["error"].is_null()), "{setup:?}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("torture.parquet").display().to_string();
    // Parquet keeps `timestamp` as an instant; a created MySQL table stores it as UTC wall time
    // in a datetime, which the type map calls lossy.
    parquet_round_trip(&server, "my", "torture", &file, "from_parquet", true).await;

    // MySQL → PostgreSQL → MySQL: into the existing table's copy, then compared in MySQL.
    let out = transfer(&server, json!({ "source": { "table": table("my", "torture") }, "target": table("pg", "torture"), "create": true })).await;
    let report = succeeded(&out);
    assert_eq!(
        (report["rows"].as_u64(), report["verified"].as_bool()),
        (Some(3), Some(true)),
        "{out}"
    );
    server.sql("my", "create table from_pg like torture").await;
    // Into the original column types: the columns PostgreSQL holds as text (time, enum, set,
    // json) and numeric(20,0) into bigint unsigned are checked value by value, which the type
    // map calls lossy: it must be accepted, and every value must still come back equal.
    let out = transfer(
        &server,
        json!({ "source": { "table": table("pg", "torture") }, "target": table("my", "from_pg") }),
    )
    .await;
    assert!(error_of(&out).contains("--allow-lossy"), "{out}");
    let out = transfer(&server, json!({ "source": { "table": table("pg", "torture") }, "target": table("my", "from_pg"), "allow_lossy": true })).await;
    assert_eq!(succeeded(&out)["verified"], true, "{out}");

    for back in ["from_parquet", "from_pg"] {
        let differ = differing(&server, "my", back, MY_COMPARE, "cast({} as char)").await;
        assert!(differ.is_empty(), "{back} changed values: {differ:#?}");
    }
    // In PostgreSQL the values have their mapped types.
    let row = &server
        .rows(
            "pg",
            "select bu::text, dec38::text, tm, yr, en, st, ts::text, encode(bl, 'hex') as bl from torture where id = 2",
        )
        .await[0];
    assert_eq!(
        row,
        &json!({ "bu": "18446744073709551615", "dec38": "9999999999999999999999999999.9999999999",
                 "tm": "838:59:59.000000", "yr": 2155, "en": "😀", "st": "x,y",
                 "ts": "2038-01-19 03:14:07.999999+00", "bl": "00ff5c" })
    );
}

const SQLITE_TORTURE: &str = "create table torture (
    id integer primary key, i integer, big integer, r real, b boolean, d date, dt datetime,
    t time, n numeric, s text, bl blob, untyped, vc varchar(10));
  insert into torture values
    (1, -9223372036854775808, 9223372036854775807, -1.7976931348623157e308, 0, '1970-01-01',
     '1970-01-01 00:00:00', '00:00:00', '12.5', 'é🚀 trailing  ', x'00', x'00ff', ''),
    (2, 0, 1, 1.5e-300, 1, '2026-11-22', '2026-11-22 10:11:12.123456', '23:59:59.999999', '0.1',
     '中文 \"q\" \\ back', x'deadbeef', x'', 'x  '),
    (3, 42, -1, 9e999, 1, '2000-02-29', '2000-02-29 12:00:00', '12:00:00.5', '-7', '', x'', x'5c', 'a'),
    (4, null, null, null, null, null, null, null, null, null, null, null, null)";

/// SQLite columns compared as SQLite text; `t` is compared as Ferry reads it (a time of day:
/// '12:00:00.5' and '12:00:00.500' are the same value).
const SQLITE_COMPARE: &[&str] = &[
    "i",
    "big",
    "r",
    "b",
    "d",
    "dt",
    "n",
    "s",
    "hex(bl)",
    "hex(untyped)",
    "vc",
];

#[tokio::test]
async fn sqlite_torture_table_through_postgres_and_parquet() {
    let server = TestServer::start().await;
    let Some(_) = postgres_instance(&server, "pg", Value::Null).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lite = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    server.add_instance("lite", &lite, Value::Null).await;
    let setup = server.sql("lite", SQLITE_TORTURE).await;
    assert!(setup.iter().all(|r| r["error"].is_null()), "{setup:?}");
    let file = dir.path().join("torture.parquet").display().to_string();
    parquet_round_trip(&server, "lite", "torture", &file, "from_parquet", false).await;

    let out = transfer(&server, json!({ "source": { "table": table("lite", "torture") }, "target": table("pg", "torture"), "create": true })).await;
    let report = succeeded(&out);
    assert_eq!(
        (report["rows"].as_u64(), report["verified"].as_bool()),
        (Some(4), Some(true)),
        "{out}"
    );
    let out = transfer(&server, json!({ "source": { "table": table("pg", "torture") }, "target": table("lite", "from_pg"), "create": true })).await;
    assert_eq!(succeeded(&out)["verified"], true, "{out}");

    for back in ["from_parquet", "from_pg"] {
        let differ = differing(&server, "lite", back, SQLITE_COMPARE, "cast({} as text)").await;
        assert!(differ.is_empty(), "{back} changed values: {differ:#?}");
        let times = |table: &str| format!("select id, t from {table} order by id");
        assert_eq!(
            server.rows("lite", &times("torture")).await,
            server.rows("lite", &times(back)).await,
            "{back} changed times"
        );
    }
    let row = &server
        .rows(
            "pg",
            "select i::text, big, s, encode(bl, 'hex') as bl, d::text from torture where id = 1",
        )
        .await[0];
    assert_eq!(
        row,
        &json!({ "i": "-9223372036854775808", "big": 9223372036854775807i64, "s": "é🚀 trailing  ", "bl": "00", "d": "1970-01-01" })
    );
}

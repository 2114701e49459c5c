//! Fuzzes classification and masking plans with mutated SQL and Redis commands for
//! `FERRY_FUZZ_SECS` seconds: errors are fine, panics are not, and the invariants below hold.

use ferry_core::{Engine, Error};
use ferry_guard::{
    ColumnInfo, MaskAlgorithm, StatementClass, classify_redis, classify_script, plan_masking,
    referenced_tables,
};

const SQL_SEEDS: &[&str] = &[
    "select 1",
    "SELECT * FROM users WHERE id = 1; DELETE FROM t",
    "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
    "select (select count(*) from (with d as (delete from t returning 1) select * from d) s)",
    "SELECT * INTO t2 FROM t",
    "COPY t TO PROGRAM 'sh -c x'",
    "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_stat_activity",
    "SELECT LOAD_FILE('/etc/passwd')",
    "SELECT * FROM t INTO OUTFILE '/tmp/x'",
    "/* hi */ dElEtE FROM t",
    "-- c\nDROP TABLE t",
    "/*!50000 DROP TABLE t*/",
    "EXPLAIN ANALYZE DELETE FROM t",
    "PRAGMA table_info(users)",
    "select u.phone, o.id from users u join orders o on o.user_id = u.id",
    "select o.*, u.name from orders o left join users u using (id)",
    "with recursive r(n, p) as (select 1, phone from users union all select n + 1, p from r) select * from r",
    "select upper(phone), count(phone), (select email from users limit 1) from users union select 'a', 1, 'b'",
    "insert into x select phone from users returning *",
    "select $$a;b$$, 'it''s', \"q\"\"x\", `b`, e'\\n' from t",
    "SET GLOBAL x = 1; set role admin; begin; commit",
    "create table t (a int); grant select on t to u; vacuum",
];

const REDIS_SEEDS: &[&str] = &[
    "GET a",
    "SET a 1 EX 10",
    "MEMORY USAGE k",
    "EVAL \"return 1\" 0",
    "flushall",
];

fn catalog(parts: &[String]) -> Option<Vec<ColumnInfo>> {
    let col = |name: &str, mask| ColumnInfo {
        name: name.into(),
        mask,
    };
    match parts.last().map(|s| s.to_lowercase()).as_deref() {
        Some("users") => Some(vec![
            col("id", None),
            col("name", None),
            col("phone", Some(MaskAlgorithm::KeepLast4)),
            col("email", Some(MaskAlgorithm::Hash)),
        ]),
        Some("orders") => Some(vec![
            col("id", None),
            col("user_id", None),
            col("total", None),
        ]),
        Some("t") | Some("x") => Some(vec![col("a", None)]),
        _ => None,
    }
}

const ENGINES: [Engine; 5] = [
    Engine::Postgres,
    Engine::Mysql,
    Engine::Sqlite,
    Engine::Archive,
    Engine::Redis,
];

#[test]
fn classification_never_panics() {
    ferry_testkit::fuzz::run("classify_script", SQL_SEEDS, |input| {
        for engine in ENGINES {
            for c in classify_script(engine, input) {
                // Nothing that fails to parse may pass as a read.
                if c.reasons
                    .iter()
                    .any(|r| r.starts_with("could not be parsed"))
                {
                    assert!(c.class >= StatementClass::Admin, "{engine:?} {c:?}");
                }
            }
        }
    });
}

#[test]
fn redis_classification_never_panics() {
    ferry_testkit::fuzz::run("classify_redis", REDIS_SEEDS, |input| {
        let c = classify_redis(input);
        assert_eq!(c.text, input.trim());
    });
}

#[test]
fn masking_plans_never_panic() {
    ferry_testkit::fuzz::run("plan_masking", SQL_SEEDS, |input| {
        for engine in [Engine::Postgres, Engine::Mysql, Engine::Sqlite] {
            let _ = referenced_tables(engine, input);
            match plan_masking(engine, input, &catalog) {
                Ok(_) | Err(Error::PermissionDenied(_)) | Err(Error::InvalidInput(_)) => {}
                Err(other) => panic!("{engine:?}: unexpected error kind {other:?}"),
            }
        }
    });
}

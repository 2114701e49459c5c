use super::*;
use StatementClass::*;

/// The class of a single statement, and (if given) a word every reason list must mention.
fn check(engine: Engine, sql: &str, expected: StatementClass) {
    let got = classify_script(engine, sql);
    assert_eq!(got.len(), 1, "{sql:?} → {got:#?}");
    assert_eq!(got[0].class, expected, "{sql:?} → {:#?}", got[0]);
}

fn check_reason(engine: Engine, sql: &str, expected: StatementClass, reason: &str) {
    let got = classify_script(engine, sql);
    assert_eq!(got.len(), 1, "{sql:?} → {got:#?}");
    assert_eq!(got[0].class, expected, "{sql:?} → {:#?}", got[0]);
    assert!(
        got[0].reasons.iter().any(|r| r.contains(reason)),
        "{sql:?}: no reason mentions {reason:?}: {:?}",
        got[0].reasons
    );
}

const PG: Engine = Engine::Postgres;
const MY: Engine = Engine::Mysql;
const LITE: Engine = Engine::Sqlite;

#[test]
fn classes_by_statement_kind() {
    for (engine, sql, class) in [
        (PG, "select 1", Read),
        (PG, "SELECT * FROM t WHERE a = 1", Read),
        (PG, "values (1), (2)", Read),
        (PG, "with a as (select 1) select * from a", Read),
        (PG, "select * from t for update", Read),
        (PG, "select pg_sleep(1), pg_advisory_lock(1)", Read),
        (PG, "show search_path", Read),
        (PG, "explain select * from t", Read),
        (PG, "explain delete from t", Read),
        (MY, "describe t", Read),
        (MY, "show tables", Read),
        (MY, "select sleep(1)", Read),
        (MY, "select a into @v from t", Read),
        (PG, "begin", Read),
        (PG, "commit", Read),
        (PG, "rollback to savepoint a", Read),
        (PG, "savepoint a", Read),
        (MY, "start transaction", Read),
        (PG, "set transaction isolation level serializable", Read),
        (PG, "set search_path to a", Read),
        (PG, "set local statement_timeout = 5", Read),
        (MY, "set names utf8mb4", Read),
        (MY, "set @x = 1", Read),
        (PG, "insert into t values (1)", Write),
        (PG, "update t set a = 1 where b = 2", Write),
        (PG, "delete from t where a = 1", Write),
        (MY, "replace into t values (1)", Write),
        (LITE, "insert or replace into t values (1)", Write),
        (PG, "copy t from stdin", Write),
        (PG, "copy t to stdout", Read),
        (PG, "copy (select 1) to stdout", Read),
        (MY, "lock tables t write", Write),
        (PG, "select nextval('s')", Write),
        (PG, "select lo_unlink(5)", Write),
        (PG, "create table t (a int)", Ddl),
        (PG, "create index i on t (a)", Ddl),
        (PG, "create or replace view v as select 1", Ddl),
        (PG, "alter table t add column b int", Ddl),
        (PG, "drop table t", Ddl),
        (PG, "truncate t", Ddl),
        (MY, "rename table a to b", Ddl),
        (PG, "comment on table t is 'x'", Ddl),
        (PG, "grant select on t to u", Dcl),
        (PG, "revoke select on t from u", Dcl),
        (PG, "create user u", Dcl),
        (PG, "create role r", Dcl),
        (PG, "alter role r with password 'x'", Dcl),
        (PG, "drop role r", Dcl),
        (PG, "set role admin", Dcl),
        (PG, "set session authorization u", Dcl),
        (MY, "set password = 'x'", Dcl),
        (PG, "reset statement_timeout", Read),
        (PG, "discard plans", Read),
        (PG, "reset role", Dcl),
        (PG, "reset all", Dcl),
        (PG, "discard all", Dcl),
        (PG, "set role none", Dcl),
        (PG, "set default_transaction_read_only = off", Admin),
        (PG, "set session_replication_role = replica", Admin),
        (MY, "set sql_log_bin = 0", Admin),
        (MY, "kill 5", Admin),
        (MY, "flush privileges", Admin),
        (MY, "set global max_connections = 10", Admin),
        (MY, "set @@global.max_connections = 10", Admin),
        (PG, "vacuum", Admin),
        (PG, "analyze t", Admin),
        (PG, "copy t to '/tmp/f'", Admin),
        (PG, "copy t from '/tmp/f'", Admin),
        (PG, "create extension dblink", Admin),
        (PG, "select set_config('a', 'b', false)", Admin),
        (LITE, "attach database '/tmp/x' as y", Admin),
        (LITE, "select load_extension('x')", Admin),
        (LITE, "select writefile('/tmp/x', 'a')", Admin),
        (LITE, "select * from fsdir('/')", Admin),
        (LITE, "vacuum into '/tmp/copy.db'", Unknown),
        (PG, "copy (delete from t returning *) to stdout", Write),
        (PG, "insert into t select pg_cancel_backend(1)", Admin),
        (PG, "prepare p as delete from t", Write),
        (PG, "call p()", Unknown),
        (PG, "execute p", Unknown),
        (PG, "checkpoint", Unknown),
        (MY, "shutdown", Unknown),
        (PG, "do $$ begin delete from t; end $$", Unknown),
    ] {
        check(engine, sql, class);
    }
}

#[test]
fn sqlite_pragmas_read_unless_they_set() {
    for (sql, class) in [
        ("PRAGMA table_info(x)", Read),
        ("pragma main.table_info('x')", Read),
        ("PRAGMA foreign_keys", Read),
        ("PRAGMA foreign_keys = OFF", Admin),
        ("PRAGMA cache_size(100)", Admin),
        ("PRAGMA cache_size = -2000", Admin),
        ("PRAGMA optimize", Admin),
        ("PRAGMA table_info(x) junk", Unknown),
    ] {
        check(LITE, sql, class);
    }
}

#[test]
fn kinds_and_flags() {
    let one = |engine, sql| classify_script(engine, sql).remove(0);
    for (sql, kind) in [
        ("select 1", "SELECT"),
        ("/* x */ delete from t", "DELETE"),
        ("create unique index i on t (a)", "CREATE INDEX"),
        ("create or replace view v as select 1", "CREATE VIEW"),
        ("drop table if exists t", "DROP TABLE"),
        ("start transaction", "START TRANSACTION"),
        ("set search_path to a", "SET"),
        ("begin", "BEGIN"),
        (
            "with d as (delete from t returning *) select * from d",
            "SELECT",
        ),
    ] {
        assert_eq!(one(PG, sql).kind, kind, "{sql}");
    }
    assert!(one(PG, "delete from t").where_missing);
    assert!(one(PG, "update t set a = 1").where_missing);
    assert!(!one(PG, "update t set a = 1 where b = 1").where_missing);
    assert!(one(PG, "with d as (delete from t returning 1) select 1").where_missing);
    assert!(one(PG, "drop table t").is_drop_or_truncate);
    assert!(one(PG, "truncate t").is_drop_or_truncate);
    assert!(one(PG, "alter table t drop column a").is_drop_or_truncate);
    assert!(!one(PG, "alter table t add column a int").is_drop_or_truncate);
    assert!(one(PG, "begin").transaction_control);
    assert!(!one(PG, "select 1").transaction_control);
    assert_eq!(
        one(
            PG,
            "with c as (select 1) select * from public.t join c on true join u on true"
        )
        .tables,
        ["public.t", "u"]
    );
    assert_eq!(one(PG, "insert into a select * from b").tables, ["a", "b"]);
}

// One test per smuggling trick.

#[test]
fn data_modifying_cte_is_a_write() {
    check_reason(
        PG,
        "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
        Write,
        "data-modifying CTE (DELETE)",
    );
}

#[test]
fn nested_data_modifying_cte_is_a_write() {
    check_reason(
        PG,
        "select (select count(*) from (with d as (delete from t returning 1) select * from d) s)",
        Write,
        "data-modifying CTE (DELETE)",
    );
}

#[test]
fn select_into_creates_a_table() {
    check_reason(
        PG,
        "SELECT * INTO t2 FROM t",
        Ddl,
        "SELECT INTO creates a table",
    );
}

#[test]
fn copy_to_program_is_admin() {
    check_reason(PG, "COPY t TO PROGRAM 'sh -c \"id\"'", Admin, "PROGRAM");
    check_reason(PG, "copy t from program 'curl x'", Admin, "PROGRAM");
}

#[test]
fn terminating_backends_is_admin() {
    check_reason(
        PG,
        "SELECT pg_terminate_backend(123)",
        Admin,
        "pg_terminate_backend",
    );
}

#[test]
fn schema_qualified_dangerous_function_is_admin() {
    check_reason(
        PG,
        "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_stat_activity",
        Admin,
        "pg_terminate_backend",
    );
    check_reason(
        PG,
        "select * from t where a in (select PG_CATALOG.PG_READ_FILE('/etc/passwd'))",
        Admin,
        "pg_read_file",
    );
    check_reason(PG, "select * from pg_ls_dir('/')", Admin, "pg_ls_dir");
    check_reason(
        PG,
        "select * from dblink('x', 'delete from t') as t(a int)",
        Admin,
        "dblink",
    );
}

#[test]
fn mysql_load_file_is_admin() {
    check_reason(MY, "SELECT LOAD_FILE('/etc/passwd')", Admin, "load_file");
}

#[test]
fn mysql_into_outfile_is_not_a_read() {
    let c = classify_script(MY, "SELECT * FROM t INTO OUTFILE '/tmp/x'").remove(0);
    assert!(c.class >= Admin, "{c:#?}");
    assert!(c.reasons.iter().any(|r| r.contains("OUTFILE")), "{c:#?}");
}

#[test]
fn write_after_read_in_a_script_is_a_write() {
    let got = classify_script(PG, "SELECT 1; DELETE FROM t");
    let classes: Vec<_> = got.iter().map(|c| c.class).collect();
    assert_eq!(classes, [Read, Write]);
    assert_eq!(got[1].text, "DELETE FROM t");
}

#[test]
fn comments_and_casing_do_not_hide_a_delete() {
    check(PG, "/* hi */ dElEtE FROM t", Write);
    check(MY, "# hi\n dElEtE FROM t", Write);
}

#[test]
fn line_comment_does_not_hide_a_drop() {
    check(PG, "-- c\nDROP TABLE t", Ddl);
}

#[test]
fn mysql_executable_comment_is_unknown() {
    check_reason(MY, "/*!50000 DROP TABLE t*/", Unknown, "executable comment");
    check_reason(
        MY,
        "select 1 /*!, sleep(1) */",
        Unknown,
        "executable comment",
    );
    check_reason(
        MY,
        "select 1 /*M!100100 , 2 */",
        Unknown,
        "executable comment",
    );
    // A literal that holds the marker is just text; one that hides it depends on the
    // server's escaping mode, so both readings count.
    check(MY, "select '/*!50000 x */'", Read);
    check_reason(
        MY,
        "select '\\' /*!50000 drop table t */ '",
        Unknown,
        "executable comment",
    );
}

#[test]
fn explain_analyze_runs_its_statement() {
    check_reason(
        PG,
        "EXPLAIN ANALYZE DELETE FROM t",
        Write,
        "EXPLAIN ANALYZE",
    );
    check(PG, "explain (analyze) delete from t", Write);
    check(PG, "explain analyze select * from t", Read);
}

#[test]
fn garbage_is_unknown() {
    check_reason(PG, "this is not sql", Unknown, "could not be parsed");
    check_reason(PG, "select (", Unknown, "could not be parsed");
    let got = classify_script(PG, "select 1; nonsense here; delete from t");
    let classes: Vec<_> = got.iter().map(|c| c.class).collect();
    assert_eq!(classes, [Read, Unknown, Write]);
}

#[test]
fn redis_commands() {
    for (line, class) in [
        ("GET a", Read),
        ("hgetall h", Read),
        ("MEMORY USAGE k", Read),
        ("SELECT 1", Read),
        ("SET a 1", Write),
        ("del a", Write),
        ("FLUSHALL", Ddl),
        ("ACL SETUSER x on", Dcl),
        ("CONFIG SET x y", Admin),
        ("MEMORY PURGE", Admin),
        ("EVAL \"return 1\" 0", Unknown),
        ("NOSUCH x", Unknown),
        ("", Unknown),
    ] {
        assert_eq!(classify_redis(line).class, class, "{line:?}");
    }
    assert!(classify_redis("flushdb").is_drop_or_truncate);
    assert_eq!(classify_redis("  get   k ").kind, "GET");
    let script: Vec<_> = classify_script(Engine::Redis, "GET a\n# note\n\nDEL a\n")
        .into_iter()
        .map(|c| c.class)
        .collect();
    assert_eq!(script, [Read, Write]);
}

#[test]
fn class_names_round_trip() {
    for class in [Read, Write, Ddl, Dcl, Admin, Unknown] {
        let json = serde_json::to_string(&class).unwrap();
        assert_eq!(json, format!("\"{}\"", class.as_str()));
        assert_eq!(
            serde_json::from_str::<StatementClass>(&json).unwrap(),
            class
        );
    }
    assert!(Read < Write && Write < Ddl && Ddl < Dcl && Dcl < Admin && Admin < Unknown);
}

#[test]
fn deep_function_nesting_is_unknown_not_slow() {
    let deep = format!("select {}1{}", "f(".repeat(40), ")".repeat(40));
    check_reason(PG, &deep, Unknown, "nested more than 12 deep");
    let fine = format!("select {}1{}", "f(".repeat(8), ")".repeat(8));
    check(PG, &fine, Read);
}

#[test]
fn long_operator_chains_are_unknown_not_a_stack_overflow() {
    let terms = |n: usize| {
        (0..n)
            .map(|i| format!("id = {i}"))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    check(PG, &format!("select * from t where {}", terms(500)), Read);
    check_reason(
        PG,
        &format!("select * from t where {}", terms(5_000)),
        Unknown,
        "chains more than",
    );
    let got = classify_script(
        PG,
        &format!(
            "select 1; select {}; delete from t",
            "1+".repeat(20_000) + "1"
        ),
    );
    let classes: Vec<_> = got.iter().map(|c| c.class).collect();
    assert_eq!(classes, [Read, Unknown, Write]);
}

use super::*;
use MaskAlgorithm::*;

const PG: Engine = Engine::Postgres;

/// users(id, name, phone keep-last-4, email hash), orders(id, user_id, total),
/// secrets(id, ssn full), public.users like users.
fn catalog(parts: &[String]) -> Option<Vec<ColumnInfo>> {
    let col = |name: &str, mask| ColumnInfo {
        name: name.into(),
        mask,
    };
    let name: Vec<&str> = parts.iter().map(String::as_str).collect();
    match name.as_slice() {
        ["users"] | ["public", "users"] => Some(vec![
            col("id", None),
            col("name", None),
            col("phone", Some(KeepLast4)),
            col("email", Some(Hash)),
        ]),
        ["orders"] => Some(vec![
            col("id", None),
            col("user_id", None),
            col("total", None),
        ]),
        ["secrets"] => Some(vec![col("id", None), col("SSN", Some(Full))]),
        ["pg_stat_activity"] => Some(vec![col("pid", None)]),
        _ => None,
    }
}

fn plan(engine: Engine, sql: &str) -> Result<MaskPlan> {
    plan_masking(engine, sql, &catalog)
}

/// The plan of a query, written as one letter per output column: `.` shown, `4` keep-last-4,
/// `h` hash, `*` full.
fn check(sql: &str, expected: &str) {
    check_in(PG, sql, expected);
}

fn check_in(engine: Engine, sql: &str, expected: &str) {
    let got = match plan(engine, sql) {
        Ok(p) => p
            .columns
            .iter()
            .map(|m| match m {
                None => '.',
                Some(KeepLast4) => '4',
                Some(Hash) => 'h',
                Some(Full) => '*',
            })
            .collect::<String>(),
        Err(e) => format!("refused: {e}"),
    };
    assert_eq!(got, expected, "{sql}");
}

fn check_refused(sql: &str, mentions: &str) {
    match plan(PG, sql) {
        Err(Error::PermissionDenied(m)) => {
            assert!(
                m.contains(mentions),
                "{sql}: {m:?} does not mention {mentions:?}"
            );
            assert!(m.contains("unmask permission"), "{m}");
        }
        other => panic!("{sql}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn columns_keep_their_masks_through_star_and_aliases() {
    check("select * from users", ".4h".replacen('.', "..", 1).as_str());
    check("select phone as p from users", "4");
    check("select id, PHONE, \"phone\" from users", ".44");
    check("select u.phone, u.* from users u", "4..4h");
    check("select public.users.email from public.users", "h");
    check("select (phone) from users", "4");
    check("select distinct phone from users order by phone", "4");
    check("select ssn from secrets", "*");
}

#[test]
fn expressions_on_masked_values_are_covered_fully() {
    check("select upper(phone) from users", "*");
    check("select phone || '' as p, name from users", "*.");
    check("select cast(email as text) from users", "*");
    check(
        "select case when phone like '5%' then 1 else 0 end from users",
        "*",
    );
    check("select max(phone), min(id) from users", "*.");
    check("select row_number() over (order by phone) from users", "*");
    check("select length(name) from users", ".");
    check("select u from users u", "*");
    check("select row_to_json(u.*) from users u", "*");
    check("select concat(*) from users", "*");
    check("select id + (select count(*) from orders) from users", ".");
}

#[test]
fn counting_leaks_nothing() {
    check("select count(phone) from users", ".");
    check("select count(*), count(distinct email) from users", "..");
    check(
        "select count(*) filter (where phone like '5%') from users",
        "*",
    );
}

#[test]
fn subqueries_and_ctes_carry_masks() {
    check("select p from (select phone p from users) s", "4");
    check("select * from (select phone, id from users) s", "4.");
    check(
        "select s.b from (select id, phone from users) as s(a, b)",
        "4",
    );
    check("select upper from (select upper(phone) from users) s", "*");
    check("select x from (select upper(phone) from users) s(x)", "*");
    check("with c as (select phone from users) select * from c", "4");
    check(
        "with c(a, b) as (select phone, name from users) select b, a from c",
        ".4",
    );
    check(
        "with c as (select phone from users), d as (select * from c) select phone from d",
        "4",
    );
    check("select (select phone from users limit 1)", "4");
    check("select (select phone from users limit 1) || 'x'", "*");
    check(
        "select id from orders where user_id in (select id from users where phone = '1')",
        ".",
    );
    check(
        "with recursive r(n, p) as (select 1, phone from users union all select n + 1, p from r where n < 3) select * from r",
        ".4",
    );
}

#[test]
fn ctes_shadow_tables_only_in_their_scope() {
    check(
        "with users as (select total as phone from orders) select phone from users",
        ".",
    );
    check(
        "select (with users as (select 1 as phone) select phone from users), (select phone from users)",
        ".4",
    );
    check("select phone from users u join users v on true", "4");
    check("select * from users u join users v on true", "..4h..4h");
}

#[test]
fn recursive_ctes_settle_and_stay_bounded() {
    check(
        "with recursive a(n, p) as (select 1, name from users union all select n + 1, upper(p) from a) select p from a",
        ".",
    );
    check(
        "with recursive a(n, p) as (select 1, name from users union all select n + 1, phone from a, users) select p from a",
        "4",
    );
    check(
        "with recursive a(p) as (select phone from users union all select s.q from (with recursive b(q) as (select p from a union all select upper(q) from b) select q from b) s) select p from a",
        "*",
    );
}

#[test]
fn set_operations_mask_a_position_if_any_branch_does() {
    check("select phone from users union select 'x' from orders", "4");
    check(
        "select id, name from orders union all select id, phone from users",
        ".4",
    );
    check(
        "select email from users intersect select phone from users",
        "*",
    );
    check(
        "select total from orders except select phone from users",
        "4",
    );
}

#[test]
fn joins_combine_scopes() {
    check(
        "select u.phone, o.id from users u join orders o on o.user_id = u.id",
        "4.",
    );
    check(
        "select o.*, u.name from orders o left join users u on u.id = o.user_id",
        "....",
    );
    check("select * from users, orders", "..4h...");
    check("select * from users join orders using (id)", "..4h..");
    check("select * from orders natural join users", "....4h");
    check("select * from orders join users using (id)", "....4h");
    let using = "select * from (select phone, id from users) a join orders using (id)";
    check(using, ".4..");
    check_in(Engine::Mysql, using, ".4..");
    check_in(Engine::Sqlite, using, "4...");
    check("select user_id, phone from orders join users on true", ".4");
    check("select id from users join orders on true", ".");
    check("select * from (users u join orders o on true)", "..4h...");
}

#[test]
fn unresolvable_names_of_masked_columns_count_as_masked() {
    check(
        "select phone from orders, (select 1 as x from users) s",
        "*",
    );
    check(
        "select nothing, x from orders, (select 1 as x from users) s",
        "..",
    );
}

#[test]
fn tables_without_masks_are_never_refused() {
    check("select * from orders", "");
    check("select * from orders, no_such_table", "");
    check("insert into orders values (1, 2, 3)", "");
    check("select * from generate_series(1, 3)", "");
    assert!(plan(PG, "select 1").unwrap().is_empty());
}

#[test]
fn unknown_table_next_to_a_masked_one_is_refused() {
    check_refused("select * from users, mystery", "\"mystery\"");
    check_refused(
        "select phone from users where id in (select id from mystery)",
        "mystery",
    );
}

#[test]
fn statements_that_are_not_queries_are_refused() {
    check_refused(
        "insert into orders select id, id, id from users returning *",
        "INSERT",
    );
    check_refused("copy (select phone from users) to stdout", "COPY");
    check_refused("update users set name = 'x' returning phone", "UPDATE");
    check_refused("select phone into t2 from users", "INTO");
    check_refused(
        "with d as (delete from users returning phone) select * from d",
        "data-modifying",
    );
    check_refused("select 1; select phone from users", "2 statements");
}

#[test]
fn constructs_masking_does_not_follow_are_refused() {
    check_refused(
        "select * from users, generate_series(1, 3)",
        "generate_series",
    );
    check_refused(
        "select * from users u, lateral (select u.phone) s",
        "LATERAL",
    );
    check_refused("select * from users, unnest(array[1]) x", "FROM item");
    check_refused(
        "select table_to_xml('users', true, false, '')",
        "table_to_xml",
    );
    check_refused(
        "select most_common_vals from pg_stats where attname = 'phone'",
        "pg_stats",
    );
}

#[test]
fn explain_shows_no_values() {
    assert!(
        plan(PG, "explain select phone from users")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn referenced_tables_skip_cte_names() {
    let got = referenced_tables(
        PG,
        "with c as (select * from public.users) select (select 1 from secrets), * from c join orders o on true union select * from x",
    )
    .unwrap();
    let want: Vec<Vec<String>> = [
        vec!["public", "users"],
        vec!["secrets"],
        vec!["orders"],
        vec!["x"],
    ]
    .into_iter()
    .map(|p| p.into_iter().map(String::from).collect())
    .collect();
    assert_eq!(got, want);
    assert!(matches!(
        referenced_tables(PG, "select ("),
        Err(Error::InvalidInput(_))
    ));
    let deep = format!(
        "select {}phone{} from users",
        "f(".repeat(30),
        ")".repeat(30)
    );
    assert!(matches!(plan(PG, &deep), Err(Error::InvalidInput(_))));
}

#[test]
fn algorithms_parse_and_print() {
    for (text, alg) in [("full", Full), ("keep-last-4", KeepLast4), ("HASH", Hash)] {
        let parsed: MaskAlgorithm = text.parse().unwrap();
        assert_eq!(parsed, alg);
        assert_eq!(parsed.to_string(), text.to_lowercase());
        let json = serde_json::to_string(&alg).unwrap();
        assert_eq!(json, format!("\"{}\"", alg.as_str()));
    }
    let err = "last4".parse::<MaskAlgorithm>().unwrap_err();
    assert!(err.message().contains("full, keep-last-4 or hash"), "{err}");
}

#[test]
fn values_are_masked() {
    let m = Masker::new(b"key");
    for (alg, value, expected) in [
        (Full, "secret", "******"),
        (Full, "ab", "****"),
        (Full, "a very long value indeed", "********"),
        (KeepLast4, "555-123-4567", "********4567"),
        (KeepLast4, "4567", "****"),
        (KeepLast4, "", "****"),
        (KeepLast4, "é😀abcd", "**abcd"),
    ] {
        assert_eq!(m.mask_value(alg, value), expected, "{alg} {value:?}");
    }
    let h = m.mask_value(Hash, "555");
    assert_eq!(h.len(), 16);
    assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(h, m.mask_value(Hash, "555"));
    assert_ne!(h, Masker::new(b"other").mask_value(Hash, "555"));
    assert_ne!(h, m.mask_value(Hash, "556"));
    assert!(!format!("{m:?}").contains("key\""));
}

#[test]
fn batches_are_masked_by_plan() {
    use arrow::array::{BinaryArray, Int64Array};
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("phone", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
        Field::new("b", DataType::Binary, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec![Some("555-1234"), None])),
            Arc::new(Int64Array::from(vec![Some(123456), Some(7)])),
            Arc::new(BinaryArray::from(vec![Some(&b"\x01\xff"[..]), None])),
        ],
    )
    .unwrap();
    let m = Masker::new(b"k");
    let plan = MaskPlan {
        columns: vec![None, Some(KeepLast4), Some(KeepLast4), Some(Hash)],
    };
    let out = m.mask_batch(&plan, &batch).unwrap();
    assert_eq!(out.schema().field(0), batch.schema().field(0));
    for i in 1..4 {
        assert_eq!(out.schema().field(i).data_type(), &DataType::Utf8);
        assert!(out.schema().field(i).is_nullable());
        assert_eq!(out.schema().field(i).name(), batch.schema().field(i).name());
    }
    let text = |i: usize| -> Vec<Option<String>> {
        out.column(i)
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    };
    assert_eq!(text(1), [Some("****1234".to_string()), None]);
    assert_eq!(
        text(2),
        [Some("**3456".to_string()), Some("****".to_string())]
    );
    assert_eq!(text(3), [Some(m.mask_value(Hash, "01ff")), None]);

    assert_eq!(m.mask_batch(&MaskPlan::default(), &batch).unwrap(), batch);
    let short = MaskPlan {
        columns: vec![Some(Full)],
    };
    assert!(matches!(
        m.mask_batch(&short, &batch),
        Err(Error::PermissionDenied(_))
    ));
}

//! Fuzzes variable expressions and substitution with mutated templates for `FERRY_FUZZ_SECS`
//! seconds: errors are fine, panics are not.

use chrono::TimeZone;
use ferry_core::Engine;
use ferry_flow::vars::{self, Style, Value, Values};

const SEEDS: &[&str] = &[
    "$[yyyyMMdd-1]",
    "$[add_months(yyyyMMdd,-1)]",
    "$[yyyy-MM-dd+7]",
    "$[HHmmss-1/24]",
    "$[yyyyMMdd-7*1]",
    "$[last_day(yyyy-MM-dd)]",
    "$[this_day(yyyyMMdd)]",
    "orders_$[yyyyMM]",
    "yyyy-MM-dd|-2d",
    "yyyy-MM-dd|-2d+1M",
    "yyyyMMddHH|-1h+3w-1y+2m-5s",
    "select * from ${table} where d = ${bizdate} and n = ${name} and m = $[yyyyMM]",
    "${cyctime} ${flow} ${run_id} $$ $ {x} $[ ] ${}",
    "a|b",
];

#[test]
fn variables_never_panic() {
    let at = chrono_tz::Asia::Shanghai
        .with_ymd_and_hms(2026, 3, 1, 5, 0, 0)
        .single()
        .expect("a fixed, unambiguous time");
    let mut values: Values = vars::built_ins("f", "r1", &at);
    values.insert(
        "table".into(),
        Value {
            value: "orders_202603".into(),
            raw: true,
        },
    );
    values.insert(
        "name".into(),
        Value {
            value: "O'Brien \\".into(),
            raw: false,
        },
    );
    ferry_testkit::fuzz::run("flow vars", SEEDS, |input| {
        let _ = vars::check_expression(input);
        let _ = vars::evaluate(input, &at, &values);
        let _ = vars::check_raw("x", input);
        for style in [
            Style::Plain,
            Style::Sql(Engine::Postgres),
            Style::Sql(Engine::Mysql),
        ] {
            let _ = vars::substitute(input, &values, &at, style);
        }
        let _ = vars::references(&serde_json::json!({ "sql": input, "list": [input] }));
    });
}

#[test]
fn offsets_beyond_the_calendar_are_errors_not_panics() {
    let at = chrono_tz::UTC
        .with_ymd_and_hms(2026, 3, 1, 5, 0, 0)
        .single()
        .expect("a fixed, unambiguous time");
    let values = Values::new();
    for text in [
        "$[HHmmss-99999999999999999991/24]",
        "$[yyyyMMdd+1e400]",
        "yyyy-MM-dd|+999999999999999999y",
        "yyyy-MM-dd|-9999999999w",
        "yyyy-MM-dd|+9223372036854775807s",
        "yyyy-MM-dd|+3000000000M",
    ] {
        assert!(vars::evaluate(text, &at, &values).is_err(), "{text}");
    }
}

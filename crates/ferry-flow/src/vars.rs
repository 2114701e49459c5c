//! Variables: the built-ins `${bizdate}` (the day before the scheduled time, `yyyy-MM-dd`) and
//! `${cyctime}` (the scheduled time, `yyyy-MM-dd HH:mm:ss`), time expressions relative to the
//! scheduled time in two dialects — DolphinScheduler's `$[yyyyMMdd-1]`, `$[add_months(yyyyMMdd,-1)]`,
//! `$[yyyy-MM-dd+7]`, `$[HHmmss-1/24]`, and DMS's `yyyy-MM-dd|-2d+1M` — constants, and upstream
//! outputs. In SQL a value is substituted as a quoted literal unless its variable is declared
//! raw, and a raw value must match a safe pattern.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, TimeZone};
use chrono_tz::Tz;
use ferry_core::{Engine, Error, Result};
use serde::{Deserialize, Serialize};

/// Variables every run has.
pub const BUILT_IN: &[&str] = &["bizdate", "cyctime", "flow", "run_id"];

/// A variable's value for one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Value {
    pub value: String,
    #[serde(default)]
    pub raw: bool,
}

pub type Values = BTreeMap<String, Value>;

/// The business date of a run scheduled at `at`: the day before, as in DMS.
pub fn bizdate(at: &DateTime<Tz>) -> NaiveDate {
    at.date_naive() - Duration::days(1)
}

/// The scheduled time that stands for a business date (midnight of the day after it).
pub fn scheduled_for_bizdate(bizdate: NaiveDate, tz: Tz) -> Result<DateTime<Tz>> {
    let day = bizdate + Duration::days(1);
    tz.from_local_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
        .earliest()
        .ok_or_else(|| Error::InvalidInput(format!("no midnight on {day} in {tz}")))
}

/// The built-in values of a run.
pub fn built_ins(flow: &str, run_id: &str, at: &DateTime<Tz>) -> Values {
    let plain = |v: String| Value {
        value: v,
        raw: false,
    };
    [
        ("bizdate", plain(bizdate(at).format("%Y-%m-%d").to_string())),
        ("cyctime", plain(at.format("%Y-%m-%d %H:%M:%S").to_string())),
        ("flow", plain(flow.to_string())),
        ("run_id", plain(run_id.to_string())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Resolves a flow's variables for a run at `at`: built-ins, then each flow variable in name
/// order (time expressions evaluated, `${…}` of earlier ones expanded); `overrides` (the
/// parameters of a manual run) replace values but keep the declared rawness. A run for another
/// business date passes `bizdate` through `at`, not as an override.
pub fn resolve(
    flow: &crate::model::FlowSpec,
    run_id: &str,
    at: &DateTime<Tz>,
    overrides: &BTreeMap<String, String>,
) -> Result<Values> {
    for name in overrides.keys() {
        if name != "bizdate" && !flow.variables.contains_key(name) {
            return Err(Error::InvalidInput(format!(
                "parameter \"{name}\" is not a variable of flow \"{}\"; its variables: {}",
                flow.name,
                flow.variables
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let mut values = built_ins(&flow.name, run_id, at);
    for (name, v) in &flow.variables {
        let value = match overrides.get(name) {
            Some(o) => o.clone(),
            None => evaluate(v.value(), at, &values).map_err(|e| {
                Error::InvalidInput(format!("variable \"{name}\": {}", e.message()))
            })?,
        };
        if v.raw() {
            check_raw(name, &value)?;
        }
        values.insert(
            name.clone(),
            Value {
                value,
                raw: v.raw(),
            },
        );
    }
    Ok(values)
}

/// A raw value goes into SQL unquoted, so it may only hold identifier and path characters.
pub fn check_raw(name: &str, value: &str) -> Result<()> {
    let safe = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-/:=".contains(c));
    if safe {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "raw variable \"{name}\" holds {value:?}: raw values may only contain letters, digits and _ . - / : ="
        )))
    }
}

/// Checks a variable's expression without a run (for validation).
pub fn check_expression(text: &str) -> Result<()> {
    let at = chrono_tz::UTC
        .with_ymd_and_hms(2026, 1, 31, 5, 0, 0)
        .single()
        .ok_or_else(|| Error::Internal("fixed time".into()))?;
    let values: Values = BUILT_IN
        .iter()
        .map(|k| {
            (
                k.to_string(),
                Value {
                    value: String::new(),
                    raw: false,
                },
            )
        })
        .collect();
    evaluate_with(text, &at, &values, true).map(|_| ())
}

/// The value of a flow variable: a DMS expression (`format|offsets`) as a whole, or text in
/// which `$[…]` expressions and `${…}` references are expanded.
pub fn evaluate(text: &str, at: &DateTime<Tz>, values: &Values) -> Result<String> {
    evaluate_with(text, at, values, false)
}

fn evaluate_with(text: &str, at: &DateTime<Tz>, values: &Values, lenient: bool) -> Result<String> {
    if let Some((format, offsets)) = text.split_once('|')
        && is_time_format(format)
    {
        let shifted = apply_dms_offsets(at, offsets)?;
        return Ok(format_time(&shifted, format));
    }
    expand(text, |kind, inner| match kind {
        Ref::Time => time_expression(inner, at),
        Ref::Var => match values.get(inner) {
            Some(v) => Ok(v.value.clone()),
            None if lenient => Ok(String::new()),
            None => Err(Error::InvalidInput(format!(
                "unknown variable ${{{inner}}}"
            ))),
        },
    })
}

/// How a reference is written.
#[derive(Clone, Copy, PartialEq)]
enum Ref {
    /// `$[…]`
    Time,
    /// `${…}`
    Var,
}

/// Replaces every `${…}` and `$[…]` in `text` with what `f` returns for it.
fn expand(text: &str, mut f: impl FnMut(Ref, &str) -> Result<String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (kind, close) = match after.chars().next() {
            Some('{') => (Ref::Var, '}'),
            Some('[') => (Ref::Time, ']'),
            _ => {
                out.push('$');
                rest = after;
                continue;
            }
        };
        let Some(end) = after.find(close) else {
            return Err(Error::InvalidInput(format!(
                "unclosed {} in {text:?}",
                if kind == Ref::Var { "${" } else { "$[" }
            )));
        };
        out.push_str(&f(kind, after[1..end].trim())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The `${name}` references in every string of a node's parameters.
pub fn references(params: &serde_json::Value) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![params];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::String(s) => {
                let _ = expand(s, |kind, inner| {
                    if kind == Ref::Var {
                        found.insert(inner.to_string());
                    }
                    Ok(String::new())
                });
            }
            serde_json::Value::Array(items) => stack.extend(items),
            // An export's partition template has placeholders of its own (`${yyyy}`, …).
            serde_json::Value::Object(map) => stack.extend(
                map.iter()
                    .filter(|(k, _)| k.as_str() != TEMPLATE_KEY)
                    .map(|(_, v)| v),
            ),
            _ => {}
        }
    }
    found
}

/// The parameter whose `${…}` belong to the export's partition template, not to the flow.
pub const TEMPLATE_KEY: &str = "partition_by";

/// How substituted values are written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Style {
    /// As they are: URLs, paths, table names in parameters.
    Plain,
    /// In SQL for an engine: quoted literals unless raw.
    Sql(Engine),
}

/// Substitutes `${name}` and `$[expr]` in `text`.
pub fn substitute(text: &str, values: &Values, at: &DateTime<Tz>, style: Style) -> Result<String> {
    expand(text, |kind, inner| {
        let (value, raw) = match kind {
            Ref::Time => (time_expression(inner, at)?, false),
            Ref::Var => {
                let v = values
                    .get(inner)
                    .ok_or_else(|| Error::InvalidInput(format!("unknown variable ${{{inner}}}")))?;
                (v.value.clone(), v.raw)
            }
        };
        Ok(match style {
            Style::Plain => value,
            Style::Sql(_) if raw => {
                check_raw(inner, &value)?;
                value
            }
            Style::Sql(engine) => sql_literal(engine, &value),
        })
    })
}

/// Substitutes in every string of a JSON value.
pub fn substitute_json(
    value: &serde_json::Value,
    values: &Values,
    at: &DateTime<Tz>,
    style: Style,
) -> Result<serde_json::Value> {
    Ok(match value {
        serde_json::Value::String(s) => {
            serde_json::Value::String(substitute(s, values, at, style)?)
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|v| substitute_json(v, values, at, style))
                .collect::<Result<_>>()?,
        ),
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), substitute_json(v, values, at, style)?)))
                .collect::<Result<_>>()?,
        ),
        other => other.clone(),
    })
}

/// A string literal in an engine's SQL.
pub fn sql_literal(engine: Engine, value: &str) -> String {
    let mut escaped = value.replace('\'', "''");
    if engine == Engine::Mysql {
        // MySQL reads backslashes in literals as escapes unless NO_BACKSLASH_ESCAPES is set.
        escaped = escaped.replace('\\', "\\\\");
    }
    format!("'{escaped}'")
}

/// Whether `s` is a date/time pattern such as `yyyy-MM-dd` or `HHmmss`.
fn is_time_format(s: &str) -> bool {
    !s.is_empty()
        && ["yy", "MM", "dd", "HH", "mm", "ss"]
            .iter()
            .any(|t| s.contains(t))
        && s.chars()
            .all(|c| "yMdHms".contains(c) || !c.is_ascii_alphanumeric())
}

/// Formats with a Java-style pattern (`yyyy`, `yy`, `MM`, `dd`, `HH`, `mm`, `ss`).
pub fn format_time(at: &DateTime<Tz>, pattern: &str) -> String {
    let mut out = String::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        let (token, len) = [
            ("yyyy", "%Y"),
            ("yy", "%y"),
            ("MM", "%m"),
            ("dd", "%d"),
            ("HH", "%H"),
            ("mm", "%M"),
            ("ss", "%S"),
        ]
        .iter()
        .find(|(t, _)| rest.starts_with(t))
        .map(|(t, f)| (*f, t.len()))
        .unwrap_or(("", 0));
        if len > 0 {
            out.push_str(&at.format(token).to_string());
            rest = &rest[len..];
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// A DolphinScheduler-style expression: `FORMAT`, `FORMAT±N` (days; `N` may be `a*b` or
/// `a/b/c`, so `-1/24` is an hour), `add_months(FORMAT,N)`, `this_day(FORMAT)`,
/// `last_day(FORMAT)` (the month's last day).
fn time_expression(expr: &str, at: &DateTime<Tz>) -> Result<String> {
    let bad = |why: &str| {
        Error::InvalidInput(format!(
            "$[{expr}]: {why}; write e.g. $[yyyyMMdd-1], $[add_months(yyyyMMdd,-1)], $[yyyy-MM-dd+7] or $[HHmmss-1/24]"
        ))
    };
    if let Some(args) = expr.strip_suffix(')') {
        let (func, args) = args
            .split_once('(')
            .ok_or_else(|| bad("unbalanced parentheses"))?;
        let args: Vec<&str> = args.split(',').map(str::trim).collect();
        let format = args[0];
        if !is_time_format(format) {
            return Err(bad("the first argument must be a date format"));
        }
        return match (func.trim(), args.len()) {
            ("add_months", 2) => {
                let n: i32 = args[1]
                    .parse()
                    .map_err(|_| bad("months must be a whole number"))?;
                Ok(format_time(&add_months(at, n)?, format))
            }
            ("this_day", 1) => Ok(format_time(at, format)),
            ("last_day", 1) => {
                let first_next = add_months(&at.with_day(1).unwrap_or(*at), 1)?;
                Ok(format_time(&(first_next - Duration::days(1)), format))
            }
            _ => Err(bad("unknown function or wrong number of arguments")),
        };
    }
    // Find a trailing ±arithmetic.
    let bytes = expr.as_bytes();
    let mut i = bytes.len();
    while i > 0 && (bytes[i - 1].is_ascii_digit() || b"*/. ".contains(&bytes[i - 1])) {
        i -= 1;
    }
    let (format, offset_days) =
        if i > 0 && i < bytes.len() && (bytes[i - 1] == b'+' || bytes[i - 1] == b'-') {
            let sign = if bytes[i - 1] == b'-' { -1.0 } else { 1.0 };
            (
                &expr[..i - 1],
                sign * arithmetic(&expr[i..]).ok_or_else(|| bad("bad offset"))?,
            )
        } else {
            (expr, 0.0)
        };
    if !is_time_format(format) {
        return Err(bad("not a date format"));
    }
    // `as` saturates; an offset beyond chrono's range is an error, not a panic.
    let shifted = Duration::try_seconds((offset_days * 86_400.0).round() as i64)
        .and_then(|d| at.checked_add_signed(d))
        .ok_or_else(|| bad("offset out of range"))?;
    Ok(format_time(&shifted, format))
}

/// `a`, `a*b`, `a/b/c`, evaluated left to right.
fn arithmetic(s: &str) -> Option<f64> {
    let s = s.replace(' ', "");
    let mut value: Option<f64> = None;
    let mut op = '*';
    let mut number = String::new();
    for c in s.chars().chain(std::iter::once('#')) {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let n: f64 = number.parse().ok()?;
        number.clear();
        value = Some(match (value, op) {
            (None, _) => n,
            (Some(v), '*') => v * n,
            (Some(v), '/') if n != 0.0 => v / n,
            _ => return None,
        });
        if c == '#' {
            break;
        }
        op = c;
        if op != '*' && op != '/' {
            return None;
        }
    }
    value
}

fn add_months(at: &DateTime<Tz>, n: i32) -> Result<DateTime<Tz>> {
    let shifted = if n >= 0 {
        at.checked_add_months(Months::new(n as u32))
    } else {
        at.checked_sub_months(Months::new(n.unsigned_abs()))
    };
    shifted.ok_or_else(|| Error::InvalidInput(format!("{n} months from {at} is out of range")))
}

/// DMS offsets: `-2d+1M`, units `y` `M` `w` `d` `h` `m` `s`.
fn apply_dms_offsets(at: &DateTime<Tz>, offsets: &str) -> Result<DateTime<Tz>> {
    let bad = || {
        Error::InvalidInput(format!(
            "offset {offsets:?}: write signed amounts with units y, M, w, d, h, m, s, e.g. -1d or -2d+1M"
        ))
    };
    let mut t = *at;
    let mut rest = offsets.trim();
    if rest.is_empty() {
        return Ok(t);
    }
    while !rest.is_empty() {
        let sign = match rest.as_bytes()[0] {
            b'+' => 1i64,
            b'-' => -1,
            _ => return Err(bad()),
        };
        let digits: String = rest[1..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let n: i64 = digits.parse().map_err(|_| bad())?;
        let unit = rest[1 + digits.len()..].chars().next().ok_or_else(bad)?;
        let amount = sign * n;
        t = match unit {
            'y' | 'M' => {
                let months = if unit == 'y' {
                    amount.checked_mul(12)
                } else {
                    Some(amount)
                };
                let months = months.and_then(|m| i32::try_from(m).ok()).ok_or_else(bad)?;
                add_months(&t, months)?
            }
            'w' | 'd' | 'h' | 'm' | 's' => {
                let delta = match unit {
                    'w' => Duration::try_weeks(amount),
                    'd' => Duration::try_days(amount),
                    'h' => Duration::try_hours(amount),
                    'm' => Duration::try_minutes(amount),
                    _ => Duration::try_seconds(amount),
                };
                delta
                    .and_then(|d| t.checked_add_signed(d))
                    .ok_or_else(bad)?
            }
            _ => return Err(bad()),
        };
        rest = &rest[2 + digits.len()..];
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Tz> {
        chrono_tz::Asia::Shanghai
            .with_ymd_and_hms(2026, 3, 1, 5, 0, 0)
            .unwrap()
    }

    fn values() -> Values {
        built_ins("f", "r1", &at())
    }

    #[test]
    fn built_ins_follow_the_scheduled_time() {
        let v = values();
        assert_eq!(v["bizdate"].value, "2026-02-28");
        assert_eq!(v["cyctime"].value, "2026-03-01 05:00:00");
        let day = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        let s = scheduled_for_bizdate(day, chrono_tz::UTC).unwrap();
        assert_eq!(bizdate(&s), day);
    }

    #[test]
    fn dolphinscheduler_expressions() {
        let e = |x: &str| evaluate(x, &at(), &values()).unwrap();
        assert_eq!(e("$[yyyyMMdd-1]"), "20260228");
        assert_eq!(e("$[yyyy-MM-dd+7]"), "2026-03-08");
        assert_eq!(e("$[add_months(yyyyMMdd,-1)]"), "20260201");
        assert_eq!(e("$[HHmmss-1/24]"), "040000");
        assert_eq!(e("$[yyyyMMdd-7*1]"), "20260222");
        assert_eq!(e("$[last_day(yyyy-MM-dd)]"), "2026-03-31");
        assert_eq!(e("orders_$[yyyyMM]"), "orders_202603");
        assert!(evaluate("$[nonsense-1]", &at(), &values()).is_err());
        assert!(evaluate("$[yyyyMMdd", &at(), &values()).is_err());
    }

    #[test]
    fn dms_expressions() {
        let e = |x: &str| evaluate(x, &at(), &values()).unwrap();
        assert_eq!(e("yyyy-MM-dd|-2d"), "2026-02-27");
        assert_eq!(e("yyyy-MM-dd|-2d+1M"), "2026-03-27");
        assert_eq!(e("yyyyMMddHH|-1h"), "2026030104");
        // A constant with a bar is just a constant.
        assert_eq!(e("a|b"), "a|b");
        assert!(evaluate("yyyy-MM-dd|-2x", &at(), &values()).is_err());
    }

    #[test]
    fn sql_values_are_quoted_unless_raw() {
        let mut v = values();
        v.insert(
            "name".into(),
            Value {
                value: "O'Brien \\".into(),
                raw: false,
            },
        );
        v.insert(
            "table".into(),
            Value {
                value: "orders_202603".into(),
                raw: true,
            },
        );
        let sql = "select * from ${table} where d = ${bizdate} and n = ${name} and m = $[yyyyMM]";
        assert_eq!(
            substitute(sql, &v, &at(), Style::Sql(Engine::Postgres)).unwrap(),
            "select * from orders_202603 where d = '2026-02-28' and n = 'O''Brien \\' and m = '202603'"
        );
        assert!(
            substitute(sql, &v, &at(), Style::Sql(Engine::Mysql))
                .unwrap()
                .contains("'O''Brien \\\\'")
        );
        v.get_mut("table").unwrap().value = "x; drop table y".into();
        let err = substitute(sql, &v, &at(), Style::Sql(Engine::Postgres)).unwrap_err();
        assert!(err.message().contains("raw variable \"table\""), "{err}");
        let err = substitute("${nope}", &v, &at(), Style::Plain).unwrap_err();
        assert!(err.message().contains("unknown variable ${nope}"));
    }

    #[test]
    fn references_are_found_in_nested_parameters() {
        let params =
            serde_json::json!({ "sql": "select ${a}, $[yyyy]", "x": ["${b}", { "y": "${c}" }] });
        let found: Vec<String> = references(&params).into_iter().collect();
        assert_eq!(found, ["a", "b", "c"]);
    }
}

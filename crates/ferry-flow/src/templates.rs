//! Flow templates: ready-made flow files with parameters (`ferry flow new NAME --template T
//! --param k=v`). A template renders TOML that is then applied like any flow file, so the same
//! validation names what is wrong.

use std::collections::BTreeMap;

use ferry_core::{Error, Result};
use serde::Serialize;

/// One parameter of a template.
#[derive(Debug, Clone, Serialize)]
pub struct Param {
    pub name: &'static str,
    /// `None`: the parameter is required.
    pub default: Option<&'static str>,
    pub help: &'static str,
    /// Goes into SQL as a name: letters, digits, `_` and `.` only.
    #[serde(skip)]
    pub identifier: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Template {
    pub name: &'static str,
    pub description: &'static str,
    pub params: Vec<Param>,
}

const fn p(
    name: &'static str,
    default: Option<&'static str>,
    help: &'static str,
    identifier: bool,
) -> Param {
    Param {
        name,
        default,
        help,
        identifier,
    }
}

pub fn templates() -> Vec<Template> {
    vec![
        Template {
            name: "archive-to-object-storage",
            description: "daily at 05:00: yesterday's rows to a date partition (Parquet), the partition's row count checked through the archive, then optionally deleted from the source in batches",
            params: vec![
                p("instance", None, "the source instance", false),
                p("table", None, "the source table", true),
                p(
                    "date_column",
                    None,
                    "the date column that picks a day's rows",
                    true,
                ),
                p(
                    "url",
                    None,
                    "where partitions go: s3://bucket/prefix, az://…, gs://… or a path",
                    false,
                ),
                p(
                    "archive",
                    None,
                    "the archive registered over url (`ferry archive add NAME URL --partitions y,m,d`), used to check the partition",
                    true,
                ),
                p(
                    "key",
                    Some("id"),
                    "the source's key column, for batched deletes",
                    true,
                ),
                p(
                    "delete_source",
                    Some("false"),
                    "true: delete the archived rows from the source, in batches",
                    false,
                ),
                p("batch", Some("10000"), "rows per delete batch", false),
                p("cron", Some("0 5 * * *"), "when it runs", false),
                p("timezone", Some("UTC"), "the schedule's time zone", false),
            ],
        },
        Template {
            name: "purge-history",
            description: "weekly: delete rows older than N days in batches",
            params: vec![
                p("instance", None, "the instance", false),
                p("table", None, "the table", true),
                p("date_column", None, "the date or timestamp column", true),
                p(
                    "key",
                    Some("id"),
                    "the key column batches are chosen by",
                    true,
                ),
                p(
                    "days",
                    Some("90"),
                    "rows older than this many days go",
                    false,
                ),
                p("batch", Some("10000"), "rows per batch", false),
                p("cron", Some("0 3 * * 0"), "when it runs", false),
                p("timezone", Some("UTC"), "the schedule's time zone", false),
            ],
        },
        Template {
            name: "analyze-tables",
            description: "daily: refresh planner statistics (ANALYZE / ANALYZE TABLE)",
            params: vec![
                p("instance", None, "the instance", false),
                p("tables", None, "comma-separated tables", false),
                p(
                    "engine",
                    Some("postgres"),
                    "postgres, mysql or sqlite (the ANALYZE dialect)",
                    false,
                ),
                p("cron", Some("0 4 * * *"), "when it runs", false),
                p("timezone", Some("UTC"), "the schedule's time zone", false),
            ],
        },
        Template {
            name: "daily-uv-report",
            description: "daily: distinct users of the business date on one instance into a report table on another (upserted by day, so reruns replace)",
            params: vec![
                p("source", None, "the instance holding the events", false),
                p("table", None, "the events table", true),
                p("user_column", Some("user_id"), "the user column", true),
                p("date_column", None, "the event date column", true),
                p("target", None, "the instance that keeps the report", false),
                p(
                    "report_table",
                    Some("daily_uv"),
                    "the report table (created if missing)",
                    true,
                ),
                p("cron", Some("0 6 * * *"), "when it runs", false),
                p("timezone", Some("UTC"), "the schedule's time zone", false),
            ],
        },
        Template {
            name: "incremental-sync",
            description: "every 10 minutes: rows newer than the last watermark from one table to another, verified",
            params: vec![
                p("source", None, "the source instance", false),
                p("table", None, "the source table", true),
                p("target", None, "the target instance", false),
                p(
                    "target_table",
                    None,
                    "the target table (created if missing)",
                    true,
                ),
                p(
                    "by",
                    None,
                    "the increasing column (an id or a timestamp)",
                    true,
                ),
                p("cron", Some("*/10 * * * *"), "when it runs", false),
                p("timezone", Some("UTC"), "the schedule's time zone", false),
            ],
        },
    ]
}

/// A TOML basic string.
fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Renders a template as a flow file named `flow`.
pub fn render(template: &str, flow: &str, given: &BTreeMap<String, String>) -> Result<String> {
    let t = templates()
        .into_iter()
        .find(|t| t.name == template)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "no template \"{template}\"; templates: {}",
                templates()
                    .iter()
                    .map(|t| t.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    if let Some(k) = given
        .keys()
        .find(|k| !t.params.iter().any(|p| p.name == k.as_str()))
    {
        return Err(Error::InvalidInput(format!(
            "template {template} has no parameter \"{k}\"; it takes {}",
            t.params
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut v: BTreeMap<&str, String> = BTreeMap::new();
    for param in &t.params {
        let value = match (given.get(param.name), param.default) {
            (Some(value), _) => value.clone(),
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(Error::InvalidInput(format!(
                    "template {template} needs --param {}=… ({})",
                    param.name, param.help
                )));
            }
        };
        let safe = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        };
        if param.identifier && !safe(&value) {
            return Err(Error::InvalidInput(format!(
                "parameter {} = {value:?} must be a name (letters, digits, _ and .)",
                param.name
            )));
        }
        v.insert(param.name, value);
    }
    let number = |name: &str| -> Result<u64> {
        v[name].parse().map_err(|_| {
            Error::InvalidInput(format!(
                "parameter {name} = {:?} must be a whole number",
                v[name]
            ))
        })
    };
    let head = format!(
        "name = {}\ndescription = {}\n\n[schedule]\ncron = {}\ntimezone = {}\n",
        q(flow),
        q(t.description),
        q(&v["cron"]),
        q(&v["timezone"])
    );
    let body = match template {
        "archive-to-object-storage" => {
            let batch = number("batch")?;
            let (table, date, archive) = (&v["table"], &v["date_column"], &v["archive"]);
            let mut nodes = format!(
                r#"
[[nodes]]
id = "export"
kind = "export"
retries = 2
params = {{ source = {{ table = {{ instance = {instance}, table = {table_q} }} }}, url = {url}, format = "parquet", partition_by = "y=${{yyyy}}/m=${{mm}}/d=${{dd}}", partition_column = {date_q}, where = {where_q} }}

[[nodes]]
id = "count_source"
kind = "sql"
upstream = ["export"]
params = {{ instance = {instance}, sql = {count_q}, output = ["source_rows"] }}

[[nodes]]
id = "verify"
kind = "check"
upstream = ["count_source"]
params = {{ instance = "archive", sql = {verify_q}, interval_secs = 1, wait_secs = 0 }}
"#,
                instance = q(&v["instance"]),
                table_q = q(table),
                url = q(&v["url"]),
                date_q = q(date),
                where_q = q(&format!("{date} = ${{bizdate}}")),
                count_q = q(&format!(
                    "select count(*) as source_rows from {table} where {date} = ${{bizdate}}"
                )),
                verify_q = q(&format!(
                    "select count(*) = ${{source_rows}} from {archive} where y = $[yyyy-1] and m = $[MM-1] and d = $[dd-1]"
                )),
            );
            match v["delete_source"].as_str() {
                "true" => nodes.push_str(&format!(
                    r#"
[[nodes]]
id = "delete_source"
kind = "sql"
upstream = ["verify"]
params = {{ instance = {instance}, sql = {delete_q}, repeat = true }}
"#,
                    instance = q(&v["instance"]),
                    delete_q = q(&format!(
                        "delete from {table} where {key} in (select {key} from {table} where {date} = ${{bizdate}} limit {batch})",
                        key = v["key"]
                    )),
                )),
                "false" => {}
                other => {
                    return Err(Error::InvalidInput(format!(
                        "parameter delete_source = {other:?} must be true or false"
                    )));
                }
            }
            nodes
        }
        "purge-history" => {
            let (days, batch) = (number("days")?, number("batch")?);
            format!(
                r#"
[[nodes]]
id = "purge"
kind = "sql"
params = {{ instance = {instance}, sql = {sql}, repeat = true }}
"#,
                instance = q(&v["instance"]),
                sql = q(&format!(
                    "delete from {table} where {key} in (select {key} from {table} where {date} < $[yyyy-MM-dd-{days}] limit {batch})",
                    table = v["table"],
                    key = v["key"],
                    date = v["date_column"]
                )),
            )
        }
        "analyze-tables" => {
            let tables: Vec<&str> = v["tables"]
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect();
            if tables.is_empty()
                || tables.iter().any(|t| {
                    !t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                })
            {
                return Err(Error::InvalidInput(format!(
                    "parameter tables = {:?} must be comma-separated table names",
                    v["tables"]
                )));
            }
            let prefix = match v["engine"].as_str() {
                "postgres" | "sqlite" => "analyze",
                "mysql" => "analyze table",
                other => {
                    return Err(Error::InvalidInput(format!(
                        "parameter engine = {other:?} must be postgres, mysql or sqlite"
                    )));
                }
            };
            let sql: Vec<String> = tables.iter().map(|t| format!("{prefix} {t}")).collect();
            format!(
                r#"
[[nodes]]
id = "analyze"
kind = "sql"
params = {{ instance = {instance}, sql = {sql} }}
"#,
                instance = q(&v["instance"]),
                sql = q(&sql.join(";\n")),
            )
        }
        "daily-uv-report" => {
            let report = &v["report_table"];
            format!(
                r#"
[[nodes]]
id = "report_table"
kind = "sql"
params = {{ instance = {target}, sql = {create} }}

[[nodes]]
id = "aggregate"
kind = "transfer"
upstream = ["report_table"]
params = {{ source = {{ query = {{ instance = {source}, sql = {agg} }} }}, target = {{ instance = {target}, table = {report_q} }}, mode = "upsert" }}
"#,
                source = q(&v["source"]),
                target = q(&v["target"]),
                report_q = q(report),
                create = q(&format!(
                    "create table if not exists {report} (day varchar(10) primary key, uv bigint not null)"
                )),
                agg = q(&format!(
                    "select cast(${{bizdate}} as char(10)) as day, count(distinct {user}) as uv from {table} where {date} = ${{bizdate}}",
                    user = v["user_column"],
                    table = v["table"],
                    date = v["date_column"]
                )),
            )
        }
        "incremental-sync" => format!(
            r#"
[[nodes]]
id = "sync"
kind = "transfer"
retries = 3
retry_delay_secs = 30
params = {{ source = {{ table = {{ instance = {source}, table = {table} }} }}, target = {{ instance = {target}, table = {target_table} }}, mode = "incremental", by = {by}, create = true }}
"#,
            source = q(&v["source"]),
            table = q(&v["table"]),
            target = q(&v["target"]),
            target_table = q(&v["target_table"]),
            by = q(&v["by"]),
        ),
        _ => unreachable!("every template in templates() renders"),
    };
    Ok(format!("{head}{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_template_renders_a_valid_flow() {
        let all = [
            (
                "archive-to-object-storage",
                params(&[
                    ("instance", "a"),
                    ("table", "orders"),
                    ("date_column", "created_date"),
                    ("url", "s3://b/x"),
                    ("archive", "arch"),
                    ("delete_source", "true"),
                ]),
            ),
            (
                "purge-history",
                params(&[
                    ("instance", "a"),
                    ("table", "events"),
                    ("date_column", "at"),
                ]),
            ),
            (
                "analyze-tables",
                params(&[("instance", "a"), ("tables", "t1, t2")]),
            ),
            (
                "daily-uv-report",
                params(&[
                    ("source", "a"),
                    ("table", "events"),
                    ("date_column", "d"),
                    ("target", "a"),
                ]),
            ),
            (
                "incremental-sync",
                params(&[
                    ("source", "a"),
                    ("table", "t"),
                    ("target", "a"),
                    ("target_table", "t2"),
                    ("by", "id"),
                ]),
            ),
        ];
        assert_eq!(all.len(), templates().len());
        for (name, given) in all {
            let text = render(name, "f", &given).unwrap();
            let spec =
                crate::FlowSpec::from_toml(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
            spec.validate(&|i| i == "a" || i == "archive")
                .unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = render(
            "purge-history",
            "f",
            &params(&[
                ("instance", "a"),
                ("table", "x; drop"),
                ("date_column", "d"),
            ]),
        )
        .unwrap_err();
        assert!(err.message().contains("parameter table"), "{err}");
        let err = render("purge-history", "f", &params(&[("instance", "a")])).unwrap_err();
        assert!(err.message().contains("needs --param table="), "{err}");
        let err = render("purge-history", "f", &params(&[("colour", "red")])).unwrap_err();
        assert!(err.message().contains("no parameter \"colour\""), "{err}");
        assert_eq!(
            render("nope", "f", &BTreeMap::new()).unwrap_err().code(),
            "not_found"
        );
    }
}

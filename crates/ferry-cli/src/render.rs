//! Prints API answers as tables, JSON or CSV.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;

use crate::Output;

pub fn json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn cell(v: &Value) -> String {
    match v {
        // Epoch milliseconds (`*_ms` fields) read better as times.
        Value::Number(n) if n.as_i64().is_some_and(|ms| ms > 1_000_000_000_000) => {
            let ms = n.as_i64().unwrap_or_default();
            chrono::DateTime::from_timestamp_millis(ms)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
                .unwrap_or_else(|| ms.to_string())
        }
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Looks up `a.b` paths in an object.
fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

/// A list of objects, showing the given fields.
pub fn records(out: Output, v: &Value, fields: &[&str]) {
    let items = v.as_array().cloned().unwrap_or_default();
    match out {
        Output::Json => json(v),
        Output::Csv => {
            println!("{}", fields.join(","));
            for item in &items {
                println!(
                    "{}",
                    fields
                        .iter()
                        .map(|f| csv_field(&cell(field(item, f))))
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
        }
        Output::Table => {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            t.set_header(fields.iter().map(|f| f.replace('.', " ")));
            for item in &items {
                t.add_row(fields.iter().map(|f| cell(field(item, f))));
            }
            println!("{t}");
        }
    }
}

/// One object as key/value lines.
pub fn object(out: Output, v: &Value) {
    match out {
        Output::Json | Output::Csv => json(v),
        Output::Table => {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            flatten("", v, &mut t);
            println!("{t}");
        }
    }
}

fn flatten(prefix: &str, v: &Value, t: &mut Table) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, t);
            }
        }
        Value::Array(items) if prefix == "columns" => {
            let names: Vec<String> = items
                .iter()
                .map(|c| format!("{} {}", cell(&c["name"]), cell(&c["type"])))
                .collect();
            t.add_row(vec![prefix.to_string(), names.join(", ")]);
        }
        other => {
            t.add_row(vec![prefix.to_string(), cell(other)]);
        }
    }
}

/// Rows (objects keyed by column) under their columns.
pub fn rows_table(columns: &Value, rows: &Value) {
    let names: Vec<String> = columns
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(&names);
    for row in rows.as_array().into_iter().flatten() {
        t.add_row(names.iter().map(|n| cell(&row[n])));
    }
    println!("{t}");
}

/// Each statement's result of a console answer.
pub fn script(v: &Value) {
    let results = v["results"].as_array().cloned().unwrap_or_default();
    let many = results.len() > 1;
    for r in &results {
        if many {
            println!("> {}", r["statement"].as_str().unwrap_or_default());
        }
        let ms = r["duration_ms"].as_f64().unwrap_or_default();
        if let Some(e) = r["error"].as_object() {
            eprintln!(
                "error [{}]: {}",
                e.get("code").and_then(Value::as_str).unwrap_or_default(),
                e.get("message").and_then(Value::as_str).unwrap_or_default()
            );
        } else if !r["columns"].is_null() {
            rows_table(&r["columns"], &r["rows"]);
            let n = r["row_count"].as_u64().unwrap_or(0);
            let more = if r["truncated"].as_bool() == Some(true) {
                " (truncated: more rows exist; raise --limit, use --output csv, or `ferry query submit`)"
            } else {
                ""
            };
            println!(
                "({n} row{}, {ms:.1} ms){more}",
                if n == 1 { "" } else { "s" }
            );
        } else {
            let n = r["affected"].as_u64().unwrap_or(0);
            println!(
                "{n} row{} affected ({ms:.1} ms)",
                if n == 1 { "" } else { "s" }
            );
        }
    }
    if v["in_transaction"].as_bool() == Some(true) && v["session"].is_string() {
        println!(
            "(transaction open in SQL window {})",
            v["session"].as_str().unwrap_or_default()
        );
    }
}

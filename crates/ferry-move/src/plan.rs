//! What a transfer is (its spec, as users write it) and the pure planning around it: the source
//! statement, the target's DDL, and the column-by-column check of an existing target.

use arrow::datatypes::{DataType, SchemaRef};
use ferry_connect::TableDetail;
use ferry_connect::write::{qualified_table, quote_ident};
use ferry_core::{Engine, Error, Result};
use serde::{Deserialize, Serialize};

use crate::mapping::{Conversion, column_type, conversion};

/// A table on an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub instance: String,
    /// The database to connect to (the instance URL's own when omitted).
    #[serde(default)]
    pub database: Option<String>,
    /// The schema (PostgreSQL) or database (MySQL) that holds the table.
    #[serde(default)]
    pub schema: Option<String>,
    pub table: String,
}

impl Endpoint {
    pub fn display(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}:{s}.{}", self.instance, self.table),
            None => format!("{}:{}", self.instance, self.table),
        }
    }
}

/// Where rows come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSpec {
    /// All columns of a table.
    Table(Endpoint),
    /// The result of a query.
    Query {
        instance: String,
        #[serde(default)]
        database: Option<String>,
        sql: String,
    },
    /// Parquet, CSV or JSON Lines files under a path or object-storage prefix.
    Files {
        url: String,
        #[serde(default)]
        format: crate::files::FileFormat,
        /// Object-store settings a request may give (the region); endpoint and credentials come
        /// from the server's `AWS_*` environment.
        #[serde(default)]
        options: std::collections::BTreeMap<String, String>,
        /// Hive-style partition keys whose `key=value` path segments become text columns.
        #[serde(default)]
        partitions: Vec<String>,
    },
}

impl SourceSpec {
    /// The instance read from; files have none.
    pub fn instance(&self) -> Option<&str> {
        match self {
            SourceSpec::Table(e) => Some(&e.instance),
            SourceSpec::Query { instance, .. } => Some(instance),
            SourceSpec::Files { .. } => None,
        }
    }

    pub fn database(&self) -> Option<&str> {
        match self {
            SourceSpec::Table(e) => e.database.as_deref(),
            SourceSpec::Query { database, .. } => database.as_deref(),
            SourceSpec::Files { .. } => None,
        }
    }

    pub fn display(&self) -> String {
        match self {
            SourceSpec::Table(e) => e.display(),
            SourceSpec::Query { instance, .. } => format!("{instance}:(query)"),
            SourceSpec::Files { url, .. } => url.clone(),
        }
    }
}

/// How rows land in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Empty the target, then load (in one transaction).
    #[default]
    Replace,
    /// Add the rows.
    Append,
    /// Move only rows whose `by` column is above the last run's watermark.
    Incremental,
    /// Insert new rows and update existing ones by primary key.
    Upsert,
}

/// A transfer as a user describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferSpec {
    pub source: SourceSpec,
    pub target: Endpoint,
    #[serde(default)]
    pub mode: Mode,
    /// The column incremental mode follows (ever-growing: an id or a timestamp).
    #[serde(default)]
    pub by: Option<String>,
    /// Create the target table when it does not exist.
    #[serde(default)]
    pub create: bool,
    /// Accept conversions that change values (narrowing, rounding, dropping a time zone).
    #[serde(default)]
    pub allow_lossy: bool,
    /// A condition on source rows, in the source's SQL dialect.
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
    /// Compare row counts and checksums of both sides afterwards (default true).
    #[serde(default = "yes")]
    pub verify: bool,
    /// Read a table source over this many connections, split by ranges of its integer primary
    /// key (within the instance's connection cap).
    #[serde(default)]
    pub parallel: Option<u32>,
    /// Commit in chunks of the integer primary key, each with a checkpoint in the target, so a
    /// copy stopped at any point continues where it was when run again (replace and append).
    #[serde(default)]
    pub resumable: bool,
    /// Rows per chunk of a resumable copy (default 100,000).
    #[serde(default)]
    pub chunk_rows: Option<u64>,
}

fn yes() -> bool {
    true
}

impl TransferSpec {
    /// Checks the spec without touching any database.
    pub fn validate(&self) -> Result<()> {
        match (self.mode, &self.by) {
            (Mode::Incremental, None) => {
                return Err(Error::InvalidInput(
                    "incremental mode needs the column to follow: give it with --by COLUMN".into(),
                ));
            }
            (Mode::Incremental, Some(_)) => {}
            (_, Some(_)) => {
                return Err(Error::InvalidInput(
                    "--by only goes with incremental mode".into(),
                ));
            }
            _ => {}
        }
        if let SourceSpec::Query { sql, .. } = &self.source
            && sql.trim().is_empty()
        {
            return Err(Error::InvalidInput("the source query is empty".into()));
        }
        if let SourceSpec::Files { .. } = &self.source
            && (self.mode == Mode::Incremental || self.filter.is_some())
        {
            return Err(Error::InvalidInput(
                "files are imported whole: incremental mode and --where need a database source"
                    .into(),
            ));
        }
        if let SourceSpec::Table(e) = &self.source
            && e == &self.target
        {
            return Err(Error::InvalidInput(format!(
                "source and target are the same table {}",
                e.display()
            )));
        }
        if let Some(p) = self.parallel
            && !(1..=64).contains(&p)
        {
            return Err(Error::InvalidInput(format!(
                "--parallel takes 1 to 64 connections, not {p}"
            )));
        }
        if self.resumable && !matches!(self.mode, Mode::Replace | Mode::Append) {
            return Err(Error::InvalidInput(
                "--resumable goes with replace or append mode".into(),
            ));
        }
        if self.resumable && !matches!(self.source, SourceSpec::Table(_)) {
            return Err(Error::InvalidInput(
                "--resumable needs a source table (chunks follow its primary key)".into(),
            ));
        }
        if self.target.table.trim().is_empty() {
            return Err(Error::InvalidInput("the target table name is empty".into()));
        }
        Ok(())
    }

    /// Names the watermark of an incremental transfer: the same source, target and column share it.
    pub fn watermark_key(&self) -> String {
        format!(
            "{} -> {} by {}",
            self.source.display(),
            self.target.display(),
            self.by.as_deref().unwrap_or_default()
        )
    }
}

/// A watermark value as a literal of the source dialect. Values are checked against a safe
/// pattern rather than escaped, since they come from the source itself.
pub fn watermark_literal(value: &str, ty: &DataType) -> Result<String> {
    if ty.is_numeric() {
        if value.parse::<f64>().is_ok() {
            return Ok(value.to_string());
        }
    } else if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " :.-+T_".contains(c))
    {
        return Ok(format!("'{value}'"));
    }
    Err(Error::InvalidInput(format!(
        "watermark value {value:?} cannot be used in a query safely: follow a numeric, date or timestamp column"
    )))
}

/// The source statement: the table or query, filtered by `where` and the incremental range.
pub fn source_sql(
    engine: Engine,
    spec: &TransferSpec,
    range: Option<(Option<&str>, &str)>,
) -> String {
    let by = spec.by.as_deref().map(|b| quote_ident(engine, b));
    let mut conditions = Vec::new();
    if let Some(f) = &spec.filter {
        conditions.push(format!("({f})"));
    }
    if let (Some((low, high)), Some(by)) = (range, &by) {
        if let Some(low) = low {
            conditions.push(format!("{by} > {low}"));
        }
        conditions.push(format!("{by} <= {high}"));
    }
    select_sql(engine, &spec.source, &conditions, None)
}

/// `SELECT * FROM` a table or query, with conditions and an order; a query without either runs as it is.
pub fn select_sql(
    engine: Engine,
    source: &SourceSpec,
    conditions: &[String],
    order_by: Option<&str>,
) -> String {
    let from = match source {
        SourceSpec::Table(e) => qualified_table(engine, e.schema.as_deref(), &e.table),
        SourceSpec::Query { sql, .. } if conditions.is_empty() && order_by.is_none() => {
            return sql.trim().trim_end_matches(';').to_string();
        }
        SourceSpec::Query { sql, .. } => {
            format!("({}) AS ferry_source", sql.trim().trim_end_matches(';'))
        }
        // Files are not read with SQL; callers handle them before planning a statement.
        SourceSpec::Files { url, .. } => return format!("-- files at {url}"),
    };
    let mut sql = format!("SELECT * FROM {from}");
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    if let Some(col) = order_by {
        sql.push_str(&format!(" ORDER BY {}", quote_ident(engine, col)));
    }
    sql
}

/// `CREATE TABLE` for the source schema in the target's dialect, with the primary key if known.
pub fn create_table_sql(
    engine: Engine,
    target: &Endpoint,
    schema: &SchemaRef,
    primary_key: &[String],
) -> Result<String> {
    let mut columns = Vec::new();
    for f in schema.fields() {
        let key = primary_key.contains(f.name());
        let ty = column_type(engine, f.data_type(), key)
            .map_err(|e| e.context(format!("column \"{}\"", f.name())))?;
        let not_null = if key { " NOT NULL" } else { "" };
        columns.push(format!("{} {ty}{not_null}", quote_ident(engine, f.name())));
    }
    let pk = primary_key
        .iter()
        .filter(|k| schema.field_with_name(k).is_ok())
        .map(|k| quote_ident(engine, k))
        .collect::<Vec<_>>();
    if !pk.is_empty() && pk.len() == primary_key.len() {
        columns.push(format!("PRIMARY KEY ({})", pk.join(", ")));
    }
    Ok(format!(
        "CREATE TABLE {} ({})",
        qualified_table(engine, target.schema.as_deref(), &target.table),
        columns.join(", ")
    ))
}

/// Matches source columns to an existing target's and checks each conversion. Returns the
/// target's column names in source order.
pub fn check_target(
    source: &SchemaRef,
    target: &TableDetail,
    allow_lossy: bool,
) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for f in source.fields() {
        let column = target
            .columns
            .iter()
            .find(|c| c.name == *f.name())
            .or_else(|| target.columns.iter().find(|c| c.name.eq_ignore_ascii_case(f.name())))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "target table \"{}\" has no column \"{}\": add it, or select only the columns it has",
                    target.name,
                    f.name()
                ))
            })?;
        let to: DataType = column.arrow_type.parse().unwrap_or(DataType::Utf8);
        match conversion(f.data_type(), &to) {
            Conversion::Exact => {}
            Conversion::Lossy(reason) if !allow_lossy => {
                return Err(Error::InvalidInput(format!(
                    "column \"{}\": {} into {} ({}) is lossy: {reason}; pass --allow-lossy to accept it",
                    f.name(),
                    f.data_type(),
                    column.data_type,
                    to
                )));
            }
            Conversion::Lossy(_) => {}
            Conversion::Incompatible => {
                return Err(Error::InvalidInput(format!(
                    "column \"{}\": {} values cannot go into {} ({})",
                    f.name(),
                    f.data_type(),
                    column.data_type,
                    to
                )));
            }
        }
        names.push(column.name.clone());
    }
    Ok(names)
}

/// Checks a lossy conversion into a table Ferry creates (the engine's type for an Arrow type may
/// not hold every value, as a zoned timestamp on MySQL).
pub fn check_created(engine: Engine, source: &SchemaRef, allow_lossy: bool) -> Result<()> {
    for f in source.fields() {
        let stored = crate::mapping::stored_type(engine, f.data_type());
        if let Conversion::Lossy(reason) = conversion(f.data_type(), &stored)
            && !allow_lossy
        {
            return Err(Error::InvalidInput(format!(
                "column \"{}\": {} has no type that keeps {} exactly ({reason}); pass --allow-lossy to accept it",
                f.name(),
                engine_name(engine),
                f.data_type()
            )));
        }
    }
    Ok(())
}

fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "PostgreSQL",
        Engine::Mysql => "MySQL",
        Engine::Sqlite => "SQLite",
        Engine::Redis => "Redis",
        Engine::Archive => "the archive",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn spec(mode: Mode, by: Option<&str>, filter: Option<&str>) -> TransferSpec {
        TransferSpec {
            source: SourceSpec::Table(Endpoint {
                instance: "a".into(),
                database: None,
                schema: Some("public".into()),
                table: "orders".into(),
            }),
            target: Endpoint {
                instance: "b".into(),
                database: None,
                schema: None,
                table: "orders".into(),
            },
            mode,
            by: by.map(str::to_string),
            create: false,
            allow_lossy: false,
            filter: filter.map(str::to_string),
            verify: true,
            parallel: None,
            resumable: false,
            chunk_rows: None,
        }
    }

    #[test]
    fn source_statements() {
        let s = spec(Mode::Replace, None, None);
        assert_eq!(
            source_sql(Engine::Postgres, &s, None),
            "SELECT * FROM \"public\".\"orders\""
        );
        let s = spec(Mode::Incremental, Some("id"), Some("region = 'eu'"));
        assert_eq!(
            source_sql(Engine::Mysql, &s, Some((Some("10"), "20"))),
            "SELECT * FROM `public`.`orders` WHERE (region = 'eu') AND `id` > 10 AND `id` <= 20"
        );
        assert_eq!(
            source_sql(Engine::Mysql, &s, Some((None, "20"))),
            "SELECT * FROM `public`.`orders` WHERE (region = 'eu') AND `id` <= 20"
        );
        let q = TransferSpec {
            source: SourceSpec::Query {
                instance: "a".into(),
                database: None,
                sql: "select 1 as x;".into(),
            },
            ..spec(Mode::Append, None, None)
        };
        assert_eq!(source_sql(Engine::Postgres, &q, None), "select 1 as x");
        let q = TransferSpec {
            filter: Some("x > 0".into()),
            ..q
        };
        assert_eq!(
            source_sql(Engine::Postgres, &q, None),
            "SELECT * FROM (select 1 as x) AS ferry_source WHERE (x > 0)"
        );
    }

    #[test]
    fn specs_are_validated() {
        assert!(
            spec(Mode::Incremental, None, None)
                .validate()
                .unwrap_err()
                .message()
                .contains("--by COLUMN")
        );
        assert!(spec(Mode::Append, Some("id"), None).validate().is_err());
        assert!(spec(Mode::Incremental, Some("id"), None).validate().is_ok());
        let mut same = spec(Mode::Replace, None, None);
        same.target = Endpoint {
            instance: "a".into(),
            database: None,
            schema: Some("public".into()),
            table: "orders".into(),
        };
        assert!(
            same.validate()
                .unwrap_err()
                .message()
                .contains("same table")
        );
        let resumable_upsert = TransferSpec {
            resumable: true,
            ..spec(Mode::Upsert, None, None)
        };
        assert!(
            resumable_upsert
                .validate()
                .unwrap_err()
                .message()
                .contains("replace or append")
        );
        assert!(
            TransferSpec {
                resumable: true,
                ..spec(Mode::Replace, None, None)
            }
            .validate()
            .is_ok()
        );
        let json = serde_json::to_string(&spec(Mode::Upsert, None, None)).unwrap();
        assert_eq!(
            serde_json::from_str::<TransferSpec>(&json).unwrap(),
            spec(Mode::Upsert, None, None)
        );
        assert!(
            serde_json::from_str::<TransferSpec>(&json.replace("\"verify\"", "\"verfy\"")).is_err()
        );
    }

    #[test]
    fn created_tables_and_watermarks() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
        ]));
        let t = Endpoint {
            instance: "b".into(),
            database: None,
            schema: None,
            table: "t".into(),
        };
        assert_eq!(
            create_table_sql(Engine::Mysql, &t, &schema, &["name".into()]).unwrap(),
            "CREATE TABLE `t` (`id` bigint, `name` varchar(255) NOT NULL, `at` datetime(6), PRIMARY KEY (`name`))"
        );
        assert_eq!(
            create_table_sql(Engine::Postgres, &t, &schema, &[]).unwrap(),
            "CREATE TABLE \"t\" (\"id\" bigint, \"name\" text, \"at\" timestamptz)"
        );
        assert!(
            check_created(Engine::Mysql, &schema, false)
                .unwrap_err()
                .message()
                .contains("column \"at\"")
        );
        assert!(check_created(Engine::Mysql, &schema, true).is_ok());
        assert!(check_created(Engine::Postgres, &schema, false).is_ok());
        assert_eq!(watermark_literal("42", &DataType::Int64).unwrap(), "42");
        assert_eq!(
            watermark_literal("2026-11-22 10:00:00", &DataType::Utf8).unwrap(),
            "'2026-11-22 10:00:00'"
        );
        assert!(watermark_literal("x'; drop table t; --", &DataType::Utf8).is_err());
    }
}

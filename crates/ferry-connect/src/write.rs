//! Bulk writes of record batches into an existing table: PostgreSQL through `COPY … FROM STDIN`,
//! SQLite through multi-row `INSERT`s whose values are rendered as literals (quotes doubled);
//! MySQL binds values to prepared statements (in its module). Upserts use each
//! engine's own form (`ON CONFLICT … DO UPDATE`, `ON DUPLICATE KEY UPDATE`).

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use ferry_core::{Engine, Error, Result};

/// Where a bulk write goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteTarget {
    pub schema: Option<String>,
    pub table: String,
    /// Target columns, in the order of the batches' columns.
    pub columns: Vec<String>,
    /// Update rows whose key already exists instead of failing on them.
    pub upsert_keys: Option<Vec<String>>,
}

/// Quotes an identifier the way the engine does.
pub fn quote_ident(engine: Engine, name: &str) -> String {
    match engine {
        Engine::Mysql => format!("`{}`", name.replace('`', "``")),
        _ => format!("\"{}\"", name.replace('"', "\"\"")),
    }
}

/// `schema.table`, quoted.
pub fn qualified_table(engine: Engine, schema: Option<&str>, table: &str) -> String {
    match schema {
        Some(s) => format!("{}.{}", quote_ident(engine, s), quote_ident(engine, table)),
        None => quote_ident(engine, table),
    }
}

impl WriteTarget {
    pub fn qualified(&self, engine: Engine) -> String {
        qualified_table(engine, self.schema.as_deref(), &self.table)
    }

    pub fn column_list(&self, engine: Engine) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(engine, c))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How values are written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueStyle {
    /// PostgreSQL `COPY` text format: tab-separated, `\N` for NULL, backslash escapes.
    PgCopy,
    /// A SQLite literal.
    Sqlite,
}

/// How values are formatted as text; `zoned` keeps a timestamp's offset, otherwise instants are
/// written as UTC wall-clock time (MySQL and SQLite have no zoned type; the type map says so).
pub(crate) fn format_options(zoned: bool) -> FormatOptions<'static> {
    let tz = if zoned {
        "%Y-%m-%d %H:%M:%S%.f%:z"
    } else {
        "%Y-%m-%d %H:%M:%S%.f"
    };
    FormatOptions::default()
        .with_display_error(false)
        .with_date_format(Some("%Y-%m-%d"))
        .with_datetime_format(Some("%Y-%m-%d %H:%M:%S%.f"))
        .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.f"))
        .with_timestamp_tz_format(Some(tz))
        .with_time_format(Some("%H:%M:%S%.f"))
}

/// Renders the rows of a batch, value by value, in one style.
pub struct RowRenderer<'a> {
    batch: &'a RecordBatch,
    formatters: Vec<ArrayFormatter<'a>>,
    style: ValueStyle,
    names: Vec<String>,
}

static PG_OPTIONS: std::sync::LazyLock<FormatOptions<'static>> =
    std::sync::LazyLock::new(|| format_options(true));
static SQLITE_OPTIONS: std::sync::LazyLock<FormatOptions<'static>> =
    std::sync::LazyLock::new(|| format_options(false));

impl<'a> RowRenderer<'a> {
    pub fn new(batch: &'a RecordBatch, style: ValueStyle, names: &[String]) -> Result<Self> {
        let options: &'static FormatOptions<'static> = match style {
            ValueStyle::PgCopy => &PG_OPTIONS,
            ValueStyle::Sqlite => &SQLITE_OPTIONS,
        };
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), options))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Unsupported(format!("cannot write this column type: {e}")))?;
        Ok(RowRenderer {
            batch,
            formatters,
            style,
            names: names.to_vec(),
        })
    }

    /// Appends value `(row, col)` to `out`.
    pub fn value(&self, row: usize, col: usize, out: &mut String) -> Result<()> {
        let array = self.batch.column(col);
        if array.is_null(row) {
            out.push_str(if self.style == ValueStyle::PgCopy {
                "\\N"
            } else {
                "NULL"
            });
            return Ok(());
        }
        use std::fmt::Write;
        match array.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let text = self.formatters[col].value(row).to_string();
                self.text(&text, out);
            }
            DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_) => {
                let bytes = binary_value(array.as_ref(), row);
                match self.style {
                    ValueStyle::PgCopy => out.push_str("\\\\x"),
                    ValueStyle::Sqlite => out.push_str("X'"),
                }
                for b in bytes {
                    let _ = write!(out, "{b:02x}");
                }
                if self.style != ValueStyle::PgCopy {
                    out.push('\'');
                }
            }
            DataType::Boolean => {
                let v = array.as_boolean().value(row);
                out.push_str(match (self.style, v) {
                    (ValueStyle::PgCopy, true) => "t",
                    (ValueStyle::PgCopy, false) => "f",
                    (_, true) => "1",
                    (_, false) => "0",
                });
            }
            DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                let text = self.formatters[col].value(row).to_string();
                match (self.style, text.as_str()) {
                    // SQLite reads a literal beyond the double range as an infinity, and turns
                    // NaN into NULL, which would lose the value.
                    (ValueStyle::Sqlite, "inf") => out.push_str("9e999"),
                    (ValueStyle::Sqlite, "-inf") => out.push_str("-9e999"),
                    (ValueStyle::Sqlite, "NaN") => {
                        return Err(Error::InvalidInput(format!(
                            "column \"{}\" holds NaN, which SQLite cannot store; filter or convert it in the source query",
                            self.names[col]
                        )));
                    }
                    _ => out.push_str(&text),
                }
            }
            // SQLite would read a long decimal literal as a double: keep it exact as text.
            DataType::Decimal128(..) | DataType::Decimal256(..) | DataType::UInt64
                if self.style == ValueStyle::Sqlite =>
            {
                let text = self.formatters[col].value(row).to_string();
                self.text(&text, out);
            }
            t if t.is_numeric() => {
                let _ = write!(out, "{}", self.formatters[col].value(row));
            }
            _ => {
                let text = self.formatters[col].value(row).to_string();
                self.text(&text, out);
            }
        }
        Ok(())
    }

    fn text(&self, text: &str, out: &mut String) {
        match self.style {
            ValueStyle::PgCopy => {
                for c in text.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\t' => out.push_str("\\t"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        c => out.push(c),
                    }
                }
            }
            ValueStyle::Sqlite => {
                out.push('\'');
                out.push_str(&text.replace('\'', "''"));
                out.push('\'');
            }
        }
    }
}

fn binary_value(array: &dyn Array, row: usize) -> &[u8] {
    match array.data_type() {
        DataType::Binary => array.as_binary::<i32>().value(row),
        DataType::LargeBinary => array.as_binary::<i64>().value(row),
        DataType::BinaryView => array.as_binary_view().value(row),
        DataType::FixedSizeBinary(_) => array.as_fixed_size_binary().value(row),
        _ => &[],
    }
}

/// Renders batches as `COPY` text rows.
pub fn copy_text(batch: &RecordBatch, names: &[String]) -> Result<String> {
    let r = RowRenderer::new(batch, ValueStyle::PgCopy, names)?;
    let mut out = String::with_capacity(batch.num_rows() * 64);
    for row in 0..batch.num_rows() {
        for col in 0..batch.num_columns() {
            if col > 0 {
                out.push('\t');
            }
            r.value(row, col, &mut out)?;
        }
        out.push('\n');
    }
    Ok(out)
}

/// Multi-row `INSERT` statements for a batch, each at most about `max_bytes` long.
pub fn insert_statements(
    engine: Engine,
    target: &WriteTarget,
    batch: &RecordBatch,
    max_bytes: usize,
) -> Result<Vec<String>> {
    let style = match engine {
        Engine::Sqlite => ValueStyle::Sqlite,
        other => {
            return Err(Error::Unsupported(format!(
                "INSERT-based writes are not used for {other}"
            )));
        }
    };
    let r = RowRenderer::new(batch, style, &target.columns)?;
    let head = format!(
        "INSERT INTO {} ({}) VALUES ",
        target.qualified(engine),
        target.column_list(engine)
    );
    let tail = upsert_clause(engine, target);
    let mut statements = Vec::new();
    let mut sql = String::new();
    for row in 0..batch.num_rows() {
        if sql.is_empty() {
            sql.push_str(&head);
        } else {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..batch.num_columns() {
            if col > 0 {
                sql.push_str(", ");
            }
            r.value(row, col, &mut sql)?;
        }
        sql.push(')');
        if sql.len() >= max_bytes {
            sql.push_str(&tail);
            statements.push(std::mem::take(&mut sql));
        }
    }
    if !sql.is_empty() {
        sql.push_str(&tail);
        statements.push(sql);
    }
    Ok(statements)
}

/// The clause that turns an INSERT into an upsert on the target's keys.
pub fn upsert_clause(engine: Engine, target: &WriteTarget) -> String {
    let Some(keys) = &target.upsert_keys else {
        return String::new();
    };
    let others: Vec<&String> = target
        .columns
        .iter()
        .filter(|c| !keys.contains(c))
        .collect();
    let q = |c: &str| quote_ident(engine, c);
    match engine {
        Engine::Mysql => {
            let set: Vec<String> = if others.is_empty() {
                keys.iter().map(|k| format!("{0} = {0}", q(k))).collect()
            } else {
                others
                    .iter()
                    .map(|c| format!("{0} = VALUES({0})", q(c)))
                    .collect()
            };
            format!(" ON DUPLICATE KEY UPDATE {}", set.join(", "))
        }
        _ => {
            let keys = keys.iter().map(|k| q(k)).collect::<Vec<_>>().join(", ");
            if others.is_empty() {
                format!(" ON CONFLICT ({keys}) DO NOTHING")
            } else {
                let set: Vec<String> = others
                    .iter()
                    .map(|c| format!("{0} = excluded.{0}", q(c)))
                    .collect();
                format!(" ON CONFLICT ({keys}) DO UPDATE SET {}", set.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BinaryArray, BooleanArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new("raw", DataType::Binary, true),
            Field::new("x", DataType::Float64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None])),
                Arc::new(StringArray::from(vec![Some("a'b\\\tc"), Some("")])),
                Arc::new(BooleanArray::from(vec![Some(true), None])),
                Arc::new(BinaryArray::from(vec![Some(&[0u8, 255][..]), None])),
                Arc::new(Float64Array::from(vec![Some(1.5), Some(f64::NAN)])),
            ],
        )
        .unwrap()
    }

    fn names() -> Vec<String> {
        ["id", "name", "ok", "raw", "x"].map(String::from).to_vec()
    }

    #[test]
    fn copy_text_escapes_and_marks_nulls() {
        assert_eq!(
            copy_text(&batch(), &names()).unwrap(),
            "1\ta'b\\\\\\tc\tt\t\\\\x00ff\t1.5\n\\N\t\t\\N\t\\N\tNaN\n"
        );
    }

    fn target(upsert: bool) -> WriteTarget {
        WriteTarget {
            schema: None,
            table: "t".into(),
            columns: names(),
            upsert_keys: upsert.then(|| vec!["id".to_string()]),
        }
    }

    #[test]
    fn sqlite_literals_are_safe() {
        let one = batch().slice(0, 1);
        let sqlite = insert_statements(Engine::Sqlite, &target(false), &one, 1 << 20).unwrap();
        assert_eq!(
            sqlite,
            [
                "INSERT INTO \"t\" (\"id\", \"name\", \"ok\", \"raw\", \"x\") VALUES (1, 'a''b\\\tc', 1, X'00ff', 1.5)"
            ]
        );
        let upsert = insert_statements(Engine::Sqlite, &target(true), &one, 1 << 20).unwrap();
        assert!(upsert[0].ends_with("ON CONFLICT (\"id\") DO UPDATE SET \"name\" = excluded.\"name\", \"ok\" = excluded.\"ok\", \"raw\" = excluded.\"raw\", \"x\" = excluded.\"x\""), "{}", upsert[0]);
        let err = insert_statements(Engine::Sqlite, &target(false), &batch(), 1 << 20).unwrap_err();
        assert!(err.message().contains("column \"x\" holds NaN"), "{err}");
        assert!(insert_statements(Engine::Mysql, &target(false), &one, 1 << 20).is_err());
        assert_eq!(
            upsert_clause(Engine::Mysql, &target(true)),
            " ON DUPLICATE KEY UPDATE `name` = VALUES(`name`), `ok` = VALUES(`ok`), `raw` = VALUES(`raw`), `x` = VALUES(`x`)"
        );
    }

    #[test]
    fn sqlite_decimals_stay_exact_as_text() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "big",
            DataType::Decimal128(38, 10),
            true,
        )]));
        let values =
            arrow::array::Decimal128Array::from(vec![123_456_789_012_345_678_900_123_456_789i128])
                .with_precision_and_scale(38, 10)
                .unwrap();
        let b = RecordBatch::try_new(schema, vec![Arc::new(values)]).unwrap();
        let t = WriteTarget {
            schema: None,
            table: "t".into(),
            columns: vec!["big".into()],
            upsert_keys: None,
        };
        let sql = insert_statements(Engine::Sqlite, &t, &b, 1 << 20).unwrap();
        assert_eq!(
            sql,
            ["INSERT INTO \"t\" (\"big\") VALUES ('12345678901234567890.0123456789')"]
        );
    }

    #[test]
    fn statements_split_by_size() {
        let two = batch().slice(0, 1);
        let both = arrow::compute::concat_batches(&two.schema(), &[two.clone(), two]).unwrap();
        assert_eq!(
            insert_statements(Engine::Sqlite, &target(false), &both, 10)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            insert_statements(Engine::Sqlite, &target(false), &both, 1 << 20)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            upsert_clause(Engine::Postgres, &target(true))
                .split(", ")
                .count(),
            4
        );
    }
}

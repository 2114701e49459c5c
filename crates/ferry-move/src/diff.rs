//! Structure comparison: two tables (on the same or different engines) give a structured diff
//! (columns, types through the type map, nullability, defaults, primary key, indexes) and the DDL
//! that makes the target like the source, in the target's dialect. Pure: callers fetch the
//! catalogs.

use ferry_connect::write::{qualified_table, quote_ident};
use ferry_connect::{ColumnInfo, IndexInfo, TableDetail};
use ferry_core::{Engine, Result};
use serde::Serialize;

use crate::mapping::column_type;

/// One difference between the tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    MissingColumn {
        column: String,
        source_type: String,
    },
    ExtraColumn {
        column: String,
        target_type: String,
    },
    ColumnType {
        column: String,
        source_type: String,
        target_type: String,
    },
    Nullability {
        column: String,
        source_nullable: bool,
        target_nullable: bool,
    },
    Default {
        column: String,
        source_default: Option<String>,
        target_default: Option<String>,
    },
    PrimaryKey {
        source: Vec<String>,
        target: Vec<String>,
    },
    MissingIndex {
        name: String,
        columns: Vec<String>,
        unique: bool,
    },
    ExtraIndex {
        name: String,
        columns: Vec<String>,
        unique: bool,
    },
}

/// A table's side of a comparison.
pub struct Side<'a> {
    pub engine: Engine,
    pub table: &'a TableDetail,
}

/// The differences, and DDL statements (comments where an engine cannot express a change).
#[derive(Debug, Clone, Serialize)]
pub struct TableDiff {
    pub differences: Vec<Difference>,
    pub ddl: Vec<String>,
}

fn declared(c: &ColumnInfo) -> String {
    c.data_type.trim().to_ascii_lowercase()
}

/// A column's Arrow type, refined by its declaration (MySQL decimals are read as text).
fn arrow_type(c: &ColumnInfo) -> arrow::datatypes::DataType {
    let t = c
        .arrow_type
        .parse()
        .unwrap_or(arrow::datatypes::DataType::Utf8);
    crate::mapping::refine_declared(&c.data_type, &t).unwrap_or(t)
}

/// Whether two columns have the same type: by declaration on one engine, by Arrow type across.
fn same_type(source: &Side, s: &ColumnInfo, target: &Side, t: &ColumnInfo) -> bool {
    if source.engine == target.engine {
        declared(s) == declared(t)
    } else {
        arrow_type(s) == arrow_type(t)
    }
}

/// The target-dialect type for a source column.
fn target_type(source: &Side, s: &ColumnInfo, target: &Side, key: bool) -> Result<String> {
    if source.engine == target.engine {
        return Ok(s.data_type.clone());
    }
    column_type(target.engine, &arrow_type(s), key)
}

fn is_primary_index(engine: Engine, index: &IndexInfo, primary_key: &[String]) -> bool {
    match engine {
        Engine::Mysql => index.name == "PRIMARY",
        Engine::Sqlite => {
            index.name.starts_with("sqlite_autoindex_") && index.columns == primary_key
        }
        _ => index.unique && index.columns == primary_key,
    }
}

/// Compares `target` against `source` and plans the DDL that makes the target match.
pub fn diff_tables(source: Side, target: Side) -> Result<TableDiff> {
    let mut differences = Vec::new();
    let mut ddl = Vec::new();
    let engine = target.engine;
    let table = qualified_table(engine, target.table.schema.as_deref(), &target.table.name);
    let q = |c: &str| quote_ident(engine, c);
    for s in &source.table.columns {
        let key = source.table.primary_key.contains(&s.name);
        let Some(t) = target.table.columns.iter().find(|t| t.name == s.name) else {
            differences.push(Difference::MissingColumn {
                column: s.name.clone(),
                source_type: s.data_type.clone(),
            });
            let ty = target_type(&source, s, &target, key)?;
            let not_null = if s.nullable { "" } else { " NOT NULL" };
            ddl.push(format!(
                "ALTER TABLE {table} ADD COLUMN {} {ty}{not_null}",
                q(&s.name)
            ));
            continue;
        };
        if !same_type(&source, s, &target, t) {
            differences.push(Difference::ColumnType {
                column: s.name.clone(),
                source_type: s.data_type.clone(),
                target_type: t.data_type.clone(),
            });
            let ty = target_type(&source, s, &target, key)?;
            ddl.push(match engine {
                Engine::Postgres => format!(
                    "ALTER TABLE {table} ALTER COLUMN {0} TYPE {ty} USING {0}::{ty}",
                    q(&s.name)
                ),
                Engine::Mysql => {
                    let not_null = if s.nullable { "" } else { " NOT NULL" };
                    format!(
                        "ALTER TABLE {table} MODIFY COLUMN {} {ty}{not_null}",
                        q(&s.name)
                    )
                }
                _ => format!(
                    "-- {engine} cannot change the type of column {} to {ty}: recreate the table",
                    q(&s.name)
                ),
            });
        }
        if s.nullable != t.nullable {
            differences.push(Difference::Nullability {
                column: s.name.clone(),
                source_nullable: s.nullable,
                target_nullable: t.nullable,
            });
            let action = if s.nullable { "DROP" } else { "SET" };
            ddl.push(match engine {
                Engine::Postgres => format!(
                    "ALTER TABLE {table} ALTER COLUMN {} {action} NOT NULL",
                    q(&s.name)
                ),
                Engine::Mysql => {
                    let not_null = if s.nullable { " NULL" } else { " NOT NULL" };
                    format!(
                        "ALTER TABLE {table} MODIFY COLUMN {} {}{not_null}",
                        q(&s.name),
                        t.data_type
                    )
                }
                _ => format!(
                    "-- {engine} cannot change the nullability of column {}: recreate the table",
                    q(&s.name)
                ),
            });
        }
        // Defaults are expressions in each engine's own dialect: compared only on one engine.
        if source.engine == engine && s.default != t.default {
            differences.push(Difference::Default {
                column: s.name.clone(),
                source_default: s.default.clone(),
                target_default: t.default.clone(),
            });
            ddl.push(match (&s.default, engine) {
                (_, Engine::Sqlite) => format!(
                    "-- SQLite cannot change the default of column {}: recreate the table",
                    q(&s.name)
                ),
                (Some(d), _) => format!(
                    "ALTER TABLE {table} ALTER COLUMN {} SET DEFAULT {d}",
                    q(&s.name)
                ),
                (None, _) => format!(
                    "ALTER TABLE {table} ALTER COLUMN {} DROP DEFAULT",
                    q(&s.name)
                ),
            });
        }
    }
    for t in &target.table.columns {
        if !source.table.columns.iter().any(|s| s.name == t.name) {
            differences.push(Difference::ExtraColumn {
                column: t.name.clone(),
                target_type: t.data_type.clone(),
            });
            ddl.push(format!(
                "ALTER TABLE {table} DROP COLUMN {} -- drops its data",
                q(&t.name)
            ));
        }
    }
    if source.table.primary_key != target.table.primary_key {
        differences.push(Difference::PrimaryKey {
            source: source.table.primary_key.clone(),
            target: target.table.primary_key.clone(),
        });
        let cols = source
            .table
            .primary_key
            .iter()
            .map(|c| q(c))
            .collect::<Vec<_>>()
            .join(", ");
        match engine {
            Engine::Mysql => {
                let mut parts = Vec::new();
                if !target.table.primary_key.is_empty() {
                    parts.push("DROP PRIMARY KEY".to_string());
                }
                if !cols.is_empty() {
                    parts.push(format!("ADD PRIMARY KEY ({cols})"));
                }
                ddl.push(format!("ALTER TABLE {table} {}", parts.join(", ")));
            }
            Engine::Postgres => {
                if let Some(pk) = target
                    .table
                    .indexes
                    .iter()
                    .find(|i| is_primary_index(engine, i, &target.table.primary_key))
                {
                    ddl.push(format!(
                        "ALTER TABLE {table} DROP CONSTRAINT {}",
                        q(&pk.name)
                    ));
                }
                if !cols.is_empty() {
                    ddl.push(format!("ALTER TABLE {table} ADD PRIMARY KEY ({cols})"));
                }
            }
            _ => ddl.push(format!(
                "-- {engine} cannot change a primary key: recreate the table"
            )),
        }
    }
    let secondary = |side: &Side| -> Vec<IndexInfo> {
        side.table
            .indexes
            .iter()
            .filter(|i| !is_primary_index(side.engine, i, &side.table.primary_key))
            .cloned()
            .collect()
    };
    let (src_idx, dst_idx) = (secondary(&source), secondary(&target));
    // Indexes match by columns and uniqueness; their names differ across engines.
    for s in &src_idx {
        if !dst_idx
            .iter()
            .any(|t| t.columns == s.columns && t.unique == s.unique)
        {
            differences.push(Difference::MissingIndex {
                name: s.name.clone(),
                columns: s.columns.clone(),
                unique: s.unique,
            });
            let unique = if s.unique { "UNIQUE " } else { "" };
            let cols = s
                .columns
                .iter()
                .map(|c| q(c))
                .collect::<Vec<_>>()
                .join(", ");
            ddl.push(format!(
                "CREATE {unique}INDEX {} ON {table} ({cols})",
                q(&s.name)
            ));
        }
    }
    for t in &dst_idx {
        if !src_idx
            .iter()
            .any(|s| s.columns == t.columns && s.unique == t.unique)
        {
            differences.push(Difference::ExtraIndex {
                name: t.name.clone(),
                columns: t.columns.clone(),
                unique: t.unique,
            });
            ddl.push(match engine {
                Engine::Mysql => format!("DROP INDEX {} ON {table}", q(&t.name)),
                _ => format!(
                    "DROP INDEX {}",
                    qualified_table(engine, target.table.schema.as_deref(), &t.name)
                ),
            });
        }
    }
    Ok(TableDiff { differences, ddl })
}

/// `CREATE TABLE` for a target that lacks the source's table: declared types on one engine,
/// mapped through Arrow across engines.
pub fn create_like(
    source: Side,
    target_engine: Engine,
    schema: Option<&str>,
    name: &str,
) -> Result<String> {
    let target_side = Side {
        engine: target_engine,
        table: source.table,
    };
    let pk = &source.table.primary_key;
    let mut columns = Vec::new();
    for c in &source.table.columns {
        let ty = target_type(&source, c, &target_side, pk.contains(&c.name))?;
        let not_null = if c.nullable { "" } else { " NOT NULL" };
        columns.push(format!(
            "{} {ty}{not_null}",
            quote_ident(target_engine, &c.name)
        ));
    }
    if !pk.is_empty() {
        columns.push(format!(
            "PRIMARY KEY ({})",
            pk.iter()
                .map(|c| quote_ident(target_engine, c))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(format!(
        "CREATE TABLE {} ({})",
        qualified_table(target_engine, schema, name),
        columns.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, arrow: &str, nullable: bool, default: Option<&str>) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            data_type: ty.into(),
            arrow_type: arrow.into(),
            nullable,
            default: default.map(str::to_string),
        }
    }

    fn table(
        name: &str,
        columns: Vec<ColumnInfo>,
        pk: &[&str],
        indexes: Vec<IndexInfo>,
    ) -> TableDetail {
        TableDetail {
            schema: None,
            name: name.into(),
            columns,
            primary_key: pk.iter().map(|s| s.to_string()).collect(),
            indexes,
        }
    }

    fn idx(name: &str, cols: &[&str], unique: bool) -> IndexInfo {
        IndexInfo {
            name: name.into(),
            columns: cols.iter().map(|s| s.to_string()).collect(),
            unique,
        }
    }

    #[test]
    fn postgres_to_postgres_changes() {
        let src = table(
            "t",
            vec![
                col("id", "bigint", "Int64", false, None),
                col("name", "text", "Utf8", false, Some("'x'::text")),
                col("amount", "numeric(12,2)", "Decimal128(12, 2)", true, None),
            ],
            &["id"],
            vec![idx("t_pkey", &["id"], true), idx("t_name", &["name"], true)],
        );
        let dst = table(
            "t",
            vec![
                col("id", "integer", "Int32", false, None),
                col("name", "text", "Utf8", true, None),
                col("old", "text", "Utf8", true, None),
            ],
            &["id"],
            vec![idx("t_pkey", &["id"], true), idx("t_old", &["old"], false)],
        );
        let d = diff_tables(
            Side {
                engine: Engine::Postgres,
                table: &src,
            },
            Side {
                engine: Engine::Postgres,
                table: &dst,
            },
        )
        .unwrap();
        assert_eq!(
            d.ddl,
            [
                "ALTER TABLE \"t\" ALTER COLUMN \"id\" TYPE bigint USING \"id\"::bigint",
                "ALTER TABLE \"t\" ALTER COLUMN \"name\" SET NOT NULL",
                "ALTER TABLE \"t\" ALTER COLUMN \"name\" SET DEFAULT 'x'::text",
                "ALTER TABLE \"t\" ADD COLUMN \"amount\" numeric(12,2)",
                "ALTER TABLE \"t\" DROP COLUMN \"old\" -- drops its data",
                "CREATE UNIQUE INDEX \"t_name\" ON \"t\" (\"name\")",
                "DROP INDEX \"t_old\"",
            ]
        );
        assert_eq!(d.differences.len(), 7);
    }

    #[test]
    fn across_engines_types_compare_through_arrow() {
        let pg = table(
            "orders",
            vec![
                col("id", "bigint", "Int64", false, None),
                col(
                    "at",
                    "timestamp without time zone",
                    "Timestamp(µs)",
                    true,
                    None,
                ),
            ],
            &["id"],
            vec![idx("orders_pkey", &["id"], true)],
        );
        let my = table(
            "orders",
            vec![
                col("id", "bigint(20)", "Int64", false, None),
                col("at", "datetime(6)", "Timestamp(µs)", true, None),
            ],
            &["id"],
            vec![idx("PRIMARY", &["id"], true)],
        );
        let same = diff_tables(
            Side {
                engine: Engine::Postgres,
                table: &pg,
            },
            Side {
                engine: Engine::Mysql,
                table: &my,
            },
        )
        .unwrap();
        assert!(same.differences.is_empty(), "{:?}", same.differences);
        let no_pk = table(
            "orders",
            vec![col("id", "int", "Int32", false, None)],
            &[],
            vec![],
        );
        let d = diff_tables(
            Side {
                engine: Engine::Postgres,
                table: &pg,
            },
            Side {
                engine: Engine::Mysql,
                table: &no_pk,
            },
        )
        .unwrap();
        assert_eq!(
            d.ddl,
            [
                "ALTER TABLE `orders` MODIFY COLUMN `id` bigint NOT NULL",
                "ALTER TABLE `orders` ADD COLUMN `at` datetime(6)",
                "ALTER TABLE `orders` ADD PRIMARY KEY (`id`)",
            ]
        );
    }
}

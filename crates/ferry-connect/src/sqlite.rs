//! SQLite connector on sqlx. Column types come from the declared types of the prepared
//! statement (or, for expressions, from the first row's values); cancellation goes through
//! SQLite's progress handler, which interrupts the running statement.

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arrow::datatypes::{DataType, TimeUnit};
use async_trait::async_trait;
use ferry_core::{ConnectionUrl, Engine, Error, Result};
use futures::StreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteRow};
use sqlx::{
    AssertSqlSafe, Column, ConnectOptions as _, Either, Executor, Row, SqlSafeStr, Statement,
    TypeInfo, ValueRef,
};

use crate::arrow_text::{BinaryText, TextBatchBuilder, unique_schema};
use crate::postgres::{literal, qualified};
use crate::write::WriteTarget;
use crate::{
    BATCH_ROWS, Canceller, ColumnInfo, ConnectOptions, Connection, Connector, ServerInfo,
    StatementOutput, TableDetail, TableInfo, query_strings, script,
};

pub fn connector(url: &ConnectionUrl, options: &ConnectOptions) -> Result<Arc<dyn Connector>> {
    let base = SqliteConnectOptions::from_str(url.expose())
        .map_err(|e| Error::InvalidInput(format!("malformed SQLite URL {}: {e}", url.redacted())))?
        .busy_timeout(options.connect_timeout);
    Ok(Arc::new(SqliteConnector {
        url: url.clone(),
        base,
    }))
}

struct SqliteConnector {
    url: ConnectionUrl,
    base: SqliteConnectOptions,
}

#[async_trait]
impl Connector for SqliteConnector {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }

    async fn connect(&self, database: Option<&str>) -> Result<Box<dyn Connection>> {
        if let Some(db) = database.filter(|d| *d != "main") {
            return Err(Error::InvalidInput(format!(
                "SQLite has one database per file; {db:?} is not one of them (use \"main\", or ATTACH it in a SQL window)"
            )));
        }
        let mut conn = self.base.connect().await.map_err(|e| {
            Error::Connection(format!(
                "could not open SQLite database {}: {e}",
                self.url.redacted()
            ))
        })?;
        let interrupt = Arc::new(AtomicBool::new(false));
        let flag = interrupt.clone();
        conn.lock_handle()
            .await
            .map_err(|e| Error::Connection(e.to_string()))?
            .set_progress_handler(1000, move || !flag.load(Ordering::Relaxed));
        Ok(Box::new(SqliteDb {
            conn,
            canceller: Arc::new(SqliteCanceller(interrupt)),
            in_transaction: false,
        }))
    }
}

struct SqliteCanceller(Arc<AtomicBool>);

#[async_trait]
impl Canceller for SqliteCanceller {
    async fn cancel(&self) -> Result<()> {
        self.0.store(true, Ordering::Relaxed);
        Ok(())
    }
}

struct SqliteDb {
    conn: SqliteConnection,
    canceller: Arc<SqliteCanceller>,
    in_transaction: bool,
}

/// The Arrow type of a SQLite column, from sqlx's name for its declared type or value.
pub fn arrow_type(type_name: &str) -> DataType {
    match type_name {
        "INTEGER" => DataType::Int64,
        "REAL" => DataType::Float64,
        "BOOLEAN" => DataType::Boolean,
        "BLOB" => DataType::Binary,
        "DATE" => DataType::Date32,
        "DATETIME" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "TIME" => DataType::Time64(TimeUnit::Microsecond),
        // TEXT, NUMERIC (exact as text), NULL and anything else.
        _ => DataType::Utf8,
    }
}

fn statement_error(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(db) if db.message().contains("interrupted") => {
            Error::Cancelled(format!("statement cancelled: {}", db.message()))
        }
        sqlx::Error::Database(db) => Error::Engine(db.message().to_string()),
        _ => Error::Engine(e.to_string()),
    }
}

/// The declared type of each result column of the first statement in `sql`, `None` for an
/// expression; empty when the statement does not prepare (sqlx reports that error).
async fn declared_types(conn: &mut SqliteConnection, sql: &str) -> Vec<Option<String>> {
    use libsqlite3_sys as ffi;
    use std::ffi::{CStr, CString};
    let (Ok(mut handle), Ok(text)) = (conn.lock_handle().await, CString::new(sql)) else {
        return Vec::new();
    };
    let db = handle.as_raw_handle().as_ptr();
    let mut stmt: *mut ffi::sqlite3_stmt = std::ptr::null_mut();
    // SAFETY: `db` is the open connection held locked by `handle` for this whole block; the
    // statement is prepared on it, read, and finalized before the lock is released, and every
    // declared-type pointer is copied out before the statement is finalized.
    unsafe {
        let rc = ffi::sqlite3_prepare_v2(db, text.as_ptr(), -1, &mut stmt, std::ptr::null_mut());
        if rc != ffi::SQLITE_OK || stmt.is_null() {
            return Vec::new();
        }
        let types = (0..ffi::sqlite3_column_count(stmt))
            .map(|i| {
                let p = ffi::sqlite3_column_decltype(stmt, i);
                (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
            })
            .collect();
        ffi::sqlite3_finalize(stmt);
        types
    }
}

/// How a column's values are taken from a SQLite row.
enum ValueKind {
    Binary,
    Float,
    Text,
}

fn value_type(row: &SqliteRow, i: usize) -> String {
    row.try_get_raw(i)
        .map(|v| v.type_info().name().to_string())
        .unwrap_or_default()
}

#[async_trait]
impl Connection for SqliteDb {
    async fn test(&mut self) -> Result<ServerInfo> {
        let started = Instant::now();
        sqlx::raw_sql("select 1")
            .execute(&mut self.conn)
            .await
            .map_err(statement_error)?;
        let round_trip_ms = started.elapsed().as_secs_f64() * 1000.0;
        let version: String = sqlx::query_scalar("select sqlite_version()")
            .fetch_one(&mut self.conn)
            .await
            .map_err(statement_error)?;
        Ok(ServerInfo {
            engine: Engine::Sqlite,
            version: format!("SQLite {version}"),
            round_trip_ms,
        })
    }

    async fn run<'a>(&'a mut self, sql: &'a str) -> Result<StatementOutput<'a>> {
        self.canceller.0.store(false, Ordering::Relaxed);
        let declared: Vec<(String, String)> = {
            let stmt = (&mut self.conn)
                .prepare(AssertSqlSafe(sql).into_sql_str())
                .await
                .map_err(statement_error)?;
            let declared = declared_types(&mut self.conn, sql).await;
            stmt.columns()
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    // A table column follows its declared type's affinity (sqlx does not know
                    // NUMERIC or DECIMAL); an expression, sqlx's inference or its first value.
                    let ty = match declared.get(i).and_then(Option::as_deref) {
                        Some(d) if !d.is_empty() => affinity_name(d),
                        _ => c.type_info().name().to_string(),
                    };
                    (c.name().to_string(), ty)
                })
                .collect()
        };
        let in_tx_before = self.in_transaction;
        if declared.is_empty() {
            let result = sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut self.conn)
                .await
                .map_err(statement_error)?;
            self.in_transaction =
                script::transaction_state_after(Engine::Sqlite, sql, in_tx_before);
            return Ok(StatementOutput::Affected(result.rows_affected()));
        }
        let mut rows = sqlx::raw_sql(AssertSqlSafe(sql))
            .fetch_many(&mut self.conn)
            .filter_map(|r| async move {
                match r {
                    Ok(Either::Right(row)) => Some(Ok(row)),
                    Ok(Either::Left(_)) => None,
                    Err(e) => Some(Err(statement_error(e))),
                }
            })
            .boxed()
            .peekable();
        // Expressions have no declared type: take the type of the first row's value.
        let first = std::pin::Pin::new(&mut rows)
            .peek()
            .await
            .and_then(|r| r.as_ref().ok());
        let columns: Vec<(String, DataType)> = declared
            .into_iter()
            .enumerate()
            .map(|(i, (name, ty))| {
                let ty = match (ty.as_str(), first) {
                    ("NULL", Some(row)) => value_type(row, i),
                    _ => ty,
                };
                (name, arrow_type(&ty))
            })
            .collect();
        let schema = unique_schema(columns);
        let kinds: Vec<ValueKind> = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Binary => ValueKind::Binary,
                DataType::Float64 => ValueKind::Float,
                _ => ValueKind::Text,
            })
            .collect();
        let mut builder = TextBatchBuilder::new(schema.clone(), BinaryText::Raw);
        let mut float_text = String::new();
        let batches = crate::batching::batches(rows, move |row: Option<SqliteRow>| match row {
            Some(row) => {
                for (i, kind) in kinds.iter().enumerate() {
                    let value: Option<&[u8]> = match kind {
                        ValueKind::Binary => row.try_get_unchecked(i).ok().flatten(),
                        // SQLite's own text of a REAL keeps only 15 digits; format the double
                        // itself so every value, up to ±f64::MAX, comes back exactly.
                        // (Checked per value without allocating: this runs for every row.)
                        ValueKind::Float
                            if row
                                .try_get_raw(i)
                                .is_ok_and(|v| v.type_info().name() == "REAL") =>
                        {
                            row.try_get_unchecked::<Option<f64>, _>(i)
                                .ok()
                                .flatten()
                                .map(|v| {
                                    float_text.clear();
                                    let _ = write!(float_text, "{v:?}");
                                    float_text.as_bytes()
                                })
                        }
                        _ => row
                            .try_get_unchecked::<Option<&str>, _>(i)
                            .ok()
                            .flatten()
                            .map(str::as_bytes),
                    };
                    builder.append(i, value);
                }
                builder.end_row();
                (builder.rows() >= BATCH_ROWS).then(|| builder.finish())
            }
            None => (builder.rows() > 0).then(|| builder.finish()),
        });
        Ok(StatementOutput::Rows { schema, batches })
    }

    fn canceller(&self) -> Arc<dyn Canceller> {
        self.canceller.clone()
    }

    fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    async fn write(
        &mut self,
        target: &WriteTarget,
        mut batches: crate::BatchStream<'_>,
    ) -> Result<u64> {
        // One transaction for the whole write unless the caller has one open: SQLite commits are slow.
        let own_transaction = !self.in_transaction;
        if own_transaction {
            sqlx::raw_sql("BEGIN")
                .execute(&mut self.conn)
                .await
                .map_err(statement_error)?;
        }
        let mut written = 0;
        let mut outcome = Ok(());
        while let Some(batch) = batches.next().await {
            let step = async {
                let batch = batch?;
                for sql in crate::write::insert_statements(Engine::Sqlite, target, &batch, 1 << 20)?
                {
                    sqlx::raw_sql(AssertSqlSafe(sql))
                        .execute(&mut self.conn)
                        .await
                        .map_err(statement_error)?;
                }
                Ok::<_, Error>(batch.num_rows() as u64)
            };
            match step.await {
                Ok(n) => written += n,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        if own_transaction {
            let end = if outcome.is_ok() {
                "COMMIT"
            } else {
                "ROLLBACK"
            };
            sqlx::raw_sql(end)
                .execute(&mut self.conn)
                .await
                .map_err(statement_error)?;
        }
        outcome.map(|_| written)
    }

    async fn databases(&mut self) -> Result<Vec<String>> {
        let rows =
            query_strings(self, "select name from pragma_database_list order by seq").await?;
        Ok(rows.into_iter().filter_map(|mut r| r.remove(0)).collect())
    }

    async fn tables(&mut self) -> Result<Vec<TableInfo>> {
        let rows = query_strings(
            self,
            "select name, type from sqlite_schema where type in ('table', 'view') and name not like 'sqlite\\_%' escape '\\' order by name",
        )
        .await?;
        let mut tables = Vec::new();
        for r in rows {
            let name = r[0].clone().unwrap_or_default();
            let kind = r[1].clone().unwrap_or_default();
            // SQLite keeps no row estimate; counting is cheap for the tables a console browses.
            let row_estimate = if kind == "table" {
                query_strings(
                    self,
                    &format!("select count(*) from {}", qualified(None, &name)),
                )
                .await?
                .first()
                .and_then(|r| r[0].as_deref()?.parse().ok())
            } else {
                None
            };
            tables.push(TableInfo {
                schema: Some("main".into()),
                name,
                kind,
                row_estimate,
                size_bytes: None,
                ttl_secs: None,
            });
        }
        Ok(tables)
    }

    async fn table(&mut self, schema: Option<&str>, name: &str) -> Result<TableDetail> {
        let schema = schema.unwrap_or("main");
        let columns = query_strings(
            self,
            &format!(
                "select name, type, cast(\"notnull\" as text), dflt_value, cast(pk as text) from pragma_table_info({}, {}) order by cid",
                literal(name),
                literal(schema)
            ),
        )
        .await?;
        if columns.is_empty() {
            return Err(Error::NotFound(format!(
                "table {} not found; list tables with `ferry schema INSTANCE`",
                qualified(Some(schema), name)
            )));
        }
        let mut pk: Vec<(i64, String)> = columns
            .iter()
            .filter_map(|r| {
                let n: i64 = r[4].as_deref()?.parse().ok()?;
                (n > 0).then(|| (n, r[0].clone().unwrap_or_default()))
            })
            .collect();
        pk.sort();
        let index_rows = query_strings(
            self,
            &format!(
                "select il.name, cast(il.\"unique\" as text), ii.name from pragma_index_list({t}, {s}) il \
                 join pragma_index_info(il.name, {s}) ii order by il.name, ii.seqno",
                t = literal(name),
                s = literal(schema)
            ),
        )
        .await?;
        let indexes = crate::group_indexes(index_rows, "1");
        Ok(TableDetail {
            schema: Some(schema.to_string()),
            name: name.to_string(),
            columns: columns
                .into_iter()
                .map(|r| {
                    let declared = r[1].clone().unwrap_or_default();
                    ColumnInfo {
                        name: r[0].clone().unwrap_or_default(),
                        arrow_type: arrow_type(&affinity_name(&declared)).to_string(),
                        data_type: declared,
                        nullable: r[2].as_deref() != Some("1"),
                        default: r[3].clone(),
                    }
                })
                .collect(),
            primary_key: pk.into_iter().map(|(_, c)| c).collect(),
            indexes,
        })
    }

    fn engine(&self) -> Engine {
        Engine::Sqlite
    }
}

/// sqlx's name for a declared SQLite type, following SQLite's affinity rules.
fn affinity_name(declared: &str) -> String {
    let d = declared.to_ascii_uppercase();
    let name = if d.contains("INT") {
        "INTEGER"
    } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
        "TEXT"
    } else if d.contains("BLOB") || d.is_empty() {
        "BLOB"
    } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
        "REAL"
    } else if d.starts_with("BOOL") {
        "BOOLEAN"
    } else if d == "DATE" {
        "DATE"
    } else if d.starts_with("DATETIME") || d.starts_with("TIMESTAMP") {
        "DATETIME"
    } else if d == "TIME" {
        "TIME"
    } else {
        "NUMERIC"
    };
    name.to_string()
}

//! MySQL and MariaDB connector on sqlx. A statement is prepared once to learn its columns and
//! then run over the text protocol, so every value arrives as text and maps through one parser;
//! cancellation sends `KILL QUERY` from a short-lived second connection, as MySQL requires.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::{DataType, TimeUnit};
use async_trait::async_trait;
use ferry_core::{ConnectionUrl, Engine, Error, Result};
use futures::StreamExt;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{
    AssertSqlSafe, Column, ConnectOptions as _, Either, Executor, Row, SqlSafeStr, Statement,
    TypeInfo,
};

use crate::arrow_text::{BinaryText, TextBatchBuilder, unique_schema};
use crate::write::WriteTarget;

use crate::postgres::{literal, qualified, session_from_row};
use crate::{
    BATCH_ROWS, Canceller, ColumnInfo, ConnectOptions, Connection, Connector, ServerInfo,
    ServerSession, StatementOutput, TableDetail, TableInfo, query_strings, script,
};

pub fn connector(url: &ConnectionUrl, options: &ConnectOptions) -> Result<Arc<dyn Connector>> {
    // sqlx reads mysql:// only; mariadb:// is the same protocol.
    let raw = url.expose();
    let normalized = match raw.split_once("://") {
        Some((_, rest)) => format!("mysql://{rest}"),
        None => raw.to_string(),
    };
    let base = MySqlConnectOptions::from_str(&normalized).map_err(|e| {
        Error::InvalidInput(format!(
            "malformed MySQL URL {}: {}",
            url.redacted(),
            crate::scrub(&e.to_string(), url)
        ))
    })?;
    // Keep the server's own SQL mode (sqlx would add PIPES_AS_CONCAT); UTC makes TIMESTAMP exact.
    let base = base
        .pipes_as_concat(false)
        .no_engine_substitution(false)
        .timezone(Some("+00:00".to_string()))
        .statement_cache_capacity(32);
    Ok(Arc::new(MysqlConnector {
        url: url.clone(),
        base,
        options: options.clone(),
    }))
}

struct MysqlConnector {
    url: ConnectionUrl,
    base: MySqlConnectOptions,
    options: ConnectOptions,
}

impl MysqlConnector {
    async fn open(&self, options: &MySqlConnectOptions) -> Result<MySqlConnection> {
        let target = format!("{}:{}", options.get_host(), options.get_port());
        match tokio::time::timeout(self.options.connect_timeout, options.connect()).await {
            Err(_) => Err(Error::Connection(format!(
                "could not connect to MySQL at {target}: no answer within {}s; check the host, port and firewall",
                self.options.connect_timeout.as_secs()
            ))),
            Ok(Err(e)) => Err(Error::Connection(format!(
                "could not connect to MySQL at {target}: {}",
                crate::scrub(&e.to_string(), &self.url)
            ))),
            Ok(Ok(c)) => Ok(c),
        }
    }
}

#[async_trait]
impl Connector for MysqlConnector {
    fn engine(&self) -> Engine {
        Engine::Mysql
    }

    async fn connect(&self, database: Option<&str>) -> Result<Box<dyn Connection>> {
        let options = match database {
            Some(db) => self.base.clone().database(db),
            None => self.base.clone(),
        };
        let mut conn = self.open(&options).await?;
        let id: u64 = sqlx::query_scalar("select connection_id()")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| Error::Connection(e.to_string()))?;
        let canceller = Arc::new(MysqlCanceller {
            connector: self.clone_for_cancel(),
            id,
        });
        Ok(Box::new(MysqlConnection {
            conn,
            id,
            canceller,
            in_transaction: false,
            broken: false,
        }))
    }
}

impl MysqlConnector {
    fn clone_for_cancel(&self) -> MysqlConnector {
        MysqlConnector {
            url: self.url.clone(),
            base: self.base.clone(),
            options: self.options.clone(),
        }
    }
}

struct MysqlCanceller {
    connector: MysqlConnector,
    id: u64,
}

#[async_trait]
impl Canceller for MysqlCanceller {
    async fn cancel(&self) -> Result<()> {
        let mut control = self.connector.open(&self.connector.base).await?;
        let result = sqlx::raw_sql(AssertSqlSafe(format!("KILL QUERY {}", self.id)))
            .execute(&mut control)
            .await;
        let _ = sqlx::Connection::close(control).await;
        result
            .map(|_| ())
            .map_err(|e| Error::Engine(format!("KILL QUERY {} failed: {e}", self.id)))
    }
}

struct MysqlConnection {
    conn: MySqlConnection,
    id: u64,
    canceller: Arc<MysqlCanceller>,
    in_transaction: bool,
    broken: bool,
}

/// The Arrow type of a MySQL column type as sqlx names it; unknown types are carried as text.
pub fn arrow_type(type_name: &str) -> DataType {
    match type_name {
        "BOOLEAN" => DataType::Boolean,
        "TINYINT" | "SMALLINT" | "TINYINT UNSIGNED" => DataType::Int16,
        "MEDIUMINT" | "INT" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "YEAR" => {
            DataType::Int32
        }
        "BIGINT" | "INT UNSIGNED" => DataType::Int64,
        "BIGINT UNSIGNED" => DataType::UInt64,
        "FLOAT" => DataType::Float32,
        "DOUBLE" => DataType::Float64,
        "DATE" => DataType::Date32,
        "DATETIME" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "TIMESTAMP" => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" | "GEOMETRY"
        | "BIT" => DataType::Binary,
        // DECIMAL stays exact as text: the column definition sqlx exposes has no precision.
        _ => DataType::Utf8,
    }
}

fn statement_error(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| format!(" ({c})")).unwrap_or_default();
            if db.message().contains("interrupted") {
                Error::Cancelled(format!(
                    "statement cancelled on the server: {}{code}",
                    db.message()
                ))
            } else {
                Error::Engine(format!("{}{code}", db.message()))
            }
        }
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::PoolTimedOut => {
            Error::Connection(format!("connection to MySQL lost: {e}"))
        }
        _ => Error::Engine(e.to_string()),
    }
}

#[async_trait]
impl Connection for MysqlConnection {
    async fn test(&mut self) -> Result<ServerInfo> {
        let started = Instant::now();
        sqlx::raw_sql("select 1")
            .execute(&mut self.conn)
            .await
            .map_err(statement_error)?;
        let round_trip_ms = started.elapsed().as_secs_f64() * 1000.0;
        let version: String = sqlx::query_scalar("select version()")
            .fetch_one(&mut self.conn)
            .await
            .map_err(statement_error)?;
        Ok(ServerInfo {
            engine: Engine::Mysql,
            version,
            round_trip_ms,
        })
    }

    async fn run<'a>(&'a mut self, sql: &'a str) -> Result<StatementOutput<'a>> {
        // Statements the prepared protocol refuses (error 1295) still run, with columns from the first row.
        let columns = match (&mut self.conn)
            .prepare(AssertSqlSafe(sql).into_sql_str())
            .await
        {
            Ok(stmt) => Some(
                stmt.columns()
                    .iter()
                    .map(|c| (c.name().to_string(), arrow_type(c.type_info().name())))
                    .collect::<Vec<_>>(),
            ),
            Err(sqlx::Error::Database(db))
                if db.code().as_deref() == Some("HY000")
                    && db.message().contains("prepared statement protocol") =>
            {
                None
            }
            Err(e) => {
                self.note_error(&e);
                return Err(statement_error(e));
            }
        };
        let in_tx_before = self.in_transaction;
        if columns.as_ref().is_some_and(Vec::is_empty) {
            let result = sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut self.conn)
                .await
                .map_err(|e| {
                    self.broken |= matches!(e, sqlx::Error::Io(_) | sqlx::Error::Protocol(_));
                    statement_error(e)
                })?;
            self.in_transaction = script::transaction_state_after(Engine::Mysql, sql, in_tx_before);
            return Ok(StatementOutput::Affected(result.rows_affected()));
        }
        let mut results = sqlx::raw_sql(AssertSqlSafe(sql))
            .fetch_many(&mut self.conn)
            .peekable();
        let columns = match columns {
            Some(c) => c,
            None => match std::pin::Pin::new(&mut results).peek().await {
                Some(Ok(Either::Right(row))) => row
                    .columns()
                    .iter()
                    .map(|c| (c.name().to_string(), arrow_type(c.type_info().name())))
                    .collect(),
                _ => vec![],
            },
        };
        if columns.is_empty() {
            let mut affected = 0;
            while let Some(item) = results.next().await {
                if let Either::Left(r) = item.map_err(statement_error)? {
                    affected += r.rows_affected();
                }
            }
            return Ok(StatementOutput::Affected(affected));
        }
        let schema = unique_schema(columns);
        let width = schema.fields().len();
        let mut builder = TextBatchBuilder::new(schema.clone(), BinaryText::Raw);
        let rows = results.map(|item| item.map_err(statement_error));
        let batches = crate::batching::batches(rows, move |item| match item {
            Some(Either::Right(row)) => {
                for i in 0..width.min(row.len()) {
                    let value: Option<&[u8]> = row.try_get_unchecked(i).ok().flatten();
                    builder.append(i, value);
                }
                builder.end_row();
                (builder.rows() >= BATCH_ROWS).then(|| builder.finish())
            }
            Some(Either::Left(_)) => None,
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

    fn is_healthy(&self) -> bool {
        !self.broken
    }

    async fn write(
        &mut self,
        target: &WriteTarget,
        mut batches: crate::BatchStream<'_>,
    ) -> Result<u64> {
        // Prepared multi-row INSERTs: values travel in the binary protocol, so the server parses
        // no text, and the statement for a full chunk is prepared once and reused.
        let width = target.columns.len().max(1);
        let per_statement = (60_000 / width).clamp(1, 1000);
        let row = format!("({})", vec!["?"; width].join(", "));
        let head = format!(
            "INSERT INTO {} ({}) VALUES ",
            target.qualified(Engine::Mysql),
            target.column_list(Engine::Mysql)
        );
        let tail = crate::write::upsert_clause(Engine::Mysql, target);
        let options = crate::write::format_options(false);
        let mut written = 0;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            let mut start = 0;
            while start < batch.num_rows() {
                let end = (start + per_statement).min(batch.num_rows());
                let sql = format!("{head}{}{tail}", vec![row.as_str(); end - start].join(", "));
                // Formatters are not Send: the statement is built before the await.
                let query = {
                    let formatters = batch
                        .columns()
                        .iter()
                        .map(|c| {
                            arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options)
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| {
                            Error::Unsupported(format!("cannot write this column type: {e}"))
                        })?;
                    let mut query = sqlx::query(AssertSqlSafe(sql));
                    for r in start..end {
                        for (i, column) in batch.columns().iter().enumerate() {
                            query =
                                bind_value(query, column, r, &formatters[i], &target.columns[i])?;
                        }
                    }
                    query
                };
                query.execute(&mut self.conn).await.map_err(|e| {
                    self.broken |= matches!(e, sqlx::Error::Io(_) | sqlx::Error::Protocol(_));
                    statement_error(e)
                })?;
                start = end;
            }
            written += batch.num_rows() as u64;
        }
        Ok(written)
    }

    async fn databases(&mut self) -> Result<Vec<String>> {
        let rows = query_strings(
            self,
            "select schema_name from information_schema.schemata order by 1",
        )
        .await?;
        Ok(rows.into_iter().filter_map(|mut r| r.remove(0)).collect())
    }

    async fn tables(&mut self) -> Result<Vec<TableInfo>> {
        let rows = query_strings(
            self,
            "select table_schema, table_name, case table_type when 'VIEW' then 'view' else 'table' end, \
               cast(table_rows as signed), cast(data_length + index_length as signed) \
             from information_schema.tables \
             where table_schema = coalesce(database(), table_schema) \
               and table_schema not in ('mysql', 'information_schema', 'performance_schema', 'sys') \
             order by 1, 2",
        )
        .await?;
        Ok(rows.into_iter().map(crate::table_info).collect())
    }

    async fn table(&mut self, schema: Option<&str>, name: &str) -> Result<TableDetail> {
        let schema_expr = schema
            .map(literal)
            .unwrap_or_else(|| "database()".to_string());
        let where_ = format!(
            "table_schema = {schema_expr} and table_name = {}",
            literal(name)
        );
        let columns = query_strings(
            self,
            &format!(
                "select column_name, column_type, is_nullable, column_default, data_type, table_schema \
                 from information_schema.columns where {where_} order by ordinal_position"
            ),
        )
        .await?;
        if columns.is_empty() {
            return Err(Error::NotFound(format!(
                "table {} not found; list tables with `ferry schema INSTANCE`",
                qualified(schema, name)
            )));
        }
        let stats = query_strings(
            self,
            &format!(
                "select index_name, cast(non_unique as char), column_name from information_schema.statistics \
                 where {where_} order by index_name, seq_in_index"
            ),
        )
        .await?;
        let indexes = crate::group_indexes(stats, "0");
        let primary_key = indexes
            .iter()
            .find(|i| i.name == "PRIMARY")
            .map(|i| i.columns.clone())
            .unwrap_or_default();
        let table_schema = columns[0][5].clone();
        Ok(TableDetail {
            schema: table_schema,
            name: name.to_string(),
            columns: columns
                .into_iter()
                .map(|r| {
                    let column_type = r[1].clone().unwrap_or_default();
                    ColumnInfo {
                        name: r[0].clone().unwrap_or_default(),
                        arrow_type: arrow_type(&declared_type_name(&column_type)).to_string(),
                        data_type: column_type,
                        nullable: r[2].as_deref() == Some("YES"),
                        default: r[3].clone(),
                    }
                })
                .collect(),
            primary_key,
            indexes,
        })
    }

    async fn server_sessions(&mut self) -> Result<Vec<ServerSession>> {
        let rows = query_strings(
            self,
            "select id, user, db, host, coalesce(state, command), info, cast(time as double) \
             from information_schema.processlist order by id",
        )
        .await?;
        Ok(rows.into_iter().map(session_from_row).collect())
    }

    async fn kill_server_session(&mut self, id: i64) -> Result<()> {
        match self.run(&format!("KILL {id}")).await {
            Ok(_) => Ok(()),
            Err(Error::Engine(m)) if m.contains("Unknown thread id") => {
                Err(Error::NotFound(format!("no MySQL session with id {id}")))
            }
            Err(e) => Err(e),
        }
    }

    fn server_session_id(&self) -> Option<i64> {
        Some(self.id as i64)
    }

    fn engine(&self) -> Engine {
        Engine::Mysql
    }
}

impl MysqlConnection {
    fn note_error(&mut self, e: &sqlx::Error) {
        self.broken |= matches!(e, sqlx::Error::Io(_) | sqlx::Error::Protocol(_));
    }
}

/// sqlx's type name for a declared column type such as `bigint(20) unsigned` or `tinyint(1)`.
fn declared_type_name(column_type: &str) -> String {
    let lower = column_type.to_ascii_lowercase();
    let base = lower.split(['(', ' ']).next().unwrap_or_default();
    let unsigned = lower.contains("unsigned");
    let name = match base {
        "tinyint" if lower.starts_with("tinyint(1)") => "BOOLEAN".to_string(),
        "int" | "integer" => "INT".to_string(),
        "text" | "tinytext" | "mediumtext" | "longtext" | "varchar" | "char" => {
            "VARCHAR".to_string()
        }
        other => other.to_ascii_uppercase(),
    };
    if unsigned {
        format!("{name} UNSIGNED")
    } else {
        name
    }
}

type MysqlQuery<'q> = sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>;

/// Binds one Arrow value: numbers, text and bytes as themselves, everything else as its text.
fn bind_value<'q>(
    query: MysqlQuery<'q>,
    array: &'q arrow::array::ArrayRef,
    row: usize,
    formatter: &arrow::util::display::ArrayFormatter<'_>,
    name: &str,
) -> Result<MysqlQuery<'q>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{
        DataType as D, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
        UInt8Type, UInt16Type, UInt32Type, UInt64Type,
    };
    if array.is_null(row) {
        return Ok(query.bind(None::<i64>));
    }
    let not_finite = |v: f64| {
        Error::InvalidInput(format!(
            "column \"{name}\" holds {v}, which MySQL cannot store; filter or convert it in the source query"
        ))
    };
    Ok(match array.data_type() {
        D::Boolean => query.bind(array.as_boolean().value(row)),
        D::Int8 => query.bind(array.as_primitive::<Int8Type>().value(row) as i64),
        D::Int16 => query.bind(array.as_primitive::<Int16Type>().value(row) as i64),
        D::Int32 => query.bind(array.as_primitive::<Int32Type>().value(row) as i64),
        D::Int64 => query.bind(array.as_primitive::<Int64Type>().value(row)),
        D::UInt8 => query.bind(array.as_primitive::<UInt8Type>().value(row) as u64),
        D::UInt16 => query.bind(array.as_primitive::<UInt16Type>().value(row) as u64),
        D::UInt32 => query.bind(array.as_primitive::<UInt32Type>().value(row) as u64),
        D::UInt64 => query.bind(array.as_primitive::<UInt64Type>().value(row)),
        D::Float32 => {
            let v = array.as_primitive::<Float32Type>().value(row);
            if !v.is_finite() {
                return Err(not_finite(v as f64));
            }
            query.bind(v)
        }
        D::Float64 => {
            let v = array.as_primitive::<Float64Type>().value(row);
            if !v.is_finite() {
                return Err(not_finite(v));
            }
            query.bind(v)
        }
        D::Utf8 => query.bind(array.as_string::<i32>().value(row)),
        D::Binary => query.bind(array.as_binary::<i32>().value(row)),
        _ => query.bind(formatter.value(row).to_string()),
    })
}

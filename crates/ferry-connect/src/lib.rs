//! Connectors: one plugin per database engine behind the [`Connector`] and [`Connection`]
//! traits, the explicit engine [`registry`], text-to-Arrow conversion shared by the SQL engines,
//! and the per-instance connection [`pool`] with its hard cap, SQL-window leases and kill policies.
//!
//! Every result leaves a connector as a stream of Arrow record batches; engine types are mapped
//! once, at the connector's edge (see `docs/type-map.md`).

pub mod arrow_text;
mod batching;
pub mod mysql;
mod pg_binary;
pub mod pool;
pub mod postgres;
pub mod redis;
pub mod registry;
pub mod script;
pub mod sqlite;
pub mod tls;
pub mod write;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use ferry_core::{ConnectionUrl, Engine, Error, Result};
use futures::Stream;
use serde::Serialize;

pub use pool::{InstancePool, Lease, PolicyAction, PoolStats};
pub use registry::connector_for;
pub use write::WriteTarget;

/// Rows per record batch produced by the connectors.
pub const BATCH_ROWS: usize = 4096;

/// A stream of record batches that borrows the connection it reads from.
pub type BatchStream<'a> = Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send + 'a>>;

/// Opens connections to one instance. Cheap to clone behind an `Arc`; holds no connection itself.
#[async_trait]
pub trait Connector: Send + Sync {
    fn engine(&self) -> Engine;

    /// Opens one server-side connection, to `database` if given (else the URL's own).
    async fn connect(&self, database: Option<&str>) -> Result<Box<dyn Connection>>;
}

/// One open server-side connection. Statements on it share session state (SET, temp tables,
/// transactions), which is what a SQL window relies on.
#[async_trait]
pub trait Connection: Send {
    /// Server version and the round trip of a trivial statement.
    async fn test(&mut self) -> Result<ServerInfo>;

    /// Runs one statement. A statement that produces rows gives a stream (which must be read or
    /// dropped before the next statement); others give the number of rows affected.
    async fn run<'a>(&'a mut self, sql: &'a str) -> Result<StatementOutput<'a>>;

    /// A handle that cancels the statement running on this connection, from another task.
    fn canceller(&self) -> Arc<dyn Canceller>;

    /// Whether the connection is inside an explicit transaction, as far as Ferry can tell.
    fn in_transaction(&self) -> bool {
        false
    }

    /// Whether the connection is still usable (not closed by the server or by an error).
    fn is_healthy(&self) -> bool {
        true
    }

    /// Databases (or keyspaces) on the server.
    async fn databases(&mut self) -> Result<Vec<String>>;

    /// Tables (or keys) of the connected database.
    async fn tables(&mut self) -> Result<Vec<TableInfo>>;

    /// Columns, primary key and indexes of one table.
    async fn table(&mut self, schema: Option<&str>, name: &str) -> Result<TableDetail>;

    /// Writes record batches into an existing table (columns in `target.columns` order) and
    /// returns the rows written. Runs inside the connection's transaction if one is open.
    async fn write(&mut self, target: &WriteTarget, batches: BatchStream<'_>) -> Result<u64> {
        let _ = (target, batches);
        Err(Error::Unsupported(format!(
            "writing tables is not supported by {}",
            self.engine()
        )))
    }

    /// Server-side sessions, as `pg_stat_activity` or `SHOW PROCESSLIST` show them.
    async fn server_sessions(&mut self) -> Result<Vec<ServerSession>> {
        Err(Error::Unsupported(format!(
            "listing server sessions is not supported by {}",
            self.engine()
        )))
    }

    /// Terminates a server-side session by its id.
    async fn kill_server_session(&mut self, id: i64) -> Result<()> {
        let _ = id;
        Err(Error::Unsupported(format!(
            "killing server sessions is not supported by {}",
            self.engine()
        )))
    }

    /// The server-side id of this connection (backend pid, connection id), if the engine has one.
    fn server_session_id(&self) -> Option<i64> {
        None
    }

    fn engine(&self) -> Engine;
}

/// Cancels whatever statement runs on one connection; safe to call when nothing runs.
#[async_trait]
pub trait Canceller: Send + Sync {
    async fn cancel(&self) -> Result<()>;
}

/// What one statement produced.
pub enum StatementOutput<'a> {
    Rows {
        schema: SchemaRef,
        batches: BatchStream<'a>,
    },
    Affected(u64),
}

/// Result of a connection test.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub engine: Engine,
    pub version: String,
    pub round_trip_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableInfo {
    pub schema: Option<String>,
    pub name: String,
    /// `table`, `view`, or for Redis the key type.
    pub kind: String,
    pub row_estimate: Option<i64>,
    pub size_bytes: Option<i64>,
    /// For Redis keys: seconds to live, if the key expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColumnInfo {
    pub name: String,
    /// The engine's own type name, as declared.
    pub data_type: String,
    /// The Arrow type Ferry maps it to.
    pub arrow_type: String,
    pub nullable: bool,
    pub default: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IndexInfo {
    pub name: String,
    pub columns: Vec<String>,
    pub unique: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableDetail {
    pub schema: Option<String>,
    pub name: String,
    pub columns: Vec<ColumnInfo>,
    pub primary_key: Vec<String>,
    pub indexes: Vec<IndexInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerSession {
    pub id: i64,
    pub user: Option<String>,
    pub database: Option<String>,
    pub client: Option<String>,
    pub state: Option<String>,
    pub query: Option<String>,
    pub running_secs: Option<f64>,
}

/// Options a connector takes from the instance's settings.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Reads a statement output completely; for catalog queries and tests, never for user results.
pub async fn collect(output: StatementOutput<'_>) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    use futures::TryStreamExt;
    match output {
        StatementOutput::Rows { schema, batches } => Ok((schema, batches.try_collect().await?)),
        StatementOutput::Affected(_) => Err(Error::Internal(
            "expected a statement that returns rows".into(),
        )),
    }
}

/// Runs a catalog query and returns its rows as optional strings, column by column as selected.
pub async fn query_strings(
    conn: &mut dyn Connection,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>> {
    let (_, batches) = collect(conn.run(sql).await?).await?;
    let mut rows = Vec::new();
    for batch in &batches {
        let columns: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &Default::default()))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Internal(format!("formatting catalog rows: {e}")))?;
        for row in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .zip(&columns)
                    .map(|(array, fmt)| (!array.is_null(row)).then(|| fmt.value(row).to_string()))
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// Groups catalog rows of `[index name, uniqueness flag, column]`, in column order, into indexes;
/// an index is unique when its flag equals `unique_flag`.
pub(crate) fn group_indexes(rows: Vec<Vec<Option<String>>>, unique_flag: &str) -> Vec<IndexInfo> {
    let mut indexes: Vec<IndexInfo> = Vec::new();
    for r in rows {
        let name = r[0].clone().unwrap_or_default();
        let column = r[2].clone().unwrap_or_default();
        match indexes.iter_mut().find(|i| i.name == name) {
            Some(i) => i.columns.push(column),
            None => indexes.push(IndexInfo {
                name,
                columns: vec![column],
                unique: r[1].as_deref() == Some(unique_flag),
            }),
        }
    }
    indexes
}

/// A table from catalog rows of `[schema, name, kind, row estimate, size in bytes]`.
pub(crate) fn table_info(r: Vec<Option<String>>) -> TableInfo {
    TableInfo {
        schema: r[0].clone(),
        name: r[1].clone().unwrap_or_default(),
        kind: r[2].clone().unwrap_or_default(),
        row_estimate: r[3].as_deref().and_then(|v| v.parse().ok()),
        size_bytes: r[4].as_deref().and_then(|v| v.parse().ok()),
        ttl_secs: None,
    }
}

/// Scrubs a password out of a driver's message, in case the driver echoes its URL.
pub(crate) fn scrub(message: &str, url: &ConnectionUrl) -> String {
    match url.password() {
        Some(p) => message.replace(&p, "***"),
        None => message.to_string(),
    }
}

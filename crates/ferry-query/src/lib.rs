//! SQL over archived files: each registered archive is a DataFusion listing table over Parquet,
//! CSV or JSON Lines files on disk or object storage, with Hive-style partition columns
//! (`y=2026/m=11/d=21`) that prune whole directories from a query. The archive engine plugs in
//! as a connector, so the console, SQL windows and async queries query it like any instance.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::datasource::file_format::FileFormat as DfFileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTableUrl};
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use ferry_connect::{
    BatchStream, Canceller, ColumnInfo, Connection, Connector, ServerInfo, StatementOutput,
    TableDetail, TableInfo,
};
use ferry_core::{Engine, Error, Result};
use ferry_move::FileFormat;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// The instance name under which archives are queried (`ferry sql archive "…"`).
pub mod cross;

pub const ARCHIVE_INSTANCE: &str = "archive";

/// An archive: files under a URL, queried as one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveTable {
    /// The table name in queries.
    pub name: String,
    /// A directory, `file://` URL or `s3://bucket/prefix`.
    pub url: String,
    #[serde(default)]
    pub format: FileFormat,
    /// Hive-style partition keys in path order, e.g. `["y", "m", "d"]`.
    #[serde(default)]
    pub partitions: Vec<String>,
    /// Object-store settings (`endpoint`, `region`, `allow_http`); credentials come from the
    /// server's `AWS_*` environment.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl ArchiveTable {
    pub fn validate(&self) -> Result<()> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        };
        if !ok(&self.name) {
            return Err(Error::InvalidInput(format!(
                "archive name {:?} must be a plain identifier (letters, digits, _; not starting with a digit)",
                self.name
            )));
        }
        if let Some(p) = self.partitions.iter().find(|p| !ok(p)) {
            return Err(Error::InvalidInput(format!(
                "partition key {p:?} must be a plain identifier"
            )));
        }
        ferry_move::files::open_location(&self.url, &self.options).map(|_| ())
    }
}

fn df_error(e: datafusion::error::DataFusionError) -> Error {
    use datafusion::error::DataFusionError as E;
    match e {
        E::SQL(..) | E::Plan(_) | E::SchemaError(..) | E::NotImplemented(_) => {
            Error::Engine(e.to_string())
        }
        E::ObjectStore(_) | E::IoError(_) => Error::Connection(e.to_string()),
        other => Error::Engine(other.to_string()),
    }
}

/// Opens DataFusion sessions with the archives registered.
pub struct ArchiveConnector {
    tables: Vec<ArchiveTable>,
}

impl ArchiveConnector {
    pub fn connector(tables: Vec<ArchiveTable>) -> Arc<dyn Connector> {
        Arc::new(ArchiveConnector { tables })
    }
}

/// Registers one archive as a listing table in a session.
async fn register(ctx: &SessionContext, t: &ArchiveTable) -> Result<()> {
    let location = ferry_move::files::open_location(&t.url, &t.options)?;
    let single = t.url.ends_with(&format!(".{}", t.format.extension()));
    let mut url = t.url.clone();
    if !url.contains("://") {
        url = std::path::absolute(&url)
            .map(|p| p.display().to_string())
            .unwrap_or(url);
    }
    if !single && !url.ends_with('/') {
        url.push('/');
    }
    let table_url = ListingTableUrl::parse(&url)
        .map_err(|e| Error::InvalidInput(format!("archive {}: {e}", t.name)))?;
    ctx.register_object_store(table_url.object_store().as_ref(), location.store.clone());
    let format: Arc<dyn DfFileFormat> = match t.format {
        FileFormat::Parquet => Arc::new(ParquetFormat::default()),
        FileFormat::Csv => Arc::new(CsvFormat::default().with_has_header(true)),
        FileFormat::Jsonl => Arc::new(JsonFormat::default()),
    };
    let options = ListingOptions::new(format)
        .with_file_extension(format!(".{}", t.format.extension()))
        .with_table_partition_cols(
            t.partitions
                .iter()
                .map(|p| (p.clone(), DataType::Utf8))
                .collect(),
        );
    ctx.register_listing_table(t.name.as_str(), url, options, None, None)
        .await
        .map_err(|e| df_error(e).context(format!("archive {} at {}", t.name, t.url)))
}

#[async_trait]
impl Connector for ArchiveConnector {
    fn engine(&self) -> Engine {
        Engine::Archive
    }

    async fn connect(&self, _database: Option<&str>) -> Result<Box<dyn Connection>> {
        // No listing cache: a pooled connection must see partitions written after it opened.
        let runtime = RuntimeEnvBuilder::new()
            .with_cache_manager(CacheManagerConfig::default().with_list_files_cache_limit(0))
            .build_arc()
            .map_err(df_error)?;
        let ctx = SessionContext::new_with_config_rt(
            SessionConfig::new().with_information_schema(true),
            runtime,
        );
        for t in &self.tables {
            register(&ctx, t).await?;
        }
        Ok(Box::new(ArchiveConnection {
            ctx,
            tables: self.tables.clone(),
            cancel: Arc::new(ArchiveCanceller(AtomicBool::new(false))),
        }))
    }
}

struct ArchiveCanceller(AtomicBool);

#[async_trait]
impl Canceller for ArchiveCanceller {
    async fn cancel(&self) -> Result<()> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

struct ArchiveConnection {
    ctx: SessionContext,
    tables: Vec<ArchiveTable>,
    cancel: Arc<ArchiveCanceller>,
}

#[async_trait]
impl Connection for ArchiveConnection {
    async fn test(&mut self) -> Result<ServerInfo> {
        let started = Instant::now();
        self.ctx
            .sql("select 1")
            .await
            .map_err(df_error)?
            .collect()
            .await
            .map_err(df_error)?;
        Ok(ServerInfo {
            engine: Engine::Archive,
            version: format!(
                "DataFusion {} over {} archives",
                datafusion::DATAFUSION_VERSION,
                self.tables.len()
            ),
            round_trip_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    async fn run<'a>(&'a mut self, sql: &'a str) -> Result<StatementOutput<'a>> {
        self.cancel.0.store(false, Ordering::SeqCst);
        let frame = self.ctx.sql(sql).await.map_err(df_error)?;
        let stream = frame.execute_stream().await.map_err(df_error)?;
        let schema = stream.schema();
        let cancel = self.cancel.clone();
        let batches: BatchStream<'a> = Box::pin(stream.map(move |b| {
            if cancel.0.load(Ordering::SeqCst) {
                return Err(Error::Cancelled("query on the archive cancelled".into()));
            }
            b.map_err(df_error)
        }));
        Ok(StatementOutput::Rows { schema, batches })
    }

    fn canceller(&self) -> Arc<dyn Canceller> {
        self.cancel.clone()
    }

    async fn databases(&mut self) -> Result<Vec<String>> {
        Ok(vec![ARCHIVE_INSTANCE.to_string()])
    }

    async fn tables(&mut self) -> Result<Vec<TableInfo>> {
        Ok(self
            .tables
            .iter()
            .map(|t| TableInfo {
                schema: None,
                name: t.name.clone(),
                kind: "archive".into(),
                row_estimate: None,
                size_bytes: None,
                ttl_secs: None,
            })
            .collect())
    }

    async fn table(&mut self, _schema: Option<&str>, name: &str) -> Result<TableDetail> {
        let frame = self.ctx.table(name).await.map_err(|_| {
            Error::NotFound(format!(
                "no archive named {name:?}; list them with `ferry archive list`"
            ))
        })?;
        let columns = frame
            .schema()
            .fields()
            .iter()
            .map(|f| ColumnInfo {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                arrow_type: f.data_type().to_string(),
                nullable: f.is_nullable(),
                default: None,
            })
            .collect();
        Ok(TableDetail {
            schema: None,
            name: name.to_string(),
            columns,
            primary_key: vec![],
            indexes: vec![],
        })
    }

    fn engine(&self) -> Engine {
        Engine::Archive
    }
}

//! Cross-database SQL: tables from several instances (each a query on its own connection) joined
//! and aggregated by DataFusion. Every source is a streaming table: its rows flow from the
//! instance through a bounded channel as DataFusion pulls them, so memory follows the query's
//! own state (a join's build side, a group-by's groups), not the sources' sizes.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use ferry_connect::{InstancePool, StatementOutput};
use ferry_core::{Error, Feature, Result};
use futures::StreamExt;

use crate::df_error;

/// One source: a query on an instance, seen in the cross-database SQL as `alias`.
pub struct Source {
    pub alias: String,
    pub pool: Arc<InstancePool>,
    pub database: Option<String>,
    pub sql: String,
}

struct SourceStream {
    schema: SchemaRef,
    pool: Arc<InstancePool>,
    database: Option<String>,
    sql: String,
}

impl std::fmt::Debug for SourceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceStream")
            .field("sql", &self.sql)
            .finish()
    }
}

impl PartitionStream for SourceStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let (pool, database, sql) = (self.pool.clone(), self.database.clone(), self.sql.clone());
        tokio::spawn(async move {
            let result: Result<()> = async {
                let mut lease = pool
                    .acquire(Feature::Task, database.as_deref(), "cross-database query")
                    .await?;
                match lease.conn().run(&sql).await? {
                    StatementOutput::Rows { mut batches, .. } => {
                        while let Some(batch) = batches.next().await {
                            if tx
                                .send(batch.map_err(|e| e.context("reading a source")))
                                .await
                                .is_err()
                            {
                                break; // DataFusion stopped reading (a LIMIT, or an error).
                            }
                        }
                        Ok(())
                    }
                    StatementOutput::Affected(_) => Err(Error::InvalidInput(format!(
                        "source {sql:?} returns no rows: give a SELECT or a table"
                    ))),
                }
            }
            .await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(|r| r.map_err(|e| datafusion::error::DataFusionError::External(Box::new(e))));
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// The columns a source query returns, from running it with no rows.
async fn source_schema(source: &Source) -> Result<SchemaRef> {
    let mut lease = source
        .pool
        .acquire(
            Feature::Task,
            source.database.as_deref(),
            "cross-database query",
        )
        .await?;
    let probe = format!("SELECT * FROM ({}) ferry_probe WHERE 1 = 0", source.sql);
    match lease.conn().run(&probe).await? {
        StatementOutput::Rows {
            schema,
            mut batches,
        } => {
            while batches.next().await.is_some() {}
            Ok(schema)
        }
        StatementOutput::Affected(_) => Err(Error::InvalidInput(format!(
            "source {} returns no rows: give a SELECT or a table",
            source.alias
        ))),
    }
}

/// Runs `sql` over the sources and returns its result as a stream of record batches.
pub async fn query(
    sources: Vec<Source>,
    sql: &str,
) -> Result<(SchemaRef, ferry_connect::BatchStream<'static>)> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
    for s in &sources {
        let schema = source_schema(s)
            .await
            .map_err(|e| e.context(format!("source {}", s.alias)))?;
        let stream = Arc::new(SourceStream {
            schema: schema.clone(),
            pool: s.pool.clone(),
            database: s.database.clone(),
            sql: s.sql.clone(),
        });
        let table = StreamingTable::try_new(schema, vec![stream]).map_err(df_error)?;
        ctx.register_table(s.alias.as_str(), Arc::new(table))
            .map_err(df_error)?;
    }
    let frame = ctx.sql(sql).await.map_err(df_error)?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let stream = frame.execute_stream().await.map_err(df_error)?;
    Ok((schema, Box::pin(stream.map(|r| r.map_err(df_error)))))
}

//! Runs a transfer: reads the source as record batches, writes them into the target inside one
//! transaction (emptying it first in replace mode, clearing the incremental range first so a
//! re-run cannot duplicate), then reads the target back to compare counts and checksums.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use ferry_connect::write::{WriteTarget, qualified_table, quote_ident};
use ferry_connect::{
    BatchStream, InstancePool, Lease, StatementOutput, TableDetail, collect, query_strings,
};
use ferry_core::{Engine, Error, Feature, Result};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::checksum::Checksum;
use crate::mapping::refine_declared;
use crate::plan::{
    Mode, SourceSpec, TransferSpec, check_created, check_target, create_table_sql, source_sql,
    watermark_literal,
};

/// Where incremental transfers keep their watermarks (the metadata store, in the server).
#[async_trait]
pub trait WatermarkStore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<String>>;
    async fn set(&self, key: &str, value: &str) -> Result<()>;
}

/// Counters a caller can read while the transfer runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub rows_read: AtomicU64,
    pub rows_written: AtomicU64,
    /// The source's row estimate, when the catalog has one (0 when unknown).
    pub rows_expected: AtomicU64,
}

/// What a finished transfer did.
#[derive(Debug, Clone, Serialize)]
pub struct TransferReport {
    pub rows: u64,
    pub created_table: bool,
    /// For incremental transfers: the range moved, `(previous watermark, new watermark]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<(Option<String>, String)>,
    /// Counts and checksums of both sides, when verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_checksum: Option<Checksum>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_checksum: Option<Checksum>,
    pub verified: bool,
    pub duration_ms: u64,
}

fn begin_sql(engine: Engine) -> &'static str {
    match engine {
        Engine::Mysql => "START TRANSACTION",
        _ => "BEGIN",
    }
}

/// Runs a transfer between two pools (they may be the same).
pub async fn run_transfer(
    spec: &TransferSpec,
    source_pool: Option<Arc<InstancePool>>,
    target_pool: Arc<InstancePool>,
    watermarks: &dyn WatermarkStore,
    progress: Arc<Progress>,
) -> Result<TransferReport> {
    spec.validate()?;
    let started = Instant::now();
    let Some(source_pool) = source_pool else {
        // Files: no source connection, no incremental range.
        let mut target = target_pool
            .acquire(
                Feature::AsyncQuery,
                spec.target.database.as_deref(),
                "transfer target",
            )
            .await?;
        return transfer(
            spec,
            None,
            &mut target,
            None,
            None,
            None,
            watermarks,
            progress,
            started,
        )
        .await;
    };
    let source_engine = source_pool.connector().engine();
    let mut source = source_pool
        .acquire(
            Feature::AsyncQuery,
            spec.source.database(),
            "transfer source",
        )
        .await?;
    let mut target = target_pool
        .acquire(
            Feature::AsyncQuery,
            spec.target.database.as_deref(),
            "transfer target",
        )
        .await?;

    let source_detail = match &spec.source {
        SourceSpec::Table(e) => Some(
            source
                .conn()
                .table(e.schema.as_deref(), &e.table)
                .await
                .map_err(|err| err.context(format!("source {}", e.display())))?,
        ),
        SourceSpec::Query { .. } | SourceSpec::Files { .. } => None,
    };

    if let (SourceSpec::Table(e), Some(_), Mode::Replace | Mode::Append | Mode::Upsert) =
        (&spec.source, &source_detail, spec.mode)
        && spec.filter.is_none()
    {
        // The catalog's estimate lets the CLI show how far along the copy is.
        let tables = source.conn().tables().await.unwrap_or_default();
        let estimate = tables
            .iter()
            .find(|t| t.name == e.table && (e.schema.is_none() || t.schema == e.schema))
            .and_then(|t| t.row_estimate)
            .filter(|n| *n > 0);
        if let Some(n) = estimate {
            progress.rows_expected.store(n as u64, Ordering::Relaxed);
        }
    }

    // Incremental: the range (last watermark, current maximum].
    if spec.mode == Mode::Incremental {
        let by = spec.by.as_deref().unwrap_or_default();
        let by_type = column_type_of(source_detail.as_ref(), by)?;
        let key = spec.watermark_key();
        let low = watermarks.get(&key).await?;
        let max_sql = format!(
            "SELECT max({}) FROM ({}) AS ferry_max",
            quote_ident(source_engine, by),
            source_sql(source_engine, spec, None)
        );
        let high = query_strings(source.conn(), &max_sql)
            .await?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten());
        let Some(high) = high else {
            return Ok(empty_report(started, None));
        };
        if low.as_deref() == Some(high.as_str()) {
            return Ok(empty_report(started, Some((low, high))));
        }
        let low_lit = low
            .as_deref()
            .map(|l| watermark_literal(l, &by_type))
            .transpose()?;
        let high_lit = watermark_literal(&high, &by_type)?;
        let range = Some((low, high));
        return transfer(
            spec,
            Some(source),
            &mut target,
            source_detail,
            Some((low_lit, high_lit)),
            range,
            watermarks,
            progress,
            started,
        )
        .await;
    }
    transfer(
        spec,
        Some(source),
        &mut target,
        source_detail,
        None,
        None,
        watermarks,
        progress,
        started,
    )
    .await
}

fn empty_report(started: Instant, range: Option<(Option<String>, String)>) -> TransferReport {
    TransferReport {
        rows: 0,
        created_table: false,
        range,
        source_checksum: None,
        target_checksum: None,
        verified: true,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

fn column_type_of(detail: Option<&TableDetail>, column: &str) -> Result<DataType> {
    let Some(detail) = detail else {
        return Ok(DataType::Utf8);
    };
    let c = detail
        .columns
        .iter()
        .find(|c| c.name == column)
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "source table \"{}\" has no column \"{column}\" to follow",
                detail.name
            ))
        })?;
    Ok(c.arrow_type.parse().unwrap_or(DataType::Utf8))
}

/// The source schema with declared decimals refined (MySQL decimals arrive as exact text).
fn refined_schema(schema: &SchemaRef, detail: Option<&TableDetail>) -> SchemaRef {
    let Some(detail) = detail else {
        return schema.clone();
    };
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let declared = detail
                .columns
                .iter()
                .find(|c| c.name == *f.name())
                .map(|c| c.data_type.as_str())
                .unwrap_or("");
            match refine_declared(declared, f.data_type()) {
                Some(t) => Field::new(f.name(), t, true),
                None => f.as_ref().clone(),
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// A batch in the source schema: columns matched by name (files of one import may order them
/// differently) and cast to the schema's types.
fn cast_batch(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    let names_match = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name())
        .eq(schema.fields().iter().map(|f| f.name()));
    let columns = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let column = if names_match {
                batch.column(i)
            } else {
                let index = batch.schema().index_of(f.name()).map_err(|_| {
                    Error::InvalidInput(format!(
                        "a source batch has no column \"{}\" (the first one had it)",
                        f.name()
                    ))
                })?;
                batch.column(index)
            };
            arrow::compute::cast(column, f.data_type()).map_err(|e| {
                Error::Engine(format!(
                    "column \"{}\" does not convert to {}: {e}",
                    f.name(),
                    f.data_type()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if !names_match && batch.num_columns() != schema.fields().len() {
        return Err(Error::InvalidInput(format!(
            "a source batch has {} columns where the first had {}: every file of an import needs the same columns",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::Internal(e.to_string()))
}

#[allow(clippy::too_many_arguments)]
async fn transfer(
    spec: &TransferSpec,
    source: Option<Lease>,
    target: &mut Lease,
    source_detail: Option<TableDetail>,
    range_literals: Option<(Option<String>, String)>,
    range: Option<(Option<String>, String)>,
    watermarks: &dyn WatermarkStore,
    progress: Arc<Progress>,
    started: Instant,
) -> Result<TransferReport> {
    let has_source = source.is_some();
    let source_engine = source
        .as_ref()
        .map(|l| l.pool().connector().engine())
        .unwrap_or(Engine::Postgres);
    let target_engine = target.pool().connector().engine();
    let sql = source_sql(
        source_engine,
        spec,
        range_literals
            .as_ref()
            .map(|(l, h)| (l.as_deref(), h.as_str())),
    );
    tracing::info!(source = %spec.source.display(), target = %spec.target.display(), mode = ?spec.mode, "transfer started");

    // The target first: it must exist (or be created) with compatible columns before rows flow.
    let target_detail = match target_engine {
        Engine::Redis => None,
        _ => match target
            .conn()
            .table(spec.target.schema.as_deref(), &spec.target.table)
            .await
        {
            Ok(d) => Some(d),
            Err(Error::NotFound(_)) => None,
            Err(e) => return Err(e),
        },
    };
    // Reading (and parsing, casting, checksumming) runs in a task of its own, beside the writer.
    let mut resume: Option<ResumePlan> = None;
    let reader = match source {
        Some(mut lease) if spec.resumable => {
            let plan =
                ResumePlan::make(spec, &mut lease, target, &sql, source_detail.as_ref()).await?;
            let first = plan
                .pending
                .first()
                .map(|c| plan.chunk_sql(&sql, c))
                .unwrap_or_else(|| plan.chunk_sql(&sql, &(0, 0)));
            let pool = lease.pool().clone();
            resume = Some(ResumePlan {
                pool: Some(pool),
                ..plan
            });
            SourceReader::start(lease, vec![first], source_detail.clone(), progress.clone()).await?
        }
        Some(mut lease) => {
            // Never more readers than the cap allows, keeping one for the target on the same instance.
            let cap = lease.pool().settings().max_connections;
            let cap = if Arc::ptr_eq(lease.pool(), target.pool()) {
                cap.saturating_sub(1)
            } else {
                cap
            };
            let parallel = spec.parallel.unwrap_or(1).min(cap.max(1));
            let sqls = split_by_key(&mut lease, &sql, source_detail.as_ref(), parallel).await?;
            SourceReader::start(lease, sqls, source_detail.clone(), progress.clone()).await?
        }
        None => SourceReader::files(&spec.source, progress.clone()).await?,
    };
    let schema = reader.schema.clone();
    if target_engine == Engine::Redis {
        let report = write_redis(spec, reader, target, &progress, started).await?;
        if let Some((_, high)) = &range {
            watermarks.set(&spec.watermark_key(), high).await?;
        }
        return Ok(TransferReport { range, ..report });
    }
    let mut created_table = false;
    let columns = match &target_detail {
        Some(detail) => check_target(&schema, detail, spec.allow_lossy)?,
        None if spec.create => {
            check_created(target_engine, &schema, spec.allow_lossy)?;
            let pk = source_detail
                .as_ref()
                .map(|d| d.primary_key.clone())
                .unwrap_or_default();
            // A table source keeps its declared types (on the same engine), NOT NULLs and key.
            let ddl = match (&source_detail, has_source) {
                (Some(detail), true) => crate::diff::create_like(
                    crate::diff::Side {
                        engine: source_engine,
                        table: detail,
                    },
                    target_engine,
                    spec.target.schema.as_deref(),
                    &spec.target.table,
                )?,
                _ => create_table_sql(target_engine, &spec.target, &schema, &pk)?,
            };
            target
                .conn()
                .run(&ddl)
                .await
                .map_err(|e| e.context(format!("creating {}", spec.target.display())))?;
            created_table = true;
            schema.fields().iter().map(|f| f.name().clone()).collect()
        }
        None => {
            return Err(Error::NotFound(format!(
                "target table {} does not exist: create it, or pass --create to let Ferry create it",
                spec.target.display()
            )));
        }
    };
    let resumable = resume.is_some();
    let outcome: Result<TransferReport> = async {
        let upsert_keys = match spec.mode {
            Mode::Upsert => {
                let keys = target_detail
                    .as_ref()
                    .map(|d| d.primary_key.clone())
                    .filter(|k| !k.is_empty())
                    .or_else(|| {
                        source_detail
                            .as_ref()
                            .map(|d| d.primary_key.clone())
                            .filter(|k| !k.is_empty())
                    })
                    .ok_or_else(|| {
                        Error::InvalidInput(format!(
                            "upsert needs a primary key on the target table {}",
                            spec.target.display()
                        ))
                    })?;
                Some(keys)
            }
            _ => None,
        };
        let write_target = WriteTarget {
            schema: spec.target.schema.clone(),
            table: spec.target.table.clone(),
            columns,
            upsert_keys,
        };
        let qualified = qualified_table(
            target_engine,
            spec.target.schema.as_deref(),
            &spec.target.table,
        );
        let range_condition = |engine: Engine| -> Option<String> {
            let (low, high) = range_literals.as_ref()?;
            let by = quote_ident(engine, spec.by.as_deref()?);
            Some(match low {
                Some(low) => format!("{by} > {low} AND {by} <= {high}"),
                None => format!("{by} <= {high}"),
            })
        };

        if let Some(plan) = resume {
            return run_chunks(
                spec,
                plan,
                reader,
                target,
                &write_target,
                &schema,
                &sql,
                source_detail,
                created_table,
                progress,
                started,
            )
            .await;
        }

        // One transaction on the target: clear, write, commit.
        target.conn().run(begin_sql(target_engine)).await?;
        let outcome: Result<(u64, Checksum)> = async {
            match spec.mode {
                Mode::Replace => {
                    let clear = match target_engine {
                        Engine::Postgres => format!("TRUNCATE {qualified}"),
                        _ => format!("DELETE FROM {qualified}"),
                    };
                    target.conn().run(&clear).await?;
                }
                Mode::Incremental => {
                    if let Some(cond) = range_condition(target_engine) {
                        target
                            .conn()
                            .run(&format!("DELETE FROM {qualified} WHERE {cond}"))
                            .await?;
                    }
                }
                Mode::Append | Mode::Upsert => {}
            }
            let written = write(reader.rows, target, &write_target, &progress).await;
            let checksum = match reader.task.await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(e.context("reading the source")),
                Err(e) => return Err(Error::Internal(format!("the source reader stopped: {e}"))),
            };
            Ok((written?, checksum))
        }
        .await;
        let (rows, source_checksum) = match outcome {
            Ok(v) => {
                target.conn().run("COMMIT").await?;
                v
            }
            Err(e) => {
                let _ = target.conn().run("ROLLBACK").await;
                target.close_on_release();
                return Err(e);
            }
        };
        if let Some((_, high)) = &range {
            watermarks.set(&spec.watermark_key(), high).await?;
        }

        // Read the target back and compare, where the target holds exactly what was moved.
        let mut target_checksum = None;
        // Replace and incremental leave the target (or its range) holding exactly the rows moved.
        if spec.verify && matches!(spec.mode, Mode::Replace | Mode::Incremental) {
            let cols = write_target
                .columns
                .iter()
                .map(|c| quote_ident(target_engine, c))
                .collect::<Vec<_>>()
                .join(", ");
            let mut check_sql = format!("SELECT {cols} FROM {qualified}");
            if let Some(cond) = range_condition(target_engine) {
                check_sql.push_str(&format!(" WHERE {cond}"));
            }
            let (_, back) = collect_checksum(target, &check_sql, &schema).await?;
            if back != source_checksum {
                return Err(Error::Engine(format!(
                    "verification failed for {}: the source gave {} rows (checksum {:016x}), the target holds {} (checksum {:016x})",
                    spec.target.display(),
                    source_checksum.rows,
                    source_checksum.sum,
                    back.rows,
                    back.sum
                )));
            }
            target_checksum = Some(back);
        }
        tracing::info!(target = %spec.target.display(), rows, verified = target_checksum.is_some(), "transfer finished");
        Ok(TransferReport {
            rows,
            created_table,
            range,
            verified: target_checksum.is_some(),
            source_checksum: Some(source_checksum),
            target_checksum,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
    .await;
    // A table this transfer created and did not fill completely is dropped again (MySQL commits
    // DDL at once); a resumable copy keeps it, with its committed chunks, for the next run.
    if outcome.is_err() && created_table && !resumable {
        let drop = format!(
            "DROP TABLE {}",
            qualified_table(
                target_engine,
                spec.target.schema.as_deref(),
                &spec.target.table
            )
        );
        if let Err(e) = target.conn().run(&drop).await {
            tracing::warn!(target = %spec.target.display(), error = %e, "could not drop the created target table");
        }
    }
    outcome
}

/// Writes rows as Redis hashes under keys made from the target's key template. HSET replaces the
/// fields it writes, so every mode upserts; keys the source lacks are left alone.
async fn write_redis(
    spec: &TransferSpec,
    reader: SourceReader,
    target: &mut Lease,
    progress: &Progress,
    started: Instant,
) -> Result<TransferReport> {
    let columns: Vec<String> = reader
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    ferry_connect::redis::KeyTemplate::parse(&spec.target.table, &columns)?;
    let write_target = WriteTarget {
        schema: None,
        table: spec.target.table.clone(),
        columns,
        upsert_keys: None,
    };
    let written = write(reader.rows, target, &write_target, progress).await;
    let checksum = reader
        .task
        .await
        .map_err(|e| Error::Internal(format!("the source reader stopped: {e}")))??;
    let rows = written?;
    tracing::info!(target = %spec.target.display(), rows, "transfer into Redis finished");
    Ok(TransferReport {
        rows,
        created_table: false,
        range: None,
        source_checksum: Some(checksum),
        target_checksum: None,
        verified: false,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// The source side of a transfer: a task that runs the source statement on its own lease and
/// sends batches, cast to the (refined) source schema and counted into the checksum.
struct SourceReader {
    schema: SchemaRef,
    rows: mpsc::Receiver<Result<RecordBatch>>,
    task: tokio::task::JoinHandle<Result<Checksum>>,
}

impl SourceReader {
    /// Runs `sqls` (one, or one per key range) on leases of the source pool, the first on `first`,
    /// and merges their batches into one channel; the checksums add up.
    async fn start(
        first: Lease,
        sqls: Vec<String>,
        detail: Option<TableDetail>,
        progress: Arc<Progress>,
    ) -> Result<SourceReader> {
        let pool = first.pool().clone();
        let database = first.database().map(str::to_string);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<SchemaRef>>();
        let (tx, rows) = mpsc::channel::<Result<RecordBatch>>(4 * sqls.len().max(1));
        let mut sqls = sqls.into_iter();
        let first_sql = sqls.next().unwrap_or_default();
        let mut tasks = vec![tokio::spawn(read_partition(
            first,
            first_sql,
            detail.clone(),
            tx.clone(),
            progress.clone(),
            Some(ready_tx),
        ))];
        for sql in sqls {
            let (pool, database, detail, tx, progress) = (
                pool.clone(),
                database.clone(),
                detail.clone(),
                tx.clone(),
                progress.clone(),
            );
            tasks.push(tokio::spawn(async move {
                // Each range waits for its own connection, within the instance's cap.
                match pool
                    .acquire(Feature::AsyncQuery, database.as_deref(), "transfer source")
                    .await
                {
                    Ok(lease) => read_partition(lease, sql, detail, tx, progress, None).await,
                    Err(e) => {
                        let _ = tx.send(Err(e.clone())).await;
                        Err(e)
                    }
                }
            }));
        }
        drop(tx);
        let task = tokio::spawn(async move {
            let mut total = Checksum::default();
            for t in tasks {
                let c = t
                    .await
                    .map_err(|e| Error::Internal(format!("a source reader stopped: {e}")))??;
                total.rows += c.rows;
                total.sum = total.sum.wrapping_add(c.sum);
            }
            Ok(total)
        });
        let schema = ready_rx
            .await
            .map_err(|_| Error::Internal("the source reader ended without an answer".into()))??;
        Ok(SourceReader { schema, rows, task })
    }
}

/// Reads one source statement into the channel, cast to the refined schema and checksummed.
async fn read_partition(
    mut source: Lease,
    sql: String,
    detail: Option<TableDetail>,
    tx: mpsc::Sender<Result<RecordBatch>>,
    progress: Arc<Progress>,
    ready: Option<tokio::sync::oneshot::Sender<Result<SchemaRef>>>,
) -> Result<Checksum> {
    let canceller = source.conn().canceller();
    let failed = |e: Error, ready: Option<tokio::sync::oneshot::Sender<Result<SchemaRef>>>| async {
        match ready {
            Some(r) => {
                let _ = r.send(Err(e));
                Ok(Checksum::default())
            }
            None => {
                let _ = tx.send(Err(e.clone())).await;
                Err(e)
            }
        }
    };
    let (raw, mut batches) = match source.conn().run(&sql).await {
        Ok(StatementOutput::Rows { schema, batches }) => (schema, batches),
        Ok(StatementOutput::Affected(_)) => {
            let e = Error::InvalidInput(
                "the source statement returns no rows: give a table or a SELECT".into(),
            );
            return failed(e, ready).await;
        }
        Err(e) => return failed(e.context("reading the source"), ready).await,
    };
    let schema = refined_schema(&raw, detail.as_ref());
    if let Some(r) = ready
        && r.send(Ok(schema.clone())).is_err()
    {
        return Ok(Checksum::default());
    }
    let mut checksum = Checksum::default();
    while let Some(batch) = batches.next().await {
        let batch = batch.and_then(|b| cast_batch(b, &schema)).and_then(|b| {
            checksum.add(&b, &schema)?;
            Ok(b)
        });
        match batch {
            Ok(b) => {
                progress
                    .rows_read
                    .fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                if tx.send(Ok(b)).await.is_err() {
                    // The writer gave up: stop the source statement too.
                    drop(batches);
                    let _ = canceller.cancel().await;
                    break;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.clone())).await;
                return Err(e);
            }
        }
    }
    Ok(checksum)
}

/// The chunks of a resumable copy: ranges of the integer key, those already committed (with a
/// checkpoint row in the target's `ferry_checkpoints`) skipped.
struct ResumePlan {
    key: String,
    quoted_key: String,
    checkpoint_id: String,
    checkpoints: String,
    pending: Vec<(i128, i128)>,
    fresh: bool,
    pool: Option<Arc<InstancePool>>,
}

fn string_literal(engine: Engine, s: &str) -> String {
    let s = s.replace('\'', "''");
    let s = if engine == Engine::Mysql {
        s.replace('\\', "\\\\")
    } else {
        s
    };
    format!("'{s}'")
}

impl ResumePlan {
    async fn make(
        spec: &TransferSpec,
        source: &mut Lease,
        target: &mut Lease,
        sql: &str,
        detail: Option<&TableDetail>,
    ) -> Result<ResumePlan> {
        let source_engine = source.pool().connector().engine();
        let target_engine = target.pool().connector().engine();
        let key = detail
            .filter(|d| d.primary_key.len() == 1)
            .and_then(|d| {
                let k = &d.primary_key[0];
                let c = d.columns.iter().find(|c| &c.name == k)?;
                matches!(c.arrow_type.as_str(), "Int16" | "Int32" | "Int64").then(|| k.clone())
            })
            .ok_or_else(|| {
                Error::InvalidInput(
                    "--resumable needs a source table with a single integer primary key".into(),
                )
            })?;
        let quoted_key = quote_ident(source_engine, &key);
        let bounds = query_strings(
            source.conn(),
            &format!(
                "SELECT min({quoted_key}), max({quoted_key}), count(*) FROM ({sql}) AS ferry_bounds"
            ),
        )
        .await?;
        let get = |i: usize| {
            bounds
                .first()
                .and_then(|r| r.get(i).cloned().flatten())
                .and_then(|v| v.parse::<i128>().ok())
        };
        let chunk_rows = spec.chunk_rows.unwrap_or(100_000).max(1) as i128;
        let mut chunks = Vec::new();
        if let (Some(low), Some(high), Some(count)) = (get(0), get(1), get(2)) {
            let n = ((count + chunk_rows - 1) / chunk_rows).max(1);
            let span = high - low + 1;
            for i in 0..n {
                chunks.push((low + span * i / n, low + span * (i + 1) / n));
            }
        }
        let checkpoints = qualified_table(
            target_engine,
            spec.target.schema.as_deref(),
            "ferry_checkpoints",
        );
        let id_type = if target_engine == Engine::Mysql {
            "varchar(255)"
        } else {
            "text"
        };
        target
            .conn()
            .run(&format!(
                "CREATE TABLE IF NOT EXISTS {checkpoints} (transfer {id_type} NOT NULL, chunk_low bigint NOT NULL, chunk_high bigint NOT NULL, done integer NOT NULL, PRIMARY KEY (transfer, chunk_low))"
            ))
            .await
            .map_err(|e| e.context("creating the checkpoint table ferry_checkpoints"))?;
        // The same copy (statement, mode, chunk size) continues; any other starts afresh.
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&(sql, format!("{:?}", spec.mode), chunk_rows), &mut hasher);
        let checkpoint_id = format!(
            "{} -> {} #{:016x}",
            spec.source.display(),
            spec.target.display(),
            std::hash::Hasher::finish(&hasher)
        );
        let stored: Vec<(i128, i128, bool)> = query_strings(
            target.conn(),
            &format!(
                "SELECT chunk_low, chunk_high, done FROM {checkpoints} WHERE transfer = {} ORDER BY chunk_low",
                string_literal(target_engine, &checkpoint_id)
            ),
        )
        .await?
        .into_iter()
        .filter_map(|r| {
            let n = |i: usize| r.get(i).cloned().flatten()?.parse::<i128>().ok();
            Some((n(0)?, n(1)?, n(2)? != 0))
        })
        .collect();
        // A resumed copy keeps the chunks it planned first, so ranges never shift between runs.
        let fresh = stored.is_empty();
        let pending = if fresh {
            chunks
        } else {
            stored
                .into_iter()
                .filter(|(_, _, done)| !done)
                .map(|(lo, hi, _)| (lo, hi))
                .collect()
        };
        Ok(ResumePlan {
            key,
            quoted_key,
            checkpoint_id,
            checkpoints,
            pending,
            fresh,
            pool: None,
        })
    }

    fn chunk_sql(&self, sql: &str, (lo, hi): &(i128, i128)) -> String {
        format!(
            "SELECT * FROM ({sql}) AS ferry_chunk WHERE {k} >= {lo} AND {k} < {hi}",
            k = self.quoted_key
        )
    }
}

/// Runs the pending chunks of a resumable copy, each in its own transaction with its checkpoint,
/// then clears the checkpoints and compares whole-table checksums.
#[allow(clippy::too_many_arguments)]
async fn run_chunks(
    spec: &TransferSpec,
    plan: ResumePlan,
    first: SourceReader,
    target: &mut Lease,
    write_target: &WriteTarget,
    schema: &SchemaRef,
    sql: &str,
    detail: Option<TableDetail>,
    created_table: bool,
    progress: Arc<Progress>,
    started: Instant,
) -> Result<TransferReport> {
    let engine = target.pool().connector().engine();
    let qualified = qualified_table(engine, spec.target.schema.as_deref(), &spec.target.table);
    let id = string_literal(engine, &plan.checkpoint_id);
    if plan.fresh {
        // The plan and the emptied target become visible together.
        target.conn().run(begin_sql(engine)).await?;
        let planned: Result<()> = async {
            if spec.mode == Mode::Replace {
                let clear = match engine {
                    Engine::Postgres => format!("TRUNCATE {qualified}"),
                    _ => format!("DELETE FROM {qualified}"),
                };
                target.conn().run(&clear).await?;
            }
            for rows in plan.pending.chunks(500) {
                let values: Vec<String> = rows
                    .iter()
                    .map(|(lo, hi)| format!("({id}, {lo}, {hi}, 0)"))
                    .collect();
                target
                    .conn()
                    .run(&format!(
                        "INSERT INTO {} (transfer, chunk_low, chunk_high, done) VALUES {}",
                        plan.checkpoints,
                        values.join(", ")
                    ))
                    .await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = planned {
            let _ = target.conn().run("ROLLBACK").await;
            target.close_on_release();
            return Err(e.context("recording the chunk plan"));
        }
        target.conn().run("COMMIT").await?;
    }
    let pool = plan
        .pool
        .clone()
        .ok_or_else(|| Error::Internal("a resume plan without its pool".into()))?;
    let mut rows = 0u64;
    let mut first = Some(first);
    // In replace mode a chunk's key range in the target holds exactly the chunk.
    let verify_chunks = spec.verify && spec.mode == Mode::Replace;
    let cols = write_target
        .columns
        .iter()
        .map(|c| quote_ident(engine, c))
        .collect::<Vec<_>>()
        .join(", ");
    let target_key = quote_ident(engine, &plan.key);
    let (mut verified_source, mut verified_target) = (Checksum::default(), Checksum::default());
    for (lo, hi) in &plan.pending {
        let reader = match first.take() {
            Some(r) => r,
            None => {
                let lease = pool
                    .acquire(
                        Feature::AsyncQuery,
                        spec.source.database(),
                        "transfer source",
                    )
                    .await?;
                SourceReader::start(
                    lease,
                    vec![plan.chunk_sql(sql, &(*lo, *hi))],
                    detail.clone(),
                    progress.clone(),
                )
                .await?
            }
        };
        target.conn().run(begin_sql(engine)).await?;
        let outcome: Result<u64> = async {
            // A chunk that failed before its commit left nothing behind: chunks are transactional.
            let written = write(reader.rows, target, write_target, &progress).await;
            let source_sum = reader
                .task
                .await
                .map_err(|e| Error::Internal(format!("a source reader stopped: {e}")))??;
            let written = written?;
            // Each chunk is verified before it commits, so a mismatch names its chunk and every
            // committed chunk (of this run or an earlier one) is known good.
            if verify_chunks {
                let (_, back) = collect_checksum(
                    target,
                    &format!("SELECT {cols} FROM {qualified} WHERE {target_key} >= {lo} AND {target_key} < {hi}"),
                    schema,
                )
                .await?;
                if back != source_sum {
                    return Err(Error::Engine(format!(
                        "verification failed for chunk {lo}..{hi} of {} in {}: the source gave {} rows (checksum {:016x}), the target holds {} (checksum {:016x})",
                        plan.key,
                        spec.target.display(),
                        source_sum.rows,
                        source_sum.sum,
                        back.rows,
                        back.sum
                    )));
                }
                verified_source.rows += source_sum.rows;
                verified_source.sum = verified_source.sum.wrapping_add(source_sum.sum);
                verified_target.rows += back.rows;
                verified_target.sum = verified_target.sum.wrapping_add(back.sum);
            }
            target
                .conn()
                .run(&format!(
                    "UPDATE {} SET done = 1 WHERE transfer = {id} AND chunk_low = {lo}",
                    plan.checkpoints
                ))
                .await?;
            Ok(written)
        }
        .await;
        match outcome {
            Ok(n) => {
                target.conn().run("COMMIT").await?;
                rows += n;
            }
            Err(e) => {
                let _ = target.conn().run("ROLLBACK").await;
                target.close_on_release();
                return Err(e.context(format!("chunk {lo}..{hi} of {}", plan.key)));
            }
        }
    }
    target
        .conn()
        .run(&format!(
            "DELETE FROM {} WHERE transfer = {id}",
            plan.checkpoints
        ))
        .await?;
    let (source_checksum, target_checksum) = if verify_chunks {
        (Some(verified_source), Some(verified_target))
    } else {
        (None, None)
    };
    Ok(TransferReport {
        rows,
        created_table,
        range: None,
        verified: target_checksum.is_some(),
        source_checksum,
        target_checksum,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Splits a table source into `parallel` statements by ranges of its integer primary key, or
/// returns the one statement when it cannot be split.
async fn split_by_key(
    source: &mut Lease,
    sql: &str,
    detail: Option<&TableDetail>,
    parallel: u32,
) -> Result<Vec<String>> {
    let engine = source.pool().connector().engine();
    let key = detail.filter(|d| d.primary_key.len() == 1).and_then(|d| {
        let k = &d.primary_key[0];
        let c = d.columns.iter().find(|c| &c.name == k)?;
        matches!(c.arrow_type.as_str(), "Int16" | "Int32" | "Int64").then(|| k.clone())
    });
    let Some(key) = key.filter(|_| parallel > 1) else {
        if parallel > 1 {
            tracing::info!(
                "the source has no single integer primary key: reading it with one connection"
            );
        }
        return Ok(vec![sql.to_string()]);
    };
    let k = quote_ident(engine, &key);
    let bounds = query_strings(
        source.conn(),
        &format!("SELECT min({k}), max({k}) FROM ({sql}) AS ferry_bounds"),
    )
    .await?;
    let parse = |i: usize| {
        bounds
            .first()
            .and_then(|r| r.get(i).cloned().flatten())
            .and_then(|v| v.parse::<i64>().ok())
    };
    let (Some(low), Some(high)) = (parse(0), parse(1)) else {
        return Ok(vec![sql.to_string()]);
    };
    let span = (high as i128 - low as i128 + 1).max(1);
    let n = (parallel as i128).min(span);
    let mut sqls = Vec::new();
    for i in 0..n {
        let from = low as i128 + span * i / n;
        let to = low as i128 + span * (i + 1) / n;
        sqls.push(format!(
            "SELECT * FROM ({sql}) AS ferry_part WHERE {k} >= {from} AND {k} < {to}"
        ));
    }
    Ok(sqls)
}

impl SourceReader {
    /// Reads files (Parquet, CSV, JSON Lines) from disk or object storage.
    async fn files(source: &SourceSpec, progress: Arc<Progress>) -> Result<SourceReader> {
        let SourceSpec::Files {
            url,
            format,
            options,
            partitions,
        } = source
        else {
            return Err(Error::Internal(
                "a file reader for a database source".into(),
            ));
        };
        let location = crate::files::open_location(url, options)?;
        let (schema, mut batches) =
            crate::files::read_files(&location, *format, partitions).await?;
        let (tx, rows) = mpsc::channel::<Result<RecordBatch>>(4);
        let task_schema = schema.clone();
        let task = tokio::spawn(async move {
            let mut checksum = Checksum::default();
            while let Some(batch) = batches.next().await {
                let batch = batch
                    .and_then(|b| cast_batch(b, &task_schema))
                    .and_then(|b| {
                        checksum.add(&b, &task_schema)?;
                        Ok(b)
                    });
                let failed = batch.as_ref().err().cloned();
                if let Ok(b) = &batch {
                    progress
                        .rows_read
                        .fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                }
                if tx.send(batch).await.is_err() {
                    break;
                }
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            Ok(checksum)
        });
        Ok(SourceReader { schema, rows, task })
    }
}

/// Writes what the reader sends into the target.
async fn write(
    mut rows: mpsc::Receiver<Result<RecordBatch>>,
    target: &mut Lease,
    write_target: &WriteTarget,
    progress: &Progress,
) -> Result<u64> {
    let stream: BatchStream<'_> = Box::pin(
        futures::stream::poll_fn(move |cx| rows.poll_recv(cx)).inspect(|b| {
            if let Ok(b) = b {
                progress
                    .rows_written
                    .fetch_add(b.num_rows() as u64, Ordering::Relaxed);
            }
        }),
    );
    target
        .conn()
        .write(write_target, stream)
        .await
        .map_err(|e| e.context(format!("writing {}", write_target.table)))
}

async fn collect_checksum(
    lease: &mut Lease,
    sql: &str,
    schema: &SchemaRef,
) -> Result<(SchemaRef, Checksum)> {
    let (back_schema, batches) = collect(lease.conn().run(sql).await?).await?;
    let mut c = Checksum::default();
    for b in &batches {
        c.add(b, schema)?;
    }
    Ok((back_schema, c))
}

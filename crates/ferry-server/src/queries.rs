//! Asynchronous queries: submitted, run in the background on a lease of their own, their
//! result spooled to an Arrow IPC file in the data directory; status, pages and downloads are
//! served from the spool without running the query again.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ferry_connect::{Canceller, StatementOutput, script};
use ferry_core::{Error, Feature, Result};
use ferry_meta::{QueryRecord, now_ms};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::SharedState;
use crate::encode::{ColumnDto, Format, StreamEncoder, columns_of, json_rows};
use crate::guard::{Admitted, Guard};
use crate::rbac::Caller;

/// Queries running on this node.
#[derive(Default)]
pub struct AsyncQueries {
    running: Mutex<HashMap<String, RunningQuery>>,
}

struct RunningQuery {
    task: tokio::task::AbortHandle,
    canceller: Arc<Mutex<Option<Arc<dyn Canceller>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AsyncQueries {
    pub fn cancel_all(&self) {
        for (_, q) in lock(&self.running).drain() {
            q.task.abort();
        }
    }
}

/// A request to run a query in the background.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitQuery {
    pub instance: String,
    pub database: Option<String>,
    /// One statement that returns rows.
    pub sql: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueryDto {
    pub id: String,
    pub instance: String,
    pub database: Option<String>,
    pub sql: String,
    /// queued, running, succeeded, failed or cancelled.
    pub status: String,
    pub error: Option<String>,
    /// Rows spooled so far (progress while running).
    pub rows: i64,
    /// Bytes of the spool file.
    pub bytes: i64,
    pub columns: Option<Vec<ColumnDto>>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

impl From<QueryRecord> for QueryDto {
    fn from(r: QueryRecord) -> Self {
        QueryDto {
            columns: r
                .columns
                .as_deref()
                .and_then(|c| serde_json::from_str(c).ok()),
            id: r.id,
            instance: r.instance,
            database: r.database,
            sql: r.sql,
            status: r.status,
            error: r.error,
            rows: r.rows,
            bytes: r.bytes,
            created_at_ms: r.created_at_ms,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
        }
    }
}

/// Which part of a spooled result to return.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ResultParams {
    /// json (a page, default), ndjson, csv or arrow (the whole result, streamed).
    #[serde(default)]
    pub format: Format,
    /// First row of the page (json only).
    pub offset: Option<usize>,
    /// Rows in the page (json only; default the interactive limit).
    pub limit: Option<usize>,
}

fn spool_dir(state: &SharedState) -> PathBuf {
    state.config.data_dir.join("queries")
}

/// An async query the caller may see: their own, or any for an administrator (others' are
/// "not found").
pub async fn get(state: &SharedState, caller: &Caller, id: &str) -> Result<QueryRecord> {
    let not_found = || {
        Error::NotFound(format!(
            "async query {id} does not exist; list them with `ferry query list`"
        ))
    };
    let rec = state.meta.get_query(id).await?.ok_or_else(not_found)?;
    if !crate::auth::owns(state, caller, "query", id).await? {
        return Err(not_found());
    }
    Ok(rec)
}

/// The caller's async queries (every one for an administrator), newest first.
pub async fn list(state: &SharedState, caller: &Caller) -> Result<Vec<QueryDto>> {
    let mut out = Vec::new();
    for rec in state.meta.list_queries(200).await? {
        if crate::auth::owns(state, caller, "query", &rec.id).await? {
            out.push(QueryDto::from(rec));
        }
    }
    Ok(out)
}

pub async fn submit(state: &SharedState, caller: &Caller, req: SubmitQuery) -> Result<QueryDto> {
    crate::auth::require_instance(
        state,
        caller,
        crate::rbac::Permission::Read,
        &req.instance,
        req.database.as_deref(),
    )
    .await?;
    let pool = state.pool(&req.instance).await?;
    let engine = pool.connector().engine();
    let statements = script::split_statements(engine, &req.sql);
    if statements.len() != 1 {
        return Err(Error::InvalidInput(format!(
            "an async query is one statement that returns rows, got {} statements",
            statements.len()
        )));
    }
    let guard = Guard::new(
        state,
        caller,
        &req.instance,
        req.database.as_deref(),
        engine,
        "query",
    )
    .await?;
    let admitted = guard
        .admit_all(&statements)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::InvalidInput("no SQL statement given".into()))?;
    std::fs::create_dir_all(spool_dir(state))
        .map_err(|e| Error::Internal(format!("cannot create the spool directory: {e}")))?;
    let mut rec = QueryRecord {
        id: uuid::Uuid::new_v4().to_string(),
        instance: req.instance,
        database: req.database,
        sql: statements.into_iter().next().unwrap_or_default(),
        status: "queued".into(),
        error: None,
        rows: 0,
        bytes: 0,
        result_path: None,
        columns: None,
        created_at_ms: now_ms(),
        started_at_ms: None,
        finished_at_ms: None,
    };
    state.meta.insert_query(&rec).await?;
    state.meta.set_owner("query", &rec.id, &caller.user).await?;
    let canceller = Arc::new(Mutex::new(None));
    let task_state = state.clone();
    let task_rec = rec.clone();
    let task_canceller = canceller.clone();
    // Registered before the task can finish, so a quick query cannot leave a stale entry behind.
    let mut running = lock(&state.queries.running);
    let handle = tokio::spawn(async move {
        let id = task_rec.id.clone();
        let mut rec = task_rec;
        let started = Instant::now();
        let outcome = execute(&task_state, &mut rec, &guard, &admitted, task_canceller).await;
        let rows = outcome.is_ok().then_some(rec.rows as u64);
        guard
            .finish(&admitted, rows, started.elapsed(), outcome.as_ref().err())
            .await;
        rec.finished_at_ms = Some(now_ms());
        match outcome {
            Ok(()) => rec.status = "succeeded".into(),
            Err(e) => {
                rec.status = if matches!(e, Error::Cancelled(_)) {
                    "cancelled".into()
                } else {
                    "failed".into()
                };
                rec.error = Some(e.message().to_string());
            }
        }
        if let Err(e) = task_state.meta.update_query(&rec).await {
            tracing::error!(query = %id, error = %e, "could not record the end of an async query");
        }
        lock(&task_state.queries.running).remove(&id);
    });
    running.insert(
        rec.id.clone(),
        RunningQuery {
            task: handle.abort_handle(),
            canceller,
        },
    );
    drop(running);
    rec.status = "queued".into();
    Ok(rec.into())
}

async fn execute(
    state: &SharedState,
    rec: &mut QueryRecord,
    guard: &Guard,
    admitted: &Admitted,
    canceller: Arc<Mutex<Option<Arc<dyn Canceller>>>>,
) -> Result<()> {
    let pool = state.pool(&rec.instance).await?;
    let mut lease = pool
        .acquire(Feature::AsyncQuery, rec.database.as_deref(), "async query")
        .await?;
    *lock(&canceller) = Some(lease.conn().canceller());
    rec.status = "running".into();
    rec.started_at_ms = Some(now_ms());
    state.meta.update_query(rec).await?;
    let relative = format!("queries/{}.arrow", rec.id);
    let path = state.config.data_dir.join(&relative);
    let partial = path.with_extension("arrow.part");
    let check = guard.mask_plan(lease.conn(), &rec.sql).await?;
    let masker = guard.masker();
    let output = lease
        .conn()
        .run(&rec.sql)
        .await
        .map_err(|e| check.shown(e))?;
    let plan = check.plan;
    let (schema, mut batches) = match output {
        StatementOutput::Rows { schema, batches } => (schema, batches),
        StatementOutput::Affected(n) => {
            return Err(Error::InvalidInput(format!(
                "an async query must return rows; this statement changed {n} rows and returned none"
            )));
        }
    };
    let schema = match &plan {
        Some(plan) => crate::guard::masked_schema(plan, &schema)?,
        None => schema,
    };
    let mut row_cap = admitted.row_cap.map(|n| n as i64);
    rec.columns = serde_json::to_string(&columns_of(&schema)).ok();
    let (tx, mut rx) = mpsc::channel::<RecordBatch>(4);
    let writer_schema = schema.clone();
    let writer_path = partial.clone();
    // Arrow's file writer is blocking: it runs on its own thread, fed through a bounded channel.
    let writer = tokio::task::spawn_blocking(move || -> Result<u64> {
        let file = File::create(&writer_path).map_err(|e| {
            Error::Internal(format!("cannot create {}: {e}", writer_path.display()))
        })?;
        let mut w = FileWriter::try_new(std::io::BufWriter::new(file), &writer_schema)
            .map_err(|e| Error::Internal(e.to_string()))?;
        while let Some(batch) = rx.blocking_recv() {
            w.write(&batch)
                .map_err(|e| Error::Internal(format!("writing the spool: {e}")))?;
        }
        w.finish().map_err(|e| Error::Internal(e.to_string()))?;
        Ok(std::fs::metadata(&writer_path)
            .map(|m| m.len())
            .unwrap_or(0))
    });
    let mut last_report = Instant::now();
    let mut failure = None;
    while let Some(batch) = batches.next().await {
        let batch = match (&plan, batch) {
            (Some(plan), Ok(b)) => crate::guard::apply_mask(&masker, plan, &b),
            (_, b) => b,
        };
        match batch {
            Ok(mut b) => {
                if let Some(cap) = row_cap.as_mut() {
                    if *cap <= 0 {
                        break;
                    }
                    if b.num_rows() as i64 > *cap {
                        b = b.slice(0, *cap as usize);
                    }
                    *cap -= b.num_rows() as i64;
                }
                rec.rows += b.num_rows() as i64;
                if tx.send(b).await.is_err() {
                    break;
                }
                if last_report.elapsed() > Duration::from_secs(1) {
                    last_report = Instant::now();
                    let _ = state.meta.update_query(rec).await;
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(batches);
    drop(tx);
    let written = writer.await.map_err(|e| Error::Internal(e.to_string()))?;
    if let Some(e) = failure {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    rec.bytes = written? as i64;
    std::fs::rename(&partial, &path)
        .map_err(|e| Error::Internal(format!("cannot finish the spool file: {e}")))?;
    rec.result_path = Some(relative);
    Ok(())
}

pub async fn cancel(state: &SharedState, caller: &Caller, id: &str) -> Result<QueryDto> {
    let mut rec = get(state, caller, id).await?;
    let running = lock(&state.queries.running).remove(id);
    let Some(q) = running else {
        return Err(Error::Conflict(format!(
            "async query {id} already ended ({}); nothing to cancel",
            rec.status
        )));
    };
    let canceller = lock(&q.canceller).clone();
    if let Some(c) = canceller {
        let _ = c.cancel().await;
    }
    q.task.abort();
    rec.status = "cancelled".into();
    rec.error = Some("cancelled by request".into());
    rec.finished_at_ms = Some(now_ms());
    state.meta.update_query(&rec).await?;
    if let Some(p) = rec
        .result_path
        .as_ref()
        .map(|p| state.config.data_dir.join(p))
    {
        let _ = std::fs::remove_file(p);
    }
    Ok(rec.into())
}

fn open_spool(
    state: &SharedState,
    rec: &QueryRecord,
) -> Result<FileReader<std::io::BufReader<File>>> {
    if rec.status != "succeeded" {
        return Err(Error::Conflict(format!(
            "async query {} has no result yet: it is {}{}",
            rec.id,
            rec.status,
            rec.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )));
    }
    let path = state
        .config
        .data_dir
        .join(rec.result_path.as_deref().unwrap_or_default());
    let file = File::open(&path).map_err(|e| {
        Error::NotFound(format!(
            "the result of async query {} is gone ({e})",
            rec.id
        ))
    })?;
    FileReader::try_new(std::io::BufReader::new(file), None)
        .map_err(|e| Error::Internal(e.to_string()))
}

/// A page of the result as JSON, or the whole result streamed in another format.
pub async fn result(
    state: &SharedState,
    caller: &Caller,
    id: &str,
    params: ResultParams,
) -> Result<Response> {
    let rec = get(state, caller, id).await?;
    let reader = open_spool(state, &rec)?;
    if params.format == Format::Json {
        let offset = params.offset.unwrap_or(0);
        let limit = params
            .limit
            .unwrap_or(state.config.row_limit)
            .min(state.config.max_interactive_rows);
        let schema = reader.schema();
        let page = tokio::task::spawn_blocking(move || -> Result<Vec<RecordBatch>> {
            let mut seen = 0usize;
            let mut out = Vec::new();
            let mut taken = 0usize;
            for batch in reader {
                if taken >= limit {
                    break;
                }
                let batch = batch.map_err(|e| Error::Internal(e.to_string()))?;
                let n = batch.num_rows();
                let end = seen + n;
                if end > offset {
                    let start = offset.saturating_sub(seen);
                    let len = (n - start).min(limit - taken);
                    out.push(batch.slice(start, len));
                    taken += len;
                }
                seen = end;
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        let count: usize = page.iter().map(RecordBatch::num_rows).sum();
        return Ok(axum::Json(serde_json::json!({
            "id": rec.id,
            "columns": columns_of(&schema),
            "offset": offset,
            "row_count": count,
            "total_rows": rec.rows,
            "rows": json_rows(&page)?,
        }))
        .into_response());
    }
    let format = params.format;
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let schema = reader.schema();
        let mut encoder = match StreamEncoder::new(format, &schema) {
            Ok(e) => e,
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                return;
            }
        };
        if tx.blocking_send(Ok(encoder.take())).is_err() {
            return;
        }
        for batch in reader {
            let chunk = batch
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|b| {
                    encoder
                        .encode(&b)
                        .map_err(|e| std::io::Error::other(e.to_string()))
                });
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
        if let Ok(tail) = encoder.finish() {
            let _ = tx.blocking_send(Ok(tail));
        }
    });
    let body = Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}

//! The SQL console: runs a script statement by statement on one lease and answers with each
//! statement's result (interactive, row-limited JSON), or streams one statement's full result
//! as NDJSON, CSV or Arrow IPC with bounded memory.

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ferry_connect::pool::{Revocation, RuntimeWatch};
use ferry_connect::{InstancePool, Lease, StatementOutput, script};
use ferry_core::{Error, KillPolicy, Result};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::SharedState;
use crate::encode::{ColumnDto, Format, StreamEncoder, columns_of, json_rows};
use crate::guard::{self, Admitted, Guard};
use crate::rbac::Caller;
use ferry_guard::MaskPlan;

/// A console request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// One statement or a script of statements separated by `;` (Redis: one command per line).
    pub sql: String,
    /// The database to connect to (the URL's own when omitted). Ignored in SQL windows.
    pub database: Option<String>,
    /// `json` (default) answers every statement with at most `limit` rows; `ndjson`, `csv` and
    /// `arrow` stream one statement's full result.
    #[serde(default)]
    pub format: Format,
    /// Row limit: for `json` defaults to the server's interactive limit (1000); for streamed
    /// formats, no limit unless given.
    pub limit: Option<usize>,
    /// Run the remaining statements of a script after one fails.
    #[serde(default)]
    pub continue_on_error: bool,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDto {
    pub code: String,
    pub message: String,
}

impl From<&Error> for ErrorDto {
    fn from(e: &Error) -> Self {
        ErrorDto {
            code: e.code().to_string(),
            message: e.message().to_string(),
        }
    }
}

/// One statement's outcome.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatementResult {
    pub statement: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<ColumnDto>>,
    /// Rows as objects keyed by column name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub rows: Option<Box<serde_json::value::RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row_count: Option<usize>,
    /// More rows existed than the limit allowed.
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affected: Option<u64>,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDto>,
}

/// The answer to a JSON console request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScriptResult {
    pub results: Vec<StatementResult>,
    /// The SQL window it ran in, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Whether the connection is inside a transaction afterwards.
    pub in_transaction: bool,
}

/// Checks the request and splits it; nothing has run yet.
pub fn plan(
    state: &SharedState,
    engine: ferry_core::Engine,
    req: &SqlRequest,
) -> Result<(Vec<String>, Option<usize>)> {
    let statements = script::split_statements(engine, &req.sql);
    if statements.is_empty() {
        return Err(Error::InvalidInput("no SQL statement given".into()));
    }
    let limit = match (req.format, req.limit) {
        (Format::Json, None) => Some(state.config.row_limit),
        (Format::Json, Some(n)) if n > state.config.max_interactive_rows || n == 0 => {
            return Err(Error::InvalidInput(format!(
                "interactive results hold at most {} rows, {} asked: stream the result with format csv, ndjson or arrow, or submit an async query",
                state.config.max_interactive_rows,
                if n == 0 {
                    "unlimited".to_string()
                } else {
                    n.to_string()
                }
            )));
        }
        (_, Some(0)) => None,
        (_, limit) => limit,
    };
    if req.format != Format::Json && statements.len() != 1 {
        return Err(Error::InvalidInput(format!(
            "streamed formats (ndjson, csv, arrow) take exactly one statement, got {}: use format json for scripts",
            statements.len()
        )));
    }
    Ok((statements, limit))
}

fn max_runtime(lease: &Lease) -> Option<Duration> {
    KillPolicy::duration(lease.pool().policy().max_statement_secs)
}

/// Explains an error of a statement that a policy cancelled.
fn explain(e: Error, watch: &RuntimeWatch, pool: &InstancePool, revocation: &Revocation) -> Error {
    if watch.fired() {
        Error::Cancelled(format!(
            "statement cancelled on the server: it ran longer than max_statement_secs = {} of instance \"{}\"",
            pool.policy().max_statement_secs,
            pool.name()
        ))
    } else if let Some(reason) = revocation.reason() {
        Error::Cancelled(format!("statement cancelled: {reason}"))
    } else {
        e
    }
}

/// Runs admitted statements one after another on a lease, keeping at most `limit` rows of
/// each, masking what the guard says, and auditing each outcome.
pub async fn run_interactive(
    state: &SharedState,
    lease: &mut Lease,
    guard: &Guard,
    statements: Vec<Admitted>,
    limit: Option<usize>,
    continue_on_error: bool,
) -> Vec<StatementResult> {
    let mut results = Vec::with_capacity(statements.len());
    let instance = lease.pool().name().to_string();
    for admitted in statements {
        let sql = admitted.sql.clone();
        let started = Instant::now();
        let outcome = match lease.revoked() {
            Some(reason) => Err(Error::Cancelled(format!(
                "the SQL window was closed by a policy: {reason}"
            ))),
            None => {
                let watch = lease.watch_runtime(max_runtime(lease), "console statement");
                let (pool, revocation) = (lease.pool().clone(), lease.revocation());
                let r = run_guarded(lease, guard, &admitted, limit).await;
                r.map_err(|e| explain(e, &watch, &pool, &revocation))
            }
        };
        let duration = started.elapsed();
        let rows = match &outcome {
            Ok(Outcome::Rows { batches, .. }) => {
                Some(batches.iter().map(|b| b.num_rows() as u64).sum())
            }
            Ok(Outcome::Affected(n)) => Some(*n),
            Err(_) => None,
        };
        guard
            .finish(&admitted, rows, duration, outcome.as_ref().err())
            .await;
        state
            .metrics
            .statement(&instance, outcome.is_ok(), duration);
        let failed = outcome.is_err();
        results.push(match outcome {
            Ok(Outcome::Rows { columns, batches, truncated }) => {
                let row_count = batches.iter().map(RecordBatch::num_rows).sum();
                match json_rows(&batches) {
                    Ok(rows) => StatementResult {
                        statement: sql,
                        columns: Some(columns),
                        rows: Some(rows),
                        row_count: Some(row_count),
                        truncated,
                        affected: None,
                        duration_ms: ms(duration),
                        error: None,
                    },
                    Err(e) => error_result(sql, duration, &e),
                }
            }
            Ok(Outcome::Affected(n)) => StatementResult {
                statement: sql,
                columns: None,
                rows: None,
                row_count: None,
                truncated: false,
                affected: Some(n),
                duration_ms: ms(duration),
                error: None,
            },
            Err(e) => {
                tracing::info!(instance = %instance, code = e.code(), error = %e, "console statement failed");
                error_result(sql, duration, &e)
            }
        });
        if failed && !continue_on_error {
            break;
        }
    }
    results
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn error_result(statement: String, duration: Duration, e: &Error) -> StatementResult {
    StatementResult {
        statement,
        columns: None,
        rows: None,
        row_count: None,
        truncated: false,
        affected: None,
        duration_ms: ms(duration),
        error: Some(e.into()),
    }
}

enum Outcome {
    Rows {
        columns: Vec<ColumnDto>,
        batches: Vec<RecordBatch>,
        truncated: bool,
    },
    Affected(u64),
}

/// Runs one admitted statement: masked, within its row cap, and inside a savepoint that is
/// rolled back when it changes more rows than `max-affected-rows` allows.
async fn run_guarded(
    lease: &mut Lease,
    guard: &Guard,
    admitted: &Admitted,
    limit: Option<usize>,
) -> Result<Outcome> {
    let check = guard.mask_plan(lease.conn(), &admitted.sql).await?;
    let plan = check.plan.as_ref();
    let limit = match (limit, admitted.row_cap) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let Some(cap) = admitted.affected_cap else {
        return run_one(lease, &admitted.sql, limit, plan, guard)
            .await
            .map_err(|e| check.shown(e));
    };
    let nested = lease.connection().in_transaction();
    let (open, keep, undo) = if nested {
        (
            "SAVEPOINT ferry_rule_cap",
            "RELEASE SAVEPOINT ferry_rule_cap",
            "ROLLBACK TO SAVEPOINT ferry_rule_cap",
        )
    } else {
        ("BEGIN", "COMMIT", "ROLLBACK")
    };
    lease.conn().run(open).await?;
    let outcome = run_one(lease, &admitted.sql, limit, plan, guard)
        .await
        .map_err(|e| check.shown(e));
    match outcome {
        Ok(Outcome::Affected(n)) if n > cap => {
            lease.conn().run(undo).await?;
            if nested {
                lease.conn().run(keep).await?;
            }
            Err(Error::PermissionDenied(format!(
                "rule max-affected-rows on instance \"{}\": the statement changed {n} rows, more than the {cap} allowed, and was rolled back; change fewer rows at a time",
                guard.instance
            )))
        }
        Ok(o) => {
            lease.conn().run(keep).await?;
            Ok(o)
        }
        Err(e) => {
            let _ = lease.conn().run(undo).await;
            if nested {
                let _ = lease.conn().run(keep).await;
            }
            Err(e)
        }
    }
}

async fn run_one(
    lease: &mut Lease,
    sql: &str,
    limit: Option<usize>,
    plan: Option<&MaskPlan>,
    guard: &Guard,
) -> Result<Outcome> {
    let canceller = lease.conn().canceller();
    let masker = plan.map(|_| guard.masker());
    let (schema, mut stream) = match lease.conn().run(sql).await? {
        StatementOutput::Affected(n) => return Ok(Outcome::Affected(n)),
        StatementOutput::Rows { schema, batches } => (schema, batches),
    };
    let limit = limit.unwrap_or(usize::MAX);
    let mut kept = Vec::new();
    let mut count = 0usize;
    let mut truncated = false;
    let schema = match plan {
        Some(plan) => guard::masked_schema(plan, &schema)?,
        None => schema,
    };
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        let batch = match (plan, &masker) {
            (Some(plan), Some(masker)) => guard::apply_mask(masker, plan, &batch)?,
            _ => batch,
        };
        if count + batch.num_rows() > limit {
            kept.push(batch.slice(0, limit - count));
            truncated = true;
            break;
        }
        count += batch.num_rows();
        kept.push(batch);
    }
    drop(stream);
    if truncated {
        // Stop the server from producing rows nobody will read.
        let _ = canceller.cancel().await;
    }
    Ok(Outcome::Rows {
        columns: columns_of(&kept.first().map(|b| b.schema()).unwrap_or(schema)),
        batches: kept,
        truncated,
    })
}

/// Something that owns a lease for as long as a streamed result runs.
pub trait LeaseHolder: Send + 'static {
    fn lease(&mut self) -> &mut Lease;
}

impl LeaseHolder for Lease {
    fn lease(&mut self) -> &mut Lease {
        self
    }
}

/// Streams one statement's result in a streamed format. The statement starts before the
/// response does, so an error in it (syntax, missing table) is an ordinary error response.
pub async fn stream_statement<H: LeaseHolder>(
    state: SharedState,
    mut holder: H,
    guard: Guard,
    admitted: Admitted,
    format: Format,
    limit: Option<usize>,
) -> Result<Response> {
    let (ready_tx, ready_rx) = oneshot::channel::<Result<Option<u64>>>();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let sql = admitted.sql.clone();
    let limit = match (limit, admitted.row_cap) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    tokio::spawn(async move {
        let lease = holder.lease();
        let instance = lease.pool().name().to_string();
        let started = Instant::now();
        let check = match guard.mask_plan(lease.conn(), &sql).await {
            Ok(c) => c,
            Err(e) => {
                guard
                    .finish(&admitted, None, started.elapsed(), Some(&e))
                    .await;
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let masker = guard.masker();
        let plan = check.plan.as_ref();
        let watch = lease.watch_runtime(max_runtime(lease), "console statement");
        let canceller = lease.conn().canceller();
        let (pool, revocation) = (lease.pool().clone(), lease.revocation());
        let output = if admitted.affected_cap.is_some() {
            // A capped change needs its savepoint: run it the interactive way.
            match run_guarded(lease, &guard, &admitted, None).await {
                Ok(Outcome::Affected(n)) => Ok(StatementOutput::Affected(n)),
                Ok(Outcome::Rows { .. }) => Err(Error::Unsupported(
                    "a change that returns rows cannot be streamed under max-affected-rows: use format json".into(),
                )),
                Err(e) => Err(e),
            }
        } else {
            lease.conn().run(&sql).await
        };
        let (schema, mut batches) = match output {
            Err(e) => {
                let e = check.shown(explain(e, &watch, &pool, &revocation));
                state.metrics.statement(&instance, false, started.elapsed());
                guard
                    .finish(&admitted, None, started.elapsed(), Some(&e))
                    .await;
                let _ = ready_tx.send(Err(e));
                return;
            }
            Ok(StatementOutput::Affected(n)) => {
                state.metrics.statement(&instance, true, started.elapsed());
                guard
                    .finish(&admitted, Some(n), started.elapsed(), None)
                    .await;
                let _ = ready_tx.send(Ok(Some(n)));
                return;
            }
            Ok(StatementOutput::Rows { schema, batches }) => (schema, batches),
        };
        let schema = match plan {
            Some(plan) => match guard::masked_schema(plan, &schema) {
                Ok(s) => s,
                Err(e) => {
                    let _ = canceller.cancel().await;
                    guard
                        .finish(&admitted, None, started.elapsed(), Some(&e))
                        .await;
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            },
            None => schema,
        };
        let encoder = match StreamEncoder::new(format, &schema) {
            Ok(e) => e,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let mask = |b: Result<RecordBatch>| -> Result<RecordBatch> {
            match plan {
                Some(plan) => guard::apply_mask(&masker, plan, &b?),
                None => b,
            }
            .map_err(|e| check.shown(e))
        };
        // Wait for the first rows, so that errors before them (a cancelled or failing statement)
        // still get an ordinary error response.
        let mut first = batches.next().await.map(mask);
        if let Some(Err(e)) = first {
            let e = explain(e, &watch, &pool, &revocation);
            state.metrics.statement(&instance, false, started.elapsed());
            guard
                .finish(&admitted, None, started.elapsed(), Some(&e))
                .await;
            let _ = ready_tx.send(Err(e));
            return;
        }
        let _ = ready_tx.send(Ok(None));
        // Encoding runs in a task of its own, so reading and encoding overlap on two cores.
        let (batch_tx, batch_rx) = mpsc::channel::<Result<RecordBatch, String>>(2);
        tokio::spawn(encode_batches(encoder, batch_rx, tx));
        let mut ok = true;
        let mut remaining = limit.unwrap_or(usize::MAX);
        let mut failure = None;
        let mut sent = 0u64;
        while ok && remaining > 0 {
            let next = match first.take() {
                Some(b) => Some(b),
                None => batches.next().await.map(mask),
            };
            let Some(batch) = next else {
                break;
            };
            match batch {
                Ok(b) => {
                    let b = if b.num_rows() > remaining {
                        b.slice(0, remaining)
                    } else {
                        b
                    };
                    remaining -= b.num_rows();
                    sent += b.num_rows() as u64;
                    ok = batch_tx.send(Ok(b)).await.is_ok();
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let finished = failure.is_none() && ok && (remaining > 0 || batches.next().await.is_none());
        drop(batches);
        if !finished {
            // Client gone, limit reached or an error: stop the statement on the server.
            let _ = canceller.cancel().await;
        }
        state
            .metrics
            .statement(&instance, failure.is_none(), started.elapsed());
        guard
            .finish(&admitted, Some(sent), started.elapsed(), failure.as_ref())
            .await;
        match failure {
            Some(e) => {
                let e = explain(e, &watch, &pool, &revocation);
                tracing::warn!(instance = %instance, error = %e, "streamed result ended with an error");
                let _ = batch_tx.send(Err(e.to_string())).await;
            }
            None if !ok => {
                tracing::info!(instance = %instance, "client stopped reading a streamed result")
            }
            None => {}
        }
    });
    match ready_rx.await {
        Ok(Ok(None)) => {
            let body = Body::from_stream(tokio_stream_from(rx));
            Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
        }
        Ok(Ok(Some(affected))) => {
            Ok(axum::Json(serde_json::json!({ "affected": affected })).into_response())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Internal(
            "the statement task ended without an answer".into(),
        )),
    }
}

/// Encodes batches into body chunks until the batches end (then the format's tail follows) or
/// an error arrives (then the body ends with it, so the client sees a broken transfer).
async fn encode_batches(
    mut encoder: StreamEncoder,
    mut batches: mpsc::Receiver<Result<RecordBatch, String>>,
    body: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    if body.send(Ok(encoder.take())).await.is_err() {
        return;
    }
    while let Some(piece) = batches.recv().await {
        let chunk = piece.map_err(std::io::Error::other).and_then(|batch| {
            encoder
                .encode(&batch)
                .map_err(|e| std::io::Error::other(e.to_string()))
        });
        let failed = chunk.is_err();
        if body.send(chunk).await.is_err() || failed {
            return;
        }
    }
    if let Ok(tail) = encoder.finish() {
        let _ = body.send(Ok(tail)).await;
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Runs a console request on a fresh lease of the instance's pool.
pub async fn run_request(
    state: &SharedState,
    caller: &Caller,
    instance: &str,
    req: SqlRequest,
) -> Result<Response> {
    let pool = state.pool(instance).await?;
    let engine = pool.connector().engine();
    let (statements, limit) = plan(state, engine, &req)?;
    let guard = Guard::new(
        state,
        caller,
        instance,
        req.database.as_deref(),
        engine,
        "console",
    )
    .await?;
    let statements = guard.admit_all(&statements).await?;
    let mut lease = pool
        .acquire(
            ferry_core::Feature::Console,
            req.database.as_deref(),
            "console",
        )
        .await?;
    if req.format == Format::Json {
        let results = run_interactive(
            state,
            &mut lease,
            &guard,
            statements,
            limit,
            req.continue_on_error,
        )
        .await;
        let in_transaction = lease.connection().in_transaction();
        return Ok(axum::Json(ScriptResult {
            results,
            session: None,
            in_transaction,
        })
        .into_response());
    }
    let admitted = statements
        .into_iter()
        .next()
        .ok_or_else(|| Error::InvalidInput("no SQL statement given".into()))?;
    stream_statement(state.clone(), lease, guard, admitted, req.format, limit).await
}

//! Transfers and exports as background jobs: submitted with a spec, run on leases of both instances'
//! pools, with progress and the final report recorded in the metadata store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::{Error, Result};
use ferry_meta::{MetaStore, TransferRecord, now_ms};
use ferry_move::{
    ExportSpec, Progress, SourceSpec, TransferSpec, WatermarkStore, run_export_mapped, run_transfer,
};
use serde::Serialize;

use crate::SharedState;
use crate::guard::Guard;
use crate::rbac::{Caller, Permission, Resource};

/// Transfers running on this node.
#[derive(Default)]
pub struct Transfers {
    running: Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Transfers {
    pub fn cancel_all(&self) {
        for (_, t) in lock(&self.running).drain() {
            t.abort();
        }
    }
}

/// A transfer as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TransferDto {
    pub id: String,
    /// The source, as `instance:table` or `instance:(query)`.
    pub source: String,
    /// The target, as `instance:table`.
    pub target: String,
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// queued, running, succeeded, failed or cancelled.
    pub status: String,
    pub error: Option<String>,
    pub rows_read: i64,
    pub rows_written: i64,
    /// The source's row estimate, when the catalog has one.
    pub rows_expected: Option<i64>,
    #[schema(value_type = Option<Object>)]
    pub report: Option<serde_json::Value>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

impl From<TransferRecord> for TransferDto {
    fn from(r: TransferRecord) -> Self {
        let (source, target) = match serde_json::from_str::<JobSpec>(&r.spec) {
            Ok(JobSpec::Transfer(t)) => (t.source.display(), t.target.display()),
            Ok(JobSpec::Export(e)) => (e.source.display(), e.url.clone()),
            Err(_) => (String::new(), String::new()),
        };
        TransferDto {
            source,
            target,
            spec: serde_json::from_str(&r.spec).unwrap_or(serde_json::Value::Null),
            report: r
                .report
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok()),
            id: r.id,
            status: r.status,
            error: r.error,
            rows_read: r.rows_read,
            rows_written: r.rows_written,
            rows_expected: r.rows_expected,
            created_at_ms: r.created_at_ms,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) struct StoreWatermarks(pub(crate) Arc<dyn MetaStore>);

#[async_trait]
impl WatermarkStore for StoreWatermarks {
    async fn get(&self, key: &str) -> Result<Option<String>> {
        self.0.get_watermark(key).await
    }
    async fn set(&self, key: &str, value: &str) -> Result<()> {
        self.0.set_watermark(key, value).await
    }
}

pub async fn get(state: &SharedState, id: &str) -> Result<TransferRecord> {
    state.meta.get_transfer(id).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "transfer {id} does not exist; list them with `ferry transfer list`"
        ))
    })
}

/// What a job record holds: a transfer or an export.
#[derive(serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum JobSpec {
    Transfer(TransferSpec),
    Export(ExportSpec),
}

/// A transfer or export the caller may see (administrators see all; others' are "not found").
pub async fn get_for(state: &SharedState, caller: &Caller, id: &str) -> Result<TransferRecord> {
    let rec = get(state, id).await?;
    if !crate::auth::owns(state, caller, "transfer", id).await? {
        return Err(Error::NotFound(format!(
            "transfer {id} does not exist; list them with `ferry transfer list`"
        )));
    }
    Ok(rec)
}

/// Whether a URL is on the server's own disk (not object storage).
fn is_local(url: &str) -> bool {
    ![
        "s3://", "s3a://", "az://", "azure://", "abfs://", "gs://", "http://", "https://",
    ]
    .iter()
    .any(|p| url.starts_with(p))
}

/// Files on the server's own disk are the server's: reading or writing them needs the
/// `instances` permission; object storage needs only the grants on the database side.
pub fn authorize_location(caller: &Caller, url: &str) -> Result<()> {
    if is_local(url) {
        caller
            .require(Permission::Instances, &Resource::Server)
            .map_err(|e| e.context(format!("{url} is on the server's own disk")))?;
    }
    Ok(())
}

/// Checks that the caller may read a source: a table (`read`), a query (every statement a
/// read they may run), a row filter (a read); returns the masking its rows need for them.
pub async fn authorize_source(
    state: &SharedState,
    caller: &Caller,
    source: &SourceSpec,
    filter: Option<&str>,
    origin: &'static str,
) -> Result<Option<SourceMask>> {
    let (instance, database, sql) = match source {
        SourceSpec::Files { url, .. } => return authorize_location(caller, url).map(|_| None),
        SourceSpec::Table(e) => {
            let table = match &e.schema {
                Some(s) => format!("{s}.{}", e.table),
                None => e.table.clone(),
            };
            (
                &e.instance,
                e.database.as_deref(),
                format!("SELECT * FROM {table}"),
            )
        }
        SourceSpec::Query {
            instance,
            database,
            sql,
        } => (instance, database.as_deref(), sql.clone()),
    };
    crate::auth::require_instance(state, caller, Permission::Read, instance, database).await?;
    let pool = state.pool(instance).await?;
    let engine = pool.connector().engine();
    let guard = Guard::new(state, caller, instance, database, engine, origin).await?;
    let mut checked = vec![sql.clone()];
    if let Some(f) = filter {
        checked.push(format!("SELECT 1 WHERE {f}"));
    }
    for admitted in guard.admit_all(&checked).await? {
        if admitted.class != ferry_guard::StatementClass::Read {
            return Err(Error::PermissionDenied(format!(
                "a source query or row filter must only read; this one is {}: {}",
                admitted.class.as_str(),
                admitted.sql
            )));
        }
    }
    if guard.masks_apply() && engine != ferry_core::Engine::Redis {
        let mut lease = pool
            .acquire(ferry_core::Feature::System, database, "masking check")
            .await?;
        let check = guard.mask_plan(lease.conn(), &sql).await?;
        return Ok(check.plan.map(|plan| SourceMask {
            plan,
            masker: guard.masker(),
        }));
    }
    Ok(None)
}

/// The masking a source needs for the caller: its plan by output column and the masker.
pub struct SourceMask {
    pub plan: ferry_guard::MaskPlan,
    pub masker: ferry_guard::Masker,
}

impl ferry_move::BatchMapper for SourceMask {
    fn schema(&self, source: &arrow::datatypes::SchemaRef) -> Result<arrow::datatypes::SchemaRef> {
        crate::guard::masked_schema(&self.plan, source)
    }
    fn map(&self, batch: arrow::array::RecordBatch) -> Result<arrow::array::RecordBatch> {
        crate::guard::apply_mask(&self.masker, &self.plan, &batch)
    }
    fn keeps(&self, index: usize) -> bool {
        self.plan.columns.get(index).is_some_and(|m| m.is_none())
    }
}

/// Refuses a source with columns masked for the caller where the data would leave unmasked
/// (copies into tables, flows).
pub fn refuse_masked(source: &SourceSpec, caller: &Caller, mask: Option<SourceMask>) -> Result<()> {
    match mask {
        Some(_) => Err(Error::PermissionDenied(format!(
            "{} holds columns masked for user \"{}\": a user with the unmask permission can copy them; otherwise copy a query that leaves them out (exports are masked instead)",
            source.display(),
            caller.user
        ))),
        None => Ok(()),
    }
}

/// Checks that the caller may read a transfer's source and write its target (`ddl` when it
/// creates the table).
pub async fn authorize_transfer(
    state: &SharedState,
    caller: &Caller,
    spec: &TransferSpec,
    origin: &'static str,
) -> Result<()> {
    let mask =
        authorize_source(state, caller, &spec.source, spec.filter.as_deref(), origin).await?;
    refuse_masked(&spec.source, caller, mask)?;
    let wanted = if spec.create {
        Permission::Ddl
    } else {
        Permission::Write
    };
    crate::auth::require_instance(
        state,
        caller,
        wanted,
        &spec.target.instance,
        spec.target.database.as_deref(),
    )
    .await
    .map(|_| ())
    .map_err(|e| e.context(format!("writing {}", spec.target.display())))
}

/// Checks the spec and the instances, records the job and starts it.
pub async fn submit(
    state: &SharedState,
    caller: &Caller,
    spec: TransferSpec,
) -> Result<TransferDto> {
    spec.validate()?;
    authorize_transfer(state, caller, &spec, "transfer").await?;
    let source = match spec.source.instance() {
        Some(name) => Some(state.pool(name).await?),
        None => None,
    };
    let target = state.pool(&spec.target.instance).await?;
    let job = JobSpec::Transfer(spec.clone());
    spawn_job(
        state,
        caller,
        &job,
        move |progress, watermarks| async move {
            let report = run_transfer(&spec, source, target, &watermarks, progress).await?;
            Ok((report.rows, serde_json::to_string(&report).ok()))
        },
    )
    .await
}

/// Checks an export spec and starts it as a job.
pub async fn submit_export(
    state: &SharedState,
    caller: &Caller,
    spec: ExportSpec,
) -> Result<TransferDto> {
    spec.validate()?;
    let mask = authorize_source(
        state,
        caller,
        &spec.source,
        spec.filter.as_deref(),
        "export",
    )
    .await?;
    authorize_location(caller, &spec.url)?;
    let mapper = mask.map(|m| Arc::new(m) as Arc<dyn ferry_move::BatchMapper>);
    let instance = spec
        .source
        .instance()
        .ok_or_else(|| Error::InvalidInput("an export reads a table or a query".into()))?;
    let pool = state.pool(instance).await?;
    // Opening the location checks the URL and options before the job starts.
    ferry_move::files::open_location(&spec.url, &spec.options)?;
    let job = JobSpec::Export(spec.clone());
    spawn_job(state, caller, &job, move |progress, _| async move {
        let report = run_export_mapped(&spec, pool, progress, mapper).await?;
        Ok((report.rows, serde_json::to_string(&report).ok()))
    })
    .await
}

/// Records a job and runs `work` in the background, reporting progress every half second.
async fn spawn_job<F, Fut>(
    state: &SharedState,
    caller: &Caller,
    job: &JobSpec,
    work: F,
) -> Result<TransferDto>
where
    F: FnOnce(Arc<Progress>, StoreWatermarks) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(u64, Option<String>)>> + Send,
{
    let rec = TransferRecord {
        id: uuid::Uuid::new_v4().to_string(),
        spec: serde_json::to_string(job).map_err(|e| Error::Internal(e.to_string()))?,
        status: "running".into(),
        error: None,
        rows_read: 0,
        rows_written: 0,
        rows_expected: None,
        report: None,
        created_at_ms: now_ms(),
        started_at_ms: Some(now_ms()),
        finished_at_ms: None,
    };
    state.meta.insert_transfer(&rec).await?;
    state
        .meta
        .set_owner("transfer", &rec.id, &caller.user)
        .await?;
    let task_state = state.clone();
    let mut task_rec = rec.clone();
    let mut running = lock(&state.transfers.running);
    let handle = tokio::spawn(async move {
        let progress = Arc::new(Progress::default());
        // Stops with the job, also when the job is cancelled (aborted).
        let _reporter = AbortOnDrop({
            let (state, progress, id) = (task_state.clone(), progress.clone(), task_rec.id.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    let load = |c: &std::sync::atomic::AtomicU64| {
                        c.load(std::sync::atomic::Ordering::Relaxed) as i64
                    };
                    let expected = load(&progress.rows_expected);
                    // Counters only, and only while running: this write may land after the
                    // job's final record (abort does not stop a statement already sent).
                    let _ = state
                        .meta
                        .update_transfer_progress(
                            &id,
                            load(&progress.rows_read),
                            load(&progress.rows_written),
                            (expected > 0).then_some(expected),
                        )
                        .await;
                }
            })
        });
        let outcome = work(progress.clone(), StoreWatermarks(task_state.meta.clone())).await;
        drop(_reporter);
        task_rec.rows_read = progress
            .rows_read
            .load(std::sync::atomic::Ordering::Relaxed) as i64;
        task_rec.rows_written = progress
            .rows_written
            .load(std::sync::atomic::Ordering::Relaxed) as i64;
        let expected = progress
            .rows_expected
            .load(std::sync::atomic::Ordering::Relaxed);
        task_rec.rows_expected = (expected > 0).then_some(expected as i64);
        task_rec.finished_at_ms = Some(now_ms());
        match outcome {
            Ok((rows, report)) => {
                task_rec.status = "succeeded".into();
                task_rec.rows_written = rows as i64;
                task_rec.report = report;
            }
            Err(e) => {
                tracing::warn!(job = %task_rec.id, error = %e, "job failed");
                task_rec.status = "failed".into();
                task_rec.error = Some(e.message().to_string());
            }
        }
        if let Err(e) = task_state.meta.update_transfer(&task_rec).await {
            tracing::error!(job = %task_rec.id, error = %e, "could not record the end of a job");
        }
        lock(&task_state.transfers.running).remove(&task_rec.id);
    });
    running.insert(rec.id.clone(), handle.abort_handle());
    drop(running);
    Ok(rec.into())
}

pub async fn cancel(state: &SharedState, id: &str) -> Result<TransferDto> {
    let mut rec = get(state, id).await?;
    let Some(task) = lock(&state.transfers.running).remove(id) else {
        return Err(Error::Conflict(format!(
            "transfer {id} already ended ({}); nothing to cancel",
            rec.status
        )));
    };
    // Aborting drops the leases mid-transaction: the target rolls back and nothing is half-written.
    task.abort();
    rec.status = "cancelled".into();
    rec.error = Some("cancelled by request; the target was rolled back".into());
    rec.finished_at_ms = Some(now_ms());
    state.meta.update_transfer(&rec).await?;
    Ok(rec.into())
}

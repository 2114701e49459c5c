//! Runs and the executor. A run's tasks live in the metadata store; ready tasks are `queued`
//! and workers take them with [`FlowRepo::claim_task`] under a lease they renew while the task
//! runs. A lease that expires (a dead worker) puts the task back in the queue. Completing a task
//! queues the downstream nodes whose upstreams all succeeded, so any node can continue a run.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone};
use chrono_tz::Tz;
use ferry_core::{Error, Result};
use ferry_meta::{FlowRunRecord, MetaStore, TaskRunRecord, now_ms};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::kinds::{self, Resources, TaskContext};
use crate::model::{Concurrency, FailureStrategy, FlowSpec};
use crate::vars::{self, Values};

/// Task states that are final.
pub const TERMINAL: &[&str] = &[
    "success",
    "failed",
    "skipped",
    "cancelled",
    "upstream_failed",
];

fn terminal(status: &str) -> bool {
    TERMINAL.contains(&status)
}

/// How a run was started.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub flow: String,
    /// `schedule`, `manual` or `backfill/N` (at most N backfill runs of the flow at once).
    pub trigger: String,
    /// The time the run stands for.
    pub at: DateTime<Tz>,
    /// Values for flow variables (a manual run's parameters).
    pub overrides: BTreeMap<String, String>,
    /// For scheduled runs: makes a second fire of the same time impossible.
    pub fire_key: Option<String>,
}

/// The flow definition a run is pinned to.
pub async fn run_spec(store: &dyn MetaStore, run: &FlowRunRecord) -> Result<FlowSpec> {
    let text = store
        .get_flow_version(&run.flow, run.version)
        .await?
        .ok_or_else(|| Error::NotFound(format!("flow \"{}\" version {}", run.flow, run.version)))?;
    serde_json::from_str(&text).map_err(|e| Error::Internal(format!("stored flow: {e}")))
}

/// Starts a run of the flow's current version; `None` when the flow's concurrency policy is
/// `skip` and a run is active.
pub async fn start_run(store: &dyn MetaStore, req: RunRequest) -> Result<Option<FlowRunRecord>> {
    let flow = store.get_flow(&req.flow).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "flow \"{}\" does not exist; apply it with `ferry flow apply -f FILE`",
            req.flow
        ))
    })?;
    let spec: FlowSpec = serde_json::from_str(&flow.spec)
        .map_err(|e| Error::Internal(format!("stored flow: {e}")))?;
    let active = store.list_runs(Some(&req.flow), Some("running"), 1).await?;
    let backfill_cap = req
        .trigger
        .strip_prefix("backfill/")
        .and_then(|n| n.parse::<usize>().ok());
    let must_wait = match (spec.concurrency, backfill_cap) {
        (_, Some(cap)) => {
            let running = store
                .list_runs(Some(&req.flow), Some("running"), 10_000)
                .await?;
            running
                .iter()
                .filter(|r| r.trigger.starts_with("backfill"))
                .count()
                >= cap
        }
        (Concurrency::Skip, None) if !active.is_empty() => {
            tracing::info!(flow = %req.flow, "a run is active and the flow's concurrency is skip: not starting another");
            return Ok(None);
        }
        (Concurrency::Queue, None) => !active.is_empty(),
        _ => false,
    };
    let id = uuid::Uuid::new_v4().to_string();
    let values = vars::resolve(&spec, &id, &req.at, &req.overrides)?;
    // The settings of the instances the nodes use, as they are now.
    let mut instances = serde_json::Map::new();
    for n in &spec.nodes {
        let Some(kind) = kinds::kind(&n.kind) else {
            continue;
        };
        for name in kind
            .check(&n.params)
            .map(|c| c.instances)
            .unwrap_or_default()
        {
            if let Some(rec) = store.get_instance(&name).await? {
                let settings: serde_json::Value =
                    serde_json::from_str(&rec.settings).unwrap_or(serde_json::Value::Null);
                instances.insert(
                    name,
                    serde_json::json!({ "engine": rec.engine, "environment": rec.environment, "settings": settings }),
                );
            }
        }
    }
    let now = now_ms();
    let run = FlowRunRecord {
        id: id.clone(),
        flow: req.flow.clone(),
        version: flow.version,
        status: if must_wait { "queued" } else { "running" }.into(),
        trigger: req.trigger,
        fire_key: req.fire_key,
        scheduled_ms: req.at.timestamp_millis(),
        bizdate: vars::bizdate(&req.at).format("%Y-%m-%d").to_string(),
        variables: serde_json::to_string(&values).map_err(|e| Error::Internal(e.to_string()))?,
        instances: Some(serde_json::Value::Object(instances).to_string()),
        error: None,
        created_at_ms: now,
        started_at_ms: (!must_wait).then_some(now),
        finished_at_ms: None,
    };
    let tasks: Vec<TaskRunRecord> = spec
        .nodes
        .iter()
        .map(|n| TaskRunRecord {
            id: format!("{id}:{}", n.id),
            run_id: id.clone(),
            node: n.id.clone(),
            status: if n.upstream.is_empty() && !must_wait {
                "queued"
            } else {
                "waiting"
            }
            .into(),
            attempt: 0,
            priority: n.priority as i64,
            lease_owner: None,
            lease_until_ms: None,
            available_at_ms: now,
            started_at_ms: None,
            finished_at_ms: None,
            error: None,
            outputs: None,
            rows: 0,
        })
        .collect();
    store.create_run(&run, &tasks).await?;
    tracing::info!(flow = %run.flow, run = %run.id, version = run.version, status = %run.status, "run created");
    Ok(Some(run))
}

/// Cancels a run: tasks not started are cancelled now; running ones are cancelled on their
/// database by the worker that holds them.
pub async fn cancel_run(store: &dyn MetaStore, id: &str) -> Result<FlowRunRecord> {
    let mut run = get_run(store, id).await?;
    if terminal(&run.status) {
        return Err(Error::Conflict(format!(
            "run {id} already ended ({})",
            run.status
        )));
    }
    run.status = "cancelled".into();
    run.error = Some("cancelled by a user".into());
    run.finished_at_ms = Some(now_ms());
    store.update_run(&run).await?;
    for t in store.list_tasks(id).await? {
        store
            .move_task(
                &t.id,
                &["waiting", "queued", "retrying"],
                "cancelled",
                t.available_at_ms,
            )
            .await?;
    }
    activate_waiting_runs(store, &run.flow).await?;
    Ok(run)
}

/// Runs a finished run again on its own version: `rerun` all nodes, or `restore` only the
/// failed and unfinished ones.
pub async fn restart_run(store: &dyn MetaStore, id: &str, all: bool) -> Result<FlowRunRecord> {
    let mut run = get_run(store, id).await?;
    if !terminal(&run.status) {
        return Err(Error::Conflict(format!(
            "run {id} is still {}: cancel it first or wait for it to end",
            run.status
        )));
    }
    let spec = run_spec(store, &run).await?;
    let tasks = store.list_tasks(id).await?;
    let status: HashMap<&str, &str> = tasks
        .iter()
        .map(|t| (t.node.as_str(), t.status.as_str()))
        .collect();
    let now = now_ms();
    for t in &tasks {
        if !all && t.status == "success" {
            continue;
        }
        let node = spec
            .node(&t.node)
            .ok_or_else(|| Error::Internal(format!("node {} not in its flow", t.node)))?;
        let ready = node
            .upstream
            .iter()
            .all(|u| !all && status.get(u.as_str()) == Some(&"success"));
        let to = if node.upstream.is_empty() || ready {
            "queued"
        } else {
            "waiting"
        };
        store.move_task(&t.id, TERMINAL, to, now).await?;
    }
    run.status = "running".into();
    run.error = None;
    run.finished_at_ms = None;
    run.trigger = if all { "rerun" } else { "restore" }.into();
    store.update_run(&run).await?;
    Ok(run)
}

async fn get_run(store: &dyn MetaStore, id: &str) -> Result<FlowRunRecord> {
    store.get_run(id).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "run {id} does not exist; list runs with `ferry run list`"
        ))
    })
}

/// Starts runs that wait for their turn (concurrency `queue`, or backfill beyond its cap).
pub async fn activate_waiting_runs(store: &dyn MetaStore, flow: &str) -> Result<()> {
    let Some(record) = store.get_flow(flow).await? else {
        return Ok(());
    };
    let spec: FlowSpec = serde_json::from_str(&record.spec)
        .map_err(|e| Error::Internal(format!("stored flow: {e}")))?;
    let mut queued = store.list_runs(Some(flow), Some("queued"), 10_000).await?;
    queued.reverse(); // oldest first
    for mut run in queued {
        let running = store.list_runs(Some(flow), Some("running"), 10_000).await?;
        let may_start = match run
            .trigger
            .strip_prefix("backfill/")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(cap) => {
                running
                    .iter()
                    .filter(|r| r.trigger.starts_with("backfill"))
                    .count()
                    < cap
            }
            None => spec.concurrency != Concurrency::Queue || running.is_empty(),
        };
        if !may_start {
            continue;
        }
        let pinned = run_spec(store, &run).await?;
        run.status = "running".into();
        run.started_at_ms = Some(now_ms());
        store.update_run(&run).await?;
        for n in pinned.nodes.iter().filter(|n| n.upstream.is_empty()) {
            queue_waiting(store, &run.id, &n.id).await?;
        }
    }
    Ok(())
}

/// Queues a waiting node of a run (no-op if another worker did it first).
async fn queue_waiting(store: &dyn MetaStore, run_id: &str, node: &str) -> Result<bool> {
    store
        .move_task(
            &format!("{run_id}:{node}"),
            &["waiting"],
            "queued",
            now_ms(),
        )
        .await
}

/// After a task ends: queue what became ready, mark what can no longer run, and end the run
/// when nothing is left.
async fn advance(
    store: &dyn MetaStore,
    run: &FlowRunRecord,
    spec: &FlowSpec,
    failed: Option<&str>,
) -> Result<()> {
    let tasks = store.list_tasks(&run.id).await?;
    let status: HashMap<&str, &str> = tasks
        .iter()
        .map(|t| (t.node.as_str(), t.status.as_str()))
        .collect();
    if let Some(node) = failed {
        for d in spec.descendants(node) {
            store
                .move_task(
                    &format!("{}:{d}", run.id),
                    &["waiting"],
                    "upstream_failed",
                    now_ms(),
                )
                .await?;
        }
        if spec.failure == FailureStrategy::Stop {
            for t in &tasks {
                store
                    .move_task(
                        &t.id,
                        &["waiting", "queued", "retrying"],
                        "skipped",
                        now_ms(),
                    )
                    .await?;
            }
        }
    }
    for n in &spec.nodes {
        if status.get(n.id.as_str()) == Some(&"waiting")
            && n.upstream
                .iter()
                .all(|u| status.get(u.as_str()) == Some(&"success"))
        {
            queue_waiting(store, &run.id, &n.id).await?;
        }
    }
    finish_run_if_done(store, &run.id).await
}

/// Repairs what a worker's bookkeeping may have left half done (a store error between ending a
/// task and queueing its downstream nodes, or before starting runs that wait their turn):
/// queues ready nodes, marks those that can no longer run, ends finished runs and starts waiting
/// ones. Every step is conditional, so any node may run it at any time.
pub async fn reconcile(store: &dyn MetaStore) -> Result<()> {
    for run in store.list_runs(None, Some("running"), 10_000).await? {
        let spec = run_spec(store, &run).await?;
        let failed: Vec<String> = store
            .list_tasks(&run.id)
            .await?
            .into_iter()
            .filter(|t| t.status == "failed")
            .map(|t| t.node)
            .collect();
        if failed.is_empty() {
            advance(store, &run, &spec, None).await?;
        }
        for node in &failed {
            advance(store, &run, &spec, Some(node)).await?;
        }
    }
    let waiting: std::collections::BTreeSet<String> = store
        .list_runs(None, Some("queued"), 10_000)
        .await?
        .into_iter()
        .map(|r| r.flow)
        .collect();
    for flow in waiting {
        activate_waiting_runs(store, &flow).await?;
    }
    Ok(())
}

/// Ends a run whose tasks are all final: success when every task succeeded.
pub async fn finish_run_if_done(store: &dyn MetaStore, run_id: &str) -> Result<()> {
    let tasks = store.list_tasks(run_id).await?;
    if !tasks.iter().all(|t| terminal(&t.status)) {
        return Ok(());
    }
    let mut run = get_run(store, run_id).await?;
    if run.status != "running" {
        return Ok(());
    }
    let failed: Vec<&str> = tasks
        .iter()
        .filter(|t| t.status != "success")
        .map(|t| t.node.as_str())
        .collect();
    run.status = if failed.is_empty() {
        "success"
    } else {
        "failed"
    }
    .into();
    run.error = (!failed.is_empty()).then(|| {
        tasks
            .iter()
            .find(|t| t.status == "failed")
            .map(|t| {
                format!(
                    "node {} failed: {}",
                    t.node,
                    t.error.as_deref().unwrap_or("")
                )
            })
            .unwrap_or_else(|| format!("nodes not run: {}", failed.join(", ")))
    });
    run.finished_at_ms = Some(now_ms());
    if !store.finish_run(&run).await? {
        return Ok(());
    }
    tracing::info!(flow = %run.flow, run = %run.id, status = %run.status, "run finished");
    let spec = run_spec(store, &run).await?;
    if let Some(notify) = &spec.notify {
        let event = if run.status == "success" {
            crate::notify::Event::Success
        } else {
            crate::notify::Event::Failure
        };
        crate::notify::send(notify, &message(&run, event)).await;
    }
    activate_waiting_runs(store, &run.flow).await
}

/// The notification about a run.
pub fn message(run: &FlowRunRecord, event: crate::notify::Event) -> crate::notify::Message {
    crate::notify::Message {
        event,
        flow: run.flow.clone(),
        run_id: run.id.clone(),
        bizdate: run.bizdate.clone(),
        status: run.status.clone(),
        error: run.error.clone(),
        duration_ms: run
            .started_at_ms
            .map(|s| run.finished_at_ms.unwrap_or_else(now_ms) - s),
    }
}

/// Workers on this node: they take ready tasks from the store, at most `slots` at once.
pub struct Executor {
    store: Arc<dyn MetaStore>,
    resources: Arc<dyn Resources>,
    /// This worker's name in leases.
    owner: String,
    lease: Duration,
    poll: Duration,
    slots: Arc<Semaphore>,
    wake: Notify,
    running: Mutex<HashMap<String, CancellationToken>>,
}

impl Executor {
    pub fn new(
        store: Arc<dyn MetaStore>,
        resources: Arc<dyn Resources>,
        owner: String,
        slots: usize,
        lease: Duration,
    ) -> Arc<Executor> {
        Arc::new(Executor {
            store,
            resources,
            owner,
            lease,
            poll: Duration::from_millis(500),
            slots: Arc::new(Semaphore::new(slots.max(1))),
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Look for work now (a run was just created or a task ended).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Takes and runs tasks until `shutdown`; running tasks are cancelled then.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut pass = 0u64;
        loop {
            pass += 1;
            if pass.is_multiple_of(10)
                && let Err(e) = reconcile(self.store.as_ref()).await
            {
                tracing::warn!(error = %e, "reconciling runs failed");
            }
            if let Err(e) = self.store.requeue_expired(now_ms()).await {
                tracing::warn!(error = %e, "could not requeue expired tasks");
            }
            while let Ok(permit) = self.slots.clone().try_acquire_owned() {
                let until = now_ms() + self.lease.as_millis() as i64;
                match self.store.claim_task(&self.owner, now_ms(), until).await {
                    Ok(Some(task)) => {
                        let me = self.clone();
                        tokio::spawn(async move {
                            let id = task.id.clone();
                            if let Err(e) = me.clone().execute(task).await {
                                tracing::warn!(task = %id, error = %e, "task bookkeeping failed");
                            }
                            drop(permit);
                            me.wake();
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not claim a task");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.poll) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        for token in self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            token.cancel();
        }
    }

    async fn log(&self, task: &str, line: &str) {
        if let Err(e) = self.store.append_task_log(task, line).await {
            tracing::warn!(task, error = %e, "could not store a log line");
        }
    }

    /// One attempt of a task this worker holds.
    async fn execute(self: Arc<Self>, mut task: TaskRunRecord) -> Result<()> {
        let store = self.store.as_ref();
        let run = get_run(store, &task.run_id).await?;
        let spec = run_spec(store, &run).await?;
        let node = spec
            .node(&task.node)
            .ok_or_else(|| {
                Error::Internal(format!("node {} is not in flow {}", task.node, run.flow))
            })?
            .clone();
        let cancel = CancellationToken::new();
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task.id.clone(), cancel.clone());
        let attempt = task.attempt + 1;
        self.log(
            &task.id,
            &format!(
                "attempt {attempt} of {} on {}",
                node.retries + 1,
                self.owner
            ),
        )
        .await;

        // Renew the lease while the task runs; a lost lease or a cancelled run cancels the work.
        let renewer = {
            let me = self.clone();
            let (id, run_id, cancel) = (task.id.clone(), run.id.clone(), cancel.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(me.lease / 3) => {}
                        _ = cancel.cancelled() => return,
                    }
                    let until = now_ms() + me.lease.as_millis() as i64;
                    let held = me
                        .store
                        .renew_lease(&id, &me.owner, until)
                        .await
                        .unwrap_or(false);
                    let cancelled = matches!(me.store.get_run(&run_id).await, Ok(Some(r)) if r.status == "cancelled");
                    if !held || cancelled {
                        cancel.cancel();
                        return;
                    }
                }
            })
        };

        let mut log_writer = None;
        let outcome = match kinds::kind(&node.kind) {
            None => Err(Error::InvalidInput(format!(
                "unknown task kind \"{}\"",
                node.kind
            ))),
            Some(kind) => {
                let values = self.values_for(&run, &spec, &node.id).await?;
                let at = run_time(&run, &spec)?;
                // Lines go through one writer, in order; it is awaited before the task ends,
                // so every line is stored before the outcome is.
                let (lines, mut pending) = tokio::sync::mpsc::unbounded_channel::<String>();
                let writer = {
                    let store = self.store.clone();
                    let id = task.id.clone();
                    tokio::spawn(async move {
                        while let Some(line) = pending.recv().await {
                            let _ = store.append_task_log(&id, &line).await;
                        }
                    })
                };
                log_writer = Some(writer);
                let logger = Arc::new(move |line: String| {
                    let _ = lines.send(line);
                }) as kinds::Logger;
                let ctx = TaskContext {
                    resources: self.resources.clone(),
                    values,
                    at,
                    log: logger,
                    cancel: cancel.clone(),
                };
                let work = async {
                    ctx.resources.authorize_task(&run, &node.id).await?;
                    kind.run(&ctx, &node.params).await
                };
                match node.timeout_secs {
                    Some(secs) => {
                        tokio::pin!(work);
                        tokio::select! {
                            r = &mut work => r,
                            _ = tokio::time::sleep(Duration::from_secs(secs)) => {
                                // Cancel on the database, then let the work wind down.
                                cancel.cancel();
                                let _ = tokio::time::timeout(Duration::from_secs(30), work).await;
                                Err(Error::Timeout(format!("node {} ran longer than its timeout of {secs} s and was cancelled", node.id)))
                            }
                        }
                    }
                    None => work.await,
                }
            }
        };
        cancel.cancel();
        let _ = renewer.await;
        if let Some(writer) = log_writer {
            let _ = writer.await;
        }
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&task.id);

        let run_now = get_run(store, &run.id).await?;
        task.attempt = attempt;
        task.finished_at_ms = Some(now_ms());
        let mut failed_node = None;
        match outcome {
            Ok(result) => {
                self.log(&task.id, &format!("succeeded: {} rows", result.rows))
                    .await;
                task.status = "success".into();
                task.error = None;
                task.rows = result.rows as i64;
                task.outputs = Some(
                    serde_json::to_string(&result.outputs)
                        .map_err(|e| Error::Internal(e.to_string()))?,
                );
            }
            Err(_) if run_now.status == "cancelled" => {
                self.log(&task.id, "cancelled with its run").await;
                task.status = "cancelled".into();
                task.error = Some("the run was cancelled".into());
            }
            Err(e) if (attempt as u32) <= node.retries => {
                self.log(
                    &task.id,
                    &format!(
                        "failed: {}; retrying in {} s",
                        e.message(),
                        node.retry_delay_secs
                    ),
                )
                .await;
                task.status = "retrying".into();
                task.error = Some(e.message().to_string());
                task.available_at_ms = now_ms() + (node.retry_delay_secs * 1000) as i64;
                task.finished_at_ms = None;
            }
            Err(e) => {
                self.log(&task.id, &format!("failed: {}", e.message()))
                    .await;
                task.status = "failed".into();
                task.error = Some(e.message().to_string());
                failed_node = Some(node.id.clone());
            }
        }
        if !store.finish_task(&task, &self.owner).await? {
            // The lease was lost (this worker was too slow); another attempt owns the task now.
            tracing::warn!(task = %task.id, "lease lost before the task ended; its outcome is dropped");
            return Ok(());
        }
        if task.status != "retrying" {
            advance(store, &run_now, &spec, failed_node.as_deref()).await?;
        }
        Ok(())
    }

    /// The run's variables plus the outputs of the node's upstream nodes.
    async fn values_for(&self, run: &FlowRunRecord, spec: &FlowSpec, node: &str) -> Result<Values> {
        let mut values: Values = serde_json::from_str(&run.variables)
            .map_err(|e| Error::Internal(format!("stored variables: {e}")))?;
        let ancestors = spec.ancestors(node);
        for t in self.store.list_tasks(&run.id).await? {
            if !ancestors.contains(&t.node) {
                continue;
            }
            if let Some(outputs) = &t.outputs {
                let outputs: BTreeMap<String, String> =
                    serde_json::from_str(outputs).map_err(|e| Error::Internal(e.to_string()))?;
                for (k, v) in outputs {
                    values.insert(
                        k,
                        vars::Value {
                            value: v,
                            raw: false,
                        },
                    );
                }
            }
        }
        Ok(values)
    }
}

/// The scheduled time of a run in its flow's time zone.
pub fn run_time(run: &FlowRunRecord, spec: &FlowSpec) -> Result<DateTime<Tz>> {
    let tz = match &spec.schedule {
        Some(s) => s.tz()?,
        None => chrono_tz::UTC,
    };
    tz.timestamp_millis_opt(run.scheduled_ms)
        .single()
        .ok_or_else(|| Error::Internal(format!("run time {} out of range", run.scheduled_ms)))
}

//! Task flows over HTTP: apply (TOML or JSON), list, enable/disable, run now, backfill, and the
//! O&M view of runs with their tasks and logs. The executor's workers and the scheduler run
//! inside the server (`start`); all their state is in the metadata store.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::NaiveDate;
use ferry_connect::InstancePool;
use ferry_core::{Error, Result};
use ferry_flow::exec::{self, RunRequest};
use ferry_flow::{Executor, FlowSpec, vars};
use ferry_meta::{FlowRecord, FlowRunRecord, MetaStore, TaskLogLine, TaskRunRecord};
use ferry_move::WatermarkStore;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::api::{ApiJson, ApiQuery};
use crate::error::ApiResult;
use crate::guard::Guard;
use crate::rbac::{Caller, Permission, Resource};
use crate::{AppState, SharedState};

/// The executor and scheduler of this node.
#[derive(Default)]
pub struct Flows {
    executor: OnceLock<Arc<Executor>>,
    shutdown: CancellationToken,
}

impl Flows {
    fn executor(&self) -> Option<&Arc<Executor>> {
        self.executor.get()
    }

    fn wake(&self) {
        if let Some(e) = self.executor() {
            e.wake();
        }
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

/// What tasks reach through the server: pools (with their caps) and watermarks.
struct StateResources(Weak<AppState>);

#[async_trait]
impl ferry_flow::Resources for StateResources {
    async fn pool(&self, instance: &str) -> Result<Arc<InstancePool>> {
        let state = self
            .0
            .upgrade()
            .ok_or_else(|| Error::Cancelled("the server is shutting down".into()))?;
        state.pool(instance).await
    }

    async fn instance_url(&self, instance: &str) -> Result<ferry_core::ConnectionUrl> {
        let state = self
            .0
            .upgrade()
            .ok_or_else(|| Error::Cancelled("the server is shutting down".into()))?;
        let rec = state.instance_record(instance).await?;
        ferry_core::ConnectionUrl::parse(&state.key.decrypt(&rec.url_secret)?)
    }

    fn shell_enabled(&self) -> bool {
        self.0.upgrade().is_some_and(|s| s.config.enable_shell)
    }

    async fn authorize_task(&self, run: &FlowRunRecord, node: &str) -> Result<()> {
        let state = self
            .0
            .upgrade()
            .ok_or_else(|| Error::Cancelled("the server is shutting down".into()))?;
        let version = format!("{}@{}", run.flow, run.version);
        let owner = state
            .meta
            .owner_of("flow", &version)
            .await?
            .ok_or_else(|| {
                Error::PermissionDenied(format!(
                    "flow {version} has no owner, so it runs with no grants: apply it again"
                ))
            })?;
        let user = state
            .meta
            .get_user(&owner)
            .await?
            .filter(|u| !u.disabled)
            .ok_or_else(|| {
                Error::PermissionDenied(format!(
                    "the owner of flow {version}, \"{owner}\", was removed or disabled: another user must apply the flow again"
                ))
            })?;
        let caller = crate::auth::caller_for(&state, &user, None, None).await?;
        let spec = exec::run_spec(state.meta.as_ref(), run).await?;
        let n =
            spec.nodes.iter().find(|n| n.id == node).ok_or_else(|| {
                Error::NotFound(format!("node \"{node}\" is not in flow {version}"))
            })?;
        authorize_node(&state, &caller, &spec, n)
            .await
            .map_err(|e| {
                e.context(format!(
                    "re-checked with the grants of \"{owner}\", the owner of flow {version}"
                ))
            })
    }

    fn watermarks(&self) -> Arc<dyn WatermarkStore> {
        match self.0.upgrade() {
            Some(state) => Arc::new(crate::transfers::StoreWatermarks(state.meta.clone())),
            None => Arc::new(NoWatermarks),
        }
    }
}

struct NoWatermarks;

#[async_trait]
impl WatermarkStore for NoWatermarks {
    async fn get(&self, _: &str) -> Result<Option<String>> {
        Err(Error::Cancelled("the server is shutting down".into()))
    }
    async fn set(&self, _: &str, _: &str) -> Result<()> {
        Err(Error::Cancelled("the server is shutting down".into()))
    }
}

/// Starts this node's workers and scheduler.
pub fn start(state: &SharedState) {
    let owner = format!(
        "{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let executor = Executor::new(
        state.meta.clone(),
        Arc::new(StateResources(Arc::downgrade(state))),
        owner,
        state.config.task_slots,
        state.config.task_lease,
    );
    if state.flows.executor.set(executor.clone()).is_err() {
        return;
    }
    let shutdown = state.flows.shutdown.clone();
    tokio::spawn(executor.clone().run(shutdown.clone()));
    tokio::spawn(ferry_flow::sched::run(
        state.meta.clone(),
        executor,
        state.config.scheduler_interval,
        shutdown,
    ));
}

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/api/v1/flows", get(list_flows).post(apply_flow))
        .route("/api/v1/flows/{name}", get(show_flow))
        .route("/api/v1/flows/{name}/diff", get(diff_flow))
        .route("/api/v1/flows/{name}/enable", post(enable_flow))
        .route("/api/v1/flows/{name}/disable", post(disable_flow))
        .route("/api/v1/flows/{name}/runs", post(run_flow))
        .route("/api/v1/flows/{name}/backfill", post(backfill_flow))
        .route("/api/v1/flow-templates", get(list_templates))
        .route("/api/v1/flow-templates/{name}", post(render_template))
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs/{id}", get(show_run))
        .route("/api/v1/runs/{id}/logs", get(run_logs))
        .route("/api/v1/runs/{id}/logs/stream", get(stream_logs))
        .route("/api/v1/runs/{id}/cancel", post(cancel_run))
        .route("/api/v1/runs/{id}/restore", post(restore_run))
        .route("/api/v1/runs/{id}/rerun", post(rerun_run))
}

/// A flow definition: TOML text (`toml`), YAML text (`yaml`) or the same structure as JSON
/// (`spec`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyFlow {
    #[serde(default)]
    pub toml: Option<String>,
    #[serde(default)]
    pub yaml: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub spec: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlowDto {
    pub name: String,
    pub version: i64,
    pub enabled: bool,
    pub description: String,
    pub schedule: Option<String>,
    pub next_fire_ms: Option<i64>,
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
}

fn flow_dto(r: FlowRecord) -> Result<FlowDto> {
    let spec: FlowSpec =
        serde_json::from_str(&r.spec).map_err(|e| Error::Internal(format!("stored flow: {e}")))?;
    Ok(FlowDto {
        name: r.name,
        version: r.version,
        enabled: r.enabled,
        description: spec.description.clone(),
        schedule: spec
            .schedule
            .as_ref()
            .map(|s| format!("{} ({})", s.cron, s.timezone)),
        next_fire_ms: r.next_fire_ms,
        spec: serde_json::to_value(&spec).map_err(|e| Error::Internal(e.to_string()))?,
    })
}

/// Checks a definition against the registered instances and stores it as a new version.
pub async fn apply(state: &SharedState, caller: &Caller, req: ApplyFlow) -> Result<FlowDto> {
    let spec = match (req.toml, req.yaml, req.spec) {
        (Some(text), None, None) => FlowSpec::from_toml(&text)?,
        (None, Some(text), None) => FlowSpec::from_yaml(&text)?,
        (None, None, Some(value)) => FlowSpec::from_json(value)?,
        _ => {
            return Err(Error::InvalidInput(
                "give the flow as exactly one of \"toml\" or \"yaml\" (the file's text) or \"spec\" (JSON)".into(),
            ));
        }
    };
    let mut known: Vec<String> = state
        .meta
        .list_instances()
        .await?
        .into_iter()
        .map(|i| i.name)
        .collect();
    known.push(ferry_query::ARCHIVE_INSTANCE.to_string());
    spec.validate(&|name| known.iter().any(|k| k == name))?;
    if !state.config.enable_shell
        && let Some(n) = spec.nodes.iter().find(|n| n.kind == "shell")
    {
        return Err(Error::PermissionDenied(format!(
            "node \"{}\", field kind: shell tasks are disabled on this server; an administrator enables them with `ferry serve --enable-shell`",
            n.id
        )));
    }
    caller.require(Permission::FlowEdit, &Resource::Flow(&spec.name))?;
    // The flow runs with its owner's grants: the one who applies it must hold them now.
    authorize_flow(state, caller, &spec).await?;
    let enabled = spec.schedule.as_ref().is_none_or(|s| s.enabled);
    let text = serde_json::to_string(&spec).map_err(|e| Error::Internal(e.to_string()))?;
    let version = state.meta.apply_flow(&spec.name, &text, enabled).await?;
    state
        .meta
        .set_owner("flow", &format!("{}@{version}", spec.name), &caller.user)
        .await?;
    tracing::info!(flow = %spec.name, version, "flow applied");
    flow_dto(get_flow(state.meta.as_ref(), &spec.name).await?)
}

/// The SQL of a flow node with its variables replaced by placeholders of the same kind (a
/// quoted literal, or a name for raw variables), so it can be classified before a run.
fn with_placeholders(spec: &FlowSpec, sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(i) = rest.find(['$']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let close = match tail.as_bytes().get(1) {
            Some(b'{') => Some('}'),
            Some(b'[') => Some(']'),
            _ => None,
        };
        match close.and_then(|c| tail.find(c).map(|end| (c, end))) {
            Some((c, end)) => {
                let name = &tail[2..end];
                let raw = c == '}'
                    && spec.variables.get(name).is_some_and(|v| {
                        matches!(v, ferry_flow::model::Variable::Declared { raw: true, .. })
                    });
                out.push_str(if raw { "ferry_placeholder" } else { "'0'" });
                rest = &tail[end + 1..];
            }
            None => {
                out.push('$');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Checks every statement of `sql` for `caller` on an instance (grants and SQL rules);
/// with `read_only`, each must be a read.
async fn authorize_sql(
    state: &SharedState,
    caller: &Caller,
    instance: &str,
    database: Option<&str>,
    sql: &str,
    read_only: bool,
) -> Result<()> {
    let engine = state.pool(instance).await?.connector().engine();
    let guard = Guard::new(state, caller, instance, database, engine, "flow").await?;
    let statements = ferry_connect::script::split_statements(engine, sql);
    for admitted in guard.admit_all(&statements).await? {
        if read_only && admitted.class != ferry_guard::StatementClass::Read {
            return Err(Error::PermissionDenied(format!(
                "this query must only read; it is {}: {}",
                admitted.class.as_str(),
                admitted.sql
            )));
        }
    }
    // A node's results reach logs, variables and notifications unmasked: an owner without
    // `unmask` may not touch masked columns in a flow at all.
    if guard.masks_apply() {
        let pool = state.pool(instance).await?;
        let mut lease = pool
            .acquire(ferry_core::Feature::System, database, "masking check")
            .await?;
        for sql in &statements {
            if guard.mask_plan(lease.conn(), sql).await?.sensitive {
                return Err(Error::PermissionDenied(format!(
                    "{sql}: reads columns masked for user \"{}\", and a flow's results are not masked; a user with the unmask permission can own this flow",
                    caller.user
                )));
            }
        }
    }
    Ok(())
}

/// Whether `caller` may run one node: the instances it touches, every statement it runs
/// (classified and checked against grants and rules), the files it reads or writes.
pub async fn authorize_node(
    state: &SharedState,
    caller: &Caller,
    spec: &FlowSpec,
    node: &ferry_flow::model::NodeSpec,
) -> Result<()> {
    let p = &node.params;
    let text =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let parse_err = |e: serde_json::Error| Error::InvalidInput(format!("params: {e}"));
    match node.kind.as_str() {
        "sql" | "check" => {
            let instance = text(p, "instance").unwrap_or_default();
            let sql = with_placeholders(spec, &text(p, "sql").unwrap_or_default());
            authorize_sql(
                state,
                caller,
                &instance,
                text(p, "database").as_deref(),
                &sql,
                node.kind == "check",
            )
            .await
        }
        "transfer" => {
            let mut t: ferry_move::TransferSpec =
                serde_json::from_value(p.clone()).map_err(parse_err)?;
            if let ferry_move::SourceSpec::Query { sql, .. } = &mut t.source {
                *sql = with_placeholders(spec, sql);
            }
            t.filter = t.filter.map(|f| with_placeholders(spec, &f));
            crate::transfers::authorize_transfer(state, caller, &t, "flow").await
        }
        "export" => {
            let mut e: ferry_move::ExportSpec =
                serde_json::from_value(p.clone()).map_err(parse_err)?;
            if let ferry_move::SourceSpec::Query { sql, .. } = &mut e.source {
                *sql = with_placeholders(spec, sql);
            }
            e.filter = e.filter.map(|f| with_placeholders(spec, &f));
            let mask = crate::transfers::authorize_source(
                state,
                caller,
                &e.source,
                e.filter.as_deref(),
                "flow",
            )
            .await?;
            crate::transfers::refuse_masked(&e.source, caller, mask)?;
            crate::transfers::authorize_location(caller, &e.url)
        }
        "cross_sql" => {
            // The federated query itself runs in Ferry (DataFusion): it may only read, since
            // DataFusion's COPY TO and CREATE EXTERNAL TABLE reach the server's files.
            let federated = with_placeholders(spec, &text(p, "sql").unwrap_or_default());
            for c in ferry_guard::classify_script(ferry_core::Engine::Archive, &federated) {
                if c.class != ferry_guard::StatementClass::Read {
                    return Err(Error::PermissionDenied(format!(
                        "a cross_sql query may only read; this one is {}: {}",
                        c.class.as_str(),
                        c.text
                    )));
                }
            }
            if let Some(sources) = p.get("sources").and_then(|v| v.as_object()) {
                for source in sources.values() {
                    let instance = text(source, "instance").unwrap_or_default();
                    let database = text(source, "database");
                    if instance == ferry_query::ARCHIVE_INSTANCE {
                        continue;
                    }
                    match text(source, "sql") {
                        Some(sql) => {
                            let sql = with_placeholders(spec, &sql);
                            authorize_sql(state, caller, &instance, database.as_deref(), &sql, true)
                                .await?
                        }
                        None => {
                            let table = text(source, "table").unwrap_or_default();
                            let src = ferry_move::SourceSpec::Table(ferry_move::Endpoint {
                                instance: instance.clone(),
                                database,
                                schema: None,
                                table,
                            });
                            let mask = crate::transfers::authorize_source(
                                state, caller, &src, None, "flow",
                            )
                            .await?;
                            crate::transfers::refuse_masked(&src, caller, mask)?
                        }
                    }
                }
            }
            if let Some(target) = p.get("target") {
                let create = p.get("create").and_then(|c| c.as_bool()).unwrap_or(false);
                crate::auth::require_instance(
                    state,
                    caller,
                    if create {
                        Permission::Ddl
                    } else {
                        Permission::Write
                    },
                    &text(target, "instance").unwrap_or_default(),
                    text(target, "database").as_deref(),
                )
                .await?;
            }
            if let Some(url) = p.get("output").and_then(|o| text(o, "url")) {
                crate::transfers::authorize_location(caller, &url)?;
            }
            Ok(())
        }
        "backup" | "restore" => {
            crate::auth::require_instance(
                state,
                caller,
                Permission::Admin,
                &text(p, "instance").unwrap_or_default(),
                text(p, "database").as_deref(),
            )
            .await?;
            match text(p, "url").or_else(|| text(p, "path")) {
                Some(url) => crate::transfers::authorize_location(caller, &url),
                None => Ok(()),
            }
        }
        "shell" | "spark" => caller
            .require(Permission::Instances, &Resource::Server)
            .map_err(|e| e.context("it runs a program on the server")),
        "http" => Ok(()),
        other => Err(Error::PermissionDenied(format!(
            "task kind \"{other}\" has no permission rule, so it is refused"
        ))),
    }
}

/// Checks every node of a flow for `caller`, naming the node that is refused.
pub async fn authorize_flow(state: &SharedState, caller: &Caller, spec: &FlowSpec) -> Result<()> {
    for node in &spec.nodes {
        authorize_node(state, caller, spec, node)
            .await
            .map_err(|e| e.context(format!("node \"{}\"", node.id)))?;
    }
    Ok(())
}

async fn get_flow(meta: &dyn MetaStore, name: &str) -> Result<FlowRecord> {
    meta.get_flow(name).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "flow \"{name}\" does not exist; apply it with `ferry flow apply -f FILE`"
        ))
    })
}

#[utoipa::path(post, path = "/api/v1/flows", request_body = ApplyFlow,
    responses((status = 201, body = FlowDto), (status = 400, description = "The definition is invalid; the message names the node and field")))]
pub async fn apply_flow(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ApplyFlow>,
) -> ApiResult<Response> {
    let dto = apply(&state, &caller, req).await?;
    Ok((StatusCode::CREATED, Json(dto)).into_response())
}

#[utoipa::path(get, path = "/api/v1/flows", responses((status = 200, body = Vec<FlowDto>)))]
pub async fn list_flows(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<FlowDto>>> {
    let mut flows = state.meta.list_flows().await?;
    flows.retain(|f| caller.allows(Permission::FlowView, &Resource::Flow(&f.name)));
    Ok(Json(
        flows.into_iter().map(flow_dto).collect::<Result<_>>()?,
    ))
}

#[utoipa::path(get, path = "/api/v1/flows/{name}", responses((status = 200, body = FlowDto), (status = 404)))]
pub async fn show_flow(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<Json<FlowDto>> {
    Ok(Json(flow_dto(get_flow(state.meta.as_ref(), &name).await?)?))
}

#[derive(Debug, Deserialize)]
pub struct DiffVersions {
    pub from: i64,
    pub to: i64,
}

#[utoipa::path(get, path = "/api/v1/flows/{name}/diff", params(("from" = i64, Query), ("to" = i64, Query)),
    responses((status = 200, description = "{\"changes\": [\"node x: params.sql: … → …\", …]}"), (status = 404)))]
pub async fn diff_flow(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<DiffVersions>,
) -> ApiResult<Json<serde_json::Value>> {
    let version = |v: i64| {
        let state = state.clone();
        let name = name.clone();
        async move {
            let text = state.meta.get_flow_version(&name, v).await?.ok_or_else(|| {
                Error::NotFound(format!("flow \"{name}\" has no version {v}; `ferry flow show {name}` gives the latest"))
            })?;
            serde_json::from_str::<FlowSpec>(&text)
                .map_err(|e| Error::Internal(format!("stored flow: {e}")))
        }
    };
    let (old, new) = (version(q.from).await?, version(q.to).await?);
    Ok(Json(
        serde_json::json!({ "changes": ferry_flow::model::diff(&old, &new) }),
    ))
}

async fn set_enabled(state: &SharedState, name: &str, enabled: bool) -> Result<FlowDto> {
    if !state.meta.set_flow_enabled(name, enabled).await? {
        get_flow(state.meta.as_ref(), name).await?;
    }
    flow_dto(get_flow(state.meta.as_ref(), name).await?)
}

#[utoipa::path(post, path = "/api/v1/flows/{name}/enable", responses((status = 200, body = FlowDto), (status = 404)))]
pub async fn enable_flow(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<Json<FlowDto>> {
    Ok(Json(set_enabled(&state, &name, true).await?))
}

#[utoipa::path(post, path = "/api/v1/flows/{name}/disable", responses((status = 200, body = FlowDto), (status = 404)))]
pub async fn disable_flow(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<Json<FlowDto>> {
    Ok(Json(set_enabled(&state, &name, false).await?))
}

/// A manual run: for a business date (default: yesterday in the flow's time zone), with values
/// for flow variables.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunFlow {
    #[serde(default)]
    pub bizdate: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunDto {
    pub id: String,
    pub flow: String,
    pub version: i64,
    pub status: String,
    pub trigger: String,
    pub bizdate: String,
    pub scheduled_ms: i64,
    #[schema(value_type = Object)]
    pub variables: serde_json::Value,
    /// Engine, environment and settings of each instance the run uses, as when it started.
    #[schema(value_type = Object)]
    pub instances: serde_json::Value,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// The run's nodes (in a run's detail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<TaskDto>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskDto {
    pub node: String,
    pub kind: String,
    pub upstream: Vec<String>,
    pub status: String,
    pub attempt: i64,
    pub rows: i64,
    pub error: Option<String>,
    #[schema(value_type = Object)]
    pub outputs: serde_json::Value,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub duration_ms: Option<i64>,
}

fn run_dto(r: FlowRunRecord, tasks: Option<Vec<TaskDto>>) -> RunDto {
    let variables: BTreeMap<String, vars::Value> =
        serde_json::from_str(&r.variables).unwrap_or_default();
    RunDto {
        id: r.id,
        flow: r.flow,
        version: r.version,
        status: r.status,
        trigger: r.trigger,
        bizdate: r.bizdate,
        scheduled_ms: r.scheduled_ms,
        variables: variables
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v.value)))
            .collect(),
        instances: r
            .instances
            .as_deref()
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or(serde_json::Value::Null),
        error: r.error,
        created_at_ms: r.created_at_ms,
        started_at_ms: r.started_at_ms,
        finished_at_ms: r.finished_at_ms,
        tasks,
    }
}

fn task_dto(t: TaskRunRecord, spec: &FlowSpec) -> TaskDto {
    let node = spec.node(&t.node);
    TaskDto {
        kind: node.map(|n| n.kind.clone()).unwrap_or_default(),
        upstream: node.map(|n| n.upstream.clone()).unwrap_or_default(),
        status: t.status,
        attempt: t.attempt,
        rows: t.rows,
        error: t.error,
        outputs: t
            .outputs
            .and_then(|o| serde_json::from_str(&o).ok())
            .unwrap_or(serde_json::Value::Null),
        duration_ms: t.started_at_ms.zip(t.finished_at_ms).map(|(s, f)| f - s),
        started_at_ms: t.started_at_ms,
        finished_at_ms: t.finished_at_ms,
        node: t.node,
    }
}

fn parse_date(field: &str, value: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| {
        Error::InvalidInput(format!("{field} {value:?} is not a date like 2026-11-21"))
    })
}

/// The time zone of a flow's schedule (UTC without one).
async fn flow_tz(state: &SharedState, name: &str) -> Result<chrono_tz::Tz> {
    let record = get_flow(state.meta.as_ref(), name).await?;
    let spec: FlowSpec = serde_json::from_str(&record.spec)
        .map_err(|e| Error::Internal(format!("stored flow: {e}")))?;
    match &spec.schedule {
        Some(s) => s.tz(),
        None => Ok(chrono_tz::UTC),
    }
}

/// Starts a run now.
pub async fn run_now(state: &SharedState, name: &str, req: RunFlow) -> Result<RunDto> {
    let tz = flow_tz(state, name).await?;
    let at = match &req.bizdate {
        Some(d) => vars::scheduled_for_bizdate(parse_date("bizdate", d)?, tz)?,
        None => chrono::Utc::now().with_timezone(&tz),
    };
    let run = exec::start_run(
        state.meta.as_ref(),
        RunRequest {
            flow: name.to_string(),
            trigger: "manual".into(),
            at,
            overrides: req.params,
            fire_key: None,
        },
    )
    .await?
    .ok_or_else(|| {
        Error::Conflict(format!(
            "flow \"{name}\" has a run in progress and its concurrency is \"skip\"; wait for it or cancel it"
        ))
    })?;
    state.flows.wake();
    Ok(run_dto(run, None))
}

#[utoipa::path(post, path = "/api/v1/flows/{name}/runs", request_body = RunFlow,
    responses((status = 202, body = RunDto), (status = 400), (status = 404), (status = 409)))]
pub async fn run_flow(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    // The body is optional: an empty one runs for yesterday without parameters.
    let req: RunFlow = if body.iter().all(u8::is_ascii_whitespace) {
        RunFlow::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::InvalidInput(format!("invalid request body: {e}")))?
    };
    let dto = run_now(&state, &name, req).await?;
    Ok((StatusCode::ACCEPTED, Json(dto)).into_response())
}

/// A backfill: one run per business date from `from` to `to` (inclusive), oldest first unless
/// `descending`, at most `parallel` at once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backfill {
    pub from: String,
    pub to: String,
    #[serde(default = "one")]
    pub parallel: usize,
    #[serde(default)]
    pub descending: bool,
}

fn one() -> usize {
    1
}

#[utoipa::path(post, path = "/api/v1/flows/{name}/backfill", request_body = Backfill,
    responses((status = 202, body = Vec<RunDto>), (status = 400), (status = 404)))]
pub async fn backfill_flow(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<Backfill>,
) -> ApiResult<Response> {
    let (from, to) = (parse_date("from", &req.from)?, parse_date("to", &req.to)?);
    if from > to {
        return Err(Error::InvalidInput(format!(
            "from {from} is after to {to}; give the earlier date first (use descending to run newest first)"
        ))
        .into());
    }
    let days = (to - from).num_days() + 1;
    if days > 3660 {
        return Err(Error::InvalidInput(format!(
            "{days} days is more than ten years; split the backfill"
        ))
        .into());
    }
    if req.parallel == 0 {
        return Err(Error::InvalidInput("parallel must be at least 1".into()).into());
    }
    let tz = flow_tz(&state, &name).await?;
    let mut dates: Vec<NaiveDate> = from.iter_days().take(days as usize).collect();
    if req.descending {
        dates.reverse();
    }
    let mut runs = Vec::new();
    for day in dates {
        let run = exec::start_run(
            state.meta.as_ref(),
            RunRequest {
                flow: name.clone(),
                trigger: format!("backfill/{}", req.parallel),
                at: vars::scheduled_for_bizdate(day, tz)?,
                overrides: BTreeMap::new(),
                fire_key: None,
            },
        )
        .await?;
        runs.extend(run.map(|r| run_dto(r, None)));
    }
    state.flows.wake();
    Ok((StatusCode::ACCEPTED, Json(runs)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct RunFilter {
    pub flow: Option<String>,
    pub status: Option<String>,
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/runs", params(("flow" = Option<String>, Query), ("status" = Option<String>, Query), ("limit" = Option<i64>, Query)),
    responses((status = 200, body = Vec<RunDto>)))]
pub async fn list_runs(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(f): ApiQuery<RunFilter>,
) -> ApiResult<Json<Vec<RunDto>>> {
    let mut runs = state
        .meta
        .list_runs(
            f.flow.as_deref(),
            f.status.as_deref(),
            f.limit.unwrap_or(100).clamp(1, 10_000),
        )
        .await?;
    runs.retain(|r| caller.allows(Permission::FlowView, &Resource::Flow(&r.flow)));
    Ok(Json(runs.into_iter().map(|r| run_dto(r, None)).collect()))
}

/// A run with its nodes.
pub async fn run_detail(state: &SharedState, id: &str) -> Result<RunDto> {
    let run = state.meta.get_run(id).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "run {id} does not exist; list runs with `ferry run list`"
        ))
    })?;
    let spec = exec::run_spec(state.meta.as_ref(), &run).await?;
    let mut tasks = state.meta.list_tasks(id).await?;
    // In the flow's order: upstream before downstream.
    let order = spec.topological_order().unwrap_or_default();
    tasks.sort_by_key(|t| {
        order
            .iter()
            .position(|n| n == &t.node)
            .unwrap_or(usize::MAX)
    });
    let tasks = tasks.into_iter().map(|t| task_dto(t, &spec)).collect();
    Ok(run_dto(run, Some(tasks)))
}

#[utoipa::path(get, path = "/api/v1/runs/{id}", responses((status = 200, body = RunDto), (status = 404)))]
pub async fn show_run(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RunDto>> {
    Ok(Json(run_detail(&state, &id).await?))
}

#[derive(Debug, Deserialize)]
pub struct LogFilter {
    /// One node's lines; all nodes' when absent.
    pub node: Option<String>,
    /// Lines after this sequence number (of `node`).
    pub after: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogLineDto {
    pub node: String,
    pub seq: i64,
    pub at_ms: i64,
    pub line: String,
}

#[utoipa::path(get, path = "/api/v1/runs/{id}/logs", params(("node" = Option<String>, Query), ("after" = Option<i64>, Query)),
    responses((status = 200, body = Vec<LogLineDto>), (status = 404)))]
pub async fn run_logs(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    ApiQuery(f): ApiQuery<LogFilter>,
) -> ApiResult<Json<Vec<LogLineDto>>> {
    let tasks = state.meta.list_tasks(&id).await?;
    if tasks.is_empty() {
        return Err(Error::NotFound(format!(
            "run {id} does not exist; list runs with `ferry run list`"
        ))
        .into());
    }
    let mut lines: Vec<(String, TaskLogLine)> = Vec::new();
    for t in tasks
        .iter()
        .filter(|t| f.node.as_ref().is_none_or(|n| n == &t.node))
    {
        for l in state.meta.task_logs(&t.id, f.after.unwrap_or(0)).await? {
            lines.push((t.node.clone(), l));
        }
    }
    lines.sort_by_key(|(_, l)| (l.at_ms, l.seq));
    Ok(Json(
        lines
            .into_iter()
            .map(|(node, l)| LogLineDto {
                node,
                seq: l.seq,
                at_ms: l.at_ms,
                line: l.line,
            })
            .collect(),
    ))
}

/// New log lines of a run's tasks after the sequence numbers already seen.
async fn new_lines(
    meta: &dyn MetaStore,
    id: &str,
    seen: &mut BTreeMap<String, i64>,
) -> Result<Vec<LogLineDto>> {
    let mut lines = Vec::new();
    for t in meta.list_tasks(id).await? {
        let after = seen.get(&t.id).copied().unwrap_or(0);
        for l in meta.task_logs(&t.id, after).await? {
            seen.insert(t.id.clone(), l.seq);
            lines.push(LogLineDto {
                node: t.node.clone(),
                seq: l.seq,
                at_ms: l.at_ms,
                line: l.line,
            });
        }
    }
    lines.sort_by_key(|l| (l.at_ms, l.seq));
    Ok(lines)
}

/// A run's log lines as server-sent events while it runs: one `log` event per line (JSON), then
/// an `end` event with the run's final status.
#[utoipa::path(get, path = "/api/v1/runs/{id}/logs/stream", responses((status = 200, description = "text/event-stream"), (status = 404)))]
pub async fn stream_logs(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    state.meta.get_run(&id).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "run {id} does not exist; list runs with `ferry run list`"
        ))
    })?;
    struct Tail {
        state: SharedState,
        id: String,
        seen: BTreeMap<String, i64>,
        done: bool,
    }
    let tail = Tail {
        state,
        id,
        seen: BTreeMap::new(),
        done: false,
    };
    let events = futures::stream::unfold(tail, |mut t| async move {
        if t.done {
            return None;
        }
        loop {
            // The status first: every line written before the run ended is read after it.
            let status = match t.state.meta.get_run(&t.id).await {
                Ok(Some(r)) => r.status,
                _ => "unknown".into(),
            };
            let lines = new_lines(t.state.meta.as_ref(), &t.id, &mut t.seen)
                .await
                .unwrap_or_default();
            let mut events: Vec<std::result::Result<Event, std::convert::Infallible>> = lines
                .iter()
                .filter_map(|l| Event::default().event("log").json_data(l).ok())
                .map(Ok)
                .collect();
            if !matches!(status.as_str(), "running" | "queued") {
                events.push(Ok(Event::default().event("end").data(status)));
                t.done = true;
            }
            if !events.is_empty() {
                return Some((futures::stream::iter(events), t));
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    });
    Ok(Sse::new(events.flatten())
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", responses((status = 200, body = RunDto), (status = 404), (status = 409)))]
pub async fn cancel_run(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RunDto>> {
    exec::cancel_run(state.meta.as_ref(), &id).await?;
    state.flows.wake();
    Ok(Json(run_detail(&state, &id).await?))
}

async fn restart(state: &SharedState, id: &str, all: bool) -> Result<RunDto> {
    exec::restart_run(state.meta.as_ref(), id, all).await?;
    state.flows.wake();
    run_detail(state, id).await
}

#[utoipa::path(post, path = "/api/v1/runs/{id}/restore", responses((status = 200, body = RunDto), (status = 404), (status = 409)))]
pub async fn restore_run(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RunDto>> {
    Ok(Json(restart(&state, &id, false).await?))
}

#[utoipa::path(post, path = "/api/v1/runs/{id}/rerun", responses((status = 200, body = RunDto), (status = 404), (status = 409)))]
pub async fn rerun_run(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RunDto>> {
    Ok(Json(restart(&state, &id, true).await?))
}

#[utoipa::path(get, path = "/api/v1/flow-templates", responses((status = 200, description = "Templates with their parameters")))]
pub async fn list_templates() -> Json<serde_json::Value> {
    Json(serde_json::to_value(ferry_flow::templates::templates()).unwrap_or_default())
}

/// Renders a template into a flow file: `{"flow": NAME, "params": {…}}` → `{"toml": …}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenderTemplate {
    pub flow: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

#[utoipa::path(post, path = "/api/v1/flow-templates/{name}", request_body = RenderTemplate,
    responses((status = 200, description = "{\"toml\": the flow file}"), (status = 400), (status = 404)))]
pub async fn render_template(
    Path(name): Path<String>,
    ApiJson(req): ApiJson<RenderTemplate>,
) -> ApiResult<Json<serde_json::Value>> {
    let toml = ferry_flow::templates::render(&name, &req.flow, &req.params)?;
    Ok(Json(serde_json::json!({ "toml": toml })))
}

//! Routes, extractors and handlers of the HTTP API, and the OpenAPI document generated from them.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use ferry_core::{Error, Feature};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use crate::console::{ScriptResult, SqlRequest};
use crate::error::{ApiError, ApiResult, bad_request};
use crate::instances::{AddInstance, InstanceDto, UpdateInstance};
use crate::queries::{QueryDto, ResultParams, SubmitQuery};
use crate::rbac::Caller;
use crate::sessions::{OpenSession, SessionDto};
use crate::transfers::TransferDto;
use crate::{SharedState, console, instances, queries, sessions, transfers};

/// A JSON body whose rejections use the API's error shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError(
                Error::TooLarge("the request body is larger than this server accepts".into()),
            )),
            Err(e) => Err(bad_request(match e {
                JsonRejection::JsonDataError(e) => {
                    format!("invalid request body: {}", e.body_text())
                }
                other => format!("invalid request body: {}", other.body_text()),
            })),
        }
    }
}

/// A query string whose rejections use the API's error shape.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(bad_request(match e {
                QueryRejection::FailedToDeserializeQueryString(e) => {
                    format!("invalid query string: {}", e.body_text())
                }
                other => other.body_text(),
            })),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ferry API",
        description = "Instances, SQL console, SQL windows, async queries, transfers, archives and task flows"
    ),
    paths(
        healthz,
        list_instances,
        add_instance,
        show_instance,
        update_instance,
        remove_instance,
        test_instance,
        databases,
        tables,
        table,
        processes,
        kill_process,
        connections,
        run_sql,
        open_session,
        list_sessions,
        show_session,
        close_session,
        run_session_sql,
        submit_query,
        list_queries,
        show_query,
        cancel_query,
        query_result,
        policy_actions,
        submit_transfer,
        list_transfers,
        show_transfer,
        cancel_transfer,
        submit_export,
        schema_diff,
        list_archives,
        add_archive,
        remove_archive,
        crate::flows::apply_flow,
        crate::flows::list_flows,
        crate::flows::show_flow,
        crate::flows::enable_flow,
        crate::flows::disable_flow,
        crate::flows::run_flow,
        crate::flows::backfill_flow,
        crate::flows::list_runs,
        crate::flows::show_run,
        crate::flows::run_logs,
        crate::flows::cancel_run,
        crate::flows::restore_run,
        crate::flows::rerun_run,
        crate::flows::list_templates,
        crate::flows::diff_flow,
        crate::flows::stream_logs,
        crate::trends::trends,
        crate::flows::render_template,
        crate::users::login,
        crate::users::logout,
        crate::users::whoami,
        crate::users::change_password,
        crate::users::list_tokens,
        crate::users::create_token,
        crate::users::revoke_token,
        crate::users::list_users,
        crate::users::add_user,
        crate::users::show_user,
        crate::users::update_user,
        crate::users::remove_user,
        crate::users::list_roles,
        crate::users::put_role,
        crate::users::remove_role,
        crate::audit::search,
        crate::audit::export,
        crate::security::list_rules,
        crate::security::set_rule,
        crate::security::remove_rule,
        crate::security::list_masks,
        crate::security::add_mask,
        crate::security::remove_mask,
        crate::security::request_approval,
        crate::security::list_approvals,
        crate::security::show_approval,
        crate::security::approve,
        crate::security::reject,
        crate::security::run_approved,
        crate::security::rotate_key_endpoint
    ),
    components(schemas(
        AddInstance,
        UpdateInstance,
        InstanceDto,
        SqlRequest,
        ScriptResult,
        OpenSession,
        SessionDto,
        SubmitQuery,
        QueryDto,
        TransferDto,
        crate::flows::ApplyFlow,
        crate::flows::FlowDto,
        crate::flows::RunFlow,
        crate::flows::RunDto,
        crate::flows::TaskDto,
        crate::flows::Backfill,
        crate::flows::LogLineDto,
        crate::flows::RenderTemplate,
        crate::users::Login,
        crate::users::Issued,
        crate::users::TokenDto,
        crate::users::UserDto,
        crate::users::WhoAmI,
        crate::users::ChangePassword,
        crate::users::NewToken,
        crate::users::NewUser,
        crate::users::UpdateUser,
        crate::users::RoleDto,
        crate::users::PutRole,
        crate::security::SetRule,
        crate::security::AddMask,
        crate::security::RequestApproval,
        crate::security::Decide,
        crate::security::Rotated
    ))
)]
pub struct ApiDoc;

pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/instances", get(list_instances).post(add_instance))
        .route(
            "/api/v1/instances/{name}",
            get(show_instance)
                .patch(update_instance)
                .delete(remove_instance),
        )
        .route("/api/v1/instances/{name}/test", post(test_instance))
        .route("/api/v1/instances/{name}/databases", get(databases))
        .route("/api/v1/instances/{name}/tables", get(tables))
        .route("/api/v1/instances/{name}/tables/{table}", get(table))
        .route("/api/v1/instances/{name}/processes", get(processes))
        .route(
            "/api/v1/instances/{name}/processes/{id}",
            delete(kill_process),
        )
        .route("/api/v1/instances/{name}/connections", get(connections))
        .route(
            "/api/v1/instances/{name}/trends",
            get(crate::trends::trends),
        )
        .route("/api/v1/instances/{name}/sql", post(run_sql))
        .route("/api/v1/sessions", get(list_sessions).post(open_session))
        .route(
            "/api/v1/sessions/{id}",
            get(show_session).delete(close_session),
        )
        .route("/api/v1/sessions/{id}/sql", post(run_session_sql))
        .route(
            "/api/v1/sessions/{id}/cancel",
            post(cancel_session_statement),
        )
        .route("/api/v1/queries", get(list_queries).post(submit_query))
        .route("/api/v1/queries/{id}", get(show_query).delete(cancel_query))
        .route("/api/v1/queries/{id}/result", get(query_result))
        .route("/api/v1/policy-actions", get(policy_actions))
        .route(
            "/api/v1/transfers",
            get(list_transfers).post(submit_transfer),
        )
        .route(
            "/api/v1/transfers/{id}",
            get(show_transfer).delete(cancel_transfer),
        )
        .route("/api/v1/exports", post(submit_export))
        .route("/api/v1/schema-diff", get(schema_diff))
        .route("/api/v1/archives", get(list_archives).post(add_archive))
        .route("/api/v1/archives/{name}", delete(remove_archive))
        .merge(crate::flows::routes())
        .route("/api/v1/auth/login", post(crate::users::login))
        .route("/api/v1/auth/logout", post(crate::users::logout))
        .route("/api/v1/auth/whoami", get(crate::users::whoami))
        .route("/api/v1/auth/password", post(crate::users::change_password))
        .route(
            "/api/v1/tokens",
            get(crate::users::list_tokens).post(crate::users::create_token),
        )
        .route("/api/v1/tokens/{id}", delete(crate::users::revoke_token))
        .route(
            "/api/v1/users",
            get(crate::users::list_users).post(crate::users::add_user),
        )
        .route(
            "/api/v1/users/{name}",
            get(crate::users::show_user)
                .patch(crate::users::update_user)
                .delete(crate::users::remove_user),
        )
        .route("/api/v1/roles", get(crate::users::list_roles))
        .route(
            "/api/v1/roles/{name}",
            axum::routing::put(crate::users::put_role).delete(crate::users::remove_role),
        )
        .route(
            "/api/v1/rules",
            get(crate::security::list_rules)
                .post(crate::security::set_rule)
                .delete(crate::security::remove_rule),
        )
        .route(
            "/api/v1/masks",
            get(crate::security::list_masks).post(crate::security::add_mask),
        )
        .route("/api/v1/masks/{id}", delete(crate::security::remove_mask))
        .route(
            "/api/v1/approvals",
            get(crate::security::list_approvals).post(crate::security::request_approval),
        )
        .route(
            "/api/v1/approvals/{id}",
            get(crate::security::show_approval),
        )
        .route(
            "/api/v1/approvals/{id}/approve",
            post(crate::security::approve),
        )
        .route(
            "/api/v1/approvals/{id}/reject",
            post(crate::security::reject),
        )
        .route(
            "/api/v1/approvals/{id}/run",
            post(crate::security::run_approved),
        )
        .route(
            "/api/v1/admin/rotate-key",
            post(crate::security::rotate_key_endpoint),
        )
        .route("/api/v1/audit", get(crate::audit::search))
        .route("/api/v1/audit/export", get(crate::audit::export))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::middleware,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.max_request_bytes,
        ))
        .layer(axum::middleware::from_fn(crate::auth::security_headers))
        .fallback(|| async {
            ApiError(Error::NotFound(
                "no such API endpoint; see /api/v1/openapi.json".into(),
            ))
        })
        .with_state(state)
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The server is up")))]
async fn healthz(State(state): State<SharedState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "metadata_store": state.meta.backend() }))
}

async fn metrics(State(state): State<SharedState>) -> Response {
    let body = state.metrics.render(&state);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn openapi() -> Response {
    match ApiDoc::openapi().to_pretty_json() {
        Ok(text) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            text,
        )
            .into_response(),
        Err(e) => ApiError(Error::Internal(format!(
            "rendering the OpenAPI document: {e}"
        )))
        .into_response(),
    }
}

#[utoipa::path(get, path = "/api/v1/instances", responses((status = 200, body = Vec<InstanceDto>)))]
async fn list_instances(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<InstanceDto>>> {
    let pools = state.instances.cached();
    let mut out = Vec::new();
    for rec in state.meta.list_instances().await? {
        let visible = caller.allows(
            crate::rbac::Permission::Read,
            &crate::rbac::Resource::Instance {
                name: &rec.name,
                environment: &rec.environment,
                database: None,
            },
        );
        if !visible {
            continue;
        }
        let stats = pools
            .iter()
            .find(|p| p.name().as_str() == rec.name)
            .map(|p| p.stats());
        out.push(instances::dto(&rec, stats)?);
    }
    Ok(Json(out))
}

#[utoipa::path(post, path = "/api/v1/instances", request_body = AddInstance,
    responses((status = 201, body = InstanceDto), (status = 400), (status = 409), (status = 502)))]
async fn add_instance(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<AddInstance>,
) -> ApiResult<Response> {
    let (dto, info) = instances::add(&state, req).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "instance": dto, "server": info })),
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/instances/{name}", responses((status = 200, body = InstanceDto), (status = 404)))]
async fn show_instance(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<Json<InstanceDto>> {
    let rec = state.instance_record(&name).await?;
    let stats = state
        .instances
        .cached()
        .iter()
        .find(|p| p.name().as_str() == name)
        .map(|p| p.stats());
    Ok(Json(instances::dto(&rec, stats)?))
}

#[utoipa::path(patch, path = "/api/v1/instances/{name}", request_body = UpdateInstance, responses((status = 200, body = InstanceDto)))]
async fn update_instance(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<UpdateInstance>,
) -> ApiResult<Json<InstanceDto>> {
    Ok(Json(instances::update(&state, &name, req).await?))
}

#[utoipa::path(delete, path = "/api/v1/instances/{name}", responses((status = 204), (status = 404)))]
async fn remove_instance(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    instances::remove(&state, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/instances/{name}/test", responses((status = 200, description = "Server version and round trip")))]
async fn test_instance(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ferry_connect::ServerInfo>> {
    let pool = state.pool(&name).await?;
    let mut lease = pool
        .acquire(Feature::System, None, "connection test")
        .await?;
    Ok(Json(lease.conn().test().await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct DatabaseParam {
    /// The database to look in (the URL's own when omitted).
    database: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/instances/{name}/databases", responses((status = 200, body = Vec<String>)))]
async fn databases(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<String>>> {
    let pool = state.pool(&name).await?;
    let mut lease = pool.acquire(Feature::System, None, "catalog").await?;
    Ok(Json(lease.conn().databases().await?))
}

#[utoipa::path(get, path = "/api/v1/instances/{name}/tables", params(DatabaseParam),
    responses((status = 200, description = "Tables with row estimates and sizes (Redis: keys with type and TTL)")))]
async fn tables(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    ApiQuery(p): ApiQuery<DatabaseParam>,
) -> ApiResult<Json<Vec<ferry_connect::TableInfo>>> {
    let pool = state.pool(&name).await?;
    let mut lease = pool
        .acquire(Feature::System, p.database.as_deref(), "catalog")
        .await?;
    Ok(Json(lease.conn().tables().await?))
}

#[utoipa::path(get, path = "/api/v1/instances/{name}/tables/{table}", params(DatabaseParam),
    responses((status = 200, description = "Columns, primary key and indexes"), (status = 404)))]
async fn table(
    State(state): State<SharedState>,
    Path((name, table)): Path<(String, String)>,
    ApiQuery(p): ApiQuery<DatabaseParam>,
) -> ApiResult<Json<ferry_connect::TableDetail>> {
    let pool = state.pool(&name).await?;
    let (schema, table_name) = match (pool.connector().engine(), table.split_once('.')) {
        (ferry_core::Engine::Redis, _) | (_, None) => (None, table.as_str()),
        (_, Some((s, t))) => (Some(s), t),
    };
    let mut lease = pool
        .acquire(Feature::System, p.database.as_deref(), "catalog")
        .await?;
    Ok(Json(lease.conn().table(schema, table_name).await?))
}

#[utoipa::path(get, path = "/api/v1/instances/{name}/processes", responses((status = 200, description = "Server-side sessions")))]
async fn processes(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<ferry_connect::ServerSession>>> {
    let pool = state.pool(&name).await?;
    let mut lease = pool.acquire(Feature::System, None, "process list").await?;
    Ok(Json(lease.conn().server_sessions().await?))
}

#[utoipa::path(delete, path = "/api/v1/instances/{name}/processes/{id}", responses((status = 204), (status = 404)))]
async fn kill_process(
    State(state): State<SharedState>,
    Path((name, id)): Path<(String, i64)>,
) -> ApiResult<StatusCode> {
    let pool = state.pool(&name).await?;
    let mut lease = pool.acquire(Feature::System, None, "kill").await?;
    lease.conn().kill_server_session(id).await?;
    tracing::warn!(instance = %name, server_session = id, "server session killed by request");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/instances/{name}/connections", responses((status = 200, description = "Pool counters and leases")))]
async fn connections(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let pool = state.pool(&name).await?;
    Ok(Json(
        serde_json::json!({ "stats": pool.stats(), "leases": pool.leases() }),
    ))
}

#[utoipa::path(post, path = "/api/v1/instances/{name}/sql", request_body = SqlRequest,
    responses((status = 200, body = ScriptResult, description = "JSON results, or a stream in the requested format"),
              (status = 429, description = "The instance is at its connection cap")))]
async fn run_sql(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SqlRequest>,
) -> ApiResult<Response> {
    Ok(console::run_request(&state, &caller, &name, req).await?)
}

#[utoipa::path(post, path = "/api/v1/sessions", request_body = OpenSession, responses((status = 201, body = SessionDto)))]
async fn open_session(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<OpenSession>,
) -> ApiResult<Response> {
    let dto = sessions::open(&state, &caller, req).await?;
    Ok((StatusCode::CREATED, Json(dto)).into_response())
}

#[utoipa::path(get, path = "/api/v1/sessions", responses((status = 200, body = Vec<SessionDto>)))]
async fn list_sessions(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> Json<Vec<SessionDto>> {
    Json(state.sessions.list_for(&caller))
}

#[utoipa::path(get, path = "/api/v1/sessions/{id}", responses((status = 200, body = SessionDto), (status = 404)))]
async fn show_session(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionDto>> {
    let window = state.sessions.get_for(&id, &caller)?;
    Ok(Json(
        state
            .sessions
            .list()
            .into_iter()
            .find(|s| s.id == window.id)
            .ok_or_else(|| Error::NotFound(format!("SQL window {id} was closed")))?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/sessions/{id}", responses((status = 200, description = "Closed; says whether a transaction was rolled back")))]
async fn close_session(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    state.sessions.get_for(&id, &caller)?;
    let rolled_back = sessions::close_now(&state, &id, "closed by request")?;
    Ok(Json(
        serde_json::json!({ "closed": true, "rolled_back": rolled_back }),
    ))
}

#[utoipa::path(post, path = "/api/v1/sessions/{id}/sql", request_body = SqlRequest, responses((status = 200, body = ScriptResult)))]
async fn run_session_sql(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SqlRequest>,
) -> ApiResult<Response> {
    Ok(sessions::run(&state, &caller, &id, req).await?)
}

#[utoipa::path(post, path = "/api/v1/sessions/{id}/cancel",
    responses((status = 200, description = "Whether a running statement was cancelled; the window stays open")))]
async fn cancel_session_statement(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let cancelled = sessions::cancel(&state, &caller, &id).await?;
    Ok(Json(serde_json::json!({ "cancelled": cancelled })))
}

#[utoipa::path(post, path = "/api/v1/queries", request_body = SubmitQuery, responses((status = 202, body = QueryDto)))]
async fn submit_query(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<SubmitQuery>,
) -> ApiResult<Response> {
    let dto = queries::submit(&state, &caller, req).await?;
    Ok((StatusCode::ACCEPTED, Json(dto)).into_response())
}

#[utoipa::path(get, path = "/api/v1/queries", responses((status = 200, body = Vec<QueryDto>)))]
async fn list_queries(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<QueryDto>>> {
    Ok(Json(queries::list(&state, &caller).await?))
}

#[utoipa::path(get, path = "/api/v1/queries/{id}", responses((status = 200, body = QueryDto), (status = 404)))]
async fn show_query(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<QueryDto>> {
    Ok(Json(queries::get(&state, &caller, &id).await?.into()))
}

#[utoipa::path(delete, path = "/api/v1/queries/{id}", responses((status = 200, body = QueryDto), (status = 409)))]
async fn cancel_query(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<QueryDto>> {
    Ok(Json(queries::cancel(&state, &caller, &id).await?))
}

#[utoipa::path(get, path = "/api/v1/queries/{id}/result", params(ResultParams),
    responses((status = 200, description = "A JSON page, or the whole result streamed"), (status = 409, description = "No result yet")))]
async fn query_result(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<ResultParams>,
) -> ApiResult<Response> {
    Ok(queries::result(&state, &caller, &id, p).await?)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct ActionParams {
    instance: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/policy-actions", params(ActionParams), responses((status = 200, description = "Newest first")))]
async fn policy_actions(
    State(state): State<SharedState>,
    ApiQuery(p): ApiQuery<ActionParams>,
) -> ApiResult<Json<Vec<ferry_meta::PolicyActionRecord>>> {
    Ok(Json(
        state
            .meta
            .list_policy_actions(
                p.instance.as_deref(),
                p.limit.unwrap_or(100).clamp(1, 10_000),
            )
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/transfers", request_body(content = Object, description = "A transfer spec: source (table or query), target, mode, by, create, allow_lossy, where, verify"),
    responses((status = 202, body = TransferDto), (status = 400), (status = 404)))]
async fn submit_transfer(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    ApiJson(spec): ApiJson<ferry_move::TransferSpec>,
) -> ApiResult<Response> {
    let dto = transfers::submit(&state, &caller, spec).await?;
    Ok((StatusCode::ACCEPTED, Json(dto)).into_response())
}

#[utoipa::path(get, path = "/api/v1/transfers", responses((status = 200, body = Vec<TransferDto>)))]
async fn list_transfers(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<TransferDto>>> {
    let mut out = Vec::new();
    for rec in state.meta.list_transfers(200).await? {
        if crate::auth::owns(&state, &caller, "transfer", &rec.id).await? {
            out.push(TransferDto::from(rec));
        }
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/api/v1/transfers/{id}", responses((status = 200, body = TransferDto), (status = 404)))]
async fn show_transfer(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<TransferDto>> {
    Ok(Json(transfers::get_for(&state, &caller, &id).await?.into()))
}

#[utoipa::path(delete, path = "/api/v1/transfers/{id}", responses((status = 200, body = TransferDto), (status = 409)))]
async fn cancel_transfer(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<TransferDto>> {
    transfers::get_for(&state, &caller, &id).await?;
    Ok(Json(transfers::cancel(&state, &id).await?))
}

#[utoipa::path(post, path = "/api/v1/exports", request_body(content = Object, description = "An export spec: source, url, format, partition_by, partition_column, variables, options, where"),
    responses((status = 202, body = TransferDto, description = "The export runs as a job listed with the transfers"), (status = 400)))]
async fn submit_export(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    ApiJson(spec): ApiJson<ferry_move::ExportSpec>,
) -> ApiResult<Response> {
    let dto = transfers::submit_export(&state, &caller, spec).await?;
    Ok((StatusCode::ACCEPTED, Json(dto)).into_response())
}

#[utoipa::path(get, path = "/api/v1/schema-diff", params(crate::schema_diff::DiffParams),
    responses((status = 200, description = "Differences and the DDL that makes the target match, or missing/extra/different tables"), (status = 404)))]
async fn schema_diff(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(p): ApiQuery<crate::schema_diff::DiffParams>,
) -> ApiResult<Json<serde_json::Value>> {
    crate::schema_diff::authorize(&state, &caller, &p).await?;
    Ok(Json(crate::schema_diff::diff(&state, &p).await?))
}

#[utoipa::path(get, path = "/api/v1/archives", responses((status = 200, description = "Registered archives")))]
async fn list_archives(
    State(state): State<SharedState>,
) -> ApiResult<Json<Vec<ferry_query::ArchiveTable>>> {
    Ok(Json(crate::archives::list(&state).await?))
}

#[utoipa::path(post, path = "/api/v1/archives", request_body(content = Object, description = "name, url, format, partitions, options"),
    responses((status = 201, description = "Registered; query it as instance \"archive\""), (status = 400), (status = 409)))]
async fn add_archive(
    State(state): State<SharedState>,
    ApiJson(table): ApiJson<ferry_query::ArchiveTable>,
) -> ApiResult<Response> {
    let added = crate::archives::add(&state, table).await?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/archives/{name}", responses((status = 204), (status = 404)))]
async fn remove_archive(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    crate::archives::remove(&state, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! Security administration endpoints: SQL rules, masking rules, approval requests (request,
//! approve or reject by another approver, run once exactly as approved), and master-key
//! rotation.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_core::{Error, Feature, Result};
use ferry_guard::MaskAlgorithm;
use ferry_meta::{ApprovalRecord, MaskRuleRecord, MasterKey, SqlRuleRecord, now_ms};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::SharedState;
use crate::api::{ApiJson, ApiQuery};
use crate::error::ApiResult;
use crate::guard::{self, Guard, RULES};
use crate::rbac::{Caller, Permission, Resource};

/// A rule setting.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRule {
    /// `env:NAME` (`env:prod`) or `instance:NAME`.
    pub scope: String,
    /// `max-rows`, `require-where`, `max-affected-rows`, `no-drop` or `ddl-approval`.
    pub rule: String,
    pub value: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RuleQuery {
    /// Show the rules in force on this instance.
    pub instance: Option<String>,
    /// With DELETE: the scope and rule of the setting to remove.
    pub scope: Option<String>,
    pub rule: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/rules", params(RuleQuery), responses((status = 200, description = "The rules, their prod defaults, the stored settings, and (with instance) those in force")))]
pub async fn list_rules(
    State(state): State<SharedState>,
    ApiQuery(q): ApiQuery<RuleQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let rules: Vec<serde_json::Value> = RULES
        .iter()
        .map(|(name, description, prod)| {
            serde_json::json!({ "rule": name, "description": description, "prod_default": prod })
        })
        .collect();
    let settings = state.meta.list_sql_rules().await?;
    let effective = match &q.instance {
        Some(name) => {
            let env = crate::auth::instance_environment(&state, name)
                .await?
                .ok_or_else(|| Error::NotFound(format!("no instance named \"{name}\"")))?;
            let r = guard::rules_for(&state, name, &env).await?;
            Some(serde_json::json!({
                "instance": name, "environment": env,
                "max-rows": r.max_rows, "require-where": r.require_where,
                "max-affected-rows": r.max_affected_rows, "no-drop": r.no_drop,
                "ddl-approval": r.ddl_approval,
            }))
        }
        None => None,
    };
    Ok(Json(
        serde_json::json!({ "rules": rules, "settings": settings, "effective": effective }),
    ))
}

#[utoipa::path(post, path = "/api/v1/rules", request_body = SetRule, responses((status = 200)))]
pub async fn set_rule(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<SetRule>,
) -> ApiResult<Json<SqlRuleRecord>> {
    guard::check_scope(&req.scope)?;
    guard::check_rule(&req.rule, &req.value)?;
    let rec = SqlRuleRecord {
        scope: req.scope,
        rule: req.rule,
        value: req.value,
        updated_at_ms: now_ms(),
    };
    state.meta.set_sql_rule(&rec).await?;
    state.policies.invalidate();
    guard::audit_event(
        &state,
        &caller,
        "rule",
        format!("set {} {} = {}", rec.scope, rec.rule, rec.value),
    )
    .await;
    Ok(Json(rec))
}

#[utoipa::path(delete, path = "/api/v1/rules", params(RuleQuery), responses((status = 200), (status = 404)))]
pub async fn remove_rule(
    State(state): State<SharedState>,
    ApiQuery(q): ApiQuery<RuleQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let (Some(scope), Some(rule)) = (q.scope, q.rule) else {
        return Err(
            Error::InvalidInput("give scope and rule of the setting to remove".into()).into(),
        );
    };
    state.policies.invalidate();
    if !state.meta.delete_sql_rule(&scope, &rule).await? {
        return Err(Error::NotFound(format!("no setting of {rule} for {scope}")).into());
    }
    Ok(Json(serde_json::json!({ "removed": true })))
}

/// A masking rule.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMask {
    /// `*` (default), `env:NAME` or `instance:NAME`.
    #[serde(default)]
    pub scope: Option<String>,
    /// The table (optionally schema-qualified); omit it to mask every column matching `column`
    /// as a pattern.
    #[serde(default)]
    pub table: Option<String>,
    /// The column, or with no table a case-insensitive regular expression over column names.
    pub column: String,
    /// `full`, `keep-last-4` or `hash`.
    pub algorithm: String,
}

#[utoipa::path(get, path = "/api/v1/masks", responses((status = 200)))]
pub async fn list_masks(State(state): State<SharedState>) -> ApiResult<Json<Vec<MaskRuleRecord>>> {
    Ok(Json(state.meta.list_mask_rules().await?))
}

#[utoipa::path(post, path = "/api/v1/masks", request_body = AddMask, responses((status = 201)))]
pub async fn add_mask(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<AddMask>,
) -> ApiResult<Response> {
    req.algorithm.parse::<MaskAlgorithm>()?;
    let scope = req.scope.unwrap_or_else(|| "*".into());
    if scope != "*" {
        guard::check_scope(&scope)?;
    }
    if req.table.is_none() {
        guard::name_pattern(&req.column)?;
    }
    let rec = MaskRuleRecord {
        id: uuid::Uuid::new_v4().to_string(),
        scope,
        table: req.table,
        column: req.column,
        algorithm: req.algorithm,
        created_at_ms: now_ms(),
    };
    state.meta.insert_mask_rule(&rec).await?;
    state.policies.invalidate();
    guard::audit_event(
        &state,
        &caller,
        "mask",
        format!(
            "mask {} {}.{} with {}",
            rec.scope,
            rec.table.as_deref().unwrap_or("*"),
            rec.column,
            rec.algorithm
        ),
    )
    .await;
    Ok((StatusCode::CREATED, Json(rec)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/masks/{id}", responses((status = 200), (status = 404)))]
pub async fn remove_mask(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    state.policies.invalidate();
    if !state.meta.delete_mask_rule(&id).await? {
        return Err(Error::NotFound(format!("no masking rule {id}")).into());
    }
    Ok(Json(serde_json::json!({ "removed": id })))
}

/// A request to run one statement that a rule holds for approval.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestApproval {
    pub instance: String,
    #[serde(default)]
    pub database: Option<String>,
    /// Exactly one statement; it runs as written once approved.
    pub sql: String,
    #[serde(default)]
    pub reason: String,
}

/// A decision on an approval request.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decide {
    /// The SHA-256 of the statement the approver reviewed; when given it must match.
    #[serde(default)]
    pub statement_hash: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ApprovalQuery {
    /// `pending`, `approved`, `rejected`, `running`, `executed` or `failed`.
    pub status: Option<String>,
}

fn sha256_hex(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn approval_resource_env(state: &SharedState, a: &ApprovalRecord) -> Result<String> {
    crate::auth::instance_environment(state, &a.instance)
        .await?
        .ok_or_else(|| Error::NotFound(format!("instance \"{}\" no longer exists", a.instance)))
}

/// Whether the caller may approve requests on the approval's instance.
async fn may_approve(state: &SharedState, caller: &Caller, a: &ApprovalRecord) -> Result<bool> {
    let env = approval_resource_env(state, a).await?;
    Ok(caller.allows(
        Permission::Approve,
        &Resource::Instance {
            name: &a.instance,
            environment: &env,
            database: a.database.as_deref(),
        },
    ))
}

async fn visible_approval(
    state: &SharedState,
    caller: &Caller,
    id: &str,
) -> Result<ApprovalRecord> {
    let not_found = || Error::NotFound(format!("approval request {id} does not exist"));
    let a = state.meta.get_approval(id).await?.ok_or_else(not_found)?;
    if a.requester == caller.user || may_approve(state, caller, &a).await? {
        Ok(a)
    } else {
        Err(not_found())
    }
}

#[utoipa::path(post, path = "/api/v1/approvals", request_body = RequestApproval, responses((status = 201)))]
pub async fn request_approval(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<RequestApproval>,
) -> ApiResult<Response> {
    let pool = state.pool(&req.instance).await?;
    let engine = pool.connector().engine();
    let statements = ferry_connect::script::split_statements(engine, &req.sql);
    let [statement] = statements.as_slice() else {
        return Err(Error::InvalidInput(format!(
            "an approval request holds exactly one statement, got {}",
            statements.len()
        ))
        .into());
    };
    let g = Guard::new(
        &state,
        &caller,
        &req.instance,
        req.database.as_deref(),
        engine,
        "approval",
    )
    .await?;
    // The requester must hold the grant the statement needs; the approval only lifts the rule.
    let class = g
        .classify(statement)
        .iter()
        .map(|c| c.class)
        .max()
        .unwrap_or(ferry_guard::StatementClass::Unknown);
    crate::auth::require_instance(
        &state,
        &caller,
        guard::permission_for(class),
        &req.instance,
        req.database.as_deref(),
    )
    .await?;
    let rec = ApprovalRecord {
        id: uuid::Uuid::new_v4().to_string(),
        requester: caller.user.clone(),
        instance: req.instance,
        database: req.database,
        statement_hash: sha256_hex(statement),
        statement: statement.clone(),
        reason: req.reason,
        status: "pending".into(),
        approver: None,
        result: None,
        created_at_ms: now_ms(),
        decided_at_ms: None,
        executed_at_ms: None,
    };
    state.meta.insert_approval(&rec).await?;
    guard::audit_event(
        &state,
        &caller,
        "approval",
        format!(
            "requested {} on {}: {}",
            rec.id, rec.instance, rec.statement
        ),
    )
    .await;
    Ok((StatusCode::CREATED, Json(rec)).into_response())
}

#[utoipa::path(get, path = "/api/v1/approvals", params(ApprovalQuery), responses((status = 200)))]
pub async fn list_approvals(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ApprovalQuery>,
) -> ApiResult<Json<Vec<ApprovalRecord>>> {
    let mut out = Vec::new();
    for a in state.meta.list_approvals(q.status.as_deref()).await? {
        if a.requester == caller.user || may_approve(&state, &caller, &a).await.unwrap_or(false) {
            out.push(a);
        }
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/api/v1/approvals/{id}", responses((status = 200), (status = 404)))]
pub async fn show_approval(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<ApprovalRecord>> {
    Ok(Json(visible_approval(&state, &caller, &id).await?))
}

async fn decide(
    state: &SharedState,
    caller: &Caller,
    id: &str,
    decision: Option<Decide>,
    to: &str,
) -> Result<ApprovalRecord> {
    let a = visible_approval(state, caller, id).await?;
    if !may_approve(state, caller, &a).await? {
        return Err(Error::PermissionDenied(format!(
            "user \"{}\" lacks the approve permission on instance \"{}\"",
            caller.user, a.instance
        )));
    }
    if a.requester == caller.user {
        return Err(Error::PermissionDenied(
            "a request must be decided by another approver than the one who asked".into(),
        ));
    }
    let decision = decision.unwrap_or_default();
    if let Some(h) = &decision.statement_hash
        && h != &a.statement_hash
    {
        return Err(Error::Conflict(
            "the statement is not the one you reviewed (its hash differs): review it again".into(),
        ));
    }
    if !state
        .meta
        .move_approval(
            id,
            "pending",
            to,
            Some(&caller.user),
            decision.comment.as_deref(),
            now_ms(),
        )
        .await?
    {
        return Err(Error::Conflict(format!(
            "approval request {id} is {} already, not pending",
            a.status
        )));
    }
    guard::audit_event(
        state,
        caller,
        "approval",
        format!("{to} {id}: {}", a.statement),
    )
    .await;
    state
        .meta
        .get_approval(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("approval request {id} does not exist")))
}

#[utoipa::path(post, path = "/api/v1/approvals/{id}/approve", request_body = Decide, responses((status = 200), (status = 403), (status = 409)))]
pub async fn approve(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<ApprovalRecord>> {
    Ok(Json(
        decide(&state, &caller, &id, parse_decision(&body)?, "approved").await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/approvals/{id}/reject", request_body = Decide, responses((status = 200), (status = 403), (status = 409)))]
pub async fn reject(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<ApprovalRecord>> {
    Ok(Json(
        decide(&state, &caller, &id, parse_decision(&body)?, "rejected").await?,
    ))
}

fn parse_decision(body: &[u8]) -> Result<Option<Decide>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| Error::InvalidInput(format!("invalid request body: {e}")))
}

#[utoipa::path(post, path = "/api/v1/approvals/{id}/run", responses((status = 200), (status = 409)))]
pub async fn run_approved(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<ApprovalRecord>> {
    let a = visible_approval(&state, &caller, &id).await?;
    if a.requester != caller.user {
        return Err(Error::PermissionDenied(format!(
            "only {} who asked for approval request {id} can run it",
            a.requester
        ))
        .into());
    }
    if a.statement_hash != sha256_hex(&a.statement) {
        return Err(Error::Conflict(format!(
            "approval request {id} was altered: it will not run"
        ))
        .into());
    }
    // Taking it from approved to running succeeds once, so it runs once.
    if !state
        .meta
        .move_approval(&id, "approved", "running", None, None, now_ms())
        .await?
    {
        return Err(Error::Conflict(format!(
            "approval request {id} is {}: only an approved request runs, and only once",
            a.status
        ))
        .into());
    }
    let outcome = run_statement(&state, &caller, &a).await;
    let (to, result) = match &outcome {
        Ok(msg) => ("executed", msg.clone()),
        Err(e) => ("failed", e.message().to_string()),
    };
    state
        .meta
        .move_approval(&id, "running", to, None, Some(&result), now_ms())
        .await?;
    outcome?;
    Ok(Json(state.meta.get_approval(&id).await?.ok_or_else(
        || Error::NotFound(format!("approval request {id} does not exist")),
    )?))
}

async fn run_statement(state: &SharedState, caller: &Caller, a: &ApprovalRecord) -> Result<String> {
    let pool = state.pool(&a.instance).await?;
    let engine = pool.connector().engine();
    let g = Guard::new(
        state,
        caller,
        &a.instance,
        a.database.as_deref(),
        engine,
        "approval",
    )
    .await?
    .with_approval(&a.id, &a.statement);
    let admitted = g.admit_all(std::slice::from_ref(&a.statement)).await?;
    let mut lease = pool
        .acquire(
            Feature::Console,
            a.database.as_deref(),
            "approved statement",
        )
        .await?;
    let started = std::time::Instant::now();
    let result = lease.conn().run(&a.statement).await;
    let (rows, error, msg) = match result {
        Ok(ferry_connect::StatementOutput::Affected(n)) => {
            (Some(n), None, format!("{n} rows affected"))
        }
        Ok(ferry_connect::StatementOutput::Rows { .. }) => {
            (None, None, "ran; its rows are not kept".into())
        }
        Err(e) => (None, Some(e), String::new()),
    };
    if let Some(adm) = admitted.first() {
        g.finish(adm, rows, started.elapsed(), error.as_ref()).await;
    }
    match error {
        Some(e) => Err(e),
        None => Ok(msg),
    }
}

/// The answer to a key rotation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rotated {
    /// Instance secrets re-encrypted under the new key.
    pub secrets: usize,
}

/// Re-encrypts every stored secret under a new master key, writes the new key file, and
/// makes the new key current; the old key decrypts nothing afterwards.
pub async fn rotate_key(state: &SharedState) -> Result<Rotated> {
    let Some(file) = state.key.file().map(|p| p.to_path_buf()) else {
        return Err(Error::Conflict(
            "the master key comes from FERRY_MASTER_KEY, which Ferry cannot rewrite: stop the servers, re-encrypt with a new key offline, and set the new FERRY_MASTER_KEY".into(),
        ));
    };
    let old = state.key.current();
    let (new, text) = MasterKey::generate()?;
    // Written beside the old file first: a crash after the store changed but before the
    // rename is recovered at start (see `recover_rotation`).
    let pending = ferry_meta::secret::pending_path(&file);
    let _ = std::fs::remove_file(&pending);
    ferry_meta::secret::write_new_key(&pending, &text)?;
    let mut count = 0;
    // Secrets written under the old key while this ran are caught by the next pass.
    for _ in 0..3 {
        let mut changes = Vec::new();
        for (name, secret) in state.meta.instance_secrets().await? {
            if new.decrypt(&secret).is_ok() {
                continue;
            }
            let plain = old.decrypt(&secret)?;
            changes.push((name, secret, new.encrypt(&plain)?));
        }
        if changes.is_empty() {
            break;
        }
        count += changes.len();
        state.meta.replace_instance_secrets(&changes).await?;
        state.key.install(new.clone());
    }
    state.key.install(new);
    std::fs::rename(&pending, &file).map_err(|e| {
        Error::Internal(format!(
            "cannot replace the master key file {}: {e}",
            file.display()
        ))
    })?;
    tracing::warn!(secrets = count, "master key rotated");
    Ok(Rotated { secrets: count })
}

/// Finishes a rotation cut short between re-encrypting the store and replacing the key file:
/// if the stored secrets open only with `master.key.new`, that file becomes the key.
pub async fn recover_rotation(state: &SharedState) -> Result<()> {
    let Some(file) = state.key.file().map(|p| p.to_path_buf()) else {
        return Ok(());
    };
    let pending = ferry_meta::secret::pending_path(&file);
    let Ok(text) = std::fs::read_to_string(&pending) else {
        return Ok(());
    };
    let new = MasterKey::from_base64(&text)?;
    let secrets = state.meta.instance_secrets().await?;
    let opens_new = secrets.iter().any(|(_, s)| new.decrypt(s).is_ok());
    let opens_old = secrets.iter().any(|(_, s)| state.key.decrypt(s).is_ok());
    if opens_new && !opens_old {
        std::fs::rename(&pending, &file)
            .map_err(|e| Error::Internal(format!("finishing a key rotation: {e}")))?;
        state.key.install(new);
        tracing::warn!("finished a master key rotation cut short by a stop");
    } else {
        let _ = std::fs::remove_file(&pending);
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/admin/rotate-key", responses((status = 200, body = Rotated), (status = 409)))]
pub async fn rotate_key_endpoint(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Rotated>> {
    let r = rotate_key(&state).await?;
    guard::audit_event(
        &state,
        &caller,
        "key",
        format!("rotated the master key ({} secrets)", r.secrets),
    )
    .await;
    Ok(Json(r))
}

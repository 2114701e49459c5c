//! Sign-in and identity endpoints: login (token or browser session), logout, whoami, password
//! change, personal tokens, and the administration of users and custom roles.

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::{Error, Result};
use ferry_meta::{AuditRecord, RoleRecord, UserRecord, now_ms};
use serde::{Deserialize, Serialize};

use crate::SharedState;
use crate::api::ApiJson;
use crate::auth::{self, SESSION_COOKIE};
use crate::error::ApiResult;
use crate::rbac::{BUILT_IN_ROLES, Caller, Permission, Resource, built_in_role, parse_grants};

/// Credentials for a login.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub user: String,
    pub password: String,
    /// `token` (default): a personal API token for the CLI; `session`: a browser session cookie.
    #[serde(default)]
    pub kind: Option<String>,
    /// A name for the token, shown in `ferry token list`.
    #[serde(default)]
    pub name: Option<String>,
    /// Days until the token expires (default 90; sessions last 12 hours).
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// A new token: its secret is shown only in this answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Issued {
    pub id: String,
    pub user: String,
    /// The bearer token (tokens only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The CSRF token browser sessions send in `x-csrf-token` (sessions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    pub expires_at_ms: Option<i64>,
}

/// A token as listed (never its secret).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenDto {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
    pub revoked: bool,
}

/// A user as shown (never the password hash).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserDto {
    pub name: String,
    pub roles: Vec<String>,
    pub grants: Vec<String>,
    pub disabled: bool,
    pub created_at_ms: i64,
}

impl From<&UserRecord> for UserDto {
    fn from(u: &UserRecord) -> Self {
        UserDto {
            name: u.name.clone(),
            roles: serde_json::from_str(&u.roles).unwrap_or_default(),
            grants: serde_json::from_str(&u.grants).unwrap_or_default(),
            disabled: u.disabled,
            created_at_ms: u.created_at_ms,
        }
    }
}

/// Who the caller is and what they hold.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    pub user: String,
    pub roles: Vec<String>,
    pub grants: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/auth/login", request_body = Login, responses((status = 201, body = Issued), (status = 401), (status = 429)))]
pub async fn login(
    State(state): State<SharedState>,
    auth::ClientAddr(addr): auth::ClientAddr,
    ApiJson(req): ApiJson<Login>,
) -> ApiResult<Response> {
    let source = addr.unwrap_or_else(|| "unknown".into());
    let kind = req.kind.as_deref().unwrap_or("token");
    if kind != "token" && kind != "session" {
        return Err(Error::InvalidInput(format!(
            "unknown login kind \"{kind}\": use token or session"
        ))
        .into());
    }
    let user = match auth::check_login(&state, &req.user, &req.password, &source).await {
        Ok(u) => u,
        Err(e) => {
            crate::audit::record(
                &state,
                AuditRecord {
                    user: req.user.clone(),
                    source: Some(source),
                    action: "login".into(),
                    outcome: "denied".into(),
                    error: Some(e.message().to_string()),
                    ..Default::default()
                },
            )
            .await;
            return Err(e.into());
        }
    };
    let ttl = if kind == "session" {
        Duration::from_secs(12 * 3600)
    } else {
        Duration::from_secs(u64::from(req.expires_in_days.unwrap_or(90).clamp(1, 3650)) * 86_400)
    };
    let name = req
        .name
        .clone()
        .unwrap_or_else(|| format!("{kind} from {source}"));
    let (rec, secret, csrf) = auth::issue(&state, &user.name, kind, &name, Some(ttl)).await?;
    crate::audit::record(
        &state,
        AuditRecord {
            user: user.name.clone(),
            source: Some(source),
            action: "login".into(),
            statement: Some(format!("{kind} {}", rec.id)),
            outcome: "ok".into(),
            ..Default::default()
        },
    )
    .await;
    let body = Issued {
        id: rec.id,
        user: user.name,
        token: (kind == "token").then(|| secret.clone()),
        csrf_token: csrf,
        expires_at_ms: rec.expires_at_ms,
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if kind == "session" {
        let cookie = format!(
            "{SESSION_COOKIE}={secret}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
            ttl.as_secs()
        );
        if let Ok(v) = header::HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    Ok(response)
}

#[utoipa::path(post, path = "/api/v1/auth/logout", responses((status = 200, description = "The token or session used for this call is revoked")))]
pub async fn logout(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    let revoked = match &caller.credential_id {
        Some(id) => state.meta.revoke_token(id, None, now_ms()).await?,
        None => false,
    };
    Ok(Json(serde_json::json!({ "revoked": revoked })))
}

#[utoipa::path(get, path = "/api/v1/auth/whoami", responses((status = 200, body = WhoAmI)))]
pub async fn whoami(Extension(caller): Extension<Caller>) -> Json<WhoAmI> {
    Json(WhoAmI {
        user: caller.user.clone(),
        roles: caller.roles.clone(),
        grants: caller.grants.iter().map(|g| g.to_string()).collect(),
    })
}

/// A password change by the user themselves.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    pub old_password: String,
    pub new_password: String,
}

#[utoipa::path(post, path = "/api/v1/auth/password", request_body = ChangePassword, responses((status = 200)))]
pub async fn change_password(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ChangePassword>,
) -> ApiResult<Json<serde_json::Value>> {
    let source = caller.source.clone().unwrap_or_else(|| "unknown".into());
    let mut user = auth::check_login(&state, &caller.user, &req.old_password, &source)
        .await
        .map_err(|_| Error::PermissionDenied("the old password is wrong".into()))?;
    user.password_hash = hash_blocking(req.new_password).await?;
    user.updated_at_ms = now_ms();
    state.meta.update_user(&user).await?;
    Ok(Json(serde_json::json!({ "changed": true })))
}

async fn hash_blocking(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| Error::Internal(format!("hashing a password: {e}")))?
}

/// A new personal token for the caller.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
    pub expires_in_days: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/tokens", responses((status = 200, body = Vec<TokenDto>)))]
pub async fn list_tokens(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<TokenDto>>> {
    Ok(Json(
        state
            .meta
            .list_tokens(&caller.user)
            .await?
            .into_iter()
            .map(|t| TokenDto {
                id: t.id,
                name: t.name,
                kind: t.kind,
                created_at_ms: t.created_at_ms,
                expires_at_ms: t.expires_at_ms,
                last_used_ms: t.last_used_ms,
                revoked: t.revoked_at_ms.is_some(),
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/tokens", request_body = NewToken, responses((status = 201, body = Issued)))]
pub async fn create_token(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<NewToken>,
) -> ApiResult<Response> {
    let days = u64::from(req.expires_in_days.unwrap_or(90).clamp(1, 3650));
    let (rec, secret, _) = auth::issue(
        &state,
        &caller.user,
        "token",
        &req.name,
        Some(Duration::from_secs(days * 86_400)),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Issued {
            id: rec.id,
            user: caller.user,
            token: Some(secret),
            csrf_token: None,
            expires_at_ms: rec.expires_at_ms,
        }),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", responses((status = 200), (status = 404)))]
pub async fn revoke_token(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let any = caller.allows(Permission::Security, &Resource::Server);
    let user = (!any).then_some(caller.user.as_str());
    if !state.meta.revoke_token(&id, user, now_ms()).await? {
        return Err(Error::NotFound(format!(
            "no live token {id} of yours: list them with `ferry token list`"
        ))
        .into());
    }
    Ok(Json(serde_json::json!({ "revoked": true })))
}

/// A new user.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub password: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub grants: Vec<String>,
}

/// Changes to a user; omitted fields stay.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub password: Option<String>,
    pub roles: Option<Vec<String>>,
    pub grants: Option<Vec<String>>,
    pub disabled: Option<bool>,
}

async fn check_roles(state: &SharedState, roles: &[String]) -> Result<()> {
    let custom = state.meta.list_roles().await?;
    for r in roles {
        if built_in_role(r).is_none() && !custom.iter().any(|c| &c.name == r) {
            return Err(Error::InvalidInput(format!(
                "no role named \"{r}\": built-in roles are admin, dba, developer, viewer; custom ones are listed by `ferry role list`"
            )));
        }
    }
    Ok(())
}

fn check_user_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
    {
        return Err(Error::InvalidInput(format!(
            "invalid user name \"{name}\": use 1-64 letters, digits, '.', '_', '-' or '@'"
        )));
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/users", responses((status = 200, body = Vec<UserDto>)))]
pub async fn list_users(State(state): State<SharedState>) -> ApiResult<Json<Vec<UserDto>>> {
    Ok(Json(
        state
            .meta
            .list_users()
            .await?
            .iter()
            .map(UserDto::from)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/users", request_body = NewUser, responses((status = 201, body = UserDto)))]
pub async fn add_user(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<NewUser>,
) -> ApiResult<Response> {
    check_user_name(&req.name)?;
    check_roles(&state, &req.roles).await?;
    parse_grants(&req.grants)?;
    let now = now_ms();
    let rec = UserRecord {
        name: req.name,
        password_hash: hash_blocking(req.password).await?,
        roles: serde_json::to_string(&req.roles).unwrap_or_else(|_| "[]".into()),
        grants: serde_json::to_string(&req.grants).unwrap_or_else(|_| "[]".into()),
        disabled: false,
        created_at_ms: now,
        updated_at_ms: now,
    };
    state.meta.insert_user(&rec).await?;
    Ok((StatusCode::CREATED, Json(UserDto::from(&rec))).into_response())
}

async fn user_or_404(state: &SharedState, name: &str) -> Result<UserRecord> {
    state
        .meta
        .get_user(name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no user named \"{name}\"")))
}

#[utoipa::path(get, path = "/api/v1/users/{name}", responses((status = 200, body = UserDto), (status = 404)))]
pub async fn show_user(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<Json<UserDto>> {
    Ok(Json(UserDto::from(&user_or_404(&state, &name).await?)))
}

#[utoipa::path(patch, path = "/api/v1/users/{name}", request_body = UpdateUser, responses((status = 200, body = UserDto)))]
pub async fn update_user(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> ApiResult<Json<UserDto>> {
    let mut rec = user_or_404(&state, &name).await?;
    if let Some(roles) = &req.roles {
        check_roles(&state, roles).await?;
        if name == caller.user && !roles.iter().any(|r| r == "admin") && caller.has_role("admin") {
            return Err(Error::InvalidInput(
                "you cannot take the admin role from yourself: another administrator must".into(),
            )
            .into());
        }
        rec.roles = serde_json::to_string(roles).unwrap_or_else(|_| "[]".into());
    }
    if let Some(grants) = &req.grants {
        parse_grants(grants)?;
        rec.grants = serde_json::to_string(grants).unwrap_or_else(|_| "[]".into());
    }
    if let Some(pw) = req.password {
        rec.password_hash = hash_blocking(pw).await?;
    }
    if let Some(d) = req.disabled {
        if d && name == caller.user {
            return Err(Error::InvalidInput("you cannot disable yourself".into()).into());
        }
        rec.disabled = d;
    }
    rec.updated_at_ms = now_ms();
    state.meta.update_user(&rec).await?;
    Ok(Json(UserDto::from(&rec)))
}

#[utoipa::path(delete, path = "/api/v1/users/{name}", responses((status = 200), (status = 404)))]
pub async fn remove_user(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    if name == caller.user {
        return Err(Error::InvalidInput("you cannot remove yourself".into()).into());
    }
    if !state.meta.delete_user(&name).await? {
        return Err(Error::NotFound(format!("no user named \"{name}\"")).into());
    }
    Ok(Json(serde_json::json!({ "removed": name })))
}

/// A role as shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RoleDto {
    pub name: String,
    pub description: String,
    pub grants: Vec<String>,
    pub built_in: bool,
}

/// A custom role's definition.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutRole {
    #[serde(default)]
    pub description: String,
    pub grants: Vec<String>,
}

#[utoipa::path(get, path = "/api/v1/roles", responses((status = 200, body = Vec<RoleDto>)))]
pub async fn list_roles(State(state): State<SharedState>) -> ApiResult<Json<Vec<RoleDto>>> {
    let mut out: Vec<RoleDto> = BUILT_IN_ROLES
        .iter()
        .map(|(name, description, grants)| RoleDto {
            name: name.to_string(),
            description: description.to_string(),
            grants: grants.iter().map(|g| g.to_string()).collect(),
            built_in: true,
        })
        .collect();
    for r in state.meta.list_roles().await? {
        out.push(RoleDto {
            name: r.name,
            description: r.description,
            grants: serde_json::from_str(&r.grants).unwrap_or_default(),
            built_in: false,
        });
    }
    Ok(Json(out))
}

#[utoipa::path(put, path = "/api/v1/roles/{name}", request_body = PutRole, responses((status = 200, body = RoleDto)))]
pub async fn put_role(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PutRole>,
) -> ApiResult<Json<RoleDto>> {
    check_user_name(&name).map_err(|_| {
        Error::InvalidInput(format!(
            "invalid role name \"{name}\": use letters, digits, '.', '_' or '-'"
        ))
    })?;
    if built_in_role(&name).is_some() {
        return Err(Error::InvalidInput(format!(
            "\"{name}\" is a built-in role and cannot be changed: create a custom role"
        ))
        .into());
    }
    parse_grants(&req.grants)?;
    state
        .meta
        .upsert_role(&RoleRecord {
            name: name.clone(),
            description: req.description.clone(),
            grants: serde_json::to_string(&req.grants).unwrap_or_else(|_| "[]".into()),
            created_at_ms: now_ms(),
        })
        .await?;
    Ok(Json(RoleDto {
        name,
        description: req.description,
        grants: req.grants,
        built_in: false,
    }))
}

#[utoipa::path(delete, path = "/api/v1/roles/{name}", responses((status = 200), (status = 404)))]
pub async fn remove_role(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    if !state.meta.delete_role(&name).await? {
        return Err(Error::NotFound(format!("no custom role named \"{name}\"")).into());
    }
    Ok(Json(serde_json::json!({ "removed": name })))
}

//! Who is calling: users' passwords (argon2), personal API tokens (bearer, for the CLI) and
//! browser sessions (cookie plus CSRF token), the first administrator, login rate limits, and
//! the middleware that authenticates every request and checks its route's permission before
//! the handler runs. Routes without a rule are refused: the table fails closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use axum::extract::{ConnectInfo, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferry_core::{Error, Result};
use ferry_meta::{AuditRecord, TokenRecord, UserRecord, now_ms};
use sha2::Digest;

use crate::SharedState;
use crate::error::ApiError;
use crate::rbac::{Caller, Grant, Permission, Resource, built_in_role};

/// The browser session cookie.
pub const SESSION_COOKIE: &str = "ferry_session";
/// The header a cookie-authenticated, state-changing request must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The name of the first administrator.
pub const FIRST_ADMIN: &str = "admin";

/// An argon2id hash (PHC string) of a password.
pub fn hash_password(password: &str) -> Result<String> {
    check_password_strength(password)?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("hashing a password failed: {e}")))
}

/// Whether `password` matches the stored hash; false for a malformed hash.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

pub fn check_password_strength(password: &str) -> Result<()> {
    if password.chars().count() < 12 {
        return Err(Error::InvalidInput(
            "a password needs at least 12 characters".into(),
        ));
    }
    Ok(())
}

/// A random secret with a prefix that says what it is (`fyt_` tokens, `fys_` sessions).
pub fn new_secret(prefix: &str) -> String {
    format!(
        "{prefix}{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The SHA-256 digest (hex) under which a token's secret is stored.
pub fn digest(secret: &str) -> String {
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates the first administrator when there are no users: with `admin_password` (from the
/// config or `FERRY_ADMIN_PASSWORD`) or a random one-time password printed once to stderr.
pub async fn ensure_first_admin(state: &SharedState) -> Result<()> {
    if state.meta.count_users().await? > 0 {
        return Ok(());
    }
    let given = state
        .config
        .admin_password
        .clone()
        .or_else(|| std::env::var("FERRY_ADMIN_PASSWORD").ok());
    let (password, printed) = match given {
        Some(p) => (p, false),
        None => (new_secret("").chars().take(24).collect::<String>(), true),
    };
    let hash =
        hash_password(&password).map_err(|e| e.context("FERRY_ADMIN_PASSWORD is not usable"))?;
    let now = now_ms();
    state
        .meta
        .insert_user(&UserRecord {
            name: FIRST_ADMIN.into(),
            password_hash: hash,
            roles: serde_json::json!(["admin"]).to_string(),
            grants: "[]".into(),
            disabled: false,
            created_at_ms: now,
            updated_at_ms: now,
        })
        .await?;
    if printed {
        // Printed, never logged: logs are often shipped elsewhere.
        eprintln!(
            "ferry: created the first administrator \"{FIRST_ADMIN}\" with the one-time password {password}\n\
             ferry: it is shown only now; log in with `ferry login --user {FIRST_ADMIN}` and set your own with `ferry user passwd`"
        );
    }
    tracing::info!(
        user = FIRST_ADMIN,
        "created the first administrator (password not logged)"
    );
    Ok(())
}

/// The caller for a user, with the grants of their roles and their own.
pub async fn caller_for(
    state: &SharedState,
    user: &UserRecord,
    source: Option<String>,
    credential_id: Option<String>,
) -> Result<Caller> {
    let roles: Vec<String> = serde_json::from_str(&user.roles).unwrap_or_default();
    let own: Vec<String> = serde_json::from_str(&user.grants).unwrap_or_default();
    let mut grants: Vec<Grant> = own.iter().filter_map(|g| g.parse().ok()).collect();
    let custom = if roles.iter().any(|r| built_in_role(r).is_none()) {
        state.meta.list_roles().await?
    } else {
        vec![]
    };
    for role in &roles {
        if let Some(g) = built_in_role(role) {
            grants.extend(g);
        } else if let Some(rec) = custom.iter().find(|c| &c.name == role) {
            let list: Vec<String> = serde_json::from_str(&rec.grants).unwrap_or_default();
            grants.extend(list.iter().filter_map(|g| g.parse().ok()));
        }
    }
    Ok(Caller {
        user: user.name.clone(),
        roles,
        grants,
        source,
        credential_id,
    })
}

/// Failed logins per user and address, so passwords cannot be guessed at speed.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<(String, String), Vec<Instant>>>,
}

const LOGIN_WINDOW: Duration = Duration::from_secs(300);
const LOGIN_FAILURES_ALLOWED: usize = 5;

impl LoginLimiter {
    /// Refuses when `user` from `source` failed too often within the window.
    pub fn check(&self, user: &str, source: &str) -> Result<()> {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let key = (user.to_string(), source.to_string());
        if let Some(list) = map.get_mut(&key) {
            list.retain(|t| t.elapsed() < LOGIN_WINDOW);
            if list.len() >= LOGIN_FAILURES_ALLOWED {
                let wait = LOGIN_WINDOW.saturating_sub(list[0].elapsed()).as_secs() + 1;
                return Err(Error::Busy(format!(
                    "too many failed logins for \"{user}\" from {source}: try again in {wait} s"
                )));
            }
        }
        Ok(())
    }

    pub fn failed(&self, user: &str, source: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, l| l.last().is_some_and(|t| t.elapsed() < LOGIN_WINDOW));
        }
        map.entry((user.to_string(), source.to_string()))
            .or_default()
            .push(Instant::now());
    }

    pub fn succeeded(&self, user: &str, source: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&(user.to_string(), source.to_string()));
    }
}

/// Checks a user's password (spending the same work for unknown users) and returns the user.
pub async fn check_login(
    state: &SharedState,
    user: &str,
    password: &str,
    source: &str,
) -> Result<UserRecord> {
    state.login_limiter.check(user, source)?;
    let rec = state.meta.get_user(user).await?;
    // A fixed hash for unknown users keeps the timing of both answers alike.
    const UNKNOWN: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$1s4mEfgbCGnVYGHo4xFdEL0Spd+Ro3QpSDUbtcP5H5I";
    let phc = rec
        .as_ref()
        .filter(|r| !r.disabled)
        .map(|r| r.password_hash.clone())
        .unwrap_or_else(|| UNKNOWN.to_string());
    let password = password.to_string();
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
        .await
        .unwrap_or(false);
    match rec {
        Some(rec) if ok && !rec.disabled => {
            state.login_limiter.succeeded(user, source);
            Ok(rec)
        }
        _ => {
            state.login_limiter.failed(user, source);
            Err(Error::Unauthenticated("wrong user name or password".into()))
        }
    }
}

/// Issues a token or session for a user; returns the record and the secret (shown once).
pub async fn issue(
    state: &SharedState,
    user: &str,
    kind: &str,
    name: &str,
    ttl: Option<Duration>,
) -> Result<(TokenRecord, String, Option<String>)> {
    let secret = new_secret(if kind == "session" { "fys_" } else { "fyt_" });
    let csrf = (kind == "session").then(|| new_secret(""));
    let now = now_ms();
    let rec = TokenRecord {
        id: uuid::Uuid::new_v4().to_string(),
        user: user.to_string(),
        name: name.to_string(),
        kind: kind.to_string(),
        secret_hash: digest(&secret),
        csrf_hash: csrf.as_deref().map(digest),
        created_at_ms: now,
        expires_at_ms: ttl.map(|t| now + t.as_millis() as i64),
        last_used_ms: None,
        revoked_at_ms: None,
    };
    state.meta.insert_token(&rec).await?;
    Ok((rec, secret, csrf))
}

/// The client's address, when the server knows it.
pub struct ClientAddr(pub Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
        ))
    }
}

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone, also without credentials.
    Public,
    /// Any signed-in user; the handler checks the rest (SQL by statement, ownership, bodies).
    SignedIn,
    /// A server-wide permission.
    Server(Permission),
    /// A permission on the instance named by the path's `{name}`.
    Instance(Permission),
    /// A permission on the flow named by the path's `{name}`.
    Flow(Permission),
    /// A permission on the flow of the run in the path's `{id}`.
    RunFlow(Permission),
    /// No rule: refused.
    Unlisted,
}

/// The rule of each route (by its path template and method).
pub fn need(method: &Method, path: &str) -> Need {
    use Need::*;
    use Permission::*;
    let read = *method == Method::GET || *method == Method::HEAD;
    match path {
        "/healthz" | "/api/v1/openapi.json" | "/api/v1/auth/login" => Public,
        "/metrics"
        | "/api/v1/auth/logout"
        | "/api/v1/auth/whoami"
        | "/api/v1/auth/password"
        | "/api/v1/tokens"
        | "/api/v1/tokens/{id}" => SignedIn,
        "/api/v1/users"
        | "/api/v1/users/{name}"
        | "/api/v1/roles"
        | "/api/v1/roles/{name}"
        | "/api/v1/admin/rotate-key" => Server(Security),
        "/api/v1/rules" | "/api/v1/masks" if read => SignedIn,
        "/api/v1/rules" | "/api/v1/masks" | "/api/v1/masks/{id}" => Server(Security),
        "/api/v1/instances" | "/api/v1/archives" if read => SignedIn,
        "/api/v1/instances" | "/api/v1/archives" | "/api/v1/archives/{name}" => Server(Instances),
        "/api/v1/instances/{name}" if read => Instance(Read),
        "/api/v1/instances/{name}"
        | "/api/v1/instances/{name}/processes"
        | "/api/v1/instances/{name}/processes/{id}" => Instance(Admin),
        "/api/v1/instances/{name}/test"
        | "/api/v1/instances/{name}/databases"
        | "/api/v1/instances/{name}/tables"
        | "/api/v1/instances/{name}/tables/{table}"
        | "/api/v1/instances/{name}/connections"
        | "/api/v1/instances/{name}/trends"
        | "/api/v1/instances/{name}/sql" => Instance(Read),
        "/api/v1/sessions"
        | "/api/v1/sessions/{id}"
        | "/api/v1/sessions/{id}/sql"
        | "/api/v1/sessions/{id}/cancel"
        | "/api/v1/queries"
        | "/api/v1/queries/{id}"
        | "/api/v1/queries/{id}/result"
        | "/api/v1/transfers"
        | "/api/v1/transfers/{id}"
        | "/api/v1/exports"
        | "/api/v1/schema-diff"
        | "/api/v1/approvals"
        | "/api/v1/approvals/{id}"
        | "/api/v1/approvals/{id}/approve"
        | "/api/v1/approvals/{id}/reject"
        | "/api/v1/approvals/{id}/run" => SignedIn,
        "/api/v1/policy-actions" | "/api/v1/audit" | "/api/v1/audit/export" => Server(Audit),
        "/api/v1/flows" | "/api/v1/runs" | "/api/v1/flow-templates" => SignedIn,
        "/api/v1/flow-templates/{name}" => SignedIn,
        "/api/v1/flows/{name}" | "/api/v1/flows/{name}/diff" => Flow(FlowView),
        "/api/v1/flows/{name}/enable" | "/api/v1/flows/{name}/disable" => Flow(FlowEdit),
        "/api/v1/flows/{name}/runs" | "/api/v1/flows/{name}/backfill" => Flow(FlowRun),
        "/api/v1/runs/{id}" | "/api/v1/runs/{id}/logs" | "/api/v1/runs/{id}/logs/stream" => {
            RunFlow(FlowView)
        }
        "/api/v1/runs/{id}/cancel" | "/api/v1/runs/{id}/restore" | "/api/v1/runs/{id}/rerun" => {
            RunFlow(FlowRun)
        }
        _ => Unlisted,
    }
}

/// The environment of an instance for grants (`None` when it does not exist).
pub async fn instance_environment(state: &SharedState, name: &str) -> Result<Option<String>> {
    if name == ferry_query::ARCHIVE_INSTANCE {
        return Ok(Some("archive".into()));
    }
    if let Some(env) = state.policies.get(state).await?.environments.get(name) {
        return Ok(Some(env.clone()));
    }
    // Registered through another node within the last second.
    Ok(state.meta.get_instance(name).await?.map(|r| r.environment))
}

/// Requires `wanted` on instance `name` (and database), naming what is missing. An unknown
/// instance is `NotFound` only for callers who could see it if it existed.
pub async fn require_instance(
    state: &SharedState,
    caller: &Caller,
    wanted: Permission,
    name: &str,
    database: Option<&str>,
) -> Result<String> {
    match instance_environment(state, name).await? {
        Some(env) => {
            caller.require(
                wanted,
                &Resource::Instance {
                    name,
                    environment: &env,
                    database,
                },
            )?;
            Ok(env)
        }
        None => Err(Error::NotFound(format!(
            "no instance named \"{name}\": list them with `ferry instance list`"
        ))),
    }
}

/// Whether the caller owns a query, transfer or flow version (administrators own everything).
pub async fn owns(state: &SharedState, caller: &Caller, kind: &str, id: &str) -> Result<bool> {
    if caller.allows(Permission::Security, &Resource::Server) {
        return Ok(true);
    }
    Ok(state.meta.owner_of(kind, id).await?.as_deref() == Some(caller.user.as_str()))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The caller of a request from its bearer token or session cookie.
async fn authenticate_request(
    state: &SharedState,
    method: &Method,
    headers: &HeaderMap,
    source: Option<String>,
) -> Result<Caller> {
    let (secret, via_cookie) = match (bearer(headers), cookie(headers, SESSION_COOKIE)) {
        (Some(t), _) => (t, false),
        (None, Some(c)) => (c, true),
        (None, None) => {
            return Err(Error::Unauthenticated(
                "sign in first: `ferry login` (CLI), or send `Authorization: Bearer <token>`"
                    .into(),
            ));
        }
    };
    let now = now_ms();
    let token = state
        .meta
        .live_token(&digest(secret), now)
        .await?
        .filter(|t| (t.kind == "session") == via_cookie)
        .ok_or_else(|| {
            Error::Unauthenticated(
                "the token or session is unknown, expired or revoked: sign in again with `ferry login`"
                    .into(),
            )
        })?;
    if via_cookie && !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        let ok = match (sent, &token.csrf_hash) {
            (Some(sent), Some(expected)) => &digest(sent) == expected,
            _ => false,
        };
        if !ok {
            return Err(Error::PermissionDenied(format!(
                "missing or wrong {CSRF_HEADER} header: a browser session must send the CSRF token it got at login with every change"
            )));
        }
    }
    let user = state
        .meta
        .get_user(&token.user)
        .await?
        .filter(|u| !u.disabled)
        .ok_or_else(|| Error::Unauthenticated("this user was removed or disabled".into()))?;
    if token.last_used_ms.is_none_or(|t| now - t > 60_000) {
        let _ = state.meta.touch_token(&token.id, now).await;
    }
    caller_for(state, &user, source, Some(token.id)).await
}

async fn check_need(
    state: &SharedState,
    caller: &Caller,
    need: Need,
    params: &[(String, String)],
) -> Result<()> {
    let param = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    match need {
        Need::Public | Need::SignedIn => Ok(()),
        Need::Server(p) => caller.require(p, &Resource::Server),
        Need::Instance(p) => {
            let name = param("name");
            match instance_environment(state, name).await? {
                Some(env) => caller.require(
                    p,
                    &Resource::Instance {
                        name,
                        environment: &env,
                        database: None,
                    },
                ),
                // Nothing to protect: the handler answers 404 (or creates nothing).
                None => Ok(()),
            }
        }
        Need::Flow(p) => caller.require(p, &Resource::Flow(param("name"))),
        Need::RunFlow(p) => match state.meta.get_run(param("id")).await? {
            Some(run) => caller.require(p, &Resource::Flow(&run.flow)),
            // Nothing to protect: the handler answers 404.
            None => Ok(()),
        },
        Need::Unlisted => Err(Error::PermissionDenied(
            "this endpoint has no permission rule, so it is refused".into(),
        )),
    }
}

/// Authenticates the request, checks its route's rule, records refusals and changes in the
/// audit log, and hands the `Caller` to the handler.
pub async fn middleware(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let method = req.method().clone();
    let need = need(&method, &path);
    if need == Need::Public {
        return next.run(req).await;
    }
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let caller = match authenticate_request(&state, &method, req.headers(), source.clone()).await {
        Ok(c) => c,
        Err(e) => {
            return ApiError(e).into_response();
        }
    };
    let (mut parts, body) = req.into_parts();
    let params: Vec<(String, String)> =
        match axum::RequestPartsExt::extract::<RawPathParams>(&mut parts).await {
            Ok(p) => p
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            Err(_) => vec![],
        };
    let what = format!("{method} {}", parts.uri.path());
    if let Err(e) = check_need(&state, &caller, need, &params).await {
        if matches!(e, Error::PermissionDenied(_)) {
            crate::audit::record(
                &state,
                AuditRecord {
                    user: caller.user.clone(),
                    source: caller.source.clone(),
                    action: "api".into(),
                    statement: Some(what),
                    outcome: "denied".into(),
                    error: Some(e.message().to_string()),
                    ..Default::default()
                },
            )
            .await;
        }
        return ApiError(e).into_response();
    }
    let mut req = Request::from_parts(parts, body);
    req.extensions_mut().insert(caller.clone());
    let response = next.run(req).await;
    let status = response.status();
    // Statements are audited one by one (with class, rows and rule decisions) by the guard;
    // an entry per request beside them would only double the writes on the hot path.
    let audited_by_statement = matches!(
        path.as_str(),
        "/api/v1/instances/{name}/sql" | "/api/v1/sessions/{id}/sql"
    );
    if method != Method::GET && method != Method::HEAD && !audited_by_statement {
        crate::audit::record(
            &state,
            AuditRecord {
                user: caller.user.clone(),
                source: caller.source.clone(),
                action: "api".into(),
                statement: Some(what),
                outcome: match status.as_u16() {
                    200..=399 => "ok",
                    401 | 403 => "denied",
                    _ => "failed",
                }
                .into(),
                error: (!status.is_success()).then(|| status.to_string()),
                ..Default::default()
            },
        )
        .await;
    }
    response
}

/// Headers every response carries: no sniffing, no framing, no referrer, a strict content
/// security policy for the UI, and no caching of API answers.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, header::HeaderValue::from_static(v));
    };
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "referrer-policy", "no-referrer");
    set(
        h,
        "content-security-policy",
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    );
    if api {
        set(h, "cache-control", "no-store");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterY", &h));
        assert!(!verify_password("x", "not a hash"));
        assert!(hash_password("short").is_err());
    }

    #[test]
    fn secrets_are_random_and_digests_stable() {
        let a = new_secret("fyt_");
        assert!(a.starts_with("fyt_") && a.len() == 68);
        assert_ne!(a, new_secret("fyt_"));
        assert_eq!(digest("x"), digest("x"));
        assert_eq!(digest("abc").len(), 64);
    }

    #[test]
    fn the_login_limiter_counts_per_user_and_address() {
        let l = LoginLimiter::default();
        for _ in 0..LOGIN_FAILURES_ALLOWED {
            l.check("a", "1.2.3.4").unwrap();
            l.failed("a", "1.2.3.4");
        }
        assert_eq!(l.check("a", "1.2.3.4").unwrap_err().code(), "busy");
        l.check("a", "5.6.7.8").unwrap();
        l.check("b", "1.2.3.4").unwrap();
    }
}

//! SQL windows: sessions bound to one dedicated connection, so SET, temporary tables and
//! transactions carry over between requests. Windows are independent of each other; an idle
//! window closes after the instance's timeout and its open transaction rolls back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use ferry_connect::Lease;
use ferry_core::{Error, Feature, KillPolicy, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedMutexGuard;

use crate::SharedState;
use crate::console::{self, LeaseHolder, ScriptResult, SqlRequest};
use crate::encode::Format;
use crate::guard::Guard;
use crate::rbac::{Caller, Permission, Resource};

/// Open SQL windows of this node.
#[derive(Default)]
pub struct Sessions {
    windows: Mutex<HashMap<String, Arc<SqlWindow>>>,
}

/// One SQL window.
pub struct SqlWindow {
    pub id: String,
    /// The user who opened it; only they (or an administrator) may use it.
    pub owner: String,
    pub instance: String,
    pub database: Option<String>,
    created: Instant,
    created_at_ms: i64,
    last_used: Mutex<Instant>,
    statements: std::sync::atomic::AtomicU64,
    /// Cancels the window's running statement without waiting for the window.
    canceller: Arc<dyn ferry_connect::Canceller>,
    /// `None` once closed.
    slot: Arc<tokio::sync::Mutex<Option<Lease>>>,
}

/// A request to open a SQL window.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenSession {
    pub instance: String,
    pub database: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionDto {
    pub id: String,
    #[serde(default)]
    pub owner: String,
    pub instance: String,
    pub database: Option<String>,
    /// The server-side session id (backend pid, connection id).
    pub server_session_id: Option<i64>,
    pub created_at_ms: i64,
    pub idle_secs: f64,
    pub age_secs: f64,
    pub statements: u64,
    /// `None` while a statement runs.
    pub in_transaction: Option<bool>,
    pub busy: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!(
        "SQL window {id} does not exist or was closed; open one with `ferry session open INSTANCE`"
    ))
}

impl SqlWindow {
    fn dto(&self) -> SessionDto {
        let (busy, in_transaction, server_session_id) = match self.slot.try_lock() {
            Ok(g) => (
                false,
                g.as_ref().map(|l| l.connection().in_transaction()),
                g.as_ref().and_then(|l| l.connection().server_session_id()),
            ),
            Err(_) => (true, None, None),
        };
        SessionDto {
            id: self.id.clone(),
            owner: self.owner.clone(),
            instance: self.instance.clone(),
            database: self.database.clone(),
            server_session_id,
            created_at_ms: self.created_at_ms,
            idle_secs: lock(&self.last_used).elapsed().as_secs_f64(),
            age_secs: self.created.elapsed().as_secs_f64(),
            statements: self.statements.load(std::sync::atomic::Ordering::Relaxed),
            in_transaction,
            busy,
        }
    }

    fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }
}

impl Sessions {
    pub fn get(&self, id: &str) -> Result<Arc<SqlWindow>> {
        lock(&self.windows)
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// A window the caller may use: their own, or any for an administrator. Others' windows
    /// are "not found", so their ids reveal nothing.
    pub fn get_for(&self, id: &str, caller: &Caller) -> Result<Arc<SqlWindow>> {
        let w = self.get(id)?;
        if w.owner == caller.user || caller.allows(Permission::Security, &Resource::Server) {
            Ok(w)
        } else {
            Err(not_found(id))
        }
    }

    /// The windows the caller may see.
    pub fn list_for(&self, caller: &Caller) -> Vec<SessionDto> {
        let all = caller.allows(Permission::Security, &Resource::Server);
        self.list()
            .into_iter()
            .filter(|s| all || s.owner == caller.user)
            .collect()
    }

    pub fn list(&self) -> Vec<SessionDto> {
        let mut v: Vec<_> = lock(&self.windows).values().map(|w| w.dto()).collect();
        v.sort_by_key(|s| s.created_at_ms);
        v
    }

    fn take(&self, id: &str) -> Option<Arc<SqlWindow>> {
        lock(&self.windows).remove(id)
    }

    pub fn close_for_instance(&self, state: &SharedState, instance: &str) {
        let ids: Vec<String> = lock(&self.windows)
            .values()
            .filter(|w| w.instance == instance)
            .map(|w| w.id.clone())
            .collect();
        for id in ids {
            let _ = close_now(state, &id, "the instance was removed");
        }
    }

    pub fn close_all(&self, state: &SharedState, reason: &str) {
        let ids: Vec<String> = lock(&self.windows).keys().cloned().collect();
        for id in ids {
            let _ = close_now(state, &id, reason);
        }
    }

    pub fn all(&self) -> Vec<Arc<SqlWindow>> {
        lock(&self.windows).values().cloned().collect()
    }
}

pub async fn open(state: &SharedState, caller: &Caller, req: OpenSession) -> Result<SessionDto> {
    crate::auth::require_instance(
        state,
        caller,
        Permission::Read,
        &req.instance,
        req.database.as_deref(),
    )
    .await?;
    let pool = state.pool(&req.instance).await?;
    let mut lease = pool
        .acquire(Feature::Console, req.database.as_deref(), "sql window")
        .await?;
    // A window's connection carries private state: never hand it to anyone else.
    lease.close_on_release();
    let canceller = lease.conn().canceller();
    let window = Arc::new(SqlWindow {
        canceller,
        id: uuid::Uuid::new_v4().to_string(),
        owner: caller.user.clone(),
        instance: req.instance,
        database: req.database,
        created: Instant::now(),
        created_at_ms: ferry_meta::now_ms(),
        last_used: Mutex::new(Instant::now()),
        statements: Default::default(),
        slot: Arc::new(tokio::sync::Mutex::new(Some(lease))),
    });
    lock(&state.sessions.windows).insert(window.id.clone(), window.clone());
    tracing::info!(session = %window.id, instance = %window.instance, "SQL window opened");
    Ok(window.dto())
}

/// Closes a window now; returns whether a transaction was rolled back. A window busy with a
/// statement is closed once the statement ends.
pub fn close_now(state: &SharedState, id: &str, reason: &str) -> Result<bool> {
    let window = state.sessions.take(id).ok_or_else(|| not_found(id))?;
    tracing::info!(session = %id, instance = %window.instance, reason, "SQL window closed");
    match window.slot.try_lock() {
        Ok(mut slot) => Ok(slot.take().is_some_and(|l| l.connection().in_transaction())),
        Err(_) => {
            let slot = window.slot.clone();
            tokio::spawn(async move {
                slot.lock().await.take();
            });
            Ok(false)
        }
    }
}

/// Cancels the statement running in a window, on the database server; the window stays open.
pub async fn cancel(state: &SharedState, caller: &Caller, id: &str) -> Result<bool> {
    let window = state.sessions.get_for(id, caller)?;
    let running = window.slot.try_lock().is_err();
    if running {
        window.canceller.cancel().await?;
        tracing::info!(session = %id, instance = %window.instance, "statement in SQL window cancelled by request");
    }
    Ok(running)
}

struct WindowHolder(OwnedMutexGuard<Option<Lease>>);

impl LeaseHolder for WindowHolder {
    fn lease(&mut self) -> &mut Lease {
        match self.0.as_mut() {
            Some(l) => l,
            None => unreachable!("checked open before the statement started"),
        }
    }
}

/// Runs a console request in a window, one request at a time.
pub async fn run(
    state: &SharedState,
    caller: &Caller,
    id: &str,
    req: SqlRequest,
) -> Result<Response> {
    let window = state.sessions.get_for(id, caller)?;
    let mut slot = window.slot.clone().lock_owned().await;
    let Some(lease) = slot.as_mut() else {
        return Err(not_found(id));
    };
    if let Some(reason) = lease.revoked() {
        drop(slot);
        let _ = close_now(state, id, "revoked by a policy");
        return Err(Error::Cancelled(format!(
            "SQL window {id} was closed by a policy: {reason}"
        )));
    }
    let engine = lease.pool().connector().engine();
    let (statements, limit) = console::plan(state, engine, &req)?;
    let guard = Guard::new(
        state,
        caller,
        &window.instance,
        window.database.as_deref(),
        engine,
        "session",
    )
    .await?;
    let statements = guard.admit_all(&statements).await?;
    window.touch();
    window.statements.fetch_add(
        statements.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let response = if req.format == Format::Json {
        let results = console::run_interactive(
            state,
            lease,
            &guard,
            statements,
            limit,
            req.continue_on_error,
        )
        .await;
        let in_transaction = lease.connection().in_transaction();
        axum::Json(ScriptResult {
            results,
            session: Some(id.to_string()),
            in_transaction,
        })
        .into_response()
    } else {
        let admitted = statements
            .into_iter()
            .next()
            .ok_or_else(|| Error::InvalidInput("no SQL statement given".into()))?;
        console::stream_statement(
            state.clone(),
            WindowHolder(slot),
            guard,
            admitted,
            req.format,
            limit,
        )
        .await?
    };
    window.touch();
    Ok(response)
}

/// Applies the idle and idle-in-transaction timeouts; windows busy with a statement are skipped.
pub fn enforce_timeouts(state: &SharedState) {
    for window in state.sessions.all() {
        let Ok(slot) = window.slot.try_lock() else {
            continue;
        };
        let Some(lease) = slot.as_ref() else { continue };
        let policy = lease.pool().policy().clone();
        let idle = lock(&window.last_used).elapsed();
        let in_tx = lease.connection().in_transaction();
        let revoked = lease.revoked();
        let pool = lease.pool().clone();
        drop(slot);
        let (action, detail) = if let Some(reason) = revoked {
            (None, reason)
        } else if let Some(limit) = KillPolicy::duration(policy.idle_in_transaction_timeout_secs)
            .filter(|l| in_tx && idle >= *l)
        {
            (
                Some("rollback_idle_transaction"),
                format!(
                    "SQL window {} sat idle in a transaction for {:.0}s (idle_in_transaction_timeout_secs = {}): rolled back and closed",
                    window.id,
                    idle.as_secs_f64(),
                    limit.as_secs()
                ),
            )
        } else if let Some(limit) =
            KillPolicy::duration(policy.session_idle_timeout_secs).filter(|l| idle >= *l)
        {
            (
                Some("close_idle_session"),
                format!(
                    "SQL window {} was idle for {:.0}s (session_idle_timeout_secs = {}): closed{}",
                    window.id,
                    idle.as_secs_f64(),
                    limit.as_secs(),
                    if in_tx {
                        ", its transaction rolled back"
                    } else {
                        ""
                    }
                ),
            )
        } else {
            continue;
        };
        if close_now(state, &window.id, &detail).is_ok()
            && let Some(action) = action
        {
            pool.report(action, Some(Feature::Console), detail);
        }
    }
}

//! Connections to one instance: a hard cap on server-side connections shared by every feature,
//! a fair (first come, first served) queue at the cap with a timeout, reuse of idle connections,
//! leases that SQL windows keep for their lifetime, and the kill policies (idle connections,
//! runaway statements, giving way by feature) that report every action they take.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_core::{Error, Feature, InstanceName, InstanceSettings, KillPolicy, Result};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Canceller, Connection, Connector};

/// Something a policy did, reported to the pool's owner (who logs and stores it).
#[derive(Debug, Clone, Serialize)]
pub struct PolicyAction {
    pub instance: String,
    /// `close_idle_connection`, `cancel_statement`, `close_idle_session`,
    /// `rollback_idle_transaction` or `preempt`.
    pub action: String,
    pub feature: Option<Feature>,
    pub detail: String,
}

/// Receives policy actions.
pub type ActionSink = Arc<dyn Fn(PolicyAction) + Send + Sync>;

/// A snapshot of a pool's counters.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct PoolStats {
    pub max_connections: u32,
    /// Server-side connections open now (in use plus idle).
    pub open: usize,
    pub in_use: usize,
    pub idle: usize,
    /// Requests queued at the cap.
    pub waiting: usize,
}

/// A connection lease in use, as listed by the API.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseInfo {
    pub id: u64,
    pub feature: Feature,
    pub label: String,
    pub database: Option<String>,
    pub held_secs: f64,
    pub server_session_id: Option<i64>,
}

/// The connections Ferry holds to one instance.
pub struct InstancePool {
    name: InstanceName,
    connector: Arc<dyn Connector>,
    settings: InstanceSettings,
    permits: Arc<Semaphore>,
    state: Mutex<PoolState>,
    waiting: AtomicUsize,
    next_id: AtomicU64,
    sink: ActionSink,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<IdleConnection>,
    /// Open server-side connections, including ones being opened.
    open: usize,
    active: HashMap<u64, ActiveLease>,
}

struct IdleConnection {
    conn: Box<dyn Connection>,
    database: Option<String>,
    since: Instant,
}

struct ActiveLease {
    feature: Feature,
    label: String,
    database: Option<String>,
    since: Instant,
    canceller: Arc<dyn Canceller>,
    revocation: Arc<Revocation>,
    server_session_id: Option<i64>,
}

/// Set when a policy takes a lease back; the holder must stop using it.
#[derive(Default)]
pub struct Revocation {
    reason: Mutex<Option<String>>,
    revoked: AtomicBool,
}

impl Revocation {
    fn revoke(&self, reason: String) {
        *lock(&self.reason) = Some(reason);
        self.revoked.store(true, Ordering::SeqCst);
    }

    pub fn reason(&self) -> Option<String> {
        if self.revoked.load(Ordering::SeqCst) {
            lock(&self.reason).clone()
        } else {
            None
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl InstancePool {
    pub fn new(
        name: InstanceName,
        connector: Arc<dyn Connector>,
        settings: InstanceSettings,
        sink: ActionSink,
    ) -> Arc<Self> {
        Arc::new(InstancePool {
            permits: Arc::new(Semaphore::new(settings.max_connections as usize)),
            name,
            connector,
            settings,
            state: Mutex::new(PoolState::default()),
            waiting: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            sink,
        })
    }

    pub fn name(&self) -> &InstanceName {
        &self.name
    }

    pub fn settings(&self) -> &InstanceSettings {
        &self.settings
    }

    pub fn policy(&self) -> &KillPolicy {
        &self.settings.policy
    }

    pub fn connector(&self) -> &Arc<dyn Connector> {
        &self.connector
    }

    pub fn stats(&self) -> PoolStats {
        let st = lock(&self.state);
        PoolStats {
            max_connections: self.settings.max_connections,
            open: st.open,
            in_use: st.active.len(),
            idle: st.idle.len(),
            waiting: self.waiting.load(Ordering::SeqCst),
        }
    }

    pub fn leases(&self) -> Vec<LeaseInfo> {
        let st = lock(&self.state);
        let mut v: Vec<LeaseInfo> = st
            .active
            .iter()
            .map(|(id, a)| LeaseInfo {
                id: *id,
                feature: a.feature,
                label: a.label.clone(),
                database: a.database.clone(),
                held_secs: a.since.elapsed().as_secs_f64(),
                server_session_id: a.server_session_id,
            })
            .collect();
        v.sort_by_key(|l| l.id);
        v
    }

    /// Takes a connection for `feature`, waiting in line at the cap up to the acquire timeout.
    pub async fn acquire(
        self: &Arc<Self>,
        feature: Feature,
        database: Option<&str>,
        label: &str,
    ) -> Result<Lease> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => self.wait_for_permit(feature).await?,
        };
        let database = database.map(str::to_string);
        let (reused, victim) = {
            let mut st = lock(&self.state);
            match st.idle.iter().rposition(|c| c.database == database) {
                Some(pos) => (Some(st.idle.swap_remove(pos).conn), None),
                None => {
                    // At the cap with idle connections to other databases: close one to make room.
                    let victim = if st.open >= self.settings.max_connections as usize {
                        st.open -= 1;
                        st.idle.pop()
                    } else {
                        None
                    };
                    st.open += 1;
                    (None, victim)
                }
            }
        };
        drop(victim);
        let conn = match reused {
            Some(c) if c.is_healthy() => c,
            _ => {
                // The slot counted in `open` is given back if connecting fails or this future is
                // dropped mid-way (a client that went away, a timeout around acquire).
                let slot = OpenSlot {
                    pool: self,
                    armed: true,
                };
                let conn = self
                    .connector
                    .connect(database.as_deref())
                    .await
                    .map_err(|e| e.context(format!("instance \"{}\"", self.name)))?;
                slot.disarm();
                conn
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let revocation = Arc::new(Revocation::default());
        lock(&self.state).active.insert(
            id,
            ActiveLease {
                feature,
                label: label.to_string(),
                database: database.clone(),
                since: Instant::now(),
                canceller: conn.canceller(),
                revocation: revocation.clone(),
                server_session_id: conn.server_session_id(),
            },
        );
        Ok(Lease {
            id,
            pool: self.clone(),
            conn: Some(conn),
            database,
            _permit: permit,
            discard: false,
            revocation,
            feature,
        })
    }

    async fn wait_for_permit(self: &Arc<Self>, feature: Feature) -> Result<OwnedSemaphorePermit> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        let started = Instant::now();
        let timeout = Duration::from_secs(self.settings.acquire_timeout_secs);
        let preempt_after =
            KillPolicy::duration(self.policy().preempt_after_secs).filter(|p| *p < timeout);
        let acquire = self.permits.clone().acquire_owned();
        tokio::pin!(acquire);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let preempt = tokio::time::sleep(preempt_after.unwrap_or(timeout));
        tokio::pin!(preempt);
        let mut may_preempt = preempt_after.is_some();
        loop {
            tokio::select! {
                permit = &mut acquire => {
                    return permit.map_err(|_| Error::Internal("connection pool closed".into()));
                }
                _ = &mut deadline => {
                    let stats = self.stats();
                    return Err(Error::Busy(format!(
                        "instance \"{}\" is busy: all {} connections are in use and {} requests are waiting; waited {:.1}s (raise max_connections or retry later)",
                        self.name,
                        stats.max_connections,
                        stats.waiting.saturating_sub(1),
                        started.elapsed().as_secs_f64()
                    )));
                }
                _ = &mut preempt, if may_preempt => {
                    may_preempt = false;
                    self.preempt_for(feature);
                }
            }
        }
    }

    /// Asks the lease that gives way first (per `yield_order`) to release its connection for `feature`.
    fn preempt_for(&self, feature: Feature) {
        let policy = self.policy();
        let Some(rank) = policy.yield_rank(feature) else {
            return;
        };
        let victim = {
            let st = lock(&self.state);
            st.active
                .iter()
                .filter(|(_, a)| a.revocation.reason().is_none())
                .filter_map(|(id, a)| Some((policy.yield_rank(a.feature)?, a.since, *id)))
                .filter(|(r, _, _)| *r < rank)
                .min_by_key(|(r, since, _)| (*r, *since))
                .and_then(|(_, _, id)| {
                    st.active.get(&id).map(|a| {
                        (
                            id,
                            a.feature,
                            a.label.clone(),
                            a.canceller.clone(),
                            a.revocation.clone(),
                        )
                    })
                })
        };
        let Some((id, victim_feature, label, canceller, revocation)) = victim else {
            return;
        };
        let detail = format!(
            "{} lease {id} ({label}) gave way to waiting {} work: the instance is at its cap of {} connections",
            victim_feature.as_str(),
            feature.as_str(),
            self.settings.max_connections
        );
        revocation.revoke(detail.clone());
        self.report("preempt", Some(victim_feature), detail);
        tokio::spawn(async move {
            let _ = canceller.cancel().await;
        });
    }

    /// Closes idle connections unused for longer than the policy's idle timeout.
    pub fn close_idle_connections(&self) -> usize {
        let Some(limit) = KillPolicy::duration(self.policy().idle_timeout_secs) else {
            return 0;
        };
        let closed: Vec<IdleConnection> = {
            let mut st = lock(&self.state);
            let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut st.idle)
                .into_iter()
                .partition(|c| c.since.elapsed() >= limit);
            st.idle = keep;
            st.open -= old.len();
            old
        };
        for c in &closed {
            self.report(
                "close_idle_connection",
                None,
                format!(
                    "closed a pooled connection{} idle for {:.0}s (idle_timeout_secs = {})",
                    c.database
                        .as_deref()
                        .map(|d| format!(" to database {d:?}"))
                        .unwrap_or_default(),
                    c.since.elapsed().as_secs_f64(),
                    limit.as_secs()
                ),
            );
        }
        closed.len()
    }

    /// Closes every idle connection (used when an instance is removed or changed).
    pub fn close_all_idle(&self) {
        let mut st = lock(&self.state);
        st.open -= st.idle.len();
        st.idle.clear();
    }

    pub fn report(&self, action: &str, feature: Option<Feature>, detail: String) {
        (self.sink)(PolicyAction {
            instance: self.name.to_string(),
            action: action.to_string(),
            feature,
            detail,
        });
    }
}

/// A reserved place in a pool's `open` count, returned on drop unless disarmed.
struct OpenSlot<'a> {
    pool: &'a InstancePool,
    armed: bool,
}

impl OpenSlot<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for OpenSlot<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.pool.state).open -= 1;
        }
    }
}

/// A connection taken from a pool. Dropping it returns the connection to the pool when it is
/// healthy and outside a transaction, and closes it otherwise; either way the slot is freed.
pub struct Lease {
    id: u64,
    pool: Arc<InstancePool>,
    conn: Option<Box<dyn Connection>>,
    database: Option<String>,
    _permit: OwnedSemaphorePermit,
    discard: bool,
    revocation: Arc<Revocation>,
    feature: Feature,
}

impl Lease {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn pool(&self) -> &Arc<InstancePool> {
        &self.pool
    }

    pub fn feature(&self) -> Feature {
        self.feature
    }

    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    pub fn conn(&mut self) -> &mut dyn Connection {
        match self.conn.as_mut() {
            Some(c) => c.as_mut(),
            None => unreachable!("a lease holds its connection until dropped"),
        }
    }

    pub fn connection(&self) -> &dyn Connection {
        match self.conn.as_ref() {
            Some(c) => c.as_ref(),
            None => unreachable!("a lease holds its connection until dropped"),
        }
    }

    /// Close the connection on release instead of pooling it (its session state is private).
    pub fn close_on_release(&mut self) {
        self.discard = true;
    }

    /// Why a policy took this lease back, if it did.
    pub fn revoked(&self) -> Option<String> {
        self.revocation.reason()
    }

    /// A handle to the lease's revocation, readable while the connection is borrowed.
    pub fn revocation(&self) -> Arc<Revocation> {
        self.revocation.clone()
    }

    /// Cancels the running statement on the server once it has run for `limit`; dropping the
    /// watch before then disarms it.
    pub fn watch_runtime(&self, limit: Option<Duration>, what: &str) -> RuntimeWatch {
        let fired = Arc::new(AtomicBool::new(false));
        let Some(limit) = limit else {
            return RuntimeWatch { task: None, fired };
        };
        let canceller = self.connection().canceller();
        let pool = self.pool.clone();
        let flag = fired.clone();
        let feature = self.feature;
        let what = what.to_string();
        let task = tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            flag.store(true, Ordering::SeqCst);
            let outcome = match canceller.cancel().await {
                Ok(()) => "cancelled on the server".to_string(),
                Err(e) => format!("cancel failed: {e}"),
            };
            pool.report(
                "cancel_statement",
                Some(feature),
                format!(
                    "{what} ran longer than max_statement_secs = {}: {outcome}",
                    limit.as_secs()
                ),
            );
        });
        RuntimeWatch {
            task: Some(task),
            fired,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let keep = !self.discard && self.revocation.reason().is_none();
        let closing = {
            let mut st = lock(&self.pool.state);
            st.active.remove(&self.id);
            match self.conn.take() {
                Some(conn) if keep && conn.is_healthy() && !conn.in_transaction() => {
                    st.idle.push(IdleConnection {
                        conn,
                        database: self.database.take(),
                        since: Instant::now(),
                    });
                    None
                }
                Some(conn) => {
                    st.open -= 1;
                    Some(conn)
                }
                None => None,
            }
        };
        // Closing happens outside the lock; the permit is released after this, with the fields.
        drop(closing);
    }
}

/// Arms a statement-runtime limit; see [`Lease::watch_runtime`].
pub struct RuntimeWatch {
    task: Option<tokio::task::JoinHandle<()>>,
    fired: Arc<AtomicBool>,
}

impl RuntimeWatch {
    /// Whether the limit was reached and the statement cancelled.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for RuntimeWatch {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

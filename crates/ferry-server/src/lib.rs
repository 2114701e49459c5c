//! Ferry's HTTP API (axum): instances and their catalogs, the SQL console, SQL windows,
//! asynchronous queries with spooled results, connection-policy actions, health, Prometheus
//! metrics and the OpenAPI document. Only this crate (and the CLI) knows HTTP and JSON DTOs.

pub mod api;
pub mod archives;
pub mod audit;
pub mod auth;
pub mod console;
pub mod demo;
pub mod encode;
pub mod error;
pub mod flows;
pub mod guard;
pub mod instances;
pub mod metrics;
pub mod policy;
pub mod queries;
pub mod rbac;
pub mod schema_diff;
pub mod security;
pub mod sessions;
pub mod transfers;
pub mod trends;
pub mod users;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_meta::{MetaStore, SharedKey, SqlStore};

/// How a server runs. Defaults serve one node on loopback with data under `./ferry-data`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `postgres://…` for a shared store; the embedded SQLite store in `data_dir` when `None`.
    pub meta_url: Option<String>,
    /// Register (and create if missing) the demo SQLite instance `demo`.
    pub demo: bool,
    /// Rows an interactive console result returns unless the request asks otherwise.
    pub row_limit: usize,
    /// The most rows an interactive (JSON) result may hold; more must be streamed or spooled.
    pub max_interactive_rows: usize,
    /// How often connection policies are checked.
    pub policy_interval: Duration,
    /// Flow tasks this node runs at once.
    pub task_slots: usize,
    /// How long a worker's lease on a task lasts without renewal; a dead worker's tasks return
    /// to the queue after it.
    pub task_lease: Duration,
    /// How often the scheduler looks for due flows.
    pub scheduler_interval: Duration,
    /// Allow flow nodes of kind `shell` (commands run on this server).
    pub enable_shell: bool,
    /// How often table row counts and sizes are sampled for data trends.
    pub trend_interval: Duration,
    /// The first administrator's password when the store has no users yet (else
    /// `FERRY_ADMIN_PASSWORD`, else a random one printed once).
    pub admin_password: Option<String>,
    /// The largest request body accepted, in bytes.
    pub max_request_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8420)),
            data_dir: PathBuf::from("ferry-data"),
            meta_url: None,
            demo: false,
            row_limit: 1000,
            max_interactive_rows: 100_000,
            policy_interval: Duration::from_secs(1),
            task_slots: 4,
            task_lease: Duration::from_secs(30),
            scheduler_interval: Duration::from_secs(1),
            enable_shell: false,
            trend_interval: Duration::from_secs(3600),
            admin_password: None,
            max_request_bytes: 8 << 20,
        }
    }
}

/// Everything the handlers share.
pub struct AppState {
    pub config: ServerConfig,
    pub meta: Arc<dyn MetaStore>,
    pub key: SharedKey,
    pub login_limiter: auth::LoginLimiter,
    pub policies: guard::PolicyCache,
    pub instances: instances::Instances,
    pub sessions: sessions::Sessions,
    pub queries: queries::AsyncQueries,
    pub transfers: transfers::Transfers,
    pub flows: flows::Flows,
    pub metrics: metrics::Metrics,
}

pub type SharedState = Arc<AppState>;

/// Opens the store, loads the key, seeds the demo if asked, and returns the shared state.
pub async fn build_state(config: ServerConfig) -> anyhow::Result<SharedState> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let meta: Arc<dyn MetaStore> = match &config.meta_url {
        Some(url) => Arc::new(SqlStore::open(url).await?),
        None => Arc::new(SqlStore::open_sqlite(&config.data_dir).await?),
    };
    let key = SharedKey::load_or_create(&config.data_dir)?;
    let recovered = meta
        .fail_unfinished_queries("the server stopped while the query ran; submit it again")
        .await?;
    if recovered > 0 {
        tracing::warn!(
            count = recovered,
            "marked queries left unfinished by a previous run as failed"
        );
    }
    let recovered = meta
        .fail_unfinished_transfers(
            "the server stopped while the transfer ran; its target was rolled back, run it again",
        )
        .await?;
    if recovered > 0 {
        tracing::warn!(
            count = recovered,
            "marked transfers left unfinished by a previous run as failed"
        );
    }
    let state = Arc::new(AppState {
        instances: instances::Instances::default(),
        sessions: sessions::Sessions::default(),
        queries: queries::AsyncQueries::default(),
        transfers: transfers::Transfers::default(),
        flows: flows::Flows::default(),
        metrics: metrics::Metrics::new(),
        login_limiter: auth::LoginLimiter::default(),
        policies: guard::PolicyCache::default(),
        meta,
        key,
        config,
    });
    security::recover_rotation(&state)
        .await
        .context("finishing an interrupted key rotation")?;
    auth::ensure_first_admin(&state)
        .await
        .context("creating the first administrator")?;
    if state.config.demo {
        demo::ensure_demo(&state)
            .await
            .context("setting up the demo instance")?;
    }
    Ok(state)
}

/// A server bound to its address, not yet serving.
pub struct BoundServer {
    pub state: SharedState,
    pub listener: tokio::net::TcpListener,
}

impl BoundServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.state.config.listen)
    }

    /// Serves until `shutdown` resolves, then stops the policy task and closes SQL windows.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let policy = tokio::spawn(policy::run(self.state.clone()));
        flows::start(&self.state);
        let trends = tokio::spawn(trends::run(self.state.clone()));
        let app = api::router(self.state.clone());
        axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed")?;
        policy.abort();
        trends.abort();
        self.state
            .sessions
            .close_all(&self.state, "the server is shutting down");
        self.state.queries.cancel_all();
        self.state.transfers.cancel_all();
        self.state.flows.stop();
        Ok(())
    }
}

/// Builds the state and binds the listener.
pub async fn bind(config: ServerConfig) -> anyhow::Result<BoundServer> {
    let listen = config.listen;
    let state = build_state(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}: is another server using the port?"))?;
    Ok(BoundServer { state, listener })
}

//! Registered instances: the store records, their decrypted URLs (kept in memory only), and
//! one connection pool per instance shared by every feature.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferry_connect::pool::ActionSink;
use ferry_connect::{ConnectOptions, InstancePool, PolicyAction, connector_for};
use ferry_core::{ConnectionUrl, Environment, Error, InstanceName, InstanceSettings, Result};
use ferry_meta::{InstanceRecord, PolicyActionRecord, now_ms};
use serde::{Deserialize, Serialize};

use crate::{AppState, SharedState};

/// The pools of the instances in use, created on first use.
#[derive(Default)]
pub struct Instances {
    pools: RwLock<HashMap<String, Arc<InstancePool>>>,
}

impl Instances {
    pub fn cached(&self) -> Vec<Arc<InstancePool>> {
        self.pools
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn forget(&self, name: &str) {
        if let Some(pool) = self
            .pools
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
        {
            pool.close_all_idle();
        }
    }
}

/// How an instance is shown: never with its password.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceDto {
    pub name: String,
    pub engine: String,
    pub environment: String,
    /// The connection URL with its password replaced by `***`.
    pub url: String,
    #[schema(value_type = Object)]
    pub settings: InstanceSettings,
    pub created_at_ms: i64,
    #[schema(value_type = Object)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<ferry_connect::PoolStats>,
}

/// A request to register an instance.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddInstance {
    /// 1–63 characters of a-z, 0-9, '-' and '_'.
    pub name: String,
    /// `postgres://…`, `mysql://…`, `sqlite:///path`, `redis://…`; stored encrypted.
    pub url: String,
    /// dev (default), test or prod.
    pub environment: Option<String>,
    /// Shorthand for `settings.max_connections`.
    pub max_connections: Option<u32>,
    #[schema(value_type = Object)]
    pub settings: Option<InstanceSettings>,
    /// Connect once before saving (default true).
    pub test: Option<bool>,
}

/// A change to an instance's settings.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateInstance {
    pub url: Option<String>,
    pub environment: Option<String>,
    pub max_connections: Option<u32>,
    #[schema(value_type = Object)]
    pub settings: Option<InstanceSettings>,
}

pub fn dto(
    rec: &InstanceRecord,
    connections: Option<ferry_connect::PoolStats>,
) -> Result<InstanceDto> {
    Ok(InstanceDto {
        name: rec.name.clone(),
        engine: rec.engine.clone(),
        environment: rec.environment.clone(),
        url: rec.url_redacted.clone(),
        settings: parse_settings(rec)?,
        created_at_ms: rec.created_at_ms,
        connections,
    })
}

fn parse_settings(rec: &InstanceRecord) -> Result<InstanceSettings> {
    serde_json::from_str(&rec.settings).map_err(|e| {
        Error::Internal(format!(
            "stored settings of instance \"{}\" are unreadable: {e}",
            rec.name
        ))
    })
}

fn not_registered(name: &str) -> Error {
    Error::NotFound(format!(
        "instance \"{name}\" is not registered; list instances with `ferry instance list`"
    ))
}

impl AppState {
    pub async fn instance_record(&self, name: &str) -> Result<InstanceRecord> {
        self.meta
            .get_instance(name)
            .await?
            .ok_or_else(|| not_registered(name))
    }

    /// The pool of an instance, created on first use.
    pub async fn pool(self: &Arc<Self>, name: &str) -> Result<Arc<InstancePool>> {
        if let Some(p) = self
            .instances
            .pools
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(p.clone());
        }
        if name == ferry_query::ARCHIVE_INSTANCE {
            let connector =
                ferry_query::ArchiveConnector::connector(crate::archives::list(self).await?);
            let pool = InstancePool::new(
                InstanceName::new(name)?,
                connector,
                InstanceSettings::default(),
                self.action_sink(),
            );
            let mut pools = self
                .instances
                .pools
                .write()
                .unwrap_or_else(|e| e.into_inner());
            return Ok(pools.entry(name.to_string()).or_insert(pool).clone());
        }
        let rec = self.instance_record(name).await?;
        let url = ConnectionUrl::parse(&self.key.decrypt(&rec.url_secret)?)?;
        let settings = parse_settings(&rec)?;
        let connector = connector_for(&url, &connect_options(&settings))?;
        let pool = InstancePool::new(
            InstanceName::new(name)?,
            connector,
            settings,
            self.action_sink(),
        );
        let mut pools = self
            .instances
            .pools
            .write()
            .unwrap_or_else(|e| e.into_inner());
        Ok(pools.entry(name.to_string()).or_insert(pool).clone())
    }

    /// Logs each policy action and records it in the store.
    fn action_sink(self: &Arc<Self>) -> ActionSink {
        let state = Arc::downgrade(self);
        Arc::new(move |action: PolicyAction| {
            tracing::warn!(instance = %action.instance, action = %action.action, detail = %action.detail, "connection policy action");
            let Some(state) = state.upgrade() else { return };
            state
                .metrics
                .policy_action(&action.instance, &action.action);
            let rec = PolicyActionRecord {
                id: uuid::Uuid::new_v4().to_string(),
                instance: action.instance,
                action: action.action,
                feature: action.feature.map(|f| f.as_str().to_string()),
                detail: action.detail,
                at_ms: now_ms(),
            };
            tokio::spawn(async move {
                if let Err(e) = state.meta.insert_policy_action(&rec).await {
                    tracing::error!(error = %e, "could not record a policy action");
                }
            });
        })
    }
}

fn connect_options(settings: &InstanceSettings) -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_secs(settings.connect_timeout_secs.max(1)),
    }
}

/// Connects once and reports the server version and round trip.
pub async fn test_url(
    url: &ConnectionUrl,
    settings: &InstanceSettings,
) -> Result<ferry_connect::ServerInfo> {
    let connector = connector_for(url, &connect_options(settings))?;
    let mut conn = connector.connect(None).await?;
    conn.test().await
}

pub async fn add(
    state: &SharedState,
    req: AddInstance,
) -> Result<(InstanceDto, Option<ferry_connect::ServerInfo>)> {
    let name = InstanceName::new(&req.name)?;
    if name.as_str() == ferry_query::ARCHIVE_INSTANCE {
        return Err(Error::InvalidInput(format!(
            "the instance name \"{name}\" is reserved: SQL on registered archives runs there"
        )));
    }
    let url = ConnectionUrl::parse(&req.url)?;
    let environment: Environment = req.environment.as_deref().unwrap_or("dev").parse()?;
    let mut settings = req.settings.unwrap_or_default();
    if let Some(n) = req.max_connections {
        settings.max_connections = n;
    }
    settings.validate()?;
    if state.meta.get_instance(name.as_str()).await?.is_some() {
        return Err(Error::Conflict(format!(
            "instance \"{name}\" already exists: pick another name or remove it first"
        )));
    }
    let info = if req.test.unwrap_or(true) {
        Some(
            test_url(&url, &settings)
                .await
                .map_err(|e| e.context(format!("instance \"{name}\" was not added")))?,
        )
    } else {
        None
    };
    let now = now_ms();
    let rec = InstanceRecord {
        name: name.to_string(),
        engine: url.engine().to_string(),
        environment: environment.as_str().to_string(),
        url_redacted: url.redacted(),
        url_secret: state.key.encrypt(url.expose())?,
        settings: serde_json::to_string(&settings).map_err(|e| Error::Internal(e.to_string()))?,
        created_at_ms: now,
        updated_at_ms: now,
    };
    state.meta.insert_instance(&rec).await?;
    state.policies.invalidate();
    tracing::info!(instance = %name, engine = %url.engine(), url = %url, "instance registered");
    Ok((dto(&rec, None)?, info))
}

pub async fn update(state: &SharedState, name: &str, req: UpdateInstance) -> Result<InstanceDto> {
    let mut rec = state.instance_record(name).await?;
    let mut settings = req.settings.unwrap_or(parse_settings(&rec)?);
    if let Some(n) = req.max_connections {
        settings.max_connections = n;
    }
    settings.validate()?;
    if let Some(env) = req.environment {
        rec.environment = env.parse::<Environment>()?.as_str().to_string();
    }
    if let Some(raw) = req.url {
        let url = ConnectionUrl::parse(&raw)?;
        test_url(&url, &settings)
            .await
            .map_err(|e| e.context(format!("instance \"{name}\" was not changed")))?;
        rec.engine = url.engine().to_string();
        rec.url_redacted = url.redacted();
        rec.url_secret = state.key.encrypt(url.expose())?;
    }
    rec.settings = serde_json::to_string(&settings).map_err(|e| Error::Internal(e.to_string()))?;
    rec.updated_at_ms = now_ms();
    state.meta.update_instance(&rec).await?;
    state.policies.invalidate();
    // New work uses the new settings; leases already held finish on the old pool.
    state.instances.forget(name);
    dto(&rec, None)
}

pub async fn remove(state: &SharedState, name: &str) -> Result<()> {
    state.policies.invalidate();
    if !state.meta.delete_instance(name).await? {
        return Err(not_registered(name));
    }
    state.sessions.close_for_instance(state, name);
    state.instances.forget(name);
    Ok(())
}

//! Ferry's metadata store: instances, policy actions, asynchronous queries, transfers and
//! watermarks behind repository
//! traits, with one SQL implementation that runs on SQLite (the embedded default) and on
//! PostgreSQL (for several nodes), embedded migrations, and AES-256-GCM encryption of secrets.

mod flows;
pub mod secret;
mod security;
mod sql;

use async_trait::async_trait;
use ferry_core::Result;
use serde::{Deserialize, Serialize};

pub use flows::{FlowRecord, FlowRepo, FlowRunRecord, TaskLogLine, TaskRunRecord};
pub use secret::{MasterKey, SharedKey};
pub use security::{
    ApprovalRecord, AuditFilter, AuditRecord, MaskRuleRecord, RoleRecord, SecurityRepo,
    SqlRuleRecord, TokenRecord, UserRecord,
};
pub use sql::SqlStore;

/// A registered instance as stored. `url_secret` is the encrypted URL; only `url_redacted` is shown.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    pub name: String,
    pub engine: String,
    pub environment: String,
    pub url_redacted: String,
    pub url_secret: String,
    /// `InstanceSettings` as JSON.
    pub settings: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One action a connection policy took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyActionRecord {
    pub id: String,
    pub instance: String,
    pub action: String,
    pub feature: Option<String>,
    pub detail: String,
    pub at_ms: i64,
}

/// An asynchronous query and where its result is spooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryRecord {
    pub id: String,
    pub instance: String,
    pub database: Option<String>,
    pub sql: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub error: Option<String>,
    pub rows: i64,
    pub bytes: i64,
    /// The spool file, relative to the data directory.
    pub result_path: Option<String>,
    /// The result's columns as JSON (`[{"name":…,"type":…}]`) once known.
    pub columns: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

#[async_trait]
pub trait InstanceRepo: Send + Sync {
    /// Fails with `Conflict` when the name is taken.
    async fn insert_instance(&self, rec: &InstanceRecord) -> Result<()>;
    async fn update_instance(&self, rec: &InstanceRecord) -> Result<()>;
    async fn get_instance(&self, name: &str) -> Result<Option<InstanceRecord>>;
    async fn list_instances(&self) -> Result<Vec<InstanceRecord>>;
    /// Returns whether an instance was removed.
    async fn delete_instance(&self, name: &str) -> Result<bool>;
}

#[async_trait]
pub trait PolicyActionRepo: Send + Sync {
    async fn insert_policy_action(&self, rec: &PolicyActionRecord) -> Result<()>;
    /// Newest first.
    async fn list_policy_actions(
        &self,
        instance: Option<&str>,
        limit: i64,
    ) -> Result<Vec<PolicyActionRecord>>;
}

#[async_trait]
pub trait QueryRepo: Send + Sync {
    async fn insert_query(&self, rec: &QueryRecord) -> Result<()>;
    async fn update_query(&self, rec: &QueryRecord) -> Result<()>;
    async fn get_query(&self, id: &str) -> Result<Option<QueryRecord>>;
    /// Newest first.
    async fn list_queries(&self, limit: i64) -> Result<Vec<QueryRecord>>;
    /// Marks queries left `queued` or `running` by a stopped node as failed; returns how many.
    async fn fail_unfinished_queries(&self, reason: &str) -> Result<u64>;
}

/// A data transfer job: its spec and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferRecord {
    pub id: String,
    /// The transfer spec as JSON.
    pub spec: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub error: Option<String>,
    pub rows_read: i64,
    pub rows_written: i64,
    /// The source's row estimate, when known.
    pub rows_expected: Option<i64>,
    /// The report of a finished transfer as JSON.
    pub report: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

#[async_trait]
pub trait TransferRepo: Send + Sync {
    async fn insert_transfer(&self, rec: &TransferRecord) -> Result<()>;
    async fn update_transfer(&self, rec: &TransferRecord) -> Result<()>;
    /// Updates a running job's counters only; a no-op once the job has ended, so a progress
    /// report that lands after the final record cannot turn a finished job back into a running one.
    async fn update_transfer_progress(
        &self,
        id: &str,
        rows_read: i64,
        rows_written: i64,
        rows_expected: Option<i64>,
    ) -> Result<()>;
    async fn get_transfer(&self, id: &str) -> Result<Option<TransferRecord>>;
    /// Newest first.
    async fn list_transfers(&self, limit: i64) -> Result<Vec<TransferRecord>>;
    async fn fail_unfinished_transfers(&self, reason: &str) -> Result<u64>;
    /// The last value an incremental transfer moved up to.
    async fn get_watermark(&self, name: &str) -> Result<Option<String>>;
    async fn set_watermark(&self, name: &str, value: &str) -> Result<()>;
}

/// Archives queried with SQL; the definition is JSON the query engine owns.
#[async_trait]
pub trait ArchiveRepo: Send + Sync {
    /// Fails with `Conflict` when the name is taken.
    async fn insert_archive(&self, name: &str, definition: &str) -> Result<()>;
    /// `(name, definition)` in name order.
    async fn list_archives(&self) -> Result<Vec<(String, String)>>;
    async fn delete_archive(&self, name: &str) -> Result<bool>;
}

/// One sample of a table's size, for data trends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableStat {
    pub instance: String,
    /// `schema.table` or `table`.
    pub table: String,
    pub at_ms: i64,
    pub row_estimate: Option<i64>,
    pub size_bytes: Option<i64>,
}

#[async_trait]
pub trait TrendRepo: Send + Sync {
    /// Records samples; at most one per table and `bucket` (an interval number), so nodes
    /// collecting at the same time do not duplicate points.
    async fn record_table_stats(&self, bucket: i64, stats: &[TableStat]) -> Result<()>;
    /// Samples of an instance (one table, or all), oldest first, since `since_ms`.
    async fn table_stats(
        &self,
        instance: &str,
        table: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<TableStat>>;
}

/// Everything the server needs from the store.
pub trait MetaStore:
    InstanceRepo
    + PolicyActionRepo
    + QueryRepo
    + TransferRepo
    + ArchiveRepo
    + FlowRepo
    + TrendRepo
    + SecurityRepo
{
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

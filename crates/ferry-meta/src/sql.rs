//! The SQL implementation of the repositories, on SQLite or PostgreSQL through sqlx's `Any`
//! driver. Statements use `$n` placeholders, which both engines accept, and only portable types
//! (TEXT, BIGINT) so one set of queries serves both.

use std::path::Path;

use async_trait::async_trait;
use ferry_core::{Error, Result};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::{
    ArchiveRepo, InstanceRecord, InstanceRepo, MetaStore, PolicyActionRecord, PolicyActionRepo,
    QueryRecord, QueryRepo, TransferRecord, TransferRepo,
};

/// Schema migrations, applied in order once each. Append only; never edit a released one.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "create table instances (
        name text primary key,
        engine text not null,
        environment text not null,
        url_redacted text not null,
        url_secret text not null,
        settings text not null,
        created_at_ms bigint not null,
        updated_at_ms bigint not null
    );
    create table policy_actions (
        id text primary key,
        instance text not null,
        action text not null,
        feature text,
        detail text not null,
        at_ms bigint not null
    );
    create index policy_actions_by_instance on policy_actions (instance, at_ms);
    create table queries (
        id text primary key,
        instance text not null,
        database_name text,
        sql_text text not null,
        status text not null,
        error text,
        row_count bigint not null,
        byte_count bigint not null,
        result_path text,
        columns_json text,
        created_at_ms bigint not null,
        started_at_ms bigint,
        finished_at_ms bigint
    );
    create index queries_by_created on queries (created_at_ms)",
    ),
    (
        2,
        "create table transfers (
        id text primary key,
        spec text not null,
        status text not null,
        error text,
        rows_read bigint not null,
        rows_written bigint not null,
        report text,
        created_at_ms bigint not null,
        started_at_ms bigint,
        finished_at_ms bigint
    );
    create index transfers_by_created on transfers (created_at_ms);
    create table watermarks (
        name text primary key,
        value text not null,
        updated_at_ms bigint not null
    )",
    ),
    (
        3,
        "create table archives (
        name text primary key,
        definition text not null,
        created_at_ms bigint not null
    )",
    ),
    (4, "alter table transfers add column rows_expected bigint"),
    (
        5,
        "create table flows (
        name text primary key,
        version bigint not null,
        enabled bigint not null,
        next_fire_ms bigint,
        created_at_ms bigint not null,
        updated_at_ms bigint not null
    );
    create table flow_versions (
        flow text not null,
        version bigint not null,
        spec text not null,
        created_at_ms bigint not null,
        primary key (flow, version)
    );
    create table flow_runs (
        id text primary key,
        flow text not null,
        version bigint not null,
        status text not null,
        trigger_kind text not null,
        fire_key text,
        scheduled_ms bigint not null,
        bizdate text not null,
        variables text not null,
        error text,
        created_at_ms bigint not null,
        started_at_ms bigint,
        finished_at_ms bigint
    );
    create unique index flow_runs_fire_key on flow_runs (fire_key);
    create index flow_runs_by_flow on flow_runs (flow, created_at_ms);
    create table task_runs (
        id text primary key,
        run_id text not null,
        node text not null,
        status text not null,
        attempt bigint not null,
        priority bigint not null,
        lease_owner text,
        lease_until_ms bigint,
        available_at_ms bigint not null,
        started_at_ms bigint,
        finished_at_ms bigint,
        error text,
        outputs text,
        row_count bigint not null
    );
    create index task_runs_by_run on task_runs (run_id);
    create index task_runs_ready on task_runs (status, available_at_ms);
    create table task_logs (
        task_id text not null,
        seq bigint not null,
        at_ms bigint not null,
        line text not null,
        primary key (task_id, seq)
    )",
    ),
    (
        6,
        "alter table flow_runs add column overdue_notified_ms bigint",
    ),
    (
        7,
        "create table table_stats (
        instance text not null,
        table_name text not null,
        bucket bigint not null,
        at_ms bigint not null,
        row_estimate bigint,
        size_bytes bigint,
        primary key (instance, table_name, bucket)
    )",
    ),
    (8, "alter table flow_runs add column instances text"),
    (
        9,
        "create table users (
        name text primary key,
        password_hash text not null,
        roles text not null,
        grants text not null,
        disabled bigint not null,
        created_at_ms bigint not null,
        updated_at_ms bigint not null
    );
    create table api_tokens (
        id text primary key,
        user_name text not null,
        name text not null,
        kind text not null,
        secret_hash text not null unique,
        csrf_hash text,
        created_at_ms bigint not null,
        expires_at_ms bigint,
        last_used_ms bigint,
        revoked_at_ms bigint
    );
    create index api_tokens_by_user on api_tokens (user_name);
    create table roles (
        name text primary key,
        description text not null,
        grants text not null,
        created_at_ms bigint not null
    );
    create table owners (
        kind text not null,
        id text not null,
        owner text not null,
        primary key (kind, id)
    );
    create table audit_log (
        id text primary key,
        at_ms bigint not null,
        user_name text not null,
        source text,
        action text not null,
        instance text,
        database_name text,
        statement text,
        class text,
        decisions text,
        row_count bigint,
        duration_ms bigint,
        outcome text not null,
        error text
    );
    create index audit_log_by_time on audit_log (at_ms);
    create index audit_log_by_user on audit_log (user_name, at_ms);
    create table sql_rules (
        scope text not null,
        rule text not null,
        value text not null,
        updated_at_ms bigint not null,
        primary key (scope, rule)
    );
    create table mask_rules (
        id text primary key,
        scope text not null,
        table_name text,
        column_name text not null,
        algorithm text not null,
        created_at_ms bigint not null
    );
    create table approvals (
        id text primary key,
        requester text not null,
        instance text not null,
        database_name text,
        statement text not null,
        statement_hash text not null,
        reason text not null,
        status text not null,
        approver text,
        result text,
        created_at_ms bigint not null,
        decided_at_ms bigint,
        executed_at_ms bigint
    )",
    ),
];

/// Migrations whose SQL differs by backend: (version, SQLite, PostgreSQL). Statements are
/// separated by a line holding only `--;` (trigger bodies contain semicolons).
const BACKEND_MIGRATIONS: &[(i64, &str, &str)] = &[(
    10,
    "create trigger audit_log_no_update before update on audit_log
     begin select raise(abort, 'the audit log is append-only'); end
--;
     create trigger audit_log_no_delete before delete on audit_log
     begin select raise(abort, 'the audit log is append-only'); end",
    "create function ferry_audit_append_only() returns trigger language plpgsql as $$
     begin raise exception 'the audit log is append-only'; end $$
--;
     create trigger audit_log_append_only before update or delete on audit_log
     for each statement execute function ferry_audit_append_only()",
)];

/// The metadata store on SQLite or PostgreSQL.
pub struct SqlStore {
    pub(crate) pool: AnyPool,
    backend: &'static str,
}

pub(crate) fn store_error(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Error::Conflict(db.message().to_string())
        }
        sqlx::Error::Database(db) => Error::Internal(format!("metadata store: {}", db.message())),
        _ => Error::Internal(format!("metadata store: {e}")),
    }
}

impl SqlStore {
    /// The embedded default: `<data_dir>/meta.db`, in WAL mode.
    pub async fn open_sqlite(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("meta.db");
        Self::open(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Opens a store by URL (`sqlite://…` or `postgres://…`) and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            "sqlite"
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            "postgres"
        } else {
            return Err(Error::InvalidInput(format!(
                "unsupported metadata store URL {}: use sqlite://PATH or postgres://USER@HOST/DB",
                ferry_core::instance::redact(url)
            )));
        };
        let unreachable = |e: sqlx::Error| {
            Error::Connection(format!(
                "cannot open the metadata store at {}: {}",
                ferry_core::instance::redact(url),
                e
            ))
        };
        // One direct connection first: a pool would retry an unreachable server until its timeout.
        let probe = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
            .await
            .map_err(unreachable)?;
        let _ = sqlx::Connection::close(probe).await;
        let pool = AnyPoolOptions::new()
            // In WAL mode NORMAL keeps every commit across a crash of the process and syncs at
            // checkpoints, so a commit (an audit entry per statement) costs no fsync.
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == "sqlite" {
                        sqlx::raw_sql("pragma synchronous = normal")
                            .execute(conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .max_connections(if backend == "sqlite" { 4 } else { 10 })
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(unreachable)?;
        if backend == "sqlite" {
            sqlx::raw_sql("pragma journal_mode = wal")
                .execute(&pool)
                .await
                .map_err(store_error)?;
        }
        let store = SqlStore { pool, backend };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        sqlx::raw_sql("create table if not exists ferry_migrations (version bigint primary key, applied_at_ms bigint not null)")
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        let applied: Vec<i64> = sqlx::query_scalar("select version from ferry_migrations")
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        let plain = MIGRATIONS
            .iter()
            .map(|(version, sql)| (*version, sql.split(';').collect::<Vec<_>>()));
        let by_backend = BACKEND_MIGRATIONS.iter().map(|(version, sqlite, pg)| {
            let sql = if self.backend == "sqlite" { sqlite } else { pg };
            (*version, sql.split("\n--;\n").collect::<Vec<_>>())
        });
        for (version, statements) in plain.chain(by_backend) {
            if applied.contains(&version) {
                continue;
            }
            let mut tx = self.pool.begin().await.map_err(store_error)?;
            for statement in statements
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
            {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
            }
            sqlx::query("insert into ferry_migrations (version, applied_at_ms) values ($1, $2)")
                .bind(version)
                .bind(crate::now_ms())
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            tx.commit().await.map_err(store_error)?;
            tracing::info!(
                version,
                backend = self.backend,
                "applied metadata migration"
            );
        }
        Ok(())
    }
}

impl SqlStore {
    /// One job record by id.
    pub(crate) async fn fetch_by_id<T>(
        &self,
        columns: &str,
        table: &str,
        id: &str,
        from: fn(&AnyRow) -> Result<T>,
    ) -> Result<Option<T>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {columns} from {table} where id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(from).transpose()
    }

    /// The newest job records first.
    async fn list_newest<T>(
        &self,
        columns: &str,
        table: &str,
        limit: i64,
        from: fn(&AnyRow) -> Result<T>,
    ) -> Result<Vec<T>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {columns} from {table} order by created_at_ms desc, id limit $1"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(from).collect()
    }

    /// Marks jobs left queued or running (by a node that stopped) as failed.
    async fn fail_unfinished(&self, table: &'static str, reason: &str) -> Result<u64> {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "update {table} set status = 'failed', error = $1, finished_at_ms = $2 where status in ('queued', 'running')"
        )))
        .bind(reason)
        .bind(crate::now_ms())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected())
    }
}

impl MetaStore for SqlStore {
    fn backend(&self) -> &'static str {
        self.backend
    }
}

fn instance_from(row: &AnyRow) -> Result<InstanceRecord> {
    Ok(InstanceRecord {
        name: row.try_get("name").map_err(store_error)?,
        engine: row.try_get("engine").map_err(store_error)?,
        environment: row.try_get("environment").map_err(store_error)?,
        url_redacted: row.try_get("url_redacted").map_err(store_error)?,
        url_secret: row.try_get("url_secret").map_err(store_error)?,
        settings: row.try_get("settings").map_err(store_error)?,
        created_at_ms: row.try_get("created_at_ms").map_err(store_error)?,
        updated_at_ms: row.try_get("updated_at_ms").map_err(store_error)?,
    })
}

const INSTANCE_COLUMNS: &str =
    "name, engine, environment, url_redacted, url_secret, settings, created_at_ms, updated_at_ms";

#[async_trait]
impl InstanceRepo for SqlStore {
    async fn insert_instance(&self, r: &InstanceRecord) -> Result<()> {
        sqlx::query(
            "insert into instances (name, engine, environment, url_redacted, url_secret, settings, created_at_ms, updated_at_ms) \
             values ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&r.name)
        .bind(&r.engine)
        .bind(&r.environment)
        .bind(&r.url_redacted)
        .bind(&r.url_secret)
        .bind(&r.settings)
        .bind(r.created_at_ms)
        .bind(r.updated_at_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| match store_error(e) {
            Error::Conflict(_) => Error::Conflict(format!(
                "instance \"{}\" already exists: pick another name or remove it first",
                r.name
            )),
            other => other,
        })?;
        Ok(())
    }

    async fn update_instance(&self, r: &InstanceRecord) -> Result<()> {
        let done = sqlx::query(
            "update instances set engine = $2, environment = $3, url_redacted = $4, url_secret = $5, settings = $6, updated_at_ms = $7 \
             where name = $1",
        )
        .bind(&r.name)
        .bind(&r.engine)
        .bind(&r.environment)
        .bind(&r.url_redacted)
        .bind(&r.url_secret)
        .bind(&r.settings)
        .bind(r.updated_at_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(format!(
                "instance \"{}\" not found",
                r.name
            )));
        }
        Ok(())
    }

    async fn get_instance(&self, name: &str) -> Result<Option<InstanceRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {INSTANCE_COLUMNS} from instances where name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(instance_from).transpose()
    }

    async fn list_instances(&self) -> Result<Vec<InstanceRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {INSTANCE_COLUMNS} from instances order by name"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(instance_from).collect()
    }

    async fn delete_instance(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("delete from instances where name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl PolicyActionRepo for SqlStore {
    async fn insert_policy_action(&self, r: &PolicyActionRecord) -> Result<()> {
        sqlx::query("insert into policy_actions (id, instance, action, feature, detail, at_ms) values ($1, $2, $3, $4, $5, $6)")
            .bind(&r.id)
            .bind(&r.instance)
            .bind(&r.action)
            .bind(r.feature.clone())
            .bind(&r.detail)
            .bind(r.at_ms)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn list_policy_actions(
        &self,
        instance: Option<&str>,
        limit: i64,
    ) -> Result<Vec<PolicyActionRecord>> {
        let rows = sqlx::query(
            "select id, instance, action, feature, detail, at_ms from policy_actions \
             where ($1 is null or instance = $1) order by at_ms desc, id limit $2",
        )
        .bind(instance.map(str::to_string))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                Ok(PolicyActionRecord {
                    id: row.try_get("id").map_err(store_error)?,
                    instance: row.try_get("instance").map_err(store_error)?,
                    action: row.try_get("action").map_err(store_error)?,
                    feature: row.try_get("feature").map_err(store_error)?,
                    detail: row.try_get("detail").map_err(store_error)?,
                    at_ms: row.try_get("at_ms").map_err(store_error)?,
                })
            })
            .collect()
    }
}

const QUERY_COLUMNS: &str = "id, instance, database_name, sql_text, status, error, row_count, byte_count, result_path, columns_json, created_at_ms, started_at_ms, finished_at_ms";

fn query_from(row: &AnyRow) -> Result<QueryRecord> {
    Ok(QueryRecord {
        id: row.try_get("id").map_err(store_error)?,
        instance: row.try_get("instance").map_err(store_error)?,
        database: row.try_get("database_name").map_err(store_error)?,
        sql: row.try_get("sql_text").map_err(store_error)?,
        status: row.try_get("status").map_err(store_error)?,
        error: row.try_get("error").map_err(store_error)?,
        rows: row.try_get("row_count").map_err(store_error)?,
        bytes: row.try_get("byte_count").map_err(store_error)?,
        result_path: row.try_get("result_path").map_err(store_error)?,
        columns: row.try_get("columns_json").map_err(store_error)?,
        created_at_ms: row.try_get("created_at_ms").map_err(store_error)?,
        started_at_ms: row.try_get("started_at_ms").map_err(store_error)?,
        finished_at_ms: row.try_get("finished_at_ms").map_err(store_error)?,
    })
}

#[async_trait]
impl QueryRepo for SqlStore {
    async fn insert_query(&self, r: &QueryRecord) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "insert into queries ({QUERY_COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        )))
        .bind(&r.id)
        .bind(&r.instance)
        .bind(r.database.clone())
        .bind(&r.sql)
        .bind(&r.status)
        .bind(r.error.clone())
        .bind(r.rows)
        .bind(r.bytes)
        .bind(r.result_path.clone())
        .bind(r.columns.clone())
        .bind(r.created_at_ms)
        .bind(r.started_at_ms)
        .bind(r.finished_at_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn update_query(&self, r: &QueryRecord) -> Result<()> {
        sqlx::query(
            "update queries set status = $2, error = $3, row_count = $4, byte_count = $5, result_path = $6, columns_json = $7, \
             started_at_ms = $8, finished_at_ms = $9 where id = $1",
        )
        .bind(&r.id)
        .bind(&r.status)
        .bind(r.error.clone())
        .bind(r.rows)
        .bind(r.bytes)
        .bind(r.result_path.clone())
        .bind(r.columns.clone())
        .bind(r.started_at_ms)
        .bind(r.finished_at_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn get_query(&self, id: &str) -> Result<Option<QueryRecord>> {
        self.fetch_by_id(QUERY_COLUMNS, "queries", id, query_from)
            .await
    }

    async fn list_queries(&self, limit: i64) -> Result<Vec<QueryRecord>> {
        self.list_newest(QUERY_COLUMNS, "queries", limit, query_from)
            .await
    }

    async fn fail_unfinished_queries(&self, reason: &str) -> Result<u64> {
        self.fail_unfinished("queries", reason).await
    }
}

const TRANSFER_COLUMNS: &str = "id, spec, status, error, rows_read, rows_written, report, created_at_ms, started_at_ms, finished_at_ms, rows_expected";

fn transfer_from(row: &AnyRow) -> Result<TransferRecord> {
    Ok(TransferRecord {
        id: row.try_get("id").map_err(store_error)?,
        spec: row.try_get("spec").map_err(store_error)?,
        status: row.try_get("status").map_err(store_error)?,
        error: row.try_get("error").map_err(store_error)?,
        rows_read: row.try_get("rows_read").map_err(store_error)?,
        rows_written: row.try_get("rows_written").map_err(store_error)?,
        report: row.try_get("report").map_err(store_error)?,
        created_at_ms: row.try_get("created_at_ms").map_err(store_error)?,
        started_at_ms: row.try_get("started_at_ms").map_err(store_error)?,
        finished_at_ms: row.try_get("finished_at_ms").map_err(store_error)?,
        rows_expected: row.try_get("rows_expected").map_err(store_error)?,
    })
}

#[async_trait]
impl TransferRepo for SqlStore {
    async fn insert_transfer(&self, r: &TransferRecord) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "insert into transfers ({TRANSFER_COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        )))
        .bind(&r.id)
        .bind(&r.spec)
        .bind(&r.status)
        .bind(r.error.clone())
        .bind(r.rows_read)
        .bind(r.rows_written)
        .bind(r.report.clone())
        .bind(r.created_at_ms)
        .bind(r.started_at_ms)
        .bind(r.finished_at_ms)
        .bind(r.rows_expected)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn update_transfer_progress(
        &self,
        id: &str,
        rows_read: i64,
        rows_written: i64,
        rows_expected: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "update transfers set rows_read = $2, rows_written = $3, rows_expected = $4 where id = $1 and status = 'running'",
        )
        .bind(id)
        .bind(rows_read)
        .bind(rows_written)
        .bind(rows_expected)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn update_transfer(&self, r: &TransferRecord) -> Result<()> {
        sqlx::query(
            "update transfers set status = $2, error = $3, rows_read = $4, rows_written = $5, report = $6, \
             started_at_ms = $7, finished_at_ms = $8, rows_expected = $9 where id = $1",
        )
        .bind(&r.id)
        .bind(&r.status)
        .bind(r.error.clone())
        .bind(r.rows_read)
        .bind(r.rows_written)
        .bind(r.report.clone())
        .bind(r.started_at_ms)
        .bind(r.finished_at_ms)
        .bind(r.rows_expected)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn get_transfer(&self, id: &str) -> Result<Option<TransferRecord>> {
        self.fetch_by_id(TRANSFER_COLUMNS, "transfers", id, transfer_from)
            .await
    }

    async fn list_transfers(&self, limit: i64) -> Result<Vec<TransferRecord>> {
        self.list_newest(TRANSFER_COLUMNS, "transfers", limit, transfer_from)
            .await
    }

    async fn fail_unfinished_transfers(&self, reason: &str) -> Result<u64> {
        self.fail_unfinished("transfers", reason).await
    }

    async fn get_watermark(&self, name: &str) -> Result<Option<String>> {
        sqlx::query_scalar("select value from watermarks where name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)
    }

    async fn set_watermark(&self, name: &str, value: &str) -> Result<()> {
        sqlx::query(
            "insert into watermarks (name, value, updated_at_ms) values ($1, $2, $3) \
             on conflict (name) do update set value = excluded.value, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(name)
        .bind(value)
        .bind(crate::now_ms())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }
}

#[async_trait]
impl ArchiveRepo for SqlStore {
    async fn insert_archive(&self, name: &str, definition: &str) -> Result<()> {
        sqlx::query("insert into archives (name, definition, created_at_ms) values ($1, $2, $3)")
            .bind(name)
            .bind(definition)
            .bind(crate::now_ms())
            .execute(&self.pool)
            .await
            .map_err(|e| match store_error(e) {
                Error::Conflict(_) => Error::Conflict(format!(
                    "archive \"{name}\" already exists: remove it first or pick another name"
                )),
                other => other,
            })?;
        Ok(())
    }

    async fn list_archives(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("select name, definition from archives order by name")
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("name").map_err(store_error)?,
                    r.try_get("definition").map_err(store_error)?,
                ))
            })
            .collect()
    }

    async fn delete_archive(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("delete from archives where name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }
}

//! Task flows in the store: versioned definitions, runs pinned to a version, task instances that
//! workers take under renewable leases, and task logs. Claiming is one conditional `UPDATE …
//! RETURNING`, so two workers (on one node or many, SQLite or PostgreSQL) never take the same
//! task; a scheduled run carries a unique fire key, so no schedule fires twice.

use async_trait::async_trait;
use ferry_core::{Error, Result};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::sql::{SqlStore, store_error};

/// A flow's current state: its newest version, whether its schedule is on, and when it fires next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    pub name: String,
    pub version: i64,
    /// The definition of `version` as JSON.
    pub spec: String,
    pub enabled: bool,
    pub next_fire_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One run of a flow, pinned to the version it started with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRunRecord {
    pub id: String,
    pub flow: String,
    pub version: i64,
    /// `running`, `success`, `failed` or `cancelled`.
    pub status: String,
    /// `schedule`, `manual`, `backfill`, `rerun` or `restore`.
    pub trigger: String,
    /// Unique per scheduled fire time, so a schedule cannot fire twice; `None` otherwise.
    pub fire_key: Option<String>,
    /// The time the run stands for (its `${cyctime}`), in ms since the epoch.
    pub scheduled_ms: i64,
    pub bizdate: String,
    /// The resolved variables as a JSON object.
    pub variables: String,
    /// The engine, environment and settings of each instance the run's nodes use, as they were
    /// when it started (JSON object by instance name; never a URL or a secret).
    #[serde(default)]
    pub instances: Option<String>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

/// One node of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRunRecord {
    pub id: String,
    pub run_id: String,
    pub node: String,
    /// `waiting`, `queued`, `running`, `retrying`, `success`, `failed`, `skipped`, `cancelled`
    /// or `upstream_failed`.
    pub status: String,
    pub attempt: i64,
    pub priority: i64,
    pub lease_owner: Option<String>,
    pub lease_until_ms: Option<i64>,
    pub available_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub error: Option<String>,
    /// Output variables as a JSON object.
    pub outputs: Option<String>,
    pub rows: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskLogLine {
    pub task_id: String,
    pub seq: i64,
    pub at_ms: i64,
    pub line: String,
}

#[async_trait]
pub trait FlowRepo: Send + Sync {
    /// Stores `spec` as the flow's next version (1 for a new flow) and returns that version.
    async fn apply_flow(&self, name: &str, spec: &str, enabled: bool) -> Result<i64>;
    async fn get_flow(&self, name: &str) -> Result<Option<FlowRecord>>;
    /// One stored version's definition.
    async fn get_flow_version(&self, name: &str, version: i64) -> Result<Option<String>>;
    async fn list_flows(&self) -> Result<Vec<FlowRecord>>;
    async fn set_flow_enabled(&self, name: &str, enabled: bool) -> Result<bool>;
    async fn set_next_fire(&self, name: &str, next_fire_ms: Option<i64>) -> Result<()>;
    /// Inserts a run and its tasks in one transaction. A run whose fire key exists already
    /// fails with `Conflict` and inserts nothing.
    async fn create_run(&self, run: &FlowRunRecord, tasks: &[TaskRunRecord]) -> Result<()>;
    async fn get_run(&self, id: &str) -> Result<Option<FlowRunRecord>>;
    /// Newest first, optionally of one flow and/or one status.
    async fn list_runs(
        &self,
        flow: Option<&str>,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<FlowRunRecord>>;
    async fn update_run(&self, run: &FlowRunRecord) -> Result<()>;
    /// Ends a run that is still `running` with `run`'s status, error and end time; false when
    /// it had already ended (another worker finished it), so only one caller reports the end.
    async fn finish_run(&self, run: &FlowRunRecord) -> Result<bool>;
    /// Marks a run as reported overdue; true only for the first caller.
    async fn mark_overdue(&self, run_id: &str, at_ms: i64) -> Result<bool>;
    async fn list_tasks(&self, run_id: &str) -> Result<Vec<TaskRunRecord>>;
    async fn get_task(&self, id: &str) -> Result<Option<TaskRunRecord>>;
    /// Takes the most urgent ready task (queued or retrying, available by `now_ms`) for `owner`
    /// until `lease_until_ms`, marking it running; `None` when nothing is ready.
    async fn claim_task(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Option<TaskRunRecord>>;
    /// Extends a lease; false when `owner` no longer holds it (it expired and was requeued).
    async fn renew_lease(&self, task_id: &str, owner: &str, until_ms: i64) -> Result<bool>;
    /// Writes a task's outcome if `owner` still holds it; false otherwise.
    async fn finish_task(&self, task: &TaskRunRecord, owner: &str) -> Result<bool>;
    /// Moves a task from one of `from` to `to` (with `available_at_ms`); false when it was not
    /// in one of those states (another worker got there first).
    async fn move_task(
        &self,
        task_id: &str,
        from: &[&str],
        to: &str,
        available_at_ms: i64,
    ) -> Result<bool>;
    /// Returns running tasks whose lease expired to the queue; returns how many.
    async fn requeue_expired(&self, now_ms: i64) -> Result<u64>;
    async fn append_task_log(&self, task_id: &str, line: &str) -> Result<()>;
    /// Log lines of a task after `after_seq`, oldest first.
    async fn task_logs(&self, task_id: &str, after_seq: i64) -> Result<Vec<TaskLogLine>>;
}

const FLOW_COLUMNS: &str =
    "f.name, f.version, v.spec, f.enabled, f.next_fire_ms, f.created_at_ms, f.updated_at_ms";
const RUN_COLUMNS: &str = "id, flow, version, status, trigger_kind, fire_key, scheduled_ms, bizdate, variables, error, created_at_ms, started_at_ms, finished_at_ms, instances";
const TASK_COLUMNS: &str = "id, run_id, node, status, attempt, priority, lease_owner, lease_until_ms, available_at_ms, started_at_ms, finished_at_ms, error, outputs, row_count";

fn get<'r, T>(row: &'r AnyRow, column: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(column).map_err(store_error)
}

fn flow_from(row: &AnyRow) -> Result<FlowRecord> {
    Ok(FlowRecord {
        name: get(row, "name")?,
        version: get(row, "version")?,
        spec: get(row, "spec")?,
        enabled: get::<i64>(row, "enabled")? != 0,
        next_fire_ms: get(row, "next_fire_ms")?,
        created_at_ms: get(row, "created_at_ms")?,
        updated_at_ms: get(row, "updated_at_ms")?,
    })
}

fn run_from(row: &AnyRow) -> Result<FlowRunRecord> {
    Ok(FlowRunRecord {
        id: get(row, "id")?,
        flow: get(row, "flow")?,
        version: get(row, "version")?,
        status: get(row, "status")?,
        trigger: get(row, "trigger_kind")?,
        fire_key: get(row, "fire_key")?,
        scheduled_ms: get(row, "scheduled_ms")?,
        bizdate: get(row, "bizdate")?,
        variables: get(row, "variables")?,
        instances: get(row, "instances")?,
        error: get(row, "error")?,
        created_at_ms: get(row, "created_at_ms")?,
        started_at_ms: get(row, "started_at_ms")?,
        finished_at_ms: get(row, "finished_at_ms")?,
    })
}

fn task_from(row: &AnyRow) -> Result<TaskRunRecord> {
    Ok(TaskRunRecord {
        id: get(row, "id")?,
        run_id: get(row, "run_id")?,
        node: get(row, "node")?,
        status: get(row, "status")?,
        attempt: get(row, "attempt")?,
        priority: get(row, "priority")?,
        lease_owner: get(row, "lease_owner")?,
        lease_until_ms: get(row, "lease_until_ms")?,
        available_at_ms: get(row, "available_at_ms")?,
        started_at_ms: get(row, "started_at_ms")?,
        finished_at_ms: get(row, "finished_at_ms")?,
        error: get(row, "error")?,
        outputs: get(row, "outputs")?,
        rows: get(row, "row_count")?,
    })
}

#[async_trait]
impl FlowRepo for SqlStore {
    async fn apply_flow(&self, name: &str, spec: &str, enabled: bool) -> Result<i64> {
        let now = crate::now_ms();
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        // Write first: on SQLite a transaction that reads and then writes fails at once if
        // another connection wrote in between; one that starts by writing waits for its turn.
        sqlx::query("update flows set updated_at_ms = $2 where name = $1")
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let current: Option<i64> = sqlx::query_scalar("select version from flows where name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        let version = current.unwrap_or(0) + 1;
        sqlx::query(
            "insert into flow_versions (flow, version, spec, created_at_ms) values ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(version)
        .bind(spec)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| match store_error(e) {
            Error::Conflict(_) => Error::Conflict(format!(
                "flow \"{name}\" was changed by someone else at the same time; apply it again"
            )),
            other => other,
        })?;
        // A new version fires from now on: the next fire time is computed again.
        let statement = if current.is_some() {
            "update flows set version = $2, enabled = $3, next_fire_ms = null, updated_at_ms = $4 where name = $1"
        } else {
            "insert into flows (name, version, enabled, next_fire_ms, created_at_ms, updated_at_ms) values ($1, $2, $3, null, $4, $4)"
        };
        sqlx::query(statement)
            .bind(name)
            .bind(version)
            .bind(enabled as i64)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(version)
    }

    async fn get_flow(&self, name: &str) -> Result<Option<FlowRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {FLOW_COLUMNS} from flows f join flow_versions v on v.flow = f.name and v.version = f.version where f.name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(flow_from).transpose()
    }

    async fn get_flow_version(&self, name: &str, version: i64) -> Result<Option<String>> {
        sqlx::query_scalar("select spec from flow_versions where flow = $1 and version = $2")
            .bind(name)
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)
    }

    async fn list_flows(&self) -> Result<Vec<FlowRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {FLOW_COLUMNS} from flows f join flow_versions v on v.flow = f.name and v.version = f.version order by f.name"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(flow_from).collect()
    }

    async fn set_flow_enabled(&self, name: &str, enabled: bool) -> Result<bool> {
        let done = sqlx::query(
            "update flows set enabled = $2, next_fire_ms = null, updated_at_ms = $3 where name = $1",
        )
        .bind(name)
        .bind(enabled as i64)
        .bind(crate::now_ms())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_next_fire(&self, name: &str, next_fire_ms: Option<i64>) -> Result<()> {
        sqlx::query("update flows set next_fire_ms = $2 where name = $1")
            .bind(name)
            .bind(next_fire_ms)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn create_run(&self, run: &FlowRunRecord, tasks: &[TaskRunRecord]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "insert into flow_runs ({RUN_COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        )))
        .bind(&run.id)
        .bind(&run.flow)
        .bind(run.version)
        .bind(&run.status)
        .bind(&run.trigger)
        .bind(run.fire_key.clone())
        .bind(run.scheduled_ms)
        .bind(&run.bizdate)
        .bind(&run.variables)
        .bind(run.error.clone())
        .bind(run.created_at_ms)
        .bind(run.started_at_ms)
        .bind(run.finished_at_ms)
        .bind(run.instances.clone())
        .execute(&mut *tx)
        .await
        .map_err(|e| match store_error(e) {
            Error::Conflict(_) => Error::Conflict(format!(
                "flow \"{}\" already has a run for {}",
                run.flow,
                run.fire_key.as_deref().unwrap_or("this time")
            )),
            other => other,
        })?;
        for t in tasks {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "insert into task_runs ({TASK_COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
            )))
            .bind(&t.id)
            .bind(&t.run_id)
            .bind(&t.node)
            .bind(&t.status)
            .bind(t.attempt)
            .bind(t.priority)
            .bind(t.lease_owner.clone())
            .bind(t.lease_until_ms)
            .bind(t.available_at_ms)
            .bind(t.started_at_ms)
            .bind(t.finished_at_ms)
            .bind(t.error.clone())
            .bind(t.outputs.clone())
            .bind(t.rows)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }

    async fn get_run(&self, id: &str) -> Result<Option<FlowRunRecord>> {
        self.fetch_by_id(RUN_COLUMNS, "flow_runs", id, run_from)
            .await
    }

    async fn list_runs(
        &self,
        flow: Option<&str>,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<FlowRunRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {RUN_COLUMNS} from flow_runs where ($1 is null or flow = $1) and ($2 is null or status = $2) \
             order by created_at_ms desc, id limit $3"
        )))
        .bind(flow)
        .bind(status)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(run_from).collect()
    }

    async fn update_run(&self, r: &FlowRunRecord) -> Result<()> {
        sqlx::query(
            "update flow_runs set status = $2, error = $3, started_at_ms = $4, finished_at_ms = $5 where id = $1",
        )
        .bind(&r.id)
        .bind(&r.status)
        .bind(r.error.clone())
        .bind(r.started_at_ms)
        .bind(r.finished_at_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn finish_run(&self, r: &FlowRunRecord) -> Result<bool> {
        let done = sqlx::query(
            "update flow_runs set status = $2, error = $3, finished_at_ms = $4 where id = $1 and status = 'running'",
        )
        .bind(&r.id)
        .bind(&r.status)
        .bind(r.error.clone())
        .bind(r.finished_at_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn mark_overdue(&self, run_id: &str, at_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "update flow_runs set overdue_notified_ms = $2 where id = $1 and overdue_notified_ms is null and status = 'running'",
        )
        .bind(run_id)
        .bind(at_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_tasks(&self, run_id: &str) -> Result<Vec<TaskRunRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {TASK_COLUMNS} from task_runs where run_id = $1 order by id"
        )))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(task_from).collect()
    }

    async fn get_task(&self, id: &str) -> Result<Option<TaskRunRecord>> {
        self.fetch_by_id(TASK_COLUMNS, "task_runs", id, task_from)
            .await
    }

    async fn claim_task(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Option<TaskRunRecord>> {
        // The inner select picks a candidate; the outer condition re-checks it, so when two
        // workers pick the same one only the first update matches.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "update task_runs set status = 'running', lease_owner = $1, lease_until_ms = $2, \
               started_at_ms = coalesce(started_at_ms, $3) \
             where id = (select id from task_runs where status in ('queued', 'retrying') and available_at_ms <= $3 \
                         order by priority desc, available_at_ms, id limit 1) \
               and status in ('queued', 'retrying') \
             returning {TASK_COLUMNS}"
        )))
        .bind(owner)
        .bind(lease_until_ms)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(task_from).transpose()
    }

    async fn renew_lease(&self, task_id: &str, owner: &str, until_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "update task_runs set lease_until_ms = $3 where id = $1 and lease_owner = $2 and status = 'running'",
        )
        .bind(task_id)
        .bind(owner)
        .bind(until_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn finish_task(&self, t: &TaskRunRecord, owner: &str) -> Result<bool> {
        let done = sqlx::query(
            "update task_runs set status = $3, attempt = $4, available_at_ms = $5, finished_at_ms = $6, error = $7, \
               outputs = $8, row_count = $9, lease_owner = null, lease_until_ms = null \
             where id = $1 and lease_owner = $2 and status = 'running'",
        )
        .bind(&t.id)
        .bind(owner)
        .bind(&t.status)
        .bind(t.attempt)
        .bind(t.available_at_ms)
        .bind(t.finished_at_ms)
        .bind(t.error.clone())
        .bind(t.outputs.clone())
        .bind(t.rows)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn move_task(
        &self,
        task_id: &str,
        from: &[&str],
        to: &str,
        available_at_ms: i64,
    ) -> Result<bool> {
        let states = from
            .iter()
            .map(|s| format!("'{}'", s.replace('\'', "")))
            .collect::<Vec<_>>()
            .join(", ");
        let finished = matches!(
            to,
            "success" | "failed" | "skipped" | "cancelled" | "upstream_failed"
        )
        .then(crate::now_ms);
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "update task_runs set status = $2, available_at_ms = $3, finished_at_ms = coalesce($4, finished_at_ms), \
               lease_owner = null, lease_until_ms = null \
             where id = $1 and status in ({states})"
        )))
        .bind(task_id)
        .bind(to)
        .bind(available_at_ms)
        .bind(finished)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn requeue_expired(&self, now_ms: i64) -> Result<u64> {
        let done = sqlx::query(
            "update task_runs set status = 'queued', lease_owner = null, lease_until_ms = null, available_at_ms = $1 \
             where status = 'running' and lease_until_ms < $1",
        )
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected())
    }

    async fn append_task_log(&self, task_id: &str, line: &str) -> Result<()> {
        // One writer per task (its lease holder), so the next number cannot collide.
        sqlx::query(
            "insert into task_logs (task_id, seq, at_ms, line) \
             values ($1, (select coalesce(max(seq), 0) + 1 from task_logs where task_id = $1), $2, $3)",
        )
        .bind(task_id)
        .bind(crate::now_ms())
        .bind(line)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn task_logs(&self, task_id: &str, after_seq: i64) -> Result<Vec<TaskLogLine>> {
        let rows = sqlx::query(
            "select task_id, seq, at_ms, line from task_logs where task_id = $1 and seq > $2 order by seq",
        )
        .bind(task_id)
        .bind(after_seq)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|r| {
                Ok(TaskLogLine {
                    task_id: get(r, "task_id")?,
                    seq: get(r, "seq")?,
                    at_ms: get(r, "at_ms")?,
                    line: get(r, "line")?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl crate::TrendRepo for SqlStore {
    async fn record_table_stats(&self, bucket: i64, stats: &[crate::TableStat]) -> Result<()> {
        for s in stats {
            sqlx::query(
                "insert into table_stats (instance, table_name, bucket, at_ms, row_estimate, size_bytes) \
                 values ($1, $2, $3, $4, $5, $6) on conflict do nothing",
            )
            .bind(&s.instance)
            .bind(&s.table)
            .bind(bucket)
            .bind(s.at_ms)
            .bind(s.row_estimate)
            .bind(s.size_bytes)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        }
        Ok(())
    }

    async fn table_stats(
        &self,
        instance: &str,
        table: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<crate::TableStat>> {
        let rows = sqlx::query(
            "select instance, table_name, at_ms, row_estimate, size_bytes from table_stats \
             where instance = $1 and ($2 is null or table_name = $2) and at_ms >= $3 order by at_ms, table_name",
        )
        .bind(instance)
        .bind(table)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|r| {
                Ok(crate::TableStat {
                    instance: get(r, "instance")?,
                    table: get(r, "table_name")?,
                    at_ms: get(r, "at_ms")?,
                    row_estimate: get(r, "row_estimate")?,
                    size_bytes: get(r, "size_bytes")?,
                })
            })
            .collect()
    }
}

//! Task kinds, each a plugin: a parameters struct (serde, `deny_unknown_fields`) checked when a
//! flow is saved, the instances it names, the variables it outputs, and a `run` that logs,
//! honours cancellation (on the database, not just the wait) and reports rows and outputs.
//! Adding a kind is one type here and one line in [`kind`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::DateTime;
use chrono_tz::Tz;
use ferry_connect::{Connection, InstancePool};
use ferry_core::{Engine, Error, Feature, Result};
use ferry_move::{ExportSpec, Progress, TransferSpec, WatermarkStore};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::vars::{self, Style, Values};

/// What tasks need from the server they run in.
#[async_trait]
pub trait Resources: Send + Sync {
    /// The pool of a registered instance (its cap holds for tasks too).
    async fn pool(&self, instance: &str) -> Result<Arc<InstancePool>>;
    fn watermarks(&self) -> Arc<dyn WatermarkStore>;
    /// An instance's URL with its credentials, for client tools (`backup`, `restore`).
    async fn instance_url(&self, instance: &str) -> Result<ferry_core::ConnectionUrl> {
        Err(Error::Unsupported(format!(
            "this server cannot hand out the URL of {instance}"
        )))
    }
    /// Whether an administrator allowed `shell` tasks on this server.
    fn shell_enabled(&self) -> bool {
        false
    }
    /// Checks, before each attempt, that the flow's owner may still run `node` of `run`
    /// (grants are re-checked at every run, not only when the flow was saved).
    async fn authorize_task(&self, _run: &ferry_meta::FlowRunRecord, _node: &str) -> Result<()> {
        Ok(())
    }
}

/// Writes a task's log lines (to the store, where `ferry run logs` reads them).
pub type Logger = Arc<dyn Fn(String) + Send + Sync>;

/// Everything one attempt of a task has.
pub struct TaskContext {
    pub resources: Arc<dyn Resources>,
    pub values: Values,
    /// The run's scheduled time, for `$[…]` expressions.
    pub at: DateTime<Tz>,
    pub log: Logger,
    /// Cancelled when the run is cancelled, the attempt times out or the lease is lost.
    pub cancel: CancellationToken,
}

impl TaskContext {
    /// Substitutes variables in parameters: keys named `sql` and `where` as SQL for `engine`
    /// (quoted literals), every other string as plain text.
    pub fn substitute(
        &self,
        params: &serde_json::Value,
        engine: Engine,
    ) -> Result<serde_json::Value> {
        substitute_keys(
            params,
            &|key| {
                if matches!(key, Some("sql" | "where")) {
                    Style::Sql(engine)
                } else {
                    Style::Plain
                }
            },
            &self.values,
            &self.at,
            None,
        )
    }
}

fn substitute_keys(
    value: &serde_json::Value,
    style: &dyn Fn(Option<&str>) -> Style,
    values: &Values,
    at: &DateTime<Tz>,
    key: Option<&str>,
) -> Result<serde_json::Value> {
    Ok(match value {
        serde_json::Value::String(s) if key == Some(vars::TEMPLATE_KEY) => {
            serde_json::Value::String(s.clone())
        }
        serde_json::Value::String(s) => {
            serde_json::Value::String(vars::substitute(s, values, at, style(key))?)
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|v| substitute_keys(v, style, values, at, key))
                .collect::<Result<_>>()?,
        ),
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), substitute_keys(v, style, values, at, Some(k))?)))
                .collect::<Result<_>>()?,
        ),
        other => other.clone(),
    })
}

/// What checking a node's parameters found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Instances the node uses; each must be registered.
    pub instances: Vec<String>,
}

/// What one successful attempt produced.
#[derive(Debug, Default)]
pub struct TaskResult {
    pub rows: u64,
    /// Output variables for downstream nodes.
    pub outputs: BTreeMap<String, String>,
}

#[async_trait]
pub trait TaskKind: Send + Sync {
    fn name(&self) -> &'static str;
    fn check(&self, params: &serde_json::Value) -> Result<Checked>;
    /// Variables a successful run gives downstream nodes.
    fn outputs(&self, _params: &serde_json::Value) -> Vec<String> {
        Vec::new()
    }
    async fn run(&self, ctx: &TaskContext, params: &serde_json::Value) -> Result<TaskResult>;
}

/// Every kind, by name.
pub const KINDS: &[&str] = &[
    "sql",
    "cross_sql",
    "check",
    "backup",
    "restore",
    "spark",
    "transfer",
    "export",
    "http",
    "shell",
];

pub fn kind(name: &str) -> Option<&'static dyn TaskKind> {
    match name {
        "sql" => Some(&SqlKind),
        "check" => Some(&CheckKind),
        "transfer" => Some(&TransferKind),
        "export" => Some(&ExportKind),
        "cross_sql" => Some(&crate::external::CrossSqlKind),
        "backup" => Some(&crate::dump::BackupKind),
        "restore" => Some(&crate::dump::RestoreKind),
        "http" => Some(&crate::external::HttpKind),
        "spark" => Some(&crate::external::SparkKind),
        "shell" => Some(&crate::external::ShellKind),
        _ => None,
    }
}

fn parse<T: DeserializeOwned>(params: &serde_json::Value) -> Result<T> {
    serde_json::from_value(params.clone()).map_err(|e| Error::InvalidInput(e.to_string()))
}

/// Parameters of `sql`: a script on one instance, statement by statement.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlParams {
    instance: String,
    #[serde(default)]
    database: Option<String>,
    sql: String,
    /// Run the whole script in one transaction.
    #[serde(default)]
    transaction: bool,
    /// Run the script again and again until its last statement changes no row.
    #[serde(default)]
    repeat: bool,
    /// Columns of the last result's first row that become variables downstream.
    #[serde(default)]
    output: Vec<String>,
}

/// The most rounds a repeated script runs.
const MAX_ROUNDS: u64 = 1_000_000;

struct SqlKind;

#[async_trait]
impl TaskKind for SqlKind {
    fn name(&self) -> &'static str {
        "sql"
    }

    fn check(&self, params: &serde_json::Value) -> Result<Checked> {
        let p: SqlParams = parse(params)?;
        if p.sql.trim().is_empty() {
            return Err(Error::InvalidInput("sql is empty".into()));
        }
        Ok(Checked {
            instances: vec![p.instance],
        })
    }

    fn outputs(&self, params: &serde_json::Value) -> Vec<String> {
        parse::<SqlParams>(params)
            .map(|p| p.output)
            .unwrap_or_default()
    }

    async fn run(&self, ctx: &TaskContext, params: &serde_json::Value) -> Result<TaskResult> {
        let raw: SqlParams = parse(params)?;
        let pool = ctx.resources.pool(&raw.instance).await?;
        let engine = pool.connector().engine();
        let p: SqlParams = parse(&ctx.substitute(params, engine)?)?;
        let mut lease = pool
            .acquire(Feature::Task, p.database.as_deref(), "task")
            .await?;
        let statements = ferry_connect::script::split_statements(engine, &p.sql);
        let mut result = TaskResult::default();
        let mut last_row: Option<BTreeMap<String, Option<String>>> = None;
        // With `repeat`, the script runs again until its last statement changes no row: a
        // batched DELETE … LIMIT that purges in small transactions.
        for round in 1..=MAX_ROUNDS {
            if p.transaction {
                run_statement(lease.conn(), begin_sql(engine), &ctx.cancel).await?;
            }
            let mut last_affected = None;
            for statement in &statements {
                let started = Instant::now();
                if round == 1 {
                    (ctx.log)(format!("running: {}", one_line(statement)));
                }
                match run_statement(lease.conn(), statement, &ctx.cancel).await {
                    Ok(Outcome::Rows { count, first }) => {
                        (ctx.log)(format!(
                            "{count} rows in {:.1} s",
                            started.elapsed().as_secs_f64()
                        ));
                        result.rows += count;
                        last_row = first;
                        last_affected = None;
                    }
                    Ok(Outcome::Affected(n)) => {
                        (ctx.log)(format!(
                            "{n} rows affected in {:.1} s",
                            started.elapsed().as_secs_f64()
                        ));
                        result.rows += n;
                        last_affected = Some(n);
                    }
                    Err(e) => {
                        if p.transaction || lease.conn().in_transaction() {
                            let _ = lease.conn().run("ROLLBACK").await;
                        }
                        return Err(e);
                    }
                }
            }
            if p.transaction {
                run_statement(lease.conn(), "COMMIT", &ctx.cancel).await?;
            }
            match (p.repeat, last_affected) {
                (false, _) => break,
                (true, Some(0)) => {
                    (ctx.log)(format!("done after {round} round(s)"));
                    break;
                }
                (true, Some(_)) => {}
                (true, None) => {
                    return Err(Error::InvalidInput(
                        "repeat needs a script whose last statement changes rows (an UPDATE or DELETE with a LIMIT)".into(),
                    ));
                }
            }
            if round == MAX_ROUNDS {
                return Err(Error::InvalidInput(format!(
                    "the script still changed rows after {MAX_ROUNDS} rounds; is its last statement limited to a batch?"
                )));
            }
        }
        for name in &p.output {
            let row = last_row.as_ref().ok_or_else(|| {
                Error::InvalidInput(format!(
                    "output {name:?}: the script's last statement returned no row to read it from"
                ))
            })?;
            let value = row.get(name).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "output {name:?}: the last result has no column {name:?} (it has {})",
                    row.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            (ctx.log)(format!(
                "output {name} = {}",
                value.as_deref().unwrap_or("NULL")
            ));
            result
                .outputs
                .insert(name.clone(), value.clone().unwrap_or_default());
        }
        Ok(result)
    }
}

pub(crate) fn begin_sql(engine: Engine) -> &'static str {
    match engine {
        Engine::Mysql => "START TRANSACTION",
        _ => "BEGIN",
    }
}

fn one_line(sql: &str) -> String {
    let flat: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 200 {
        format!("{}…", flat.chars().take(200).collect::<String>())
    } else {
        flat
    }
}

enum Outcome {
    Rows {
        count: u64,
        first: Option<BTreeMap<String, Option<String>>>,
    },
    Affected(u64),
}

/// Runs one statement to the end, counting rows and keeping the first row as text; a
/// cancellation cancels the statement on the server and waits for it to stop.
async fn run_statement(
    conn: &mut dyn Connection,
    sql: &str,
    cancel: &CancellationToken,
) -> Result<Outcome> {
    let canceller = conn.canceller();
    let work = async {
        use futures::TryStreamExt;
        match conn.run(sql).await? {
            ferry_connect::StatementOutput::Affected(n) => Ok(Outcome::Affected(n)),
            ferry_connect::StatementOutput::Rows {
                schema,
                mut batches,
            } => {
                let mut count = 0u64;
                let mut first = None;
                while let Some(batch) = batches.try_next().await? {
                    if first.is_none() && batch.num_rows() > 0 {
                        first = Some(first_row(&schema, &batch)?);
                    }
                    count += batch.num_rows() as u64;
                }
                Ok(Outcome::Rows { count, first })
            }
        }
    };
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => r,
        _ = cancel.cancelled() => {
            let _ = canceller.cancel().await;
            let _ = tokio::time::timeout(Duration::from_secs(30), work).await;
            Err(Error::Cancelled("the statement was cancelled on the server".into()))
        }
    }
}

fn first_row(
    schema: &arrow::datatypes::SchemaRef,
    batch: &arrow::record_batch::RecordBatch,
) -> Result<BTreeMap<String, Option<String>>> {
    let mut row = BTreeMap::new();
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let fmt =
            arrow::util::display::ArrayFormatter::try_new(column.as_ref(), &Default::default())
                .map_err(|e| Error::Internal(format!("formatting {}: {e}", field.name())))?;
        let value = (!column.is_null(0)).then(|| fmt.value(0).to_string());
        row.insert(field.name().clone(), value);
    }
    Ok(row)
}

/// Parameters of `check`: a condition that must become true (its first column of its first row
/// is true, non-zero or non-empty), checked every `interval_secs` until `wait_secs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckParams {
    instance: String,
    #[serde(default)]
    database: Option<String>,
    sql: String,
    #[serde(default = "default_interval")]
    interval_secs: u64,
    #[serde(default = "default_wait")]
    wait_secs: u64,
}

fn default_interval() -> u64 {
    30
}

fn default_wait() -> u64 {
    3600
}

struct CheckKind;

#[async_trait]
impl TaskKind for CheckKind {
    fn name(&self) -> &'static str {
        "check"
    }

    fn check(&self, params: &serde_json::Value) -> Result<Checked> {
        let p: CheckParams = parse(params)?;
        if p.interval_secs == 0 {
            return Err(Error::InvalidInput(
                "interval_secs must be at least 1".into(),
            ));
        }
        Ok(Checked {
            instances: vec![p.instance],
        })
    }

    async fn run(&self, ctx: &TaskContext, params: &serde_json::Value) -> Result<TaskResult> {
        let raw: CheckParams = parse(params)?;
        let pool = ctx.resources.pool(&raw.instance).await?;
        let p: CheckParams = parse(&ctx.substitute(params, pool.connector().engine())?)?;
        let deadline = Instant::now() + Duration::from_secs(p.wait_secs);
        let mut checks = 0u64;
        loop {
            checks += 1;
            let verdict = {
                let mut lease = pool
                    .acquire(Feature::Task, p.database.as_deref(), "task")
                    .await?;
                match run_statement(lease.conn(), &p.sql, &ctx.cancel).await? {
                    Outcome::Rows {
                        first: Some(row), ..
                    } => row
                        .values()
                        .next()
                        .cloned()
                        .flatten()
                        .is_some_and(|v| truthy(&v)),
                    _ => false,
                }
            };
            if verdict {
                (ctx.log)(format!("condition true after {checks} check(s)"));
                return Ok(TaskResult::default());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "the condition stayed false for {} s ({checks} checks): {}",
                    p.wait_secs,
                    one_line(&p.sql)
                )));
            }
            (ctx.log)(format!(
                "condition false; checking again in {} s",
                p.interval_secs
            ));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(p.interval_secs)) => {}
                _ = ctx.cancel.cancelled() => return Err(Error::Cancelled("the check was cancelled".into())),
            }
        }
    }
}

fn truthy(v: &str) -> bool {
    let v = v.trim().to_ascii_lowercase();
    !(v.is_empty() || v == "0" || v == "false" || v == "f" || v == "0.0")
}

/// `transfer`: the data-movement engine with all its modes (parameters as `ferry copy`'s spec).
struct TransferKind;

#[async_trait]
impl TaskKind for TransferKind {
    fn name(&self) -> &'static str {
        "transfer"
    }

    fn check(&self, params: &serde_json::Value) -> Result<Checked> {
        let spec: TransferSpec = parse(params)?;
        let mut instances = vec![spec.target.instance.clone()];
        if let Some(i) = spec.source.instance() {
            instances.push(i.to_string());
        }
        Ok(Checked { instances })
    }

    async fn run(&self, ctx: &TaskContext, params: &serde_json::Value) -> Result<TaskResult> {
        let raw: TransferSpec = parse(params)?;
        let source = match raw.source.instance() {
            Some(name) => Some(ctx.resources.pool(name).await?),
            None => None,
        };
        let engine = source
            .as_ref()
            .map(|p| p.connector().engine())
            .unwrap_or(Engine::Postgres);
        let spec: TransferSpec = parse(&ctx.substitute(params, engine)?)?;
        spec.validate()?;
        let target = ctx.resources.pool(&spec.target.instance).await?;
        (ctx.log)(format!(
            "transfer {} → {} ({:?})",
            spec.source.display(),
            spec.target.display(),
            spec.mode
        ));
        let watermarks = ctx.resources.watermarks();
        let work = ferry_move::run_transfer(
            &spec,
            source,
            target,
            watermarks.as_ref(),
            Arc::new(Progress::default()),
        );
        let report = tokio::select! {
            r = work => r?,
            // Dropping the transfer drops its connections: the target transaction rolls back.
            _ = ctx.cancel.cancelled() => return Err(Error::Cancelled("the transfer was cancelled".into())),
        };
        (ctx.log)(format!(
            "moved {} rows in {:.1} s; verified: {}",
            report.rows,
            report.duration_ms as f64 / 1000.0,
            report.verified
        ));
        Ok(TaskResult {
            rows: report.rows,
            outputs: BTreeMap::new(),
        })
    }
}

/// `export`: a table or query to files or object storage, partitioned by date; without a
/// partition column, `${yyyy}`/`${mm}`/`${dd}` in the template come from the run's bizdate.
struct ExportKind;

#[async_trait]
impl TaskKind for ExportKind {
    fn name(&self) -> &'static str {
        "export"
    }

    fn check(&self, params: &serde_json::Value) -> Result<Checked> {
        let spec: ExportSpec = parse(params)?;
        let instance = spec.source.instance().ok_or_else(|| {
            Error::InvalidInput("an export reads a table or a query on an instance".into())
        })?;
        Ok(Checked {
            instances: vec![instance.to_string()],
        })
    }

    async fn run(&self, ctx: &TaskContext, params: &serde_json::Value) -> Result<TaskResult> {
        let raw: ExportSpec = parse(params)?;
        let instance = raw
            .source
            .instance()
            .ok_or_else(|| Error::InvalidInput("an export reads a table or a query".into()))?
            .to_string();
        let pool = ctx.resources.pool(&instance).await?;
        let mut spec: ExportSpec = parse(&ctx.substitute(params, pool.connector().engine())?)?;
        if let Some(b) = ctx.values.get("bizdate") {
            spec.variables
                .entry("bizdate".into())
                .or_insert_with(|| b.value.clone());
        }
        spec.validate()?;
        (ctx.log)(format!("export {} → {}", spec.source.display(), spec.url));
        let work = ferry_move::run_export(&spec, pool, Arc::new(Progress::default()));
        let report = tokio::select! {
            r = work => r?,
            _ = ctx.cancel.cancelled() => return Err(Error::Cancelled("the export was cancelled".into())),
        };
        for f in &report.files {
            (ctx.log)(format!("wrote {} ({} rows)", f.path, f.rows));
        }
        Ok(TaskResult {
            rows: report.rows,
            outputs: BTreeMap::new(),
        })
    }
}

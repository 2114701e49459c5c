//! Task kinds beyond one database: `cross_sql` (DataFusion over tables of several instances,
//! the result written into a table), `http` (a webhook call), `spark` (`spark-submit`) and
//! `shell` (a command on the server, disabled unless an administrator starts the server with
//! `--enable-shell`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::{Engine, Error, Result};
use futures::StreamExt;
use serde::Deserialize;

use crate::kinds::{Checked, TaskContext, TaskKind, TaskResult};

fn parse<T: serde::de::DeserializeOwned>(params: &serde_json::Value) -> Result<T> {
    serde_json::from_value(params.clone()).map_err(|e| Error::InvalidInput(e.to_string()))
}

/// Parameters of `http`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpParams {
    url: String,
    #[serde(default = "post")]
    method: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// A JSON body (variables substituted in its strings), or text.
    #[serde(default)]
    body: Option<serde_json::Value>,
    #[serde(default = "thirty")]
    timeout_secs: u64,
}

fn post() -> String {
    "POST".into()
}

fn thirty() -> u64 {
    30
}

pub struct HttpKind;

#[async_trait]
impl TaskKind for HttpKind {
    fn name(&self) -> &'static str {
        "http"
    }

    fn check(&self, params: &serde_json::Value) -> Result<Checked> {
        let p: HttpParams = parse(params)?;
        if !(p.url.starts_with("http://")
            || p.url.starts_with("https://")
            || p.url.starts_with("${"))
        {
            return Err(Error::InvalidInput(format!(
                "url {:?} must be http:// or https://",
                p.url
            )));
        }
        p.method.parse::<reqwest::Method>().map_err(|_| {
            Error::InvalidInput(format!("method {:?} is not an HTTP method", p.method))
        })?;
        Ok(Checked::default())
    }

    fn outputs(&self, _params: &serde_json::Value) -> Vec<String> {
        vec!["http_status".into()]
    }

    async fn run(&self, ctx: &TaskContext, params: &serde_json::Value) -> Result<TaskResult> {
        let p: HttpParams = parse(&ctx.substitute(params, Engine::Postgres)?)?;
        let method = p.method.parse::<reqwest::Method>().map_err(|_| {
            Error::InvalidInput(format!("method {:?} is not an HTTP method", p.method))
        })?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(p.timeout_secs))
            .build()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut request = client.request(method.clone(), &p.url);
        for (k, v) in &p.headers {
            request = request.header(k, v);
        }
        request = match p.body {
            Some(serde_json::Value::String(text)) => request.body(text),
            Some(json) => request.json(&json),
            None => request,
        };
        (ctx.log)(format!("{method} {}", p.url));
        let response = tokio::select! {
            r = request.send() => r.map_err(|e| Error::Connection(format!("{method} {}: {}", p.url, e.without_url())))?,
            _ = ctx.cancel.cancelled() => return Err(Error::Cancelled("the request was cancelled".into())),
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let excerpt: String = text.chars().take(500).collect();
        (ctx.log)(format!("answered {status}: {excerpt}"));
        if !status.is_success() {
            return Err(Error::Engine(format!(
                "{method} {} answered {status}: {excerpt}",
                p.url
            )));
        }
        Ok(TaskResult {
            rows: 0,
            outputs: [("http_status".to_string(), status.as_u16().to_string())].into(),
        })
    }
}

/// Parameters of `shell`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShellParams {
    /// Run by `sh -c`; flow variables are also in the environment as `FERRY_<NAME>`.
    command: String,
    #[serde(default)]
    workdir: Option<String>,
}

pub struct ShellKind;

#[async_trait]
impl TaskKind for ShellKind {
    fn name(&self) -> &'static str {
        "shell"
    }

    fn check(&self, params: &serde_json::Value) -> Result<Checked> {
        let p: ShellParams = parse(params)?;
        if p.command.trim().is_empty() {
            return Err(Error::InvalidInput("command is empty".into()));
        }
        Ok(Checked::default())
    }

    async fn run(&self, ctx: &TaskContext, params: &serde_json::Value) -> Result<TaskResult> {
        if !ctx.resources.shell_enabled() {
            return Err(Error::PermissionDenied(
                "shell tasks are disabled on this server; an administrator enables them with `ferry serve --enable-shell`".into(),
            ));
        }
        let p: ShellParams = parse(&ctx.substitute(params, Engine::Postgres)?)?;
        let mut command = tokio::process::Command::new("sh");
        command.arg("-c").arg(&p.command);
        if let Some(dir) = &p.workdir {
            command.current_dir(dir);
        }
        for (name, v) in &ctx.values {
            command.env(format!("FERRY_{}", name.to_ascii_uppercase()), &v.value);
        }
        let status = run_logged(ctx, command, "sh").await?;
        if !status.success() {
            return Err(Error::Engine(format!("the command exited with {status}")));
        }
        Ok(TaskResult::default())
    }
}

/// Runs a command to its end with its output lines in the node's log; cancelling the node
/// kills the process.
async fn run_logged(
    ctx: &TaskContext,
    mut command: tokio::process::Command,
    program: &str,
) -> Result<std::process::ExitStatus> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| Error::Engine(format!("cannot start {program}: {e}")))?;
    let out = child.stdout.take().map(|s| BufReader::new(s).lines());
    let err = child.stderr.take().map(|s| BufReader::new(s).lines());
    let log = ctx.log.clone();
    let pump = async move {
        let (mut out, mut err) = (out, err);
        loop {
            let line = tokio::select! {
                l = async { match out.as_mut() { Some(o) => o.next_line().await, None => Ok(None) } }, if out.is_some() => match l {
                    Ok(Some(l)) => l,
                    _ => { out = None; continue; }
                },
                l = async { match err.as_mut() { Some(e) => e.next_line().await, None => Ok(None) } }, if err.is_some() => match l {
                    Ok(Some(l)) => format!("stderr: {l}"),
                    _ => { err = None; continue; }
                },
                else => break,
            };
            log(line);
        }
    };
    tokio::select! {
        (_, status) = async { tokio::join!(pump, child.wait()) } => status.map_err(|e| Error::Engine(e.to_string())),
        // kill_on_drop stops the process when the child is dropped here.
        _ = ctx.cancel.cancelled() => Err(Error::Cancelled(format!("{program} was stopped"))),
    }
}

/// Parameters of `spark`: `spark-submit` with a master, an application and its arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SparkParams {
    /// A `.py` file or a jar on the server.
    application: String,
    #[serde(default = "local_master")]
    master: String,
    /// The main class of a jar.
    #[serde(default)]
    class: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    conf: BTreeMap<String, String>,
    /// The `spark-submit` to run; the one on the server's PATH by default.
    #[serde(default = "spark_submit")]
    spark_submit: String,
}

fn local_master() -> String {
    "local[2]".into()
}

fn spark_submit() -> String {
    "spark-submit".into()
}

pub struct SparkKind;

#[async_trait]
impl TaskKind for SparkKind {
    fn name(&self) -> &'static str {
        "spark"
    }

    fn check(&self, params: &serde_json::Value) -> Result<Checked> {
        let p: SparkParams = parse(params)?;
        if p.application.trim().is_empty() {
            return Err(Error::InvalidInput("application is empty".into()));
        }
        Ok(Checked::default())
    }

    async fn run(&self, ctx: &TaskContext, params: &serde_json::Value) -> Result<TaskResult> {
        let p: SparkParams = parse(&ctx.substitute(params, Engine::Postgres)?)?;
        let mut command = tokio::process::Command::new(&p.spark_submit);
        command.arg("--master").arg(&p.master);
        if let Some(class) = &p.class {
            command.arg("--class").arg(class);
        }
        for (k, v) in &p.conf {
            command.arg("--conf").arg(format!("{k}={v}"));
        }
        command.arg(&p.application).args(&p.args);
        (ctx.log)(format!(
            "spark-submit --master {} {}",
            p.master, p.application
        ));
        let status = run_logged(ctx, command, &p.spark_submit).await?;
        if !status.success() {
            return Err(Error::Engine(format!(
                "spark-submit exited with {status}; the driver's output is in this node's log"
            )));
        }
        Ok(TaskResult::default())
    }
}

/// A source of `cross_sql`: a table or a query on an instance.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CrossSource {
    instance: String,
    #[serde(default)]
    database: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    sql: Option<String>,
}

/// Parameters of `cross_sql`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CrossSqlParams {
    /// Aliases the SQL uses, each a table or query on an instance.
    sources: BTreeMap<String, CrossSource>,
    /// DataFusion SQL over the aliases.
    sql: String,
    /// The table the result goes into …
    #[serde(default)]
    target: Option<ferry_move::Endpoint>,
    /// … or the file (a path or object-storage URL) it is written to.
    #[serde(default)]
    output: Option<FileOutput>,
    /// `replace` (the default) empties the target first; `append` adds.
    #[serde(default = "replace")]
    mode: String,
    /// Create the target from the result's columns when it does not exist.
    #[serde(default)]
    create: bool,
}

/// A file `cross_sql` writes: `url` ending in the format's extension names the file, anything
/// else a directory that gets `part-00000.<ext>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOutput {
    url: String,
    #[serde(default)]
    format: ferry_move::FileFormat,
}

fn replace() -> String {
    "replace".into()
}

/// A result batch with its columns cast to `schema`'s plain types.
fn cast_batch(
    schema: &arrow::datatypes::SchemaRef,
    batch: &arrow::record_batch::RecordBatch,
) -> Result<arrow::record_batch::RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(e.to_string()))?;
    arrow::record_batch::RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| Error::Internal(e.to_string()))
}

struct CrossTarget {
    target: ferry_move::Endpoint,
    mode: String,
    create: bool,
}

/// Writes a result stream into one file, under a temporary name until it is complete.
async fn write_file(
    ctx: &TaskContext,
    file: &FileOutput,
    schema: arrow::datatypes::SchemaRef,
    mut stream: ferry_connect::BatchStream<'static>,
) -> Result<TaskResult> {
    let location = ferry_move::files::open_location(&file.url, &Default::default())?;
    let ext = file.format.extension();
    let path = if file.url.ends_with(&format!(".{ext}")) {
        location.path.clone()
    } else {
        location
            .path
            .clone()
            .join(format!("part-00000.{ext}").as_str())
    };
    let mut sink = ferry_move::files::FileSink::create(&location, path, file.format, &schema)?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = match batch.and_then(|b| cast_batch(&schema, &b)) {
            Ok(b) => b,
            Err(e) => {
                sink.abort().await;
                return Err(e);
            }
        };
        rows += batch.num_rows() as u64;
        if let Err(e) = sink.write(&batch).await {
            sink.abort().await;
            return Err(e);
        }
    }
    let written = sink.finish().await?;
    (ctx.log)(format!("wrote {rows} rows to {written}"));
    Ok(TaskResult {
        rows,
        outputs: BTreeMap::new(),
    })
}

pub struct CrossSqlKind;

#[async_trait]
impl TaskKind for CrossSqlKind {
    fn name(&self) -> &'static str {
        "cross_sql"
    }

    fn check(&self, params: &serde_json::Value) -> Result<Checked> {
        let p: CrossSqlParams = parse(params)?;
        if p.sources.is_empty() {
            return Err(Error::InvalidInput(
                "sources is empty: name at least one table or query".into(),
            ));
        }
        for (alias, s) in &p.sources {
            if s.table.is_some() == s.sql.is_some() {
                return Err(Error::InvalidInput(format!(
                    "source {alias}: give exactly one of table or sql"
                )));
            }
        }
        if !matches!(p.mode.as_str(), "replace" | "append") {
            return Err(Error::InvalidInput(format!(
                "mode {:?} must be replace or append",
                p.mode
            )));
        }
        let mut instances: Vec<String> = p.sources.values().map(|s| s.instance.clone()).collect();
        match (&p.target, &p.output) {
            (Some(t), None) => instances.push(t.instance.clone()),
            (None, Some(_)) => {}
            _ => {
                return Err(Error::InvalidInput(
                    "give exactly one of target (a table) or output (a file)".into(),
                ));
            }
        }
        Ok(Checked { instances })
    }

    async fn run(&self, ctx: &TaskContext, params: &serde_json::Value) -> Result<TaskResult> {
        use ferry_connect::write::{WriteTarget, qualified_table};
        let p: CrossSqlParams = parse(&ctx.substitute(params, Engine::Postgres)?)?;
        let mut sources = Vec::new();
        for (alias, s) in &p.sources {
            let pool = ctx.resources.pool(&s.instance).await?;
            let engine = pool.connector().engine();
            let sql = match (&s.sql, &s.table) {
                (Some(sql), _) => sql.clone(),
                (None, Some(table)) => {
                    let (schema, name) = match table.split_once('.') {
                        Some((s, t)) => (Some(s), t),
                        None => (None, table.as_str()),
                    };
                    format!("SELECT * FROM {}", qualified_table(engine, schema, name))
                }
                (None, None) => unreachable!("checked"),
            };
            sources.push(ferry_query::cross::Source {
                alias: alias.clone(),
                pool,
                database: s.database.clone(),
                sql,
            });
        }
        (ctx.log)(format!(
            "cross-database query over {}",
            p.sources.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
        let (schema, stream) = ferry_query::cross::query(sources, &p.sql).await?;
        // Text and binary views become plain columns every engine's writer knows.
        let plain = |t: &arrow::datatypes::DataType| {
            use arrow::datatypes::DataType::*;
            match t {
                Utf8View | LargeUtf8 => Utf8,
                BinaryView | LargeBinary => Binary,
                other => other.clone(),
            }
        };
        let target_schema: arrow::datatypes::SchemaRef = Arc::new(arrow::datatypes::Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| arrow::datatypes::Field::new(f.name(), plain(f.data_type()), true))
                .collect::<Vec<_>>(),
        ));
        let target = match (p.target, p.output) {
            (Some(t), None) => t,
            (None, Some(file)) => return write_file(ctx, &file, target_schema, stream).await,
            _ => unreachable!("checked"),
        };
        let p = CrossTarget {
            target,
            mode: p.mode,
            create: p.create,
        };
        let pool = ctx.resources.pool(&p.target.instance).await?;
        let engine = pool.connector().engine();
        let mut lease = pool
            .acquire(
                ferry_core::Feature::Task,
                p.target.database.as_deref(),
                "task",
            )
            .await?;
        let qualified = qualified_table(engine, p.target.schema.as_deref(), &p.target.table);
        match lease
            .conn()
            .table(p.target.schema.as_deref(), &p.target.table)
            .await
        {
            Ok(_) => {}
            Err(Error::NotFound(_)) if p.create => {
                let ddl =
                    ferry_move::plan::create_table_sql(engine, &p.target, &target_schema, &[])?;
                lease.conn().run(&ddl).await?;
                (ctx.log)(format!("created {qualified}"));
            }
            Err(Error::NotFound(_)) => {
                return Err(Error::NotFound(format!(
                    "target table {qualified} does not exist: create it, or set create = true"
                )));
            }
            Err(e) => return Err(e),
        }
        let target = WriteTarget {
            schema: p.target.schema.clone(),
            table: p.target.table.clone(),
            columns: target_schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
            upsert_keys: None,
        };
        let cast_schema = target_schema.clone();
        let batches = stream.map(move |b| cast_batch(&cast_schema, &b?));
        lease.conn().run(crate::kinds::begin_sql(engine)).await?;
        let written = async {
            if p.mode == "replace" {
                lease
                    .conn()
                    .run(&format!("DELETE FROM {qualified}"))
                    .await?;
            }
            lease.conn().write(&target, Box::pin(batches)).await
        }
        .await;
        let rows = match written {
            Ok(n) => {
                lease.conn().run("COMMIT").await?;
                n
            }
            Err(e) => {
                let _ = lease.conn().run("ROLLBACK").await;
                return Err(e);
            }
        };
        (ctx.log)(format!("wrote {rows} rows into {qualified}"));
        Ok(TaskResult {
            rows,
            outputs: BTreeMap::new(),
        })
    }
}

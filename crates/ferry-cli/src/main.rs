//! The `ferry` binary: `ferry serve` runs the server; every other command is a client of a
//! running server (`--server`, `FERRY_SERVER`). Exit codes: 0 ok, 1 failed, 2 usage.

mod client;
mod flows;
mod render;
mod security;

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::client::Client;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ferry: one service for all your databases"
)]
struct Cli {
    /// The Ferry server to talk to.
    #[arg(
        long,
        global = true,
        env = "FERRY_SERVER",
        default_value = "http://127.0.0.1:8420"
    )]
    server: String,
    /// How results are printed.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: HTTP API, connection policies, async queries.
    Serve(ServeArgs),
    /// Register, list, test and remove database instances.
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// Run SQL (or Redis commands) on an instance.
    Sql(SqlArgs),
    /// Browse an instance's catalog: tables, or one table's columns and indexes.
    Schema(SchemaArgs),
    /// SQL windows: sessions that keep their connection and transaction.
    #[command(subcommand)]
    Session(SessionCmd),
    /// Asynchronous queries whose results are fetched later.
    #[command(subcommand)]
    Query(QueryCmd),
    /// Copy a table or query result into a table on another (or the same) instance, verified.
    Copy(CopyArgs),
    /// Transfers and exports: list, show, cancel.
    #[command(subcommand)]
    Transfer(TransferCmd),
    /// Export a table or query to Parquet, CSV or JSON Lines on disk or S3, optionally partitioned.
    Export(ExportArgs),
    /// Import Parquet, CSV or JSON Lines files (a file or everything under a prefix) into a table.
    Import(ImportArgs),
    /// Archives: files queried with SQL as instance `archive` (`ferry sql archive "…"`).
    #[command(subcommand)]
    Archive(ArchiveCmd),
    /// Task flows: apply TOML definitions, run them now or over a date range, schedules on/off.
    #[command(subcommand)]
    Flow(flows::FlowCmd),
    /// Runs of task flows: list, show a run's nodes, logs, cancel, restore, rerun.
    #[command(subcommand)]
    Run(flows::RunCmd),
    /// Table row counts and sizes over time, sampled by the server.
    Trend(flows::TrendArgs),
    /// Sign in to the server; the token is kept for later commands.
    Login(security::LoginArgs),
    /// Sign out: revoke the kept token and forget it.
    Logout,
    /// Who you are signed in as, with your roles and grants.
    Whoami,
    /// Users, their roles and grants (administrators).
    #[command(subcommand)]
    User(security::UserCmd),
    /// Built-in and custom roles.
    #[command(subcommand)]
    Role(security::RoleCmd),
    /// Your personal API tokens.
    #[command(subcommand)]
    Token(security::TokenCmd),
    /// Search or export the audit log.
    Audit(security::AuditArgs),
    /// SQL rules per environment or instance.
    #[command(subcommand)]
    Rule(security::RuleCmd),
    /// Masking of sensitive columns.
    #[command(subcommand)]
    Mask(security::MaskCmd),
    /// Approvals of statements a rule holds (DDL on prod).
    #[command(subcommand)]
    Approval(security::ApprovalCmd),
    /// Server administration: key rotation.
    #[command(subcommand)]
    Admin(security::AdminCmd),
}

#[derive(Subcommand)]
enum ArchiveCmd {
    /// Register files under a URL as a table; Hive partition keys become columns.
    Add {
        name: String,
        url: String,
        #[arg(long, value_enum, default_value_t = FileFormatArg::Parquet)]
        format: FileFormatArg,
        /// Partition keys in path order, e.g. y,m,d for y=2026/m=11/d=21.
        #[arg(long, value_delimiter = ',')]
        partitions: Vec<String>,
        #[arg(long = "option", value_parser = key_value)]
        options: Vec<(String, String)>,
    },
    List,
    Rm {
        name: String,
    },
}

#[derive(Args)]
struct ExportArgs {
    instance: String,
    /// A table name, or a query (anything with a space in it).
    source: String,
    /// A path, file:// URL or s3://bucket/prefix; a name ending in .parquet/.csv/.jsonl is one file.
    url: String,
    #[arg(long, value_enum, default_value_t = FileFormatArg::Parquet)]
    format: FileFormatArg,
    /// Hive-style partitions, e.g. 'y=${yyyy}/m=${mm}/d=${dd}'.
    #[arg(long)]
    partition_by: Option<String>,
    /// The date or timestamp column that fills ${yyyy}, ${mm} and ${dd}.
    #[arg(long)]
    partition_column: Option<String>,
    /// A template variable, NAME=VALUE (bizdate=YYYY-MM-DD fills the date without a column).
    #[arg(long = "var", value_parser = key_value)]
    vars: Vec<(String, String)>,
    /// An object-store setting, NAME=VALUE (endpoint, region, allow_http); credentials come from the server's AWS_* environment.
    #[arg(long = "option", value_parser = key_value)]
    options: Vec<(String, String)>,
    #[arg(long = "where")]
    filter: Option<String>,
    #[arg(short = 'd', long)]
    database: Option<String>,
}

#[derive(Args)]
struct ImportArgs {
    /// A file, or a directory / prefix whose files of the format are all read.
    url: String,
    /// INSTANCE:[SCHEMA.]TABLE
    target: String,
    #[arg(long, value_enum, default_value_t = FileFormatArg::Parquet)]
    format: FileFormatArg,
    #[arg(long, value_enum, default_value_t = CopyMode::Replace)]
    mode: CopyMode,
    #[arg(long)]
    create: bool,
    #[arg(long)]
    allow_lossy: bool,
    #[arg(long = "option", value_parser = key_value)]
    options: Vec<(String, String)>,
    #[arg(long)]
    target_db: Option<String>,
    /// Hive partition keys (e.g. y,m,d) whose key=value path segments become columns.
    #[arg(long, value_delimiter = ',')]
    partitions: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FileFormatArg {
    Parquet,
    Csv,
    Jsonl,
}

impl FileFormatArg {
    fn as_str(self) -> &'static str {
        match self {
            FileFormatArg::Parquet => "parquet",
            FileFormatArg::Csv => "csv",
            FileFormatArg::Jsonl => "jsonl",
        }
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

#[derive(Args)]
struct CopyArgs {
    /// INSTANCE:[SCHEMA.]TABLE, or INSTANCE with --query.
    source: String,
    /// INSTANCE:[SCHEMA.]TABLE
    target: String,
    /// Copy the result of this query instead of a table.
    #[arg(long)]
    query: Option<String>,
    #[arg(long, value_enum, default_value_t = CopyMode::Replace)]
    mode: CopyMode,
    /// The column incremental mode follows.
    #[arg(long, required_if_eq("mode", "incremental"))]
    by: Option<String>,
    /// Create the target table when missing, in the target's dialect, with the source's primary key.
    #[arg(long)]
    create: bool,
    /// A condition on source rows, in the source's SQL dialect.
    #[arg(long = "where")]
    filter: Option<String>,
    /// Accept conversions that change values (narrowing, rounding, dropping a time zone).
    #[arg(long)]
    allow_lossy: bool,
    /// Skip reading the target back to compare checksums.
    #[arg(long)]
    no_verify: bool,
    #[arg(long)]
    source_db: Option<String>,
    #[arg(long)]
    target_db: Option<String>,
    /// Print the transfer id and return at once.
    #[arg(long)]
    detach: bool,
    /// Read the source over N connections, split by its integer primary key.
    #[arg(long)]
    parallel: Option<u32>,
    /// Commit in chunks of the primary key with checkpoints, so running the same copy again after
    /// a failure continues where it stopped.
    #[arg(long)]
    resumable: bool,
    /// Rows per chunk with --resumable.
    #[arg(long, requires = "resumable")]
    chunk_rows: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CopyMode {
    Replace,
    Append,
    Incremental,
    Upsert,
}

impl CopyMode {
    fn as_str(self) -> &'static str {
        match self {
            CopyMode::Replace => "replace",
            CopyMode::Append => "append",
            CopyMode::Incremental => "incremental",
            CopyMode::Upsert => "upsert",
        }
    }
}

#[derive(Subcommand)]
enum TransferCmd {
    List,
    Show {
        id: String,
    },
    /// Cancel a running transfer; its target is rolled back.
    Cancel {
        id: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (loopback by default).
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:8420")]
    listen: SocketAddr,
    /// Where metadata, the master key, spooled results and the demo database live.
    #[arg(long, env = "FERRY_DATA_DIR", default_value = "ferry-data")]
    data_dir: PathBuf,
    /// A PostgreSQL URL for the metadata store (default: embedded SQLite in the data directory).
    #[arg(long, env = "FERRY_META")]
    meta: Option<String>,
    /// Register the demo SQLite instance `demo` (created on first start).
    #[arg(long)]
    demo: bool,
    /// Rows an interactive console result returns by default.
    #[arg(long, env = "FERRY_ROW_LIMIT", default_value_t = 1000)]
    row_limit: usize,
    /// Flow tasks this node runs at once.
    #[arg(long, env = "FERRY_TASK_SLOTS", default_value_t = 4)]
    task_slots: usize,
    /// Allow flow nodes of kind `shell`, which run commands on this server as its user.
    #[arg(long, env = "FERRY_ENABLE_SHELL")]
    enable_shell: bool,
    /// How often table row counts and sizes are sampled for `ferry trend`.
    #[arg(long, env = "FERRY_TREND_INTERVAL_SECS", default_value_t = 3600)]
    trend_interval_secs: u64,
}

#[derive(Subcommand)]
enum InstanceCmd {
    /// Register an instance by URL; its credentials are encrypted and never shown again.
    Add {
        name: String,
        /// postgres://…, mysql://…, sqlite:///path, redis://…
        url: String,
        #[arg(long)]
        max_connections: Option<u32>,
        #[arg(long = "env", value_parser = ["dev", "test", "prod"])]
        environment: Option<String>,
        /// Save without connecting first.
        #[arg(long)]
        no_test: bool,
    },
    /// List registered instances.
    List,
    /// Show one instance with its connection counters.
    Show { name: String },
    /// Connect and report the server version and round trip.
    Test { name: String },
    /// Remove an instance (its open SQL windows are closed).
    Rm { name: String },
    /// Change connection settings and kill policies.
    Set {
        name: String,
        #[arg(long)]
        max_connections: Option<u32>,
        #[arg(long)]
        acquire_timeout_secs: Option<u64>,
        #[arg(long)]
        idle_timeout_secs: Option<u64>,
        #[arg(long)]
        session_idle_timeout_secs: Option<u64>,
        #[arg(long)]
        idle_in_transaction_timeout_secs: Option<u64>,
        /// Cancel console statements running longer than this (0: no limit).
        #[arg(long)]
        max_statement_secs: Option<u64>,
        #[arg(long = "env", value_parser = ["dev", "test", "prod"])]
        environment: Option<String>,
    },
    /// Server-side sessions (pg_stat_activity, SHOW PROCESSLIST, CLIENT LIST).
    Processes { name: String },
    /// Terminate a server-side session.
    Kill { name: String, id: i64 },
    /// Actions taken by connection policies, newest first.
    Actions { name: Option<String> },
}

#[derive(Args)]
struct SqlArgs {
    instance: String,
    /// The SQL; read from --file or standard input when omitted.
    sql: Option<String>,
    #[arg(short = 'd', long)]
    database: Option<String>,
    /// Run in this SQL window.
    #[arg(long)]
    session: Option<String>,
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Row limit (table/json default 1000; csv streams everything unless given).
    #[arg(long)]
    limit: Option<usize>,
    /// Keep running a script's statements after one fails.
    #[arg(long)]
    continue_on_error: bool,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct SchemaArgs {
    #[command(subcommand)]
    command: Option<SchemaCmd>,
    #[arg(required = true)]
    instance: Option<String>,
    /// A table (`schema.table` where the engine has schemas); all tables when omitted.
    table: Option<String>,
    #[arg(short = 'd', long)]
    database: Option<String>,
}

#[derive(Subcommand)]
enum SchemaCmd {
    /// Compare two tables (A:t B:t), also across engines, or two databases (A: B:).
    Diff {
        source: String,
        target: String,
        /// Print only the DDL that makes the target match the source.
        #[arg(long)]
        ddl: bool,
        #[arg(long)]
        source_db: Option<String>,
        #[arg(long)]
        target_db: Option<String>,
    },
}

#[derive(Subcommand)]
enum SessionCmd {
    /// Open a SQL window; prints its id.
    Open {
        instance: String,
        #[arg(short = 'd', long)]
        database: Option<String>,
    },
    List,
    /// Close a window; an open transaction rolls back.
    Close {
        id: String,
    },
    /// Cancel the statement running in a window (on the database server); the window stays open.
    Cancel {
        id: String,
    },
}

#[derive(Subcommand)]
enum QueryCmd {
    /// Submit a query; prints its id at once.
    Submit {
        instance: String,
        sql: String,
        #[arg(short = 'd', long)]
        database: Option<String>,
    },
    /// Status and progress.
    Status {
        id: String,
    },
    List,
    /// Print the result: a page (table/json) or all of it (csv).
    Fetch {
        id: String,
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long)]
        limit: Option<usize>,
    },
    Cancel {
        id: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let server = cli.server.trim_end_matches('/').to_string();
    let client = Client::new(&server, security::token_for(&server).as_deref())?;
    let out = cli.output;
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Instance(cmd) => instance(&client, out, cmd).await,
        Command::Sql(args) => sql(&client, out, args).await,
        Command::Schema(args) => schema(&client, out, args).await,
        Command::Session(cmd) => session(&client, out, cmd).await,
        Command::Query(cmd) => query(&client, out, cmd).await,
        Command::Copy(args) => copy(&client, out, args).await,
        Command::Transfer(cmd) => transfer(&client, out, cmd).await,
        Command::Export(args) => export(&client, out, args).await,
        Command::Import(args) => import(&client, out, args).await,
        Command::Archive(cmd) => archive(&client, out, cmd).await,
        Command::Flow(cmd) => flows::flow(&client, out, cmd).await,
        Command::Run(cmd) => flows::run(&client, out, cmd).await,
        Command::Trend(args) => flows::trend(&client, out, args).await,
        Command::Login(args) => {
            let anonymous = Client::new(&server, None)?;
            security::login(&anonymous, &server, args).await
        }
        Command::Logout => security::logout(&client, &server).await,
        Command::Whoami => {
            render::object(out, &client.get("/api/v1/auth/whoami").await?);
            Ok(())
        }
        Command::User(cmd) => security::user(&client, out, cmd).await,
        Command::Role(cmd) => security::role(&client, out, cmd).await,
        Command::Token(cmd) => security::token(&client, out, cmd).await,
        Command::Audit(args) => security::audit(&client, out, args).await,
        Command::Rule(cmd) => security::rule(&client, out, cmd).await,
        Command::Mask(cmd) => security::mask(&client, out, cmd).await,
        Command::Approval(cmd) => security::approval(&client, out, cmd).await,
        Command::Admin(cmd) => security::admin(&client, out, cmd).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,tokio_postgres=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = ferry_server::ServerConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        meta_url: args.meta,
        demo: args.demo,
        row_limit: args.row_limit,
        task_slots: args.task_slots,
        enable_shell: args.enable_shell,
        trend_interval: std::time::Duration::from_secs(args.trend_interval_secs.max(1)),
        ..Default::default()
    };
    let data_dir = config.data_dir.clone();
    let demo = config.demo;
    let server = ferry_server::bind(config).await?;
    let addr = server.local_addr();
    eprintln!(
        "ferry serving on http://{addr} (metadata: {}, data: {}){}",
        server.state.meta.backend(),
        data_dir.display(),
        if demo { "; demo instance: demo" } else { "" }
    );
    server.serve(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

async fn instance(client: &Client, out: Output, cmd: InstanceCmd) -> anyhow::Result<()> {
    match cmd {
        InstanceCmd::Add {
            name,
            url,
            max_connections,
            environment,
            no_test,
        } => {
            let body = json!({ "name": name, "url": url, "max_connections": max_connections, "environment": environment, "test": !no_test });
            let v = client.post("/api/v1/instances", &body).await?;
            match out {
                Output::Json => render::json(&v),
                _ => {
                    let server = &v["server"];
                    println!(
                        "added instance {} ({}){}",
                        v["instance"]["name"].as_str().unwrap_or_default(),
                        v["instance"]["url"].as_str().unwrap_or_default(),
                        server["version"]
                            .as_str()
                            .map(|s| format!(": {s}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        InstanceCmd::List => {
            let v = client.get("/api/v1/instances").await?;
            render::records(
                out,
                &v,
                &[
                    "name",
                    "engine",
                    "environment",
                    "url",
                    "settings.max_connections",
                    "connections.open",
                    "connections.in_use",
                ],
            );
        }
        InstanceCmd::Show { name } => {
            let v = client
                .get(&format!("/api/v1/instances/{}", client::seg(&name)))
                .await?;
            render::object(out, &v);
        }
        InstanceCmd::Test { name } => {
            let v = client
                .post(
                    &format!("/api/v1/instances/{}/test", client::seg(&name)),
                    &json!({}),
                )
                .await?;
            match out {
                Output::Json => render::json(&v),
                _ => println!(
                    "{name}: {} (round trip {:.2} ms)",
                    v["version"].as_str().unwrap_or_default(),
                    v["round_trip_ms"].as_f64().unwrap_or_default()
                ),
            }
        }
        InstanceCmd::Rm { name } => {
            client
                .delete(&format!("/api/v1/instances/{}", client::seg(&name)))
                .await?;
            println!("removed instance {name}");
        }
        InstanceCmd::Set {
            name,
            max_connections,
            acquire_timeout_secs,
            idle_timeout_secs,
            session_idle_timeout_secs,
            idle_in_transaction_timeout_secs,
            max_statement_secs,
            environment,
        } => {
            let current = client
                .get(&format!("/api/v1/instances/{}", client::seg(&name)))
                .await?;
            let mut settings = current["settings"].clone();
            let mut set = |path: &[&str], v: Option<u64>| {
                if let Some(v) = v {
                    let mut node = &mut settings;
                    for p in &path[..path.len() - 1] {
                        node = &mut node[*p];
                    }
                    node[path[path.len() - 1]] = json!(v);
                }
            };
            set(&["max_connections"], max_connections.map(u64::from));
            set(&["acquire_timeout_secs"], acquire_timeout_secs);
            set(&["policy", "idle_timeout_secs"], idle_timeout_secs);
            set(
                &["policy", "session_idle_timeout_secs"],
                session_idle_timeout_secs,
            );
            set(
                &["policy", "idle_in_transaction_timeout_secs"],
                idle_in_transaction_timeout_secs,
            );
            set(&["policy", "max_statement_secs"], max_statement_secs);
            let v = client
                .patch(
                    &format!("/api/v1/instances/{}", client::seg(&name)),
                    &json!({ "settings": settings, "environment": environment }),
                )
                .await?;
            render::object(out, &v);
        }
        InstanceCmd::Processes { name } => {
            let v = client
                .get(&format!(
                    "/api/v1/instances/{}/processes",
                    client::seg(&name)
                ))
                .await?;
            render::records(
                out,
                &v,
                &[
                    "id",
                    "user",
                    "database",
                    "client",
                    "state",
                    "running_secs",
                    "query",
                ],
            );
        }
        InstanceCmd::Kill { name, id } => {
            client
                .delete(&format!(
                    "/api/v1/instances/{}/processes/{id}",
                    client::seg(&name)
                ))
                .await?;
            println!("terminated server session {id} on {name}");
        }
        InstanceCmd::Actions { name } => {
            let path = match name {
                Some(n) => format!("/api/v1/policy-actions?instance={}", client::seg(&n)),
                None => "/api/v1/policy-actions".to_string(),
            };
            let v = client.get(&path).await?;
            render::records(
                out,
                &v,
                &["at_ms", "instance", "action", "feature", "detail"],
            );
        }
    }
    Ok(())
}

fn read_sql(args: &SqlArgs) -> anyhow::Result<String> {
    if let Some(sql) = &args.sql {
        return Ok(sql.clone());
    }
    if let Some(file) = &args.file {
        return std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()));
    }
    if std::io::stdin().is_terminal() {
        bail!("no SQL given: pass it as an argument, with -f FILE, or on standard input");
    }
    let mut sql = String::new();
    std::io::stdin()
        .read_to_string(&mut sql)
        .context("cannot read SQL from standard input")?;
    Ok(sql)
}

async fn sql(client: &Client, out: Output, args: SqlArgs) -> anyhow::Result<()> {
    let text = read_sql(&args)?;
    let path = match &args.session {
        Some(id) => format!("/api/v1/sessions/{}/sql", client::seg(id)),
        None => format!("/api/v1/instances/{}/sql", client::seg(&args.instance)),
    };
    if out == Output::Csv {
        let body =
            json!({ "sql": text, "database": args.database, "format": "csv", "limit": args.limit });
        return client
            .download(&path, &body, &mut tokio::io::stdout())
            .await;
    }
    let body = json!({ "sql": text, "database": args.database, "limit": args.limit, "continue_on_error": args.continue_on_error });
    let v = client.post(&path, &body).await?;
    if out == Output::Json {
        render::json(&v);
    } else {
        render::script(&v);
    }
    let failed = v["results"]
        .as_array()
        .is_some_and(|r| r.iter().any(|s| !s["error"].is_null()));
    if failed {
        bail!("a statement failed");
    }
    Ok(())
}

async fn schema(client: &Client, out: Output, args: SchemaArgs) -> anyhow::Result<()> {
    if let Some(SchemaCmd::Diff {
        source,
        target,
        ddl,
        source_db,
        target_db,
    }) = args.command
    {
        return schema_diff(client, out, &source, &target, ddl, source_db, target_db).await;
    }
    let instance = args.instance.unwrap_or_default();
    let query = args
        .database
        .as_ref()
        .map(|d| format!("?database={}", client::seg(d)))
        .unwrap_or_default();
    let base = format!("/api/v1/instances/{}", client::seg(&instance));
    match args.table {
        None => {
            let v = client.get(&format!("{base}/tables{query}")).await?;
            render::records(
                out,
                &v,
                &[
                    "schema",
                    "name",
                    "kind",
                    "row_estimate",
                    "size_bytes",
                    "ttl_secs",
                ],
            );
        }
        Some(table) => {
            let v = client
                .get(&format!("{base}/tables/{}{query}", client::seg(&table)))
                .await?;
            if out == Output::Json {
                render::json(&v);
                return Ok(());
            }
            render::records(
                out,
                &v["columns"],
                &["name", "data_type", "arrow_type", "nullable", "default"],
            );
            let pk: Vec<&str> = v["primary_key"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if out == Output::Table {
                println!(
                    "primary key: {}",
                    if pk.is_empty() {
                        "(none)".to_string()
                    } else {
                        pk.join(", ")
                    }
                );
                for idx in v["indexes"].as_array().into_iter().flatten() {
                    println!(
                        "index {}{} ({})",
                        idx["name"].as_str().unwrap_or_default(),
                        if idx["unique"].as_bool() == Some(true) {
                            " unique"
                        } else {
                            ""
                        },
                        idx["columns"]
                            .as_array()
                            .map(|c| c
                                .iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(", "))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}

async fn session(client: &Client, out: Output, cmd: SessionCmd) -> anyhow::Result<()> {
    match cmd {
        SessionCmd::Open { instance, database } => {
            let v = client
                .post(
                    "/api/v1/sessions",
                    &json!({ "instance": instance, "database": database }),
                )
                .await?;
            match out {
                Output::Json => render::json(&v),
                _ => println!("{}", v["id"].as_str().unwrap_or_default()),
            }
        }
        SessionCmd::List => {
            let v = client.get("/api/v1/sessions").await?;
            render::records(
                out,
                &v,
                &[
                    "id",
                    "instance",
                    "database",
                    "server_session_id",
                    "in_transaction",
                    "statements",
                    "idle_secs",
                ],
            );
        }
        SessionCmd::Cancel { id } => {
            let v = client
                .post(
                    &format!("/api/v1/sessions/{}/cancel", client::seg(&id)),
                    &json!({}),
                )
                .await?;
            match v["cancelled"].as_bool() {
                Some(true) => println!("cancelled the statement running in SQL window {id}"),
                _ => println!("nothing was running in SQL window {id}"),
            }
        }
        SessionCmd::Close { id } => {
            let v = client
                .delete(&format!("/api/v1/sessions/{}", client::seg(&id)))
                .await?;
            let rolled_back = v["rolled_back"].as_bool() == Some(true);
            println!(
                "closed SQL window {id}{}",
                if rolled_back {
                    "; its open transaction was rolled back"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

async fn query(client: &Client, out: Output, cmd: QueryCmd) -> anyhow::Result<()> {
    match cmd {
        QueryCmd::Submit {
            instance,
            sql,
            database,
        } => {
            let v = client
                .post(
                    "/api/v1/queries",
                    &json!({ "instance": instance, "sql": sql, "database": database }),
                )
                .await?;
            match out {
                Output::Json => render::json(&v),
                _ => println!("{}", v["id"].as_str().unwrap_or_default()),
            }
        }
        QueryCmd::Status { id } => {
            let v = client
                .get(&format!("/api/v1/queries/{}", client::seg(&id)))
                .await?;
            render::object(out, &v);
        }
        QueryCmd::List => {
            let v = client.get("/api/v1/queries").await?;
            render::records(
                out,
                &v,
                &["id", "instance", "status", "rows", "bytes", "sql"],
            );
        }
        QueryCmd::Fetch { id, offset, limit } => {
            let base = format!("/api/v1/queries/{}/result", client::seg(&id));
            if out == Output::Csv {
                return client
                    .download_get(&format!("{base}?format=csv"), &mut tokio::io::stdout())
                    .await;
            }
            let limit = limit.map(|l| format!("&limit={l}")).unwrap_or_default();
            let v = client
                .get(&format!("{base}?offset={offset}{limit}"))
                .await?;
            if out == Output::Json {
                render::json(&v);
            } else {
                render::rows_table(&v["columns"], &v["rows"]);
                println!(
                    "(rows {}-{} of {})",
                    offset + usize::from(v["row_count"].as_u64().unwrap_or(0) > 0),
                    offset + v["row_count"].as_u64().unwrap_or(0) as usize,
                    v["total_rows"]
                );
            }
        }
        QueryCmd::Cancel { id } => {
            let v = client
                .delete(&format!("/api/v1/queries/{}", client::seg(&id)))
                .await?;
            println!("query {id}: {}", v["status"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}

/// `INSTANCE:[SCHEMA.]TABLE` as an endpoint.
fn endpoint(text: &str, database: Option<&str>) -> anyhow::Result<Value> {
    let Some((instance, table)) = text
        .split_once(':')
        .filter(|(i, t)| !i.is_empty() && !t.is_empty())
    else {
        bail!("{text:?} is not INSTANCE:TABLE (e.g. pg:public.orders or demo:orders)");
    };
    let (schema, table) = match table.split_once('.') {
        Some((s, t)) => (Some(s), t),
        None => (None, table),
    };
    Ok(json!({ "instance": instance, "database": database, "schema": schema, "table": table }))
}

async fn copy(client: &Client, out: Output, args: CopyArgs) -> anyhow::Result<()> {
    let source = match &args.query {
        Some(sql) => {
            json!({ "query": { "instance": args.source.trim_end_matches(':'), "database": args.source_db, "sql": sql } })
        }
        None => json!({ "table": endpoint(&args.source, args.source_db.as_deref())? }),
    };
    let spec = json!({
        "source": source,
        "target": endpoint(&args.target, args.target_db.as_deref())?,
        "mode": args.mode.as_str(),
        "by": args.by,
        "create": args.create,
        "allow_lossy": args.allow_lossy,
        "where": args.filter,
        "verify": !args.no_verify,
        "parallel": args.parallel,
        "resumable": args.resumable,
        "chunk_rows": args.chunk_rows,
    });
    let started = client.post("/api/v1/transfers", &spec).await?;
    let id = started["id"].as_str().unwrap_or_default().to_string();
    if args.detach {
        println!("{id}");
        return Ok(());
    }
    let done = wait_job(client, out, &id).await?;
    if out != Output::Json {
        let report = &done["report"];
        let rows = report["rows"].as_u64().unwrap_or(0);
        let secs = report["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        println!(
            "copied {rows} row{} from {} to {} in {secs:.1} s ({:.0} rows/s){}{}",
            if rows == 1 { "" } else { "s" },
            args.source,
            args.target,
            rows as f64 / secs.max(0.001),
            if report["created_table"] == true {
                "; created the target table"
            } else {
                ""
            },
            match report["verified"].as_bool() {
                Some(true) => format!(
                    "; verified: {} rows, checksum {:016x} on both sides",
                    report["target_checksum"]["rows"],
                    report["target_checksum"]["sum"].as_u64().unwrap_or(0)
                ),
                _ => "; not verified".to_string(),
            }
        );
    }
    Ok(())
}

async fn transfer(client: &Client, out: Output, cmd: TransferCmd) -> anyhow::Result<()> {
    match cmd {
        TransferCmd::List => {
            let v = client.get("/api/v1/transfers").await?;
            render::records(
                out,
                &v,
                &["id", "status", "rows_written", "source", "target", "error"],
            );
        }
        TransferCmd::Show { id } => {
            let v = client
                .get(&format!("/api/v1/transfers/{}", client::seg(&id)))
                .await?;
            render::object(out, &v);
        }
        TransferCmd::Cancel { id } => {
            let v = client
                .delete(&format!("/api/v1/transfers/{}", client::seg(&id)))
                .await?;
            println!(
                "transfer {id}: {}",
                v["status"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Waits for a transfer or export job, showing rows and rows/s on a terminal; fails if it failed.
async fn wait_job(client: &Client, out: Output, id: &str) -> anyhow::Result<Value> {
    let show_progress = std::io::stderr().is_terminal();
    let clock = std::time::Instant::now();
    let done = loop {
        let v = client
            .get(&format!("/api/v1/transfers/{}", client::seg(id)))
            .await?;
        if v["status"] != "running" {
            break v;
        }
        if show_progress {
            eprint!("\r{}   ", progress_line(&v, clock.elapsed().as_secs_f64()));
        }
        // Short jobs end soon: poll fast at first, then every quarter second.
        let pause = if clock.elapsed().as_secs() < 2 {
            50
        } else {
            250
        };
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    };
    if show_progress {
        eprint!("\r");
    }
    if out == Output::Json {
        render::json(&done);
    }
    if done["status"] != "succeeded" {
        bail!(
            "{id} {}: {}",
            done["status"].as_str().unwrap_or("failed"),
            done["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(done)
}

async fn export(client: &Client, out: Output, args: ExportArgs) -> anyhow::Result<()> {
    let source = if args.source.trim().contains(char::is_whitespace) {
        json!({ "query": { "instance": args.instance, "database": args.database, "sql": args.source } })
    } else {
        let (schema, table) = match args.source.split_once('.') {
            Some((s, t)) => (Some(s), t),
            None => (None, args.source.as_str()),
        };
        json!({ "table": { "instance": args.instance, "database": args.database, "schema": schema, "table": table } })
    };
    let spec = json!({
        "source": source,
        "url": args.url,
        "format": args.format.as_str(),
        "partition_by": args.partition_by,
        "partition_column": args.partition_column,
        "variables": args.vars.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "options": args.options.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "where": args.filter,
    });
    let started = client.post("/api/v1/exports", &spec).await?;
    let done = wait_job(client, out, started["id"].as_str().unwrap_or_default()).await?;
    if out != Output::Json {
        let report = &done["report"];
        let files = report["files"].as_array().cloned().unwrap_or_default();
        println!(
            "exported {} rows to {} in {} file{} ({:.1} s)",
            report["rows"],
            args.url,
            files.len(),
            if files.len() == 1 { "" } else { "s" },
            report["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0
        );
        for f in files {
            println!(
                "  {} ({} rows)",
                f["path"].as_str().unwrap_or_default(),
                f["rows"]
            );
        }
    }
    Ok(())
}

async fn import(client: &Client, out: Output, args: ImportArgs) -> anyhow::Result<()> {
    let spec = json!({
        "source": { "files": {
            "url": args.url,
            "format": args.format.as_str(),
            "options": args.options.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "partitions": args.partitions,
        } },
        "target": endpoint(&args.target, args.target_db.as_deref())?,
        "mode": args.mode.as_str(),
        "create": args.create,
        "allow_lossy": args.allow_lossy,
    });
    let started = client.post("/api/v1/transfers", &spec).await?;
    let done = wait_job(client, out, started["id"].as_str().unwrap_or_default()).await?;
    if out != Output::Json {
        let report = &done["report"];
        println!(
            "imported {} rows from {} into {}{}",
            report["rows"],
            args.url,
            args.target,
            if report["verified"] == true {
                "; verified"
            } else {
                ""
            }
        );
    }
    Ok(())
}

async fn schema_diff(
    client: &Client,
    out: Output,
    source: &str,
    target: &str,
    ddl_only: bool,
    source_db: Option<String>,
    target_db: Option<String>,
) -> anyhow::Result<()> {
    let mut path = format!(
        "/api/v1/schema-diff?source={}&target={}",
        client::seg(source),
        client::seg(target)
    );
    if let Some(d) = source_db {
        path.push_str(&format!("&source_db={}", client::seg(&d)));
    }
    if let Some(d) = target_db {
        path.push_str(&format!("&target_db={}", client::seg(&d)));
    }
    let v = client.get(&path).await?;
    if out == Output::Json {
        render::json(&v);
        return Ok(());
    }
    if let Some(ddl) = v["ddl"].as_array() {
        if !ddl_only {
            for d in v["differences"].as_array().into_iter().flatten() {
                let what = d["kind"].as_str().unwrap_or_default().replace('_', " ");
                let subject = d["column"].as_str().or(d["name"].as_str()).unwrap_or("");
                println!("{what} {subject}");
            }
            if ddl.is_empty() {
                println!("{target} matches {source}");
            } else {
                println!("-- DDL that makes {target} match {source}:");
            }
        }
        for statement in ddl {
            println!("{};", statement.as_str().unwrap_or_default());
        }
        return Ok(());
    }
    for (key, label) in [
        ("missing_tables", "missing in target"),
        ("extra_tables", "only in target"),
        ("different_tables", "different"),
    ] {
        let names: Vec<&str> = v[key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "{label}: {}",
            if names.is_empty() {
                "(none)".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    Ok(())
}

async fn archive(client: &Client, out: Output, cmd: ArchiveCmd) -> anyhow::Result<()> {
    match cmd {
        ArchiveCmd::Add {
            name,
            url,
            format,
            partitions,
            options,
        } => {
            let body = json!({
                "name": name,
                "url": url,
                "format": format.as_str(),
                "partitions": partitions,
                "options": options.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            });
            let v = client.post("/api/v1/archives", &body).await?;
            match out {
                Output::Json => render::json(&v),
                _ => println!(
                    "added archive {name}: query it with ferry sql archive \"select … from {name}\""
                ),
            }
        }
        ArchiveCmd::List => {
            let v = client.get("/api/v1/archives").await?;
            render::records(out, &v, &["name", "url", "format", "partitions"]);
        }
        ArchiveCmd::Rm { name } => {
            client
                .delete(&format!("/api/v1/archives/{}", client::seg(&name)))
                .await?;
            println!("removed archive {name}");
        }
    }
    Ok(())
}

/// `120000 / ~1000000 rows (12%), 95000 rows/s, about 9 s left` (the estimate from the catalog).
fn progress_line(v: &Value, elapsed_secs: f64) -> String {
    let rows = v["rows_written"].as_f64().unwrap_or(0.0);
    let rate = rows / elapsed_secs.max(0.001);
    match v["rows_expected"].as_f64().filter(|e| *e > 0.0) {
        Some(expected) => {
            let left = ((expected - rows).max(0.0) / rate.max(1.0)).ceil();
            format!(
                "{} / ~{} rows ({:.0}%), {:.0} rows/s, about {left:.0} s left",
                rows as u64,
                expected as u64,
                (100.0 * rows / expected).min(100.0),
                rate
            )
        }
        None => format!("{} rows, {rate:.0} rows/s", rows as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_shows_eta_when_the_size_is_known() {
        let v = json!({ "rows_written": 250, "rows_expected": 1000 });
        assert_eq!(
            progress_line(&v, 1.0),
            "250 / ~1000 rows (25%), 250 rows/s, about 3 s left"
        );
        let v = json!({ "rows_written": 250, "rows_expected": null });
        assert_eq!(progress_line(&v, 2.0), "250 rows, 125 rows/s");
    }
}

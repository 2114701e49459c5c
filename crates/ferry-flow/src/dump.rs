//! `backup` and `restore`: a database dumped with `pg_dump` / `mariadb-dump` (or `mysqldump`)
//! streamed straight into a file on disk or object storage, and such a file streamed back into
//! `psql` / `mariadb`. The dump is written under a temporary name and renamed when complete.
//! The instance's password goes to the tools through their environment, never their arguments.

use std::collections::BTreeMap;

use async_trait::async_trait;
use ferry_core::{ConnectionUrl, Engine, Error, Result};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::kinds::{Checked, TaskContext, TaskKind, TaskResult};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DumpParams {
    instance: String,
    /// The database; the instance URL's own when absent.
    #[serde(default)]
    database: Option<String>,
    /// The dump file: a path, `file://`, `s3://bucket/key.sql`, `az://…`, `gs://…`.
    url: String,
}

fn parse(params: &serde_json::Value) -> Result<DumpParams> {
    serde_json::from_value(params.clone()).map_err(|e| Error::InvalidInput(e.to_string()))
}

/// The client program, its connection arguments and its environment (the password).
fn client(url: &ConnectionUrl, database: Option<&str>, dump: bool) -> Result<Client> {
    let parsed = url::Url::parse(url.expose())
        .map_err(|_| Error::InvalidInput("the instance URL does not parse".into()))?;
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_string();
    let user = parsed.username().to_string();
    let db = database
        .map(str::to_string)
        .unwrap_or_else(|| parsed.path().trim_start_matches('/').to_string());
    let mut env = BTreeMap::new();
    let mut args = Vec::new();
    let program = match url.engine() {
        Engine::Postgres => {
            args.extend([
                "-h".into(),
                host,
                "-p".into(),
                parsed.port().unwrap_or(5432).to_string(),
            ]);
            if !user.is_empty() {
                args.extend(["-U".into(), user]);
            }
            if let Some(p) = url.password() {
                env.insert("PGPASSWORD".into(), p);
            }
            if dump {
                args.extend([
                    "--no-owner".into(),
                    "--no-privileges".into(),
                    "--clean".into(),
                    "--if-exists".into(),
                ]);
            } else {
                args.extend(["-v".into(), "ON_ERROR_STOP=1".into(), "-q".into()]);
            }
            args.extend(["-d".into(), db]);
            if dump { "pg_dump" } else { "psql" }
        }
        Engine::Mysql => {
            args.extend([
                "-h".into(),
                host,
                "-P".into(),
                parsed.port().unwrap_or(3306).to_string(),
                "--protocol=TCP".into(),
            ]);
            if !user.is_empty() {
                args.extend(["-u".into(), user]);
            }
            if let Some(p) = url.password() {
                env.insert("MYSQL_PWD".into(), p);
            }
            if dump {
                args.extend([
                    "--single-transaction".into(),
                    "--routines".into(),
                    "--add-drop-table".into(),
                ]);
            }
            args.push(db);
            if dump { "mariadb-dump" } else { "mariadb" }
        }
        other => {
            return Err(Error::Unsupported(format!(
                "backup and restore support PostgreSQL and MySQL/MariaDB, not {other}"
            )));
        }
    };
    Ok((program.to_string(), args, env))
}

fn spawn(
    program: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    stdin: bool,
) -> Result<tokio::process::Child> {
    // MySQL installs name the dump tool mysqldump and the client mysql.
    let fallback = match program {
        "mariadb-dump" => Some("mysqldump"),
        "mariadb" => Some("mysql"),
        _ => None,
    };
    let mut last = None;
    for p in std::iter::once(program).chain(fallback) {
        let mut cmd = tokio::process::Command::new(p);
        cmd.args(args)
            .envs(env)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .stdin(if stdin {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .kill_on_drop(true);
        match cmd.spawn() {
            Ok(child) => return Ok(child),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Unsupported(format!(
        "cannot start {program}: {}; install the database's client tools on the server",
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// Logs a child's stderr lines.
fn pump_stderr(
    ctx: &TaskContext,
    child: &mut tokio::process::Child,
) -> tokio::task::JoinHandle<()> {
    let log = ctx.log.clone();
    let err = child.stderr.take();
    tokio::spawn(async move {
        if let Some(err) = err {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                log(format!("stderr: {l}"));
            }
        }
    })
}

fn check(params: &serde_json::Value) -> Result<Checked> {
    Ok(Checked {
        instances: vec![parse(params)?.instance],
    })
}

type Client = (String, Vec<String>, BTreeMap<String, String>);

/// The parameters with variables substituted, the client to run, and the file's location.
async fn prepare(
    ctx: &TaskContext,
    params: &serde_json::Value,
    dump: bool,
) -> Result<(DumpParams, Client, ferry_move::files::Location)> {
    let p = parse(&ctx.substitute(params, Engine::Postgres)?)?;
    let url = ctx.resources.instance_url(&p.instance).await?;
    let client = client(&url, p.database.as_deref(), dump)?;
    let location = ferry_move::files::open_location(&p.url, &Default::default())?;
    Ok((p, client, location))
}

pub struct BackupKind;

#[async_trait]
impl TaskKind for BackupKind {
    fn name(&self) -> &'static str {
        "backup"
    }

    fn check(&self, params: &serde_json::Value) -> Result<Checked> {
        check(params)
    }

    async fn run(&self, ctx: &TaskContext, params: &serde_json::Value) -> Result<TaskResult> {
        let (p, (program, args, env), location) = prepare(ctx, params, true).await?;
        let temp = object_store::path::Path::from(format!(
            "{}.ferry-tmp-{}",
            location.path,
            uuid::Uuid::new_v4().simple()
        ));
        let mut writer =
            object_store::buffered::BufWriter::new(location.store.clone(), temp.clone());
        let mut child = spawn(&program, &args, &env, false)?;
        let errors = pump_stderr(ctx, &mut child);
        let mut out = child
            .stdout
            .take()
            .ok_or_else(|| Error::Internal("no stdout".into()))?;
        (ctx.log)(format!("{program} {} → {}", p.instance, p.url));
        let copied = tokio::select! {
            r = tokio::io::copy(&mut out, &mut writer) => r.map_err(|e| Error::Connection(format!("writing {}: {e}", p.url))),
            _ = ctx.cancel.cancelled() => Err(Error::Cancelled("the backup was cancelled".into())),
        };
        let status = child
            .wait()
            .await
            .map_err(|e| Error::Engine(e.to_string()))?;
        let _ = errors.await;
        let finished = match (copied, status.success()) {
            (Ok(bytes), true) => writer
                .shutdown()
                .await
                .map_err(|e| Error::Connection(format!("writing {}: {e}", p.url)))
                .map(|_| bytes),
            (Err(e), _) => Err(e),
            (Ok(_), false) => Err(Error::Engine(format!("{program} exited with {status}"))),
        };
        let bytes = match finished {
            Ok(b) => b,
            Err(e) => {
                let _ = location.store.delete(&temp).await;
                return Err(e);
            }
        };
        location
            .store
            .rename(&temp, &location.path)
            .await
            .map_err(|e| Error::Connection(format!("writing {}: {e}", p.url)))?;
        (ctx.log)(format!("wrote {bytes} bytes to {}", p.url));
        Ok(TaskResult {
            rows: 0,
            outputs: [("backup_bytes".to_string(), bytes.to_string())].into(),
        })
    }
}

pub struct RestoreKind;

#[async_trait]
impl TaskKind for RestoreKind {
    fn name(&self) -> &'static str {
        "restore"
    }

    fn check(&self, params: &serde_json::Value) -> Result<Checked> {
        check(params)
    }

    async fn run(&self, ctx: &TaskContext, params: &serde_json::Value) -> Result<TaskResult> {
        let (p, (program, args, env), location) = prepare(ctx, params, false).await?;
        let object = location
            .store
            .get(&location.path)
            .await
            .map_err(|e| Error::NotFound(format!("backup file {}: {e}", p.url)))?;
        let mut child = spawn(&program, &args, &env, true)?;
        let errors = pump_stderr(ctx, &mut child);
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error::Internal("no stdin".into()))?;
        (ctx.log)(format!("{} → {program} {}", p.url, p.instance));
        let feed = async {
            let mut chunks = object.into_stream();
            let mut bytes = 0u64;
            while let Some(chunk) = chunks.next().await {
                let chunk =
                    chunk.map_err(|e| Error::Connection(format!("reading {}: {e}", p.url)))?;
                bytes += chunk.len() as u64;
                if stdin.write_all(&chunk).await.is_err() {
                    break; // The client stopped reading: its exit status says why.
                }
            }
            drop(stdin);
            Ok::<u64, Error>(bytes)
        };
        let fed = tokio::select! {
            r = feed => r,
            _ = ctx.cancel.cancelled() => Err(Error::Cancelled("the restore was cancelled".into())),
        };
        let status = child
            .wait()
            .await
            .map_err(|e| Error::Engine(e.to_string()))?;
        let _ = errors.await;
        let bytes = fed?;
        if !status.success() {
            return Err(Error::Engine(format!(
                "{program} exited with {status} while restoring {}; its messages are in this node's log",
                p.url
            )));
        }
        (ctx.log)(format!("restored {bytes} bytes"));
        Ok(TaskResult::default())
    }
}

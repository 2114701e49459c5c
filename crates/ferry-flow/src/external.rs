//! Task kinds that reach outside the databases: `http` (a webhook call) and `shell` (a command
//! on the server, disabled unless an administrator starts the server with `--enable-shell`).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::{Engine, Error, Result};
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
        use tokio::io::{AsyncBufReadExt, BufReader};
        if !ctx.resources.shell_enabled() {
            return Err(Error::PermissionDenied(
                "shell tasks are disabled on this server; an administrator enables them with `ferry serve --enable-shell`".into(),
            ));
        }
        let p: ShellParams = parse(&ctx.substitute(params, Engine::Postgres)?)?;
        let mut command = tokio::process::Command::new("sh");
        command
            .arg("-c")
            .arg(&p.command)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(dir) = &p.workdir {
            command.current_dir(dir);
        }
        for (name, v) in &ctx.values {
            command.env(format!("FERRY_{}", name.to_ascii_uppercase()), &v.value);
        }
        let mut child = command
            .spawn()
            .map_err(|e| Error::Engine(format!("cannot start sh: {e}")))?;
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
        let status = tokio::select! {
            (_, status) = async { tokio::join!(pump, child.wait()) } => status.map_err(|e| Error::Engine(e.to_string()))?,
            _ = ctx.cancel.cancelled() => {
                // kill_on_drop stops the process when the child is dropped here.
                return Err(Error::Cancelled("the command was stopped".into()));
            }
        };
        if !status.success() {
            return Err(Error::Engine(format!("the command exited with {status}")));
        }
        Ok(TaskResult::default())
    }
}

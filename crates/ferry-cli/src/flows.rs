//! `ferry flow …` and `ferry run …`: task flows as code, their runs, and the runs' logs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{self, Client};
use crate::{Output, render};

#[derive(Subcommand)]
pub enum FlowCmd {
    /// Validate a flow file (TOML, or YAML when it ends in .yaml/.yml) and store it as the
    /// flow's next version.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    List,
    Show {
        name: String,
    },
    /// Write a flow file from a template (see `ferry flow templates`), to apply after review.
    New {
        name: String,
        #[arg(long)]
        template: String,
        /// A template parameter, NAME=VALUE (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Where to write the file (default: standard output).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// The templates and their parameters.
    Templates,
    /// What changed between two versions of a flow.
    Diff {
        name: String,
        from: i64,
        to: i64,
    },
    /// Run a flow now, for a business date (default: yesterday).
    Run {
        name: String,
        /// The business date, yyyy-MM-dd; `${bizdate}` takes this value.
        #[arg(long)]
        bizdate: Option<String>,
        /// A value for a flow variable, NAME=VALUE (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Wait for the run to end and show its nodes; exit 1 when it failed.
        #[arg(long)]
        wait: bool,
    },
    /// Run a flow once per business date from FROM to TO.
    Backfill {
        name: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// Runs at once.
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        /// Newest date first.
        #[arg(long)]
        descending: bool,
    },
    /// Turn the flow's schedule on.
    Enable {
        name: String,
    },
    /// Turn the flow's schedule off (runs in progress finish).
    Disable {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum RunCmd {
    /// Runs, newest first.
    List {
        #[arg(long)]
        flow: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// A run's nodes with their states, attempts, rows and durations.
    Show { id: String },
    /// A run's log lines; `-f` follows them until the run ends.
    Logs {
        id: String,
        #[arg(long)]
        node: Option<String>,
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Cancel a run; running statements are cancelled on their databases.
    Cancel { id: String },
    /// Run the failed and unfinished nodes of a finished run again.
    Restore { id: String },
    /// Run every node of a finished run again.
    Rerun { id: String },
}

pub async fn flow(client: &Client, out: Output, cmd: FlowCmd) -> anyhow::Result<()> {
    match cmd {
        FlowCmd::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read the flow file {}", file.display()))?;
            let yaml = file.extension().is_some_and(|e| e == "yaml" || e == "yml");
            let body = if yaml {
                json!({ "yaml": text })
            } else {
                json!({ "toml": text })
            };
            let v = client.post("/api/v1/flows", &body).await?;
            match out {
                Output::Table => println!(
                    "flow {} is at version {}{}",
                    v["name"].as_str().unwrap_or_default(),
                    v["version"],
                    v["schedule"]
                        .as_str()
                        .map(|s| format!(", scheduled {s}"))
                        .unwrap_or_default()
                ),
                _ => render::object(out, &v),
            }
        }
        FlowCmd::New {
            name,
            template,
            params,
            file,
        } => {
            let body = json!({ "flow": name, "params": pairs(&params)? });
            let v = client
                .post(
                    &format!("/api/v1/flow-templates/{}", client::seg(&template)),
                    &body,
                )
                .await?;
            let text = v["toml"].as_str().unwrap_or_default();
            match file {
                Some(path) => {
                    std::fs::write(&path, text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    println!(
                        "wrote {}; apply it with `ferry flow apply -f {}`",
                        path.display(),
                        path.display()
                    );
                }
                None => print!("{text}"),
            }
        }
        FlowCmd::Diff { name, from, to } => {
            let v = client
                .get(&format!(
                    "/api/v1/flows/{}/diff?from={from}&to={to}",
                    client::seg(&name)
                ))
                .await?;
            match out {
                Output::Table => {
                    let changes = v["changes"].as_array().cloned().unwrap_or_default();
                    if changes.is_empty() {
                        println!("versions {from} and {to} of {name} are the same");
                    }
                    for c in changes {
                        println!("{}", c.as_str().unwrap_or_default());
                    }
                }
                _ => render::object(out, &v),
            }
        }
        FlowCmd::Templates => {
            let v = client.get("/api/v1/flow-templates").await?;
            match out {
                Output::Table => {
                    for t in v.as_array().into_iter().flatten() {
                        println!(
                            "{}: {}",
                            t["name"].as_str().unwrap_or_default(),
                            t["description"].as_str().unwrap_or_default()
                        );
                        for p in t["params"].as_array().into_iter().flatten() {
                            let default = p["default"]
                                .as_str()
                                .map(|d| format!(" (default {d})"))
                                .unwrap_or_else(|| " (required)".into());
                            println!(
                                "    {}{default}: {}",
                                p["name"].as_str().unwrap_or_default(),
                                p["help"].as_str().unwrap_or_default()
                            );
                        }
                    }
                }
                _ => render::object(out, &v),
            }
        }
        FlowCmd::List => {
            let v = client.get("/api/v1/flows").await?;
            render::records(
                out,
                &v,
                &["name", "version", "enabled", "schedule", "description"],
            );
        }
        FlowCmd::Show { name } => {
            let v = client
                .get(&format!("/api/v1/flows/{}", client::seg(&name)))
                .await?;
            render::object(out, &v);
        }
        FlowCmd::Run {
            name,
            bizdate,
            params,
            wait,
        } => {
            let mut body = json!({ "params": pairs(&params)? });
            if let Some(d) = bizdate {
                body["bizdate"] = Value::String(d);
            }
            let v = client
                .post(&format!("/api/v1/flows/{}/runs", client::seg(&name)), &body)
                .await?;
            let id = v["id"].as_str().unwrap_or_default().to_string();
            if !wait {
                println!("{id}");
                return Ok(());
            }
            let done = wait_run(client, &id).await?;
            show_run(out, &done);
            if done["status"] != "success" {
                bail!(
                    "run {id} {}: {}",
                    done["status"].as_str().unwrap_or_default(),
                    done["error"].as_str().unwrap_or_default()
                );
            }
        }
        FlowCmd::Backfill {
            name,
            from,
            to,
            parallel,
            descending,
        } => {
            let v = client
                .post(
                    &format!("/api/v1/flows/{}/backfill", client::seg(&name)),
                    &json!({ "from": from, "to": to, "parallel": parallel, "descending": descending }),
                )
                .await?;
            render::records(out, &v, &["id", "bizdate", "status"]);
        }
        FlowCmd::Enable { name } => set_enabled(client, &name, "enable").await?,
        FlowCmd::Disable { name } => set_enabled(client, &name, "disable").await?,
    }
    Ok(())
}

/// `NAME=VALUE` arguments as a JSON object.
fn pairs(params: &[String]) -> anyhow::Result<Value> {
    let mut values = serde_json::Map::new();
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--param {p:?}: write NAME=VALUE");
        };
        values.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(Value::Object(values))
}

async fn set_enabled(client: &Client, name: &str, action: &str) -> anyhow::Result<()> {
    let v = client
        .post(
            &format!("/api/v1/flows/{}/{action}", client::seg(name)),
            &json!({}),
        )
        .await?;
    println!(
        "flow {name}: schedule {}",
        if v["enabled"] == true { "on" } else { "off" }
    );
    Ok(())
}

async fn wait_run(client: &Client, id: &str) -> anyhow::Result<Value> {
    loop {
        let v = client
            .get(&format!("/api/v1/runs/{}", client::seg(id)))
            .await?;
        if !matches!(v["status"].as_str(), Some("running" | "queued")) {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn show_run(out: Output, run: &Value) {
    match out {
        Output::Table => {
            println!(
                "run {} of {} (version {}, bizdate {}): {}",
                run["id"].as_str().unwrap_or_default(),
                run["flow"].as_str().unwrap_or_default(),
                run["version"],
                run["bizdate"].as_str().unwrap_or_default(),
                run["status"].as_str().unwrap_or_default()
            );
            render::records(
                out,
                &run["tasks"],
                &[
                    "node",
                    "kind",
                    "status",
                    "attempt",
                    "rows",
                    "duration_ms",
                    "error",
                ],
            );
        }
        _ => render::object(out, run),
    }
}

pub async fn run(client: &Client, out: Output, cmd: RunCmd) -> anyhow::Result<()> {
    match cmd {
        RunCmd::List {
            flow,
            status,
            limit,
        } => {
            let mut path = format!("/api/v1/runs?limit={limit}");
            if let Some(f) = flow {
                path.push_str(&format!("&flow={}", client::seg(&f)));
            }
            if let Some(s) = status {
                path.push_str(&format!("&status={}", client::seg(&s)));
            }
            let v = client.get(&path).await?;
            render::records(
                out,
                &v,
                &[
                    "id", "flow", "version", "bizdate", "trigger", "status", "error",
                ],
            );
        }
        RunCmd::Show { id } => {
            let v = client
                .get(&format!("/api/v1/runs/{}", client::seg(&id)))
                .await?;
            show_run(out, &v);
        }
        RunCmd::Logs { id, node, follow } => {
            let mut seen = std::collections::HashSet::new();
            loop {
                let mut path = format!("/api/v1/runs/{}/logs", client::seg(&id));
                if let Some(n) = &node {
                    path.push_str(&format!("?node={}", client::seg(n)));
                }
                let lines = client.get(&path).await?;
                for l in lines.as_array().into_iter().flatten() {
                    let key = (l["node"].to_string(), l["seq"].as_i64().unwrap_or(0));
                    if seen.insert(key) {
                        let at = chrono::DateTime::from_timestamp_millis(
                            l["at_ms"].as_i64().unwrap_or(0),
                        )
                        .map(|t| t.format("%H:%M:%S%.3f").to_string())
                        .unwrap_or_default();
                        println!(
                            "{at} [{}] {}",
                            l["node"].as_str().unwrap_or_default(),
                            l["line"].as_str().unwrap_or_default()
                        );
                    }
                }
                if !follow {
                    break;
                }
                let run = client
                    .get(&format!("/api/v1/runs/{}", client::seg(&id)))
                    .await?;
                if !matches!(run["status"].as_str(), Some("running" | "queued")) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        RunCmd::Cancel { id } => {
            let v = client
                .post(
                    &format!("/api/v1/runs/{}/cancel", client::seg(&id)),
                    &json!({}),
                )
                .await?;
            println!("run {id}: {}", v["status"].as_str().unwrap_or_default());
        }
        RunCmd::Restore { id } => restart(client, out, &id, "restore").await?,
        RunCmd::Rerun { id } => restart(client, out, &id, "rerun").await?,
    }
    Ok(())
}

async fn restart(client: &Client, out: Output, id: &str, action: &str) -> anyhow::Result<()> {
    client
        .post(
            &format!("/api/v1/runs/{}/{action}", client::seg(id)),
            &json!({}),
        )
        .await?;
    let done = wait_run(client, id).await?;
    show_run(out, &done);
    if done["status"] != "success" {
        bail!("run {id} {}", done["status"].as_str().unwrap_or_default());
    }
    Ok(())
}

/// `ferry trend INSTANCE [TABLE]`: table row counts and sizes over time.
#[derive(clap::Args)]
pub struct TrendArgs {
    instance: String,
    table: Option<String>,
    /// How many days back.
    #[arg(long, default_value_t = 30)]
    days: i64,
}

pub async fn trend(client: &Client, out: Output, args: TrendArgs) -> anyhow::Result<()> {
    let since = chrono::Utc::now().timestamp_millis() - args.days * 86_400_000;
    let mut path = format!(
        "/api/v1/instances/{}/trends?since_ms={since}",
        client::seg(&args.instance)
    );
    if let Some(t) = &args.table {
        path.push_str(&format!("&table={}", client::seg(t)));
    }
    let mut v = client.get(&path).await?;
    for sample in v.as_array_mut().into_iter().flatten() {
        let at = chrono::DateTime::from_timestamp_millis(sample["at_ms"].as_i64().unwrap_or(0))
            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default();
        sample["at"] = Value::String(at);
    }
    render::records(out, &v, &["at", "table", "row_estimate", "size_bytes"]);
    Ok(())
}

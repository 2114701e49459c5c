//! `ferry login`, `logout`, `whoami`, `user`, `role`, `token`, `audit`, `rule`, `mask`,
//! `approval` and `admin`: signing in (tokens kept in a private credentials file), users and
//! grants, the audit log, SQL rules, masking, approvals and key rotation.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::{Client, seg};
use crate::{Output, render};

/// Where signed-in tokens are kept: `$FERRY_CONFIG_DIR`, else `$XDG_CONFIG_HOME/ferry`, else
/// `~/.config/ferry`; the file is `credentials.json`, mode 0600.
pub fn credentials_path() -> Option<PathBuf> {
    let dir = std::env::var_os("FERRY_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CONFIG_HOME").map(|d| PathBuf::from(d).join("ferry")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/ferry")))?;
    Some(dir.join("credentials.json"))
}

fn read_credentials() -> Value {
    credentials_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({}))
}

/// The token for a server: `FERRY_TOKEN`, else the one `ferry login` stored for it.
pub fn token_for(server: &str) -> Option<String> {
    if let Ok(t) = std::env::var("FERRY_TOKEN")
        && !t.trim().is_empty()
    {
        return Some(t.trim().to_string());
    }
    read_credentials()[server]["token"]
        .as_str()
        .map(str::to_string)
}

fn write_credentials(v: &Value) -> anyhow::Result<PathBuf> {
    let path = credentials_path()
        .context("no place for credentials: set HOME or FERRY_CONFIG_DIR, or use FERRY_TOKEN")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(v)?.as_bytes())?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// A password from `FERRY_PASSWORD`, standard input (`--password-stdin`), or a prompt.
fn read_password(from_stdin: bool, prompt: &str) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("FERRY_PASSWORD")
        && !p.is_empty()
    {
        return Ok(p);
    }
    if !from_stdin && std::io::stdin().is_terminal() {
        eprint!("{prompt}: ");
        std::io::stderr().flush().ok();
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let p = line.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        bail!("no password given: type it, pipe it with --password-stdin, or set FERRY_PASSWORD");
    }
    Ok(p)
}

#[derive(Args)]
pub struct LoginArgs {
    /// The user to sign in as.
    #[arg(long, short = 'u', default_value = "admin")]
    user: String,
    /// Read the password from standard input instead of prompting.
    #[arg(long)]
    password_stdin: bool,
    /// Days until the token expires.
    #[arg(long, default_value_t = 90)]
    days: u32,
}

pub async fn login(client: &Client, server: &str, args: LoginArgs) -> anyhow::Result<()> {
    let password = read_password(args.password_stdin, &format!("password for {}", args.user))?;
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "cli".into());
    let v = client
        .post(
            "/api/v1/auth/login",
            &json!({ "user": args.user, "password": password, "kind": "token",
                     "name": format!("ferry CLI on {host}"), "expires_in_days": args.days }),
        )
        .await?;
    let mut creds = read_credentials();
    creds[server] = json!({ "user": v["user"], "token": v["token"], "id": v["id"] });
    let path = write_credentials(&creds)?;
    eprintln!(
        "signed in to {server} as {}; token kept in {}",
        args.user,
        path.display()
    );
    Ok(())
}

pub async fn logout(client: &Client, server: &str) -> anyhow::Result<()> {
    client.post("/api/v1/auth/logout", &json!({})).await?;
    let mut creds = read_credentials();
    if let Some(map) = creds.as_object_mut() {
        map.remove(server);
    }
    write_credentials(&creds)?;
    eprintln!("signed out of {server}; the token is revoked");
    Ok(())
}

#[derive(Subcommand)]
pub enum UserCmd {
    List,
    Show {
        name: String,
    },
    /// Add a user; the password is read from standard input or FERRY_PASSWORD.
    Add {
        name: String,
        /// A role: admin, dba, developer, viewer or a custom one (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A grant PERMISSION[@TARGET], e.g. write@instance:orders (repeatable).
        #[arg(long = "grant")]
        grants: Vec<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Give a user more grants (PERMISSION[@TARGET]).
    Grant {
        name: String,
        grants: Vec<String>,
    },
    /// Take grants from a user.
    Revoke {
        name: String,
        grants: Vec<String>,
    },
    /// Replace a user's roles.
    Roles {
        name: String,
        roles: Vec<String>,
    },
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    Rm {
        name: String,
    },
    /// Change your own password (old then new, from standard input or a prompt).
    Passwd,
}

pub async fn user(client: &Client, out: Output, cmd: UserCmd) -> anyhow::Result<()> {
    const FIELDS: &[&str] = &["name", "roles", "grants", "disabled"];
    match cmd {
        UserCmd::List => render::records(out, &client.get("/api/v1/users").await?, FIELDS),
        UserCmd::Show { name } => render::object(
            out,
            &client.get(&format!("/api/v1/users/{}", seg(&name))).await?,
        ),
        UserCmd::Add {
            name,
            roles,
            grants,
            password_stdin,
        } => {
            let password = read_password(password_stdin, &format!("password for {name}"))?;
            let v = client
                .post(
                    "/api/v1/users",
                    &json!({ "name": name, "password": password, "roles": roles, "grants": grants }),
                )
                .await?;
            render::object(out, &v);
        }
        UserCmd::Grant { name, grants } | UserCmd::Revoke { name, grants } if grants.is_empty() => {
            bail!("give at least one grant for {name}, e.g. write@instance:orders")
        }
        UserCmd::Grant { name, grants } => {
            let path = format!("/api/v1/users/{}", seg(&name));
            let current = client.get(&path).await?;
            let mut list: Vec<String> = serde_json::from_value(current["grants"].clone())?;
            for g in grants {
                if !list.contains(&g) {
                    list.push(g);
                }
            }
            render::object(out, &client.patch(&path, &json!({ "grants": list })).await?);
        }
        UserCmd::Revoke { name, grants } => {
            let path = format!("/api/v1/users/{}", seg(&name));
            let current = client.get(&path).await?;
            let mut list: Vec<String> = serde_json::from_value(current["grants"].clone())?;
            list.retain(|g| !grants.contains(g));
            render::object(out, &client.patch(&path, &json!({ "grants": list })).await?);
        }
        UserCmd::Roles { name, roles } => {
            let path = format!("/api/v1/users/{}", seg(&name));
            render::object(out, &client.patch(&path, &json!({ "roles": roles })).await?);
        }
        UserCmd::Disable { name } => set_disabled(client, &name, true).await?,
        UserCmd::Enable { name } => set_disabled(client, &name, false).await?,
        UserCmd::Rm { name } => {
            client
                .delete(&format!("/api/v1/users/{}", seg(&name)))
                .await?;
            eprintln!("removed user {name}; their tokens are revoked");
        }
        UserCmd::Passwd => {
            let old = read_password(false, "current password")?;
            let new = read_password(false, "new password")?;
            client
                .post(
                    "/api/v1/auth/password",
                    &json!({ "old_password": old, "new_password": new }),
                )
                .await?;
            eprintln!("password changed");
        }
    }
    Ok(())
}

pub async fn set_disabled(client: &Client, name: &str, disabled: bool) -> anyhow::Result<()> {
    client
        .patch(
            &format!("/api/v1/users/{}", seg(name)),
            &json!({ "disabled": disabled }),
        )
        .await?;
    eprintln!(
        "user {name} {}",
        if disabled { "disabled" } else { "enabled" }
    );
    Ok(())
}

#[derive(Subcommand)]
pub enum RoleCmd {
    List,
    /// Create or replace a custom role.
    Set {
        name: String,
        /// A grant PERMISSION[@TARGET] (repeatable).
        #[arg(long = "grant", required = true)]
        grants: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    Rm {
        name: String,
    },
}

pub async fn role(client: &Client, out: Output, cmd: RoleCmd) -> anyhow::Result<()> {
    match cmd {
        RoleCmd::List => render::records(
            out,
            &client.get("/api/v1/roles").await?,
            &["name", "built_in", "grants", "description"],
        ),
        RoleCmd::Set {
            name,
            grants,
            description,
        } => render::object(
            out,
            &client
                .put(
                    &format!("/api/v1/roles/{}", seg(&name)),
                    &json!({ "grants": grants, "description": description }),
                )
                .await?,
        ),
        RoleCmd::Rm { name } => {
            client
                .delete(&format!("/api/v1/roles/{}", seg(&name)))
                .await?;
            eprintln!("removed role {name}");
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum TokenCmd {
    List,
    /// A new personal token (printed once).
    Create {
        name: String,
        #[arg(long, default_value_t = 90)]
        days: u32,
    },
    Revoke {
        id: String,
    },
}

pub async fn token(client: &Client, out: Output, cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::List => render::records(
            out,
            &client.get("/api/v1/tokens").await?,
            &[
                "id",
                "name",
                "kind",
                "created_at_ms",
                "expires_at_ms",
                "last_used_ms",
                "revoked",
            ],
        ),
        TokenCmd::Create { name, days } => {
            let v = client
                .post(
                    "/api/v1/tokens",
                    &json!({ "name": name, "expires_in_days": days }),
                )
                .await?;
            println!("{}", v["token"].as_str().unwrap_or_default());
            eprintln!(
                "token {} created; it is shown only now",
                v["id"].as_str().unwrap_or_default()
            );
        }
        TokenCmd::Revoke { id } => {
            client
                .delete(&format!("/api/v1/tokens/{}", seg(&id)))
                .await?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct AuditArgs {
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    instance: Option<String>,
    /// `sql:console`, `sql:session`, `sql:query`, `api`, `login`, `approval` …
    #[arg(long)]
    action: Option<String>,
    /// `ok`, `denied` or `failed`.
    #[arg(long)]
    outcome: Option<String>,
    /// Statement class: read, write, ddl, dcl, admin, unknown.
    #[arg(long)]
    class: Option<String>,
    /// From this time (RFC 3339, a date, or ms since the epoch).
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    /// Statements containing this text.
    #[arg(long)]
    text: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: i64,
    /// Write every matching entry as csv or ndjson to standard output.
    #[arg(long, value_name = "FORMAT")]
    export: Option<String>,
}

pub async fn audit(client: &Client, out: Output, a: AuditArgs) -> anyhow::Result<()> {
    let mut q = vec![format!("limit={}", a.limit)];
    for (k, v) in [
        ("user", &a.user),
        ("instance", &a.instance),
        ("action", &a.action),
        ("outcome", &a.outcome),
        ("class", &a.class),
        ("since", &a.since),
        ("until", &a.until),
        ("text", &a.text),
    ] {
        if let Some(v) = v {
            q.push(format!("{k}={}", seg(v)));
        }
    }
    match a.export {
        Some(format) => {
            q.push(format!("format={}", seg(&format)));
            let mut stdout = tokio::io::stdout();
            client
                .download_get(
                    &format!("/api/v1/audit/export?{}", q.join("&")),
                    &mut stdout,
                )
                .await?;
        }
        None => render::records(
            out,
            &client
                .get(&format!("/api/v1/audit?{}", q.join("&")))
                .await?,
            &[
                "at_ms",
                "user",
                "action",
                "instance",
                "class",
                "outcome",
                "rows",
                "statement",
                "error",
            ],
        ),
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum RuleCmd {
    /// The rules, stored settings and (with --instance) the rules in force on an instance.
    List {
        #[arg(long)]
        instance: Option<String>,
    },
    /// Set a rule for env:NAME or instance:NAME, e.g. `ferry rule set env:prod max-rows 5000`.
    Set {
        scope: String,
        rule: String,
        value: String,
    },
    Unset {
        scope: String,
        rule: String,
    },
}

pub async fn rule(client: &Client, out: Output, cmd: RuleCmd) -> anyhow::Result<()> {
    match cmd {
        RuleCmd::List { instance } => {
            let path = match instance {
                Some(i) => format!("/api/v1/rules?instance={}", seg(&i)),
                None => "/api/v1/rules".into(),
            };
            render::object(out, &client.get(&path).await?)
        }
        RuleCmd::Set { scope, rule, value } => render::object(
            out,
            &client
                .post(
                    "/api/v1/rules",
                    &json!({ "scope": scope, "rule": rule, "value": value }),
                )
                .await?,
        ),
        RuleCmd::Unset { scope, rule } => {
            client
                .delete(&format!(
                    "/api/v1/rules?scope={}&rule={}",
                    seg(&scope),
                    seg(&rule)
                ))
                .await?;
            eprintln!("removed {rule} for {scope}");
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum MaskCmd {
    List,
    /// Mask a column of a table, or (without --table) every column whose name matches.
    Add {
        /// The column, or a regular expression over column names without --table.
        column: String,
        #[arg(long)]
        table: Option<String>,
        /// `*`, env:NAME or instance:NAME.
        #[arg(long, default_value = "*")]
        scope: String,
        /// full, keep-last-4 or hash.
        #[arg(long, default_value = "full")]
        algorithm: String,
    },
    Rm {
        id: String,
    },
}

pub async fn mask(client: &Client, out: Output, cmd: MaskCmd) -> anyhow::Result<()> {
    match cmd {
        MaskCmd::List => render::records(
            out,
            &client.get("/api/v1/masks").await?,
            &["id", "scope", "table", "column", "algorithm"],
        ),
        MaskCmd::Add {
            column,
            table,
            scope,
            algorithm,
        } => render::object(
            out,
            &client
                .post(
                    "/api/v1/masks",
                    &json!({ "column": column, "table": table, "scope": scope, "algorithm": algorithm }),
                )
                .await?,
        ),
        MaskCmd::Rm { id } => {
            client.delete(&format!("/api/v1/masks/{}", seg(&id))).await?;
            eprintln!("removed masking rule {id}");
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum ApprovalCmd {
    /// Ask another dba or admin to approve one statement.
    Request {
        instance: String,
        #[arg(long)]
        sql: String,
        #[arg(long)]
        database: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    List {
        #[arg(long)]
        status: Option<String>,
    },
    Show {
        id: String,
    },
    /// Approve a request; --hash makes sure it is the statement you reviewed.
    Approve {
        id: String,
        #[arg(long)]
        hash: Option<String>,
        #[arg(long)]
        comment: Option<String>,
    },
    Reject {
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Run an approved request (once, as approved).
    Run {
        id: String,
    },
}

pub async fn approval(client: &Client, out: Output, cmd: ApprovalCmd) -> anyhow::Result<()> {
    const FIELDS: &[&str] = &[
        "id",
        "status",
        "requester",
        "approver",
        "instance",
        "statement",
        "result",
    ];
    let v: Value = match cmd {
        ApprovalCmd::Request {
            instance,
            sql,
            database,
            reason,
        } => {
            client
                .post(
                    "/api/v1/approvals",
                    &json!({ "instance": instance, "sql": sql, "database": database, "reason": reason }),
                )
                .await?
        }
        ApprovalCmd::List { status } => {
            let path = match status {
                Some(s) => format!("/api/v1/approvals?status={}", seg(&s)),
                None => "/api/v1/approvals".into(),
            };
            return {
                render::records(out, &client.get(&path).await?, FIELDS);
                Ok(())
            };
        }
        ApprovalCmd::Show { id } => client.get(&format!("/api/v1/approvals/{}", seg(&id))).await?,
        ApprovalCmd::Approve { id, hash, comment } => {
            client
                .post(
                    &format!("/api/v1/approvals/{}/approve", seg(&id)),
                    &json!({ "statement_hash": hash, "comment": comment }),
                )
                .await?
        }
        ApprovalCmd::Reject { id, comment } => {
            client
                .post(
                    &format!("/api/v1/approvals/{}/reject", seg(&id)),
                    &json!({ "comment": comment }),
                )
                .await?
        }
        ApprovalCmd::Run { id } => {
            client
                .post(&format!("/api/v1/approvals/{}/run", seg(&id)), &json!({}))
                .await?
        }
    };
    render::object(out, &v);
    Ok(())
}

#[derive(Subcommand)]
pub enum AdminCmd {
    /// Re-encrypt every stored secret under a new master key; the old key opens nothing after.
    RotateKey,
}

pub async fn admin(client: &Client, out: Output, cmd: AdminCmd) -> anyhow::Result<()> {
    match cmd {
        AdminCmd::RotateKey => render::object(
            out,
            &client.post("/api/v1/admin/rotate-key", &json!({})).await?,
        ),
    }
    Ok(())
}

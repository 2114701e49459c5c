//! Redis connector on the redis crate. Console "statements" are Redis commands with shell-like
//! quoting (`HGETALL "user:1"`); replies become tables shaped by the command (`HGETALL` gives
//! field/value rows, `SCAN` cursor/key rows, `XRANGE` id/field/value rows). The catalog is a
//! keyspace scan with each key's type and TTL.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use arrow::datatypes::DataType;
use async_trait::async_trait;
use ferry_core::{ConnectionUrl, Engine, Error, Result};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use crate::arrow_text::unique_schema;
use crate::{
    Canceller, ColumnInfo, ConnectOptions, Connection, Connector, ServerInfo, ServerSession,
    StatementOutput, TableDetail, TableInfo,
};

/// How many keys the catalog lists at most.
pub const CATALOG_KEY_LIMIT: usize = 1000;

pub fn connector(url: &ConnectionUrl, options: &ConnectOptions) -> Result<Arc<dyn Connector>> {
    let client = redis::Client::open(url.expose()).map_err(|e| {
        Error::InvalidInput(format!(
            "malformed Redis URL {}: {}",
            url.redacted(),
            crate::scrub(&e.to_string(), url)
        ))
    })?;
    Ok(Arc::new(RedisConnector {
        url: url.clone(),
        client,
        options: options.clone(),
    }))
}

struct RedisConnector {
    url: ConnectionUrl,
    client: redis::Client,
    options: ConnectOptions,
}

#[async_trait]
impl Connector for RedisConnector {
    fn engine(&self) -> Engine {
        Engine::Redis
    }

    async fn connect(&self, database: Option<&str>) -> Result<Box<dyn Connection>> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.options.connect_timeout))
            .set_response_timeout(None);
        let info = self.client.get_connection_info();
        let target = info.addr().to_string();
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| {
                Error::Connection(format!(
                    "could not connect to Redis at {target}: {}",
                    crate::scrub(&e.to_string(), &self.url)
                ))
            })?;
        if let Some(db) = database {
            let n: i64 = db.parse().map_err(|_| {
                Error::InvalidInput(format!(
                    "Redis databases are numbered; {db:?} is not a number"
                ))
            })?;
            redis::cmd("SELECT")
                .arg(n)
                .query_async::<()>(&mut conn)
                .await
                .map_err(command_error)?;
        }
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .unwrap_or(-1);
        Ok(Box::new(RedisConnection { conn, id }))
    }
}

fn command_error(e: redis::RedisError) -> Error {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        Error::Connection(format!("connection to Redis lost: {e}"))
    } else {
        Error::Engine(e.to_string())
    }
}

struct RedisConnection {
    conn: MultiplexedConnection,
    id: i64,
}

struct NoCancel;

#[async_trait]
impl Canceller for NoCancel {
    async fn cancel(&self) -> Result<()> {
        Err(Error::Unsupported(
            "Redis runs each command atomically; a running command cannot be cancelled".into(),
        ))
    }
}

impl RedisConnection {
    async fn command(&mut self, args: &[String]) -> Result<Value> {
        let Some((name, rest)) = args.split_first() else {
            return Err(Error::InvalidInput("empty Redis command".into()));
        };
        let mut cmd = redis::cmd(name);
        for a in rest {
            cmd.arg(a);
        }
        cmd.query_async::<Value>(&mut self.conn)
            .await
            .map_err(command_error)
    }
}

#[async_trait]
impl Connection for RedisConnection {
    async fn test(&mut self) -> Result<ServerInfo> {
        let started = Instant::now();
        self.command(&["PING".into()]).await?;
        let round_trip_ms = started.elapsed().as_secs_f64() * 1000.0;
        let info = text(&self.command(&["INFO".into(), "server".into()]).await?);
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| format!("Redis {}", v.trim()))
            .unwrap_or_else(|| "Redis".into());
        Ok(ServerInfo {
            engine: Engine::Redis,
            version,
            round_trip_ms,
        })
    }

    async fn run<'a>(&'a mut self, sql: &'a str) -> Result<StatementOutput<'a>> {
        let args = split_command(sql)?;
        let reply = self.command(&args).await?;
        let name = args[0].to_ascii_uppercase();
        let (columns, rows) = reply_table(&name, reply);
        let schema = unique_schema(
            columns
                .iter()
                .map(|c| (c.to_string(), DataType::Utf8))
                .collect(),
        );
        let arrays: Vec<ArrayRef> = (0..columns.len())
            .map(|i| {
                let mut b = StringBuilder::new();
                for r in &rows {
                    b.append_option(r.get(i).cloned().flatten());
                }
                Arc::new(b.finish()) as ArrayRef
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), arrays)
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(StatementOutput::Rows {
            schema,
            batches: Box::pin(futures::stream::iter([Ok(batch)])),
        })
    }

    fn canceller(&self) -> Arc<dyn Canceller> {
        Arc::new(NoCancel)
    }

    /// Writes each row as a hash: the key from `target.table` as a template (`order:{order_id}`),
    /// one field per non-NULL column, in one pipeline per batch.
    async fn write(
        &mut self,
        target: &crate::WriteTarget,
        mut batches: crate::BatchStream<'_>,
    ) -> Result<u64> {
        use futures::StreamExt;
        let template = KeyTemplate::parse(&target.table, &target.columns)?;
        let options = crate::write::format_options(false);
        let mut written = 0;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            let pipe = {
                let formatters = batch
                    .columns()
                    .iter()
                    .map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        Error::Unsupported(format!("cannot write this column type: {e}"))
                    })?;
                let mut pipe = redis::pipe();
                for row in 0..batch.num_rows() {
                    let value = |i: usize| {
                        (!batch.column(i).is_null(row))
                            .then(|| formatters[i].value(row).to_string())
                    };
                    let key = template.render(&value)?;
                    let fields: Vec<(String, String)> = target
                        .columns
                        .iter()
                        .enumerate()
                        .filter_map(|(i, name)| value(i).map(|v| (name.clone(), v)))
                        .collect();
                    if !fields.is_empty() {
                        pipe.cmd("HSET").arg(&key).arg(fields).ignore();
                    }
                }
                pipe
            };
            pipe.query_async::<()>(&mut self.conn)
                .await
                .map_err(command_error)?;
            written += batch.num_rows() as u64;
        }
        Ok(written)
    }

    async fn databases(&mut self) -> Result<Vec<String>> {
        let count = match self
            .command(&["CONFIG".into(), "GET".into(), "databases".into()])
            .await
        {
            Ok(v) => pairs(&v)
                .first()
                .and_then(|(_, n)| n.as_deref()?.parse::<u32>().ok())
                .unwrap_or(16),
            Err(_) => 16,
        };
        Ok((0..count).map(|n| n.to_string()).collect())
    }

    async fn tables(&mut self) -> Result<Vec<TableInfo>> {
        let mut keys = Vec::new();
        let mut cursor = "0".to_string();
        loop {
            let reply = self
                .command(&["SCAN".into(), cursor.clone(), "COUNT".into(), "500".into()])
                .await?;
            let Value::Array(parts) = reply else { break };
            let mut parts = parts.into_iter();
            cursor = parts.next().map(|v| text(&v)).unwrap_or_else(|| "0".into());
            if let Some(Value::Array(batch)) = parts.next() {
                keys.extend(batch.iter().map(text));
            }
            if cursor == "0" || keys.len() >= CATALOG_KEY_LIMIT {
                break;
            }
        }
        keys.truncate(CATALOG_KEY_LIMIT);
        keys.sort();
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("TYPE").arg(k).cmd("TTL").arg(k);
        }
        let replies: Vec<Value> = if keys.is_empty() {
            vec![]
        } else {
            pipe.query_async(&mut self.conn)
                .await
                .map_err(command_error)?
        };
        Ok(keys
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let kind = replies.get(2 * i).map(text).unwrap_or_default();
                let ttl = match replies.get(2 * i + 1) {
                    Some(Value::Int(t)) if *t >= 0 => Some(*t),
                    _ => None,
                };
                TableInfo {
                    schema: None,
                    name,
                    kind,
                    row_estimate: None,
                    size_bytes: None,
                    ttl_secs: ttl,
                }
            })
            .collect())
    }

    async fn table(&mut self, _schema: Option<&str>, name: &str) -> Result<TableDetail> {
        let kind = text(&self.command(&["TYPE".into(), name.into()]).await?);
        let columns: &[&str] = match kind.as_str() {
            "none" => {
                return Err(Error::NotFound(format!(
                    "Redis key {name:?} does not exist"
                )));
            }
            "hash" => &["field", "value"],
            "zset" => &["member", "score"],
            "stream" => &["id", "field", "value"],
            "list" => &["index", "value"],
            _ => &["value"],
        };
        Ok(TableDetail {
            schema: None,
            name: name.to_string(),
            columns: columns
                .iter()
                .map(|c| ColumnInfo {
                    name: c.to_string(),
                    data_type: kind.clone(),
                    arrow_type: DataType::Utf8.to_string(),
                    nullable: false,
                    default: None,
                })
                .collect(),
            primary_key: vec![],
            indexes: vec![],
        })
    }

    async fn server_sessions(&mut self) -> Result<Vec<ServerSession>> {
        let list = text(&self.command(&["CLIENT".into(), "LIST".into()]).await?);
        Ok(list
            .lines()
            .map(|line| {
                let field = |k: &str| {
                    line.split(' ')
                        .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                        .map(str::to_string)
                };
                ServerSession {
                    id: field("id").and_then(|v| v.parse().ok()).unwrap_or_default(),
                    user: field("user"),
                    database: field("db"),
                    client: field("addr"),
                    state: field("flags"),
                    query: field("cmd"),
                    running_secs: field("idle").and_then(|v| v.parse().ok()),
                }
            })
            .collect())
    }

    async fn kill_server_session(&mut self, id: i64) -> Result<()> {
        match self
            .command(&["CLIENT".into(), "KILL".into(), "ID".into(), id.to_string()])
            .await?
        {
            Value::Int(n) if n > 0 => Ok(()),
            _ => Err(Error::NotFound(format!("no Redis client with id {id}"))),
        }
    }

    fn server_session_id(&self) -> Option<i64> {
        (self.id >= 0).then_some(self.id)
    }

    fn engine(&self) -> Engine {
        Engine::Redis
    }
}

/// A key template such as `order:{order_id}`: text with column names in braces.
pub struct KeyTemplate {
    parts: Vec<(String, Option<usize>)>,
}

impl KeyTemplate {
    pub fn parse(template: &str, columns: &[String]) -> Result<Self> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').map(|c| open + c).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unclosed {{ in the Redis key template {template:?}"
                ))
            })?;
            let name = &rest[open + 1..close];
            let index = columns.iter().position(|c| c == name).ok_or_else(|| {
                Error::InvalidInput(format!("the Redis key template {template:?} names {name:?}, which is not a source column"))
            })?;
            parts.push((rest[..open].to_string(), Some(index)));
            rest = &rest[close + 1..];
        }
        parts.push((rest.to_string(), None));
        if parts.iter().all(|(_, c)| c.is_none()) {
            return Err(Error::InvalidInput(format!(
                "a Redis target is a key template with at least one column, such as order:{{order_id}}, not {template:?}"
            )));
        }
        Ok(KeyTemplate { parts })
    }

    /// The key for a row; a NULL key column is an error.
    pub fn render(&self, value: &dyn Fn(usize) -> Option<String>) -> Result<String> {
        let mut key = String::new();
        for (text, column) in &self.parts {
            key.push_str(text);
            if let Some(i) = column {
                key.push_str(&value(*i).ok_or_else(|| {
                    Error::InvalidInput("a Redis key column is NULL in a source row".into())
                })?);
            }
        }
        Ok(key)
    }
}

/// Splits a command line into arguments: whitespace separates, single or double quotes group,
/// and backslash escapes inside double quotes.
pub fn split_command(line: &str) -> Result<Vec<String>> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_arg = false;
    let mut chars = line.trim().trim_end_matches(';').chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                in_arg = true;
                let quote = c;
                loop {
                    match chars.next() {
                        Some(ch) if ch == quote => break,
                        Some('\\') if quote == '"' => match chars.next() {
                            Some('n') => current.push('\n'),
                            Some('t') => current.push('\t'),
                            Some(other) => current.push(other),
                            None => break,
                        },
                        Some(ch) => current.push(ch),
                        None => {
                            return Err(Error::InvalidInput(format!(
                                "unbalanced {quote} quote in Redis command; close the quote"
                            )));
                        }
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_arg {
                    args.push(std::mem::take(&mut current));
                    in_arg = false;
                }
            }
            c => {
                in_arg = true;
                current.push(c);
            }
        }
    }
    if in_arg {
        args.push(current);
    }
    if args.is_empty() {
        return Err(Error::InvalidInput(
            "empty Redis command: type a command such as GET key".into(),
        ));
    }
    Ok(args)
}

type Rows = Vec<Vec<Option<String>>>;

/// Shapes a reply as a table according to the command that produced it.
pub fn reply_table(command: &str, reply: Value) -> (Vec<&'static str>, Rows) {
    match (command, reply) {
        ("HGETALL" | "CONFIG", v @ (Value::Array(_) | Value::Map(_))) => (
            vec!["field", "value"],
            pairs(&v)
                .into_iter()
                .map(|(k, v)| vec![Some(k), v])
                .collect(),
        ),
        ("ZRANGE" | "ZREVRANGE" | "ZRANGEBYSCORE", Value::Array(items))
            if items.iter().any(|i| matches!(i, Value::Array(_))) =>
        {
            let rows = items.iter().map(|pair| match pair {
                Value::Array(p) => vec![p.first().map(text), p.get(1).map(text)],
                other => vec![Some(text(other)), None],
            });
            (vec!["member", "score"], rows.collect())
        }
        ("SCAN" | "SSCAN" | "HSCAN" | "ZSCAN", Value::Array(parts)) => {
            let cursor = parts.first().map(text);
            let keys = match parts.get(1) {
                Some(Value::Array(k)) => k
                    .iter()
                    .map(|v| vec![cursor.clone(), Some(text(v))])
                    .collect(),
                _ => vec![],
            };
            (vec!["cursor", "key"], keys)
        }
        ("XRANGE" | "XREVRANGE", Value::Array(entries)) => {
            let mut rows = Vec::new();
            for e in entries {
                let Value::Array(parts) = e else { continue };
                let id = parts.first().map(text);
                if let Some(fields) = parts.get(1) {
                    for (f, v) in pairs(fields) {
                        rows.push(vec![id.clone(), Some(f), v]);
                    }
                }
            }
            (vec!["id", "field", "value"], rows)
        }
        (_, Value::Map(entries)) => (
            vec!["field", "value"],
            entries
                .iter()
                .map(|(k, v)| vec![Some(text(k)), value_text(v)])
                .collect(),
        ),
        (_, Value::Array(items) | Value::Set(items)) => (
            vec!["value"],
            items.iter().map(|v| vec![value_text(v)]).collect(),
        ),
        (_, other) => (vec!["value"], vec![vec![value_text(&other)]]),
    }
}

fn pairs(v: &Value) -> Vec<(String, Option<String>)> {
    match v {
        Value::Map(m) => m.iter().map(|(k, v)| (text(k), value_text(v))).collect(),
        Value::Array(items) => items
            .chunks(2)
            .map(|c| (text(&c[0]), c.get(1).and_then(value_text)))
            .collect(),
        _ => vec![],
    }
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::Nil => None,
        other => Some(text(other)),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Nil => String::new(),
        Value::Int(i) => i.to_string(),
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".into(),
        Value::Double(d) => d.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Array(items) | Value::Set(items) => {
            format!(
                "[{}]",
                items.iter().map(text).collect::<Vec<_>>().join(", ")
            )
        }
        Value::Map(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", text(k), text(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_commands_like_redis_cli() {
        assert_eq!(split_command("GET k").unwrap(), ["GET", "k"]);
        assert_eq!(
            split_command(r#"SET "a b" 'c d'"#).unwrap(),
            ["SET", "a b", "c d"]
        );
        assert_eq!(
            split_command(r#"SET k "x\"y""#).unwrap(),
            ["SET", "k", "x\"y"]
        );
        assert_eq!(split_command(r#"SET k """#).unwrap(), ["SET", "k", ""]);
        assert!(split_command("  ").is_err());
        assert!(
            split_command("GET \"k")
                .unwrap_err()
                .message()
                .contains("unbalanced")
        );
    }

    #[test]
    fn key_templates_render_and_refuse_bad_input() {
        let cols = vec!["id".to_string(), "region".to_string()];
        let t = KeyTemplate::parse("order:{region}:{id}", &cols).unwrap();
        let values = |i: usize| Some(["42", "eu"][i].to_string());
        assert_eq!(t.render(&values).unwrap(), "order:eu:42");
        assert!(KeyTemplate::parse("plain", &cols).is_err());
        assert!(KeyTemplate::parse("x:{missing}", &cols).is_err());
        assert!(KeyTemplate::parse("x:{id", &cols).is_err());
        assert!(t.render(&|_| None).is_err());
    }

    #[test]
    fn shapes_replies_by_command() {
        let hash = Value::Array(vec![
            Value::BulkString(b"f1".to_vec()),
            Value::BulkString(b"v1".to_vec()),
        ]);
        let (cols, rows) = reply_table("HGETALL", hash);
        assert_eq!(cols, ["field", "value"]);
        assert_eq!(
            rows,
            vec![vec![Some("f1".to_string()), Some("v1".to_string())]]
        );
        let scan = Value::Array(vec![
            Value::BulkString(b"17".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"a".to_vec()),
                Value::BulkString(b"b".to_vec()),
            ]),
        ]);
        let (cols, rows) = reply_table("SCAN", scan);
        assert_eq!(cols, ["cursor", "key"]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1], vec![Some("17".to_string()), Some("b".to_string())]);
        let (_, rows) = reply_table("GET", Value::Nil);
        assert_eq!(rows, vec![vec![None]]);
    }
}

//! PostgreSQL connector on tokio-postgres. Statements are described with the extended protocol
//! (for exact column types) and run with the simple protocol, whose text results let every
//! type, including ones Ferry does not know, arrive as a value; cancellation uses PostgreSQL's
//! cancel request, which needs no second session.

use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::{DataType, TimeUnit};
use async_trait::async_trait;
use ferry_core::{ConnectionUrl, Engine, Error, Result};
use futures::StreamExt;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::Type;
use tokio_postgres::{CancelToken, Client, NoTls, SimpleQueryMessage, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::arrow_text::{BinaryText, TextBatchBuilder, unique_schema};
use crate::write::WriteTarget;
use crate::{
    BATCH_ROWS, Canceller, ColumnInfo, ConnectOptions, Connection, Connector, IndexInfo,
    ServerInfo, ServerSession, StatementOutput, TableDetail, TableInfo, query_strings, script,
};

pub fn connector(url: &ConnectionUrl, options: &ConnectOptions) -> Result<Arc<dyn Connector>> {
    let (plain, settings) = crate::tls::split_url(url.expose())?;
    let mut config: tokio_postgres::Config =
        plain.parse().map_err(|e: tokio_postgres::Error| {
            Error::InvalidInput(format!(
                "malformed PostgreSQL URL {}: {}",
                url.redacted(),
                crate::scrub(&e.to_string(), url)
            ))
        })?;
    let tls = crate::tls::client_config(&settings)?.map(MakeRustlsConnect::new);
    config.ssl_mode(if tls.is_some() {
        tokio_postgres::config::SslMode::Require
    } else {
        tokio_postgres::config::SslMode::Disable
    });
    Ok(Arc::new(PostgresConnector {
        url: url.clone(),
        config,
        tls,
        options: options.clone(),
    }))
}

/// Connects with or without TLS and drives the connection in a task of its own.
async fn open<T>(
    config: &tokio_postgres::Config,
    tls: T,
) -> std::result::Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

struct PostgresConnector {
    url: ConnectionUrl,
    config: tokio_postgres::Config,
    /// TLS as the URL's `sslmode` asks; `None` for plain TCP.
    tls: Option<MakeRustlsConnect>,
    options: ConnectOptions,
}

#[async_trait]
impl Connector for PostgresConnector {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }

    async fn connect(&self, database: Option<&str>) -> Result<Box<dyn Connection>> {
        let mut config = self.config.clone();
        if let Some(db) = database {
            config.dbname(db);
        }
        config.connect_timeout(self.options.connect_timeout);
        config.application_name("ferry");
        // ISO dates and UTC make the text form of every date and time unambiguous.
        config.options(
            "-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3 -c IntervalStyle=postgres",
        );
        let hosts = describe_hosts(&config);
        let connecting = async {
            match &self.tls {
                Some(tls) => open(&config, tls.clone()).await,
                None => open(&config, NoTls).await,
            }
        };
        let client = tokio::time::timeout(self.options.connect_timeout, connecting)
            .await
            .map_err(|_| {
                Error::Connection(format!(
                    "could not connect to PostgreSQL at {hosts}: no answer within {}s; check the host, port and firewall",
                    self.options.connect_timeout.as_secs()
                ))
            })?
            .map_err(|e| Error::Connection(format!("could not connect to PostgreSQL at {hosts}: {}", self.describe(&e))))?;
        let pid = client
            .query_one("select pg_backend_pid()", &[])
            .await
            .map_err(|e| Error::Connection(self.describe(&e)))?
            .get::<_, i32>(0);
        Ok(Box::new(PostgresConnection {
            cancel: Arc::new(PgCanceller(client.cancel_token(), self.tls.clone())),
            client,
            pid,
            in_transaction: false,
        }))
    }
}

impl PostgresConnector {
    fn describe(&self, e: &tokio_postgres::Error) -> String {
        crate::scrub(&error_text(e), &self.url)
    }
}

fn describe_hosts(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            format!(
                "{host}:{}",
                ports.get(i).or(ports.first()).copied().unwrap_or(5432)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A driver error in PostgreSQL's own words: severity, message, detail, hint and position.
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" (detail: {d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!(" (hint: {h})"));
            }
            if let Some(tokio_postgres::error::ErrorPosition::Original(p)) = db.position() {
                s.push_str(&format!(" at character {p}"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            s
        }
    }
}

fn statement_error(e: tokio_postgres::Error) -> Error {
    if e.as_db_error()
        .is_some_and(|db| db.code() == &tokio_postgres::error::SqlState::QUERY_CANCELED)
    {
        return Error::Cancelled(format!(
            "statement cancelled on the server: {}",
            error_text(&e)
        ));
    }
    let fatal = e
        .as_db_error()
        .is_some_and(|db| matches!(db.severity(), "FATAL" | "PANIC"));
    if e.as_db_error().is_some() && !fatal {
        Error::Engine(error_text(&e))
    } else {
        Error::Connection(format!("connection to PostgreSQL lost: {}", error_text(&e)))
    }
}

struct PgCanceller(CancelToken, Option<MakeRustlsConnect>);

#[async_trait]
impl Canceller for PgCanceller {
    async fn cancel(&self) -> Result<()> {
        let sent = match &self.1 {
            Some(tls) => self.0.cancel_query(tls.clone()).await,
            None => self.0.cancel_query(NoTls).await,
        };
        sent.map_err(|e| {
            Error::Connection(format!(
                "could not send the cancel request to PostgreSQL: {e}"
            ))
        })
    }
}

struct PostgresConnection {
    client: Client,
    cancel: Arc<PgCanceller>,
    pid: i32,
    in_transaction: bool,
}

/// The Arrow type of a PostgreSQL column type; unknown types are carried as text.
pub fn arrow_type(ty: &Type, type_modifier: i32) -> DataType {
    match *ty {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 | Type::OID => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::NUMERIC => {
            // typmod = ((precision << 16) | scale) + 4; unconstrained numeric stays exact as text.
            if type_modifier >= 4 {
                let m = type_modifier - 4;
                let (p, s) = ((m >> 16) & 0xffff, m & 0xffff);
                if (1..=38).contains(&p) && s <= p {
                    return DataType::Decimal128(p as u8, s as i8);
                }
            }
            DataType::Utf8
        }
        Type::BYTEA => DataType::Binary,
        Type::DATE => DataType::Date32,
        Type::TIME => DataType::Time64(TimeUnit::Microsecond),
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        _ => DataType::Utf8,
    }
}

#[async_trait]
impl Connection for PostgresConnection {
    async fn test(&mut self) -> Result<ServerInfo> {
        let started = Instant::now();
        self.client
            .simple_query("select 1")
            .await
            .map_err(statement_error)?;
        let round_trip_ms = started.elapsed().as_secs_f64() * 1000.0;
        let row = self
            .client
            .query_one("select version()", &[])
            .await
            .map_err(statement_error)?;
        Ok(ServerInfo {
            engine: Engine::Postgres,
            version: row.get(0),
            round_trip_ms,
        })
    }

    async fn run<'a>(&'a mut self, sql: &'a str) -> Result<StatementOutput<'a>> {
        let statement = match self.client.prepare(sql).await {
            Ok(s) => s,
            Err(e) => return Err(statement_error(e)),
        };
        let columns: Vec<(String, DataType)> = statement
            .columns()
            .iter()
            .map(|c| {
                (
                    c.name().to_string(),
                    arrow_type(c.type_(), c.type_modifier()),
                )
            })
            .collect();
        let binary = statement
            .columns()
            .iter()
            .all(|c| crate::pg_binary::readable(c.type_()));
        drop(statement);
        if !columns.is_empty() && copyable(sql) && binary {
            // Every column decodes from binary COPY: no text formatting on the server, no parsing here.
            let statement = format!(
                "COPY ({}) TO STDOUT (FORMAT binary)",
                sql.trim().trim_end_matches(';')
            );
            match self.client.copy_out(&statement).await {
                Ok(rows) => {
                    let schema = unique_schema(columns);
                    let mut decoder = crate::pg_binary::BinaryDecoder::new(schema.clone());
                    let rows = rows.map(|r| r.map_err(statement_error));
                    let batches =
                        crate::batching::batches(rows, move |chunk: Option<bytes::Bytes>| {
                            match chunk {
                                Some(data) => match decoder.feed(&data) {
                                    Err(e) => Some(Err(e)),
                                    Ok(()) => {
                                        (decoder.rows() >= BATCH_ROWS).then(|| decoder.finish())
                                    }
                                },
                                None => (decoder.rows() > 0).then(|| decoder.finish()),
                            }
                        });
                    return Ok(StatementOutput::Rows { schema, batches });
                }
                Err(e)
                    if e.as_db_error().is_some_and(|db| {
                        db.code() == &tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED
                            || db.code() == &tokio_postgres::error::SqlState::SYNTAX_ERROR
                    }) =>
                {
                    tracing::debug!(error = %error_text(&e), "COPY refused the query; running it as a plain query");
                }
                Err(e) => return Err(statement_error(e)),
            }
        } else if !columns.is_empty() && copyable(sql) {
            // Queries stream through COPY: one message per row, no per-value decoding in the driver.
            match self
                .client
                .copy_out(&format!(
                    "COPY ({}) TO STDOUT",
                    sql.trim().trim_end_matches(';')
                ))
                .await
            {
                Ok(rows) => return Ok(copy_batches(unique_schema(columns), rows)),
                Err(e)
                    if e.as_db_error().is_some_and(|db| {
                        db.code() == &tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED
                            || db.code() == &tokio_postgres::error::SqlState::SYNTAX_ERROR
                    }) =>
                {
                    tracing::debug!(error = %error_text(&e), "COPY refused the query; running it as a plain query");
                }
                Err(e) => return Err(statement_error(e)),
            }
        }
        let in_tx_before = self.in_transaction;
        let messages = self
            .client
            .simple_query_raw(sql)
            .await
            .map_err(statement_error)?;
        if columns.is_empty() {
            let mut affected = 0;
            futures::pin_mut!(messages);
            while let Some(m) = messages.next().await {
                if let SimpleQueryMessage::CommandComplete(n) = m.map_err(statement_error)? {
                    affected = n;
                }
            }
            self.in_transaction =
                script::transaction_state_after(Engine::Postgres, sql, in_tx_before);
            return Ok(StatementOutput::Affected(affected));
        }
        let schema = unique_schema(columns);
        let mut builder = TextBatchBuilder::new(schema.clone(), BinaryText::PgHex);
        let width = schema.fields().len();
        let messages = messages.map(|m| m.map_err(statement_error));
        let batches = crate::batching::batches(messages, move |msg| match msg {
            Some(SimpleQueryMessage::Row(row)) => {
                for i in 0..width.min(row.len()) {
                    builder.append_str(i, row.get(i));
                }
                builder.end_row();
                (builder.rows() >= BATCH_ROWS).then(|| builder.finish())
            }
            Some(_) => None,
            None => (builder.rows() > 0).then(|| builder.finish()),
        });
        Ok(StatementOutput::Rows { schema, batches })
    }

    fn canceller(&self) -> Arc<dyn Canceller> {
        self.cancel.clone()
    }

    fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    fn is_healthy(&self) -> bool {
        !self.client.is_closed()
    }

    async fn write(
        &mut self,
        target: &WriteTarget,
        mut batches: crate::BatchStream<'_>,
    ) -> Result<u64> {
        let engine = Engine::Postgres;
        let columns = target.column_list(engine);
        // An upsert stages rows in a temporary table, then merges them with ON CONFLICT.
        let stage = match target.upsert_keys {
            Some(_) => {
                let name = format!(
                    "ferry_stage_{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..12]
                );
                self.client
                    .batch_execute(&format!(
                        "CREATE TEMP TABLE {name} (LIKE {} INCLUDING DEFAULTS)",
                        target.qualified(engine)
                    ))
                    .await
                    .map_err(statement_error)?;
                Some(name)
            }
            None => None,
        };
        let into = stage.clone().unwrap_or_else(|| target.qualified(engine));
        // Binary COPY when every target column has a binary encoding; text otherwise.
        let probe = self
            .client
            .prepare(&format!(
                "SELECT {columns} FROM {} LIMIT 0",
                target.qualified(engine)
            ))
            .await
            .map_err(statement_error)?;
        let binary: Option<Vec<arrow::datatypes::DataType>> = probe
            .columns()
            .iter()
            .map(|c| crate::pg_binary::arrow_for(c.type_(), c.type_modifier()))
            .collect();
        drop(probe);
        let format = if binary.is_some() {
            " (FORMAT binary)"
        } else {
            ""
        };
        let sink = self
            .client
            .copy_in::<_, bytes::Bytes>(&format!("COPY {into} ({columns}) FROM STDIN{format}"))
            .await
            .map_err(statement_error)?;
        futures::pin_mut!(sink);
        let encoder =
            binary.map(|types| crate::pg_binary::BinaryEncoder::new(types, target.columns.clone()));
        if encoder.is_some() {
            futures::SinkExt::send(
                &mut sink,
                bytes::Bytes::from_static(crate::pg_binary::HEADER),
            )
            .await
            .map_err(statement_error)?;
        }
        while let Some(batch) = batches.next().await {
            let chunk = match &encoder {
                Some(e) => {
                    let mut buf = bytes::BytesMut::with_capacity(1 << 20);
                    e.encode(&batch?, &mut buf)?;
                    buf.freeze()
                }
                None => bytes::Bytes::from(crate::write::copy_text(&batch?, &target.columns)?),
            };
            futures::SinkExt::send(&mut sink, chunk)
                .await
                .map_err(statement_error)?;
        }
        if encoder.is_some() {
            futures::SinkExt::send(
                &mut sink,
                bytes::Bytes::from_static(crate::pg_binary::TRAILER),
            )
            .await
            .map_err(statement_error)?;
        }
        let copied = sink.finish().await.map_err(statement_error)?;
        let Some(stage) = stage else {
            return Ok(copied);
        };
        let merged = self
            .client
            .execute(
                &format!(
                    "INSERT INTO {} ({columns}) SELECT {columns} FROM {stage}{}",
                    target.qualified(engine),
                    crate::write::upsert_clause(engine, target)
                ),
                &[],
            )
            .await
            .map_err(statement_error);
        let _ = self
            .client
            .batch_execute(&format!("DROP TABLE IF EXISTS {stage}"))
            .await;
        merged.map(|_| copied)
    }

    async fn databases(&mut self) -> Result<Vec<String>> {
        let rows = query_strings(
            self,
            "select datname from pg_database where not datistemplate and datallowconn order by 1",
        )
        .await?;
        Ok(rows.into_iter().filter_map(|mut r| r.remove(0)).collect())
    }

    async fn tables(&mut self) -> Result<Vec<TableInfo>> {
        let rows = query_strings(
            self,
            "select n.nspname, c.relname, \
               case c.relkind when 'v' then 'view' when 'm' then 'materialized view' when 'f' then 'foreign table' else 'table' end, \
               case when c.reltuples < 0 then null else c.reltuples::int8 end, pg_total_relation_size(c.oid) \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where c.relkind in ('r','p','v','m','f') and n.nspname not in ('pg_catalog','information_schema') \
               and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%' \
             order by 1, 2",
        )
        .await?;
        Ok(rows.into_iter().map(crate::table_info).collect())
    }

    async fn table(&mut self, schema: Option<&str>, name: &str) -> Result<TableDetail> {
        let filter = match schema {
            Some(s) => format!(
                "n.nspname = {} and c.relname = {}",
                literal(s),
                literal(name)
            ),
            None => format!(
                "c.relname = {} and pg_table_is_visible(c.oid)",
                literal(name)
            ),
        };
        let found = query_strings(
            self,
            &format!("select c.oid::int8, n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where {filter} and c.relkind in ('r','p','v','m','f') limit 1"),
        )
        .await?;
        let Some(row) = found.into_iter().next() else {
            return Err(Error::NotFound(format!(
                "table {} not found; list tables with `ferry schema INSTANCE`",
                qualified(schema, name)
            )));
        };
        let oid = row[0].clone().unwrap_or_default();
        let columns = query_strings(
            self,
            &format!(
                "select a.attname, format_type(a.atttypid, a.atttypmod), (not a.attnotnull)::text, pg_get_expr(d.adbin, d.adrelid), a.atttypid::int8, a.atttypmod \
                 from pg_attribute a left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum \
                 where a.attrelid = {oid} and a.attnum > 0 and not a.attisdropped order by a.attnum"
            ),
        )
        .await?;
        let indexes = query_strings(
            self,
            &format!(
                "select i.relname, ix.indisunique::text, ix.indisprimary::text, \
                   array_to_string(array(select pg_get_indexdef(ix.indexrelid, k + 1, true) from generate_series(0, ix.indnkeyatts - 1) k order by k), ',') \
                 from pg_index ix join pg_class i on i.oid = ix.indexrelid where ix.indrelid = {oid} order by 1"
            ),
        )
        .await?;
        let mut primary_key = Vec::new();
        let indexes = indexes
            .into_iter()
            .map(|r| {
                let cols: Vec<String> = r[3]
                    .clone()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::to_string)
                    .collect();
                if r[2].as_deref() == Some("true") {
                    primary_key = cols.clone();
                }
                IndexInfo {
                    name: r[0].clone().unwrap_or_default(),
                    columns: cols,
                    unique: r[1].as_deref() == Some("true"),
                }
            })
            .collect();
        Ok(TableDetail {
            schema: row[1].clone(),
            name: name.to_string(),
            columns: columns
                .into_iter()
                .map(|r| {
                    let oid: u32 = r[4].as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
                    let typmod: i32 = r[5].as_deref().and_then(|v| v.parse().ok()).unwrap_or(-1);
                    let ty = Type::from_oid(oid).unwrap_or(Type::UNKNOWN);
                    ColumnInfo {
                        name: r[0].clone().unwrap_or_default(),
                        data_type: r[1].clone().unwrap_or_default(),
                        arrow_type: arrow_type(&ty, typmod).to_string(),
                        nullable: r[2].as_deref() == Some("true"),
                        default: r[3].clone(),
                    }
                })
                .collect(),
            primary_key,
            indexes,
        })
    }

    async fn server_sessions(&mut self) -> Result<Vec<ServerSession>> {
        let rows = query_strings(
            self,
            "select pid, usename, datname, coalesce(client_addr::text, 'local'), state, query, \
               extract(epoch from now() - coalesce(query_start, backend_start))::float8 \
             from pg_stat_activity where backend_type = 'client backend' order by pid",
        )
        .await?;
        Ok(rows.into_iter().map(session_from_row).collect())
    }

    async fn kill_server_session(&mut self, id: i64) -> Result<()> {
        let rows = query_strings(self, &format!("select pg_terminate_backend({id})::text")).await?;
        match rows.first().and_then(|r| r[0].as_deref()) {
            Some("true") => Ok(()),
            _ => Err(Error::NotFound(format!(
                "no PostgreSQL session with pid {id}"
            ))),
        }
    }

    fn server_session_id(&self) -> Option<i64> {
        Some(self.pid as i64)
    }

    fn engine(&self) -> Engine {
        Engine::Postgres
    }
}

pub(crate) fn session_from_row(r: Vec<Option<String>>) -> ServerSession {
    ServerSession {
        id: r[0]
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default(),
        user: r[1].clone(),
        database: r[2].clone(),
        client: r[3].clone(),
        state: r[4].clone(),
        query: r[5].clone(),
        running_secs: r[6].as_deref().and_then(|v| v.parse().ok()),
    }
}

/// Whether a statement is a plain query that `COPY (…) TO STDOUT` can run.
fn copyable(sql: &str) -> bool {
    let words = script::leading_keywords(Engine::Postgres, sql, 1);
    matches!(
        words.first().map(String::as_str),
        Some("SELECT" | "VALUES" | "TABLE" | "WITH")
    )
}

/// Record batches from COPY's text format: one row per message, tab-separated, `\N` for NULL,
/// backslash escapes in values.
fn copy_batches(
    schema: arrow::datatypes::SchemaRef,
    rows: tokio_postgres::CopyOutStream,
) -> StatementOutput<'static> {
    let width = schema.fields().len();
    let mut builder = TextBatchBuilder::new(schema.clone(), BinaryText::PgHex);
    let mut scratch = Vec::new();
    let rows = rows.map(|r| r.map_err(statement_error));
    let batches = crate::batching::batches(rows, move |row: Option<bytes::Bytes>| match row {
        Some(line) => {
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let mut fields = line.split(|b| *b == b'\t');
            for i in 0..width {
                match fields.next() {
                    None | Some(b"\\N") => builder.append(i, None),
                    Some(field) if field.contains(&b'\\') => {
                        unescape_copy(field, &mut scratch);
                        builder.append(i, Some(&scratch));
                    }
                    Some(field) => builder.append(i, Some(field)),
                }
            }
            builder.end_row();
            (builder.rows() >= BATCH_ROWS).then(|| builder.finish())
        }
        None => (builder.rows() > 0).then(|| builder.finish()),
    });
    StatementOutput::Rows { schema, batches }
}

/// Undoes COPY text escapes (`\\`, `\t`, `\n`, `\r`, `\b`, `\f`, `\v`, octal `\NNN`, hex `\xHH`).
fn unescape_copy(field: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0;
    while i < field.len() {
        let c = field[i];
        if c != b'\\' || i + 1 == field.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let e = field[i + 1];
        i += 2;
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                let mut n = 1;
                while n < 3 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                    v = v * 8 + u32::from(field[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            b'x' if i < field.len() && field[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                    v = v * 16 + (field[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
}

/// A SQL string literal with quotes doubled (standard_conforming_strings is on since 9.1).
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(crate) fn qualified(schema: Option<&str>, name: &str) -> String {
    match schema {
        Some(s) => format!("\"{s}\".\"{name}\""),
        None => format!("\"{name}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_escapes_are_undone() {
        let mut out = Vec::new();
        for (field, expected) in [
            (&b"a\\tb"[..], &b"a\tb"[..]),
            (b"line\\nnext", b"line\nnext"),
            (b"back\\\\slash", b"back\\slash"),
            (b"\\\\x0102", b"\\x0102"),
            (b"oct\\101", b"octA"),
            (b"hex\\x41", b"hexA"),
        ] {
            unescape_copy(field, &mut out);
            assert_eq!(out, expected, "{}", String::from_utf8_lossy(field));
        }
    }

    #[test]
    fn only_queries_go_through_copy() {
        assert!(copyable("select 1"));
        assert!(copyable("  WITH x AS (select 1) select * from x"));
        assert!(copyable("values (1)"));
        assert!(!copyable("show timezone"));
        assert!(!copyable("explain select 1"));
        assert!(!copyable("insert into t values (1) returning *"));
    }
}

//! Classifies SQL statements and Redis commands by the privilege they need: read, write, DDL,
//! DCL, admin, or unknown. Unparseable or unrecognised text counts as the most privileged
//! class, and writes hidden inside reads (data-modifying CTEs, `SELECT INTO`, `EXPLAIN ANALYZE`,
//! side-effecting functions, MySQL executable comments) raise the class of their statement.

use std::collections::HashSet;
use std::ops::ControlFlow;

use ferry_core::Engine;
use serde::{Deserialize, Serialize};
use sqlparser::ast::{
    AlterTableOperation, ContextModifier, CopyTarget, DiscardObject, Expr, ObjectName, ObjectType,
    Query, Reset, ResetStatement, Select, Set, SetExpr, Statement, TableFactor, Visit, Visitor,
};
use sqlparser::tokenizer::Token;

use crate::sql::{last_part_lower, leading_words, name_parts, parse, split_statements, tokens};

/// What a statement may do, ordered from least to most privileged. `Unknown` (unparseable or
/// unrecognised) is treated as the most privileged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatementClass {
    /// Reads data or session state; includes transaction control and session `SET`.
    Read,
    /// Changes rows (INSERT, UPDATE, DELETE, MERGE, COPY FROM STDIN, sequences…).
    Write,
    /// Changes the schema (CREATE, ALTER, DROP, TRUNCATE, `SELECT INTO` a new table…).
    Ddl,
    /// Changes who may do what (GRANT, REVOKE, users, roles, passwords).
    Dcl,
    /// Acts on the server (KILL, server files and programs, VACUUM, global settings…).
    Admin,
    /// Could not be parsed or is not recognised.
    Unknown,
}

impl StatementClass {
    /// The lower-case name, as in rules and API payloads.
    pub fn as_str(&self) -> &'static str {
        match self {
            StatementClass::Read => "read",
            StatementClass::Write => "write",
            StatementClass::Ddl => "ddl",
            StatementClass::Dcl => "dcl",
            StatementClass::Admin => "admin",
            StatementClass::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for StatementClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One classified statement of a script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classified {
    /// The statement's text, trimmed.
    pub text: String,
    /// What the statement may do.
    pub class: StatementClass,
    /// The statement's kind in upper case: `SELECT`, `DELETE`, `CREATE TABLE`, `SET`, `BEGIN`,
    /// a Redis command such as `GET`.
    pub kind: String,
    /// Why the class is above what the leading keyword suggests, e.g. `calls
    /// pg_terminate_backend`, `data-modifying CTE (DELETE)`, `could not be parsed: …`.
    pub reasons: Vec<String>,
    /// An UPDATE or DELETE (possibly nested) without a WHERE clause.
    pub where_missing: bool,
    /// Tables the statement names, as written (dotted), best effort.
    pub tables: Vec<String>,
    /// A DROP, TRUNCATE, `ALTER TABLE … DROP COLUMN` or Redis FLUSHDB/FLUSHALL.
    pub is_drop_or_truncate: bool,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, START/SET TRANSACTION…: classified `Read` so a
    /// reader can use transactions.
    pub transaction_control: bool,
}

/// Classifies every statement of a script on its own, so a write after a read shows up as a
/// write. The whole script is parsed at once; if that fails, each top-level statement is parsed
/// separately, and only the ones that fail are `Unknown`. Redis scripts are read line by line.
pub fn classify_script(engine: Engine, script: &str) -> Vec<Classified> {
    crate::sql::with_big_stack(|| classify_script_here(engine, script))
}

fn classify_script_here(engine: Engine, script: &str) -> Vec<Classified> {
    if engine == Engine::Redis {
        return script
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(classify_redis)
            .collect();
    }
    let pieces = split_statements(engine, script);
    match parse(engine, script) {
        Ok(statements) if statements.len() == pieces.len() => pieces
            .iter()
            .zip(&statements)
            .map(|(text, statement)| classify_piece(engine, text, Some(statement)))
            .collect(),
        // Compound statements (procedure bodies) hold semicolons of their own: classify what
        // the parser saw, by its rendering, and keep executable comments in view.
        Ok(statements) if !statements.is_empty() => statements
            .iter()
            .map(|statement| {
                let mut c = classify_piece(engine, &statement.to_string(), Some(statement));
                if engine == Engine::Mysql && has_executable_comment(script) {
                    mark_executable_comment(&mut c);
                }
                c
            })
            .collect(),
        _ => pieces
            .iter()
            .map(|text| classify_piece(engine, text, None))
            .collect(),
    }
}

/// Classifies one Redis command line by its first word, case-insensitively.
pub fn classify_redis(command_line: &str) -> Classified {
    let text = command_line.trim();
    let mut words = text.split_whitespace().map(str::to_ascii_uppercase);
    let command = words.next().unwrap_or_default();
    let sub = words.next().unwrap_or_default();
    let mut c = Classified::new(text, StatementClass::Unknown, command.clone());
    c.class = match command.as_str() {
        "MEMORY" if sub == "USAGE" => {
            c.kind = "MEMORY USAGE".into();
            StatementClass::Read
        }
        "MULTI" | "EXEC" | "DISCARD" | "WATCH" | "UNWATCH" => {
            c.transaction_control = true;
            StatementClass::Read
        }
        "FLUSHDB" | "FLUSHALL" => {
            c.is_drop_or_truncate = true;
            StatementClass::Ddl
        }
        "ACL" => StatementClass::Dcl,
        "EVAL" | "EVAL_RO" | "EVALSHA" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => {
            c.reasons
                .push("runs a server-side script, which may write".into());
            StatementClass::Unknown
        }
        c_ if REDIS_READ.contains(&c_) => StatementClass::Read,
        c_ if REDIS_WRITE.contains(&c_) => StatementClass::Write,
        c_ if REDIS_ADMIN.contains(&c_) => StatementClass::Admin,
        "" => {
            c.reasons.push("empty command".into());
            StatementClass::Unknown
        }
        other => {
            c.reasons
                .push(format!("unrecognised Redis command {other}"));
            StatementClass::Unknown
        }
    };
    c
}

#[rustfmt::skip]
const REDIS_READ: &[&str] = &[
    "GET", "MGET", "HGET", "HGETALL", "HMGET", "HKEYS", "HVALS", "HLEN", "HEXISTS", "HSTRLEN",
    "HRANDFIELD", "LRANGE", "LLEN", "LINDEX", "LPOS", "SMEMBERS", "SISMEMBER", "SMISMEMBER",
    "SCARD", "SRANDMEMBER", "SINTER", "SUNION", "SDIFF", "SINTERCARD", "ZRANGE", "ZRANGEBYSCORE",
    "ZRANGEBYLEX", "ZREVRANGE", "ZREVRANGEBYSCORE", "ZREVRANGEBYLEX", "ZSCORE", "ZMSCORE", "ZCARD",
    "ZCOUNT", "ZLEXCOUNT", "ZRANK", "ZREVRANK", "ZRANDMEMBER", "ZINTER", "ZUNION", "ZDIFF",
    "ZINTERCARD", "EXISTS", "TYPE", "TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME", "STRLEN", "SCAN",
    "HSCAN", "SSCAN", "ZSCAN", "KEYS", "DBSIZE", "INFO", "PING", "ECHO", "TIME", "XRANGE",
    "XREVRANGE", "XLEN", "XREAD", "XINFO", "XPENDING", "GETRANGE", "SUBSTR", "GETBIT", "BITCOUNT",
    "BITPOS", "PFCOUNT", "OBJECT", "DUMP", "RANDOMKEY", "SELECT", "LCS", "TOUCH", "GEOPOS",
    "GEODIST", "GEOHASH", "GEOSEARCH", "GEORADIUS_RO", "GEORADIUSBYMEMBER_RO", "LASTSAVE", "ROLE",
    "COMMAND", "SORT_RO",
];

#[rustfmt::skip]
const REDIS_WRITE: &[&str] = &[
    "SET", "DEL", "UNLINK", "EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT", "PERSIST", "INCR",
    "INCRBY", "INCRBYFLOAT", "DECR", "DECRBY", "APPEND", "HSET", "HSETNX", "HMSET", "HDEL",
    "HINCRBY", "HINCRBYFLOAT", "LPUSH", "LPUSHX", "RPUSH", "RPUSHX", "LPOP", "RPOP", "LSET", "LREM",
    "LTRIM", "LINSERT", "LMOVE", "BLMOVE", "LMPOP", "BLMPOP", "RPOPLPUSH", "BRPOPLPUSH", "BLPOP",
    "BRPOP", "SADD", "SREM", "SPOP", "SMOVE", "SINTERSTORE", "SUNIONSTORE", "SDIFFSTORE", "ZADD",
    "ZREM", "ZINCRBY", "ZPOPMIN", "ZPOPMAX", "BZPOPMIN", "BZPOPMAX", "ZMPOP", "BZMPOP",
    "ZREMRANGEBYSCORE", "ZREMRANGEBYRANK", "ZREMRANGEBYLEX", "ZUNIONSTORE", "ZINTERSTORE",
    "ZDIFFSTORE", "ZRANGESTORE", "XADD", "XDEL", "XTRIM", "XACK", "XCLAIM", "XAUTOCLAIM", "XGROUP",
    "XREADGROUP", "XSETID", "RENAME", "RENAMENX", "MSET", "MSETNX", "SETEX", "PSETEX", "SETNX",
    "GETSET", "GETDEL", "GETEX", "COPY", "RESTORE", "PFADD", "PFMERGE", "SETRANGE", "SETBIT",
    "BITOP", "BITFIELD", "MOVE", "GEOADD", "GEORADIUS", "GEORADIUSBYMEMBER", "GEOSEARCHSTORE",
    "SORT", "PUBLISH", "SPUBLISH",
];

#[rustfmt::skip]
const REDIS_ADMIN: &[&str] = &[
    "CONFIG", "CLIENT", "SHUTDOWN", "DEBUG", "SAVE", "BGSAVE", "BGREWRITEAOF", "SLAVEOF",
    "REPLICAOF", "MODULE", "SCRIPT", "FUNCTION", "MONITOR", "SLOWLOG", "CLUSTER", "FAILOVER",
    "MEMORY", "SWAPDB", "LATENCY", "SYNC", "PSYNC", "MIGRATE", "LOLWUT",
];

impl Classified {
    fn new(text: &str, class: StatementClass, kind: String) -> Self {
        Classified {
            text: text.trim().to_string(),
            class,
            kind,
            reasons: Vec::new(),
            where_missing: false,
            tables: Vec::new(),
            is_drop_or_truncate: false,
            transaction_control: false,
        }
    }

    /// Raises the class to at least `class`, recording why.
    fn raise(&mut self, class: StatementClass, reason: String) {
        self.class = self.class.max(class);
        if !self.reasons.contains(&reason) {
            self.reasons.push(reason);
        }
    }
}

/// Classifies one statement's text; `statement` is its parse from the whole script, if any.
fn classify_piece(engine: Engine, text: &str, statement: Option<&Statement>) -> Classified {
    let words = leading_words(engine, text, 8);
    if engine == Engine::Mysql && has_executable_comment(text) {
        let mut c = Classified::new(text, StatementClass::Unknown, kind_from_words(&words));
        mark_executable_comment(&mut c);
        return c;
    }
    if engine == Engine::Sqlite && words.first().is_some_and(|w| w == "PRAGMA") {
        return classify_pragma(text);
    }
    let owned;
    let statement = match statement {
        Some(s) => s,
        None => match parse(engine, text) {
            Ok(mut statements) if statements.len() == 1 => {
                owned = statements.remove(0);
                &owned
            }
            Ok(_) => {
                let mut c = Classified::new(text, StatementClass::Unknown, kind_from_words(&words));
                c.reasons
                    .push("could not be read as exactly one statement".into());
                return c;
            }
            Err(message) => {
                let mut c = Classified::new(text, StatementClass::Unknown, kind_from_words(&words));
                c.reasons.push(format!("could not be parsed: {message}"));
                if engine == Engine::Mysql && writes_server_file(&words) {
                    c.reasons
                        .push("writes a server file with INTO OUTFILE".into());
                }
                return c;
            }
        },
    };
    classify_statement(engine, text, statement, &words)
}

fn mark_executable_comment(c: &mut Classified) {
    c.raise(
        StatementClass::Unknown,
        "MySQL executable comment: the server runs the text inside /*! … */".into(),
    );
}

fn classify_statement(
    engine: Engine,
    text: &str,
    statement: &Statement,
    words: &[String],
) -> Classified {
    let kind = match statement {
        Statement::Query(q) => query_kind(q),
        _ => kind_from_words(words),
    };
    let mut c = Classified::new(text, StatementClass::Read, kind);
    let walk = base_class(engine, statement, &mut c);
    if walk {
        let mut inspector = Inspector {
            engine,
            classified: &mut c,
            depth: 0,
            cte_statements: HashSet::new(),
            cte_names: HashSet::new(),
            tables: Vec::new(),
        };
        let _ = statement.visit(&mut inspector);
        let Inspector {
            tables, cte_names, ..
        } = inspector;
        c.tables = tables
            .into_iter()
            .filter(|t| !cte_names.contains(&t.to_lowercase()))
            .collect();
    }
    c
}

/// Sets the class a statement has by its own kind (not what it contains) and the flags it
/// implies; returns whether its contents should be inspected too.
fn base_class(engine: Engine, statement: &Statement, c: &mut Classified) -> bool {
    use StatementClass::*;
    let class = match statement {
        Statement::Query(_) => Read,
        Statement::Insert(_) | Statement::Merge(_) => Write,
        Statement::Update(u) => {
            c.where_missing |= u.selection.is_none();
            Write
        }
        Statement::Delete(d) => {
            c.where_missing |= d.selection.is_none();
            Write
        }
        Statement::LoadData { .. } | Statement::LockTables { .. } | Statement::Lock(_) => Write,
        Statement::NOTIFY { .. } => Write,
        Statement::Copy { to, target, .. } => match target {
            CopyTarget::Program { .. } => {
                c.reasons
                    .push("runs a server program with COPY … PROGRAM".into());
                Admin
            }
            CopyTarget::File { .. } => {
                c.reasons
                    .push("reads or writes a server file with COPY".into());
                Admin
            }
            CopyTarget::Stdin | CopyTarget::Stdout if *to => Read,
            CopyTarget::Stdin | CopyTarget::Stdout => Write,
        },
        Statement::Explain {
            analyze,
            statement: inner,
            options,
            ..
        } => {
            let analyze = *analyze
                || options.as_ref().is_some_and(|opts| {
                    opts.iter()
                        .any(|o| o.name.value.eq_ignore_ascii_case("analyze"))
                });
            if !analyze {
                // A plan without execution: nothing inside runs.
                c.class = Read;
                return false;
            }
            let mut inner_c = classify_statement(engine, &inner.to_string(), inner, &[]);
            c.where_missing = inner_c.where_missing;
            c.tables = std::mem::take(&mut inner_c.tables);
            c.is_drop_or_truncate = inner_c.is_drop_or_truncate;
            c.class = inner_c.class;
            if inner_c.class > Read {
                c.reasons.push(format!(
                    "EXPLAIN ANALYZE runs the statement ({})",
                    inner_c.kind
                ));
            }
            c.reasons.extend(inner_c.reasons);
            return false;
        }
        Statement::ExplainTable { .. } => Read,
        Statement::ShowFunctions { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowProcessList { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowCharset(_)
        | Statement::ShowObjects(_)
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. } => Read,
        // These give back the session's own role, escaping a role set to restrict it.
        Statement::Reset(ResetStatement {
            reset: Reset::ALL, ..
        })
        | Statement::Discard {
            object_type: DiscardObject::ALL,
        } => Dcl,
        Statement::Reset(ResetStatement {
            reset: Reset::ConfigurationParameter(name),
        }) => {
            if SESSION_IDENTITY.contains(&name.to_string().to_lowercase().as_str()) {
                Dcl
            } else {
                Read
            }
        }
        Statement::Use(_)
        | Statement::Discard { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Declare { .. }
        | Statement::Deallocate { .. }
        | Statement::LISTEN { .. }
        | Statement::UNLISTEN { .. }
        | Statement::UnlockTables => Read,
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => {
            c.transaction_control = true;
            Read
        }
        Statement::Set(set) => set_class(set, c),
        Statement::Pragma { .. } => {
            c.reasons.push("PRAGMA outside SQLite".into());
            Unknown
        }
        Statement::Prepare {
            statement: inner, ..
        } => {
            // Preparing runs nothing, but EXECUTE will: the prepared statement's class counts.
            let mut inner_c = Classified::new("", Read, String::new());
            base_class(engine, inner, &mut inner_c);
            c.where_missing = inner_c.where_missing;
            c.reasons.extend(inner_c.reasons);
            inner_c.class
        }
        Statement::CreateView(_)
        | Statement::CreateTable(_)
        | Statement::CreateVirtualTable { .. }
        | Statement::CreateIndex(_)
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateFunction(_)
        | Statement::CreateTrigger(_)
        | Statement::CreateProcedure { .. }
        | Statement::CreateSequence { .. }
        | Statement::CreateDomain(_)
        | Statement::CreateType { .. }
        | Statement::CreateCollation(_)
        | Statement::CreateOperator(_)
        | Statement::CreateOperatorFamily(_)
        | Statement::CreateOperatorClass(_)
        | Statement::AlterSchema(_)
        | Statement::AlterIndex { .. }
        | Statement::AlterView { .. }
        | Statement::AlterFunction(_)
        | Statement::AlterType(_)
        | Statement::AlterCollation(_)
        | Statement::AlterOperator(_)
        | Statement::AlterOperatorFamily(_)
        | Statement::AlterOperatorClass(_)
        | Statement::RenameTable(_)
        | Statement::Comment { .. } => Ddl,
        Statement::AlterTable(alter) => {
            c.is_drop_or_truncate |= alter
                .operations
                .iter()
                .any(|op| matches!(op, AlterTableOperation::DropColumn { .. }));
            Ddl
        }
        Statement::Truncate(_) => {
            c.is_drop_or_truncate = true;
            Ddl
        }
        Statement::Drop { object_type, .. } => {
            c.is_drop_or_truncate = true;
            match object_type {
                ObjectType::Role | ObjectType::User => Dcl,
                _ => Ddl,
            }
        }
        Statement::DropFunction(_)
        | Statement::DropDomain(_)
        | Statement::DropProcedure { .. }
        | Statement::DropTrigger(_)
        | Statement::DropOperator(_)
        | Statement::DropOperatorFamily(_)
        | Statement::DropOperatorClass(_) => {
            c.is_drop_or_truncate = true;
            Ddl
        }
        Statement::Grant(_)
        | Statement::Revoke(_)
        | Statement::Deny(_)
        | Statement::CreateRole(_)
        | Statement::AlterRole { .. }
        | Statement::CreateUser(_)
        | Statement::AlterUser(_)
        | Statement::CreatePolicy(_)
        | Statement::AlterPolicy(_)
        | Statement::DropPolicy(_) => Dcl,
        Statement::Kill { .. }
        | Statement::Vacuum(_)
        | Statement::Analyze(_)
        | Statement::Flush { .. }
        | Statement::OptimizeTable { .. }
        | Statement::CreateServer(_)
        | Statement::AlterSession { .. } => Admin,
        Statement::AttachDatabase { .. }
        | Statement::AttachDuckDBDatabase { .. }
        | Statement::DetachDuckDBDatabase { .. } => {
            c.reasons
                .push("attaches or detaches a database file".into());
            Admin
        }
        Statement::Install { .. }
        | Statement::Load { .. }
        | Statement::CreateExtension(_)
        | Statement::DropExtension(_) => {
            c.reasons.push("installs or loads server code".into());
            Admin
        }
        Statement::Call(_) => {
            c.reasons
                .push("calls a procedure, which may do anything".into());
            Unknown
        }
        Statement::Execute { .. } => {
            c.reasons
                .push("executes a prepared or dynamic statement, which may do anything".into());
            Unknown
        }
        _ => {
            c.reasons.push("statement kind not recognised".into());
            Unknown
        }
    };
    c.class = c.class.max(class);
    true
}

fn set_class(set: &Set, c: &mut Classified) -> StatementClass {
    use StatementClass::*;
    let variable = |scope: Option<&ContextModifier>, name: &ObjectName, c: &mut Classified| {
        let name = name.to_string().to_lowercase();
        if matches!(scope, Some(ContextModifier::Global))
            || ["@@global.", "@@persist.", "@@persist_only."]
                .iter()
                .any(|p| name.starts_with(p))
        {
            c.reasons.push("sets a global server variable".into());
            Admin
        } else if name == "password" || SESSION_IDENTITY.contains(&name.as_str()) {
            Dcl
        } else if SAFETY_SETTINGS.contains(&name.as_str()) {
            c.reasons.push(format!("changes the safety setting {name}"));
            Admin
        } else {
            Read
        }
    };
    match set {
        Set::SingleAssignment {
            scope, variable: v, ..
        } => variable(scope.as_ref(), v, c),
        Set::ParenthesizedAssignments { variables, .. } => variables
            .iter()
            .map(|v| variable(None, v, c))
            .max()
            .unwrap_or(Read),
        Set::MultipleAssignments { assignments } => assignments
            .iter()
            .map(|a| variable(a.scope.as_ref(), &a.name, c))
            .max()
            .unwrap_or(Read),
        Set::SetSessionAuthorization(_) | Set::SetRole { .. } => Dcl,
        Set::SetTransaction { .. } => {
            c.transaction_control = true;
            Read
        }
        Set::SetTimeZone { .. }
        | Set::SetNames { .. }
        | Set::SetNamesDefault {}
        | Set::SetSessionParam(_) => Read,
        #[allow(unreachable_patterns)]
        _ => {
            c.reasons.push("SET form not recognised".into());
            Unknown
        }
    }
}

/// Settings that say who the session acts as.
const SESSION_IDENTITY: &[&str] = &["role", "session_authorization", "session authorization"];

/// Settings that guard against writes or keep changes out of logs and triggers.
const SAFETY_SETTINGS: &[&str] = &[
    "default_transaction_read_only",
    "transaction_read_only",
    "session_replication_role",
    "sql_log_bin",
    "sql_safe_updates",
];

/// Walks everything inside a statement: nested statements, queries, expressions and
/// relations, raising the class for what they do.
struct Inspector<'a> {
    engine: Engine,
    classified: &'a mut Classified,
    depth: usize,
    /// Statements that are the body of a CTE, to name them so in reasons.
    cte_statements: HashSet<*const Statement>,
    cte_names: HashSet<String>,
    tables: Vec<String>,
}

impl Visitor for Inspector<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        self.depth += 1;
        if self.depth > 1 {
            let mut nested = Classified::new("", StatementClass::Read, String::new());
            base_class(self.engine, statement, &mut nested);
            self.classified.where_missing |= nested.where_missing;
            self.classified.is_drop_or_truncate |= nested.is_drop_or_truncate;
            if nested.class > StatementClass::Read {
                let what = statement_kind(statement);
                let reason = if self.cte_statements.contains(&(statement as *const _)) {
                    format!("data-modifying CTE ({what})")
                } else {
                    format!("nested data-modifying statement ({what})")
                };
                self.classified.raise(nested.class, reason);
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _statement: &Statement) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.cte_names.insert(cte.alias.name.value.to_lowercase());
                if let SetExpr::Insert(s)
                | SetExpr::Update(s)
                | SetExpr::Delete(s)
                | SetExpr::Merge(s) = cte.query.body.as_ref()
                {
                    self.cte_statements.insert(s as *const _);
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if select.into.is_some() && self.engine != Engine::Mysql {
            // MySQL's SELECT … INTO fills variables; elsewhere it creates a table.
            self.classified
                .raise(StatementClass::Ddl, "SELECT INTO creates a table".into());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            self.check_function(&f.name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => self.check_function(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        let name = name_parts(relation).join(".");
        if !self.tables.contains(&name) {
            self.tables.push(name);
        }
        ControlFlow::Continue(())
    }
}

impl Inspector<'_> {
    fn check_function(&mut self, name: &ObjectName) {
        let own = last_part_lower(name);
        if let Some((class, why)) = dangerous_function(&own) {
            self.classified.raise(class, format!("calls {own} ({why})"));
        }
    }
}

/// Functions with effects beyond reading data, by lower-case name, with the class they imply.
fn dangerous_function(name: &str) -> Option<(StatementClass, &'static str)> {
    use StatementClass::*;
    let found = match name {
        "pg_terminate_backend" | "pg_cancel_backend" => (Admin, "stops another session's work"),
        "pg_reload_conf"
        | "pg_rotate_logfile"
        | "pg_promote"
        | "pg_switch_wal"
        | "pg_create_restore_point"
        | "pg_backup_start"
        | "pg_backup_stop"
        | "pg_start_backup"
        | "pg_stop_backup"
        | "pg_log_backend_memory_contexts"
        | "pg_import_system_collations"
        | "pg_drop_replication_slot"
        | "pg_create_physical_replication_slot"
        | "pg_create_logical_replication_slot"
        | "pg_replication_origin_create"
        | "pg_replication_origin_drop" => (Admin, "acts on the server"),
        "set_config" => (Admin, "changes a server setting"),
        "pg_read_file"
        | "pg_read_binary_file"
        | "pg_ls_dir"
        | "pg_stat_file"
        | "pg_ls_logdir"
        | "pg_ls_waldir"
        | "pg_ls_tmpdir"
        | "pg_ls_archive_statusdir"
        | "pg_file_write"
        | "pg_file_rename"
        | "pg_file_unlink"
        | "pg_file_sync"
        | "lo_import"
        | "lo_export"
        | "load_file"
        | "readfile"
        | "writefile"
        | "edit"
        | "fsdir"
        | "zipfile" => (Admin, "reads or writes server files"),
        "load_extension" | "fts3_tokenizer" | "sys_exec" | "sys_eval" => {
            (Admin, "runs server code")
        }
        "query_to_xml" | "query_to_xml_and_xmlschema" | "query_to_xmlschema" | "cursor_to_xml" => {
            (Admin, "runs SQL given as text")
        }
        "lo_unlink" | "lo_create" | "lo_creat" | "lo_from_bytea" | "lo_put" | "lo_truncate" => {
            (Write, "changes a large object")
        }
        "nextval" | "setval" => (Write, "changes a sequence"),
        n if n.starts_with("dblink") => (Admin, "runs SQL on another server"),
        n if n.starts_with("pg_stat_reset") || n.starts_with("pg_stat_statements_reset") => {
            (Admin, "resets server statistics")
        }
        _ => return None,
    };
    Some(found)
}

fn query_kind(query: &Query) -> String {
    match query.body.as_ref() {
        SetExpr::Values(_) => "VALUES".into(),
        SetExpr::Table(_) => "TABLE".into(),
        SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
            statement_kind(s)
        }
        _ => "SELECT".into(),
    }
}

/// A nested statement's kind, from its rendering.
fn statement_kind(statement: &Statement) -> String {
    let rendered = statement.to_string();
    let words: Vec<String> = rendered
        .split_whitespace()
        .take(8)
        .map(str::to_ascii_uppercase)
        .collect();
    kind_from_words(&words)
}

/// The kind from a statement's leading words: one word, two for CREATE/ALTER/DROP and a few
/// others (`CREATE TABLE`, `START TRANSACTION`, `LOAD DATA`).
fn kind_from_words(words: &[String]) -> String {
    const MODIFIERS: &[&str] = &[
        "OR",
        "REPLACE",
        "TEMP",
        "TEMPORARY",
        "UNIQUE",
        "GLOBAL",
        "LOCAL",
        "UNLOGGED",
        "EXTERNAL",
        "IF",
        "NOT",
        "EXISTS",
        "ONLINE",
        "IGNORE",
    ];
    let Some(first) = words.first() else {
        return String::new();
    };
    let next = |skip_modifiers: bool| {
        words[1..]
            .iter()
            .find(|w| !skip_modifiers || !MODIFIERS.contains(&w.as_str()))
            .map(|w| format!("{first} {w}"))
            .unwrap_or_else(|| first.clone())
    };
    match first.as_str() {
        "CREATE" | "ALTER" | "DROP" => next(true),
        "START" | "COMMENT" | "LOAD" | "LOCK" | "UNLOCK" | "RENAME" => next(false),
        "SET"
            if words.get(1).is_some_and(|w| {
                ["TRANSACTION", "ROLE", "PASSWORD", "GLOBAL", "PERSIST"].contains(&w.as_str())
            }) =>
        {
            next(false)
        }
        _ => first.clone(),
    }
}

/// Whether a MySQL statement's words hold `INTO OUTFILE` or `INTO DUMPFILE`.
fn writes_server_file(words: &[String]) -> bool {
    words
        .windows(2)
        .any(|w| w[0] == "INTO" && (w[1] == "OUTFILE" || w[1] == "DUMPFILE"))
}

/// Whether MySQL text holds an executable comment (`/*! … */`, MariaDB's `/*M! … */`) outside
/// string literals. Checked both with and without backslash escapes, since the server's
/// `NO_BACKSLASH_ESCAPES` mode decides where a literal ends.
fn has_executable_comment(sql: &str) -> bool {
    scan_executable_comment(sql, true) || scan_executable_comment(sql, false)
}

fn scan_executable_comment(sql: &str, backslash_escapes: bool) -> bool {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < b.len() {
                    if b[i] == b'\\' && backslash_escapes && q != b'`' {
                        i += 2;
                    } else if b[i] == q {
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                        } else {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                i += 1;
            }
            b'#' => i = line_end(b, i),
            b'-' if b.get(i + 1) == Some(&b'-')
                && b.get(i + 2).is_none_or(|c| c.is_ascii_whitespace()) =>
            {
                i = line_end(b, i)
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let rest = &b[i + 2..];
                if rest.starts_with(b"!") || rest.starts_with(b"M!") {
                    return true;
                }
                i = match rest.windows(2).position(|w| w == b"*/") {
                    Some(p) => i + 2 + p + 2,
                    None => b.len(),
                };
            }
            _ => i += 1,
        }
    }
    false
}

fn line_end(b: &[u8], from: usize) -> usize {
    b[from..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |p| from + p + 1)
}

/// SQLite `PRAGMA`, read from tokens because the parser does not take every form:
/// `PRAGMA name` and `PRAGMA name(arg)` of the introspection pragmas read; setting one
/// (`= value`, or `(value)` for the others) or running a maintenance pragma is admin.
fn classify_pragma(text: &str) -> Classified {
    const READ_WITH_ARGUMENT: &[&str] = &[
        "table_info",
        "table_xinfo",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
        "table_list",
    ];
    const ACTING: &[&str] = &[
        "optimize",
        "shrink_memory",
        "wal_checkpoint",
        "incremental_vacuum",
    ];
    let mut c = Classified::new(text, StatementClass::Unknown, "PRAGMA".into());
    let Some(tokens) = tokens(Engine::Sqlite, text) else {
        c.reasons
            .push("could not be parsed: unreadable PRAGMA".into());
        return c;
    };
    let significant: Vec<&Token> = tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF | Token::SemiColon))
        .collect();
    let word = |t: &Token| match t {
        Token::Word(w) => Some(w.value.to_lowercase()),
        _ => None,
    };
    // PRAGMA [schema .] name …
    let (name, rest) = match significant.as_slice() {
        [_, schema, Token::Period, name, rest @ ..] if word(schema).is_some() => (word(name), rest),
        [_, name, rest @ ..] => (word(name), rest),
        _ => (None, &[][..]),
    };
    let Some(name) = name else {
        c.reasons
            .push("could not be parsed: PRAGMA without a name".into());
        return c;
    };
    let simple_value = |t: &Token| {
        matches!(
            t,
            Token::Word(_)
                | Token::Number(_, _)
                | Token::SingleQuotedString(_)
                | Token::DoubleQuotedString(_)
        )
    };
    c.class = match rest {
        [] if ACTING.contains(&name.as_str()) => StatementClass::Admin,
        [] => StatementClass::Read,
        [Token::LParen, v, Token::RParen] if simple_value(v) => {
            if READ_WITH_ARGUMENT.contains(&name.as_str()) {
                StatementClass::Read
            } else {
                c.reasons.push(format!("sets PRAGMA {name}"));
                StatementClass::Admin
            }
        }
        [Token::Eq, v] | [Token::Eq, Token::Minus, v] if simple_value(v) => {
            c.reasons.push(format!("sets PRAGMA {name}"));
            StatementClass::Admin
        }
        _ => {
            c.reasons
                .push("could not be parsed: PRAGMA form not recognised".into());
            StatementClass::Unknown
        }
    };
    c
}

#[cfg(test)]
mod tests;

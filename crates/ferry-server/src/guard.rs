//! Statement admission: every statement that reaches a database through Ferry (console, SQL
//! windows, async queries, exports, copies, flows) is classified in its engine's dialect,
//! checked against the caller's grants and the instance's SQL rules, given a masking plan,
//! and written to the audit log with its outcome. A script is checked whole before its first
//! statement runs.

use std::time::Duration;

use ferry_connect::Connection;
use ferry_core::{Engine, Error, Result};
use ferry_guard::{Classified, ColumnInfo, MaskAlgorithm, MaskPlan, Masker, StatementClass};
use ferry_meta::{AuditRecord, MaskRuleRecord, now_ms};

use crate::SharedState;
use crate::rbac::{Caller, Permission, Resource};

/// The SQL rules, their meaning and their defaults on `prod` instances.
pub const RULES: &[(&str, &str, Option<&str>)] = &[
    (
        "max-rows",
        "the most rows one statement may return to a user",
        None,
    ),
    (
        "require-where",
        "UPDATE and DELETE need a WHERE clause",
        Some("true"),
    ),
    (
        "max-affected-rows",
        "the most rows one UPDATE/DELETE/INSERT may change (more rolls it back)",
        None,
    ),
    ("no-drop", "no DROP or TRUNCATE", Some("true")),
    (
        "ddl-approval",
        "DDL runs only after another dba or admin approved it",
        Some("true"),
    ),
];

/// The rules in force on one instance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    pub max_rows: Option<u64>,
    pub require_where: bool,
    pub max_affected_rows: Option<u64>,
    pub no_drop: bool,
    pub ddl_approval: bool,
}

/// Checks a rule's value, naming the rule and what it takes.
pub fn check_rule(rule: &str, value: &str) -> Result<()> {
    match rule {
        "max-rows" | "max-affected-rows" => value.parse::<u64>().map(|_| ()).map_err(|_| {
            Error::InvalidInput(format!(
                "rule {rule} takes a whole number of rows, not \"{value}\""
            ))
        }),
        "require-where" | "no-drop" | "ddl-approval" => {
            value.parse::<bool>().map(|_| ()).map_err(|_| {
                Error::InvalidInput(format!("rule {rule} takes true or false, not \"{value}\""))
            })
        }
        other => Err(Error::InvalidInput(format!(
            "unknown SQL rule \"{other}\": use one of {}",
            RULES.iter().map(|r| r.0).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Checks a rule scope (`env:NAME` or `instance:NAME`).
pub fn check_scope(scope: &str) -> Result<()> {
    match scope.split_once(':') {
        Some(("env" | "instance", name)) if !name.is_empty() => Ok(()),
        _ => Err(Error::InvalidInput(format!(
            "invalid rule scope \"{scope}\": use env:NAME (env:prod) or instance:NAME"
        ))),
    }
}

/// SQL rules, masking rules and instance environments, read from the store at most once a
/// second per node (every statement needs them); changes made through this node are seen at
/// once, changes through another node within a second.
#[derive(Default)]
pub struct PolicyCache {
    current: std::sync::Mutex<Option<(std::time::Instant, std::sync::Arc<Policies>)>>,
}

/// A masking rule with its column pattern compiled once per reading, not per statement.
#[derive(Clone)]
pub struct MaskRule {
    pub record: MaskRuleRecord,
    /// For rules without a table: the column-name pattern (`None` if it does not compile; such
    /// rules are refused when saved, so this only guards older rows).
    pattern: Option<regex::Regex>,
}

impl MaskRule {
    fn new(record: MaskRuleRecord) -> MaskRule {
        let pattern = match record.table {
            None => name_pattern(&record.column).ok(),
            Some(_) => None,
        };
        MaskRule { record, pattern }
    }
}

/// One reading of the store's policies.
pub struct Policies {
    pub rules: Vec<ferry_meta::SqlRuleRecord>,
    pub masks: Vec<MaskRule>,
    pub environments: std::collections::HashMap<String, String>,
}

const POLICY_TTL: Duration = Duration::from_secs(1);

impl PolicyCache {
    pub async fn get(&self, state: &SharedState) -> Result<std::sync::Arc<Policies>> {
        if let Some((at, p)) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            && at.elapsed() < POLICY_TTL
        {
            return Ok(p.clone());
        }
        let fresh = std::sync::Arc::new(Policies {
            rules: state.meta.list_sql_rules().await?,
            masks: state
                .meta
                .list_mask_rules()
                .await?
                .into_iter()
                .map(MaskRule::new)
                .collect(),
            environments: state
                .meta
                .list_instances()
                .await?
                .into_iter()
                .map(|i| (i.name, i.environment))
                .collect(),
        });
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((std::time::Instant::now(), fresh.clone()));
        Ok(fresh)
    }

    /// Forgets the reading, after a change through this node.
    pub fn invalidate(&self) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// The rules of an instance: defaults for its environment, then `env:` settings, then
/// `instance:` settings, each overriding the one before.
pub async fn rules_for(state: &SharedState, instance: &str, environment: &str) -> Result<Rules> {
    let mut values: Vec<(String, String)> = if environment == "prod" {
        RULES
            .iter()
            .filter_map(|(r, _, d)| d.map(|d| (r.to_string(), d.to_string())))
            .collect()
    } else {
        vec![]
    };
    let policies = state.policies.get(state).await?;
    let stored = &policies.rules;
    for scope in [format!("env:{environment}"), format!("instance:{instance}")] {
        for r in stored.iter().filter(|r| r.scope == scope) {
            values.retain(|(k, _)| k != &r.rule);
            values.push((r.rule.clone(), r.value.clone()));
        }
    }
    let mut rules = Rules::default();
    for (k, v) in values {
        match k.as_str() {
            "max-rows" => rules.max_rows = v.parse().ok(),
            "max-affected-rows" => rules.max_affected_rows = v.parse().ok(),
            "require-where" => rules.require_where = v == "true",
            "no-drop" => rules.no_drop = v == "true",
            "ddl-approval" => rules.ddl_approval = v == "true",
            _ => {}
        }
    }
    Ok(rules)
}

/// The permission a statement class needs.
pub fn permission_for(class: StatementClass) -> Permission {
    match class {
        StatementClass::Read => Permission::Read,
        StatementClass::Write => Permission::Write,
        StatementClass::Ddl => Permission::Ddl,
        StatementClass::Dcl | StatementClass::Admin | StatementClass::Unknown => Permission::Admin,
    }
}

/// One statement allowed to run, with what its rules ask of the run.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub sql: String,
    pub class: StatementClass,
    pub decisions: Vec<String>,
    /// Rows the result may return at most (`max-rows`).
    pub row_cap: Option<usize>,
    /// Rows the statement may change at most (`max-affected-rows`); it runs in a savepoint.
    pub affected_cap: Option<u64>,
}

/// What masking asks of one statement.
#[derive(Debug, Default)]
pub struct MaskCheck {
    pub plan: Option<MaskPlan>,
    pub sensitive: bool,
}

impl MaskCheck {
    /// The error to show: a database's own message is hidden when the statement touches masked
    /// columns, since messages can quote values (`invalid input syntax for type integer: "…"`).
    pub fn shown(&self, e: Error) -> Error {
        match e {
            Error::Engine(_) if self.sensitive => Error::Engine(
                "the statement failed; the database's message is hidden because the statement reads masked columns (a user with the unmask permission sees it)".into(),
            ),
            other => other,
        }
    }
}

/// What one caller may do on one instance (and database), for one origin of statements.
pub struct Guard {
    pub state: SharedState,
    pub caller: Caller,
    pub instance: String,
    pub environment: String,
    pub database: Option<String>,
    pub engine: Engine,
    /// `console`, `session`, `query`, `export`, `transfer`, `flow`, `approval`.
    pub origin: &'static str,
    pub rules: Rules,
    /// Masking rules that apply here; empty when the caller may see columns in clear.
    masks: Vec<MaskRule>,
    /// Set when running an approved statement: the `ddl-approval` rule is satisfied for it.
    approved: Option<(String, String)>,
}

impl Guard {
    pub async fn new(
        state: &SharedState,
        caller: &Caller,
        instance: &str,
        database: Option<&str>,
        engine: Engine,
        origin: &'static str,
    ) -> Result<Guard> {
        let environment = crate::auth::instance_environment(state, instance)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no instance named \"{instance}\"")))?;
        let rules = rules_for(state, instance, &environment).await?;
        let resource = Resource::Instance {
            name: instance,
            environment: &environment,
            database,
        };
        let masks = if caller.allows(Permission::Unmask, &resource) {
            vec![]
        } else {
            state
                .policies
                .get(state)
                .await?
                .masks
                .iter()
                .filter(|m| {
                    let scope = &m.record.scope;
                    scope == "*"
                        || *scope == format!("env:{environment}")
                        || *scope == format!("instance:{instance}")
                })
                .cloned()
                .collect()
        };
        Ok(Guard {
            state: state.clone(),
            caller: caller.clone(),
            instance: instance.to_string(),
            environment,
            database: database.map(str::to_string),
            engine,
            origin,
            rules,
            masks,
            approved: None,
        })
    }

    /// Marks the guard as running approval `id` of exactly `statement`.
    pub fn with_approval(mut self, id: &str, statement: &str) -> Self {
        self.approved = Some((id.to_string(), statement.to_string()));
        self
    }

    fn resource(&self) -> Resource<'_> {
        Resource::Instance {
            name: &self.instance,
            environment: &self.environment,
            database: self.database.as_deref(),
        }
    }

    pub fn classify(&self, script: &str) -> Vec<Classified> {
        if self.engine == Engine::Redis {
            script
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(ferry_guard::classify_redis)
                .collect()
        } else {
            ferry_guard::classify_script(self.engine, script)
        }
    }

    /// Checks one statement (already split) against grants and rules.
    fn check(&self, sql: &str) -> Result<Admitted> {
        let parts = self.classify(sql);
        // A statement the classifier splits further is checked by its strongest part.
        let mut class = StatementClass::Read;
        let mut decisions = Vec::new();
        let (mut where_missing, mut drops) = (false, false);
        let mut kinds = Vec::new();
        for c in &parts {
            class = class.max(c.class);
            where_missing |= c.where_missing;
            drops |= c.is_drop_or_truncate;
            kinds.push(c.kind.clone());
            for r in &c.reasons {
                decisions.push(format!("classified {}: {r}", c.class.as_str()));
            }
        }
        if parts.is_empty() {
            class = StatementClass::Unknown;
        }
        let wanted = permission_for(class);
        let on = self.resource();
        if let Err(e) = self.caller.require(wanted, &on) {
            let why = parts
                .iter()
                .flat_map(|c| c.reasons.iter())
                .next()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            return Err(Error::PermissionDenied(format!(
                "{} statement refused{why}: {}",
                class.as_str(),
                e.message()
            )));
        }
        decisions.push(format!("grant {} on {on}: allowed", wanted.as_str()));
        let rule = |name: &str, msg: String| {
            Error::PermissionDenied(format!(
                "rule {name} on instance \"{}\": {msg}",
                self.instance
            ))
        };
        if self.rules.require_where && where_missing {
            return Err(rule(
                "require-where",
                "UPDATE or DELETE without a WHERE clause is not allowed; add a WHERE clause".into(),
            ));
        }
        if self.rules.no_drop && drops {
            return Err(rule(
                "no-drop",
                "DROP and TRUNCATE are not allowed here".into(),
            ));
        }
        if self.rules.ddl_approval && matches!(class, StatementClass::Ddl | StatementClass::Dcl) {
            match &self.approved {
                Some((id, approved)) if approved.trim() == sql.trim() => {
                    decisions.push(format!("rule ddl-approval: approved by request {id}"));
                }
                _ => {
                    return Err(rule(
                        "ddl-approval",
                        format!(
                            "{} needs an approval by another dba or admin here: request one with `ferry approval request {} --sql '…'`, then run it with `ferry approval run ID` once approved",
                            kinds.join(", "),
                            self.instance
                        ),
                    ));
                }
            }
        }
        let is_change = matches!(class, StatementClass::Write) && self.engine != Engine::Redis;
        Ok(Admitted {
            sql: sql.to_string(),
            class,
            decisions,
            row_cap: self.rules.max_rows.map(|n| n as usize),
            affected_cap: self.rules.max_affected_rows.filter(|_| is_change),
        })
    }

    /// Checks every statement before any runs; the first refusal is audited and returned,
    /// naming the statement.
    pub async fn admit_all(&self, statements: &[String]) -> Result<Vec<Admitted>> {
        let mut out = Vec::with_capacity(statements.len());
        for (i, sql) in statements.iter().enumerate() {
            match self.check(sql) {
                Ok(a) => out.push(a),
                Err(e) => {
                    let class = self
                        .classify(sql)
                        .iter()
                        .map(|c| c.class)
                        .max()
                        .unwrap_or(StatementClass::Unknown);
                    self.audit(sql, class, &[], "denied", None, None, Some(e.message()))
                        .await;
                    let e = if statements.len() > 1 {
                        e.context(format!(
                            "statement {} of {} (nothing ran)",
                            i + 1,
                            statements.len()
                        ))
                    } else {
                        e
                    };
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Records a statement's outcome in the audit log.
    pub async fn finish(
        &self,
        admitted: &Admitted,
        rows: Option<u64>,
        duration: Duration,
        error: Option<&Error>,
    ) {
        self.audit(
            &admitted.sql,
            admitted.class,
            &admitted.decisions,
            if error.is_some() { "failed" } else { "ok" },
            rows,
            Some(duration),
            error.map(|e| e.message()),
        )
        .await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn audit(
        &self,
        sql: &str,
        class: StatementClass,
        decisions: &[String],
        outcome: &str,
        rows: Option<u64>,
        duration: Option<Duration>,
        error: Option<&str>,
    ) {
        crate::audit::record(
            &self.state,
            AuditRecord {
                user: self.caller.user.clone(),
                source: self.caller.source.clone(),
                action: format!("sql:{}", self.origin),
                instance: Some(self.instance.clone()),
                database: self.database.clone(),
                statement: Some(sql.to_string()),
                class: Some(class.as_str().to_string()),
                decisions: Some(serde_json::to_string(decisions).unwrap_or_default()),
                rows: rows.map(|r| r as i64),
                duration_ms: duration.map(|d| d.as_millis() as i64),
                outcome: outcome.to_string(),
                error: error.map(str::to_string),
                ..Default::default()
            },
        )
        .await;
    }

    /// Whether results here may need masking.
    pub fn masks_apply(&self) -> bool {
        !self.masks.is_empty()
    }

    /// The masking plan of a query, reading the columns of the tables it touches through
    /// `conn`: `plan` is `None` when no output is masked; `sensitive` says whether the query
    /// touches a masked column at all (then the database's error text, which can quote
    /// values, is hidden). Refuses what cannot be proven safe.
    pub async fn mask_plan(&self, conn: &mut dyn Connection, sql: &str) -> Result<MaskCheck> {
        if self.masks.is_empty() || self.engine == Engine::Redis {
            return Ok(MaskCheck::default());
        }
        let tables = ferry_guard::referenced_tables(self.engine, sql)?;
        let mut catalog: Vec<(Vec<String>, Vec<ColumnInfo>)> = Vec::new();
        for parts in tables {
            if catalog.iter().any(|(p, _)| p == &parts) {
                continue;
            }
            let (schema, name) = match parts.as_slice() {
                [name] => (None, name.as_str()),
                [.., schema, name] => (Some(schema.as_str()), name.as_str()),
                [] => continue,
            };
            let Ok(detail) = conn.table(schema, name).await else {
                continue;
            };
            let columns = detail
                .columns
                .iter()
                .map(|c| ColumnInfo {
                    name: c.name.clone(),
                    mask: self.mask_of(&parts, &c.name),
                })
                .collect();
            catalog.push((parts, columns));
        }
        let lookup = |parts: &[String]| {
            catalog
                .iter()
                .find(|(p, _)| p.as_slice() == parts)
                .map(|(_, c)| c.clone())
        };
        let sensitive = catalog
            .iter()
            .any(|(_, cols)| cols.iter().any(|c| c.mask.is_some()));
        let plan = ferry_guard::plan_masking(self.engine, sql, &lookup)?;
        Ok(MaskCheck {
            plan: (!plan.is_empty()).then_some(plan),
            sensitive,
        })
    }

    fn mask_of(&self, table: &[String], column: &str) -> Option<MaskAlgorithm> {
        let dotted = table.join(".").to_ascii_lowercase();
        let bare = table
            .last()
            .map(|t| t.to_ascii_lowercase())
            .unwrap_or_default();
        self.masks.iter().find_map(|rule| {
            let m = &rule.record;
            let hit = match &m.table {
                Some(t) => {
                    let t = t.to_ascii_lowercase();
                    (t == dotted || t == bare) && m.column.eq_ignore_ascii_case(column)
                }
                None => rule.pattern.as_ref().is_some_and(|re| re.is_match(column)),
            };
            if hit { m.algorithm.parse().ok() } else { None }
        })
    }

    /// The masker for this server's keyed hashes.
    pub fn masker(&self) -> Masker {
        Masker::new(&self.state.key.current().mask_key())
    }
}

/// Compiles a column-name pattern (a case-insensitive regular expression anchored at both ends:
/// `.*phone.*`, `ssn|tax_id`), naming what is wrong with it.
pub fn name_pattern(pattern: &str) -> Result<regex::Regex> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            Error::InvalidInput(format!(
                "invalid column pattern \"{pattern}\": {e}; give a regular expression such as .*phone.*"
            ))
        })
}

/// The schema of a result after masking: masked columns become nullable text.
pub fn masked_schema(
    plan: &MaskPlan,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<arrow::datatypes::SchemaRef> {
    use arrow::datatypes::{DataType, Field, Schema};
    if schema.fields().len() != plan.columns.len() {
        return Err(Error::PermissionDenied(format!(
            "the result has {} columns where {} were planned, so masking cannot be guaranteed: the query was stopped; a user with the unmask permission can run it",
            schema.fields().len(),
            plan.columns.len()
        )));
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .zip(&plan.columns)
        .map(|(f, m)| match m {
            Some(_) => Field::new(f.name(), DataType::Utf8, true),
            None => f.as_ref().clone(),
        })
        .collect();
    Ok(std::sync::Arc::new(Schema::new(fields)))
}

/// Applies a masking plan to a batch, refusing when the result's shape is not the planned one.
pub fn apply_mask(
    masker: &Masker,
    plan: &MaskPlan,
    batch: &arrow::array::RecordBatch,
) -> Result<arrow::array::RecordBatch> {
    if batch.num_columns() != plan.columns.len() {
        return Err(Error::PermissionDenied(format!(
            "the result has {} columns where {} were planned, so masking cannot be guaranteed: the query was stopped; a user with the unmask permission can run it",
            batch.num_columns(),
            plan.columns.len()
        )));
    }
    masker.mask_batch(plan, batch)
}

/// Records a change made through the API beside statements (approvals, flows, key rotation).
pub async fn audit_event(state: &SharedState, caller: &Caller, action: &str, what: String) {
    crate::audit::record(
        state,
        AuditRecord {
            user: caller.user.clone(),
            source: caller.source.clone(),
            action: action.to_string(),
            statement: Some(what),
            outcome: "ok".into(),
            at_ms: now_ms(),
            ..Default::default()
        },
    )
    .await;
}

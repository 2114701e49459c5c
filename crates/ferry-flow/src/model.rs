//! The flow model: a DAG of nodes with parameters per task kind, variables, a schedule and
//! policies, written as TOML (`ferry flow apply -f flow.toml`) or JSON (the API), and validated
//! before it is saved. Every error names the node and the field that is wrong.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ferry_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::kinds;
use crate::vars;

/// A flow definition as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// What a new run does while another run of the flow is active.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// What the other nodes do once a node has failed for good.
    #[serde(default)]
    pub failure: FailureStrategy,
    /// Constants and time expressions, resolved once when a run starts.
    #[serde(default)]
    pub variables: BTreeMap<String, Variable>,
    /// Webhook and e-mail notifications on failure, success or overrun.
    #[serde(default)]
    pub notify: Option<crate::notify::Notify>,
    pub nodes: Vec<NodeSpec>,
}

/// When a flow runs by itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Cron with 5 fields, or 6 with seconds first (`0 0 5 * * *` is 05:00:00 daily).
    pub cron: String,
    /// An IANA time zone such as `Asia/Shanghai`; UTC when absent.
    #[serde(default = "utc")]
    pub timezone: String,
    /// The first and last dates (`yyyy-MM-dd`, in the time zone) a fire may fall on.
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Fires missed while no node was up: none run, only the latest, or all in order.
    #[serde(default)]
    pub catchup: Catchup,
}

fn utc() -> String {
    "UTC".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Catchup {
    #[default]
    None,
    Latest,
    All,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// Runs overlap.
    #[default]
    Parallel,
    /// A new run is not started while one is active.
    Skip,
    /// A new run waits until the active ones end.
    Queue,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureStrategy {
    /// Nodes not yet started are skipped.
    #[default]
    Stop,
    /// Branches that do not depend on the failed node go on.
    Continue,
}

/// A flow variable: a constant, a time expression (`$[yyyyMMdd-1]`, `yyyy-MM-dd|-2d`), or a
/// table that also declares it raw (substituted into SQL unquoted, for identifiers and paths).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Variable {
    Value(String),
    Declared {
        value: String,
        #[serde(default)]
        raw: bool,
    },
}

impl Variable {
    pub fn value(&self) -> &str {
        match self {
            Variable::Value(v) | Variable::Declared { value: v, .. } => v,
        }
    }

    pub fn raw(&self) -> bool {
        matches!(self, Variable::Declared { raw: true, .. })
    }
}

/// One node of the DAG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub id: String,
    pub kind: String,
    #[serde(default)]
    pub upstream: Vec<String>,
    /// Attempts after the first failure.
    #[serde(default)]
    pub retries: u32,
    #[serde(default = "default_retry_delay")]
    pub retry_delay_secs: u64,
    /// The longest one attempt may take; the work is cancelled on the database after it.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Ready nodes with a higher priority are taken first.
    #[serde(default)]
    pub priority: i32,
    /// The kind's parameters; checked against the kind when the flow is saved.
    #[serde(default)]
    pub params: serde_json::Value,
}

fn default_retry_delay() -> u64 {
    60
}

/// Names a user gives (flows, nodes, variables): letters, digits, `_` and `-`.
fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "{what} {name:?} is not a valid name: use 1-64 letters, digits, '_' or '-'"
        )))
    }
}

impl FlowSpec {
    /// Parses a TOML flow file; errors give the line and the field.
    pub fn from_toml(text: &str) -> Result<FlowSpec> {
        toml::from_str(text).map_err(|e| Error::InvalidInput(format!("flow file: {e}")))
    }

    /// Parses a YAML flow file (the same structure as TOML).
    pub fn from_yaml(text: &str) -> Result<FlowSpec> {
        serde_norway::from_str(text).map_err(|e| Error::InvalidInput(format!("flow file: {e}")))
    }

    /// Parses a JSON flow definition.
    pub fn from_json(value: serde_json::Value) -> Result<FlowSpec> {
        serde_json::from_value(value).map_err(|e| Error::InvalidInput(format!("flow: {e}")))
    }

    pub fn node(&self, id: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Checks everything that can be checked before a run: names, kinds and their parameters,
    /// edges and cycles, the schedule, variables, and (through `instance_exists`) the instances
    /// nodes name.
    pub fn validate(&self, instance_exists: &dyn Fn(&str) -> bool) -> Result<()> {
        check_name("flow", &self.name)?;
        if self.nodes.is_empty() {
            return Err(Error::InvalidInput(format!(
                "flow \"{}\" has no nodes: add at least one [[nodes]] entry",
                self.name
            )));
        }
        let mut ids = BTreeSet::new();
        for n in &self.nodes {
            check_name("node", &n.id)?;
            if !ids.insert(n.id.as_str()) {
                return Err(Error::InvalidInput(format!(
                    "node \"{}\" is defined twice: node ids must be unique",
                    n.id
                )));
            }
        }
        for n in &self.nodes {
            for up in &n.upstream {
                if !ids.contains(up.as_str()) {
                    return Err(Error::InvalidInput(format!(
                        "node \"{}\", field upstream: there is no node \"{up}\"",
                        n.id
                    )));
                }
                if up == &n.id {
                    return Err(Error::InvalidInput(format!(
                        "node \"{}\", field upstream: a node cannot depend on itself",
                        n.id
                    )));
                }
            }
        }
        self.topological_order()?;
        for name in self.variables.keys() {
            check_name("variable", name)?;
            if vars::BUILT_IN.contains(&name.as_str()) {
                return Err(Error::InvalidInput(format!(
                    "variable \"{name}\" is built in: pick another name"
                )));
            }
        }
        for (name, v) in &self.variables {
            vars::check_expression(v.value())
                .map_err(|e| Error::InvalidInput(format!("variable \"{name}\": {e}")))?;
        }
        if let Some(s) = &self.schedule {
            s.validate()?;
        }
        if let Some(n) = &self.notify {
            n.validate()?;
        }
        for n in &self.nodes {
            let kind = kinds::kind(&n.kind).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "node \"{}\", field kind: unknown kind \"{}\"; known kinds: {}",
                    n.id,
                    n.kind,
                    kinds::KINDS.join(", ")
                ))
            })?;
            let checked = kind.check(&n.params).map_err(|e| {
                Error::InvalidInput(format!("node \"{}\", field params: {}", n.id, e.message()))
            })?;
            for instance in &checked.instances {
                if !instance_exists(instance) {
                    return Err(Error::InvalidInput(format!(
                        "node \"{}\", field params: instance \"{instance}\" is not registered",
                        n.id
                    )));
                }
            }
            // Every ${name} a node uses must be known by the time it runs.
            let known = self.known_variables(n);
            for used in vars::references(&n.params) {
                if !known.contains(&used) {
                    return Err(Error::InvalidInput(format!(
                        "node \"{}\", field params: unknown variable ${{{used}}}; define it under [variables] or as an output of an upstream node",
                        n.id
                    )));
                }
            }
        }
        Ok(())
    }

    /// Variables a node can use: built-ins, the flow's, and outputs of its ancestors.
    fn known_variables(&self, node: &NodeSpec) -> BTreeSet<String> {
        let mut known: BTreeSet<String> = vars::BUILT_IN.iter().map(|s| s.to_string()).collect();
        known.extend(self.variables.keys().cloned());
        for ancestor in self.ancestors(&node.id) {
            if let Some(n) = self.node(&ancestor)
                && let Some(k) = kinds::kind(&n.kind)
            {
                known.extend(k.outputs(&n.params));
            }
        }
        known
    }

    /// Every node `id` depends on, directly or not.
    pub fn ancestors(&self, id: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = vec![id];
        while let Some(current) = stack.pop() {
            if let Some(n) = self.node(current) {
                for up in &n.upstream {
                    if seen.insert(up.clone()) {
                        stack.push(up);
                    }
                }
            }
        }
        seen
    }

    /// Nodes that depend on `id`, directly or not.
    pub fn descendants(&self, id: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![id.to_string()];
        while let Some(current) = stack.pop() {
            for n in &self.nodes {
                if n.upstream.contains(&current) && seen.insert(n.id.clone()) {
                    stack.push(n.id.clone());
                }
            }
        }
        seen
    }

    /// Node ids in an order where every node follows its upstreams; a cycle is an error that
    /// names the nodes on it.
    pub fn topological_order(&self) -> Result<Vec<String>> {
        let mut indegree: HashMap<&str, usize> = self
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n.upstream.len()))
            .collect();
        let mut ready: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.upstream.is_empty())
            .map(|n| n.id.as_str())
            .collect();
        let mut order = Vec::new();
        while let Some(id) = ready.pop() {
            order.push(id.to_string());
            for n in &self.nodes {
                if n.upstream.iter().any(|u| u == id) {
                    let d = indegree.entry(n.id.as_str()).or_default();
                    *d -= 1;
                    if *d == 0 {
                        ready.push(n.id.as_str());
                    }
                }
            }
        }
        if order.len() < self.nodes.len() {
            let on_cycle: Vec<&str> = self
                .nodes
                .iter()
                .filter(|n| indegree.get(n.id.as_str()).copied().unwrap_or(0) > 0)
                .map(|n| n.id.as_str())
                .collect();
            return Err(Error::InvalidInput(format!(
                "the nodes {} form a cycle through their upstream fields: a flow must be a DAG",
                on_cycle.join(", ")
            )));
        }
        Ok(order)
    }
}

impl Schedule {
    pub fn validate(&self) -> Result<()> {
        self.cron()?;
        self.tz()?;
        for (field, date) in [("start", &self.start), ("end", &self.end)] {
            if let Some(d) = date {
                chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").map_err(|_| {
                    Error::InvalidInput(format!(
                        "schedule, field {field}: {d:?} is not a date like 2026-11-22"
                    ))
                })?;
            }
        }
        Ok(())
    }

    pub fn cron(&self) -> Result<croner::Cron> {
        croner::parser::CronParser::new()
            .parse(&self.cron)
            .map_err(|e| {
                Error::InvalidInput(format!(
                    "schedule, field cron: {:?} is not a cron pattern ({e}); use 5 fields (minute hour day month weekday) or 6 with seconds first",
                    self.cron
                ))
            })
    }

    pub fn tz(&self) -> Result<chrono_tz::Tz> {
        self.timezone.parse().map_err(|_| {
            Error::InvalidInput(format!(
                "schedule, field timezone: {:?} is not an IANA time zone such as Asia/Shanghai or UTC",
                self.timezone
            ))
        })
    }
}

/// The differences between two versions of a flow, one line per changed field, with nodes
/// matched by id: `node load: params.sql: "…" → "…"`, `node report: added`.
pub fn diff(old: &FlowSpec, new: &FlowSpec) -> Vec<String> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value::Object;
        match (a, b) {
            (Object(x), Object(y)) => {
                let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    let none = serde_json::Value::Null;
                    walk(
                        &p,
                        x.get(k).unwrap_or(&none),
                        y.get(k).unwrap_or(&none),
                        out,
                    );
                }
            }
            _ if a != b => out.push(format!("{path}: {a} → {b}")),
            _ => {}
        }
    }
    let as_value = |s: &FlowSpec| {
        let mut v = serde_json::to_value(s).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.remove("nodes");
        }
        v
    };
    let mut out = Vec::new();
    walk("", &as_value(old), &as_value(new), &mut out);
    for n in &old.nodes {
        match new.node(&n.id) {
            None => out.push(format!("node {}: removed", n.id)),
            Some(m) => {
                let mut changes = Vec::new();
                walk(
                    "",
                    &serde_json::to_value(n).unwrap_or_default(),
                    &serde_json::to_value(m).unwrap_or_default(),
                    &mut changes,
                );
                out.extend(changes.into_iter().map(|c| format!("node {}: {c}", n.id)));
            }
        }
    }
    for n in &new.nodes {
        if old.node(&n.id).is_none() {
            out.push(format!("node {}: added ({})", n.id, n.kind));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_differ_by_field_and_node() {
        let v1 = FlowSpec::from_toml(
            "name = \"f\"\n[schedule]\ncron = \"0 5 * * *\"\n[[nodes]]\nid = \"a\"\nkind = \"sql\"\nparams = { instance = \"pg\", sql = \"select 1\" }\n[[nodes]]\nid = \"gone\"\nkind = \"sql\"\nparams = { instance = \"pg\", sql = \"select 3\" }\n",
        )
        .unwrap();
        let v2 = FlowSpec::from_toml(
            "name = \"f\"\n[schedule]\ncron = \"0 6 * * *\"\n[[nodes]]\nid = \"a\"\nkind = \"sql\"\nretries = 2\nparams = { instance = \"pg\", sql = \"select 2\" }\n[[nodes]]\nid = \"b\"\nkind = \"check\"\nparams = { instance = \"pg\", sql = \"select true\" }\n",
        )
        .unwrap();
        assert_eq!(
            diff(&v1, &v2),
            [
                "schedule.cron: \"0 5 * * *\" → \"0 6 * * *\"",
                "node a: params.sql: \"select 1\" → \"select 2\"",
                "node a: retries: 0 → 2",
                "node gone: removed",
                "node b: added (check)",
            ]
        );
        assert!(diff(&v1, &v1).is_empty());
    }
}

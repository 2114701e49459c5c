//! Roles and grants: what a caller may do, on what. A grant is a permission on a target
//! (`write@instance:orders`, `ddl@env:dev`, `flow.run@flow:nightly`, `read` for everything).
//! Instance privileges are ordered (`read` < `write` < `ddl` < `admin`): a grant of one also
//! gives those below it. `flow.edit` and `flow.run` each give `flow.view`.

use std::fmt;
use std::str::FromStr;

use ferry_core::{Error, Result};
use serde::Serialize;

/// Something a caller may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// SELECT, SHOW, EXPLAIN; browse the catalog.
    Read,
    /// DML.
    Write,
    /// CREATE, ALTER, DROP, TRUNCATE.
    Ddl,
    /// Kill sessions, edit or remove the instance, DCL, anything unclassifiable.
    Admin,
    FlowView,
    FlowEdit,
    FlowRun,
    /// See masked columns in clear.
    Unmask,
    /// Approve statements that a rule holds for approval.
    Approve,
    /// Read and export the audit log and policy actions.
    Audit,
    /// Register instances and archives.
    Instances,
    /// Users, roles, SQL rules, masking rules and the master key.
    Security,
}

impl Permission {
    pub const ALL: [Permission; 12] = [
        Permission::Read,
        Permission::Write,
        Permission::Ddl,
        Permission::Admin,
        Permission::FlowView,
        Permission::FlowEdit,
        Permission::FlowRun,
        Permission::Unmask,
        Permission::Approve,
        Permission::Audit,
        Permission::Instances,
        Permission::Security,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Ddl => "ddl",
            Permission::Admin => "admin",
            Permission::FlowView => "flow.view",
            Permission::FlowEdit => "flow.edit",
            Permission::FlowRun => "flow.run",
            Permission::Unmask => "unmask",
            Permission::Approve => "approve",
            Permission::Audit => "audit",
            Permission::Instances => "instances",
            Permission::Security => "security",
        }
    }

    /// Whether holding `self` gives `wanted`.
    fn covers(self, wanted: Permission) -> bool {
        use Permission::*;
        self == wanted
            || matches!(
                (self, wanted),
                (Write, Read)
                    | (Ddl, Read | Write)
                    | (Admin, Read | Write | Ddl)
                    | (FlowEdit | FlowRun, FlowView)
            )
    }
}

impl FromStr for Permission {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown permission \"{s}\": use one of {}",
                    Permission::ALL.map(Permission::as_str).join(", ")
                ))
            })
    }
}

/// What a grant applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    All,
    Env(String),
    Instance(String),
    Database(String, String),
    Flow(String),
}

/// What a permission is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource<'a> {
    /// Server-wide (users, audit, registering instances).
    Server,
    Instance {
        name: &'a str,
        environment: &'a str,
        database: Option<&'a str>,
    },
    Flow(&'a str),
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Server => f.write_str("this server"),
            Resource::Instance {
                name,
                environment,
                database: Some(db),
            } => write!(
                f,
                "database \"{db}\" of instance \"{name}\" ({environment})"
            ),
            Resource::Instance {
                name, environment, ..
            } => write!(f, "instance \"{name}\" ({environment})"),
            Resource::Flow(name) => write!(f, "flow \"{name}\""),
        }
    }
}

/// A permission on a target, written `PERMISSION[@TARGET]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub permission: Permission,
    pub target: Target,
}

impl Grant {
    fn applies(&self, wanted: Permission, to: &Resource<'_>) -> bool {
        if !self.permission.covers(wanted) {
            return false;
        }
        match (&self.target, to) {
            (Target::All, _) => true,
            (Target::Env(e), Resource::Instance { environment, .. }) => e == environment,
            (Target::Instance(n), Resource::Instance { name, .. }) => n == name,
            (Target::Database(n, d), Resource::Instance { name, database, .. }) => {
                n == name && *database == Some(d.as_str())
            }
            (Target::Flow(f), Resource::Flow(name)) => f == name,
            _ => false,
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.permission.as_str())?;
        match &self.target {
            Target::All => Ok(()),
            Target::Env(e) => write!(f, "@env:{e}"),
            Target::Instance(n) => write!(f, "@instance:{n}"),
            Target::Database(n, d) => write!(f, "@instance:{n}/{d}"),
            Target::Flow(n) => write!(f, "@flow:{n}"),
        }
    }
}

impl FromStr for Grant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidInput(format!(
                "invalid grant \"{s}\": write PERMISSION[@TARGET] with TARGET one of env:NAME, instance:NAME, instance:NAME/DATABASE, flow:NAME (e.g. write@instance:orders)"
            ))
        };
        let (perm, target) = match s.trim().split_once('@') {
            Some((p, t)) => (p, Some(t)),
            None => (s.trim(), None),
        };
        let permission: Permission = perm.parse()?;
        let target = match target {
            None | Some("*") => Target::All,
            Some(t) => {
                let (kind, name) = t.split_once(':').ok_or_else(bad)?;
                if name.is_empty() {
                    return Err(bad());
                }
                match kind {
                    "env" => Target::Env(name.to_string()),
                    "instance" => match name.split_once('/') {
                        Some((n, d)) if !n.is_empty() && !d.is_empty() => {
                            Target::Database(n.to_string(), d.to_string())
                        }
                        Some(_) => return Err(bad()),
                        None => Target::Instance(name.to_string()),
                    },
                    "flow" => Target::Flow(name.to_string()),
                    _ => return Err(bad()),
                }
            }
        };
        Ok(Grant { permission, target })
    }
}

impl Serialize for Grant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The built-in roles and their grants.
pub const BUILT_IN_ROLES: &[(&str, &str, &[&str])] = &[
    (
        "admin",
        "everything, including users, roles, rules and keys",
        &[
            "admin",
            "flow.edit",
            "flow.run",
            "unmask",
            "approve",
            "audit",
            "instances",
            "security",
        ],
    ),
    (
        "dba",
        "all privileges on every instance, flows, approvals, the audit log; not users or keys",
        &[
            "admin",
            "flow.edit",
            "flow.run",
            "unmask",
            "approve",
            "audit",
            "instances",
        ],
    ),
    (
        "developer",
        "read everywhere; write and DDL on dev and test instances; edit and run flows",
        &[
            "read",
            "ddl@env:dev",
            "ddl@env:test",
            "flow.edit",
            "flow.run",
        ],
    ),
    (
        "viewer",
        "read everywhere (masked columns stay masked); view flows",
        &["read", "flow.view"],
    ),
];

pub fn built_in_role(name: &str) -> Option<Vec<Grant>> {
    BUILT_IN_ROLES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, grants)| grants.iter().filter_map(|g| g.parse().ok()).collect())
}

/// Parses a list of grant strings, naming the first bad one.
pub fn parse_grants(list: &[String]) -> Result<Vec<Grant>> {
    list.iter().map(|g| g.parse()).collect()
}

/// Who is calling, with every grant they hold (their roles' and their own).
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub roles: Vec<String>,
    pub grants: Vec<Grant>,
    /// The client's address, for the audit log.
    pub source: Option<String>,
    /// The token or session the call came with.
    pub credential_id: Option<String>,
}

impl Caller {
    pub fn allows(&self, wanted: Permission, on: &Resource<'_>) -> bool {
        self.grants.iter().any(|g| g.applies(wanted, on))
    }

    /// `Ok` when allowed, else a `PermissionDenied` that names the user, the permission and
    /// the target.
    pub fn require(&self, wanted: Permission, on: &Resource<'_>) -> Result<()> {
        if self.allows(wanted, on) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "user \"{}\" lacks the {} permission on {on}: ask an administrator for a grant (e.g. `ferry user grant {} {}{}`)",
                self.user,
                wanted.as_str(),
                self.user,
                wanted.as_str(),
                match on {
                    Resource::Server => String::new(),
                    Resource::Instance { name, .. } => format!("@instance:{name}"),
                    Resource::Flow(f) => format!("@flow:{f}"),
                }
            )))
        }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(grants: &[&str]) -> Caller {
        Caller {
            user: "u".into(),
            roles: vec![],
            grants: grants.iter().map(|g| g.parse().unwrap()).collect(),
            source: None,
            credential_id: None,
        }
    }

    fn inst<'a>(name: &'a str, env: &'a str, db: Option<&'a str>) -> Resource<'a> {
        Resource::Instance {
            name,
            environment: env,
            database: db,
        }
    }

    #[test]
    fn grants_apply_to_their_targets() {
        let check = |grants: &[&str], wanted: Permission, on: Resource, expected: bool| {
            assert_eq!(
                caller(grants).allows(wanted, &on),
                expected,
                "{grants:?} {wanted:?} {on}"
            );
        };
        use Permission::*;
        check(&["read"], Read, inst("a", "prod", None), true);
        check(&["read"], Write, inst("a", "dev", None), false);
        check(&["ddl@env:dev"], Write, inst("a", "dev", None), true);
        check(&["ddl@env:dev"], Write, inst("a", "prod", None), false);
        check(&["ddl@env:dev"], Admin, inst("a", "dev", None), false);
        check(
            &["write@instance:a"],
            Write,
            inst("a", "prod", Some("x")),
            true,
        );
        check(&["write@instance:a"], Write, inst("b", "prod", None), false);
        check(
            &["write@instance:a/x"],
            Write,
            inst("a", "prod", Some("x")),
            true,
        );
        check(
            &["write@instance:a/x"],
            Write,
            inst("a", "prod", Some("y")),
            false,
        );
        check(
            &["write@instance:a/x"],
            Write,
            inst("a", "prod", None),
            false,
        );
        check(&["flow.run@flow:f"], FlowView, Resource::Flow("f"), true);
        check(&["flow.run@flow:f"], FlowEdit, Resource::Flow("f"), false);
        check(&["flow.view"], FlowView, Resource::Flow("g"), true);
        check(&["audit@env:prod"], Audit, Resource::Server, false);
        check(&["audit"], Audit, Resource::Server, true);
        check(&["admin"], Security, Resource::Server, false);
    }

    #[test]
    fn grants_round_trip_and_bad_ones_are_explained() {
        for g in [
            "read",
            "write@env:prod",
            "ddl@instance:orders",
            "admin@instance:orders/app",
            "flow.run@flow:nightly",
        ] {
            assert_eq!(g.parse::<Grant>().unwrap().to_string(), g);
        }
        for (bad, says) in [
            ("rule", "unknown permission \"rule\""),
            ("read@orders", "invalid grant"),
            ("read@instance:", "invalid grant"),
            ("read@cluster:x", "invalid grant"),
        ] {
            let e = bad.parse::<Grant>().unwrap_err();
            assert!(e.message().contains(says), "{bad}: {e}");
        }
        for (role, _, grants) in BUILT_IN_ROLES {
            assert_eq!(built_in_role(role).unwrap().len(), grants.len());
        }
    }
}

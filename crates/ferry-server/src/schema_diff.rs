//! Structure comparison over the API: two tables, or two whole databases, on any engines.

use ferry_connect::TableDetail;
use ferry_core::{Error, Feature, Result};
use ferry_move::diff::{Side, TableDiff, create_like, diff_tables};
use serde::{Deserialize, Serialize};

use crate::SharedState;

/// Which tables to compare.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DiffParams {
    /// `INSTANCE:[SCHEMA.]TABLE`, or `INSTANCE:` for the whole database.
    pub source: String,
    /// `INSTANCE:[SCHEMA.]TABLE`, or `INSTANCE:` for the whole database.
    pub target: String,
    pub source_db: Option<String>,
    pub target_db: Option<String>,
}

/// Both sides of a comparison need `read` on their instance.
pub async fn authorize(
    state: &SharedState,
    caller: &crate::rbac::Caller,
    p: &DiffParams,
) -> Result<()> {
    for (side, db) in [(&p.source, &p.source_db), (&p.target, &p.target_db)] {
        let instance = side.split(':').next().unwrap_or_default();
        crate::auth::require_instance(
            state,
            caller,
            crate::rbac::Permission::Read,
            instance,
            db.as_deref(),
        )
        .await?;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct DatabaseDiff {
    pub missing_tables: Vec<String>,
    pub extra_tables: Vec<String>,
    pub different_tables: Vec<String>,
}

struct Target {
    instance: String,
    schema: Option<String>,
    table: Option<String>,
}

fn parse(text: &str) -> Result<Target> {
    let (instance, rest) = text.split_once(':').unwrap_or((text, ""));
    if instance.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{text:?} is not INSTANCE:[SCHEMA.]TABLE or INSTANCE:"
        )));
    }
    let (schema, table) = match rest.split_once('.') {
        Some((s, t)) => (Some(s.to_string()), Some(t.to_string())),
        None if rest.is_empty() => (None, None),
        None => (None, Some(rest.to_string())),
    };
    Ok(Target {
        instance: instance.to_string(),
        schema,
        table,
    })
}

async fn detail(
    state: &SharedState,
    t: &Target,
    db: Option<&str>,
    table: &str,
) -> Result<Option<TableDetail>> {
    let pool = state.pool(&t.instance).await?;
    let mut lease = pool.acquire(Feature::System, db, "schema diff").await?;
    match lease.conn().table(t.schema.as_deref(), table).await {
        Ok(d) => Ok(Some(d)),
        Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn engine_of(state: &SharedState, instance: &str) -> Result<ferry_core::Engine> {
    Ok(state.pool(instance).await?.connector().engine())
}

/// Compares two tables; a missing target gets a `CREATE TABLE`.
pub async fn diff(state: &SharedState, p: &DiffParams) -> Result<serde_json::Value> {
    let (s, t) = (parse(&p.source)?, parse(&p.target)?);
    let (se, te) = (
        engine_of(state, &s.instance).await?,
        engine_of(state, &t.instance).await?,
    );
    match (&s.table, &t.table) {
        (Some(st), Some(tt)) => {
            let source = detail(state, &s, p.source_db.as_deref(), st)
                .await?
                .ok_or_else(|| {
                    Error::NotFound(format!("source table {} does not exist", p.source))
                })?;
            let diff = match detail(state, &t, p.target_db.as_deref(), tt).await? {
                Some(target) => diff_tables(
                    Side {
                        engine: se,
                        table: &source,
                    },
                    Side {
                        engine: te,
                        table: &target,
                    },
                )?,
                None => TableDiff {
                    differences: vec![],
                    ddl: vec![create_like(
                        Side {
                            engine: se,
                            table: &source,
                        },
                        te,
                        t.schema.as_deref(),
                        tt,
                    )?],
                },
            };
            Ok(
                serde_json::json!({ "source": p.source, "target": p.target, "differences": diff.differences, "ddl": diff.ddl }),
            )
        }
        (None, None) => {
            let list = |t: &Target, db: Option<String>| {
                let state = state.clone();
                let instance = t.instance.clone();
                async move {
                    let pool = state.pool(&instance).await?;
                    let mut lease = pool
                        .acquire(Feature::System, db.as_deref(), "schema diff")
                        .await?;
                    let mut names: Vec<String> = lease
                        .conn()
                        .tables()
                        .await?
                        .into_iter()
                        .filter(|t| t.kind == "table")
                        .map(|t| t.name)
                        .collect();
                    names.sort();
                    Ok::<_, Error>(names)
                }
            };
            let source_tables = list(&s, p.source_db.clone()).await?;
            let target_tables = list(&t, p.target_db.clone()).await?;
            let mut different = Vec::new();
            for name in source_tables.iter().filter(|n| target_tables.contains(n)) {
                let (Some(a), Some(b)) = (
                    detail(state, &s, p.source_db.as_deref(), name).await?,
                    detail(state, &t, p.target_db.as_deref(), name).await?,
                ) else {
                    continue;
                };
                if !diff_tables(
                    Side {
                        engine: se,
                        table: &a,
                    },
                    Side {
                        engine: te,
                        table: &b,
                    },
                )?
                .differences
                .is_empty()
                {
                    different.push(name.clone());
                }
            }
            let result = DatabaseDiff {
                missing_tables: source_tables
                    .iter()
                    .filter(|n| !target_tables.contains(n))
                    .cloned()
                    .collect(),
                extra_tables: target_tables
                    .iter()
                    .filter(|n| !source_tables.contains(n))
                    .cloned()
                    .collect(),
                different_tables: different,
            };
            Ok(serde_json::to_value(result).map_err(|e| Error::Internal(e.to_string()))?)
        }
        _ => Err(Error::InvalidInput(
            "compare a table with a table (A:t B:t) or a database with a database (A: B:)".into(),
        )),
    }
}

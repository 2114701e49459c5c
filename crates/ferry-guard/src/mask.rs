//! Masking: which output columns of a query carry masked data, followed through `*`, aliases,
//! expressions, subqueries, CTEs, set operations and joins — or a refusal when that cannot be
//! proved, so masked data never leaks silently — and the masks applied to Arrow batches.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use ferry_core::{Engine, Error, Result};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlparser::ast::{
    Expr, FunctionArgExpr, FunctionArguments, Ident, JoinConstraint, JoinOperator, ObjectName,
    Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement, TableAlias,
    TableFactor, TableWithJoins, Visit, Visitor, WildcardAdditionalOptions,
};

use crate::sql::{last_part_lower, name_parts, parse};

/// How a masked column is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskAlgorithm {
    /// Covered entirely: `********`.
    Full,
    /// All but the last four characters covered: `*******1234`.
    #[serde(rename = "keep-last-4")]
    KeepLast4,
    /// A keyed hash (HMAC-SHA256), so equal values can be matched but not looked up.
    Hash,
}

impl MaskAlgorithm {
    /// The name used in configuration: `full`, `keep-last-4`, `hash`.
    pub fn as_str(&self) -> &'static str {
        match self {
            MaskAlgorithm::Full => "full",
            MaskAlgorithm::KeepLast4 => "keep-last-4",
            MaskAlgorithm::Hash => "hash",
        }
    }
}

impl std::fmt::Display for MaskAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MaskAlgorithm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "full" => Ok(MaskAlgorithm::Full),
            "keep-last-4" => Ok(MaskAlgorithm::KeepLast4),
            "hash" => Ok(MaskAlgorithm::Hash),
            _ => Err(Error::InvalidInput(format!(
                "unknown mask algorithm {s:?}: choose full, keep-last-4 or hash"
            ))),
        }
    }
}

/// A column of a table as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnInfo {
    /// The column's name.
    pub name: String,
    /// Its mask, if it is masked.
    pub mask: Option<MaskAlgorithm>,
}

/// The mask of each output column of a query, by position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskPlan {
    /// One entry per output column; `None` is shown as is. A plan that masks nothing may have
    /// no entries at all (when no table the query reads has a masked column), so compare its
    /// length with a result's column count only when it is not [`MaskPlan::is_empty`].
    pub columns: Vec<Option<MaskAlgorithm>>,
}

impl MaskPlan {
    /// Whether nothing is masked.
    pub fn is_empty(&self) -> bool {
        self.columns.iter().all(Option::is_none)
    }
}

/// The tables (as their name parts, e.g. `["public", "users"]` or `["users"]`) a statement
/// names — in CTEs, subqueries, joins, set operations and scalar subqueries too — so the
/// caller can fetch their columns before planning. CTE names are not tables.
pub fn referenced_tables(engine: Engine, sql: &str) -> Result<Vec<Vec<String>>> {
    crate::sql::with_big_stack(|| referenced_tables_here(engine, sql))
}

fn referenced_tables_here(engine: Engine, sql: &str) -> Result<Vec<Vec<String>>> {
    let statements = parse(engine, sql)
        .map_err(|e| Error::InvalidInput(format!("could not parse the query: {e}")))?;
    let found = collect(&statements);
    Ok(found
        .tables
        .into_iter()
        .filter(|parts| !(parts.len() == 1 && found.ctes.contains(&parts[0].to_lowercase())))
        .collect())
}

/// The mask of each output column of one query, resolved through the catalog:
/// `catalog(parts)` returns a table's columns in order, or `None` if it does not know the
/// table. A query the planner cannot prove safe while masked columns are in play is refused
/// with `PermissionDenied`; a query that reads no masked column gets an empty plan and is not
/// refused — unless it calls a function that reads tables or SQL named in text (`dblink`,
/// `table_to_xml`, …) or reads planner statistics (`pg_stats`, …), whose sources cannot be
/// seen and which are refused whatever the catalog says. EXPLAIN and DESCRIBE show no row
/// values and get an empty plan. Text that does not parse is `InvalidInput`.
pub fn plan_masking(
    engine: Engine,
    sql: &str,
    catalog: &(dyn Fn(&[String]) -> Option<Vec<ColumnInfo>> + Sync),
) -> Result<MaskPlan> {
    crate::sql::with_big_stack(|| plan_masking_here(engine, sql, catalog))
}

fn plan_masking_here(
    engine: Engine,
    sql: &str,
    catalog: &(dyn Fn(&[String]) -> Option<Vec<ColumnInfo>> + Sync),
) -> Result<MaskPlan> {
    let statements = parse(engine, sql)
        .map_err(|e| Error::InvalidInput(format!("could not parse the query: {e}")))?;
    let mut planner = Planner {
        engine,
        catalog,
        tables: HashMap::new(),
        ctes: Vec::new(),
        masked_names: HashSet::new(),
        masked_summary: Vec::new(),
        budget: PLANNING_BUDGET,
    };
    let found = collect(&statements);
    if let Some(f) = found.functions.iter().find(|f| reads_by_name(f)) {
        return Err(planner.refuse(format!(
            "{f}() reads tables or SQL given as text, which masking cannot follow"
        )));
    }
    if let Some(t) = found.tables.iter().find(|t| exposes_values(t)) {
        return Err(planner.refuse(format!(
            "\"{}\" holds sampled column values, which masking cannot follow",
            t.join(".")
        )));
    }
    let mut unknown = Vec::new();
    for parts in &found.tables {
        // A name that is also a CTE's may be either; a known table's masks count, an unknown
        // one is the CTE.
        let maybe_cte = parts.len() == 1 && found.ctes.contains(&parts[0].to_lowercase());
        match planner.lookup(parts) {
            Some(columns) => {
                for c in columns.iter().filter(|c| c.mask.is_some()) {
                    planner.masked_names.insert(c.name.to_lowercase());
                    planner
                        .masked_summary
                        .push(format!("{}.{}", parts.join("."), c.name));
                }
            }
            None if maybe_cte => {}
            None => unknown.push(parts.join(".")),
        }
    }
    if planner.masked_summary.is_empty() {
        return Ok(MaskPlan::default());
    }
    if let Some(table) = unknown.first() {
        return Err(planner.refuse(format!("the catalog does not know table \"{table}\"")));
    }
    let [statement] = statements.as_slice() else {
        return Err(planner.refuse(format!(
            "the text holds {} statements, and masking plans one query at a time",
            statements.len()
        )));
    };
    match statement {
        Statement::Query(query) => {
            let columns = planner.query(query, &[])?;
            Ok(MaskPlan {
                columns: columns.into_iter().map(|c| c.mask).collect(),
            })
        }
        // Plans and descriptions show no row values.
        Statement::Explain { .. } | Statement::ExplainTable { .. } => Ok(MaskPlan::default()),
        other => {
            let rendered = other.to_string();
            let kind = rendered
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            Err(planner.refuse(format!(
                "{kind} is not a query, and only queries can be masked"
            )))
        }
    }
}

/// Applies masks to values and record batches. The key makes hashes unguessable: without it a
/// phone number cannot be found by hashing every phone number.
#[derive(Clone)]
pub struct Masker {
    key: Vec<u8>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Masker {
    /// A masker hashing with `key`.
    pub fn new(key: &[u8]) -> Self {
        Masker { key: key.to_vec() }
    }

    /// One value masked: `Full` gives 4 to 8 `*`; `KeepLast4` covers all but the last four
    /// characters (values of four or fewer become `****`); `Hash` gives the first 16 hex
    /// digits of HMAC-SHA256 under the key.
    pub fn mask_value(&self, alg: MaskAlgorithm, value: &str) -> String {
        match alg {
            MaskAlgorithm::Full => "*".repeat(value.chars().count().clamp(4, 8)),
            MaskAlgorithm::KeepLast4 => {
                let n = value.chars().count();
                if n <= 4 {
                    "****".to_string()
                } else {
                    let tail: String = value.chars().skip(n - 4).collect();
                    format!("{}{tail}", "*".repeat(n - 4))
                }
            }
            MaskAlgorithm::Hash => {
                let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key) else {
                    // HMAC takes keys of any length; cover the value rather than show it.
                    return "*".repeat(16);
                };
                mac.update(value.as_bytes());
                let digest = mac.finalize().into_bytes();
                hex(&digest[..8])
            }
        }
    }

    /// A batch with the plan's columns masked: those become nullable Utf8 columns of the same
    /// name (other types are rendered as text first, binary as hex); nulls stay null. A plan
    /// that masks something must have one entry per column of the batch.
    pub fn mask_batch(&self, plan: &MaskPlan, batch: &RecordBatch) -> Result<RecordBatch> {
        if plan.is_empty() {
            return Ok(batch.clone());
        }
        if plan.columns.len() != batch.num_columns() {
            return Err(Error::PermissionDenied(format!(
                "the masking plan has {} columns but the result has {}, so masking cannot be guaranteed; a user with the unmask permission can run this query",
                plan.columns.len(),
                batch.num_columns()
            )));
        }
        let schema = batch.schema();
        let mut fields = Vec::with_capacity(batch.num_columns());
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
        for ((field, array), mask) in schema
            .fields()
            .iter()
            .zip(batch.columns())
            .zip(&plan.columns)
        {
            match mask {
                None => {
                    fields.push(field.clone());
                    columns.push(array.clone());
                }
                Some(alg) => {
                    let masked: StringArray = as_strings(array.as_ref())?
                        .iter()
                        .map(|v| v.as_deref().map(|s| self.mask_value(*alg, s)))
                        .collect();
                    fields.push(Arc::new(
                        Field::new(field.name(), DataType::Utf8, true)
                            .with_metadata(field.metadata().clone()),
                    ));
                    columns.push(Arc::new(masked));
                }
            }
        }
        let schema = Schema::new_with_metadata(fields, schema.metadata().clone());
        RecordBatch::try_new(Arc::new(schema), columns)
            .map_err(|e| Error::Internal(format!("building the masked batch: {e}")))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every value of an array as text (binary as hex), nulls as `None`.
fn as_strings(array: &dyn Array) -> Result<Vec<Option<String>>> {
    let bytes =
        |i: usize, get: &dyn Fn(usize) -> Vec<u8>| (!array.is_null(i)).then(|| hex(&get(i)));
    let n = array.len();
    if let Some(a) = array.as_binary_opt::<i32>() {
        return Ok((0..n).map(|i| bytes(i, &|i| a.value(i).to_vec())).collect());
    }
    if let Some(a) = array.as_binary_opt::<i64>() {
        return Ok((0..n).map(|i| bytes(i, &|i| a.value(i).to_vec())).collect());
    }
    if let Some(a) = array.as_binary_view_opt() {
        return Ok((0..n).map(|i| bytes(i, &|i| a.value(i).to_vec())).collect());
    }
    if let Some(a) = array.as_fixed_size_binary_opt() {
        return Ok((0..n).map(|i| bytes(i, &|i| a.value(i).to_vec())).collect());
    }
    if let Ok(cast) = arrow::compute::cast(array, &DataType::Utf8)
        && let Some(s) = cast.as_string_opt::<i32>()
    {
        return Ok(s.iter().map(|v| v.map(str::to_string)).collect());
    }
    let formatter = ArrayFormatter::try_new(array, &FormatOptions::default())
        .map_err(|e| Error::Internal(format!("rendering a masked column as text: {e}")))?;
    Ok((0..n)
        .map(|i| (!array.is_null(i)).then(|| formatter.value(i).to_string()))
        .collect())
}

/// What a statement names: relations (CTE names included), CTE names, function names.
#[derive(Default)]
struct Names {
    tables: Vec<Vec<String>>,
    ctes: HashSet<String>,
    functions: Vec<String>,
}

impl Names {
    fn add(&mut self, parts: Vec<String>) {
        if !parts.is_empty() && !self.tables.contains(&parts) {
            self.tables.push(parts);
        }
    }
}

impl Visitor for Names {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.ctes.insert(cte.alias.name.value.to_lowercase());
            }
        }
        if let SetExpr::Table(t) = query.body.as_ref() {
            self.add(table_command_parts(t));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        self.add(name_parts(relation));
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            self.functions.push(last_part_lower(&f.name));
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
            | TableFactor::Function { name, .. } => self.functions.push(last_part_lower(name)),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

fn collect(statements: &[Statement]) -> Names {
    let mut names = Names::default();
    for s in statements {
        let _ = s.visit(&mut names);
    }
    names
}

/// Functions that read a table named in a string or run SQL given as text: what they read
/// cannot be seen in the query.
fn reads_by_name(function: &str) -> bool {
    function.starts_with("dblink")
        || function.starts_with("table_to_xml")
        || function.starts_with("query_to_xml")
        || function.starts_with("cursor_to_xml")
        || function.starts_with("schema_to_xml")
        || function.starts_with("database_to_xml")
        || matches!(
            function,
            "table_to_xmlschema"
                | "query_to_xmlschema"
                | "eval"
                | "lo_get"
                | "lo_export"
                | "pg_read_file"
                | "pg_read_binary_file"
                | "load_file"
                | "readfile"
        )
}

/// Catalog relations that hold sampled column values (planner statistics, histograms).
fn exposes_values(parts: &[String]) -> bool {
    parts.last().is_some_and(|t| {
        matches!(
            t.to_lowercase().as_str(),
            "pg_stats"
                | "pg_stats_ext"
                | "pg_stats_ext_exprs"
                | "pg_statistic"
                | "pg_statistic_ext_data"
                | "pg_largeobject"
                | "column_statistics"
                | "sqlite_stat3"
                | "sqlite_stat4"
        )
    })
}

fn table_command_parts(t: &sqlparser::ast::Table) -> Vec<String> {
    t.schema_name
        .iter()
        .chain(t.table_name.iter())
        .cloned()
        .collect()
}

/// An output column while planning: the names it can be referred to by (lower case) and its
/// mask. `guessed` marks a name the planner derived from an expression, which the database
/// may spell differently.
#[derive(Debug, Clone)]
struct Col {
    names: Vec<String>,
    mask: Option<MaskAlgorithm>,
    guessed: bool,
}

/// A FROM item in scope: the name parts it is bound to (its alias, or its table name) and
/// its columns.
#[derive(Debug, Clone)]
struct Rel {
    binding: Vec<String>,
    cols: Vec<Col>,
}

/// One query level's FROM: its relations and what `*` expands to (joins with USING or
/// NATURAL merge columns).
#[derive(Debug, Default)]
struct Scope {
    rels: Vec<Rel>,
    star: Vec<Col>,
}

/// The strongest of two masks: the same algorithm stays, different ones become `Full`.
fn merge(a: Option<MaskAlgorithm>, b: Option<MaskAlgorithm>) -> Option<MaskAlgorithm> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(x), Some(y)) if x == y => Some(x),
        _ => Some(MaskAlgorithm::Full),
    }
}

fn lower(ident: &Ident) -> String {
    ident.value.to_lowercase()
}

struct Planner<'c> {
    engine: Engine,
    catalog: &'c dyn Fn(&[String]) -> Option<Vec<ColumnInfo>>,
    tables: HashMap<Vec<String>, Option<Vec<ColumnInfo>>>,
    /// CTEs in scope, innermost last.
    ctes: Vec<(String, Vec<Col>)>,
    /// Names of masked columns anywhere in the query (tables, and masked outputs of
    /// subqueries): an unresolvable reference to one counts as masked.
    masked_names: HashSet<String>,
    masked_summary: Vec<String>,
    /// Queries still allowed to be planned: recursive CTEs are planned until their masks
    /// settle, so nesting them multiplies the work.
    budget: usize,
}

/// How many (sub)queries one plan may plan, counting re-plans of recursive CTEs.
const PLANNING_BUDGET: usize = 10_000;

impl Planner<'_> {
    fn lookup(&mut self, parts: &[String]) -> Option<Vec<ColumnInfo>> {
        if let Some(found) = self.tables.get(parts) {
            return found.clone();
        }
        let found = (self.catalog)(parts);
        self.tables.insert(parts.to_vec(), found.clone());
        found
    }

    fn refuse(&self, why: String) -> Error {
        let mut masked: Vec<&str> = self.masked_summary.iter().map(String::as_str).collect();
        let more = masked.len().saturating_sub(5);
        masked.truncate(5);
        let mut list = masked.join(", ");
        if more > 0 {
            list.push_str(&format!(" and {more} more"));
        }
        let what = if list.is_empty() {
            "masked values could leak".to_string()
        } else {
            format!("masking of {list} cannot be guaranteed")
        };
        Error::PermissionDenied(format!(
            "{why}, so {what} and the query is refused; a user with the unmask permission can run it"
        ))
    }

    fn query(&mut self, query: &Query, outer: &[&Scope]) -> Result<Vec<Col>> {
        self.budget = self.budget.checked_sub(1).ok_or_else(|| {
            self.refuse("the query is too complex to follow (nested recursive CTEs)".into())
        })?;
        if !query.pipe_operators.is_empty() {
            return Err(self.refuse("the query uses pipe operators".into()));
        }
        if query.for_clause.is_some() {
            return Err(self.refuse("the query has a FOR XML/JSON clause".into()));
        }
        let mark = self.ctes.len();
        let result = self.query_body(query, outer);
        self.ctes.truncate(mark);
        result
    }

    fn query_body(&mut self, query: &Query, outer: &[&Scope]) -> Result<Vec<Col>> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                let name = lower(&cte.alias.name);
                let cols = match cte.query.body.as_ref() {
                    SetExpr::SetOperation { left, .. } if with.recursive => {
                        self.recursive_cte(&name, left, &cte.query, &cte.alias, outer)?
                    }
                    _ => rename(self.query(&cte.query, outer)?, &cte.alias),
                };
                self.note_masked(&cols);
                self.ctes.push((name, cols));
            }
        }
        self.set_expr(&query.body, outer)
    }

    /// A recursive CTE refers to itself: start from the anchor's columns and plan the whole
    /// body until the masks stop growing.
    fn recursive_cte(
        &mut self,
        name: &str,
        anchor: &SetExpr,
        query: &Query,
        alias: &TableAlias,
        outer: &[&Scope],
    ) -> Result<Vec<Col>> {
        let mut cols = rename(self.set_expr(anchor, outer)?, alias);
        for _ in 0..8 {
            self.ctes.push((name.to_string(), cols.clone()));
            let next = self.query(query, outer);
            self.ctes.pop();
            let next = rename(next?, alias);
            if next.len() != cols.len() {
                return Err(self.refuse(format!(
                    "the branches of recursive CTE \"{name}\" have different column counts"
                )));
            }
            let merged: Vec<Col> = cols
                .iter()
                .zip(&next)
                .map(|(a, b)| Col {
                    mask: merge(a.mask, b.mask),
                    ..a.clone()
                })
                .collect();
            if merged.iter().zip(&cols).all(|(a, b)| a.mask == b.mask) {
                return Ok(merged);
            }
            cols = merged;
        }
        Err(self.refuse(format!(
            "the masks of recursive CTE \"{name}\" do not settle"
        )))
    }

    fn note_masked(&mut self, cols: &[Col]) {
        for c in cols.iter().filter(|c| c.mask.is_some()) {
            self.masked_names.extend(c.names.iter().cloned());
        }
    }

    fn set_expr(&mut self, body: &SetExpr, outer: &[&Scope]) -> Result<Vec<Col>> {
        match body {
            SetExpr::Select(select) => self.select(select, outer),
            SetExpr::Query(query) => self.query(query, outer),
            SetExpr::SetOperation {
                left, op, right, ..
            } => {
                let l = self.set_expr(left, outer)?;
                let r = self.set_expr(right, outer)?;
                if l.len() != r.len() {
                    return Err(self.refuse(format!(
                        "the branches of {op} have {} and {} columns",
                        l.len(),
                        r.len()
                    )));
                }
                Ok(l.into_iter()
                    .zip(r)
                    .map(|(a, b)| Col {
                        mask: merge(a.mask, b.mask),
                        guessed: a.guessed,
                        names: a.names,
                    })
                    .collect())
            }
            SetExpr::Values(values) => {
                let width = values.rows.first().map_or(0, |r| r.content.len());
                let mut cols: Vec<Col> = (0..width)
                    .map(|i| Col {
                        names: vec![format!("column{}", i + 1), format!("column_{i}")],
                        mask: None,
                        guessed: true,
                    })
                    .collect();
                for row in &values.rows {
                    let row = &row.content;
                    if row.len() != width {
                        return Err(self.refuse("VALUES rows have different lengths".into()));
                    }
                    for (col, expr) in cols.iter_mut().zip(row) {
                        let (mask, _) = self.item(expr, outer)?;
                        col.mask = merge(col.mask, mask);
                    }
                }
                Ok(cols)
            }
            SetExpr::Table(table) => {
                let parts = table_command_parts(table);
                let (_, cols) = self.named_table(&parts, None)?;
                Ok(cols)
            }
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                Err(self.refuse("the query holds a data-modifying statement".into()))
            }
        }
    }

    fn select(&mut self, select: &Select, outer: &[&Scope]) -> Result<Vec<Col>> {
        if select.into.is_some() {
            return Err(self.refuse("SELECT … INTO writes the rows elsewhere".into()));
        }
        if !select.lateral_views.is_empty()
            || select.value_table_mode.is_some()
            || select.exclude.is_some()
        {
            return Err(self.refuse(
                "the SELECT uses a construct masking does not follow (LATERAL VIEW, AS VALUE, EXCLUDE)".into(),
            ));
        }
        let scope = self.from(&select.from, outer)?;
        let mut chain = outer.to_vec();
        chain.push(&scope);
        let mut out = Vec::new();
        for item in &select.projection {
            match item {
                SelectItem::Wildcard(options) => {
                    self.plain_wildcard(options)?;
                    out.extend(scope.star.iter().cloned());
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(name),
                    options,
                ) => {
                    self.plain_wildcard(options)?;
                    let qualifier: Vec<String> =
                        name_parts(name).iter().map(|p| p.to_lowercase()).collect();
                    let Some(rel) = scope.rels.iter().find(|r| binds(r, &qualifier)) else {
                        return Err(self.refuse(format!("{name}.* names no table of the query")));
                    };
                    out.extend(rel.cols.iter().cloned());
                }
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::Expr(e), _) => {
                    return Err(
                        self.refuse(format!("({e}).* expands a value masking does not follow"))
                    );
                }
                SelectItem::UnnamedExpr(expr) => {
                    let (mask, extra) = self.item(expr, &chain)?;
                    let (mut names, guessed) = implicit_names(expr);
                    names.extend(extra);
                    out.push(Col {
                        names,
                        mask,
                        guessed,
                    });
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let (mask, _) = self.item(expr, &chain)?;
                    out.push(Col {
                        names: vec![lower(alias)],
                        mask,
                        guessed: false,
                    });
                }
                SelectItem::ExprWithAliases { .. } => {
                    return Err(self.refuse("an item with several aliases".into()));
                }
            }
        }
        self.note_masked(&out);
        Ok(out)
    }

    fn plain_wildcard(&self, options: &WildcardAdditionalOptions) -> Result<()> {
        if options.opt_ilike.is_some()
            || options.opt_exclude.is_some()
            || options.opt_except.is_some()
            || options.opt_replace.is_some()
            || options.opt_rename.is_some()
            || options.opt_alias.is_some()
        {
            return Err(self.refuse("* with ILIKE/EXCLUDE/EXCEPT/REPLACE/RENAME".into()));
        }
        Ok(())
    }

    fn from(&mut self, from: &[TableWithJoins], outer: &[&Scope]) -> Result<Scope> {
        let mut scope = Scope::default();
        for twj in from {
            let (rels, star) = self.joined(twj, outer)?;
            scope.rels.extend(rels);
            scope.star.extend(star);
        }
        Ok(scope)
    }

    fn joined(&mut self, twj: &TableWithJoins, outer: &[&Scope]) -> Result<(Vec<Rel>, Vec<Col>)> {
        let (mut rels, mut star) = self.factor(&twj.relation, outer)?;
        for join in &twj.joins {
            let (r_rels, r_star) = self.factor(&join.relation, outer)?;
            let constraint = match &join.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c)
                | JoinOperator::CrossJoin(c)
                | JoinOperator::StraightJoin(c) => c,
                other => {
                    let rendered = other_join_name(other);
                    return Err(self.refuse(format!("{rendered} joins are not followed")));
                }
            };
            star = match constraint {
                JoinConstraint::Using(names) => {
                    let names: Vec<String> = names.iter().map(last_part_lower).collect();
                    self.merge_using(star, r_star, &names)?
                }
                JoinConstraint::Natural => {
                    let names: Vec<String> = star
                        .iter()
                        .filter_map(|c| c.names.first())
                        .filter(|n| r_star.iter().any(|r| r.names.first() == Some(*n)))
                        .cloned()
                        .collect();
                    self.merge_using(star, r_star, &names)?
                }
                JoinConstraint::On(_) | JoinConstraint::None => {
                    star.extend(r_star);
                    star
                }
            };
            rels.extend(r_rels);
        }
        Ok((rels, star))
    }

    /// `*` over a join with USING (or NATURAL): the join columns once. PostgreSQL and MySQL put
    /// them first; SQLite keeps the left side's order and drops them from the right.
    fn merge_using(&self, left: Vec<Col>, right: Vec<Col>, names: &[String]) -> Result<Vec<Col>> {
        let find = |cols: &[Col], n: &str| {
            cols.iter()
                .position(|c| c.names.first().is_some_and(|x| x == n))
        };
        let mut joined = Vec::new();
        for n in names {
            let (Some(l), Some(r)) = (find(&left, n), find(&right, n)) else {
                return Err(self.refuse(format!("join column \"{n}\" is not on both sides")));
            };
            joined.push((n.clone(), l, r, merge(left[l].mask, right[r].mask)));
        }
        let is_join = |c: &Col| c.names.first().is_some_and(|x| names.contains(x));
        let mut out = Vec::new();
        if self.engine == Engine::Sqlite {
            for c in &left {
                let mut c = c.clone();
                if let Some(j) = joined.iter().find(|j| Some(&j.0) == c.names.first()) {
                    c.mask = j.3;
                }
                out.push(c);
            }
        } else {
            for (_, l, _, mask) in &joined {
                out.push(Col {
                    mask: *mask,
                    ..left[*l].clone()
                });
            }
            out.extend(left.iter().filter(|c| !is_join(c)).cloned());
        }
        out.extend(right.iter().filter(|c| !is_join(c)).cloned());
        Ok(out)
    }

    fn factor(&mut self, factor: &TableFactor, outer: &[&Scope]) -> Result<(Vec<Rel>, Vec<Col>)> {
        match factor {
            TableFactor::Table {
                name,
                alias,
                args,
                json_path,
                ..
            } => {
                if args.is_some() || json_path.is_some() {
                    return Err(self.refuse(format!("table function {name} in FROM")));
                }
                let parts = name_parts(name);
                let (binding, cols) = self.named_table(&parts, alias.as_ref())?;
                Ok((
                    vec![Rel {
                        binding,
                        cols: cols.clone(),
                    }],
                    cols,
                ))
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                ..
            } => {
                if *lateral {
                    return Err(self.refuse("a LATERAL subquery in FROM".into()));
                }
                let mut cols = self.query(subquery, outer)?;
                let mut binding = Vec::new();
                if let Some(alias) = alias {
                    cols = rename(cols, alias);
                    binding = vec![lower(&alias.name)];
                }
                Ok((
                    vec![Rel {
                        binding,
                        cols: cols.clone(),
                    }],
                    cols,
                ))
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let (rels, star) = self.joined(table_with_joins, outer)?;
                match alias {
                    Some(alias) => {
                        let cols = rename(star, alias);
                        Ok((
                            vec![Rel {
                                binding: vec![lower(&alias.name)],
                                cols: cols.clone(),
                            }],
                            cols,
                        ))
                    }
                    None => Ok((rels, star)),
                }
            }
            other => {
                let rendered = other.to_string();
                let shown: String = rendered.chars().take(60).collect();
                Err(self.refuse(format!("FROM item {shown} is not followed")))
            }
        }
    }

    /// A table or CTE by name: its binding and columns.
    fn named_table(
        &mut self,
        parts: &[String],
        alias: Option<&TableAlias>,
    ) -> Result<(Vec<String>, Vec<Col>)> {
        let lowered: Vec<String> = parts.iter().map(|p| p.to_lowercase()).collect();
        let cte = match lowered.as_slice() {
            [single] => self
                .ctes
                .iter()
                .rev()
                .find(|(n, _)| n == single)
                .map(|(_, cols)| cols.clone()),
            _ => None,
        };
        let cols = match cte {
            Some(cols) => cols,
            None => match self.lookup(parts) {
                Some(columns) => columns
                    .into_iter()
                    .map(|c| Col {
                        names: vec![c.name.to_lowercase()],
                        mask: c.mask,
                        guessed: false,
                    })
                    .collect(),
                None => {
                    return Err(self.refuse(format!(
                        "the catalog does not know table \"{}\"",
                        parts.join(".")
                    )));
                }
            },
        };
        Ok(match alias {
            Some(alias) => (vec![lower(&alias.name)], rename(cols, alias)),
            None => (lowered, cols),
        })
    }

    /// The mask of a select item (or VALUES entry), and names the database may give it beyond
    /// [`implicit_names`]: a plain column keeps its mask, `count(…)` leaks nothing, anything
    /// else computed from a masked value is covered fully.
    fn item(
        &mut self,
        expr: &Expr,
        chain: &[&Scope],
    ) -> Result<(Option<MaskAlgorithm>, Vec<String>)> {
        let mut expr = expr;
        while let Expr::Nested(inner) = expr {
            expr = inner;
        }
        match expr {
            Expr::Identifier(ident) => Ok((self.column(&[], &lower(ident), chain), vec![])),
            Expr::CompoundIdentifier(parts) => {
                let lowered: Vec<String> = parts.iter().map(lower).collect();
                let mask = match lowered.split_last() {
                    Some((name, qualifier)) => self.column(qualifier, name, chain),
                    None => None,
                };
                Ok((mask, vec![]))
            }
            Expr::Function(f) if last_part_lower(&f.name) == "count" => {
                let tainted = match &f.filter {
                    Some(filter) => self.taints(filter, chain)?,
                    None => false,
                };
                Ok((tainted.then_some(MaskAlgorithm::Full), vec![]))
            }
            Expr::Subquery(query) => {
                let cols = self.query(query, chain)?;
                match cols.as_slice() {
                    [single] => Ok((single.mask, single.names.clone())),
                    _ => {
                        let tainted = cols.iter().any(|c| c.mask.is_some());
                        Ok((tainted.then_some(MaskAlgorithm::Full), vec![]))
                    }
                }
            }
            other => {
                let tainted = self.taints(other, chain)?;
                Ok((tainted.then_some(MaskAlgorithm::Full), vec![]))
            }
        }
    }

    /// The mask of a column reference. One that resolves to several columns gets the
    /// strongest of their masks; one that resolves to none counts as masked if a masked
    /// column anywhere has its name, if it names a whole row holding a masked column, or if
    /// a masked column in scope has a name the planner could only guess.
    fn column(&self, qualifier: &[String], name: &str, chain: &[&Scope]) -> Option<MaskAlgorithm> {
        for scope in chain.iter().rev() {
            let mut found = false;
            let mut mask = None;
            for rel in scope
                .rels
                .iter()
                .filter(|r| qualifier.is_empty() || binds(r, qualifier))
            {
                for col in rel
                    .cols
                    .iter()
                    .filter(|c| c.names.iter().any(|n| n == name))
                {
                    found = true;
                    mask = merge(mask, col.mask);
                }
            }
            if found {
                return mask;
            }
        }
        let full = Some(MaskAlgorithm::Full);
        if self.masked_names.contains(name)
            || qualifier.iter().any(|q| self.masked_names.contains(q))
        {
            return full;
        }
        let mut whole_row = qualifier.to_vec();
        whole_row.push(name.to_string());
        for scope in chain {
            for rel in &scope.rels {
                let masked = rel.cols.iter().any(|c| c.mask.is_some());
                if masked && (binds(rel, &whole_row) || binds(rel, qualifier)) {
                    return full;
                }
                if rel.cols.iter().any(|c| c.mask.is_some() && c.guessed) {
                    return full;
                }
            }
        }
        None
    }

    /// Whether an expression reads a masked value: a masked column, a whole row or `*` with
    /// one, or a subquery whose output is masked.
    fn taints(&mut self, expr: &Expr, chain: &[&Scope]) -> Result<bool> {
        let mut taint = Taint {
            planner: self,
            chain,
            depth: 0,
            tainted: false,
        };
        match expr.visit(&mut taint) {
            ControlFlow::Break(e) => Err(e),
            ControlFlow::Continue(()) => Ok(taint.tainted),
        }
    }

    fn rel_masked(&self, qualifier: &[String], chain: &[&Scope]) -> bool {
        chain.iter().any(|s| {
            s.rels
                .iter()
                .filter(|r| qualifier.is_empty() || binds(r, qualifier))
                .any(|r| r.cols.iter().any(|c| c.mask.is_some()))
        })
    }
}

struct Taint<'p, 'c, 's> {
    planner: &'p mut Planner<'c>,
    chain: &'s [&'s Scope],
    /// How many queries deep the walk is: references inside a subquery belong to it and are
    /// judged by planning the subquery.
    depth: usize,
    tainted: bool,
}

impl Visitor for Taint<'_, '_, '_> {
    type Break = Error;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Error> {
        if self.depth == 0 {
            match self.planner.query(query, self.chain) {
                Ok(cols) => self.tainted |= cols.iter().any(|c| c.mask.is_some()),
                Err(e) => return ControlFlow::Break(e),
            }
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<Error> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<Error> {
        if self.depth > 0 {
            return ControlFlow::Continue(());
        }
        let chain = self.chain;
        let masked = match expr {
            Expr::Identifier(ident) => self.planner.column(&[], &lower(ident), chain).is_some(),
            Expr::CompoundIdentifier(parts) => {
                let lowered: Vec<String> = parts.iter().map(lower).collect();
                match lowered.split_last() {
                    Some((name, qualifier)) => {
                        self.planner.column(qualifier, name, chain).is_some()
                    }
                    None => false,
                }
            }
            Expr::Wildcard(_) => self.planner.rel_masked(&[], chain),
            Expr::QualifiedWildcard(name, _) => {
                let q: Vec<String> = name_parts(name).iter().map(|p| p.to_lowercase()).collect();
                self.planner.rel_masked(&q, chain)
            }
            Expr::Function(f) => {
                let is_count = last_part_lower(&f.name) == "count";
                match &f.args {
                    FunctionArguments::List(list) => list.args.iter().any(|arg| {
                        let arg = match arg {
                            sqlparser::ast::FunctionArg::Named { arg, .. }
                            | sqlparser::ast::FunctionArg::ExprNamed { arg, .. }
                            | sqlparser::ast::FunctionArg::Unnamed(arg) => arg,
                        };
                        match arg {
                            FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {
                                !is_count && self.planner.rel_masked(&[], chain)
                            }
                            FunctionArgExpr::QualifiedWildcard(name) => {
                                let q: Vec<String> =
                                    name_parts(name).iter().map(|p| p.to_lowercase()).collect();
                                !is_count && self.planner.rel_masked(&q, chain)
                            }
                            FunctionArgExpr::Expr(_) => false,
                        }
                    }),
                    _ => false,
                }
            }
            _ => false,
        };
        self.tainted |= masked;
        ControlFlow::Continue(())
    }
}

/// Whether a relation is bound to a name ending in `qualifier` (`u`, `users`, `public.users`).
fn binds(rel: &Rel, qualifier: &[String]) -> bool {
    !qualifier.is_empty()
        && rel.binding.len() >= qualifier.len()
        && rel.binding[rel.binding.len() - qualifier.len()..] == *qualifier
}

/// Renames columns by a table alias's column list (`AS s(a, b)`).
fn rename(mut cols: Vec<Col>, alias: &TableAlias) -> Vec<Col> {
    for (col, name) in cols.iter_mut().zip(&alias.columns) {
        col.names = vec![lower(&name.name)];
        col.guessed = false;
    }
    cols
}

/// The names the database may give an unaliased select item, and whether they are a guess:
/// a column keeps its name; PostgreSQL names a function call after the function and a cast
/// after its operand; MySQL and SQLite use the expression's text.
fn implicit_names(expr: &Expr) -> (Vec<String>, bool) {
    match expr {
        Expr::Identifier(ident) => (vec![lower(ident)], false),
        Expr::CompoundIdentifier(parts) => (parts.last().map(lower).into_iter().collect(), false),
        Expr::Nested(inner) => implicit_names(inner),
        other => {
            let mut names = vec![other.to_string().to_lowercase(), "?column?".to_string()];
            match other {
                Expr::Function(f) => names.push(last_part_lower(&f.name)),
                Expr::Cast { expr, .. } => names.extend(implicit_names(expr).0),
                _ => {}
            }
            (names, true)
        }
    }
}

fn other_join_name(op: &JoinOperator) -> &'static str {
    match op {
        JoinOperator::Semi(_) | JoinOperator::LeftSemi(_) | JoinOperator::RightSemi(_) => "SEMI",
        JoinOperator::Anti(_) | JoinOperator::LeftAnti(_) | JoinOperator::RightAnti(_) => "ANTI",
        JoinOperator::CrossApply | JoinOperator::OuterApply => "APPLY (lateral)",
        JoinOperator::AsOf { .. } => "ASOF",
        _ => "these",
    }
}

#[cfg(test)]
mod tests;

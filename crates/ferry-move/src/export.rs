//! Exports: a table or query to Parquet, CSV or JSON Lines files on local disk or object storage,
//! optionally split into Hive-style partitions by a date column. Each partition is one file,
//! written under a temporary name and renamed into place when complete; older files in the
//! partition are removed afterwards, so running a day again replaces it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ferry_connect::{InstancePool, StatementOutput};
use ferry_core::{Error, Feature, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::files::{FileFormat, FileSink, Location, days_of, open_location, render_template};
use crate::plan::{SourceSpec, select_sql};
use crate::run::Progress;

/// An export as a user describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    /// A table or query on an instance.
    pub source: SourceSpec,
    /// A path, `file://` URL or `s3://bucket/prefix`. A name ending in the format's extension
    /// writes exactly that file; anything else is a directory of `part-00000.<ext>` files.
    pub url: String,
    #[serde(default)]
    pub format: FileFormat,
    /// A Hive-style partition template such as `y=${yyyy}/m=${mm}/d=${dd}`.
    #[serde(default)]
    pub partition_by: Option<String>,
    /// The date or timestamp column that fills `${yyyy}`, `${mm}` and `${dd}`; without it they
    /// come from the `bizdate` variable.
    #[serde(default)]
    pub partition_column: Option<String>,
    /// Values for `${name}` in the template.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Object-store settings (`endpoint`, `region`, `allow_http`, …); credentials come from the
    /// server's `AWS_*` environment.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// A condition on source rows, in the source's SQL dialect.
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
}

/// One file an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedFile {
    pub path: String,
    pub rows: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub rows: u64,
    pub files: Vec<ExportedFile>,
    pub duration_ms: u64,
}

impl ExportSpec {
    pub fn validate(&self) -> Result<()> {
        if matches!(self.source, SourceSpec::Files { .. }) {
            return Err(Error::InvalidInput(
                "an export reads a table or a query, not files".into(),
            ));
        }
        if self.partition_column.is_some() && self.partition_by.is_none() {
            return Err(Error::InvalidInput(
                "--partition-column needs a --partition-by template".into(),
            ));
        }
        if let Some(t) = &self.partition_by {
            let uses_date = ["${yyyy}", "${mm}", "${dd}"].iter().any(|v| t.contains(v));
            if uses_date
                && self.partition_column.is_none()
                && !self.variables.contains_key("bizdate")
            {
                return Err(Error::InvalidInput(format!(
                    "the template {t:?} uses ${{yyyy}}/${{mm}}/${{dd}}: name the date column with --partition-column, or give --var bizdate=YYYY-MM-DD"
                )));
            }
            // Rows arrive ordered by date, so each partition must be one run of days: the date
            // parts used have to be yyyy, yyyy+mm or yyyy+mm+dd (d=${dd} alone would recur monthly).
            let used: Vec<bool> = ["${yyyy}", "${mm}", "${dd}"]
                .iter()
                .map(|v| t.contains(v))
                .collect();
            if self.partition_column.is_some()
                && !matches!(
                    used.as_slice(),
                    [true, false, false]
                        | [true, true, false]
                        | [true, true, true]
                        | [false, false, false]
                )
            {
                return Err(Error::InvalidInput(format!(
                    "the template {t:?} would put different dates in one partition: use ${{yyyy}}, ${{yyyy}}+${{mm}} or ${{yyyy}}+${{mm}}+${{dd}}"
                )));
            }
            // Renders once with a placeholder day to catch unknown variables before any I/O.
            render_template(t, Some(0), &self.variables)?;
        }
        Ok(())
    }

    fn bizdate(&self) -> Result<Option<i32>> {
        let Some(d) = self.variables.get("bizdate") else {
            return Ok(None);
        };
        let date = chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").map_err(|_| {
            Error::InvalidInput(format!("bizdate {d:?} is not a date like 2026-11-21"))
        })?;
        Ok(Some(chrono::Datelike::num_days_from_ce(&date) - 719_163))
    }
}

const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

fn file_path(location: &Location, partition: Option<&str>, format: FileFormat) -> (Path, bool) {
    let single = location
        .path
        .as_ref()
        .ends_with(&format!(".{}", format.extension()));
    if single && partition.is_none() {
        return (location.path.clone(), true);
    }
    let mut parts: Vec<String> = location
        .path
        .parts()
        .map(|p| p.as_ref().to_string())
        .collect();
    if let Some(p) = partition {
        parts.extend(p.split('/').map(str::to_string));
    }
    parts.push(format!("part-00000.{}", format.extension()));
    (Path::from_iter(parts), false)
}

/// Removes part files in a partition's directory other than the one just written (files
/// Ferry did not name `part-*` are left alone).
async fn remove_stale(location: &Location, written: &Path, format: FileFormat) -> Result<()> {
    let Some(dir) = written
        .parts()
        .collect::<Vec<_>>()
        .split_last()
        .map(|(_, d)| Path::from_iter(d.iter().cloned()))
    else {
        return Ok(());
    };
    let stale: Vec<Path> = location
        .store
        .list_with_delimiter(Some(&dir))
        .await
        .map(|l| {
            l.objects
                .into_iter()
                .map(|o| o.location)
                .filter(|p| p != written)
                .collect()
        })
        .unwrap_or_default();
    let ext = format!(".{}", format.extension());
    for p in stale {
        let name = p.filename().unwrap_or_default();
        if name.starts_with("part-") && name.ends_with(&ext) {
            location
                .store
                .delete(&p)
                .await
                .map_err(|e| Error::Connection(format!("removing {p}: {e}")))?;
        }
    }
    Ok(())
}

/// Runs an export from an instance's pool.
/// A change made to every batch before it is written (the server masks columns with it).
pub trait BatchMapper: Send + Sync {
    /// The schema the mapped batches have.
    fn schema(&self, source: &arrow::datatypes::SchemaRef) -> Result<arrow::datatypes::SchemaRef>;
    fn map(&self, batch: arrow::array::RecordBatch) -> Result<arrow::array::RecordBatch>;
    /// Whether column `index` comes out unchanged (only such a column may name partitions,
    /// since partition paths are written in clear).
    fn keeps(&self, index: usize) -> bool;
}

pub async fn run_export(
    spec: &ExportSpec,
    pool: Arc<InstancePool>,
    progress: Arc<Progress>,
) -> Result<ExportReport> {
    run_export_mapped(spec, pool, progress, None).await
}

/// An export whose batches go through `mapper` before they are written.
pub async fn run_export_mapped(
    spec: &ExportSpec,
    pool: Arc<InstancePool>,
    progress: Arc<Progress>,
    mapper: Option<Arc<dyn BatchMapper>>,
) -> Result<ExportReport> {
    spec.validate()?;
    let started = Instant::now();
    let location = open_location(&spec.url, &spec.options)?;
    let engine = pool.connector().engine();
    let mut lease = pool
        .acquire(Feature::AsyncQuery, spec.source.database(), "export")
        .await?;
    let conditions: Vec<String> = spec.filter.iter().map(|f| format!("({f})")).collect();
    let sql = select_sql(
        engine,
        &spec.source,
        &conditions,
        spec.partition_column.as_deref(),
    );
    let (schema, mut batches) = match lease
        .conn()
        .run(&sql)
        .await
        .map_err(|e| e.context("reading the source"))?
    {
        StatementOutput::Rows { schema, batches } => (schema, batches),
        StatementOutput::Affected(_) => {
            return Err(Error::InvalidInput(
                "the source statement returns no rows: give a table or a SELECT".into(),
            ));
        }
    };
    let column = match &spec.partition_column {
        Some(c) => Some(schema.index_of(c).map_err(|_| {
            Error::InvalidInput(format!("the source has no column \"{c}\" to partition by"))
        })?),
        None => None,
    };
    let source_schema = schema.clone();
    let schema = match &mapper {
        Some(m) => {
            if let Some(c) = column.filter(|c| !m.keeps(*c)) {
                return Err(Error::PermissionDenied(format!(
                    "the partition column \"{}\" is masked for you, and partition paths would show it in clear",
                    source_schema.field(c).name()
                )));
            }
            m.schema(&schema)?
        }
        None => schema,
    };
    let fixed_day = spec.bizdate()?;
    let mut files = Vec::new();
    let mut current: Option<(String, FileSink)> = None;
    let mut rows = 0u64;
    let outcome: Result<()> = async {
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            // Rows arrive ordered by the partition column: cut the batch where the partition changes.
            let keys: Vec<String> = match (&spec.partition_by, column) {
                (Some(t), Some(c)) => days_of(batch.column(c).as_ref())?
                    .into_iter()
                    .map(|d| match d {
                        Some(d) => render_template(t, Some(d), &spec.variables),
                        None => Ok(NULL_PARTITION.to_string()),
                    })
                    .collect::<Result<_>>()?,
                (Some(t), None) => {
                    vec![render_template(t, fixed_day, &spec.variables)?; batch.num_rows()]
                }
                (None, _) => vec![String::new(); batch.num_rows()],
            };
            let batch = match &mapper {
                Some(m) => m.map(batch)?,
                None => batch,
            };
            let mut start = 0;
            while start < keys.len() {
                let key = &keys[start];
                let end = keys[start..]
                    .iter()
                    .position(|k| k != key)
                    .map(|p| start + p)
                    .unwrap_or(keys.len());
                if current.as_ref().map(|(k, _)| k) != Some(key) {
                    if let Some((_, sink)) = current.take() {
                        files.push(close(&location, sink, spec.format).await?);
                    }
                    let partition = (!key.is_empty()).then_some(key.as_str());
                    let (target, _) = file_path(&location, partition, spec.format);
                    current = Some((
                        key.clone(),
                        FileSink::create(&location, target, spec.format, &schema)?,
                    ));
                }
                let slice = batch.slice(start, end - start);
                if let Some((_, sink)) = current.as_mut() {
                    sink.write(&slice).await?;
                }
                rows += slice.num_rows() as u64;
                progress
                    .rows_read
                    .fetch_add(slice.num_rows() as u64, Ordering::Relaxed);
                progress
                    .rows_written
                    .fetch_add(slice.num_rows() as u64, Ordering::Relaxed);
                start = end;
            }
        }
        if current.is_none() && spec.partition_by.is_none() {
            // An empty result still makes a (header-only) file, so the export is visible.
            let (target, _) = file_path(&location, None, spec.format);
            current = Some((
                String::new(),
                FileSink::create(&location, target, spec.format, &schema)?,
            ));
        }
        if let Some((_, sink)) = current.take() {
            files.push(close(&location, sink, spec.format).await?);
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        if let Some((_, sink)) = current.take() {
            sink.abort().await;
        }
        return Err(e);
    }
    tracing::info!(source = %spec.source.display(), url = %spec.url, rows, files = files.len(), "export finished");
    Ok(ExportReport {
        rows,
        files,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

async fn close(
    location: &Location,
    sink: FileSink,
    format: FileFormat,
) -> Result<crate::export::ExportedFile> {
    let rows = sink.rows;
    let path = sink.finish().await?;
    if path != location.path {
        remove_stale(location, &path, format).await?;
    }
    Ok(ExportedFile {
        path: path.to_string(),
        rows,
    })
}

/// Lists the partitions (directories holding files) under a location; for tests and reports.
pub async fn list_partitions(location: &Location) -> Result<Vec<String>> {
    let mut dirs: Vec<String> = location
        .store
        .list(Some(&location.path))
        .map_ok(|m| {
            let parts: Vec<_> = m.location.parts().map(|p| p.as_ref().to_string()).collect();
            parts[..parts.len().saturating_sub(1)].join("/")
        })
        .try_collect()
        .await
        .map_err(|e| Error::Connection(e.to_string()))?;
    dirs.sort();
    dirs.dedup();
    Ok(dirs)
}

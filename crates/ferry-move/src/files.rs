//! Files on local disk or object storage (`s3://…` with an endpoint override for S3-compatible
//! servers) through `object_store`: Parquet (zstd), CSV and JSON Lines; exports with Hive-style
//! partitions from a template (`y=${yyyy}/m=${mm}/d=${dd}`), each partition written under a
//! temporary name and made visible only when complete; imports that read files back as batches.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Date32Type, SchemaRef, TimeUnit, TimestampMicrosecondType};
use bytes::Bytes;
use ferry_core::{Error, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::AsyncArrowWriter;
#[allow(deprecated)]
// Its replacement is a hand-written AsyncFileReader doing the same two calls.
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::BatchStream;

/// File formats Ferry reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    #[default]
    Parquet,
    Csv,
    Jsonl,
}

impl FileFormat {
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Parquet => "parquet",
            FileFormat::Csv => "csv",
            FileFormat::Jsonl => "jsonl",
        }
    }
}

/// A place for files: an object store and a prefix (or a single file) in it.
#[derive(Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    /// The URL as given, for messages.
    pub url: String,
}

fn storage_error(url: &str, e: impl std::fmt::Display) -> Error {
    Error::Connection(format!("object storage at {url}: {e}"))
}

/// Object-store settings a request may give; everything else is the server's configuration.
pub const REQUEST_OPTIONS: &[&str] = &["region", "aws_region"];

/// Opens a location. Plain paths are local; `s3://bucket/prefix` reads credentials, the endpoint
/// and transport settings from the server's `AWS_*` environment; `options` may set the region.
pub fn open_location(url: &str, options: &BTreeMap<String, String>) -> Result<Location> {
    let parsed = if url.contains("://") {
        url::Url::parse(url)
            .map_err(|e| Error::InvalidInput(format!("malformed storage URL {url:?}: {e}")))?
    } else {
        let absolute = std::path::absolute(url)
            .map_err(|e| Error::InvalidInput(format!("cannot resolve the path {url:?}: {e}")))?;
        url::Url::from_file_path(&absolute)
            .map_err(|_| Error::InvalidInput(format!("cannot use the path {url:?}")))?
    };
    let globbed = url.contains(['*', '?']);
    if parsed.scheme() == "file"
        && !globbed
        && let Ok(dir) = parsed.to_file_path()
    {
        // object_store's local store needs the directories of a prefix to exist to list them.
        let dir = if dir.extension().is_some() {
            dir.parent().map(|p| p.to_path_buf()).unwrap_or(dir)
        } else {
            dir
        };
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::InvalidInput(format!(
                "cannot create the directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    // Requests may only pick a region: credentials, endpoints and transport settings come from the
    // server's environment (AWS_* for s3://, GOOGLE_* for gs://, AZURE_* for az://), so no request
    // can send the server's keys to a host it chooses.
    let env_prefix = match parsed.scheme() {
        "gs" => "GOOGLE_",
        "az" | "azure" | "abfs" | "abfss" | "adl" => "AZURE_",
        _ => "AWS_",
    };
    if let Some(k) = options
        .keys()
        .find(|k| !REQUEST_OPTIONS.contains(&k.to_ascii_lowercase().as_str()))
    {
        let credential = ["secret", "key_id", "token", "password"]
            .iter()
            .any(|c| k.to_ascii_lowercase().contains(c));
        return Err(Error::InvalidInput(if credential {
            format!(
                "storage option {k:?} is a credential: give credentials to the server in its {env_prefix}* environment, never in a request (requests are stored)"
            )
        } else {
            format!(
                "storage option {k:?} cannot be set per request: set it in the server's {env_prefix}* environment (AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, …); requests may set {}",
                REQUEST_OPTIONS.join(", ")
            )
        }));
    }
    let mut opts: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with(env_prefix))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    opts.extend(options.iter().map(|(k, v)| (k.clone(), v.clone())));
    let (store, path) = object_store::parse_url_opts(&parsed, opts).map_err(|e| match e {
        object_store::Error::Generic { .. } | object_store::Error::NotImplemented { .. } => {
            Error::InvalidInput(format!(
                "unsupported storage URL {url:?}: {e}; use a path, file://, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix"
            ))
        }
        other => Error::InvalidInput(format!("cannot open storage URL {url:?}: {other}")),
    })?;
    Ok(Location {
        store: Arc::from(store),
        path,
        url: url.to_string(),
    })
}

/// Parquet writer settings: zstd, row groups small enough to keep memory flat.
fn parquet_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(65_536))
        .build()
}

/// Writes one file: under a temporary name first, renamed into place by [`FileSink::finish`].
pub struct FileSink {
    store: Arc<dyn ObjectStore>,
    temp: Path,
    target: Path,
    writer: SinkWriter,
    url: String,
    pub rows: u64,
}

enum SinkWriter {
    Parquet(Box<AsyncArrowWriter<object_store::buffered::BufWriter>>),
    Text {
        out: Box<object_store::buffered::BufWriter>,
        format: FileFormat,
        header_done: bool,
    },
}

impl FileSink {
    pub fn create(
        location: &Location,
        target: Path,
        format: FileFormat,
        schema: &SchemaRef,
    ) -> Result<Self> {
        let temp = Path::from(format!(
            "{}.ferry-tmp-{}",
            target,
            uuid::Uuid::new_v4().simple()
        ));
        let writer = match format {
            FileFormat::Parquet => {
                let out =
                    object_store::buffered::BufWriter::new(location.store.clone(), temp.clone());
                let w = AsyncArrowWriter::try_new(out, schema.clone(), Some(parquet_properties()))
                    .map_err(|e| Error::Internal(format!("starting a Parquet file: {e}")))?;
                SinkWriter::Parquet(Box::new(w))
            }
            FileFormat::Csv | FileFormat::Jsonl => SinkWriter::Text {
                out: Box::new(object_store::buffered::BufWriter::new(
                    location.store.clone(),
                    temp.clone(),
                )),
                format,
                header_done: false,
            },
        };
        Ok(FileSink {
            store: location.store.clone(),
            temp,
            target,
            writer,
            url: location.url.clone(),
            rows: 0,
        })
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        match &mut self.writer {
            SinkWriter::Parquet(w) => w
                .write(batch)
                .await
                .map_err(|e| storage_error(&self.url, e)),
            SinkWriter::Text {
                out,
                format,
                header_done,
            } => {
                let mut buf = Vec::new();
                match format {
                    FileFormat::Csv => {
                        let mut w = arrow::csv::WriterBuilder::new()
                            .with_header(!*header_done)
                            .build(&mut buf);
                        w.write(batch).map_err(|e| Error::Internal(e.to_string()))?;
                    }
                    _ => {
                        let mut w = arrow::json::WriterBuilder::new()
                            .with_explicit_nulls(true)
                            .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
                        w.write(batch).map_err(|e| Error::Internal(e.to_string()))?;
                        w.finish().map_err(|e| Error::Internal(e.to_string()))?;
                    }
                }
                *header_done = true;
                out.write_all(&buf)
                    .await
                    .map_err(|e| storage_error(&self.url, e))
            }
        }
    }

    /// Completes the file and moves it to its final name; returns that name.
    pub async fn finish(self) -> Result<Path> {
        let closed = match self.writer {
            SinkWriter::Parquet(w) => w
                .close()
                .await
                .map(|_| ())
                .map_err(|e| storage_error(&self.url, e)),
            SinkWriter::Text { mut out, .. } => out
                .shutdown()
                .await
                .map_err(|e| storage_error(&self.url, e)),
        };
        let renamed = match closed {
            Ok(()) => self
                .store
                .rename(&self.temp, &self.target)
                .await
                .map_err(|e| storage_error(&self.url, e)),
            Err(e) => Err(e),
        };
        if let Err(e) = renamed {
            // Nothing half-written stays behind under the temporary name.
            let _ = self.store.delete(&self.temp).await;
            return Err(e);
        }
        Ok(self.target)
    }

    /// Removes the temporary file of an export that failed.
    pub async fn abort(self) {
        drop(self.writer);
        let _ = self.store.delete(&self.temp).await;
    }
}

/// Fills `${yyyy}`, `${mm}`, `${dd}` from a date (days since the epoch) and `${name}` from variables.
pub fn render_template(
    template: &str,
    day: Option<i32>,
    variables: &BTreeMap<String, String>,
) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            Error::InvalidInput(format!("unclosed ${{ in partition template {template:?}"))
        })?;
        let name = &after[..end];
        let value = match (name, day) {
            ("yyyy" | "mm" | "dd", Some(d)) => {
                let date = chrono::NaiveDate::from_num_days_from_ce_opt(d + 719_163)
                    .ok_or_else(|| Error::InvalidInput(format!("day {d} is out of range")))?;
                match name {
                    "yyyy" => format!("{:04}", chrono::Datelike::year(&date)),
                    "mm" => format!("{:02}", chrono::Datelike::month(&date)),
                    _ => format!("{:02}", chrono::Datelike::day(&date)),
                }
            }
            _ => variables.get(name).cloned().ok_or_else(|| {
                Error::InvalidInput(format!(
                    "partition template {template:?} uses ${{{name}}}, which is neither yyyy/mm/dd of the partition column nor a given variable"
                ))
            })?,
        };
        if value.contains(['/', '\\']) || value == ".." {
            return Err(Error::InvalidInput(format!(
                "partition value {value:?} for ${{{name}}} is not a safe path segment"
            )));
        }
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out.trim_matches('/').to_string())
}

/// The day (since the epoch) of each row of a date or timestamp column; NULL rows give `None`.
pub fn days_of(column: &dyn Array) -> Result<Vec<Option<i32>>> {
    let n = column.len();
    Ok(match column.data_type() {
        DataType::Date32 => {
            let a = column.as_primitive::<Date32Type>();
            (0..n)
                .map(|i| (!a.is_null(i)).then(|| a.value(i)))
                .collect()
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let a = column.as_primitive::<TimestampMicrosecondType>();
            (0..n)
                .map(|i| (!a.is_null(i)).then(|| a.value(i).div_euclid(86_400_000_000) as i32))
                .collect()
        }
        other => {
            return Err(Error::InvalidInput(format!(
                "the partition column must be a date or timestamp, not {other}"
            )));
        }
    })
}

/// Whether path segments match a glob pattern: `*` and `?` within a segment, `**` across any
/// number of segments.
pub fn glob_matches(pattern: &[&str], segments: &[&str]) -> bool {
    fn segment(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => segment(&p[1..], s) || (!s.is_empty() && segment(p, &s[1..])),
            (Some(b'?'), Some(_)) => segment(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => segment(&p[1..], &s[1..]),
            _ => false,
        }
    }
    match (pattern.first(), segments.first()) {
        (None, None) => true,
        (Some(&"**"), _) => {
            glob_matches(&pattern[1..], segments)
                || (!segments.is_empty() && glob_matches(pattern, &segments[1..]))
        }
        (Some(p), Some(s)) => {
            segment(p.as_bytes(), s.as_bytes()) && glob_matches(&pattern[1..], &segments[1..])
        }
        _ => false,
    }
}

/// Files under a location with the format's extension, in name order. A location with `*` or
/// `?` in it is a glob over the object paths.
pub async fn list_files(location: &Location, format: FileFormat) -> Result<Vec<(Path, u64)>> {
    let ext = format!(".{}", format.extension());
    let raw = location.path.as_ref().to_string();
    if raw.contains(['*', '?']) {
        let pattern: Vec<&str> = raw.split('/').collect();
        let literal = pattern
            .iter()
            .take_while(|p| !p.contains(['*', '?']))
            .cloned()
            .collect::<Vec<_>>();
        let prefix = Path::from_iter(literal.iter().map(|s| s.to_string()));
        let mut files: Vec<(Path, u64)> = location
            .store
            .list((!literal.is_empty()).then_some(&prefix))
            .try_filter(|m| {
                let segments: Vec<&str> = m.location.as_ref().split('/').collect();
                futures::future::ready(
                    m.location.as_ref().ends_with(&ext) && glob_matches(&pattern, &segments),
                )
            })
            .map_ok(|m| (m.location, m.size))
            .try_collect()
            .await
            .map_err(|e| storage_error(&location.url, e))?;
        files.sort();
        if files.is_empty() {
            return Err(Error::NotFound(format!(
                "no .{} files match {}",
                format.extension(),
                location.url
            )));
        }
        return Ok(files);
    }
    if location.path.as_ref().ends_with(&ext) {
        let meta = location
            .store
            .head(&location.path)
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    Error::NotFound(format!("no file at {}", location.url))
                }
                other => storage_error(&location.url, other),
            })?;
        return Ok(vec![(meta.location, meta.size)]);
    }
    let prefix = (!location.path.as_ref().is_empty()).then_some(&location.path);
    let mut files: Vec<(Path, u64)> = location
        .store
        .list(prefix)
        .try_filter(|m| futures::future::ready(m.location.as_ref().ends_with(&ext)))
        .map_ok(|m| (m.location, m.size))
        .try_collect()
        .await
        .map_err(|e| storage_error(&location.url, e))?;
    files.sort();
    if files.is_empty() {
        return Err(Error::NotFound(format!(
            "no .{} files under {}",
            format.extension(),
            location.url
        )));
    }
    Ok(files)
}

/// Reads files as one stream of record batches (Parquet; CSV and JSON Lines with inferred
/// types). Each name in `partitions` becomes a text column filled from the file's `name=value`
/// path segment (NULL where a file's path has none).
pub async fn read_files(
    location: &Location,
    format: FileFormat,
    partitions: &[String],
) -> Result<(SchemaRef, BatchStream<'static>)> {
    let files = list_files(location, format).await?;
    let store = location.store.clone();
    let url = location.url.clone();
    let first = open_file(&store, &files[0], format, &url, None).await?;
    let file_schema = first.0.clone();
    let mut fields: Vec<arrow::datatypes::Field> = file_schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    for p in partitions {
        if file_schema.field_with_name(p).is_ok() {
            return Err(Error::InvalidInput(format!(
                "the files already have a column \"{p}\"; drop it from --partitions"
            )));
        }
        fields.push(arrow::datatypes::Field::new(p, DataType::Utf8, true));
    }
    let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::new(fields));
    let partitions = partitions.to_vec();
    let out_schema = schema.clone();
    let streams = futures::stream::iter(files.into_iter().enumerate()).then(move |(i, f)| {
        let (store, url, file_schema) = (store.clone(), url.clone(), file_schema.clone());
        async move {
            // The first file is open already (it gave the schema).
            if i == 0 {
                return Ok::<_, Error>((f, None));
            }
            let opened = open_file(&store, &f, format, &url, Some(file_schema)).await?;
            Ok((f, Some(opened.1)))
        }
    });
    let mut first_stream = Some(first.1);
    let batches = streams
        .map(move |r| {
            let (path, stream) = match r {
                Ok((path, Some(s))) => (path, s),
                Ok((path, None)) => match first_stream.take() {
                    Some(s) => (path, s),
                    None => return Box::pin(futures::stream::empty()) as BatchStream<'static>,
                },
                Err(e) => return Box::pin(futures::stream::iter([Err(e)])) as BatchStream<'static>,
            };
            if partitions.is_empty() {
                return stream;
            }
            let values: Vec<Option<String>> = partitions
                .iter()
                .map(|p| {
                    path.0
                        .as_ref()
                        .split('/')
                        .find_map(|seg| seg.strip_prefix(&format!("{p}=")).map(str::to_string))
                })
                .collect();
            let schema = out_schema.clone();
            Box::pin(stream.map(move |b| {
                let b = b?;
                let mut columns = b.columns().to_vec();
                for v in &values {
                    columns.push(Arc::new(arrow::array::StringArray::from(vec![
                        v.clone();
                        b.num_rows()
                    ])));
                }
                RecordBatch::try_new(schema.clone(), columns)
                    .map_err(|e| Error::InvalidInput(e.to_string()))
            })) as BatchStream<'static>
        })
        .flatten();
    Ok((schema, Box::pin(batches)))
}

async fn open_file(
    store: &Arc<dyn ObjectStore>,
    (path, size): &(Path, u64),
    format: FileFormat,
    url: &str,
    schema: Option<SchemaRef>,
) -> Result<(SchemaRef, BatchStream<'static>)> {
    let url = url.to_string();
    match format {
        FileFormat::Parquet => {
            #[allow(deprecated)]
            let reader =
                ParquetObjectReader::new(store.clone(), path.clone()).with_file_size(*size);
            let builder = ParquetRecordBatchStreamBuilder::new(reader)
                .await
                .map_err(|e| {
                    Error::InvalidInput(format!("{path} is not a readable Parquet file: {e}"))
                })?;
            let file_schema = builder.schema().clone();
            let stream = builder
                .with_batch_size(8192)
                .build()
                .map_err(|e| storage_error(&url, e))?;
            let p = path.to_string();
            let batches = stream
                .map(move |b| b.map_err(|e| Error::InvalidInput(format!("reading {p}: {e}"))));
            Ok((schema.unwrap_or(file_schema), Box::pin(batches)))
        }
        FileFormat::Csv | FileFormat::Jsonl => {
            // Text files are read whole (they are exports of one partition), then decoded in batches.
            let bytes: Bytes = store
                .get(path)
                .await
                .map_err(|e| storage_error(&url, e))?
                .bytes()
                .await
                .map_err(|e| storage_error(&url, e))?;
            let schema = match schema {
                Some(s) => s,
                None => Arc::new(
                    infer_text_schema(&bytes, format)
                        .map_err(|e| Error::InvalidInput(format!("{path}: {e}")))?,
                ),
            };
            let cursor = std::io::Cursor::new(bytes);
            let p = path.to_string();
            let batches: Vec<Result<RecordBatch>> = match format {
                FileFormat::Csv => arrow::csv::ReaderBuilder::new(schema.clone())
                    .with_header(true)
                    .with_batch_size(8192)
                    .build(cursor)
                    .map_err(|e| Error::InvalidInput(format!("{p}: {e}")))?
                    .map(|b| b.map_err(|e| Error::InvalidInput(format!("{p}: {e}"))))
                    .collect(),
                _ => arrow::json::ReaderBuilder::new(schema.clone())
                    .with_batch_size(8192)
                    .build(std::io::BufReader::new(cursor))
                    .map_err(|e| Error::InvalidInput(format!("{p}: {e}")))?
                    .map(|b| b.map_err(|e| Error::InvalidInput(format!("{p}: {e}"))))
                    .collect(),
            };
            Ok((schema, Box::pin(futures::stream::iter(batches))))
        }
    }
}

fn infer_text_schema(
    bytes: &Bytes,
    format: FileFormat,
) -> std::result::Result<arrow::datatypes::Schema, arrow::error::ArrowError> {
    let cursor = std::io::Cursor::new(bytes.clone());
    match format {
        FileFormat::Csv => arrow::csv::reader::Format::default()
            .with_header(true)
            .infer_schema(cursor, Some(1000))
            .map(|(s, _)| s),
        _ => arrow::json::reader::infer_json_schema(std::io::BufReader::new(cursor), Some(1000))
            .map(|(s, _)| s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check_glob(pattern: &str, path: &str, expected: bool) {
        let p: Vec<&str> = pattern.split('/').collect();
        let s: Vec<&str> = path.split('/').collect();
        assert_eq!(glob_matches(&p, &s), expected, "{pattern} ~ {path}");
    }

    #[test]
    fn globs_match_segments() {
        check_glob("a/*/c.parquet", "a/b/c.parquet", true);
        check_glob("a/*/c.parquet", "a/b/x/c.parquet", false);
        check_glob("a/**/c.parquet", "a/b/x/c.parquet", true);
        check_glob("a/**/c.parquet", "a/c.parquet", true);
        check_glob(
            "o/y=2026/m=1?/*/part-*.parquet",
            "o/y=2026/m=11/d=21/part-00000.parquet",
            true,
        );
        check_glob(
            "o/y=2026/m=1?/*/part-*.parquet",
            "o/y=2026/m=1/d=21/part-00000.parquet",
            false,
        );
        check_glob("*.csv", "x.csv", true);
        check_glob("*.csv", "x.jsonl", false);
    }

    #[test]
    fn templates_render_dates_and_variables() {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        let days = chrono::Datelike::num_days_from_ce(&day) - 719_163;
        assert_eq!(
            render_template("y=${yyyy}/m=${mm}/d=${dd}", Some(days), &vars(&[])).unwrap(),
            "y=2026/m=11/d=21"
        );
        assert_eq!(
            render_template("region=${region}/", None, &vars(&[("region", "eu")])).unwrap(),
            "region=eu"
        );
        assert!(
            render_template("y=${yyyy}", None, &vars(&[]))
                .unwrap_err()
                .message()
                .contains("${yyyy}")
        );
        assert!(render_template("x=${v}", None, &vars(&[("v", "../etc")])).is_err());
        assert!(render_template("x=${v", None, &vars(&[])).is_err());
    }
}

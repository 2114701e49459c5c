//! Encodes record batches for the wire: JSON rows for interactive results, and NDJSON, CSV or
//! Arrow IPC streams whose chunks are produced batch by batch, so memory stays bounded.

use std::io::Write;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::StreamWriter;
use arrow::json::writer::{JsonArray, LineDelimited};
use bytes::Bytes;
use ferry_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Output formats of results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON document with every statement's result (interactive, row-limited).
    #[default]
    Json,
    /// One JSON object per row, streamed.
    Ndjson,
    /// CSV with a header line, streamed.
    Csv,
    /// Arrow IPC stream format, streamed.
    Arrow,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

/// A `Write` whose bytes are taken out after every batch.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    fn take(&self) -> Bytes {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Bytes::from(std::mem::take(&mut *v))
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Writer {
    Csv(Box<arrow::csv::Writer<SharedBuf>>),
    Ndjson(arrow::json::Writer<SharedBuf, LineDelimited>),
    Arrow(StreamWriter<SharedBuf>),
}

/// Turns batches into chunks of one streamed format.
pub struct StreamEncoder {
    buf: SharedBuf,
    writer: Writer,
}

fn encode_error(e: arrow::error::ArrowError) -> Error {
    Error::Internal(format!("encoding a result: {e}"))
}

impl StreamEncoder {
    /// An encoder for a streamed format; `Format::Json` is not streamed and is refused.
    pub fn new(format: Format, schema: &SchemaRef) -> Result<Self> {
        let buf = SharedBuf::default();
        let writer = match format {
            Format::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(buf.clone());
                // The header goes out even when there are no rows.
                w.write(&RecordBatch::new_empty(schema.clone()))
                    .map_err(encode_error)?;
                Writer::Csv(Box::new(w))
            }
            Format::Ndjson => Writer::Ndjson(
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, LineDelimited>(buf.clone()),
            ),
            Format::Arrow => {
                Writer::Arrow(StreamWriter::try_new(buf.clone(), schema).map_err(encode_error)?)
            }
            Format::Json => return Err(Error::Internal("JSON results are not streamed".into())),
        };
        Ok(StreamEncoder { buf, writer })
    }

    /// Bytes written so far that have not been taken (the CSV header, the IPC schema).
    pub fn take(&mut self) -> Bytes {
        self.buf.take()
    }

    pub fn encode(&mut self, batch: &RecordBatch) -> Result<Bytes> {
        match &mut self.writer {
            Writer::Csv(w) => w.write(batch).map_err(encode_error)?,
            Writer::Ndjson(w) => w.write(batch).map_err(encode_error)?,
            Writer::Arrow(w) => w.write(batch).map_err(encode_error)?,
        }
        Ok(self.buf.take())
    }

    pub fn finish(mut self) -> Result<Bytes> {
        match &mut self.writer {
            Writer::Csv(_) => {}
            Writer::Ndjson(w) => w.finish().map_err(encode_error)?,
            Writer::Arrow(w) => w.finish().map_err(encode_error)?,
        }
        Ok(self.buf.take())
    }
}

/// Rows as a JSON array of objects (column name → value), nulls explicit.
pub fn json_rows(batches: &[RecordBatch]) -> Result<Box<serde_json::value::RawValue>> {
    let mut w = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, JsonArray>(Vec::new());
    for b in batches {
        w.write(b).map_err(encode_error)?;
    }
    w.finish().map_err(encode_error)?;
    let mut bytes = w.into_inner();
    if bytes.is_empty() {
        bytes = b"[]".to_vec();
    }
    let text = String::from_utf8(bytes).map_err(|e| Error::Internal(e.to_string()))?;
    serde_json::value::RawValue::from_string(text).map_err(|e| Error::Internal(e.to_string()))
}

/// Column names and Arrow types of a schema.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ColumnDto {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

pub fn columns_of(schema: &SchemaRef) -> Vec<ColumnDto> {
    schema
        .fields()
        .iter()
        .map(|f| ColumnDto {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None])),
                Arc::new(StringArray::from(vec![Some("a,b"), Some("é")])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn csv_has_header_and_quotes() {
        let b = batch();
        let mut enc = StreamEncoder::new(Format::Csv, &b.schema()).unwrap();
        let mut out = enc.take().to_vec();
        out.extend_from_slice(&enc.encode(&b).unwrap());
        out.extend_from_slice(&enc.finish().unwrap());
        assert_eq!(String::from_utf8(out).unwrap(), "id,name\n1,\"a,b\"\n,é\n");
    }

    #[test]
    fn ndjson_and_json_rows_keep_nulls() {
        let b = batch();
        let mut enc = StreamEncoder::new(Format::Ndjson, &b.schema()).unwrap();
        let text = String::from_utf8(enc.encode(&b).unwrap().to_vec()).unwrap();
        assert_eq!(
            text,
            "{\"id\":1,\"name\":\"a,b\"}\n{\"id\":null,\"name\":\"é\"}\n"
        );
        assert_eq!(
            json_rows(&[b]).unwrap().get(),
            "[{\"id\":1,\"name\":\"a,b\"},{\"id\":null,\"name\":\"é\"}]"
        );
        assert_eq!(json_rows(&[]).unwrap().get(), "[]");
    }

    #[test]
    fn arrow_stream_reads_back() {
        let b = batch();
        let mut enc = StreamEncoder::new(Format::Arrow, &b.schema()).unwrap();
        let mut out = enc.take().to_vec();
        out.extend_from_slice(&enc.encode(&b).unwrap());
        out.extend_from_slice(&enc.finish().unwrap());
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(out), None).unwrap();
        let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(batches, vec![b]);
    }
}

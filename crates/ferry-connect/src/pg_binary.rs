//! PostgreSQL's binary `COPY` format, written straight from Arrow arrays: the server reads
//! values without parsing text. Used when every target column has a binary encoding here;
//! otherwise the text format serves.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::CastOptions;
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Time64MicrosecondType, TimeUnit, TimestampMicrosecondType,
};
use bytes::{BufMut, BytesMut};
use ferry_core::{Error, Result};
use tokio_postgres::types::Type;

/// The signature, flags and header extension that open a binary COPY stream.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The file trailer: a field count of -1.
pub const TRAILER: &[u8] = &[0xff, 0xff];

const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The Arrow type a PostgreSQL column type is written from, if the binary format covers it.
pub fn arrow_for(ty: &Type, typmod: i32) -> Option<DataType> {
    Some(match *ty {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
        Type::BYTEA => DataType::Binary,
        Type::DATE => DataType::Date32,
        Type::TIME => DataType::Time64(TimeUnit::Microsecond),
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        // Unconstrained numeric takes any scale: no fixed decimal holds it, so it stays on the
        // text path (which writes each value exactly as it is).
        Type::NUMERIC => match crate::postgres::arrow_type(ty, typmod) {
            DataType::Decimal128(p, s) => DataType::Decimal128(p, s),
            _ => return None,
        },
        _ => return None,
    })
}

/// Encodes batches for columns of the given target Arrow types (from [`arrow_for`]).
pub struct BinaryEncoder {
    types: Vec<DataType>,
    names: Vec<String>,
}

impl BinaryEncoder {
    pub fn new(types: Vec<DataType>, names: Vec<String>) -> Self {
        BinaryEncoder { types, names }
    }

    pub fn encode(&self, batch: &RecordBatch, out: &mut BytesMut) -> Result<()> {
        // Values are converted to the target's types first; a value that does not fit fails
        // (never a silent NULL).
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        let columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .zip(&self.types)
            .zip(&self.names)
            .map(|((c, t), name)| {
                let source = c.data_type();
                let c = if matches!(
                    (source, t),
                    (
                        DataType::Timestamp(_, Some(_)),
                        DataType::Timestamp(_, None)
                    ) | (
                        DataType::Timestamp(_, None),
                        DataType::Timestamp(_, Some(_))
                    )
                ) {
                    // Same instant either way: PostgreSQL stores both as UTC microseconds.
                    arrow::compute::cast_with_options(
                        c,
                        &DataType::Timestamp(TimeUnit::Microsecond, None),
                        &options,
                    )
                    .and_then(|c| arrow::compute::cast_with_options(&c, t, &options))
                } else {
                    arrow::compute::cast_with_options(c, t, &options)
                };
                c.map_err(|e| {
                    Error::InvalidInput(format!(
                        "column \"{name}\": {source} values do not fit {t}: {e}"
                    ))
                })
            })
            .collect::<Result<_>>()?;
        for row in 0..batch.num_rows() {
            out.put_i16(columns.len() as i16);
            for col in &columns {
                encode_value(col, row, out)?;
            }
        }
        Ok(())
    }
}

fn out_of_range(what: &str) -> Error {
    Error::InvalidInput(format!("a {what} value is outside PostgreSQL's range"))
}

fn field(out: &mut BytesMut, bytes: &[u8]) {
    out.put_i32(bytes.len() as i32);
    out.put_slice(bytes);
}

fn encode_value(a: &ArrayRef, row: usize, out: &mut BytesMut) -> Result<()> {
    if a.is_null(row) {
        out.put_i32(-1);
        return Ok(());
    }
    match a.data_type() {
        DataType::Boolean => field(out, &[a.as_boolean().value(row) as u8]),
        DataType::Int16 => field(out, &a.as_primitive::<Int16Type>().value(row).to_be_bytes()),
        DataType::Int32 => field(out, &a.as_primitive::<Int32Type>().value(row).to_be_bytes()),
        DataType::Int64 => field(out, &a.as_primitive::<Int64Type>().value(row).to_be_bytes()),
        DataType::Float32 => field(
            out,
            &a.as_primitive::<Float32Type>().value(row).to_be_bytes(),
        ),
        DataType::Float64 => field(
            out,
            &a.as_primitive::<Float64Type>().value(row).to_be_bytes(),
        ),
        DataType::Utf8 => field(out, a.as_string::<i32>().value(row).as_bytes()),
        DataType::Binary => field(out, a.as_binary::<i32>().value(row)),
        DataType::Date32 => {
            let d = a
                .as_primitive::<Date32Type>()
                .value(row)
                .checked_sub(PG_EPOCH_DAYS)
                .ok_or_else(|| out_of_range("date"))?;
            field(out, &d.to_be_bytes())
        }
        DataType::Time64(TimeUnit::Microsecond) => field(
            out,
            &a.as_primitive::<Time64MicrosecondType>()
                .value(row)
                .to_be_bytes(),
        ),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let t = a
                .as_primitive::<TimestampMicrosecondType>()
                .value(row)
                .checked_sub(PG_EPOCH_MICROS)
                .ok_or_else(|| out_of_range("timestamp"))?;
            field(out, &t.to_be_bytes())
        }
        DataType::Decimal128(_, scale) => {
            let mut buf = Vec::new();
            numeric(
                a.as_primitive::<Decimal128Type>().value(row),
                *scale,
                &mut buf,
            );
            field(out, &buf);
        }
        other => {
            return Err(Error::Internal(format!(
                "no binary COPY encoding for {other}"
            )));
        }
    }
    Ok(())
}

/// PostgreSQL's binary `numeric`: base-10000 digits around the decimal point.
fn numeric(unscaled: i128, scale: i8, out: &mut Vec<u8>) {
    let negative = unscaled < 0;
    let digits = unscaled.unsigned_abs().to_string();
    let scale = scale.max(0) as usize;
    let (int_part, frac_part) = if digits.len() > scale {
        (
            digits[..digits.len() - scale].to_string(),
            digits[digits.len() - scale..].to_string(),
        )
    } else {
        (
            String::new(),
            format!("{}{digits}", "0".repeat(scale - digits.len())),
        )
    };
    // Pad the integer part on the left and the fraction on the right to whole groups of four.
    let int_padded = format!("{}{int_part}", "0".repeat((4 - int_part.len() % 4) % 4));
    let frac_padded = format!("{frac_part}{}", "0".repeat((4 - frac_part.len() % 4) % 4));
    let mut groups: Vec<i16> = int_padded
        .as_bytes()
        .chunks(4)
        .chain(frac_padded.as_bytes().chunks(4))
        .map(|c| {
            std::str::from_utf8(c)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    let mut weight = (int_padded.len() / 4) as i16 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    out.extend_from_slice(&(groups.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(
        &(if negative && !groups.is_empty() {
            0x4000u16
        } else {
            0
        })
        .to_be_bytes(),
    );
    out.extend_from_slice(&(scale as i16).to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
}

/// Whether a column type can be read from binary COPY into its Arrow type exactly. Numerics stay
/// on the text path (NaN has no decimal form), as do types without a binary decoder here.
pub fn readable(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::BOOL
            | Type::INT2
            | Type::INT4
            | Type::INT8
            | Type::FLOAT4
            | Type::FLOAT8
            | Type::TEXT
            | Type::VARCHAR
            | Type::BPCHAR
            | Type::NAME
            | Type::BYTEA
            | Type::DATE
            | Type::TIME
            | Type::TIMESTAMP
            | Type::TIMESTAMPTZ
    )
}

enum Column {
    Bool(arrow::array::BooleanBuilder),
    I16(arrow::array::Int16Builder),
    I32(arrow::array::Int32Builder),
    I64(arrow::array::Int64Builder),
    F32(arrow::array::Float32Builder),
    F64(arrow::array::Float64Builder),
    Text(arrow::array::StringBuilder),
    Bytes(arrow::array::BinaryBuilder),
    Date(arrow::array::Date32Builder),
    Time(arrow::array::Time64MicrosecondBuilder),
    Timestamp(arrow::array::TimestampMicrosecondBuilder),
}

/// Parses binary COPY output into record batches, whatever the message boundaries.
pub struct BinaryDecoder {
    schema: arrow::datatypes::SchemaRef,
    columns: Vec<Column>,
    buf: BytesMut,
    header_done: bool,
    rows: usize,
}

fn short(what: &str) -> Error {
    Error::Engine(format!(
        "malformed binary COPY data from PostgreSQL: {what}"
    ))
}

impl BinaryDecoder {
    /// A decoder for columns of these types (all [`readable`]), producing `schema`.
    pub fn new(schema: arrow::datatypes::SchemaRef) -> Self {
        use arrow::array::*;
        let columns = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Boolean => Column::Bool(BooleanBuilder::new()),
                DataType::Int16 => Column::I16(Int16Builder::new()),
                DataType::Int32 => Column::I32(Int32Builder::new()),
                DataType::Int64 => Column::I64(Int64Builder::new()),
                DataType::Float32 => Column::F32(Float32Builder::new()),
                DataType::Float64 => Column::F64(Float64Builder::new()),
                DataType::Binary => Column::Bytes(BinaryBuilder::new()),
                DataType::Date32 => Column::Date(Date32Builder::new()),
                DataType::Time64(_) => Column::Time(Time64MicrosecondBuilder::new()),
                DataType::Timestamp(_, _) => Column::Timestamp(
                    TimestampMicrosecondBuilder::new().with_data_type(f.data_type().clone()),
                ),
                _ => Column::Text(StringBuilder::new()),
            })
            .collect();
        BinaryDecoder {
            schema,
            columns,
            buf: BytesMut::new(),
            header_done: false,
            rows: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Takes more bytes and decodes every complete row in the buffer.
    pub fn feed(&mut self, data: &[u8]) -> Result<()> {
        use bytes::Buf;
        self.buf.extend_from_slice(data);
        if !self.header_done {
            if self.buf.len() < 19 {
                return Ok(());
            }
            if &self.buf[..11] != b"PGCOPY\n\xff\r\n\0" {
                return Err(short("bad signature"));
            }
            let ext = u32::from_be_bytes([self.buf[15], self.buf[16], self.buf[17], self.buf[18]])
                as usize;
            if self.buf.len() < 19 + ext {
                return Ok(());
            }
            self.buf.advance(19 + ext);
            self.header_done = true;
        }
        loop {
            let Some(len) = self.complete_row() else {
                return Ok(());
            };
            if len == 0 {
                // The trailer (-1).
                self.buf.advance(2);
                continue;
            }
            let row = self.buf.split_to(len);
            self.decode_row(&row)?;
        }
    }

    /// The length of the first complete row in the buffer (0 for the trailer), if there is one.
    fn complete_row(&self) -> Option<usize> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return None;
        }
        let n = i16::from_be_bytes([b[0], b[1]]);
        if n == -1 {
            return Some(0);
        }
        let mut at = 2;
        for _ in 0..n {
            if b.len() < at + 4 {
                return None;
            }
            let len = i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            at += 4 + len.max(0) as usize;
        }
        (b.len() >= at).then_some(at)
    }

    fn decode_row(&mut self, row: &[u8]) -> Result<()> {
        let n = i16::from_be_bytes([row[0], row[1]]) as usize;
        if n != self.columns.len() {
            return Err(short("field count"));
        }
        let mut at = 2;
        for col in self.columns.iter_mut() {
            let len = i32::from_be_bytes([row[at], row[at + 1], row[at + 2], row[at + 3]]);
            at += 4;
            let value = (len >= 0).then(|| &row[at..at + len as usize]);
            at += len.max(0) as usize;
            append(col, value)?;
        }
        self.rows += 1;
        Ok(())
    }

    pub fn finish(&mut self) -> Result<RecordBatch> {
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|c| -> ArrayRef {
                use arrow::array::ArrayBuilder;
                match c {
                    Column::Bool(b) => std::sync::Arc::new(b.finish()),
                    Column::I16(b) => std::sync::Arc::new(b.finish()),
                    Column::I32(b) => std::sync::Arc::new(b.finish()),
                    Column::I64(b) => std::sync::Arc::new(b.finish()),
                    Column::F32(b) => std::sync::Arc::new(b.finish()),
                    Column::F64(b) => std::sync::Arc::new(b.finish()),
                    Column::Text(b) => std::sync::Arc::new(b.finish()),
                    Column::Bytes(b) => std::sync::Arc::new(b.finish()),
                    Column::Date(b) => std::sync::Arc::new(b.finish()),
                    Column::Time(b) => std::sync::Arc::new(b.finish()),
                    Column::Timestamp(b) => ArrayBuilder::finish(b),
                }
            })
            .collect();
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| Error::Internal(e.to_string()))
    }
}

fn be<const N: usize>(v: &[u8]) -> Result<[u8; N]> {
    v.try_into().map_err(|_| short("value length"))
}

fn append(col: &mut Column, v: Option<&[u8]>) -> Result<()> {
    match (col, v) {
        (Column::Bool(b), v) => b.append_option(v.map(|v| v.first() == Some(&1))),
        (Column::I16(b), Some(v)) => b.append_value(i16::from_be_bytes(be(v)?)),
        (Column::I32(b), Some(v)) => b.append_value(i32::from_be_bytes(be(v)?)),
        (Column::I64(b), Some(v)) => b.append_value(i64::from_be_bytes(be(v)?)),
        (Column::F32(b), Some(v)) => b.append_value(f32::from_be_bytes(be(v)?)),
        (Column::F64(b), Some(v)) => b.append_value(f64::from_be_bytes(be(v)?)),
        (Column::Text(b), Some(v)) => {
            b.append_value(std::str::from_utf8(v).map_err(|_| short("text that is not UTF-8"))?)
        }
        (Column::Bytes(b), Some(v)) => b.append_value(v),
        (Column::Date(b), Some(v)) => {
            // ±infinity have no date: NULL, as on the text path.
            let d = i32::from_be_bytes(be(v)?);
            b.append_option(
                (d != i32::MAX && d != i32::MIN)
                    .then(|| d.checked_add(PG_EPOCH_DAYS))
                    .flatten(),
            );
        }
        (Column::Time(b), Some(v)) => b.append_value(i64::from_be_bytes(be(v)?)),
        (Column::Timestamp(b), Some(v)) => {
            let t = i64::from_be_bytes(be(v)?);
            // ±infinity, and instants beyond what Arrow's microseconds reach, have no value.
            b.append_option(
                (t != i64::MAX && t != i64::MIN)
                    .then(|| t.checked_add(PG_EPOCH_MICROS))
                    .flatten(),
            );
        }
        (Column::I16(b), None) => b.append_null(),
        (Column::I32(b), None) => b.append_null(),
        (Column::I64(b), None) => b.append_null(),
        (Column::F32(b), None) => b.append_null(),
        (Column::F64(b), None) => b.append_null(),
        (Column::Text(b), None) => b.append_null(),
        (Column::Bytes(b), None) => b.append_null(),
        (Column::Date(b), None) => b.append_null(),
        (Column::Time(b), None) => b.append_null(),
        (Column::Timestamp(b), None) => b.append_null(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(unscaled: i128, scale: i8, expected: (i16, i16, u16, &[i16])) {
        let mut out = Vec::new();
        numeric(unscaled, scale, &mut out);
        let word = |i: usize| i16::from_be_bytes([out[i], out[i + 1]]);
        let (n, weight, sign, digits) = expected;
        assert_eq!(
            (word(0), word(2), word(4) as u16, word(6)),
            (n, weight, sign, scale as i16),
            "{unscaled} scale {scale}"
        );
        let got: Vec<i16> = (0..n as usize).map(|k| word(8 + 2 * k)).collect();
        assert_eq!(got, digits, "{unscaled} scale {scale}");
    }

    #[test]
    fn binary_copy_round_trips_whatever_the_chunking() {
        use arrow::array::{
            BinaryArray, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
            TimestampMicrosecondArray,
        };
        use arrow::datatypes::{Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new("x", DataType::Float64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("raw", DataType::Binary, true),
            Field::new("day", DataType::Date32, true),
            Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None, Some(-7)])),
                Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
                Arc::new(Float64Array::from(vec![Some(f64::NAN), Some(-0.5), None])),
                Arc::new(StringArray::from(vec![Some("é🚀 "), Some(""), None])),
                Arc::new(BinaryArray::from(vec![
                    Some(&[0u8, 255][..]),
                    Some(&[][..]),
                    None,
                ])),
                Arc::new(Date32Array::from(vec![Some(20414), Some(-1), None])),
                Arc::new(TimestampMicrosecondArray::from(vec![
                    Some(1_795_000_000_000_000),
                    Some(-1),
                    None,
                ])),
            ],
        )
        .unwrap();
        let types: Vec<DataType> = schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let mut wire = BytesMut::new();
        wire.extend_from_slice(HEADER);
        BinaryEncoder::new(types, names)
            .encode(&batch, &mut wire)
            .unwrap();
        wire.extend_from_slice(TRAILER);
        for chunk in [1, 3, 7, 64, wire.len()] {
            let mut d = BinaryDecoder::new(schema.clone());
            for piece in wire.chunks(chunk) {
                d.feed(piece).unwrap();
            }
            assert_eq!(d.rows(), 3, "chunks of {chunk}");
            let back = d.finish().unwrap();
            // NaN != NaN: compare the NaN column by its bits, the rest directly.
            assert_eq!(
                back.column(2)
                    .as_primitive::<Float64Type>()
                    .value(0)
                    .to_bits(),
                f64::NAN.to_bits()
            );
            for i in [0, 1, 3, 4, 5, 6] {
                assert_eq!(
                    back.column(i),
                    batch.column(i),
                    "column {i}, chunks of {chunk}"
                );
            }
        }
    }

    #[test]
    fn numerics_encode_in_base_10000() {
        check(1250, 2, (2, 0, 0, &[12, 5000]));
        check(0, 2, (0, 0, 0, &[]));
        check(-1, 2, (1, -1, 0x4000, &[100]));
        check(123_456_789, 0, (3, 2, 0, &[1, 2345, 6789]));
        check(
            123_456_789_012_345_678_900_123_456_789,
            10,
            (8, 4, 0, &[1234, 5678, 9012, 3456, 7890, 123, 4567, 8900]),
        );
        check(5, 10, (1, -3, 0, &[500]));
    }
}

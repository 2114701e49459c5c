//! Builds Arrow arrays from values that drivers hand over as text (PostgreSQL's and MySQL's
//! text protocols, SQLite's text conversion). Each engine maps its types to an Arrow
//! [`DataType`]; this module parses the text of each value into that type.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Decimal128Type, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime};
use ferry_core::{Error, Result};

/// How an engine writes binary values in text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryText {
    /// The bytes as they are (MySQL, SQLite).
    Raw,
    /// PostgreSQL's `\x0a1b…` hex form.
    PgHex,
}

/// Builds record batches row by row from text values.
pub struct TextBatchBuilder {
    schema: SchemaRef,
    columns: Vec<TextColumn>,
    rows: usize,
}

impl TextBatchBuilder {
    pub fn new(schema: SchemaRef, binary: BinaryText) -> Self {
        let columns = schema
            .fields()
            .iter()
            .map(|f| TextColumn::new(f.data_type(), binary))
            .collect();
        TextBatchBuilder {
            schema,
            columns,
            rows: 0,
        }
    }

    /// Appends one value of the current row to column `index`; `None` is NULL.
    pub fn append(&mut self, index: usize, value: Option<&[u8]>) {
        self.columns[index].append(value);
    }

    /// Like [`append`](Self::append) for text the driver already checked as UTF-8.
    pub fn append_str(&mut self, index: usize, value: Option<&str>) {
        self.columns[index].append_str(value);
    }

    /// Ends the current row.
    pub fn end_row(&mut self) {
        self.rows += 1;
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn finish(&mut self) -> Result<RecordBatch> {
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(TextColumn::finish).collect();
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| Error::Internal(format!("building a record batch: {e}")))
    }
}

/// Makes a schema from column names and types, renaming repeated names (`?column?`,
/// `?column?_2`) so every field can be addressed by name downstream.
pub fn unique_schema(columns: Vec<(String, DataType)>) -> SchemaRef {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let fields: Vec<Field> = columns
        .into_iter()
        .map(|(name, ty)| {
            let n = seen.entry(name.clone()).or_insert(0);
            *n += 1;
            let name = if *n == 1 { name } else { format!("{name}_{n}") };
            Field::new(name, ty, true)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

enum TextColumn {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    U64(UInt64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    Utf8(StringBuilder),
    Binary(BinaryBuilder, BinaryText),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder, bool),
}

impl TextColumn {
    fn new(ty: &DataType, binary: BinaryText) -> Self {
        match ty {
            DataType::Boolean => TextColumn::Bool(BooleanBuilder::new()),
            DataType::Int16 => TextColumn::I16(Int16Builder::new()),
            DataType::Int32 => TextColumn::I32(Int32Builder::new()),
            DataType::Int64 => TextColumn::I64(Int64Builder::new()),
            DataType::UInt64 => TextColumn::U64(UInt64Builder::new()),
            DataType::Float32 => TextColumn::F32(Float32Builder::new()),
            DataType::Float64 => TextColumn::F64(Float64Builder::new()),
            DataType::Decimal128(p, s) => TextColumn::Decimal(
                Decimal128Builder::new().with_data_type(DataType::Decimal128(*p, *s)),
                *p,
                *s,
            ),
            DataType::Binary => TextColumn::Binary(BinaryBuilder::new(), binary),
            DataType::Date32 => TextColumn::Date(Date32Builder::new()),
            DataType::Time64(TimeUnit::Microsecond) => {
                TextColumn::Time(Time64MicrosecondBuilder::new())
            }
            DataType::Timestamp(TimeUnit::Microsecond, tz) => TextColumn::Timestamp(
                TimestampMicrosecondBuilder::new().with_data_type(ty.clone()),
                tz.is_some(),
            ),
            // Everything else is carried as text: nothing is ever refused for its type.
            _ => TextColumn::Utf8(StringBuilder::new()),
        }
    }

    fn append(&mut self, value: Option<&[u8]>) {
        let Some(bytes) = value else {
            self.append_null();
            return;
        };
        if let TextColumn::Binary(..) = self {
            self.append_binary(bytes);
            return;
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => self.append_text(text),
            Err(_) => self.append_text(&String::from_utf8_lossy(bytes)),
        }
    }

    fn append_str(&mut self, value: Option<&str>) {
        match value {
            None => self.append_null(),
            Some(text) if matches!(self, TextColumn::Binary(..)) => {
                self.append_binary(text.as_bytes())
            }
            Some(text) => self.append_text(text),
        }
    }

    fn append_binary(&mut self, bytes: &[u8]) {
        if let TextColumn::Binary(b, enc) = self {
            match enc {
                BinaryText::Raw => b.append_value(bytes),
                BinaryText::PgHex => match decode_pg_hex(bytes) {
                    Some(v) => b.append_value(v),
                    None => b.append_value(bytes),
                },
            }
        }
    }

    fn append_text(&mut self, text: &str) {
        match self {
            TextColumn::Bool(b) => b.append_option(parse_bool(text)),
            TextColumn::I16(b) => b.append_option(parse_int(text)),
            TextColumn::I32(b) => b.append_option(parse_int(text)),
            TextColumn::I64(b) => b.append_option(parse_int(text)),
            TextColumn::U64(b) => b.append_option(parse_int(text)),
            TextColumn::F32(b) => b.append_option(parse_float(text).map(|v| v as f32)),
            TextColumn::F64(b) => b.append_option(parse_float(text)),
            TextColumn::Decimal(b, p, s) => b.append_option(
                arrow::compute::kernels::cast_utils::parse_decimal::<Decimal128Type>(text, *p, *s)
                    .ok(),
            ),
            TextColumn::Utf8(b) => b.append_value(text),
            TextColumn::Date(b) => b.append_option(parse_date(text)),
            TextColumn::Time(b) => b.append_option(parse_time(text)),
            TextColumn::Timestamp(b, tz) => b.append_option(parse_timestamp(text, *tz)),
            TextColumn::Binary(..) => self.append_binary(text.as_bytes()),
        }
    }

    fn append_null(&mut self) {
        match self {
            TextColumn::Bool(b) => b.append_null(),
            TextColumn::I16(b) => b.append_null(),
            TextColumn::I32(b) => b.append_null(),
            TextColumn::I64(b) => b.append_null(),
            TextColumn::U64(b) => b.append_null(),
            TextColumn::F32(b) => b.append_null(),
            TextColumn::F64(b) => b.append_null(),
            TextColumn::Decimal(b, ..) => b.append_null(),
            TextColumn::Utf8(b) => b.append_null(),
            TextColumn::Binary(b, _) => b.append_null(),
            TextColumn::Date(b) => b.append_null(),
            TextColumn::Time(b) => b.append_null(),
            TextColumn::Timestamp(b, _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            TextColumn::Bool(b) => Arc::new(b.finish()),
            TextColumn::I16(b) => Arc::new(b.finish()),
            TextColumn::I32(b) => Arc::new(b.finish()),
            TextColumn::I64(b) => Arc::new(b.finish()),
            TextColumn::U64(b) => Arc::new(b.finish()),
            TextColumn::F32(b) => Arc::new(b.finish()),
            TextColumn::F64(b) => Arc::new(b.finish()),
            TextColumn::Decimal(b, ..) => Arc::new(b.finish()),
            TextColumn::Utf8(b) => Arc::new(b.finish()),
            TextColumn::Binary(b, _) => Arc::new(b.finish()),
            TextColumn::Date(b) => Arc::new(b.finish()),
            TextColumn::Time(b) => Arc::new(b.finish()),
            TextColumn::Timestamp(b, _) => ArrayBuilder::finish(b),
        }
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim() {
        "t" | "true" | "1" | "TRUE" | "True" | "y" | "yes" | "on" => Some(true),
        "f" | "false" | "0" | "FALSE" | "False" | "n" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn parse_int<T: std::str::FromStr>(text: &str) -> Option<T> {
    text.parse().ok().or_else(|| text.trim().parse().ok())
}

fn parse_float(text: &str) -> Option<f64> {
    // Rust accepts NaN, inf and infinity in any case, which covers PostgreSQL's spellings.
    text.parse().ok().or_else(|| text.trim().parse().ok())
}

const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |n, c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

/// The exact `YYYY-MM-DD` form every engine prints, without the cost of a format parser.
fn fast_date(b: &[u8]) -> Option<i64> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (1..=days_in_month)
        .contains(&d)
        .then(|| days_from_civil(i64::from(y), m, d))
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][Z|±HH[:MM]]` in microseconds since the epoch.
fn fast_timestamp(b: &[u8]) -> Option<i64> {
    if b.len() < 19 || !(b[10] == b' ' || b[10] == b'T') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let days = fast_date(&b[..10])?;
    let (h, mi, s) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        let kept = &frac[..n.min(6)];
        micros = i64::from(digits(kept)?) * 10i64.pow(6 - kept.len() as u32);
        rest = &frac[n..];
    }
    let offset_secs = match rest {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), tail @ ..] => {
            let (oh, om) = match tail.len() {
                2 => (digits(tail)?, 0),
                5 if tail[2] == b':' => (digits(&tail[..2])?, digits(&tail[3..])?),
                _ => return None,
            };
            let secs = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + s) - offset_secs;
    Some(secs * 1_000_000 + micros)
}

fn parse_date(text: &str) -> Option<i32> {
    if let Some(days) = fast_date(text.as_bytes()) {
        return i32::try_from(days).ok();
    }
    let d = NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").ok()?;
    Some(chrono::Datelike::num_days_from_ce(&d) - UNIX_EPOCH_DAYS_FROM_CE)
}

fn parse_time(text: &str) -> Option<i64> {
    let t = NaiveTime::parse_from_str(text.trim(), "%H:%M:%S%.f").ok()?;
    Some(
        chrono::Timelike::num_seconds_from_midnight(&t) as i64 * 1_000_000
            + (chrono::Timelike::nanosecond(&t) / 1000) as i64,
    )
}

fn parse_timestamp(text: &str, with_zone: bool) -> Option<i64> {
    // A naive column holds no offset; one that does is parsed by the slow path below and refused.
    let fast = fast_timestamp(text.as_bytes())
        .filter(|_| with_zone || !text[19..].contains(['+', '-', 'Z']));
    if fast.is_some() {
        return fast;
    }
    let text = text.trim();
    if with_zone {
        // PostgreSQL writes offsets as +00, +05:30 or +05:30:15; MySQL TIMESTAMP comes as naive UTC.
        for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
            if let Ok(ts) = DateTime::parse_from_str(text, fmt) {
                return Some(ts.timestamp_micros());
            }
        }
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d"]
        .iter()
        .find_map(|fmt| {
            NaiveDateTime::parse_from_str(text, fmt).ok().or_else(|| {
                NaiveDate::parse_from_str(text, fmt)
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
            })
        })
        .map(|ts| ts.and_utc().timestamp_micros())
}

fn decode_pg_hex(bytes: &[u8]) -> Option<Vec<u8>> {
    let hex = bytes.strip_prefix(b"\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};

    fn one(ty: DataType, text: &str, binary: BinaryText) -> ArrayRef {
        let schema = unique_schema(vec![("c".into(), ty)]);
        let mut b = TextBatchBuilder::new(schema, binary);
        b.append(0, Some(text.as_bytes()));
        b.end_row();
        b.finish().unwrap().column(0).clone()
    }

    #[test]
    fn parses_engine_text_forms() {
        assert_eq!(
            one(DataType::Int64, "-42", BinaryText::Raw)
                .as_primitive::<Int64Type>()
                .value(0),
            -42
        );
        assert!(
            one(DataType::Float64, "NaN", BinaryText::Raw)
                .as_primitive::<Float64Type>()
                .value(0)
                .is_nan()
        );
        assert_eq!(
            one(DataType::Float64, "-Infinity", BinaryText::Raw)
                .as_primitive::<Float64Type>()
                .value(0),
            f64::NEG_INFINITY
        );
        assert!(
            one(DataType::Boolean, "t", BinaryText::Raw)
                .as_boolean()
                .value(0)
        );
        assert_eq!(
            one(DataType::Binary, "\\x00ff", BinaryText::PgHex)
                .as_binary::<i32>()
                .value(0),
            &[0, 255]
        );
        let ts = one(
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            "2026-11-22 12:00:00.5+01",
            BinaryText::Raw,
        );
        let expected = DateTime::parse_from_rfc3339("2026-11-22T11:00:00.5Z")
            .unwrap()
            .timestamp_micros();
        assert_eq!(
            ts.as_primitive::<TimestampMicrosecondType>().value(0),
            expected
        );
        let d = one(DataType::Date32, "1970-01-02", BinaryText::Raw);
        assert_eq!(d.as_primitive::<arrow::datatypes::Date32Type>().value(0), 1);
        let dec = one(DataType::Decimal128(12, 2), "12345.67", BinaryText::Raw);
        assert_eq!(dec.as_primitive::<Decimal128Type>().value(0), 1_234_567);
        let text = one(DataType::Utf8, "héllo 🚀  ", BinaryText::Raw);
        assert_eq!(text.as_string::<i32>().value(0), "héllo 🚀  ");
        assert!(one(DataType::Int64, "not a number", BinaryText::Raw).is_null(0));
    }

    #[test]
    fn fast_paths_agree_with_chrono() {
        for date in [
            "1970-01-01",
            "2000-02-29",
            "1900-03-01",
            "2026-11-22",
            "0001-01-01",
            "9999-12-31",
            "1969-12-31",
        ] {
            let expected = NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
            let expected =
                (chrono::Datelike::num_days_from_ce(&expected) - UNIX_EPOCH_DAYS_FROM_CE) as i64;
            assert_eq!(fast_date(date.as_bytes()), Some(expected), "{date}");
        }
        for bad in [
            "2026-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-1-01",
            "20261122xx",
        ] {
            assert_eq!(fast_date(bad.as_bytes()), None, "{bad}");
        }
        for (ts, rfc) in [
            ("2026-11-22 12:00:00", "2026-11-22T12:00:00Z"),
            ("2026-11-22 12:00:00.5", "2026-11-22T12:00:00.5Z"),
            (
                "2026-11-22 12:00:00.123456789",
                "2026-11-22T12:00:00.123456Z",
            ),
            ("2026-11-22 12:00:00+01", "2026-11-22T11:00:00Z"),
            ("2026-11-22T12:00:00-05:30", "2026-11-22T17:30:00Z"),
            ("1960-01-01 00:00:00.000001", "1960-01-01T00:00:00.000001Z"),
        ] {
            let expected = DateTime::parse_from_rfc3339(rfc)
                .unwrap()
                .timestamp_micros();
            assert_eq!(fast_timestamp(ts.as_bytes()), Some(expected), "{ts}");
        }
        assert_eq!(
            parse_timestamp("2026-11-22 12:00:00+01", false),
            None,
            "an offset in a naive column"
        );
        assert_eq!(parse_timestamp("2026-11-22 12:00:00 BC", true), None);
    }

    #[test]
    fn repeated_column_names_become_unique() {
        let s = unique_schema(vec![
            ("?column?".into(), DataType::Int32),
            ("?column?".into(), DataType::Int32),
            ("a".into(), DataType::Utf8),
        ]);
        let names: Vec<_> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["?column?", "?column?_2", "a"]);
    }
}

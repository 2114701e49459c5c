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
        Type::NUMERIC => match crate::postgres::arrow_type(ty, typmod) {
            DataType::Decimal128(p, s) => DataType::Decimal128(p, s),
            // Unconstrained numeric takes any scale: written from a wide decimal.
            _ => DataType::Decimal128(38, 10),
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
        DataType::Date32 => field(
            out,
            &(a.as_primitive::<Date32Type>().value(row) - PG_EPOCH_DAYS).to_be_bytes(),
        ),
        DataType::Time64(TimeUnit::Microsecond) => field(
            out,
            &a.as_primitive::<Time64MicrosecondType>()
                .value(row)
                .to_be_bytes(),
        ),
        DataType::Timestamp(TimeUnit::Microsecond, _) => field(
            out,
            &(a.as_primitive::<TimestampMicrosecondType>().value(row) - PG_EPOCH_MICROS)
                .to_be_bytes(),
        ),
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

//! An order-independent checksum of rows: each row hashes its values column by column, and the
//! row hashes are added (so duplicates count, unlike XOR). Both sides of a transfer cast their
//! batches to the source's Arrow types first, so equal values hash equally across engines.

use std::hash::{DefaultHasher, Hash, Hasher};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, SchemaRef, TimeUnit, TimestampMicrosecondType, UInt64Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use ferry_core::{Error, Result};
use serde::Serialize;

/// Rows seen and the sum of their hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Checksum {
    pub rows: u64,
    pub sum: u64,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finalizer: every input bit affects every output bit.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

impl Checksum {
    /// Adds a batch, cast to `schema` first (the source's types).
    pub fn add(&mut self, batch: &RecordBatch, schema: &SchemaRef) -> Result<()> {
        let n = batch.num_rows();
        let mut rows = vec![0x9e37_79b9_7f4a_7c15u64; n];
        for (i, field) in schema.fields().iter().enumerate() {
            let column = batch.column(i);
            let column: ArrayRef = if column.data_type() == field.data_type() {
                column.clone()
            } else {
                arrow::compute::cast(column, field.data_type()).map_err(|e| {
                    Error::Engine(format!(
                        "verification cannot compare column \"{}\": {} values read back do not convert to {}: {e}",
                        field.name(),
                        column.data_type(),
                        field.data_type()
                    ))
                })?
            };
            let salt = mix(i as u64 + 1);
            for (row, h) in rows.iter_mut().enumerate() {
                *h = mix(*h ^ value_hash(&column, row).wrapping_add(salt));
            }
        }
        for h in rows {
            self.sum = self.sum.wrapping_add(mix(h));
        }
        self.rows += n as u64;
        Ok(())
    }
}

fn float_bits(v: f64) -> u64 {
    if v.is_nan() {
        0x7ff8_0000_0000_0000
    } else {
        v.to_bits()
    }
}

fn value_hash(a: &ArrayRef, row: usize) -> u64 {
    if a.is_null(row) {
        return 0x6e75_6c6c;
    }
    match a.data_type() {
        DataType::Boolean => a.as_boolean().value(row) as u64 + 1,
        DataType::Int16 => mix(a.as_primitive::<Int16Type>().value(row) as i64 as u64),
        DataType::Int32 => mix(a.as_primitive::<Int32Type>().value(row) as i64 as u64),
        DataType::Int64 => mix(a.as_primitive::<Int64Type>().value(row) as u64),
        DataType::UInt64 => mix(a.as_primitive::<UInt64Type>().value(row)),
        DataType::Float32 => mix(float_bits(a.as_primitive::<Float32Type>().value(row) as f64)),
        DataType::Float64 => mix(float_bits(a.as_primitive::<Float64Type>().value(row))),
        DataType::Date32 => mix(a.as_primitive::<Date32Type>().value(row) as i64 as u64),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            mix(a.as_primitive::<TimestampMicrosecondType>().value(row) as u64)
        }
        DataType::Decimal128(..) => {
            hash_bytes(&a.as_primitive::<Decimal128Type>().value(row).to_le_bytes())
        }
        DataType::Utf8 => hash_bytes(a.as_string::<i32>().value(row).as_bytes()),
        DataType::Binary => hash_bytes(a.as_binary::<i32>().value(row)),
        _ => match ArrayFormatter::try_new(a.as_ref(), &FormatOptions::default()) {
            Ok(f) => hash_bytes(f.value(row).to_string().as_bytes()),
            Err(_) => 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch(ids: Vec<i64>, names: Vec<&str>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    fn sum(batches: &[RecordBatch]) -> Checksum {
        let mut c = Checksum::default();
        for b in batches {
            c.add(b, &b.schema()).unwrap();
        }
        c
    }

    #[test]
    fn order_does_not_matter_but_values_and_duplicates_do() {
        let a = sum(&[batch(vec![1, 2, 3], vec!["a", "b", "c"])]);
        let b = sum(&[batch(vec![3], vec!["c"]), batch(vec![2, 1], vec!["b", "a"])]);
        assert_eq!(a, b);
        assert_ne!(a, sum(&[batch(vec![1, 2, 3], vec!["a", "b", "x"])]));
        assert_ne!(
            a.sum,
            sum(&[batch(vec![1, 2, 3, 3], vec!["a", "b", "c", "c"])]).sum
        );
        // Swapping values between columns of one row changes the hash.
        assert_ne!(
            sum(&[batch(vec![1, 2], vec!["2", "1"])]),
            sum(&[batch(vec![1, 2], vec!["1", "2"])])
        );
    }

    #[test]
    fn values_read_back_in_another_type_compare_equal() {
        let source = batch(vec![1, 2], vec!["a", "b"]);
        let narrower = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int32, true),
                Field::new("name", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(Int32Array::from(vec![2, 1])),
                Arc::new(StringArray::from(vec!["b", "a"])),
            ],
        )
        .unwrap();
        let mut target = Checksum::default();
        target.add(&narrower, &source.schema()).unwrap();
        assert_eq!(sum(&[source]), target);
    }
}

//! How Arrow types become column types of each engine, and which conversions lose information.
//! The tables here are documented in `docs/type-map.md` (section "Transfers").

use arrow::datatypes::{DataType, TimeUnit};
use ferry_core::{Engine, Error, Result};

/// The column type a created table gets for an Arrow type. `key` marks primary-key columns,
/// which MySQL cannot index as unbounded text.
pub fn column_type(engine: Engine, ty: &DataType, key: bool) -> Result<String> {
    use DataType::*;
    let t = match (engine, ty) {
        (Engine::Postgres, Boolean) => "boolean".to_string(),
        (Engine::Postgres, Int8 | Int16 | UInt8) => "smallint".into(),
        (Engine::Postgres, Int32 | UInt16) => "integer".into(),
        (Engine::Postgres, Int64 | UInt32) => "bigint".into(),
        (Engine::Postgres, UInt64) => "numeric(20,0)".into(),
        (Engine::Postgres, Float16 | Float32) => "real".into(),
        (Engine::Postgres, Float64) => "double precision".into(),
        (Engine::Postgres, Decimal128(p, s)) => format!("numeric({p},{s})"),
        (Engine::Postgres, Utf8 | LargeUtf8 | Utf8View) => "text".into(),
        (Engine::Postgres, Binary | LargeBinary | BinaryView | FixedSizeBinary(_)) => {
            "bytea".into()
        }
        (Engine::Postgres, Date32 | Date64) => "date".into(),
        (Engine::Postgres, Time32(_) | Time64(_)) => "time".into(),
        (Engine::Postgres, Timestamp(_, None)) => "timestamp".into(),
        (Engine::Postgres, Timestamp(_, Some(_))) => "timestamptz".into(),

        (Engine::Mysql, Boolean) => "tinyint(1)".into(),
        (Engine::Mysql, Int8) => "tinyint".into(),
        (Engine::Mysql, Int16 | UInt8) => "smallint".into(),
        (Engine::Mysql, Int32 | UInt16) => "int".into(),
        (Engine::Mysql, Int64 | UInt32) => "bigint".into(),
        (Engine::Mysql, UInt64) => "bigint unsigned".into(),
        (Engine::Mysql, Float16 | Float32) => "float".into(),
        (Engine::Mysql, Float64) => "double".into(),
        (Engine::Mysql, Decimal128(p, s)) => format!("decimal({p},{s})"),
        (Engine::Mysql, Utf8 | LargeUtf8 | Utf8View) if key => "varchar(255)".into(),
        (Engine::Mysql, Utf8 | LargeUtf8 | Utf8View) => "longtext".into(),
        (Engine::Mysql, Binary | LargeBinary | BinaryView | FixedSizeBinary(_)) if key => {
            "varbinary(255)".into()
        }
        (Engine::Mysql, Binary | LargeBinary | BinaryView | FixedSizeBinary(_)) => {
            "longblob".into()
        }
        (Engine::Mysql, Date32 | Date64) => "date".into(),
        (Engine::Mysql, Time32(_) | Time64(_)) => "time(6)".into(),
        (Engine::Mysql, Timestamp(_, _)) => "datetime(6)".into(),

        (Engine::Sqlite, Boolean) => "boolean".into(),
        (Engine::Sqlite, Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32) => {
            "integer".into()
        }
        // SQLite integers are 64-bit signed, and numeric affinity would round decimals: keep both exact as text.
        (Engine::Sqlite, UInt64 | Decimal128(..)) => "text".into(),
        (Engine::Sqlite, Float16 | Float32 | Float64) => "real".into(),
        (Engine::Sqlite, Utf8 | LargeUtf8 | Utf8View) => "text".into(),
        (Engine::Sqlite, Binary | LargeBinary | BinaryView | FixedSizeBinary(_)) => "blob".into(),
        (Engine::Sqlite, Date32 | Date64) => "date".into(),
        (Engine::Sqlite, Time32(_) | Time64(_)) => "time".into(),
        (Engine::Sqlite, Timestamp(_, _)) => "datetime".into(),

        (Engine::Redis, _) => {
            return Err(Error::Unsupported("Redis is not a table target yet".into()));
        }
        (Engine::Archive, _) => {
            return Err(Error::Unsupported(
                "archives are written with ferry export, not as table targets".into(),
            ));
        }
        (_, other) => {
            return Err(Error::Unsupported(format!(
                "no {engine} column type for Arrow type {other}"
            )));
        }
    };
    Ok(t)
}

/// The Arrow type a created column reads back as, when it differs from the type written.
pub fn stored_type(engine: Engine, ty: &DataType) -> DataType {
    match (engine, ty) {
        (Engine::Mysql | Engine::Sqlite, DataType::Timestamp(unit, Some(_))) => {
            DataType::Timestamp(*unit, None)
        }
        _ => ty.clone(),
    }
}

/// What a conversion from one Arrow type into another does to values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversion {
    /// Every value survives.
    Exact,
    /// Some values change or may not fit; the reason says how.
    Lossy(String),
    /// The target cannot hold these values at all.
    Incompatible,
}

fn int_bits(t: &DataType) -> Option<(bool, u32)> {
    use DataType::*;
    Some(match t {
        Int8 => (true, 8),
        Int16 => (true, 16),
        Int32 => (true, 32),
        Int64 => (true, 64),
        UInt8 => (false, 8),
        UInt16 => (false, 16),
        UInt32 => (false, 32),
        UInt64 => (false, 64),
        _ => return None,
    })
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
    )
}

/// Classifies moving values of `from` into a column of type `to`.
pub fn conversion(from: &DataType, to: &DataType) -> Conversion {
    use Conversion::*;
    use DataType::*;
    if from == to || from == &Null {
        return Exact;
    }
    if is_text(to) {
        return if is_binary(from) {
            Lossy("binary values that are not UTF-8 cannot become text".into())
        } else {
            Exact
        };
    }
    if is_text(from) {
        return Lossy(format!("text values must parse as {to}"));
    }
    if is_binary(from) || is_binary(to) {
        return if is_binary(from) && is_binary(to) {
            Exact
        } else {
            Incompatible
        };
    }
    if let (Some((fs, fb)), Some((ts, tb))) = (int_bits(from), int_bits(to)) {
        let fits = match (fs, ts) {
            (true, true) | (false, false) => tb >= fb,
            (false, true) => tb > fb,
            (true, false) => false,
        };
        return if fits {
            Exact
        } else {
            Lossy(format!("{from} values may not fit in {to}"))
        };
    }
    match (from, to) {
        (t, Decimal128(p, s)) if int_bits(t).is_some() => {
            let (_, bits) = int_bits(t).unwrap_or((true, 64));
            let digits = match bits {
                8 => 3,
                16 => 5,
                32 => 10,
                _ => 20,
            };
            if (*p as i32 - *s as i32) >= digits {
                Exact
            } else {
                Lossy(format!("{from} values may not fit in {to}"))
            }
        }
        (Decimal128(p1, s1), Decimal128(p2, s2)) => {
            if s2 >= s1 && (*p2 as i32 - *s2 as i32) >= (*p1 as i32 - *s1 as i32) {
                Exact
            } else {
                Lossy(format!("{from} values lose digits in {to}"))
            }
        }
        // Whole decimals go into integers that hold every value of their precision exactly;
        // a narrower integer type (numeric(20,0) back into bigint unsigned) is checked per value.
        (Decimal128(p, s), t) if int_bits(t).is_some() => {
            let (signed, bits) = int_bits(t).unwrap_or((true, 64));
            let holds = match bits {
                8 => 2,
                16 => 4,
                32 => 9,
                _ if signed => 18,
                _ => 19,
            };
            if *s == 0 && signed && (*p as i32) <= holds {
                Exact
            } else {
                Lossy(format!("{from} values may not fit in {to}"))
            }
        }
        (Decimal128(..), Float32 | Float64) => Lossy(format!("{from} values are rounded in {to}")),
        (Float32, Float64) => Exact,
        (Float64, Float32) => Lossy("double values are rounded to single precision".into()),
        (t, Float64) if matches!(int_bits(t), Some((_, b)) if b <= 32) => Exact,
        (t, Float32 | Float64) if int_bits(t).is_some() => {
            Lossy(format!("{from} values above 2^53 are rounded in {to}"))
        }
        (Float32 | Float64, t) if int_bits(t).is_some() || matches!(t, Decimal128(..)) => {
            Lossy(format!("floating-point values are rounded into {to}"))
        }
        (Boolean, t) if int_bits(t).is_some() => Exact,
        (t, Boolean) if int_bits(t).is_some() => {
            Lossy("numbers other than 0 and 1 become true".into())
        }
        (Date32, Timestamp(..)) => Exact,
        (Timestamp(..), Date32) => Lossy("the time of day is dropped".into()),
        (Timestamp(u1, Some(_)), Timestamp(u2, None)) => {
            let _ = (u1, u2);
            Lossy("the time zone is dropped, instants are stored as UTC wall-clock time".into())
        }
        (Timestamp(u1, _), Timestamp(u2, _)) => {
            if unit_rank(u2) >= unit_rank(u1) {
                Exact
            } else {
                Lossy(format!("sub-{} precision is dropped", unit_name(u2)))
            }
        }
        (Time32(_) | Time64(_), Time32(_) | Time64(_)) => Exact,
        _ => Incompatible,
    }
}

fn unit_rank(u: &TimeUnit) -> u8 {
    match u {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 1,
        TimeUnit::Microsecond => 2,
        TimeUnit::Nanosecond => 3,
    }
}

fn unit_name(u: &TimeUnit) -> &'static str {
    match u {
        TimeUnit::Second => "second",
        TimeUnit::Millisecond => "millisecond",
        TimeUnit::Microsecond => "microsecond",
        TimeUnit::Nanosecond => "nanosecond",
    }
}

/// A column's declared type refined from the source catalog where the connector's Arrow type is
/// too coarse (MySQL `decimal(p,s)` arrives as exact text).
pub fn refine_declared(declared: &str, ty: &DataType) -> Option<DataType> {
    if !is_text(ty) {
        return None;
    }
    let d = declared.trim().to_ascii_lowercase();
    let args = d
        .strip_prefix("decimal(")
        .or_else(|| d.strip_prefix("numeric("))?;
    let args = args.split(')').next()?;
    let mut parts = args.split(',').map(|p| p.trim().parse::<u8>());
    let p = parts.next()?.ok()?;
    let s = parts.next().unwrap_or(Ok(0)).ok()?;
    (1..=38)
        .contains(&p)
        .then_some(DataType::Decimal128(p, s as i8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use DataType::*;

    fn check(from: DataType, to: DataType, expected: &str) {
        let got = match conversion(&from, &to) {
            Conversion::Exact => "exact",
            Conversion::Lossy(_) => "lossy",
            Conversion::Incompatible => "incompatible",
        };
        assert_eq!(got, expected, "{from} -> {to}");
    }

    #[test]
    fn conversions_are_classified() {
        check(Int32, Int64, "exact");
        check(Int64, Int32, "lossy");
        check(UInt64, Int64, "lossy");
        check(UInt32, Int64, "exact");
        check(Int64, Decimal128(20, 0), "exact");
        check(Int64, Decimal128(10, 0), "lossy");
        check(Decimal128(38, 10), Float64, "lossy");
        check(Decimal128(10, 2), Decimal128(12, 4), "exact");
        check(Decimal128(10, 2), Decimal128(10, 4), "lossy");
        check(
            Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            Timestamp(TimeUnit::Microsecond, None),
            "lossy",
        );
        check(
            Timestamp(TimeUnit::Microsecond, None),
            Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            "exact",
        );
        check(Date32, Utf8, "exact");
        check(Utf8, Int64, "lossy");
        check(Binary, Int64, "incompatible");
        check(Binary, Utf8, "lossy");
        check(Float64, Float64, "exact");
        check(Int32, Float64, "exact");
        check(Int64, Float64, "lossy");
        check(Boolean, Int16, "exact");
    }

    #[test]
    fn every_arrow_type_from_the_connectors_has_a_column_type() {
        let types = [
            Boolean,
            Int16,
            Int32,
            Int64,
            UInt64,
            Float32,
            Float64,
            Decimal128(38, 10),
            Utf8,
            Binary,
            Date32,
            Time64(TimeUnit::Microsecond),
            Timestamp(TimeUnit::Microsecond, None),
            Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        ];
        for engine in [Engine::Postgres, Engine::Mysql, Engine::Sqlite] {
            for t in &types {
                assert!(column_type(engine, t, false).is_ok(), "{engine} {t}");
            }
        }
        assert_eq!(
            column_type(Engine::Mysql, &Utf8, true).unwrap(),
            "varchar(255)"
        );
        assert_eq!(
            column_type(Engine::Postgres, &Decimal128(38, 10), false).unwrap(),
            "numeric(38,10)"
        );
    }

    #[test]
    fn declared_decimals_refine_text() {
        assert_eq!(
            refine_declared("decimal(38,10)", &Utf8),
            Some(Decimal128(38, 10))
        );
        assert_eq!(
            refine_declared("DECIMAL(10)", &Utf8),
            Some(Decimal128(10, 0))
        );
        assert_eq!(refine_declared("decimal(65,2)", &Utf8), None);
        assert_eq!(refine_declared("varchar(10)", &Utf8), None);
        assert_eq!(refine_declared("decimal(10,2)", &Int64), None);
    }
}

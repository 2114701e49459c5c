//! Statement classification, SQL rules input and masking plans; pure, no I/O.
//!
//! [`classify`] says what each statement of a script may do (read, write, DDL, DCL, admin or
//! unknown) so rules can allow or refuse it; [`mask`] works out which output columns of a query
//! carry masked data, refusing queries it cannot prove safe, and masks Arrow batches.

pub mod classify;
pub mod mask;
mod sql;

pub use classify::{Classified, StatementClass, classify_redis, classify_script};
pub use mask::{ColumnInfo, MaskAlgorithm, MaskPlan, Masker, plan_masking, referenced_tables};

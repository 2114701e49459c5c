//! Data movement: a transfer reads a table or query on one instance as a stream of Arrow record
//! batches and writes it into a table on another (or the same) instance, creating the table in
//! the target's dialect when asked, refusing lossy conversions unless allowed, and verifying the
//! result with row counts and an order-independent checksum computed on both sides.
//!
//! Planning ([`mapping`], [`plan`]) is pure; [`run`] does the I/O through connection pools.

pub mod checksum;
pub mod diff;
pub mod export;
pub mod files;
pub mod mapping;
pub mod plan;
pub mod run;

pub use export::{BatchMapper, ExportReport, ExportSpec, run_export, run_export_mapped};
pub use files::FileFormat;
pub use plan::{Endpoint, Mode, SourceSpec, TransferSpec};
pub use run::{Progress, TransferReport, WatermarkStore, run_transfer};

pub(crate) use ferry_connect::BatchStream;

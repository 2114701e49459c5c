//! Ferry's shared vocabulary: validated names, engines, the error type every crate returns,
//! and the configuration types of instances and their connection policies. No I/O lives here.

pub mod error;
pub mod instance;

pub use error::{Error, Result};
pub use instance::{
    ConnectionUrl, Engine, Environment, Feature, InstanceName, InstanceSettings, KillPolicy,
};

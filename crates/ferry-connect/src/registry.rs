//! The explicit list of connector plugins: one line per engine.

use std::sync::Arc;

use ferry_core::{ConnectionUrl, Engine, Error, Result};

use crate::{ConnectOptions, Connector};

type Factory = fn(&ConnectionUrl, &ConnectOptions) -> Result<Arc<dyn Connector>>;

/// Every connector Ferry has. Adding an engine is one module and one line here.
const CONNECTORS: &[(Engine, Factory)] = &[
    (Engine::Postgres, crate::postgres::connector),
    (Engine::Mysql, crate::mysql::connector),
    (Engine::Sqlite, crate::sqlite::connector),
    (Engine::Redis, crate::redis::connector),
];

/// The connector for a URL's engine.
pub fn connector_for(url: &ConnectionUrl, options: &ConnectOptions) -> Result<Arc<dyn Connector>> {
    let mut matching = CONNECTORS.iter().filter(|(e, _)| *e == url.engine());
    match (matching.next(), matching.next()) {
        (Some((_, factory)), None) => factory(url, options),
        (Some(_), Some(_)) => Err(Error::Internal(format!(
            "two connectors are registered for {}",
            url.engine()
        ))),
        (None, _) => Err(Error::Unsupported(format!(
            "no connector is registered for {}",
            url.engine()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_has_exactly_one_connector() {
        for engine in Engine::ALL {
            let n = CONNECTORS.iter().filter(|(e, _)| *e == engine).count();
            assert_eq!(n, 1, "{engine} has {n} connectors");
        }
    }
}

//! Instances: validated names, engines, connection URLs that keep their password out of
//! every `Debug`/`Display`, environments, and the per-instance connection policy.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A registered instance's name: 1–63 characters of `a-z`, `0-9`, `-`, `_`, starting with a
/// letter or digit. Used in URLs and CLI arguments, so no quoting is ever needed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct InstanceName(String);

impl InstanceName {
    pub fn new(name: &str) -> Result<Self> {
        let ok_first = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let ok_rest = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok_first || !ok_rest || name.len() > 63 {
            return Err(Error::InvalidInput(format!(
                "invalid instance name {name:?}: use 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
            )));
        }
        Ok(InstanceName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for InstanceName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        InstanceName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A database engine Ferry has a connector for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Postgres,
    Mysql,
    Sqlite,
    Redis,
    /// Ferry's own SQL engine over archived files (not registered by URL).
    Archive,
}

impl Engine {
    /// The engines instances are registered with by URL.
    pub const ALL: [Engine; 4] = [
        Engine::Postgres,
        Engine::Mysql,
        Engine::Sqlite,
        Engine::Redis,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
            Engine::Sqlite => "sqlite",
            Engine::Redis => "redis",
            Engine::Archive => "archive",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Engine {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Engine::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown engine {s:?}: use postgres, mysql, sqlite or redis"
                ))
            })
    }
}

const URL_EXAMPLES: &str = "postgres://user:password@host:5432/db, mysql://user:password@host:3306/db, sqlite:///path/to/file.db, sqlite::memory: or redis://host:6379/0";

/// A connection URL. It may hold a password, so `Debug` and `Display` show it redacted;
/// the full text is reachable only through [`ConnectionUrl::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionUrl {
    raw: String,
    engine: Engine,
}

impl ConnectionUrl {
    pub fn parse(raw: &str) -> Result<Self> {
        let raw = raw.trim();
        let scheme = raw
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let engine = match scheme.as_str() {
            "postgres" | "postgresql" => Engine::Postgres,
            "mysql" | "mariadb" => Engine::Mysql,
            "sqlite" => Engine::Sqlite,
            "redis" | "rediss" => Engine::Redis,
            "" => {
                return Err(Error::InvalidInput(format!(
                    "malformed connection URL: it has no scheme; use one of {URL_EXAMPLES}"
                )));
            }
            other => {
                return Err(Error::InvalidInput(format!(
                    "unsupported connection URL scheme {other:?}: use one of {URL_EXAMPLES}"
                )));
            }
        };
        if engine == Engine::Sqlite {
            if Self::sqlite_path_of(raw).is_empty() {
                return Err(Error::InvalidInput(
                    "malformed SQLite URL: it names no file; use sqlite:///path/to/file.db or sqlite::memory:".into(),
                ));
            }
        } else {
            let parsed = url::Url::parse(raw).map_err(|e| {
                Error::InvalidInput(format!(
                    "malformed {engine} connection URL ({e}; the URL is not shown because it may hold a password): use the form of {URL_EXAMPLES}"
                ))
            })?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(Error::InvalidInput(format!(
                    "malformed {engine} connection URL {}: it names no host",
                    redact(raw)
                )));
            }
        }
        Ok(ConnectionUrl {
            raw: raw.to_string(),
            engine,
        })
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The URL with its password. Only for handing to a driver or to the secret store.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.raw)
    }

    /// For `sqlite:` URLs, the file path (or `:memory:`).
    pub fn sqlite_path(&self) -> Option<&str> {
        (self.engine == Engine::Sqlite).then(|| Self::sqlite_path_of(&self.raw))
    }

    fn sqlite_path_of(raw: &str) -> &str {
        let rest = &raw["sqlite:".len().min(raw.len())..];
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        rest.split('?').next().unwrap_or_default()
    }

    /// The password, if the URL has one; used to scrub driver messages that might echo it.
    pub fn password(&self) -> Option<String> {
        url::Url::parse(&self.raw)
            .ok()
            .and_then(|u| u.password().map(|p| p.to_string()))
            .filter(|p| !p.is_empty())
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionUrl({})", self.redacted())
    }
}

impl fmt::Display for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replaces the password of a URL-shaped string by `***`; leaves other strings as they are.
pub fn redact(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_string();
    };
    let auth_start = scheme_end + 3;
    let rest = &raw[auth_start..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    let Some(at) = authority.rfind('@') else {
        return raw.to_string();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &raw[..auth_start],
            &userinfo[..colon],
            &raw[auth_start + at..]
        ),
        None => raw.to_string(),
    }
}

/// The environment an instance belongs to; later issues make rules stricter on `prod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    #[default]
    Dev,
    Test,
    Prod,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Dev => "dev",
            Environment::Test => "test",
            Environment::Prod => "prod",
        }
    }
}

impl FromStr for Environment {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dev" => Ok(Environment::Dev),
            "test" => Ok(Environment::Test),
            "prod" => Ok(Environment::Prod),
            _ => Err(Error::InvalidInput(format!(
                "unknown environment {s:?}: use dev, test or prod"
            ))),
        }
    }
}

/// What inside Ferry holds a connection; decides who gives way when an instance is at its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// The SQL console and SQL windows.
    Console,
    /// Asynchronous queries and exports.
    AsyncQuery,
    /// Scheduled tasks.
    Task,
    /// Ferry's own housekeeping (catalog, tests, kills).
    System,
}

impl Feature {
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Console => "console",
            Feature::AsyncQuery => "async_query",
            Feature::Task => "task",
            Feature::System => "system",
        }
    }
}

/// Per-instance policies that close idle or runaway connections. Durations are whole seconds;
/// `0` turns a policy off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KillPolicy {
    /// Close a pooled connection nobody used for this long.
    pub idle_timeout_secs: u64,
    /// Close a SQL window nobody used for this long (its open transaction rolls back).
    pub session_idle_timeout_secs: u64,
    /// Roll back and close a SQL window that sat idle inside a transaction this long.
    pub idle_in_transaction_timeout_secs: u64,
    /// Cancel, on the database server, a console statement running longer than this.
    pub max_statement_secs: u64,
    /// Who gives way first when the instance is at its cap and work of a later feature waits:
    /// holders of the first feature listed are cancelled first.
    pub yield_order: Vec<Feature>,
    /// After waiting this long at the cap, a request asks earlier features in `yield_order` to give way.
    pub preempt_after_secs: u64,
}

impl Default for KillPolicy {
    fn default() -> Self {
        KillPolicy {
            idle_timeout_secs: 300,
            session_idle_timeout_secs: 3600,
            idle_in_transaction_timeout_secs: 600,
            max_statement_secs: 0,
            yield_order: vec![Feature::Console, Feature::AsyncQuery, Feature::Task],
            preempt_after_secs: 0,
        }
    }
}

impl KillPolicy {
    pub fn validate(&self) -> Result<()> {
        let mut seen = Vec::new();
        for f in &self.yield_order {
            if seen.contains(f) {
                return Err(Error::InvalidInput(format!(
                    "yield_order lists {} twice: name each feature at most once",
                    f.as_str()
                )));
            }
            seen.push(*f);
        }
        Ok(())
    }

    /// Position of a feature in the yield order; features not listed never give way.
    pub fn yield_rank(&self, feature: Feature) -> Option<usize> {
        self.yield_order.iter().position(|f| *f == feature)
    }

    pub fn duration(secs: u64) -> Option<Duration> {
        (secs > 0).then(|| Duration::from_secs(secs))
    }
}

/// Connection settings of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceSettings {
    /// Hard cap on server-side connections Ferry opens to this instance, shared by every feature.
    pub max_connections: u32,
    /// How long a request waits in the queue at the cap before it fails as busy.
    pub acquire_timeout_secs: u64,
    /// Timeout for opening one connection.
    pub connect_timeout_secs: u64,
    pub policy: KillPolicy,
}

impl Default for InstanceSettings {
    fn default() -> Self {
        InstanceSettings {
            max_connections: 10,
            acquire_timeout_secs: 10,
            connect_timeout_secs: 10,
            policy: KillPolicy::default(),
        }
    }
}

impl InstanceSettings {
    pub fn validate(&self) -> Result<()> {
        if self.max_connections == 0 || self.max_connections > 10_000 {
            return Err(Error::InvalidInput(format!(
                "max_connections must be between 1 and 10000, got {}",
                self.max_connections
            )));
        }
        self.policy.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_redact(input: &str, expected: &str) {
        assert_eq!(redact(input), expected, "redact({input:?})");
    }

    #[test]
    fn redact_hides_passwords_only() {
        check_redact(
            "postgres://app:s3cret@db:5432/x",
            "postgres://app:***@db:5432/x",
        );
        check_redact("mysql://root@127.0.0.1/test", "mysql://root@127.0.0.1/test");
        check_redact(
            "redis://:pw@localhost:6379/0",
            "redis://:***@localhost:6379/0",
        );
        check_redact("sqlite:///tmp/a.db", "sqlite:///tmp/a.db");
        check_redact("postgres://u:p@ss@h/db", "postgres://u:***@h/db");
        check_redact("postgres://h/db?password=x", "postgres://h/db?password=x");
    }

    fn check_url(input: &str, expected: std::result::Result<Engine, &str>) {
        match (ConnectionUrl::parse(input), expected) {
            (Ok(u), Ok(e)) => assert_eq!(u.engine(), e, "{input}"),
            (Err(err), Err(fragment)) => {
                assert!(err.message().contains(fragment), "{input}: {err}");
                assert!(!err.message().contains("s3cret"), "{input}: leaked {err}");
            }
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn connection_urls_parse_or_explain() {
        check_url("postgres://a:s3cret@localhost/db", Ok(Engine::Postgres));
        check_url("postgresql://localhost", Ok(Engine::Postgres));
        check_url("mysql://root@127.0.0.1:3306/test", Ok(Engine::Mysql));
        check_url("mariadb://root@127.0.0.1/test", Ok(Engine::Mysql));
        check_url("sqlite:///tmp/x.db", Ok(Engine::Sqlite));
        check_url("sqlite::memory:", Ok(Engine::Sqlite));
        check_url("redis://127.0.0.1:6379/0", Ok(Engine::Redis));
        check_url(
            "oracle://x:s3cret@h/db",
            Err("unsupported connection URL scheme \"oracle\""),
        );
        check_url("localhost:5432", Err("unsupported connection URL scheme"));
        check_url(
            "postgres://a:s3cret@:99999999/db",
            Err("malformed postgres connection URL"),
        );
        check_url("sqlite://", Err("names no file"));
        check_url("", Err("no scheme"));
    }

    #[test]
    fn url_debug_and_display_are_redacted() {
        let u = ConnectionUrl::parse("postgres://a:s3cret@localhost/db").unwrap();
        assert!(!format!("{u:?}").contains("s3cret"));
        assert!(!format!("{u}").contains("s3cret"));
        assert_eq!(u.password().as_deref(), Some("s3cret"));
        assert_eq!(
            ConnectionUrl::parse("sqlite:///tmp/x.db")
                .unwrap()
                .sqlite_path(),
            Some("/tmp/x.db")
        );
        assert_eq!(
            ConnectionUrl::parse("sqlite::memory:")
                .unwrap()
                .sqlite_path(),
            Some(":memory:")
        );
    }

    #[test]
    fn instance_names_are_validated() {
        for ok in ["demo", "orders-prod", "pg_1", "9db"] {
            assert!(InstanceName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Demo", "-x", "a b", "a/b", &"x".repeat(64)] {
            assert!(InstanceName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_round_trip_and_reject_unknown_fields() {
        let s = InstanceSettings {
            max_connections: 3,
            ..InstanceSettings::default()
        };
        let json = serde_json::to_string(&s).unwrap();
        let back: InstanceSettings = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        let err = serde_json::from_str::<KillPolicy>(r#"{"idle_timeout": 1}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `idle_timeout`"),
            "{err}"
        );
        let dup = KillPolicy {
            yield_order: vec![Feature::Console, Feature::Console],
            ..KillPolicy::default()
        };
        assert!(dup.validate().is_err());
        assert!(
            InstanceSettings {
                max_connections: 0,
                ..InstanceSettings::default()
            }
            .validate()
            .is_err()
        );
    }
}

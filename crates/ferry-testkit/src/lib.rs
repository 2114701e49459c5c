//! Finds the real servers integration tests talk to and makes a fresh database on each.
//! Outside CI a missing server skips the test with a note; with `CI=true` it fails the test,
//! so a green CI run always means the servers were there.
//!
//! Addresses come from `FERRY_TEST_PG`, `FERRY_TEST_MYSQL`, `FERRY_TEST_REDIS`,
//! `FERRY_TEST_S3` (an S3-compatible endpoint) and `FERRY_TEST_AZURE` (Azurite), defaulting to
//! the loopback servers `scripts/test` starts.

pub mod fuzz;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_MYSQL: &str = "mysql://root@127.0.0.1:3306/test";
pub const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379/0";
pub const DEFAULT_S3: &str = "http://127.0.0.1:5000";
pub const DEFAULT_AZURE: &str = "http://127.0.0.1:10000";
/// The container `scripts/test` creates on Azurite; tests write under fresh prefixes in it.
pub const AZURE_CONTAINER: &str = "ferry-test";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn locate(what: &str, var: &str, default: &str) -> Option<String> {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let addr = host_port(&url);
    let reachable = addr
        .parse::<SocketAddr>()
        .ok()
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if reachable {
        return Some(url);
    }
    if in_ci() {
        panic!("{what} is not reachable at {addr} ({var}); scripts/test installs and starts it");
    }
    eprintln!("skipping: {what} is not reachable at {addr}; run scripts/test or set {var}");
    None
}

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = authority.rsplit('@').next().unwrap_or(authority);
    host.to_string()
}

/// The PostgreSQL server for tests (an admin connection URL), if reachable.
pub fn postgres() -> Option<String> {
    locate("PostgreSQL", "FERRY_TEST_PG", DEFAULT_PG)
}

/// The TLS-only PostgreSQL server (`scripts/test` starts it on 5433, with a certificate for
/// `localhost`): its URL without TLS settings and the CA file that signed its certificate.
pub fn postgres_tls() -> Option<(String, String)> {
    let url = locate(
        "PostgreSQL with TLS",
        "FERRY_TEST_PG_TLS",
        "postgres://postgres@127.0.0.1:5433/postgres",
    )?;
    let ca = std::env::var("FERRY_TEST_PG_TLS_CA")
        .unwrap_or_else(|_| "/var/tmp/ferry-pgtls/certs/ca.pem".to_string());
    Some((url, ca))
}

/// The TLS-only MariaDB (`scripts/test` starts it on 3307 with the same test certificate): its
/// URL without TLS settings and the CA file.
pub fn mysql_tls() -> Option<(String, String)> {
    let url = locate(
        "MariaDB with TLS",
        "FERRY_TEST_MYSQL_TLS",
        "mysql://root@127.0.0.1:3307/test",
    )?;
    let ca = std::env::var("FERRY_TEST_PG_TLS_CA")
        .unwrap_or_else(|_| "/var/tmp/ferry-pgtls/certs/ca.pem".to_string());
    Some((url, ca))
}

/// The MySQL/MariaDB server for tests, if reachable.
pub fn mysql() -> Option<String> {
    locate("MySQL/MariaDB", "FERRY_TEST_MYSQL", DEFAULT_MYSQL)
}

/// The Redis server for tests, if reachable.
pub fn redis() -> Option<String> {
    locate("Redis", "FERRY_TEST_REDIS", DEFAULT_REDIS)
}

/// The S3-compatible endpoint for tests (moto on loopback), if reachable. The server under test
/// reads the endpoint and credentials from its environment (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`,
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), which `scripts/test` sets; moto accepts any keys.
pub fn s3() -> Option<String> {
    let endpoint = locate("S3 (moto)", "FERRY_TEST_S3", DEFAULT_S3)?;
    let vars = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "AWS_ALLOW_HTTP",
    ];
    configured("S3", &vars).then_some(endpoint)
}

/// Whether the server-side settings a store's tests rely on are in the environment; in CI their
/// absence fails the test.
fn configured(what: &str, vars: &[&str]) -> bool {
    if vars.iter().all(|v| std::env::var(v).is_ok()) {
        return true;
    }
    if in_ci() {
        panic!(
            "the {what} tests need {}; scripts/test sets them",
            vars.join(", ")
        );
    }
    eprintln!(
        "skipping: the {what} tests need {}; scripts/test sets them",
        vars.join(", ")
    );
    false
}

/// Azurite on loopback, if reachable and configured (`AZURE_STORAGE_USE_EMULATOR=true`); returns
/// a fresh prefix inside [`AZURE_CONTAINER`].
pub fn azure() -> Option<String> {
    locate("Azure Blob (Azurite)", "FERRY_TEST_AZURE", DEFAULT_AZURE)?;
    configured("Azure", &["AZURE_STORAGE_USE_EMULATOR"]).then(fresh_name)
}

/// The SMTP server for notification tests (aiosmtpd on loopback), if reachable and configured:
/// the server under test sends through `FERRY_SMTP_URL`, and the test reads what arrived from
/// the maildir `FERRY_TEST_MAILDIR`, which this returns.
pub fn smtp() -> Option<std::path::PathBuf> {
    locate(
        "SMTP (aiosmtpd)",
        "FERRY_TEST_SMTP",
        "smtp://127.0.0.1:2525",
    )?;
    configured("SMTP", &["FERRY_SMTP_URL", "FERRY_TEST_MAILDIR"]).then(|| {
        std::env::var("FERRY_TEST_MAILDIR")
            .unwrap_or_default()
            .into()
    })
}

/// `spark-submit` (from `pip install pyspark`), if on the PATH; in CI its absence fails the test.
pub fn spark() -> Option<String> {
    let found = std::process::Command::new("spark-submit")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("spark-submit".into());
    }
    if in_ci() {
        panic!("spark-submit is not on the PATH; scripts/test installs pyspark");
    }
    eprintln!("skipping: spark-submit is not on the PATH; run scripts/test or pip install pyspark");
    None
}

/// Creates an empty bucket on the test S3 endpoint and returns its name.
pub async fn fresh_bucket(endpoint: &str) -> String {
    let name = fresh_name().replace('_', "-");
    let resp = reqwest::Client::new()
        .put(format!("{endpoint}/{name}"))
        .send()
        .await
        .expect("create test bucket");
    assert!(
        resp.status().is_success(),
        "creating bucket {name}: {}",
        resp.status()
    );
    name
}

/// Object-store options a test request gives (the region; the rest is the server's environment).
pub fn s3_options(_endpoint: &str) -> std::collections::BTreeMap<String, String> {
    [("region".to_string(), "us-east-1".to_string())]
        .into_iter()
        .collect()
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..path_start])
}

fn fresh_name() -> String {
    format!(
        "ferry_t_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Creates an empty PostgreSQL database and returns its URL.
pub async fn fresh_postgres_db(admin_url: &str) -> String {
    let name = fresh_name();
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!("create database {name}"))
        .await
        .expect("create test database");
    drop(client);
    let _ = task.await;
    with_database(admin_url, &name)
}

/// Creates an empty MySQL database and returns its URL.
pub async fn fresh_mysql_db(admin_url: &str) -> String {
    use sqlx::Connection;
    let name = fresh_name();
    let mut conn = sqlx::MySqlConnection::connect(admin_url)
        .await
        .expect("connect to the test MySQL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let _ = conn.close().await;
    with_database(admin_url, &name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            super::with_database("postgres://u@h:1/postgres", "x"),
            "postgres://u@h:1/x"
        );
        assert_eq!(
            super::with_database("mysql://root@h:3306/test?ssl-mode=disabled", "y"),
            "mysql://root@h:3306/y?ssl-mode=disabled"
        );
        assert_eq!(
            super::with_database("postgres://u@h", "z"),
            "postgres://u@h/z"
        );
        assert_eq!(
            super::host_port("postgres://a:b@127.0.0.1:5432/x"),
            "127.0.0.1:5432"
        );
    }
}

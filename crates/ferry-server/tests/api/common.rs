//! A server per test on a free loopback port with its own data directory, and helpers to call it.

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ferry_server::{ServerConfig, SharedState};
use reqwest::StatusCode;
use serde_json::{Value, json};

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything the servers of this test binary logged, at every level.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.get().unwrap().lock().unwrap()).into_owned()
}

fn capture_logs() {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buf
    });
}

/// The first administrator's password on test servers.
pub const ADMIN_PASSWORD: &str = "test-admin-password-1";
/// The password of users the tests create.
pub const USER_PASSWORD: &str = "test-user-password-1";

/// An HTTP client signed in as one user.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

pub struct TestServer {
    /// Signed in as the first administrator.
    pub client: Client,
    pub state: SharedState,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        capture_logs();
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            policy_interval: Duration::from_millis(100),
            ..ServerConfig::default()
        };
        config.admin_password = Some(ADMIN_PASSWORD.into());
        adjust(&mut config);
        let server = ferry_server::bind(config).await.unwrap();
        let base = format!("http://{}", server.local_addr());
        let state = server.state.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        let client = Client::login(&base, "admin", ADMIN_PASSWORD).await;
        TestServer {
            client,
            state,
            dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Creates a user with roles and grants and signs them in.
    pub async fn user(&self, name: &str, roles: &[&str], grants: &[&str]) -> Client {
        let (status, v) = self
            .post(
                "/api/v1/users",
                json!({ "name": name, "password": USER_PASSWORD, "roles": roles, "grants": grants }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "creating user {name}: {v}");
        Client::login(&self.base, name, USER_PASSWORD).await
    }

    /// Stops serving and waits for the server to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl std::ops::Deref for TestServer {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Client {
    /// Signs in with a password and keeps the token for every request.
    pub async fn login(base: &str, user: &str, password: &str) -> Client {
        let resp = reqwest::Client::new()
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({ "user": user, "password": password, "name": "tests" }))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "login as {user}: {v}");
        let token = v["token"].as_str().unwrap().to_string();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        Client {
            base: base.to_string(),
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap(),
        }
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        Self::answer(
            self.http
                .put(format!("{}{path}", self.base))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn answer(resp: reqwest::Response) -> (StatusCode, Value) {
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        Self::answer(
            self.http
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        Self::answer(
            self.http
                .post(format!("{}{path}", self.base))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        Self::answer(
            self.http
                .patch(format!("{}{path}", self.base))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        Self::answer(
            self.http
                .delete(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Registers an instance and checks it was accepted.
    pub async fn add_instance(&self, name: &str, url: &str, settings: Value) {
        let mut body = json!({ "name": name, "url": url });
        if !settings.is_null() {
            let mut full = serde_json::to_value(ferry_core::InstanceSettings::default()).unwrap();
            merge(&mut full, settings);
            body["settings"] = full;
        }
        let (status, v) = self.post("/api/v1/instances", body).await;
        assert_eq!(status, StatusCode::CREATED, "adding {name}: {v}");
    }

    /// Runs SQL on an instance and returns the statement results.
    pub async fn sql(&self, instance: &str, sql: &str) -> Vec<Value> {
        let (status, v) = self
            .post(
                &format!("/api/v1/instances/{instance}/sql"),
                json!({ "sql": sql }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{sql}: {v}");
        v["results"].as_array().unwrap().clone()
    }

    /// Runs one statement and returns its rows; fails the test on a statement error.
    pub async fn rows(&self, instance: &str, sql: &str) -> Vec<Value> {
        let results = self.sql(instance, sql).await;
        assert!(results[0]["error"].is_null(), "{sql}: {}", results[0]);
        results[0]["rows"].as_array().unwrap().clone()
    }

    pub async fn session_sql(&self, session: &str, sql: &str) -> Value {
        let (status, v) = self
            .post(
                &format!("/api/v1/sessions/{session}/sql"),
                json!({ "sql": sql }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{sql}: {v}");
        v
    }
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

/// Waits until `check` returns `Some`, polling, or fails after `secs`.
pub async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh PostgreSQL database registered as `name`; returns its URL.
pub async fn postgres_instance(server: &TestServer, name: &str, settings: Value) -> Option<String> {
    let admin = ferry_testkit::postgres()?;
    let url = ferry_testkit::fresh_postgres_db(&admin).await;
    server.add_instance(name, &url, settings).await;
    Some(url)
}

/// A fresh MariaDB database registered as `name`; returns its URL.
pub async fn mysql_instance(server: &TestServer, name: &str, settings: Value) -> Option<String> {
    let admin = ferry_testkit::mysql()?;
    let url = ferry_testkit::fresh_mysql_db(&admin).await;
    server.add_instance(name, &url, settings).await;
    Some(url)
}

/// A direct PostgreSQL connection for checking what the server sees.
pub async fn pg_direct(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

pub fn database_of(url: &str) -> String {
    url.rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string()
}

/// Submits a job (a transfer or an export) and waits for it to end; returns its final record.
pub async fn run_job(server: &TestServer, path: &str, spec: Value) -> Value {
    let (status, v) = server.post(path, spec.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{spec}: {v}");
    let id = v["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, v) = server.get(&format!("/api/v1/transfers/{id}")).await;
        if v["status"] != "running" {
            return v;
        }
        if Instant::now() >= deadline {
            let logs = captured_logs();
            let ferry: Vec<&str> = logs.lines().filter(|l| l.contains("ferry_")).collect();
            let tail = ferry[ferry.len().saturating_sub(60)..].join("\n");
            panic!("the job did not end in 120 s: {v}\nlast Ferry log lines:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submits a transfer and waits for it to end; returns the final record.
pub async fn transfer(server: &TestServer, spec: Value) -> Value {
    run_job(server, "/api/v1/transfers", spec).await
}

/// A table endpoint of a transfer.
pub fn table(instance: &str, table: &str) -> Value {
    json!({ "instance": instance, "table": table })
}

/// Exports a table to one Parquet file and loads that file back into a new table `back` on the
/// same instance (`allow_lossy` passed on); both jobs must succeed and verify.
pub async fn parquet_round_trip(
    server: &TestServer,
    instance: &str,
    source: &str,
    file: &str,
    back: &str,
    allow_lossy: bool,
) {
    let spec =
        json!({ "source": { "table": table(instance, source) }, "url": file, "format": "parquet" });
    let out = run_job(server, "/api/v1/exports", spec).await;
    assert!(succeeded(&out)["rows"].as_u64().unwrap() > 0, "{out}");
    let spec = json!({ "source": { "files": { "url": file, "format": "parquet" } }, "target": table(instance, back), "create": true, "allow_lossy": allow_lossy });
    let out = transfer(server, spec).await;
    assert_eq!(succeeded(&out)["verified"], true, "{out}");
}

/// The report of a job that must have succeeded.
pub fn succeeded(v: &Value) -> &Value {
    assert_eq!(v["status"], "succeeded", "{v}");
    &v["report"]
}

/// Fresh PostgreSQL and MariaDB databases registered as `pg` and `my`; false when either server is
/// missing (outside CI; in CI a missing server fails the test).
pub async fn pg_and_my(server: &TestServer) -> bool {
    postgres_instance(server, "pg", Value::Null).await.is_some()
        && mysql_instance(server, "my", Value::Null).await.is_some()
}

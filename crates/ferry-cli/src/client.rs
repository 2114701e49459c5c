//! The HTTP client of the CLI: JSON calls with the server's errors turned into messages, and
//! streamed downloads copied to a writer chunk by chunk.

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncWrite, AsyncWriteExt};

pub struct Client {
    base: String,
    http: reqwest::Client,
}

/// Percent-encodes one path segment or query value.
pub fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client for `base`, sending `token` (from `ferry login` or `FERRY_TOKEN`) as a bearer.
    pub fn new(base: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("--server must be an http:// or https:// URL, got {base:?}");
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .context("the stored token is not valid: sign in again with `ferry login`")?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        Ok(Client {
            base,
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .context("building the HTTP client")?,
        })
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.json(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the Ferry server at {}: {}; start it with `ferry serve` or point --server / FERRY_SERVER at it",
                self.base,
                root_cause(&e)
            )
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        if status == reqwest::StatusCode::UNAUTHORIZED && !message.contains("ferry login") {
            bail!("{message} (HTTP 401); sign in with `ferry login --user NAME` or set FERRY_TOKEN")
        }
        bail!("{message} (HTTP {})", status.as_u16())
    }

    async fn json(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = self.send(req).await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        resp.json().await.context("the server's answer is not JSON")
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.json(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.json(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.json(self.http.patch(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.json(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// POSTs and copies the streamed answer to `out` chunk by chunk.
    pub async fn download<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        body: &Value,
        out: &mut W,
    ) -> anyhow::Result<()> {
        let resp = self
            .send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await?;
        copy_body(resp, out).await
    }

    pub async fn download_get<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        out: &mut W,
    ) -> anyhow::Result<()> {
        let resp = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        copy_body(resp, out).await
    }
}

async fn copy_body<W: AsyncWrite + Unpin>(
    resp: reqwest::Response,
    out: &mut W,
) -> anyhow::Result<()> {
    if resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
    {
        // A statement without rows answers with its affected count instead of a stream.
        let v: Value = resp.json().await?;
        eprintln!("{} rows affected", v["affected"]);
        return Ok(());
    }
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| anyhow!("the result stream broke off: {}", root_cause(&e)))?;
        out.write_all(&chunk).await.context("writing the result")?;
    }
    out.flush().await?;
    Ok(())
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

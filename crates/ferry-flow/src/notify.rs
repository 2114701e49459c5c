//! Notifications about runs: on failure, on success, and when a run takes longer than expected,
//! by webhook (a JSON POST) and by e-mail through the server's SMTP relay
//! (`FERRY_SMTP_URL`, e.g. `smtp://127.0.0.1:25` or `smtps://user:pass@mail.example.com`, and
//! `FERRY_SMTP_FROM`). A notification that cannot be delivered is logged; it never changes the
//! run's outcome, and the relay's credentials never appear in a message.

use std::time::Duration;

use ferry_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// A flow's `[notify]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// Which events notify.
    #[serde(default = "default_on")]
    pub on: Vec<Event>,
    #[serde(default)]
    pub webhook: Option<String>,
    #[serde(default)]
    pub email: Vec<String>,
    /// A run still going after this long notifies `overdue` (once).
    #[serde(default)]
    pub expected_duration_secs: Option<u64>,
}

fn default_on() -> Vec<Event> {
    vec![Event::Failure]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Failure,
    Success,
    Overdue,
}

impl Notify {
    pub fn validate(&self) -> Result<()> {
        if let Some(url) = &self.webhook {
            let ok = url::Url::parse(url)
                .map(|u| matches!(u.scheme(), "http" | "https"))
                .unwrap_or(false);
            if !ok {
                return Err(Error::InvalidInput(format!(
                    "notify, field webhook: {url:?} is not an http(s) URL"
                )));
            }
        }
        for address in &self.email {
            address.parse::<lettre::Address>().map_err(|_| {
                Error::InvalidInput(format!(
                    "notify, field email: {address:?} is not an e-mail address"
                ))
            })?;
        }
        if self.on.contains(&Event::Overdue) && self.expected_duration_secs.is_none() {
            return Err(Error::InvalidInput(
                "notify, field on: \"overdue\" needs expected_duration_secs".into(),
            ));
        }
        if self.webhook.is_none() && self.email.is_empty() {
            return Err(Error::InvalidInput(
                "notify: give a webhook, an email list, or both".into(),
            ));
        }
        Ok(())
    }
}

/// What a notification says.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub event: Event,
    pub flow: String,
    pub run_id: String,
    pub bizdate: String,
    pub status: String,
    pub error: Option<String>,
    pub duration_ms: Option<i64>,
}

impl Message {
    fn subject(&self) -> String {
        match self.event {
            Event::Failure => format!(
                "[ferry] flow {} failed (bizdate {})",
                self.flow, self.bizdate
            ),
            Event::Success => format!(
                "[ferry] flow {} succeeded (bizdate {})",
                self.flow, self.bizdate
            ),
            Event::Overdue => format!(
                "[ferry] flow {} is running longer than expected (bizdate {})",
                self.flow, self.bizdate
            ),
        }
    }

    fn body(&self) -> String {
        let mut text = format!(
            "flow: {}\nrun: {}\nbusiness date: {}\nstatus: {}\n",
            self.flow, self.run_id, self.bizdate, self.status
        );
        if let Some(ms) = self.duration_ms {
            text.push_str(&format!("duration: {:.1} s\n", ms as f64 / 1000.0));
        }
        if let Some(e) = &self.error {
            text.push_str(&format!("error: {e}\n"));
        }
        text.push_str(&format!(
            "\nferry run show {}\nferry run logs {}\n",
            self.run_id, self.run_id
        ));
        text
    }
}

/// Sends `message` where `notify` says, if it asks for this event; failures are logged.
pub async fn send(notify: &Notify, message: &Message) {
    if !notify.on.contains(&message.event) {
        return;
    }
    if let Some(url) = &notify.webhook
        && let Err(e) = webhook(url, message).await
    {
        tracing::warn!(flow = %message.flow, run = %message.run_id, error = %e, "webhook notification failed");
    }
    if !notify.email.is_empty()
        && let Err(e) = email(&notify.email, message).await
    {
        tracing::warn!(flow = %message.flow, run = %message.run_id, error = %e, "e-mail notification failed");
    }
}

async fn webhook(url: &str, message: &Message) -> Result<()> {
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Error::Internal(e.to_string()))?
        .post(url)
        .json(message)
        .send()
        .await
        .map_err(|e| Error::Connection(format!("webhook: {}", e.without_url())))?;
    if !response.status().is_success() {
        return Err(Error::Connection(format!(
            "webhook answered {}",
            response.status()
        )));
    }
    Ok(())
}

async fn email(to: &[String], message: &Message) -> Result<()> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
    let relay = std::env::var("FERRY_SMTP_URL").map_err(|_| {
        Error::InvalidInput(
            "e-mail notifications need FERRY_SMTP_URL (smtp://host:port) on the server".into(),
        )
    })?;
    let from = std::env::var("FERRY_SMTP_FROM").unwrap_or_else(|_| "ferry@localhost".into());
    let mut builder = lettre::Message::builder()
        .from(from.parse().map_err(|_| {
            Error::InvalidInput(format!("FERRY_SMTP_FROM {from:?} is not an address"))
        })?)
        .subject(message.subject());
    for address in to {
        builder = builder.to(address
            .parse()
            .map_err(|_| Error::InvalidInput(format!("{address:?} is not an e-mail address")))?);
    }
    let mail = builder
        .body(message.body())
        .map_err(|e| Error::Internal(format!("building the e-mail: {e}")))?;
    // The relay URL may hold a password: errors name the host only.
    let host = url::Url::parse(&relay)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "the relay".into());
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&relay)
        .map_err(|_| {
            Error::InvalidInput("FERRY_SMTP_URL is not an smtp:// or smtps:// URL".into())
        })?
        .timeout(Some(Duration::from_secs(20)))
        .build();
    transport.send(mail).await.map_err(|e| {
        Error::Connection(format!(
            "sending e-mail through {host}: {}",
            e.to_string().replace(&relay, "***")
        ))
    })?;
    Ok(())
}

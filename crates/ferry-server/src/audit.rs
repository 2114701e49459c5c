//! The audit log: every statement run through Ferry and every change or refusal through the
//! API, appended to the store (which refuses updates and deletes), with secrets redacted
//! before they are written; and the endpoints that search and export it.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use ferry_meta::{AuditFilter, AuditRecord, now_ms};
use serde::Deserialize;

use crate::SharedState;
use crate::api::ApiQuery;
use crate::error::ApiResult;

/// Appends an entry (id, time and redaction filled in). A store failure is logged, not raised:
/// the statement it describes has already run.
pub async fn record(state: &SharedState, mut entry: AuditRecord) {
    entry.id = uuid::Uuid::new_v4().to_string();
    if entry.at_ms == 0 {
        entry.at_ms = now_ms();
    }
    entry.statement = entry.statement.map(|s| redact_statement(&s));
    entry.error = entry.error.map(|s| redact_statement(&s));
    if let Err(e) = state.meta.append_audit(&entry).await {
        tracing::error!(user = %entry.user, action = %entry.action, error = %e, "could not write an audit entry");
    }
}

/// A statement with the secrets it may hold replaced by `***`: passwords after `PASSWORD`,
/// `IDENTIFIED … BY`, `REQUIREPASS`, in `PASSWORD('…')`, Redis `AUTH` and ACL `>password`
/// arguments, and credentials inside URLs.
pub fn redact_statement(sql: &str) -> String {
    let trimmed = sql.trim_start();
    let first: String = trimmed
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    if first == "AUTH" || first == "HELLO" && trimmed.to_ascii_uppercase().contains(" AUTH ") {
        return format!("{first} ***");
    }
    let mut out = String::with_capacity(sql.len());
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    // Words seen since the last string literal, upper-cased, newest last.
    let mut recent: Vec<String> = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' {
            let quote = c;
            let mut j = i + 1;
            let mut literal = String::new();
            while j < chars.len() {
                if chars[j] == quote {
                    if chars.get(j + 1) == Some(&quote) {
                        literal.push(quote);
                        j += 2;
                        continue;
                    }
                    break;
                }
                if chars[j] == '\\' && j + 1 < chars.len() {
                    literal.push(chars[j]);
                    literal.push(chars[j + 1]);
                    j += 2;
                    continue;
                }
                literal.push(chars[j]);
                j += 1;
            }
            let secret = recent.last().is_some_and(|w| {
                w == "PASSWORD" || w == "REQUIREPASS" || w == "SECRET" || w == "MASTERAUTH"
            }) || (recent.last().is_some_and(|w| w == "BY")
                && recent.iter().rev().take(6).any(|w| w == "IDENTIFIED"));
            out.push(quote);
            if secret {
                out.push_str("***");
            } else {
                out.push_str(&ferry_core::instance::redact(&literal));
            }
            if j < chars.len() {
                out.push(quote);
            }
            recent.clear();
            i = j + 1;
            continue;
        }
        if c.is_alphanumeric() || c == '_' || c == '>' {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && !"'\"(),;=".contains(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let upper = word.to_ascii_uppercase();
            let after_secret_word = recent
                .last()
                .is_some_and(|w| w == "REQUIREPASS" || w == "MASTERAUTH");
            if word.starts_with('>') && word.len() > 1 || after_secret_word {
                out.push_str(if word.starts_with('>') { ">***" } else { "***" });
            } else {
                out.push_str(&ferry_core::instance::redact(&word));
            }
            recent.push(upper);
            if recent.len() > 8 {
                recent.remove(0);
            }
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Audit search parameters (all optional).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub user: Option<String>,
    pub instance: Option<String>,
    /// `sql`, `api`, `login`, `approval`, `flow`.
    pub action: Option<String>,
    /// `ok`, `denied`, `failed`.
    pub outcome: Option<String>,
    /// Statement class: `read`, `write`, `ddl`, `dcl`, `admin`, `unknown`.
    pub class: Option<String>,
    /// Entries at or after this time (RFC 3339 or ms since the epoch).
    pub since: Option<String>,
    /// Entries before this time (RFC 3339 or ms since the epoch).
    pub until: Option<String>,
    /// Statement text containing this (case-insensitive).
    pub text: Option<String>,
    pub limit: Option<i64>,
    /// Export format: `ndjson` (default) or `csv`.
    pub format: Option<String>,
}

fn parse_time(field: &str, value: &Option<String>) -> ferry_core::Result<Option<i64>> {
    let Some(v) = value else { return Ok(None) };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| Some(t.timestamp_millis()))
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").map(|d| {
                Some(
                    d.and_hms_opt(0, 0, 0)
                        .unwrap_or_default()
                        .and_utc()
                        .timestamp_millis(),
                )
            })
        })
        .map_err(|_| {
            ferry_core::Error::InvalidInput(format!(
                "{field} \"{v}\" is not a time: give RFC 3339 (2026-11-22T10:00:00Z), a date (2026-11-22) or ms since the epoch"
            ))
        })
}

impl AuditQuery {
    fn filter(&self) -> ferry_core::Result<AuditFilter> {
        Ok(AuditFilter {
            user: self.user.clone(),
            instance: self.instance.clone(),
            action: self.action.clone(),
            outcome: self.outcome.clone(),
            class: self.class.clone(),
            since_ms: parse_time("since", &self.since)?,
            until_ms: parse_time("until", &self.until)?,
            text: self.text.clone(),
            limit: self.limit,
        })
    }
}

#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery), responses((status = 200, description = "Audit entries, newest first")))]
pub async fn search(
    State(state): State<SharedState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Vec<AuditRecord>>> {
    Ok(Json(state.meta.search_audit(&q.filter()?).await?))
}

#[utoipa::path(get, path = "/api/v1/audit/export", params(AuditQuery), responses((status = 200, description = "Audit entries as NDJSON or CSV")))]
pub async fn export(
    State(state): State<SharedState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Response> {
    let mut filter = q.filter()?;
    filter.limit = Some(filter.limit.unwrap_or(100_000));
    let entries = state.meta.search_audit(&filter).await?;
    let csv = match q.format.as_deref() {
        None | Some("ndjson") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ferry_core::Error::InvalidInput(format!(
                "unknown audit export format \"{other}\": use ndjson or csv"
            ))
            .into());
        }
    };
    let mut out = String::new();
    if csv {
        out.push_str("at,user,source,action,instance,database,class,outcome,rows,duration_ms,statement,decisions,error\n");
        for e in &entries {
            let at = chrono::DateTime::from_timestamp_millis(e.at_ms)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            let fields = [
                at,
                e.user.clone(),
                e.source.clone().unwrap_or_default(),
                e.action.clone(),
                e.instance.clone().unwrap_or_default(),
                e.database.clone().unwrap_or_default(),
                e.class.clone().unwrap_or_default(),
                e.outcome.clone(),
                e.rows.map(|r| r.to_string()).unwrap_or_default(),
                e.duration_ms.map(|r| r.to_string()).unwrap_or_default(),
                e.statement.clone().unwrap_or_default(),
                e.decisions.clone().unwrap_or_default(),
                e.error.clone().unwrap_or_default(),
            ];
            let line: Vec<String> = fields
                .iter()
                .map(|f| format!("\"{}\"", f.replace('"', "\"\"")))
                .collect();
            out.push_str(&line.join(","));
            out.push('\n');
        }
    } else {
        for e in &entries {
            out.push_str(&serde_json::to_string(e).unwrap_or_default());
            out.push('\n');
        }
    }
    let content_type = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    Ok(([(header::CONTENT_TYPE, content_type)], Body::from(out)).into_response())
}

#[cfg(test)]
mod tests {
    use super::redact_statement;

    #[test]
    fn secrets_in_statements_are_redacted() {
        let check = |sql: &str, expected: &str| assert_eq!(redact_statement(sql), expected);
        check(
            "CREATE USER bob WITH PASSWORD 's3cret'",
            "CREATE USER bob WITH PASSWORD '***'",
        );
        check(
            "alter user bob password 'it''s'",
            "alter user bob password '***'",
        );
        check(
            "CREATE USER 'bob'@'%' IDENTIFIED BY 'pw1'",
            "CREATE USER 'bob'@'%' IDENTIFIED BY '***'",
        );
        check(
            "ALTER USER 'bob'@'%' IDENTIFIED WITH mysql_native_password BY 'pw1'",
            "ALTER USER 'bob'@'%' IDENTIFIED WITH mysql_native_password BY '***'",
        );
        check(
            "SET PASSWORD FOR 'bob'@'%' = PASSWORD('pw2')",
            "SET PASSWORD FOR 'bob'@'%' = PASSWORD('***')",
        );
        check("SET PASSWORD = 'pw3'", "SET PASSWORD = '***'");
        check(
            "select dblink_connect('postgres://app:hunter2@db/x')",
            "select dblink_connect('postgres://app:***@db/x')",
        );
        check("AUTH default hunter2", "AUTH ***");
        check(
            "CONFIG SET requirepass hunter2",
            "CONFIG SET requirepass ***",
        );
        check(
            "ACL SETUSER bob on >hunter2 ~* +@all",
            "ACL SETUSER bob on >*** ~* +@all",
        );
        check(
            "select * from t where name = 'password'",
            "select * from t where name = 'password'",
        );
        check("SELECT 'unterminated", "SELECT 'unterminated");
    }
}

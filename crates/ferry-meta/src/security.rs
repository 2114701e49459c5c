//! Security records in the store: users (argon2 hashes only), API tokens and cookie sessions
//! (SHA-256 digests only), custom roles, who owns which query, transfer and flow version,
//! SQL rules, masking rules, approval requests and the append-only audit log.

use async_trait::async_trait;
use ferry_core::{Error, Result};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::sql::{SqlStore, store_error};

/// A user. `grants` holds the user's own grants beside those of `roles` (both JSON arrays).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// An argon2 PHC string; never the password.
    pub password_hash: String,
    /// Role names as a JSON array.
    pub roles: String,
    /// Grants as a JSON array of strings (`write@instance:orders`).
    pub grants: String,
    pub disabled: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A personal API token or a browser session. Only the SHA-256 digest of the secret is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub user: String,
    pub name: String,
    /// `token` (bearer, for the CLI) or `session` (cookie, for the browser).
    pub kind: String,
    pub secret_hash: String,
    /// For sessions: the digest of the CSRF token state-changing requests must carry.
    pub csrf_hash: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

/// A custom role (built-in roles live in code).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleRecord {
    pub name: String,
    pub description: String,
    /// Grants as a JSON array of strings.
    pub grants: String,
    pub created_at_ms: i64,
}

/// One audit entry. Statements are stored with secrets already redacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AuditRecord {
    pub id: String,
    pub at_ms: i64,
    pub user: String,
    /// The client's address.
    pub source: Option<String>,
    /// `sql`, `login`, `api`, `approval`, `flow` …
    pub action: String,
    pub instance: Option<String>,
    pub database: Option<String>,
    pub statement: Option<String>,
    /// The statement's class (`read`, `write`, `ddl`, `dcl`, `admin`, `unknown`).
    pub class: Option<String>,
    /// Every grant and rule decision taken, as a JSON array.
    pub decisions: Option<String>,
    pub rows: Option<i64>,
    pub duration_ms: Option<i64>,
    /// `ok`, `denied`, `failed` or `pending`.
    pub outcome: String,
    pub error: Option<String>,
}

/// What to search the audit log for; all given conditions must hold.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuditFilter {
    pub user: Option<String>,
    pub instance: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub class: Option<String>,
    /// Entries at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Entries before this time (ms since the epoch).
    pub until_ms: Option<i64>,
    /// Statement text containing this (case-insensitive).
    pub text: Option<String>,
    pub limit: Option<i64>,
}

/// A SQL rule setting for a scope (`env:prod` or `instance:NAME`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlRuleRecord {
    pub scope: String,
    pub rule: String,
    pub value: String,
    pub updated_at_ms: i64,
}

/// A masking rule: a column of one table, or every column whose name matches a pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskRuleRecord {
    pub id: String,
    /// `*`, `env:NAME` or `instance:NAME`.
    pub scope: String,
    /// The table (as written, optionally schema-qualified); `None` for a name pattern.
    pub table: Option<String>,
    /// The column name, or a regular expression over column names when `table` is `None`.
    pub column: String,
    /// `full`, `keep-last-4` or `hash`.
    pub algorithm: String,
    pub created_at_ms: i64,
}

/// A request to run one statement that a rule holds for approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub id: String,
    pub requester: String,
    pub instance: String,
    pub database: Option<String>,
    pub statement: String,
    /// SHA-256 of the statement, shown to the approver and checked before it runs.
    pub statement_hash: String,
    pub reason: String,
    /// `pending`, `approved`, `rejected`, `running`, `executed` or `failed`.
    pub status: String,
    pub approver: Option<String>,
    pub result: Option<String>,
    pub created_at_ms: i64,
    pub decided_at_ms: Option<i64>,
    pub executed_at_ms: Option<i64>,
}

#[async_trait]
pub trait SecurityRepo: Send + Sync {
    async fn count_users(&self) -> Result<i64>;
    /// Fails with `Conflict` when the name exists.
    async fn insert_user(&self, user: &UserRecord) -> Result<()>;
    async fn get_user(&self, name: &str) -> Result<Option<UserRecord>>;
    async fn list_users(&self) -> Result<Vec<UserRecord>>;
    async fn update_user(&self, user: &UserRecord) -> Result<bool>;
    /// Deletes a user and revokes every token and session of theirs.
    async fn delete_user(&self, name: &str) -> Result<bool>;

    async fn insert_token(&self, token: &TokenRecord) -> Result<()>;
    /// A token or session by the digest of its secret, if not revoked and not expired.
    async fn live_token(&self, secret_hash: &str, now_ms: i64) -> Result<Option<TokenRecord>>;
    async fn list_tokens(&self, user: &str) -> Result<Vec<TokenRecord>>;
    /// Revokes a token of `user` (any user's when `None`); false when there was none to revoke.
    async fn revoke_token(&self, id: &str, user: Option<&str>, now_ms: i64) -> Result<bool>;
    async fn touch_token(&self, id: &str, now_ms: i64) -> Result<()>;

    async fn upsert_role(&self, role: &RoleRecord) -> Result<()>;
    async fn list_roles(&self) -> Result<Vec<RoleRecord>>;
    async fn delete_role(&self, name: &str) -> Result<bool>;

    /// Records who owns a query, transfer or flow version (`kind` names which).
    async fn set_owner(&self, kind: &str, id: &str, owner: &str) -> Result<()>;
    async fn owner_of(&self, kind: &str, id: &str) -> Result<Option<String>>;

    /// Appends to the audit log. There is no way to change or delete an entry.
    async fn append_audit(&self, entry: &AuditRecord) -> Result<()>;
    /// Newest first.
    async fn search_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>>;

    async fn set_sql_rule(&self, rule: &SqlRuleRecord) -> Result<()>;
    async fn delete_sql_rule(&self, scope: &str, rule: &str) -> Result<bool>;
    async fn list_sql_rules(&self) -> Result<Vec<SqlRuleRecord>>;

    async fn insert_mask_rule(&self, rule: &MaskRuleRecord) -> Result<()>;
    async fn list_mask_rules(&self) -> Result<Vec<MaskRuleRecord>>;
    async fn delete_mask_rule(&self, id: &str) -> Result<bool>;

    async fn insert_approval(&self, approval: &ApprovalRecord) -> Result<()>;
    async fn get_approval(&self, id: &str) -> Result<Option<ApprovalRecord>>;
    async fn list_approvals(&self, status: Option<&str>) -> Result<Vec<ApprovalRecord>>;
    /// Moves an approval from `from` to `to` with the given fields; false when it was not in
    /// `from` (someone else decided or ran it first).
    async fn move_approval(
        &self,
        id: &str,
        from: &str,
        to: &str,
        approver: Option<&str>,
        result: Option<&str>,
        at_ms: i64,
    ) -> Result<bool>;

    /// Every stored secret as (instance name, ciphertext).
    async fn instance_secrets(&self) -> Result<Vec<(String, String)>>;
    /// Replaces every instance secret in one transaction; fails (changing nothing) unless each
    /// instance's secret is still the `old` one given.
    async fn replace_instance_secrets(&self, secrets: &[(String, String, String)]) -> Result<()>;
}

fn get<'r, T>(row: &'r AnyRow, column: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(column).map_err(store_error)
}

const USER_COLUMNS: &str =
    "name, password_hash, roles, grants, disabled, created_at_ms, updated_at_ms";
const TOKEN_COLUMNS: &str = "id, user_name, name, kind, secret_hash, csrf_hash, created_at_ms, expires_at_ms, last_used_ms, revoked_at_ms";
const AUDIT_COLUMNS: &str = "id, at_ms, user_name, source, action, instance, database_name, statement, class, decisions, row_count, duration_ms, outcome, error";
const APPROVAL_COLUMNS: &str = "id, requester, instance, database_name, statement, statement_hash, reason, status, approver, result, created_at_ms, decided_at_ms, executed_at_ms";

fn user_from(row: &AnyRow) -> Result<UserRecord> {
    Ok(UserRecord {
        name: get(row, "name")?,
        password_hash: get(row, "password_hash")?,
        roles: get(row, "roles")?,
        grants: get(row, "grants")?,
        disabled: get::<i64>(row, "disabled")? != 0,
        created_at_ms: get(row, "created_at_ms")?,
        updated_at_ms: get(row, "updated_at_ms")?,
    })
}

fn token_from(row: &AnyRow) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: get(row, "id")?,
        user: get(row, "user_name")?,
        name: get(row, "name")?,
        kind: get(row, "kind")?,
        secret_hash: get(row, "secret_hash")?,
        csrf_hash: get(row, "csrf_hash")?,
        created_at_ms: get(row, "created_at_ms")?,
        expires_at_ms: get(row, "expires_at_ms")?,
        last_used_ms: get(row, "last_used_ms")?,
        revoked_at_ms: get(row, "revoked_at_ms")?,
    })
}

fn audit_from(row: &AnyRow) -> Result<AuditRecord> {
    Ok(AuditRecord {
        id: get(row, "id")?,
        at_ms: get(row, "at_ms")?,
        user: get(row, "user_name")?,
        source: get(row, "source")?,
        action: get(row, "action")?,
        instance: get(row, "instance")?,
        database: get(row, "database_name")?,
        statement: get(row, "statement")?,
        class: get(row, "class")?,
        decisions: get(row, "decisions")?,
        rows: get(row, "row_count")?,
        duration_ms: get(row, "duration_ms")?,
        outcome: get(row, "outcome")?,
        error: get(row, "error")?,
    })
}

fn approval_from(row: &AnyRow) -> Result<ApprovalRecord> {
    Ok(ApprovalRecord {
        id: get(row, "id")?,
        requester: get(row, "requester")?,
        instance: get(row, "instance")?,
        database: get(row, "database_name")?,
        statement: get(row, "statement")?,
        statement_hash: get(row, "statement_hash")?,
        reason: get(row, "reason")?,
        status: get(row, "status")?,
        approver: get(row, "approver")?,
        result: get(row, "result")?,
        created_at_ms: get(row, "created_at_ms")?,
        decided_at_ms: get(row, "decided_at_ms")?,
        executed_at_ms: get(row, "executed_at_ms")?,
    })
}

#[async_trait]
impl SecurityRepo for SqlStore {
    async fn count_users(&self) -> Result<i64> {
        sqlx::query_scalar("select count(*) from users")
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)
    }

    async fn insert_user(&self, u: &UserRecord) -> Result<()> {
        sqlx::query(
            "insert into users (name, password_hash, roles, grants, disabled, created_at_ms, updated_at_ms) values ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&u.name)
        .bind(&u.password_hash)
        .bind(&u.roles)
        .bind(&u.grants)
        .bind(i64::from(u.disabled))
        .bind(u.created_at_ms)
        .bind(u.updated_at_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| match store_error(e) {
            Error::Conflict(_) => Error::Conflict(format!("user \"{}\" exists already", u.name)),
            other => other,
        })?;
        Ok(())
    }

    async fn get_user(&self, name: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {USER_COLUMNS} from users where name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(user_from).transpose()
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {USER_COLUMNS} from users order by name"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(user_from).collect()
    }

    async fn update_user(&self, u: &UserRecord) -> Result<bool> {
        let done = sqlx::query(
            "update users set password_hash = $2, roles = $3, grants = $4, disabled = $5, updated_at_ms = $6 where name = $1",
        )
        .bind(&u.name)
        .bind(&u.password_hash)
        .bind(&u.roles)
        .bind(&u.grants)
        .bind(i64::from(u.disabled))
        .bind(u.updated_at_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_user(&self, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query("update api_tokens set revoked_at_ms = $2 where user_name = $1 and revoked_at_ms is null")
            .bind(name)
            .bind(crate::now_ms())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let done = sqlx::query("delete from users where name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_token(&self, t: &TokenRecord) -> Result<()> {
        sqlx::query(
            "insert into api_tokens (id, user_name, name, kind, secret_hash, csrf_hash, created_at_ms, expires_at_ms, last_used_ms, revoked_at_ms) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&t.id)
        .bind(&t.user)
        .bind(&t.name)
        .bind(&t.kind)
        .bind(&t.secret_hash)
        .bind(&t.csrf_hash)
        .bind(t.created_at_ms)
        .bind(t.expires_at_ms)
        .bind(t.last_used_ms)
        .bind(t.revoked_at_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn live_token(&self, secret_hash: &str, now_ms: i64) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {TOKEN_COLUMNS} from api_tokens where secret_hash = $1 and revoked_at_ms is null and (expires_at_ms is null or expires_at_ms > $2)"
        )))
        .bind(secret_hash)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(token_from).transpose()
    }

    async fn list_tokens(&self, user: &str) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {TOKEN_COLUMNS} from api_tokens where user_name = $1 order by created_at_ms, id"
        )))
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(token_from).collect()
    }

    async fn revoke_token(&self, id: &str, user: Option<&str>, now_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "update api_tokens set revoked_at_ms = $3 where id = $1 and ($2 is null or user_name = $2) and revoked_at_ms is null",
        )
        .bind(id)
        .bind(user)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn touch_token(&self, id: &str, now_ms: i64) -> Result<()> {
        sqlx::query("update api_tokens set last_used_ms = $2 where id = $1")
            .bind(id)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn upsert_role(&self, r: &RoleRecord) -> Result<()> {
        sqlx::query(
            "insert into roles (name, description, grants, created_at_ms) values ($1, $2, $3, $4)
             on conflict (name) do update set description = excluded.description, grants = excluded.grants",
        )
        .bind(&r.name)
        .bind(&r.description)
        .bind(&r.grants)
        .bind(r.created_at_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn list_roles(&self) -> Result<Vec<RoleRecord>> {
        let rows =
            sqlx::query("select name, description, grants, created_at_ms from roles order by name")
                .fetch_all(&self.pool)
                .await
                .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                Ok(RoleRecord {
                    name: get(row, "name")?,
                    description: get(row, "description")?,
                    grants: get(row, "grants")?,
                    created_at_ms: get(row, "created_at_ms")?,
                })
            })
            .collect()
    }

    async fn delete_role(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("delete from roles where name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_owner(&self, kind: &str, id: &str, owner: &str) -> Result<()> {
        sqlx::query(
            "insert into owners (kind, id, owner) values ($1, $2, $3)
             on conflict (kind, id) do update set owner = excluded.owner",
        )
        .bind(kind)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn owner_of(&self, kind: &str, id: &str) -> Result<Option<String>> {
        sqlx::query_scalar("select owner from owners where kind = $1 and id = $2")
            .bind(kind)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)
    }

    async fn append_audit(&self, a: &AuditRecord) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "insert into audit_log ({AUDIT_COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        )))
        .bind(&a.id)
        .bind(a.at_ms)
        .bind(&a.user)
        .bind(&a.source)
        .bind(&a.action)
        .bind(&a.instance)
        .bind(&a.database)
        .bind(&a.statement)
        .bind(&a.class)
        .bind(&a.decisions)
        .bind(a.rows)
        .bind(a.duration_ms)
        .bind(&a.outcome)
        .bind(&a.error)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn search_audit(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {AUDIT_COLUMNS} from audit_log
             where ($1 is null or user_name = $1) and ($2 is null or instance = $2)
               and ($3 is null or action = $3) and ($4 is null or outcome = $4)
               and ($5 is null or class = $5) and ($6 is null or at_ms >= $6)
               and ($7 is null or at_ms < $7)
               and ($8 is null or lower(statement) like '%' || lower($8) || '%')
             order by at_ms desc, id desc limit $9"
        )))
        .bind(&f.user)
        .bind(&f.instance)
        .bind(&f.action)
        .bind(&f.outcome)
        .bind(&f.class)
        .bind(f.since_ms)
        .bind(f.until_ms)
        .bind(&f.text)
        .bind(f.limit.unwrap_or(1000).clamp(1, 100_000))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(audit_from).collect()
    }

    async fn set_sql_rule(&self, r: &SqlRuleRecord) -> Result<()> {
        sqlx::query(
            "insert into sql_rules (scope, rule, value, updated_at_ms) values ($1, $2, $3, $4)
             on conflict (scope, rule) do update set value = excluded.value, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&r.scope)
        .bind(&r.rule)
        .bind(&r.value)
        .bind(r.updated_at_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn delete_sql_rule(&self, scope: &str, rule: &str) -> Result<bool> {
        let done = sqlx::query("delete from sql_rules where scope = $1 and rule = $2")
            .bind(scope)
            .bind(rule)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_sql_rules(&self) -> Result<Vec<SqlRuleRecord>> {
        let rows = sqlx::query(
            "select scope, rule, value, updated_at_ms from sql_rules order by scope, rule",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                Ok(SqlRuleRecord {
                    scope: get(row, "scope")?,
                    rule: get(row, "rule")?,
                    value: get(row, "value")?,
                    updated_at_ms: get(row, "updated_at_ms")?,
                })
            })
            .collect()
    }

    async fn insert_mask_rule(&self, r: &MaskRuleRecord) -> Result<()> {
        sqlx::query(
            "insert into mask_rules (id, scope, table_name, column_name, algorithm, created_at_ms) values ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&r.id)
        .bind(&r.scope)
        .bind(&r.table)
        .bind(&r.column)
        .bind(&r.algorithm)
        .bind(r.created_at_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn list_mask_rules(&self) -> Result<Vec<MaskRuleRecord>> {
        let rows = sqlx::query(
            "select id, scope, table_name, column_name, algorithm, created_at_ms from mask_rules order by created_at_ms, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                Ok(MaskRuleRecord {
                    id: get(row, "id")?,
                    scope: get(row, "scope")?,
                    table: get(row, "table_name")?,
                    column: get(row, "column_name")?,
                    algorithm: get(row, "algorithm")?,
                    created_at_ms: get(row, "created_at_ms")?,
                })
            })
            .collect()
    }

    async fn delete_mask_rule(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("delete from mask_rules where id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_approval(&self, a: &ApprovalRecord) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "insert into approvals ({APPROVAL_COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        )))
        .bind(&a.id)
        .bind(&a.requester)
        .bind(&a.instance)
        .bind(&a.database)
        .bind(&a.statement)
        .bind(&a.statement_hash)
        .bind(&a.reason)
        .bind(&a.status)
        .bind(&a.approver)
        .bind(&a.result)
        .bind(a.created_at_ms)
        .bind(a.decided_at_ms)
        .bind(a.executed_at_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn get_approval(&self, id: &str) -> Result<Option<ApprovalRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {APPROVAL_COLUMNS} from approvals where id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(approval_from).transpose()
    }

    async fn list_approvals(&self, status: Option<&str>) -> Result<Vec<ApprovalRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {APPROVAL_COLUMNS} from approvals where ($1 is null or status = $1) order by created_at_ms desc, id limit 500"
        )))
        .bind(status)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(approval_from).collect()
    }

    async fn move_approval(
        &self,
        id: &str,
        from: &str,
        to: &str,
        approver: Option<&str>,
        result: Option<&str>,
        at_ms: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "update approvals set status = $3,
                approver = coalesce($4, approver),
                result = coalesce($5, result),
                decided_at_ms = case when $3 in ('approved', 'rejected') then $6 else decided_at_ms end,
                executed_at_ms = case when $3 in ('executed', 'failed') then $6 else executed_at_ms end
             where id = $1 and status = $2",
        )
        .bind(id)
        .bind(from)
        .bind(to)
        .bind(approver)
        .bind(result)
        .bind(at_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn instance_secrets(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("select name, url_secret from instances order by name")
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        rows.iter()
            .map(|row| Ok((get(row, "name")?, get(row, "url_secret")?)))
            .collect()
    }

    async fn replace_instance_secrets(&self, secrets: &[(String, String, String)]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        for (name, old, new) in secrets {
            let done = sqlx::query(
                "update instances set url_secret = $3 where name = $1 and url_secret = $2",
            )
            .bind(name)
            .bind(old)
            .bind(new)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            if done.rows_affected() != 1 {
                return Err(Error::Conflict(format!(
                    "instance \"{name}\" changed while the key was rotated: rotate again"
                )));
            }
        }
        tx.commit().await.map_err(store_error)?;
        Ok(())
    }
}

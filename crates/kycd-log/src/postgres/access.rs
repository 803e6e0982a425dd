//! Tokens, users, console sign-ins and lockouts on PostgreSQL, as
//! [`crate::access`] keeps them in SQLite. A sign-in attempt is counted
//! under its row's lock, so concurrent attempts from any number of
//! connections or instances all count.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::store::PgStore;
use super::store_error;
use crate::access::{Access, ConsoleSession, LoginAttempt, Scope, TokenInfo, UserInfo};
use crate::store::StoreError;

/// How long an attempt is remembered when no lock follows it (as in
/// SQLite).
const ATTEMPT_MEMORY_MS: i64 = 24 * 60 * 60 * 1000;

const TOKEN_COLUMNS: &str = "id, name, scope, created_at_ms, revoked_at_ms";

/// The key of a username's attempts: the SHA-256 of what was typed.
fn login_key(username: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(username.as_bytes()))
}

fn token_of(r: &PgRow) -> Result<TokenInfo, StoreError> {
    let scope: String = r.try_get(2).map_err(store_error)?;
    Ok(TokenInfo {
        id: r.try_get(0).map_err(store_error)?,
        name: r.try_get(1).map_err(store_error)?,
        scope: Scope::parse(&scope)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown token scope {scope:?}")))?,
        created_at_ms: r.try_get(3).map_err(store_error)?,
        revoked_at_ms: r.try_get(4).map_err(store_error)?,
    })
}

/// Forget a username's attempts inside a transaction; `false` when it had
/// none.
async fn clear_login_in(tx: &mut PgConnection, username: &str) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM login_attempts WHERE key = $1")
        .bind(login_key(username))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    Ok(done.rows_affected() > 0)
}

#[async_trait::async_trait]
impl Access for PgStore {
    async fn create_token(&self, info: TokenInfo, digest: String) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, scope, digest, created_at_ms)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&info.id)
        .bind(&info.name)
        .bind(info.scope.as_str())
        .bind(digest)
        .bind(info.created_at_ms)
        .execute(self.db.pool())
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn token_by_digest(&self, digest: &str) -> Result<Option<TokenInfo>, StoreError> {
        sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE digest = $1"
        ))
        .bind(digest)
        .fetch_optional(self.db.pool())
        .await
        .map_err(store_error)?
        .as_ref()
        .map(token_of)
        .transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at_ms, id COLLATE \"C\""
        ))
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?
        .iter()
        .map(token_of)
        .collect()
    }

    async fn revoke_token(&self, id: &str, now_ms: i64) -> Result<Option<TokenInfo>, StoreError> {
        // One statement: revoking twice keeps the first time.
        sqlx::query(&format!(
            "UPDATE api_tokens SET revoked_at_ms = coalesce(revoked_at_ms, $2) WHERE id = $1
             RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(id)
        .bind(now_ms)
        .fetch_optional(self.db.pool())
        .await
        .map_err(store_error)?
        .as_ref()
        .map(token_of)
        .transpose()
    }

    async fn add_user(&self, user: UserInfo, password_hash: String) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO users (username, role, password_hash, created_at_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (username) DO NOTHING",
        )
        .bind(&user.username)
        .bind(&user.role)
        .bind(password_hash)
        .bind(user.created_at_ms)
        .execute(self.db.pool())
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_users(&self) -> Result<Vec<UserInfo>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT username, role, created_at_ms FROM users ORDER BY username COLLATE \"C\"",
        )
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        Ok(rows
            .into_iter()
            .map(|(username, role, created_at_ms)| UserInfo {
                username,
                role,
                created_at_ms,
            })
            .collect())
    }

    async fn user_credentials(
        &self,
        username: &str,
    ) -> Result<Option<(UserInfo, String)>, StoreError> {
        let row: Option<(String, String, i64, String)> = sqlx::query_as(
            "SELECT username, role, created_at_ms, password_hash FROM users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(self.db.pool())
        .await
        .map_err(store_error)?;
        Ok(row.map(|(username, role, created_at_ms, hash)| {
            (
                UserInfo {
                    username,
                    role,
                    created_at_ms,
                },
                hash,
            )
        }))
    }

    /// As [`crate::access::begin_login`], with the username's row locked
    /// from its read to its write (created first if need be, so that there
    /// is a row to lock): concurrent attempts queue on it, and each counts.
    async fn begin_login(
        &self,
        username: &str,
        now_ms: i64,
        max_attempts: u32,
        lock_ms: i64,
    ) -> Result<LoginAttempt, StoreError> {
        let key = login_key(username);
        let mut tx = self.db.pool().begin().await.map_err(store_error)?;
        // Forget old attempts, skipping rows another attempt holds (it is
        // about to write them, so they are not old).
        sqlx::query(
            "DELETE FROM login_attempts WHERE key IN (
                 SELECT key FROM login_attempts
                 WHERE coalesce(locked_until_ms, 0) <= $1 AND last_ms < $2
                 FOR UPDATE SKIP LOCKED)",
        )
        .bind(now_ms)
        .bind(now_ms - ATTEMPT_MEMORY_MS)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        // A row at zero counts as no row.
        sqlx::query(
            "INSERT INTO login_attempts (key, attempts, last_ms, locked_until_ms)
             VALUES ($1, 0, $2, NULL) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&key)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        let (before, locked_until): (i32, Option<i64>) = sqlx::query_as(
            "SELECT attempts, locked_until_ms FROM login_attempts WHERE key = $1 FOR UPDATE",
        )
        .bind(&key)
        .fetch_one(&mut *tx)
        .await
        .map_err(store_error)?;
        if let Some(until) = locked_until {
            if until > now_ms {
                tx.commit().await.map_err(store_error)?;
                return Ok(LoginAttempt::Locked { until_ms: until });
            }
        }
        // A lock that has run out starts the count again.
        let before = if locked_until.is_some() {
            0
        } else {
            i64::from(before)
        };
        let attempts = before + 1;
        let locks = attempts >= i64::from(max_attempts);
        let (stored, until) = if locks {
            (0, Some(now_ms + lock_ms))
        } else {
            (attempts, None)
        };
        sqlx::query(
            "UPDATE login_attempts SET attempts = $2, last_ms = $3, locked_until_ms = $4
             WHERE key = $1",
        )
        .bind(&key)
        .bind(i32::try_from(stored).unwrap_or(i32::MAX))
        .bind(now_ms)
        .bind(until)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(LoginAttempt::Allowed { locks })
    }

    async fn clear_login(&self, username: &str) -> Result<bool, StoreError> {
        let mut conn = self.db.pool().acquire().await.map_err(store_error)?;
        clear_login_in(&mut conn, username).await
    }

    async fn create_console_session(
        &self,
        digest: String,
        session: ConsoleSession,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.pool().begin().await.map_err(store_error)?;
        sqlx::query("DELETE FROM console_sessions WHERE expires_at_ms <= $1")
            .bind(session.created_at_ms)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        clear_login_in(&mut tx, &session.username).await?;
        sqlx::query(
            "INSERT INTO console_sessions (digest, username, csrf, created_at_ms, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(digest)
        .bind(&session.username)
        .bind(&session.csrf)
        .bind(session.created_at_ms)
        .bind(session.expires_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)
    }

    async fn console_session(
        &self,
        digest: &str,
        now_ms: i64,
    ) -> Result<Option<ConsoleSession>, StoreError> {
        let row: Option<(String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT s.username, u.role, s.csrf, s.created_at_ms, s.expires_at_ms
             FROM console_sessions s JOIN users u ON u.username = s.username
             WHERE s.digest = $1 AND s.expires_at_ms > $2",
        )
        .bind(digest)
        .bind(now_ms)
        .fetch_optional(self.db.pool())
        .await
        .map_err(store_error)?;
        Ok(row.map(
            |(username, role, csrf, created_at_ms, expires_at_ms)| ConsoleSession {
                username,
                role,
                csrf,
                created_at_ms,
                expires_at_ms,
            },
        ))
    }

    async fn delete_console_session(&self, digest: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM console_sessions WHERE digest = $1")
            .bind(digest)
            .execute(self.db.pool())
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

//! Who may use kycd: API tokens (scoped, stored as digests) and console
//! users (passwords stored as argon2 hashes by the caller).
//!
//! A token is shown once, when it is created; the store keeps only its
//! SHA-256 (tokens are 256 random bits, so a fast digest is enough: there is
//! nothing to guess), and a revoked token stops working at the next request.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::store::StoreError;

#[cfg(any(test, feature = "testsuite"))]
pub mod suite;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
-- Console sign-ins: the cookie's SHA-256, never the cookie itself.
CREATE TABLE IF NOT EXISTS console_sessions (
    digest TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
-- Sign-in attempts not yet followed by a success, per username (existing
-- or not, so a lockout says nothing about which usernames exist), keyed by
-- the SHA-256 of what was typed: a mistyped username may be an email
-- address or a password.
CREATE TABLE IF NOT EXISTS login_attempts (
    key TEXT PRIMARY KEY,
    attempts INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    locked_until_ms INTEGER
) WITHOUT ROWID;
DROP TABLE IF EXISTS login_failures;
";

/// What a token may do. Each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every GET.
    Read,
    /// Decisions and subject writes.
    Review,
    /// Users, tokens and actions.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Review => "review",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Read, Self::Review, Self::Admin]
            .into_iter()
            .find(|v| v.as_str() == s)
    }

    /// Whether a holder of `self` may do what needs `needed`.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

/// A token as listed (never its secret or digest).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// A console user as listed (never the password hash).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserInfo {
    pub username: String,
    pub role: String,
    pub created_at_ms: i64,
}

const TOKEN_COLUMNS: &str = "id, name, scope, created_at_ms, revoked_at_ms";

fn row_to_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<(TokenInfo, String)> {
    Ok((
        TokenInfo {
            id: r.get(0)?,
            name: r.get(1)?,
            scope: Scope::Read,
            created_at_ms: r.get(3)?,
            revoked_at_ms: r.get(4)?,
        },
        r.get(2)?,
    ))
}

fn finish_token(raw: (TokenInfo, String)) -> Result<TokenInfo, StoreError> {
    let (mut t, scope) = raw;
    t.scope = Scope::parse(&scope)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown token scope {scope:?}")))?;
    Ok(t)
}

pub(crate) fn insert_token(
    conn: &Connection,
    info: &TokenInfo,
    digest: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO api_tokens (id, name, scope, digest, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![info.id, info.name, info.scope.as_str(), digest, info.created_at_ms],
    )?;
    Ok(())
}

pub(crate) fn token_by_digest(
    conn: &Connection,
    digest: &str,
) -> Result<Option<TokenInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE digest = ?1"
    ))?;
    stmt.query_row([digest], row_to_token)
        .optional()?
        .map(finish_token)
        .transpose()
}

pub(crate) fn list_tokens(conn: &Connection) -> Result<Vec<TokenInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at_ms, id"
    ))?;
    let rows = stmt.query_map([], row_to_token)?;
    rows.map(|r| finish_token(r?)).collect()
}

/// Revoke; `None` when there is no such token. Revoking twice keeps the
/// first time.
pub(crate) fn revoke_token(
    conn: &Connection,
    id: &str,
    now_ms: i64,
) -> Result<Option<TokenInfo>, StoreError> {
    conn.execute(
        "UPDATE api_tokens SET revoked_at_ms = coalesce(revoked_at_ms, ?2) WHERE id = ?1",
        params![id, now_ms],
    )?;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?1"
    ))?;
    stmt.query_row([id], row_to_token)
        .optional()?
        .map(finish_token)
        .transpose()
}

/// Add a user; `false` when the name is taken.
pub(crate) fn insert_user(
    conn: &Connection,
    user: &UserInfo,
    password_hash: &str,
) -> Result<bool, StoreError> {
    let n = conn.execute(
        "INSERT OR IGNORE INTO users (username, role, password_hash, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
        params![user.username, user.role, password_hash, user.created_at_ms],
    )?;
    Ok(n == 1)
}

pub(crate) fn list_users(conn: &Connection) -> Result<Vec<UserInfo>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT username, role, created_at_ms FROM users ORDER BY username")?;
    let rows = stmt.query_map([], |r| {
        Ok(UserInfo {
            username: r.get(0)?,
            role: r.get(1)?,
            created_at_ms: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A console sign-in.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleSession {
    pub username: String,
    /// The role the user has now (not when they signed in).
    pub role: String,
    /// The synchronizer token every form of this sign-in must carry.
    pub csrf: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

pub(crate) fn user_credentials(
    conn: &Connection,
    username: &str,
) -> Result<Option<(UserInfo, String)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT username, role, created_at_ms, password_hash FROM users WHERE username = ?1",
            [username],
            |r| {
                Ok((
                    UserInfo {
                        username: r.get(0)?,
                        role: r.get(1)?,
                        created_at_ms: r.get(2)?,
                    },
                    r.get(3)?,
                ))
            },
        )
        .optional()?)
}

/// What [`begin_login`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginAttempt {
    /// Check the password. `locks`: this is the last attempt allowed, and
    /// the username stays paused unless it succeeds.
    Allowed { locks: bool },
    /// Paused until then; do not check the password.
    Locked { until_ms: i64 },
}

fn login_key(username: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(username.as_bytes()))
}

/// How long an attempt is remembered when no lock follows it.
const ATTEMPT_MEMORY_MS: i64 = 24 * 60 * 60 * 1000;

/// Count a sign-in attempt *before* its password is checked, in one
/// transaction, so concurrent attempts cannot all slip under the limit:
/// the `max_attempts`th attempt without a success in between pauses the
/// username for `lock_ms` (a success then lifts it, see
/// [`insert_console_session`]).
pub(crate) fn begin_login(
    conn: &mut Connection,
    username: &str,
    now_ms: i64,
    max_attempts: u32,
    lock_ms: i64,
) -> Result<LoginAttempt, StoreError> {
    let key = login_key(username);
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute(
        "DELETE FROM login_attempts WHERE coalesce(locked_until_ms, 0) <= ?1 AND last_ms < ?2",
        params![now_ms, now_ms - ATTEMPT_MEMORY_MS],
    )?;
    let row: Option<(i64, Option<i64>)> = tx
        .query_row(
            "SELECT attempts, locked_until_ms FROM login_attempts WHERE key = ?1",
            [&key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((_, Some(until))) = row {
        if until > now_ms {
            return Ok(LoginAttempt::Locked { until_ms: until });
        }
    }
    // A lock that has run out starts the count again.
    let before = match row {
        Some((n, None)) => n,
        _ => 0,
    };
    let attempts = before + 1;
    let locks = attempts >= i64::from(max_attempts);
    let (stored, until) = if locks {
        (0, Some(now_ms + lock_ms))
    } else {
        (attempts, None)
    };
    tx.execute(
        "INSERT INTO login_attempts (key, attempts, last_ms, locked_until_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(key) DO UPDATE SET attempts = excluded.attempts, last_ms = excluded.last_ms,
           locked_until_ms = excluded.locked_until_ms",
        params![key, stored, now_ms, until],
    )?;
    tx.commit()?;
    Ok(LoginAttempt::Allowed { locks })
}

/// Lift a username's pause and forget its attempts (an admin's unlock).
pub(crate) fn clear_login(conn: &Connection, username: &str) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "DELETE FROM login_attempts WHERE key = ?1",
        [login_key(username)],
    )? > 0)
}

pub(crate) fn insert_console_session(
    conn: &Connection,
    digest: &str,
    s: &ConsoleSession,
) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM console_sessions WHERE expires_at_ms <= ?1",
        [s.created_at_ms],
    )?;
    clear_login(conn, &s.username)?;
    conn.execute(
        "INSERT INTO console_sessions (digest, username, csrf, created_at_ms, expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![digest, s.username, s.csrf, s.created_at_ms, s.expires_at_ms],
    )?;
    Ok(())
}

/// The live sign-in with this digest, with the user's current role; a
/// user who no longer exists has none.
pub(crate) fn console_session(
    conn: &Connection,
    digest: &str,
    now_ms: i64,
) -> Result<Option<ConsoleSession>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.username, u.role, s.csrf, s.created_at_ms, s.expires_at_ms
         FROM console_sessions s JOIN users u ON u.username = s.username
         WHERE s.digest = ?1 AND s.expires_at_ms > ?2",
    )?;
    Ok(stmt
        .query_row(params![digest, now_ms], |r| {
            Ok(ConsoleSession {
                username: r.get(0)?,
                role: r.get(1)?,
                csrf: r.get(2)?,
                created_at_ms: r.get(3)?,
                expires_at_ms: r.get(4)?,
            })
        })
        .optional()?)
}

#[async_trait::async_trait]
pub trait Access: Send + Sync + 'static {
    async fn create_token(&self, info: TokenInfo, digest: String) -> Result<(), StoreError>;
    /// The token with this digest, revoked or not.
    async fn token_by_digest(&self, digest: &str) -> Result<Option<TokenInfo>, StoreError>;
    async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError>;
    async fn revoke_token(&self, id: &str, now_ms: i64) -> Result<Option<TokenInfo>, StoreError>;
    /// `false` when the username is taken.
    async fn add_user(&self, user: UserInfo, password_hash: String) -> Result<bool, StoreError>;
    async fn list_users(&self) -> Result<Vec<UserInfo>, StoreError>;
    /// The user and their password hash.
    async fn user_credentials(
        &self,
        username: &str,
    ) -> Result<Option<(UserInfo, String)>, StoreError>;
    /// Count a sign-in attempt before checking its password; see
    /// [`begin_login`].
    async fn begin_login(
        &self,
        username: &str,
        now_ms: i64,
        max_attempts: u32,
        lock_ms: i64,
    ) -> Result<LoginAttempt, StoreError>;
    /// Lift a username's pause; `false` when it had none.
    async fn clear_login(&self, username: &str) -> Result<bool, StoreError>;
    /// Start a console sign-in (and clear the user's failed attempts).
    async fn create_console_session(
        &self,
        digest: String,
        session: ConsoleSession,
    ) -> Result<(), StoreError>;
    async fn console_session(
        &self,
        digest: &str,
        now_ms: i64,
    ) -> Result<Option<ConsoleSession>, StoreError>;
    async fn delete_console_session(&self, digest: &str) -> Result<(), StoreError>;
}

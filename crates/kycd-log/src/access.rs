//! Who may use kycd: API tokens (scoped, stored as digests) and console
//! users (passwords stored as argon2 hashes by the caller).
//!
//! A token is shown once, when it is created; the store keeps only its
//! SHA-256 (tokens are 256 random bits, so a fast digest is enough: there is
//! nothing to guess), and a revoked token stops working at the next request.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::store::StoreError;

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
-- Consecutive failed sign-ins per username (existing or not, so a lockout
-- says nothing about which usernames exist).
CREATE TABLE IF NOT EXISTS login_failures (
    username TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    locked_until_ms INTEGER
) WITHOUT ROWID;
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

pub(crate) fn locked_until(
    conn: &Connection,
    username: &str,
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    let until: Option<Option<i64>> = conn
        .query_row(
            "SELECT locked_until_ms FROM login_failures WHERE username = ?1",
            [username],
            |r| r.get(0),
        )
        .optional()?;
    Ok(until.flatten().filter(|u| *u > now_ms))
}

/// Count a failed sign-in; the `max_failures`th in a row locks the name
/// for `lock_ms` and starts the count again. Returns the lock's end when
/// this failure set one.
pub(crate) fn login_failed(
    conn: &Connection,
    username: &str,
    now_ms: i64,
    max_failures: u32,
    lock_ms: i64,
) -> Result<Option<i64>, StoreError> {
    let failures: i64 = conn.query_row(
        "INSERT INTO login_failures (username, failures) VALUES (?1, 1)
         ON CONFLICT(username) DO UPDATE SET failures = failures + 1
         RETURNING failures",
        [username],
        |r| r.get(0),
    )?;
    if failures < i64::from(max_failures) {
        return Ok(None);
    }
    let until = now_ms + lock_ms;
    conn.execute(
        "UPDATE login_failures SET failures = 0, locked_until_ms = ?2 WHERE username = ?1",
        params![username, until],
    )?;
    Ok(Some(until))
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
    conn.execute(
        "DELETE FROM login_failures WHERE username = ?1",
        [&s.username],
    )?;
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
    /// When the username's sign-in lock ends, if it is locked now.
    async fn locked_until(&self, username: &str, now_ms: i64) -> Result<Option<i64>, StoreError>;
    /// Count a failed sign-in; see [`login_failed`].
    async fn login_failed(
        &self,
        username: &str,
        now_ms: i64,
        max_failures: u32,
        lock_ms: i64,
    ) -> Result<Option<i64>, StoreError>;
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

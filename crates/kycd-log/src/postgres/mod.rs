//! The PostgreSQL backend of the event log and of every store trait, for
//! `KYCD_DATABASE_URL=postgres://...`: one database (and one schema, the
//! connection's `search_path`) holds both, so several kycd instances can
//! share it.
//!
//! - [`Database`]: the connection pool and the numbered migrations in
//!   `migrations/postgres/`, applied under an advisory lock so instances
//!   starting together migrate once.
//! - [`log::PgLog`]: the [`crate::EventLog`].
//! - [`store::PgStore`]: [`crate::store::Store`], [`crate::outbox::Outbox`],
//!   [`crate::audit::Audit`], [`crate::access::Access`] and
//!   [`crate::cases::Cases`], one file per concern; a projection commit
//!   writes several concerns in one transaction, which is why one type
//!   serves them all (as `SqliteStore` does).
//!
//! Every query is plain SQL built at run time: no SQLite-isms (`rowid`,
//! `INSERT OR IGNORE`, `json_each`), real transactions, and row locks
//! where a single SQLite writer used to serialise (the log head, the audit
//! head, outbox claims, lockout counts).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Executor;

use crate::store::StoreError;
use crate::LogError;

pub mod access;
pub mod anchor;
pub mod audit;
pub mod cases;
pub mod cluster;
pub mod cursors;
pub mod log;
pub mod outbox;
pub mod schemas;
pub mod store;
#[cfg(any(test, feature = "testsuite"))]
pub mod testing;

/// The migrations, oldest first: the number in a file's name is its
/// version, and a database records each version it applied.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "event_log",
        include_str!("../../migrations/postgres/0001_event_log.sql"),
    ),
    (
        2,
        "projection",
        include_str!("../../migrations/postgres/0002_projection.sql"),
    ),
    (
        3,
        "outbox",
        include_str!("../../migrations/postgres/0003_outbox.sql"),
    ),
    (
        4,
        "audit",
        include_str!("../../migrations/postgres/0004_audit.sql"),
    ),
    (
        5,
        "access",
        include_str!("../../migrations/postgres/0005_access.sql"),
    ),
    (
        6,
        "cases",
        include_str!("../../migrations/postgres/0006_cases.sql"),
    ),
    (
        7,
        "cluster",
        include_str!("../../migrations/postgres/0007_cluster.sql"),
    ),
    (
        8,
        "outbox_lanes",
        include_str!("../../migrations/postgres/0008_outbox_lanes.sql"),
    ),
    (
        9,
        "cursors",
        include_str!("../../migrations/postgres/0009_cursors.sql"),
    ),
    (
        10,
        "decided_by",
        include_str!("../../migrations/postgres/0010_decided_by.sql"),
    ),
    (
        11,
        "audit_anchors",
        include_str!("../../migrations/postgres/0011_audit_anchors.sql"),
    ),
    (
        12,
        "partitions",
        include_str!("../../migrations/postgres/0012_partitions.sql"),
    ),
];

/// Any statement running longer than this is cancelled by the server: a
/// hung query fails (and the intake answers 503) instead of holding a
/// connection for ever.
const STATEMENT_TIMEOUT: &str = "30s";

/// How long a caller waits for a free connection before the request fails
/// as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the pool is sized and named.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// `application_name`, as `pg_stat_activity` shows it.
    pub application_name: String,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            application_name: "kycd".into(),
        }
    }
}

/// A pool of connections to kycd's database, migrated to this build's
/// schema. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Database {
    pool: PgPool,
}

impl Database {
    /// Connect to `url` (`postgres://user@host:port/db`, libpq's parameters
    /// such as `sslmode` and `options=-csearch_path%3Dkycd` included) and
    /// migrate.
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("database URL: {}", redact(&e))))?;
        Self::connect_with(options, settings).await
    }

    /// [`Database::connect`] with options already built (tests add a
    /// `search_path` this way).
    pub async fn connect_with(
        options: PgConnectOptions,
        settings: &PoolSettings,
    ) -> Result<Self, StoreError> {
        let db = Self::pool_of(options, settings, &[]).await?;
        db.migrate().await?;
        Ok(db)
    }

    /// A pool that only reads: nothing is migrated, and every transaction
    /// is read-only (`default_transaction_read_only`), so the server
    /// refuses any write. For checks that must change nothing
    /// (`kycd audit verify`); the schema may be older than this build's.
    pub async fn connect_read_only(url: &str, settings: &PoolSettings) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("database URL: {}", redact(&e))))?;
        Self::pool_of(
            options,
            settings,
            &[("default_transaction_read_only", "on")],
        )
        .await
    }

    /// Connect a pool with kycd's session settings and `extra` ones.
    async fn pool_of(
        options: PgConnectOptions,
        settings: &PoolSettings,
        extra: &[(&str, &str)],
    ) -> Result<Self, StoreError> {
        let options = options
            .application_name(&settings.application_name)
            .options([("statement_timeout", STATEMENT_TIMEOUT)])
            .options(extra.iter().copied());
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(store_error)?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Apply every migration this database has not recorded (a version
    /// missing below the newest recorded one too), each in its own
    /// transaction with its version, under a transaction-scoped advisory
    /// lock: of several instances starting at once, one migrates and the
    /// others then find nothing to do. A database that records a version
    /// this build does not know (migrated by a newer kycd) is refused
    /// before anything is applied.
    async fn migrate(&self) -> Result<(), StoreError> {
        for (version, name, sql) in MIGRATIONS {
            let mut tx = self.pool.begin().await.map_err(store_error)?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kycd.migrate'))")
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            // Under the lock: two instances creating it at once would race.
            tx.execute(
                "CREATE TABLE IF NOT EXISTS kycd_migrations (
                     version    integer     PRIMARY KEY,
                     name       text        NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .map_err(store_error)?;
            let recorded: Vec<i32> =
                sqlx::query_scalar("SELECT version FROM kycd_migrations ORDER BY version")
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(store_error)?;
            let known: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
            if !missing(&known, &recorded)?.contains(version) {
                continue;
            }
            tx.execute(*sql).await.map_err(|e| {
                StoreError::Unavailable(format!("migration {version} ({name}): {e}"))
            })?;
            sqlx::query("INSERT INTO kycd_migrations (version, name) VALUES ($1, $2)")
                .bind(version)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            tx.commit().await.map_err(store_error)?;
            tracing::info!(version, name, "database schema migrated");
        }
        Ok(())
    }

    /// Versions applied, oldest first.
    pub async fn applied_migrations(&self) -> Result<Vec<i32>, StoreError> {
        sqlx::query_scalar("SELECT version FROM kycd_migrations ORDER BY version")
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)
    }

    /// Close every connection (waiting for those in use to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The versions of `known` (this build's migrations) that `recorded` (a
/// database's) lacks, in order; refused when the database records one this
/// build does not know, since a newer kycd's schema may not work with this
/// build's queries.
fn missing(known: &[i32], recorded: &[i32]) -> Result<Vec<i32>, StoreError> {
    let unknown: Vec<String> = recorded
        .iter()
        .filter(|v| !known.contains(v))
        .map(i32::to_string)
        .collect();
    if !unknown.is_empty() {
        let list: Vec<String> = known.iter().map(i32::to_string).collect();
        return Err(StoreError::Corrupt(format!(
            "the database schema records version {} that this build does not know (it knows {}): a newer kycd migrated it",
            unknown.join(", "),
            list.join(", ")
        )));
    }
    Ok(known
        .iter()
        .copied()
        .filter(|v| !recorded.contains(v))
        .collect())
}

/// SQLSTATE classes that mean the data, not the connection, is wrong.
fn is_data_error(code: &str) -> bool {
    // 22: data exception; 23: integrity constraint violation; 42: syntax
    // error or access rule violation (a schema this build does not match).
    matches!(&code[..2.min(code.len())], "22" | "23" | "42")
}

/// A database error as a [`StoreError`]: constraint and data errors are
/// corrupt (retrying will not help), everything else (connection lost,
/// pool exhausted, server shutting down, serialization failure, a
/// cancelled statement) unavailable. Messages carry no parameters, so no
/// personal data.
pub(crate) fn store_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.code().is_some_and(|c| is_data_error(&c)) => {
            StoreError::Corrupt(format!("database: {e}"))
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(format!("database: {e}")),
        _ => StoreError::Unavailable(format!("database: {e}")),
    }
}

/// [`store_error`] for the event log.
pub(crate) fn log_error(e: sqlx::Error) -> LogError {
    match store_error(e) {
        StoreError::Corrupt(m) => LogError::Corrupt(m),
        other => LogError::Unavailable(other.to_string()),
    }
}

/// An option parse error without the URL's password.
fn redact(e: &sqlx::Error) -> String {
    let text = e.to_string();
    if text.contains('@') {
        "cannot parse it (postgres://user:password@host:port/database?options)".into()
    } else {
        text
    }
}

/// A stored non-negative integer (offset, count) as `u64`; a negative one
/// is corrupt.
pub(crate) fn unsigned(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} is negative: {v}")))
}

/// An offset or count as PostgreSQL's `bigint`, saturating (no offset comes
/// near `i64::MAX`; a filter bound past it means "no bound").
pub(crate) fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unrecorded_version_is_applied_not_only_those_past_the_newest() {
        assert_eq!(missing(&[1, 2, 3, 4], &[]).unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(missing(&[1, 2, 3, 4], &[1, 2]).unwrap(), vec![3, 4]);
        // A version that arrived on another branch before an older one.
        assert_eq!(missing(&[1, 2, 3, 4], &[1, 2, 4]).unwrap(), vec![3]);
        assert!(missing(&[1, 2, 3, 4], &[1, 2, 3, 4]).unwrap().is_empty());
    }

    #[test]
    fn a_recorded_version_this_build_does_not_know_is_refused() {
        // Past the newest known, and in a gap below it: both are a newer
        // kycd's schema.
        for recorded in [&[1, 2, 3, 4, 5][..], &[1, 2, 3, 4][..]] {
            match missing(&[1, 2, 3, 5], recorded) {
                Err(StoreError::Corrupt(m)) => {
                    assert!(m.contains("does not know"), "{m}");
                    assert!(m.contains("version 4 "), "{m}");
                }
                other => panic!("{recorded:?}: {other:?}"),
            }
        }
    }
}

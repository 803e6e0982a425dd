//! Named cursors and reconciliation's fetch throttle, kept in the store so
//! that they outlive the process and follow the `timers` lease from one
//! instance to another (docs/cluster-design.md, section 2).
//!
//! - A **cursor** is a small text value under a name, such as how far
//!   reconciliation has walked Didit's session listing. Setting it
//!   replaces it; nothing orders two writers, so a value must be true on
//!   its own whoever writes it last (reconciliation writes only "every
//!   session created up to here was handled", which stays true).
//! - The **fetch throttle** remembers when each session's decision was last
//!   asked of Didit, so a session is asked about at most once per period
//!   (Didit allows 100 decision reads a minute), and which of those fetches
//!   have not been confirmed yet: a fetch is taken *unconfirmed* and only
//!   [`Cursors::fetch_succeeded`] confirms it, so a fetch that failed, or
//!   whose process died before it finished, is found again by
//!   [`Cursors::unconfirmed_fetches`] and retried.
//!
//! On SQLite the store does not fsync its commits and may lose the latest
//! ones on power loss, but always a suffix: a cursor written after a
//! fetch was taken is never kept while the take is lost.

use crate::store::StoreError;

/// Every backend's cursors and fetch throttle; part of every [`crate::store::Store`].
#[async_trait::async_trait]
pub trait Cursors: Send + Sync {
    /// The cursor's value, `None` until it is first set.
    async fn get_cursor(&self, name: &str) -> Result<Option<String>, StoreError>;

    /// Set (create or replace) the cursor's value.
    async fn set_cursor(&self, name: &str, value: &str) -> Result<(), StoreError>;

    /// Of `session_ids`, those not fetched after `now_ms - every_ms`, in
    /// the order given: each is recorded as fetched at `now_ms`, and stays
    /// unconfirmed (since its first unconfirmed take) until
    /// [`Cursors::fetch_succeeded`]. One transaction, so of two callers
    /// taking the same session at once only one gets it.
    async fn take_fetches(
        &self,
        session_ids: &[String],
        now_ms: i64,
        every_ms: i64,
    ) -> Result<Vec<String>, StoreError>;

    /// The fetch taken of `session_id` succeeded.
    async fn fetch_succeeded(&self, session_id: &str) -> Result<(), StoreError>;

    /// Unconfirmed fetches last taken at or before `taken_until_ms`, oldest
    /// first, at most `limit`.
    async fn unconfirmed_fetches(
        &self,
        taken_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// Forget confirmed fetches taken at or before `confirmed_until_ms` (they
    /// hold nothing back any more) and unconfirmed ones first taken at or
    /// before `unconfirmed_until_ms` (given up on); how many were forgotten.
    async fn forget_fetches(
        &self,
        confirmed_until_ms: i64,
        unconfirmed_until_ms: i64,
    ) -> Result<u64, StoreError>;
}

/// The SQLite tables, created with the store's other tables.
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reconcile_fetches (
    session_id TEXT PRIMARY KEY,
    fetched_at_ms INTEGER NOT NULL,
    unconfirmed_since_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reconcile_fetches_unconfirmed
    ON reconcile_fetches(fetched_at_ms) WHERE unconfirmed_since_ms IS NOT NULL;
";

/// SQLite's statements, also the PostgreSQL ones but for the placeholders.
pub(crate) mod sqlite {
    use rusqlite::{Connection, OptionalExtension};

    use crate::store::StoreError;

    pub(crate) fn get(c: &Connection, name: &str) -> Result<Option<String>, StoreError> {
        Ok(
            c.query_row("SELECT value FROM cursors WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?,
        )
    }

    pub(crate) fn set(c: &Connection, name: &str, value: &str) -> Result<(), StoreError> {
        c.execute(
            "INSERT INTO cursors (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            [name, value],
        )?;
        Ok(())
    }

    pub(crate) fn take(
        c: &mut Connection,
        ids: &[String],
        now_ms: i64,
        every_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut taken = Vec::new();
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO reconcile_fetches (session_id, fetched_at_ms, unconfirmed_since_ms)
                 VALUES (?1, ?2, ?2)
                 ON CONFLICT (session_id) DO UPDATE
                   SET fetched_at_ms = excluded.fetched_at_ms,
                       unconfirmed_since_ms = coalesce(unconfirmed_since_ms, excluded.fetched_at_ms)
                   WHERE fetched_at_ms <= ?3",
            )?;
            for id in ids {
                if stmt.execute(rusqlite::params![
                    id,
                    now_ms,
                    now_ms.saturating_sub(every_ms)
                ])? > 0
                {
                    taken.push(id.clone());
                }
            }
        }
        tx.commit()?;
        Ok(taken)
    }

    pub(crate) fn succeeded(c: &Connection, id: &str) -> Result<(), StoreError> {
        c.execute(
            "UPDATE reconcile_fetches SET unconfirmed_since_ms = NULL WHERE session_id = ?1",
            [id],
        )?;
        Ok(())
    }

    pub(crate) fn unconfirmed(
        c: &Connection,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut stmt = c.prepare_cached(
            "SELECT session_id FROM reconcile_fetches
             WHERE unconfirmed_since_ms IS NOT NULL AND fetched_at_ms <= ?1
             ORDER BY fetched_at_ms, session_id LIMIT ?2",
        )?;
        let rows = stmt.query_map(rusqlite::params![until_ms, limit as i64], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn forget(
        c: &Connection,
        confirmed_until_ms: i64,
        unconfirmed_until_ms: i64,
    ) -> Result<u64, StoreError> {
        let n = c.execute(
            "DELETE FROM reconcile_fetches
             WHERE (unconfirmed_since_ms IS NULL AND fetched_at_ms <= ?1)
                OR unconfirmed_since_ms <= ?2",
            [confirmed_until_ms, unconfirmed_until_ms],
        )?;
        Ok(n as u64)
    }
}

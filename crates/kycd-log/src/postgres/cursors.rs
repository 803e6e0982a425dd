//! Named cursors and reconciliation's fetch throttle on PostgreSQL, as
//! [`crate::cursors`] keeps them in SQLite; shared by every instance.

use super::store::PgStore;
use super::store_error;
use crate::cursors::Cursors;
use crate::store::StoreError;

#[async_trait::async_trait]
impl Cursors for PgStore {
    async fn get_cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT value FROM cursors WHERE name = $1")
            .bind(name)
            .fetch_optional(self.db.pool())
            .await
            .map_err(store_error)
    }

    async fn set_cursor(&self, name: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cursors (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(self.db.pool())
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn take_fetches(
        &self,
        session_ids: &[String],
        now_ms: i64,
        every_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        if session_ids.is_empty() {
            return Ok(Vec::new());
        }
        // One statement: the upsert's row locks make a concurrent take of
        // the same session wait, then see the new time and skip it.
        let taken: Vec<String> = sqlx::query_scalar(
            "INSERT INTO reconcile_fetches AS f (session_id, fetched_at_ms, unconfirmed_since_ms)
             SELECT DISTINCT id, $2::bigint, $2::bigint FROM unnest($1::text[]) AS t(id)
             ON CONFLICT (session_id) DO UPDATE
               SET fetched_at_ms = excluded.fetched_at_ms,
                   unconfirmed_since_ms = coalesce(f.unconfirmed_since_ms, excluded.fetched_at_ms)
               WHERE f.fetched_at_ms <= $3
             RETURNING session_id",
        )
        .bind(session_ids)
        .bind(now_ms)
        .bind(now_ms.saturating_sub(every_ms))
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        // In the order given, each once.
        let mut taken: std::collections::HashSet<String> = taken.into_iter().collect();
        Ok(session_ids
            .iter()
            .filter(|id| taken.remove(*id))
            .cloned()
            .collect())
    }

    async fn fetch_succeeded(&self, session_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE reconcile_fetches SET unconfirmed_since_ms = NULL WHERE session_id = $1",
        )
        .bind(session_id)
        .execute(self.db.pool())
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn unconfirmed_fetches(
        &self,
        taken_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT session_id FROM reconcile_fetches
             WHERE unconfirmed_since_ms IS NOT NULL AND fetched_at_ms <= $1
             ORDER BY fetched_at_ms, session_id LIMIT $2",
        )
        .bind(taken_until_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)
    }

    async fn forget_fetches(
        &self,
        confirmed_until_ms: i64,
        unconfirmed_until_ms: i64,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM reconcile_fetches
             WHERE (unconfirmed_since_ms IS NULL AND fetched_at_ms <= $1)
                OR unconfirmed_since_ms <= $2",
        )
        .bind(confirmed_until_ms)
        .bind(unconfirmed_until_ms)
        .execute(self.db.pool())
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected())
    }
}

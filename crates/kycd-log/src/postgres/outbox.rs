//! The outbox, step-ups and the operator's endpoints on PostgreSQL.

use sqlx::PgConnection;

use super::store_error;
use crate::outbox::{NewAction, StepUpRecord};
use crate::store::StoreError;

/// Enqueue `actions` inside a transaction; a key already enqueued is not
/// enqueued again. Returns how many were new.
pub(crate) async fn insert_actions(
    tx: &mut PgConnection,
    actions: &[NewAction],
) -> Result<usize, StoreError> {
    let mut n = 0;
    for a in actions {
        let id = format!("act_{}", kycd_core::id::ulid_body(a.created_at_ms));
        let done = sqlx::query(
            "INSERT INTO actions (id, idempotency_key, kind, session_id, decision_id, payload,
               state, attempts, next_at_ms, created_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7, $7)
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(id)
        .bind(&a.idempotency_key)
        .bind(&a.kind)
        .bind(&a.session_id)
        .bind(&a.decision_id)
        .bind(a.payload.to_string())
        .bind(a.created_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        n += done.rows_affected() as usize;
    }
    Ok(n)
}

/// Create or move step-ups inside a transaction: a known step-up keeps its
/// URL unless a new one is given.
pub(crate) async fn upsert_step_ups(
    tx: &mut PgConnection,
    rows: &[StepUpRecord],
) -> Result<(), StoreError> {
    for s in rows {
        sqlx::query(
            "INSERT INTO step_ups (step_up_session_id, original_session_id, checks, state, url,
               workflow_id, requested_at_ms, expires_at_ms, finished_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (step_up_session_id) DO UPDATE SET state = excluded.state,
               url = coalesce(excluded.url, step_ups.url), finished_at_ms = excluded.finished_at_ms",
        )
        .bind(&s.step_up_session_id)
        .bind(&s.original_session_id)
        .bind(serde_json::to_string(&s.checks).unwrap_or_else(|_| "[]".into()))
        .bind(&s.state)
        .bind(&s.url)
        .bind(&s.workflow_id)
        .bind(s.requested_at_ms)
        .bind(s.expires_at_ms)
        .bind(s.finished_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    }
    Ok(())
}

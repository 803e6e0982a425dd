//! The audit chain on PostgreSQL: [`crate::audit::chain`] computes the
//! records' chain values; an append reads the chain's end from the
//! `audit_head` row under `FOR UPDATE` and moves it in the same
//! transaction, so concurrent appends from any instance form one chain.

use sqlx::{PgConnection, Row};

use super::{store_error, unsigned};
use crate::audit::{self, ChainState, Chained, Head, NewAudit};
use crate::store::StoreError;

/// The chain's end as `audit::chain` takes it (`None`: empty), locked
/// until the transaction ends.
async fn locked_head(tx: &mut PgConnection) -> Result<Option<(u64, String, String)>, StoreError> {
    let row = sqlx::query("SELECT seq, hash, alg FROM audit_head WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut *tx)
        .await
        .map_err(store_error)?;
    let seq: i64 = row.try_get(0).map_err(store_error)?;
    let alg: Option<String> = row.try_get(2).map_err(store_error)?;
    Ok(match alg {
        Some(alg) => Some((
            unsigned(seq, "audit head")?,
            row.try_get(1).map_err(store_error)?,
            alg,
        )),
        None => None,
    })
}

/// Append `records` inside `tx`; returns the new head, to hand to
/// [`ChainState::committed`] once the transaction has committed.
pub(crate) async fn append(
    tx: &mut PgConnection,
    records: &[NewAudit],
    chain: &ChainState,
) -> Result<Option<Head>, StoreError> {
    if records.is_empty() {
        return Ok(None);
    }
    let rows = audit::chain(records, locked_head(tx).await?, chain.key())?;
    for r in &rows {
        sqlx::query(
            "INSERT INTO audit (seq, at_ms, actor, action, target, details, prev_hash, hash, alg)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(r.seq)
        .bind(r.at_ms)
        .bind(&r.actor)
        .bind(&r.action)
        .bind(&r.target)
        .bind(&r.details)
        .bind(&r.prev_hash)
        .bind(&r.hash)
        .bind(r.alg)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    }
    let head = Chained::head_of(&rows);
    if let Some(last) = rows.last() {
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2, alg = $3 WHERE id = 1")
            .bind(last.seq)
            .bind(&last.hash)
            .bind(last.alg)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
    }
    Ok(head)
}

/// The newest record, unlocked (for [`ChainState::new`] at open).
pub(crate) async fn head(conn: &mut PgConnection) -> Result<Option<Head>, StoreError> {
    let row = sqlx::query("SELECT seq, hash, alg IS NULL FROM audit_head WHERE id = 1")
        .fetch_one(&mut *conn)
        .await
        .map_err(store_error)?;
    let empty: bool = row.try_get(2).map_err(store_error)?;
    if empty {
        return Ok(None);
    }
    Ok(Some(Head {
        seq: unsigned(row.try_get(0).map_err(store_error)?, "audit head")?,
        mac: row.try_get(1).map_err(store_error)?,
    }))
}

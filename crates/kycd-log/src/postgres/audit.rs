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

/// Records read per page while verifying, so a long chain is never loaded
/// at once.
const PAGE: i64 = 1_000;

fn stored(row: &sqlx::postgres::PgRow) -> Result<audit::Stored, StoreError> {
    Ok(audit::Stored {
        seq: row.try_get(0).map_err(store_error)?,
        at_ms: row.try_get(1).map_err(store_error)?,
        actor: row.try_get(2).map_err(store_error)?,
        action: row.try_get(3).map_err(store_error)?,
        target: row.try_get(4).map_err(store_error)?,
        details: row.try_get(5).map_err(store_error)?,
        prev_hash: row.try_get(6).map_err(store_error)?,
        hash: row.try_get(7).map_err(store_error)?,
        alg: row.try_get(8).map_err(store_error)?,
    })
}

/// Feed `walk` every record after `after_seq`, page by page in `seq` order.
async fn run(
    conn: &mut PgConnection,
    mut walk: audit::Walk<'_>,
    mut after_seq: i64,
) -> Result<audit::Verification, StoreError> {
    loop {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
            audit::COLUMNS
        ))
        .bind(after_seq)
        .bind(PAGE)
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
        if rows.is_empty() {
            return Ok(walk.verification(None));
        }
        for row in &rows {
            let r = stored(row)?;
            after_seq = r.seq;
            if let Some(problem) = walk.step(&r) {
                return Ok(walk.verification(Some(problem)));
            }
        }
    }
}

/// The stored chain value of record `seq`, if there is such a record.
async fn hash_at(conn: &mut PgConnection, seq: u64) -> Result<Option<String>, StoreError> {
    sqlx::query_scalar("SELECT hash FROM audit WHERE seq = $1")
        .bind(super::signed(seq))
        .fetch_optional(&mut *conn)
        .await
        .map_err(store_error)
}

/// The newest stored record's `seq`; `None` without records.
async fn last_seq(conn: &mut PgConnection) -> Result<Option<u64>, StoreError> {
    let last: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM audit")
        .fetch_one(&mut *conn)
        .await
        .map_err(store_error)?;
    last.map(|l| unsigned(l, "audit seq")).transpose()
}

/// [`audit::check_anchor`] on PostgreSQL.
pub(crate) async fn check_anchor(
    conn: &mut PgConnection,
    anchor: &Head,
    source: &str,
) -> Result<Option<audit::Problem>, StoreError> {
    if anchor.seq == 0 {
        return Ok(None);
    }
    let found = hash_at(conn, anchor.seq).await?;
    let last = if found.is_none() {
        last_seq(conn).await?
    } else {
        None
    };
    audit::judge_anchor(anchor, source, found.as_deref(), || {
        Ok::<_, StoreError>(last)
    })
}

/// A transaction that reads one snapshot and writes nothing.
pub(crate) async fn snapshot(
    db: &super::Database,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
    let mut tx = db.pool().begin().await.map_err(store_error)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    Ok(tx)
}

/// The chain from `anchor` on (the anchor checked first), or the whole
/// chain without one, in one snapshot: [`audit::verify_tail`] and
/// [`audit::verify`] on PostgreSQL. Then the `audit_head` row: it moves
/// with every append, in its transaction, so a chain that ends before it
/// lost its newest records (deleted behind kycd's back), which the walk
/// alone cannot see.
pub(crate) async fn verify(
    db: &super::Database,
    key: Option<&audit::AuditKey>,
    anchor: Option<(&Head, &str)>,
) -> Result<audit::Verification, StoreError> {
    let mut tx = snapshot(db).await?;
    let mut v = match anchor.filter(|(a, _)| a.seq > 0) {
        None => run(&mut tx, audit::Walk::from_genesis(key), 0).await?,
        Some((anchor, source)) => {
            if let Some(problem) = check_anchor(&mut tx, anchor, source).await? {
                return Ok(audit::Verification::anchor_failed(problem));
            }
            let alg: String = sqlx::query_scalar("SELECT alg FROM audit WHERE seq = $1")
                .bind(super::signed(anchor.seq))
                .fetch_one(&mut *tx)
                .await
                .map_err(store_error)?;
            run(
                &mut tx,
                audit::Walk::after_anchor(key, anchor, &alg),
                super::signed(anchor.seq),
            )
            .await?
        }
    };
    if v.problem.is_none() {
        if let Some(head) = head(&mut tx).await? {
            if let Some(problem) = check_anchor(&mut tx, &head, "the audit head").await? {
                v.first_broken = Some((head.seq, problem.to_string()));
                v.problem = Some(problem);
            }
        }
    }
    tx.commit().await.map_err(store_error)?;
    Ok(v)
}

#[async_trait::async_trait]
impl audit::Audit for super::store::PgStore {
    async fn audit(&self, records: Vec<NewAudit>) -> Result<(), StoreError> {
        let mut tx = self.db.pool().begin().await.map_err(store_error)?;
        let head = append(&mut tx, &records, &self.chain).await?;
        tx.commit().await.map_err(store_error)?;
        self.chain.committed(head);
        Ok(())
    }

    async fn list_audit(
        &self,
        since_ms: i64,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<audit::AuditRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM audit WHERE at_ms >= $1 AND seq > $2 ORDER BY seq LIMIT $3",
            audit::COLUMNS
        ))
        .bind(since_ms)
        .bind(super::signed(after_seq))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        rows.iter().map(|r| stored(r)?.into_record()).collect()
    }

    async fn verify_audit(&self) -> Result<audit::Verification, StoreError> {
        verify(&self.db, self.chain.key(), None).await
    }

    fn audit_chain_broken(&self) -> bool {
        self.chain.is_broken()
    }
}

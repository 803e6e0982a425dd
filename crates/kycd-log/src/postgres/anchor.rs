//! The audit chain's anchors on PostgreSQL ([`crate::anchor`]): the
//! `kycd.audit.anchor` events in the shared event log, read by the checks
//! at start, by readiness and by `kycd audit verify`, and appended by the
//! instance that holds the `audit-anchor` lease.
//!
//! Anchors are found through a partial index over them (migration 0011),
//! so the newest is one index probe however long the log has grown since.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::Row;

use super::store::PgStore;
use super::{signed, store_error, unsigned, Database};
use crate::anchor::{self, AnchorError, AnchoredChain, Anchoring, AuditOptions, Heads, LogAnchor};
use crate::audit::{self, AuditKey, Head, Problem, Verification};
use crate::store::StoreError;

/// The anchors' predicate, spelled as the partial index's so the planner
/// uses it (a bound parameter would not match the index).
fn anchors_sql(order: &str, limit: &str) -> String {
    format!(
        "SELECT pos, body FROM events WHERE kind = '{}' AND source = 'internal' {order} {limit}",
        anchor::ANCHOR_KIND
    )
}

/// Anchors read per page by [`AnchoredChain::anchors`].
const PAGE: i64 = 10_000;

/// Anchored records looked up per query by [`AnchoredChain::check_anchors`].
const LOOKUP: usize = 10_000;

fn log_error(e: impl std::fmt::Display) -> AnchorError {
    AnchorError::Database(e.to_string())
}

fn anchor_of(row: &sqlx::postgres::PgRow) -> Result<LogAnchor, AnchorError> {
    let pos: i64 = row.try_get(0).map_err(log_error)?;
    let body: Vec<u8> = row.try_get(1).map_err(log_error)?;
    anchor::parse_anchor(pos, &body).map_err(AnchorError::Database)
}

/// The chain and its anchors in one database (any instance's, or a
/// read-only connection's: see [`Database::connect_read_only`]).
#[derive(Debug, Clone)]
pub struct PgChain {
    db: Database,
}

impl PgChain {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Whether the schema holds kycd's event log and audit chain at all
    /// (a server has started on it): reads the catalogue only.
    pub async fn exists(&self) -> Result<bool, AnchorError> {
        sqlx::query_scalar(
            "SELECT to_regclass('events') IS NOT NULL AND to_regclass('audit') IS NOT NULL \
             AND to_regclass('audit_head') IS NOT NULL",
        )
        .fetch_one(self.db.pool())
        .await
        .map_err(log_error)
    }
}

#[async_trait::async_trait]
impl AnchoredChain for PgChain {
    async fn newest_anchor(&self) -> Result<Option<LogAnchor>, AnchorError> {
        let row = sqlx::query(&anchors_sql("ORDER BY pos DESC", "LIMIT 1"))
            .fetch_optional(self.db.pool())
            .await
            .map_err(log_error)?;
        row.as_ref().map(anchor_of).transpose()
    }

    async fn anchors(&self) -> Result<Vec<LogAnchor>, AnchorError> {
        let mut out: Vec<LogAnchor> = Vec::new();
        loop {
            let after = out.last().map_or(0, |a| signed(a.offset));
            let rows = sqlx::query(&anchors_sql(
                &format!("AND pos > {after} ORDER BY pos"),
                &format!("LIMIT {PAGE}"),
            ))
            .fetch_all(self.db.pool())
            .await
            .map_err(log_error)?;
            let full = rows.len() as i64 == PAGE;
            for row in &rows {
                out.push(anchor_of(row)?);
            }
            if !full {
                return Ok(out);
            }
        }
    }

    async fn head(&self) -> Result<Option<Head>, AnchorError> {
        let mut conn = self.db.pool().acquire().await.map_err(store_error)?;
        Ok(super::audit::head(&mut conn).await?)
    }

    async fn verify(&self, key: Option<&AuditKey>) -> Result<Verification, AnchorError> {
        Ok(super::audit::verify(&self.db, key, None).await?)
    }

    async fn verify_tail(
        &self,
        key: Option<&AuditKey>,
        anchor: Option<(&Head, &str)>,
    ) -> Result<Verification, AnchorError> {
        Ok(super::audit::verify(&self.db, key, anchor).await?)
    }

    /// The anchored records are looked up many at a time, in one snapshot:
    /// an anchor every half second while the chain grows is a lot of
    /// anchors to look up one by one.
    async fn check_anchors(
        &self,
        anchors: &[(Head, String)],
    ) -> Result<Option<Problem>, AnchorError> {
        let mut tx = super::audit::snapshot(&self.db).await?;
        let last: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM audit")
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        let last = last.map(|l| unsigned(l, "audit seq")).transpose()?;
        for chunk in anchors.chunks(LOOKUP) {
            let seqs: Vec<i64> = chunk.iter().map(|(h, _)| signed(h.seq)).collect();
            let rows = sqlx::query("SELECT seq, hash FROM audit WHERE seq = ANY($1)")
                .bind(&seqs)
                .fetch_all(&mut *tx)
                .await
                .map_err(store_error)?;
            let mut found: HashMap<i64, String> = HashMap::with_capacity(rows.len());
            for row in &rows {
                found.insert(
                    row.try_get(0).map_err(store_error)?,
                    row.try_get(1).map_err(store_error)?,
                );
            }
            for (head, source) in chunk {
                let mac = found.get(&signed(head.seq)).map(String::as_str);
                if let Some(problem) =
                    audit::judge_anchor(head, source, mac, || Ok::<_, StoreError>(last))?
                {
                    return Ok(Some(problem));
                }
            }
        }
        tx.commit().await.map_err(store_error)?;
        Ok(None)
    }
}

/// [`anchor::attach`] for a PostgreSQL store shared by several instances:
/// key it, check the chain from the newest anchor on (a chain cut short or
/// rewritten stops the start unless `options.allow_broken`), and return
/// the task that anchors the head while this instance holds the lease
/// ([`Anchoring::while_holding`]). Every instance must use the same key.
pub async fn attach(
    store: &PgStore,
    data_dir: &std::path::Path,
    options: &AuditOptions,
    now_ms: i64,
) -> Result<Anchoring, AnchorError> {
    anchor::attach_to(
        store,
        &store.chain,
        Arc::new(PgChain::new(store.db.clone())),
        Heads::Shared { held: None },
        data_dir,
        options,
        now_ms,
    )
    .await
}

//! The review queue on PostgreSQL: [`upsert`] writes a session's case in
//! the projector's transaction, as [`crate::cases`] does in SQLite; the
//! reasons are a JSON array in text, read as `jsonb`.

use sqlx::{PgConnection, Row};

use super::store::PgStore;
use super::{signed, store_error, unsigned};
use crate::cases::{CasePage, CaseQuery, CaseRow, CaseSort, Cases, QUEUE_OUTCOMES};
use crate::store::{SessionRecord, StoreError};

/// Write the case of a session the projector is committing, inside its
/// transaction; a session without a decision has none. A reviewer's
/// decision ends the case's assignment.
pub(crate) async fn upsert(tx: &mut PgConnection, s: &SessionRecord) -> Result<(), StoreError> {
    let d = &s.doc["decision"];
    let Some(outcome) = d.get("outcome").and_then(serde_json::Value::as_str) else {
        return Ok(());
    };
    let reasons: Vec<&str> = d["reasons"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["rule"].as_str()).collect())
        .unwrap_or_default();
    let decided_at_ms = d["decided_at"]
        .as_str()
        .and_then(|t| kycd_core::when::parse_time(t, 0).ok())
        .unwrap_or(0);
    let by_reviewer = d["policy_version"].as_str() == Some("reviewer");
    sqlx::query(
        "INSERT INTO cases (session_id, subject, outcome, score, reasons, decision_id,
           decided_at_ms, by_reviewer, didit_status)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (session_id) DO UPDATE SET subject = excluded.subject,
           outcome = excluded.outcome, score = excluded.score, reasons = excluded.reasons,
           decision_id = excluded.decision_id, decided_at_ms = excluded.decided_at_ms,
           by_reviewer = excluded.by_reviewer, didit_status = excluded.didit_status",
    )
    .bind(&s.session_id)
    .bind(&s.vendor_data)
    .bind(outcome)
    .bind(d["score"].as_f64().unwrap_or(0.0))
    .bind(serde_json::to_string(&reasons).unwrap_or_else(|_| "[]".into()))
    .bind(d["id"].as_str().unwrap_or_default())
    .bind(decided_at_ms)
    .bind(by_reviewer)
    .bind(&s.status)
    .execute(&mut *tx)
    .await
    .map_err(store_error)?;
    if by_reviewer {
        // Decided: whoever held it is done with it.
        sqlx::query("DELETE FROM case_assignments WHERE session_id = $1")
            .bind(&s.session_id)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
    }
    Ok(())
}

/// Open cases (not decided by a person).
const OPEN: &str = "NOT c.by_reviewer";

/// Open cases a queue can show (approvals are not cases).
const QUEUED: &str =
    "NOT c.by_reviewer AND c.outcome IN ('review', 'step_up', 'resubmit', 'decline', 'block')";

const FROM: &str = "FROM cases c LEFT JOIN case_assignments a ON a.session_id = c.session_id";

/// `(key, count)` rows.
fn counted(rows: Vec<(String, i64)>) -> Result<Vec<(String, u64)>, StoreError> {
    rows.into_iter()
        .map(|(k, n)| Ok((k, unsigned(n, "count")?)))
        .collect()
}

#[async_trait::async_trait]
impl Cases for PgStore {
    async fn queue(&self, q: CaseQuery) -> Result<CasePage, StoreError> {
        let outcome = q.outcome.clone().unwrap_or_else(|| "review".into());
        let filters = format!(
            "{OPEN} AND c.outcome = $1
             AND ($2::text IS NULL OR c.reasons::jsonb @> jsonb_build_array($2::text))
             AND ($3::text IS NULL OR coalesce(a.assignee, '') = $3)"
        );
        let order = match q.sort {
            CaseSort::Age => "c.decided_at_ms ASC, c.session_id COLLATE \"C\"",
            CaseSort::Risk => "c.score DESC, c.decided_at_ms ASC, c.session_id COLLATE \"C\"",
        };
        // One snapshot for the page and the counts beside it.
        let mut tx = self.db.pool().begin().await.map_err(store_error)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let rows = sqlx::query(&format!(
            "SELECT c.session_id, c.subject, c.outcome, c.score, c.reasons, c.decision_id,
                    c.decided_at_ms, c.didit_status, a.assignee
             {FROM} WHERE {filters} ORDER BY {order} LIMIT $4 OFFSET $5"
        ))
        .bind(&outcome)
        .bind(&q.reason)
        .bind(&q.assignee)
        .bind(signed(q.limit as u64))
        .bind(signed(q.offset as u64))
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        let cases = rows
            .iter()
            .map(|r| {
                let reasons: String = r.try_get(4).map_err(store_error)?;
                Ok(CaseRow {
                    session_id: r.try_get(0).map_err(store_error)?,
                    subject: r.try_get(1).map_err(store_error)?,
                    outcome: r.try_get(2).map_err(store_error)?,
                    score: r.try_get(3).map_err(store_error)?,
                    reasons: serde_json::from_str(&reasons).unwrap_or_default(),
                    decision_id: r.try_get(5).map_err(store_error)?,
                    decided_at_ms: r.try_get(6).map_err(store_error)?,
                    didit_status: r.try_get(7).map_err(store_error)?,
                    assignee: r.try_get(8).map_err(store_error)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let (total, oldest_ms): (i64, Option<i64>) = sqlx::query_as(&format!(
            "SELECT count(*), min(c.decided_at_ms) {FROM} WHERE {filters}"
        ))
        .bind(&outcome)
        .bind(&q.reason)
        .bind(&q.assignee)
        .fetch_one(&mut *tx)
        .await
        .map_err(store_error)?;
        let by_outcome: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT c.outcome, count(*) FROM cases c WHERE {QUEUED} GROUP BY c.outcome"
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        // Facets within the outcome shown, so each count is what its link
        // would list.
        let by_reason: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT j.value, count(*) {FROM}
               CROSS JOIN LATERAL jsonb_array_elements_text(c.reasons::jsonb) AS j(value)
             WHERE {OPEN} AND c.outcome = $1
             GROUP BY j.value ORDER BY count(*) DESC, j.value COLLATE \"C\""
        ))
        .bind(&outcome)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        let by_assignee: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT coalesce(a.assignee, ''), count(*) {FROM}
             WHERE {OPEN} AND c.outcome = $1
             GROUP BY coalesce(a.assignee, '') ORDER BY coalesce(a.assignee, '') COLLATE \"C\""
        ))
        .bind(&outcome)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        let mut by_outcome: Vec<(String, u64)> = counted(by_outcome)?
            .into_iter()
            .filter(|(o, _)| QUEUE_OUTCOMES.contains(&o.as_str()))
            .collect();
        by_outcome.sort_by_key(|(o, _)| QUEUE_OUTCOMES.iter().position(|x| x == o));
        Ok(CasePage {
            cases,
            total: unsigned(total, "case count")?,
            by_outcome,
            by_reason: counted(by_reason)?,
            by_assignee: counted(by_assignee)?,
            oldest_ms,
        })
    }

    async fn assign(
        &self,
        session_id: &str,
        assignee: Option<String>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.db.pool().begin().await.map_err(store_error)?;
        // The case stays while it is assigned (a projector's commit that
        // rewrites it waits for the lock, and one that ended it cannot be
        // undone by an assignment written from an older read).
        let exists: Option<bool> =
            sqlx::query_scalar("SELECT by_reviewer FROM cases WHERE session_id = $1 FOR SHARE")
                .bind(session_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
        if exists.is_none() {
            return Ok(false);
        }
        match assignee {
            Some(who) => sqlx::query(
                "INSERT INTO case_assignments (session_id, assignee, assigned_at_ms)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (session_id) DO UPDATE SET assignee = excluded.assignee,
                   assigned_at_ms = excluded.assigned_at_ms",
            )
            .bind(session_id)
            .bind(who)
            .bind(now_ms),
            None => {
                sqlx::query("DELETE FROM case_assignments WHERE session_id = $1").bind(session_id)
            }
        }
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }

    async fn assignee(&self, session_id: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT assignee FROM case_assignments WHERE session_id = $1")
            .bind(session_id)
            .fetch_optional(self.db.pool())
            .await
            .map_err(store_error)
    }

    async fn decisions_over_time(
        &self,
        from_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<(i64, String, u64)>, StoreError> {
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT (decided_at_ms / $2) * $2 AS b, outcome, count(*) FROM decisions
             WHERE NOT shadow AND decided_at_ms >= $1 GROUP BY b, outcome ORDER BY b",
        )
        .bind(from_ms)
        .bind(bucket_ms.max(1))
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        rows.into_iter()
            .map(|(b, o, n)| Ok((b, o, unsigned(n, "decision count")?)))
            .collect()
    }

    async fn review_backlog(&self, now_ms: i64) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar(&format!(
            "SELECT $1 - c.decided_at_ms FROM cases c WHERE {OPEN} AND c.outcome = 'review'"
        ))
        .bind(now_ms)
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)
    }

    /// See [`crate::cases::linked`]: the same answer, the other subjects of
    /// each of `subject`'s values read newest first and bounded per value
    /// (`identity_values_by_recency`), in one query.
    async fn linked(
        &self,
        subject: &str,
        from_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT m.kind, o.subject, o.last_at_ms
             FROM identity_values m
             CROSS JOIN LATERAL (
                 SELECT subject, last_at_ms FROM identity_values iv
                 WHERE iv.kind = m.kind AND iv.value = m.value AND iv.subject <> $1
                   AND iv.last_at_ms >= $2
                 ORDER BY iv.last_at_ms DESC, iv.subject COLLATE \"C\" LIMIT $3) o
             WHERE m.subject = $1
             ORDER BY m.kind COLLATE \"C\", m.value COLLATE \"C\",
               o.last_at_ms DESC, o.subject COLLATE \"C\"",
        )
        .bind(subject)
        .bind(from_ms)
        .bind(signed(limit as u64))
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        let mut out: Vec<(String, String, i64)> = Vec::new();
        for (kind, other, at) in rows {
            match out.iter_mut().find(|(k, s, _)| *k == kind && *s == other) {
                Some(seen) => seen.2 = seen.2.max(at),
                None => out.push((kind, other, at)),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0).then(b.2.cmp(&a.2)));
        let mut kept: Vec<(String, String, i64)> = Vec::new();
        for row in out {
            if kept.iter().filter(|(k, _, _)| *k == row.0).count() < limit {
                kept.push(row);
            }
        }
        Ok(kept)
    }
}

//! The review queue: every decided session as a case, with its current
//! outcome, risk score, reasons and who it is assigned to.
//!
//! A case row is derived from the session row in the projector's own
//! transaction ([`upsert`]), so the queue can never disagree with the
//! sessions. A case leaves the queue when a person decides it (its decision
//! then comes from `policy_version = "reviewer"`). Assignments are the
//! console's own state, kept beside the cases and never in the log.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::store::{SessionRecord, StoreError};

#[cfg(any(test, feature = "testsuite"))]
pub mod suite;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cases (
    session_id TEXT PRIMARY KEY,
    subject TEXT,
    outcome TEXT NOT NULL,
    score REAL NOT NULL,
    -- JSON array of the rule ids behind the outcome.
    reasons TEXT NOT NULL,
    decision_id TEXT NOT NULL,
    decided_at_ms INTEGER NOT NULL,
    by_reviewer INTEGER NOT NULL,
    didit_status TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cases_open ON cases(by_reviewer, outcome, decided_at_ms);
CREATE TABLE IF NOT EXISTS case_assignments (
    session_id TEXT PRIMARY KEY,
    assignee TEXT NOT NULL,
    assigned_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The outcomes a queue can show: everything but an approval.
pub const QUEUE_OUTCOMES: [&str; 5] = ["review", "step_up", "resubmit", "decline", "block"];

/// Fill `cases` from sessions decided before it existed (once: only while
/// it is empty; in one transaction, so a crash leaves it empty to fill
/// again).
pub(crate) fn backfill(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    backfill_in(&tx)?;
    tx.commit()?;
    Ok(())
}

fn backfill_in(conn: &Connection) -> Result<(), StoreError> {
    let empty: bool =
        conn.query_row("SELECT NOT EXISTS (SELECT 1 FROM cases)", [], |r| r.get(0))?;
    if !empty {
        return Ok(());
    }
    let mut stmt = conn.prepare(
        "SELECT session_id, status, doc FROM sessions
         WHERE json_extract(doc, '$.decision.outcome') IS NOT NULL",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (session_id, status, doc) = row?;
        let doc: serde_json::Value = serde_json::from_str(&doc)
            .map_err(|e| StoreError::Corrupt(format!("session doc: {e}")))?;
        let subject = doc
            .get("vendor_data")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        upsert_parts(conn, &session_id, subject.as_deref(), &status, &doc)?;
    }
    Ok(())
}

/// Write the case of a session the projector is committing; a session
/// without a decision has none.
pub(crate) fn upsert(conn: &Connection, s: &SessionRecord) -> Result<(), StoreError> {
    upsert_parts(
        conn,
        &s.session_id,
        s.vendor_data.as_deref(),
        &s.status,
        &s.doc,
    )
}

fn upsert_parts(
    conn: &Connection,
    session_id: &str,
    subject: Option<&str>,
    didit_status: &str,
    doc: &serde_json::Value,
) -> Result<(), StoreError> {
    let d = &doc["decision"];
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
    let mut stmt = conn.prepare_cached(
        "INSERT INTO cases (session_id, subject, outcome, score, reasons, decision_id, decided_at_ms, by_reviewer, didit_status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(session_id) DO UPDATE SET subject = excluded.subject, outcome = excluded.outcome,
           score = excluded.score, reasons = excluded.reasons, decision_id = excluded.decision_id,
           decided_at_ms = excluded.decided_at_ms, by_reviewer = excluded.by_reviewer,
           didit_status = excluded.didit_status",
    )?;
    stmt.execute(params![
        session_id,
        subject,
        outcome,
        d["score"].as_f64().unwrap_or(0.0),
        serde_json::to_string(&reasons).unwrap_or_else(|_| "[]".into()),
        d["id"].as_str().unwrap_or_default(),
        decided_at_ms,
        by_reviewer,
        didit_status,
    ])?;
    if by_reviewer {
        // Decided: whoever held it is done with it.
        conn.prepare_cached("DELETE FROM case_assignments WHERE session_id = ?1")?
            .execute([session_id])?;
    }
    Ok(())
}

/// How a queue is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaseSort {
    /// Oldest first: the longest-waiting customer is served first.
    #[default]
    Age,
    /// Highest risk score first, then oldest.
    Risk,
}

/// Which open cases to show.
#[derive(Debug, Clone, Default)]
pub struct CaseQuery {
    /// One of [`QUEUE_OUTCOMES`]; `None` is `review`.
    pub outcome: Option<String>,
    /// A rule id among the case's reasons.
    pub reason: Option<String>,
    /// `Some("")` for unassigned cases.
    pub assignee: Option<String>,
    pub sort: CaseSort,
    pub limit: usize,
    pub offset: usize,
}

/// One open case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseRow {
    pub session_id: String,
    pub subject: Option<String>,
    pub outcome: String,
    pub score: f64,
    pub reasons: Vec<String>,
    pub decision_id: String,
    pub decided_at_ms: i64,
    pub didit_status: String,
    pub assignee: Option<String>,
}

/// A page of the queue and the counts beside it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CasePage {
    pub cases: Vec<CaseRow>,
    /// Cases matching every filter (beyond this page too).
    pub total: u64,
    /// Open cases per outcome (whatever the other filters).
    pub by_outcome: Vec<(String, u64)>,
    /// Within the outcome shown: per reason, most common first.
    pub by_reason: Vec<(String, u64)>,
    /// Within the outcome shown: per assignee (`""` is unassigned).
    pub by_assignee: Vec<(String, u64)>,
    /// The oldest open case's decision time, per outcome.
    pub oldest_ms: Option<i64>,
}

const OPEN: &str = "c.by_reviewer = 0";
/// Open cases a queue can show (approvals are not cases).
const QUEUED: &str =
    "c.by_reviewer = 0 AND c.outcome IN ('review', 'step_up', 'resubmit', 'decline', 'block')";

pub(crate) fn queue(conn: &Connection, q: &CaseQuery) -> Result<CasePage, StoreError> {
    let outcome = q.outcome.clone().unwrap_or_else(|| "review".into());
    // The filters, as SQL over `cases c LEFT JOIN case_assignments a`.
    let filters = format!(
        "{OPEN} AND c.outcome = ?1
         AND (?2 IS NULL OR EXISTS (SELECT 1 FROM json_each(c.reasons) WHERE value = ?2))
         AND (?3 IS NULL OR coalesce(a.assignee, '') = ?3)"
    );
    let from = "FROM cases c LEFT JOIN case_assignments a ON a.session_id = c.session_id";
    let order = match q.sort {
        CaseSort::Age => "c.decided_at_ms ASC, c.session_id",
        CaseSort::Risk => "c.score DESC, c.decided_at_ms ASC, c.session_id",
    };
    let args = params![outcome, q.reason, q.assignee];
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT c.session_id, c.subject, c.outcome, c.score, c.reasons, c.decision_id,
                c.decided_at_ms, c.didit_status, a.assignee
         {from} WHERE {filters} ORDER BY {order} LIMIT ?4 OFFSET ?5"
    ))?;
    let cases = stmt
        .query_map(
            params![
                outcome,
                q.reason,
                q.assignee,
                q.limit as i64,
                q.offset as i64
            ],
            |r| {
                let reasons: String = r.get(4)?;
                Ok(CaseRow {
                    session_id: r.get(0)?,
                    subject: r.get(1)?,
                    outcome: r.get(2)?,
                    score: r.get(3)?,
                    reasons: serde_json::from_str(&reasons).unwrap_or_default(),
                    decision_id: r.get(5)?,
                    decided_at_ms: r.get(6)?,
                    didit_status: r.get(7)?,
                    assignee: r.get(8)?,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let (total, oldest_ms): (i64, Option<i64>) = conn.query_row(
        &format!("SELECT count(*), min(c.decided_at_ms) {from} WHERE {filters}"),
        args,
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let by_outcome = counts(
        conn,
        &format!("SELECT c.outcome, count(*) FROM cases c WHERE {QUEUED} GROUP BY c.outcome"),
        [],
    )?;
    // Facets within the outcome shown, so each count is what its link
    // would list.
    let by_reason = counts(
        conn,
        &format!(
            "SELECT j.value, count(*) {from}, json_each(c.reasons) j
             WHERE {OPEN} AND c.outcome = ?1 GROUP BY j.value ORDER BY count(*) DESC, j.value"
        ),
        [&outcome],
    )?;
    let by_assignee = counts(
        conn,
        &format!(
            "SELECT coalesce(a.assignee, ''), count(*) {from}
             WHERE {OPEN} AND c.outcome = ?1 GROUP BY 1 ORDER BY 1"
        ),
        [&outcome],
    )?;
    let mut by_outcome: Vec<(String, u64)> = by_outcome
        .into_iter()
        .filter(|(o, _)| QUEUE_OUTCOMES.contains(&o.as_str()))
        .collect();
    by_outcome.sort_by_key(|(o, _)| QUEUE_OUTCOMES.iter().position(|x| x == o));
    Ok(CasePage {
        cases,
        total: total as u64,
        by_outcome,
        by_reason,
        by_assignee,
        oldest_ms,
    })
}

fn counts<P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
) -> Result<Vec<(String, u64)>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    Ok(rows
        .map(|r| r.map(|(k, n)| (k, n as u64)))
        .collect::<Result<_, _>>()?)
}

/// Assign a case to a person (`None` releases it). `false` when there is
/// no such case.
pub(crate) fn assign(
    conn: &Connection,
    session_id: &str,
    assignee: Option<&str>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let exists: bool = conn
        .query_row(
            "SELECT 1 FROM cases WHERE session_id = ?1",
            [session_id],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if !exists {
        return Ok(false);
    }
    match assignee {
        Some(who) => conn.execute(
            "INSERT INTO case_assignments (session_id, assignee, assigned_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(session_id) DO UPDATE SET assignee = excluded.assignee, assigned_at_ms = excluded.assigned_at_ms",
            params![session_id, who, now_ms],
        )?,
        None => conn.execute(
            "DELETE FROM case_assignments WHERE session_id = ?1",
            [session_id],
        )?,
    };
    Ok(true)
}

pub(crate) fn assignee(conn: &Connection, session_id: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT assignee FROM case_assignments WHERE session_id = ?1",
            [session_id],
            |r| r.get(0),
        )
        .optional()?)
}

/// Active decisions per outcome per time bucket since `from_ms`, for the
/// dashboard: `(bucket start ms, outcome, count)`.
pub(crate) fn decisions_over_time(
    conn: &Connection,
    from_ms: i64,
    bucket_ms: i64,
) -> Result<Vec<(i64, String, u64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT (decided_at_ms / ?2) * ?2 AS b, outcome, count(*) FROM decisions
         WHERE shadow = 0 AND decided_at_ms >= ?1 GROUP BY b, outcome ORDER BY b",
    )?;
    let rows = stmt.query_map(params![from_ms, bucket_ms.max(1)], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)? as u64,
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The ages of every open case in the review queue (ms since its
/// decision), for the backlog chart.
pub(crate) fn review_backlog(conn: &Connection, now_ms: i64) -> Result<Vec<i64>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT ?1 - c.decided_at_ms FROM cases c WHERE {OPEN} AND c.outcome = 'review'"
    ))?;
    let rows = stmt.query_map([now_ms], |r| r.get::<_, i64>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What the console reads about cases.
#[async_trait::async_trait]
pub trait Cases: Send + Sync + 'static {
    async fn queue(&self, q: CaseQuery) -> Result<CasePage, StoreError>;
    /// `false` when there is no such case.
    async fn assign(
        &self,
        session_id: &str,
        assignee: Option<String>,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    async fn assignee(&self, session_id: &str) -> Result<Option<String>, StoreError>;
    async fn decisions_over_time(
        &self,
        from_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<(i64, String, u64)>, StoreError>;
    async fn review_backlog(&self, now_ms: i64) -> Result<Vec<i64>, StoreError>;
    /// See [`linked`].
    async fn linked(
        &self,
        subject: &str,
        from_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, String, i64)>, StoreError>;
}

/// Other subjects that presented one of `subject`'s identity values
/// (hashed) at or after `from_ms`: `(kind, other subject, last seen ms)`,
/// at most `limit` per kind, most recent first.
pub(crate) fn linked(
    conn: &Connection,
    subject: &str,
    from_ms: i64,
    limit: usize,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let mut mine = conn.prepare_cached(
        "SELECT kind, value FROM identity_values WHERE subject = ?1 ORDER BY kind",
    )?;
    let values = mine
        .query_map([subject], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    // Per value, newest first and bounded (identity_values_by_recency): a
    // value shared by thousands costs `limit` rows, not thousands.
    let mut others = conn.prepare_cached(
        "SELECT subject, last_at_ms FROM identity_values
         WHERE kind = ?1 AND value = ?2 AND subject <> ?3 AND last_at_ms >= ?4
         ORDER BY last_at_ms DESC LIMIT ?5",
    )?;
    let mut out: Vec<(String, String, i64)> = Vec::new();
    for (kind, value) in values {
        let rows = others.query_map(params![kind, value, subject, from_ms, limit as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (other, at) = row?;
            match out.iter_mut().find(|(k, s, _)| *k == kind && *s == other) {
                Some(seen) => seen.2 = seen.2.max(at),
                None => out.push((kind.clone(), other, at)),
            }
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

#[cfg(test)]
mod tests {
    use super::suite::decided_session as session;
    use super::*;
    use crate::store::{IdentityLink, ProjectionBatch, SqliteStore, Store};

    async fn store_with(sessions: Vec<SessionRecord>) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("store.db"), false).unwrap();
        let n = sessions.len() as u64;
        store.commit_sessions("p", 0, n, sessions).await.unwrap();
        (dir, store)
    }

    fn ids(page: &CasePage) -> Vec<&str> {
        page.cases.iter().map(|c| c.session_id.as_str()).collect()
    }

    #[tokio::test]
    async fn the_queue_sorts_filters_counts_and_lets_decided_cases_go() {
        let (_dir, store) = store_with(vec![
            session(1, "old", "review", 10.0, "aml_hit", "v1"),
            session(2, "risky", "review", 90.0, "face_weak", "v1"),
            session(3, "ok", "approve", 0.0, "clean", "v1"),
            session(4, "gone", "decline", 80.0, "aml_hit", "v1"),
        ])
        .await;
        let q = |f: fn(&mut CaseQuery)| {
            let mut q = CaseQuery {
                limit: 10,
                ..CaseQuery::default()
            };
            f(&mut q);
            q
        };
        let page = store.queue(q(|_| {})).await.unwrap();
        assert_eq!(ids(&page), ["old", "risky"], "review, oldest first");
        assert_eq!(page.total, 2);
        assert_eq!(
            page.by_outcome,
            [("review".to_string(), 2), ("decline".to_string(), 1)],
            "approvals are not cases"
        );
        assert_eq!(page.by_reason.len(), 2);
        let page = store.queue(q(|q| q.sort = CaseSort::Risk)).await.unwrap();
        assert_eq!(ids(&page), ["risky", "old"]);
        let page = store
            .queue(q(|q| q.reason = Some("aml_hit".into())))
            .await
            .unwrap();
        assert_eq!(ids(&page), ["old"]);
        assert!(store.assign("risky", Some("rita".into()), 5).await.unwrap());
        assert!(!store.assign("nope", Some("rita".into()), 5).await.unwrap());
        let page = store
            .queue(q(|q| q.assignee = Some(String::new())))
            .await
            .unwrap();
        assert_eq!(ids(&page), ["old"], "unassigned");
        assert_eq!(
            page.by_assignee,
            [(String::new(), 1), ("rita".to_string(), 1)]
        );
        // A reviewer decides: the case leaves the queue and its assignment goes.
        store
            .commit_sessions(
                "p",
                4,
                5,
                vec![session(2, "risky", "approve", 0.0, "reviewer", "reviewer")],
            )
            .await
            .unwrap();
        let page = store.queue(q(|_| {})).await.unwrap();
        assert_eq!(ids(&page), ["old"]);
        assert_eq!(store.assignee("risky").await.unwrap(), None);
    }

    #[tokio::test]
    async fn cases_are_backfilled_once_from_sessions_decided_before_them() {
        let (dir, store) = store_with(vec![session(1, "a", "review", 1.0, "r", "v1")]).await;
        drop(store);
        let conn = Connection::open(dir.path().join("store.db")).unwrap();
        conn.execute("DELETE FROM cases", []).unwrap();
        drop(conn);
        let store = SqliteStore::open(&dir.path().join("store.db"), false).unwrap();
        let page = store
            .queue(CaseQuery {
                limit: 10,
                ..CaseQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(ids(&page), ["a"]);
        assert_eq!(page.cases[0].decided_at_ms, 1_001_000);
    }

    #[tokio::test]
    async fn linked_subjects_are_bounded_per_value_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("store.db"), false).unwrap();
        let link = |value: &str, subject: &str, at: i64| IdentityLink {
            kind: "ip".into(),
            value: value.into(),
            subject: subject.into(),
            offset: at as u64,
            at_ms: at,
        };
        let mut links = vec![
            link("carrier", "me", 1),
            link("doc", "me", 1),
            link("doc", "twin", 50),
        ];
        links.extend((0..100).map(|i| link("carrier", &format!("s{i}"), 100 + i)));
        let batch = ProjectionBatch {
            links,
            ..ProjectionBatch::default()
        };
        store.commit("p", 0, 1, batch).await.unwrap();
        let linked = store.linked("me", 0, 3).await.unwrap();
        let names: Vec<&str> = linked.iter().map(|(_, s, _)| s.as_str()).collect();
        assert_eq!(names, ["s99", "s98", "s97"], "three per kind, newest first");
        let linked = store.linked("me", 0, 200).await.unwrap();
        assert_eq!(linked.len(), 101, "every other subject once");
        assert!(
            store.linked("me", 150, 200).await.unwrap().len() < 101,
            "the window applies"
        );
    }
}

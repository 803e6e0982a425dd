//! [`PgStore`]: the projection store on PostgreSQL.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use tokio::sync::watch;

use super::{signed, store_error, unsigned, Database};
use crate::audit::{AuditKey, ChainState, Head};
use crate::store::{
    awaiting_result, DecisionQuery, DecisionRecord, GraphContext, GraphQuery, IdentityLink,
    ProjectionBatch, SessionQuery, SessionRecord, ShadowPair, Store, StoreError, SubjectVersion,
    POLICY_MARK_SUFFIX,
};

/// Every store trait over one [`Database`]. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pub(crate) db: Database,
    pub(crate) chain: Arc<ChainState>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// The store in `db` (already migrated by [`Database::connect`]).
    pub async fn open(db: Database) -> Result<Self, StoreError> {
        let mut conn = db.pool().acquire().await.map_err(super::store_error)?;
        let head = super::audit::head(&mut conn).await?;
        drop(conn);
        Ok(Self {
            db,
            chain: ChainState::new(head),
        })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Key every audit record appended from now on. Set once, before
    /// serving; a second call keeps the first key.
    pub fn set_audit_key(&self, key: AuditKey) {
        self.chain.set_key(key);
    }

    /// The newest audit record, updated after each commit that appended
    /// records through this store.
    pub fn subscribe_audit_head(&self) -> watch::Receiver<Option<Head>> {
        self.chain.subscribe()
    }

    /// Record that the chain is known broken (the server started over it).
    pub fn mark_audit_broken(&self) {
        self.chain.mark_broken();
    }
}

/// A document's compact JSON text (as the SQLite store writes it).
pub(crate) fn json_text(v: &serde_json::Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| v.to_string())
}

/// A stored JSON document, or corrupt.
fn parse_doc(text: &str, what: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

const SESSION_COLUMNS: &str =
    "seq, session_id, vendor_data, status, workflow_id, created_at_ms, updated_at_ms, doc";

const DECISION_COLUMNS: &str =
    "id, event_offset, session_id, subject, policy_version, shadow, outcome, score, decided_at_ms, doc, decided_by";

fn session_of(row: &PgRow) -> Result<SessionRecord, StoreError> {
    let doc: String = row.try_get(7).map_err(store_error)?;
    Ok(SessionRecord {
        seq: unsigned(row.try_get(0).map_err(store_error)?, "session seq")?,
        session_id: row.try_get(1).map_err(store_error)?,
        vendor_data: row.try_get(2).map_err(store_error)?,
        status: row.try_get(3).map_err(store_error)?,
        workflow_id: row.try_get(4).map_err(store_error)?,
        created_at_ms: row.try_get(5).map_err(store_error)?,
        updated_at_ms: row.try_get(6).map_err(store_error)?,
        doc: parse_doc(&doc, "session doc")?,
    })
}

fn decision_of(row: &PgRow) -> Result<DecisionRecord, StoreError> {
    let doc: String = row.try_get(9).map_err(store_error)?;
    Ok(DecisionRecord {
        id: row.try_get(0).map_err(store_error)?,
        event_offset: unsigned(row.try_get(1).map_err(store_error)?, "decision offset")?,
        session_id: row.try_get(2).map_err(store_error)?,
        subject: row.try_get(3).map_err(store_error)?,
        policy_version: row.try_get(4).map_err(store_error)?,
        shadow: row.try_get(5).map_err(store_error)?,
        outcome: row.try_get(6).map_err(store_error)?,
        score: row.try_get(7).map_err(store_error)?,
        decided_at_ms: row.try_get(8).map_err(store_error)?,
        decided_by: row.try_get(10).map_err(store_error)?,
        doc: parse_doc(&doc, "decision doc")?,
    })
}

/// The batch's sessions, one per id in id order (a fixed lock order, so
/// two commits touching the same sessions cannot deadlock): as the SQLite
/// store's row-by-row upserts leave them, a session seen twice keeps its
/// first `seq` and creation time and takes the rest from its last record.
fn merged_sessions(sessions: &[SessionRecord]) -> Vec<SessionRecord> {
    let mut by_id: BTreeMap<&str, SessionRecord> = BTreeMap::new();
    for s in sessions {
        match by_id.get_mut(s.session_id.as_str()) {
            Some(known) => {
                *known = SessionRecord {
                    seq: known.seq,
                    created_at_ms: known.created_at_ms,
                    ..s.clone()
                }
            }
            None => {
                by_id.insert(&s.session_id, s.clone());
            }
        }
    }
    by_id.into_values().collect()
}

/// The batch's links, one per (kind, value, subject) in key order: the
/// first offset seen and the latest time.
fn merged_links(links: &[IdentityLink]) -> Vec<(&str, &str, &str, i64, i64)> {
    let mut by_key: BTreeMap<(&str, &str, &str), (i64, i64)> = BTreeMap::new();
    for l in links {
        let key = (l.kind.as_str(), l.value.as_str(), l.subject.as_str());
        let entry = by_key.entry(key).or_insert((signed(l.offset), l.at_ms));
        entry.1 = entry.1.max(l.at_ms);
    }
    by_key
        .into_iter()
        .map(|((k, v, s), (o, at))| (k, v, s, o, at))
        .collect()
}

/// Sessions, case rows and decisions of a commit, inside its transaction;
/// the decisions recorded as made by `decided_by` (the fence's owner).
async fn write_sessions_and_decisions(
    tx: &mut PgConnection,
    sessions: &[SessionRecord],
    decisions: &[DecisionRecord],
    decided_by: Option<&str>,
) -> Result<(), StoreError> {
    let sessions = merged_sessions(sessions);
    if !sessions.is_empty() {
        let n = sessions.len();
        let (mut seq, mut id, mut vendor, mut status, mut workflow) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut created, mut updated, mut doc, mut awaiting) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for s in &sessions {
            seq.push(signed(s.seq));
            id.push(s.session_id.as_str());
            vendor.push(s.vendor_data.as_deref());
            status.push(s.status.as_str());
            workflow.push(s.workflow_id.as_deref());
            created.push(s.created_at_ms);
            updated.push(s.updated_at_ms);
            doc.push(json_text(&s.doc));
            awaiting.push(awaiting_result(s));
        }
        sqlx::query(
            "INSERT INTO sessions (seq, session_id, vendor_data, status, workflow_id,
               created_at_ms, updated_at_ms, doc, awaiting)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
               $6::bigint[], $7::bigint[], $8::text[], $9::boolean[])
             ON CONFLICT (session_id) DO UPDATE SET vendor_data = excluded.vendor_data,
               status = excluded.status, workflow_id = excluded.workflow_id,
               updated_at_ms = excluded.updated_at_ms, doc = excluded.doc,
               awaiting = excluded.awaiting",
        )
        .bind(seq)
        .bind(id)
        .bind(vendor)
        .bind(status)
        .bind(workflow)
        .bind(created)
        .bind(updated)
        .bind(doc)
        .bind(awaiting)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        for s in &sessions {
            super::cases::upsert(tx, s).await?;
        }
    }
    if !decisions.is_empty() {
        let n = decisions.len();
        let (mut id, mut offset, mut session, mut subject, mut policy) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut shadow, mut outcome, mut score, mut at, mut doc) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for d in decisions {
            id.push(d.id.as_str());
            offset.push(signed(d.event_offset));
            session.push(d.session_id.as_str());
            subject.push(d.subject.as_deref());
            policy.push(d.policy_version.as_str());
            shadow.push(d.shadow);
            outcome.push(d.outcome.as_str());
            score.push(d.score);
            at.push(d.decided_at_ms);
            doc.push(json_text(&d.doc));
        }
        // `rank` follows the batch's order (WITH ORDINALITY), as rowid
        // does in SQLite: "the latest" decision is the one inserted last.
        sqlx::query(
            "INSERT INTO decisions (id, event_offset, session_id, subject, policy_version, shadow,
               outcome, score, decided_at_ms, doc, decided_by)
             SELECT id, event_offset, session_id, subject, policy_version, shadow, outcome, score,
               decided_at_ms, doc, $11
             FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
               $6::boolean[], $7::text[], $8::double precision[], $9::bigint[], $10::text[])
               WITH ORDINALITY AS d(id, event_offset, session_id, subject, policy_version, shadow,
                 outcome, score, decided_at_ms, doc, ord)
             ORDER BY ord",
        )
        .bind(id)
        .bind(offset)
        .bind(session)
        .bind(subject)
        .bind(policy)
        .bind(shadow)
        .bind(outcome)
        .bind(score)
        .bind(at)
        .bind(doc)
        .bind(decided_by)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    }
    Ok(())
}

/// The identity graph, subjects' attributes and declines of a commit,
/// inside its transaction.
async fn write_graph(tx: &mut PgConnection, batch: &ProjectionBatch) -> Result<(), StoreError> {
    let links = merged_links(&batch.links);
    if !links.is_empty() {
        let (mut kind, mut value, mut subject, mut offset, mut at) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (k, v, s, o, a) in links {
            kind.push(k);
            value.push(v);
            subject.push(s);
            offset.push(o);
            at.push(a);
        }
        sqlx::query(
            "INSERT INTO identity_values (kind, value, subject, first_offset, last_at_ms)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
             ON CONFLICT (kind, value, subject) DO UPDATE
               SET last_at_ms = GREATEST(identity_values.last_at_ms, excluded.last_at_ms)",
        )
        .bind(kind)
        .bind(value)
        .bind(subject)
        .bind(offset)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    }
    if !batch.subjects.is_empty() {
        // A version written twice: the last one stands (a replace).
        let mut by_key: BTreeMap<(&str, u64), &SubjectVersion> = BTreeMap::new();
        for v in &batch.subjects {
            by_key.insert((v.subject.as_str(), v.offset), v);
        }
        let (mut subject, mut offset, mut at, mut attributes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for v in by_key.into_values() {
            subject.push(v.subject.as_str());
            offset.push(signed(v.offset));
            at.push(v.at_ms);
            attributes.push(json_text(&v.attributes));
        }
        sqlx::query(
            "INSERT INTO subjects (subject, event_offset, at_ms, attributes)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[])
             ON CONFLICT (subject, event_offset) DO UPDATE
               SET at_ms = excluded.at_ms, attributes = excluded.attributes",
        )
        .bind(subject)
        .bind(offset)
        .bind(at)
        .bind(attributes)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    }
    if !batch.declines.is_empty() {
        // A pair declined twice keeps its first offset.
        let mut by_key: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for (subject, session, offset) in &batch.declines {
            by_key
                .entry((subject.as_str(), session.as_str()))
                .or_insert(signed(*offset));
        }
        let (mut subject, mut session, mut offset) = (Vec::new(), Vec::new(), Vec::new());
        for ((s, id), o) in by_key {
            subject.push(s);
            session.push(id);
            offset.push(o);
        }
        sqlx::query(
            "INSERT INTO declines (subject, session_id, event_offset)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
             ON CONFLICT (subject, session_id) DO NOTHING",
        )
        .bind(subject)
        .bind(session)
        .bind(offset)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    }
    Ok(())
}

/// The subjects linked to an identity value, the most recently seen first.
async fn linked<'c, E>(
    conn: E,
    kind: &str,
    value: &str,
    from_ms: i64,
    limit: i64,
) -> Result<Vec<(String, i64)>, StoreError>
where
    E: sqlx::PgExecutor<'c>,
{
    sqlx::query_as(
        "SELECT subject, last_at_ms FROM identity_values
         WHERE kind = $1 AND value = $2 AND last_at_ms >= $3
         ORDER BY last_at_ms DESC, subject COLLATE \"C\" LIMIT $4",
    )
    .bind(kind)
    .bind(value)
    .bind(from_ms)
    .bind(limit)
    .fetch_all(conn)
    .await
    .map_err(store_error)
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn consumer_offset(&self, consumer: &str) -> Result<u64, StoreError> {
        let pos: Option<i64> =
            sqlx::query_scalar("SELECT pos FROM consumer_offsets WHERE consumer = $1")
                .bind(consumer)
                .fetch_optional(self.db.pool())
                .await
                .map_err(store_error)?;
        unsigned(pos.unwrap_or(0), "consumer offset")
    }

    async fn load_sessions(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, SessionRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|r| session_of(r).map(|s| (s.session_id.clone(), s)))
            .collect()
    }

    async fn commit_partitions(
        &self,
        consumers: &[(String, u64)],
        to_offset: u64,
        batch: ProjectionBatch,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.pool().begin().await.map_err(store_error)?;
        // In one order, so two commits sharing consumers cannot deadlock.
        let mut consumers = consumers.to_vec();
        consumers.sort();
        let names: Vec<&str> = consumers.iter().map(|(c, _)| c.as_str()).collect();
        // The consumers' rows, locked until commit: concurrent commits of
        // one consumer (from any instance) queue here, and each finds the
        // offset its predecessor committed. A first commit creates a row
        // (at 0) so that there is one to lock; a refused commit rolls it
        // back with everything else.
        sqlx::query(
            "INSERT INTO consumer_offsets (consumer, pos) SELECT c, 0 FROM UNNEST($1::text[]) AS c
             ON CONFLICT (consumer) DO NOTHING",
        )
        .bind(&names)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT consumer, pos FROM consumer_offsets WHERE consumer = ANY($1)
             ORDER BY consumer COLLATE \"C\" FOR UPDATE",
        )
        .bind(&names)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        for (consumer, from_offset) in &consumers {
            let current = rows
                .iter()
                .find(|(c, _)| c == consumer)
                .map(|(_, pos)| unsigned(*pos, "consumer offset"))
                .transpose()?
                .unwrap_or(0);
            if current != *from_offset {
                return Err(StoreError::OffsetConflict {
                    consumer: consumer.clone(),
                    current,
                    expected: *from_offset,
                });
            }
        }
        // Under the leases it was made under, if any: a former owner's
        // batch writes nothing (docs/cluster-design.md, "The fenced commit").
        for fence in &batch.fences {
            super::cluster::fence(&mut tx, fence).await?;
        }
        // Every fence of a batch names this instance.
        let decided_by = batch.fences.first().map(|f| f.owner.as_str());
        write_sessions_and_decisions(&mut tx, &batch.sessions, &batch.decisions, decided_by)
            .await?;
        write_graph(&mut tx, &batch).await?;
        super::outbox::insert_actions(&mut tx, &batch.actions).await?;
        super::outbox::upsert_step_ups(&mut tx, &batch.step_ups).await?;
        // Last before the marks: the audit head's lock is held the shortest.
        let appended = super::audit::append(&mut tx, &batch.audit, &self.chain).await?;
        sqlx::query("UPDATE consumer_offsets SET pos = $2 WHERE consumer = ANY($1)")
            .bind(&names)
            .bind(signed(to_offset))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if let Some(policy) = batch.policy_offset {
            let marks: Vec<String> = names
                .iter()
                .map(|c| format!("{c}{POLICY_MARK_SUFFIX}"))
                .collect();
            sqlx::query(
                "INSERT INTO consumer_offsets (consumer, pos) SELECT c, $2 FROM UNNEST($1::text[]) AS c
                 ON CONFLICT (consumer) DO UPDATE SET pos = excluded.pos",
            )
            .bind(&marks)
            .bind(signed(policy))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)?;
        self.chain.committed(appended);
        Ok(())
    }

    async fn graph_context(&self, q: GraphQuery) -> Result<GraphContext, StoreError> {
        let mut tx = self.db.pool().begin().await.map_err(store_error)?;
        // One snapshot for every answer.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let mut out = GraphContext::default();
        let limit = signed(q.limit as u64);
        if !q.values.is_empty() && limit > 0 {
            let (kinds, values): (Vec<&str>, Vec<&str>) = q
                .values
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .unzip();
            let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
                "SELECT q.kind, q.value, l.subject, l.last_at_ms
                 FROM (SELECT DISTINCT kind, value
                       FROM unnest($1::text[], $2::text[]) AS u(kind, value)) q
                 CROSS JOIN LATERAL (
                     SELECT subject, last_at_ms FROM identity_values iv
                     WHERE iv.kind = q.kind AND iv.value = q.value AND iv.last_at_ms >= $3
                     ORDER BY iv.last_at_ms DESC, iv.subject COLLATE \"C\" LIMIT $4) l
                 ORDER BY q.kind, q.value, l.last_at_ms DESC, l.subject COLLATE \"C\"",
            )
            .bind(kinds)
            .bind(values)
            .bind(q.from_ms)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
            for (kind, value, subject, at) in rows {
                out.linked
                    .entry((kind, value))
                    .or_default()
                    .push((subject, at));
            }
        }
        if !q.subjects.is_empty() {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT DISTINCT ON (subject) subject, attributes FROM subjects
                 WHERE subject = ANY($1) ORDER BY subject, event_offset DESC",
            )
            .bind(&q.subjects)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
            for (subject, text) in rows {
                out.attributes
                    .insert(subject, parse_doc(&text, "subject attributes")?);
            }
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT subject, session_id FROM declines WHERE subject = ANY($1)
                 ORDER BY subject, session_id COLLATE \"C\"",
            )
            .bind(&q.subjects)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
            for (subject, session) in rows {
                out.declined.entry(subject).or_default().push(session);
            }
        }
        tx.commit().await.map_err(store_error)?;
        Ok(out)
    }

    async fn linked_subjects(
        &self,
        kind: &str,
        value: &str,
        from_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(linked(self.db.pool(), kind, value, from_ms, i64::MAX)
            .await?
            .into_iter()
            .map(|(s, _)| s)
            .collect())
    }

    async fn subject(&self, subject: &str) -> Result<Option<SubjectVersion>, StoreError> {
        let row: Option<(i64, i64, String)> = sqlx::query_as(
            "SELECT event_offset, at_ms, attributes FROM subjects WHERE subject = $1
             ORDER BY event_offset DESC LIMIT 1",
        )
        .bind(subject)
        .fetch_optional(self.db.pool())
        .await
        .map_err(store_error)?;
        row.map(|(offset, at_ms, text)| {
            Ok(SubjectVersion {
                subject: subject.to_owned(),
                offset: unsigned(offset, "subject offset")?,
                at_ms,
                attributes: parse_doc(&text, "subject attributes")?,
            })
        })
        .transpose()
    }

    async fn declined_sessions(&self, subject: &str) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT session_id FROM declines WHERE subject = $1 ORDER BY session_id COLLATE \"C\"",
        )
        .bind(subject)
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)
    }

    async fn get_decision(&self, id: &str) -> Result<Option<DecisionRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {DECISION_COLUMNS} FROM decisions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.pool())
        .await
        .map_err(store_error)?
        .as_ref()
        .map(decision_of)
        .transpose()
    }

    async fn list_decisions(&self, q: DecisionQuery) -> Result<Vec<DecisionRecord>, StoreError> {
        let order = if q.after_offset.is_some() {
            "event_offset ASC, rank ASC"
        } else {
            "event_offset DESC, rank DESC"
        };
        let rows = sqlx::query(&format!(
            "SELECT {DECISION_COLUMNS} FROM decisions
             WHERE shadow = $1 AND ($2::text IS NULL OR outcome = $2)
               AND ($3::text IS NULL OR session_id = $3)
               AND event_offset < $4 AND event_offset > $5
             ORDER BY {order} LIMIT $6"
        ))
        .bind(q.shadow)
        .bind(&q.outcome)
        .bind(&q.session_id)
        .bind(q.before_offset.map(signed).unwrap_or(i64::MAX))
        .bind(q.after_offset.map(signed).unwrap_or(-1))
        .bind(signed(q.limit as u64))
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        rows.iter().map(decision_of).collect()
    }

    async fn decision_for_event(
        &self,
        offset: u64,
        session_id: &str,
        shadow: bool,
    ) -> Result<Option<DecisionRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {DECISION_COLUMNS} FROM decisions
             WHERE event_offset = $1 AND session_id = $2 AND shadow = $3
             ORDER BY rank DESC LIMIT 1"
        ))
        .bind(signed(offset))
        .bind(session_id)
        .bind(shadow)
        .fetch_optional(self.db.pool())
        .await
        .map_err(store_error)?
        .as_ref()
        .map(decision_of)
        .transpose()
    }

    async fn shadow_pairs(&self, limit: usize) -> Result<Vec<ShadowPair>, StoreError> {
        let rows: Vec<(String, String, String, String, String)> = sqlx::query_as(
            "SELECT a.id, a.session_id, a.outcome, s.outcome, s.id
             FROM (SELECT id, session_id, outcome, event_offset, rank FROM decisions
                   WHERE NOT shadow ORDER BY event_offset DESC, rank DESC LIMIT $1) a
             CROSS JOIN LATERAL (
                 SELECT id, outcome FROM decisions
                 WHERE event_offset = a.event_offset AND session_id = a.session_id AND shadow
                 ORDER BY rank DESC LIMIT 1) s
             ORDER BY a.event_offset DESC, a.rank DESC",
        )
        .bind(signed(limit as u64))
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        Ok(rows
            .into_iter()
            .map(
                |(decision_id, session_id, active, shadow, shadow_decision_id)| ShadowPair {
                    decision_id,
                    session_id,
                    active,
                    shadow,
                    shadow_decision_id,
                },
            )
            .collect())
    }

    async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.pool())
        .await
        .map_err(store_error)?
        .as_ref()
        .map(session_of)
        .transpose()
    }

    async fn list_sessions(&self, q: SessionQuery) -> Result<Vec<SessionRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions
             WHERE ($1::text IS NULL OR vendor_data = $1) AND ($2::text IS NULL OR status = $2)
               AND seq < $3 AND created_at_ms >= $5 AND created_at_ms < $6
               AND updated_at_ms < $7 AND (NOT $8 OR awaiting)
             ORDER BY seq DESC LIMIT $4"
        ))
        .bind(&q.vendor_data)
        .bind(&q.status)
        .bind(q.before_seq.map(signed).unwrap_or(i64::MAX))
        .bind(signed(q.limit as u64))
        .bind(q.created_from_ms.unwrap_or(i64::MIN))
        .bind(q.created_until_ms.unwrap_or(i64::MAX))
        .bind(q.updated_until_ms.unwrap_or(i64::MAX))
        .bind(q.awaiting_result)
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        rows.iter().map(session_of).collect()
    }
}

//! The transactional outbox: what kycd must *do* because of a decision.
//!
//! A decision and the actions it implies (a status write-back to Didit, a
//! blocklist entry, a step-up session, a webhook to the operator) are
//! written in the **same transaction** ([`crate::store::ProjectionBatch`]'s
//! `actions`), so a decision never exists without its actions nor an action
//! without its decision. Workers then claim due actions ([`Outbox::claim`]),
//! execute them, and record the result ([`Outbox::finish`]): done, retry at
//! a later time, or dead (kept for a person to redrive with
//! [`Outbox::retry_action`]).
//!
//! Every action carries an idempotency key derived from what caused it (the
//! event's log offset, the kind, the target); inserting the same key twice
//! is a no-op, so a replayed projector batch cannot enqueue twice.
//!
//! The same store keeps the step-up lifecycle ([`StepUpRecord`]) and the
//! health of the operator's webhook endpoint ([`EndpointState`]).

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::StoreError;

#[cfg(any(test, feature = "testsuite"))]
pub mod suite;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS actions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    session_id TEXT,
    decision_id TEXT,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at_ms INTEGER NOT NULL,
    lease_until_ms INTEGER,
    last_error TEXT,
    result TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_due ON actions(state, next_at_ms);
CREATE INDEX IF NOT EXISTS actions_by_session ON actions(session_id, seq);
CREATE TABLE IF NOT EXISTS step_ups (
    step_up_session_id TEXT PRIMARY KEY,
    original_session_id TEXT NOT NULL,
    checks TEXT NOT NULL,
    state TEXT NOT NULL,
    url TEXT,
    workflow_id TEXT,
    requested_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    finished_at_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS step_ups_open ON step_ups(state, expires_at_ms);
CREATE INDEX IF NOT EXISTS step_ups_by_original ON step_ups(original_session_id);
CREATE TABLE IF NOT EXISTS endpoints (
    url TEXT PRIMARY KEY,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    disabled_at_ms INTEGER,
    last_success_ms INTEGER,
    last_failure_ms INTEGER,
    last_error TEXT
) WITHOUT ROWID;
";

/// Where an action is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    /// Waiting for `next_at_ms`.
    Pending,
    /// Claimed by a worker.
    Running,
    /// Executed (or found already in effect).
    Done,
    /// Not needed after all (a reason is recorded); never retried on its own.
    Skipped,
    /// Failed for good; waits for a person ([`Outbox::retry_action`]).
    Dead,
}

impl ActionState {
    pub const ALL: [ActionState; 5] = [
        Self::Pending,
        Self::Running,
        Self::Done,
        Self::Skipped,
        Self::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Skipped => "skipped",
            Self::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// An action to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAction {
    /// Unique per effect: enqueueing the same key again does nothing.
    pub idempotency_key: String,
    /// `didit.update_status`, `didit.blocklist`, `didit.step_up`,
    /// `operator.webhook`, ...
    pub kind: String,
    pub session_id: Option<String>,
    pub decision_id: Option<String>,
    pub payload: Value,
    /// When it was caused (Unix ms); also when it first becomes due.
    pub created_at_ms: i64,
}

/// A stored action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionRecord {
    /// Insertion order; the cursor of listings.
    #[serde(skip)]
    pub seq: u64,
    pub id: String,
    pub idempotency_key: String,
    pub kind: String,
    pub session_id: Option<String>,
    pub decision_id: Option<String>,
    pub payload: Value,
    pub state: ActionState,
    /// Attempts started so far (a claim counts as one).
    pub attempts: u32,
    pub next_at_ms: i64,
    pub last_error: Option<String>,
    pub result: Option<Value>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// The order it keeps ([`lane_of`]); `None` for an action that keeps
    /// none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
    /// Who holds it while it runs (cleared when it finishes or is handed
    /// back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<Holder>,
}

/// Who claims actions: an instance id and the epoch of its current run
/// (bumped by every start of that id), so a restarted instance can hand
/// back its previous runs' claims without touching anyone else's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub instance: String,
    pub epoch: i64,
}

impl Holder {
    pub fn new(instance: impl Into<String>, epoch: i64) -> Self {
        Self {
            instance: instance.into(),
            epoch,
        }
    }
}

/// The lane an action of `kind` about `session_id` keeps its order in:
/// `session:<id>` for Didit actions (a step-up's is its original session,
/// which is its `session_id`), `endpoint` for operator webhooks (kycd has
/// one operator endpoint), none for anything else. Both backends store it
/// when the action is enqueued.
pub fn lane_of(kind: &str, session_id: Option<&str>) -> Option<String> {
    if kind == "operator.webhook" {
        return Some("endpoint".to_owned());
    }
    match session_id {
        Some(s) if kind.starts_with("didit.") => Some(format!("session:{s}")),
        _ => None,
    }
}

/// [`lane_of`] in SQL (both dialects), for migrations that fill the
/// column in for actions enqueued before it.
pub(crate) const LANE_SQL: &str = "CASE WHEN kind = 'operator.webhook' THEN 'endpoint'
     WHEN kind LIKE 'didit.%' AND session_id IS NOT NULL THEN 'session:' || session_id END";

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Done(Value),
    Skipped(String),
    Retry { error: String, at_ms: i64 },
    Dead(String),
}

/// Filter and page for [`Outbox::list_actions`]; newest first.
#[derive(Debug, Clone, Default)]
pub struct ActionQuery {
    pub state: Option<ActionState>,
    pub session_id: Option<String>,
    pub kind: Option<String>,
    /// Only actions created at or after this time (Unix ms).
    pub created_from_ms: Option<i64>,
    /// Only actions created before this time (Unix ms).
    pub created_until_ms: Option<i64>,
    /// Only actions with `seq` below this (the previous page's cursor).
    pub before_seq: Option<u64>,
    pub limit: usize,
}

/// One step-up: a Didit session kycd created to ask the customer of
/// `original_session_id` for more proof.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepUpRecord {
    pub step_up_session_id: String,
    pub original_session_id: String,
    pub checks: Vec<String>,
    /// `requested`, `in_progress`, `completed` or `expired`.
    pub state: String,
    pub url: Option<String>,
    pub workflow_id: Option<String>,
    pub requested_at_ms: i64,
    pub expires_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

/// The operator's webhook endpoint as the workers see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EndpointState {
    pub url: String,
    pub consecutive_failures: u32,
    pub disabled_at_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    pub last_failure_ms: Option<i64>,
    pub last_error: Option<String>,
}

impl EndpointState {
    pub fn disabled(&self) -> bool {
        self.disabled_at_ms.is_some()
    }
}

#[async_trait::async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Enqueue actions outside a projection (a replay of webhooks, a
    /// worker's follow-up). Returns how many were new.
    async fn enqueue(&self, actions: Vec<NewAction>) -> Result<usize, StoreError>;

    /// Claim up to `limit` due actions (pending and due, or running with an
    /// expired lease), oldest due first, skipping `exclude_kinds`, for
    /// `holder`. Each claim counts as an attempt and holds the action until
    /// `now + lease`.
    ///
    /// **Lanes.** An action with a lane ([`lane_of`]) waits for others of
    /// its lane. A Didit session's lane is FIFO: an action is claimable
    /// only while no earlier action (lower `seq`) of its session is
    /// unfinished, so a session never has two actions running, nor a later
    /// one before an earlier one:
    ///
    /// - an earlier action **pending** blocks, even when not yet due (a
    ///   retry backing off): order goes before speed, so a write-back
    ///   retrying is never overtaken by a later write-back or blocklist;
    /// - an earlier action **running** blocks, even with its lease expired
    ///   (then it is the one claimable);
    /// - an earlier action **done, skipped or dead** does not: a given-up
    ///   action no longer holds its lane, which moves on (a person sees it
    ///   among the dead letters). A dead action put back with
    ///   [`Outbox::retry_action`] is unfinished again and blocks the
    ///   lane's later unfinished actions, not those already run.
    ///
    /// The operator's endpoint lane is serial, not FIFO: one webhook at a
    /// time (none while another runs), the lowest `seq` of those due first, so a message backing off
    /// on the webhook schedule (hours) does not hold back the next, and
    /// consecutive failures still reach the endpoint's disabling.
    ///
    /// Concurrent claims (other workers, other instances) never get two
    /// actions of one session: only a session's oldest unfinished action
    /// passes, rows are locked as they are claimed, and enqueues into one
    /// lane commit in `seq` order. Two claims at the very same moment could
    /// each take a different due webhook; the endpoint lane's lease
    /// (`lane:operator.webhook`, one instance claiming one at a time)
    /// rules that out.
    async fn claim(
        &self,
        holder: &Holder,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
        exclude_kinds: Vec<String>,
    ) -> Result<Vec<ActionRecord>, StoreError>;

    /// Record how attempt number `attempt` ended. Returns false (writing
    /// nothing) when the action is no longer held by that attempt.
    async fn finish(
        &self,
        id: &str,
        attempt: u32,
        finish: Finish,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Hand every running action back, whoever claimed it: only for one
    /// process on its own store (the embedded one) at start, when no
    /// worker can still hold one. Returns how many.
    async fn release_running(&self, now_ms: i64) -> Result<usize, StoreError>;

    /// Hand back the running actions claimed by `holder.instance` under
    /// `holder.epoch` or an earlier epoch: a restarted instance's previous
    /// runs' claims, due at once. Other instances' claims, and a later run
    /// of the same id's, are left to their lease. Returns how many.
    async fn release_claims_of(&self, holder: &Holder, now_ms: i64) -> Result<usize, StoreError>;

    async fn get_action(&self, id: &str) -> Result<Option<ActionRecord>, StoreError>;

    async fn list_actions(&self, q: ActionQuery) -> Result<Vec<ActionRecord>, StoreError>;

    /// Put a dead (or skipped) action back in the queue, due now, with a
    /// fresh attempt budget. `None` if there is no such action; an action
    /// in any other state is returned unchanged, with `false`.
    async fn retry_action(
        &self,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<(ActionRecord, bool)>, StoreError>;

    /// How many actions are in each state, per kind.
    async fn action_counts(&self) -> Result<BTreeMap<(String, String), u64>, StoreError>;

    /// How many actions are not finished (pending, or running under a
    /// worker's claim), per kind: the backlog. Read through the index on
    /// the state, so it costs what is unfinished, not the history.
    async fn backlog(&self) -> Result<BTreeMap<String, u64>, StoreError>;

    /// Step-ups still open whose time ran out by `now_ms`.
    async fn step_ups_due(&self, now_ms: i64) -> Result<Vec<StepUpRecord>, StoreError>;

    async fn step_ups_of(&self, original: &str) -> Result<Vec<StepUpRecord>, StoreError>;

    /// The endpoint's state (a fresh one if never used).
    async fn endpoint(&self, url: &str) -> Result<EndpointState, StoreError>;

    /// Count a delivery attempt's result; at `disable_after` consecutive
    /// failures the endpoint is disabled. Returns the new state, and
    /// whether this call disabled it.
    async fn record_endpoint(
        &self,
        url: &str,
        error: Option<String>,
        now_ms: i64,
        disable_after: u32,
    ) -> Result<(EndpointState, bool), StoreError>;

    /// Enable a disabled endpoint and clear its failure count.
    async fn enable_endpoint(&self, url: &str) -> Result<EndpointState, StoreError>;
}

pub(crate) fn insert_actions(
    tx: &Transaction<'_>,
    actions: &[NewAction],
) -> Result<usize, StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO actions (id, idempotency_key, kind, session_id, decision_id, payload,
           state, attempts, next_at_ms, created_at_ms, updated_at_ms, lane)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?7, ?7, ?8)",
    )?;
    let mut n = 0;
    for a in actions {
        let id = format!("act_{}", kycd_core::id::ulid_body(a.created_at_ms));
        n += stmt.execute(params![
            id,
            a.idempotency_key,
            a.kind,
            a.session_id,
            a.decision_id,
            a.payload.to_string(),
            a.created_at_ms,
            lane_of(&a.kind, a.session_id.as_deref())
        ])?;
    }
    Ok(n)
}

pub(crate) fn upsert_step_ups(
    tx: &Transaction<'_>,
    rows: &[StepUpRecord],
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO step_ups (step_up_session_id, original_session_id, checks, state, url, workflow_id,
           requested_at_ms, expires_at_ms, finished_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (step_up_session_id) DO UPDATE SET state = excluded.state,
           url = coalesce(excluded.url, url), finished_at_ms = excluded.finished_at_ms",
    )?;
    for s in rows {
        stmt.execute(params![
            s.step_up_session_id,
            s.original_session_id,
            serde_json::to_string(&s.checks).unwrap_or_else(|_| "[]".into()),
            s.state,
            s.url,
            s.workflow_id,
            s.requested_at_ms,
            s.expires_at_ms,
            s.finished_at_ms
        ])?;
    }
    Ok(())
}

const ACTION_COLUMNS: &str =
    "seq, id, idempotency_key, kind, session_id, decision_id, payload, state,
    attempts, next_at_ms, last_error, result, created_at_ms, updated_at_ms,
    lane, claimed_by, claimed_epoch";

fn corrupt(what: &str) -> impl Fn(serde_json::Error) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

type RawAction = (ActionRecord, String, String, Option<String>);

fn row_to_action(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawAction> {
    Ok((
        ActionRecord {
            seq: r.get::<_, i64>(0)? as u64,
            id: r.get(1)?,
            idempotency_key: r.get(2)?,
            kind: r.get(3)?,
            session_id: r.get(4)?,
            decision_id: r.get(5)?,
            payload: Value::Null,
            state: ActionState::Pending,
            attempts: r.get::<_, i64>(8)? as u32,
            next_at_ms: r.get(9)?,
            last_error: r.get(10)?,
            result: None,
            created_at_ms: r.get(12)?,
            updated_at_ms: r.get(13)?,
            lane: r.get(14)?,
            claimed_by: match (
                r.get::<_, Option<String>>(15)?,
                r.get::<_, Option<i64>>(16)?,
            ) {
                (Some(instance), Some(epoch)) => Some(Holder { instance, epoch }),
                _ => None,
            },
        },
        r.get(6)?,
        r.get(7)?,
        r.get(11)?,
    ))
}

fn finish_action(raw: RawAction) -> Result<ActionRecord, StoreError> {
    let (mut rec, payload, state, result) = raw;
    rec.payload = serde_json::from_str(&payload).map_err(corrupt("action payload"))?;
    rec.state = ActionState::parse(&state)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown action state {state:?}")))?;
    rec.result = result
        .map(|r| serde_json::from_str(&r))
        .transpose()
        .map_err(corrupt("action result"))?;
    Ok(rec)
}

pub(crate) fn action_by_id(
    conn: &Connection,
    id: &str,
) -> Result<Option<ActionRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ACTION_COLUMNS} FROM actions WHERE id = ?1"
    ))?;
    stmt.query_row([id], row_to_action)
        .optional()?
        .map(finish_action)
        .transpose()
}

/// The columns added after the first release, with the lanes index; run
/// at every open (`SqliteStore::open`), a no-op once done. Actions
/// enqueued before get their lane here, so a redriven old one keeps its
/// order too.
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let has_lane: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('actions') WHERE name = 'lane'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_lane {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             ALTER TABLE actions ADD COLUMN lane TEXT;
             ALTER TABLE actions ADD COLUMN claimed_by TEXT;
             ALTER TABLE actions ADD COLUMN claimed_epoch INTEGER;
             UPDATE actions SET lane = {LANE_SQL};
             COMMIT;"
        ))?;
    }
    conn.execute_batch(LANES_INDEX)?;
    Ok(())
}

/// The unfinished actions of each lane in order: what [`claimable`]
/// probes for an earlier one, so a claim costs the backlog, not the
/// history.
pub(crate) const LANES_INDEX: &str = "CREATE INDEX IF NOT EXISTS actions_lanes
     ON actions(lane, seq) WHERE state IN ('pending', 'running')";

/// The lane rule of [`Outbox::claim`] on a candidate row `a`, with `now`
/// the placeholder of the claim's time: in a session's lane no earlier
/// unfinished action; in the endpoint's no other running webhook and no
/// earlier one due. The same text on both backends.
pub(crate) fn claimable(now: &str) -> String {
    format!(
        "(a.lane IS NULL OR NOT EXISTS (
           SELECT 1 FROM actions e
           WHERE e.lane = a.lane AND e.state IN ('pending', 'running') AND e.seq <> a.seq
             AND CASE WHEN a.lane = 'endpoint'
                   THEN e.state = 'running' OR (e.seq < a.seq AND e.next_at_ms <= {now})
                   ELSE e.seq < a.seq END))"
    )
}

pub(crate) fn claim(
    conn: &mut Connection,
    holder: &Holder,
    now_ms: i64,
    lease_ms: i64,
    limit: usize,
    exclude: &[String],
) -> Result<Vec<ActionRecord>, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let excluded = serde_json::to_string(exclude).unwrap_or_else(|_| "[]".into());
    let ids: Vec<String> = {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT a.id FROM actions a
             WHERE ((a.state = 'pending' AND a.next_at_ms <= ?1)
                    OR (a.state = 'running' AND a.lease_until_ms <= ?1))
               AND a.kind NOT IN (SELECT value FROM json_each(?3))
               AND {}
             ORDER BY a.next_at_ms, a.seq LIMIT ?2",
            claimable("?1")
        ))?;
        let rows = stmt.query_map(params![now_ms, limit as i64, excluded], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut out = Vec::with_capacity(ids.len());
    {
        let mut up = tx.prepare_cached(
            "UPDATE actions SET state = 'running', attempts = attempts + 1, lease_until_ms = ?2,
               updated_at_ms = ?3, claimed_by = ?4, claimed_epoch = ?5 WHERE id = ?1",
        )?;
        for id in &ids {
            up.execute(params![
                id,
                now_ms + lease_ms,
                now_ms,
                holder.instance,
                holder.epoch
            ])?;
            if let Some(a) = action_by_id(&tx, id)? {
                out.push(a);
            }
        }
    }
    tx.commit()?;
    Ok(out)
}

pub(crate) fn finish(
    conn: &mut Connection,
    id: &str,
    attempt: u32,
    finish: &Finish,
    now_ms: i64,
    chain: &crate::audit::ChainState,
) -> Result<bool, StoreError> {
    let (state, next_at, error, result) = finish_fields(finish);
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let n = tx.execute(
        "UPDATE actions SET state = ?3, next_at_ms = coalesce(?4, next_at_ms), last_error = coalesce(?5, last_error),
           result = coalesce(?6, result), lease_until_ms = NULL, updated_at_ms = ?7,
           claimed_by = NULL, claimed_epoch = NULL
         WHERE id = ?1 AND attempts = ?2 AND state = 'running'",
        params![id, attempt as i64, state, next_at, error, result, now_ms],
    )?;
    let mut appended = None;
    if n == 1 && state == "done" {
        if let Some(record) = action_by_id(&tx, id)?.and_then(|a| audit_of_done(&a, now_ms)) {
            appended = crate::audit::append(&tx, &[record], chain)?;
        }
    }
    tx.commit()?;
    chain.committed(appended);
    Ok(n == 1)
}

/// The audit record of an action just finished as done, if it is one that
/// is audited: what kycd did at Didit, with the result that records it.
/// Every backend appends it in the transaction that finishes the action.
pub(crate) fn audit_of_done(a: &ActionRecord, now_ms: i64) -> Option<crate::audit::NewAudit> {
    a.kind
        .starts_with("didit.")
        .then(|| crate::audit::NewAudit {
            at_ms: now_ms,
            actor: "kycd:outbox".into(),
            action: a.kind.clone(),
            target: a.session_id.clone(),
            details: serde_json::json!({
                "action_id": a.id,
                "decision_id": a.decision_id,
                "new_status": a.payload.get("new_status"),
                "check": a.payload.get("check"),
                "result": a.result,
            }),
        })
}

/// The state, next time, error and result that a [`Finish`] writes.
pub(crate) fn finish_fields(
    finish: &Finish,
) -> (&'static str, Option<i64>, Option<&str>, Option<String>) {
    match finish {
        Finish::Done(v) => ("done", None, None, Some(v.to_string())),
        Finish::Skipped(why) => ("skipped", None, Some(why.as_str()), None),
        Finish::Retry { error, at_ms } => ("pending", Some(*at_ms), Some(error.as_str()), None),
        Finish::Dead(why) => ("dead", None, Some(why.as_str()), None),
    }
}

pub(crate) fn release_running(conn: &Connection, now_ms: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE actions SET state = 'pending', next_at_ms = ?1, lease_until_ms = NULL, updated_at_ms = ?1,
           claimed_by = NULL, claimed_epoch = NULL
         WHERE state = 'running'",
        [now_ms],
    )?)
}

pub(crate) fn release_claims_of(
    conn: &Connection,
    holder: &Holder,
    now_ms: i64,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE actions SET state = 'pending', next_at_ms = ?1, lease_until_ms = NULL, updated_at_ms = ?1,
           claimed_by = NULL, claimed_epoch = NULL
         WHERE state = 'running' AND claimed_by = ?2 AND claimed_epoch <= ?3",
        params![now_ms, holder.instance, holder.epoch],
    )?)
}

pub(crate) fn list_actions(
    conn: &Connection,
    q: &ActionQuery,
) -> Result<Vec<ActionRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ACTION_COLUMNS} FROM actions
         WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR session_id = ?2) AND (?3 IS NULL OR kind = ?3)
           AND created_at_ms >= ?4 AND created_at_ms < ?5 AND seq < ?6
         ORDER BY seq DESC LIMIT ?7"
    ))?;
    let rows = stmt.query_map(
        params![
            q.state.map(ActionState::as_str),
            q.session_id,
            q.kind,
            q.created_from_ms.unwrap_or(i64::MIN),
            q.created_until_ms.unwrap_or(i64::MAX),
            q.before_seq.map(|s| s as i64).unwrap_or(i64::MAX),
            q.limit as i64
        ],
        row_to_action,
    )?;
    rows.map(|r| finish_action(r?)).collect()
}

pub(crate) fn retry_action(
    conn: &Connection,
    id: &str,
    now_ms: i64,
) -> Result<Option<(ActionRecord, bool)>, StoreError> {
    let changed = conn.execute(
        "UPDATE actions SET state = 'pending', attempts = 0, next_at_ms = ?2, updated_at_ms = ?2
         WHERE id = ?1 AND state IN ('dead', 'skipped')",
        params![id, now_ms],
    )? == 1;
    Ok(action_by_id(conn, id)?.map(|a| (a, changed)))
}

pub(crate) fn action_counts(
    conn: &Connection,
) -> Result<BTreeMap<(String, String), u64>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT kind, state, COUNT(*) FROM actions GROUP BY kind, state")?;
    let rows = stmt.query_map([], |r| {
        Ok(((r.get(0)?, r.get(1)?), r.get::<_, i64>(2)? as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// [`Outbox::backlog`]'s query: the `actions_due` index (state first)
/// finds the unfinished rows without reading the finished ones.
pub(crate) const BACKLOG: &str = "SELECT kind, COUNT(*) FROM actions
     WHERE state IN ('pending', 'running') GROUP BY kind";

pub(crate) fn backlog(conn: &Connection) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut stmt = conn.prepare_cached(BACKLOG)?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

const STEP_UP_COLUMNS: &str =
    "step_up_session_id, original_session_id, checks, state, url, workflow_id,
    requested_at_ms, expires_at_ms, finished_at_ms";

fn row_to_step_up(r: &rusqlite::Row<'_>) -> rusqlite::Result<(StepUpRecord, String)> {
    Ok((
        StepUpRecord {
            step_up_session_id: r.get(0)?,
            original_session_id: r.get(1)?,
            checks: Vec::new(),
            state: r.get(3)?,
            url: r.get(4)?,
            workflow_id: r.get(5)?,
            requested_at_ms: r.get(6)?,
            expires_at_ms: r.get(7)?,
            finished_at_ms: r.get(8)?,
        },
        r.get(2)?,
    ))
}

fn finish_step_up(raw: (StepUpRecord, String)) -> Result<StepUpRecord, StoreError> {
    let (mut rec, checks) = raw;
    rec.checks = serde_json::from_str(&checks).map_err(corrupt("step-up checks"))?;
    Ok(rec)
}

pub(crate) fn step_ups_where(
    conn: &Connection,
    condition: &str,
    arg: rusqlite::types::Value,
) -> Result<Vec<StepUpRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {STEP_UP_COLUMNS} FROM step_ups WHERE {condition} ORDER BY requested_at_ms"
    ))?;
    let rows = stmt.query_map([arg], row_to_step_up)?;
    rows.map(|r| finish_step_up(r?)).collect()
}

pub(crate) fn endpoint(conn: &Connection, url: &str) -> Result<EndpointState, StoreError> {
    let row = conn
        .query_row(
            "SELECT consecutive_failures, disabled_at_ms, last_success_ms, last_failure_ms, last_error
             FROM endpoints WHERE url = ?1",
            [url],
            |r| {
                Ok(EndpointState {
                    url: url.to_owned(),
                    consecutive_failures: r.get::<_, i64>(0)? as u32,
                    disabled_at_ms: r.get(1)?,
                    last_success_ms: r.get(2)?,
                    last_failure_ms: r.get(3)?,
                    last_error: r.get(4)?,
                })
            },
        )
        .optional()?;
    Ok(row.unwrap_or_else(|| EndpointState {
        url: url.to_owned(),
        ..EndpointState::default()
    }))
}

pub(crate) fn record_endpoint(
    conn: &Connection,
    url: &str,
    error: Option<&str>,
    now_ms: i64,
    disable_after: u32,
) -> Result<(EndpointState, bool), StoreError> {
    match error {
        None => conn.execute(
            "INSERT INTO endpoints (url, consecutive_failures, last_success_ms) VALUES (?1, 0, ?2)
             ON CONFLICT (url) DO UPDATE SET consecutive_failures = 0, last_success_ms = ?2",
            params![url, now_ms],
        )?,
        Some(e) => conn.execute(
            "INSERT INTO endpoints (url, consecutive_failures, last_failure_ms, last_error) VALUES (?1, 1, ?2, ?3)
             ON CONFLICT (url) DO UPDATE SET consecutive_failures = consecutive_failures + 1,
               last_failure_ms = ?2, last_error = ?3",
            params![url, now_ms, e],
        )?,
    };
    let disabled = conn.execute(
        "UPDATE endpoints SET disabled_at_ms = ?2
         WHERE url = ?1 AND disabled_at_ms IS NULL AND consecutive_failures >= ?3",
        params![url, now_ms, disable_after as i64],
    )? == 1;
    Ok((endpoint(conn, url)?, disabled))
}

pub(crate) fn enable_endpoint(conn: &Connection, url: &str) -> Result<EndpointState, StoreError> {
    conn.execute(
        "INSERT INTO endpoints (url, consecutive_failures) VALUES (?1, 0)
         ON CONFLICT (url) DO UPDATE SET consecutive_failures = 0, disabled_at_ms = NULL",
        [url],
    )?;
    endpoint(conn, url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn action(key: &str, kind: &str) -> NewAction {
        NewAction {
            idempotency_key: key.to_owned(),
            kind: kind.to_owned(),
            session_id: Some("s".to_owned()),
            decision_id: None,
            payload: serde_json::json!({}),
            created_at_ms: 1_000,
        }
    }

    #[tokio::test]
    async fn the_backlog_counts_pending_and_running_actions_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("store.db"), true).unwrap();
        assert!(store.backlog().await.unwrap().is_empty());
        store
            .enqueue(vec![
                action("a", "didit.update_status"),
                action("b", "didit.update_status"),
                action("c", "operator.webhook"),
                action("d", "operator.webhook"),
            ])
            .await
            .unwrap();
        // Two operator webhooks claimed in turn: one finishes, one stays
        // running.
        let me = Holder::new("test", 1);
        let only_webhooks = vec!["didit.update_status".to_owned()];
        let mut claimed = store
            .claim(&me, 1_000, 60_000, 10, only_webhooks.clone())
            .await
            .unwrap();
        let done = &claimed[0];
        assert!(store
            .finish(
                &done.id,
                done.attempts,
                Finish::Done(serde_json::json!({})),
                1_001
            )
            .await
            .unwrap());
        claimed.extend(
            store
                .claim(&me, 1_001, 60_000, 10, only_webhooks)
                .await
                .unwrap(),
        );
        assert_eq!(claimed.len(), 2);
        let backlog = store.backlog().await.unwrap();
        assert_eq!(
            backlog,
            BTreeMap::from([
                ("didit.update_status".to_owned(), 2),
                ("operator.webhook".to_owned(), 1),
            ])
        );
        // Dead and skipped actions are finished too.
        let running = &claimed[1];
        store
            .finish(
                &running.id,
                running.attempts,
                Finish::Dead("gone".into()),
                1_002,
            )
            .await
            .unwrap();
        assert_eq!(store.backlog().await.unwrap().get("operator.webhook"), None);
    }

    #[test]
    fn the_backlog_query_reads_an_index_not_the_table() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {BACKLOG}"))
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|d| d.contains("USING INDEX actions_due")
                || d.contains("USING COVERING INDEX actions_due")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|d| d.starts_with("SCAN actions")),
            "{plan:?}"
        );
    }
}

//! Projections: the current view of each Didit session, built by consumers of
//! the event log.
//!
//! The invariant that matters: a consumer's offset and the projection rows it
//! derived from the events up to that offset are committed in **one
//! transaction** ([`Store::commit_sessions`]). After a crash the consumer
//! resumes from the stored offset and finds the projection exactly as it was
//! at that offset, so no event is skipped and none is applied twice.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::audit;
use crate::outbox::{self, NewAction, StepUpRecord};

/// What went wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("stale offset: consumer {consumer} is at {current}, commit expected {expected}")]
    OffsetConflict {
        consumer: String,
        current: u64,
        expected: u64,
    },
    /// A commit made under a lease (a partition's projection) found that
    /// the lease was taken over since: it wrote nothing, and the work
    /// belongs to the new owner now.
    #[error("lease {lease} lost: held at epoch {epoch}, now {}", now.map_or("another owner's".to_owned(), |e| format!("epoch {e}")))]
    LeaseLost {
        lease: String,
        epoch: i64,
        now: Option<i64>,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// One Didit session as kycd currently sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Log offset of the first event about this session: a stable sort key
    /// for "newest first" that does not move when the session is updated.
    pub seq: u64,
    pub session_id: String,
    pub vendor_data: Option<String>,
    /// Didit's status string, exactly as Didit wrote it.
    pub status: String,
    pub workflow_id: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Everything else (history, Didit's latest decision, resubmission info,
    /// corrections, flags), owned by the projector.
    pub doc: serde_json::Value,
}

/// Filter and page for [`Store::list_sessions`].
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    pub vendor_data: Option<String>,
    pub status: Option<String>,
    /// Only sessions with `seq` below this (the cursor of the previous page).
    pub before_seq: Option<u64>,
    /// Only sessions first seen at or after this time (Unix ms).
    pub created_from_ms: Option<i64>,
    /// Only sessions first seen before this time (Unix ms).
    pub created_until_ms: Option<i64>,
    /// Only sessions last updated before this time (Unix ms).
    pub updated_until_ms: Option<i64>,
    /// Only sessions that still wait for a result from Didit: unfinished
    /// (not Approved, Declined, In Review, Abandoned or Expired), or decided
    /// by Didit without kycd holding a decision (step-up sessions aside,
    /// which are decided through their original). Reconciliation asks Didit
    /// about these.
    pub awaiting_result: bool,
    pub limit: usize,
}

/// Didit's statuses after which a session changes no more by itself.
pub const FINISHED_STATUSES: [&str; 5] =
    ["Approved", "Declined", "In Review", "Abandoned", "Expired"];

/// Whether a session still waits for a result from Didit, the one
/// definition behind [`SessionQuery::awaiting_result`]: unfinished, or
/// decided by Didit (not `Expired`) without kycd holding a decision, unless
/// it is a step-up session (`step_up_of` present), decided through its
/// original. Backends that cannot evaluate it in SQL store it with the row.
pub fn awaiting_result(rec: &SessionRecord) -> bool {
    if !FINISHED_STATUSES.contains(&rec.status.as_str()) {
        return true;
    }
    rec.status != "Expired"
        && rec
            .doc
            .get("decision")
            .is_none_or(serde_json::Value::is_null)
        && rec.doc.get("step_up_of").is_none()
}

/// One decision kycd made (or a shadow policy would have made).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub id: String,
    /// Log offset of the event decided on; with the policy version and the
    /// shadow flag it identifies the decision (one per event and policy).
    pub event_offset: u64,
    pub session_id: String,
    pub subject: Option<String>,
    pub policy_version: String,
    pub shadow: bool,
    pub outcome: String,
    pub score: f64,
    pub decided_at_ms: i64,
    /// The instance that committed the decision, as read back from the
    /// store: the owner of the lease its batch was fenced with
    /// ([`ProjectionBatch::fence`]), which the store writes at commit
    /// (what a record carries into a commit is ignored). `None` for a batch
    /// without a fence, so always on the embedded store: one process
    /// decides everything there, and it keeps no such column.
    #[serde(default)]
    pub decided_by: Option<String>,
    /// The whole decision: reasons, checks, trace, facts.
    pub doc: serde_json::Value,
}

/// An identity value (hashed) seen with a subject at a log position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityLink {
    pub kind: String,
    pub value: String,
    pub subject: String,
    pub offset: u64,
    pub at_ms: i64,
}

/// The operator's attributes for a subject, as written at a log position.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectVersion {
    pub subject: String,
    pub offset: u64,
    pub at_ms: i64,
    pub attributes: serde_json::Value,
}

/// Everything one projector batch writes, atomically with its offset.
#[derive(Debug, Clone, Default)]
pub struct ProjectionBatch {
    pub sessions: Vec<SessionRecord>,
    pub decisions: Vec<DecisionRecord>,
    pub links: Vec<IdentityLink>,
    pub subjects: Vec<SubjectVersion>,
    /// (subject, session) pairs that Didit declined, at an offset.
    pub declines: Vec<(String, String, u64)>,
    /// What the batch's decisions imply (the outbox), enqueued atomically
    /// with them; a key already enqueued is not enqueued again.
    pub actions: Vec<NewAction>,
    /// Step-ups created, completed or expired by the batch's events.
    pub step_ups: Vec<StepUpRecord>,
    /// Audit records of the batch's decisions, chained in its transaction.
    pub audit: Vec<audit::NewAudit>,
    /// The offset of the policy activation the batch applied last, if it
    /// applied one: kept as the mark `consumer` + [`POLICY_MARK_SUFFIX`],
    /// so that a projector started later knows which policy is in force
    /// at the offset it resumes from.
    pub policy_offset: Option<u64>,
    /// The leases the batch was made under, when several instances share
    /// the store (one per partition it projects): the commit checks each
    /// in its own transaction and, if any was taken over since, writes
    /// nothing ([`StoreError::LeaseLost`]). Empty in a single process (the
    /// embedded store, which one process owns, ignores them).
    pub fences: Vec<Fence>,
}

/// A lease held by `owner` at `epoch` (its fencing token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub owner: String,
    pub lease: String,
    pub epoch: i64,
}

/// Appended to a consumer's name for the mark of its last applied policy
/// activation (read with [`Store::consumer_offset`]).
pub const POLICY_MARK_SUFFIX: &str = ".policy";

/// What one projector batch needs from committed history, asked in one
/// round trip: the subjects linked to each identity value, and each
/// subject's latest attributes and declined sessions.
#[derive(Debug, Clone, Default)]
pub struct GraphQuery {
    /// `(kind, value)` pairs.
    pub values: Vec<(String, String)>,
    pub subjects: Vec<String>,
    /// Only links last seen at or after this time (Unix ms).
    pub from_ms: i64,
    /// At most this many subjects per value, the most recently seen first.
    pub limit: usize,
}

/// The answer to a [`GraphQuery`]; a value or subject with nothing stored
/// is absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GraphContext {
    /// `(kind, value)` → `(subject, last seen at ms)`, newest first.
    pub linked: HashMap<(String, String), Vec<(String, i64)>>,
    pub attributes: HashMap<String, serde_json::Value>,
    pub declined: HashMap<String, Vec<String>>,
}

/// An active decision and the shadow policy's on the same event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowPair {
    pub decision_id: String,
    pub session_id: String,
    pub active: String,
    pub shadow: String,
    pub shadow_decision_id: String,
}

/// Filter and page for [`Store::list_decisions`].
#[derive(Debug, Clone, Default)]
pub struct DecisionQuery {
    pub outcome: Option<String>,
    pub session_id: Option<String>,
    pub shadow: bool,
    /// Only decisions on events before this offset (the previous page's cursor).
    pub before_offset: Option<u64>,
    /// Only decisions on events after this offset (replay comparisons).
    pub after_offset: Option<u64>,
    pub limit: usize,
}

/// The projections, and (as a supertrait) the cursors and fetch throttle
/// of [`crate::cursors`].
#[async_trait::async_trait]
pub trait Store: crate::cursors::Cursors + Send + Sync + 'static {
    /// Where `consumer` stopped: every event up to this offset is reflected.
    async fn consumer_offset(&self, consumer: &str) -> Result<u64, StoreError>;

    /// The current records of these sessions, where they exist.
    async fn load_sessions(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, SessionRecord>, StoreError>;

    /// Atomically write `batch` and move `consumer` from `from_offset` to
    /// `to_offset`. Fails with [`StoreError::OffsetConflict`], writing
    /// nothing, if the consumer is not at `from_offset` (another instance
    /// got there first).
    async fn commit(
        &self,
        consumer: &str,
        from_offset: u64,
        to_offset: u64,
        batch: ProjectionBatch,
    ) -> Result<(), StoreError> {
        self.commit_partitions(&[(consumer.to_owned(), from_offset)], to_offset, batch)
            .await
    }

    /// [`Store::commit`] for a projection of several partitions at once:
    /// every `(consumer, from_offset)` must be where it says (else
    /// [`StoreError::OffsetConflict`], writing nothing), and all move to
    /// `to_offset` with the batch. The batch's policy mark is kept for
    /// each.
    async fn commit_partitions(
        &self,
        consumers: &[(String, u64)],
        to_offset: u64,
        batch: ProjectionBatch,
    ) -> Result<(), StoreError>;

    /// Sessions only; a convenience over [`Store::commit`].
    async fn commit_sessions(
        &self,
        consumer: &str,
        from_offset: u64,
        to_offset: u64,
        sessions: Vec<SessionRecord>,
    ) -> Result<(), StoreError> {
        let batch = ProjectionBatch {
            sessions,
            ..ProjectionBatch::default()
        };
        self.commit(consumer, from_offset, to_offset, batch).await
    }

    /// Everything [`GraphQuery`] asks for, from one consistent snapshot.
    async fn graph_context(&self, q: GraphQuery) -> Result<GraphContext, StoreError>;

    /// Distinct subjects linked to this identity value at or after `from_ms`.
    async fn linked_subjects(
        &self,
        kind: &str,
        value: &str,
        from_ms: i64,
    ) -> Result<Vec<String>, StoreError>;

    /// The subject's latest attributes.
    async fn subject(&self, subject: &str) -> Result<Option<SubjectVersion>, StoreError>;

    /// Sessions of this subject that Didit declined.
    async fn declined_sessions(&self, subject: &str) -> Result<Vec<String>, StoreError>;

    async fn get_decision(&self, id: &str) -> Result<Option<DecisionRecord>, StoreError>;

    /// Newest first (by event offset), unless `after_offset` is set, then
    /// oldest first from there.
    async fn list_decisions(&self, q: DecisionQuery) -> Result<Vec<DecisionRecord>, StoreError>;

    /// The decision on `session_id` made at the event at `offset`, active
    /// or shadow. One event can decide several sessions (a step-up
    /// session's result decides it and its original).
    async fn decision_for_event(
        &self,
        offset: u64,
        session_id: &str,
        shadow: bool,
    ) -> Result<Option<DecisionRecord>, StoreError>;

    /// The latest `limit` active decisions that a shadow policy also made,
    /// newest first, each with the shadow's (latest) decision on the same
    /// event: one query, for comparisons.
    async fn shadow_pairs(&self, limit: usize) -> Result<Vec<ShadowPair>, StoreError>;

    async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// Newest first (by `seq`).
    async fn list_sessions(&self, q: SessionQuery) -> Result<Vec<SessionRecord>, StoreError>;
}

/// The embedded store: one SQLite file in WAL mode.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    /// The projector's reads (`graph_context`), apart from the API's, so a
    /// batch's reads never hold up a request.
    graph_reader: Arc<Mutex<Connection>>,
    /// Dropped with the last clone of the store, which stops the
    /// checkpointer thread.
    _checkpointer: Arc<std::sync::mpsc::Sender<()>>,
    /// The audit trail's key, head and status (`audit`).
    pub(crate) chain: Arc<audit::ChainState>,
}

/// The page size of a new store: 1 KiB rather than SQLite's 4 KiB.
///
/// A projector commit dirties a dozen index pages at random places (a
/// session's id, its subject, its decisions, its identity values), and
/// SQLite writes every dirty page whole, to the WAL and again when it is
/// checkpointed. With 4 KiB pages that was about 68 KB of WAL per decided
/// delivery; the writes and their syncs share the disk with the event
/// log's fsyncs, which every acknowledgement waits for. Smaller pages
/// halved the store's WAL bytes (68 to 34 KB per decided delivery) and cut
/// the intake's p99 at 2,000 /s from 9.0 ms to 5.4 ms (medians,
/// BENCHMARKS.md, session 6); 512 and 2,048 did no better. Documents
/// (2-3 KB) now span a few pages; the console's and the API's reads showed
/// no consistent difference. Draining a backlog costs about a sixth more
/// CPU, hence [`SqliteStore::open_scratch`] for batch jobs.
pub const PAGE_SIZE: i64 = 1024;

/// The page size of [`SqliteStore::open_scratch`]: SQLite's default.
const SCRATCH_PAGE_SIZE: i64 = 4096;

/// The writer checkpoints by itself only if the WAL reaches this many pages
/// (16 MB at [`PAGE_SIZE`]), which happens only if the checkpointer cannot
/// keep up.
const BACKSTOP_CHECKPOINT_PAGES: i64 = 16_384;

/// How often the checkpointer looks for new commits.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    seq INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL UNIQUE,
    vendor_data TEXT,
    status TEXT NOT NULL,
    workflow_id TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_vendor ON sessions(vendor_data, seq);
CREATE INDEX IF NOT EXISTS sessions_by_status ON sessions(status, seq);
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    event_offset INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    subject TEXT,
    policy_version TEXT NOT NULL,
    shadow INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    score REAL NOT NULL,
    decided_at_ms INTEGER NOT NULL,
    doc TEXT NOT NULL,
    UNIQUE (event_offset, session_id, policy_version, shadow)
);
CREATE INDEX IF NOT EXISTS decisions_by_offset ON decisions(shadow, event_offset);
CREATE INDEX IF NOT EXISTS decisions_by_outcome ON decisions(shadow, outcome, event_offset);
CREATE INDEX IF NOT EXISTS decisions_by_session ON decisions(session_id, event_offset);
CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions(shadow, decided_at_ms);
-- The identity graph: one row per (hashed) value and subject, with when
-- the subject last presented it. A value shared by many subjects (a
-- carrier's IP address) costs one row each, and reading it is bounded by
-- the query's limit, never by how often the value was seen.
CREATE TABLE IF NOT EXISTS identity_values (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    subject TEXT NOT NULL,
    first_offset INTEGER NOT NULL,
    last_at_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, value, subject)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS identity_values_by_recency ON identity_values(kind, value, last_at_ms);
CREATE TABLE IF NOT EXISTS subjects (
    subject TEXT NOT NULL,
    event_offset INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    attributes TEXT NOT NULL,
    PRIMARY KEY (subject, event_offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS declines (
    subject TEXT NOT NULL,
    session_id TEXT NOT NULL,
    event_offset INTEGER NOT NULL,
    PRIMARY KEY (subject, session_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumer_offsets (
    consumer TEXT PRIMARY KEY,
    offset INTEGER NOT NULL
) WITHOUT ROWID;
";

/// A document's JSON text, compact, exactly as `Value`'s `Display` writes
/// it but without a `Formatter` call per token (a fifth of the store
/// thread's instructions in a profile of the projector's commits).
fn json_text(v: &serde_json::Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| v.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave SQLite inconsistent (an
    // open transaction rolls back when its guard drops), so keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SqliteStore {
    /// Open (creating and migrating if needed) the store at `path`.
    /// `synchronous_full` trades throughput for durability across power loss.
    pub fn open(path: &Path, synchronous_full: bool) -> Result<Self, StoreError> {
        Self::open_with(path, synchronous_full, || {})
    }

    /// [`SqliteStore::open`], with `on_checkpointer_start` run first on the
    /// background checkpointer's thread, e.g. to lower its priority like
    /// that of the projector it serves.
    pub fn open_with(
        path: &Path,
        synchronous_full: bool,
        on_checkpointer_start: impl FnOnce() + Send + 'static,
    ) -> Result<Self, StoreError> {
        Self::open_inner(path, synchronous_full, PAGE_SIZE, on_checkpointer_start)
    }

    /// A store for one batch job that nothing serves from while it runs
    /// (`kycd replay`'s scratch copy), made with SQLite's default 4 KiB
    /// pages: [`PAGE_SIZE`] protects the event log's fsyncs at the cost of
    /// writing more, smaller pages, and a replay that shares the disk with
    /// no intake runs about a sixth faster without it.
    pub fn open_scratch(path: &Path) -> Result<Self, StoreError> {
        Self::open_inner(path, false, SCRATCH_PAGE_SIZE, || {})
    }

    fn open_inner(
        path: &Path,
        synchronous_full: bool,
        page_size: i64,
        on_checkpointer_start: impl FnOnce() + Send + 'static,
    ) -> Result<Self, StoreError> {
        let mut writer = Connection::open(path)?;
        // Only takes effect on a new file: a store made with another page
        // size keeps it (WAL mode cannot change it), and works the same.
        writer.pragma_update(None, "page_size", page_size)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(
            None,
            "synchronous",
            if synchronous_full { "FULL" } else { "NORMAL" },
        )?;
        writer.busy_timeout(std::time::Duration::from_secs(5))?;
        writer.execute_batch(SCHEMA)?;
        writer.execute_batch(outbox::SCHEMA)?;
        outbox::migrate(&writer)?;
        writer.execute_batch(audit::SCHEMA)?;
        audit::migrate(&writer)?;
        writer.execute_batch(crate::access::SCHEMA)?;
        writer.execute_batch(crate::cases::SCHEMA)?;
        writer.execute_batch(crate::cursors::SCHEMA)?;
        let kept: i64 = writer.pragma_query_value(None, "page_size", |r| r.get(0))?;
        if kept != page_size {
            tracing::warn!(
                path = %path.display(),
                page_size = kept,
                preferred = page_size,
                "the store keeps the page size it was made with; it works, but \
                 ARCHITECTURE.md (\"The store is a projection\") tells how to convert it"
            );
        }
        crate::cases::backfill(&mut writer)?;
        migrate_identity_links(&writer)?;
        migrate_decisions_per_session(&writer)?;
        let reader = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        let graph_reader = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        graph_reader.busy_timeout(std::time::Duration::from_secs(5))?;
        let checkpointer = start_checkpointer(path, &writer, on_checkpointer_start)?;
        let chain = audit::ChainState::open(&writer)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
            graph_reader: Arc::new(Mutex::new(graph_reader)),
            _checkpointer: Arc::new(checkpointer),
            chain,
        })
    }

    async fn with<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&conn)))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

/// Move checkpoints off the writer. SQLite's automatic checkpoint runs inside
/// the COMMIT that crosses the threshold, so one projector commit in every
/// few hundred would copy the WAL into the database file and sync it while
/// holding the writer. A connection of its own on its own thread does that
/// instead, concurrently; the writer's automatic checkpoint stays only as a
/// backstop. Returns the sender whose drop stops the thread.
fn start_checkpointer(
    path: &Path,
    writer: &Connection,
    on_start: impl FnOnce() + Send + 'static,
) -> Result<std::sync::mpsc::Sender<()>, StoreError> {
    writer.pragma_update(None, "wal_autocheckpoint", BACKSTOP_CHECKPOINT_PAGES)?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let (alive, store_gone) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("kycd-store-ckpt".into())
        .spawn(move || {
            on_start();
            checkpoint_loop(conn, store_gone)
        })
        .map_err(|e| StoreError::Unavailable(format!("cannot start the checkpointer: {e}")))?;
    Ok(alive)
}

/// Run passive checkpoints (they never block the writer or readers) when
/// another connection has committed since the last complete one, until the
/// store is dropped.
fn checkpoint_loop(conn: Connection, store_gone: std::sync::mpsc::Receiver<()>) {
    let mut checkpointed_version = None;
    loop {
        match store_gone.recv_timeout(CHECKPOINT_EVERY) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // Every clone of the store is gone.
            _ => return,
        }
        // `data_version` changes whenever another connection commits.
        let version: Option<i64> = conn
            .pragma_query_value(None, "data_version", |r| r.get(0))
            .ok();
        if version.is_some() && version == checkpointed_version {
            continue;
        }
        // One that stopped short is tried again next tick.
        match crate::checkpoint::passive(&conn) {
            Ok(true) => checkpointed_version = version,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "store checkpoint failed; will retry"),
        }
    }
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<(SessionRecord, String)> {
    let seq: i64 = row.get(0)?;
    Ok((
        SessionRecord {
            seq: seq as u64,
            session_id: row.get(1)?,
            vendor_data: row.get(2)?,
            status: row.get(3)?,
            workflow_id: row.get(4)?,
            created_at_ms: row.get(5)?,
            updated_at_ms: row.get(6)?,
            doc: serde_json::Value::Null,
        },
        row.get(7)?,
    ))
}

fn finish(pair: (SessionRecord, String)) -> Result<SessionRecord, StoreError> {
    let (mut rec, doc) = pair;
    rec.doc =
        serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(format!("session doc: {e}")))?;
    Ok(rec)
}

const COLUMNS: &str =
    "seq, session_id, vendor_data, status, workflow_id, created_at_ms, updated_at_ms, doc";

const DECISION_COLUMNS: &str =
    "id, event_offset, session_id, subject, policy_version, shadow, outcome, score, decided_at_ms, doc";

fn row_to_decision(row: &rusqlite::Row<'_>) -> rusqlite::Result<(DecisionRecord, String)> {
    Ok((
        DecisionRecord {
            id: row.get(0)?,
            event_offset: row.get::<_, i64>(1)? as u64,
            session_id: row.get(2)?,
            subject: row.get(3)?,
            policy_version: row.get(4)?,
            shadow: row.get(5)?,
            outcome: row.get(6)?,
            score: row.get(7)?,
            decided_at_ms: row.get(8)?,
            decided_by: None,
            doc: serde_json::Value::Null,
        },
        row.get(9)?,
    ))
}

fn finish_decision(pair: (DecisionRecord, String)) -> Result<DecisionRecord, StoreError> {
    let (mut rec, doc) = pair;
    rec.doc = serde_json::from_str(&doc)
        .map_err(|e| StoreError::Corrupt(format!("decision doc: {e}")))?;
    Ok(rec)
}

fn session_by_id(conn: &Connection, id: &str) -> Result<Option<SessionRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM sessions WHERE session_id = ?1"
    ))?;
    stmt.query_row([id], row_to_record)
        .optional()?
        .map(finish)
        .transpose()
}

/// Stores written before `identity_values` kept one row per link; fold
/// them into the new table once and drop the old one.
fn migrate_identity_links(conn: &Connection) -> Result<(), StoreError> {
    let old: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'identity_links')",
        [],
        |r| r.get(0),
    )?;
    if old {
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             INSERT INTO identity_values (kind, value, subject, first_offset, last_at_ms)
               SELECT kind, value, subject, MIN(event_offset), MAX(at_ms)
               FROM identity_links WHERE true GROUP BY kind, value, subject
             ON CONFLICT (kind, value, subject) DO UPDATE
               SET first_offset = min(first_offset, excluded.first_offset),
                   last_at_ms = max(last_at_ms, excluded.last_at_ms);
             DROP TABLE identity_links;
             COMMIT;",
        )?;
    }
    Ok(())
}

/// Stores written before one event could decide several sessions kept
/// decisions unique per event, policy and shadow; rebuild the table once
/// with the session in the key (SQLite cannot drop a table constraint).
fn migrate_decisions_per_session(conn: &Connection) -> Result<(), StoreError> {
    let sql: String = conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'decisions'",
        [],
        |r| r.get(0),
    )?;
    if sql.contains("UNIQUE (event_offset, policy_version, shadow)") {
        let create = sql.replace(
            "UNIQUE (event_offset, policy_version, shadow)",
            "UNIQUE (event_offset, session_id, policy_version, shadow)",
        );
        let create = create.replacen("decisions", "decisions_rebuilt", 1);
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             {create};
             INSERT INTO decisions_rebuilt SELECT * FROM decisions ORDER BY rowid;
             DROP TABLE decisions;
             ALTER TABLE decisions_rebuilt RENAME TO decisions;
             CREATE INDEX IF NOT EXISTS decisions_by_offset ON decisions(shadow, event_offset);
             CREATE INDEX IF NOT EXISTS decisions_by_outcome ON decisions(shadow, outcome, event_offset);
             CREATE INDEX IF NOT EXISTS decisions_by_session ON decisions(session_id, event_offset);
             CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions(shadow, decided_at_ms);
             COMMIT;"
        ))?;
    }
    Ok(())
}

fn linked(
    conn: &Connection,
    kind: &str,
    value: &str,
    from_ms: i64,
    limit: usize,
) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT subject, last_at_ms FROM identity_values
         WHERE kind = ?1 AND value = ?2 AND last_at_ms >= ?3
         ORDER BY last_at_ms DESC, subject LIMIT ?4",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![kind, value, from_ms, limit], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn latest_subject(conn: &Connection, subject: &str) -> Result<Option<SubjectVersion>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT event_offset, at_ms, attributes FROM subjects WHERE subject = ?1 ORDER BY event_offset DESC LIMIT 1",
    )?;
    let row = stmt
        .query_row([subject], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .optional()?;
    row.map(|(offset, at_ms, text)| {
        Ok(SubjectVersion {
            subject: subject.to_owned(),
            offset: offset as u64,
            at_ms,
            attributes: serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("subject attributes: {e}")))?,
        })
    })
    .transpose()
}

fn declined_of(conn: &Connection, subject: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT session_id FROM declines WHERE subject = ?1")?;
    let rows = stmt.query_map([subject], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn offset_of(conn: &Connection, consumer: &str) -> Result<u64, StoreError> {
    let v: Option<i64> = conn
        .query_row(
            "SELECT offset FROM consumer_offsets WHERE consumer = ?1",
            [consumer],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.unwrap_or(0) as u64)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn consumer_offset(&self, consumer: &str) -> Result<u64, StoreError> {
        let consumer = consumer.to_owned();
        Self::with(&self.reader, move |c| offset_of(c, &consumer)).await
    }

    async fn load_sessions(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, SessionRecord>, StoreError> {
        let ids = ids.to_vec();
        Self::with(&self.reader, move |c| {
            let mut out = HashMap::new();
            for id in ids {
                if let Some(rec) = session_by_id(c, &id)? {
                    out.insert(id, rec);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn commit_partitions(
        &self,
        consumers: &[(String, u64)],
        to_offset: u64,
        batch: ProjectionBatch,
    ) -> Result<(), StoreError> {
        let consumers = consumers.to_vec();
        let sessions = batch.sessions;
        let chain = self.chain.clone();
        Self::with(&self.writer, move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for (consumer, from_offset) in &consumers {
                let current = offset_of(&tx, consumer)?;
                if current != *from_offset {
                    return Err(StoreError::OffsetConflict {
                        consumer: consumer.clone(),
                        current,
                        expected: *from_offset,
                    });
                }
            }
            let appended;
            {
                let mut up = tx.prepare_cached(
                    "INSERT INTO sessions (seq, session_id, vendor_data, status, workflow_id, created_at_ms, updated_at_ms, doc)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT(session_id) DO UPDATE SET vendor_data = excluded.vendor_data,
                       status = excluded.status, workflow_id = excluded.workflow_id,
                       updated_at_ms = excluded.updated_at_ms, doc = excluded.doc",
                )?;
                for s in &sessions {
                    up.execute(params![
                        s.seq as i64,
                        s.session_id,
                        s.vendor_data,
                        s.status,
                        s.workflow_id,
                        s.created_at_ms,
                        s.updated_at_ms,
                        json_text(&s.doc)
                    ])?;
                    crate::cases::upsert(&tx, s)?;
                }
                let mut dec = tx.prepare_cached(
                    "INSERT INTO decisions (id, event_offset, session_id, subject, policy_version, shadow, outcome, score, decided_at_ms, doc)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for d in &batch.decisions {
                    dec.execute(params![
                        d.id,
                        d.event_offset as i64,
                        d.session_id,
                        d.subject,
                        d.policy_version,
                        d.shadow,
                        d.outcome,
                        d.score,
                        d.decided_at_ms,
                        json_text(&d.doc)
                    ])?;
                }
                let mut link = tx.prepare_cached(
                    "INSERT INTO identity_values (kind, value, subject, first_offset, last_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (kind, value, subject) DO UPDATE
                       SET last_at_ms = max(last_at_ms, excluded.last_at_ms)",
                )?;
                for l in &batch.links {
                    link.execute(params![l.kind, l.value, l.subject, l.offset as i64, l.at_ms])?;
                }
                let mut subj = tx.prepare_cached(
                    "INSERT OR REPLACE INTO subjects (subject, event_offset, at_ms, attributes) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for v in &batch.subjects {
                    subj.execute(params![v.subject, v.offset as i64, v.at_ms, json_text(&v.attributes)])?;
                }
                let mut decl = tx.prepare_cached(
                    "INSERT OR IGNORE INTO declines (subject, session_id, event_offset) VALUES (?1, ?2, ?3)",
                )?;
                for (subject, session, offset) in &batch.declines {
                    decl.execute(params![subject, session, *offset as i64])?;
                }
                outbox::insert_actions(&tx, &batch.actions)?;
                outbox::upsert_step_ups(&tx, &batch.step_ups)?;
                appended = audit::append(&tx, &batch.audit, &chain)?;
                let mut mark = tx.prepare_cached(
                    "INSERT INTO consumer_offsets (consumer, offset) VALUES (?1, ?2)
                     ON CONFLICT(consumer) DO UPDATE SET offset = excluded.offset",
                )?;
                for (consumer, _) in &consumers {
                    mark.execute(params![consumer, to_offset as i64])?;
                    if let Some(policy) = batch.policy_offset {
                        mark.execute(params![
                            format!("{consumer}{POLICY_MARK_SUFFIX}"),
                            policy as i64
                        ])?;
                    }
                }
            }
            tx.commit()?;
            chain.committed(appended);
            Ok(())
        })
        .await
    }

    async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let id = id.to_owned();
        Self::with(&self.reader, move |c| session_by_id(c, &id)).await
    }

    async fn list_sessions(&self, q: SessionQuery) -> Result<Vec<SessionRecord>, StoreError> {
        Self::with(&self.reader, move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM sessions
                 WHERE (?1 IS NULL OR vendor_data = ?1) AND (?2 IS NULL OR status = ?2) AND seq < ?3
                   AND created_at_ms >= ?5 AND created_at_ms < ?6 AND updated_at_ms < ?7
                   AND (NOT ?8 OR status NOT IN ('Approved', 'Declined', 'In Review', 'Abandoned', 'Expired')
                        OR (status != 'Expired'
                            AND coalesce(json_type(doc, '$.decision'), 'null') = 'null'
                            AND json_type(doc, '$.step_up_of') IS NULL))
                 ORDER BY seq DESC LIMIT ?4"
            ))?;
            let before = q.before_seq.map(|s| s as i64).unwrap_or(i64::MAX);
            let rows = stmt.query_map(
                params![
                    q.vendor_data,
                    q.status,
                    before,
                    q.limit as i64,
                    q.created_from_ms.unwrap_or(i64::MIN),
                    q.created_until_ms.unwrap_or(i64::MAX),
                    q.updated_until_ms.unwrap_or(i64::MAX),
                    q.awaiting_result
                ],
                row_to_record,
            )?;
            rows.map(|r| finish(r?)).collect()
        })
        .await
    }

    async fn graph_context(&self, q: GraphQuery) -> Result<GraphContext, StoreError> {
        Self::with(&self.graph_reader, move |c| {
            // One read transaction: every answer is from the same snapshot.
            let tx = c.transaction()?;
            let mut out = GraphContext::default();
            for (kind, value) in q.values {
                let rows = linked(&tx, &kind, &value, q.from_ms, q.limit)?;
                if !rows.is_empty() {
                    out.linked.insert((kind, value), rows);
                }
            }
            for subject in q.subjects {
                if let Some(v) = latest_subject(&tx, &subject)? {
                    out.attributes.insert(subject.clone(), v.attributes);
                }
                let declined = declined_of(&tx, &subject)?;
                if !declined.is_empty() {
                    out.declined.insert(subject, declined);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn linked_subjects(
        &self,
        kind: &str,
        value: &str,
        from_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let (kind, value) = (kind.to_owned(), value.to_owned());
        Self::with(&self.reader, move |c| {
            Ok(linked(c, &kind, &value, from_ms, usize::MAX)?
                .into_iter()
                .map(|(s, _)| s)
                .collect())
        })
        .await
    }

    async fn subject(&self, subject: &str) -> Result<Option<SubjectVersion>, StoreError> {
        let subject = subject.to_owned();
        Self::with(&self.reader, move |c| latest_subject(c, &subject)).await
    }

    async fn declined_sessions(&self, subject: &str) -> Result<Vec<String>, StoreError> {
        let subject = subject.to_owned();
        Self::with(&self.reader, move |c| declined_of(c, &subject)).await
    }

    async fn get_decision(&self, id: &str) -> Result<Option<DecisionRecord>, StoreError> {
        let id = id.to_owned();
        Self::with(&self.reader, move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {DECISION_COLUMNS} FROM decisions WHERE id = ?1"
            ))?;
            stmt.query_row([&id], row_to_decision)
                .optional()?
                .map(finish_decision)
                .transpose()
        })
        .await
    }

    async fn list_decisions(&self, q: DecisionQuery) -> Result<Vec<DecisionRecord>, StoreError> {
        Self::with(&self.reader, move |c| {
            let ascending = q.after_offset.is_some();
            let sql = format!(
                "SELECT {DECISION_COLUMNS} FROM decisions
                 WHERE shadow = ?1 AND (?2 IS NULL OR outcome = ?2) AND (?3 IS NULL OR session_id = ?3)
                   AND event_offset < ?4 AND event_offset > ?5
                 ORDER BY event_offset {} LIMIT ?6",
                if ascending { "ASC" } else { "DESC" }
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![
                    q.shadow,
                    q.outcome,
                    q.session_id,
                    q.before_offset.map(|o| o as i64).unwrap_or(i64::MAX),
                    q.after_offset.map(|o| o as i64).unwrap_or(-1),
                    q.limit as i64
                ],
                row_to_decision,
            )?;
            rows.map(|r| finish_decision(r?)).collect()
        })
        .await
    }

    async fn shadow_pairs(&self, limit: usize) -> Result<Vec<ShadowPair>, StoreError> {
        Self::with(&self.reader, move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT a.id, a.session_id, a.outcome, s.outcome, s.id
                 FROM (SELECT id, session_id, outcome, event_offset FROM decisions
                       WHERE shadow = 0 ORDER BY event_offset DESC LIMIT ?1) a
                 JOIN decisions s ON s.rowid = (
                     SELECT rowid FROM decisions
                     WHERE event_offset = a.event_offset AND session_id = a.session_id
                       AND shadow = 1
                     ORDER BY rowid DESC LIMIT 1)
                 ORDER BY a.event_offset DESC",
            )?;
            let rows = stmt.query_map([limit as i64], |r| {
                Ok(ShadowPair {
                    decision_id: r.get(0)?,
                    session_id: r.get(1)?,
                    active: r.get(2)?,
                    shadow: r.get(3)?,
                    shadow_decision_id: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn decision_for_event(
        &self,
        offset: u64,
        session_id: &str,
        shadow: bool,
    ) -> Result<Option<DecisionRecord>, StoreError> {
        let session_id = session_id.to_owned();
        Self::with(&self.reader, move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {DECISION_COLUMNS} FROM decisions WHERE event_offset = ?1 AND session_id = ?2 AND shadow = ?3 ORDER BY rowid DESC LIMIT 1"
            ))?;
            stmt.query_row(params![offset as i64, session_id, shadow], row_to_decision)
                .optional()?
                .map(finish_decision)
                .transpose()
        })
        .await
    }
}

#[async_trait::async_trait]
impl crate::cursors::Cursors for SqliteStore {
    async fn get_cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_owned();
        Self::with(&self.reader, move |c| crate::cursors::sqlite::get(c, &name)).await
    }

    async fn set_cursor(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let (name, value) = (name.to_owned(), value.to_owned());
        Self::with(&self.writer, move |c| {
            crate::cursors::sqlite::set(c, &name, &value)
        })
        .await
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
        let ids = session_ids.to_vec();
        Self::with(&self.writer, move |c| {
            crate::cursors::sqlite::take(c, &ids, now_ms, every_ms)
        })
        .await
    }

    async fn fetch_succeeded(&self, session_id: &str) -> Result<(), StoreError> {
        let id = session_id.to_owned();
        Self::with(&self.writer, move |c| {
            crate::cursors::sqlite::succeeded(c, &id)
        })
        .await
    }

    async fn unconfirmed_fetches(
        &self,
        taken_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        Self::with(&self.reader, move |c| {
            crate::cursors::sqlite::unconfirmed(c, taken_until_ms, limit)
        })
        .await
    }

    async fn forget_fetches(
        &self,
        confirmed_until_ms: i64,
        unconfirmed_until_ms: i64,
    ) -> Result<u64, StoreError> {
        Self::with(&self.writer, move |c| {
            crate::cursors::sqlite::forget(c, confirmed_until_ms, unconfirmed_until_ms)
        })
        .await
    }
}

#[async_trait::async_trait]
impl outbox::Outbox for SqliteStore {
    async fn enqueue(&self, actions: Vec<NewAction>) -> Result<usize, StoreError> {
        Self::with(&self.writer, move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let n = outbox::insert_actions(&tx, &actions)?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn claim(
        &self,
        holder: &outbox::Holder,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
        exclude_kinds: Vec<String>,
    ) -> Result<Vec<outbox::ActionRecord>, StoreError> {
        let holder = holder.clone();
        Self::with(&self.writer, move |c| {
            outbox::claim(c, &holder, now_ms, lease_ms, limit, &exclude_kinds)
        })
        .await
    }

    async fn finish(
        &self,
        id: &str,
        attempt: u32,
        finish: outbox::Finish,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        let chain = self.chain.clone();
        Self::with(&self.writer, move |c| {
            outbox::finish(c, &id, attempt, &finish, now_ms, &chain)
        })
        .await
    }

    async fn release_running(&self, now_ms: i64) -> Result<usize, StoreError> {
        Self::with(&self.writer, move |c| outbox::release_running(c, now_ms)).await
    }

    async fn release_claims_of(
        &self,
        holder: &outbox::Holder,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let holder = holder.clone();
        Self::with(&self.writer, move |c| {
            outbox::release_claims_of(c, &holder, now_ms)
        })
        .await
    }

    async fn get_action(&self, id: &str) -> Result<Option<outbox::ActionRecord>, StoreError> {
        let id = id.to_owned();
        Self::with(&self.reader, move |c| outbox::action_by_id(c, &id)).await
    }

    async fn list_actions(
        &self,
        q: outbox::ActionQuery,
    ) -> Result<Vec<outbox::ActionRecord>, StoreError> {
        Self::with(&self.reader, move |c| outbox::list_actions(c, &q)).await
    }

    async fn retry_action(
        &self,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<(outbox::ActionRecord, bool)>, StoreError> {
        let id = id.to_owned();
        Self::with(&self.writer, move |c| outbox::retry_action(c, &id, now_ms)).await
    }

    async fn action_counts(
        &self,
    ) -> Result<std::collections::BTreeMap<(String, String), u64>, StoreError> {
        Self::with(&self.reader, |c| outbox::action_counts(c)).await
    }

    async fn backlog(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        Self::with(&self.reader, |c| outbox::backlog(c)).await
    }

    async fn step_ups_due(&self, now_ms: i64) -> Result<Vec<StepUpRecord>, StoreError> {
        Self::with(&self.reader, move |c| {
            outbox::step_ups_where(
                c,
                "state IN ('requested', 'in_progress') AND expires_at_ms <= ?1",
                now_ms.into(),
            )
        })
        .await
    }

    async fn step_ups_of(&self, original: &str) -> Result<Vec<StepUpRecord>, StoreError> {
        let original = original.to_owned();
        Self::with(&self.reader, move |c| {
            outbox::step_ups_where(c, "original_session_id = ?1", original.into())
        })
        .await
    }

    async fn endpoint(&self, url: &str) -> Result<outbox::EndpointState, StoreError> {
        let url = url.to_owned();
        Self::with(&self.reader, move |c| outbox::endpoint(c, &url)).await
    }

    async fn record_endpoint(
        &self,
        url: &str,
        error: Option<String>,
        now_ms: i64,
        disable_after: u32,
    ) -> Result<(outbox::EndpointState, bool), StoreError> {
        let url = url.to_owned();
        Self::with(&self.writer, move |c| {
            outbox::record_endpoint(c, &url, error.as_deref(), now_ms, disable_after)
        })
        .await
    }

    async fn enable_endpoint(&self, url: &str) -> Result<outbox::EndpointState, StoreError> {
        let url = url.to_owned();
        Self::with(&self.writer, move |c| outbox::enable_endpoint(c, &url)).await
    }
}

#[async_trait::async_trait]
impl audit::Audit for SqliteStore {
    async fn audit(&self, records: Vec<audit::NewAudit>) -> Result<(), StoreError> {
        let chain = self.chain.clone();
        Self::with(&self.writer, move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let appended = audit::append(&tx, &records, &chain)?;
            tx.commit()?;
            chain.committed(appended);
            Ok(())
        })
        .await
    }

    async fn list_audit(
        &self,
        since_ms: i64,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<audit::AuditRecord>, StoreError> {
        Self::with(&self.reader, move |c| {
            audit::list(c, since_ms, after_seq, limit)
        })
        .await
    }

    async fn verify_audit(&self) -> Result<audit::Verification, StoreError> {
        let key = self.audit_key().cloned();
        Self::with(&self.reader, move |c| audit::verify(c, key.as_ref())).await
    }

    fn audit_chain_broken(&self) -> bool {
        self.chain.is_broken()
    }
}

#[async_trait::async_trait]
impl crate::access::Access for SqliteStore {
    async fn create_token(
        &self,
        info: crate::access::TokenInfo,
        digest: String,
    ) -> Result<(), StoreError> {
        Self::with(&self.writer, move |c| {
            crate::access::insert_token(c, &info, &digest)
        })
        .await
    }

    async fn token_by_digest(
        &self,
        digest: &str,
    ) -> Result<Option<crate::access::TokenInfo>, StoreError> {
        let digest = digest.to_owned();
        Self::with(&self.reader, move |c| {
            crate::access::token_by_digest(c, &digest)
        })
        .await
    }

    async fn list_tokens(&self) -> Result<Vec<crate::access::TokenInfo>, StoreError> {
        Self::with(&self.reader, |c| crate::access::list_tokens(c)).await
    }

    async fn revoke_token(
        &self,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<crate::access::TokenInfo>, StoreError> {
        let id = id.to_owned();
        Self::with(&self.writer, move |c| {
            crate::access::revoke_token(c, &id, now_ms)
        })
        .await
    }

    async fn add_user(
        &self,
        user: crate::access::UserInfo,
        password_hash: String,
    ) -> Result<bool, StoreError> {
        Self::with(&self.writer, move |c| {
            crate::access::insert_user(c, &user, &password_hash)
        })
        .await
    }

    async fn list_users(&self) -> Result<Vec<crate::access::UserInfo>, StoreError> {
        Self::with(&self.reader, |c| crate::access::list_users(c)).await
    }

    async fn user_credentials(
        &self,
        username: &str,
    ) -> Result<Option<(crate::access::UserInfo, String)>, StoreError> {
        let username = username.to_owned();
        Self::with(&self.reader, move |c| {
            crate::access::user_credentials(c, &username)
        })
        .await
    }

    async fn begin_login(
        &self,
        username: &str,
        now_ms: i64,
        max_attempts: u32,
        lock_ms: i64,
    ) -> Result<crate::access::LoginAttempt, StoreError> {
        let username = username.to_owned();
        Self::with(&self.writer, move |c| {
            crate::access::begin_login(c, &username, now_ms, max_attempts, lock_ms)
        })
        .await
    }

    async fn clear_login(&self, username: &str) -> Result<bool, StoreError> {
        let username = username.to_owned();
        Self::with(&self.writer, move |c| {
            crate::access::clear_login(c, &username)
        })
        .await
    }

    async fn create_console_session(
        &self,
        digest: String,
        session: crate::access::ConsoleSession,
    ) -> Result<(), StoreError> {
        Self::with(&self.writer, move |c| {
            let tx = c.transaction()?;
            crate::access::insert_console_session(&tx, &digest, &session)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn console_session(
        &self,
        digest: &str,
        now_ms: i64,
    ) -> Result<Option<crate::access::ConsoleSession>, StoreError> {
        let digest = digest.to_owned();
        Self::with(&self.reader, move |c| {
            crate::access::console_session(c, &digest, now_ms)
        })
        .await
    }

    async fn delete_console_session(&self, digest: &str) -> Result<(), StoreError> {
        let digest = digest.to_owned();
        Self::with(&self.writer, move |c| {
            c.execute("DELETE FROM console_sessions WHERE digest = ?1", [digest])?;
            Ok(())
        })
        .await
    }
}

#[async_trait::async_trait]
impl crate::cases::Cases for SqliteStore {
    async fn queue(
        &self,
        q: crate::cases::CaseQuery,
    ) -> Result<crate::cases::CasePage, StoreError> {
        Self::with(&self.reader, move |c| crate::cases::queue(c, &q)).await
    }

    async fn assign(
        &self,
        session_id: &str,
        assignee: Option<String>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let session_id = session_id.to_owned();
        Self::with(&self.writer, move |c| {
            crate::cases::assign(c, &session_id, assignee.as_deref(), now_ms)
        })
        .await
    }

    async fn assignee(&self, session_id: &str) -> Result<Option<String>, StoreError> {
        let session_id = session_id.to_owned();
        Self::with(&self.reader, move |c| {
            crate::cases::assignee(c, &session_id)
        })
        .await
    }

    async fn decisions_over_time(
        &self,
        from_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<(i64, String, u64)>, StoreError> {
        Self::with(&self.reader, move |c| {
            crate::cases::decisions_over_time(c, from_ms, bucket_ms)
        })
        .await
    }

    async fn review_backlog(&self, now_ms: i64) -> Result<Vec<i64>, StoreError> {
        Self::with(&self.reader, move |c| {
            crate::cases::review_backlog(c, now_ms)
        })
        .await
    }

    async fn linked(
        &self,
        subject: &str,
        from_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        let subject = subject.to_owned();
        Self::with(&self.reader, move |c| {
            crate::cases::linked(c, &subject, from_ms, limit)
        })
        .await
    }
}

/// The conformance suite every [`Store`] backend runs: each check gets a
/// fresh, empty store from `make`.
#[cfg(any(test, feature = "testsuite"))]
pub mod suite {
    use super::*;
    use std::future::Future;

    fn record(seq: u64, id: &str, vendor: &str, status: &str) -> SessionRecord {
        SessionRecord {
            seq,
            session_id: id.to_owned(),
            vendor_data: Some(vendor.to_owned()),
            status: status.to_owned(),
            workflow_id: None,
            created_at_ms: seq as i64,
            updated_at_ms: seq as i64,
            doc: serde_json::json!({"history": [{"status": status}]}),
        }
    }

    pub async fn run_store_suite<F, Fut>(make: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Arc<dyn Store>>,
    {
        crate::suite::run_checks!(
            "store",
            make,
            [
                offsets_and_sessions_commit_together,
                a_stale_offset_writes_nothing,
                listing_pages_newest_first_with_filters,
                decisions_links_subjects_and_declines_commit_with_the_offset,
                shadow_pairs_match_each_active_decision_with_the_latest_shadow,
                load_sessions_returns_only_what_exists,
                awaiting_result_lists_sessions_still_waiting_for_didit,
                decisions_list_by_offset_both_ways_with_filters,
                the_policy_mark_moves_only_with_a_policy,
                a_link_seen_again_keeps_its_latest_time_and_subjects_their_latest_version,
                concurrent_commits_from_one_offset_apply_exactly_once,
                several_partitions_commit_together_or_not_at_all,
                cursors_are_named_values_that_last,
                a_fetch_is_taken_once_per_period_and_retried_until_confirmed,
                concurrent_takers_get_each_fetch_once,
            ]
        );
    }

    /// A projection of several partitions moves all their offsets in one
    /// commit; one of them not where the batch says refuses it all.
    async fn several_partitions_commit_together_or_not_at_all(s: Arc<dyn Store>) {
        let parts =
            |a: u64, b: u64| vec![("sessions/1".to_owned(), a), ("sessions/0".to_owned(), b)];
        let batch = |id: &str| ProjectionBatch {
            sessions: vec![record(1, id, "user-1", "Approved")],
            policy_offset: Some(4),
            ..ProjectionBatch::default()
        };
        s.commit("sessions/0", 0, 3, ProjectionBatch::default())
            .await
            .unwrap();
        // sessions/1 has never committed (0), sessions/0 is at 3.
        s.commit_partitions(&parts(0, 3), 5, batch("together"))
            .await
            .unwrap();
        for c in ["sessions/0", "sessions/1"] {
            assert_eq!(s.consumer_offset(c).await.unwrap(), 5, "{c}");
            let mark = format!("{c}{POLICY_MARK_SUFFIX}");
            assert_eq!(s.consumer_offset(&mark).await.unwrap(), 4, "{mark}");
        }
        let refused = s.commit_partitions(&parts(5, 4), 9, batch("refused")).await;
        assert!(
            matches!(
                &refused,
                Err(StoreError::OffsetConflict { consumer, current: 5, expected: 4 })
                    if consumer == "sessions/0"
            ),
            "{refused:?}"
        );
        for c in ["sessions/0", "sessions/1"] {
            assert_eq!(s.consumer_offset(c).await.unwrap(), 5, "{c} did not move");
        }
        assert!(s.get_session("refused").await.unwrap().is_none());
        assert!(s.get_session("together").await.unwrap().is_some());
    }

    async fn cursors_are_named_values_that_last(s: Arc<dyn Store>) {
        assert_eq!(s.get_cursor("reconcile/listing").await.unwrap(), None);
        s.set_cursor("reconcile/listing", "{\"through_ms\":5}")
            .await
            .unwrap();
        s.set_cursor("other", "x").await.unwrap();
        s.set_cursor("reconcile/listing", "{\"through_ms\":7}")
            .await
            .unwrap();
        assert_eq!(
            s.get_cursor("reconcile/listing").await.unwrap().as_deref(),
            Some("{\"through_ms\":7}")
        );
        assert_eq!(s.get_cursor("other").await.unwrap().as_deref(), Some("x"));
    }

    async fn a_fetch_is_taken_once_per_period_and_retried_until_confirmed(s: Arc<dyn Store>) {
        let ids = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        // Every period is 100 ms; a and b are taken at 1000.
        assert_eq!(
            s.take_fetches(&ids(&["a", "b"]), 1000, 100).await.unwrap(),
            ids(&["a", "b"])
        );
        // Within the period neither is taken again; c is new.
        assert_eq!(
            s.take_fetches(&ids(&["b", "c", "a"]), 1099, 100)
                .await
                .unwrap(),
            ids(&["c"])
        );
        s.fetch_succeeded("a").await.unwrap();
        // b and c are unconfirmed (failed, or their process died); only
        // those last taken by then come back.
        assert_eq!(s.unconfirmed_fetches(1000, 10).await.unwrap(), ids(&["b"]));
        assert_eq!(
            s.unconfirmed_fetches(2000, 10).await.unwrap(),
            ids(&["b", "c"])
        );
        assert_eq!(s.unconfirmed_fetches(2000, 1).await.unwrap(), ids(&["b"]));
        // A period later all are due again; b stays unconfirmed since 1000.
        assert_eq!(
            s.take_fetches(&ids(&["a", "b"]), 1100, 100).await.unwrap(),
            ids(&["a", "b"])
        );
        s.fetch_succeeded("a").await.unwrap();
        // Oldest take first: c (1099), then b (1100).
        assert_eq!(
            s.unconfirmed_fetches(2000, 10).await.unwrap(),
            ids(&["c", "b"])
        );
        // Confirmed fetches taken by 1100 are forgotten, and unconfirmed
        // ones first taken by 1000 (b): c stays.
        assert_eq!(s.forget_fetches(1100, 1000).await.unwrap(), 2);
        assert_eq!(s.unconfirmed_fetches(2000, 10).await.unwrap(), ids(&["c"]));
        // a was forgotten, so it is taken again at once.
        assert_eq!(
            s.take_fetches(&ids(&["a", "c"]), 1101, 100).await.unwrap(),
            ids(&["a"])
        );
        assert!(s.take_fetches(&[], 1101, 100).await.unwrap().is_empty());
    }

    async fn concurrent_takers_get_each_fetch_once(s: Arc<dyn Store>) {
        let ids: Vec<String> = (0..50).map(|i| format!("s{i}")).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (s, ids) = (s.clone(), ids.clone());
            tasks.spawn(async move { s.take_fetches(&ids, 5000, 1000).await.unwrap() });
        }
        let mut all = Vec::new();
        while let Some(got) = tasks.join_next().await {
            all.extend(got.unwrap());
        }
        all.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(all, want, "each session taken by exactly one caller");
    }

    async fn load_sessions_returns_only_what_exists(s: Arc<dyn Store>) {
        assert!(s.load_sessions(&[]).await.unwrap().is_empty());
        let a = record(1, "a", "u1", "In Progress");
        let b = record(2, "b", "u2", "Approved");
        s.commit_sessions("p", 0, 2, vec![a.clone(), b.clone()])
            .await
            .unwrap();
        let loaded = s
            .load_sessions(&["b".into(), "missing".into(), "a".into(), "a".into()])
            .await
            .unwrap();
        assert_eq!(loaded.len(), 2, "found sessions only, each once");
        assert_eq!(loaded["a"], a);
        assert_eq!(loaded["b"], b);
        // An update keeps the session's first seq and creation time.
        let mut later = record(9, "a", "u1", "Approved");
        later.created_at_ms = 500;
        later.updated_at_ms = 900;
        s.commit_sessions("p", 2, 3, vec![later]).await.unwrap();
        let a2 = s.get_session("a").await.unwrap().unwrap();
        assert_eq!((a2.seq, a2.created_at_ms), (1, 1), "seq and creation stay");
        assert_eq!((a2.status.as_str(), a2.updated_at_ms), ("Approved", 900));
        let empty = s
            .list_sessions(SessionQuery {
                limit: 0,
                ..SessionQuery::default()
            })
            .await
            .unwrap();
        assert!(empty.is_empty(), "a limit of 0 lists nothing");
    }

    async fn awaiting_result_lists_sessions_still_waiting_for_didit(s: Arc<dyn Store>) {
        let with_doc = |seq: u64, id: &str, status: &str, doc: serde_json::Value| SessionRecord {
            doc,
            updated_at_ms: 100 + seq as i64,
            ..record(seq, id, "u", status)
        };
        let decided = serde_json::json!({"decision": {"id": "dec", "outcome": "approve"}});
        let sessions = vec![
            with_doc(1, "in-progress", "In Progress", serde_json::json!({})),
            with_doc(2, "not-started", "Not Started", serde_json::json!({})),
            with_doc(3, "approved-decided", "Approved", decided.clone()),
            with_doc(4, "approved-undecided", "Approved", serde_json::json!({})),
            with_doc(
                5,
                "declined-null",
                "Declined",
                serde_json::json!({"decision": null}),
            ),
            with_doc(6, "review-decided", "In Review", decided.clone()),
            with_doc(7, "expired", "Expired", serde_json::json!({})),
            with_doc(8, "abandoned-decided", "Abandoned", decided),
            with_doc(
                9,
                "step-up",
                "Approved",
                serde_json::json!({"step_up_of": "approved-decided"}),
            ),
            with_doc(10, "resubmitted", "Resubmitted", serde_json::json!({})),
        ];
        s.commit_sessions("p", 0, 10, sessions).await.unwrap();
        let awaiting = |updated_until_ms| {
            let s = s.clone();
            async move {
                s.list_sessions(SessionQuery {
                    awaiting_result: true,
                    updated_until_ms,
                    limit: 100,
                    ..SessionQuery::default()
                })
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.session_id)
                .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            awaiting(None).await,
            [
                "resubmitted",
                "declined-null",
                "approved-undecided",
                "not-started",
                "in-progress"
            ],
            "unfinished, or finished at Didit without a decision here (step-ups aside)"
        );
        assert_eq!(
            awaiting(Some(104)).await,
            ["not-started", "in-progress"],
            "updated_until_ms is exclusive"
        );
        let all = s
            .list_sessions(SessionQuery {
                limit: 100,
                ..SessionQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 10, "without the filter every session is listed");
    }

    async fn decisions_list_by_offset_both_ways_with_filters(s: Arc<dyn Store>) {
        let mut decisions: Vec<DecisionRecord> = (1..=6)
            .map(|i| {
                decision(
                    &format!("dec_{i}"),
                    i,
                    if i % 2 == 0 { "decline" } else { "approve" },
                    false,
                )
            })
            .collect();
        decisions[4].session_id = "s1".into();
        decisions.push(decision("dec_shadow_2", 2, "review", true));
        s.commit(
            "p",
            0,
            6,
            ProjectionBatch {
                decisions,
                ..ProjectionBatch::default()
            },
        )
        .await
        .unwrap();
        let list = |f: &dyn Fn(&mut DecisionQuery)| {
            let mut q = DecisionQuery {
                limit: 100,
                ..DecisionQuery::default()
            };
            f(&mut q);
            let s = s.clone();
            async move {
                s.list_decisions(q)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|d| d.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            list(&|_| {}).await,
            ["dec_6", "dec_5", "dec_4", "dec_3", "dec_2", "dec_1"],
            "active, newest first"
        );
        assert_eq!(list(&|q| q.limit = 2).await, ["dec_6", "dec_5"]);
        assert_eq!(
            list(&|q| {
                q.before_offset = Some(5);
                q.limit = 2;
            })
            .await,
            ["dec_4", "dec_3"],
            "before_offset is exclusive"
        );
        assert_eq!(
            list(&|q| {
                q.after_offset = Some(2);
                q.limit = 3;
            })
            .await,
            ["dec_3", "dec_4", "dec_5"],
            "after_offset: oldest first from there, exclusive"
        );
        assert_eq!(
            list(&|q| {
                q.after_offset = Some(1);
                q.before_offset = Some(4);
            })
            .await,
            ["dec_2", "dec_3"]
        );
        assert_eq!(
            list(&|q| q.session_id = Some("s1".into())).await,
            ["dec_5", "dec_1"]
        );
        assert_eq!(
            list(&|q| q.outcome = Some("decline".into())).await,
            ["dec_6", "dec_4", "dec_2"]
        );
        assert_eq!(
            list(&|q| q.shadow = true).await,
            ["dec_shadow_2"],
            "shadow decisions apart"
        );
        assert!(list(&|q| q.limit = 0).await.is_empty());
        assert!(s.get_decision("dec_missing").await.unwrap().is_none());
        let d5 = s.get_decision("dec_5").await.unwrap().unwrap();
        assert_eq!(
            s.decision_for_event(5, "s1", false).await.unwrap(),
            Some(d5),
            "by event and session"
        );
        assert!(s
            .decision_for_event(5, "s5", false)
            .await
            .unwrap()
            .is_none());
        assert!(s
            .decision_for_event(99, "s1", false)
            .await
            .unwrap()
            .is_none());
    }

    async fn the_policy_mark_moves_only_with_a_policy(s: Arc<dyn Store>) {
        let mark = format!("p{POLICY_MARK_SUFFIX}");
        assert_eq!(s.consumer_offset(&mark).await.unwrap(), 0);
        s.commit(
            "p",
            0,
            4,
            ProjectionBatch {
                policy_offset: Some(3),
                ..ProjectionBatch::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(s.consumer_offset("p").await.unwrap(), 4);
        assert_eq!(s.consumer_offset(&mark).await.unwrap(), 3);
        s.commit("p", 4, 8, ProjectionBatch::default())
            .await
            .unwrap();
        assert_eq!(
            s.consumer_offset(&mark).await.unwrap(),
            3,
            "kept without a new policy"
        );
        let refused = s
            .commit(
                "p",
                4,
                9,
                ProjectionBatch {
                    policy_offset: Some(9),
                    ..ProjectionBatch::default()
                },
            )
            .await;
        assert!(matches!(
            refused,
            Err(StoreError::OffsetConflict {
                current: 8,
                expected: 4,
                ..
            })
        ));
        assert_eq!(
            s.consumer_offset(&mark).await.unwrap(),
            3,
            "a refused commit moves no mark"
        );
        assert_eq!(s.consumer_offset("p").await.unwrap(), 8);
    }

    async fn a_link_seen_again_keeps_its_latest_time_and_subjects_their_latest_version(
        s: Arc<dyn Store>,
    ) {
        let link = |subject: &str, offset: u64, at_ms: i64| IdentityLink {
            kind: "ip".into(),
            value: "h".into(),
            subject: subject.into(),
            offset,
            at_ms,
        };
        let version = |offset: u64, a: i64| SubjectVersion {
            subject: "u1".into(),
            offset,
            at_ms: offset as i64 * 10,
            attributes: serde_json::json!({ "a": a }),
        };
        s.commit(
            "p",
            0,
            2,
            ProjectionBatch {
                links: vec![link("u1", 1, 500), link("u2", 2, 200)],
                subjects: vec![version(2, 2)],
                ..ProjectionBatch::default()
            },
        )
        .await
        .unwrap();
        s.commit(
            "p",
            2,
            4,
            ProjectionBatch {
                // Seen again with an older time (a polled decision about
                // an old event): the latest time stays.
                links: vec![link("u1", 3, 100), link("u2", 4, 300)],
                subjects: vec![version(4, 4)],
                ..ProjectionBatch::default()
            },
        )
        .await
        .unwrap();
        let ctx = s
            .graph_context(GraphQuery {
                values: vec![("ip".into(), "h".into())],
                limit: 10,
                ..GraphQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(
            ctx.linked[&("ip".to_owned(), "h".to_owned())],
            vec![("u1".to_owned(), 500), ("u2".to_owned(), 300)]
        );
        let mut recent = s.linked_subjects("ip", "h", 400).await.unwrap();
        recent.sort();
        assert_eq!(recent, ["u1"]);
        assert!(s
            .linked_subjects("ip", "other", 0)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            s.subject("u1").await.unwrap(),
            Some(version(4, 4)),
            "the latest version"
        );
        assert!(s.declined_sessions("u1").await.unwrap().is_empty());
    }

    /// Several projectors commit the same position at once: one commit
    /// wins, the others are refused with [`StoreError::OffsetConflict`]
    /// and write nothing.
    async fn concurrent_commits_from_one_offset_apply_exactly_once(s: Arc<dyn Store>) {
        const RACERS: u64 = 8;
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..RACERS {
            let s = s.clone();
            tasks.spawn(async move {
                let batch = ProjectionBatch {
                    sessions: vec![record(n + 1, &format!("racer-{n}"), "u", "Approved")],
                    decisions: vec![decision(&format!("dec_racer_{n}"), n + 1, "approve", false)],
                    ..ProjectionBatch::default()
                };
                (n, s.commit("p", 0, 10 + n, batch).await)
            });
        }
        let mut winners = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (n, result) = joined.expect("commit task");
            match result {
                Ok(()) => winners.push(n),
                Err(StoreError::OffsetConflict {
                    expected: 0,
                    current,
                    ..
                }) => {
                    assert!(
                        current >= 10,
                        "refused because another got there: {current}"
                    )
                }
                Err(e) => panic!("racer {n}: expected success or OffsetConflict, got {e}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "exactly one commit from offset 0 applies: {winners:?}"
        );
        let w = winners[0];
        assert_eq!(s.consumer_offset("p").await.unwrap(), 10 + w);
        for n in 0..RACERS {
            let session = s.get_session(&format!("racer-{n}")).await.unwrap();
            let decided = s.get_decision(&format!("dec_racer_{n}")).await.unwrap();
            assert_eq!(session.is_some(), n == w, "racer {n}'s session");
            assert_eq!(decided.is_some(), n == w, "racer {n}'s decision");
        }
        // The winner's own batch again, from the same offset: refused too.
        let again = s
            .commit_sessions("p", 0, 10 + w, vec![record(99, "late", "u", "Approved")])
            .await;
        assert!(
            matches!(again, Err(StoreError::OffsetConflict { .. })),
            "{again:?}"
        );
        assert!(s.get_session("late").await.unwrap().is_none());
    }

    async fn shadow_pairs_match_each_active_decision_with_the_latest_shadow(s: Arc<dyn Store>) {
        let mut older_shadow = decision("dec_s2_old", 2, "approve", true);
        older_shadow.policy_version = "v0".into();
        let batch = ProjectionBatch {
            decisions: vec![
                decision("dec_1", 1, "approve", false),
                decision("dec_s1", 1, "review", true),
                decision("dec_2", 2, "decline", false),
                older_shadow,
                decision("dec_s2", 2, "decline", true),
                // No shadow decision on this event: not compared.
                decision("dec_3", 3, "approve", false),
            ],
            ..ProjectionBatch::default()
        };
        s.commit("p", 0, 3, batch).await.unwrap();
        let pairs = s.shadow_pairs(10).await.unwrap();
        let seen: Vec<(&str, &str, &str)> = pairs
            .iter()
            .map(|p| {
                (
                    p.decision_id.as_str(),
                    p.active.as_str(),
                    p.shadow_decision_id.as_str(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("dec_2", "decline", "dec_s2"),
                ("dec_1", "approve", "dec_s1")
            ],
            "newest first, the latest shadow per event"
        );
        assert_eq!(pairs[1].shadow, "review");
        // The limit counts the latest active decisions, compared or not.
        let pairs = s.shadow_pairs(2).await.unwrap();
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].decision_id, "dec_2");
    }

    pub(crate) fn decision(id: &str, offset: u64, outcome: &str, shadow: bool) -> DecisionRecord {
        DecisionRecord {
            id: id.to_owned(),
            event_offset: offset,
            session_id: format!("s{offset}"),
            subject: Some("u1".into()),
            policy_version: "v1".into(),
            shadow,
            outcome: outcome.to_owned(),
            score: 12.5,
            decided_at_ms: offset as i64,
            decided_by: None,
            doc: serde_json::json!({"outcome": outcome, "reasons": []}),
        }
    }

    async fn decisions_links_subjects_and_declines_commit_with_the_offset(s: Arc<dyn Store>) {
        let link = |subject: &str, offset: u64, at_ms: i64| IdentityLink {
            kind: "document".into(),
            value: "h1".into(),
            subject: subject.into(),
            offset,
            at_ms,
        };
        let batch = ProjectionBatch {
            decisions: vec![
                decision("dec_1", 1, "approve", false),
                decision("dec_2", 2, "decline", false),
                decision("dec_3", 2, "review", true),
            ],
            links: vec![
                link("u1", 1, 100),
                link("u2", 2, 200),
                link("u2", 3, 300),
                link("u3", 3, 50),
            ],
            subjects: vec![
                SubjectVersion {
                    subject: "u1".into(),
                    offset: 1,
                    at_ms: 1,
                    attributes: serde_json::json!({"a": 1}),
                },
                SubjectVersion {
                    subject: "u1".into(),
                    offset: 3,
                    at_ms: 3,
                    attributes: serde_json::json!({"a": 2}),
                },
            ],
            declines: vec![("u1".into(), "s2".into(), 2), ("u1".into(), "s2".into(), 3)],
            ..ProjectionBatch::default()
        };
        s.commit("p", 0, 3, batch.clone()).await.unwrap();
        // The same batch again is refused by the offset check and writes nothing.
        assert!(s.commit("p", 0, 3, batch).await.is_err());
        let mut linked = s.linked_subjects("document", "h1", 100).await.unwrap();
        linked.sort();
        assert_eq!(linked, vec!["u1", "u2"], "u3's link is outside the window");
        let h1 = ("document".to_owned(), "h1".to_owned());
        let ctx = s
            .graph_context(GraphQuery {
                values: vec![h1.clone(), ("ip".into(), "h1".into())],
                subjects: vec!["u1".into(), "u2".into()],
                from_ms: 100,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(
            ctx.linked[&h1],
            vec![("u2".to_owned(), 300), ("u1".to_owned(), 100)],
            "one row per subject, last seen first, inside the window"
        );
        assert_eq!(ctx.linked.len(), 1, "the ip value has no links");
        assert_eq!(ctx.attributes["u1"], serde_json::json!({"a": 2}));
        assert!(!ctx.attributes.contains_key("u2"));
        assert_eq!(ctx.declined["u1"], vec!["s2"]);
        assert!(!ctx.declined.contains_key("u2"));
        let capped = s
            .graph_context(GraphQuery {
                values: vec![h1.clone()],
                from_ms: 0,
                limit: 2,
                ..GraphQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(
            capped.linked[&h1],
            vec![("u2".to_owned(), 300), ("u1".to_owned(), 100)],
            "the limit keeps the most recently seen subjects"
        );
        assert_eq!(
            s.subject("u1").await.unwrap().unwrap().attributes,
            serde_json::json!({"a": 2})
        );
        assert!(s.subject("nobody").await.unwrap().is_none());
        assert_eq!(s.declined_sessions("u1").await.unwrap(), vec!["s2"]);
        assert_eq!(
            s.get_decision("dec_2").await.unwrap().unwrap(),
            decision("dec_2", 2, "decline", false)
        );
        let newest = s
            .list_decisions(DecisionQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            newest.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            ["dec_2", "dec_1"]
        );
        let declines = s
            .list_decisions(DecisionQuery {
                outcome: Some("decline".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(declines.len(), 1);
        let oldest_first = s
            .list_decisions(DecisionQuery {
                after_offset: Some(0),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(oldest_first[0].id, "dec_1");
        assert_eq!(
            s.decision_for_event(2, "s2", true)
                .await
                .unwrap()
                .unwrap()
                .id,
            "dec_3"
        );
        assert!(s.decision_for_event(1, "s1", true).await.unwrap().is_none());
    }

    async fn offsets_and_sessions_commit_together(s: Arc<dyn Store>) {
        assert_eq!(s.consumer_offset("p").await.unwrap(), 0);
        s.commit_sessions("p", 0, 2, vec![record(1, "a", "u1", "In Progress")])
            .await
            .unwrap();
        assert_eq!(s.consumer_offset("p").await.unwrap(), 2);
        assert_eq!(s.consumer_offset("other").await.unwrap(), 0);
        let mut updated = record(1, "a", "u1", "Approved");
        updated.updated_at_ms = 9;
        s.commit_sessions("p", 2, 3, vec![updated.clone()])
            .await
            .unwrap();
        let got = s.get_session("a").await.unwrap().unwrap();
        assert_eq!(got, updated);
        let loaded = s
            .load_sessions(&["a".into(), "missing".into()])
            .await
            .unwrap();
        assert_eq!(loaded.len(), 1);
        assert!(s.get_session("missing").await.unwrap().is_none());
    }

    async fn a_stale_offset_writes_nothing(s: Arc<dyn Store>) {
        s.commit_sessions("p", 0, 5, vec![record(1, "a", "u1", "In Progress")])
            .await
            .unwrap();
        let err = s
            .commit_sessions("p", 3, 6, vec![record(4, "b", "u2", "Approved")])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::OffsetConflict { current: 5, .. }),
            "{err}"
        );
        assert!(s.get_session("b").await.unwrap().is_none());
        assert_eq!(s.consumer_offset("p").await.unwrap(), 5);
    }

    async fn listing_pages_newest_first_with_filters(s: Arc<dyn Store>) {
        let recs: Vec<_> = (1..=7)
            .map(|i| {
                record(
                    i,
                    &format!("s{i}"),
                    if i % 2 == 0 { "even" } else { "odd" },
                    if i <= 3 { "Approved" } else { "Declined" },
                )
            })
            .collect();
        s.commit_sessions("p", 0, 7, recs).await.unwrap();
        let page = |before, vendor: Option<&str>, status: Option<&str>| {
            let s = s.clone();
            let q = SessionQuery {
                vendor_data: vendor.map(str::to_owned),
                status: status.map(str::to_owned),
                before_seq: before,
                limit: 3,
                ..SessionQuery::default()
            };
            async move {
                s.list_sessions(q)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| r.seq)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(page(None, None, None).await, vec![7, 6, 5]);
        assert_eq!(page(Some(5), None, None).await, vec![4, 3, 2]);
        assert_eq!(page(Some(2), None, None).await, vec![1]);
        assert_eq!(page(None, Some("even"), None).await, vec![6, 4, 2]);
        assert_eq!(page(None, None, Some("Approved")).await, vec![3, 2, 1]);
        assert_eq!(page(None, Some("odd"), Some("Declined")).await, vec![7, 5]);
        let window = SessionQuery {
            created_from_ms: Some(3),
            created_until_ms: Some(6),
            limit: 10,
            ..SessionQuery::default()
        };
        let seqs: Vec<u64> = s
            .list_sessions(window)
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, vec![5, 4, 3]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_text_is_the_display_form_byte_for_byte() {
        let v = serde_json::json!({"b": [1, 2.5, -0.0, 1e300], "a": "J\u{00fc}rgen \"q\" \n \u{2028}",
            "c": {"z": null, "y": true}, "d": 18446744073709551615u64});
        assert_eq!(json_text(&v), v.to_string());
    }

    #[tokio::test]
    async fn sqlite_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let n = std::sync::atomic::AtomicUsize::new(0);
        suite::run_store_suite(|| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let path = dir.path().join(format!("store-{i}.db"));
            async move { Arc::new(SqliteStore::open(&path, true).unwrap()) as Arc<dyn Store> }
        })
        .await;
    }

    #[tokio::test]
    async fn sessions_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let s = SqliteStore::open(&path, true).unwrap();
            s.commit_sessions("p", 0, 1, vec![suite_record()])
                .await
                .unwrap();
        }
        let s = SqliteStore::open(&path, true).unwrap();
        assert_eq!(s.consumer_offset("p").await.unwrap(), 1);
        assert_eq!(
            s.get_session("a").await.unwrap().unwrap().status,
            "Approved"
        );
    }

    fn page_size(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn a_new_store_uses_small_pages_and_an_old_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.db");
        drop(SqliteStore::open(&new, false).unwrap());
        assert_eq!(page_size(&new), PAGE_SIZE);
        let scratch = dir.path().join("scratch.db");
        drop(SqliteStore::open_scratch(&scratch).unwrap());
        assert_eq!(page_size(&scratch), SCRATCH_PAGE_SIZE);

        // A store made before with other pages (not SQLite's default, so
        // that keeping them is not mistaken for a fallback) and WAL mode.
        let old = dir.path().join("old.db");
        {
            let c = Connection::open(&old).unwrap();
            c.pragma_update(None, "page_size", 8192).unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
            c.execute_batch(SCHEMA).unwrap();
        }
        {
            let s = SqliteStore::open(&old, false).unwrap();
            s.commit_sessions("p", 0, 1, vec![suite_record()])
                .await
                .unwrap();
        }
        assert_eq!(page_size(&old), 8192);
        let s = SqliteStore::open(&old, false).unwrap();
        assert_eq!(s.consumer_offset("p").await.unwrap(), 1);
        assert_eq!(
            s.get_session("a").await.unwrap().unwrap().status,
            "Approved"
        );
    }

    #[tokio::test]
    async fn one_event_decides_several_sessions_and_an_old_store_is_migrated_for_it() {
        // A store made before one event could decide several sessions (a
        // step-up session and its original): its decisions were unique per
        // event, policy and shadow.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let c = Connection::open(&path).unwrap();
            let old = SCHEMA.replace(
                "UNIQUE (event_offset, session_id, policy_version, shadow)",
                "UNIQUE (event_offset, policy_version, shadow)",
            );
            assert_ne!(old, SCHEMA);
            c.execute_batch(&old).unwrap();
            c.execute(
                "INSERT INTO decisions (id, event_offset, session_id, subject, policy_version, shadow, outcome, score, decided_at_ms, doc)
                 VALUES ('dec_0', 1, 's1', 'u1', 'v1', 0, 'approve', 0, 1, '{}')",
                [],
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path, true).unwrap();
        assert_eq!(
            s.get_decision("dec_0").await.unwrap().unwrap().outcome,
            "approve"
        );
        let mut step_up = suite::decision("dec_a", 2, "approve", false);
        step_up.session_id = "step-up".into();
        let mut original = suite::decision("dec_b", 2, "approve", false);
        original.session_id = "original".into();
        s.commit(
            "p",
            0,
            2,
            ProjectionBatch {
                decisions: vec![step_up, original],
                ..ProjectionBatch::default()
            },
        )
        .await
        .unwrap();
        for (session, id) in [("step-up", "dec_a"), ("original", "dec_b")] {
            let found = s.decision_for_event(2, session, false).await.unwrap();
            assert_eq!(found.unwrap().id, id);
        }
    }

    #[tokio::test]
    async fn links_from_the_old_per_link_table_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE identity_links (kind TEXT NOT NULL, value TEXT NOT NULL,
                   subject TEXT NOT NULL, event_offset INTEGER NOT NULL, at_ms INTEGER NOT NULL);
                 INSERT INTO identity_links VALUES ('ip', 'h', 'u1', 1, 10), ('ip', 'h', 'u1', 4, 40),
                   ('ip', 'h', 'u2', 2, 20);",
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path, true).unwrap();
        let ctx = s
            .graph_context(GraphQuery {
                values: vec![("ip".into(), "h".into())],
                limit: 10,
                ..GraphQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(
            ctx.linked[&("ip".to_owned(), "h".to_owned())],
            vec![("u1".to_owned(), 40), ("u2".to_owned(), 20)]
        );
        // The old table is gone, so opening again migrates nothing.
        drop(s);
        let c = Connection::open(&path).unwrap();
        let old: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'identity_links'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old, 0);
        SqliteStore::open(&path, true).unwrap();
    }

    fn suite_record() -> SessionRecord {
        SessionRecord {
            seq: 1,
            session_id: "a".into(),
            vendor_data: None,
            status: "Approved".into(),
            workflow_id: None,
            created_at_ms: 1,
            updated_at_ms: 1,
            doc: serde_json::json!({}),
        }
    }
}

//! The embedded [`EventLog`]: one SQLite file in WAL mode, written by a single
//! thread that commits appends in groups.
//!
//! # Why group commit
//!
//! An append may only be acknowledged once it is durable, and durability
//! costs an fsync, which takes from tens of microseconds to several
//! milliseconds depending on the disk. One fsync per append would cap the
//! intake at a few hundred to a few thousand webhooks per second. Instead, a
//! dedicated OS thread owns the only write connection; appends queue up
//! behind it while it is syncing, and it commits everything that queued in
//! ONE transaction with ONE fsync. Under load the batch grows by itself, so
//! throughput scales with concurrency while a lone append still commits
//! immediately (there is no timer waiting for a batch to fill).
//!
//! # Guarantees
//!
//! - Every waiter is answered only after `COMMIT` returned, so an append that
//!   was acknowledged survives a kill of the process at any point (and a
//!   power loss, with [`Durability::Full`]).
//! - A batch is all or nothing: if any statement or the commit fails, the
//!   transaction is rolled back and every waiter in the batch gets
//!   [`LogError::Unavailable`]. Retries are safe because of dedupe.
//! - Offsets are SQLite rowids assigned inside the single writer's
//!   transaction: dense, starting at 1, in commit order. Rows are never
//!   deleted, so an offset is never reused.
//! - Reads use separate read-only connections on `spawn_blocking`; WAL lets
//!   them run concurrently with the writer and see only committed batches.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kycd_core::id::ulid_body;
use kycd_core::EventId;
use rusqlite::types::Type;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use tokio::sync::{mpsc, oneshot, watch};

use crate::log::{
    Appended, EventLog, EventSource, LogError, NewEvent, NewQuarantine, Quarantined, StoredEvent,
    QUARANTINE_ID_PREFIX,
};

/// How hard a commit works to survive a crash. In configuration files it is
/// spelled `"full"` or `"normal"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous=FULL`: the WAL is fsynced at every commit (and
    /// `fullfsync` is on, which matters on macOS), so an acknowledged append
    /// survives power loss and kernel panics. Costs one fsync per batch; group
    /// commit amortises it across concurrent appends.
    #[default]
    Full,
    /// `synchronous=NORMAL`: the WAL is fsynced only at checkpoints. An
    /// acknowledged append survives a crash or kill of the process (the data
    /// is in the OS page cache), but the last commits before a power loss or
    /// OS crash may be lost, and the provider is not asked to redeliver them.
    /// The database itself never corrupts. Use only where losing the last
    /// moments of webhooks on power loss is acceptable (tests, demos, or a
    /// disk with its own power-loss protection and `Full` measured as a
    /// bottleneck).
    Normal,
}

/// Options for [`SqliteLog::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteLogOptions {
    pub durability: Durability,
    /// The most requests committed in one transaction. Larger batches
    /// amortise the fsync further but make each waiter wait for more work;
    /// 512 keeps a batch well under a few milliseconds of CPU.
    pub max_batch: usize,
    /// A cap on the database size. Writes that would grow it past the cap
    /// fail with [`LogError::Unavailable`] (the intake answers 503) instead of
    /// filling the disk that other things depend on. `None` means no cap
    /// beyond the disk.
    pub max_db_bytes: Option<u64>,
}

impl Default for SqliteLogOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            max_batch: 512,
            max_db_bytes: None,
        }
    }
}

/// Counters about the writer, for tests and diagnostics. The same numbers
/// are exported through the `metrics` facade.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqliteLogStats {
    /// Transactions committed.
    pub batches: u64,
    /// Requests (appends and quarantines) in committed transactions.
    pub requests: u64,
    /// The largest committed batch so far.
    pub largest_batch: u64,
    /// Transactions that failed and were rolled back.
    pub failed_batches: u64,
}

/// Marks the file as a kycd event log, so that opening some other SQLite
/// database (the projection store, say) by mistake fails instead of adding
/// tables to it. ASCII "kylg".
const APPLICATION_ID: i32 = 0x6B79_6C67;

/// How long a connection waits for a lock held by another connection (a
/// checkpoint, or another process that opened the same file) before the
/// request fails with `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle read connections kept for reuse; more are opened on demand.
const MAX_IDLE_READERS: usize = 4;

/// Schema migrations; `PRAGMA user_version` is the number applied. Never edit
/// a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: events, the dedupe index and the quarantine.
    //
    // `offset` is the rowid, so appends go to the end of the table's B-tree
    // and reads by offset range are a single seek. `dedupe` is WITHOUT ROWID
    // so that the key is the clustering key: one B-tree per lookup instead
    // of an index plus a table. STRICT makes SQLite enforce the column types.
    r#"
    CREATE TABLE events (
        offset          INTEGER PRIMARY KEY,
        id              TEXT    NOT NULL UNIQUE,
        received_at_ms  INTEGER NOT NULL,
        source          TEXT    NOT NULL,
        kind            TEXT    NOT NULL,
        session_id      TEXT,
        didit_event_id  TEXT,
        dedupe_keys     TEXT    NOT NULL,
        body            BLOB    NOT NULL,
        meta            TEXT    NOT NULL
    ) STRICT;

    CREATE TABLE dedupe (
        key             TEXT    PRIMARY KEY,
        event_offset    INTEGER NOT NULL
    ) WITHOUT ROWID, STRICT;

    CREATE TABLE quarantine (
        seq             INTEGER PRIMARY KEY,
        id              TEXT    NOT NULL UNIQUE,
        received_at_ms  INTEGER NOT NULL,
        reason          TEXT    NOT NULL,
        body            BLOB    NOT NULL,
        meta            TEXT    NOT NULL
    ) STRICT;
    "#,
];

const EVENT_COLUMNS: &str =
    "offset, id, received_at_ms, source, kind, session_id, didit_event_id, dedupe_keys, body, meta";

/// The id of the event that recorded `key`, if any.
const FIND_DEDUPE: &str =
    "SELECT e.id FROM dedupe d JOIN events e ON e.offset = d.event_offset WHERE d.key = ?1";
const INSERT_EVENT: &str = "INSERT INTO events \
     (id, received_at_ms, source, kind, session_id, didit_event_id, dedupe_keys, body, meta) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
/// `OR IGNORE` only ever skips a key listed twice in the same event: every
/// key was checked absent just before.
const INSERT_DEDUPE: &str = "INSERT OR IGNORE INTO dedupe (key, event_offset) VALUES (?1, ?2)";
const INSERT_QUARANTINE: &str =
    "INSERT INTO quarantine (id, received_at_ms, reason, body, meta) VALUES (?1, ?2, ?3, ?4, ?5)";
/// [`EventLog::probe_write`], in a table of its own and a savepoint of its
/// own, so that a probe that fails fails alone and never the appends
/// committed beside it: a row the size of a large delivery inserted and
/// rolled back, which needs room in the file as an append does (so a log at
/// `max_db_bytes` fails it like an append), and one small row rewritten, so
/// the commit writes to disk like an append's. Created on first use rather
/// than by a migration: it holds nothing anyone reads, and a log written by
/// a version without it keeps the same schema version.
const PROBE_WRITE: &str = "SAVEPOINT probe; \
     CREATE TABLE IF NOT EXISTS write_probe \
     (id INTEGER PRIMARY KEY, probes INTEGER NOT NULL, pad BLOB) STRICT; \
     SAVEPOINT room; \
     INSERT INTO write_probe (id, probes, pad) VALUES (2, 0, zeroblob(16384)) \
     ON CONFLICT (id) DO UPDATE SET pad = zeroblob(16384); \
     ROLLBACK TO room; \
     RELEASE room; \
     INSERT INTO write_probe (id, probes) VALUES (1, 1) \
     ON CONFLICT (id) DO UPDATE SET probes = probes + 1; \
     RELEASE probe";
/// Undo a probe that failed halfway, leaving the rest of its batch.
const PROBE_UNDO: &str = "ROLLBACK TO probe; RELEASE probe";

/// The SQLite-backed [`EventLog`]. See the module documentation.
///
/// Open one `SqliteLog` per file and share it (`Arc<dyn EventLog>`): a second
/// handle on the same file would be a second writer, so appends would still
/// be correct (SQLite serialises them) but each handle's
/// [`subscribe`](EventLog::subscribe) would only see its own commits.
pub struct SqliteLog {
    path: PathBuf,
    /// The writer's queue. Bounded, so a writer that cannot keep up pushes
    /// back on the intake instead of buffering without limit.
    requests: mpsc::Sender<Request>,
    closed: AtomicBool,
    /// Shared with the writer, which publishes the head after each commit.
    head: Arc<watch::Sender<u64>>,
    readers: Arc<ReaderPool>,
    stats: Arc<Stats>,
}

impl fmt::Debug for SqliteLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteLog")
            .field("path", &self.path)
            .field("head", &*self.head.borrow())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl SqliteLog {
    /// Open (creating if needed) the log at `path`, migrate its schema and
    /// start the writer thread. The parent directory must exist.
    ///
    /// This does blocking file I/O; call it before serving, or from
    /// `spawn_blocking`.
    pub fn open(path: &Path, opts: SqliteLogOptions) -> Result<SqliteLog, LogError> {
        let max_batch = opts.max_batch.max(1);
        let mut conn = Connection::open(path)
            .map_err(|e| sql_error(&format!("cannot open {}", path.display()), e))?;
        configure_writer(&conn, &opts)?;
        migrate(&mut conn)?;
        let head: i64 = conn
            .query_row("SELECT COALESCE(MAX(offset), 0) FROM events", [], |r| {
                r.get(0)
            })
            .map_err(|e| sql_error("cannot read the log head", e))?;
        let head = u64::try_from(head)
            .map_err(|_| LogError::Corrupt(format!("negative log head {head}")))?;

        // Open one reader now so that a path readers cannot use fails here
        // rather than on the first read.
        let readers = Arc::new(ReaderPool {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        });
        let reader = readers.take()?;
        readers.put(reader);

        let head = Arc::new(watch::Sender::new(head));
        let stats = Arc::new(Stats::default());
        // Checkpoints copy the WAL back into the database file and fsync
        // it: milliseconds of I/O that, run by the writer (SQLite's
        // default), would stall every append queued behind them. A separate
        // connection checkpoints instead, concurrently with the writer; the
        // writer's own automatic checkpoint stays only as a backstop.
        conn.pragma_update(None, "wal_autocheckpoint", BACKSTOP_CHECKPOINT_PAGES)
            .map_err(|e| sql_error("cannot configure the event log (wal_autocheckpoint)", e))?;
        let checkpointer = Connection::open(path)
            .map_err(|e| sql_error(&format!("cannot open {}", path.display()), e))?;
        checkpointer
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sql_error("cannot configure the checkpointer", e))?;
        let (tx, rx) = mpsc::channel(max_batch.saturating_mul(4).clamp(64, 1 << 16));
        let (alive, writer_gone) = std::sync::mpsc::channel::<()>();
        let watched = head.subscribe();
        let checkpointer = std::thread::Builder::new()
            .name("kycd-log-ckpt".into())
            .spawn(move || checkpoint_loop(checkpointer, watched, writer_gone))
            .map_err(|e| LogError::Unavailable(format!("cannot start the checkpointer: {e}")))?;
        let writer = Writer {
            conn,
            requests: rx,
            head: Arc::clone(&head),
            stats: Arc::clone(&stats),
            max_batch,
            checkpointer: Some((alive, checkpointer)),
        };
        std::thread::Builder::new()
            .name("kycd-log-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| LogError::Unavailable(format!("cannot start the log writer: {e}")))?;

        tracing::info!(
            path = %path.display(),
            head = *head.borrow(),
            durability = ?opts.durability,
            "event log opened"
        );
        Ok(SqliteLog {
            path: path.to_path_buf(),
            requests: tx,
            closed: AtomicBool::new(false),
            head,
            readers,
            stats,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> SqliteLogStats {
        SqliteLogStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            requests: self.stats.requests.load(Ordering::Relaxed),
            largest_batch: self.stats.largest_batch.load(Ordering::Relaxed),
            failed_batches: self.stats.failed_batches.load(Ordering::Relaxed),
        }
    }

    /// Hand a request to the writer and wait for its answer.
    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, LogError>>) -> Request,
    ) -> Result<T, LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let (reply, answer) = oneshot::channel();
        if self.requests.send(make(reply)).await.is_err() {
            return Err(self.writer_gone());
        }
        // The writer drops a reply unanswered only when it stops: after a
        // shutdown, or if the thread died.
        answer.await.unwrap_or_else(|_| Err(self.writer_gone()))
    }

    fn writer_gone(&self) -> LogError {
        if self.closed.load(Ordering::Acquire) {
            LogError::Closed
        } else {
            LogError::Unavailable("the log writer stopped".into())
        }
    }

    /// Run `f` on a pooled read-only connection, off the async runtime.
    async fn with_reader<T, F>(&self, f: F) -> Result<T, LogError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, LogError> + Send + 'static,
    {
        let pool = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let result = f(&conn);
            // A connection that just failed may be in a bad state; it is cheap
            // to open another, so only healthy ones go back to the pool.
            if result.is_ok() {
                pool.put(conn);
            }
            result
        })
        .await
        .map_err(|e| LogError::Unavailable(format!("log read task failed: {e}")))?
    }
}

/// Every `result` of `kycd_log_appends_total` ([`append_result`]).
pub const APPEND_RESULTS: [&str; 3] = ["new", "duplicate", "error"];

/// How an append ended, as `kycd_log_appends_total` counts it.
fn append_result(result: &Result<Appended, LogError>) -> &'static str {
    let [new, duplicate, error] = APPEND_RESULTS;
    match result {
        Ok(Appended::New { .. }) => new,
        Ok(Appended::Duplicate { .. }) => duplicate,
        Err(_) => error,
    }
}

#[async_trait::async_trait]
impl EventLog for SqliteLog {
    async fn append(&self, event: NewEvent) -> Result<Appended, LogError> {
        let started = Instant::now();
        // Everything that does not need the write connection (minting the id,
        // serialising JSON) happens here, on the caller's thread, so that
        // the single writer thread only runs SQL.
        let result = match EncodedEvent::new(event) {
            Ok(encoded) => self.submit(|reply| Request::Append(encoded, reply)).await,
            Err(e) => Err(e),
        };
        metrics::counter!("kycd_log_appends_total", "result" => append_result(&result))
            .increment(1);
        if result.is_ok() {
            metrics::histogram!("kycd_log_append_seconds").record(started.elapsed().as_secs_f64());
        }
        result
    }

    async fn read(&self, after_offset: u64, max: usize) -> Result<Vec<StoredEvent>, LogError> {
        // Offsets are rowids, so anything past i64::MAX cannot exist.
        let Ok(after) = i64::try_from(after_offset) else {
            return Ok(Vec::new());
        };
        if max == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        self.with_reader(move |conn| {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE offset > ?1 ORDER BY offset LIMIT ?2"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(read_error)?;
            let mut rows = stmt.query((after, limit)).map_err(read_error)?;
            let mut out = Vec::with_capacity(max.min(1024));
            while let Some(row) = rows.next().map_err(read_error)? {
                out.push(event_from_row(row).map_err(read_error)?);
            }
            Ok(out)
        })
        .await
    }

    async fn get(&self, id: &EventId) -> Result<Option<StoredEvent>, LogError> {
        let id = id.as_str().to_owned();
        self.with_reader(move |conn| {
            let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1");
            let mut stmt = conn.prepare_cached(&sql).map_err(read_error)?;
            stmt.query_row([id], event_from_row)
                .optional()
                .map_err(read_error)
        })
        .await
    }

    async fn head(&self) -> Result<u64, LogError> {
        // The writer publishes the head after each commit, so this is the
        // committed head without a round trip to the database.
        Ok(*self.head.borrow())
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn quarantine(&self, q: NewQuarantine) -> Result<String, LogError> {
        let encoded = EncodedQuarantine {
            id: format!("{QUARANTINE_ID_PREFIX}{}", ulid_body(q.received_at_ms)),
            meta: q.meta.to_string(),
            received_at_ms: q.received_at_ms,
            reason: q.reason,
            body: q.body,
        };
        let result = self
            .submit(|reply| Request::Quarantine(encoded, reply))
            .await;
        if let Ok(id) = &result {
            tracing::info!(quarantine_id = %id, "delivery quarantined");
        }
        result
    }

    async fn list_quarantine(
        &self,
        before_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Quarantined>, LogError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let before = before_id.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_reader(move |conn| {
            // Newest first by insertion order (`seq`), not by id: ids minted
            // in the same millisecond do not sort by arrival. An unknown
            // `before` makes the subquery NULL, so the page is empty.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, received_at_ms, reason, body, meta FROM quarantine \
                     WHERE ?1 IS NULL OR seq < (SELECT seq FROM quarantine WHERE id = ?1) \
                     ORDER BY seq DESC LIMIT ?2",
                )
                .map_err(read_error)?;
            let mut rows = stmt.query((before, limit)).map_err(read_error)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(read_error)? {
                out.push(quarantined_from_row(row).map_err(read_error)?);
            }
            Ok(out)
        })
        .await
    }

    async fn probe_write(&self) -> Result<(), LogError> {
        self.submit(Request::Probe).await
    }

    async fn count_quarantine(&self) -> Result<u64, LogError> {
        self.with_reader(|conn| {
            let n: i64 = conn
                .query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0))
                .map_err(read_error)?;
            u64::try_from(n).map_err(|_| LogError::Corrupt(format!("negative count {n}")))
        })
        .await
    }

    async fn shutdown(&self) {
        // New calls are refused from here on. Requests already queued sit
        // before the shutdown marker in the FIFO queue, so the writer commits
        // them first; anything that slips in behind the marker is answered
        // Closed.
        self.closed.store(true, Ordering::Release);
        let (reply, done) = oneshot::channel();
        if self.requests.send(Request::Shutdown(reply)).await.is_ok() {
            // An error only means the writer had already stopped.
            let _ = done.await;
        }
        tracing::info!(
            path = %self.path.display(),
            head = *self.head.borrow(),
            "event log shut down"
        );
    }
}

// ---------------------------------------------------------------------------
// The checkpointer.

/// The writer checkpoints by itself only if the WAL reaches this many pages
/// (about 64 MB), which happens only if the checkpointer cannot keep up.
const BACKSTOP_CHECKPOINT_PAGES: i64 = 16_384;

/// How often the checkpointer looks for new commits.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Run passive checkpoints (they never block the writer or readers) while
/// the log has new commits, until the writer stops.
fn checkpoint_loop(
    conn: Connection,
    head: watch::Receiver<u64>,
    writer_gone: std::sync::mpsc::Receiver<()>,
) {
    let mut checkpointed = *head.borrow();
    loop {
        match writer_gone.recv_timeout(CHECKPOINT_EVERY) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // The writer's end dropped: it has stopped.
            _ => return,
        }
        let now = *head.borrow();
        if now == checkpointed {
            continue;
        }
        // One that stopped short is tried again on the next tick, even
        // without new commits.
        match crate::checkpoint::passive(&conn) {
            Ok(true) => checkpointed = now,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "event log checkpoint failed; will retry"),
        }
    }
}

// ---------------------------------------------------------------------------
// The writer.

/// An event ready for the writer: id minted, JSON already serialised.
struct EncodedEvent {
    id: EventId,
    received_at_ms: i64,
    source: EventSource,
    kind: String,
    session_id: Option<String>,
    didit_event_id: Option<String>,
    dedupe_keys: Vec<String>,
    dedupe_keys_json: String,
    body: Vec<u8>,
    meta: String,
}

impl EncodedEvent {
    fn new(e: NewEvent) -> Result<Self, LogError> {
        let dedupe_keys_json = serde_json::to_string(&e.dedupe_keys)
            .map_err(|err| LogError::Unavailable(format!("cannot encode dedupe keys: {err}")))?;
        Ok(Self {
            // Minted even if the event turns out to be a duplicate: cheaper
            // than a round trip, and an unused id costs nothing.
            id: EventId::new(e.received_at_ms),
            received_at_ms: e.received_at_ms,
            source: e.source,
            kind: e.kind,
            session_id: e.session_id,
            didit_event_id: e.didit_event_id,
            dedupe_keys: e.dedupe_keys,
            dedupe_keys_json,
            body: e.body,
            meta: e.meta.to_string(),
        })
    }
}

struct EncodedQuarantine {
    id: String,
    received_at_ms: i64,
    reason: String,
    body: Vec<u8>,
    meta: String,
}

enum Request {
    Append(EncodedEvent, oneshot::Sender<Result<Appended, LogError>>),
    Quarantine(EncodedQuarantine, oneshot::Sender<Result<String, LogError>>),
    Probe(oneshot::Sender<Result<(), LogError>>),
    Shutdown(oneshot::Sender<()>),
}

/// What one request in a committed batch produced.
enum Outcome {
    Appended(Appended),
    Quarantined(String),
    /// The probe's own failure, if it failed without failing the batch.
    Probed(Option<LogError>),
}

#[derive(Default)]
struct Stats {
    batches: AtomicU64,
    requests: AtomicU64,
    largest_batch: AtomicU64,
    failed_batches: AtomicU64,
}

/// Owns the only write connection. Runs on its own OS thread, so it may
/// block (on the queue, on fsync) without stalling the async runtime.
struct Writer {
    conn: Connection,
    requests: mpsc::Receiver<Request>,
    head: Arc<watch::Sender<u64>>,
    stats: Arc<Stats>,
    max_batch: usize,
    /// Dropping the sender stops the checkpointer; joined before the writer
    /// reports that the log is shut.
    checkpointer: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        let shutdown_waiters = loop {
            // Block until at least one request is queued, then take whatever
            // else is already waiting, up to max_batch, without blocking
            // again. There is no timer: a lone request is committed at once,
            // and under load the requests that arrive while one batch is
            // fsyncing form the next batch. That is what makes the batch size
            // adapt to the load.
            if self.requests.blocking_recv_many(&mut batch, self.max_batch) == 0 {
                // Every SqliteLog handle is gone; nobody can be waiting.
                break Vec::new();
            }
            // A shutdown marker ends the writer's life: commit what was
            // queued before it, refuse what came after.
            let after_shutdown = match batch.iter().position(|r| matches!(r, Request::Shutdown(_)))
            {
                Some(at) => batch.split_off(at),
                None => Vec::new(),
            };
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
            if !after_shutdown.is_empty() {
                break self.refuse_remaining(after_shutdown);
            }
        };
        // Close the write connection before telling shutdown() it is done,
        // so that the file can be reopened (or copied) right after.
        drop(self.conn);
        if let Some((alive, thread)) = self.checkpointer.take() {
            drop(alive);
            let _ = thread.join();
        }
        for waiter in shutdown_waiters {
            let _ = waiter.send(());
        }
    }

    /// Commit `batch` as one transaction and answer every request in it.
    /// Leaves `batch` empty.
    fn commit(&mut self, batch: &mut Vec<Request>) {
        let size = batch.len();
        metrics::histogram!("kycd_log_commit_batch_size").record(size as f64);
        match write_batch(&mut self.conn, batch) {
            Ok((outcomes, new_head)) => {
                // Publish the head before answering, so that by the time an
                // append returns, subscribers can already see its offset.
                if let Some(head) = new_head {
                    self.head.send_replace(head);
                }
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .requests
                    .fetch_add(size as u64, Ordering::Relaxed);
                self.stats
                    .largest_batch
                    .fetch_max(size as u64, Ordering::Relaxed);
                tracing::trace!(
                    batch = size,
                    head = *self.head.borrow(),
                    "log batch committed"
                );
                for (request, outcome) in batch.drain(..).zip(outcomes) {
                    // A send fails only if the caller stopped waiting; the
                    // event is committed regardless and a retry will dedupe.
                    match (request, outcome) {
                        (Request::Append(_, reply), Outcome::Appended(appended)) => {
                            let _ = reply.send(Ok(appended));
                        }
                        (Request::Quarantine(_, reply), Outcome::Quarantined(id)) => {
                            let _ = reply.send(Ok(id));
                        }
                        (Request::Probe(reply), Outcome::Probed(failed)) => {
                            let _ = reply.send(failed.map_or(Ok(()), Err));
                        }
                        // write_batch yields one outcome of the matching kind
                        // per request, in order, and batches hold no
                        // shutdown markers; this arm is unreachable, and
                        // dropping the reply would answer Unavailable.
                        _ => {}
                    }
                }
            }
            Err(e) => {
                // The transaction was rolled back when write_batch returned
                // (dropping a rusqlite Transaction rolls it back; SQLite
                // itself rolls back after a failed COMMIT), so nothing from
                // this batch is visible. Every waiter gets the same error.
                // If the COMMIT in fact reached the disk despite the error
                // (an fsync that fails after writing), the provider's retry
                // is answered as a duplicate, which is still correct.
                let error = sql_error("cannot commit to the event log", e);
                self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    batch = size,
                    error = %error,
                    "log batch failed; every request in it answered unavailable"
                );
                for request in batch.drain(..) {
                    fail(request, error.clone());
                }
            }
        }
    }

    /// After a shutdown marker: stop taking requests, answer everything
    /// still queued with Closed, and collect the shutdown waiters.
    fn refuse_remaining(&mut self, after_shutdown: Vec<Request>) -> Vec<oneshot::Sender<()>> {
        // close() makes further sends fail; receiving until None drains what
        // is buffered and what senders holding a permit still deliver.
        self.requests.close();
        let mut waiters = Vec::new();
        let mut refused = 0usize;
        let drained = std::iter::from_fn(|| self.requests.blocking_recv());
        for request in after_shutdown.into_iter().chain(drained) {
            match request {
                Request::Shutdown(waiter) => waiters.push(waiter),
                other => {
                    refused += 1;
                    fail(other, LogError::Closed);
                }
            }
        }
        tracing::debug!(refused, "log writer stopped");
        waiters
    }
}

fn fail(request: Request, error: LogError) {
    match request {
        Request::Append(_, reply) => {
            let _ = reply.send(Err(error));
        }
        Request::Quarantine(_, reply) => {
            let _ = reply.send(Err(error));
        }
        Request::Probe(reply) => {
            let _ = reply.send(Err(error));
        }
        Request::Shutdown(_) => {}
    }
}

/// One transaction for the whole batch. Returns one outcome per request, in
/// order, and the new head if any event was inserted.
///
/// This is the hot path: per event it runs one indexed lookup per dedupe
/// key, one insert into `events` and one insert per key, all through cached
/// prepared statements, so its cost is a few B-tree operations (tens of
/// microseconds); the fsync at COMMIT is paid once for the batch.
fn write_batch(
    conn: &mut Connection,
    batch: &[Request],
) -> rusqlite::Result<(Vec<Outcome>, Option<u64>)> {
    // IMMEDIATE takes the write lock up front, so a conflict with another
    // process shows up here, not halfway through the batch.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut new_head = None;
    {
        let mut find_dedupe = tx.prepare_cached(FIND_DEDUPE)?;
        let mut insert_event = tx.prepare_cached(INSERT_EVENT)?;
        let mut insert_dedupe = tx.prepare_cached(INSERT_DEDUPE)?;
        let mut insert_quarantine = tx.prepare_cached(INSERT_QUARANTINE)?;
        for request in batch {
            match request {
                Request::Append(event, _) => {
                    // The lookup runs inside the batch's transaction, so it
                    // sees keys inserted by earlier events of this same
                    // batch: two deliveries of one event in one batch yield
                    // one New and one Duplicate pointing at it.
                    let mut original = None;
                    for key in &event.dedupe_keys {
                        original = find_dedupe
                            .query_row([key], |row| event_id_at(row, 0))
                            .optional()?;
                        if original.is_some() {
                            break;
                        }
                    }
                    if let Some(id) = original {
                        // A duplicate writes nothing, not even its other
                        // keys: only accepted events define what was seen.
                        outcomes.push(Outcome::Appended(Appended::Duplicate { id }));
                        continue;
                    }
                    insert_event.execute((
                        event.id.as_str(),
                        event.received_at_ms,
                        event.source.as_str(),
                        &event.kind,
                        &event.session_id,
                        &event.didit_event_id,
                        &event.dedupe_keys_json,
                        &event.body,
                        &event.meta,
                    ))?;
                    let rowid = tx.last_insert_rowid();
                    for key in &event.dedupe_keys {
                        insert_dedupe.execute((key, rowid))?;
                    }
                    let offset = u64::try_from(rowid)
                        .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, rowid))?;
                    new_head = Some(offset);
                    outcomes.push(Outcome::Appended(Appended::New {
                        offset,
                        id: event.id.clone(),
                    }));
                }
                Request::Quarantine(q, _) => {
                    insert_quarantine.execute((
                        &q.id,
                        q.received_at_ms,
                        &q.reason,
                        &q.body,
                        &q.meta,
                    ))?;
                    outcomes.push(Outcome::Quarantined(q.id.clone()));
                }
                Request::Probe(_) => match tx.execute_batch(PROBE_WRITE) {
                    Ok(()) => outcomes.push(Outcome::Probed(None)),
                    Err(e) => {
                        tx.execute_batch(PROBE_UNDO)?;
                        outcomes.push(Outcome::Probed(Some(sql_error(
                            "the event log has no room to write",
                            e,
                        ))));
                    }
                },
                // run() splits shutdown markers off before committing.
                Request::Shutdown(_) => {}
            }
        }
    }
    // The single fsync for the whole batch (with Durability::Full). Only
    // after this returns does anyone hear back.
    tx.commit()?;
    Ok((outcomes, new_head))
}

// ---------------------------------------------------------------------------
// Connections, schema, rows.

fn configure_writer(conn: &Connection, opts: &SqliteLogOptions) -> Result<(), LogError> {
    let setup = |what: &str, e: rusqlite::Error| {
        sql_error(&format!("cannot configure the event log ({what})"), e)
    };
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| setup("busy_timeout", e))?;
    let application_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(|e| setup("application_id", e))?;
    if application_id != 0 && application_id != APPLICATION_ID {
        return Err(LogError::Corrupt(format!(
            "not a kycd event log (application_id {application_id:#x})"
        )));
    }
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(|e| setup("journal_mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LogError::Unavailable(format!(
            "the event log needs WAL mode, got {mode:?}"
        )));
    }
    let (synchronous, fullfsync) = match opts.durability {
        Durability::Full => ("FULL", true),
        Durability::Normal => ("NORMAL", false),
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(|e| setup("synchronous", e))?;
    conn.pragma_update(None, "fullfsync", fullfsync)
        .map_err(|e| setup("fullfsync", e))?;
    // Checkpoints reset the WAL; keep a reset WAL from staying at its peak
    // size on disk after a burst.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .map_err(|e| setup("journal_size_limit", e))?;
    if let Some(max_bytes) = opts.max_db_bytes {
        let page_size: i64 = conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .map_err(|e| setup("page_size", e))?;
        let pages = max_bytes / u64::try_from(page_size.max(1)).unwrap_or(4096);
        conn.pragma_update(None, "max_page_count", pages.max(1))
            .map_err(|e| setup("max_page_count", e))?;
    }
    conn.set_prepared_statement_cache_capacity(16);
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), LogError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| sql_error("cannot read the schema version", e))?;
    let known = MIGRATIONS.len();
    let applied = usize::try_from(version)
        .ok()
        .filter(|v| *v <= known)
        .ok_or_else(|| {
            LogError::Corrupt(format!(
                "schema version {version} is not one this build knows (0..={known})"
            ))
        })?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let target = index + 1;
        let failed = |e: rusqlite::Error| {
            sql_error(
                &format!("cannot migrate the event log to version {target}"),
                e,
            )
        };
        // The schema change, the version bump and the application id commit
        // together: a crash mid-migration leaves the previous version intact.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed)?;
        tx.execute_batch(sql).map_err(failed)?;
        tx.pragma_update(None, "user_version", target)
            .map_err(failed)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
        tracing::info!(version = target, "event log schema migrated");
    }
    Ok(())
}

/// Read-only connections for readers. WAL readers see the last committed
/// batch and never block the writer or each other.
struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn take(&self) -> Result<Connection, LogError> {
        // A poisoned lock only means another reader panicked while holding
        // it; the Vec of idle connections is still valid.
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        if let Some(conn) = pooled {
            return Ok(conn);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&self.path, flags)
            .map_err(|e| sql_error("cannot open a log reader", e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sql_error("cannot configure a log reader", e))?;
        conn.set_prepared_statement_cache_capacity(16);
        Ok(conn)
    }

    fn put(&self, conn: Connection) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    let offset: i64 = row.get(0)?;
    Ok(StoredEvent {
        offset: u64::try_from(offset)
            .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, offset))?,
        id: event_id_at(row, 1)?,
        received_at_ms: row.get(2)?,
        source: row
            .get::<_, String>(3)?
            .parse()
            .map_err(|e| conversion(3, Type::Text, e))?,
        kind: row.get(4)?,
        session_id: row.get(5)?,
        didit_event_id: row.get(6)?,
        dedupe_keys: serde_json::from_str(&row.get::<_, String>(7)?)
            .map_err(|e| conversion(7, Type::Text, e))?,
        body: row.get(8)?,
        meta: serde_json::from_str(&row.get::<_, String>(9)?)
            .map_err(|e| conversion(9, Type::Text, e))?,
        // One partition: every event is read by it.
        partition: None,
    })
}

fn quarantined_from_row(row: &Row<'_>) -> rusqlite::Result<Quarantined> {
    Ok(Quarantined {
        id: row.get(0)?,
        received_at_ms: row.get(1)?,
        reason: row.get(2)?,
        body: row.get(3)?,
        meta: serde_json::from_str(&row.get::<_, String>(4)?)
            .map_err(|e| conversion(4, Type::Text, e))?,
    })
}

fn event_id_at(row: &Row<'_>, index: usize) -> rusqlite::Result<EventId> {
    row.get::<_, String>(index)?
        .parse()
        .map_err(|e| conversion(index, Type::Text, e))
}

fn conversion(
    index: usize,
    ty: Type,
    e: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, ty, Box::new(e))
}

fn read_error(e: rusqlite::Error) -> LogError {
    sql_error("cannot read the event log", e)
}

/// Map a SQLite error to the log's error kinds. Stored data that does not
/// decode, and files SQLite reports as damaged, are `Corrupt`; everything
/// else (I/O, full disk, locks) is `Unavailable`.
fn sql_error(context: &str, e: rusqlite::Error) -> LogError {
    let corrupt = matches!(
        e,
        rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
    ) || matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    );
    if corrupt {
        LogError::Corrupt(format!("{context}: {e}"))
    } else {
        LogError::Unavailable(format!("{context}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_errors_map_to_corrupt_or_unavailable() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert!(matches!(sql_error("x", full), LogError::Unavailable(_)));
        let notadb = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_NOTADB),
            None,
        );
        assert!(matches!(sql_error("x", notadb), LogError::Corrupt(_)));
    }

    #[test]
    fn migrations_apply_to_an_empty_database() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        // Idempotent: a second open finds nothing to do.
        migrate(&mut conn).unwrap();
    }
}

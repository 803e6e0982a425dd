//! [`PgLog`]: the event log on PostgreSQL, shared by every kycd instance
//! connected to the same schema.
//!
//! # Offsets: the head row lock
//!
//! An offset must never become visible before a smaller one, or a
//! consumer that read up to k+1 would skip k for ever. Offsets are
//! therefore not a sequence: each append transaction first locks the
//! one-row `log_head` (`SELECT ... FOR UPDATE`), then looks its dedupe
//! keys up, then moves the head with `UPDATE log_head SET head = head + $n
//! RETURNING head` just before inserting its `n` new events at the
//! offsets below the returned head. The row lock serialises appends of
//! every instance until commit, so offsets are dense, from 1, in commit
//! order, every snapshot sees a prefix of the log, and a dedupe lookup made
//! under the lock sees every key committed before it: two instances
//! appending the same retry get exactly one `New` between them. (The
//! statements run at READ COMMITTED, where each statement after the lock
//! sees what the previous holder committed.)
//!
//! # Group commit
//!
//! As in [`crate::sqlite_log::SqliteLog`], one writer task per `PgLog`
//! takes requests from a channel and commits everything queued (up to
//! [`PgLogOptions::max_batch`]) in ONE transaction: one lock wait, a few
//! statements whatever the batch size (the events and their keys go in as
//! arrays) and one commit flush. Under load the batch grows by itself;
//! there is no timer waiting for it to fill. Dedupe within a batch works
//! as in SQLite: a later event sharing a key with an earlier one of the
//! same batch is a duplicate of it. Every waiter is answered only after
//! `COMMIT` returned. A batch that fails (connection lost, server
//! restarting, statement timeout) is rolled back as a whole, every waiter
//! gets [`LogError::Unavailable`] and the connection is discarded; the
//! next batch takes a fresh one from the pool, so the writer recovers by
//! itself once the server is back. Only a failure of `COMMIT` itself is
//! ambiguous (the server may have committed before the connection
//! dropped); the provider's retry is then answered as a duplicate, which
//! is still correct.
//!
//! # Wake-ups: NOTIFY
//!
//! [`EventLog::subscribe`] is a watch of the head. The writer publishes
//! its own commits before answering; commits of other instances arrive by
//! `NOTIFY kycd_log` sent inside the append transaction (so delivered only
//! once it committed) and a `LISTEN` task in every instance. The channel is
//! one per database: its payload names the schema and the new head, and a
//! listener ignores other schemas' notifications (they still reach it, at
//! the cost of a string comparison). A lost notification, or one missed
//! while the listener reconnects, costs at most the fallback poll of the
//! head ([`PgLogOptions::poll_every`], 200 ms).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kycd_core::id::ulid_body;
use kycd_core::EventId;
use sqlx::postgres::{PgListener, PgPool, PgRow};
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::{mpsc, oneshot, watch};

use super::{log_error, signed, Database};
use crate::log::{
    Appended, EventLog, EventSource, LogError, NewEvent, NewQuarantine, Quarantined, StoredEvent,
    QUARANTINE_ID_PREFIX,
};
use crate::route::{self, Route};
use crate::sqlite_log::APPEND_RESULTS;

/// The channel appends notify and every instance listens on. The payload
/// is `<schema> <head>`.
pub const CHANNEL: &str = "kycd_log";

/// A batch that has not committed after this long fails as unavailable
/// (and its connection is discarded): a server that stopped answering
/// without closing the connection must not hang every append for ever.
/// Longer than the server's own statement timeout, which normally fires
/// first.
const BATCH_DEADLINE: Duration = Duration::from_secs(45);

/// The most body bytes sent in one `INSERT` of a batch's events; a batch
/// of large deliveries is inserted in several statements (of the same
/// transaction) instead of one message of hundreds of megabytes.
const INSERT_CHUNK_BYTES: usize = 16 << 20;

/// How long the listener waits before connecting again after an error.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

const EVENT_COLUMNS: &str =
    "pos, id, received_at_ms, source, kind, session_id, didit_event_id, dedupe_keys, body, meta, partition";

/// Options for [`PgLog::open`]. SQLite's `durability` and `max_db_bytes`
/// have no counterpart: on PostgreSQL, durability is the server's
/// `synchronous_commit` and size limits are the server's or the disk's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgLogOptions {
    /// The most requests committed in one transaction, as
    /// `SqliteLogOptions::max_batch`.
    pub max_batch: usize,
    /// How often the head is read from the database in case a notification
    /// was lost (or arrived while the listener was reconnecting).
    pub poll_every: Duration,
    /// How many partitions the log has (`crate::route`): fixed when the log
    /// is created (1 when `None`); opening an existing log with another
    /// count fails with [`LogError::Settings`].
    pub partitions: Option<u32>,
}

impl Default for PgLogOptions {
    fn default() -> Self {
        Self {
            max_batch: 512,
            poll_every: Duration::from_millis(200),
            partitions: None,
        }
    }
}

/// Counters about this instance's writer, for tests and diagnostics, as
/// [`crate::sqlite_log::SqliteLogStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PgLogStats {
    /// Transactions committed.
    pub batches: u64,
    /// Requests (appends, quarantines, probes) in committed transactions.
    pub requests: u64,
    /// The largest committed batch so far.
    pub largest_batch: u64,
    /// Transactions that failed and were rolled back.
    pub failed_batches: u64,
}

#[derive(Default)]
struct Stats {
    batches: AtomicU64,
    requests: AtomicU64,
    largest_batch: AtomicU64,
    failed_batches: AtomicU64,
}

/// The PostgreSQL-backed [`EventLog`]. See the module documentation.
///
/// Open one per process and share it (`Arc<dyn EventLog>`); several
/// processes (or several `PgLog`s) on the same schema append to one log.
pub struct PgLog {
    db: Database,
    /// The schema the connections' `search_path` resolves to, which names
    /// this log in notifications.
    schema: String,
    /// The writer's queue. Bounded, so a writer that cannot keep up pushes
    /// back on the intake instead of buffering without limit.
    requests: mpsc::Sender<Request>,
    closed: AtomicBool,
    /// Moved forward by the writer, the listener, the poller and
    /// [`EventLog::head`]; never backwards.
    head: Arc<watch::Sender<u64>>,
    stats: Arc<Stats>,
    partitions: u32,
    /// Dropped with the log, which stops the listener and the poller.
    _stop: watch::Sender<()>,
}

impl fmt::Debug for PgLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLog")
            .field("schema", &self.schema)
            .field("head", &*self.head.borrow())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl PgLog {
    /// The log in `db` (already migrated by [`Database::connect`]): starts
    /// the writer, listens for other instances' appends and starts the
    /// fallback poll. Fails if the database cannot be reached.
    pub async fn open(db: Database, options: PgLogOptions) -> Result<PgLog, LogError> {
        let max_batch = options.max_batch.max(1);
        let pool = db.pool().clone();
        let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&pool)
            .await
            .map_err(log_error)?;
        let schema = schema.ok_or_else(|| {
            LogError::Corrupt("the connection's search_path names no existing schema".into())
        })?;
        let partitions = partition_count(&pool, options.partitions).await?;
        // Listening before reading the head: a commit in between is then
        // either in the head read or notified.
        let listener = start_listening(&pool).await.map_err(log_error)?;
        let head = Arc::new(watch::Sender::new(read_head(&pool).await?));
        let (stop, stopped) = watch::channel(());
        let stats = Arc::new(Stats::default());

        let (requests, queue) = mpsc::channel(max_batch.saturating_mul(4).clamp(64, 1 << 16));
        let writer = Writer {
            pool: pool.clone(),
            payload_prefix: format!("{schema} "),
            requests: queue,
            head: Arc::clone(&head),
            stats: Arc::clone(&stats),
            max_batch,
        };
        tokio::spawn(writer.run());
        tokio::spawn(listen(
            listener,
            pool.clone(),
            schema.clone(),
            Arc::clone(&head),
            stopped.clone(),
        ));
        tokio::spawn(poll(
            pool,
            Arc::clone(&head),
            options.poll_every.max(Duration::from_millis(1)),
            stopped,
        ));

        tracing::info!(schema = %schema, head = *head.borrow(), partitions, "event log opened");
        Ok(PgLog {
            db,
            schema,
            requests,
            closed: AtomicBool::new(false),
            head,
            stats,
            partitions,
            _stop: stop,
        })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn stats(&self) -> PgLogStats {
        PgLogStats {
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
        // shutdown, or if the task panicked.
        answer.await.unwrap_or_else(|_| Err(self.writer_gone()))
    }

    fn writer_gone(&self) -> LogError {
        if self.closed.load(Ordering::Acquire) {
            LogError::Closed
        } else {
            LogError::Unavailable("the log writer stopped".into())
        }
    }
}

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
impl EventLog for PgLog {
    async fn append(&self, event: NewEvent) -> Result<Appended, LogError> {
        let started = Instant::now();
        // Minting the id and serialising JSON happen on the caller's task,
        // so the writer only runs SQL.
        let result = match EncodedEvent::new(event, self.partitions) {
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
        if max == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE pos > $1 ORDER BY pos LIMIT $2"
        ))
        .bind(signed(after_offset))
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(self.db.pool())
        .await
        .map_err(log_error)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn read_partitions(
        &self,
        after_offset: u64,
        max: usize,
        partitions: &[u32],
    ) -> Result<(Vec<StoredEvent>, u64), LogError> {
        // Every offset up to the committed head is visible (appends commit
        // in offset order), so the events of those partitions up to it are
        // all in a read that comes back short.
        let head = read_head(self.db.pool()).await?;
        advance(&self.head, head);
        if max == 0 || head <= after_offset {
            return Ok((Vec::new(), head.max(after_offset)));
        }
        let wanted: Vec<i32> = partitions.iter().map(|&k| k as i32).collect();
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE pos > $1 AND pos <= $2 AND (partition = ANY($3) OR partition IS NULL)
             ORDER BY pos LIMIT $4"
        ))
        .bind(signed(after_offset))
        .bind(signed(head))
        .bind(&wanted)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(self.db.pool())
        .await
        .map_err(log_error)?;
        let events: Vec<StoredEvent> = rows.iter().map(event_from_row).collect::<Result<_, _>>()?;
        let through = crate::log::complete_to(&events, max, head, after_offset);
        Ok((events, through))
    }

    fn partitions(&self) -> u32 {
        self.partitions
    }

    async fn get(&self, id: &EventId) -> Result<Option<StoredEvent>, LogError> {
        let row = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(self.db.pool())
            .await
            .map_err(log_error)?;
        row.as_ref().map(event_from_row).transpose()
    }

    async fn head(&self) -> Result<u64, LogError> {
        // The committed head of every instance, not only of this one.
        let head = read_head(self.db.pool()).await?;
        advance(&self.head, head);
        Ok(head)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn quarantine(&self, q: NewQuarantine) -> Result<String, LogError> {
        if q.reason.contains('\0') {
            return Err(LogError::Corrupt(
                "the quarantine reason holds a NUL character, which PostgreSQL cannot store".into(),
            ));
        }
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
        // Newest first by insertion order (`seq`), not by id: ids minted in
        // the same millisecond do not sort by arrival. An unknown `before`
        // makes the subquery NULL, so the page is empty.
        let rows = sqlx::query(
            "SELECT id, received_at_ms, reason, body, meta FROM quarantine \
             WHERE $1::text IS NULL OR seq < (SELECT seq FROM quarantine WHERE id = $1) \
             ORDER BY seq DESC LIMIT $2",
        )
        .bind(before_id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.db.pool())
        .await
        .map_err(log_error)?;
        rows.iter().map(quarantined_from_row).collect()
    }

    async fn count_quarantine(&self) -> Result<u64, LogError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM quarantine")
            .fetch_one(self.db.pool())
            .await
            .map_err(log_error)?;
        offset_of(n, "quarantine count")
    }

    async fn probe_write(&self) -> Result<(), LogError> {
        self.submit(Request::Probe).await
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
            schema = %self.schema,
            head = *self.head.borrow(),
            "event log shut down"
        );
    }
}

// ---------------------------------------------------------------------------
// The head: reading it, and following other instances.

/// Move the published head forward to `to` (never backwards: the writer,
/// the listener and the poller race to publish).
fn advance(head: &watch::Sender<u64>, to: u64) {
    head.send_if_modified(|current| {
        let moved = to > *current;
        if moved {
            *current = to;
        }
        moved
    });
}

/// The committed head. A plain read: it does not wait for the row lock an
/// append in progress holds.
/// The log's partition count: `requested` (1 when `None`) for a new log;
/// an existing log keeps the count it was created with, and asking for
/// another is refused.
async fn partition_count(pool: &PgPool, requested: Option<u32>) -> Result<u32, LogError> {
    if let Some(n) = requested {
        if !(1..=route::MAX_PARTITIONS).contains(&n) {
            return Err(LogError::Settings(format!(
                "the partition count must be between 1 and {}, not {n}",
                route::MAX_PARTITIONS
            )));
        }
    }
    sqlx::query(
        "INSERT INTO log_partitions (id, partitions) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
    )
    .bind(requested.unwrap_or(1) as i32)
    .execute(pool)
    .await
    .map_err(log_error)?;
    let stored: i32 = sqlx::query_scalar("SELECT partitions FROM log_partitions WHERE id = 1")
        .fetch_one(pool)
        .await
        .map_err(log_error)?;
    let stored = u32::try_from(stored).map_err(|_| corrupt("partition count", stored))?;
    match requested {
        Some(n) if n != stored => Err(LogError::Settings(format!(
            "the event log was created with {stored} partition(s), and {n} were asked for; \
             the count cannot change once the log exists"
        ))),
        _ => Ok(stored),
    }
}

async fn read_head(pool: &PgPool) -> Result<u64, LogError> {
    let head: i64 = sqlx::query_scalar("SELECT head FROM log_head WHERE id = 1")
        .fetch_one(pool)
        .await
        .map_err(log_error)?;
    offset_of(head, "log head")
}

async fn start_listening(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// What a notification on [`CHANNEL`] says about this log.
#[derive(Debug, PartialEq, Eq)]
enum Notified {
    /// Another schema's log moved.
    Other,
    Head(u64),
    /// Ours, but not in the format this build sends.
    Unreadable,
}

fn parse_payload(payload: &str, schema: &str) -> Notified {
    match payload.rsplit_once(' ') {
        Some((named, head)) if named == schema => {
            head.parse().map_or(Notified::Unreadable, Notified::Head)
        }
        Some(_) => Notified::Other,
        None => Notified::Unreadable,
    }
}

/// Follow notifications until the log is dropped or the pool closed. On
/// any error the listener is replaced by a new one and the head read
/// again, since notifications sent in between are lost.
async fn listen(
    mut listener: PgListener,
    pool: PgPool,
    schema: String,
    head: Arc<watch::Sender<u64>>,
    mut stop: watch::Receiver<()>,
) {
    loop {
        let received = tokio::select! {
            _ = stop.changed() => return,
            received = listener.try_recv() => received,
        };
        match received {
            Ok(Some(notification)) => match parse_payload(notification.payload(), &schema) {
                Notified::Other => {}
                Notified::Head(to) => advance(&head, to),
                Notified::Unreadable => catch_up(&pool, &head).await,
            },
            // The connection was lost and has been replaced (and LISTENs
            // again): what was notified in between is gone.
            Ok(None) => catch_up(&pool, &head).await,
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                tracing::debug!(error = %e, "log listener failed; listening again");
                listener = loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(LISTEN_RETRY) => {}
                    }
                    match start_listening(&pool).await {
                        Ok(fresh) => break fresh,
                        Err(sqlx::Error::PoolClosed) => return,
                        Err(e) => tracing::debug!(error = %e, "log listener cannot listen yet"),
                    }
                };
                catch_up(&pool, &head).await;
            }
        }
    }
}

async fn catch_up(pool: &PgPool, head: &watch::Sender<u64>) {
    match read_head(pool).await {
        Ok(to) => advance(head, to),
        // The poller tries again shortly.
        Err(e) => tracing::debug!(error = %e, "cannot read the log head"),
    }
}

/// Read the head every `every` until the log is dropped or the pool closed.
async fn poll(
    pool: PgPool,
    head: Arc<watch::Sender<u64>>,
    every: Duration,
    mut stop: watch::Receiver<()>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticks.tick() => {}
        }
        if pool.is_closed() {
            return;
        }
        catch_up(&pool, &head).await;
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
    route: Route,
}

impl EncodedEvent {
    fn new(e: NewEvent, partitions: u32) -> Result<Self, LogError> {
        // PostgreSQL's text cannot hold U+0000 (SQLite's can): refused here,
        // alone, rather than failing every other append of its batch.
        let texts = [
            Some(&e.kind),
            e.session_id.as_ref(),
            e.didit_event_id.as_ref(),
        ];
        if texts
            .into_iter()
            .flatten()
            .chain(&e.dedupe_keys)
            .any(|t| t.contains('\0'))
        {
            return Err(LogError::Corrupt(
                "a text field of the event holds a NUL character, which PostgreSQL cannot store"
                    .into(),
            ));
        }
        let dedupe_keys_json = serde_json::to_string(&e.dedupe_keys)
            .map_err(|err| LogError::Unavailable(format!("cannot encode dedupe keys: {err}")))?;
        let route = route::route(&e, partitions);
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
            route,
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
    Probed,
}

/// Commits the batches of one `PgLog`, one at a time, each on a connection
/// from the pool.
struct Writer {
    pool: PgPool,
    /// `"<schema> "`, which the new head follows in a notification.
    payload_prefix: String,
    requests: mpsc::Receiver<Request>,
    head: Arc<watch::Sender<u64>>,
    stats: Arc<Stats>,
    max_batch: usize,
}

impl Writer {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        let shutdown_waiters = loop {
            // Wait for at least one request, then take whatever else is
            // queued, up to max_batch: a lone request commits at once, and
            // under load the requests arriving during one commit form the
            // next batch.
            if self.requests.recv_many(&mut batch, self.max_batch).await == 0 {
                // Every PgLog handle is gone; nobody can be waiting.
                break Vec::new();
            }
            // A shutdown marker ends the writer: commit what was queued
            // before it, refuse what came after.
            let after_shutdown = match batch.iter().position(|r| matches!(r, Request::Shutdown(_)))
            {
                Some(at) => batch.split_off(at),
                None => Vec::new(),
            };
            if !batch.is_empty() {
                self.commit(&mut batch).await;
            }
            if !after_shutdown.is_empty() {
                break self.refuse_remaining(after_shutdown).await;
            }
        };
        for waiter in shutdown_waiters {
            let _ = waiter.send(());
        }
    }

    /// Commit `batch` as one transaction and answer every request in it.
    /// Leaves `batch` empty.
    async fn commit(&mut self, batch: &mut Vec<Request>) {
        let size = batch.len();
        metrics::histogram!("kycd_log_commit_batch_size").record(size as f64);
        let result = match self.pool.acquire().await {
            Ok(mut conn) => {
                let written = tokio::time::timeout(
                    BATCH_DEADLINE,
                    write_batch(&mut conn, batch, &self.payload_prefix),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(LogError::Unavailable(format!(
                        "the database did not commit the log batch within {BATCH_DEADLINE:?}"
                    )))
                });
                if written.is_err() {
                    // Whatever state it is in (dead, mid-statement after the
                    // deadline), it is not worth reusing.
                    conn.close_on_drop();
                }
                written
            }
            Err(e) => Err(log_error(e)),
        };
        match result {
            Ok((outcomes, new_head)) => {
                // Publish the head before answering, so that by the time an
                // append returns, subscribers can already see its offset.
                if let Some(head) = new_head {
                    advance(&self.head, head);
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
                        (Request::Probe(reply), Outcome::Probed) => {
                            let _ = reply.send(Ok(()));
                        }
                        // write_batch yields one outcome of the matching kind
                        // per request, in order, and batches hold no
                        // shutdown markers; dropping the reply would answer
                        // Unavailable.
                        _ => {}
                    }
                }
            }
            Err(error) => {
                // Rolled back (or never begun): nothing from this batch is
                // visible, and every waiter gets the same error.
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
    async fn refuse_remaining(&mut self, after_shutdown: Vec<Request>) -> Vec<oneshot::Sender<()>> {
        // close() makes further sends fail; receiving until None drains what
        // is buffered and what senders holding a permit still deliver.
        self.requests.close();
        let mut waiters = Vec::new();
        let mut refused = 0usize;
        let mut pending = after_shutdown;
        while let Some(request) = self.requests.recv().await {
            pending.push(request);
        }
        for request in pending {
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
/// Statements per batch, whatever its size: lock the head, look every key
/// up, move the head, insert the events (one statement per
/// [`INSERT_CHUNK_BYTES`] of bodies), insert their keys, notify; plus one
/// insert per quarantined delivery. A probe moves the head by zero: a real
/// write of the row every append writes, under the lock every append
/// takes, committed like an append, and nothing anyone reads changes.
async fn write_batch(
    conn: &mut PgConnection,
    batch: &[Request],
    payload_prefix: &str,
) -> Result<(Vec<Outcome>, Option<u64>), LogError> {
    let mut tx = conn.begin().await.map_err(log_error)?;
    let takes_head = batch
        .iter()
        .any(|r| matches!(r, Request::Append(..) | Request::Probe(_)));
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut new_head = None;
    if takes_head {
        // The lock first: every dedupe lookup below sees every key
        // committed by any instance before it.
        let head: i64 = sqlx::query_scalar("SELECT head FROM log_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await
            .map_err(log_error)?;
        let keys: Vec<&str> = batch
            .iter()
            .filter_map(|r| match r {
                Request::Append(event, _) => Some(event.dedupe_keys.iter().map(String::as_str)),
                _ => None,
            })
            .flatten()
            .collect();
        // Key -> the event that recorded it: committed ones, then this
        // batch's as they are accepted.
        let mut seen: HashMap<String, EventId> = HashMap::new();
        if !keys.is_empty() {
            let rows = sqlx::query(
                "SELECT d.key, e.id FROM dedupe d JOIN events e ON e.pos = d.event_pos \
                 WHERE d.key = ANY($1)",
            )
            .bind(&keys)
            .fetch_all(&mut *tx)
            .await
            .map_err(log_error)?;
            for row in &rows {
                let key: String = row.try_get(0).map_err(log_error)?;
                seen.insert(key, event_id_at(row, 1)?);
            }
        }

        let mut next = head;
        let mut accepted: Vec<(i64, &EncodedEvent)> = Vec::new();
        let mut key_rows: (Vec<&str>, Vec<i64>) = (Vec::new(), Vec::new());
        for request in batch {
            match request {
                Request::Append(event, _) => {
                    let original = event
                        .dedupe_keys
                        .iter()
                        .find_map(|key| seen.get(key.as_str()));
                    if let Some(id) = original {
                        // A duplicate writes nothing, not even its other
                        // keys: only accepted events define what was seen.
                        outcomes.push(Outcome::Appended(Appended::Duplicate { id: id.clone() }));
                        continue;
                    }
                    next += 1;
                    for key in &event.dedupe_keys {
                        // A key listed twice in one event is recorded once.
                        if !seen.contains_key(key.as_str()) {
                            seen.insert(key.clone(), event.id.clone());
                            key_rows.0.push(key);
                            key_rows.1.push(next);
                        }
                    }
                    accepted.push((next, event));
                    outcomes.push(Outcome::Appended(Appended::New {
                        offset: offset_of(next, "offset")?,
                        id: event.id.clone(),
                    }));
                }
                Request::Probe(_) => outcomes.push(Outcome::Probed),
                Request::Quarantine(q, _) => outcomes.push(Outcome::Quarantined(q.id.clone())),
                // run() splits shutdown markers off before committing.
                Request::Shutdown(_) => {}
            }
        }

        let added = next - head;
        let moved: i64 =
            sqlx::query_scalar("UPDATE log_head SET head = head + $1 WHERE id = 1 RETURNING head")
                .bind(added)
                .fetch_one(&mut *tx)
                .await
                .map_err(log_error)?;
        if moved != next {
            return Err(LogError::Corrupt(format!(
                "the log head moved from {head} to {moved} under its lock, expected {next}"
            )));
        }
        let partitions = resolve_routes(&mut tx, &accepted).await?;
        for (chunk, parts) in chunks(&accepted, &partitions) {
            insert_events(&mut tx, chunk, parts).await?;
        }
        if !key_rows.0.is_empty() {
            sqlx::query(
                "INSERT INTO dedupe (key, event_pos) SELECT * FROM UNNEST($1::text[], $2::bigint[])",
            )
            .bind(&key_rows.0)
            .bind(&key_rows.1)
            .execute(&mut *tx)
            .await
            .map_err(log_error)?;
        }
        if added > 0 {
            new_head = Some(offset_of(next, "log head")?);
        }
    } else {
        for request in batch {
            if let Request::Quarantine(q, _) = request {
                outcomes.push(Outcome::Quarantined(q.id.clone()));
            }
        }
    }

    for request in batch {
        if let Request::Quarantine(q, _) = request {
            sqlx::query(
                "INSERT INTO quarantine (id, received_at_ms, reason, body, meta) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&q.id)
            .bind(q.received_at_ms)
            .bind(&q.reason)
            .bind(&q.body)
            .bind(&q.meta)
            .execute(&mut *tx)
            .await
            .map_err(log_error)?;
        }
    }
    if let Some(head) = new_head {
        // Delivered to listeners only once the transaction commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(format!("{payload_prefix}{head}"))
            .execute(&mut *tx)
            .await
            .map_err(log_error)?;
    }
    // Only after this returns does anyone hear back.
    tx.commit().await.map_err(log_error)?;
    Ok((outcomes, new_head))
}

/// The partition of each accepted event, in order: a session's stored
/// home, or for a session seen first here the partition its first event
/// routes to (or, for a step-up, its original's home), recorded (under
/// the log head's lock, so two instances never record two homes).
async fn resolve_routes(
    tx: &mut PgConnection,
    accepted: &[(i64, &EncodedEvent)],
) -> Result<Vec<Option<i32>>, LogError> {
    let sessions: Vec<&str> = accepted
        .iter()
        .filter_map(|(_, e)| match &e.route {
            Route::Session { session_id, .. } => Some(session_id.as_str()),
            _ => None,
        })
        .chain(accepted.iter().filter_map(|(_, e)| e.route.follows()))
        .collect();
    let mut homes: HashMap<String, u32> = HashMap::new();
    if !sessions.is_empty() {
        let rows = sqlx::query(
            "SELECT session_id, partition FROM session_routes WHERE session_id = ANY($1)",
        )
        .bind(&sessions)
        .fetch_all(&mut *tx)
        .await
        .map_err(log_error)?;
        for row in &rows {
            let partition: i32 = row.try_get(1).map_err(log_error)?;
            homes.insert(
                row.try_get(0).map_err(log_error)?,
                u32::try_from(partition).map_err(|_| corrupt("session route", partition))?,
            );
        }
    }
    let mut new_routes: (Vec<&str>, Vec<i32>, Vec<i64>) = (Vec::new(), Vec::new(), Vec::new());
    let mut out = Vec::with_capacity(accepted.len());
    for (pos, e) in accepted {
        let home = match &e.route {
            Route::Session {
                session_id,
                first,
                follows,
            } => {
                // A step-up first seen here goes where its original lives.
                let chosen = follows
                    .as_ref()
                    .and_then(|o| homes.get(o).copied())
                    .unwrap_or(*first);
                Some(*homes.entry(session_id.clone()).or_insert_with(|| {
                    new_routes.0.push(session_id);
                    new_routes.1.push(chosen as i32);
                    new_routes.2.push(*pos);
                    chosen
                }))
            }
            _ => None,
        };
        out.push(e.route.resolve(home).map(|k| k as i32));
    }
    if !new_routes.0.is_empty() {
        sqlx::query(
            "INSERT INTO session_routes (session_id, partition, first_pos)
             SELECT * FROM UNNEST($1::text[], $2::int[], $3::bigint[])",
        )
        .bind(&new_routes.0)
        .bind(&new_routes.1)
        .bind(&new_routes.2)
        .execute(&mut *tx)
        .await
        .map_err(log_error)?;
    }
    Ok(out)
}

/// An accepted event (its offset) and its partition.
type Accepted<'a, 'e> = (&'a [(i64, &'e EncodedEvent)], &'a [Option<i32>]);

/// `accepted` (with `partitions`, one each) cut into runs of at most
/// [`INSERT_CHUNK_BYTES`] of bodies (at least one event each).
fn chunks<'a, 'e>(
    accepted: &'a [(i64, &'e EncodedEvent)],
    partitions: &'a [Option<i32>],
) -> Vec<Accepted<'a, 'e>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0usize;
    for (i, (_, event)) in accepted.iter().enumerate() {
        if i > start && bytes + event.body.len() > INSERT_CHUNK_BYTES {
            out.push((&accepted[start..i], &partitions[start..i]));
            start = i;
            bytes = 0;
        }
        bytes += event.body.len();
    }
    if start < accepted.len() {
        out.push((&accepted[start..], &partitions[start..]));
    }
    out
}

/// Insert `events` (offset, event) in one statement, column by column as
/// arrays.
async fn insert_events(
    tx: &mut PgConnection,
    events: &[(i64, &EncodedEvent)],
    partitions: &[Option<i32>],
) -> Result<(), LogError> {
    let column =
        |f: fn(&EncodedEvent) -> &str| -> Vec<&str> { events.iter().map(|(_, e)| f(e)).collect() };
    let optional = |f: fn(&EncodedEvent) -> Option<&str>| -> Vec<Option<&str>> {
        events.iter().map(|(_, e)| f(e)).collect()
    };
    let positions: Vec<i64> = events.iter().map(|(pos, _)| *pos).collect();
    let received: Vec<i64> = events.iter().map(|(_, e)| e.received_at_ms).collect();
    let bodies: Vec<&[u8]> = events.iter().map(|(_, e)| e.body.as_slice()).collect();
    sqlx::query(&format!(
        "INSERT INTO events ({EVENT_COLUMNS}) SELECT * FROM UNNEST(\
         $1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
         $6::text[], $7::text[], $8::text[], $9::bytea[], $10::text[], $11::int[])"
    ))
    .bind(positions)
    .bind(column(|e| e.id.as_str()))
    .bind(received)
    .bind(column(|e| e.source.as_str()))
    .bind(column(|e| &e.kind))
    .bind(optional(|e| e.session_id.as_deref()))
    .bind(optional(|e| e.didit_event_id.as_deref()))
    .bind(column(|e| &e.dedupe_keys_json))
    .bind(bodies)
    .bind(column(|e| &e.meta))
    .bind(partitions)
    .execute(&mut *tx)
    .await
    .map_err(log_error)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Rows.

/// A stored offset or count; a negative one is corrupt.
fn offset_of(v: i64, what: &str) -> Result<u64, LogError> {
    u64::try_from(v).map_err(|_| LogError::Corrupt(format!("{what} is negative: {v}")))
}

fn corrupt(what: &str, e: impl fmt::Display) -> LogError {
    LogError::Corrupt(format!("stored {what} does not decode: {e}"))
}

fn event_id_at(row: &PgRow, index: usize) -> Result<EventId, LogError> {
    row.try_get::<String, _>(index)
        .map_err(log_error)?
        .parse()
        .map_err(|e| corrupt("event id", e))
}

fn event_from_row(row: &PgRow) -> Result<StoredEvent, LogError> {
    let get = |e: sqlx::Error| log_error(e);
    Ok(StoredEvent {
        offset: offset_of(row.try_get(0).map_err(get)?, "offset")?,
        id: event_id_at(row, 1)?,
        received_at_ms: row.try_get(2).map_err(get)?,
        source: row
            .try_get::<String, _>(3)
            .map_err(get)?
            .parse()
            .map_err(|e| corrupt("event source", e))?,
        kind: row.try_get(4).map_err(get)?,
        session_id: row.try_get(5).map_err(get)?,
        didit_event_id: row.try_get(6).map_err(get)?,
        dedupe_keys: serde_json::from_str(&row.try_get::<String, _>(7).map_err(get)?)
            .map_err(|e| corrupt("dedupe keys", e))?,
        body: row.try_get(8).map_err(get)?,
        meta: serde_json::from_str(&row.try_get::<String, _>(9).map_err(get)?)
            .map_err(|e| corrupt("event meta", e))?,
        partition: row
            .try_get::<Option<i32>, _>(10)
            .map_err(get)?
            .map(|k| u32::try_from(k).map_err(|_| corrupt("partition", k)))
            .transpose()?,
    })
}

fn quarantined_from_row(row: &PgRow) -> Result<Quarantined, LogError> {
    let get = |e: sqlx::Error| log_error(e);
    Ok(Quarantined {
        id: row.try_get(0).map_err(get)?,
        received_at_ms: row.try_get(1).map_err(get)?,
        reason: row.try_get(2).map_err(get)?,
        body: row.try_get(3).map_err(get)?,
        meta: serde_json::from_str(&row.try_get::<String, _>(4).map_err(get)?)
            .map_err(|e| corrupt("quarantine meta", e))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_counts_only_for_its_schema() {
        assert_eq!(parse_payload("kycd 42", "kycd"), Notified::Head(42));
        assert_eq!(parse_payload("kycd_b 42", "kycd"), Notified::Other);
        assert_eq!(parse_payload("odd name 7", "odd name"), Notified::Head(7));
        assert_eq!(parse_payload("kycd x", "kycd"), Notified::Unreadable);
        assert_eq!(parse_payload("", "kycd"), Notified::Unreadable);
    }

    #[test]
    fn large_bodies_are_inserted_in_several_statements() {
        let event = |size: usize| {
            let mut e = EncodedEvent::new(crate::suite::sample_event(1, &[]), 1).unwrap();
            e.body = vec![0; size];
            e
        };
        let (big, small) = (event(INSERT_CHUNK_BYTES - 10), event(100));
        let accepted = vec![(1, &big), (2, &small), (3, &small), (4, &big)];
        let partitions = [Some(0), Some(1), None, Some(2)];
        let cut = chunks(&accepted, &partitions);
        let sizes: Vec<usize> = cut.iter().map(|c| c.0.len()).collect();
        assert_eq!(sizes, vec![1, 2, 1]);
        let parts: Vec<&[Option<i32>]> = cut.iter().map(|c| c.1).collect();
        assert_eq!(parts, vec![&[Some(0)][..], &[Some(1), None], &[Some(2)]]);
        assert!(chunks(&[], &[]).is_empty());
    }
}

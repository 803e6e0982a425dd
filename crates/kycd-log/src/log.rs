//! The [`EventLog`] trait: kycd's append-only record of everything it
//! received, and the types that go in and out of it.
//!
//! The intake appends each verified delivery and answers the provider only
//! once [`EventLog::append`] has returned, so an acknowledged webhook is never
//! lost. Consumers read forward from an offset and wake on
//! [`EventLog::subscribe`] instead of polling.
//!
//! Dedupe lives in the log, not in the consumers: an event carries several
//! keys (Didit's event id, a hash of the body, ...) and is a duplicate when
//! *any* of them was recorded by an earlier accepted event. Duplicates are not
//! stored; the caller gets the id of the original back, so a redelivery is
//! answered exactly like the first delivery.

use std::fmt;
use std::str::FromStr;

use kycd_core::EventId;
use serde::{Deserialize, Serialize};

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSource {
    /// A signed webhook delivery from Didit, verified before it was appended.
    Webhook,
    /// A decision kycd fetched from Didit's API itself (reconciliation).
    Polled,
    /// A write by an operator about a subject (erasure, notes, overrides).
    Subject,
    /// Something kycd itself did that the projection must know, in log
    /// order: a step-up session created or expired.
    Internal,
}

impl EventSource {
    pub const ALL: [EventSource; 4] = [Self::Webhook, Self::Polled, Self::Subject, Self::Internal];

    /// The stable name stored by every backend.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Polled => "polled",
            Self::Subject => "subject",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for EventSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown event source {0:?}")]
pub struct UnknownEventSource(pub String);

impl FromStr for EventSource {
    type Err = UnknownEventSource;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|source| source.as_str() == s)
            .ok_or_else(|| UnknownEventSource(s.chars().take(32).collect()))
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// When kycd received it (Unix milliseconds); also the time part of the
    /// [`EventId`] the log mints for it.
    pub received_at_ms: i64,
    pub source: EventSource,
    /// Didit's `webhook_type`, e.g. `status.updated`.
    pub kind: String,
    pub session_id: Option<String>,
    pub didit_event_id: Option<String>,
    /// The append is a duplicate if any of these keys was recorded by an
    /// earlier accepted event. An empty list never dedupes. Keys of an event
    /// that turns out to be a duplicate are not recorded.
    pub dedupe_keys: Vec<String>,
    /// The verified raw bytes, exactly as received.
    pub body: Vec<u8>,
    /// Headers that matter, signature scheme, sandbox/test flags...
    pub meta: serde_json::Value,
}

/// An event as committed to the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Position in the log: starts at 1, strictly increasing in commit order.
    pub offset: u64,
    pub id: EventId,
    pub received_at_ms: i64,
    pub source: EventSource,
    pub kind: String,
    pub session_id: Option<String>,
    pub didit_event_id: Option<String>,
    pub dedupe_keys: Vec<String>,
    pub body: Vec<u8>,
    pub meta: serde_json::Value,
    /// The partition that projects it (`crate::route`); `None` when every
    /// partition reads it, and always on a log with one partition.
    pub partition: Option<u32>,
}

impl StoredEvent {
    /// Whether this stored event carries exactly the fields of `new`.
    pub fn matches(&self, new: &NewEvent) -> bool {
        self.received_at_ms == new.received_at_ms
            && self.source == new.source
            && self.kind == new.kind
            && self.session_id == new.session_id
            && self.didit_event_id == new.didit_event_id
            && self.dedupe_keys == new.dedupe_keys
            && self.body == new.body
            && self.meta == new.meta
    }
}

/// The outcome of a successful, durable append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// The event was new and is now committed at `offset`.
    New { offset: u64, id: EventId },
    /// A dedupe key was already recorded; nothing was written. `id` is the
    /// event that recorded it (the original).
    Duplicate { id: EventId },
}

impl Appended {
    /// The id the caller should report: the new event's, or the original's.
    pub fn id(&self) -> &EventId {
        match self {
            Self::New { id, .. } | Self::Duplicate { id } => id,
        }
    }

    pub fn is_new(&self) -> bool {
        matches!(self, Self::New { .. })
    }
}

/// An authentic delivery kycd cannot use (unknown payload version, a body
/// that does not parse...), kept for an operator to look at.
#[derive(Debug, Clone, PartialEq)]
pub struct NewQuarantine {
    pub received_at_ms: i64,
    /// Why it was quarantined; a short machine-readable phrase.
    pub reason: String,
    pub body: Vec<u8>,
    pub meta: serde_json::Value,
}

/// A quarantined delivery as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    /// `qua_` followed by a ULID body.
    pub id: String,
    pub received_at_ms: i64,
    pub reason: String,
    pub body: Vec<u8>,
    pub meta: serde_json::Value,
}

/// Prefix of quarantine ids.
pub const QUARANTINE_ID_PREFIX: &str = "qua_";

/// Why the log could not do what was asked. Messages never contain bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The log cannot take or serve the request right now (I/O error, disk
    /// or quota full, lock held by another process, writer gone). Nothing
    /// from the failed write is visible; the intake answers 503 and the
    /// provider retries, which dedupe makes safe.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// Stored data or schema is not what this build understands.
    #[error("event log corrupt: {0}")]
    Corrupt(String),
    /// The log cannot be opened as asked (a partition count other than
    /// the one it was created with).
    #[error("event log settings: {0}")]
    Settings(String),
    /// [`EventLog::shutdown`] was called; no more writes are taken.
    #[error("event log closed")]
    Closed,
}

/// The offset a read of at most `max` events after `after_offset`, made
/// once `head` was committed, is complete to: its last event's if the page
/// is full (more may follow), else the head (every event up to it was
/// visible to the read), never less than what was read or asked from.
pub fn complete_to(events: &[StoredEvent], max: usize, head: u64, after_offset: u64) -> u64 {
    match events.last() {
        Some(e) if events.len() >= max => e.offset,
        Some(e) => head.max(e.offset),
        None => head.max(after_offset),
    }
}

/// kycd's append-only event log. Object-safe; held as `Arc<dyn EventLog>`.
///
/// Every backend must pass `kycd_log::suite::run_event_log_suite` (with the
/// `testsuite` feature).
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Append `event`, or recognise it as a duplicate. Returns only once the
    /// outcome is durable: a `New` event survives a crash of the process
    /// (and, depending on the backend's durability setting, of the machine).
    ///
    /// Dropping the future after the call started does not cancel the
    /// write; the event may still be committed.
    async fn append(&self, event: NewEvent) -> Result<Appended, LogError>;

    /// Up to `max` events with `offset > after_offset`, ascending. Offsets
    /// start at 1, so `read(0, n)` reads from the beginning.
    async fn read(&self, after_offset: u64, max: usize) -> Result<Vec<StoredEvent>, LogError>;

    /// Up to `max` events with `offset > after_offset` that partitions
    /// `partitions` project, with those every partition reads, ascending;
    /// and the offset the read is complete to (every event up to it that
    /// those partitions read is among them), which passes the last event
    /// returned when the rest of the range belongs to other partitions. A
    /// log with one partition reads everything.
    async fn read_partitions(
        &self,
        after_offset: u64,
        max: usize,
        partitions: &[u32],
    ) -> Result<(Vec<StoredEvent>, u64), LogError> {
        let _ = partitions;
        // The head first: every event up to it is committed, so a read
        // that comes back short has seen them all.
        let head = self.head().await?;
        let events = self.read(after_offset, max).await?;
        let through = complete_to(&events, max, head, after_offset);
        Ok((events, through))
    }

    /// How many partitions the log was created with (1 unless a database
    /// log was created with more).
    fn partitions(&self) -> u32 {
        1
    }

    /// The event with kycd id `id`, if it was committed.
    async fn get(&self, id: &EventId) -> Result<Option<StoredEvent>, LogError>;

    /// The highest committed offset; 0 when the log is empty.
    async fn head(&self) -> Result<u64, LogError>;

    /// The head offset, updated after each commit, so consumers can wait
    /// for new events (`changed()` / `wait_for`) without polling.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Durably keep an unusable delivery; returns its `qua_` id.
    async fn quarantine(&self, q: NewQuarantine) -> Result<String, LogError>;

    /// Quarantined deliveries, newest first, starting after `before_id`
    /// (exclusive) when given. An unknown `before_id` yields an empty page.
    async fn list_quarantine(
        &self,
        before_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Quarantined>, LogError>;

    async fn count_quarantine(&self) -> Result<u64, LogError>;

    /// Commit a small write of no meaning through the same path appends
    /// take, to find out whether the log can take writes again after one
    /// failed (a full disk, say). Readiness uses it so that it recovers on
    /// its own, with no delivery needed to prove the log writable. Nothing
    /// a consumer reads changes.
    async fn probe_write(&self) -> Result<(), LogError>;

    /// Finish the writes already taken, then refuse new appends and
    /// quarantines with [`LogError::Closed`]. Reads keep working, so a
    /// consumer can drain what was committed. Idempotent.
    async fn shutdown(&self);
}

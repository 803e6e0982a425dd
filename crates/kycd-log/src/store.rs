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
    pub limit: usize,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Where `consumer` stopped: every event up to this offset is reflected.
    async fn consumer_offset(&self, consumer: &str) -> Result<u64, StoreError>;

    /// The current records of these sessions, where they exist.
    async fn load_sessions(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, SessionRecord>, StoreError>;

    /// Atomically upsert `sessions` and move `consumer` from `from_offset`
    /// to `to_offset`. Fails with [`StoreError::OffsetConflict`], writing
    /// nothing, if the consumer is not at `from_offset` (another instance
    /// got there first).
    async fn commit_sessions(
        &self,
        consumer: &str,
        from_offset: u64,
        to_offset: u64,
        sessions: Vec<SessionRecord>,
    ) -> Result<(), StoreError>;

    async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// Newest first (by `seq`).
    async fn list_sessions(&self, q: SessionQuery) -> Result<Vec<SessionRecord>, StoreError>;
}

/// The embedded store: one SQLite file in WAL mode.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
}

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
CREATE TABLE IF NOT EXISTS consumer_offsets (
    consumer TEXT PRIMARY KEY,
    offset INTEGER NOT NULL
) WITHOUT ROWID;
";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave SQLite inconsistent (an
    // open transaction rolls back when its guard drops), so keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SqliteStore {
    /// Open (creating and migrating if needed) the store at `path`.
    /// `synchronous_full` trades throughput for durability across power loss.
    pub fn open(path: &Path, synchronous_full: bool) -> Result<Self, StoreError> {
        let writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(
            None,
            "synchronous",
            if synchronous_full { "FULL" } else { "NORMAL" },
        )?;
        writer.busy_timeout(std::time::Duration::from_secs(5))?;
        writer.execute_batch(SCHEMA)?;
        let reader = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
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

fn session_by_id(conn: &Connection, id: &str) -> Result<Option<SessionRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM sessions WHERE session_id = ?1"
    ))?;
    stmt.query_row([id], row_to_record)
        .optional()?
        .map(finish)
        .transpose()
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
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM sessions WHERE session_id = ?1"
            ))?;
            let mut out = HashMap::new();
            for id in ids {
                if let Some(pair) = stmt.query_row([&id], row_to_record).optional()? {
                    out.insert(id, finish(pair)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn commit_sessions(
        &self,
        consumer: &str,
        from_offset: u64,
        to_offset: u64,
        sessions: Vec<SessionRecord>,
    ) -> Result<(), StoreError> {
        let consumer = consumer.to_owned();
        Self::with(&self.writer, move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let current = offset_of(&tx, &consumer)?;
            if current != from_offset {
                return Err(StoreError::OffsetConflict {
                    consumer,
                    current,
                    expected: from_offset,
                });
            }
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
                        s.doc.to_string()
                    ])?;
                }
                tx.execute(
                    "INSERT INTO consumer_offsets (consumer, offset) VALUES (?1, ?2)
                     ON CONFLICT(consumer) DO UPDATE SET offset = excluded.offset",
                    params![consumer, to_offset as i64],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let id = id.to_owned();
        Self::with(&self.reader, move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM sessions WHERE session_id = ?1"
            ))?;
            stmt.query_row([&id], row_to_record)
                .optional()?
                .map(finish)
                .transpose()
        })
        .await
    }

    async fn list_sessions(&self, q: SessionQuery) -> Result<Vec<SessionRecord>, StoreError> {
        Self::with(&self.reader, move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM sessions
                 WHERE (?1 IS NULL OR vendor_data = ?1) AND (?2 IS NULL OR status = ?2) AND seq < ?3
                   AND created_at_ms >= ?5 AND created_at_ms < ?6
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
                    q.created_until_ms.unwrap_or(i64::MAX)
                ],
                row_to_record,
            )?;
            rows.map(|r| finish(r?)).collect()
        })
        .await
    }
}

/// The conformance suite every [`Store`] backend runs: each check gets a
/// fresh, empty store from `make`.
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
        offsets_and_sessions_commit_together(make().await).await;
        a_stale_offset_writes_nothing(make().await).await;
        listing_pages_newest_first_with_filters(make().await).await;
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

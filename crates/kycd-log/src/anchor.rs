//! Anchoring the audit chain's head where editing the store cannot reach it.
//!
//! The keyed chain ([`crate::audit`]) shows any edit, insertion, reordering
//! or re-hash, but not that its newest records were removed: a shorter
//! chain is still a valid chain. So whenever the head (the newest record's
//! sequence number and MAC) has moved, the server appends an internal
//! `kycd.audit.anchor` event `{seq, mac}` to the event log, which is
//! append-only and fsynced, and optionally writes the same head to an
//! operator-named file. Verification then needs every anchor's record to
//! exist with exactly the anchored MAC: a chain that ends before an anchor
//! was truncated, and one whose anchored record carries another MAC was
//! rewritten.
//!
//! Anchoring is coalesced: one task, woken when records commit, appends at
//! most one anchor per [`ANCHOR_EVERY`], so the intake's hot path never
//! waits on it and a burst of decisions costs one small event. The records
//! committed since the newest anchor are the *unanchored tail*: removing
//! them within that delay, or while the server is down before it anchored
//! them, is what this cannot detect.
//!
//! Before anchoring, the task fsyncs the store's files: the store does not
//! fsync its commits (it is a projection the log can rebuild), and an
//! anchor for records a power loss then took away would read as a
//! truncation.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde_json::json;
use tokio::sync::watch;

use crate::audit::{self, Audit, AuditKey, Head, KeyError, NewAudit, Verification};
use crate::log::{EventLog, EventSource, NewEvent};
use crate::store::{SqliteStore, StoreError};

/// The kind of the internal event that anchors the audit head.
pub const ANCHOR_KIND: &str = "kycd.audit.anchor";

/// The shortest time between two anchors.
pub const ANCHOR_EVERY: Duration = Duration::from_millis(500);

/// How the server keys and anchors its audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditOptions {
    /// `KYCD_AUDIT_KEY_FILE`; `audit.key` in the data directory when unset.
    pub key_file: Option<PathBuf>,
    /// `KYCD_AUDIT_ANCHOR_FILE`: a file rewritten with the head on every
    /// anchor; none when unset.
    pub anchor_file: Option<PathBuf>,
    /// `--allow-broken-audit` / `KYCD_ALLOW_BROKEN_AUDIT`: start even if the
    /// chain is broken, recording that in the chain.
    pub allow_broken: bool,
}

impl AuditOptions {
    /// The key file for a data directory.
    pub fn key_path(&self, data_dir: &Path) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("audit.key"))
    }
}

/// An anchor found in the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogAnchor {
    /// Its offset in the log.
    pub offset: u64,
    pub head: Head,
}

impl LogAnchor {
    /// How a finding names it.
    pub fn source(&self) -> String {
        format!("the event log (offset {})", self.offset)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("cannot read anchors from the event log {path}: {why}")]
    Log { path: PathBuf, why: String },
    #[error("anchor file {path}: {why}")]
    File { path: PathBuf, why: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The chain is broken and the server was not told to start anyway.
    #[error(
        "the audit chain is broken: {0}. kycd will not serve over it: run `kycd audit verify` \
         to see what was found; to serve anyway, start with --allow-broken-audit (or \
         KYCD_ALLOW_BROKEN_AUDIT=true), which is itself recorded in the audit trail"
    )]
    Broken(String),
}

fn log_error(path: &Path, e: impl std::fmt::Display) -> AnchorError {
    AnchorError::Log {
        path: path.to_owned(),
        why: e.to_string(),
    }
}

fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

fn parse_anchor(path: &Path, offset: i64, body: &[u8]) -> Result<LogAnchor, AnchorError> {
    let head: Head = serde_json::from_slice(body).map_err(|e| {
        log_error(
            path,
            format!("the anchor at offset {offset} does not parse: {e}"),
        )
    })?;
    Ok(LogAnchor {
        offset: offset as u64,
        head,
    })
}

/// Only kycd's own events can anchor: a webhook's kind is whatever the
/// sender wrote.
const ANCHORS: &str = "FROM events WHERE kind = ?1 AND source = 'internal'";

/// Every anchor in the SQLite event log at `events_db`, oldest first.
/// Reads the file directly (read-only), so it works with or without a
/// running server.
pub fn log_anchors(events_db: &Path) -> Result<Vec<LogAnchor>, AnchorError> {
    let conn = open_read_only(events_db).map_err(|e| log_error(events_db, e))?;
    let mut stmt = conn
        .prepare(&format!("SELECT offset, body {ANCHORS} ORDER BY offset"))
        .map_err(|e| log_error(events_db, e))?;
    let mut rows = stmt
        .query([ANCHOR_KIND])
        .map_err(|e| log_error(events_db, e))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(|e| log_error(events_db, e))? {
        let offset: i64 = row.get(0).map_err(|e| log_error(events_db, e))?;
        let body: Vec<u8> = row.get(1).map_err(|e| log_error(events_db, e))?;
        out.push(parse_anchor(events_db, offset, &body)?);
    }
    Ok(out)
}

/// The newest anchor. The scan runs backwards from the log's end and stops
/// at the first anchor, which is near the end whenever the server runs.
pub fn newest_log_anchor(events_db: &Path) -> Result<Option<LogAnchor>, AnchorError> {
    let conn = open_read_only(events_db).map_err(|e| log_error(events_db, e))?;
    let found: Option<(i64, Vec<u8>)> = conn
        .query_row(
            &format!("SELECT offset, body {ANCHORS} ORDER BY offset DESC LIMIT 1"),
            [ANCHOR_KIND],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| log_error(events_db, e))?;
    found
        .map(|(offset, body)| parse_anchor(events_db, offset, &body))
        .transpose()
}

/// The head in an anchor file; `None` when the file does not exist (yet).
pub fn read_anchor_file(path: &Path) -> Result<Option<Head>, AnchorError> {
    let file_error = |why: String| AnchorError::File {
        path: path.to_owned(),
        why,
    };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| file_error(format!("does not hold an anchor: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_error(e.to_string())),
    }
}

/// Replace the anchor file with `head`: write a temporary file beside it,
/// fsync, rename over, fsync the directory, so a reader sees the old head
/// or the new one, never a torn file.
pub fn write_anchor_file(path: &Path, head: &Head) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, json!(head).to_string().as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// What the server checks at start: the chain from the newest log anchor
/// on, and the anchor file's head, if there is one.
pub fn check_at_start(
    store_db: &Path,
    events_db: &Path,
    key: Option<&AuditKey>,
    anchor_file: Option<&Path>,
) -> Result<(Verification, Option<LogAnchor>), AnchorError> {
    let newest = newest_log_anchor(events_db)?;
    let conn = open_read_only(store_db).map_err(StoreError::from)?;
    let source = newest.as_ref().map(LogAnchor::source);
    let mut v = audit::verify_tail(
        &conn,
        key,
        newest.as_ref().map(|a| &a.head).zip(source.as_deref()),
    )?;
    if v.problem.is_none() {
        if let Some(path) = anchor_file {
            if let Some(head) = read_anchor_file(path)? {
                let source = format!("the anchor file {}", path.display());
                if let Some(problem) = audit::check_anchor(&conn, &head, &source)? {
                    v.first_broken = Some((head.seq, problem.to_string()));
                    v.problem = Some(problem);
                }
            }
        }
    }
    Ok((v, newest))
}

/// The anchoring task of a server, made by [`attach`].
pub struct Anchoring {
    store: SqliteStore,
    store_db: PathBuf,
    anchor_file: Option<PathBuf>,
    last: Option<Head>,
}

/// Key `store` with the audit key (created at first start), check the
/// chain's tail against the newest anchor, and refuse a broken chain unless
/// `options.allow_broken`, in which case the start is recorded in the chain
/// with what was found and the store reports the chain broken
/// ([`Audit::audit_chain_broken`]). A chain of plain records from before
/// the key is sealed by a first keyed record. Returns the task that keeps
/// anchoring.
pub async fn attach(
    store: &SqliteStore,
    store_db: &Path,
    events_db: &Path,
    data_dir: &Path,
    options: &AuditOptions,
    now_ms: i64,
) -> Result<Anchoring, AnchorError> {
    let key_path = options.key_path(data_dir);
    let (key, created) = AuditKey::load_or_create(&key_path)?;
    if created {
        tracing::info!(path = %key_path.display(), "audit key created");
    }
    let (v, newest) = check_at_start(
        store_db,
        events_db,
        Some(&key),
        options.anchor_file.as_deref(),
    )?;
    store.set_audit_key(key);
    if let Some(problem) = &v.problem {
        if !options.allow_broken {
            return Err(AnchorError::Broken(problem.to_string()));
        }
        tracing::error!(found = %problem, "serving over a broken audit chain, as --allow-broken-audit says");
        store
            .audit(vec![NewAudit {
                at_ms: now_ms,
                actor: "kycd".into(),
                action: audit::STARTED_OVER_BROKEN.into(),
                target: None,
                details: json!({"found": problem.to_string(), "allowed_by": "--allow-broken-audit"}),
            }])
            .await?;
        store.mark_audit_broken();
    }
    let head = store.subscribe_audit_head().borrow().clone();
    if let Some(head) = head {
        if store.audit_key_is_plain_at(&head).await? {
            store
                .audit(vec![NewAudit {
                    at_ms: now_ms,
                    actor: "kycd".into(),
                    action: audit::KEYED.into(),
                    target: None,
                    details: json!({"plain_records": head.seq}),
                }])
                .await?;
            tracing::info!(
                plain_records = head.seq,
                "audit trail keyed from here on; the records before are sealed by this one"
            );
        }
    }
    Ok(Anchoring {
        store: store.clone(),
        store_db: store_db.to_owned(),
        anchor_file: options.anchor_file.clone(),
        last: newest.map(|a| a.head),
    })
}

impl SqliteStore {
    /// Whether the record at `head` is a plain (pre-key) one.
    async fn audit_key_is_plain_at(&self, head: &Head) -> Result<bool, StoreError> {
        let page = self
            .list_audit(i64::MIN, head.seq.saturating_sub(1), 1)
            .await?;
        Ok(page.first().is_some_and(|r| r.alg == audit::ALG_SHA256))
    }
}

/// Make the store's committed pages durable: its WAL, and the database file
/// that checkpoints copy the WAL into.
fn sync_store(store_db: &Path) -> std::io::Result<()> {
    let mut wal = store_db.as_os_str().to_owned();
    wal.push("-wal");
    for path in [PathBuf::from(wal), store_db.to_owned()] {
        match std::fs::File::open(&path) {
            Ok(f) => f.sync_all()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Anchoring {
    /// Anchor the head whenever it has moved, at most once per
    /// [`ANCHOR_EVERY`], until `stop`; then anchor once more and return.
    /// Run it before the log shuts down, so the last anchor gets in.
    pub async fn run(
        mut self,
        log: Arc<dyn EventLog>,
        now_ms: impl Fn() -> i64 + Send + 'static,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut heads = self.store.subscribe_audit_head();
        loop {
            let stopping = *stop.borrow();
            let head = heads.borrow_and_update().clone();
            if let Some(head) = head.filter(|h| Some(h) != self.last.as_ref()) {
                match self.anchor(&*log, &head, now_ms()).await {
                    Ok(()) => self.last = Some(head),
                    // The next change tries again; until then the records
                    // are the unanchored tail.
                    Err(e) => {
                        tracing::warn!(error = %e, seq = head.seq, "could not anchor the audit head")
                    }
                }
            }
            if stopping {
                return;
            }
            let moved = tokio::select! {
                changed = heads.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    true
                }
                _ = stop.wait_for(|s| *s) => false,
            };
            if moved {
                // Coalesce: whatever commits during the pause rides along
                // in the next anchor.
                tokio::select! {
                    _ = tokio::time::sleep(ANCHOR_EVERY) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            }
        }
    }

    async fn anchor(&self, log: &dyn EventLog, head: &Head, now_ms: i64) -> Result<(), String> {
        let store_db = self.store_db.clone();
        tokio::task::spawn_blocking(move || sync_store(&store_db))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot sync the store: {e}"))?;
        log.append(NewEvent {
            received_at_ms: now_ms,
            source: EventSource::Internal,
            kind: ANCHOR_KIND.to_owned(),
            session_id: None,
            didit_event_id: None,
            dedupe_keys: Vec::new(),
            body: json!(head).to_string().into_bytes(),
            meta: json!({}),
        })
        .await
        .map_err(|e| e.to_string())?;
        if let Some(path) = self.anchor_file.clone() {
            let head = head.clone();
            tokio::task::spawn_blocking(move || write_anchor_file(&path, &head))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot write the anchor file: {e}"))?;
        }
        Ok(())
    }
}

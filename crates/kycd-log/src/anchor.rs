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
//!
//! On PostgreSQL ([`Heads::Shared`]) several instances append to one chain,
//! so the head is read from the database, not from this process's commits:
//! the instance holding the `audit-anchor` lease reads it at most every
//! [`ANCHOR_EVERY`] and, when it moved, anchors it once the records since
//! the newest anchor verify (an anchor never vouches for a chain cut short
//! or rewritten behind kycd's back). No store sync comes first: the
//! anchor's own commit is durable, and so is every commit before it.
//!
//! The checks read through [`AnchoredChain`]: the embedded files
//! ([`Files`]) or the database ([`crate::postgres::anchor::PgChain`]);
//! [`check_at_start`] is the same on both.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde_json::json;
use tokio::sync::watch;

use crate::audit::{
    self, Audit, AuditKey, ChainState, Head, KeyError, NewAudit, Problem, Verification,
};
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
    /// The event log in the database could not be read.
    #[error("cannot read anchors from the event log in the database: {0}")]
    Database(String),
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

/// An anchor event's body, from any backend's log.
pub(crate) fn parse_anchor(offset: i64, body: &[u8]) -> Result<LogAnchor, String> {
    let head: Head = serde_json::from_slice(body)
        .map_err(|e| format!("the anchor at offset {offset} does not parse: {e}"))?;
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
        out.push(parse_anchor(offset, &body).map_err(|e| log_error(events_db, e))?);
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
        .map(|(offset, body)| parse_anchor(offset, &body).map_err(|e| log_error(events_db, e)))
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

/// The reads every check of the chain against its anchors makes, on each
/// backend: the chain in the store, the anchors in the event log. Nothing
/// here writes.
#[async_trait::async_trait]
pub trait AnchoredChain: Send + Sync + 'static {
    /// The newest anchor in the event log (the last appended).
    async fn newest_anchor(&self) -> Result<Option<LogAnchor>, AnchorError>;

    /// Every anchor in the event log, oldest first.
    async fn anchors(&self) -> Result<Vec<LogAnchor>, AnchorError>;

    /// The chain's newest record; `None` while it is empty.
    async fn head(&self) -> Result<Option<Head>, AnchorError>;

    /// The whole chain ([`audit::verify`]).
    async fn verify(&self, key: Option<&AuditKey>) -> Result<Verification, AnchorError>;

    /// The chain from `anchor` on, the anchor itself first
    /// ([`audit::verify_tail`]); without one, the whole chain.
    async fn verify_tail(
        &self,
        key: Option<&AuditKey>,
        anchor: Option<(&Head, &str)>,
    ) -> Result<Verification, AnchorError>;

    /// The first of `anchors` (a head and where it was found, in order)
    /// whose record is missing or carries another MAC
    /// ([`audit::check_anchor`]).
    async fn check_anchors(
        &self,
        anchors: &[(Head, String)],
    ) -> Result<Option<Problem>, AnchorError>;
}

/// The embedded backend's chain and anchors: `store.db` and `events.db`,
/// read directly (read-only), so the checks work beside a running server
/// or without one.
#[derive(Debug, Clone)]
pub struct Files {
    pub store_db: PathBuf,
    pub events_db: PathBuf,
}

impl Files {
    /// Run `f` on a read-only connection to the store, off the async threads.
    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, AnchorError> + Send + 'static,
    ) -> Result<T, AnchorError> {
        let store_db = self.store_db.clone();
        blocking(move || {
            let conn = open_read_only(&store_db).map_err(StoreError::from)?;
            f(&conn)
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AnchorError> + Send + 'static,
) -> Result<T, AnchorError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        AnchorError::Store(StoreError::Unavailable(format!("check task failed: {e}")))
    })?
}

#[async_trait::async_trait]
impl AnchoredChain for Files {
    async fn newest_anchor(&self) -> Result<Option<LogAnchor>, AnchorError> {
        let events_db = self.events_db.clone();
        blocking(move || newest_log_anchor(&events_db)).await
    }

    async fn anchors(&self) -> Result<Vec<LogAnchor>, AnchorError> {
        let events_db = self.events_db.clone();
        blocking(move || log_anchors(&events_db)).await
    }

    async fn head(&self) -> Result<Option<Head>, AnchorError> {
        self.with_store(|conn| Ok(audit::last_head(conn)?)).await
    }

    async fn verify(&self, key: Option<&AuditKey>) -> Result<Verification, AnchorError> {
        let key = key.cloned();
        self.with_store(move |conn| Ok(audit::verify(conn, key.as_ref())?))
            .await
    }

    async fn verify_tail(
        &self,
        key: Option<&AuditKey>,
        anchor: Option<(&Head, &str)>,
    ) -> Result<Verification, AnchorError> {
        let key = key.cloned();
        let anchor = anchor.map(|(h, s)| (h.clone(), s.to_owned()));
        self.with_store(move |conn| {
            let anchor = anchor.as_ref().map(|(h, s)| (h, s.as_str()));
            Ok(audit::verify_tail(conn, key.as_ref(), anchor)?)
        })
        .await
    }

    async fn check_anchors(
        &self,
        anchors: &[(Head, String)],
    ) -> Result<Option<Problem>, AnchorError> {
        let anchors = anchors.to_vec();
        self.with_store(move |conn| {
            for (head, source) in &anchors {
                if let Some(problem) = audit::check_anchor(conn, head, source)? {
                    return Ok(Some(problem));
                }
            }
            Ok(None)
        })
        .await
    }
}

/// What the server checks at start (and readiness while it serves): the
/// chain from the newest log anchor on, and the anchor file's head, if
/// there is one.
pub async fn check_at_start(
    chain: &dyn AnchoredChain,
    key: Option<&AuditKey>,
    anchor_file: Option<&Path>,
) -> Result<(Verification, Option<LogAnchor>), AnchorError> {
    let newest = chain.newest_anchor().await?;
    let source = newest.as_ref().map(LogAnchor::source);
    let mut v = chain
        .verify_tail(key, newest.as_ref().map(|a| &a.head).zip(source.as_deref()))
        .await?;
    if v.problem.is_none() {
        if let Some(path) = anchor_file {
            if let Some(head) = read_anchor_file(path)? {
                let source = format!("the anchor file {}", path.display());
                let seq = head.seq;
                if let Some(problem) = chain.check_anchors(&[(head, source)]).await? {
                    v.first_broken = Some((seq, problem.to_string()));
                    v.problem = Some(problem);
                }
            }
        }
    }
    Ok((v, newest))
}

/// Where the anchoring task takes the heads it anchors from.
pub enum Heads {
    /// One process writes the chain (the embedded store): the head its own
    /// commits publish, anchored after fsyncing `store_db` and its WAL.
    Local {
        heads: watch::Receiver<Option<Head>>,
        store_db: PathBuf,
    },
    /// Any number of processes write the chain (PostgreSQL): the head read
    /// from the chain, only while `held` (this instance holds the
    /// `audit-anchor` lease; nothing is anchored until
    /// [`Anchoring::while_holding`] sets it).
    Shared { held: Option<watch::Receiver<bool>> },
}

/// The anchoring task of a server, made by [`attach`] or
/// [`crate::postgres::anchor::attach`].
pub struct Anchoring {
    chain: Arc<dyn AnchoredChain>,
    heads: Heads,
    key: AuditKey,
    anchor_file: Option<PathBuf>,
    last: Option<Head>,
    /// The head after this start's record of serving over a broken chain,
    /// which the operator accepted: anchored first, whatever the chain
    /// before it holds.
    accepted: Option<Head>,
    /// The last problem reported, so a broken chain is logged once.
    reported: Option<Problem>,
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
    let heads = Heads::Local {
        heads: store.chain.subscribe(),
        store_db: store_db.to_owned(),
    };
    let chain = Arc::new(Files {
        store_db: store_db.to_owned(),
        events_db: events_db.to_owned(),
    });
    attach_to(store, &store.chain, chain, heads, data_dir, options, now_ms).await
}

/// [`attach`] for any backend: `store` appends through `state`, and
/// `chain` reads what it wrote.
pub(crate) async fn attach_to(
    store: &dyn Audit,
    state: &ChainState,
    chain: Arc<dyn AnchoredChain>,
    heads: Heads,
    data_dir: &Path,
    options: &AuditOptions,
    now_ms: i64,
) -> Result<Anchoring, AnchorError> {
    let key_path = options.key_path(data_dir);
    let (key, created) = AuditKey::load_or_create(&key_path)?;
    if created {
        tracing::info!(path = %key_path.display(), "audit key created");
    }
    let (v, newest) = check_at_start(&*chain, Some(&key), options.anchor_file.as_deref()).await?;
    state.set_key(key.clone());
    let mut accepted = None;
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
        state.mark_broken();
        accepted = state.subscribe().borrow().clone();
    }
    let head = state.subscribe().borrow().clone();
    if let Some(head) = head {
        if is_plain_at(store, &head).await? {
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
        chain,
        heads,
        key,
        anchor_file: options.anchor_file.clone(),
        last: newest.map(|a| a.head),
        accepted,
        reported: None,
    })
}

/// Whether the record at `head` is a plain (pre-key) one.
async fn is_plain_at(store: &dyn Audit, head: &Head) -> Result<bool, StoreError> {
    let page = store
        .list_audit(i64::MIN, head.seq.saturating_sub(1), 1)
        .await?;
    Ok(page.first().is_some_and(|r| r.alg == audit::ALG_SHA256))
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
    /// Anchor only while `held` is true ([`Heads::Shared`]; the embedded
    /// store's one process always anchors).
    pub fn while_holding(mut self, held: watch::Receiver<bool>) -> Self {
        if let Heads::Shared { held: h } = &mut self.heads {
            *h = Some(held);
        }
        self
    }

    /// Anchor the head whenever it has moved, at most once per
    /// [`ANCHOR_EVERY`], until `stop`; then anchor once more and return.
    /// Run it before the log shuts down, so the last anchor gets in.
    pub async fn run(
        mut self,
        log: Arc<dyn EventLog>,
        now_ms: impl Fn() -> i64 + Send + 'static,
        stop: watch::Receiver<bool>,
    ) {
        match &self.heads {
            Heads::Local { heads, .. } => {
                let heads = heads.clone();
                self.run_local(heads, &*log, now_ms, stop).await
            }
            Heads::Shared { held } => {
                let held = held.clone();
                self.run_shared(held, &*log, now_ms, stop).await
            }
        }
    }

    async fn run_local(
        &mut self,
        mut heads: watch::Receiver<Option<Head>>,
        log: &dyn EventLog,
        now_ms: impl Fn() -> i64,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let stopping = *stop.borrow();
            let head = heads.borrow_and_update().clone();
            if let Some(head) = head.filter(|h| Some(h) != self.last.as_ref()) {
                match self.anchor(log, &head, now_ms()).await {
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

    async fn run_shared(
        &mut self,
        held: Option<watch::Receiver<bool>>,
        log: &dyn EventLog,
        now_ms: impl Fn() -> i64,
        mut stop: watch::Receiver<bool>,
    ) {
        // The start the operator accepted over a broken chain is anchored
        // at once, lease or not, so every instance checks from there on.
        if let Some(accepted) = self.accepted.take() {
            match self.anchor(log, &accepted, now_ms()).await {
                Ok(()) => self.last = Some(accepted),
                Err(e) => {
                    tracing::warn!(error = %e, seq = accepted.seq, "could not anchor the audit head");
                    self.accepted = Some(accepted);
                }
            }
        }
        let Some(mut held) = held else { return };
        let mut holding = *held.borrow_and_update();
        loop {
            let stopping = *stop.borrow();
            // A stop releases the lease as it begins: the head is anchored
            // once more if the lease was held until then.
            if !stopping {
                holding = *held.borrow_and_update();
            }
            if holding {
                if let Err(e) = self.pass(log, now_ms()).await {
                    tracing::warn!(error = %e, "could not anchor the audit head");
                }
            }
            if stopping {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(ANCHOR_EVERY), if *held.borrow() => {}
                changed = held.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = stop.wait_for(|s| *s) => {}
            }
        }
    }

    /// One look at a shared chain: when its head moved, check the records
    /// after the newest anchor (another instance may have appended it) and
    /// anchor the new head if they hold. Returns the head anchored.
    pub async fn pass(&mut self, log: &dyn EventLog, now_ms: i64) -> Result<Option<Head>, String> {
        let head = self.chain.head().await.map_err(|e| e.to_string())?;
        if head.is_none() || head == self.last {
            return Ok(None);
        }
        let (v, newest) = check_at_start(&*self.chain, Some(&self.key), None)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(problem) = v.problem {
            // Anchoring now would vouch for what was found: the newest
            // anchor keeps showing it, at start and in readiness.
            if self.reported.as_ref() != Some(&problem) {
                tracing::error!(found = %problem, "the audit chain does not verify from its newest anchor on; not anchoring it");
                self.reported = Some(problem);
            }
            return Ok(None);
        }
        self.reported = None;
        let newest = newest.map(|a| a.head);
        match v.head {
            Some(head) if newest.as_ref().is_none_or(|n| n.seq < head.seq) => {
                self.anchor(log, &head, now_ms).await?;
                self.last = Some(head.clone());
                Ok(Some(head))
            }
            other => {
                self.last = other;
                Ok(None)
            }
        }
    }

    async fn anchor(&self, log: &dyn EventLog, head: &Head, now_ms: i64) -> Result<(), String> {
        if let Heads::Local { store_db, .. } = &self.heads {
            let store_db = store_db.clone();
            tokio::task::spawn_blocking(move || sync_store(&store_db))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot sync the store: {e}"))?;
        }
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

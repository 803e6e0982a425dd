//! The audit trail: who decided or did what, and why, in a keyed chain.
//!
//! Every record carries the chain value of the one before it (`prev_hash`),
//! and its own value (`hash`) is computed over that previous value and the
//! record's stored fields exactly as stored (no re-serialisation), so
//! editing, removing or reordering any record breaks the chain from that
//! record on ([`verify`]). The first record's previous value is [`GENESIS`].
//!
//! How `hash` is computed is named by the record's `alg`:
//!
//! - [`ALG_HMAC`]: HMAC-SHA256 under the [`AuditKey`], a secret kept outside
//!   the store. Whoever edits the store without the key cannot compute a
//!   valid value, so cannot re-hash the chain after an edit, nor append a
//!   record that verifies.
//! - [`ALG_SHA256`]: plain SHA-256, what versions before the key wrote.
//!   Such records are only accepted before the first keyed record: the
//!   first keyed record's MAC covers the last plain hash, so the plain
//!   records before it are sealed by the key too, and a plain record after
//!   it is a forgery.
//!
//! The chain alone cannot show that its newest records were removed; the
//! anchors in the event log do ([`crate::anchor`]).
//!
//! Records hold ids, outcomes, rule ids and reasons, never documents or
//! other personal data. They are appended in the transaction of what they
//! record (a decision with its projection, a write-back with its result).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use hmac::{Hmac, Mac};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::store::{SqliteStore, StoreError};

#[cfg(any(test, feature = "testsuite"))]
pub mod suite;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    alg TEXT NOT NULL DEFAULT 'sha256'
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit(at_ms);
";

/// Add the `alg` column to a table made before it existed: every record in
/// such a table was hashed with plain SHA-256, which is the default.
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let has_alg: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('audit') WHERE name = 'alg'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_alg {
        conn.execute_batch("ALTER TABLE audit ADD COLUMN alg TEXT NOT NULL DEFAULT 'sha256'")?;
    }
    Ok(())
}

/// The previous hash of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `alg` of a record whose `hash` is HMAC-SHA256 under the audit key.
pub const ALG_HMAC: &str = "hmac-sha256";
/// `alg` of a record written before the key existed: plain SHA-256.
pub const ALG_SHA256: &str = "sha256";

/// The action of the record the server appends when it starts over a
/// broken chain because it was told to (`--allow-broken-audit`).
pub const STARTED_OVER_BROKEN: &str = "audit.started_over_broken_chain";
/// The action of the record that switches a chain of plain hashes to keyed
/// MACs: the first keyed record, sealing the plain ones before it.
pub const KEYED: &str = "audit.keyed";

/// The secret the chain's MACs are keyed with: 32 random bytes, kept in a
/// file outside the store (hex, one line).
#[derive(Clone)]
pub struct AuditKey([u8; 32]);

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(<hidden>)")
    }
}

/// Why the audit key could not be had. Messages name the file, never the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("audit key file {0} does not exist")]
    Missing(PathBuf),
    #[error("audit key file {path}: {why}")]
    Unreadable { path: PathBuf, why: String },
    #[error(
        "audit key file {path} may be read by group or others (mode {mode:o}); \
         make it private with chmod 600"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("audit key file {0} does not hold 64 hexadecimal digits")]
    Malformed(PathBuf),
}

impl AuditKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Read the key at `path`, refusing a file others may read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let unreadable = |e: std::io::Error| KeyError::Unreadable {
            path: path.to_owned(),
            why: e.to_string(),
        };
        let meta = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyError::Missing(path.to_owned()))
            }
            other => other.map_err(unreadable)?,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::TooOpen {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let text = std::fs::read_to_string(path).map_err(unreadable)?;
        let bytes = hex::decode(text.trim()).map_err(|_| KeyError::Malformed(path.to_owned()))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Malformed(path.to_owned()))?;
        Ok(Self(bytes))
    }

    /// [`AuditKey::load`], or, when there is no file yet, a new random key
    /// written there, readable by its owner only. Returns whether it was
    /// created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        match Self::load(path) {
            Err(KeyError::Missing(_)) => {}
            other => return other.map(|k| (k, false)),
        }
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let unwritable = |e: std::io::Error| KeyError::Unreadable {
            path: path.to_owned(),
            why: format!("cannot create it: {e}"),
        };
        let mut options = std::fs::OpenOptions::new();
        // create_new: two processes starting at once cannot both write a key.
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(unwritable)?;
        std::io::Write::write_all(&mut file, format!("{}\n", hex::encode(bytes)).as_bytes())
            .map_err(unwritable)?;
        file.sync_all().map_err(unwritable)?;
        Ok((Self(bytes), true))
    }
}

/// A record to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAudit {
    pub at_ms: i64,
    /// `kycd:policy`, `kycd:outbox`, `api`, `operator`, a user name...
    pub actor: String,
    /// `decision`, `didit.update_status`, `policy.activated`, ...
    pub action: String,
    /// What it is about: a session, an action, a subject id.
    pub target: Option<String>,
    /// Ids and reasons; never personal data.
    pub details: Value,
}

/// A stored record with its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub details: Value,
    pub prev_hash: String,
    /// The record's chain value, computed as `alg` says.
    pub hash: String,
    /// [`ALG_HMAC`] or, for records from before the key, [`ALG_SHA256`].
    pub alg: String,
}

/// The newest record's place in the chain: what an anchor records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Head {
    pub seq: u64,
    /// The record's chain value (its MAC, for a keyed record).
    pub mac: String,
}

/// Something wrong with the chain, naming where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A sequence number is skipped: records were deleted in the middle.
    Missing { expected: u64, found: u64 },
    /// The record's previous value is not the value of the record before.
    Unlinked { seq: u64 },
    /// The record's content does not match its chain value.
    Edited { seq: u64, keyed: bool },
    /// A plain SHA-256 record after the chain became keyed.
    UnkeyedAfterKeyed { seq: u64, keyed_from: u64 },
    /// An `alg` this build does not know.
    UnknownAlg { seq: u64 },
    /// A keyed record, and no key to check it with.
    NoKey { seq: u64 },
    /// An anchor names a record after the chain's end.
    Truncated {
        anchored: u64,
        last: u64,
        source: String,
    },
    /// An anchor exists but the chain has no records at all.
    Emptied { anchored: u64, source: String },
    /// The anchored record exists with another value.
    Rewritten { seq: u64, source: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { expected, found } => write!(
                f,
                "chain broken at record {expected}: it is missing (the next stored record is {found}); \
                 records were deleted"
            ),
            Self::Unlinked { seq } => write!(
                f,
                "chain broken at record {seq}: its previous hash is not the hash of the record \
                 before it (a record was inserted, removed or moved)"
            ),
            Self::Edited { seq, keyed: true } => write!(
                f,
                "edited record {seq}: its content does not match its MAC (edited, or re-hashed \
                 without the audit key)"
            ),
            Self::Edited { seq, keyed: false } => write!(
                f,
                "edited record {seq}: its content does not match its hash"
            ),
            Self::UnkeyedAfterKeyed { seq, keyed_from } => write!(
                f,
                "forged record {seq}: it carries a plain SHA-256 hash, but the chain is keyed \
                 from record {keyed_from} on (written or re-hashed without the audit key)"
            ),
            Self::UnknownAlg { seq } => {
                write!(f, "record {seq} names a hash algorithm this kycd does not know")
            }
            Self::NoKey { seq } => write!(
                f,
                "record {seq} is keyed and the audit key is not available to check it"
            ),
            Self::Truncated {
                anchored,
                last,
                source,
            } => write!(
                f,
                "truncated: {source} anchors head record {anchored} but the chain ends at record {last}"
            ),
            Self::Emptied { anchored, source } => write!(
                f,
                "no records, but {source} anchors head record {anchored}: every record was deleted"
            ),
            Self::Rewritten { seq, source } => write!(
                f,
                "record {seq} does not carry the MAC {source} anchors for it: the chain was \
                 rewritten up to there"
            ),
        }
    }
}

impl Problem {
    /// Whether the problem is that the key is missing, not the chain.
    pub fn is_no_key(&self) -> bool {
        matches!(self, Self::NoKey { .. })
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Records checked.
    pub records: u64,
    /// The first record that does not chain, and why.
    pub first_broken: Option<(u64, String)>,
    /// The same, as a value.
    pub problem: Option<Problem>,
    /// The first keyed record, if any.
    pub keyed_from: Option<u64>,
    /// The newest record checked.
    pub head: Option<Head>,
    /// Records saying the server started over a broken chain: seq and what
    /// it had found.
    pub acknowledged: Vec<(u64, String)>,
}

type HmacSha256 = Hmac<Sha256>;

/// The fields a chain value covers, as stored.
struct Fields<'a> {
    seq: i64,
    at_ms: i64,
    actor: &'a str,
    action: &'a str,
    target: Option<&'a str>,
    details: &'a str,
}

fn feed(h: &mut impl sha2::digest::Update, prev: &str, f: &Fields<'_>) {
    for part in [
        prev,
        &f.seq.to_string(),
        &f.at_ms.to_string(),
        f.actor,
        f.action,
        f.target.unwrap_or(""),
        f.details,
    ] {
        // Length-prefixed, so no two different records hash alike.
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update(&[u8::from(f.target.is_some())]);
}

fn plain_hash(prev: &str, f: &Fields<'_>) -> String {
    let mut h = Sha256::new();
    feed(&mut h, prev, f);
    hex::encode(h.finalize())
}

fn mac_of(key: &AuditKey, prev: &str, f: &Fields<'_>) -> String {
    let mut m = <HmacSha256 as Mac>::new_from_slice(&key.0).expect("hmac takes any key length");
    feed(&mut m, prev, f);
    hex::encode(m.finalize().into_bytes())
}

/// What the store shares with its audit trail: the key, the head (for the
/// anchoring task to wake on), and whether the chain is known broken.
pub(crate) struct ChainState {
    key: OnceLock<AuditKey>,
    head: watch::Sender<Option<Head>>,
    broken: AtomicBool,
}

impl ChainState {
    pub(crate) fn open(conn: &Connection) -> Result<Arc<Self>, StoreError> {
        Ok(Self::new(last_head(conn)?))
    }

    /// The state of a chain whose newest record is `head`.
    pub(crate) fn new(head: Option<Head>) -> Arc<Self> {
        Arc::new(Self {
            key: OnceLock::new(),
            head: watch::Sender::new(head),
            broken: AtomicBool::new(false),
        })
    }

    /// The key, once set.
    pub(crate) fn key(&self) -> Option<&AuditKey> {
        self.key.get()
    }

    /// Key every record appended from now on; a second call keeps the first.
    pub(crate) fn set_key(&self, key: AuditKey) {
        let _ = self.key.set(key);
    }

    /// The newest record, updated after each commit that appended records.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Head>> {
        self.head.subscribe()
    }

    /// Record that the chain is known broken (the server started over it).
    pub(crate) fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Publish the head after the transaction that appended up to it has
    /// committed. Only ever moves forward: a backend whose commits finish
    /// on several connections may report them out of order.
    pub(crate) fn committed(&self, appended: Option<Head>) {
        if let Some(head) = appended {
            self.head.send_if_modified(|current| {
                let newer = current.as_ref().is_none_or(|c| c.seq < head.seq);
                if newer {
                    *current = Some(head);
                }
                newer
            });
        }
    }
}

fn last(conn: &Connection) -> Result<Option<(u64, String, String)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT seq, hash, alg FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?)),
        )
        .optional()?)
}

/// The newest record's place in the chain; `None` while it is empty.
pub(crate) fn last_head(conn: &Connection) -> Result<Option<Head>, StoreError> {
    Ok(last(conn)?.map(|(seq, mac, _)| Head { seq, mac }))
}

/// A record as it goes into the chain: its fields as stored and its
/// chain value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Chained {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
    pub alg: &'static str,
}

/// Chain `records` after `last` (the current end's seq, chain value and
/// `alg`, or `None` for an empty chain): the pure part of an append, the
/// same for every backend, which only has to read the end and store the
/// rows in one transaction that no other append can interleave with.
///
/// With a key, records are keyed. Without it (tests, a scratch store, a
/// store no server has opened yet) they are plain, which is only allowed
/// while the chain has no keyed record: after that, a plain record would
/// read as a forgery, so the append fails instead.
pub(crate) fn chain(
    records: &[NewAudit],
    last: Option<(u64, String, String)>,
    key: Option<&AuditKey>,
) -> Result<Vec<Chained>, StoreError> {
    let (mut seq, mut prev, last_alg) = match last {
        Some((seq, hash, alg)) => (seq as i64, hash, Some(alg)),
        None => (0, GENESIS.to_owned(), None),
    };
    if key.is_none() && last_alg.as_deref() == Some(ALG_HMAC) && !records.is_empty() {
        return Err(StoreError::Unavailable(
            "the audit trail is keyed and this process has no audit key \
             (KYCD_AUDIT_KEY_FILE)"
                .into(),
        ));
    }
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        seq += 1;
        let details = r.details.to_string();
        let fields = Fields {
            seq,
            at_ms: r.at_ms,
            actor: &r.actor,
            action: &r.action,
            target: r.target.as_deref(),
            details: &details,
        };
        let (hash, alg) = match key {
            Some(key) => (mac_of(key, &prev, &fields), ALG_HMAC),
            None => (plain_hash(&prev, &fields), ALG_SHA256),
        };
        out.push(Chained {
            seq,
            at_ms: r.at_ms,
            actor: r.actor.clone(),
            action: r.action.clone(),
            target: r.target.clone(),
            details,
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
            alg,
        });
    }
    Ok(out)
}

impl Chained {
    /// The head after the last of `rows`.
    pub(crate) fn head_of(rows: &[Chained]) -> Option<Head> {
        rows.last().map(|r| Head {
            seq: r.seq as u64,
            mac: r.hash.clone(),
        })
    }
}

/// Append `records` after the chain's current end, inside `tx`; returns the
/// new head, to hand to [`ChainState::committed`] after the commit.
pub(crate) fn append(
    tx: &Transaction<'_>,
    records: &[NewAudit],
    chain_state: &ChainState,
) -> Result<Option<Head>, StoreError> {
    if records.is_empty() {
        return Ok(None);
    }
    let rows = chain(records, last(tx)?, chain_state.key.get())?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO audit (seq, at_ms, actor, action, target, details, prev_hash, hash, alg)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for r in &rows {
        stmt.execute(params![
            r.seq,
            r.at_ms,
            r.actor,
            r.action,
            r.target,
            r.details,
            r.prev_hash,
            r.hash,
            r.alg
        ])?;
    }
    Ok(Chained::head_of(&rows))
}

/// A record as stored, every column as text or integer: what a backend
/// reads and hands to [`Walk::step`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
    pub alg: String,
}

impl Stored {
    /// The record as listed (its details parsed).
    pub(crate) fn into_record(self) -> Result<AuditRecord, StoreError> {
        Ok(AuditRecord {
            seq: self.seq as u64,
            at_ms: self.at_ms,
            actor: self.actor,
            action: self.action,
            target: self.target,
            details: serde_json::from_str(&self.details)
                .map_err(|e| StoreError::Corrupt(format!("audit details: {e}")))?,
            prev_hash: self.prev_hash,
            hash: self.hash,
            alg: self.alg,
        })
    }
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    Ok(Stored {
        seq: r.get(0)?,
        at_ms: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        details: r.get(5)?,
        prev_hash: r.get(6)?,
        hash: r.get(7)?,
        alg: r.get(8)?,
    })
}

/// The columns of [`Stored`], in its order.
pub(crate) const COLUMNS: &str = "seq, at_ms, actor, action, target, details, prev_hash, hash, alg";

/// Checks records one after the other, from a known starting point: pure
/// code, fed by each backend with the stored records in `seq` order
/// (all of them, or page by page), until [`Walk::step`] finds a problem
/// or the records run out; then [`Walk::verification`] says what it found.
pub(crate) struct Walk<'k> {
    key: Option<&'k AuditKey>,
    prev: String,
    expected: i64,
    keyed_from: Option<u64>,
    records: u64,
    head: Option<Head>,
    acknowledged: Vec<(u64, String)>,
}

impl<'k> Walk<'k> {
    /// A walk over the whole chain, from [`GENESIS`]: feed it every record.
    pub(crate) fn from_genesis(key: Option<&'k AuditKey>) -> Self {
        Self {
            key,
            prev: GENESIS.to_owned(),
            expected: 1,
            keyed_from: None,
            records: 0,
            head: None,
            acknowledged: Vec::new(),
        }
    }

    /// A walk from `anchor` on (already checked with [`check_anchor`] or its
    /// backend's equivalent): feed it the records after `anchor.seq`.
    /// `anchored_alg` is the anchored record's `alg`: the anchored record
    /// being keyed is what matters for the rule that no plain record may
    /// follow a keyed one.
    pub(crate) fn after_anchor(
        key: Option<&'k AuditKey>,
        anchor: &Head,
        anchored_alg: &str,
    ) -> Self {
        Self {
            key,
            prev: anchor.mac.clone(),
            expected: anchor.seq as i64 + 1,
            keyed_from: (anchored_alg == ALG_HMAC).then_some(anchor.seq),
            records: 0,
            head: Some(anchor.clone()),
            acknowledged: Vec::new(),
        }
    }

    /// Check the next stored record; `Some` is the first problem, after
    /// which the walk is over.
    pub(crate) fn step(&mut self, r: &Stored) -> Option<Problem> {
        self.records += 1;
        let seq = r.seq as u64;
        if r.seq != self.expected {
            return Some(Problem::Missing {
                expected: self.expected as u64,
                found: seq,
            });
        }
        if r.prev_hash != self.prev {
            return Some(Problem::Unlinked { seq });
        }
        let fields = Fields {
            seq: r.seq,
            at_ms: r.at_ms,
            actor: &r.actor,
            action: &r.action,
            target: r.target.as_deref(),
            details: &r.details,
        };
        let keyed = match r.alg.as_str() {
            ALG_HMAC => true,
            ALG_SHA256 => false,
            _ => return Some(Problem::UnknownAlg { seq }),
        };
        if keyed {
            let Some(key) = self.key else {
                return Some(Problem::NoKey { seq });
            };
            if mac_of(key, &self.prev, &fields) != r.hash {
                return Some(Problem::Edited { seq, keyed: true });
            }
            self.keyed_from.get_or_insert(seq);
        } else {
            if let Some(keyed_from) = self.keyed_from {
                return Some(Problem::UnkeyedAfterKeyed { seq, keyed_from });
            }
            if plain_hash(&self.prev, &fields) != r.hash {
                return Some(Problem::Edited { seq, keyed: false });
            }
        }
        if r.action == STARTED_OVER_BROKEN {
            let found = serde_json::from_str::<Value>(&r.details)
                .ok()
                .and_then(|d| d.get("found").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            self.acknowledged.push((seq, found));
        }
        self.prev.clone_from(&r.hash);
        self.expected += 1;
        self.head = Some(Head {
            seq,
            mac: r.hash.clone(),
        });
        None
    }

    /// What the walk found, `problem` being what [`Walk::step`] returned
    /// last (or a problem the backend found after the walk).
    pub(crate) fn verification(self, problem: Option<Problem>) -> Verification {
        Verification {
            records: self.records,
            first_broken: problem.as_ref().map(first_broken),
            problem,
            keyed_from: self.keyed_from,
            head: self.head,
            acknowledged: self.acknowledged,
        }
    }

    fn run(mut self, conn: &Connection, after_seq: i64) -> Result<Verification, StoreError> {
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq"
        ))?;
        let mut rows = stmt.query([after_seq])?;
        let mut problem = None;
        while let Some(row) = rows.next()? {
            problem = self.step(&read_row(row)?);
            if problem.is_some() {
                break;
            }
        }
        Ok(self.verification(problem))
    }
}

/// Where `p` is, and what it is, as [`Verification::first_broken`] says it.
fn first_broken(p: &Problem) -> (u64, String) {
    let seq = match p {
        Problem::Missing { expected, .. } => *expected,
        Problem::Unlinked { seq }
        | Problem::Edited { seq, .. }
        | Problem::UnkeyedAfterKeyed { seq, .. }
        | Problem::UnknownAlg { seq }
        | Problem::NoKey { seq }
        | Problem::Rewritten { seq, .. } => *seq,
        Problem::Truncated { anchored, .. } | Problem::Emptied { anchored, .. } => *anchored,
    };
    (seq, p.to_string())
}

impl Verification {
    /// The verification of a tail whose anchor did not hold: nothing after
    /// it was checked.
    pub(crate) fn anchor_failed(problem: Problem) -> Self {
        Self {
            records: 0,
            first_broken: Some(first_broken(&problem)),
            problem: Some(problem),
            keyed_from: None,
            head: None,
            acknowledged: Vec::new(),
        }
    }
}

/// Walk the whole chain. Keyed records need `key`.
pub fn verify(conn: &Connection, key: Option<&AuditKey>) -> Result<Verification, StoreError> {
    Walk::from_genesis(key).run(conn, 0)
}

/// [`check_anchor`]'s verdict, pure: `found` is the stored chain value of
/// the anchored record (`None`: there is no such record), `last` the
/// newest stored record's seq (`None`: no records), asked for only when
/// the anchored record is missing.
pub(crate) fn judge_anchor<E>(
    anchor: &Head,
    source: &str,
    found: Option<&str>,
    last: impl FnOnce() -> Result<Option<u64>, E>,
) -> Result<Option<Problem>, E> {
    if anchor.seq == 0 {
        return Ok(None);
    }
    Ok(match found {
        Some(mac) if mac == anchor.mac => None,
        Some(_) => Some(Problem::Rewritten {
            seq: anchor.seq,
            source: source.to_owned(),
        }),
        None => Some(match last()? {
            None => Problem::Emptied {
                anchored: anchor.seq,
                source: source.to_owned(),
            },
            Some(last) if last < anchor.seq => Problem::Truncated {
                anchored: anchor.seq,
                last,
                source: source.to_owned(),
            },
            // A gap exactly at the anchored record: the walk names it.
            Some(_) => Problem::Rewritten {
                seq: anchor.seq,
                source: source.to_owned(),
            },
        }),
    })
}

/// Check `anchor` (from `source`, e.g. "the event log at offset 12")
/// against the chain: its record must exist and carry exactly its MAC.
pub fn check_anchor(
    conn: &Connection,
    anchor: &Head,
    source: &str,
) -> Result<Option<Problem>, StoreError> {
    if anchor.seq == 0 {
        return Ok(None);
    }
    let found: Option<String> = conn
        .query_row(
            "SELECT hash FROM audit WHERE seq = ?1",
            [anchor.seq as i64],
            |r| r.get(0),
        )
        .optional()?;
    judge_anchor(anchor, source, found.as_deref(), || {
        Ok(last(conn)?.map(|(seq, _, _)| seq))
    })
}

/// The chain from `anchor` on: the anchor must match (see
/// [`check_anchor`]) and every record after it must chain to it. Without an
/// anchor, the whole chain. This is what the server checks at start;
/// everything before the anchor is sealed by the anchored MAC.
pub fn verify_tail(
    conn: &Connection,
    key: Option<&AuditKey>,
    anchor: Option<(&Head, &str)>,
) -> Result<Verification, StoreError> {
    let Some((anchor, source)) = anchor.filter(|(a, _)| a.seq > 0) else {
        return verify(conn, key);
    };
    if let Some(problem) = check_anchor(conn, anchor, source)? {
        return Ok(Verification::anchor_failed(problem));
    }
    let alg: String = conn.query_row(
        "SELECT alg FROM audit WHERE seq = ?1",
        [anchor.seq as i64],
        |r| r.get(0),
    )?;
    Walk::after_anchor(key, anchor, &alg).run(conn, anchor.seq as i64)
}

/// Records at or after `since_ms` with `seq` above `after_seq`, oldest first.
pub(crate) fn list(
    conn: &Connection,
    since_ms: i64,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM audit WHERE at_ms >= ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![since_ms, after_seq as i64, limit as i64], read_row)?;
    rows.map(|r| r?.into_record()).collect()
}

/// The store's side of the keyed chain.
impl SqliteStore {
    /// Key every record appended from now on. Set once, before serving;
    /// a second call keeps the first key.
    pub fn set_audit_key(&self, key: AuditKey) {
        let _ = self.chain.key.set(key);
    }

    pub(crate) fn audit_key(&self) -> Option<&AuditKey> {
        self.chain.key.get()
    }

    /// The newest record, updated after each commit that appended records.
    pub fn subscribe_audit_head(&self) -> watch::Receiver<Option<Head>> {
        self.chain.head.subscribe()
    }

    /// Record that the chain is known broken (the server started over it).
    pub fn mark_audit_broken(&self) {
        self.chain.broken.store(true, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
pub trait Audit: Send + Sync + 'static {
    /// Append records on their own (what no projection commit carries).
    async fn audit(&self, records: Vec<NewAudit>) -> Result<(), StoreError>;

    /// Oldest first, from `since_ms`, after `after_seq`.
    async fn list_audit(
        &self,
        since_ms: i64,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError>;

    /// Check the whole chain (keyed records with the store's key).
    async fn verify_audit(&self) -> Result<Verification, StoreError>;

    /// Whether the chain is known broken: the server found it broken at
    /// start and was told to serve anyway. Cheap; for readiness checks.
    fn audit_chain_broken(&self) -> bool {
        false
    }
}

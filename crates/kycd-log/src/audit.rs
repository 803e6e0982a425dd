//! The audit trail: who decided or did what, and why, in a hash chain.
//!
//! Every record carries the hash of the one before it, and its own hash is
//! SHA-256 over that previous hash and the record's stored fields exactly as
//! stored (no re-serialisation), so editing, removing or reordering any
//! record breaks the chain from that record on ([`verify`]). The first
//! record's previous hash is [`GENESIS`].
//!
//! Records hold ids, outcomes, rule ids and reasons, never documents or
//! other personal data. They are appended in the transaction of what they
//! record (a decision with its projection, a write-back with its result).

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::store::StoreError;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit(at_ms);
";

/// The previous hash of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    pub hash: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Records checked.
    pub records: u64,
    /// The first record that does not chain, and why.
    pub first_broken: Option<(u64, String)>,
}

fn hash_of(
    prev: &str,
    seq: i64,
    at_ms: i64,
    actor: &str,
    action: &str,
    target: Option<&str>,
    details: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        prev,
        &seq.to_string(),
        &at_ms.to_string(),
        actor,
        action,
        target.unwrap_or(""),
        details,
    ] {
        // Length-prefixed, so no two different records hash alike.
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update([u8::from(target.is_some())]);
    hex::encode(h.finalize())
}

/// Append `records` after the chain's current end, inside `tx`.
pub(crate) fn append(tx: &Transaction<'_>, records: &[NewAudit]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let last: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (mut seq, mut prev) = last.unwrap_or((0, GENESIS.to_owned()));
    let mut stmt = tx.prepare_cached(
        "INSERT INTO audit (seq, at_ms, actor, action, target, details, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for r in records {
        seq += 1;
        let details = r.details.to_string();
        let hash = hash_of(
            &prev,
            seq,
            r.at_ms,
            &r.actor,
            &r.action,
            r.target.as_deref(),
            &details,
        );
        stmt.execute(params![
            seq, r.at_ms, r.actor, r.action, r.target, details, prev, hash
        ])?;
        prev = hash;
    }
    Ok(())
}

type Row = (
    i64,
    i64,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
);

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

const COLUMNS: &str = "seq, at_ms, actor, action, target, details, prev_hash, hash";

/// Walk the whole chain.
pub(crate) fn verify(conn: &Connection) -> Result<Verification, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    let mut prev = GENESIS.to_owned();
    let mut expected_seq = 1i64;
    let mut records = 0u64;
    while let Some(row) = rows.next()? {
        let (seq, at_ms, actor, action, target, details, prev_hash, hash) = read_row(row)?;
        records += 1;
        let broken = if seq != expected_seq {
            Some(format!(
                "expected record {expected_seq} here (one is missing)"
            ))
        } else if prev_hash != prev {
            Some("its previous hash is not the hash of the record before it".to_owned())
        } else if hash_of(
            &prev,
            seq,
            at_ms,
            &actor,
            &action,
            target.as_deref(),
            &details,
        ) != hash
        {
            Some("its content does not match its hash".to_owned())
        } else {
            None
        };
        if let Some(why) = broken {
            return Ok(Verification {
                records,
                first_broken: Some((seq as u64, why)),
            });
        }
        prev = hash;
        expected_seq += 1;
    }
    Ok(Verification {
        records,
        first_broken: None,
    })
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
    rows.map(|r| {
        let (seq, at_ms, actor, action, target, details, prev_hash, hash) = r?;
        Ok(AuditRecord {
            seq: seq as u64,
            at_ms,
            actor,
            action,
            target,
            details: serde_json::from_str(&details)
                .map_err(|e| StoreError::Corrupt(format!("audit details: {e}")))?,
            prev_hash,
            hash,
        })
    })
    .collect()
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

    /// Check the whole chain.
    async fn verify_audit(&self) -> Result<Verification, StoreError>;
}

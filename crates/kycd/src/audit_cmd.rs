//! `kycd audit verify`: check the audit trail in a data directory: every
//! record's MAC and link to the one before, then every anchor the event
//! log holds (and the anchor file, if one is configured) against the chain.
//! It reads the files and writes nothing, so it may run beside a server.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use kycd_log::anchor;
use kycd_log::audit::{self, AuditKey, KeyError};
use kycd_log::store::SqliteStore;
use kycd_server::Settings;
use rusqlite::{Connection, OpenFlags};

use crate::config::{self, ServeArgs};

#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// Check every record's MAC and its link to the one before, and the
    /// chain against the anchors in the event log (and the anchor file).
    /// Exits 0 when intact, 1 naming what was tampered with, 2 when the
    /// directory holds no kycd data or the chain cannot be checked.
    Verify(ServeArgs),
}

/// Key `store` like the server does, so that records a command appends
/// chain on. A missing key file is fine while the chain has no keyed
/// record (the store then refuses to append after one).
pub fn key_store(store: &SqliteStore, settings: &Settings) -> anyhow::Result<()> {
    match AuditKey::load(&settings.audit().key_path(&settings.data_dir)) {
        Ok(key) => store.set_audit_key(key),
        Err(KeyError::Missing(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Exit 2: nothing to verify here, or no way to verify it.
fn cannot(why: String) -> anyhow::Result<ExitCode> {
    println!("cannot verify the audit trail: {why}");
    Ok(ExitCode::from(2))
}

fn tampered(problem: &audit::Problem) -> anyhow::Result<ExitCode> {
    println!("audit trail tampered: {problem}");
    Ok(ExitCode::from(1))
}

fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )
}

fn open_read_only(path: &Path) -> anyhow::Result<Connection> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("open {}", path.display()))
}

pub fn run(cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    let AuditCmd::Verify(args) = cmd;
    let loaded = config::load(&args, &config::process_env())?;
    let settings = &loaded.settings;
    config::embedded_only(settings, "audit verify")?;
    let dir = &settings.data_dir;
    let store_db = dir.join("store.db");
    let events_db = dir.join("events.db");
    let not_kycd = |what: &str| {
        cannot(format!(
            "{} is not a kycd data directory: {what}",
            dir.display()
        ))
    };
    if !dir.is_dir() {
        return not_kycd("it does not exist");
    }
    match (store_db.is_file(), events_db.is_file()) {
        (false, false) => return not_kycd("it holds no store.db and no events.db"),
        (false, true) => {
            return not_kycd(
                "it holds an event log (events.db) but no store.db: the store, and the audit \
                 trail in it, is gone",
            )
        }
        (true, false) => return not_kycd("it holds a store.db but no event log (events.db)"),
        (true, true) => {}
    }
    let conn = open_read_only(&store_db)?;
    if !has_column(&conn, "audit", "seq").context("read store.db")? {
        return not_kycd("its store.db holds no audit trail");
    }
    if !has_column(&conn, "audit", "alg")? {
        // A store from before keyed records: opening it adds the column,
        // as the server would (every record in it is plain SHA-256).
        drop(conn);
        SqliteStore::open(&store_db, false)
            .with_context(|| format!("open store {}", store_db.display()))?;
        return run(AuditCmd::Verify(args));
    }
    let key_path = settings.audit().key_path(dir);
    let key = match AuditKey::load(&key_path) {
        Ok(key) => Some(key),
        Err(KeyError::Missing(_)) => None,
        Err(e) => return cannot(e.to_string()),
    };

    let v = audit::verify(&conn, key.as_ref())?;
    for (seq, found) in &v.acknowledged {
        println!(
            "note: record {seq}: the server was started over a broken chain \
             (--allow-broken-audit); it had found: {found}"
        );
    }
    if let Some(problem) = &v.problem {
        if problem.is_no_key() {
            return cannot(format!(
                "{problem}: audit key file {} does not exist (KYCD_AUDIT_KEY_FILE)",
                key_path.display()
            ));
        }
        return tampered(problem);
    }

    let anchors = match anchor::log_anchors(&events_db) {
        Ok(a) => a,
        Err(e) => return cannot(e.to_string()),
    };
    let mut checked: Option<&audit::Head> = None;
    for a in &anchors {
        // Consecutive anchors of the same head need one look.
        if checked == Some(&a.head) {
            continue;
        }
        if let Some(problem) = audit::check_anchor(&conn, &a.head, &a.source())? {
            return tampered(&problem);
        }
        checked = Some(&a.head);
    }
    if let Some(path) = &settings.audit_anchor_file {
        match anchor::read_anchor_file(path) {
            Ok(Some(head)) => {
                let source = format!("the anchor file {}", path.display());
                if let Some(problem) = audit::check_anchor(&conn, &head, &source)? {
                    return tampered(&problem);
                }
            }
            Ok(None) => println!(
                "warning: the anchor file {} does not exist (yet); only the event log's \
                 anchors were checked",
                path.display()
            ),
            Err(e) => return cannot(e.to_string()),
        }
    }

    let head_seq = v.head.as_ref().map_or(0, |h| h.seq);
    let mut summary = format!("audit chain intact: {} records", v.records);
    match v.keyed_from {
        Some(1) => summary.push_str(", all keyed"),
        Some(k) => summary.push_str(&format!(
            ", keyed from record {k} on (the plain records before it are sealed by it)"
        )),
        None if v.records > 0 => summary.push_str(
            ", none keyed (written before the audit key; not protected against re-hashing)",
        ),
        None => {}
    }
    let anchored = anchors.last().map_or(0, |a| a.head.seq);
    if anchors.is_empty() {
        summary.push_str("; the event log holds no anchor yet");
    } else {
        summary.push_str(&format!(
            "; anchored in the event log up to record {anchored}"
        ));
    }
    println!("{summary}");
    if head_seq > anchored {
        println!(
            "unanchored tail: {} records after record {anchored} are not anchored yet; \
             their removal could not be detected",
            head_seq - anchored
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! `kycd audit verify`: check the audit trail: every record's MAC and link
//! to the one before, then every anchor the event log holds (and the
//! anchor file, if one is configured) against the chain. On the embedded
//! backend it reads the data directory's files; on PostgreSQL
//! (`KYCD_DATABASE_URL`) the database, through read-only transactions
//! without migrating anything. It writes nothing, so it may run beside a
//! server (or a cluster of them).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use kycd_log::anchor::{self, AnchoredChain};
use kycd_log::audit::{self, AuditKey, KeyError};
use kycd_log::postgres::anchor::PgChain;
use kycd_log::postgres::{Database, PoolSettings};
use kycd_log::store::SqliteStore;
use kycd_server::Settings;
use rusqlite::{Connection, OpenFlags};

use crate::config::{self, ServeArgs};

#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// Check every record's MAC and its link to the one before, and the
    /// chain against the anchors in the event log (and the anchor file).
    /// Exits 0 when intact, 1 naming what was tampered with, 2 when the
    /// directory (or database) holds no kycd data or the chain cannot be
    /// checked.
    Verify(ServeArgs),
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
    if let Some(url) = &settings.database_url {
        let url = url.expose().to_owned();
        return block_on(verify_database(settings, &url));
    }
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
    drop(conn);
    block_on(verify_chain(
        &anchor::Files {
            store_db,
            events_db,
        },
        settings,
    ))
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// The chain in the database `url` names, read-only: no migration, and
/// every transaction refuses writes.
async fn verify_database(settings: &Settings, url: &str) -> anyhow::Result<ExitCode> {
    let pool = PoolSettings {
        max_connections: 2,
        application_name: "kycd audit verify".into(),
    };
    // The error never holds the URL (it may hold a password).
    let db = match Database::connect_read_only(url, &pool).await {
        Ok(db) => db,
        Err(e) => {
            return cannot(format!(
                "cannot reach the database (KYCD_DATABASE_URL): {e}"
            ))
        }
    };
    let chain = PgChain::new(db.clone());
    let tables = chain.exists().await.context("read the database's schema")?;
    if !tables {
        return cannot(
            "the database (KYCD_DATABASE_URL) holds no kycd event log and audit trail in \
             its schema (no server has started on it, or the URL's search_path names \
             another schema)"
                .into(),
        );
    }
    let verified = verify_chain(&chain, settings).await;
    db.close().await;
    verified
}

/// Verify `chain` and every anchor of it, and say what was found.
async fn verify_chain(chain: &dyn AnchoredChain, settings: &Settings) -> anyhow::Result<ExitCode> {
    let key_path = settings.audit().key_path(&settings.data_dir);
    let key = match AuditKey::load(&key_path) {
        Ok(key) => Some(key),
        Err(KeyError::Missing(_)) => None,
        Err(e) => return cannot(e.to_string()),
    };

    let v = chain.verify(key.as_ref()).await?;
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

    let anchors = match chain.anchors().await {
        Ok(a) => a,
        Err(e) => return cannot(e.to_string()),
    };
    let mut heads: Vec<(audit::Head, String)> = Vec::with_capacity(anchors.len());
    for a in &anchors {
        // Consecutive anchors of the same head need one look.
        if heads.last().map(|(h, _)| h) != Some(&a.head) {
            heads.push((a.head.clone(), a.source()));
        }
    }
    if let Some(problem) = chain.check_anchors(&heads).await? {
        return tampered(&problem);
    }
    if let Some(path) = &settings.audit_anchor_file {
        match anchor::read_anchor_file(path) {
            Ok(Some(head)) => {
                let source = format!("the anchor file {}", path.display());
                if let Some(problem) = chain.check_anchors(&[(head, source)]).await? {
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

//! `kycd backup --to DIR`: an online-consistent copy of a data directory,
//! taken beside a running server.
//!
//! The two SQLite files are written by independent connections, so no
//! single snapshot covers both. The copy is made so that it is a state the
//! directory could have been in after a power loss, which the server
//! already recovers from:
//!
//! 1. the store (`store.db`) first, with `VACUUM INTO` (a consistent
//!    snapshot in one read transaction that never blocks the writer). The
//!    store is a projection: every event it reflects, up to its consumer
//!    offsets, was appended to the log before this snapshot;
//! 2. then the event log (`events.db`), the same way. It holds every event
//!    the store copy reflects, and perhaps more: a restored server replays
//!    that tail, as after a crash;
//! 3. the one thing in the log that points *into* the store is an audit
//!    anchor (`kycd.audit.anchor`, [`kycd_log::anchor`]): an anchor of
//!    records the store copy does not hold would read as a truncated chain.
//!    Such anchors were appended after the store's snapshot, so after every
//!    event the store copy reflects; the log copy is cut just before the
//!    first of them. A prefix of an append-only log is the log as it was
//!    at an earlier moment.
//!
//! The audit key (`audit.key`) is copied too when it lives in the data
//! directory; a key kept elsewhere (`KYCD_AUDIT_KEY_FILE`) is a secret to
//! back up separately, and the command says so.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use kycd_log::anchor::ANCHOR_KIND;
use kycd_log::audit::Head;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::config::{self, ServeArgs};

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The directory to write the backup into (created; it must not
    /// already hold a store.db or events.db).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    #[command(flatten)]
    pub config: ServeArgs,
}

/// How long to wait on a busy database before giving up.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn open_read_only(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("open {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Copy the database at `from` to `to` as one consistent snapshot.
fn snapshot(from: &Path, to: &Path) -> anyhow::Result<()> {
    let conn = open_read_only(from)?;
    let target = to
        .to_str()
        .with_context(|| format!("backup path {} is not UTF-8", to.display()))?;
    conn.execute("VACUUM INTO ?1", [target])
        .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn quick_check(conn: &Connection, what: &Path) -> anyhow::Result<()> {
    let result: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if result != "ok" {
        bail!("the copy {} fails quick_check: {result}", what.display());
    }
    Ok(())
}

fn sync(path: &Path) -> anyhow::Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("sync {}", path.display()))
}

/// A reader running as root on files another user owns could leave
/// root-owned `-shm`/`-wal` files behind that the server then cannot open.
#[cfg(unix)]
fn check_owner(store_db: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(store_db)
        .with_context(|| format!("stat {}", store_db.display()))?
        .uid();
    if rustix::process::geteuid().is_root() && owner != 0 {
        bail!(
            "{} belongs to uid {owner}: run the backup as that user (for the Debian \
             package: runuser -u kycd -- kycd backup ...), so that SQLite's shared-memory \
             files stay the server's",
            store_db.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

pub fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let loaded = config::load(&args.config, &config::process_env())?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let settings = &loaded.settings;
    config::embedded_only(settings, "backup")?;
    let dir = &settings.data_dir;
    let (store_db, events_db) = (dir.join("store.db"), dir.join("events.db"));
    for f in [&store_db, &events_db] {
        if !f.is_file() {
            bail!(
                "{} is not a kycd data directory: {} is missing",
                dir.display(),
                f.display()
            );
        }
    }
    check_owner(&store_db)?;
    let to = &args.to;
    std::fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
    if std::fs::canonicalize(to)? == std::fs::canonicalize(dir)? {
        bail!("--to must not be the data directory itself");
    }
    let (store_out, events_out) = (to.join("store.db"), to.join("events.db"));
    for f in [&store_out, &events_out] {
        if f.exists() {
            bail!(
                "{} already exists: back up into a new directory",
                f.display()
            );
        }
    }
    let partial = |p: &Path| -> PathBuf {
        let mut s = p.as_os_str().to_owned();
        s.push(".partial");
        PathBuf::from(s)
    };
    let (store_tmp, events_tmp) = (partial(&store_out), partial(&events_out));
    for f in [&store_tmp, &events_tmp] {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove {}", f.display())),
        }
    }

    // 1. The store.
    snapshot(&store_db, &store_tmp)?;
    let store = Connection::open(&store_tmp)?;
    quick_check(&store, &store_tmp)?;
    let audit_head: Option<(u64, String)> = store
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .context("read the store copy's audit head")?;
    let applied: u64 = store
        .query_row(
            "SELECT COALESCE(MAX(offset), 0) FROM consumer_offsets",
            [],
            |r| r.get(0),
        )
        .context("read the store copy's consumer offsets")?;
    drop(store);

    // 2. The log.
    snapshot(&events_db, &events_tmp)?;
    let mut log = Connection::open(&events_tmp)?;
    quick_check(&log, &events_tmp)?;

    // 3. Cut the log before the first anchor of records the store copy
    //    does not hold.
    let held = audit_head.as_ref().map_or(0, |(seq, _)| *seq);
    let mut cut = None;
    {
        let mut stmt =
            log.prepare("SELECT offset, body FROM events WHERE kind = ?1 ORDER BY offset")?;
        let mut rows = stmt.query([ANCHOR_KIND])?;
        while let Some(row) = rows.next()? {
            let offset: u64 = row.get(0)?;
            let body: Vec<u8> = row.get(1)?;
            let head: Head = serde_json::from_slice(&body)
                .with_context(|| format!("the anchor at log offset {offset} is not readable"))?;
            if head.seq > held {
                cut = Some(offset);
                break;
            }
        }
    }
    let mut dropped = 0;
    if let Some(cut) = cut {
        let tx = log.transaction()?;
        tx.execute("DELETE FROM dedupe WHERE event_offset >= ?1", [cut])?;
        dropped = tx.execute("DELETE FROM events WHERE offset >= ?1", [cut])?;
        tx.commit()?;
    }
    let head: u64 = log.query_row("SELECT COALESCE(MAX(offset), 0) FROM events", [], |r| {
        r.get(0)
    })?;
    if head < applied {
        // Cannot happen if the server writes as described above; refuse
        // rather than hand out a store ahead of its log.
        bail!(
            "the log copy ends at offset {head} but the store copy reflects offset {applied}; \
             the backup in {} is not consistent and was not finished",
            to.display()
        );
    }
    drop(log);

    for (tmp, out) in [(&store_tmp, &store_out), (&events_tmp, &events_out)] {
        sync(tmp)?;
        std::fs::rename(tmp, out)
            .with_context(|| format!("rename {} to {}", tmp.display(), out.display()))?;
    }

    // The audit key, when it is part of the data directory.
    let key_path = settings.audit().key_path(dir);
    let in_dir = settings.audit_key_file.is_none();
    let key_note = if in_dir && key_path.is_file() {
        let key_out = to.join("audit.key");
        std::fs::copy(&key_path, &key_out)
            .with_context(|| format!("copy {}", key_path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_out, std::fs::Permissions::from_mode(0o600))?;
        }
        sync(&key_out)?;
        "audit.key copied (mode 0600)".to_owned()
    } else if in_dir {
        "no audit.key in the data directory yet".to_owned()
    } else {
        format!(
            "the audit key is at {} (KYCD_AUDIT_KEY_FILE): back it up separately",
            key_path.display()
        )
    };
    sync(to)?;

    println!("backup of {} written to {}", dir.display(), to.display());
    println!("store.db: reflects the log up to offset {applied}, audit records up to {held}");
    println!(
        "events.db: up to offset {head}{}",
        if dropped > 0 {
            format!(" ({dropped} newer events left out: they anchor audit records newer than the store copy)")
        } else {
            String::new()
        }
    );
    println!("{key_note}");
    if settings.audit_anchor_file.is_some() {
        println!(
            "note: the anchor file (KYCD_AUDIT_ANCHOR_FILE) is not copied; it will name a newer \
             head than a restored backup holds (see README, Backups)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

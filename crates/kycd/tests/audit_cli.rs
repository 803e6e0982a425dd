//! The audit tamper test: `kycd audit verify` against real data directories
//! (a real event log and store, keyed and anchored by the server's own
//! code), tampered with the way an auditor would try: every kind of
//! tampering must exit non-zero naming what it found, and an intact chain
//! must exit 0. Then the server: it refuses to start on a broken chain, and
//! starts with `--allow-broken-audit`, recording that it did.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::Mac;
use kycd_log::anchor::{self, AuditOptions};
use kycd_log::audit::{self, Audit, NewAudit};
use kycd_log::sqlite_log::{SqliteLog, SqliteLogOptions};
use kycd_log::store::SqliteStore;
use kycd_log::EventLog;
use rusqlite::{params, Connection};
use serde_json::json;
use sha2::{Digest, Sha256};

fn verify(data_dir: &Path) -> (i32, String) {
    verify_with(data_dir, &[])
}

fn verify_with(data_dir: &Path, envs: &[(&str, &Path)]) -> (i32, String) {
    support::audit_verify(data_dir, envs)
}

fn record(i: usize) -> NewAudit {
    NewAudit {
        at_ms: 1_000 + i as i64,
        actor: "kycd:policy".into(),
        action: "decision".into(),
        target: Some(format!("session-{i}")),
        details: json!({"decision_id": format!("dec_{i}"), "outcome": "decline"}),
    }
}

/// Start the server's audit side on `dir` the way `kycd serve` does
/// (key, start check, anchoring task), append `n` records, and stop it,
/// which anchors the head.
async fn serve_and_append(dir: &Path, from: usize, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let (store_db, events_db) = (dir.join("store.db"), dir.join("events.db"));
    let log: Arc<dyn EventLog> =
        Arc::new(SqliteLog::open(&events_db, SqliteLogOptions::default()).unwrap());
    let store = SqliteStore::open(&store_db, false).unwrap();
    let anchoring = anchor::attach(
        &store,
        &store_db,
        &events_db,
        dir,
        &AuditOptions::default(),
        900,
    )
    .await
    .unwrap();
    for i in from..from + n {
        store.audit(vec![record(i)]).await.unwrap();
    }
    let (stop, stopped) = tokio::sync::watch::channel(true);
    anchoring.run(log.clone(), || 2_000, stopped).await;
    drop(stop);
    log.shutdown().await;
}

/// A data directory with 150 keyed records, anchored twice (at 100 and at
/// 150).
async fn data_dir(root: &Path) -> PathBuf {
    let dir = root.join("data");
    serve_and_append(&dir, 0, 100).await;
    serve_and_append(&dir, 100, 50).await;
    let (code, out) = verify(&dir);
    assert_eq!(code, 0, "{out}");
    dir
}

fn db(dir: &Path) -> Connection {
    Connection::open(dir.join("store.db")).unwrap()
}

fn exec(dir: &Path, sql: &str) -> usize {
    db(dir).execute(sql, []).unwrap()
}

#[derive(Debug, Clone)]
struct Row {
    seq: i64,
    at_ms: i64,
    actor: String,
    action: String,
    target: Option<String>,
    details: String,
    prev_hash: String,
    hash: String,
    alg: String,
}

fn rows(dir: &Path) -> Vec<Row> {
    let conn = db(dir);
    let mut stmt = conn
        .prepare(
            "SELECT seq, at_ms, actor, action, target, details, prev_hash, hash, alg
             FROM audit ORDER BY seq",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(Row {
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
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn write_row(conn: &Connection, r: &Row) {
    conn.execute(
        "INSERT OR REPLACE INTO audit (seq, at_ms, actor, action, target, details, prev_hash, hash, alg)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![r.seq, r.at_ms, r.actor, r.action, r.target, r.details, r.prev_hash, r.hash, r.alg],
    )
    .unwrap();
}

/// The chain's fields as the attacker knows them from the source: each
/// length-prefixed, then whether there is a target.
fn feed(h: &mut impl sha2::digest::Update, prev: &str, r: &Row) {
    for part in [
        prev,
        &r.seq.to_string(),
        &r.at_ms.to_string(),
        &r.actor,
        &r.action,
        r.target.as_deref().unwrap_or(""),
        &r.details,
    ] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update(&[u8::from(r.target.is_some())]);
}

fn plain_hash(prev: &str, r: &Row) -> String {
    let mut h = Sha256::new();
    feed(&mut h, prev, r);
    hex::encode(h.finalize())
}

fn mac_with_another_key(prev: &str, r: &Row) -> String {
    let mut m = hmac::Hmac::<Sha256>::new_from_slice(b"a key the attacker made up").unwrap();
    feed(&mut m, prev, r);
    hex::encode(m.finalize().into_bytes())
}

/// Re-hash every record from `from` on, chaining, with `hash` and `alg`.
fn rehash_from(dir: &Path, from: i64, hash: fn(&str, &Row) -> String, alg: &str) {
    let all = rows(dir);
    let conn = db(dir);
    let mut prev = if from == 1 {
        audit::GENESIS.to_owned()
    } else {
        all[(from - 2) as usize].hash.clone()
    };
    for r in all.iter().filter(|r| r.seq >= from) {
        let mut r = r.clone();
        r.prev_hash.clone_from(&prev);
        r.alg = alg.to_owned();
        r.hash = hash(&prev, &r);
        write_row(&conn, &r);
        prev = r.hash;
    }
}

fn assert_tampered(dir: &Path, names: &[&str]) {
    let (code, out) = verify(dir);
    assert_eq!(code, 1, "{out}");
    for name in names {
        assert!(out.contains(name), "expected {name:?} in:\n{out}");
    }
}

#[tokio::test]
async fn an_intact_chain_verifies_and_names_its_unanchored_tail() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path()).await;
    let (code, out) = verify(&dir);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("intact: 150 records, all keyed; anchored in the event log up to record 150"),
        "{out}"
    );
    assert!(!out.contains("unanchored"), "{out}");

    // Records the server has not anchored yet (as after a crash) are named.
    let store = SqliteStore::open(&dir.join("store.db"), false).unwrap();
    store.set_audit_key(audit::AuditKey::load(&dir.join("audit.key")).unwrap());
    store.audit(vec![record(150), record(151)]).await.unwrap();
    let (code, out) = verify(&dir);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("unanchored tail: 2 records after record 150"),
        "{out}"
    );
}

#[tokio::test]
async fn an_edited_record_is_named() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path()).await;
    // An approval written over a decline, hashes left alone.
    assert_eq!(
        exec(
            &dir,
            r#"UPDATE audit SET details = '{"decision_id":"dec_2","outcome":"approve"}' WHERE seq = 3"#,
        ),
        1
    );
    assert_tampered(&dir, &["edited record 3"]);
}

#[tokio::test]
async fn two_reordered_records_are_found() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path()).await;
    let all = rows(&dir);
    let (mut a, mut b) = (all[3].clone(), all[4].clone());
    std::mem::swap(&mut a.seq, &mut b.seq);
    let conn = db(&dir);
    write_row(&conn, &a);
    write_row(&conn, &b);
    assert_tampered(&dir, &["chain broken at record 4"]);
}

#[tokio::test]
async fn an_inserted_record_is_found() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path()).await;
    // Make room after record 5, then put a record there that links to 5.
    exec(&dir, "UPDATE audit SET seq = -seq WHERE seq > 5");
    exec(&dir, "UPDATE audit SET seq = 1 - seq WHERE seq < 0");
    let five = rows(&dir)[4].clone();
    let mut inserted = Row {
        seq: 6,
        details: json!({"decision_id": "dec_x", "outcome": "approve"}).to_string(),
        prev_hash: five.hash.clone(),
        ..five.clone()
    };
    inserted.hash = plain_hash(&five.hash, &inserted);
    write_row(&db(&dir), &inserted);
    assert_tampered(&dir, &["record 6"]);
}

#[tokio::test]
async fn an_edit_rehashed_forward_with_plain_sha256_is_found() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path()).await;
    exec(
        &dir,
        r#"UPDATE audit SET details = '{"decision_id":"dec_2","outcome":"approve"}' WHERE seq = 3"#,
    );
    rehash_from(&dir, 3, plain_hash, audit::ALG_SHA256);
    assert_tampered(&dir, &["forged record 3", "keyed from record 1"]);

    // The whole chain re-hashed plain, as if no key had ever been used:
    // the anchors in the event log still hold the MACs.
    let whole = root.path().join("whole");
    serve_and_append(&whole, 0, 20).await;
    exec(
        &whole,
        r#"UPDATE audit SET details = '{"decision_id":"dec_2","outcome":"approve"}' WHERE seq = 3"#,
    );
    rehash_from(&whole, 1, plain_hash, audit::ALG_SHA256);
    assert_tampered(
        &whole,
        &["record 20 does not carry the MAC the event log (offset"],
    );
}

#[tokio::test]
async fn an_edit_rehashed_forward_without_the_key_is_found() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path()).await;
    exec(
        &dir,
        r#"UPDATE audit SET details = '{"decision_id":"dec_2","outcome":"approve"}' WHERE seq = 3"#,
    );
    rehash_from(&dir, 3, mac_with_another_key, audit::ALG_HMAC);
    assert_tampered(&dir, &["edited record 3", "does not match its MAC"]);
}

#[tokio::test]
async fn deleting_the_newest_record_is_a_truncation() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path()).await;
    assert_eq!(exec(&dir, "DELETE FROM audit WHERE seq = 150"), 1);
    assert_tampered(
        &dir,
        &[
            "truncated:",
            "head record 150 but the chain ends at record 149",
        ],
    );
}

#[tokio::test]
async fn deleting_the_newest_hundred_records_is_a_truncation() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path()).await;
    assert_eq!(exec(&dir, "DELETE FROM audit WHERE seq > 50"), 100);
    assert_tampered(
        &dir,
        &[
            "truncated:",
            "head record 100 but the chain ends at record 50",
        ],
    );
}

#[tokio::test]
async fn deleting_every_record_is_found() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path()).await;
    assert_eq!(exec(&dir, "DELETE FROM audit"), 150);
    assert_tampered(&dir, &["no records, but", "every record was deleted"]);
}

#[tokio::test]
async fn a_forged_record_with_a_correct_plain_hash_is_found() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path()).await;
    let head = rows(&dir).pop().unwrap();
    let mut forged = Row {
        seq: 151,
        action: "policy.activated".into(),
        target: None,
        details: json!({"version": "lenient"}).to_string(),
        prev_hash: head.hash.clone(),
        alg: audit::ALG_SHA256.into(),
        ..head.clone()
    };
    forged.hash = plain_hash(&head.hash, &forged);
    write_row(&db(&dir), &forged);
    assert_tampered(&dir, &["forged record 151"]);
}

#[tokio::test]
async fn a_deleted_store_is_not_a_kycd_data_directory() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path()).await;
    for file in ["store.db", "store.db-wal", "store.db-shm"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    let (code, out) = verify(&dir);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("is not a kycd data directory")
            && out.contains("no store.db: the store, and the audit trail in it, is gone"),
        "{out}"
    );
}

#[test]
fn a_mistyped_data_dir_is_refused_and_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("kycd-dta");
    let (code, out) = verify(&missing);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("is not a kycd data directory: it does not exist"),
        "{out}"
    );
    assert!(!missing.exists(), "verify must not create the directory");

    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, out) = verify(&empty);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("holds no store.db and no events.db"), "{out}");
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

#[tokio::test]
async fn a_store_from_before_the_key_is_sealed_by_the_first_keyed_record() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("old");
    std::fs::create_dir_all(&dir).unwrap();
    {
        // Plain SHA-256 records in the table as earlier versions made it.
        let store = SqliteStore::open(&dir.join("store.db"), false).unwrap();
        for i in 0..5 {
            store.audit(vec![record(i)]).await.unwrap();
        }
    }
    exec(&dir, "ALTER TABLE audit DROP COLUMN alg");
    drop(SqliteLog::open(&dir.join("events.db"), SqliteLogOptions::default()).unwrap());
    let (code, out) = verify(&dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact: 5 records, none keyed"), "{out}");

    // The first start keys the trail: one record seals the plain ones.
    serve_and_append(&dir, 5, 3).await;
    let all = rows(&dir);
    assert_eq!(all[5].action, audit::KEYED);
    assert!(all[..5].iter().all(|r| r.alg == audit::ALG_SHA256));
    assert!(all[5..].iter().all(|r| r.alg == audit::ALG_HMAC));
    let (code, out) = verify(&dir);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("intact: 9 records, keyed from record 6"),
        "{out}"
    );

    // Now re-hashing the plain part after an edit no longer passes.
    exec(
        &dir,
        r#"UPDATE audit SET details = '{"decision_id":"dec_1","outcome":"approve"}' WHERE seq = 2"#,
    );
    let all = rows(&dir);
    let conn = db(&dir);
    let mut prev = all[0].hash.clone();
    for r in &all[1..5] {
        let mut r = r.clone();
        r.prev_hash.clone_from(&prev);
        r.hash = plain_hash(&prev, &r);
        write_row(&conn, &r);
        prev = r.hash;
    }
    assert_tampered(&dir, &["chain broken at record 6"]);
}

#[tokio::test]
async fn the_server_refuses_a_broken_chain_unless_told_and_then_audits_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path()).await;
    exec(&dir, "DELETE FROM audit WHERE seq > 140");
    let log = root.path().join("serve.log");
    let refused = support::serve_refused(&dir, &log, &[]);
    assert!(
        refused.contains("the audit chain is broken: truncated:")
            && refused.contains("head record 150 but the chain ends at record 140")
            && refused.contains("--allow-broken-audit"),
        "{refused}"
    );

    // Told to, it serves, and the chain says so.
    let anchor_file = root.path().join("anchor.json");
    let mut server = support::Server::start(
        &dir,
        &log,
        &[
            ("KYCD_ALLOW_BROKEN_AUDIT", "true".to_owned()),
            (
                "KYCD_AUDIT_ANCHOR_FILE",
                anchor_file.to_string_lossy().into_owned(),
            ),
        ],
    );
    let all = rows(&dir);
    let started = all
        .iter()
        .find(|r| r.action == audit::STARTED_OVER_BROKEN)
        .expect("a record of the start over a broken chain");
    assert_eq!(started.seq, 141);
    assert!(
        started.details.contains("truncated:")
            && started.details.contains("chain ends at record 140"),
        "{}",
        started.details
    );
    // The running server anchors its new head in the event log.
    let head = rows(&dir).pop().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let newest = anchor::newest_log_anchor(&dir.join("events.db")).unwrap();
        // And writes the anchor file after the log's anchor (a moment
        // later: both are polled for).
        let in_file = anchor::read_anchor_file(&anchor_file).ok().flatten();
        let at_head = |seq: u64, mac: &str| seq == head.seq as u64 && mac == head.hash;
        if newest.is_some_and(|a| at_head(a.head.seq, &a.head.mac))
            && in_file.is_some_and(|f| at_head(f.seq, &f.mac))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not anchor record {} in the log and the file",
            head.seq
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();

    // The truncation stays visible to the auditor, with the acknowledgement.
    let (code, out) = verify(&dir);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("note: record 141: the server was started over a broken chain")
            && out.contains("truncated:"),
        "{out}"
    );

    // One acknowledged start is enough: the tail from the new anchor on is
    // sound, so the server starts again without the flag.
    let server = support::Server::start(&dir, &log, &[]);
    drop(server);
}

#[test]
fn the_flag_is_spelled_as_documented() {
    let out = Command::new(env!("CARGO_BIN_EXE_kycd"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--allow-broken-audit"));
}

#[tokio::test]
async fn the_anchor_file_is_checked_too() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path()).await;
    let file = root.path().join("head.json");
    let env = [("KYCD_AUDIT_ANCHOR_FILE", file.as_path())];
    let (code, out) = verify_with(&dir, &env);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("the anchor file") && out.contains("does not exist"),
        "{out}"
    );

    let head = rows(&dir).pop().unwrap();
    let anchored = audit::Head {
        seq: head.seq as u64,
        mac: head.hash,
    };
    anchor::write_anchor_file(&file, &anchored).unwrap();
    let (code, out) = verify_with(&dir, &env);
    assert_eq!(code, 0, "{out}");

    // A head the event log never saw (say, its last anchor was lost with
    // the records after it): the file alone shows the truncation.
    anchor::write_anchor_file(
        &file,
        &audit::Head {
            seq: 160,
            mac: anchored.mac.clone(),
        },
    )
    .unwrap();
    let (code, out) = verify_with(&dir, &env);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("truncated: the anchor file")
            && out.contains("head record 160 but the chain ends at record 150"),
        "{out}"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn a_key_file_others_may_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path()).await;
    let key = dir.join("audit.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out) = verify(&dir);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("may be read by group or others (mode 644)"),
        "{out}"
    );
    assert!(!out.contains(&std::fs::read_to_string(&key).unwrap().trim().to_owned()));
}

fn backup(data_dir: &Path, to: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kycd"))
        .args(["backup", "--data-dir"])
        .arg(data_dir)
        .arg("--to")
        .arg(to)
        .env_remove("KYCD_CONFIG")
        .env_remove("KYCD_AUDIT_KEY_FILE")
        .env_remove("KYCD_AUDIT_ANCHOR_FILE")
        .output()
        .expect("run kycd backup");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `kycd backup` copies a data directory whose chain verifies, refuses to
/// overwrite a backup, and refuses a directory with no kycd data.
#[tokio::test]
async fn a_backup_verifies_and_is_never_written_over() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path()).await;
    let copy = root.path().join("copy");
    let (code, out) = backup(&dir, &copy);
    assert_eq!(code, 0, "{out}");
    let (code, out) = verify(&copy);
    assert_eq!(code, 0, "the copy's chain and anchors verify: {out}");
    assert_eq!(
        rows(&copy).len(),
        rows(&dir).len(),
        "every record is in the copy"
    );
    let (code, out) = backup(&dir, &copy);
    assert_ne!(
        code, 0,
        "a second backup into the same place is refused: {out}"
    );
    let (code, _) = verify(&copy);
    assert_eq!(code, 0, "and the first one is untouched");
    let empty = root.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, out) = backup(&empty, &root.path().join("copy2"));
    assert_ne!(code, 0, "nothing to back up: {out}");
}

/// A backup taken while records are appended and anchored is a state the
/// server recovers from: its chain verifies against its anchors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_writes_verifies() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path()).await;
    let writer = {
        let dir = dir.clone();
        tokio::spawn(async move { serve_and_append(&dir, 150, 3000).await })
    };
    let mut copies = Vec::new();
    for n in 0..3 {
        let (d, to) = (dir.clone(), root.path().join(format!("copy{n}")));
        let (code, out) = tokio::task::spawn_blocking(move || backup(&d, &to))
            .await
            .unwrap();
        assert_eq!(code, 0, "{out}");
        copies.push(root.path().join(format!("copy{n}")));
    }
    writer.await.unwrap();
    for copy in &copies {
        let (code, out) = verify(copy);
        assert_eq!(code, 0, "{}: {out}", copy.display());
    }
}

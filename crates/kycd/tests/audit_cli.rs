//! `kycd audit verify` against real store files: an empty chain is intact,
//! a written chain verifies, and editing or removing one stored record makes
//! verification fail at that record.

use std::path::Path;
use std::process::Command;

use kycd_log::audit::{Audit, NewAudit};
use kycd_log::store::SqliteStore;
use serde_json::json;

fn verify(data_dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kycd"))
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir)
        .env_remove("KYCD_CONFIG")
        .output()
        .expect("run kycd audit verify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn chain(data_dir: &Path, n: usize) {
    std::fs::create_dir_all(data_dir).unwrap();
    let store = SqliteStore::open(&data_dir.join("store.db"), false).unwrap();
    for i in 0..n {
        store
            .audit(vec![NewAudit {
                at_ms: 1_000 + i as i64,
                actor: "kycd:policy".into(),
                action: "decision".into(),
                target: Some(format!("session-{i}")),
                details: json!({"decision_id": format!("dec_{i}"), "outcome": "decline"}),
            }])
            .await
            .unwrap();
    }
}

fn tamper(data_dir: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(data_dir.join("store.db")).unwrap();
    assert_eq!(conn.execute(sql, []).unwrap(), 1, "{sql}");
}

#[test]
fn an_empty_chain_is_intact_and_the_data_directory_is_created() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("fresh");
    let (code, out) = verify(&dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact: 0 records"), "{out}");
    assert!(dir.join("store.db").exists());
}

#[tokio::test]
async fn an_edited_record_breaks_the_chain_at_that_record() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    chain(&dir, 5).await;
    let (code, out) = verify(&dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact: 5 records"), "{out}");

    // An approval written over a decline, hashes left alone.
    tamper(
        &dir,
        r#"UPDATE audit SET details = '{"decision_id":"dec_2","outcome":"approve"}' WHERE seq = 3"#,
    );
    let (code, out) = verify(&dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("broken at record 3"), "{out}");
}

#[tokio::test]
async fn a_removed_record_or_a_rehashed_one_is_found_too() {
    let root = tempfile::tempdir().unwrap();
    let removed = root.path().join("removed");
    chain(&removed, 4).await;
    tamper(&removed, "DELETE FROM audit WHERE seq = 2");
    let (code, out) = verify(&removed);
    assert_eq!(
        (code, out.contains("broken at record 3")),
        (1, true),
        "{out}"
    );

    // Rewriting a record's own hash does not help: the next one points at
    // the old hash.
    let rehashed = root.path().join("rehashed");
    chain(&rehashed, 4).await;
    tamper(
        &rehashed,
        "UPDATE audit SET hash = 'ab' || substr(hash, 3) WHERE seq = 2",
    );
    let (code, out) = verify(&rehashed);
    assert_eq!(
        (code, out.contains("broken at record 2")),
        (1, true),
        "{out}"
    );
}

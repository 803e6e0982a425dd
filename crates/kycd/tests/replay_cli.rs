//! `kycd replay` against a real data directory: it compares the stored
//! decisions with a candidate policy and leaves its report for the
//! console's policy page.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use didit::canonical::Value as Canon;
use didit::signature::{sign, Secret};
use kycd_core::FixedClock;
use kycd_server::Settings;
use serde_json::{json, Value};

const SECRET: &str = "replay-cli-secret";

#[tokio::test]
async fn replay_reports_and_leaves_its_report_in_the_data_directory() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let settings = Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: data.clone(),
        webhook_secrets: vec![Secret::new(SECRET)],
        ..Settings::default()
    };
    let running = kycd_server::start(settings, Arc::new(FixedClock::at_secs(1_774_970_000)))
        .await
        .unwrap();
    let vectors: Value = didit::testdata::vectors();
    let body = vectors["cases"][0]["body"].as_str().unwrap();
    let signed = sign(
        &Secret::new(SECRET),
        &Canon::parse(body.as_bytes()).unwrap(),
    );
    let mut req = reqwest::Client::new()
        .post(format!("http://{}/webhooks/didit", running.addr))
        .body(signed.body.clone());
    for (k, v) in &signed.headers {
        req = req.header(*k, v);
    }
    assert_eq!(req.send().await.unwrap().status(), 200);
    // The log also holds the audit trail's anchors, which may come first:
    // wait for the head, not for offset 1.
    let head = running.app.log.head().await.unwrap();
    let mut applied = running.app.applied.clone();
    tokio::time::timeout(Duration::from_secs(20), applied.wait_for(|o| *o >= head))
        .await
        .expect("the delivery is decided")
        .unwrap();
    running.shutdown().await.unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_kycd"))
        .args(["replay", "--policy", "builtin", "--data-dir"])
        .arg(&data)
        .env_remove("KYCD_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 decisions stored in the window: 1 reproduced byte for byte, 0 would change outcome, 0 would change reasons only, 0 decided by a person and kept, 0 not decided again"),
        "{stdout}"
    );
    let saved: Value =
        serde_json::from_slice(&std::fs::read(data.join(kycd_server::REPLAY_REPORT_FILE)).unwrap())
            .unwrap();
    assert_eq!(saved["candidate"], "builtin");
    assert_eq!(saved["report"]["compared"], 1);
    assert_eq!(saved["report"]["identical"], 1);
    assert_eq!(saved["report"]["total"], 1);
    assert_eq!(saved["report"]["categories"]["reproduced"], 1);
    assert_eq!(saved["report"]["by_trigger"]["delivery"]["reproduced"], 1);
    assert_eq!(
        saved["report"]["matrix"],
        json!({"approve": {"approve": 1}})
    );
    assert!(!data.join("replay-latest.json.tmp").exists());
}

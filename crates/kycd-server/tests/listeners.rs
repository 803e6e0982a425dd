//! The public and admin listeners (`KYCD_ADMIN_LISTEN`), and readiness as
//! `/readyz` reports it: the real server on `127.0.0.1:0`.

use std::sync::Arc;

use didit::canonical::Value as Canon;
use didit::signature::{sign, Secret};
use kycd_core::SystemClock;
use kycd_server::readiness::Check;
use kycd_server::{Running, Settings};
use serde_json::{json, Value};

const SECRET: &str = "listeners-test-secret-Vb4nQ9sLk2XwRt7Pz0Ma";
const TOKEN: &str = "listeners-test-token-0123456789";

async fn start(admin: bool) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        listen: "127.0.0.1:0".into(),
        admin_listen: admin.then(|| "127.0.0.1:0".to_owned()),
        data_dir: dir.path().to_path_buf(),
        webhook_secrets: vec![Secret::new(SECRET)],
        api_token: Some(Secret::new(TOKEN)),
        ..Settings::default()
    };
    let running = kycd_server::start(settings, Arc::new(SystemClock))
        .await
        .unwrap();
    (running, dir)
}

async fn deliver(base: &str, n: u32) -> u16 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let raw = format!(
        r#"{{"event_id":"listeners-evt-{n}","session_id":"listeners-s-{n}","status":"In Progress","timestamp":{now},"webhook_type":"status.updated"}}"#
    );
    let signed = sign(&Secret::new(SECRET), &Canon::parse(raw.as_bytes()).unwrap());
    let mut req = reqwest::Client::new()
        .post(format!("{base}/webhooks/didit"))
        .body(signed.body);
    for (k, v) in signed.headers {
        req = req.header(k, v);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn status(url: String) -> u16 {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn with_an_admin_listener_the_public_one_serves_only_the_intake_and_health() {
    let (running, _dir) = start(true).await;
    let public = format!("http://{}", running.addr);
    let admin = format!("http://{}", running.admin_addr.expect("an admin listener"));
    assert_ne!(public, admin);

    assert_eq!(deliver(&public, 1).await, 200);
    for path in ["/healthz", "/readyz"] {
        assert_eq!(status(format!("{public}{path}")).await, 200, "public {path}");
    }
    for path in [
        "/metrics",
        "/api/v1/sessions",
        "/api/v1/sessions/listeners-s-1",
        "/console/",
        "/console/dashboard",
    ] {
        assert_eq!(status(format!("{public}{path}")).await, 404, "public {path}");
    }
    for path in [
        "/metrics",
        "/api/v1/sessions",
        "/healthz",
        "/readyz",
        "/console/",
    ] {
        let got = status(format!("{admin}{path}")).await;
        assert!(got != 404 && got < 500, "admin {path}: {got}");
    }
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_an_admin_listener_one_listener_serves_everything() {
    let (running, _dir) = start(false).await;
    assert_eq!(running.admin_addr, None);
    let base = format!("http://{}", running.addr);
    assert_eq!(deliver(&base, 2).await, 200);
    for path in ["/healthz", "/readyz", "/metrics", "/api/v1/sessions"] {
        assert_eq!(status(format!("{base}{path}")).await, 200, "{path}");
    }
    running.shutdown().await.unwrap();
}

async fn readyz(base: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("{base}/readyz")).await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn readiness_names_a_failing_check_and_recovers_when_it_passes() {
    let (running, _dir) = start(false).await;
    let base = format!("http://{}", running.addr);
    let (code, body) = readyz(&base).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["failing"], json!([]));
    for check in ["event_log", "store", "projector", "audit_chain"] {
        assert_eq!(body["checks"][check], "ok", "{body}");
    }

    // The audit trail's verification reports through this slot.
    running.app.readiness.report(Check::AuditChain, false);
    let (code, body) = readyz(&base).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["failing"], json!(["audit_chain"]));
    assert_eq!(body["checks"]["audit_chain"], "failing");

    running.app.readiness.report(Check::AuditChain, true);
    let (code, body) = readyz(&base).await;
    assert_eq!(code, 200, "{body}");
    running.shutdown().await.unwrap();
}

//! The public and admin listeners (`KYCD_ADMIN_LISTEN`), and readiness as
//! `/readyz` reports it: the real server on `127.0.0.1:0`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use didit::canonical::Value as Canon;
use didit::signature::{sign, Secret};
use kycd_core::SystemClock;
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
        assert_eq!(
            status(format!("{public}{path}")).await,
            200,
            "public {path}"
        );
    }
    for path in [
        "/metrics",
        "/api/v1/sessions",
        "/api/v1/sessions/listeners-s-1",
        "/console/",
        "/console/dashboard",
    ] {
        assert_eq!(
            status(format!("{public}{path}")).await,
            404,
            "public {path}"
        );
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

/// Poll `/readyz` until `want` holds; its last answer.
async fn wait_readyz(base: &str, what: &str, want: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = readyz(base).await;
        if want(code, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never {what}: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readiness_fails_while_the_audit_chain_is_broken_and_recovers_when_it_is_mended() {
    let (running, dir) = start(false).await;
    let base = format!("http://{}", running.addr);
    let body = wait_readyz(&base, "ready", |code, _| code == 200).await;
    assert_eq!(body["failing"], json!([]));
    for check in ["event_log", "store", "projector", "audit_chain"] {
        assert_eq!(body["checks"][check], "ok", "{body}");
    }

    // Rewrite the newest audit record's MAC behind the server's back.
    let db = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let (seq, mac): (i64, String) = db
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let forged = "0".repeat(mac.len());
    db.execute("UPDATE audit SET hash = ?1 WHERE seq = ?2", (&forged, seq))
        .unwrap();
    let body = wait_readyz(&base, "not ready", |code, body| {
        code == 503 && body["failing"] == json!(["audit_chain"])
    })
    .await;
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"]["audit_chain"], "failing");
    let text = body.to_string();
    for internal in [&*dir.path().to_string_lossy(), "store.db", &forged, "seq"] {
        assert!(
            !text.contains(internal),
            "/readyz shows {internal:?}: {text}"
        );
    }

    // Mended, it turns ready again with no restart.
    db.execute("UPDATE audit SET hash = ?1 WHERE seq = ?2", (&mac, seq))
        .unwrap();
    wait_readyz(&base, "ready again", |code, body| {
        code == 200 && body["failing"] == json!([])
    })
    .await;
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_projector_is_stuck_and_recovers_when_it_moves() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        webhook_secrets: vec![Secret::new(SECRET)],
        api_token: Some(Secret::new(TOKEN)),
        projector_stall_secs: 1,
        ..Settings::default()
    };
    let running = kycd_server::start(settings, Arc::new(SystemClock))
        .await
        .unwrap();
    let base = format!("http://{}", running.addr);
    wait_readyz(&base, "ready", |code, _| code == 200).await;

    // Hold the store's write lock, so the projector cannot commit what a
    // delivery brings.
    let db = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert_eq!(deliver(&base, 10).await, 200);
    let body = wait_readyz(&base, "not ready", |code, body| {
        code == 503 && body["failing"] == json!(["projector"])
    })
    .await;
    assert_eq!(body["checks"]["projector"], "failing");

    // Let go: the projector catches up and readiness follows by itself.
    db.execute_batch("ROLLBACK").unwrap();
    wait_readyz(&base, "ready again", |code, body| {
        code == 200 && body["failing"] == json!([]) && body["checks"]["projector_lag"] == 0
    })
    .await;
    running.shutdown().await.unwrap();
}

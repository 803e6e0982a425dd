//! A full disk, for real and without root: the running server's file-size
//! limit (RLIMIT_FSIZE) is lowered to nothing with prlimit(2), so every write
//! to the event log fails as it would on a full disk. Deliveries must be
//! answered 503 (Didit retries), `/readyz` must say not ready and name the
//! event log without any internals, and once the limit is raised again it
//! must become ready on its own, with no delivery needed to prove it.
//! Nothing acknowledged is lost.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use didit::canonical::Value;
use didit::signature::{sign, Secret};
use rustix::process::{getrlimit, prlimit, Pid, Resource, Rlimit};
use serde_json::Value as Json;

mod support;
use support::{tail, Server};

const SECRET: &str = "full-disk-test-secret-Hq8vT2mLx0RaZ4eWc7Nb";
const TOKEN: &str = "full-disk-test-api-token";

/// Bounds a hung test; readiness is expected to follow within a second or
/// two of each change.
const DEADLINE: Duration = Duration::from_secs(30);

fn delivery(n: usize) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let raw = format!(
        r#"{{"created_at":{now},"environment":"live","event_id":"full-disk-evt-{n}","session_id":"full-disk-session-{n}","status":"In Progress","timestamp":{now},"vendor_data":"full-disk-user-{n}","webhook_type":"status.updated","workflow_id":"wf-1"}}"#
    );
    let payload = Value::parse(raw.as_bytes()).expect("payload parses");
    let signed = sign(&Secret::new(SECRET), &payload);
    (signed.body, signed.headers)
}

async fn deliver(client: &reqwest::Client, base: &str, n: usize) -> (u16, Json) {
    let (body, headers) = delivery(n);
    let mut req = client.post(format!("{base}/webhooks/didit")).body(body);
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("delivery {n} got no answer: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Json::Null))
}

async fn readyz(client: &reqwest::Client, base: &str) -> (u16, String) {
    let resp = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Poll `/readyz` until `want` holds for its status and body.
async fn wait_ready(
    client: &reqwest::Client,
    base: &str,
    what: &str,
    want: impl Fn(u16, &Json) -> bool,
) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, text) = readyz(client, base).await;
        let body: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
        if want(status, &body) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never became {what}: {status} {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_readyz_not_ready_and_it_recovers_on_its_own() {
    let root = tempfile::TempDir::new().unwrap();
    let data_dir = root.path().join("data");
    let log = root.path().join("server.log");
    let server = Server::start(
        &data_dir,
        &log,
        &[
            ("KYCD_WEBHOOK_SECRETS", SECRET.to_owned()),
            ("KYCD_API_TOKEN", TOKEN.to_owned()),
        ],
    );
    let base = server.base.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut acked = Vec::new();
    for n in 0..3 {
        let (status, body) = deliver(&client, &base, n).await;
        assert_eq!(status, 200, "{body}");
        acked.push(body["id"].as_str().unwrap().to_owned());
    }
    wait_ready(&client, &base, "ready", |s, _| s == 200).await;

    // The disk is full: no file of the server's can grow by a byte.
    // The server inherited this process's limits, so they are what to
    // restore afterwards.
    let before = getrlimit(Resource::Fsize);
    let pid = Pid::from_raw(server.pid() as i32).expect("server pid");
    prlimit(
        Some(pid),
        Resource::Fsize,
        Rlimit {
            current: Some(0),
            maximum: before.maximum,
        },
    )
    .expect("lower the server's file-size limit");

    let mut refused = Vec::new();
    for n in 3..6 {
        let (status, body) = deliver(&client, &base, n).await;
        assert_eq!(
            status,
            503,
            "a delivery the log cannot take: {body}; server log:\n{}",
            tail(&log)
        );
        refused.push(n);
    }
    let text = wait_ready(&client, &base, "not ready", |s, b| {
        s == 503 && b["ready"] == false && b["failing"] == serde_json::json!(["event_log"])
    })
    .await;
    // Names the check, nothing internal: no path, no error text.
    let dir = data_dir.to_string_lossy();
    for internal in [&*dir, "events.db", "too large", "EFBIG", "sqlite", "error"] {
        assert!(
            !text.to_lowercase().contains(&internal.to_lowercase()),
            "/readyz shows {internal:?}: {text}"
        );
    }

    // Room again. No delivery arrives: readiness must find out by itself.
    prlimit(Some(pid), Resource::Fsize, before).expect("restore the file-size limit");
    wait_ready(&client, &base, "ready again", |s, b| {
        s == 200 && b["ready"] == true && b["failing"] == serde_json::json!([])
    })
    .await;

    // Didit's retries of what was refused are taken now, and new ones too.
    for n in refused.into_iter().chain(6..8) {
        let (status, body) = deliver(&client, &base, n).await;
        assert_eq!(status, 200, "delivery {n} after recovery: {body}");
        assert_eq!(body["status"], "accepted", "{body}");
        acked.push(body["id"].as_str().unwrap().to_owned());
    }

    // Every acknowledged delivery is in the log.
    for id in &acked {
        let r = client
            .get(format!("{base}/api/v1/events/{id}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{id} is not in the log");
    }
}

//! Black-box tests of the intake and the read API: the real server on
//! `127.0.0.1:0`, a temporary data directory, and a clock pinned to the
//! vectors' timestamp.

use std::sync::Arc;
use std::time::{Duration, Instant};

use didit::canonical::Value as Canon;
use didit::signature::{sign, Secret};
use didit::testdata::vectors;
use kycd_core::FixedClock;
use kycd_server::{Running, Settings};
use serde_json::{json, Value};

const NOW: i64 = 1_774_970_000;
const TOKEN: &str = "test-token-0123456789";

struct TestApp {
    running: Option<Running>,
    base: String,
    http: reqwest::Client,
    clock: FixedClock,
    _dir: tempfile::TempDir,
}

fn secret() -> String {
    vectors()["secret"].as_str().unwrap().to_owned()
}

async fn spawn_with(f: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        webhook_secrets: vec![Secret::new(secret())],
        api_token: Some(Secret::new(TOKEN)),
        ..Settings::default()
    };
    f(&mut settings);
    let clock = FixedClock::at_secs(NOW);
    let running = kycd_server::start(settings, Arc::new(clock.clone()))
        .await
        .unwrap();
    TestApp {
        base: format!("http://{}", running.addr),
        running: Some(running),
        http: reqwest::Client::new(),
        clock,
        _dir: dir,
    }
}

async fn spawn() -> TestApp {
    spawn_with(|_| {}).await
}

impl TestApp {
    async fn deliver(&self, body: impl Into<Vec<u8>>, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/webhooks/didit", self.base))
            .body(body.into());
        let mut has_ct = false;
        for (k, v) in headers {
            has_ct |= k.eq_ignore_ascii_case("content-type");
            req = req.header(*k, *v);
        }
        if !has_ct {
            req = req.header("content-type", "application/json");
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Sign `payload` with the vectors' secret and deliver it.
    async fn deliver_signed(&self, payload: &Value) -> (u16, Value) {
        let text = payload.to_string();
        let signed = signed_text(&text);
        let headers: Vec<(&str, &str)> = signed
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        self.deliver(signed.body.clone(), &headers).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{}", self.base, path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Events stored from outside kycd: the log also holds kycd's own
    /// audit anchors (`kycd.audit.anchor`), which come and go with timing.
    async fn head(&self) -> u64 {
        let log = &self.running.as_ref().unwrap().app.log;
        let events = log.read(0, 100_000).await.unwrap();
        events
            .iter()
            .filter(|e| {
                e.kind != kycd_log::anchor::ANCHOR_KIND
                    && e.kind != kycd_engine::projector::POLICY_ACTIVATED
            })
            .count() as u64
    }

    async fn quarantined(&self) -> u64 {
        self.running
            .as_ref()
            .unwrap()
            .app
            .log
            .count_quarantine()
            .await
            .unwrap()
    }

    /// Poll until the session is projected and `pred` holds.
    async fn session_where(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.get(&format!("/api/v1/sessions/{id}")).await;
            if status == 200 && pred(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "session {id} never matched; last: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `text` as Didit would send it, signed with the vectors' secret.
fn signed_text(text: &str) -> didit::signature::Signed {
    sign(
        &Secret::new(secret()),
        &Canon::parse(text.as_bytes()).unwrap(),
    )
}

fn case_headers(case: &Value) -> Vec<(String, String)> {
    case["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

fn as_refs(h: &[(String, String)]) -> Vec<(&str, &str)> {
    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test]
async fn every_vector_is_accepted_stored_byte_exact_and_projected() {
    for case in vectors()["cases"].as_array().unwrap() {
        let app = spawn().await;
        let name = case["name"].as_str().unwrap();
        let body = case["body"].as_str().unwrap();
        let headers = case_headers(case);
        let (status, answer) = app.deliver(body, &as_refs(&headers)).await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(answer["status"], "accepted", "{name}");
        let id = answer["id"].as_str().unwrap();
        assert!(id.starts_with("evt_"));
        let (s, event) = app.get(&format!("/api/v1/events/{id}")).await;
        assert_eq!(s, 200);
        assert_eq!(event["signature"], "raw", "{name}");
        let stored = app
            .running
            .as_ref()
            .unwrap()
            .app
            .log
            .get(&id.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.body,
            body.as_bytes(),
            "{name}: body stored byte for byte"
        );
        let payload: Value = serde_json::from_str(body).unwrap();
        if let Some(sid) = payload["session_id"].as_str() {
            assert_eq!(event["didit_event_id"], payload["event_id"]);
            let session = app.session_where(sid, |_| true).await;
            assert_eq!(session["status"], payload["status"], "{name}");
            assert_eq!(session["vendor_data"], payload["vendor_data"], "{name}");
            // kycd decides on deliveries that carry Didit's decision.
            let decided = payload.get("decision").is_some()
                && ["Approved", "Declined", "In Review", "Abandoned"]
                    .contains(&payload["status"].as_str().unwrap_or(""));
            assert_eq!(session["decision"].is_null(), !decided, "{name}: {session}");
            assert_eq!(session["history"].as_array().unwrap().len(), 1);
        }
    }
}

#[tokio::test]
async fn a_reencoded_body_is_accepted_through_v2() {
    let v = vectors();
    let case = &v["cases"][0];
    let app = spawn().await;
    let headers = case_headers(case);
    let (status, answer) = app
        .deliver(case["reencoded_body"].as_str().unwrap(), &as_refs(&headers))
        .await;
    assert_eq!(status, 200, "{answer}");
    let (_, event) = app
        .get(&format!(
            "/api/v1/events/{}",
            answer["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(event["signature"], "v2");
}

fn payload(session: &str, status: &str, ts: i64, event_id: Option<&str>) -> Value {
    let mut p = json!({
        "session_id": session, "status": status, "timestamp": ts,
        "webhook_type": "status.updated", "vendor_data": "user-7", "environment": "live",
    });
    if let Some(e) = event_id {
        p["event_id"] = json!(e);
    }
    p
}

#[tokio::test]
async fn duplicates_are_acknowledged_with_the_original_id_and_stored_once() {
    let app = spawn().await;
    let first = payload("s-dup", "Approved", NOW, Some("e-1"));
    let (s1, a1) = app.deliver_signed(&first).await;
    assert_eq!((s1, a1["status"].as_str()), (200, Some("accepted")));
    // The same delivery again.
    let (s2, a2) = app.deliver_signed(&first).await;
    assert_eq!((s2, a2["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(a1["id"], a2["id"]);
    // A retry that carries a new event_id but the same content.
    let (_, a3) = app
        .deliver_signed(&payload("s-dup", "Approved", NOW, Some("e-2")))
        .await;
    assert_eq!(
        (a3["status"].as_str(), &a3["id"]),
        (Some("duplicate"), &a1["id"])
    );
    // Without event_id, the compound key (session, type, timestamp, status)
    // identifies the delivery even if other content differs.
    let mut a = payload("s-compound", "In Review", NOW, None);
    let (_, first) = app.deliver_signed(&a).await;
    a["vendor_data"] = json!("changed");
    let (_, again) = app.deliver_signed(&a).await;
    assert_eq!(again["status"], "duplicate");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(app.head().await, 2);
}

#[tokio::test]
async fn out_of_order_deliveries_never_move_a_session_backwards() {
    let app = spawn().await;
    for (status, ts, id) in [
        ("Approved", NOW, "a"),
        ("In Progress", NOW - 30, "b"),
        ("Not Started", NOW - 60, "c"),
    ] {
        let (s, _) = app
            .deliver_signed(&payload("s-ooo", status, ts, Some(id)))
            .await;
        assert_eq!(s, 200);
    }
    let session = app
        .session_where("s-ooo", |s| {
            s["history"].as_array().is_some_and(|h| h.len() == 3)
        })
        .await;
    assert_eq!(session["status"], "Approved");
    let applied: Vec<bool> = session["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["applied"].as_bool().unwrap())
        .collect();
    assert_eq!(applied, vec![true, false, false]);
}

#[tokio::test]
async fn bad_deliveries_get_clear_answers_and_nothing_is_stored() {
    let app = spawn().await;
    let v = vectors();
    let case = &v["cases"][0];
    let body = case["body"].as_str().unwrap().to_owned();
    let good = case_headers(case);
    let good = as_refs(&good);
    let wrong = sign(
        &Secret::new("wrong-secret"),
        &Canon::parse(body.as_bytes()).unwrap(),
    );
    let wrong: Vec<(&str, &str)> = wrong
        .headers
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let mut changed = body.clone().into_bytes();
    changed[60] ^= 0x01;
    let ts_mismatch: Vec<(&str, &str)> = good
        .iter()
        .map(|(k, v)| {
            if *k == "X-Timestamp" {
                (*k, "1774970001")
            } else {
                (*k, *v)
            }
        })
        .collect();
    let mut text_plain = good.clone();
    text_plain.push(("content-type", "text/plain"));
    let simple_only: Vec<(&str, &str)> = good
        .iter()
        .filter(|(k, _)| *k == "X-Signature-Simple")
        .copied()
        .collect();

    // (what, body, headers, expected status, expected error code)
    type Row<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>, u16, &'a str);
    let table: Vec<Row> = vec![
        (
            "wrong secret",
            body.clone().into_bytes(),
            wrong,
            401,
            "invalid_signature",
        ),
        (
            "one changed byte",
            changed,
            good.clone(),
            401,
            "invalid_signature",
        ),
        (
            "no headers",
            body.clone().into_bytes(),
            vec![],
            401,
            "invalid_signature",
        ),
        (
            "x-timestamp disagrees",
            body.clone().into_bytes(),
            ts_mismatch,
            401,
            "invalid_signature",
        ),
        (
            "simple only, not accepted",
            body.clone().into_bytes(),
            simple_only,
            401,
            "invalid_signature",
        ),
        (
            "not json, not signed",
            b"hello".to_vec(),
            good.clone(),
            401,
            "invalid_signature",
        ),
        (
            "wrong content type",
            body.clone().into_bytes(),
            text_plain,
            415,
            "unsupported_media_type",
        ),
        (
            "2 MiB body",
            vec![b' '; 2 * 1024 * 1024],
            good.clone(),
            413,
            "payload_too_large",
        ),
    ];
    for (what, bytes, headers, status, code) in table {
        let (s, answer) = app.deliver(bytes, &headers).await;
        assert_eq!(s, status, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{what}");
        assert!(answer["error"]["message"].is_string(), "{what}");
    }
    // Stale and future: the same delivery against a moved clock.
    for offset in [301, -301] {
        app.clock.set_secs(NOW + offset);
        let (s, answer) = app.deliver(body.clone(), &good).await;
        assert_eq!(
            (s, answer["error"]["code"].as_str()),
            (401, Some("invalid_signature")),
            "{offset}"
        );
    }
    app.clock.set_secs(NOW);
    assert_eq!(app.head().await, 0, "nothing was stored");
    assert_eq!(app.quarantined().await, 0);
    // And the good delivery still goes through afterwards.
    let (s, _) = app.deliver(body, &good).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn authentic_but_unusable_deliveries_are_quarantined_with_a_400() {
    let app = spawn().await;
    let key = Secret::new(secret());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not json", b"{not json".to_vec()),
        (
            "no timestamp",
            br#"{"session_id":"s","status":"Approved","webhook_type":"status.updated"}"#.to_vec(),
        ),
        (
            "no webhook_type",
            format!(r#"{{"data":{{}},"timestamp":{NOW}}}"#).into_bytes(),
        ),
        (
            "session event without session_id",
            format!(r#"{{"status":"Approved","timestamp":{NOW},"webhook_type":"status.updated"}}"#)
                .into_bytes(),
        ),
        (
            "session event without status",
            format!(r#"{{"session_id":"s","timestamp":{NOW},"webhook_type":"data.updated"}}"#)
                .into_bytes(),
        ),
        // Refused alike on every backend (PostgreSQL's text cannot hold
        // U+0000): quarantined, not a 503 that Didit retries forever.
        (
            "NUL in session_id",
            format!(
                r#"{{"session_id":"s\u0000x","status":"Approved","timestamp":{NOW},"webhook_type":"status.updated"}}"#
            )
            .into_bytes(),
        ),
        (
            "NUL in event_id",
            format!(
                r#"{{"event_id":"e\u0000","session_id":"s","status":"Approved","timestamp":{NOW},"webhook_type":"status.updated"}}"#
            )
            .into_bytes(),
        ),
        (
            "NUL in webhook_type",
            format!(
                r#"{{"session_id":"s","status":"Approved","timestamp":{NOW},"webhook_type":"status.updated\u0000"}}"#
            )
            .into_bytes(),
        ),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let sig = key.sign_hex(bytes);
        let (s, answer) = app
            .deliver(bytes.clone(), &[("X-Signature", sig.as_str())])
            .await;
        assert_eq!(s, 400, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], "unusable_payload", "{what}");
        assert_eq!(app.quarantined().await, i as u64 + 1, "{what}");
    }
    assert_eq!(app.head().await, 0);
    let (s, list) = app.get("/api/v1/quarantine?limit=2").await;
    assert_eq!(s, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert!(list["next_cursor"].is_string());
    let (_, metrics) = (
        200,
        app.http
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert!(metrics.contains("kycd_quarantine_size"), "{metrics}");
}

#[tokio::test]
async fn entity_activity_and_transaction_events_are_stored() {
    let app = spawn().await;
    for t in [
        "user.status.updated",
        "business.data.updated",
        "activity.created",
        "transaction.created",
    ] {
        let (s, a) = app
            .deliver_signed(&json!({"webhook_type": t, "timestamp": NOW, "data": {"id": t}}))
            .await;
        assert_eq!((s, a["status"].as_str()), (200, Some("accepted")), "{t}");
    }
    assert_eq!(app.head().await, 4);
}

#[tokio::test]
async fn simple_signature_when_allowed_is_accepted_and_marked_envelope_only() {
    let app = spawn_with(|s| s.accept_simple_signature = true).await;
    let v = vectors();
    let case = &v["cases"][0];
    let h = case_headers(case);
    let simple: Vec<(&str, &str)> = as_refs(&h)
        .into_iter()
        .filter(|(k, _)| *k != "X-Signature" && *k != "X-Signature-V2")
        .collect();
    let (s, a) = app.deliver(case["body"].as_str().unwrap(), &simple).await;
    assert_eq!(s, 200, "{a}");
    let (_, event) = app
        .get(&format!("/api/v1/events/{}", a["id"].as_str().unwrap()))
        .await;
    assert_eq!(event["signature"], "simple");
    assert_eq!(event["envelope_only"], true);
    let session = app
        .session_where("c3d4e5f6-a7b8-4c9d-8e0f-112233445566", |_| true)
        .await;
    assert_eq!(
        session["didit_decision"],
        Value::Null,
        "an untrusted decision is not kept"
    );
    assert_eq!(session["decision_needs_fetch"], true);
}

#[tokio::test]
async fn sandbox_and_test_deliveries_are_marked() {
    let app = spawn().await;
    let mut p = payload("s-sandbox", "Approved", NOW, Some("sb-1"));
    p["environment"] = json!("sandbox");
    let (_, a) = app.deliver_signed(&p).await;
    let (_, event) = app
        .get(&format!("/api/v1/events/{}", a["id"].as_str().unwrap()))
        .await;
    assert_eq!(event["sandbox"], true);
    let session = app.session_where("s-sandbox", |_| true).await;
    assert_eq!(session["sandbox"], true);
    // Didit's console test deliveries carry a header instead.
    let text = payload("s-test", "Approved", NOW, Some("t-1")).to_string();
    let signed = signed_text(&text);
    let mut headers: Vec<(&str, &str)> = signed
        .headers
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    headers.push(("X-Didit-Test-Webhook", "true"));
    let (_, a) = app.deliver(signed.body.clone(), &headers).await;
    let (_, event) = app
        .get(&format!("/api/v1/events/{}", a["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        (event["sandbox"].as_bool(), event["test_webhook"].as_bool()),
        (Some(true), Some(true))
    );
}

#[tokio::test]
async fn a_log_that_cannot_take_the_write_answers_503() {
    let app = spawn_with(|s| s.max_log_bytes = Some(64 * 1024)).await;
    let filler = "x".repeat(8 * 1024);
    let mut saw_503 = false;
    for i in 0..64 {
        let mut p = payload(
            &format!("s-full-{i}"),
            "Approved",
            NOW,
            Some(&format!("full-{i}")),
        );
        p["metadata"] = json!({ "pad": filler });
        let (s, a) = app.deliver_signed(&p).await;
        if s == 503 {
            assert_eq!(a["error"]["code"], "unavailable");
            assert!(
                !a["error"]["message"].as_str().unwrap().contains("sqlite"),
                "5xx says nothing internal"
            );
            saw_503 = true;
            break;
        }
        assert_eq!(s, 200);
    }
    assert!(saw_503, "a full log must refuse with 503");
}

#[tokio::test]
async fn the_api_requires_the_bearer_token() {
    let app = spawn().await;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic dGVzdA=="),
        Some(TOKEN),
    ] {
        let mut req = app.http.get(format!("{}/api/v1/sessions", app.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{auth:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let (s, _) = app.get("/api/v1/sessions").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn sessions_list_pages_newest_first_with_filters() {
    let app = spawn().await;
    for i in 0..5 {
        let status = if i % 2 == 0 { "Approved" } else { "Declined" };
        let mut p = payload(&format!("s-list-{i}"), status, NOW, Some(&format!("l-{i}")));
        p["vendor_data"] = json!(if i < 3 { "alice" } else { "bob" });
        app.deliver_signed(&p).await;
    }
    app.session_where("s-list-4", |_| true).await;
    let (_, page1) = app.get("/api/v1/sessions?limit=2").await;
    let ids = |p: &Value| -> Vec<String> {
        p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["session_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&page1), ["s-list-4", "s-list-3"]);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = app
        .get(&format!("/api/v1/sessions?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(ids(&page2), ["s-list-2", "s-list-1"]);
    let (_, page3) = app
        .get(&format!(
            "/api/v1/sessions?limit=2&cursor={}",
            page2["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(ids(&page3), ["s-list-0"]);
    assert_eq!(page3["next_cursor"], Value::Null);
    let (_, filtered) = app
        .get("/api/v1/sessions?vendor_data=alice&status=Approved")
        .await;
    assert_eq!(ids(&filtered), ["s-list-2", "s-list-0"]);
    // Relative times resolve against the server's (injected) clock.
    let (_, recent) = app.get("/api/v1/sessions?since=24h").await;
    assert_eq!(ids(&recent).len(), 5);
    let (_, older) = app.get("/api/v1/sessions?until=1h").await;
    assert_eq!(ids(&older).len(), 0);
    let (_, all) = app
        .get("/api/v1/sessions?since=2026-03-01T00:00:00Z&until=2026-04-01T00:00:00Z")
        .await;
    assert_eq!(ids(&all).len(), 5);
    for bad in [
        "limit=0",
        "limit=501",
        "limit=x",
        "cursor=zz",
        "since=yesterday",
    ] {
        let (s, body) = app.get(&format!("/api/v1/sessions?{bad}")).await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    let (s, _) = app.get("/api/v1/sessions/nope").await;
    assert_eq!(s, 404);
    let (s, _) = app.get("/api/v1/events/evt_nope").await;
    assert_eq!(s, 404);
    let (s, _) = app
        .get("/api/v1/events/evt_01M8200QR8GMEJ2Y6DE83P0Y61")
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = spawn().await;
    app.deliver_signed(&payload("s-m", "Approved", NOW, Some("m-1")))
        .await;
    app.deliver(b"x".to_vec(), &[]).await;
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r: Value = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["ready"], true);
    assert!(r["waiting"][0]
        .as_str()
        .unwrap()
        .contains("KYCD_DIDIT_API_KEY"));
    let m = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "kycd_webhook_deliveries_total",
        "kycd_webhook_verification_failures_total",
        "kycd_log_commit_batch_size",
        "kycd_log_append_seconds",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test]
async fn graceful_shutdown_keeps_every_acknowledged_delivery() {
    let mut app = spawn().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let http = app.http.clone();
        let base = app.base.clone();
        let text = payload(
            &format!("s-g-{i}"),
            "Approved",
            NOW,
            Some(&format!("g-{i}")),
        )
        .to_string();
        let signed = signed_text(&text);
        tasks.push(tokio::spawn(async move {
            let mut req = http
                .post(format!("{base}/webhooks/didit"))
                .body(signed.body.clone());
            for (k, v) in &signed.headers {
                req = req.header(*k, v);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned)),
                _ => None,
            }
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        if let Some(id) = t.await.unwrap() {
            acked.push(id);
        }
    }
    let running = app.running.take().unwrap();
    let log = running.app.log.clone();
    running.shutdown().await.unwrap();
    assert_eq!(acked.len(), 200);
    for id in &acked {
        assert!(
            log.get(&id.parse().unwrap()).await.unwrap().is_some(),
            "{id}"
        );
    }
}

/// A small deterministic generator (splitmix64), so a failure repeats.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }

    /// A JSON value as text, with extreme numbers, strings and nesting.
    fn value(&mut self, depth: u32) -> String {
        match self.next() % 9 {
            0 => self
                .pick(&[
                    "1e308",
                    "-1.7976931348623157e308",
                    "5e-324",
                    "-0",
                    "0.0000000000000000000000000000001",
                    "123456789012345678901234567890123456789",
                    "18446744073709551616",
                    "-9223372036854775809",
                    "1E+2",
                ])
                .to_owned(),
            // An integer literal beyond every double, somewhere.
            1 => "9".repeat(300 + (self.next() % 20) as usize),
            2 => format!(
                "\"{}\"",
                "é\\u00e9\\ud83d\\ude00\\n\\\"".repeat((self.next() % 200) as usize)
            ),
            3 => format!(
                "\"{}\"",
                self.pick(&["\\u0000", "\\ud800", "\\udfff", "\u{2028}", ""])
            ),
            4 => "x"
                .repeat((self.next() % 100_000) as usize)
                .pipe(|s| format!("\"{s}\"")),
            5 => {
                let n = 1 + self.next() % 700;
                format!("{}{}", "[".repeat(n as usize), "]".repeat(n as usize))
            }
            6 if depth < 4 => format!("[{}, {}]", self.value(depth + 1), self.value(depth + 1)),
            7 if depth < 4 => format!(
                "{{\"a\": {}, \"b\": {}}}",
                self.value(depth + 1),
                self.value(depth + 1)
            ),
            _ => self
                .pick(&["true", "false", "null", "{}", "[]", "1"])
                .to_owned(),
        }
    }
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl Pipe for String {}

/// Nothing acknowledged is dropped: every authentic delivery, however
/// extreme its numbers, strings and nesting, is either refused before it
/// is stored (413), or quarantined with a 400, or acknowledged with a 200
/// and then projected into a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authentic_delivery_is_projected_or_quarantined() {
    let app = spawn().await;
    let key = Secret::new(secret());
    let mut g = Gen(15);
    let mut accepted = Vec::new();
    let mut quarantined = 0;
    for i in 0..80 {
        let session = format!("prop-{i}");
        let extreme = g.value(0);
        let place = g.next() % 3;
        let (meta, decision, extra) = match place {
            0 => (extreme.as_str(), "{}", "null"),
            1 => ("null", "{}", extreme.as_str()),
            _ => (
                "null",
                "{\"features\": [\"ID_VERIFICATION\"]}",
                extreme.as_str(),
            ),
        };
        let body = format!(
            r#"{{"session_id":"{session}","status":"Approved","webhook_type":"status.updated","timestamp":{NOW},"event_id":"ev-{i}","vendor_data":"u-{i}","metadata":{meta},"decision":{decision},"extra":{extra}}}"#
        );
        let sig = key.sign_hex(body.as_bytes());
        let (status, answer) = app
            .deliver(body.into_bytes(), &[("X-Signature", sig.as_str())])
            .await;
        match status {
            200 => accepted.push(session),
            400 => {
                quarantined += 1;
                assert_eq!(answer["error"]["code"], "unusable_payload", "{i}: {answer}");
            }
            413 => {}
            other => panic!("delivery {i}: unexpected {other}: {answer}"),
        }
        assert_eq!(app.quarantined().await, quarantined, "delivery {i}");
    }
    assert!(
        !accepted.is_empty() && quarantined > 0,
        "both paths exercised"
    );
    // Every acknowledged delivery becomes a session.
    let running = app.running.as_ref().unwrap();
    let head = running.app.log.head().await.unwrap();
    let mut applied = running.app.applied.clone();
    tokio::time::timeout(Duration::from_secs(30), applied.wait_for(|o| *o >= head))
        .await
        .expect("the projector catches up")
        .unwrap();
    for session in &accepted {
        let (s, doc) = app.get(&format!("/api/v1/sessions/{session}")).await;
        assert_eq!(
            s, 200,
            "{session} was acknowledged but not projected: {doc}"
        );
    }
}

//! Decisions end to end: deliveries in, facts built as of each event's log
//! position, the policy evaluated, decisions stored and served; subject data
//! honoured; the identity graph counted; shadow policies kept apart; and a
//! replay with the active policy reproducing every decision byte for byte.

use std::sync::Arc;
use std::time::{Duration, Instant};

use didit::signature::Secret;
use kycd_core::FixedClock;
use kycd_engine::replay::{replay, Window};
use kycd_log::store::{SqliteStore, Store};
use kycd_server::{Running, Settings};
use serde_json::{json, Value};

mod deliveries;
use deliveries::approved;

const NOW: i64 = 1_774_970_000;
const TOKEN: &str = "decisions-test-token";
const SECRET: &str = "decisions-test-secret";

struct App {
    running: Running,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn spawn_with(f: impl FnOnce(&mut Settings)) -> App {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        webhook_secrets: vec![Secret::new(SECRET)],
        api_token: Some(Secret::new(TOKEN)),
        ..Settings::default()
    };
    f(&mut settings);
    let running = kycd_server::start(settings, Arc::new(FixedClock::at_secs(NOW)))
        .await
        .unwrap();
    App {
        base: format!("http://{}", running.addr),
        running,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl App {
    async fn deliver(&self, payload: &Value) -> Value {
        let resp = deliveries::deliver(&self.http, &self.base, SECRET, payload).await;
        assert_eq!(resp.status().as_u16(), 200);
        resp.json().await.unwrap()
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Poll until the session carries a decision.
    async fn decided(&self, session: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (s, body) = self.get(&format!("/api/v1/sessions/{session}")).await;
            if s == 200 && !body["decision"].is_null() {
                return body["decision"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "session {session} never decided: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn rules(decision: &Value) -> Vec<String> {
    decision["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_clean_approval_is_approved_with_its_trace_and_facts() {
    let app = spawn_with(|_| {}).await;
    app.deliver(&approved("s-clean", "alice", "C0000001")).await;
    let d = app.decided("s-clean").await;
    assert_eq!(d["outcome"], "approve", "{d}");
    for key in [
        "id",
        "score",
        "reasons",
        "checks",
        "policy_version",
        "decided_at",
    ] {
        assert!(
            d.get(key).is_some(),
            "{key} missing from the session's decision"
        );
    }
    assert_eq!(
        d["decided_at"], "2026-03-31T15:13:20.000Z",
        "the receive time, not the wall clock"
    );
    let (s, full) = app
        .get(&format!("/api/v1/decisions/{}", d["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 200);
    // One object per rule and table of the policy, in its order, though
    // the store keeps quiet rules as bare ids.
    let policy = kycd_policy::Policy::builtin_default();
    let trace = full["trace"].as_array().unwrap();
    assert_eq!(trace.len(), policy.rules().len() + policy.tables().len());
    assert_eq!(
        full["trace"],
        serde_json::to_value(policy.evaluate(&full["facts"]).trace).unwrap()
    );
    assert_eq!(full["facts"]["document"]["age"], 37);
    assert_eq!(full["policy"]["version"], d["policy_version"]);
    let (_, list) = app.get("/api/v1/decisions?outcome=approve").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (s, _) = app.get("/api/v1/decisions?outcome=maybe").await;
    assert_eq!(s, 400);
    let (s, _) = app.get("/api/v1/decisions/dec_missing").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn a_blocklisted_subject_is_never_approved_or_merely_stepped_up() {
    let app = spawn_with(|_| {}).await;
    let (s, put) = app
        .call(
            reqwest::Method::PUT,
            "/api/v1/subjects/mallory",
            Some(json!({"blocklisted": true, "chargebacks": 3})),
        )
        .await;
    assert_eq!(s, 200, "{put}");
    assert_eq!(put["applied"], true);
    let (_, got) = app.get("/api/v1/subjects/mallory").await;
    assert_eq!(got["attributes"]["chargebacks"], 3);
    app.deliver(&approved("s-mallory", "mallory", "M0000001"))
        .await;
    let d = app.decided("s-mallory").await;
    let outcome = d["outcome"].as_str().unwrap();
    assert!(["review", "decline", "block"].contains(&outcome), "{d}");
    assert!(!rules(&d).is_empty());
    let (_, full) = app
        .get(&format!("/api/v1/decisions/{}", d["id"].as_str().unwrap()))
        .await;
    assert_eq!(full["facts"]["subject"]["blocklisted"], true);
    assert_eq!(full["facts"]["subject"]["attributes"]["chargebacks"], 3);
}

#[tokio::test]
async fn bad_subject_writes_are_refused() {
    let app = spawn_with(|_| {}).await;
    for body in [json!([1, 2]), json!("text"), json!(null)] {
        let (s, e) = app
            .call(reqwest::Method::PUT, "/api/v1/subjects/u", Some(body))
            .await;
        assert_eq!((s, e["error"]["code"].as_str()), (400, Some("bad_request")));
    }
    let resp = app
        .http
        .put(format!("{}/api/v1/subjects/u", app.base))
        .bearer_auth(TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let big = json!({"pad": "x".repeat(70_000)});
    let (s, _) = app
        .call(reqwest::Method::PUT, "/api/v1/subjects/u", Some(big))
        .await;
    assert_eq!(s, 413);
    let (s, _) = app.get("/api/v1/subjects/nobody").await;
    assert_eq!(s, 404);
    let resp = app
        .http
        .put(format!("{}/api/v1/subjects/u", app.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn a_document_shared_with_another_subject_is_not_approved() {
    let app = spawn_with(|_| {}).await;
    app.deliver(&approved("s-first", "bob", "SHARED01")).await;
    let first = app.decided("s-first").await;
    assert_eq!(first["outcome"], "approve");
    app.deliver(&approved("s-second", "carol", "SHARED01"))
        .await;
    let second = app.decided("s-second").await;
    let (_, full) = app
        .get(&format!(
            "/api/v1/decisions/{}",
            second["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(full["facts"]["graph"]["document_subjects"], 1);
    let outcome = second["outcome"].as_str().unwrap();
    assert!(
        ["review", "decline", "block"].contains(&outcome),
        "{second}"
    );
    // The same subject again is not "another subject".
    app.deliver(&approved("s-third", "bob", "SHARED01")).await;
    let third = app.decided("s-third").await;
    let (_, full) = app
        .get(&format!(
            "/api/v1/decisions/{}",
            third["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        full["facts"]["graph"]["document_subjects"], 1,
        "carol, not bob himself"
    );
}

#[tokio::test]
async fn replaying_with_the_active_policy_reproduces_every_decision_byte_for_byte() {
    let app = spawn_with(|_| {}).await;
    // A mixed history: shared documents, a blocklisted subject written
    // between deliveries, declines, and several events per session.
    app.call(
        reqwest::Method::PUT,
        "/api/v1/subjects/u3",
        Some(json!({"blocklisted": true})),
    )
    .await;
    let mut last = String::new();
    for i in 0..40 {
        let session = format!("s-r{i}");
        let mut p = approved(&session, &format!("u{}", i % 7), &format!("D{}", i % 5));
        if i % 4 == 1 {
            p["status"] = json!("Declined");
            p["decision"]["status"] = json!("Declined");
            p["decision"]["liveness_checks"][0]["warnings"] = json!([{"risk": "LIVENESS_FACE_ATTACK", "log_type": "error", "feature": "LIVENESS"}]);
        }
        if i % 6 == 2 {
            p["decision"]["ip_analyses"][0]["ip_country_code"] = json!("RU");
            p["decision"]["ip_analyses"][0]["is_vpn_or_tor"] = json!(true);
        }
        if i == 20 {
            app.call(
                reqwest::Method::PUT,
                "/api/v1/subjects/u4",
                Some(json!({"blocklisted": true})),
            )
            .await;
        }
        app.deliver(&p).await;
        last = session;
    }
    app.decided(&last).await;
    let store = app.running.app.store.clone();
    let log = app.running.app.log.clone();
    let scratch_dir = tempfile::tempdir().unwrap();
    let scratch: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&scratch_dir.path().join("s.db"), false).unwrap());
    let window = Window {
        since_ms: None,
        until_ms: None,
        max_examples: 5,
        graph_window_ms: kycd_engine::projector::DEFAULT_GRAPH_WINDOW_MS,
    };
    let report = replay(
        log,
        store.as_ref(),
        scratch,
        kycd_policy::Policy::builtin_default(),
        window,
    )
    .await
    .unwrap();
    // One decision per delivery, and more: the later sessions that share a
    // document with approved customers decide those again (retroactive).
    let stored = store
        .list_decisions(kycd_log::store::DecisionQuery {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(stored.len() > 40, "{}", stored.len());
    assert_eq!(report.total, stored.len() as u64, "{report:?}");
    assert_eq!(
        report.categories.values().sum::<u64>(),
        report.total,
        "the categories add up to the total: {report:?}"
    );
    assert_eq!(
        report.categories["reproduced"], report.total,
        "every decision reproduced byte for byte: {report:?}"
    );
    assert!(
        report.by_trigger.contains_key("retroactive"),
        "retroactive re-decisions are compared too: {report:?}"
    );
    assert_eq!(report.compared, report.total, "{report:?}");
    assert_eq!(report.changed, 0, "{report:?}");
    let outcomes: std::collections::BTreeSet<&String> = report.matrix.keys().collect();
    assert!(
        outcomes.len() >= 2,
        "the history exercised several outcomes: {outcomes:?}"
    );
}

/// A candidate policy that sends every case to a person.
const REVIEW_ALL: &str = include_str!("fixtures/review-all.toml");

#[tokio::test]
async fn a_shadow_policy_is_evaluated_stored_apart_and_compared() {
    let dir = tempfile::tempdir().unwrap();
    let shadow = dir.path().join("shadow.toml");
    std::fs::write(&shadow, REVIEW_ALL).unwrap();
    let app = spawn_with(|s| s.shadow_policy = Some(shadow)).await;
    app.deliver(&approved("s-shadow", "dana", "S0000001")).await;
    let d = app.decided("s-shadow").await;
    assert_eq!(d["outcome"], "approve", "the active policy decides");
    let (_, full) = app
        .get(&format!("/api/v1/decisions/{}", d["id"].as_str().unwrap()))
        .await;
    assert_eq!(full["shadow_decision"]["outcome"], "review");
    assert_eq!(full["shadow_decision"]["agrees"], false);
    let (_, active) = app.get("/api/v1/decisions").await;
    assert_eq!(
        active["items"].as_array().unwrap().len(),
        1,
        "shadow decisions are not listed as active"
    );
    let (_, shadows) = app.get("/api/v1/decisions?shadow=true").await;
    assert_eq!(shadows["items"][0]["outcome"], "review");
    let (_, cmp) = app.get("/api/v1/shadow").await;
    assert_eq!(
        (cmp["compared"].as_u64(), cmp["agreed"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(cmp["matrix"]["approve"]["review"], 1);
    assert_eq!(cmp["shadow"]["name"], "review-everything");
}

#[tokio::test]
async fn reloading_refuses_an_invalid_policy_and_keeps_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, REVIEW_ALL).unwrap();
    let app = spawn_with(|s| s.policy = Some(path.clone())).await;
    let before = app.running.app.policies.active().version().to_owned();
    std::fs::write(
        &path,
        REVIEW_ALL.replace("outcome = \"review\"", "outcome = \"maybe\""),
    )
    .unwrap();
    let err = kycd_server::reload_policy(&app.running.app)
        .await
        .unwrap_err();
    assert!(
        err.contains("policy.toml") && err.contains("always_review"),
        "{err}"
    );
    assert_eq!(
        app.running.app.policies.active().version(),
        before,
        "the old policy stays active"
    );
    std::fs::write(&path, REVIEW_ALL.replace("Every case", "Each case")).unwrap();
    let after = kycd_server::reload_policy(&app.running.app)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(after, before);
    assert_eq!(app.running.app.policies.active().version(), after);
    // Decisions after the reload carry the new version.
    app.deliver(&approved("s-reloaded", "erin", "R0000001"))
        .await;
    assert_eq!(
        app.decided("s-reloaded").await["policy_version"],
        after.as_str()
    );
}

/// `decided_by`: on the embedded store one process decides everything
/// and no instance is named, in the listing and in the record alike.
#[tokio::test]
async fn on_the_embedded_store_decisions_name_no_instance() {
    let app = spawn_with(|_| {}).await;
    app.deliver(&approved("s-one", "alice", "C0000001")).await;
    let d = app.decided("s-one").await;
    let (_, list) = app.get("/api/v1/decisions").await;
    let item = &list["items"][0];
    assert_eq!(item["id"], d["id"]);
    assert_eq!(item.get("decided_by"), Some(&Value::Null), "{item}");
    let (_, full) = app
        .get(&format!("/api/v1/decisions/{}", d["id"].as_str().unwrap()))
        .await;
    assert_eq!(full.get("decided_by"), Some(&Value::Null));
}

/// Two instances on one PostgreSQL schema: a decision names the instance
/// that held the projection's lease when it committed, the first one
/// before it stopped and the other after it took the lease over, in the
/// API's listing and record on either instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_each_decision_names_the_instance_that_made_it() {
    use kycd_log::postgres::testing::{url_or_skip, Schemas};
    let Some(url) = url_or_skip("on_postgres_each_decision_names_the_instance_that_made_it") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    let schema = schemas.schema().await;
    let url = schemas.url_of(&schema);
    let key_dir = tempfile::tempdir().unwrap();
    let instance = |id: &'static str| {
        let url = url.clone();
        let key = key_dir.path().join("audit.key");
        move |s: &mut Settings| {
            s.database_url = Some(Secret::new(url));
            s.instance_id = Some(id.to_owned());
            // Every instance must share the audit key.
            s.audit_key_file = Some(key);
        }
    };
    let a = spawn_with(instance("kycd-a")).await;
    wait_for_lease(&a, "partition/0", "kycd-a").await;
    let b = spawn_with(instance("kycd-b")).await;

    // Delivered to b, decided by a, which projects.
    b.deliver(&approved("s-before", "alice", "C0000001")).await;
    let before = b.decided("s-before").await;
    // a stops (its leases released); b takes the projection over.
    a.running.shutdown().await.unwrap();
    wait_for_lease(&b, "partition/0", "kycd-b").await;
    b.deliver(&approved("s-after", "bob", "C0000002")).await;
    let after = b.decided("s-after").await;

    let (_, list) = b.get("/api/v1/decisions").await;
    let by: Vec<(&str, &str)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["session_id"].as_str().unwrap(),
                d["decided_by"].as_str().unwrap_or("none"),
            )
        })
        .collect();
    assert_eq!(by, [("s-after", "kycd-b"), ("s-before", "kycd-a")]);
    for (d, by) in [(&before, "kycd-a"), (&after, "kycd-b")] {
        let (s, full) = b
            .get(&format!("/api/v1/decisions/{}", d["id"].as_str().unwrap()))
            .await;
        assert_eq!(s, 200);
        assert_eq!(full["decided_by"], by, "{}", full["session_id"]);
    }
    b.running.shutdown().await.unwrap();
    schemas.drop_all().await;
}

/// Poll `GET /api/v1/cluster` until `owner` holds `lease`.
async fn wait_for_lease(app: &App, lease: &str, owner: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, view) = app.get("/api/v1/cluster").await;
        let held = view["leases"].as_array().is_some_and(|ls| {
            ls.iter()
                .any(|l| l["name"] == lease && l["owner"] == owner && l["expired"] == false)
        });
        if held {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{owner} never held {lease}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

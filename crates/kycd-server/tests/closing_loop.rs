//! Issue 6 end to end with the Didit simulator: every outcome acts at Didit
//! once (the simulator's API call log is the witness), kycd's own
//! write-backs do not loop, step-ups run to completion and to expiry,
//! operator webhooks verify with the Standard Webhooks reference library,
//! and with deliveries lost for good reconciliation still decides every
//! session.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use didit::signature::Secret;
use kycd_log::outbox::ActionState;
use kycd_log::store::DecisionQuery;
use kycd_server::Settings;
use kycd_sim::{ApiCall, CallEffect, Faults, WebhookVersion};
use serde_json::Value;

mod support;

const SECRET: &str = "closing-loop-secret";
const TOKEN: &str = "closing-loop-token";
const OPERATOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A policy that asks In Review customers for an NFC read, declines when
/// the step-up fails or expires, and approves everything else.
const STEP_UP_POLICY: &str = r#"
name = "step-up-test"
[bands]
approve = 100
[[rule]]
id = "ask_nfc"
when = 'session.didit_status == "In Review" and (step_up.status == null or step_up.status == "none") and session.step_up != true'
outcome = "step_up"
checks = ["NFC"]
reason = "Didit was unsure: read the document's chip"
[[rule]]
id = "step_up_failed"
when = 'step_up.status == "completed" and step_up.approved != true'
outcome = "decline"
reason = "The step-up failed"
[[rule]]
id = "step_up_expired"
when = 'step_up.status == "expired"'
outcome = "decline"
reason = "The step-up was not completed in time"
[[rule]]
id = "didit_declined"
when = 'session.didit_status == "Declined"'
outcome = "decline"
reason = "Didit declined"
"#;

/// One outcome per kind of customer, so every write-back is exercised:
/// an AML hit is declined, an expired document blocked, a weak liveness
/// score resubmitted, and the rest approved, over Didit's review too
/// (loosening, allowed in that test).
const EVERY_OUTCOME_POLICY: &str = r#"
name = "every-outcome-test"
[bands]
approve = 100
[[rule]]
id = "aml"
when = '"POSSIBLE_MATCH_FOUND" in didit.risks'
outcome = "decline"
reason = "AML hit"
[[rule]]
id = "expired_document"
when = '"DOCUMENT_EXPIRED" in didit.risks'
outcome = "block"
reason = "Expired document"
[[rule]]
id = "weak_liveness"
when = 'session.didit_status == "In Review" and "LOW_LIVENESS_SCORE" in didit.risks'
outcome = "resubmit"
nodes = [{ feature = "LIVENESS" }]
reason = "Retake the selfie"
[[rule]]
id = "other_declines"
when = 'session.didit_status == "Declined" and not ("DOCUMENT_EXPIRED" in didit.risks)'
outcome = "decline"
reason = "Didit declined"
"#;

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Request>>>, Arc<AtomicU16>);

/// One request the operator's application received: headers and body.
type Request = (HeaderMap, Vec<u8>);

/// The operator's application: answers 200 and keeps every request.
async fn operator_app(received: Received) -> String {
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let received = received.clone();
            async move {
                received.0.lock().unwrap().push((headers, body.to_vec()));
                let status = match received.1.load(Ordering::SeqCst) {
                    0 => 200,
                    s => s,
                };
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hooks")
}

/// A proxy in front of kycd's webhook endpoint, where Didit's confirming
/// delivery can be made to fail. Armed for a session and a status, it
/// answers the first delivery of that status 503 and holds every later
/// attempt (Didit's retries) until released, then forwards each one; all
/// other deliveries pass straight through.
struct Gate {
    kycd: Mutex<String>,
    trap: Mutex<Option<(String, String)>>,
    refused: AtomicUsize,
    held: AtomicUsize,
    release: tokio::sync::watch::Sender<bool>,
    /// kycd's answers to the held attempts, once released.
    forwarded: Mutex<Vec<u16>>,
    http: reqwest::Client,
}

impl Gate {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            kycd: Mutex::new(String::new()),
            trap: Mutex::new(None),
            refused: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            release: tokio::sync::watch::Sender::new(false),
            forwarded: Mutex::new(Vec::new()),
            http: reqwest::Client::new(),
        })
    }

    fn arm(&self, session: &str, status: &str) {
        *self.trap.lock().unwrap() = Some((session.to_owned(), status.to_owned()));
    }

    /// Serve the proxy for kycd's webhook URL `kycd`; returns its own URL.
    async fn serve(self: Arc<Self>, kycd: String) -> String {
        *self.kycd.lock().unwrap() = kycd;
        let gate = self.clone();
        let app = axum::Router::new().route(
            "/webhooks/didit",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let gate = gate.clone();
                async move { gate.pass(headers, body).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/webhooks/didit")
    }

    async fn pass(
        self: Arc<Self>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let trapped = self.trap.lock().unwrap().as_ref().is_some_and(|(s, st)| {
            v["session_id"].as_str() == Some(s) && v["status"].as_str() == Some(st)
        });
        if trapped {
            if self.refused.fetch_add(1, Ordering::SeqCst) == 0 {
                return axum::http::StatusCode::SERVICE_UNAVAILABLE;
            }
            self.refused.fetch_sub(1, Ordering::SeqCst);
            self.held.fetch_add(1, Ordering::SeqCst);
            let mut released = self.release.subscribe();
            let _ = released.wait_for(|r| *r).await;
        }
        // Forwarded from a task of its own, so that a held attempt reaches
        // kycd even if Didit stopped waiting for its answer meanwhile.
        let gate = self.clone();
        let forward = tokio::spawn(async move {
            let mut req = gate.http.post(gate.kycd.lock().unwrap().clone());
            for (name, value) in &headers {
                if !matches!(name.as_str(), "host" | "content-length" | "connection") {
                    req = req.header(name, value);
                }
            }
            let status = match req.body(body).send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 502,
            };
            if trapped {
                gate.forwarded.lock().unwrap().push(status);
            }
            status
        });
        axum::http::StatusCode::from_u16(forward.await.unwrap_or(502)).unwrap()
    }
}

/// The shared stack, with what the operator's application received.
type Stack = support::Stack<Received>;

struct Options {
    faults: Faults,
    time_scale: f64,
    policy: Option<&'static str>,
    step_up_expiry_secs: u64,
    reconcile: bool,
    retry_time_scale: f64,
    step_up_workflows: bool,
    operator_status: u16,
    allow_loosening: bool,
    /// A proxy between the simulator and kycd.
    gate: Option<Arc<Gate>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            faults: Faults::none(),
            time_scale: 1000.0,
            policy: None,
            step_up_expiry_secs: 86_400,
            reconcile: false,
            retry_time_scale: 20.0,
            step_up_workflows: true,
            operator_status: 200,
            allow_loosening: false,
            gate: None,
        }
    }
}

async fn stack(seed: u64, o: Options) -> Stack {
    let sim = support::simulator(SECRET, seed, o.time_scale, o.faults).await;
    let workflows = support::step_up_workflows(&sim).await;

    let dir = tempfile::tempdir().unwrap();
    let policy = o.policy.map(|text| {
        let p = dir.path().join("policy.toml");
        std::fs::write(&p, text).unwrap();
        p
    });
    let received = Received::default();
    received.1.store(o.operator_status, Ordering::SeqCst);
    let settings = Settings {
        operator_webhook_url: Some(operator_app(received.clone()).await),
        operator_webhook_secrets: vec![Secret::new(OPERATOR_SECRET)],
        operator_webhook_allow_private: true,
        step_up_workflows: if o.step_up_workflows {
            workflows
        } else {
            Default::default()
        },
        api_token: Some(Secret::new(TOKEN)),
        step_up_expiry_secs: o.step_up_expiry_secs,
        policy,
        reconcile_interval_secs: if o.reconcile { 1 } else { 0 },
        reconcile_after_secs: 1,
        retry_time_scale: o.retry_time_scale,
        writeback_allow_loosening: o.allow_loosening,
        ..support::settings(&sim, SECRET, dir.path().join("data"))
    };
    let gate = o.gate.clone();
    support::Stack::start_behind(sim, settings, dir, WebhookVersion::V3, |kycd| async move {
        match gate {
            Some(gate) => gate.serve(kycd).await,
            None => kycd,
        }
    })
    .await
    .with(received)
}

impl Stack {
    fn outcome_of(doc: &Value) -> Option<&str> {
        doc.pointer("/decision/outcome").and_then(Value::as_str)
    }

    /// The session's status at Didit now.
    fn status_at_didit(&self, session: &str) -> String {
        self.sim
            .truth()
            .into_iter()
            .find(|t| t.session_id == session)
            .expect("the simulator knows the session")
            .final_status
    }

    /// Operator messages by type, each verified with the reference library.
    fn operator_messages(&self) -> BTreeMap<String, Vec<Value>> {
        let wh = standardwebhooks::Webhook::new(OPERATOR_SECRET).unwrap();
        let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (headers, body) in self.extra.0.lock().unwrap().iter() {
            wh.verify(body, headers)
                .expect("an operator webhook verifies");
            let v: Value = serde_json::from_slice(body).unwrap();
            out.entry(v["type"].as_str().unwrap().to_owned())
                .or_default()
                .push(v);
        }
        out
    }
}

/// Update-status calls that changed Didit's status, per (session, status).
fn changes(calls: &[ApiCall]) -> HashMap<(String, String), usize> {
    let mut out = HashMap::new();
    for c in calls {
        if c.path.ends_with("/update-status/") && c.effect == CallEffect::Changed {
            let status = c.request["new_status"].as_str().unwrap_or("").to_owned();
            *out.entry((c.session_id.clone().unwrap_or_default(), status))
                .or_insert(0) += 1;
        }
    }
    out
}

/// The same, per deciding decision (named in the write-back's comment): a
/// customer resubmitted twice by two decisions is two effects, not one
/// effect twice.
fn changes_per_decision(calls: &[ApiCall]) -> HashMap<(String, String, String), usize> {
    let mut out = HashMap::new();
    for c in calls {
        if c.path.ends_with("/update-status/") && c.effect == CallEffect::Changed {
            let status = c.request["new_status"].as_str().unwrap_or("").to_owned();
            let decision = c.request["comment"]
                .as_str()
                .and_then(|t| t.strip_prefix("kycd decision "))
                .and_then(|t| t.split(':').next())
                .unwrap_or("")
                .to_owned();
            *out.entry((c.session_id.clone().unwrap_or_default(), status, decision))
                .or_insert(0) += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_acts_at_didit_once_without_loops() {
    let s = stack(61, Options::default()).await;
    s.sim.run(120);
    s.settle(Duration::from_secs(90)).await;

    let calls = s.sim.calls();
    assert!(
        s.actions(ActionState::Dead).await.is_empty(),
        "no action died"
    );
    let done = s.actions(ActionState::Done).await;
    let updates: Vec<_> = done
        .iter()
        .filter(|a| a.kind == "didit.update_status")
        .collect();
    assert!(!updates.is_empty(), "some decisions were written back");

    // Once: no status was changed twice, and every write-back is one call.
    for (key, n) in changes(&calls) {
        assert_eq!(n, 1, "{key:?} changed {n} times");
    }
    let update_calls = calls
        .iter()
        .filter(|c| c.path.ends_with("/update-status/"))
        .count();
    assert_eq!(
        update_calls,
        updates.len(),
        "one call per write-back action"
    );

    // The effect: every session kycd declines or blocks is declined at
    // Didit; every block is on the blocklist, once.
    let truth: HashMap<String, String> = s
        .sim
        .truth()
        .into_iter()
        .map(|t| (t.session_id, t.final_status))
        .collect();
    let mut declined = 0;
    for (id, final_status) in &truth {
        let doc = s.session(id).await;
        match Stack::outcome_of(&doc) {
            Some("decline") | Some("block") if doc["didit_decision"].is_object() => {
                declined += 1;
                assert_eq!(final_status, "Declined", "{id}");
            }
            _ => {}
        }
        if Stack::outcome_of(&doc) == Some("block") {
            let adds = calls
                .iter()
                .filter(|c| c.path == "/v3/blocklist/add/" && c.session_id.as_deref() == Some(id))
                .count();
            assert_eq!(adds, 1, "{id} blocklisted once");
        }
    }
    assert!(declined > 0);

    // No loops: the deliveries Didit sent because of kycd's write-backs
    // are recorded as kycd's, and never decided on.
    let mut echoes = 0;
    for a in &updates {
        let id = a.session_id.as_deref().unwrap();
        let doc = s.session(id).await;
        let echoed: Vec<u64> = doc["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h.get("by_kycd").is_some())
            .map(|h| h["offset"].as_u64().unwrap())
            .collect();
        echoes += echoed.len();
        let decisions = s
            .running
            .app
            .store
            .list_decisions(DecisionQuery {
                session_id: Some(id.to_owned()),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        for d in decisions {
            assert!(
                !echoed.contains(&d.event_offset),
                "{id}: decided on its own echo"
            );
        }
    }
    assert!(echoes > 0, "Didit's answers to write-backs were recognised");

    // The operator heard of every decision, signed.
    let messages = s.operator_messages();
    let mut decided = 0;
    for id in truth.keys() {
        if Stack::outcome_of(&s.session(id).await).is_some() {
            decided += 1;
        }
    }
    let created = messages.get("decision.created").map_or(0, Vec::len);
    assert!(
        created >= decided,
        "{created} decision.created for {decided} decided sessions"
    );
    assert!(messages.contains_key("review.required"));
    assert!(messages.contains_key("session.updated"));
    s.sim.shutdown().await;
}

/// Step-up sessions created for an original, from Didit's call log.
fn step_up_creations(calls: &[ApiCall], original: &str) -> Vec<ApiCall> {
    calls
        .iter()
        .filter(|c| {
            c.path == "/v3/session/"
                && c.effect == CallEffect::Created
                && c.request
                    .pointer("/metadata/kycd_step_up_of")
                    .and_then(Value::as_str)
                    == Some(original)
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_ups_run_to_completion() {
    let s = stack(
        62,
        Options {
            policy: Some(STEP_UP_POLICY),
            ..Options::default()
        },
    )
    .await;
    s.sim.run(80);
    s.settle(Duration::from_secs(90)).await;
    let calls = s.sim.calls();
    let mut completed = 0;
    for t in s.sim.truth() {
        let doc = s.session(&t.session_id).await;
        if doc["step_up"].is_null() {
            continue;
        }
        // One session per step-up, at Didit.
        assert_eq!(
            step_up_creations(&calls, &t.session_id).len(),
            1,
            "{}",
            t.session_id
        );
        assert_eq!(doc["step_up"]["status"], "completed", "{}", t.session_id);
        let approved = doc["step_up"]["approved"] == true;
        let expected = if approved { "approve" } else { "decline" };
        assert_eq!(Stack::outcome_of(&doc), Some(expected), "{}", t.session_id);
        completed += 1;
    }
    assert!(completed > 0, "some customers were stepped up");
    let messages = s.operator_messages();
    let requested = &messages["step_up.requested"];
    assert_eq!(requested.len(), completed);
    assert!(requested.iter().all(|m| m["data"]["url"].is_string()));
    assert_eq!(messages["step_up.completed"].len(), completed);
    s.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_ups_expire_and_the_policy_decides() {
    let s = stack(
        63,
        Options {
            policy: Some(STEP_UP_POLICY),
            // Customers take simulated minutes (seconds here); the step-up
            // expires at once.
            time_scale: 100.0,
            step_up_expiry_secs: 0,
            ..Options::default()
        },
    )
    .await;
    s.sim.run(15);
    s.settle(Duration::from_secs(120)).await;
    let mut expired = 0;
    for t in s.sim.truth() {
        let doc = s.session(&t.session_id).await;
        if doc["step_up"]["status"] == "expired" {
            assert_eq!(Stack::outcome_of(&doc), Some("decline"), "{}", t.session_id);
            expired += 1;
        }
    }
    assert!(expired > 0, "some step-ups expired");
    s.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_decides_every_session_despite_lost_deliveries() {
    let s = stack(
        64,
        Options {
            faults: Faults {
                loss: 0.2,
                ..Faults::none()
            },
            reconcile: true,
            ..Options::default()
        },
    )
    .await;
    s.sim.run(100);
    let lost = {
        s.sim.wait_settled(Duration::from_secs(60)).await.unwrap();
        s.sim.stats().lost
    };
    assert!(lost > 10, "a fifth of the deliveries were lost ({lost})");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut missing = Vec::new();
        for t in s.sim.truth() {
            if t.deleted
                || !["Approved", "Declined", "In Review", "Abandoned", "Expired"]
                    .contains(&t.final_status.as_str())
            {
                continue;
            }
            let rec = s
                .running
                .app
                .store
                .get_session(&t.session_id)
                .await
                .unwrap();
            let decided = rec
                .as_ref()
                .is_some_and(|r| Stack::outcome_of(&r.doc).is_some());
            if !decided {
                missing.push(t.session_id.clone());
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} sessions never decided: {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(s.running.app.reconcile_totals.reconciled_sessions() > 0);
    s.sim.shutdown().await;
}

impl Stack {
    async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .request(method, format!("http://{}/api/v1{path}", self.running.addr));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Poll `check` until it holds or the deadline passes.
    async fn eventually<F, Fut>(&self, what: &str, deadline: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let end = Instant::now() + deadline;
        while !check().await {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn kind_in(&self, kind: &str, state: ActionState) -> usize {
        self.actions(state)
            .await
            .iter()
            .filter(|a| a.kind == kind)
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_webhooks_are_retried_disabled_enabled_and_replayed() {
    let s = stack(
        65,
        Options {
            retry_time_scale: 1000.0,
            operator_status: 500,
            ..Options::default()
        },
    )
    .await;
    s.sim.run(40);
    s.sim.wait_settled(Duration::from_secs(60)).await.unwrap();
    // Persistent failure disables the endpoint.
    s.eventually(
        "the endpoint to be disabled",
        Duration::from_secs(30),
        || async {
            let (_, e) = s
                .api(reqwest::Method::GET, "/operator-webhook", Some(TOKEN), None)
                .await;
            e["enabled"] == false
        },
    )
    .await;
    let (_, e) = s
        .api(reqwest::Method::GET, "/operator-webhook", Some(TOKEN), None)
        .await;
    assert!(e["consecutive_failures"].as_u64().unwrap() >= 15, "{e}");
    assert!(e["last_error"].as_str().unwrap().contains("500"), "{e}");
    let waiting = s.kind_in("operator.webhook", ActionState::Pending).await;
    assert!(waiting > 0, "messages wait while the endpoint is disabled");

    // Enabled again with a healthy receiver, everything is delivered, each
    // message under the id its failed attempts carried.
    s.extra.1.store(200, Ordering::SeqCst);
    let (status, e) = s
        .api(
            reqwest::Method::POST,
            "/operator-webhook/enable",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!((status, &e["enabled"]), (200, &Value::Bool(true)));
    s.eventually(
        "every message delivered",
        Duration::from_secs(60),
        || async {
            s.kind_in("operator.webhook", ActionState::Pending).await == 0
                && s.kind_in("operator.webhook", ActionState::Running).await == 0
        },
    )
    .await;
    let delivered = s.kind_in("operator.webhook", ActionState::Done).await;
    assert!(delivered >= waiting);
    let ids = |s: &Stack| {
        let mut n: HashMap<String, usize> = HashMap::new();
        for (h, _) in s.extra.0.lock().unwrap().iter() {
            *n.entry(h["webhook-id"].to_str().unwrap().to_owned())
                .or_default() += 1;
        }
        n
    };
    let before = ids(&s);
    assert!(
        before.values().any(|n| *n >= 2),
        "a failed message was retried under its id"
    );
    let messages = s.operator_messages();
    assert!(messages.contains_key("decision.created"));

    // Replay: the same messages again, same ids and bodies.
    let (status, r) = s
        .api(
            reqwest::Method::POST,
            "/operator-webhook/replay",
            Some(TOKEN),
            Some(serde_json::json!({"since": "1h"})),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let queued = r["queued"].as_u64().unwrap() as usize;
    assert_eq!(queued, delivered);
    s.eventually("the replay delivered", Duration::from_secs(30), || async {
        s.kind_in("operator.webhook", ActionState::Pending).await == 0
            && s.kind_in("operator.webhook", ActionState::Running).await == 0
    })
    .await;
    let after = ids(&s);
    for (id, n) in &before {
        assert!(after[id] > *n, "{id} replayed");
    }
    assert_eq!(
        after.len(),
        before.len(),
        "a replay mints no new message ids"
    );

    // Bad requests get clear answers.
    let (status, _) = s
        .api(
            reqwest::Method::POST,
            "/operator-webhook/replay",
            Some(TOKEN),
            Some(serde_json::json!({})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = s
        .api(
            reqwest::Method::POST,
            "/operator-webhook/replay",
            None,
            Some(serde_json::json!({"since": "1h"})),
        )
        .await;
    assert_eq!(status, 401);
    s.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_actions_are_listed_and_redriven() {
    let s = stack(
        66,
        Options {
            policy: Some(STEP_UP_POLICY),
            // No workflow for the NFC check: every step-up dies.
            step_up_workflows: false,
            ..Options::default()
        },
    )
    .await;
    s.sim.run(40);
    s.sim.wait_settled(Duration::from_secs(60)).await.unwrap();
    s.eventually("a dead step-up", Duration::from_secs(30), || async {
        s.kind_in("didit.step_up", ActionState::Dead).await > 0
    })
    .await;
    let (status, page) = s
        .api(
            reqwest::Method::GET,
            "/actions?state=dead",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let item = &page["items"][0];
    assert_eq!(item["kind"], "didit.step_up");
    assert!(
        item["last_error"]
            .as_str()
            .unwrap()
            .contains("KYCD_STEP_UP_WORKFLOW_NFC"),
        "{item}"
    );
    let id = item["id"].as_str().unwrap().to_owned();

    let (status, a) = s
        .api(
            reqwest::Method::POST,
            &format!("/actions/{id}/retry"),
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["attempts"], 0);
    // It dies again (the configuration did not change), and can be
    // retried again; retrying a pending or done action is a conflict.
    s.eventually(
        "the redriven action to run",
        Duration::from_secs(30),
        || async {
            let (_, a) = s
                .api(
                    reqwest::Method::GET,
                    &format!("/actions/{id}"),
                    Some(TOKEN),
                    None,
                )
                .await;
            a["state"] == "dead" && a["attempts"] == 1
        },
    )
    .await;
    let done = s.actions(ActionState::Done).await;
    if let Some(d) = done.first() {
        let (status, _) = s
            .api(
                reqwest::Method::POST,
                &format!("/actions/{}/retry", d.id),
                Some(TOKEN),
                None,
            )
            .await;
        assert_eq!(status, 409);
    }
    let (status, _) = s
        .api(
            reqwest::Method::POST,
            "/actions/act_nope/retry",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .api(
            reqwest::Method::GET,
            "/actions?state=bogus",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = s
        .api(reqwest::Method::GET, "/actions?state=dead", None, None)
        .await;
    assert_eq!(status, 401);
    let (status, _) = s
        .api(
            reqwest::Method::GET,
            "/actions?state=dead",
            Some("wrong"),
            None,
        )
        .await;
    assert_eq!(status, 401);
    s.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outcome_has_its_effect_at_didit_once() {
    let s = stack(
        67,
        Options {
            policy: Some(EVERY_OUTCOME_POLICY),
            allow_loosening: true,
            ..Options::default()
        },
    )
    .await;
    s.sim.run(150);
    s.settle(Duration::from_secs(90)).await;
    let calls = s.sim.calls();
    let dead = s.actions(ActionState::Dead).await;
    assert!(
        dead.is_empty(),
        "no action died: {:?}",
        dead.iter()
            .map(|a| (&a.kind, &a.last_error, &a.payload))
            .collect::<Vec<_>>()
    );
    for (key, n) in changes_per_decision(&calls) {
        assert_eq!(n, 1, "{key:?} changed {n} times");
    }
    let truth: HashMap<String, kycd_sim::Truth> = s
        .sim
        .truth()
        .into_iter()
        .map(|t| (t.session_id.clone(), t))
        .collect();
    let written = |status: &str| -> Vec<String> {
        let mut ids: Vec<String> = changes_per_decision(&calls)
            .into_keys()
            .filter(|(_, st, _)| st == status)
            .map(|(id, _, _)| id)
            .collect();
        ids.dedup();
        ids
    };
    // decline: AML hits Didit sent to review end Declined at Didit.
    let declined = written("Declined");
    assert!(declined
        .iter()
        .any(|id| truth[id].scenario.name().starts_with("aml_")));
    for id in &declined {
        assert_eq!(truth[id].final_status, "Declined", "{id}");
    }
    // approve over Didit's review (allowed here): what no rule holds back.
    // Didit's own reviewer may still act afterwards in a few scenarios.
    let approved = written("Approved");
    assert!(!approved.is_empty(), "some approvals were written back");
    let reviewed_by_didit = ["resubmission", "review_approved", "review_declined"];
    let mut loosened = 0;
    for id in &approved {
        if !reviewed_by_didit.contains(&truth[id].scenario.name()) {
            assert_eq!(truth[id].final_status, "Approved", "{id}");
        }
        for a in s.actions(ActionState::Done).await.into_iter().filter(|a| {
            a.session_id.as_deref() == Some(id.as_str()) && a.payload["new_status"] == "Approved"
        }) {
            let stricter = matches!(
                a.payload["from_status"].as_str(),
                Some("In Review" | "Declined")
            );
            assert_eq!(
                a.payload["loosening"] == true,
                stricter,
                "loosening recorded: {}",
                a.payload
            );
            loosened += usize::from(stricter);
        }
    }
    assert!(loosened > 0, "some approvals overrode Didit's review");
    // resubmit: the liveness step sent back, with Didit's node id.
    let resubmitted: Vec<&ApiCall> = calls
        .iter()
        .filter(|c| {
            c.path.ends_with("/update-status/")
                && c.request["new_status"] == "Resubmitted"
                && c.request["nodes_to_resubmit"][0]["feature"] == "LIVENESS"
        })
        .collect();
    assert!(!resubmitted.is_empty(), "some selfies were sent back");
    assert!(resubmitted
        .iter()
        .all(|c| c.request["nodes_to_resubmit"][0]["node_id"].is_string()));
    // block: declined and on the blocklist, once each.
    let blocks: Vec<&ApiCall> = calls
        .iter()
        .filter(|c| c.path == "/v3/blocklist/add/")
        .collect();
    assert!(!blocks.is_empty(), "some customers were blocked");
    for b in &blocks {
        let id = b.session_id.as_deref().unwrap();
        assert_eq!(truth[id].scenario.name(), "expired_document", "{id}");
        assert_eq!(
            blocks
                .iter()
                .filter(|c| c.session_id == b.session_id)
                .count(),
            1
        );
        assert_eq!(b.request["blocklist_face"], true);
        assert_eq!(b.request["blocklist_document"], true);
    }
    s.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_chains_decisions_and_write_backs() {
    let s = stack(68, Options::default()).await;
    s.sim.run(80);
    s.settle(Duration::from_secs(90)).await;
    let mut items: Vec<Value> = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = s
            .api(
                reqwest::Method::GET,
                &format!("/audit?since=1h&limit=100&cursor={cursor}"),
                Some(TOKEN),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    let actions: Vec<&str> = items
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions[0], "policy.loaded");
    assert!(actions.contains(&"decision"));
    assert!(actions.contains(&"didit.update_status"));
    // One decision record per active decision.
    let decisions = s
        .running
        .app
        .store
        .list_decisions(DecisionQuery {
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        actions.iter().filter(|a| **a == "decision").count(),
        decisions.len()
    );
    // The export chains on its own: each record names the one before.
    for pair in items.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
        assert_eq!(
            pair[1]["seq"].as_u64(),
            pair[0]["seq"].as_u64().map(|n| n + 1)
        );
    }
    let v = s.running.app.audit.verify_audit().await.unwrap();
    assert_eq!(v.first_broken, None);
    assert_eq!(v.records as usize, items.len());
    let (status, _) = s.api(reqwest::Method::GET, "/audit", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = s
        .api(
            reqwest::Method::GET,
            "/audit?since=yesterday-ish",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 400);
    s.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewers_decision_acts_through_the_outbox_and_is_audited() {
    let s = stack(69, Options::default()).await;
    s.sim.run(60);
    s.settle(Duration::from_secs(90)).await;
    // A case in the review queue: kycd said review, Didit says In Review.
    let mut case = None;
    for t in s.sim.truth() {
        let doc = s.session(&t.session_id).await;
        if Stack::outcome_of(&doc) == Some("review") && t.final_status == "In Review" {
            case = Some(t.session_id.clone());
            break;
        }
    }
    let case = case.expect("a session in review");
    let path = format!("/sessions/{case}/review");

    // Bad requests change nothing.
    for body in [
        serde_json::json!({"outcome": "approve"}),
        serde_json::json!({"outcome": "approve", "comment": "   "}),
        serde_json::json!({"outcome": "step_up", "comment": "x"}),
        serde_json::json!({"outcome": "resubmit", "comment": "x"}),
        serde_json::json!({"outcome": "resubmit", "comment": "x", "nodes": ["SELFIE"]}),
        serde_json::json!({"outcome": "approve", "comment": "x", "nodes": ["LIVENESS"]}),
        serde_json::json!({"outcome": "resubmit", "comment": "x", "nodes": [{"feature": "SELFIE"}]}),
        serde_json::json!({"outcome": "resubmit", "comment": "x", "nodes": "LIVENESS"}),
    ] {
        let (status, e) = s
            .api(
                reqwest::Method::POST,
                &path,
                Some(TOKEN),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 400, "{body} -> {e}");
    }
    // A step the session's workflow does not have (the simulated KYC
    // workflow reads no chip): refused where it is asked for, naming it.
    for nodes in [
        serde_json::json!(["NFC"]),
        serde_json::json!([{"feature": "NFC"}]),
    ] {
        let (status, e) = s
            .api(
                reqwest::Method::POST,
                &path,
                Some(TOKEN),
                Some(serde_json::json!({"outcome": "resubmit", "comment": "x", "nodes": nodes})),
            )
            .await;
        assert_eq!(status, 422, "{e}");
        assert!(e.to_string().contains("NFC"), "{e}");
    }
    let (status, _) = s
        .api(
            reqwest::Method::POST,
            "/sessions/nope/review",
            Some(TOKEN),
            Some(serde_json::json!({"outcome": "approve", "comment": "x"})),
        )
        .await;
    assert_eq!(status, 404);
    let (_, read) = s
        .api(
            reqwest::Method::POST,
            "/tokens",
            Some(TOKEN),
            Some(serde_json::json!({"name": "viewer", "scope": "read"})),
        )
        .await;
    let (status, _) = s
        .api(
            reqwest::Method::POST,
            &path,
            read["token"].as_str(),
            Some(serde_json::json!({"outcome": "approve", "comment": "x"})),
        )
        .await;
    assert_eq!(status, 403, "a read token cannot decide");
    assert_eq!(Stack::outcome_of(&s.session(&case).await), Some("review"));

    // The reviewer approves: the decision is theirs, and Didit is updated once.
    let (status, r) = s
        .api(
            reqwest::Method::POST,
            &path,
            Some(TOKEN),
            Some(serde_json::json!({"outcome": "approve", "comment": "Namesake; date of birth differs from the listed person"})),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["decision"]["outcome"], "approve");
    assert_eq!(r["decision"]["policy_version"], "reviewer");
    s.settle(Duration::from_secs(60)).await;
    let changed = s.changes_of(&case);
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].request["new_status"], "Approved");
    let final_status = s.status_at_didit(&case);
    assert_eq!(final_status, "Approved");
    // Audited under the reviewer, with the comment as the reason.
    let (_, audit) = s
        .api(reqwest::Method::GET, "/audit?limit=500", Some(TOKEN), None)
        .await;
    let rec = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| {
            x["action"] == "decision" && x["target"] == case.as_str() && x["actor"] == "bootstrap"
        })
        .expect("the reviewer's decision is audited");
    assert_eq!(rec["details"]["outcome"], "approve");
    assert_eq!(rec["details"]["previous_outcome"], "review");
    assert!(rec["details"]["reasons"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("Namesake"));
    assert_eq!(
        s.running
            .app
            .audit
            .verify_audit()
            .await
            .unwrap()
            .first_broken,
        None
    );
    s.sim.shutdown().await;
}

/// The reconcile race, end to end: a reviewer approves over Didit's
/// `Declined` and kycd writes `Approved` to Didit. Didit's confirming
/// `status.updated Approved` fails its first attempt (503 from the proxy),
/// a reconciliation pass polls `Approved` first, and then Didit's retry
/// arrives. Every copy of the echo is kycd's own write-back, recognised by
/// its content: the person's approval stands, and kycd never writes
/// `Declined` back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewers_approval_survives_a_reconcile_pass_racing_didits_retry() {
    let gate = Gate::new();
    let s = stack(
        71,
        Options {
            gate: Some(gate.clone()),
            ..Options::default()
        },
    )
    .await;
    s.sim.run(40);
    s.settle(Duration::from_secs(90)).await;
    // A customer Didit declined, whom kycd declined too and so left as it
    // was (a session kycd itself wrote Declined to would not do).
    let mut case = None;
    for t in s.sim.truth() {
        if t.final_status == "Declined"
            && Stack::outcome_of(&s.session(&t.session_id).await) == Some("decline")
            && s.changes_of(&t.session_id).is_empty()
        {
            case = Some(t.session_id);
            break;
        }
    }
    let case = case.expect("a customer Didit and kycd both declined");

    gate.arm(&case, "Approved");
    let (status, r) = s
        .api(
            reqwest::Method::POST,
            &format!("/sessions/{case}/review"),
            Some(TOKEN),
            Some(serde_json::json!({"outcome": "approve", "comment": "Checked the documents by hand"})),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    // kycd's write-back reaches Didit, whose confirming delivery is
    // refused once, and whose retry is then held at the proxy.
    s.eventually("Didit's retry is held", Duration::from_secs(30), || async {
        gate.held.load(Ordering::SeqCst) > 0
    })
    .await;
    assert_eq!(s.changes_of(&case).len(), 1);
    assert_eq!(gate.refused.load(Ordering::SeqCst), 1);

    // Reconciliation sees Didit's Approved before the retry does.
    let (status, r) = s
        .api(
            reqwest::Method::POST,
            "/reconcile",
            Some(TOKEN),
            Some(serde_json::json!({"since": "1h"})),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert!(r["appended"].as_u64().unwrap() >= 1, "the poll is new: {r}");
    let head = s.running.app.log.head().await.unwrap();
    let mut applied = s.running.app.applied.clone();
    s.eventually("the poll is projected", Duration::from_secs(30), || {
        let now = *applied.borrow_and_update();
        async move { now >= head }
    })
    .await;
    let polled = s
        .running
        .app
        .store
        .get_session(&case)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(polled.status, "Approved", "the poll was applied");

    // Then Didit's retry arrives.
    gate.release.send_replace(true);
    s.eventually(
        "the retry reaches kycd",
        Duration::from_secs(30),
        || async { !gate.forwarded.lock().unwrap().is_empty() },
    )
    .await;
    assert!(gate.forwarded.lock().unwrap().iter().all(|c| *c == 200));
    s.settle(Duration::from_secs(60)).await;

    let doc = s.session(&case).await;
    assert_eq!(
        Stack::outcome_of(&doc),
        Some("approve"),
        "decision {}, history {}",
        doc["decision"],
        doc["history"]
    );
    assert_eq!(doc["decision"]["policy_version"], "reviewer");
    let writes: Vec<String> = s
        .changes_of(&case)
        .iter()
        .map(|c| c.request["new_status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(writes, ["Approved"], "kycd never writes Declined back");
    let final_status = s.status_at_didit(&case);
    assert_eq!(final_status, "Approved");
    let by_kycd = doc["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("by_kycd").is_some())
        .count();
    assert!(
        by_kycd >= 2,
        "the poll and the retry are both recognised as kycd's own: {}",
        doc["history"]
    );
    s.sim.shutdown().await;
}

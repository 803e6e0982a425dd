//! The decision path under the orders and timings an attacker or a flaky
//! network produces: deliveries during an open step-up, stale and repeated
//! deliveries, polls, Didit's echoes of kycd's own write-backs, unknown
//! event types and Didit's ongoing monitoring. Each test runs the real
//! projector over a real event log and store (SQLite files in a temporary
//! directory) and reads what it decided.

use std::collections::BTreeMap;
use std::sync::Arc;

use kycd_engine::actions::ActionSettings;
use kycd_engine::projector::{
    Policies, Projector, REVIEW_DECIDED, STEP_UP_CHECK_META, STEP_UP_CREATED, STEP_UP_META,
};
use kycd_log::outbox::{ActionQuery, Outbox};
use kycd_log::sqlite_log::{SqliteLog, SqliteLogOptions};
use kycd_log::store::{DecisionQuery, DecisionRecord, SqliteStore, Store};
use kycd_log::{EventLog, EventSource, NewEvent};
use kycd_policy::Policy;
use serde_json::{json, Value};

/// Didit's timestamps (seconds) and kycd's receive times (ms) start here.
const T0: i64 = 1_774_970_000;

struct Harness {
    _dir: tempfile::TempDir,
    log: Arc<SqliteLog>,
    store: Arc<SqliteStore>,
    projector: Projector,
    n: u64,
}

/// What a delivery says; every field but the session has a default.
#[derive(Clone)]
struct Delivery {
    session: &'static str,
    vendor: &'static str,
    status: &'static str,
    /// Seconds after [`T0`] (Didit's `timestamp`).
    at: i64,
    webhook_type: &'static str,
    face_match: f64,
    /// The session is a step-up kycd created for this original and check.
    step_up_of: Option<(&'static str, &'static str)>,
    /// Risk codes with their log type, on the ID verification.
    warnings: Vec<(&'static str, &'static str)>,
    aml_hits: u32,
    document: &'static str,
}

impl Delivery {
    fn new(session: &'static str, status: &'static str, at: i64) -> Self {
        Self {
            session,
            vendor: "user-1",
            status,
            at,
            webhook_type: "status.updated",
            face_match: 91.3,
            step_up_of: None,
            warnings: Vec::new(),
            aml_hits: 0,
            document: "X1234567",
        }
    }

    fn body(&self) -> Value {
        let warnings: Vec<Value> = self
            .warnings
            .iter()
            .map(|(risk, log_type)| {
                json!({"feature": "ID_VERIFICATION", "risk": risk, "log_type": log_type,
                       "short_description": "", "long_description": "", "node_id": "feature_ocr_1"})
            })
            .collect();
        let face_status = if self.face_match >= 70.0 {
            "Approved"
        } else {
            "In Review"
        };
        let aml_status = if self.aml_hits > 0 {
            "In Review"
        } else {
            "Approved"
        };
        let hits: Vec<Value> = (0..self.aml_hits)
            .map(|i| {
                json!({"id": format!("hit-{i}"), "match_score": 95, "datasets": ["Sanctions"],
                       "review_status": "Unreviewed", "risk_view": {}})
            })
            .collect();
        let metadata = self
            .step_up_of
            .map(|(o, c)| json!({STEP_UP_META: o, STEP_UP_CHECK_META: c}))
            .unwrap_or(Value::Null);
        json!({
            "session_id": self.session,
            "status": self.status,
            "webhook_type": self.webhook_type,
            "timestamp": T0 + self.at,
            "vendor_data": self.vendor,
            "metadata": metadata,
            "decision": {
                "session_id": self.session,
                "status": self.status,
                "features": ["ID_VERIFICATION", "LIVENESS", "FACE_MATCH", "AML", "IP_ANALYSIS"],
                "id_verifications": [{
                    "age": 37, "date_of_birth": "1988-04-02", "document_number": self.document,
                    "document_type": "Passport", "expiration_date": "2031-01-09",
                    "issuing_state": "DEU", "nationality": "DEU", "node_id": "feature_ocr_1",
                    "status": if self.warnings.is_empty() { "Approved" } else { self.status },
                    "warnings": warnings,
                }],
                "liveness_checks": [{"method": "PASSIVE", "node_id": "feature_liveness_1",
                                     "score": 97.25, "status": "Approved", "warnings": [], "matches": []}],
                "face_matches": [{"node_id": "feature_face_match_1", "score": self.face_match,
                                  "status": face_status, "warnings": []}],
                "aml_screenings": [{"hits": hits, "node_id": "feature_aml_1", "score": 0,
                                    "status": aml_status, "total_hits": self.aml_hits, "warnings": []}],
                "ip_analyses": [{"ip_address": "85.123.45.67", "ip_country_code": "DE",
                                 "is_data_center": false, "is_vpn_or_tor": false,
                                 "node_id": "feature_ip_analysis_1", "status": "Approved", "warnings": []}],
            },
        })
    }
}

/// What the server's decisions do in these tests: write back to Didit,
/// tell the operator, and step up with a workflow for each check.
fn actions() -> Arc<ActionSettings> {
    Arc::new(ActionSettings {
        didit: true,
        operator_webhooks: true,
        step_up_workflows: BTreeMap::from([
            ("BIOMETRIC_AUTH".to_owned(), "wf-bio".to_owned()),
            ("PHONE".to_owned(), "wf-phone".to_owned()),
            ("NFC".to_owned(), "wf-nfc".to_owned()),
        ]),
        ..ActionSettings::default()
    })
}

impl Harness {
    fn new() -> Self {
        Self::with_policy(Policy::builtin_default())
    }

    fn with_policy(policy: Policy) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(
            SqliteLog::open(&dir.path().join("events.db"), SqliteLogOptions::default()).unwrap(),
        );
        let store = Arc::new(SqliteStore::open(&dir.path().join("store.db"), false).unwrap());
        let mut policies = Policies::new(policy, None);
        policies.actions = actions();
        let projector = Projector::new(log.clone(), store.clone(), policies);
        Self {
            _dir: dir,
            log,
            store,
            projector,
            n: 0,
        }
    }

    /// kycd's receive time of the next event: a second after the last.
    fn next_ms(&mut self, at: i64) -> i64 {
        self.n += 1;
        (T0 + at) * 1000 + self.n as i64
    }

    async fn append(
        &mut self,
        source: EventSource,
        kind: &str,
        session: Option<&str>,
        at: i64,
        body: Value,
    ) {
        let received_at_ms = self.next_ms(at);
        self.log
            .append(NewEvent {
                received_at_ms,
                source,
                kind: kind.to_owned(),
                session_id: session.map(str::to_owned),
                didit_event_id: None,
                dedupe_keys: vec![format!("test:{}", self.n)],
                body: serde_json::to_vec(&body).unwrap(),
                meta: json!({}),
            })
            .await
            .unwrap();
        self.projector.catch_up().await.unwrap();
    }

    async fn deliver(&mut self, d: &Delivery) {
        self.append(
            EventSource::Webhook,
            d.webhook_type,
            Some(d.session),
            d.at,
            d.body(),
        )
        .await;
    }

    async fn poll(&mut self, d: &Delivery) {
        self.append(
            EventSource::Polled,
            "status.updated",
            Some(d.session),
            d.at,
            d.body(),
        )
        .await;
    }

    /// kycd's own event about `session`, as the workers and the API log it.
    async fn internal(&mut self, kind: &str, session: &str, at: i64, body: Value) {
        self.append(EventSource::Internal, kind, Some(session), at, body)
            .await;
    }

    async fn review(&mut self, session: &str, outcome: &str, at: i64) {
        let body = json!({"session_id": session, "outcome": outcome, "comment": "checked",
                          "reviewer": "user:alice", "nodes": []});
        self.internal(REVIEW_DECIDED, session, at, body).await;
    }

    /// The session's active decisions, oldest first.
    async fn decisions(&self, session: &str) -> Vec<DecisionRecord> {
        let mut d = self
            .store
            .list_decisions(DecisionQuery {
                session_id: Some(session.to_owned()),
                limit: 1000,
                ..DecisionQuery::default()
            })
            .await
            .unwrap();
        d.reverse();
        d
    }

    async fn outcomes(&self, session: &str) -> Vec<String> {
        self.decisions(session)
            .await
            .into_iter()
            .map(|d| d.outcome)
            .collect()
    }

    async fn session_doc(&self, session: &str) -> Value {
        let ids = [session.to_owned()];
        self.store.load_sessions(&ids).await.unwrap()[session]
            .doc
            .clone()
    }

    /// Every action the session's decisions enqueued, as `kind` or
    /// `kind:detail` (the status written, the operator event type).
    async fn actions(&self, session: &str) -> Vec<String> {
        let mut a = self
            .store
            .list_actions(ActionQuery {
                session_id: Some(session.to_owned()),
                limit: 1000,
                ..ActionQuery::default()
            })
            .await
            .unwrap();
        a.sort_by_key(|a| a.seq);
        a.into_iter()
            .map(|a| {
                let detail = a.payload["new_status"]
                    .as_str()
                    .or_else(|| a.payload["body"]["type"].as_str())
                    .or_else(|| a.payload["check"].as_str());
                match detail {
                    Some(d) => format!("{}:{d}", a.kind),
                    None => a.kind,
                }
            })
            .collect()
    }
}

fn reasons(d: &DecisionRecord) -> Vec<String> {
    d.doc["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap().to_owned())
        .collect()
}

/// A weak face match that Didit approved: the policy asks for a biometric
/// re-authentication.
async fn stepped_up(h: &mut Harness) -> Delivery {
    let d = Delivery {
        face_match: 60.0,
        ..Delivery::new("s1", "Approved", 0)
    };
    h.deliver(&d).await;
    assert_eq!(h.outcomes("s1").await, ["step_up"]);
    d
}

#[tokio::test]
async fn an_open_step_up_is_never_re_decided_as_approve() {
    let mut h = Harness::new();
    let d = stepped_up(&mut h).await;
    // Didit's reviewer corrects the data while the step-up is open: the
    // face match now passes, so no rule asks for a step-up any more.
    let corrected = Delivery {
        face_match: 88.0,
        webhook_type: "data.updated",
        at: 60,
        ..d.clone()
    };
    h.deliver(&corrected).await;
    let decisions = h.decisions("s1").await;
    assert_eq!(h.outcomes("s1").await, ["step_up", "step_up"]);
    assert_eq!(reasons(&decisions[1]), ["step_up_open"]);
    // Nothing tells the operator the session changed, and no second
    // step-up session is asked for.
    let actions = h.actions("s1").await;
    assert!(
        !actions.iter().any(|a| a.contains("decision.changed")),
        "{actions:?}"
    );
    assert_eq!(
        actions
            .iter()
            .filter(|a| a.starts_with("didit.step_up"))
            .count(),
        1,
        "{actions:?}"
    );
}

#[tokio::test]
async fn an_open_step_up_is_escalated_by_a_decline() {
    let mut h = Harness::new();
    let d = stepped_up(&mut h).await;
    // Didit's monitoring finds the customer on a sanctions list a day later.
    let listed = Delivery {
        status: "Declined",
        at: 86_400,
        aml_hits: 1,
        warnings: vec![("POSSIBLE_MATCH_FOUND", "error")],
        ..d
    };
    h.deliver(&listed).await;
    // The sanctions hit blocks: an escalation, which the hold lets through.
    assert_eq!(h.outcomes("s1").await, ["step_up", "block"]);
}

#[tokio::test]
async fn the_step_up_session_is_decided_by_the_policy_and_its_decision_completes_the_original() {
    let mut h = Harness::new();
    stepped_up(&mut h).await;
    // Didit approves the step-up session, but its face match is as weak as
    // the original's: the policy sends the step-up session to review, so
    // the original is not let through.
    let step_up = Delivery {
        face_match: 60.0,
        step_up_of: Some(("s1", "BIOMETRIC_AUTH")),
        at: 120,
        ..Delivery::new("s1-bio", "Approved", 120)
    };
    h.deliver(&step_up).await;
    let own = h.decisions("s1-bio").await;
    assert_eq!(
        own.len(),
        1,
        "the step-up session has a decision of its own"
    );
    assert_eq!(own[0].outcome, "review");
    assert_eq!(reasons(&own[0]), ["step_up_session_doubt"]);
    let decisions = h.decisions("s1").await;
    assert_eq!(h.outcomes("s1").await, ["step_up", "review"]);
    assert_eq!(reasons(&decisions[1]), ["step_up_in_review"]);
    let doc = h.session_doc("s1").await;
    assert_eq!(doc["step_up"]["status"], "completed");
    assert_eq!(doc["step_up"]["outcome"], "review");
}

#[tokio::test]
async fn a_passed_step_up_approves_the_original() {
    let mut h = Harness::new();
    stepped_up(&mut h).await;
    let step_up = Delivery {
        face_match: 95.0,
        step_up_of: Some(("s1", "BIOMETRIC_AUTH")),
        ..Delivery::new("s1-bio", "Approved", 120)
    };
    h.deliver(&step_up).await;
    assert_eq!(h.outcomes("s1-bio").await, ["approve"]);
    assert_eq!(h.outcomes("s1").await, ["step_up", "approve"]);
}

#[tokio::test]
async fn a_step_up_result_after_its_expiry_counts_as_expired() {
    let mut h = Harness::new();
    stepped_up(&mut h).await;
    let expires_at_ms = (T0 + 600) * 1000;
    h.internal(
        STEP_UP_CREATED,
        "s1",
        1,
        json!({"original_session_id": "s1", "check": "BIOMETRIC_AUTH",
               "step_up_session_id": "s1-bio", "url": "https://verify.example/s1-bio",
               "expires_at_ms": expires_at_ms, "workflow_id": "wf-bio"}),
    )
    .await;
    // The customer passes, but only after the step-up expired (and before
    // kycd's expiry timer noticed).
    let late = Delivery {
        face_match: 95.0,
        step_up_of: Some(("s1", "BIOMETRIC_AUTH")),
        ..Delivery::new("s1-bio", "Approved", 601)
    };
    h.deliver(&late).await;
    let decisions = h.decisions("s1").await;
    assert_eq!(h.outcomes("s1").await, ["step_up", "review"]);
    assert_eq!(reasons(&decisions[1]), ["step_up_expired"]);
    let doc = h.session_doc("s1").await;
    assert_eq!(doc["step_up"]["status"], "expired");
    assert_eq!(doc["step_up"]["expiry_reason"], "completed after expiry");
    assert_eq!(
        doc["step_up"]["sessions"]["BIOMETRIC_AUTH"]["completed_after_expiry"],
        true
    );
}

#[tokio::test]
async fn a_refused_delivery_decides_nothing() {
    let mut h = Harness::new();
    h.deliver(&Delivery::new("s1", "Approved", 100)).await;
    let before = h.actions("s1").await;
    // Didit's retry of the review that came before the approval, stamped
    // afresh: recorded in the history, never decided on.
    let late_review = Delivery {
        face_match: 60.0,
        ..Delivery::new("s1", "In Review", 130)
    };
    h.deliver(&late_review).await;
    assert_eq!(h.outcomes("s1").await, ["approve"]);
    let doc = h.session_doc("s1").await;
    assert_eq!(doc["history"][1]["applied"], false);
    assert_eq!(h.actions("s1").await, before, "nothing more is done");
}

#[tokio::test]
async fn a_poll_or_a_repeat_of_a_known_state_decides_nothing() {
    let mut h = Harness::new();
    let blocked = Delivery {
        warnings: vec![("PORTRAIT_MANIPULATION_DETECTED", "error")],
        ..Delivery::new("s1", "Declined", 0)
    };
    h.deliver(&blocked).await;
    assert_eq!(h.outcomes("s1").await, ["block"]);
    // Reconciliation re-reads the same state, and a late copy arrives.
    h.poll(&Delivery {
        at: 900,
        ..blocked.clone()
    })
    .await;
    h.deliver(&Delivery { at: 901, ..blocked }).await;
    assert_eq!(h.outcomes("s1").await, ["block"]);
    let blocklist = h
        .actions("s1")
        .await
        .into_iter()
        .filter(|a| a == "didit.blocklist")
        .count();
    assert_eq!(blocklist, 1, "one blocklist call, not one per copy");
}

#[tokio::test]
async fn an_unknown_event_type_never_becomes_a_session() {
    let mut h = Harness::new();
    let d = Delivery {
        webhook_type: "session.teleported",
        ..Delivery::new("s9", "Approved", 0)
    };
    h.deliver(&d).await;
    assert!(h
        .store
        .load_sessions(&["s9".to_owned()])
        .await
        .unwrap()
        .is_empty());
    assert!(h.decisions("s9").await.is_empty());
}

#[tokio::test]
async fn a_persons_decision_survives_every_copy_of_didits_echo_in_any_order() {
    let mut h = Harness::new();
    let declined = Delivery {
        warnings: vec![("DOCUMENT_EXPIRED", "error")],
        ..Delivery::new("s1", "Declined", 0)
    };
    h.deliver(&declined).await;
    assert_eq!(h.outcomes("s1").await, ["decline"]);
    h.review("s1", "approve", 300).await;
    assert!(h
        .actions("s1")
        .await
        .contains(&"didit.update_status:Approved".to_owned()));
    // Didit applies kycd's write-back. Its webhook fails its first attempt;
    // a reconciliation pass polls the new status first; then Didit's retry
    // arrives, and later a second copy.
    let echo = Delivery {
        at: 310,
        ..Delivery::new("s1", "Approved", 310)
    };
    let echo = Delivery {
        warnings: declined.warnings.clone(),
        ..echo
    };
    h.poll(&echo).await;
    h.deliver(&Delivery {
        at: 370,
        ..echo.clone()
    })
    .await;
    h.deliver(&Delivery { at: 610, ..echo }).await;
    assert_eq!(h.outcomes("s1").await, ["decline", "approve"]);
    let writes: Vec<String> = h
        .actions("s1")
        .await
        .into_iter()
        .filter(|a| a.starts_with("didit.update_status"))
        .collect();
    assert_eq!(
        writes,
        ["didit.update_status:Approved"],
        "kycd never writes Declined back"
    );
    let doc = h.session_doc("s1").await;
    let by_kycd = doc["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("by_kycd").is_some())
        .count();
    assert_eq!(by_kycd, 3, "each copy is recognised as kycd's own");
}

#[tokio::test]
async fn didits_ongoing_monitoring_re_decides_an_approved_session() {
    let mut h = Harness::new();
    h.deliver(&Delivery::new("s1", "Approved", 0)).await;
    assert_eq!(h.outcomes("s1").await, ["approve"]);
    // Days later Didit's AML monitoring finds a possible match and sends
    // the session to review, then its reviewer declines it.
    let review = Delivery {
        aml_hits: 1,
        ..Delivery::new("s1", "In Review", 3 * 86_400)
    };
    h.deliver(&review).await;
    let declined = Delivery {
        aml_hits: 1,
        warnings: vec![("POSSIBLE_MATCH_FOUND", "error")],
        ..Delivery::new("s1", "Declined", 4 * 86_400)
    };
    h.deliver(&declined).await;
    let outcomes = h.outcomes("s1").await;
    assert_eq!(outcomes.first().map(String::as_str), Some("approve"));
    assert_eq!(
        outcomes.last().map(String::as_str),
        Some("block"),
        "{outcomes:?}"
    );
    let actions = h.actions("s1").await;
    assert!(
        actions
            .iter()
            .any(|a| a == "operator.webhook:decision.changed"),
        "{actions:?}"
    );
}

/// Later evidence: a second customer verifies with the first one's
/// document. The second goes to review, and the first, approved until
/// then, is decided again with the link (kind and session) in its facts;
/// the link stays with it for every later decision.
#[tokio::test]
async fn a_later_session_with_the_same_document_re_decides_an_approved_customer() {
    let mut h = Harness::new();
    h.deliver(&Delivery::new("s1", "Approved", 0)).await;
    assert_eq!(h.outcomes("s1").await, ["approve"]);
    let second = Delivery {
        vendor: "user-2",
        ..Delivery::new("s2", "Approved", 3600)
    };
    h.deliver(&second).await;
    assert_eq!(h.outcomes("s2").await, ["review"]);
    let s1 = h.decisions("s1").await;
    assert_eq!(
        s1.iter().map(|d| d.outcome.as_str()).collect::<Vec<_>>(),
        ["approve", "review"]
    );
    let again = &s1[1];
    assert_eq!(reasons(again), ["later_identity_link"]);
    assert_eq!(again.doc["trigger"]["kind"], "retroactive");
    assert_eq!(again.doc["trigger"]["session_id"], "s2");
    assert_eq!(
        again.doc["facts"]["graph"]["later_links"][0]["session_id"],
        "s2"
    );
    assert_eq!(
        again.doc["facts"]["graph"]["later_link_kinds"],
        json!(["document"])
    );
    let actions = h.actions("s1").await;
    assert!(
        actions
            .iter()
            .any(|a| a == "operator.webhook:decision.changed"),
        "the operator hears of it: {actions:?}"
    );
    // A later correction of the first session's data keeps the link.
    let corrected = Delivery {
        webhook_type: "data.updated",
        ..Delivery::new("s1", "Approved", 7200)
    };
    h.deliver(&corrected).await;
    let last = h.decisions("s1").await.pop().unwrap();
    assert_eq!(last.outcome, "review", "{:?}", reasons(&last));
    assert!(reasons(&last).contains(&"later_identity_link".to_owned()));
}

/// The same history, projected one event at a time and all in one batch,
/// gives the same retroactive decisions (a replay splits batches anew).
#[tokio::test]
async fn retroactive_decisions_do_not_depend_on_batch_boundaries() {
    let deliveries = [
        Delivery::new("s1", "Approved", 0),
        Delivery {
            vendor: "user-2",
            ..Delivery::new("s2", "Approved", 3600)
        },
        Delivery {
            vendor: "user-3",
            ..Delivery::new("s3", "Approved", 7200)
        },
    ];
    let mut one_by_one = Harness::new();
    for d in &deliveries {
        one_by_one.deliver(d).await;
    }
    let batched = Harness::new();
    for (n, d) in deliveries.iter().enumerate() {
        batched
            .log
            .append(NewEvent {
                received_at_ms: (T0 + d.at) * 1000 + n as i64 + 1,
                source: EventSource::Webhook,
                kind: d.webhook_type.to_owned(),
                session_id: Some(d.session.to_owned()),
                didit_event_id: None,
                dedupe_keys: vec![format!("test:{}", n + 1)],
                body: serde_json::to_vec(&d.body()).unwrap(),
                meta: json!({}),
            })
            .await
            .unwrap();
    }
    batched.projector.catch_up().await.unwrap();
    for s in ["s1", "s2", "s3"] {
        let a: Vec<Value> = one_by_one
            .decisions(s)
            .await
            .iter()
            .map(without_event_id)
            .collect();
        let b: Vec<Value> = batched
            .decisions(s)
            .await
            .iter()
            .map(without_event_id)
            .collect();
        assert_eq!(a, b, "{s}");
    }
    // s1 was decided again for s2 and then for s3; s2 for s3.
    assert_eq!(one_by_one.outcomes("s1").await, ["approve", "review"]);
    assert_eq!(one_by_one.outcomes("s2").await, ["review"]);
}

/// A decision as compared across two logs, whose event ids differ.
fn without_event_id(d: &DecisionRecord) -> Value {
    let mut v = kycd_engine::replay::comparable(d);
    if let Some(o) = v.as_object_mut() {
        o.remove("event_id");
    }
    v
}

/// Didit's liveness names the earlier session the face was seen in.
#[tokio::test]
async fn a_face_seen_again_re_decides_the_earlier_approved_session() {
    let mut h = Harness::new();
    h.deliver(&Delivery::new("s1", "Approved", 0)).await;
    let second = Delivery {
        vendor: "user-2",
        document: "Y7654321",
        ..Delivery::new("s2", "In Review", 3600)
    };
    let mut body = second.body();
    body["decision"]["liveness_checks"][0]["matches"] = json!([{"session_id": "s1", "session_number": 1, "vendor_data": "user-1", "similarity_percentage": 98.1}]);
    h.append(
        EventSource::Webhook,
        "status.updated",
        Some("s2"),
        3600,
        body,
    )
    .await;
    assert_eq!(h.outcomes("s2").await, ["review"]);
    let s1 = h.decisions("s1").await;
    assert_eq!(s1.len(), 2);
    assert_eq!(s1[1].outcome, "review");
    assert_eq!(
        s1[1].doc["facts"]["graph"]["later_link_kinds"],
        json!(["face"])
    );
}

/// An operator blocklisting a customer decides their approved sessions
/// again, and only those.
#[tokio::test]
async fn blocklisting_a_customer_re_decides_their_approved_sessions() {
    let mut h = Harness::new();
    h.deliver(&Delivery::new("s1", "Approved", 0)).await;
    let declined = Delivery {
        warnings: vec![("PRINTED_COPY_DETECTED", "error")],
        document: "Z1111111",
        ..Delivery::new("s2", "Declined", 60)
    };
    h.deliver(&declined).await;
    let before = h.outcomes("s2").await;
    let body = json!({"vendor_data": "user-1", "attributes": {"blocklisted": true}});
    h.append(EventSource::Subject, "subject.updated", None, 120, body)
        .await;
    let s1 = h.decisions("s1").await;
    assert_eq!(
        s1.iter().map(|d| d.outcome.as_str()).collect::<Vec<_>>(),
        ["approve", "block"]
    );
    assert_eq!(reasons(&s1[1]), ["blocklisted_subject"]);
    assert_eq!(s1[1].doc["trigger"]["kind"], "subject");
    assert_eq!(s1[1].doc["facts"]["subject"]["blocklisted"], true);
    assert_eq!(
        h.outcomes("s2").await,
        before,
        "a declined session is not decided again"
    );
    assert!(h
        .actions("s1")
        .await
        .iter()
        .any(|a| a.starts_with("didit.blocklist")));
}

/// Adaptive verification: Didit sent the session to review only for a
/// disposable phone, so kycd asks for a phone check instead of a person,
/// and the passed check approves the session.
#[tokio::test]
async fn didit_in_review_for_a_disposable_phone_alone_is_stepped_up_and_approved_after() {
    let mut h = Harness::new();
    let d = Delivery {
        warnings: vec![("DISPOSABLE_NUMBER_DETECTED", "warning")],
        ..Delivery::new("s1", "In Review", 0)
    };
    h.deliver(&d).await;
    let first = h.decisions("s1").await;
    assert_eq!(first[0].outcome, "step_up", "{:?}", reasons(&first[0]));
    assert_eq!(first[0].doc["checks"], json!(["PHONE"]));
    let passed = Delivery {
        step_up_of: Some(("s1", "PHONE")),
        ..Delivery::new("p1", "Approved", 300)
    };
    h.deliver(&passed).await;
    assert_eq!(h.outcomes("p1").await, ["approve"]);
    let s1 = h.decisions("s1").await;
    let last = s1.last().unwrap();
    assert_eq!(last.outcome, "approve", "{:?}", reasons(last));
    assert_eq!(last.doc["trigger"]["kind"], "step_up_completed");
}

/// The policy asks to redo the chip read of a session whose workflow has
/// no NFC step: nothing Didit could do, so a person decides, told why.
#[tokio::test]
async fn a_resubmission_of_a_step_the_workflow_lacks_goes_to_review() {
    let policy = Policy::from_source(
        "redo-nfc.toml",
        r#"
name = "redo-nfc"
[bands]
approve = 29
review = 69
decline = 100
[[rule]]
id = "redo_nfc"
when = "document.present == true"
outcome = "resubmit"
nodes = [{ feature = "NFC" }]
reason = "Read the chip again"
[[rule]]
id = "redo_selfie"
when = "liveness.present == true"
outcome = "resubmit"
nodes = [{ feature = "LIVENESS" }]
reason = "Take the selfie again"
"#,
        &[],
    )
    .unwrap();
    let mut h = Harness::with_policy(policy);
    h.deliver(&Delivery::new("s1", "Approved", 0)).await;
    let made = h.decisions("s1").await;
    assert_eq!(made[0].outcome, "review", "{:?}", reasons(&made[0]));
    assert_eq!(
        reasons(&made[0]),
        ["redo_nfc", "redo_selfie", "resubmit_impossible"]
    );
    let text = made[0].doc["reasons"][2]["text"].as_str().unwrap();
    assert!(text.contains("NFC") && !text.contains("LIVENESS"), "{text}");
    assert_eq!(made[0].doc["resubmit_nodes"], json!([]));
    assert!(
        !h.actions("s1")
            .await
            .iter()
            .any(|a| a.contains("Resubmitted")),
        "nothing is asked of Didit"
    );
    // A step the workflow has is resubmitted as asked.
    let only_selfie = Policy::from_source(
        "redo-selfie.toml",
        r#"
name = "redo-selfie"
[bands]
approve = 29
review = 69
decline = 100
[[rule]]
id = "redo_selfie"
when = "liveness.present == true"
outcome = "resubmit"
nodes = [{ feature = "LIVENESS" }]
reason = "Take the selfie again"
"#,
        &[],
    )
    .unwrap();
    let mut h = Harness::with_policy(only_selfie);
    h.deliver(&Delivery::new("s1", "Approved", 0)).await;
    assert_eq!(h.outcomes("s1").await, ["resubmit"]);
    assert!(h
        .actions("s1")
        .await
        .iter()
        .any(|a| a == "didit.update_status:Resubmitted"));
}

/// A policy unlike the default: every decided session goes to review.
const REVIEW_ALL: &str = r#"
name = "review-all"
description = "Every case to a person"
[bands]
approve = 29
review = 100

[[rule]]
id = "always_review"
when = "true"
outcome = "review"
reason = "Every case goes to a person"
"#;

impl Harness {
    /// Activate `policy` from this position in the log, as the server does
    /// at start and on SIGHUP.
    async fn activate(&mut self, policy: &Policy, at: i64) {
        let at_ms = self.next_ms(at);
        self.log
            .append(kycd_engine::projector::policy_activation(
                policy,
                "operator:sighup",
                at_ms,
            ))
            .await
            .unwrap();
        self.projector.catch_up().await.unwrap();
    }

    async fn replay(&self, candidate: Option<Policy>) -> kycd_engine::replay::Report {
        let scratch_dir = tempfile::tempdir().unwrap();
        let scratch: Arc<dyn Store> =
            Arc::new(SqliteStore::open_scratch(&scratch_dir.path().join("s.db")).unwrap());
        let w = kycd_engine::replay::Window {
            since_ms: None,
            until_ms: None,
            max_examples: 10,
            graph_window_ms: kycd_engine::projector::DEFAULT_GRAPH_WINDOW_MS,
        };
        let actions = actions();
        let log: Arc<dyn EventLog> = self.log.clone();
        match candidate {
            Some(p) => kycd_engine::replay::replay_with(log, &*self.store, scratch, p, w, actions)
                .await
                .unwrap(),
            None => kycd_engine::replay::replay_recorded(log, &*self.store, scratch, w, actions)
                .await
                .unwrap(),
        }
    }
}

/// A log with policy reloads, step-ups completed and expired, a person's
/// decision and retroactive re-decisions: replayed with the recorded
/// policies, every policy decision reproduces byte for byte and every
/// stored decision is in exactly one category.
#[tokio::test]
async fn replay_with_the_recorded_policies_reproduces_a_log_with_reloads() {
    let mut h = Harness::new();
    let builtin = Policy::builtin_default();
    let other = Policy::from_source("review-all.toml", REVIEW_ALL, &[]).unwrap();
    h.activate(&builtin, 0).await;
    // A step-up, completed.
    stepped_up(&mut h).await;
    h.deliver(&Delivery {
        face_match: 95.0,
        step_up_of: Some(("s1", "BIOMETRIC_AUTH")),
        ..Delivery::new("s1-bio", "Approved", 120)
    })
    .await;
    assert_eq!(h.outcomes("s1").await, ["step_up", "approve"]);
    // Another policy decides for a while, and a person overrules it.
    h.activate(&other, 200).await;
    let s2 = Delivery {
        vendor: "user-2",
        document: "B2222222",
        ..Delivery::new("s2", "Approved", 300)
    };
    h.deliver(&s2).await;
    let decided = h.decisions("s2").await;
    assert_eq!(decided[0].policy_version, other.version());
    assert_eq!(decided[0].outcome, "review");
    h.review("s2", "approve", 400).await;
    // Back to the default: a step-up whose result comes after its expiry,
    // and a later session with s2's document re-decides s2.
    h.activate(&builtin, 500).await;
    h.deliver(&Delivery {
        face_match: 60.0,
        vendor: "user-3",
        document: "C3333333",
        ..Delivery::new("s3", "Approved", 600)
    })
    .await;
    h.internal(
        STEP_UP_CREATED,
        "s3",
        601,
        json!({"original_session_id": "s3", "check": "BIOMETRIC_AUTH",
               "step_up_session_id": "s3-bio", "url": "https://verify.example/s3-bio",
               "expires_at_ms": (T0 + 700) * 1000, "workflow_id": "wf-bio"}),
    )
    .await;
    h.deliver(&Delivery {
        face_match: 95.0,
        vendor: "user-3",
        document: "C3333333",
        step_up_of: Some(("s3", "BIOMETRIC_AUTH")),
        ..Delivery::new("s3-bio", "Approved", 800)
    })
    .await;
    assert_eq!(h.outcomes("s3").await, ["step_up", "review"]);
    h.deliver(&Delivery {
        vendor: "user-4",
        document: "B2222222",
        ..Delivery::new("s4", "Approved", 900)
    })
    .await;
    let s2_now = h.decisions("s2").await;
    assert_eq!(
        s2_now.last().unwrap().doc["trigger"]["kind"],
        "retroactive",
        "{:?}",
        s2_now.iter().map(|d| &d.outcome).collect::<Vec<_>>()
    );

    let stored = h
        .store
        .list_decisions(DecisionQuery {
            limit: 1000,
            ..DecisionQuery::default()
        })
        .await
        .unwrap()
        .len() as u64;
    let recorded = h.replay(None).await;
    assert_eq!(recorded.total, stored);
    assert_eq!(recorded.categories.values().sum::<u64>(), stored);
    assert_eq!(recorded.categories["person"], 1);
    assert_eq!(
        recorded.categories["reproduced"],
        stored - 1,
        "every policy decision reproduces: {recorded:?}"
    );
    for trigger in [
        "delivery",
        "step_up_completed",
        "step_up_expired",
        "retroactive",
    ] {
        assert!(
            recorded.by_trigger[trigger]["reproduced"] > 0,
            "{trigger}: {recorded:?}"
        );
    }
    // With one candidate instead, the other policy's decision changes:
    // the switch is what reproduced it.
    let candidate = h.replay(Some(Policy::builtin_default())).await;
    assert_eq!(candidate.categories.values().sum::<u64>(), stored);
    assert!(
        candidate.categories["changed_outcome"] >= 1,
        "{candidate:?}"
    );
}

/// A projector started later (a restart) over a store that had applied a
/// reload decides the rest of the backlog with the reloaded policy, not
/// with the one it was constructed with.
#[tokio::test]
async fn a_restarted_projector_keeps_the_policy_the_log_activated() {
    let mut h = Harness::new();
    let other = Policy::from_source("review-all.toml", REVIEW_ALL, &[]).unwrap();
    h.activate(&other, 0).await;
    h.deliver(&Delivery::new("s1", "Approved", 10)).await;
    assert_eq!(h.decisions("s1").await[0].policy_version, other.version());
    // The next delivery is in the log, the projector restarts with the
    // default policy as its configuration.
    let at_ms = h.next_ms(20);
    h.log
        .append(NewEvent {
            received_at_ms: at_ms,
            source: EventSource::Webhook,
            kind: "status.updated".into(),
            session_id: Some("s2".into()),
            didit_event_id: None,
            dedupe_keys: vec!["restart:s2".into()],
            body: serde_json::to_vec(&Delivery::new("s2", "Approved", 20).body()).unwrap(),
            meta: json!({}),
        })
        .await
        .unwrap();
    let restarted = Projector::new(
        h.log.clone(),
        h.store.clone(),
        Policies::new(Policy::builtin_default(), None),
    );
    restarted.catch_up().await.unwrap();
    let d = h.decisions("s2").await;
    assert_eq!(d[0].policy_version, other.version());
    assert_eq!(d[0].outcome, "review");
}

//! The API call log: what each call asked for and what it did at Didit.

use base64::Engine;
use kycd_sim::{ApiCall, CallEffect, RateLimits};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{self, Api, API_KEY, SETTLE};

/// `(method, path, effect, status)` of each call, for comparing whole logs.
fn summary(calls: &[ApiCall]) -> Vec<(String, String, CallEffect, u16)> {
    calls
        .iter()
        .map(|c| (c.method.clone(), c.path.clone(), c.effect, c.status))
        .collect()
}

fn row(
    method: &str,
    path: &str,
    effect: CallEffect,
    status: u16,
) -> (String, String, CallEffect, u16) {
    (method.to_owned(), path.to_owned(), effect, status)
}

#[tokio::test]
async fn every_effect_is_logged_once_with_what_it_did() {
    use CallEffect::*;
    // Slow enough that a resubmitted session is still Resubmitted when
    // the second Resubmitted arrives (its redo starts 60 simulated s later).
    let sim = support::sim(51, 100.0).await;
    let api = Api::new(&sim);
    let kyc = sim.kyc_workflow_id();

    // A customer who goes through, for the blocklist.
    let approved = api.scenario_session(kyc, "log-b", "clean_approval").await;
    let b = approved["session_id"].as_str().unwrap().to_owned();

    // Didit hands back the vendor's unfinished session on the same workflow.
    let body = json!({"vendor_data": "log-a", "metadata": {"sim_auto": false}});
    let first = api.create_session(kyc, body.clone()).await;
    let again = api.create_session(kyc, body).await;
    let a = first["session_id"].as_str().unwrap().to_owned();
    assert_eq!(again["session_id"], json!(a));

    sim.set_status(&a, "In Review").unwrap();
    let update = format!("/v3/session/{a}/update-status/");
    for _ in 0..2 {
        let answer = api.patch(&update, json!({"new_status": "Declined"})).await;
        assert_eq!(answer.status, 200);
    }
    let resubmit = json!({"new_status": "Resubmitted",
        "nodes_to_resubmit": [{"node_id": "feature_ocr_1", "feature": "OCR"}]});
    assert_eq!(api.patch(&update, resubmit.clone()).await.status, 200);
    let same = api.patch(&update, resubmit).await;
    assert_eq!(same.status, 400);
    assert_eq!(
        same.detail(),
        "The new status is the same as the current status."
    );

    sim.wait_settled(SETTLE).await.unwrap();
    assert_eq!(api.decision(&b).await["status"], json!("Approved"));
    let block = json!({"session_id": b, "blocklist_face": true});
    for _ in 0..2 {
        assert_eq!(
            api.post("/v3/blocklist/add/", block.clone()).await.status,
            200
        );
    }
    let unblock = json!({"session_id": b, "unblock_face": true});
    assert_eq!(api.post("/v3/blocklist/remove/", unblock).await.status, 200);
    let listed = api.get("/v3/sessions/?vendor_data=log-b").await;
    assert_eq!(listed.status, 200);
    let delete = format!("/v3/session/{a}/delete/");
    assert_eq!(api.delete(&delete).await.status, 204);
    assert_eq!(api.delete(&delete).await.status, 404);
    // Calls outside the log: a PDF, the workflow list.
    api.get(&format!("/v3/session/{b}/generate-pdf/")).await;
    api.get("/v3/workflows/").await;

    let calls = sim.calls();
    let decision_b = format!("/v3/session/{b}/decision/");
    assert_eq!(
        summary(&calls),
        [
            row("POST", "/v3/session/", Created, 201),
            row("POST", "/v3/session/", Created, 201),
            row("POST", "/v3/session/", ReturnedExisting, 201),
            row("PATCH", &update, Changed, 200),
            row("PATCH", &update, Noop, 200),
            row("PATCH", &update, Changed, 200),
            row("PATCH", &update, Rejected, 400),
            row("GET", &decision_b, Read, 200),
            row("POST", "/v3/blocklist/add/", Changed, 200),
            row("POST", "/v3/blocklist/add/", Noop, 200),
            row("POST", "/v3/blocklist/remove/", Changed, 200),
            row("GET", "/v3/sessions/", Read, 200),
            row("DELETE", &delete, Changed, 204),
            row("DELETE", &delete, Rejected, 404),
        ]
    );
    assert_eq!(
        calls.iter().map(|c| c.seq).collect::<Vec<_>>(),
        (1..=14).collect::<Vec<u64>>()
    );
    let sessions: Vec<Option<&str>> = calls.iter().map(|c| c.session_id.as_deref()).collect();
    let (a, b) = (Some(a.as_str()), Some(b.as_str()));
    assert_eq!(
        sessions,
        [b, a, a, a, a, a, a, b, b, b, b, None, a, a],
        "from the answer, the path or the blocklist body"
    );
    assert_eq!(
        calls[0].request["metadata"]["sim_scenario"],
        json!("clean_approval")
    );
    assert_eq!(calls[3].request, json!({"new_status": "Declined"}));
    assert_eq!(calls[7].request, Value::Null);
    assert_eq!(calls[11].query.as_deref(), Some("vendor_data=log-b"));

    let stats = sim.stats();
    let count = |effect: &str| stats.api_calls.get(effect).copied().unwrap_or(0);
    assert_eq!(
        (
            count("created"),
            count("returned_existing"),
            count("changed")
        ),
        (2, 1, 5)
    );
    assert_eq!((count("noop"), count("rejected"), count("read")), (2, 2, 2));
}

#[tokio::test]
async fn refused_calls_are_logged_as_rejected() {
    let sim = support::sim_with_limits(
        52,
        1.0,
        RateLimits {
            decision_reads: 1,
            ..RateLimits::default()
        },
    )
    .await;
    let api = Api::new(&sim);
    let body = json!({"workflow_id": sim.kyc_workflow_id(), "vendor_data": "nokey"});
    let unauthenticated = api
        .call(Method::POST, "/v3/session/", Some(body), None)
        .await;
    assert_eq!(unauthenticated.status, 403);
    let wrong_key = api
        .call(
            Method::POST,
            "/v3/blocklist/add/",
            Some(json!({"session_id": "s-1", "blocklist_face": true})),
            Some("wrong"),
        )
        .await;
    assert_eq!(wrong_key.status, 403);
    let unknown_workflow = api
        .post("/v3/session/", json!({"workflow_id": "nope"}))
        .await;
    assert_eq!(unknown_workflow.status, 400);
    let created = api.held_session(sim.kyc_workflow_id()).await;
    let id = created["session_id"].as_str().unwrap();
    let path = format!("/v3/session/{id}/decision/");
    assert_eq!(api.get(&path).await.status, 200);
    assert_eq!(api.get(&path).await.status, 429);

    let calls = sim.calls();
    let seen: Vec<(u16, CallEffect, Option<&str>)> = calls
        .iter()
        .map(|c| (c.status, c.effect, c.session_id.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (403, CallEffect::Rejected, None),
            (403, CallEffect::Rejected, Some("s-1")),
            (400, CallEffect::Rejected, None),
            (201, CallEffect::Created, Some(id)),
            (200, CallEffect::Read, Some(id)),
            (429, CallEffect::Rejected, Some(id)),
        ]
    );
    assert_eq!(calls[0].request["vendor_data"], json!("nokey"));
}

#[tokio::test]
async fn the_log_keeps_the_portraits_size_not_the_portrait() {
    let sim = support::sim(53, 1000.0).await;
    let api = Api::new(&sim);
    let b64 = base64::engine::general_purpose::STANDARD;
    let portrait = b64.encode(vec![0xABu8; 30_000]);
    api.create_session(
        sim.biometric_workflow_id(),
        json!({"vendor_data": "face", "portrait_image": portrait, "metadata": {"sim_auto": false}}),
    )
    .await;
    let calls = sim.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].effect, CallEffect::Created);
    assert_eq!(calls[0].request["portrait_image"], json!({"bytes": 30_000}));
    assert_eq!(calls[0].request["vendor_data"], json!("face"));
    let text = serde_json::to_string(&calls).unwrap();
    assert!(!text.contains(&portrait[..100]));
}

#[tokio::test]
async fn the_call_log_endpoint_needs_the_key_and_is_not_rate_limited() {
    let sim = support::sim_with_limits(
        54,
        1.0,
        RateLimits {
            reads: 1,
            ..RateLimits::default()
        },
    )
    .await;
    let api = Api::new(&sim);
    for key in [None, Some("wrong")] {
        let answer = api.call(Method::GET, "/sim/v1/calls", None, key).await;
        assert_eq!(answer.status, 403);
        assert!(!answer.detail().is_empty());
    }
    assert_eq!(api.get("/v3/sessions/").await.status, 200);
    assert_eq!(api.get("/v3/sessions/").await.status, 429);
    for _ in 0..3 {
        let answer = api
            .call(Method::GET, "/sim/v1/calls", None, Some(API_KEY))
            .await;
        assert_eq!(answer.status, 200);
        let calls: Vec<ApiCall> = serde_json::from_slice(&answer.bytes).unwrap();
        assert_eq!(calls, sim.calls());
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].effect, CallEffect::Rejected);
        assert_eq!(answer.json()[0]["effect"], json!("read"));
    }
    let stats = api.get("/sim/v1/stats").await.json();
    assert_eq!(stats["api_calls"], json!({"read": 1, "rejected": 1}));
}

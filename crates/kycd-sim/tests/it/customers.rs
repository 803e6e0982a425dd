//! Simulated customers: scenarios, ground truth, reproducibility, and the
//! flows that involve Didit's side (review, resubmission, blocklist,
//! re-authentication).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use base64::Engine;
use kycd_sim::{Fate, Label, Scenario};
use serde_json::{json, Value};

use crate::support::{self, Api, Receiver, SETTLE};

#[tokio::test]
async fn a_run_of_200_users_settles_in_seconds_and_the_truth_covers_every_customer() {
    let sim = support::sim(31, 1000.0).await;
    let _receiver = support::v3_receiver(&sim).await;
    let started = Instant::now();
    let run = sim.run(200);
    assert_eq!(run.customers(), 0..200);
    sim.wait_settled(SETTLE).await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(run.remaining(), 0);
    run.finished(Duration::from_millis(1)).await.unwrap();

    let truth = sim.truth();
    let customers: BTreeSet<usize> = truth.iter().filter_map(|t| t.customer).collect();
    assert_eq!(customers, (0..200).collect());
    let vendors: BTreeSet<&str> = truth
        .iter()
        .filter_map(|t| t.vendor_data.as_deref())
        .collect();
    assert!(vendors.contains("user-000000") && vendors.contains("user-000199"));
    let scenarios: BTreeSet<Scenario> = truth.iter().map(|t| t.scenario).collect();
    assert!(scenarios.len() >= 15, "{scenarios:?}");
    assert!(truth.iter().any(|t| t.label == Label::Fraudulent));
    assert!(truth
        .iter()
        .any(|t| t.workflow_type == "biometric_authentication"));
    for t in &truth {
        assert!(
            !matches!(
                t.final_status.as_str(),
                "Not Started" | "In Progress" | "Resubmitted"
            ),
            "{} ({}) ended {}",
            t.session_id,
            t.scenario,
            t.final_status
        );
    }

    // Every delivery got through, and the last status each session
    // delivered is its final one.
    let stats = sim.stats();
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.acknowledged, stats.deliveries);
    assert_eq!(stats.sessions, truth.len());
    assert_eq!(stats.customers, 200);
    let mut last: HashMap<String, String> = HashMap::new();
    for r in sim.deliveries() {
        last.insert(r.session_id.clone(), r.status.clone());
        assert_eq!(r.fate, Fate::Delivered);
    }
    for t in &truth {
        assert_eq!(last[&t.session_id], t.final_status, "{}", t.scenario);
    }

    // The truth endpoint says the same.
    let api = Api::new(&sim);
    let over_http = api.get("/sim/v1/truth").await.json();
    assert_eq!(over_http.as_array().unwrap().len(), truth.len());
    let stats_http = api.get("/sim/v1/stats").await.json();
    assert_eq!(stats_http["deliveries"], json!(stats.deliveries));
}

fn by_scenario(truth: &[kycd_sim::Truth], scenario: Scenario) -> Vec<&kycd_sim::Truth> {
    truth.iter().filter(|t| t.scenario == scenario).collect()
}

#[tokio::test]
async fn decisions_carry_the_fields_and_risks_kycd_reads() {
    let sim = support::sim(32, 1000.0).await;
    sim.run(150);
    sim.wait_settled(SETTLE).await.unwrap();
    let api = Api::new(&sim);
    let truth = sim.truth();

    let clean = by_scenario(&truth, Scenario::CleanApproval);
    let d = api.decision(&clean[0].session_id).await;
    assert_eq!(d["status"], json!("Approved"));
    assert_eq!(d["environment"], json!("sandbox"));
    assert_eq!(
        d["features"],
        json!([
            "IP_ANALYSIS",
            "ID_VERIFICATION",
            "LIVENESS",
            "FACE_MATCH",
            "AML",
            "PHONE",
            "EMAIL"
        ])
    );
    let id = &d["id_verifications"][0];
    assert_eq!(id["node_id"], json!("feature_ocr_1"));
    assert_eq!(id["issuing_state"].as_str().unwrap().len(), 3);
    assert!(id["age"].as_i64().unwrap() >= 18);
    for key in [
        "document_number",
        "date_of_birth",
        "expiration_date",
        "first_name",
        "portrait_image",
    ] {
        assert!(id[key].is_string(), "{key}");
    }
    let ip = &d["ip_analyses"][0];
    assert_eq!(ip["ip_country_code"].as_str().unwrap().len(), 2);
    assert!(ip["device_fingerprint"].is_string());
    assert!(ip["locations_info"]["id_document"]["distance_from_ip"].is_number());
    assert!(d["liveness_checks"][0]["score"].as_f64().unwrap() >= 80.0);
    assert!(d["face_matches"][0]["score"].as_f64().unwrap() >= 70.0);
    assert_eq!(d["aml_screenings"][0]["total_hits"], json!(0));
    assert_eq!(d["phone_verifications"][0]["is_disposable"], json!(false));
    assert_eq!(d["email_verifications"][0]["is_breached"], json!(false));
    let typed = didit::payload::Decision::from_value(d.clone()).unwrap();
    assert_eq!(typed.id_verifications.len(), 1);

    let expect = [
        (
            Scenario::ExpiredDocument,
            "DOCUMENT_EXPIRED",
            "error",
            "Declined",
        ),
        (Scenario::UnderAge, "AGE_BELOW_MINIMUM", "error", "Declined"),
        (
            Scenario::LivenessAttack,
            "LIVENESS_FACE_ATTACK",
            "error",
            "Declined",
        ),
        (
            Scenario::Impostor,
            "LOW_FACE_MATCH_SIMILARITY",
            "error",
            "Declined",
        ),
        (
            Scenario::WeakFaceMatch,
            "LOW_FACE_MATCH_SIMILARITY",
            "warning",
            "In Review",
        ),
        (
            Scenario::VpnCountryMismatch,
            "PRIVATE_NETWORK_DETECTED",
            "warning",
            "In Review",
        ),
        (
            Scenario::BreachedEmail,
            "BREACHED_EMAIL_DETECTED",
            "information",
            "Approved",
        ),
    ];
    let mut checked = 0;
    for (scenario, risk, log_type, status) in expect {
        for t in by_scenario(&truth, scenario) {
            let d = api.decision(&t.session_id).await;
            assert_eq!(d["status"], json!(status), "{scenario}");
            let risks = support::risks(&d);
            assert!(
                risks.contains(&(risk.to_owned(), log_type.to_owned())),
                "{scenario}: {risks:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "{checked}");

    // Ring members after the first see the shared document flagged.
    let ring = by_scenario(&truth, Scenario::DocumentRing);
    let mut flagged = 0;
    for t in &ring {
        let d = api.decision(&t.session_id).await;
        if support::risks(&d)
            .iter()
            .any(|(r, _)| r == "POSSIBLE_DUPLICATED_USER")
        {
            flagged += 1;
        }
    }
    if ring.len() >= 2 {
        assert!(flagged >= 1, "{} ring members, none flagged", ring.len());
    }
}

/// A decision with wall-clock fields and the server's address taken out.
fn comparable(mut value: Value, base_url: &str) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("created_at");
                map.remove("verified_at");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    let text = value.to_string().replace(base_url, "BASE");
    serde_json::from_str(&text).unwrap()
}

async fn snapshot(seed: u64) -> (Vec<Value>, Vec<(String, String, String, String)>) {
    let sim = support::sim(seed, 1000.0).await;
    let _receiver = support::v3_receiver(&sim).await;
    sim.run(60);
    sim.wait_settled(SETTLE).await.unwrap();
    let api = Api::new(&sim);
    let mut decisions = Vec::new();
    for t in sim.truth() {
        let d = api.decision(&t.session_id).await;
        decisions.push(json!({
            "truth": comparable(json!(t), &sim.base_url()),
            "decision": comparable(d, &sim.base_url()),
        }));
    }
    let mut events: Vec<(String, String, String, String)> = sim
        .deliveries()
        .into_iter()
        .map(|r| (r.session_id, r.event_id, r.webhook_type, r.status))
        .collect();
    events.sort();
    (decisions, events)
}

#[tokio::test]
async fn the_same_seed_gives_the_same_scenarios_ids_and_decisions() {
    let (a, a_events) = snapshot(33).await;
    let (b, b_events) = snapshot(33).await;
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y);
    }
    assert_eq!(a_events, b_events);
    let (c, _) = snapshot(34).await;
    assert_ne!(a[0]["truth"]["session_id"], c[0]["truth"]["session_id"]);
}

#[tokio::test]
async fn a_blocklisted_face_declines_a_later_session_that_presents_it() {
    let sim = support::sim(35, 1000.0).await;
    let api = Api::new(&sim);
    let body = json!({"vendor_data": "user-bl", "metadata": {"sim_scenario": "clean_approval"}});
    let first = api
        .create_session(sim.kyc_workflow_id(), body.clone())
        .await;
    sim.wait_settled(SETTLE).await.unwrap();
    let first_id = first["session_id"].as_str().unwrap();
    assert_eq!(api.decision(first_id).await["status"], json!("Approved"));

    let added = api
        .post(
            "/v3/blocklist/add/",
            json!({"session_id": first_id, "blocklist_face": true}),
        )
        .await;
    assert_eq!(added.status, 200);
    assert_eq!(added.json()["blocklisted"]["face"], json!(true));

    let second = api
        .create_session(sim.kyc_workflow_id(), body.clone())
        .await;
    assert_ne!(second["session_id"], first["session_id"]);
    sim.wait_settled(SETTLE).await.unwrap();
    let d = api.decision(second["session_id"].as_str().unwrap()).await;
    assert_eq!(d["status"], json!("Declined"));
    assert!(support::risks(&d).contains(&("FACE_IN_BLOCKLIST".to_owned(), "error".to_owned())));
    assert_eq!(d["liveness_checks"][0]["status"], json!("Declined"));

    // Unblocking the face and blocking the document instead.
    let removed = api
        .post(
            "/v3/blocklist/remove/",
            json!({"session_id": first_id, "unblock_face": true}),
        )
        .await;
    assert_eq!(removed.status, 200);
    api.post(
        "/v3/blocklist/add/",
        json!({"session_id": first_id, "blocklist_document": true}),
    )
    .await;
    let third = api.create_session(sim.kyc_workflow_id(), body).await;
    sim.wait_settled(SETTLE).await.unwrap();
    let d = api.decision(third["session_id"].as_str().unwrap()).await;
    let risks = support::risks(&d);
    assert!(
        !risks.iter().any(|(r, _)| r == "FACE_IN_BLOCKLIST"),
        "{risks:?}"
    );
    assert!(risks.contains(&("ID_DOCUMENT_IN_BLOCKLIST".to_owned(), "error".to_owned())));
    assert_eq!(d["status"], json!("Declined"));

    // Someone else is not affected.
    let other = api
        .scenario_session(sim.kyc_workflow_id(), "user-other", "clean_approval")
        .await;
    sim.wait_settled(SETTLE).await.unwrap();
    assert_eq!(
        api.decision(other["session_id"].as_str().unwrap()).await["status"],
        json!("Approved")
    );
    let nothing = api
        .post("/v3/blocklist/add/", json!({"session_id": first_id}))
        .await;
    assert_eq!(nothing.status, 400);
}

fn statuses(receiver: &Receiver, session_id: &str) -> Vec<String> {
    receiver
        .received()
        .iter()
        .map(|r| r.json())
        .filter(|b| b["session_id"] == json!(session_id))
        .map(|b| b["status"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn didits_reviewer_resubmits_a_blurry_document_and_the_customer_redoes_it() {
    let sim = support::sim(36, 1000.0).await;
    let receiver = support::v3_receiver(&sim).await;
    let api = Api::new(&sim);
    let created = api
        .scenario_session(sim.kyc_workflow_id(), "user-rs", "resubmission")
        .await;
    sim.wait_settled(SETTLE).await.unwrap();
    let id = created["session_id"].as_str().unwrap();
    assert_eq!(
        statuses(&receiver, id),
        [
            "Not Started",
            "In Progress",
            "In Review",
            "Resubmitted",
            "In Progress",
            "Approved"
        ]
    );
    let resubmitted = receiver
        .received()
        .iter()
        .map(|r| r.json())
        .find(|b| b["status"] == json!("Resubmitted"))
        .unwrap();
    assert!(resubmitted.get("decision").is_none());
    assert_eq!(
        resubmitted["resubmit_info"],
        json!({"nodes_to_resubmit": [{"node_id": "feature_ocr_1", "feature": "OCR"}], "reasons": {"feature_ocr_1": "Blurry photo"}})
    );
    let d = api.decision(id).await;
    assert_eq!(d["reviews"][0]["new_status"], json!("Resubmitted"));
    assert!(d["id_verifications"][0]["document_number"].is_string());
}

#[tokio::test]
async fn an_api_resubmission_sends_the_customer_back_through_the_named_step() {
    let sim = support::sim(37, 1000.0).await;
    let receiver = support::v3_receiver(&sim).await;
    let api = Api::new(&sim);
    let created = api
        .scenario_session(sim.kyc_workflow_id(), "user-wf", "weak_face_match")
        .await;
    sim.wait_settled(SETTLE).await.unwrap();
    let id = created["session_id"].as_str().unwrap();
    assert_eq!(api.decision(id).await["status"], json!("In Review"));
    let answer = api
        .patch(
            &format!("/v3/session/{id}/update-status/"),
            json!({"new_status": "Resubmitted", "comment": "Retake the selfie in better light",
                   "nodes_to_resubmit": [{"node_id": "feature_liveness_1", "feature": "LIVENESS"}]}),
        )
        .await;
    assert_eq!(answer.status, 200);
    sim.wait_settled(SETTLE).await.unwrap();
    assert_eq!(
        statuses(&receiver, id),
        [
            "Not Started",
            "In Progress",
            "In Review",
            "Resubmitted",
            "In Progress",
            "Approved"
        ]
    );
    let d = api.decision(id).await;
    assert!(d["face_matches"][0]["score"].as_f64().unwrap() >= 70.0);
}

#[tokio::test]
async fn sessions_sent_to_review_are_decided_by_didits_reviewer() {
    let sim = support::sim(38, 1000.0).await;
    let receiver = support::v3_receiver(&sim).await;
    let api = Api::new(&sim);
    let mut ids = Vec::new();
    for (vendor, scenario) in [
        ("user-ra", "review_approved"),
        ("user-rd", "review_declined"),
    ] {
        let created = api
            .scenario_session(sim.kyc_workflow_id(), vendor, scenario)
            .await;
        ids.push(created["session_id"].as_str().unwrap().to_owned());
    }
    sim.wait_settled(SETTLE).await.unwrap();
    assert_eq!(
        statuses(&receiver, &ids[0]),
        ["Not Started", "In Progress", "In Review", "Approved"]
    );
    assert_eq!(
        statuses(&receiver, &ids[1]),
        ["Not Started", "In Progress", "In Review", "Declined"]
    );
    let d = api.decision(&ids[0]).await;
    assert!(support::risks(&d).contains(&("LOW_LIVENESS_SCORE".to_owned(), "warning".to_owned())));
    assert_eq!(d["reviews"][0]["new_status"], json!("Approved"));
    let truth = sim.truth();
    assert_eq!(truth[0].label, Label::Genuine);
    assert_eq!(truth[1].label, Label::Fraudulent);
}

#[tokio::test]
async fn a_returning_customer_reauthenticates_against_the_approved_portrait() {
    let sim = support::sim(39, 1000.0).await;
    let api = Api::new(&sim);
    let kyc = api
        .scenario_session(sim.kyc_workflow_id(), "user-back", "clean_approval")
        .await;
    sim.wait_settled(SETTLE).await.unwrap();
    let d = api.decision(kyc["session_id"].as_str().unwrap()).await;
    assert_eq!(d["status"], json!("Approved"));
    // Fetch the portrait as an operator would, and pass it along.
    let url = d["id_verifications"][0]["portrait_image"].as_str().unwrap();
    let portrait = reqwest::get(url).await.unwrap();
    assert_eq!(portrait.status(), 200);
    let bytes = portrait.bytes().await.unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let same = api
        .create_session(
            sim.biometric_workflow_id(),
            json!({"vendor_data": "user-back", "portrait_image": b64.encode(&bytes)}),
        )
        .await;
    let stranger = api
        .create_session(
            sim.biometric_workflow_id(),
            json!({"vendor_data": "user-back-2", "portrait_image": b64.encode(&bytes)}),
        )
        .await;
    sim.wait_settled(SETTLE).await.unwrap();
    let ok = api.decision(same["session_id"].as_str().unwrap()).await;
    assert_eq!(ok["status"], json!("Approved"));
    assert_eq!(ok["features"], json!(["LIVENESS", "FACE_MATCH"]));
    assert!(ok["face_matches"][0]["score"].as_f64().unwrap() >= 80.0);
    assert_eq!(ok["id_verifications"], Value::Null);
    let bad = api.decision(stranger["session_id"].as_str().unwrap()).await;
    assert_eq!(bad["status"], json!("Declined"));
    assert!(support::risks(&bad)
        .contains(&("LOW_FACE_MATCH_SIMILARITY".to_owned(), "error".to_owned())));

    // In a run, returning customers come back by themselves.
    sim.run(120);
    sim.wait_settled(SETTLE).await.unwrap();
    let truth = sim.truth();
    let returning: Vec<_> = truth
        .iter()
        .filter(|t| t.workflow_type == "biometric_authentication" && t.customer.is_some())
        .collect();
    assert!(!returning.is_empty());
    for t in returning {
        let expected = match t.label {
            Label::Genuine => "Approved",
            Label::Fraudulent => "Declined",
        };
        assert_eq!(t.final_status, expected, "{}", t.scenario);
    }
}

#[tokio::test]
async fn data_corrections_are_delivered_as_data_updated() {
    let sim = support::sim(40, 1000.0).await;
    let receiver = support::v3_receiver(&sim).await;
    sim.run(150);
    sim.wait_settled(SETTLE).await.unwrap();
    let updates: Vec<Value> = receiver
        .received()
        .iter()
        .map(|r| r.json())
        .filter(|b| b["webhook_type"] == json!("data.updated"))
        .collect();
    assert!(!updates.is_empty(), "no data.updated in 150 customers");
    for u in updates {
        assert_eq!(u["status"], json!("Approved"));
        let place = u["decision"]["id_verifications"][0]["place_of_birth"]
            .as_str()
            .unwrap();
        assert!(place.contains(", "), "{place}");
    }
}

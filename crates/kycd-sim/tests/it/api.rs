//! The REST API: authentication, errors, rate limits, and Didit's rules.

use std::time::Duration;

use kycd_sim::RateLimits;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{self, Api, API_KEY, SECRET, SETTLE};

#[tokio::test]
async fn requests_without_or_with_a_wrong_api_key_get_403_with_a_detail() {
    let sim = support::sim(1, 1000.0).await;
    let api = Api::new(&sim);
    let body = json!({"workflow_id": sim.kyc_workflow_id()});
    for key in [None, Some("wrong-key"), Some("")] {
        for (method, path, body) in [
            (Method::GET, "/v3/sessions/", None),
            (Method::POST, "/v3/session/", Some(body.clone())),
            (Method::GET, "/v3/workflows/", None),
            (Method::GET, "/sim/v1/truth", None),
        ] {
            let answer = api.call(method.clone(), path, body, key).await;
            assert_eq!(answer.status, 403, "{method} {path} with {key:?}");
            assert!(!answer.detail().is_empty());
        }
    }
    let ok = api.get("/v3/sessions/").await;
    assert_eq!(ok.status, 200);
    assert!(ok.header("x-ratelimit-limit").is_some());
}

#[tokio::test]
async fn unknown_paths_and_bad_bodies_answer_with_a_detail() {
    let sim = support::sim(1, 1000.0).await;
    let api = Api::new(&sim);
    let missing_slash = api.get("/v3/sessions").await;
    assert_eq!(missing_slash.status, 404);
    assert_eq!(missing_slash.detail(), "Not found.");
    let no_workflow = api.post("/v3/session/", json!({})).await;
    assert_eq!(no_workflow.status, 400);
    assert!(no_workflow.detail().contains("workflow_id"));
    let garbage = api
        .http
        .post(format!("{}/v3/session/", api.base))
        .header("x-api-key", API_KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    let body: Value = garbage.json().await.unwrap();
    assert!(body["detail"].is_string());
    let unknown_workflow = api
        .post("/v3/session/", json!({"workflow_id": "nope"}))
        .await;
    assert_eq!(unknown_workflow.status, 400);
    let wrong_method = api
        .call(Method::PUT, "/v3/session/", None, Some(API_KEY))
        .await;
    assert_eq!(wrong_method.status, 405);
    assert!(!wrong_method.detail().is_empty());
    let huge = api
        .http
        .post(format!("{}/v3/session/", api.base))
        .header("x-api-key", API_KEY)
        .body(vec![b' '; 5 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    let body: Value = huge.json().await.unwrap();
    assert!(body["detail"].is_string());
}

#[tokio::test]
async fn update_status_follows_didits_rules_and_only_real_changes_are_delivered() {
    let sim = support::sim(2, 1000.0).await;
    let receiver = support::v3_receiver(&sim).await;
    let api = Api::new(&sim);
    let same = "The new status is the same as the current status.";
    // (current, new, expected status, expected detail, delivered)
    let table: &[(&str, &str, u16, Option<&str>, bool)] = &[
        ("Approved", "Approved", 200, None, false),
        ("Approved", "Declined", 200, None, true),
        ("Approved", "Resubmitted", 200, None, true),
        ("Declined", "Declined", 200, None, false),
        ("Declined", "Approved", 200, None, true),
        ("Declined", "Resubmitted", 200, None, true),
        ("In Review", "Approved", 200, None, true),
        ("In Review", "Declined", 200, None, true),
        ("In Review", "Resubmitted", 200, None, true),
        ("Kyc Expired", "Approved", 200, None, true),
        ("Kyc Expired", "Resubmitted", 200, None, true),
        ("Abandoned", "Declined", 200, None, true),
        ("Abandoned", "Resubmitted", 200, None, true),
        ("Resubmitted", "Approved", 200, None, true),
        ("Resubmitted", "Declined", 200, None, true),
        ("Resubmitted", "Resubmitted", 400, Some(same), false),
        ("Not Started", "Approved", 400, None, false),
        ("In Progress", "Approved", 400, None, false),
        ("In Progress", "Resubmitted", 400, None, false),
        ("Expired", "Declined", 400, None, false),
        ("Awaiting User", "Approved", 400, None, false),
        ("Approved", "In Review", 400, None, false),
        ("In Review", "Abandoned", 400, None, false),
        ("In Review", "Not Started", 400, None, false),
    ];
    for (i, (current, new, code, detail, delivered)) in table.iter().enumerate() {
        let created = api
            .create_session(
                sim.kyc_workflow_id(),
                json!({"vendor_data": format!("rules-{i}"), "metadata": {"sim_auto": false}}),
            )
            .await;
        let id = created["session_id"].as_str().unwrap().to_owned();
        sim.set_status(&id, current).unwrap();
        let before = sim.deliveries().len();
        let mut body = json!({"new_status": new, "comment": "table test"});
        if *new == "Resubmitted" {
            body["nodes_to_resubmit"] = json!([{"node_id": "feature_ocr_1", "feature": "OCR"}]);
        }
        let answer = api
            .patch(&format!("/v3/session/{id}/update-status/"), body)
            .await;
        let case = format!("{current} -> {new}");
        assert_eq!(
            answer.status,
            *code,
            "{case}: {}",
            String::from_utf8_lossy(&answer.bytes)
        );
        if *code == 400 {
            assert!(!answer.detail().is_empty(), "{case}");
        }
        if let Some(detail) = detail {
            assert_eq!(answer.detail(), *detail, "{case}");
        }
        // Resubmitted sessions of earlier rows redo their step meanwhile;
        // only this session's deliveries count.
        let new_records: Vec<_> = sim
            .deliveries()
            .into_iter()
            .skip(before)
            .filter(|r| r.session_id == id)
            .collect();
        if *delivered {
            assert_eq!(new_records.len(), 1, "{case}");
            assert_eq!(new_records[0].status, *new, "{case}");
            assert_eq!(new_records[0].webhook_type, "status.updated", "{case}");
            assert_eq!(new_records[0].session_id, id, "{case}");
        } else {
            assert!(new_records.is_empty(), "{case}: {new_records:?}");
        }
        let decision = api.decision(&id).await;
        let expected_now = if *delivered { *new } else { *current };
        assert_eq!(decision["status"], json!(expected_now), "{case}");
    }
    // What the receiver got matches the records: no webhook for the no-ops.
    sim.wait_settled(Duration::from_secs(20)).await.unwrap();
    let received = receiver.received();
    let records = sim.deliveries();
    assert_eq!(received.len(), records.len());
    assert!(received.len() >= table.iter().filter(|c| c.4).count());
}

#[tokio::test]
async fn resubmitted_needs_nodes_of_the_sessions_workflow() {
    let sim = support::sim(3, 1000.0).await;
    let api = Api::new(&sim);
    let created = api.held_session(sim.kyc_workflow_id()).await;
    let id = created["session_id"].as_str().unwrap();
    sim.set_status(id, "In Review").unwrap();
    let path = format!("/v3/session/{id}/update-status/");
    let none = api.patch(&path, json!({"new_status": "Resubmitted"})).await;
    assert_eq!(none.status, 400);
    assert!(none.detail().contains("nodes_to_resubmit"));
    let unknown = api
        .patch(
            &path,
            json!({"new_status": "Resubmitted", "nodes_to_resubmit": [{"node_id": "feature_poa_1", "feature": "POA"}]}),
        )
        .await;
    assert_eq!(unknown.status, 400);
    let missing = api
        .patch(
            "/v3/session/00000000-0000-4000-8000-000000000000/update-status/",
            json!({"new_status": "Approved"}),
        )
        .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn a_scope_over_its_limit_gets_429_with_retry_after() {
    let sim = support::sim_with_limits(
        4,
        1.0,
        RateLimits {
            pdf: 3,
            ..RateLimits::default()
        },
    )
    .await;
    let api = Api::new(&sim);
    let created = api.held_session(sim.kyc_workflow_id()).await;
    let path = format!(
        "/v3/session/{}/generate-pdf/",
        created["session_id"].as_str().unwrap()
    );
    for left in [2, 1, 0] {
        let answer = api.get(&path).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-ratelimit-limit").as_deref(), Some("3"));
        assert_eq!(
            answer.header("x-ratelimit-remaining"),
            Some(left.to_string())
        );
    }
    let refused = api.get(&path).await;
    assert_eq!(refused.status, 429);
    assert!(!refused.detail().is_empty());
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        refused.header("x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    let reset: u64 = refused
        .header("x-ratelimit-reset")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&reset));
    // Other scopes keep their own budget.
    assert_eq!(api.get("/v3/sessions/").await.status, 200);
}

#[tokio::test]
async fn the_rate_limit_window_is_scaled_by_the_time_scale() {
    let sim = support::sim_with_limits(
        4,
        600.0,
        RateLimits {
            reads: 2,
            ..RateLimits::default()
        },
    )
    .await;
    let api = Api::new(&sim);
    // A 60 s window lasts 100 ms: the budget runs out, then comes back.
    let start = std::time::Instant::now();
    let mut refused = false;
    loop {
        let status = api.get("/v3/sessions/").await.status;
        if status == 429 {
            refused = true;
        } else if refused {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the window never reset"
        );
    }
}

#[tokio::test]
async fn a_deleted_session_has_no_decision() {
    let sim = support::sim(5, 1000.0).await;
    let api = Api::new(&sim);
    let created = api.held_session(sim.kyc_workflow_id()).await;
    let id = created["session_id"].as_str().unwrap();
    assert_eq!(created["status"], json!("Not Started"));
    let decision = api.decision(id).await;
    assert_eq!(decision["status"], json!("Not Started"));
    assert_eq!(decision["id_verifications"], Value::Null);
    let deleted = api.delete(&format!("/v3/session/{id}/delete/")).await;
    assert_eq!(deleted.status, 204);
    assert!(deleted.bytes.is_empty());
    let gone = api.get(&format!("/v3/session/{id}/decision/")).await;
    assert_eq!(gone.status, 404);
    assert!(!gone.detail().is_empty());
    assert_eq!(
        api.delete(&format!("/v3/session/{id}/delete/"))
            .await
            .status,
        404
    );
    let listed = api.get("/v3/sessions/").await.json();
    assert_eq!(listed["count"], json!(0));
}

#[tokio::test]
async fn the_pdf_report_is_a_valid_looking_pdf() {
    let sim = support::sim(6, 1000.0).await;
    let api = Api::new(&sim);
    let created = api
        .scenario_session(sim.kyc_workflow_id(), "pdf-user", "clean_approval")
        .await;
    sim.wait_settled(Duration::from_secs(20)).await.unwrap();
    let id = created["session_id"].as_str().unwrap();
    let answer = api.get(&format!("/v3/session/{id}/generate-pdf/")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type").as_deref(),
        Some("application/pdf")
    );
    let pdf = &answer.bytes;
    assert!(pdf.starts_with(b"%PDF-"));
    let text = String::from_utf8_lossy(pdf);
    assert!(text.trim_end().ends_with("%%EOF"));
    assert!(text.contains("\nxref\n"));
    assert!(text.contains("startxref"));
    assert!(text.contains("Status: Approved"));
    assert!(!text.contains("pdf-user"));
    let missing = api
        .get("/v3/session/00000000-0000-4000-8000-000000000000/generate-pdf/")
        .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn sessions_are_listed_newest_first_with_filters_and_pages() {
    let sim = support::sim(7, 1000.0).await;
    let api = Api::new(&sim);
    let mut ids = Vec::new();
    for vendor in ["alice", "bob", "carol"] {
        let created = api
            .create_session(
                sim.kyc_workflow_id(),
                json!({"vendor_data": vendor, "metadata": {"sim_auto": false}}),
            )
            .await;
        ids.push(created["session_id"].as_str().unwrap().to_owned());
    }
    let all = api.get("/v3/sessions/").await.json();
    assert_eq!(all["count"], json!(3));
    let listed: Vec<&str> = all["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]);
    assert_eq!(all["next"], Value::Null);
    assert_eq!(all["previous"], Value::Null);

    let bob = api.get("/v3/sessions/?vendor_data=bob").await.json();
    assert_eq!(bob["count"], json!(1));
    assert_eq!(bob["results"][0]["session_id"], json!(ids[1]));

    let page = api.get("/v3/sessions/?limit=1&offset=1").await.json();
    assert_eq!(page["results"][0]["session_id"], json!(ids[1]));
    let next = page["next"].as_str().unwrap();
    assert!(next.contains("offset=2"), "{next}");
    assert!(page["previous"].as_str().unwrap().contains("offset=0"));
    let next_page = api.get(next.strip_prefix(&api.base).unwrap()).await.json();
    assert_eq!(next_page["results"][0]["session_id"], json!(ids[0]));

    sim.set_status(&ids[0], "Approved").unwrap();
    let approved = api.get("/v3/sessions/?status=Approved").await.json();
    assert_eq!(approved["count"], json!(1));
    let by_workflow = api
        .get(&format!(
            "/v3/sessions/?workflow_id={}",
            sim.biometric_workflow_id()
        ))
        .await
        .json();
    assert_eq!(by_workflow["count"], json!(0));
    let today = time::OffsetDateTime::now_utc().date();
    let from_today = api
        .get(&format!("/v3/sessions/?date_from={today}"))
        .await
        .json();
    assert_eq!(from_today["count"], json!(3));
    let before = api.get("/v3/sessions/?date_to=2020-01-01").await.json();
    assert_eq!(before["count"], json!(0));
    assert_eq!(api.get("/v3/sessions/?limit=x").await.status, 400);
    assert_eq!(
        api.get("/v3/sessions/?date_from=yesterday").await.status,
        400
    );
}

#[tokio::test]
async fn an_unfinished_session_is_handed_back_for_the_same_vendor_and_workflow() {
    let sim = support::sim(8, 1000.0).await;
    let api = Api::new(&sim);
    let body = json!({"vendor_data": "again", "metadata": {"sim_auto": false}});
    let first = api
        .create_session(sim.kyc_workflow_id(), body.clone())
        .await;
    let second = api
        .create_session(sim.kyc_workflow_id(), body.clone())
        .await;
    assert_eq!(first["session_id"], second["session_id"]);
    assert_eq!(first["session_number"], second["session_number"]);
    let id = first["session_id"].as_str().unwrap();
    sim.set_status(id, "Approved").unwrap();
    let third = api.create_session(sim.kyc_workflow_id(), body).await;
    assert_ne!(third["session_id"], first["session_id"]);
    assert_eq!(third["status"], json!("Not Started"));
    for key in [
        "session_id",
        "session_number",
        "session_token",
        "url",
        "workflow_id",
    ] {
        assert!(!third[key].is_null(), "{key}");
    }
}

#[tokio::test]
async fn biometric_sessions_need_a_portrait_of_at_most_1_mb() {
    use base64::Engine;
    let sim = support::sim(9, 1000.0).await;
    let api = Api::new(&sim);
    let workflow = sim.biometric_workflow_id();
    let without = api
        .post(
            "/v3/session/",
            json!({"workflow_id": workflow, "vendor_data": "b"}),
        )
        .await;
    assert_eq!(without.status, 400);
    assert!(without.detail().contains("portrait_image"));
    let b64 = base64::engine::general_purpose::STANDARD;
    let big = b64.encode(vec![0xFFu8; 1024 * 1024 + 100]);
    let too_big = api
        .post(
            "/v3/session/",
            json!({"workflow_id": workflow, "vendor_data": "b", "portrait_image": big}),
        )
        .await;
    assert_eq!(too_big.status, 400);
    assert!(too_big.detail().contains("1 MB"));
    let not_b64 = api
        .post(
            "/v3/session/",
            json!({"workflow_id": workflow, "vendor_data": "b", "portrait_image": "%%%"}),
        )
        .await;
    assert_eq!(not_b64.status, 400);
    let small = b64.encode([0xFF, 0xD8, 0xFF, 0xD9]);
    let ok = api
        .post(
            "/v3/session/",
            json!({"workflow_id": workflow, "vendor_data": "b", "portrait_image": small, "metadata": {"sim_auto": false}}),
        )
        .await;
    assert_eq!(ok.status, 201);
}

#[tokio::test]
async fn workflows_and_destinations_are_created_and_listed() {
    let sim = support::sim(10, 1000.0).await;
    let api = Api::new(&sim);
    let workflows = api.get("/v3/workflows/").await.json();
    let kinds: Vec<&str> = workflows
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["workflow_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["kyc", "biometric_authentication"]);
    let created = api
        .post(
            "/v3/workflows/",
            json!({"workflow_label": "Lite", "workflow_type": "kyc", "is_aml_enabled": false, "is_face_match_enabled": false}),
        )
        .await;
    assert_eq!(created.status, 201);
    let workflow = created.json();
    assert_eq!(
        workflow["features"],
        json!(["IP_ANALYSIS", "ID_VERIFICATION", "LIVENESS"])
    );
    let workflow_id = workflow["workflow_id"].as_str().unwrap();
    let session = api.held_session(workflow_id).await;
    assert_eq!(session["workflow_id"], json!(workflow_id));
    let bad = api
        .post(
            "/v3/workflows/",
            json!({"workflow_label": "x", "workflow_type": "nope"}),
        )
        .await;
    assert_eq!(bad.status, 400);

    let destination = api
        .post(
            "/v3/webhook/destinations/",
            json!({"label": "kycd", "url": "http://127.0.0.1:9/hook", "webhook_version": "v2", "subscribed_events": ["status.updated"]}),
        )
        .await;
    assert_eq!(destination.status, 201);
    let destination = destination.json();
    assert_eq!(destination["secret_shared_key"], json!(SECRET));
    assert_eq!(destination["webhook_version"], json!("v2"));
    let listed = api.get("/v3/webhook/destinations/").await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["secret_shared_key"], json!(SECRET));
    for body in [
        json!({"url": "http://x/hook", "webhook_version": "v9", "subscribed_events": ["status.updated"]}),
        json!({"url": "http://x/hook", "subscribed_events": []}),
        json!({"url": "ftp://x/hook", "subscribed_events": ["status.updated"]}),
        json!({"url": "http://x/hook", "subscribed_events": ["session.verified"]}),
    ] {
        let answer = api.post("/v3/webhook/destinations/", body.clone()).await;
        assert_eq!(answer.status, 400, "{body}");
    }
}

#[tokio::test]
async fn the_didit_client_speaks_to_the_simulator() {
    use didit::client::{
        BlocklistAdd, ClientConfig, CreateSessionRequest, DiditClient, ListSessionsQuery,
        NewStatus, UpdateStatusRequest,
    };
    let sim = support::sim(11, 1000.0).await;
    let client =
        DiditClient::new(ClientConfig::new(API_KEY).with_base_url(sim.base_url())).unwrap();
    let mut request = CreateSessionRequest::new(sim.kyc_workflow_id());
    request.vendor_data = Some("client-user".into());
    request.metadata = Some(json!({"sim_scenario": "weak_face_match"}));
    let created = client.create_session(&request).await.unwrap();
    assert_eq!(created.status, "Not Started");
    sim.wait_settled(Duration::from_secs(20)).await.unwrap();
    let decision = client.get_decision(&created.session_id).await.unwrap();
    assert_eq!(decision["status"], json!("In Review"));
    let typed = didit::payload::Decision::from_value(decision).unwrap();
    assert!(typed.has_risk("LOW_FACE_MATCH_SIMILARITY"));
    let page = client
        .list_sessions(&ListSessionsQuery {
            vendor_data: Some("client-user".into()),
            ..ListSessionsQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.count, 1);
    client
        .update_status(
            &created.session_id,
            &UpdateStatusRequest::new(NewStatus::Approved),
        )
        .await
        .unwrap();
    client
        .blocklist_add(&BlocklistAdd {
            session_id: created.session_id.clone(),
            blocklist_face: true,
            ..BlocklistAdd::default()
        })
        .await
        .unwrap();
    let pdf = client.generate_pdf(&created.session_id).await.unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    let destinations = client.list_webhook_destinations().await.unwrap();
    assert!(destinations.is_empty());
    client.delete_session(&created.session_id).await.unwrap();
    assert!(matches!(
        client.get_decision(&created.session_id).await,
        Err(didit::client::ApiError::NotFound { .. })
    ));
}

#[tokio::test]
async fn an_unknown_sim_scenario_is_refused_and_creates_nothing() {
    let sim = support::sim(2, 1000.0).await;
    let receiver = support::v3_receiver(&sim).await;
    let api = Api::new(&sim);
    for named in [
        json!("clean_aproval"),
        json!(7),
        json!(""),
        json!(["aml_pep"]),
    ] {
        let answer = api
            .post(
                "/v3/session/",
                json!({
                    "workflow_id": sim.kyc_workflow_id(),
                    "vendor_data": "typo",
                    "metadata": {"sim_scenario": named},
                }),
            )
            .await;
        assert_eq!(answer.status, 400, "{named}");
        let detail = answer.detail();
        assert!(detail.contains("metadata.sim_scenario"), "{detail}");
        // The refusal lists what would have been accepted.
        assert!(detail.contains("clean_approval"), "{detail}");
        assert!(detail.contains("aml_monitoring_hit"), "{detail}");
    }
    sim.wait_settled(SETTLE).await.unwrap();
    assert!(sim.truth().is_empty());
    assert!(receiver.received().is_empty());
    let listed = api.get("/v3/sessions/").await.json();
    assert_eq!(listed["count"], json!(0), "{listed}");
    let creations: Vec<_> = sim
        .calls()
        .into_iter()
        .filter(|c| c.path == "/v3/session/")
        .collect();
    assert_eq!(creations.len(), 4);
    assert!(creations
        .iter()
        .all(|c| c.effect == kycd_sim::CallEffect::Rejected && c.status == 400));

    // A known name still works.
    let ok = api
        .scenario_session(sim.kyc_workflow_id(), "typo", "clean_approval")
        .await;
    assert!(ok["session_id"].is_string());
}

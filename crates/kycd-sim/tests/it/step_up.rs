//! Step-up sessions: an operator's new session for a known `vendor_data`
//! on an NFC or phone workflow, run on its own as the same person.

use didit::payload::Decision;
use kycd_sim::{Label, WebhookVersion};
use serde_json::{json, Value};

use crate::support::{self, Api, Receiver, SETTLE};

/// Creates a workflow through the API and returns its id.
async fn workflow(api: &Api, body: Value) -> (String, Value) {
    let answer = api.post("/v3/workflows/", body).await;
    assert_eq!(
        answer.status,
        201,
        "{}",
        String::from_utf8_lossy(&answer.bytes)
    );
    let workflow = answer.json();
    let id = workflow["workflow_id"].as_str().unwrap().to_owned();
    (id, workflow)
}

fn id_of(created: &Value) -> String {
    created["session_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_nfc_step_up_reads_the_chip_of_the_persons_document() {
    let sim = support::sim(61, 1000.0).await;
    let v2 = Receiver::start().await;
    sim.add_destination(&v2.url(), WebhookVersion::V2).unwrap();
    let api = Api::new(&sim);

    // A genuine customer sent to review (a namesake on a list), then
    // stepped up as kycd does: a new session, same vendor_data, no scenario.
    let kyc = api
        .scenario_session(sim.kyc_workflow_id(), "nfc-user", "aml_false_positive")
        .await;
    sim.wait_settled(SETTLE).await.unwrap();
    let first = api.decision(&id_of(&kyc)).await;
    assert_eq!(first["status"], json!("In Review"));
    assert_eq!(first["nfc_verifications"], Value::Null);

    let (nfc_workflow, described) = workflow(
        &api,
        json!({"workflow_label": "NFC step-up", "workflow_type": "kyc", "is_nfc_enabled": true}),
    )
    .await;
    assert_eq!(
        described["features"],
        json!([
            "IP_ANALYSIS",
            "ID_VERIFICATION",
            "NFC",
            "LIVENESS",
            "FACE_MATCH"
        ])
    );
    let step_up = api
        .create_session(
            &nfc_workflow,
            json!({"vendor_data": "nfc-user", "metadata": {"kycd_step_up": "NFC"}}),
        )
        .await;
    sim.wait_settled(SETTLE).await.unwrap();

    let d = api.decision(&id_of(&step_up)).await;
    assert_eq!(d["status"], json!("Approved"));
    assert!(d["features"].as_array().unwrap().contains(&json!("NFC")));
    let nfc = &d["nfc_verifications"];
    assert_eq!(nfc.as_array().unwrap().len(), 1);
    let chip = &nfc[0];
    assert_eq!(chip["node_id"], json!("feature_nfc_1"));
    assert_eq!(chip["status"], json!("Approved"));
    assert_eq!(chip["warnings"], json!([]));
    assert_eq!(chip["chip_read"], json!(true));
    assert_eq!(
        chip["authenticity"],
        json!({"sod_integrity": true, "dg_integrity": true})
    );
    // The same person's document, in the step-up and in the first session.
    let number = &first["id_verifications"][0]["document_number"];
    assert!(number.is_string());
    assert_eq!(&chip["document_number"], number);
    assert_eq!(&chip["chip_data"]["document_number"], number);
    assert_eq!(&d["id_verifications"][0]["document_number"], number);
    let typed = Decision::from_value(d.clone()).unwrap();
    assert_eq!(typed.nfc_verifications.len(), 1);
    let media = reqwest::get(chip["portrait_image"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(media.status(), 200);

    // A v2 destination gets the chip read as the singular `nfc` object.
    let delivered = v2
        .received()
        .iter()
        .map(|r| r.json())
        .find(|b| b["session_id"] == json!(id_of(&step_up)) && b["status"] == json!("Approved"))
        .expect("the step-up's Approved delivery");
    let decision = &delivered["decision"];
    assert!(decision.get("nfc_verifications").is_none());
    assert_eq!(decision["nfc"]["chip_read"], json!(true));
    assert_eq!(decision["nfc"]["status"], json!("Approved"));
    assert_eq!(&decision["nfc"]["document_number"], number);
    assert!(decision["nfc"].get("node_id").is_none());
    let typed = Decision::from_value(decision.clone()).unwrap();
    assert_eq!(typed.nfc_verifications.len(), 1);

    let truth = sim.truth();
    let t = truth
        .iter()
        .find(|t| t.session_id == id_of(&step_up))
        .unwrap();
    assert_eq!(t.label, Label::Genuine);
    assert_eq!(t.final_status, "Approved");
}

#[tokio::test]
async fn a_step_up_can_be_made_to_fail_or_to_wait() {
    let sim = support::sim(62, 1000.0).await;
    let api = Api::new(&sim);
    let (nfc_workflow, _) = workflow(
        &api,
        json!({"workflow_label": "NFC", "workflow_type": "kyc", "is_nfc_enabled": true}),
    )
    .await;
    // Named scenarios still apply.
    let attack = api
        .scenario_session(&nfc_workflow, "nfc-attacker", "liveness_attack")
        .await;
    // A forged document's chip does not match its page; a fraudster
    // stepped up without a scenario behaves as in their earlier session.
    let ring = api
        .scenario_session(sim.kyc_workflow_id(), "nfc-ring", "document_ring")
        .await;
    let printed = api
        .scenario_session(&nfc_workflow, "nfc-printed", "printed_copy")
        .await;
    let idle = api
        .create_session(
            &nfc_workflow,
            json!({"vendor_data": "nfc-idle", "metadata": {"sim_auto": false}}),
        )
        .await;
    sim.wait_settled(SETTLE).await.unwrap();
    let ring_step_up = api
        .create_session(&nfc_workflow, json!({"vendor_data": "nfc-ring"}))
        .await;
    sim.wait_settled(SETTLE).await.unwrap();

    let d = api.decision(&id_of(&attack)).await;
    assert_eq!(d["status"], json!("Declined"));
    assert!(support::risks(&d).contains(&("LIVENESS_FACE_ATTACK".into(), "error".into())));
    assert_eq!(d["nfc_verifications"][0]["status"], json!("Approved"));

    assert_eq!(
        api.decision(&id_of(&ring)).await["status"],
        json!("Approved")
    );
    let d = api.decision(&id_of(&ring_step_up)).await;
    assert_eq!(d["status"], json!("Declined"));
    assert!(support::risks(&d).contains(&("NFC_AND_OCR_DATA_NOT_SAME".into(), "error".into())));
    assert_eq!(
        d["nfc_verifications"][0]["authenticity"]["dg_integrity"],
        json!(false)
    );

    let d = api.decision(&id_of(&printed)).await;
    assert_eq!(d["status"], json!("Declined"));
    assert_eq!(d["nfc_verifications"][0]["chip_read"], json!(false));
    assert!(support::risks(&d).contains(&("SKIPPED_NFC_VALIDATION".into(), "warning".into())));

    let d = api.decision(&id_of(&idle)).await;
    assert_eq!(d["status"], json!("Not Started"));
    assert_eq!(d["nfc_verifications"], Value::Null);
}

#[tokio::test]
async fn phone_step_ups_report_the_phone_check() {
    let sim = support::sim(63, 1000.0).await;
    let api = Api::new(&sim);
    let (kyc_phone, described) = workflow(
        &api,
        json!({"workflow_label": "Phone", "workflow_type": "kyc", "is_phone_verification_enabled": true}),
    )
    .await;
    assert!(described["features"]
        .as_array()
        .unwrap()
        .contains(&json!("PHONE")));
    let (phone_only, _) = workflow(
        &api,
        json!({"workflow_label": "Phone only", "workflow_type": "phone_verification"}),
    )
    .await;
    // The second session is a step-up of a person known to be genuine.
    let mut ids = Vec::new();
    for (workflow_id, metadata) in [
        (&kyc_phone, json!({"sim_scenario": "clean_approval"})),
        (&phone_only, Value::Null),
    ] {
        let created = api
            .create_session(
                workflow_id,
                json!({"vendor_data": "phone-user", "metadata": metadata}),
            )
            .await;
        ids.push(id_of(&created));
        sim.wait_settled(SETTLE).await.unwrap();
    }
    for id in &ids {
        let d = api.decision(id).await;
        let phone = &d["phone_verifications"][0];
        assert_eq!(phone["node_id"], json!("feature_phone_1"));
        assert!(phone["full_number"].is_string());
        assert_eq!(phone["is_disposable"], json!(false), "{d}");
    }
    let phone_only = api.decision(&ids[1]).await;
    assert_eq!(phone_only["features"], json!(["PHONE"]));
    assert_eq!(phone_only["status"], json!("Approved"));

    // NFC reads a document's chip: only KYC workflows take the document.
    let refused = api
        .post(
            "/v3/workflows/",
            json!({"workflow_type": "biometric_authentication", "is_nfc_enabled": true}),
        )
        .await;
    assert_eq!(refused.status, 400);
    assert!(refused.detail().contains("is_nfc_enabled"));
}

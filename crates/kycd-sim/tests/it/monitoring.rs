//! Didit's ongoing AML monitoring: an approved customer turns up on a
//! sanctions list later, and Didit moves the session with a signed
//! `status.updated` that carries the new screening.

use didit::signature::{Secret, Verifier};
use kycd_sim::{Label, Outcome, Scenario, Verdict};
use serde_json::{json, Value};

use crate::support::{self, Api, SECRET, SETTLE};

#[tokio::test]
async fn an_approved_customer_found_on_a_list_later_is_moved_with_a_signed_status_update() {
    let sim = support::sim(51, 1000.0).await;
    let receiver = support::v3_receiver(&sim).await;
    let api = Api::new(&sim);
    let mut ids = Vec::new();
    for i in 0..10 {
        let created = api
            .scenario_session(
                sim.kyc_workflow_id(),
                &format!("user-listed-{i}"),
                "aml_monitoring_hit",
            )
            .await;
        ids.push(created["session_id"].as_str().unwrap().to_owned());
    }
    sim.wait_settled(SETTLE).await.unwrap();

    let verifier = Verifier::new(vec![Secret::new(SECRET)]);
    let received = receiver.received();
    let mut ends = Vec::new();
    for id in &ids {
        let mine: Vec<_> = received
            .iter()
            .filter(|r| r.json()["session_id"] == json!(id))
            .collect();
        let statuses: Vec<String> = mine
            .iter()
            .map(|r| r.json()["status"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(statuses[..3], ["Not Started", "In Progress", "Approved"]);
        assert_eq!(statuses.len(), 4, "{statuses:?}");
        let clean = mine[2].json();
        assert_eq!(
            clean["decision"]["aml_screenings"][0]["total_hits"],
            json!(0)
        );

        // The re-screen is a status.updated, signed like every delivery,
        // whose decision holds the new hit.
        let last = mine[3];
        verifier
            .verify(&last.body, &last.signature_headers(), support::now())
            .unwrap();
        let body = last.json();
        assert_eq!(body["webhook_type"], json!("status.updated"));
        let status = body["status"].as_str().unwrap().to_owned();
        let aml = &body["decision"]["aml_screenings"][0];
        assert_eq!(aml["total_hits"], json!(1), "{aml}");
        assert!(aml["hits"][0]["datasets"]
            .as_array()
            .unwrap()
            .contains(&json!("us_ofac_sdn")));
        let log_type = if status == "Declined" {
            "error"
        } else {
            "warning"
        };
        assert_eq!(aml["status"], json!(status));
        assert!(
            support::risks(&body["decision"])
                .contains(&("POSSIBLE_MATCH_FOUND".to_owned(), log_type.to_owned())),
            "{status}"
        );
        // The rest of the decision is what was approved.
        assert_eq!(
            body["decision"]["id_verifications"],
            clean["decision"]["id_verifications"]
        );

        // The API answers with the updated session from then on.
        let d = api.decision(id).await;
        assert_eq!(d["status"], json!(status));
        assert_eq!(d["aml_screenings"], body["decision"]["aml_screenings"]);
        ends.push(status);
    }
    assert!(ends.iter().any(|s| s == "In Review"), "{ends:?}");
    assert!(ends.iter().any(|s| s == "Declined"), "{ends:?}");

    // The ground truth: fraudulent, and must not stay approved.
    for t in sim.truth() {
        assert_eq!(t.scenario, Scenario::AmlMonitoringHit);
        assert_eq!(t.label, Label::Fraudulent);
        assert_eq!(t.expected.verdict, Verdict::Reject);
        assert!(!t.expected.accepts(Outcome::Approve, &[Outcome::Review]));
        assert!(t.expected.accepts(Outcome::Review, &[]));
        assert_ne!(t.final_status, "Approved");
    }
}

#[tokio::test]
async fn a_session_no_longer_approved_is_not_moved_by_the_monitoring() {
    let sim = support::sim(52, 1000.0).await;
    let receiver = support::v3_receiver(&sim).await;
    let api = Api::new(&sim);
    let created = api
        .scenario_session(sim.kyc_workflow_id(), "user-declined", "aml_monitoring_hit")
        .await;
    let id = created["session_id"].as_str().unwrap().to_owned();
    // As soon as Didit approves, the operator declines; the monitoring's
    // later hit then has nothing to move.
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        if api.decision(&id).await["status"] == json!("Approved") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never approved");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let declined = api
        .patch(
            &format!("/v3/session/{id}/update-status/"),
            json!({"new_status": "Declined"}),
        )
        .await;
    assert_eq!(declined.status, 200);
    sim.wait_settled(SETTLE).await.unwrap();
    let statuses: Vec<Value> = receiver
        .received()
        .iter()
        .map(|r| r.json()["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        [
            json!("Not Started"),
            json!("In Progress"),
            json!("Approved"),
            json!("Declined")
        ]
    );
    assert_eq!(
        api.decision(&id).await["aml_screenings"][0]["total_hits"],
        json!(0)
    );
}

#[tokio::test]
async fn runs_draw_the_monitoring_scenario_and_its_sessions_end_off_approved() {
    let sim = support::sim(53, 1000.0).await;
    let _receiver = support::v3_receiver(&sim).await;
    sim.run(300);
    sim.wait_settled(SETTLE).await.unwrap();
    let hits: Vec<_> = sim
        .truth()
        .into_iter()
        .filter(|t| t.scenario == Scenario::AmlMonitoringHit)
        .collect();
    assert!(!hits.is_empty(), "a run of 300 draws the 1 % scenario");
    for t in hits {
        assert!(
            ["In Review", "Declined"].contains(&t.final_status.as_str()),
            "{}",
            t.final_status
        );
    }
}

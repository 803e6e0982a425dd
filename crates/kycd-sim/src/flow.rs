//! Simulated customers and Didit's own reviewer, over compressed time.
//!
//! A customer opens the link (`In Progress`), goes through the steps, and
//! gets a decision; depending on the scenario Didit's reviewer later
//! approves, declines or asks for a resubmission, a reviewer corrects the
//! data (`data.updated`), or the customer comes back for a biometric
//! re-authentication. Every change goes through the same session functions
//! the API uses, and each is delivered as Didit would deliver it.
//!
//! Each flow draws from its own seeded stream (see [`crate::ids`]); the
//! durations below are simulated seconds.

use std::sync::Arc;
use std::time::Duration;

use didit::payload::SessionStatus;
use rand::Rng;
use serde_json::json;

use crate::clock::secs;
use crate::decision::Feat;
use crate::ids::{rng_for, SimRng};
use crate::media;
use crate::scenario::{DocTrait, EmailTrait, Label, LivenessTrait, NfcTrait, PhoneTrait, Scenario};
use crate::session::{self, Actor, CreateRequest, Presenter, Scope, UpdateRequest};
use crate::sim::Inner;

/// Everything a simulated customer will do, fixed when the run is planned.
pub(crate) struct Plan {
    pub vendor_data: String,
    pub scenario: Scenario,
    /// When the customer arrives, from the start of the run.
    pub arrival: Duration,
    pub kyc_workflow: String,
    pub biometric_workflow: String,
    pub presenter: Presenter,
    /// The returning customer's (or the account thief's) re-authentication.
    pub biometric: Option<Presenter>,
    pub metadata: serde_json::Value,
    pub rng: SimRng,
}

fn between(rng: &mut SimRng, lo: f64, hi: f64) -> Duration {
    secs(rng.gen_range(lo..hi))
}

/// A simulated customer, from arrival to their last session's outcome.
pub(crate) async fn customer(inner: Arc<Inner>, mut plan: Plan) {
    if !inner.sleep(plan.arrival).await {
        return;
    }
    let owner_face = plan.presenter.persona.face;
    let request = CreateRequest {
        workflow_id: plan.kyc_workflow.clone(),
        vendor_data: Some(plan.vendor_data.clone()),
        metadata: Some(plan.metadata.clone()),
        ..CreateRequest::default()
    };
    let created = match session::create(&inner, request, Some(plan.presenter.clone())) {
        Ok(created) => created,
        Err(e) => {
            tracing::warn!(customer = plan.presenter.customer, error = %e.detail, "simulated customer could not create a session");
            return;
        }
    };
    if created.session_id != plan.presenter.reserved.id {
        // An unfinished session for this vendor_data was handed back (one
        // created through the API); its own flow drives it.
        tracing::debug!(
            customer = plan.presenter.customer,
            "simulated customer got an existing session"
        );
        return;
    }
    let status = drive(&inner, &created.session_id, plan.scenario, &mut plan.rng).await;
    let Some(presenter) = plan.biometric.take() else {
        return;
    };
    if status != Some(SessionStatus::Approved) {
        return;
    }
    if !inner.sleep(between(&mut plan.rng, 300.0, 1200.0)).await {
        return;
    }
    // The operator passes the portrait from the approved decision, as it
    // would after fetching the decision's `portrait_image`.
    let request = CreateRequest {
        workflow_id: plan.biometric_workflow.clone(),
        vendor_data: Some(plan.vendor_data.clone()),
        metadata: Some(json!({"reason": "login_step_up"})),
        portrait_image: Some(media::encode(&media::fake_jpeg(owner_face))),
        ..CreateRequest::default()
    };
    match session::create(&inner, request, Some(presenter)) {
        Ok(created) => {
            drive(&inner, &created.session_id, plan.scenario, &mut plan.rng).await;
        }
        Err(e) => {
            tracing::warn!(error = %e.detail, "simulated re-authentication could not create a session")
        }
    }
}

/// A session created through the API (with `sim_auto` not false) runs on
/// its own, as if its user had opened the link.
pub(crate) async fn api_session(inner: Arc<Inner>, session_id: String, scenario: Scenario) {
    let mut rng = rng_for(inner.seed, "api-flow", &session_id);
    drive(&inner, &session_id, scenario, &mut rng).await;
}

/// One session from `Not Started` to its outcome, and what Didit's side
/// does afterwards for the scenario. Returns the status it ended in, or
/// `None` if something else (the API, a deletion) took over.
async fn drive(
    inner: &Arc<Inner>,
    session_id: &str,
    scenario: Scenario,
    rng: &mut SimRng,
) -> Option<SessionStatus> {
    let flow = session::flow_of(inner, session_id)?;
    if scenario == Scenario::ExpiredSession {
        // The link is never opened; Didit expires the session.
        if !inner.sleep(between(rng, 1500.0, 2100.0)).await {
            return None;
        }
        return session::advance(inner, session_id, flow, SessionStatus::Expired)
            .then_some(SessionStatus::Expired);
    }
    if !inner.sleep(between(rng, 8.0, 60.0)).await {
        return None;
    }
    if !session::advance(inner, session_id, flow, SessionStatus::InProgress) {
        return None;
    }
    if !inner.sleep(between(rng, 45.0, 200.0)).await {
        return None;
    }
    if scenario == Scenario::Abandoned {
        return session::complete(inner, session_id, flow, Scope::Partial, rng);
    }
    let status = session::complete(inner, session_id, flow, Scope::Full, rng)?;
    match (scenario, &status) {
        (Scenario::ReviewApproved | Scenario::ReviewDeclined, SessionStatus::InReview) => {
            if !inner.sleep(between(rng, 120.0, 600.0)).await {
                return None;
            }
            let (new_status, comment) = if scenario == Scenario::ReviewApproved {
                ("Approved", "Selfie quality acceptable after manual review")
            } else {
                ("Declined", "Selfie does not show a live person")
            };
            let req = UpdateRequest {
                new_status: new_status.to_owned(),
                comment: Some(comment.to_owned()),
                ..UpdateRequest::default()
            };
            session::update_status(inner, session_id, req, Actor::Reviewer { flow }).ok()?;
            Some(SessionStatus::from(new_status))
        }
        (Scenario::Resubmission, SessionStatus::InReview) => {
            if !inner.sleep(between(rng, 60.0, 300.0)).await {
                return None;
            }
            let mut req = UpdateRequest {
                new_status: "Resubmitted".to_owned(),
                comment: Some("Please retake the document photo".to_owned()),
                nodes: vec![(
                    Feat::Id.node_id().to_owned(),
                    Feat::Id.node_feature().to_owned(),
                )],
                ..UpdateRequest::default()
            };
            req.reasons
                .insert(Feat::Id.node_id().to_owned(), "Blurry photo".to_owned());
            session::update_status(inner, session_id, req, Actor::Reviewer { flow }).ok()?;
            Some(SessionStatus::Resubmitted)
        }
        (Scenario::AmlMonitoringHit, SessionStatus::Approved) => {
            // Didit re-screens approved customers every day; the run
            // compresses "days later" into the next 10 to 30 simulated
            // minutes so that a demo sees the hit arrive.
            if !inner.sleep(between(rng, 600.0, 1800.0)).await {
                return None;
            }
            let decline = rng.gen_bool(0.3);
            session::rescreen(inner, session_id, decline, rng).or(Some(status))
        }
        (Scenario::CleanApproval, SessionStatus::Approved) if rng.gen_bool(0.08) => {
            if inner.sleep(between(rng, 60.0, 240.0)).await {
                session::correct_data(inner, session_id, flow);
            }
            Some(status)
        }
        _ => Some(status),
    }
}

/// After `Resubmitted`: the customer comes back, redoes the named steps
/// (`In Progress`), and the session is decided again. A genuine customer
/// fixes what was wrong in those steps; an attacker does not.
pub(crate) async fn redo(
    inner: Arc<Inner>,
    session_id: String,
    nodes: Vec<Feat>,
    flow: u64,
    mut rng: SimRng,
) {
    if !inner.sleep(between(&mut rng, 60.0, 240.0)).await {
        return;
    }
    if !session::advance(&inner, &session_id, flow, SessionStatus::InProgress) {
        return;
    }
    {
        let mut st = inner.lock();
        if let Some(s) = st.live_session_mut(&session_id) {
            if s.label == Label::Genuine {
                for f in &nodes {
                    match f {
                        Feat::Id => {
                            s.traits.document = DocTrait::Clean;
                            if s.persona.expiration_date < inner.today {
                                s.persona.renew_document(&mut rng, inner.today);
                            }
                        }
                        Feat::Liveness => {
                            s.traits.liveness = LivenessTrait::Clean;
                            s.traits.weak_face = false;
                        }
                        Feat::Nfc => s.traits.nfc = NfcTrait::Genuine,
                        Feat::FaceMatch => s.traits.weak_face = false,
                        Feat::Phone => s.traits.phone = PhoneTrait::Mobile,
                        Feat::Email => s.traits.email = EmailTrait::Clean,
                        _ => {}
                    }
                }
            }
        }
    }
    if !inner.sleep(between(&mut rng, 30.0, 120.0)).await {
        return;
    }
    session::complete(&inner, &session_id, flow, Scope::Redo(&nodes), &mut rng);
}

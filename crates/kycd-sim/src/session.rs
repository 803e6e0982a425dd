//! Session operations shared by the HTTP API and the simulated customers:
//! creating sessions, deciding them, status updates, the blocklist, and
//! emitting webhook events. The API handlers and the customers go through
//! the same functions, so what a customer does is exactly what an API call
//! would have done.

use std::collections::BTreeMap;
use std::sync::Arc;

use didit::payload::SessionStatus;
use rand::Rng;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::api::ApiError;
use crate::decision::{self, Blocked, Ctx, Feat, Sighting};
use crate::delivery::{self, Outgoing};
use crate::ids::{self, rng_for, SimRng};
use crate::media;
use crate::people::{self, Persona};
use crate::scenario::{self, Label, Scenario, Traits};
use crate::sim::Inner;
use crate::state::{iso_micros, Session, State};
use crate::wire;

/// The body of `POST /v3/session/`.
#[derive(Debug, Default, Clone)]
pub(crate) struct CreateRequest {
    pub workflow_id: String,
    pub vendor_data: Option<String>,
    pub callback: Option<String>,
    pub metadata: Option<Value>,
    pub contact_details: Option<Value>,
    pub expected_details: Option<Value>,
    pub portrait_image: Option<String>,
}

fn opt_string(body: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!("{key} must be a string."))),
    }
}

fn opt_object(body: &Map<String, Value>, key: &str) -> Result<Option<Value>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
        Some(_) => Err(ApiError::bad_request(format!("{key} must be an object."))),
    }
}

impl CreateRequest {
    pub(crate) fn from_json(body: &Map<String, Value>) -> Result<Self, ApiError> {
        // Didit's UI language: checked, and irrelevant to a simulated user.
        opt_string(body, "language")?;
        let workflow_id = opt_string(body, "workflow_id")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::bad_request("workflow_id is required."))?;
        // A misspelt scenario would otherwise run as a drawn one, and the
        // test or demo asking for it would measure something else.
        let named = body
            .get("metadata")
            .and_then(|m| m.get("sim_scenario"))
            .filter(|v| !v.is_null());
        if let Some(named) = named {
            if named.as_str().and_then(Scenario::from_name).is_none() {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                return Err(ApiError::bad_request(format!(
                    "metadata.sim_scenario must name one of the simulator's scenarios: {}.",
                    names.join(", ")
                )));
            }
        }
        Ok(Self {
            workflow_id,
            vendor_data: opt_string(body, "vendor_data")?,
            callback: opt_string(body, "callback")?,
            metadata: match body.get("metadata") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.clone()),
            },
            contact_details: opt_object(body, "contact_details")?,
            expected_details: opt_object(body, "expected_details")?,
            portrait_image: opt_string(body, "portrait_image")?,
        })
    }
}

/// Ids set aside for a simulated customer's session when the run was planned.
#[derive(Debug, Clone)]
pub(crate) struct Reserved {
    pub id: String,
    pub number: u64,
    pub token: String,
}

/// Who presents a session a simulated customer creates.
#[derive(Debug, Clone)]
pub(crate) struct Presenter {
    pub persona: Persona,
    pub traits: Traits,
    pub scenario: Scenario,
    pub label: Label,
    pub customer: usize,
    pub reserved: Reserved,
}

pub(crate) struct Created {
    pub body: Value,
    pub session_id: String,
    /// For a new API session that should run on its own: its scenario.
    pub auto: Option<Scenario>,
    /// The vendor's unfinished session was handed back: nothing was created.
    pub existing: bool,
}

/// `POST /v3/session/`, for the API (`presenter: None`) and for simulated
/// customers.
pub(crate) fn create(
    inner: &Arc<Inner>,
    req: CreateRequest,
    presenter: Option<Presenter>,
) -> Result<Created, ApiError> {
    let mut guard = inner.lock();
    let st = &mut *guard;
    let workflow = st
        .workflow(&req.workflow_id)
        .cloned()
        .ok_or_else(|| ApiError::bad_request("Workflow not found."))?;
    if workflow.kind == "kyb" {
        return Err(ApiError::bad_request(
            "KYB workflows are not available in this simulator.",
        ));
    }
    let portrait = match (&req.portrait_image, workflow.needs_portrait()) {
        (None, true) => return Err(ApiError::bad_request(
            "portrait_image is required for biometric authentication workflows with face match.",
        )),
        (Some(text), _) => Some(media::decode_portrait(text).map_err(|e| {
            ApiError::bad_request(match e {
                media::PortraitError::TooLarge => "portrait_image must be at most 1 MB.",
                media::PortraitError::NotBase64 | media::PortraitError::Empty => {
                    "portrait_image must be a base64-encoded JPEG image."
                }
            })
        })?),
        (None, false) => None,
    };

    // Didit hands back a vendor's unfinished session on the same workflow
    // version instead of creating a second one.
    if let Some(vendor_data) = &req.vendor_data {
        let existing = st
            .order
            .iter()
            .rev()
            .filter_map(|id| st.sessions.get(id))
            .find(|s| {
                !s.deleted
                    && s.vendor_data.as_ref() == Some(vendor_data)
                    && s.workflow_id == workflow.id
                    && s.workflow_version == workflow.version
                    && s.status.is_unfinished()
            });
        if let Some(s) = existing {
            return Ok(Created {
                body: creation_body(s, &inner.base_url),
                session_id: s.id.clone(),
                auto: None,
                existing: true,
            });
        }
    }

    let from_customer = presenter.is_some();
    let (id, number, token) = match &presenter {
        Some(p) => (
            p.reserved.id.clone(),
            p.reserved.number,
            p.reserved.token.clone(),
        ),
        None => {
            let number = st.next_number;
            st.next_number += 1;
            // A vendor's nth session on a workflow gets the same id whatever
            // other callers did meanwhile: the id seeds the session's
            // scenario draw and its flow, and callers such as kycd's
            // step-ups create sessions in an order that timing decides.
            let mut own = req.vendor_data.as_ref().map(|v| {
                let n = st
                    .sessions
                    .values()
                    .filter(|s| s.vendor_data.as_ref() == Some(v) && s.workflow_id == workflow.id)
                    .count();
                rng_for(
                    inner.seed,
                    "api-session-id",
                    &format!("{v}/{}/{n}", workflow.id),
                )
            });
            let rng = own.as_mut().unwrap_or(&mut st.api_rng);
            let id = ids::uuid(rng);
            let token = ids::alnum(rng, 12);
            (id, number, token)
        }
    };

    let (persona, traits, scenario, label, customer, auto) = match presenter {
        Some(p) => (
            p.persona,
            p.traits,
            p.scenario,
            p.label,
            Some(p.customer),
            None,
        ),
        None => {
            let (persona, traits, scenario, label) =
                api_presenter(inner, st, &req, &id, &workflow.kind);
            let auto = req
                .metadata
                .as_ref()
                .and_then(|m| m.get("sim_auto"))
                .and_then(Value::as_bool)
                .unwrap_or(true)
                .then_some(scenario);
            (persona, traits, scenario, label, None, auto)
        }
    };
    let reference_face = workflow
        .needs_portrait()
        .then(|| portrait.as_deref().and_then(media::face_of));

    let session = Session {
        id: id.clone(),
        number,
        token,
        workflow_id: workflow.id.clone(),
        workflow_version: workflow.version,
        workflow_kind: workflow.kind.clone(),
        features: workflow.features.clone(),
        face_review_below: workflow.face_review_below,
        face_decline_below: workflow.face_decline_below,
        vendor_data: req.vendor_data.clone(),
        metadata: req.metadata.clone(),
        callback: req.callback.clone(),
        contact_details: req.contact_details.clone(),
        expected_details: req.expected_details.clone(),
        created_at: OffsetDateTime::now_utc(),
        status: SessionStatus::NotStarted,
        deleted: false,
        persona,
        traits,
        reference_face,
        results: BTreeMap::new(),
        reviews: Vec::new(),
        resubmit_info: None,
        resubmissions: 0,
        events: 0,
        flow: 0,
        scenario,
        label,
        customer,
    };
    if !from_customer {
        // Customers' faces and documents were registered when the run was
        // planned, in customer order, so that duplicates are reproducible.
        let sighting = Sighting {
            session_id: id.clone(),
            session_number: number,
            vendor_data: req.vendor_data.clone(),
        };
        st.register(&session.persona, sighting);
    }
    let body = creation_body(&session, &inner.base_url);
    st.sessions.insert(id.clone(), session);
    st.order.push(id.clone());
    emit(inner, st, &id, "status.updated");
    tracing::debug!(session_id = %id, session_number = number, "session created");
    Ok(Created {
        body,
        session_id: id,
        auto,
        existing: false,
    })
}

fn creation_body(s: &Session, base_url: &str) -> Value {
    json!({
        "session_id": s.id,
        "session_number": s.number,
        "session_token": s.token,
        "url": s.url(base_url),
        "status": s.status.as_str(),
        "workflow_id": s.workflow_id,
        "vendor_data": s.vendor_data,
        "metadata": s.metadata,
        "callback": s.callback,
    })
}

/// The person behind an API-created session: the `vendor_data`'s persona
/// (made up the first time it is seen), with the scenario named in
/// `metadata.sim_scenario`, or drawn from the solo scenarios.
fn api_presenter(
    inner: &Inner,
    st: &mut State,
    req: &CreateRequest,
    session_id: &str,
    workflow_kind: &str,
) -> (Persona, Traits, Scenario, Label) {
    let mut rng = rng_for(inner.seed, "api-session", session_id);
    let named = req
        .metadata
        .as_ref()
        .and_then(|m| m.get("sim_scenario"))
        .and_then(Value::as_str)
        .and_then(Scenario::from_name);
    let biometric = workflow_kind == "biometric_authentication";
    let scenario = match named {
        Some(s) => s,
        None if biometric => Scenario::ReturningCustomer,
        None => match follow_up(st, req.vendor_data.as_deref()) {
            Some(s) => s,
            None => scenario::draw(&mut rng, true),
        },
    };
    let key = req
        .vendor_data
        .clone()
        .unwrap_or_else(|| format!("session:{session_id}"));
    let base = st
        .people
        .entry(key.clone())
        .or_insert_with(|| {
            Persona::generate(&mut rng_for(inner.seed, "persona", &key), inner.today)
        })
        .clone();
    let mut persona = base;
    if let Some(contact) = &req.contact_details {
        if let Some(email) = contact.get("email").and_then(Value::as_str) {
            persona.email = email.to_owned();
        }
        if let Some(phone) = contact.get("phone").and_then(Value::as_str) {
            let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
            let prefix: String = persona
                .country()
                .phone_prefix
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            persona.phone_number = digits
                .strip_prefix(prefix.as_str())
                .unwrap_or(&digits)
                .to_owned();
        }
    }
    let mut label = scenario.label();
    if scenario == Scenario::AccountTakeover {
        // The account's thief: the owner's document (if asked for one),
        // someone else's face.
        let attacker = Persona::generate(&mut rng, inner.today);
        persona.face = attacker.face;
        label = Label::Fraudulent;
    } else if !biometric {
        apply_scenario(&mut persona, scenario, &mut rng, inner.today);
    }
    let traits = Traits::for_scenario(scenario, &mut rng);
    (persona, traits, scenario, label)
}

/// The scenario of a later API session for a `vendor_data` already seen
/// without `sim_scenario`, such as the operator's step-up (a new session on
/// an NFC or phone workflow) or a retry: the same person behaves the same
/// way. A person whose sessions were all genuine goes through cleanly; one
/// who attacked before attacks again, as in their latest fraudulent session.
/// `None` for a `vendor_data` never seen.
fn follow_up(st: &State, vendor_data: Option<&str>) -> Option<Scenario> {
    let vendor_data = vendor_data?;
    let earlier: Vec<&Session> = st
        .order
        .iter()
        .filter_map(|id| st.sessions.get(id))
        .filter(|s| s.vendor_data.as_deref() == Some(vendor_data))
        .collect();
    if earlier.is_empty() {
        return None;
    }
    let fraud = earlier
        .iter()
        .rev()
        .find(|s| s.label == Label::Fraudulent)
        .map(|s| s.scenario);
    Some(fraud.unwrap_or(Scenario::CleanApproval))
}

/// The changes a scenario makes to a person's documents and face.
pub(crate) fn apply_scenario(
    persona: &mut Persona,
    scenario: Scenario,
    rng: &mut SimRng,
    today: time::Date,
) {
    match scenario {
        Scenario::ExpiredDocument => persona.expire_document(rng, today),
        Scenario::UnderAge => {
            let years = rng.gen_range(14..18);
            persona.set_age(rng, today, years);
        }
        Scenario::Impostor => persona.document_face = rng.gen(),
        Scenario::DisposableEmail => {
            let local = persona.email.split('@').next().unwrap_or("user").to_owned();
            let domain = people::pick(rng, people::DISPOSABLE_EMAIL_DOMAINS);
            persona.email = format!("{local}@{domain}");
        }
        _ => {}
    }
}

/// Which steps a decision covers.
pub(crate) enum Scope<'a> {
    /// Every step of the workflow.
    Full,
    /// The user left after the document: IP analysis and document only.
    Partial,
    /// A resubmission redid these steps.
    Redo(&'a [Feat]),
}

/// Runs the steps of `scope` and sets the session's status from every
/// result it has. Returns the new status.
pub(crate) fn decide(
    inner: &Inner,
    st: &mut State,
    session_id: &str,
    scope: Scope<'_>,
    rng: &mut SimRng,
) -> Option<SessionStatus> {
    let s = st.live_session(session_id)?;
    let features: Vec<Feat> = match scope {
        Scope::Full => s.features.clone(),
        Scope::Partial => s
            .features
            .iter()
            .copied()
            .filter(|f| matches!(f, Feat::Ip | Feat::Id))
            .collect(),
        Scope::Redo(nodes) => {
            let mut redo: Vec<Feat> = nodes.to_vec();
            // A new document photo or selfie means a new face match.
            if (redo.contains(&Feat::Id) || redo.contains(&Feat::Liveness))
                && s.features.contains(&Feat::FaceMatch)
                && !redo.contains(&Feat::FaceMatch)
            {
                redo.push(Feat::FaceMatch);
            }
            redo.sort();
            redo
        }
    };
    let persona = s.persona.clone();
    let traits = s.traits.clone();
    let blocked = Blocked {
        face: st.blocklist.faces.contains(&persona.face),
        document: st
            .blocklist
            .documents
            .contains(&Session::document_key(&persona)),
        phone: st.blocklist.phones.contains(&persona.full_phone()),
        email: st
            .blocklist
            .emails
            .contains(&persona.email.to_ascii_lowercase()),
    };
    let same_face = State::earlier(st.faces.get(&persona.face), s.number, &s.vendor_data);
    let same_document = State::earlier(
        st.documents.get(&Session::document_key(&persona)),
        s.number,
        &s.vendor_data,
    );
    let now_iso = iso_micros(OffsetDateTime::now_utc());
    let ctx = Ctx {
        today: inner.today,
        now_iso: &now_iso,
        base_url: &inner.base_url,
        session_id,
        persona: &persona,
        traits: &traits,
        face_review_below: s.face_review_below,
        face_decline_below: s.face_decline_below,
        reference_face: s.reference_face,
        blocked,
        same_face: &same_face,
        same_document: &same_document,
    };
    let built: Vec<(Feat, Value)> = features
        .iter()
        .map(|f| (*f, decision::build(*f, &ctx, rng)))
        .collect();
    let partial = matches!(scope, Scope::Partial);
    let s = st.live_session_mut(session_id)?;
    s.results.extend(built);
    let status = if partial {
        SessionStatus::Abandoned
    } else {
        let statuses = s
            .features
            .iter()
            .map(|f| match s.results.get(f) {
                Some(entry) => entry["status"].as_str().unwrap_or("Approved"),
                None => "Not Finished",
            })
            .collect::<Vec<_>>();
        SessionStatus::from(decision::overall_status(statuses))
    };
    s.status = status.clone();
    s.resubmit_info = None;
    Some(status)
}

/// The v3 decision (docs/didit-protocol.md 3) of a session as it stands.
pub(crate) fn decision_json(inner: &Inner, s: &Session) -> Value {
    let mut d = Map::new();
    d.insert("session_id".into(), json!(s.id));
    d.insert("session_number".into(), json!(s.number));
    d.insert("session_url".into(), json!(s.url(&inner.base_url)));
    d.insert("status".into(), json!(s.status.as_str()));
    d.insert("environment".into(), json!(inner.environment));
    d.insert("workflow_id".into(), json!(s.workflow_id));
    d.insert(
        "features".into(),
        json!(s.features.iter().map(|f| f.name()).collect::<Vec<_>>()),
    );
    d.insert("vendor_data".into(), json!(s.vendor_data));
    d.insert("metadata".into(), json!(s.metadata));
    d.insert("expected_details".into(), json!(s.expected_details));
    d.insert("contact_details".into(), json!(s.contact_details));
    d.insert("callback".into(), json!(s.callback));
    d.insert("created_at".into(), json!(s.created_iso()));
    d.insert("reviews".into(), Value::Array(s.reviews.clone()));
    for feat in Feat::ALL {
        let value = s
            .results
            .get(&feat)
            .map(|e| Value::Array(vec![e.clone()]))
            .unwrap_or(Value::Null);
        d.insert(feat.array_key().into(), value);
    }
    d.insert("database_validations".into(), Value::Null);
    Value::Object(d)
}

/// Emits `webhook_type` for the session as it stands now: one delivery per
/// enabled destination subscribed to it, in that destination's version.
pub(crate) fn emit(inner: &Arc<Inner>, st: &mut State, session_id: &str, webhook_type: &str) {
    let Some(s) = st.sessions.get_mut(session_id) else {
        return;
    };
    s.events += 1;
    let event_id = ids::derived_uuid(inner.seed, "event", &format!("{}/{}", s.id, s.events));
    let s = &st.sessions[session_id];
    let mut env = Map::new();
    env.insert("application_id".into(), json!(inner.application_id));
    env.insert("created_at".into(), json!(s.created_at.unix_timestamp()));
    env.insert("environment".into(), json!(inner.environment));
    env.insert("event_id".into(), json!(event_id));
    env.insert("session_id".into(), json!(s.id));
    env.insert("status".into(), json!(s.status.as_str()));
    env.insert("webhook_type".into(), json!(webhook_type));
    env.insert("workflow_id".into(), json!(s.workflow_id));
    env.insert("workflow_version".into(), json!(s.workflow_version));
    if let Some(v) = &s.vendor_data {
        env.insert("vendor_data".into(), json!(v));
    }
    if let Some(m) = &s.metadata {
        env.insert("metadata".into(), m.clone());
    }
    if s.status.is_decided() {
        env.insert("decision".into(), decision_json(inner, s));
    }
    if s.status == SessionStatus::Resubmitted {
        if let Some(info) = &s.resubmit_info {
            env.insert("resubmit_info".into(), info.clone());
        }
    }
    for dest in st.destinations.iter().filter(|d| d.enabled) {
        if !dest.events.iter().any(|e| e == webhook_type) {
            continue;
        }
        let Some(body) = wire::render(&env, dest.version) else {
            continue;
        };
        delivery::dispatch(
            inner,
            Outgoing {
                event_id: event_id.clone(),
                session_id: s.id.clone(),
                webhook_type: webhook_type.to_owned(),
                status: s.status.as_str().to_owned(),
                destination_id: dest.id.clone(),
                url: dest.url.clone(),
                version: dest.version,
                body,
            },
        );
    }
}

/// Moves a session along its own flow (`In Progress`, `Expired`) if
/// nothing else has changed it since the flow looked (`flow`).
pub(crate) fn advance(inner: &Arc<Inner>, session_id: &str, flow: u64, to: SessionStatus) -> bool {
    let mut st = inner.lock();
    let Some(s) = st.live_session_mut(session_id) else {
        return false;
    };
    if s.flow != flow {
        return false;
    }
    s.status = to;
    emit(inner, &mut st, session_id, "status.updated");
    true
}

/// The flow token of a live session.
pub(crate) fn flow_of(inner: &Inner, session_id: &str) -> Option<u64> {
    inner.lock().live_session(session_id).map(|s| s.flow)
}

/// Runs the session's steps (see [`Scope`]) and delivers the outcome, if
/// the flow is still current.
pub(crate) fn complete(
    inner: &Arc<Inner>,
    session_id: &str,
    flow: u64,
    scope: Scope<'_>,
    rng: &mut SimRng,
) -> Option<SessionStatus> {
    let mut st = inner.lock();
    if st.live_session(session_id)?.flow != flow {
        return None;
    }
    let status = decide(inner, &mut st, session_id, scope, rng)?;
    emit(inner, &mut st, session_id, "status.updated");
    Some(status)
}

/// Didit's ongoing AML monitoring: an approved session is screened again
/// and its person is now on a sanctions list. The AML entry is redone, the
/// session moves to In Review (or Declined, for a match above the decline
/// threshold) and `status.updated` carries the new decision, as the API's
/// decision does from then on. Nothing happens to a session that is no
/// longer Approved (the operator declined it meanwhile) or was never
/// screened. Returns the new status.
pub(crate) fn rescreen(
    inner: &Arc<Inner>,
    session_id: &str,
    decline: bool,
    rng: &mut SimRng,
) -> Option<SessionStatus> {
    let mut st = inner.lock();
    let s = st.live_session_mut(session_id)?;
    if s.status != SessionStatus::Approved || !s.features.contains(&Feat::Aml) {
        return None;
    }
    s.traits.aml = if decline {
        scenario::AmlTrait::SanctionDeclined
    } else {
        scenario::AmlTrait::Sanction
    };
    // Not the session's own flow: whatever was going to act on the
    // approved session stops.
    s.flow += 1;
    let status = decide(inner, &mut st, session_id, Scope::Redo(&[Feat::Aml]), rng)?;
    emit(inner, &mut st, session_id, "status.updated");
    Some(status)
}

/// A reviewer's correction of the document data after approval:
/// `data.updated` with the corrected decision.
pub(crate) fn correct_data(inner: &Arc<Inner>, session_id: &str, flow: u64) -> bool {
    let mut st = inner.lock();
    let Some(s) = st.live_session_mut(session_id) else {
        return false;
    };
    if s.flow != flow || s.status != SessionStatus::Approved {
        return false;
    }
    let Some(Value::Object(id)) = s.results.get_mut(&Feat::Id) else {
        return false;
    };
    // The reviewer fills in the place of birth the reader missed.
    let place = format!("{}, {}", s.persona.city().name, s.persona.country().name);
    id.insert("place_of_birth".into(), json!(place));
    s.reviews.push(json!({
        "user": "reviewer@sim.didit.local",
        "new_status": "Approved",
        "comment": "Corrected place of birth",
        "created_at": iso_micros(OffsetDateTime::now_utc()),
    }));
    emit(inner, &mut st, session_id, "data.updated");
    true
}

/// Who changes a status through [`update_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Actor {
    Api,
    /// Didit's own reviewer in the console, acting for the session's flow.
    Reviewer {
        flow: u64,
    },
}

/// What `update-status` would do, by Didit's rules (docs/didit-protocol.md 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transition {
    Change(SessionStatus),
    /// Approved on Approved, Declined on Declined: 200, no webhook.
    NoOp,
}

pub(crate) const SAME_STATUS: &str = "The new status is the same as the current status.";

pub(crate) fn check_transition(
    current: &SessionStatus,
    new_status: &str,
) -> Result<Transition, String> {
    let new = match new_status {
        "Approved" => SessionStatus::Approved,
        "Declined" => SessionStatus::Declined,
        "Resubmitted" => SessionStatus::Resubmitted,
        _ => {
            return Err(
                "new_status must be one of \"Approved\", \"Declined\" or \"Resubmitted\"."
                    .to_owned(),
            )
        }
    };
    let allowed_from = matches!(
        current,
        SessionStatus::Approved
            | SessionStatus::Declined
            | SessionStatus::InReview
            | SessionStatus::KycExpired
            | SessionStatus::Abandoned
            | SessionStatus::Resubmitted
    );
    if !allowed_from {
        return Err(format!(
            "The status of a session in \"{}\" cannot be updated.",
            current.as_str()
        ));
    }
    if *current == new {
        return match new {
            SessionStatus::Resubmitted => Err(SAME_STATUS.to_owned()),
            _ => Ok(Transition::NoOp),
        };
    }
    Ok(Transition::Change(new))
}

/// The body of `PATCH /v3/session/{id}/update-status/`.
#[derive(Debug, Clone, Default)]
pub(crate) struct UpdateRequest {
    pub new_status: String,
    pub comment: Option<String>,
    /// `(node_id, feature)` pairs.
    pub nodes: Vec<(String, String)>,
    /// Why, per node id; the comment when not given.
    pub reasons: BTreeMap<String, String>,
}

impl UpdateRequest {
    pub(crate) fn from_json(body: &Map<String, Value>) -> Result<Self, ApiError> {
        let new_status = opt_string(body, "new_status")?
            .ok_or_else(|| ApiError::bad_request("new_status is required."))?;
        let comment = opt_string(body, "comment")?;
        let mut nodes = Vec::new();
        match body.get("nodes_to_resubmit") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for item in items {
                    let node_id = item.get("node_id").and_then(Value::as_str);
                    let feature = item.get("feature").and_then(Value::as_str);
                    match (node_id, feature) {
                        (Some(n), f) => nodes.push((n.to_owned(), f.unwrap_or("").to_owned())),
                        _ => {
                            return Err(ApiError::bad_request(
                                "Each entry of nodes_to_resubmit needs a node_id and a feature.",
                            ))
                        }
                    }
                }
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    "nodes_to_resubmit must be a list of {node_id, feature}.",
                ))
            }
        }
        Ok(Self {
            new_status,
            comment,
            nodes,
            reasons: BTreeMap::new(),
        })
    }
}

/// The answer to an update-status, and whether it changed anything (the
/// call log tells a no-op from a change).
pub(crate) struct Updated {
    pub answer: Value,
    pub changed: bool,
}

/// `PATCH update-status` for the API and for Didit's simulated reviewer.
/// A real change emits `status.updated`; `Resubmitted` also sends the
/// customer back through the named steps.
pub(crate) fn update_status(
    inner: &Arc<Inner>,
    session_id: &str,
    req: UpdateRequest,
    actor: Actor,
) -> Result<Updated, ApiError> {
    let mut guard = inner.lock();
    let st = &mut *guard;
    let s = st
        .live_session_mut(session_id)
        .ok_or_else(ApiError::session_not_found)?;
    if let Actor::Reviewer { flow } = actor {
        if s.flow != flow {
            return Err(ApiError::conflict("the session changed meanwhile"));
        }
    }
    let transition = check_transition(&s.status, &req.new_status).map_err(ApiError::bad_request)?;
    let answer = json!({"session_id": s.id, "status": req.new_status});
    let new = match transition {
        Transition::NoOp => {
            return Ok(Updated {
                answer,
                changed: false,
            })
        }
        Transition::Change(new) => new,
    };
    let mut redo = Vec::new();
    if new == SessionStatus::Resubmitted {
        if req.nodes.is_empty() {
            return Err(ApiError::bad_request(
                "nodes_to_resubmit is required when new_status is \"Resubmitted\".",
            ));
        }
        for (node_id, _) in &req.nodes {
            match Feat::from_node_id(node_id).filter(|f| s.features.contains(f)) {
                Some(f) => redo.push(f),
                None => {
                    return Err(ApiError::bad_request(format!(
                        "Node \"{node_id}\" is not part of this session's workflow."
                    )))
                }
            }
        }
        let reason = req
            .comment
            .clone()
            .unwrap_or_else(|| "Please repeat this step.".to_owned());
        let reasons: Map<String, Value> = req
            .nodes
            .iter()
            .map(|(n, _)| {
                let text = req
                    .reasons
                    .get(n)
                    .cloned()
                    .unwrap_or_else(|| reason.clone());
                (n.clone(), json!(text))
            })
            .collect();
        let nodes: Vec<Value> = redo
            .iter()
            .map(|f| json!({"node_id": f.node_id(), "feature": f.node_feature()}))
            .collect();
        s.resubmit_info = Some(json!({"nodes_to_resubmit": nodes, "reasons": reasons}));
        s.resubmissions += 1;
    }
    let user = match actor {
        Actor::Api => "api",
        Actor::Reviewer { .. } => "reviewer@sim.didit.local",
    };
    s.reviews.push(json!({
        "user": user,
        "new_status": new.as_str(),
        "comment": req.comment,
        "created_at": iso_micros(OffsetDateTime::now_utc()),
    }));
    s.status = new.clone();
    s.flow += 1;
    let flow = s.flow;
    let resubmissions = s.resubmissions;
    emit(inner, st, session_id, "status.updated");
    drop(guard);
    tracing::debug!(session_id, status = new.as_str(), "status updated");
    if new == SessionStatus::Resubmitted {
        let guard = inner.activity.enter();
        let rng = rng_for(inner.seed, "redo", &format!("{session_id}/{resubmissions}"));
        let task = crate::flow::redo(inner.clone(), session_id.to_owned(), redo, flow, rng);
        inner.spawn(guard, task);
    }
    Ok(Updated {
        answer,
        changed: true,
    })
}

/// `DELETE /v3/session/{id}/delete/`.
pub(crate) fn delete(inner: &Inner, session_id: &str) -> Result<(), ApiError> {
    let mut st = inner.lock();
    let s = st
        .live_session_mut(session_id)
        .ok_or_else(ApiError::session_not_found)?;
    s.deleted = true;
    s.flow += 1;
    Ok(())
}

/// `POST /v3/blocklist/add/` (`add`) and `/remove/`: the four flags name
/// the face, document, phone and email. Returns the answer and whether the
/// blocklist changed (adding what is already there changes nothing).
pub(crate) fn blocklist(
    inner: &Inner,
    session_id: &str,
    flags: [bool; 4],
    add: bool,
) -> Result<(Value, bool), ApiError> {
    let mut guard = inner.lock();
    let st = &mut *guard;
    let s = st
        .live_session(session_id)
        .ok_or_else(ApiError::session_not_found)?;
    if !flags.iter().any(|f| *f) {
        return Err(ApiError::bad_request(
            "Nothing to change: every flag is false.",
        ));
    }
    let [face, document, phone, email] = flags;
    let has = |f: Feat| s.results.contains_key(&f);
    let missing =
        |what: &str| ApiError::bad_request(format!("The session has no {what} to blocklist."));
    if face && !has(Feat::Liveness) && !has(Feat::FaceMatch) {
        return Err(missing("face"));
    }
    if document && !has(Feat::Id) {
        return Err(missing("document"));
    }
    if phone && !has(Feat::Phone) {
        return Err(missing("phone number"));
    }
    if email && !has(Feat::Email) {
        return Err(missing("email address"));
    }
    let p = s.persona.clone();
    let b = &mut st.blocklist;
    /// Adds or removes `v`; whether that changed the set.
    fn set<T: std::hash::Hash + Eq>(
        set: &mut std::collections::HashSet<T>,
        v: T,
        add: bool,
    ) -> bool {
        if add {
            set.insert(v)
        } else {
            set.remove(&v)
        }
    }
    let mut changed = false;
    if face {
        changed |= set(&mut b.faces, p.face, add);
    }
    if document {
        changed |= set(&mut b.documents, Session::document_key(&p), add);
    }
    if phone {
        changed |= set(&mut b.phones, p.full_phone(), add);
    }
    if email {
        changed |= set(&mut b.emails, p.email.to_ascii_lowercase(), add);
    }
    let answer = json!({
        "session_id": session_id,
        "blocklisted": {
            "face": b.faces.contains(&p.face),
            "document": b.documents.contains(&Session::document_key(&p)),
            "phone": b.phones.contains(&p.full_phone()),
            "email": b.emails.contains(&p.email.to_ascii_lowercase()),
        },
    });
    Ok((answer, changed))
}

/// The PDF report of a session.
pub(crate) fn pdf(inner: &Inner, session_id: &str) -> Result<Vec<u8>, ApiError> {
    let st = inner.lock();
    let s = st
        .live_session(session_id)
        .ok_or_else(ApiError::session_not_found)?;
    let mut lines = vec![
        format!("Session: {}", s.id),
        format!("Session number: {}", s.number),
        format!("Workflow: {}", s.workflow_id),
        format!("Status: {}", s.status.as_str()),
        format!("Environment: {}", inner.environment),
        format!("Created at: {}", s.created_iso()),
        String::new(),
    ];
    for f in &s.features {
        let status = s
            .results
            .get(f)
            .and_then(|e| e["status"].as_str())
            .unwrap_or("Not Finished");
        lines.push(format!("{}: {status}", f.name()));
        for w in s
            .results
            .get(f)
            .and_then(|e| e["warnings"].as_array())
            .into_iter()
            .flatten()
        {
            lines.push(format!(
                "    {} ({})",
                w["risk"].as_str().unwrap_or(""),
                w["log_type"].as_str().unwrap_or("")
            ));
        }
    }
    Ok(crate::pdf::report(
        "Didit verification report (simulated)",
        &lines,
    ))
}

/// Picks the persona a ring member presents (see [`Scenario::DocumentRing`]
/// and [`Scenario::MultiAccount`]): shared document, device and IP, and for
/// a multi-account ring the same face and name too.
pub(crate) fn ring_member(
    st: &mut State,
    scenario: Scenario,
    own: Persona,
    rng: &mut SimRng,
    customer: usize,
    arrival: &mut std::time::Duration,
) -> Persona {
    // One open ring per kind: a document ring drawn in between does not
    // cut a multi-account ring short.
    let open = st
        .rings
        .iter()
        .position(|r| r.kind == scenario && r.members < r.size);
    let Some(at) = open else {
        st.rings.retain(|r| r.kind != scenario);
        st.rings.push(crate::state::Ring {
            kind: scenario,
            size: rng.gen_range(3..=4),
            members: 1,
            leader: own.clone(),
            leader_customer: customer,
            next_arrival: *arrival + crate::state::RING_MEMBER_GAP,
        });
        return own;
    };
    let ring = &mut st.rings[at];
    ring.members += 1;
    *arrival = (*arrival).max(ring.next_arrival);
    ring.next_arrival = *arrival + crate::state::RING_MEMBER_GAP;
    let leader = &ring.leader;
    let mut p = match scenario {
        // One person, many accounts: everything but the contact details.
        Scenario::MultiAccount => Persona {
            email: own.email.clone(),
            phone_number: own.phone_number.clone(),
            ..leader.clone()
        },
        // A synthetic-identity ring: each member's own name and face on a
        // forged document that reuses one number.
        _ => Persona {
            country: leader.country,
            city: leader.city,
            document_type: leader.document_type,
            document_number: leader.document_number.clone(),
            date_of_issue: leader.date_of_issue,
            expiration_date: leader.expiration_date,
            ..own
        },
    };
    p.device_fingerprint = leader.device_fingerprint.clone();
    p.device = leader.device;
    p.ip_address = leader.ip_address.clone();
    p.isp = leader.isp;
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_status_follows_didits_rules() {
        use SessionStatus::*;
        let all = [
            NotStarted,
            InProgress,
            Approved,
            Declined,
            InReview,
            AwaitingUser,
            Resubmitted,
            Expired,
            Abandoned,
            KycExpired,
        ];
        for current in &all {
            for new in [
                "Approved",
                "Declined",
                "Resubmitted",
                "In Review",
                "Abandoned",
                "x",
            ] {
                let got = check_transition(current, new);
                let allowed_from = matches!(
                    current,
                    Approved | Declined | InReview | KycExpired | Abandoned | Resubmitted
                );
                let valid_new = matches!(new, "Approved" | "Declined" | "Resubmitted");
                let expected = if !valid_new || !allowed_from {
                    "400"
                } else if current.as_str() == new {
                    if new == "Resubmitted" {
                        "400 same"
                    } else {
                        "noop"
                    }
                } else {
                    "change"
                };
                let seen = match &got {
                    Ok(Transition::NoOp) => "noop",
                    Ok(Transition::Change(_)) => "change",
                    Err(m) if m == SAME_STATUS => "400 same",
                    Err(_) => "400",
                };
                assert_eq!(seen, expected, "{} -> {new}", current.as_str());
            }
        }
    }
}

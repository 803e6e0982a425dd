//! What the simulated Didit application holds: workflows, sessions, webhook
//! destinations, blocklists, and the indexes of faces and documents seen.

use std::collections::{BTreeMap, HashMap, HashSet};

use didit::payload::SessionStatus;
use serde::Serialize;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::decision::{Feat, Sighting};
use crate::ids::SimRng;
use crate::people::Persona;
use crate::scenario::{Expectation, Label, Scenario, Traits};
use crate::wire::WebhookVersion;

pub(crate) const KYC_FEATURES: &[Feat] = &[
    Feat::Ip,
    Feat::Id,
    Feat::Liveness,
    Feat::FaceMatch,
    Feat::Aml,
    Feat::Phone,
    Feat::Email,
];

/// Event types a destination may subscribe to (docs/didit-protocol.md 1.4). The
/// simulator produces `status.updated` and `data.updated`.
pub(crate) const EVENT_TYPES: &[&str] = &[
    "status.updated",
    "data.updated",
    "user.status.updated",
    "user.data.updated",
    "business.status.updated",
    "business.data.updated",
    "activity.created",
    "transaction.created",
    "transaction.status.updated",
];

pub(crate) const WORKFLOW_TYPES: &[&str] = &[
    "kyc",
    "biometric_authentication",
    "adaptive_age_verification",
    "address_verification",
    "phone_verification",
    "email_verification",
    "questionnaire_verification",
    "kyb",
];

#[derive(Debug, Clone)]
pub(crate) struct Workflow {
    pub id: String,
    pub label: String,
    pub kind: String,
    pub version: i64,
    pub features: Vec<Feat>,
    pub face_review_below: f64,
    pub face_decline_below: f64,
    pub created_at: String,
    /// The switches as given, echoed back.
    pub settings: Map<String, Value>,
    pub is_default: bool,
}

impl Workflow {
    pub(crate) fn is_biometric(&self) -> bool {
        self.kind == "biometric_authentication"
    }

    /// Biometric re-authentication with face match compares against the
    /// operator's `portrait_image`, which is then required.
    pub(crate) fn needs_portrait(&self) -> bool {
        self.is_biometric() && self.features.contains(&Feat::FaceMatch)
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut out = self.settings.clone();
        let fields = json!({
            "uuid": self.id,
            "workflow_id": self.id,
            "workflow_label": self.label,
            "workflow_type": self.kind,
            "workflow_version": self.version,
            "features": self.features.iter().map(|f| f.name()).collect::<Vec<_>>(),
            "is_default": self.is_default,
            "created_at": self.created_at,
            "face_match_score_review_threshold": self.face_review_below,
            "face_match_score_decline_threshold": self.face_decline_below,
        });
        if let Value::Object(fields) = fields {
            out.extend(fields);
        }
        Value::Object(out)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Destination {
    pub id: String,
    pub label: String,
    pub url: String,
    pub version: WebhookVersion,
    pub events: Vec<String>,
    pub enabled: bool,
    pub created_at: String,
}

/// A webhook destination as the API and [`crate::Sim::add_destination`]
/// report it. Every destination signs with the configured webhook secret,
/// returned as `secret_shared_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestinationInfo {
    pub uuid: String,
    pub label: String,
    pub url: String,
    pub webhook_version: WebhookVersion,
    pub subscribed_events: Vec<String>,
    pub enabled: bool,
    pub secret_shared_key: String,
    pub created_at: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub id: String,
    pub number: u64,
    pub token: String,
    pub workflow_id: String,
    pub workflow_version: i64,
    pub workflow_kind: String,
    pub features: Vec<Feat>,
    pub face_review_below: f64,
    pub face_decline_below: f64,
    pub vendor_data: Option<String>,
    pub metadata: Option<Value>,
    pub callback: Option<String>,
    pub contact_details: Option<Value>,
    pub expected_details: Option<Value>,
    pub created_at: OffsetDateTime,
    pub status: SessionStatus,
    pub deleted: bool,
    /// Who presents the session, and how each check goes for them.
    pub persona: Persona,
    pub traits: Traits,
    /// Biometric re-authentication: the face on the operator's portrait.
    pub reference_face: Option<Option<u64>>,
    /// Each feature's entry once its step has run.
    pub results: BTreeMap<Feat, Value>,
    pub reviews: Vec<Value>,
    pub resubmit_info: Option<Value>,
    pub resubmissions: u32,
    /// Events emitted so far; numbers the next event's id.
    pub events: u64,
    /// Bumped by every change that does not come from the session's own
    /// flow (API update, Didit's reviewer, deletion), so that a flow acting
    /// on an older picture of the session stops.
    pub flow: u64,
    pub scenario: Scenario,
    pub label: Label,
    pub customer: Option<usize>,
}

impl Session {
    pub(crate) fn created_iso(&self) -> String {
        iso_micros(self.created_at)
    }

    pub(crate) fn url(&self, base_url: &str) -> String {
        format!("{base_url}/session/{}", self.token)
    }

    pub(crate) fn truth(&self) -> Truth {
        Truth {
            session_id: self.id.clone(),
            session_number: self.number,
            vendor_data: self.vendor_data.clone(),
            customer: self.customer,
            workflow_type: self.workflow_kind.clone(),
            scenario: self.scenario,
            label: self.label,
            expected: self.scenario.expectation(self.label),
            final_status: self.status.as_str().to_owned(),
            deleted: self.deleted,
        }
    }

    /// The document's blocklist and index key: the same number in two
    /// countries is two documents.
    pub(crate) fn document_key(persona: &Persona) -> String {
        format!("{}/{}", persona.country().a3, persona.document_number)
    }

    pub(crate) fn summary(&self, base_url: &str) -> Value {
        json!({
            "session_id": self.id,
            "session_number": self.number,
            "session_url": self.url(base_url),
            "status": self.status.as_str(),
            "vendor_data": self.vendor_data,
            "workflow_id": self.workflow_id,
            "workflow_version": self.workflow_version,
            "features": self.features.iter().map(|f| f.name()).collect::<Vec<_>>(),
            "metadata": self.metadata,
            "created_at": self.created_iso(),
        })
    }
}

/// Ground truth about one session, for scoring a policy against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Truth {
    pub session_id: String,
    pub session_number: u64,
    pub vendor_data: Option<String>,
    /// The simulated customer's number within the simulator's runs; `None`
    /// for sessions created through the API.
    pub customer: Option<usize>,
    /// `kyc` or `biometric_authentication` (or another workflow type).
    pub workflow_type: String,
    pub scenario: Scenario,
    pub label: Label,
    /// The outcome a careful operator should reach, and which final
    /// outcomes are right (the crate README's catalogue).
    pub expected: Expectation,
    /// The session's status now (after [`crate::Sim::wait_settled`], its
    /// final one).
    pub final_status: String,
    pub deleted: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Blocklist {
    pub faces: HashSet<u64>,
    pub documents: HashSet<String>,
    pub phones: HashSet<String>,
    pub emails: HashSet<String>,
}

/// A ring being filled: later ring customers take its shared values.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    pub kind: Scenario,
    pub size: usize,
    pub members: usize,
    pub leader: Persona,
    /// The customer number of the ring's first member.
    pub leader_customer: usize,
    /// The earliest the next member arrives (simulated time since the
    /// run's start): [`RING_MEMBER_GAP`] after the newest one.
    pub next_arrival: std::time::Duration,
}

/// How long after one ring member the next one arrives at the earliest,
/// simulated: longer than a member's whole flow with its deliveries at
/// their latest (under 300 simulated seconds of flow, a reordered delivery
/// held up to 900, Didit's retries 300 more), so that members finish one
/// after another. kycd decides each member on the members it has heard of
/// so far; two finishing within a moment of each other would be decided
/// in whatever order real timing picked, and the same seed would not give
/// the same decisions.
pub(crate) const RING_MEMBER_GAP: std::time::Duration = std::time::Duration::from_secs(1800);

pub(crate) struct State {
    pub workflows: Vec<Workflow>,
    pub sessions: HashMap<String, Session>,
    /// Session ids in creation order.
    pub order: Vec<String>,
    pub destinations: Vec<Destination>,
    pub blocklist: Blocklist,
    /// The persona of each `vendor_data` seen, so that a person who comes
    /// back presents the same face and document.
    pub people: HashMap<String, Persona>,
    pub faces: HashMap<u64, Vec<Sighting>>,
    pub documents: HashMap<String, Vec<Sighting>>,
    pub next_number: u64,
    pub next_customer: usize,
    pub runs: u64,
    /// Ids of things created through the API, in call order.
    pub api_rng: SimRng,
    /// The rings being filled, at most one open ring of each kind.
    pub rings: Vec<Ring>,
    /// Test control: decision reads of these sessions still to answer 503.
    pub failing_decisions: HashMap<String, u32>,
}

impl State {
    pub(crate) fn workflow(&self, id: &str) -> Option<&Workflow> {
        self.workflows.iter().find(|w| w.id == id)
    }

    pub(crate) fn live_session(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id).filter(|s| !s.deleted)
    }

    pub(crate) fn live_session_mut(&mut self, id: &str) -> Option<&mut Session> {
        self.sessions.get_mut(id).filter(|s| !s.deleted)
    }

    /// Records that session `sighting` presented `persona`'s face and document.
    pub(crate) fn register(&mut self, persona: &Persona, sighting: Sighting) {
        self.faces
            .entry(persona.face)
            .or_default()
            .push(sighting.clone());
        self.documents
            .entry(Session::document_key(persona))
            .or_default()
            .push(sighting);
    }

    /// Earlier sessions (by number) of other `vendor_data` in `index`.
    pub(crate) fn earlier(
        index: Option<&Vec<Sighting>>,
        number: u64,
        vendor_data: &Option<String>,
    ) -> Vec<Sighting> {
        let mut out: Vec<Sighting> = index
            .into_iter()
            .flatten()
            .filter(|s| s.session_number < number && s.vendor_data != *vendor_data)
            .cloned()
            .collect();
        out.sort_by_key(|s| s.session_number);
        out
    }
}

/// ISO-8601 with microseconds, as Didit writes `created_at`.
pub(crate) fn iso_micros(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_has_microseconds() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_774_969_994_123_456_000).unwrap();
        assert_eq!(iso_micros(t), "2026-03-31T15:13:14.123456Z");
    }
}

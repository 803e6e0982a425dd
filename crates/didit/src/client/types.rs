//! Request and response bodies of the calls in docs/didit-protocol.md section 4.
//!
//! Response structs keep every field they do not name in `extra`, so a field
//! Didit adds later is carried along instead of lost. Request structs have an
//! `extra` too, for switches Didit adds before this crate names them.
//! Request `Debug` impls hide personal data (names, contact details, portraits).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::config::Secret;

/// Prints `Some([redacted])` or `None` for a field that may hold personal data.
fn redacted<T>(value: &Option<T>) -> &'static dyn fmt::Debug {
    if value.is_some() {
        &Some(Redacted)
    } else {
        &None::<Redacted>
    }
}

struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Body of `POST /v3/session/`.
#[derive(Clone, Default, Serialize)]
pub struct CreateSessionRequest {
    /// The workflow to run; required.
    pub workflow_id: String,
    /// The operator's id for the user. With it, Didit hands back the user's
    /// unfinished session instead of creating a second one, which is what
    /// makes retrying this call safe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_data: Option<String>,
    /// Where Didit sends the user when they finish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
    /// Free JSON echoed back in decisions and webhooks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// UI language, e.g. `en`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// `{email, phone, ...}` used for notifications and checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact_details: Option<Value>,
    /// Data the document must match (names, date of birth, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_details: Option<Value>,
    /// Base64 JPEG (at most 1 MB) for biometric re-authentication with face match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portrait_image: Option<String>,
    /// Fields not named above, sent as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CreateSessionRequest {
    /// A request for `workflow_id` with every optional field empty.
    pub fn new(workflow_id: impl Into<String>) -> Self {
        Self {
            workflow_id: workflow_id.into(),
            ..Self::default()
        }
    }
}

impl fmt::Debug for CreateSessionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateSessionRequest")
            .field("workflow_id", &self.workflow_id)
            .field("vendor_data", &self.vendor_data)
            .field("callback", &self.callback)
            .field("metadata", redacted(&self.metadata))
            .field("language", &self.language)
            .field("contact_details", redacted(&self.contact_details))
            .field("expected_details", redacted(&self.expected_details))
            .field("portrait_image", redacted(&self.portrait_image))
            .field("extra_keys", &self.extra.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The 201 answer to `POST /v3/session/`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct CreatedSession {
    /// The session's UUID.
    pub session_id: String,
    /// Didit's sequential number for the session.
    #[serde(default)]
    pub session_number: Option<u64>,
    /// The token the user's browser or SDK uses.
    pub session_token: String,
    /// Where to send the user.
    pub url: String,
    /// `Not Started` for a new session; a reused unfinished one keeps its status.
    pub status: String,
    /// The workflow the session runs.
    #[serde(default)]
    pub workflow_id: Option<String>,
    /// Fields not named above.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A status that `update-status` may set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NewStatus {
    /// Approve the session.
    Approved,
    /// Decline the session.
    Declined,
    /// Send chosen steps back to the user.
    Resubmitted,
}

/// One step to send back with [`NewStatus::Resubmitted`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeToResubmit {
    /// The workflow node, as in a feature entry's `node_id`.
    pub node_id: String,
    /// The feature, e.g. `ID_VERIFICATION`.
    pub feature: String,
}

/// Body of `PATCH /v3/session/{id}/update-status/`.
#[derive(Clone, Serialize)]
pub struct UpdateStatusRequest {
    /// The status to set.
    pub new_status: NewStatus,
    /// Reviewer comment stored with the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The steps to redo; only for [`NewStatus::Resubmitted`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes_to_resubmit: Vec<NodeToResubmit>,
    /// Whether Didit emails the user about the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_email: Option<bool>,
    /// Required by Didit when `send_email` is true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
    /// Fields not named above (e.g. `email_language`), sent as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl UpdateStatusRequest {
    /// A request setting `new_status` with nothing else.
    pub fn new(new_status: NewStatus) -> Self {
        Self {
            new_status,
            comment: None,
            nodes_to_resubmit: Vec::new(),
            send_email: None,
            email_address: None,
            extra: Map::new(),
        }
    }
}

impl fmt::Debug for UpdateStatusRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpdateStatusRequest")
            .field("new_status", &self.new_status)
            .field("comment", redacted(&self.comment))
            .field("nodes_to_resubmit", &self.nodes_to_resubmit)
            .field("send_email", &self.send_email)
            .field("email_address", redacted(&self.email_address))
            .field("extra_keys", &self.extra.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The answer to `update-status`: Didit documents only `session_id`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct StatusUpdated {
    /// The session that was updated.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Fields not named above.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Body of `POST /v3/blocklist/add/`: which of the session's items to block.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BlocklistAdd {
    /// The session whose face, document, phone or email is blocked.
    pub session_id: String,
    /// Block the session's face.
    pub blocklist_face: bool,
    /// Block the session's document.
    pub blocklist_document: bool,
    /// Block the session's phone number.
    pub blocklist_phone: bool,
    /// Block the session's email address.
    pub blocklist_email: bool,
}

/// Body of `POST /v3/blocklist/remove/`: which of the session's items to unblock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BlocklistRemove {
    /// The session whose face, document, phone or email is unblocked.
    pub session_id: String,
    /// Unblock the session's face.
    pub unblock_face: bool,
    /// Unblock the session's document.
    pub unblock_document: bool,
    /// Unblock the session's phone number.
    pub unblock_phone: bool,
    /// Unblock the session's email address.
    pub unblock_email: bool,
}

/// The answer to a blocklist call; its shape is not documented, so all of it is kept.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct BlocklistResult {
    /// Everything Didit answered.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Query of `GET /v3/sessions/`; every filter is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListSessionsQuery {
    /// Page size.
    pub limit: Option<u32>,
    /// Rows to skip.
    pub offset: Option<u32>,
    /// Only the sessions of this operator user id.
    pub vendor_data: Option<String>,
    /// Only sessions in this status, spelled as in docs/didit-protocol.md section 2 (`In Review`).
    pub status: Option<String>,
    /// Only sessions of this workflow.
    pub workflow_id: Option<String>,
    /// Only sessions created on or after this date (as Didit accepts it, e.g. `2026-03-01`).
    pub date_from: Option<String>,
    /// Only sessions created on or before this date.
    pub date_to: Option<String>,
}

impl ListSessionsQuery {
    /// The query pairs in a fixed order, skipping unset filters.
    pub(crate) fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(limit) = self.limit {
            pairs.push(("limit", limit.to_string()));
        }
        if let Some(offset) = self.offset {
            pairs.push(("offset", offset.to_string()));
        }
        let texts = [
            ("vendor_data", &self.vendor_data),
            ("status", &self.status),
            ("workflow_id", &self.workflow_id),
            ("date_from", &self.date_from),
            ("date_to", &self.date_to),
        ];
        for (name, value) in texts {
            if let Some(value) = value {
                pairs.push((name, value.clone()));
            }
        }
        pairs
    }
}

/// One page of `GET /v3/sessions/`, newest first.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct SessionPage {
    /// Sessions matching the filters, over all pages.
    pub count: u64,
    /// URL of the next page.
    #[serde(default)]
    pub next: Option<String>,
    /// URL of the previous page.
    #[serde(default)]
    pub previous: Option<String>,
    /// The sessions on this page, as Didit sent them.
    pub results: Vec<Value>,
    /// Fields not named above.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The kind of workflow `POST /v3/workflows/` creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowType {
    /// Identity verification.
    Kyc,
    /// Re-authentication of a returning user.
    BiometricAuthentication,
    /// Age estimation with a document fallback.
    AdaptiveAgeVerification,
    /// Proof of address.
    AddressVerification,
    /// Phone number verification.
    PhoneVerification,
    /// Email verification.
    EmailVerification,
    /// Questionnaire.
    QuestionnaireVerification,
    /// Business verification.
    Kyb,
}

/// Body of `POST /v3/workflows/`.
#[derive(Clone, Debug, Serialize)]
pub struct CreateWorkflowRequest {
    /// The name shown in the console.
    pub workflow_label: String,
    /// The kind of workflow.
    pub workflow_type: WorkflowType,
    /// Run a liveness check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_liveness_enabled: Option<bool>,
    /// Match the selfie against the document portrait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_face_match_enabled: Option<bool>,
    /// Face-match score below which Didit declines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub face_match_score_decline_threshold: Option<f64>,
    /// Run AML screening.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_aml_enabled: Option<bool>,
    /// Read the document's NFC chip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_nfc_enabled: Option<bool>,
    /// Verify a phone number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_phone_verification_enabled: Option<bool>,
    /// How many times a user may retry a step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retry_attempts: Option<u32>,
    /// Switches not named above, sent as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CreateWorkflowRequest {
    /// A workflow with Didit's defaults for every switch.
    pub fn new(workflow_label: impl Into<String>, workflow_type: WorkflowType) -> Self {
        Self {
            workflow_label: workflow_label.into(),
            workflow_type,
            is_liveness_enabled: None,
            is_face_match_enabled: None,
            face_match_score_decline_threshold: None,
            is_aml_enabled: None,
            is_nfc_enabled: None,
            is_phone_verification_enabled: None,
            max_retry_attempts: None,
            extra: Map::new(),
        }
    }
}

/// The answer to `POST /v3/workflows/`. Its id field is not documented
/// consistently (`workflow_id`, `uuid`), so both are read; see [`Workflow::id`].
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Workflow {
    /// The workflow id, when Didit calls it `workflow_id`.
    #[serde(default)]
    pub workflow_id: Option<String>,
    /// The workflow id, when Didit calls it `uuid`.
    #[serde(default)]
    pub uuid: Option<String>,
    /// The name shown in the console.
    #[serde(default)]
    pub workflow_label: Option<String>,
    /// The kind, as text so that a new kind does not fail decoding.
    #[serde(default)]
    pub workflow_type: Option<String>,
    /// Fields not named above.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Workflow {
    /// The id to pass as `workflow_id` when creating sessions.
    pub fn id(&self) -> Option<&str> {
        self.workflow_id.as_deref().or(self.uuid.as_deref())
    }
}

/// Body of `POST /v3/webhook/destinations/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CreateWebhookDestination {
    /// The name shown in the console.
    pub label: String,
    /// Where Didit POSTs deliveries.
    pub url: String,
    /// Payload version, `v1`, `v2` or `v3` (the current one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_version: Option<String>,
    /// Event types to deliver; Didit has no wildcard and rejects an empty list.
    pub subscribed_events: Vec<String>,
    /// Whether Didit delivers to it (Didit's default is true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// A webhook destination as Didit returns it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WebhookDestination {
    /// The destination's id.
    #[serde(default)]
    pub uuid: Option<String>,
    /// The name shown in the console.
    #[serde(default)]
    pub label: Option<String>,
    /// Where Didit POSTs deliveries.
    #[serde(default)]
    pub url: Option<String>,
    /// Whether Didit delivers to it.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Payload version.
    #[serde(default)]
    pub webhook_version: Option<String>,
    /// Event types delivered.
    #[serde(default)]
    pub subscribed_events: Vec<String>,
    /// The HMAC key for this destination's deliveries. Present on creation
    /// and single reads; Didit leaves it out of lists.
    #[serde(default)]
    pub secret_shared_key: Option<Secret>,
    /// Fields not named above.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `GET /v3/webhook/destinations/` is documented as a bare array; a paginated
/// `{results}` object is accepted too so that either form decodes.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum DestinationList {
    Bare(Vec<WebhookDestination>),
    Paged { results: Vec<WebhookDestination> },
}

impl DestinationList {
    pub(crate) fn into_vec(self) -> Vec<WebhookDestination> {
        match self {
            Self::Bare(list) | Self::Paged { results: list } => list,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_debug_hides_personal_data() {
        let mut request = CreateSessionRequest::new("wf");
        request.expected_details = Some(serde_json::json!({"first_name": "Alice"}));
        request.portrait_image = Some("aGVsbG8=".into());
        let debug = format!("{request:?}");
        assert!(!debug.contains("Alice"), "{debug}");
        assert!(!debug.contains("aGVsbG8="), "{debug}");
        assert!(debug.contains("Some([redacted])"), "{debug}");
    }

    #[test]
    fn destination_secret_is_redacted_in_debug() {
        let destination: WebhookDestination = serde_json::from_value(serde_json::json!({
            "uuid": "d", "secret_shared_key": "tno2NTeRC1ZK3sBOYlBJDyEzBVENl3pQ1AcZyAW0xnQ"
        }))
        .unwrap();
        assert!(!format!("{destination:?}").contains("tno2"));
        assert_eq!(
            destination.secret_shared_key.as_ref().map(Secret::expose),
            Some("tno2NTeRC1ZK3sBOYlBJDyEzBVENl3pQ1AcZyAW0xnQ")
        );
    }
}

//! Typed webhook envelopes and decisions (docs/didit-protocol.md 1.5, 2 and 3).
//!
//! [`Envelope`] is one delivery; its [`Decision`] is always in the v3 shape,
//! whichever of the three wire shapes it arrived in (see [`decision`] for
//! how v1 and v2 are detected and normalised, and [`PayloadVersion`] for
//! what is recorded).
//!
//! # Reading is lenient, and loses nothing
//!
//! Didit's payloads have changed shape more than once and carry fields it
//! does not document, so the model is built to accept any real delivery:
//!
//! - only `timestamp` and `webhook_type` are required of an envelope, and
//!   only the body being a JSON object beyond that; everything else is
//!   optional;
//! - every struct keeps the keys it does not know in a flattened `extra`
//!   map, so nothing the provider adds later is lost;
//! - a known key whose value has no typed meaning (null, an empty array, a
//!   type Didit never sent there) is not an error: the typed field stays
//!   empty and the value is kept verbatim in `extra`. That is also why a v3
//!   body serialises back to the same JSON, key for key;
//! - numbers sent as strings are read as numbers; statuses and event types
//!   this version does not know are kept as `Other(text)`.
//!
//! Serialising writes `extra` first and the typed fields over it, so a
//! typed field that a caller changed wins over what was received.
//!
//! # Personal data
//!
//! Payloads carry names, document numbers, addresses and images.
//! [`PayloadError`] messages name fields and positions only, never a value,
//! so they are safe to log; the model's `Debug` output is not.

pub mod decision;
mod feature;
mod json;
mod kinds;

use serde_json::{Map, Value};

pub use decision::Decision;
pub use feature::{
    risk, AmlHit, AmlScreening, Carrier, DatabaseValidation, EmailVerification, FaceMatch,
    FeatureEntry, IdVerification, IpAnalysis, LivenessCheck, LivenessMatch, MatchSet,
    NfcVerification, NodeToResubmit, PhoneVerification, PoaVerification, QuestionnaireResponse,
    ResubmitInfo, Review, Warning,
};
pub use kinds::{
    Environment, Feature, FeatureStatus, LivenessMethod, LogType, PayloadVersion, SessionStatus,
    WebhookType,
};

use json::{put, take};

/// Why a payload could not be read. Messages name fields and positions,
/// never values: payloads carry personal data and these errors are logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not valid json: {kind} at line {line}, column {column}")]
    Json {
        kind: &'static str,
        line: usize,
        column: usize,
    },
    #[error("{field} is not a json object")]
    NotAnObject { field: &'static str },
    #[error("payload has no `{field}` field")]
    MissingField { field: &'static str },
    #[error("payload field `{field}` is not {expected}")]
    InvalidField {
        field: &'static str,
        expected: &'static str,
    },
}

impl PayloadError {
    /// Keeps only the category and position of a serde_json error: its
    /// message can quote the input (`invalid type: string "..."`).
    pub(crate) fn from_json(err: serde_json::Error) -> Self {
        use serde_json::error::Category;
        let kind = match err.classify() {
            Category::Io => "read error",
            Category::Syntax => "syntax error",
            Category::Data => "invalid data",
            Category::Eof => "unexpected end of input",
        };
        Self::Json {
            kind,
            line: err.line(),
            column: err.column(),
        }
    }
}

/// One webhook delivery (docs/didit-protocol.md 1.5).
///
/// Which fields are present depends on the event: session events carry
/// `session_id` and `status`, and a `decision` when the status is decided;
/// a `Resubmitted` status carries `resubmit_info` instead; KYB sessions add
/// `session_kind`, `business_session_id` and `vendor_business_id`; entity
/// events (`user.*`, `business.*`) carry `data` and no session.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The event type. v1 deliveries predate this field; for them it is
    /// [`WebhookType::StatusUpdated`] and `webhook_type_inferred` is set.
    pub webhook_type: WebhookType,
    /// Set when the delivery had no `webhook_type` and it was inferred (see
    /// [`Envelope::from_value`]); such a field is not written back when
    /// serialising, so the body round-trips as received.
    pub webhook_type_inferred: bool,
    /// Unix seconds; equals the `X-Timestamp` header.
    pub timestamp: i64,
    pub application_id: Option<String>,
    /// Unix seconds at which the delivery was created.
    pub created_at: Option<i64>,
    pub decision: Option<Decision>,
    pub environment: Option<Environment>,
    /// Identifies a delivery; whether retries keep it is not documented,
    /// so deduplicate on content too.
    pub event_id: Option<String>,
    /// The operator's metadata, as set on the session.
    pub metadata: Option<Value>,
    pub session_id: Option<String>,
    pub status: Option<SessionStatus>,
    /// The operator's own user id, as set on the session.
    pub vendor_data: Option<String>,
    pub workflow_id: Option<String>,
    pub workflow_version: Option<i64>,
    /// With `status: Resubmitted`: which steps the user must redo and why.
    pub resubmit_info: Option<ResubmitInfo>,
    /// `business` for KYB sessions.
    pub session_kind: Option<String>,
    pub business_session_id: Option<String>,
    pub vendor_business_id: Option<String>,
    /// The content of an entity, activity or transaction event.
    pub data: Option<Value>,
    /// Every other key exactly as received, including known keys whose
    /// value had no typed meaning.
    pub extra: Map<String, Value>,
}

impl Envelope {
    /// An envelope with only the two required fields, for building
    /// deliveries (e.g. in the simulator).
    pub fn new(webhook_type: WebhookType, timestamp: i64) -> Self {
        Self {
            webhook_type,
            webhook_type_inferred: false,
            timestamp,
            application_id: None,
            created_at: None,
            decision: None,
            environment: None,
            event_id: None,
            metadata: None,
            session_id: None,
            status: None,
            vendor_data: None,
            workflow_id: None,
            workflow_version: None,
            resubmit_info: None,
            session_kind: None,
            business_session_id: None,
            vendor_business_id: None,
            data: None,
            extra: Map::new(),
        }
    }

    /// Reads a delivery body. See [`Envelope::from_value`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self, PayloadError> {
        let value: Value = serde_json::from_slice(bytes).map_err(PayloadError::from_json)?;
        Self::from_value(value)
    }

    /// Reads a delivery. The body must be an object with an integer
    /// `timestamp` and a string `webhook_type`; everything else is optional
    /// and read leniently (see the module documentation).
    ///
    /// One exception: v1 deliveries (early 2025) had no `webhook_type` and
    /// were all session status updates, so a body without one that has both
    /// `session_id` and `status` is read as `status.updated`, with
    /// [`Envelope::webhook_type_inferred`] set.
    pub fn from_value(value: Value) -> Result<Self, PayloadError> {
        match value {
            Value::Object(map) => Self::from_map(map),
            _ => Err(PayloadError::NotAnObject { field: "payload" }),
        }
    }

    /// Reads a delivery from its JSON object. See [`Envelope::from_value`].
    pub fn from_map(mut map: Map<String, Value>) -> Result<Self, PayloadError> {
        // Whether a required key was present decides between "missing" and
        // "invalid"; `take` puts a value it cannot type back in the map.
        let had_timestamp = map.contains_key("timestamp");
        let had_webhook_type = map.contains_key("webhook_type");
        let timestamp: Option<i64> = take(&mut map, "timestamp");
        let webhook_type: Option<WebhookType> = take(&mut map, "webhook_type");
        let mut envelope = Self {
            webhook_type: WebhookType::StatusUpdated,
            webhook_type_inferred: false,
            timestamp: 0,
            application_id: take(&mut map, "application_id"),
            created_at: take(&mut map, "created_at"),
            decision: take(&mut map, "decision"),
            environment: take(&mut map, "environment"),
            event_id: take(&mut map, "event_id"),
            metadata: take(&mut map, "metadata"),
            session_id: take(&mut map, "session_id"),
            status: take(&mut map, "status"),
            vendor_data: take(&mut map, "vendor_data"),
            workflow_id: take(&mut map, "workflow_id"),
            workflow_version: take(&mut map, "workflow_version"),
            resubmit_info: take(&mut map, "resubmit_info"),
            session_kind: take(&mut map, "session_kind"),
            business_session_id: take(&mut map, "business_session_id"),
            vendor_business_id: take(&mut map, "vendor_business_id"),
            data: take(&mut map, "data"),
            extra: Map::new(),
        };
        envelope.timestamp = match timestamp {
            Some(timestamp) => timestamp,
            None if had_timestamp => {
                return Err(PayloadError::InvalidField {
                    field: "timestamp",
                    expected: "an integer",
                })
            }
            None => return Err(PayloadError::MissingField { field: "timestamp" }),
        };
        match webhook_type {
            Some(webhook_type) => envelope.webhook_type = webhook_type,
            None if had_webhook_type => {
                return Err(PayloadError::InvalidField {
                    field: "webhook_type",
                    expected: "a string",
                })
            }
            None if envelope.session_id.is_some() && envelope.status.is_some() => {
                envelope.webhook_type_inferred = true;
            }
            None => {
                return Err(PayloadError::MissingField {
                    field: "webhook_type",
                })
            }
        }
        envelope.extra = map;
        Ok(envelope)
    }

    /// The JSON object form: `extra`, overlaid with the typed fields.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = self.extra.clone();
        if !self.webhook_type_inferred {
            put(&mut map, "webhook_type", &Some(self.webhook_type.clone()));
        }
        put(&mut map, "timestamp", &Some(self.timestamp));
        put(&mut map, "application_id", &self.application_id);
        put(&mut map, "created_at", &self.created_at);
        put(&mut map, "decision", &self.decision);
        put(&mut map, "environment", &self.environment);
        put(&mut map, "event_id", &self.event_id);
        put(&mut map, "metadata", &self.metadata);
        put(&mut map, "session_id", &self.session_id);
        put(&mut map, "status", &self.status);
        put(&mut map, "vendor_data", &self.vendor_data);
        put(&mut map, "workflow_id", &self.workflow_id);
        put(&mut map, "workflow_version", &self.workflow_version);
        put(&mut map, "resubmit_info", &self.resubmit_info);
        put(&mut map, "session_kind", &self.session_kind);
        put(&mut map, "business_session_id", &self.business_session_id);
        put(&mut map, "vendor_business_id", &self.vendor_business_id);
        put(&mut map, "data", &self.data);
        map
    }

    /// A KYC or KYB session event (`status.updated`, `data.updated`).
    pub fn is_session_event(&self) -> bool {
        self.webhook_type.is_session_event()
    }

    /// A KYB session delivery.
    pub fn is_business(&self) -> bool {
        self.session_kind.as_deref() == Some("business")
    }

    /// A sandbox delivery: every provider check was mocked.
    pub fn is_sandbox(&self) -> bool {
        self.environment == Some(Environment::Sandbox)
    }

    /// The wire shape of the decision, if there is one.
    pub fn decision_version(&self) -> Option<PayloadVersion> {
        self.decision.as_ref().map(|decision| decision.version)
    }
}

impl serde::Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.to_map(), serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = <Value as serde::Deserialize>::deserialize(deserializer)?;
        Self::from_value(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_missing_timestamp_is_named_in_the_error() {
        let err = Envelope::from_value(json!({"webhook_type": "status.updated"}));
        assert_eq!(err, Err(PayloadError::MissingField { field: "timestamp" }));
    }

    #[test]
    fn a_mistyped_timestamp_is_invalid_not_missing() {
        let err =
            Envelope::from_value(json!({"webhook_type": "status.updated", "timestamp": "soon"}));
        assert_eq!(
            err,
            Err(PayloadError::InvalidField {
                field: "timestamp",
                expected: "an integer"
            })
        );
    }

    #[test]
    fn a_v1_session_delivery_without_webhook_type_is_a_status_update() {
        let body = json!({"timestamp": 1, "session_id": "s", "status": "Approved"});
        let envelope = match Envelope::from_value(body.clone()) {
            Ok(envelope) => envelope,
            Err(err) => panic!("{err}"),
        };
        assert_eq!(envelope.webhook_type, WebhookType::StatusUpdated);
        assert!(envelope.webhook_type_inferred);
        assert_eq!(Value::Object(envelope.to_map()), body);
    }

    #[test]
    fn json_errors_keep_only_the_position() {
        let err = match Envelope::from_slice(br#"{"first_name": "Jos\x"}"#) {
            Ok(_) => panic!("invalid json was accepted"),
            Err(err) => err,
        };
        assert!(matches!(err, PayloadError::Json { .. }));
        let message = err.to_string();
        assert!(!message.contains("Jos"), "{message}");
        assert!(
            message.starts_with("payload is not valid json"),
            "{message}"
        );
    }
}

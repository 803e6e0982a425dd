//! The API call log: every `/v3/` call that asks Didit for an effect, and
//! the decision and session-list reads, as the simulator answered them.
//!
//! A receiver that dedupes deliveries and reconciles by polling (docs/didit-protocol.md
//! 1.3) must still ask for each effect once: one session per step-up, one
//! status update per verdict, one blocklist entry per fraud. The log lets a
//! test prove it, and count the reads that reconciliation costs. Simulated
//! customers and Didit's simulated reviewer do not go through HTTP and are
//! not logged: the log is what the operator asked for.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::media;

/// What a logged call did at Didit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallEffect {
    /// A new session, workflow or webhook destination.
    Created,
    /// `POST /v3/session/` handed back the vendor's unfinished session on
    /// the same workflow (Didit's rule) instead of creating one.
    ReturnedExisting,
    /// A status update that changed the status, a blocklist call that
    /// changed the blocklist, a deletion.
    Changed,
    /// Answered 200 and changed nothing: Approved or Declined on a session
    /// already in it (no webhook), a blocklist add of what is already
    /// blocklisted, a removal of what is not.
    Noop,
    /// Any 4xx: bad request, unknown session, 403, 429, 413.
    Rejected,
    /// A decision read or a session listing.
    Read,
}

impl CallEffect {
    /// The JSON spelling, `returned_existing`; also the key in
    /// [`crate::Stats::api_calls`].
    pub fn as_str(self) -> &'static str {
        match self {
            CallEffect::Created => "created",
            CallEffect::ReturnedExisting => "returned_existing",
            CallEffect::Changed => "changed",
            CallEffect::Noop => "noop",
            CallEffect::Rejected => "rejected",
            CallEffect::Read => "read",
        }
    }
}

impl std::fmt::Display for CallEffect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One logged API call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiCall {
    /// 1, 2, 3, ... in the order the answers were given.
    pub seq: u64,
    /// `POST`, `PATCH`, `DELETE`, `GET`.
    pub method: String,
    /// The path as requested, without the query string.
    pub path: String,
    /// The query string as requested (`vendor_data=user-1&limit=20`).
    pub query: Option<String>,
    /// The session the call was about: from the path, from the body's
    /// `session_id` (blocklist calls), or the session created or handed
    /// back. `None` for listings, workflows, destinations and creations
    /// that were refused.
    pub session_id: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    pub effect: CallEffect,
    /// The JSON body as sent, with `portrait_image` replaced by
    /// `{"bytes": <decoded length>}`; `null` for reads and for bodies that
    /// were not a JSON object.
    pub request: Value,
}

/// The log itself. Its mutex is a leaf: taken with or without the state
/// lock held, and nothing is locked while it is held.
pub(crate) struct CallLog {
    calls: Mutex<Vec<ApiCall>>,
}

impl CallLog {
    pub(crate) fn new() -> Self {
        Self {
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Appends `call`, numbering it.
    pub(crate) fn record(&self, mut call: ApiCall) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        call.seq = calls.len() as u64 + 1;
        calls.push(call);
    }

    pub(crate) fn all(&self) -> Vec<ApiCall> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A request body as the log keeps it: the portrait, up to 1.4 MB of
/// base64, becomes its decoded size, so that the log stays small and holds
/// no biometric data.
pub(crate) fn redact(body: &Map<String, Value>) -> Value {
    let mut out = body.clone();
    if let Some(Value::String(text)) = body.get("portrait_image") {
        out.insert(
            "portrait_image".to_owned(),
            json!({"bytes": media::decoded_len(text)}),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_portrait_is_replaced_by_its_size() {
        let body = json!({"workflow_id": "w", "portrait_image": media::encode(&[1u8; 1000])});
        let Value::Object(body) = body else {
            unreachable!()
        };
        assert_eq!(
            redact(&body),
            json!({"workflow_id": "w", "portrait_image": {"bytes": 1000}})
        );
    }

    #[test]
    fn calls_are_numbered_in_order_and_effects_spelled_in_snake_case() {
        let log = CallLog::new();
        for _ in 0..2 {
            log.record(ApiCall {
                seq: 0,
                method: "GET".into(),
                path: "/v3/sessions/".into(),
                query: None,
                session_id: None,
                status: 200,
                effect: CallEffect::ReturnedExisting,
                request: Value::Null,
            });
        }
        let calls = log.all();
        assert_eq!(calls.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            serde_json::to_value(&calls[0]).unwrap()["effect"],
            json!("returned_existing")
        );
    }
}

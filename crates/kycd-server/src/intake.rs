//! `POST /webhooks/didit`: durable, idempotent intake of Didit deliveries.
//!
//! Didit waits 5 s, retries a failed delivery only twice, and may deliver
//! twice or out of order (docs/didit-protocol.md 1.3). So, in order:
//!
//! 1. the body is read up to the cap (1 MiB); a larger one is drained up to
//!    [`DRAIN_LIMIT`] so an ordinary client reads the 413 rather than a
//!    reset connection;
//! 2. authenticity first, on the bytes as received: raw signature, then V2
//!    on the parsed body, then Simple only when allowed; freshness on the
//!    body's signed `timestamp`. Any failure is one external 401 and nothing
//!    is stored;
//! 3. an authentic delivery that cannot be used (not JSON, no usable
//!    `timestamp` or `webhook_type`, a session event without `session_id`
//!    or `status`) is answered 400 — which Didit never retries — so its raw
//!    bytes go to the quarantine first;
//! 4. the event is appended to the log with its dedupe keys, and the answer
//!    (200 accepted or duplicate) is sent only once the append is durable;
//!    a log that cannot take the write answers 503 so Didit retries.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use didit::canonical::{Mode, Value};
use didit::signature::{SignatureHeaders, Verified, VerifyError};
use http_body_util::BodyExt;
use kycd_log::{Appended, EventSource, NewEvent, NewQuarantine};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, Code};
use crate::App;

/// How much of an oversized body is read and thrown away before answering
/// 413. Beyond it the connection is closed.
pub const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// Headers worth keeping with the event (never signatures' secrets: the
/// signatures themselves are not secret, but add nothing once verified).
const KEPT_HEADERS: [&str; 4] = [
    "user-agent",
    "x-timestamp",
    "content-type",
    "x-didit-test-webhook",
];

/// How a delivery was answered: the `result` of
/// `kycd_webhook_deliveries_total`, and the key the console's dashboard
/// counts it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryResult {
    /// Appended to the log (200).
    Accepted,
    /// Already in the log (200).
    Duplicate,
    /// Refused by the signature check (401).
    InvalidSignature,
    /// Authentic but unusable, quarantined (400).
    Unusable,
    /// The log could not take it (503).
    Unavailable,
    /// Over the body cap (413).
    TooLarge,
    /// The body could not be read (400).
    BadRequest,
    /// The body did not arrive in time (408).
    Timeout,
    /// Not JSON by its content type (415).
    UnsupportedMediaType,
}

impl DeliveryResult {
    pub const ALL: [DeliveryResult; 9] = [
        Self::Accepted,
        Self::Duplicate,
        Self::InvalidSignature,
        Self::Unusable,
        Self::Unavailable,
        Self::TooLarge,
        Self::BadRequest,
        Self::Timeout,
        Self::UnsupportedMediaType,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::InvalidSignature => "invalid_signature",
            Self::Unusable => "unusable",
            Self::Unavailable => "unavailable",
            Self::TooLarge => "too_large",
            Self::BadRequest => "bad_request",
            Self::Timeout => "timeout",
            Self::UnsupportedMediaType => "unsupported_media_type",
        }
    }
}

fn count(result: DeliveryResult) {
    metrics::counter!("kycd_webhook_deliveries_total", "result" => result.as_str()).increment(1);
    crate::telemetry::activity().bump(result.as_str());
}

enum BodyError {
    TooLarge,
    Broken,
    /// The body deadline ([`crate::serving::body_timeout`]) passed.
    TimedOut,
}

/// The most buffer reserved up front from a declared Content-Length, so a
/// client that declares a large body and sends none costs little.
const PREALLOCATE_LIMIT: usize = 64 * 1024;

/// Read the body, keeping at most `cap` bytes. `declared` (Content-Length)
/// only sizes the buffer up front; the bytes actually read are what count.
async fn read_capped(
    body: Body,
    cap: usize,
    declared: Option<usize>,
) -> Result<Vec<u8>, BodyError> {
    let mut body = body;
    let mut buf: Vec<u8> =
        Vec::with_capacity(declared.unwrap_or(0).min(cap).min(PREALLOCATE_LIMIT));
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if crate::serving::is_body_timeout(&e) {
                BodyError::TimedOut
            } else {
                BodyError::Broken
            }
        })?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= cap {
                buf.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                return Err(BodyError::TooLarge);
            }
        }
    }
    if seen > cap {
        Err(BodyError::TooLarge)
    } else {
        Ok(buf)
    }
}

fn too_large(cap: usize, close: bool) -> Response {
    count(DeliveryResult::TooLarge);
    let mut resp = ApiError::new(
        Code::PayloadTooLarge,
        format!("body larger than {cap} bytes"),
    )
    .into_response();
    if close {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    resp
}

fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        // Tolerated: a missing type is not a wrong one.
        return true;
    };
    let Ok(ct) = ct.to_str() else { return false };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Takes the whole request rather than a `HeaderMap` extractor, which would
/// clone every header of every delivery.
pub async fn didit_webhook(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let cap = app.settings.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return too_large(cap, true);
    }
    let bytes = match read_capped(body, cap, declared).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return too_large(cap, declared.is_none()),
        Err(BodyError::Broken) => {
            count(DeliveryResult::BadRequest);
            return ApiError::new(Code::BadRequest, "request body could not be read")
                .into_response();
        }
        // The body-timeout layer answers 408 and closes the connection.
        Err(BodyError::TimedOut) => {
            count(DeliveryResult::Timeout);
            return ApiError::new(Code::RequestTimeout, "request body not received in time")
                .into_response();
        }
    };
    if !json_content_type(&headers) {
        count(DeliveryResult::UnsupportedMediaType);
        return ApiError::new(
            Code::UnsupportedMediaType,
            "content-type must be application/json",
        )
        .into_response();
    }
    match intake(&app, &headers, bytes).await {
        Ok((status, id)) => {
            count(status);
            (
                StatusCode::OK,
                Json(json!({"status": status.as_str(), "id": id})),
            )
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn intake(
    app: &App,
    headers: &HeaderMap,
    bytes: Vec<u8>,
) -> Result<(DeliveryResult, String), ApiError> {
    let received_at_ms = app.clock.now_millis();
    let sig_headers = SignatureHeaders::from_pairs(
        headers
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v))),
    );
    let verified = match app
        .verifier
        .verify(&bytes, &sig_headers, received_at_ms.div_euclid(1000))
    {
        Ok(v) => v,
        Err(VerifyError::Unusable { scheme, reason }) => {
            return Err(quarantine(
                app,
                &bytes,
                headers,
                received_at_ms,
                &reason,
                Some(scheme.as_str()),
            )
            .await)
        }
        Err(e) => {
            metrics::counter!("kycd_webhook_verification_failures_total", "reason" => e.reason())
                .increment(1);
            count(DeliveryResult::InvalidSignature);
            tracing::info!(reason = e.reason(), detail = %e, "webhook refused");
            return Err(ApiError::new(
                Code::InvalidSignature,
                "signature verification failed",
            ));
        }
    };
    let event = match build_event(&verified, headers, received_at_ms) {
        Ok(e) => e,
        Err(reason) => {
            return Err(quarantine(
                app,
                &bytes,
                headers,
                received_at_ms,
                reason,
                Some(verified.scheme.as_str()),
            )
            .await)
        }
    };
    let event = NewEvent {
        body: bytes,
        ..event
    };
    let appended = app.log.append(event).await;
    app.readiness.log_write(&appended);
    match appended {
        Ok(Appended::New { id, .. }) => Ok((DeliveryResult::Accepted, id.to_string())),
        Ok(Appended::Duplicate { id }) => Ok((DeliveryResult::Duplicate, id.to_string())),
        Err(e) => {
            count(DeliveryResult::Unavailable);
            Err(ApiError::internal(Code::Unavailable, &e))
        }
    }
}

fn kept_headers(headers: &HeaderMap) -> serde_json::Map<String, serde_json::Value> {
    KEPT_HEADERS
        .iter()
        .filter_map(|n| {
            headers
                .get(*n)
                .and_then(|h| h.to_str().ok())
                .map(|h| ((*n).to_owned(), json!(h)))
        })
        .collect()
}

fn str_field<'v>(v: &'v Value<'_>, key: &str) -> Option<&'v str> {
    match v.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// Everything about the event except its body. Errors are quarantine
/// reasons: short, fixed texts with no content from the payload.
fn build_event(
    v: &Verified<'_>,
    headers: &HeaderMap,
    received_at_ms: i64,
) -> Result<NewEvent, &'static str> {
    let body = &v.body;
    // What the projector cannot read is refused here, before the 200:
    // an acknowledged delivery must always be projected.
    if !body.numbers_fit_f64() {
        return Err("number beyond the range of a double");
    }
    let session_id = str_field(body, "session_id");
    let status = str_field(body, "status");
    // v1 deliveries (early 2025) predate `webhook_type`; a session delivery
    // without it is a v1 status update. Anything else must name its type.
    let webhook_type = match (str_field(body, "webhook_type"), session_id, status) {
        (Some(t), _, _) => t,
        (None, Some(_), Some(_)) => "status.updated",
        (None, _, _) => return Err("missing webhook_type"),
    };
    let session_event = matches!(webhook_type, "status.updated" | "data.updated");
    if session_event && session_id.is_none() {
        return Err("session event without session_id");
    }
    if session_event && status.is_none() {
        return Err("session event without status");
    }
    let event_id = str_field(body, "event_id");
    // No backend's index may trip on them: PostgreSQL's text cannot hold
    // U+0000, and no id of Didit's carries one.
    if [session_id, Some(webhook_type), event_id]
        .into_iter()
        .flatten()
        .any(|t| t.contains('\0'))
    {
        return Err("a NUL character in session_id, event_id or webhook_type");
    }

    // Dedupe on Didit's event id when there is one, on the compound key
    // only when there is not, and always on the content without event_id,
    // which catches a retry that carries a new event_id.
    let mut keys = Vec::with_capacity(2);
    match event_id {
        Some(id) => keys.push(format!("event:{id}")),
        None => keys.push(format!(
            "compound:{}|{}|{}|{}",
            session_id.unwrap_or(""),
            webhook_type,
            v.timestamp,
            status.unwrap_or("")
        )),
    }
    keys.push(content_digest_key(body));

    let test = headers
        .get("x-didit-test-webhook")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.trim().eq_ignore_ascii_case("true"));
    let sandbox = str_field(body, "environment") == Some("sandbox");
    let kept = kept_headers(headers);
    Ok(NewEvent {
        received_at_ms,
        source: EventSource::Webhook,
        kind: webhook_type.to_owned(),
        session_id: session_id.map(str::to_owned),
        didit_event_id: event_id.map(str::to_owned),
        dedupe_keys: keys,
        body: Vec::new(),
        meta: json!({
            "signature": v.scheme.as_str(),
            "secret_index": v.secret_index,
            "envelope_only": v.envelope_only(),
            "timestamp": v.timestamp,
            "status": status,
            "sandbox": sandbox || test,
            "test_webhook": test,
            "headers": kept,
        }),
    })
}

/// The dedupe key of the content: SHA-256 of the canonical UTF-8 body
/// without its top-level `event_id`, written straight from the parsed tree
/// (no copy of the tree with the member removed).
fn content_digest_key(body: &Value<'_>) -> String {
    let mut canonical = Vec::with_capacity(4096);
    body.write_without("event_id", Mode::Utf8, &mut canonical);
    format!("digest:{}", hex::encode(Sha256::digest(&canonical)))
}

/// Keep an authentic but unusable delivery, and answer 400. If even the
/// quarantine cannot take it, answer 503 so Didit retries.
async fn quarantine(
    app: &App,
    bytes: &[u8],
    headers: &HeaderMap,
    received_at_ms: i64,
    reason: &str,
    scheme: Option<&str>,
) -> ApiError {
    let kept = kept_headers(headers);
    let q = NewQuarantine {
        received_at_ms,
        reason: reason.to_owned(),
        body: bytes.to_vec(),
        meta: json!({"signature": scheme, "headers": kept}),
    };
    let quarantined = app.log.quarantine(q).await;
    app.readiness.log_write(&quarantined);
    match quarantined {
        Ok(id) => {
            count(DeliveryResult::Unusable);
            metrics::counter!("kycd_quarantined_total").increment(1);
            tracing::warn!(quarantine = %id, reason, "authentic delivery quarantined");
            ApiError::new(
                Code::UnusablePayload,
                format!("authentic but unusable: {reason}; kept as {id}"),
            )
        }
        Err(e) => {
            count(DeliveryResult::Unavailable);
            ApiError::internal(Code::Unavailable, &e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest key is what earlier deliveries were stored under, so it
    /// must stay byte for byte what it was: the canonical UTF-8 of a copy of
    /// the body with `event_id` removed.
    #[test]
    fn content_digest_key_is_the_digest_of_the_body_without_event_id() {
        let raw = "{\"event_id\":\"e1\",\"session_id\":\"s\",\"status\":\"Approved\",\"n\":91.30,\"name\":\"J\\u00fcrgen\"}";
        let body = Value::parse(raw.as_bytes()).unwrap();
        let mut content = body.clone();
        if let Value::Object(members) = &mut content {
            members.retain(|(k, _)| k != "event_id");
        }
        let expected = format!(
            "digest:{}",
            hex::encode(Sha256::digest(content.to_canonical(Mode::Utf8)))
        );
        assert_eq!(content_digest_key(&body), expected);
        let retried = raw.replace("e1", "e2");
        let other = Value::parse(retried.as_bytes()).unwrap();
        assert_eq!(content_digest_key(&other), expected);
    }
}

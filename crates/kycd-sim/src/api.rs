//! The HTTP API: Didit's v3 endpoints (docs/didit-protocol.md section 4) and the
//! simulator's own `/sim/v1/` endpoints.
//!
//! Every `/v3/` call needs the configured `x-api-key` (403 otherwise) and
//! counts against its scope's rate limit (see [`crate::ratelimit`]). The
//! `/sim/v1/truth`, `/stats`, `/deliveries` and `/calls` endpoints need the
//! same key but are not rate limited. `/sim/v1/media/...` and
//! `/session/{token}` need no key: they stand for Didit's signed media links
//! and hosted page. Every error body is `{"detail": "..."}`.
//!
//! The calls that ask for an effect and the decision and session-list reads
//! go through [`logged`], which records them in the call log
//! ([`crate::calls`]), refused ones included.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, PrimitiveDateTime, Time};

use crate::calls::{self, ApiCall, CallEffect};
use crate::decision::Feat;
use crate::ids;
use crate::media;
use crate::ratelimit::{RateInfo, Scope};
use crate::session::{self, CreateRequest, UpdateRequest};
use crate::sim::Inner;
use crate::state::{
    iso_micros, Destination, DestinationInfo, Workflow, EVENT_TYPES, WORKFLOW_TYPES,
};
use crate::wire::WebhookVersion;

/// Request bodies above this are refused (413) before they are read; a
/// 1 MB portrait is about 1.4 MB of base64.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// An error answer: `{"detail": ...}` with its status.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub detail: String,
    rate: Option<RateInfo>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            rate: None,
        }
    }

    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    pub(crate) fn session_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Session not found.")
    }

    pub(crate) fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({"detail": self.detail}))).into_response();
        if let Some(rate) = self.rate {
            rate_headers(response.headers_mut(), rate);
            if self.status == StatusCode::TOO_MANY_REQUESTS {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(rate.reset_secs));
            }
        }
        response
    }
}

fn rate_headers(headers: &mut HeaderMap, rate: RateInfo) {
    headers.insert("x-ratelimit-limit", HeaderValue::from(rate.limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(rate.remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(rate.reset_secs));
}

type Shared = State<Arc<Inner>>;
type ApiResult = Result<Response, ApiError>;

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/v3/workflows/", get(list_workflows).post(create_workflow))
        .route("/v3/session/", post(create_session))
        .route("/v3/session/{id}/decision/", get(get_decision))
        .route("/v3/session/{id}/update-status/", patch(update_status))
        .route("/v3/session/{id}/delete/", delete(delete_session))
        .route("/v3/session/{id}/generate-pdf/", get(generate_pdf))
        .route("/v3/blocklist/add/", post(blocklist_add))
        .route("/v3/blocklist/remove/", post(blocklist_remove))
        .route("/v3/sessions/", get(list_sessions))
        .route(
            "/v3/webhook/destinations/",
            get(list_destinations).post(create_destination),
        )
        .route("/sim/v1/truth", get(truth))
        .route("/sim/v1/stats", get(stats))
        .route("/sim/v1/deliveries", get(deliveries))
        .route("/sim/v1/calls", get(calls_log))
        .route("/sim/v1/media/{session_id}/{name}", get(media_file))
        .route("/session/{token}", get(hosted_page))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(inner)
}

/// Compares without an early exit, so timing does not reveal the key.
fn same_key(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn authenticate<'h>(inner: &Inner, headers: &'h HeaderMap) -> Result<&'h str, ApiError> {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "Authentication credentials were not provided.",
            )
        })?;
    if !same_key(key, &inner.api_key) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "Invalid API key."));
    }
    Ok(key)
}

/// Authenticates and counts the request against `scope`.
fn admit(inner: &Inner, headers: &HeaderMap, scope: Scope) -> Result<RateInfo, ApiError> {
    let key = authenticate(inner, headers)?;
    inner.limiter.admit(key, scope).map_err(|rate| ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        detail: "Request was throttled. Expected available in a moment.".to_owned(),
        rate: Some(rate),
    })
}

/// Adds the rate-limit headers to whatever the handler answered.
fn finish(rate: RateInfo, result: ApiResult) -> Response {
    let mut response = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    rate_headers(response.headers_mut(), rate);
    response
}

/// Admits the request to `scope` and answers with `work`'s result and the
/// rate-limit headers; a refused request is answered without running it.
fn rate_limited(
    inner: &Inner,
    headers: &HeaderMap,
    scope: Scope,
    work: impl FnOnce() -> ApiResult,
) -> Response {
    match admit(inner, headers, scope) {
        Ok(rate) => finish(rate, work()),
        Err(e) => e.into_response(),
    }
}

/// Answers `body` as JSON to a request with the key; not rate limited.
fn keyed(inner: &Inner, headers: &HeaderMap, body: impl FnOnce() -> Value) -> Response {
    match authenticate(inner, headers) {
        Ok(_) => json_response(StatusCode::OK, body()),
        Err(e) => e.into_response(),
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// A logged call as it came in, before it is answered.
struct Call {
    method: String,
    path: String,
    query: Option<String>,
    /// From the path or the body; the handler may name another.
    session_id: Option<String>,
    request: Value,
}

impl Call {
    fn new(method: &Method, uri: &Uri) -> Self {
        Self {
            method: method.as_str().to_owned(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            session_id: None,
            request: Value::Null,
        }
    }

    fn about(mut self, session_id: &str) -> Self {
        self.session_id = Some(session_id.to_owned());
        self
    }

    /// Keeps the body (redacted) and, for blocklist calls, its `session_id`.
    fn with_body(mut self, body: &Result<Map<String, Value>, ApiError>) -> Self {
        if let Ok(map) = body {
            self.request = calls::redact(map);
            if let Some(id) = map.get("session_id").and_then(Value::as_str) {
                self.session_id = Some(id.to_owned());
            }
        }
        self
    }
}

/// What a logged call's handler did, besides answering.
struct Done {
    response: Response,
    effect: CallEffect,
    /// The session created or handed back, when the call did not name one.
    session_id: Option<String>,
}

impl Done {
    fn new(response: Response, effect: CallEffect) -> Self {
        Self {
            response,
            effect,
            session_id: None,
        }
    }

    fn json(status: StatusCode, body: Value, effect: CallEffect) -> Self {
        Self::new(json_response(status, body), effect)
    }
}

/// The effect of a call that may have left things as they were.
fn changed_or_noop(changed: bool) -> CallEffect {
    if changed {
        CallEffect::Changed
    } else {
        CallEffect::Noop
    }
}

/// Admits `call` to `scope`, runs `work`, answers with the rate-limit
/// headers, and records the answer in the call log. Whatever answered a
/// 4xx (403, 429, 400, 404, 413) is logged as `rejected`.
fn logged(
    inner: &Inner,
    headers: &HeaderMap,
    scope: Scope,
    call: Call,
    work: impl FnOnce() -> Result<Done, ApiError>,
) -> Response {
    let (response, effect, session_id) = match admit(inner, headers, scope) {
        Err(e) => (e.into_response(), CallEffect::Rejected, None),
        Ok(rate) => match work() {
            Ok(done) => (
                finish(rate, Ok(done.response)),
                done.effect,
                done.session_id,
            ),
            Err(e) => (finish(rate, Err(e)), CallEffect::Rejected, None),
        },
    };
    let status = response.status();
    inner.calls.record(ApiCall {
        seq: 0, // numbered by the log
        method: call.method,
        path: call.path,
        query: call.query,
        session_id: session_id.or(call.session_id),
        status: status.as_u16(),
        effect: if status.is_client_error() {
            CallEffect::Rejected
        } else {
            effect
        },
        request: call.request,
    });
    response
}

/// A request body, or why it could not be read (too large, cut off).
type Body = Result<Bytes, BytesRejection>;

/// Reads a JSON object body; an empty body is an empty object.
fn object_body(body: Body) -> Result<Map<String, Value>, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        let detail = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "Request body is too large."
        } else {
            "The request body could not be read."
        };
        ApiError::new(status, detail)
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("Expected a JSON object.")),
        Err(_) => Err(ApiError::bad_request("JSON parse error.")),
    }
}

fn bool_switch(body: &Map<String, Value>, key: &str, default: bool) -> Result<bool, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad_request(format!("{key} must be a boolean."))),
    }
}

fn threshold(body: &Map<String, Value>, key: &str, default: f64) -> Result<f64, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|x| (0.0..=100.0).contains(x))
            .ok_or_else(|| ApiError::bad_request(format!("{key} must be a number from 0 to 100."))),
    }
}

async fn create_workflow(
    State(inner): Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = object_body(body);
    let call = Call::new(&method, &uri).with_body(&body);
    logged(&inner, &headers, Scope::Write, call, || {
        let body = body?;
        let kind = body
            .get("workflow_type")
            .and_then(Value::as_str)
            .filter(|k| WORKFLOW_TYPES.contains(k))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "workflow_type must be one of: {}.",
                    WORKFLOW_TYPES.join(", ")
                ))
            })?
            .to_owned();
        let label = match body.get("workflow_label") {
            None | Some(Value::Null) => format!("{kind} workflow"),
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "workflow_label must be a non-empty string.",
                ))
            }
        };
        let biometric = kind == "biometric_authentication";
        let liveness = bool_switch(&body, "is_liveness_enabled", true)?;
        let face_match = bool_switch(&body, "is_face_match_enabled", true)?;
        let ip = bool_switch(&body, "is_ip_analysis_enabled", !biometric)?;
        let aml = bool_switch(&body, "is_aml_enabled", false)?;
        let phone = bool_switch(&body, "is_phone_verification_enabled", false)?;
        let email = bool_switch(&body, "is_email_verification_enabled", false)?;
        let nfc = bool_switch(&body, "is_nfc_enabled", false)?;
        if nfc && kind != "kyc" {
            // The chip is read after the document photo, which only KYC
            // workflows take.
            return Err(ApiError::bad_request(
                "is_nfc_enabled needs a kyc workflow (NFC reads the document's chip).",
            ));
        }
        let decline = threshold(&body, "face_match_score_decline_threshold", 50.0)?;
        let review = threshold(&body, "face_match_score_review_threshold", 70.0)?.max(decline);
        let mut features = Vec::new();
        let mut add = |on: bool, f: Feat| {
            if on {
                features.push(f);
            }
        };
        match kind.as_str() {
            "kyc" => {
                add(ip, Feat::Ip);
                add(true, Feat::Id);
                add(nfc, Feat::Nfc);
                add(liveness, Feat::Liveness);
                add(liveness && face_match, Feat::FaceMatch);
                add(aml, Feat::Aml);
                add(phone, Feat::Phone);
                add(email, Feat::Email);
            }
            "biometric_authentication" => {
                add(ip, Feat::Ip);
                add(true, Feat::Liveness);
                add(face_match, Feat::FaceMatch);
            }
            "adaptive_age_verification" => {
                add(ip, Feat::Ip);
                add(true, Feat::Liveness);
            }
            "address_verification" => {
                add(ip, Feat::Ip);
                add(true, Feat::Poa);
            }
            "phone_verification" => add(true, Feat::Phone),
            "email_verification" => add(true, Feat::Email),
            "questionnaire_verification" => add(true, Feat::Questionnaire),
            _ => {}
        }
        let mut st = inner.lock();
        let id = ids::uuid(&mut st.api_rng);
        let mut settings = body.clone();
        settings.remove("workflow_label");
        settings.remove("workflow_type");
        let workflow = Workflow {
            id,
            label,
            kind,
            version: 1,
            features,
            face_review_below: review,
            face_decline_below: decline,
            created_at: iso_micros(OffsetDateTime::now_utc()),
            settings,
            is_default: false,
        };
        let answer = workflow.to_json();
        st.workflows.push(workflow);
        Ok(Done::json(StatusCode::CREATED, answer, CallEffect::Created))
    })
}

async fn list_workflows(State(inner): Shared, headers: HeaderMap) -> Response {
    rate_limited(&inner, &headers, Scope::Read, || {
        let list: Vec<Value> = inner
            .lock()
            .workflows
            .iter()
            .map(Workflow::to_json)
            .collect();
        Ok(json_response(StatusCode::OK, Value::Array(list)))
    })
}

async fn create_session(
    State(inner): Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = object_body(body);
    let call = Call::new(&method, &uri).with_body(&body);
    logged(&inner, &headers, Scope::SessionCreation, call, || {
        let req = CreateRequest::from_json(&body?)?;
        let created = session::create(&inner, req, None)?;
        if let Some(scenario) = created.auto {
            let guard = inner.activity.enter();
            let task =
                crate::flow::api_session(inner.clone(), created.session_id.clone(), scenario);
            inner.spawn(guard, task);
        }
        let effect = if created.existing {
            CallEffect::ReturnedExisting
        } else {
            CallEffect::Created
        };
        Ok(Done {
            response: json_response(StatusCode::CREATED, created.body),
            effect,
            session_id: Some(created.session_id),
        })
    })
}

async fn get_decision(
    State(inner): Shared,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let call = Call::new(&method, &uri).about(&id);
    logged(&inner, &headers, Scope::DecisionRead, call, || {
        let mut st = inner.lock();
        if let Some(n) = st.failing_decisions.get_mut(&id).filter(|n| **n > 0) {
            *n -= 1;
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service temporarily unavailable.",
            ));
        }
        let s = st
            .live_session(&id)
            .ok_or_else(ApiError::session_not_found)?;
        let decision = session::decision_json(&inner, s);
        drop(st);
        Ok(Done::json(StatusCode::OK, decision, CallEffect::Read))
    })
}

async fn update_status(
    State(inner): Shared,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = object_body(body);
    let call = Call::new(&method, &uri).with_body(&body).about(&id);
    logged(&inner, &headers, Scope::Write, call, || {
        let req = UpdateRequest::from_json(&body?)?;
        let updated = session::update_status(&inner, &id, req, session::Actor::Api)?;
        let effect = changed_or_noop(updated.changed);
        Ok(Done::json(StatusCode::OK, updated.answer, effect))
    })
}

async fn delete_session(
    State(inner): Shared,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let call = Call::new(&method, &uri).about(&id);
    logged(&inner, &headers, Scope::Write, call, || {
        session::delete(&inner, &id)?;
        Ok(Done::new(
            StatusCode::NO_CONTENT.into_response(),
            CallEffect::Changed,
        ))
    })
}

async fn generate_pdf(
    State(inner): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    rate_limited(&inner, &headers, Scope::Pdf, || {
        session::pdf(&inner, &id).map(|bytes| {
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/pdf".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"session-{id}.pdf\""),
                    ),
                ],
                bytes,
            )
                .into_response()
        })
    })
}

fn blocklist_call(
    inner: &Arc<Inner>,
    call: Call,
    headers: &HeaderMap,
    body: Body,
    add: bool,
) -> Response {
    let body = object_body(body);
    let call = call.with_body(&body);
    logged(inner, headers, Scope::Write, call, || {
        let body = body?;
        let session_id = body
            .get("session_id")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("session_id is required."))?;
        let names = if add {
            [
                "blocklist_face",
                "blocklist_document",
                "blocklist_phone",
                "blocklist_email",
            ]
        } else {
            [
                "unblock_face",
                "unblock_document",
                "unblock_phone",
                "unblock_email",
            ]
        };
        let mut flags = [false; 4];
        for (flag, name) in flags.iter_mut().zip(names) {
            *flag = bool_switch(&body, name, false)?;
        }
        let (answer, changed) = session::blocklist(inner, session_id, flags, add)?;
        let effect = changed_or_noop(changed);
        Ok(Done::json(StatusCode::OK, answer, effect))
    })
}

async fn blocklist_add(
    State(inner): Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    blocklist_call(&inner, Call::new(&method, &uri), &headers, body, true)
}

async fn blocklist_remove(
    State(inner): Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    blocklist_call(&inner, Call::new(&method, &uri), &headers, body, false)
}

/// `2026-03-01` (a whole day) or an RFC 3339 instant.
fn parse_when(text: &str, end_of_day: bool) -> Option<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(t);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = Date::parse(text, &format).ok()?;
    let time = if end_of_day {
        Time::from_hms_micro(23, 59, 59, 999_999).ok()?
    } else {
        Time::MIDNIGHT
    };
    Some(PrimitiveDateTime::new(date, time).assume_utc())
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn list_sessions(
    State(inner): Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let call = Call::new(&method, &uri);
    logged(&inner, &headers, Scope::Read, call, || {
        let Query(q) = query.map_err(|_| ApiError::bad_request("Invalid query string."))?;
        let number = |key: &str, default: usize| -> Result<usize, ApiError> {
            match q.get(key) {
                None => Ok(default),
                Some(v) => v.parse::<usize>().map_err(|_| {
                    ApiError::bad_request(format!("{key} must be a non-negative integer."))
                }),
            }
        };
        let limit = number("limit", 20)?.clamp(1, 100);
        let offset = number("offset", 0)?;
        let from = match q.get("date_from") {
            Some(t) => Some(parse_when(t, false).ok_or_else(|| {
                ApiError::bad_request("date_from must be a date (YYYY-MM-DD) or an RFC 3339 time.")
            })?),
            None => None,
        };
        let to = match q.get("date_to") {
            Some(t) => Some(parse_when(t, true).ok_or_else(|| {
                ApiError::bad_request("date_to must be a date (YYYY-MM-DD) or an RFC 3339 time.")
            })?),
            None => None,
        };
        let st = inner.lock();
        let mut matching: Vec<&crate::state::Session> = st
            .order
            .iter()
            .filter_map(|id| st.live_session(id))
            .filter(|s| {
                q.get("vendor_data")
                    .is_none_or(|v| s.vendor_data.as_ref() == Some(v))
            })
            .filter(|s| q.get("status").is_none_or(|v| s.status.as_str() == v))
            .filter(|s| q.get("workflow_id").is_none_or(|v| &s.workflow_id == v))
            .filter(|s| from.is_none_or(|f| s.created_at >= f))
            .filter(|s| to.is_none_or(|t| s.created_at <= t))
            .collect();
        matching.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then(b.number.cmp(&a.number))
        });
        let count = matching.len();
        let results: Vec<Value> = matching
            .iter()
            .skip(offset)
            .take(limit)
            .map(|s| s.summary(&inner.base_url))
            .collect();
        drop(st);
        let page_url = |offset: usize| {
            let mut params: Vec<(String, String)> = q
                .iter()
                .filter(|(k, _)| k.as_str() != "limit" && k.as_str() != "offset")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            params.sort();
            params.push(("limit".into(), limit.to_string()));
            params.push(("offset".into(), offset.to_string()));
            let query: Vec<String> = params
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect();
            format!("{}/v3/sessions/?{}", inner.base_url, query.join("&"))
        };
        let next = (offset + limit < count).then(|| page_url(offset + limit));
        let previous = (offset > 0).then(|| page_url(offset.saturating_sub(limit)));
        Ok(Done::json(
            StatusCode::OK,
            json!({"count": count, "next": next, "previous": previous, "results": results}),
            CallEffect::Read,
        ))
    })
}

pub(crate) fn destination_info(inner: &Inner, d: &Destination) -> DestinationInfo {
    DestinationInfo {
        uuid: d.id.clone(),
        label: d.label.clone(),
        url: d.url.clone(),
        webhook_version: d.version,
        subscribed_events: d.events.clone(),
        enabled: d.enabled,
        secret_shared_key: inner.secret.expose().to_owned(),
        created_at: d.created_at.clone(),
    }
}

/// Adds a destination after checking it as Didit would.
pub(crate) fn add_destination(
    inner: &Inner,
    label: Option<String>,
    url: String,
    version: WebhookVersion,
    events: Vec<String>,
    enabled: bool,
) -> Result<DestinationInfo, ApiError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
        return Err(ApiError::bad_request("url must be an http(s) URL."));
    }
    if events.is_empty() {
        return Err(ApiError::bad_request(
            "subscribed_events must not be empty.",
        ));
    }
    if let Some(bad) = events.iter().find(|e| !EVENT_TYPES.contains(&e.as_str())) {
        return Err(ApiError::bad_request(format!(
            "Unknown event type \"{bad}\"."
        )));
    }
    let mut st = inner.lock();
    let id = ids::uuid(&mut st.api_rng);
    let destination = Destination {
        id,
        label: label.unwrap_or_else(|| "Webhook".to_owned()),
        url,
        version,
        events,
        enabled,
        created_at: iso_micros(OffsetDateTime::now_utc()),
    };
    let info = destination_info(inner, &destination);
    st.destinations.push(destination);
    Ok(info)
}

async fn create_destination(
    State(inner): Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = object_body(body);
    let call = Call::new(&method, &uri).with_body(&body);
    logged(&inner, &headers, Scope::Write, call, || {
        let body = body?;
        let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
        let url = text("url").ok_or_else(|| ApiError::bad_request("url is required."))?;
        let version = match body.get("webhook_version") {
            None | Some(Value::Null) => WebhookVersion::V3,
            Some(v) => v.as_str().and_then(WebhookVersion::parse).ok_or_else(|| {
                ApiError::bad_request("webhook_version must be \"v1\", \"v2\" or \"v3\".")
            })?,
        };
        let events: Vec<String> = match body.get("subscribed_events") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    ApiError::bad_request("subscribed_events must be a list of strings.")
                })?,
            _ => return Err(ApiError::bad_request("subscribed_events is required.")),
        };
        let enabled = bool_switch(&body, "enabled", true)?;
        let info = add_destination(&inner, text("label"), url, version, events, enabled)?;
        Ok(Done::json(
            StatusCode::CREATED,
            json!(info),
            CallEffect::Created,
        ))
    })
}

async fn list_destinations(State(inner): Shared, headers: HeaderMap) -> Response {
    rate_limited(&inner, &headers, Scope::Read, || {
        let list: Vec<DestinationInfo> = inner
            .lock()
            .destinations
            .iter()
            .map(|d| destination_info(&inner, d))
            .collect();
        Ok(json_response(StatusCode::OK, json!(list)))
    })
}

async fn truth(State(inner): Shared, headers: HeaderMap) -> Response {
    keyed(&inner, &headers, || json!(crate::truth_of(&inner)))
}

async fn stats(State(inner): Shared, headers: HeaderMap) -> Response {
    keyed(&inner, &headers, || json!(crate::stats_of(&inner)))
}

async fn deliveries(State(inner): Shared, headers: HeaderMap) -> Response {
    keyed(&inner, &headers, || json!(inner.dispatcher.records()))
}

async fn calls_log(State(inner): Shared, headers: HeaderMap) -> Response {
    keyed(&inner, &headers, || json!(inner.calls.all()))
}

/// Didit's signed media links, simulated: a JPEG-framed file naming the
/// face it shows (see [`crate::media`]).
async fn media_file(
    State(inner): Shared,
    Path((session_id, name)): Path<(String, String)>,
) -> Response {
    let st = inner.lock();
    let Some(s) = st.live_session(&session_id) else {
        return ApiError::new(StatusCode::NOT_FOUND, "Not found.").into_response();
    };
    let face = match name.as_str() {
        "selfie.jpg" => s.persona.face,
        "portrait.jpg" | "front.jpg" | "back.jpg" => s.persona.document_face,
        "reference.jpg" => s.reference_face.flatten().unwrap_or(0),
        // The chip holds the document's own photo; a signature shows no face.
        "chip.jpg" => s.persona.document_face,
        "signature.jpg" => 0,
        "liveness.mp4" => {
            return (
                [(header::CONTENT_TYPE, "video/mp4")],
                Bytes::from_static(b"\x00\x00\x00\x18ftypmp42"),
            )
                .into_response()
        }
        _ => return ApiError::new(StatusCode::NOT_FOUND, "Not found.").into_response(),
    };
    drop(st);
    (
        [(header::CONTENT_TYPE, "image/jpeg")],
        media::fake_jpeg(face),
    )
        .into_response()
}

async fn hosted_page(Path(_token): Path<String>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><title>Didit (simulated)</title><p>This verification session is completed by a simulated user.</p>",
    )
        .into_response()
}

async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "Not found.").into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.").into_response()
}

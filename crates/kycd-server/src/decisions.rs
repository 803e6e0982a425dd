//! Decisions and the operator's subject data, under `/api/v1`:
//!
//! - `GET /decisions?outcome=&session_id=&shadow=&limit=&cursor=`, newest first;
//! - `GET /decisions/{id}`: the whole decision, with trace and facts, and
//!   the shadow policy's decision on the same event when there is one;
//!   both name the instance that decided (`decided_by`: the holder of the
//!   projection's lease at the commit; null on the embedded store);
//! - `GET /shadow?limit=`: how the shadow policy compares with the active
//!   one over the latest decisions (a from-to matrix and disagreements);
//! - `PUT /subjects/{vendor_data}`: store the operator's JSON attributes for
//!   a subject, appended to the event log like a delivery so the facts of
//!   any decision can be rebuilt as they stood; `GET` returns them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use didit::canonical::{Mode, Value as Canon};
use kycd_core::when::format_millis;
use kycd_log::store::{DecisionQuery, DecisionRecord, ShadowPair};
use kycd_log::{Appended, EventSource, NewEvent};
use kycd_policy::DIDIT_FEATURES;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{parse_limit, store_err};
use crate::error::{ApiError, Code};
use crate::App;

type ApiResult = Result<Response, ApiError>;

/// Largest subject attributes document accepted.
pub const MAX_SUBJECT_BYTES: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
pub struct DecisionParams {
    outcome: Option<String>,
    session_id: Option<String>,
    shadow: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

const OUTCOMES: [&str; 6] = [
    "approve", "review", "decline", "resubmit", "step_up", "block",
];

fn listed(d: &DecisionRecord) -> Value {
    json!({
        "id": d.id,
        "session_id": d.session_id,
        "subject": d.subject,
        "outcome": d.outcome,
        "score": d.score,
        "reasons": d.doc.get("reasons"),
        "checks": d.doc.get("checks"),
        "policy_version": d.policy_version,
        "shadow": d.shadow,
        "decided_at": format_millis(d.decided_at_ms),
        "decided_by": d.decided_by,
    })
}

pub async fn list_decisions(
    State(app): State<Arc<App>>,
    Query(p): Query<DecisionParams>,
) -> ApiResult {
    let limit = parse_limit(p.limit.as_deref())?;
    if let Some(o) = p.outcome.as_deref().filter(|o| !o.is_empty()) {
        if !OUTCOMES.contains(&o) {
            return Err(ApiError::new(
                Code::BadRequest,
                format!("outcome must be one of {}", OUTCOMES.join(", ")),
            ));
        }
    }
    let shadow = match p.shadow.as_deref() {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::new(
                Code::BadRequest,
                "shadow must be true or false",
            ))
        }
    };
    let before = p
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.strip_prefix('d')
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| ApiError::new(Code::BadRequest, "invalid cursor"))
        })
        .transpose()?;
    let q = DecisionQuery {
        outcome: p.outcome.filter(|o| !o.is_empty()),
        session_id: p.session_id.filter(|s| !s.is_empty()),
        shadow,
        before_offset: before,
        after_offset: None,
        limit: limit + 1,
    };
    let mut rows = app.store.list_decisions(q).await.map_err(store_err)?;
    let next = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        rows.last().map(|d| format!("d{}", d.event_offset))
    });
    let items: Vec<Value> = rows.iter().map(listed).collect();
    Ok(Json(json!({"items": items, "next_cursor": next.flatten()})).into_response())
}

pub async fn get_decision(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let Some(d) = app.store.get_decision(&id).await.map_err(store_err)? else {
        return Err(ApiError::new(Code::NotFound, "no such decision"));
    };
    let mut doc = d.doc.clone();
    // Which instance committed it (null on the embedded store).
    doc["decided_by"] = json!(d.decided_by);
    // Stored compactly; the API shows one object per rule and table.
    if let Some(trace) = doc.get_mut("trace") {
        kycd_policy::expand_trace(trace);
    }
    if !d.shadow {
        if let Some(s) = app
            .store
            .decision_for_event(d.event_offset, &d.session_id, true)
            .await
            .map_err(store_err)?
        {
            doc["shadow_decision"] = json!({
                "id": s.id,
                "outcome": s.outcome,
                "score": s.score,
                "reasons": s.doc.get("reasons"),
                "policy_version": s.policy_version,
                "agrees": s.outcome == d.outcome,
            });
        }
    }
    Ok(Json(doc).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ShadowParams {
    limit: Option<String>,
}

/// How a shadow policy's decisions compare with the active ones.
#[derive(Debug, Default)]
pub struct ShadowComparison {
    pub compared: u64,
    pub agreed: u64,
    /// Active outcome → shadow outcome → count.
    pub matrix: BTreeMap<String, BTreeMap<String, u64>>,
    /// The first few where they differ, newest first.
    pub disagreements: Vec<ShadowPair>,
}

/// How many disagreements a comparison lists.
const DISAGREEMENTS_SHOWN: usize = 20;

impl ShadowComparison {
    pub fn of(pairs: Vec<ShadowPair>) -> Self {
        let mut c = Self::default();
        for p in pairs {
            c.compared += 1;
            *c.matrix
                .entry(p.active.clone())
                .or_default()
                .entry(p.shadow.clone())
                .or_default() += 1;
            if p.shadow == p.active {
                c.agreed += 1;
            } else if c.disagreements.len() < DISAGREEMENTS_SHOWN {
                c.disagreements.push(p);
            }
        }
        c
    }
}

/// The shadow policy against the active one over the latest decisions.
pub async fn shadow_compare(
    State(app): State<Arc<App>>,
    Query(p): Query<ShadowParams>,
) -> ApiResult {
    let limit = parse_limit(p.limit.as_deref())?;
    let active = app.policies.active();
    let shadow = app
        .policies
        .shadow
        .as_ref()
        .map(|s| json!({"name": s.name(), "version": s.version()}));
    let pairs = app.store.shadow_pairs(limit).await.map_err(store_err)?;
    let c = ShadowComparison::of(pairs);
    let disagreements: Vec<Value> = c
        .disagreements
        .iter()
        .map(|p| {
            json!({
                "decision": p.decision_id, "session_id": p.session_id,
                "active": p.active, "shadow": p.shadow, "shadow_decision": p.shadow_decision_id,
            })
        })
        .collect();
    Ok(Json(json!({
        "active": {"name": active.name(), "version": active.version()},
        "shadow": shadow,
        "compared": c.compared,
        "agreed": c.agreed,
        "matrix": c.matrix,
        "disagreements": disagreements,
    }))
    .into_response())
}

fn check_subject_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(ApiError::new(
            Code::BadRequest,
            "vendor_data must be 1 to 256 characters without control characters",
        ));
    }
    Ok(())
}

pub async fn put_subject(
    State(app): State<Arc<App>>,
    Extension(who): Extension<crate::access_api::Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    check_subject_id(&id)?;
    if body.len() > MAX_SUBJECT_BYTES {
        return Err(ApiError::new(
            Code::PayloadTooLarge,
            format!("attributes larger than {MAX_SUBJECT_BYTES} bytes"),
        ));
    }
    let attributes: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            Code::BadRequest,
            format!(
                "body is not json (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    if !attributes.is_object() {
        return Err(ApiError::new(
            Code::BadRequest,
            "attributes must be a json object",
        ));
    }
    let event_body = json!({"vendor_data": id, "attributes": attributes});
    // Canonical bytes, so the stored write is the same whatever the client's spacing.
    let text = event_body.to_string();
    let canonical = Canon::parse(text.as_bytes())
        .map(|v| v.to_canonical(Mode::Utf8))
        .unwrap_or_else(|_| text.into_bytes());
    let received_at_ms = app.clock.now_millis();
    let appended = app
        .log
        .append(NewEvent {
            received_at_ms,
            source: EventSource::Subject,
            kind: "subject.updated".to_owned(),
            session_id: None,
            didit_event_id: None,
            // Every write is a new version: no dedupe.
            dedupe_keys: Vec::new(),
            body: canonical,
            meta: json!({}),
        })
        .await
        .map_err(|e| ApiError::internal(Code::Unavailable, &e))?;
    let (event_id, offset) = id_and_offset(appended);
    // The attribute names, not their values: those may be personal.
    let names: Vec<&String> = attributes
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    app.record(
        &who.0,
        "subject.updated",
        Some(&id),
        json!({"event_id": event_id.as_str(), "attributes": names}),
    )
    .await;
    // Read-your-writes: a decision made after this answer sees the new
    // attributes.
    let caught_up = applied_within(&app, offset).await;
    Ok(Json(json!({
        "vendor_data": id,
        "attributes": attributes,
        "event_id": event_id.as_str(),
        "updated_at": format_millis(received_at_ms),
        "applied": caught_up,
    }))
    .into_response())
}

pub async fn get_subject(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    check_subject_id(&id)?;
    match app.store.subject(&id).await.map_err(store_err)? {
        Some(v) => Ok(Json(json!({
            "vendor_data": v.subject,
            "attributes": v.attributes,
            "updated_at": format_millis(v.at_ms),
        }))
        .into_response()),
        None => Err(ApiError::new(
            Code::NotFound,
            "no attributes stored for this subject",
        )),
    }
}

fn id_and_offset(appended: Appended) -> (kycd_core::EventId, u64) {
    match appended {
        Appended::New { id, offset } => (id, offset),
        Appended::Duplicate { id } => (id, 0),
    }
}

/// Wait (briefly) until the projector has applied the event at `offset`, so
/// the answer shows its effect; false when it took longer.
async fn applied_within(app: &App, offset: u64) -> bool {
    let mut applied = app.applied.clone();
    let caught_up =
        tokio::time::timeout(Duration::from_secs(5), applied.wait_for(|o| *o >= offset))
            .await
            .is_ok();
    caught_up
}

/// The outcomes a person may decide (a step-up is the policy's to ask).
pub const REVIEW_OUTCOMES: [&str; 4] = ["approve", "decline", "resubmit", "block"];
const MAX_COMMENT_CHARS: usize = 2000;

/// A person's decision on a session, as asked.
#[derive(Debug, Clone)]
pub struct ReviewRequest<'a> {
    pub outcome: &'a str,
    pub comment: &'a str,
    pub nodes: Vec<&'a str>,
    /// The decision the reviewer was looking at, when known: if the
    /// session has been decided again since (by the policy on new results,
    /// or by another reviewer), the review is refused with 409 rather than
    /// overruling what they never saw.
    pub decision_id: Option<&'a str>,
}

/// The part of a [`ReviewRequest`] that is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewField {
    Outcome,
    Comment,
    /// A node that is not one of Didit's features.
    UnknownNode,
    /// Nodes without resubmit, or resubmit without nodes.
    MisplacedNodes,
}

impl ReviewField {
    pub fn message(self) -> String {
        match self {
            Self::Outcome => "outcome must be approve, decline, resubmit or block".into(),
            Self::Comment => {
                format!("a comment is required (1 to {MAX_COMMENT_CHARS} characters)")
            }
            Self::UnknownNode => {
                "nodes must name Didit features, as {\"feature\": \"LIVENESS\"} or \"LIVENESS\""
                    .into()
            }
            Self::MisplacedNodes => {
                "nodes (the steps to redo) go with resubmit, and only with it".into()
            }
        }
    }
}

impl ReviewRequest<'_> {
    /// Check what a reviewer asked for before anything is read or written.
    pub fn check(&self) -> Result<(), ReviewField> {
        if !REVIEW_OUTCOMES.contains(&self.outcome) {
            return Err(ReviewField::Outcome);
        }
        let comment = self.comment.trim();
        if comment.is_empty() || comment.chars().count() > MAX_COMMENT_CHARS {
            return Err(ReviewField::Comment);
        }
        if self.nodes.iter().any(|n| !DIDIT_FEATURES.contains(n)) {
            return Err(ReviewField::UnknownNode);
        }
        if (self.outcome == "resubmit") == self.nodes.is_empty() {
            return Err(ReviewField::MisplacedNodes);
        }
        Ok(())
    }
}

/// What a recorded review answered.
#[derive(Debug, Clone)]
pub struct Reviewed {
    pub event_id: kycd_core::EventId,
    /// Whether the projector applied it within the wait.
    pub applied: bool,
    /// The session's decision afterwards.
    pub decision: Option<Value>,
}

/// Record `reviewer`'s decision on session `id` (shared by the API and the
/// console). The decision is an event in the log: it becomes the session's
/// decision and acts through the outbox like the policy's (it may approve
/// over Didit's review or decline: that is what a reviewer is for).
pub async fn review(
    app: &App,
    reviewer: &str,
    id: &str,
    r: &ReviewRequest<'_>,
) -> Result<Reviewed, ApiError> {
    if let Err(field) = r.check() {
        return Err(ApiError::new(Code::BadRequest, field.message()));
    }
    let comment = r.comment.trim();
    let Some(session) = app.store.get_session(id).await.map_err(store_err)? else {
        return Err(ApiError::new(Code::NotFound, "no such session"));
    };
    // The one node format: `{"feature": ...}`, as in policy files.
    let nodes: Vec<Value> = r.nodes.iter().map(|f| json!({"feature": f})).collect();
    let missing = kycd_engine::actions::missing_steps(session.doc.get("didit_decision"), &nodes);
    if let Some(step) = missing.first() {
        // Feature names come from a fixed list: nothing personal.
        return Err(ApiError::new(
            Code::Unprocessable,
            format!("this session's workflow has no {step} step to redo"),
        ));
    }
    if let Some(seen) = r.decision_id {
        let current = session.doc["decision"]["id"].as_str().unwrap_or_default();
        if current != seen {
            return Err(ApiError::new(
                Code::Conflict,
                "the session has been decided again since that decision; look at it afresh",
            ));
        }
    }
    let appended = app
        .log
        .append(NewEvent {
            received_at_ms: app.clock.now_millis(),
            source: EventSource::Internal,
            kind: kycd_engine::projector::REVIEW_DECIDED.to_owned(),
            session_id: Some(id.to_owned()),
            didit_event_id: None,
            // Every review is its own decision.
            dedupe_keys: Vec::new(),
            body: json!({
                "session_id": id,
                "outcome": r.outcome,
                "comment": comment,
                "nodes": nodes,
                "reviewer": reviewer,
            })
            .to_string()
            .into_bytes(),
            meta: json!({}),
        })
        .await
        .map_err(|e| ApiError::internal(Code::Unavailable, &e))?;
    let (event_id, offset) = id_and_offset(appended);
    let applied = applied_within(app, offset).await;
    let decision = app
        .store
        .get_session(id)
        .await
        .map_err(store_err)?
        .and_then(|s| s.doc.get("decision").cloned());
    Ok(Reviewed {
        event_id,
        applied,
        decision,
    })
}

/// `POST /api/v1/sessions/{id}/review {"outcome", "comment", "nodes"?,
/// "decision_id"?}`: a person decides; see [`review`].
pub async fn post_review(
    State(app): State<Arc<App>>,
    Extension(who): Extension<crate::access_api::Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    if body.len() > MAX_SUBJECT_BYTES {
        return Err(ApiError::new(
            Code::PayloadTooLarge,
            "review body too large",
        ));
    }
    let v: Value = serde_json::from_slice(&body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| ApiError::new(Code::BadRequest, "body must be a JSON object"))?;
    let request = ReviewRequest {
        outcome: v.get("outcome").and_then(Value::as_str).unwrap_or_default(),
        comment: v.get("comment").and_then(Value::as_str).unwrap_or_default(),
        // `{"feature": "LIVENESS"}` (the node format of policy files) or,
        // as before, the bare feature name; anything else is refused.
        nodes: match v.get("nodes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|n| {
                    n.as_str()
                        .or_else(|| n.get("feature").and_then(Value::as_str))
                        .unwrap_or("")
                })
                .collect(),
            Some(_) => vec![""],
        },
        decision_id: v.get("decision_id").and_then(Value::as_str),
    };
    let done = review(&app, &who.0, &id, &request).await?;
    Ok(Json(json!({
        "session_id": id,
        "event_id": done.event_id.as_str(),
        "applied": done.applied,
        "decision": done.decision,
    }))
    .into_response())
}

//! The read API under `/api/v1` (bearer token), and `/healthz`, `/readyz`,
//! `/metrics`. Every list answers `{"items": [...], "next_cursor": ...}`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use kycd_core::when::{format_millis, parse_time};
use kycd_core::EventId;
use kycd_log::store::{SessionQuery, SessionRecord};
use kycd_log::StoredEvent;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, Code};
use crate::App;

type ApiResult = Result<Response, ApiError>;

pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route("/sessions", get(list_sessions))
        .route("/sessions/{session_id}", get(get_session))
        .route(
            "/sessions/{session_id}/review",
            post(crate::decisions::post_review),
        )
        .route("/events/{id}", get(get_event))
        .route("/quarantine", get(list_quarantine))
        .route("/decisions", get(crate::decisions::list_decisions))
        .route("/decisions/{id}", get(crate::decisions::get_decision))
        .route("/shadow", get(crate::decisions::shadow_compare))
        .route("/actions", get(crate::actions_api::list_actions))
        .route("/actions/{id}", get(crate::actions_api::get_action))
        .route(
            "/actions/{id}/retry",
            post(crate::actions_api::retry_action),
        )
        .route("/operator-webhook", get(crate::actions_api::endpoint_state))
        .route(
            "/operator-webhook/enable",
            post(crate::actions_api::enable_endpoint),
        )
        .route("/operator-webhook/replay", post(crate::actions_api::replay))
        .route("/reconcile", post(crate::actions_api::reconcile))
        .route("/cluster", get(get_cluster))
        .route("/audit", get(crate::actions_api::list_audit))
        .route(
            "/tokens",
            get(crate::access_api::list_tokens).post(crate::access_api::post_token),
        )
        .route("/tokens/{id}", delete(crate::access_api::delete_token))
        .route(
            "/subjects/{vendor_data}",
            get(crate::decisions::get_subject).put(crate::decisions::put_subject),
        )
        .route_layer(middleware::from_fn_with_state(
            app,
            crate::access_api::authorize,
        ))
}

/// `GET /api/v1/cluster`: the instances sharing this database, their last
/// heartbeat and the leases each holds (one process holding everything on
/// the embedded store).
async fn get_cluster(State(app): State<Arc<App>>) -> ApiResult {
    let head = app.log.head().await.map_err(store_err)?;
    let mut view = match &app.membership {
        Some(m) => serde_json::to_value(m.view(app.backend.name()).await.map_err(store_err)?)
            .map_err(store_err)?,
        None => json!({
            "backend": app.backend.name(),
            "this_instance": "embedded",
            "instances": [{
                "id": "embedded",
                "alive": true,
                "leases": crate::cluster::EMBEDDED_LEASES,
            }],
            "leases": [],
        }),
    };
    view["log_head"] = json!(head);
    view["projects_here"] =
        json!(app.membership.is_none() || app.roles.projection.borrow().is_some());
    view["applied_here"] = json!(*app.applied.borrow());
    Ok(Json(view).into_response())
}

pub(crate) fn store_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(Code::Unavailable, &e)
}

fn session_json(r: &SessionRecord, full: bool) -> Value {
    let doc = &r.doc;
    let mut out = json!({
        "session_id": r.session_id,
        "vendor_data": r.vendor_data,
        "status": r.status,
        "workflow_id": r.workflow_id,
        "created_at": format_millis(r.created_at_ms),
        "updated_at": format_millis(r.updated_at_ms),
        "sandbox": doc.get("sandbox").and_then(Value::as_bool).unwrap_or(false),
        // kycd's own decision; filled by the decision engine.
        "decision": doc.get("decision").cloned().unwrap_or(Value::Null),
    });
    if full {
        let history: Vec<Value> = doc
            .get("history")
            .and_then(Value::as_array)
            .map(|h| {
                h.iter()
                    .map(|e| {
                        let mut e = e.clone();
                        if let Some(ms) = e.get("received_at_ms").and_then(Value::as_i64) {
                            e["received_at"] = json!(format_millis(ms));
                        }
                        e
                    })
                    .collect()
            })
            .unwrap_or_default();
        out["history"] = Value::Array(history);
        for key in [
            "didit_decision",
            "resubmit_info",
            "corrections",
            "step_up",
            "step_up_of",
            "writeback",
        ] {
            out[key] = doc.get(key).cloned().unwrap_or(Value::Null);
        }
        out["decision_needs_fetch"] = json!(doc
            .get("decision_needs_fetch")
            .and_then(Value::as_bool)
            .unwrap_or(false));
    }
    out
}

async fn get_session(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let Some(r) = app.store.get_session(&id).await.map_err(store_err)? else {
        return Err(ApiError::new(Code::NotFound, "no such session"));
    };
    let mut out = session_json(&r, true);
    let step_ups = app.outbox.step_ups_of(&id).await.map_err(store_err)?;
    out["step_ups"] = json!(step_ups);
    let actions = app
        .outbox
        .list_actions(kycd_log::outbox::ActionQuery {
            session_id: Some(id),
            limit: MAX_LIMIT,
            ..Default::default()
        })
        .await
        .map_err(store_err)?;
    out["actions"] = Value::Array(
        actions
            .iter()
            .map(crate::actions_api::action_json)
            .collect(),
    );
    Ok(Json(out).into_response())
}

#[derive(Debug, Deserialize)]
struct ListParams {
    vendor_data: Option<String>,
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

pub const MAX_LIMIT: usize = 500;
const DEFAULT_LIMIT: usize = 50;

pub(crate) fn parse_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::new(
                Code::BadRequest,
                format!("limit must be a whole number from 1 to {MAX_LIMIT}"),
            )),
        },
    }
}

pub(crate) fn parse_cursor(cursor: Option<&str>) -> Result<Option<u64>, ApiError> {
    cursor
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.strip_prefix("s")
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| ApiError::new(Code::BadRequest, "invalid cursor"))
        })
        .transpose()
}

pub(crate) fn parse_when(app: &App, name: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.filter(|s| !s.is_empty())
        .map(|s| {
            parse_time(s, app.clock.now_millis())
                .map_err(|e| ApiError::new(Code::BadRequest, format!("{name}: {e}")))
        })
        .transpose()
}

async fn list_sessions(State(app): State<Arc<App>>, Query(p): Query<ListParams>) -> ApiResult {
    let limit = parse_limit(p.limit.as_deref())?;
    let q = SessionQuery {
        vendor_data: p.vendor_data.filter(|s| !s.is_empty()),
        status: p.status.filter(|s| !s.is_empty()),
        before_seq: parse_cursor(p.cursor.as_deref())?,
        created_from_ms: parse_when(&app, "since", p.since.as_deref())?,
        created_until_ms: parse_when(&app, "until", p.until.as_deref())?,
        // One more than asked tells whether there is a next page.
        limit: limit + 1,
        ..SessionQuery::default()
    };
    let mut rows = app.store.list_sessions(q).await.map_err(store_err)?;
    let next = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        rows.last().map(|r| format!("s{}", r.seq))
    });
    let items: Vec<Value> = rows.iter().map(|r| session_json(r, false)).collect();
    Ok(Json(json!({"items": items, "next_cursor": next.flatten()})).into_response())
}

fn event_json(e: &StoredEvent) -> Value {
    let body: Value = serde_json::from_slice(&e.body).unwrap_or(Value::Null);
    json!({
        "id": e.id.as_str(),
        "offset": e.offset,
        "source": e.source.as_str(),
        "webhook_type": e.kind,
        "session_id": e.session_id,
        "didit_event_id": e.didit_event_id,
        "received_at": format_millis(e.received_at_ms),
        "signature": e.meta.get("signature"),
        "envelope_only": e.meta.get("envelope_only"),
        "sandbox": e.meta.get("sandbox"),
        "test_webhook": e.meta.get("test_webhook"),
        "headers": e.meta.get("headers"),
        "body": body,
    })
}

async fn get_event(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let id: EventId = id
        .parse()
        .map_err(|_| ApiError::new(Code::NotFound, "no such event"))?;
    match app.log.get(&id).await.map_err(store_err)? {
        Some(e) => Ok(Json(event_json(&e)).into_response()),
        None => Err(ApiError::new(Code::NotFound, "no such event")),
    }
}

#[derive(Debug, Deserialize)]
struct PageParams {
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list_quarantine(State(app): State<Arc<App>>, Query(p): Query<PageParams>) -> ApiResult {
    let limit = parse_limit(p.limit.as_deref())?;
    let cursor = p.cursor.filter(|c| !c.is_empty());
    let mut rows = app
        .log
        .list_quarantine(cursor.as_deref(), limit + 1)
        .await
        .map_err(store_err)?;
    let next = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        rows.last().map(|q| q.id.clone())
    });
    let items: Vec<Value> = rows
        .iter()
        .map(|q| {
            json!({
                "id": q.id,
                "received_at": format_millis(q.received_at_ms),
                "reason": q.reason,
                "size": q.body.len(),
                "body": String::from_utf8_lossy(&q.body),
                "meta": q.meta,
            })
        })
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": next.flatten()})).into_response())
}

pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Ready when the log and the store answer, the log can take writes, the
/// projector is not stuck and the audit chain holds ([`crate::readiness`]).
/// `failing` names what does not pass, and nothing more: no paths, no
/// error texts, since `/readyz` is served on the public listener too.
/// Without a Didit API key kycd still takes webhooks, so that is reported
/// as waiting, not as unready.
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    use crate::readiness::Check;
    let mut checks = serde_json::Map::new();
    let mut failing = Vec::new();
    let head = app.log.head().await;
    let offset = app
        .store
        .consumer_offset(kycd_engine::projector::CONSUMER)
        .await;
    let log_ok = head.is_ok() && app.readiness.passes(Check::EventLog);
    if !log_ok {
        failing.push(Check::EventLog.name());
    }
    if offset.is_err() {
        failing.push("store");
    }
    for check in [Check::Projector, Check::AuditChain] {
        if !app.readiness.passes(check) {
            failing.push(check.name());
        }
    }
    for name in ["event_log", "store", "projector", "audit_chain"] {
        let state = if failing.contains(&name) {
            "failing"
        } else {
            "ok"
        };
        checks.insert(name.into(), json!(state));
    }
    if let (Ok(h), Ok(o)) = (&head, &offset) {
        checks.insert("projector_lag".into(), json!(h.saturating_sub(*o)));
    }
    let mut waiting = Vec::new();
    if app.settings.didit_api_key.is_none() {
        waiting.push("KYCD_DIDIT_API_KEY is not set: calls to Didit's API (decision fetches, write-back, reconciliation) wait until it is");
    }
    if app.settings.webhook_secrets.is_empty() {
        waiting.push("KYCD_WEBHOOK_SECRETS is not set: every webhook delivery is refused");
    }
    if app.settings.api_token.is_none() {
        waiting.push("KYCD_API_TOKEN is not set: /api/v1 refuses every request");
    }
    let ready = failing.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": ready, "failing": failing, "checks": checks, "waiting": waiting})),
    )
        .into_response()
}

/// `/metrics`: the gauges sampled now (the quarantine's size, the
/// projector's lag), then everything in Prometheus's text format.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    if let Ok(n) = app.log.count_quarantine().await {
        metrics::gauge!("kycd_quarantine_size").set(n as f64);
    }
    // Unknown while the log or the store does not answer: NaN, not the
    // last value, which may have been a reassuring 0.
    let (events, seconds) = projector_lag(&app)
        .await
        .map_or((f64::NAN, f64::NAN), |(e, s)| (e as f64, s));
    metrics::gauge!("kycd_projector_lag_events").set(events);
    metrics::gauge!("kycd_projector_lag_seconds").set(seconds);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// How far the projector is behind the log: the events it has not applied,
/// and the age in seconds of the oldest of them (0 when it has caught up).
/// From the store's offset, not the projector's own report, so a projector
/// that has stopped shows a lag that keeps growing. `None` when the log or
/// the store does not answer.
async fn projector_lag(app: &App) -> Option<(u64, f64)> {
    let head = app.log.head().await.ok()?;
    let offset = app
        .store
        .consumer_offset(kycd_engine::projector::CONSUMER)
        .await
        .ok()?;
    let events = head.saturating_sub(offset);
    if events == 0 {
        return Some((0, 0.0));
    }
    let oldest = app.log.read(offset, 1).await.ok()?;
    let seconds = oldest.first().map_or(0.0, |e| {
        (app.clock.now_millis() - e.received_at_ms).max(0) as f64 / 1000.0
    });
    Some((events, seconds))
}

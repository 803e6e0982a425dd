//! `/api/v1/actions` (the outbox and its dead-letter list),
//! `/api/v1/operator-webhook` (the endpoint's health, enabling, replay) and
//! `/api/v1/reconcile` (a backfill on demand), and `/api/v1/audit` (the
//! audit trail, with its hashes, for a regulator).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use kycd_core::when::format_millis;
use kycd_engine::actions::UPDATE_STATUS;
use kycd_log::outbox::{ActionQuery, ActionRecord, ActionState};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::access_api::Principal;
use crate::api::{parse_cursor, parse_limit, parse_when, store_err};
use crate::error::{ApiError, Code};
use crate::App;

type ApiResult = Result<axum::response::Response, ApiError>;

/// Largest JSON body these endpoints read.
const MAX_BODY: usize = 16 * 1024;

pub fn action_json(a: &ActionRecord) -> Value {
    json!({
        "id": a.id,
        "kind": a.kind,
        "state": a.state,
        "session_id": a.session_id,
        "decision_id": a.decision_id,
        "idempotency_key": a.idempotency_key,
        "attempts": a.attempts,
        "next_attempt_at": matches!(a.state, ActionState::Pending).then(|| format_millis(a.next_at_ms)),
        "last_error": a.last_error,
        "result": a.result,
        "payload": a.payload,
        "created_at": format_millis(a.created_at_ms),
        "updated_at": format_millis(a.updated_at_ms),
    })
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    state: Option<String>,
    session_id: Option<String>,
    kind: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

pub async fn list_actions(State(app): State<Arc<App>>, Query(p): Query<ListParams>) -> ApiResult {
    let limit = parse_limit(p.limit.as_deref())?;
    let state = match p.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(ActionState::parse(s).ok_or_else(|| {
            ApiError::new(
                Code::BadRequest,
                "state must be one of pending, running, done, skipped, dead",
            )
        })?),
    };
    let q = ActionQuery {
        state,
        session_id: p.session_id.filter(|s| !s.is_empty()),
        kind: p.kind.filter(|s| !s.is_empty()),
        before_seq: parse_cursor(p.cursor.as_deref())?,
        limit: limit + 1,
        ..ActionQuery::default()
    };
    let mut rows = app.outbox.list_actions(q).await.map_err(store_err)?;
    let next = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        rows.last().map(|r| format!("s{}", r.seq))
    });
    let items: Vec<Value> = rows.iter().map(action_json).collect();
    Ok(Json(json!({"items": items, "next_cursor": next.flatten()})).into_response())
}

pub async fn get_action(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    match app.outbox.get_action(&id).await.map_err(store_err)? {
        Some(a) => Ok(Json(action_json(&a)).into_response()),
        None => Err(ApiError::new(Code::NotFound, "no such action")),
    }
}

/// Redrive a dead (or skipped) action: due now, with a fresh attempt budget.
pub async fn retry_action(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult {
    if let Some(later) = superseded_by(&app, &id).await? {
        return Err(ApiError::new(
            Code::Conflict,
            format!(
                "a later status write-back for this session exists ({}, {}); redriving this one \
                 would set Didit's status back to an older decision's",
                later.id,
                later.state.as_str()
            ),
        ));
    }
    let now = app.clock.now_millis();
    match app.outbox.retry_action(&id, now).await.map_err(store_err)? {
        None => Err(ApiError::new(Code::NotFound, "no such action")),
        Some((a, true)) => {
            tracing::info!(action = %a.id, kind = %a.kind, "action redriven");
            app.record(
                &who.0,
                "action.retried",
                a.session_id.as_deref(),
                json!({"action_id": a.id, "kind": a.kind}),
            )
            .await;
            Ok(Json(action_json(&a)).into_response())
        }
        Some((a, false)) => Err(ApiError::new(
            Code::Conflict,
            format!(
                "only dead or skipped actions can be retried; this one is {}",
                a.state.as_str()
            ),
        )),
    }
}

/// For a status write-back, the newest later one of its session, if any:
/// only the latest decision's status may be written back. (A later one
/// enqueued after this check runs after the redriven one, as its lane is
/// FIFO, so the latest still wins.)
async fn superseded_by(app: &App, id: &str) -> Result<Option<ActionRecord>, ApiError> {
    let Some(a) = app.outbox.get_action(id).await.map_err(store_err)? else {
        return Ok(None);
    };
    let (UPDATE_STATUS, Some(session)) = (a.kind.as_str(), a.session_id.clone()) else {
        return Ok(None);
    };
    let newest = app
        .outbox
        .list_actions(ActionQuery {
            session_id: Some(session),
            kind: Some(UPDATE_STATUS.to_owned()),
            limit: 1,
            ..ActionQuery::default()
        })
        .await
        .map_err(store_err)?;
    Ok(newest.into_iter().find(|n| n.seq > a.seq))
}

fn endpoint_url(app: &App) -> Result<&str, ApiError> {
    app.settings.operator_webhook_url.as_deref().ok_or_else(|| {
        ApiError::new(
            Code::NotFound,
            "no operator webhook is configured (KYCD_OPERATOR_WEBHOOK_URL)",
        )
    })
}

fn endpoint_json(s: &kycd_log::outbox::EndpointState) -> Value {
    json!({
        "url": s.url,
        "enabled": !s.disabled(),
        "consecutive_failures": s.consecutive_failures,
        "disabled_at": s.disabled_at_ms.map(format_millis),
        "last_success_at": s.last_success_ms.map(format_millis),
        "last_failure_at": s.last_failure_ms.map(format_millis),
        "last_error": s.last_error,
        "retry_schedule_secs": crate::operator_webhook::RETRY_SCHEDULE.iter().map(|d| d.as_secs()).collect::<Vec<_>>(),
        "disable_after_failures": crate::operator_webhook::DISABLE_AFTER_FAILURES,
    })
}

pub async fn endpoint_state(State(app): State<Arc<App>>) -> ApiResult {
    let url = endpoint_url(&app)?;
    let s = app.outbox.endpoint(url).await.map_err(store_err)?;
    Ok(Json(endpoint_json(&s)).into_response())
}

pub async fn enable_endpoint(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
) -> ApiResult {
    let url = endpoint_url(&app)?;
    let s = app.outbox.enable_endpoint(url).await.map_err(store_err)?;
    tracing::info!("operator webhook endpoint enabled");
    app.record(
        &who.0,
        "operator_webhook.enabled",
        None,
        json!({"url": s.url}),
    )
    .await;
    Ok(Json(endpoint_json(&s)).into_response())
}

/// A JSON object body of at most [`MAX_BODY`] bytes (an empty body is `{}`).
fn object_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::new(
            Code::PayloadTooLarge,
            format!("body larger than {MAX_BODY} bytes"),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(ApiError::new(
            Code::BadRequest,
            "body must be a JSON object",
        )),
    }
}

fn time_field(app: &App, body: &Value, name: &str) -> Result<Option<i64>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_when(app, name, Some(s)),
        Some(_) => Err(ApiError::new(
            Code::BadRequest,
            format!("{name} must be a time string"),
        )),
    }
}

/// `{"since": T, "until": T?}`: send again every operator message created
/// in the range, with its original `webhook-id`.
pub async fn replay(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> ApiResult {
    endpoint_url(&app)?;
    let body = object_body(&body)?;
    let since = time_field(&app, &body, "since")?
        .ok_or_else(|| ApiError::new(Code::BadRequest, "since is required"))?;
    let now = app.clock.now_millis();
    let until = time_field(&app, &body, "until")?.unwrap_or(now + 1);
    if until <= since {
        return Err(ApiError::new(Code::BadRequest, "until must be after since"));
    }
    let queued = crate::worker::replay_operator_webhooks(app.outbox.as_ref(), since, until, now)
        .await
        .map_err(store_err)?;
    tracing::info!(queued, "operator webhooks replayed");
    app.record(
        &who.0,
        "operator_webhook.replayed",
        None,
        json!({"since": format_millis(since), "until": format_millis(until), "queued": queued}),
    )
    .await;
    Ok(Json(
        json!({"queued": queued, "since": format_millis(since), "until": format_millis(until)}),
    )
    .into_response())
}

/// `{"since": T}`: a reconciliation pass now, listing Didit's sessions
/// created since T.
pub async fn reconcile(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> ApiResult {
    let body = object_body(&body)?;
    let Some(reconciler) = app.reconciler.clone() else {
        return Err(ApiError::new(
            Code::Unavailable,
            "reconciliation needs Didit's API: set KYCD_DIDIT_API_KEY",
        ));
    };
    let since = time_field(&app, &body, "since")?
        .ok_or_else(|| ApiError::new(Code::BadRequest, "since is required"))?;
    let report = reconciler.pass(since).await;
    app.record(
        &who.0,
        "reconcile.requested",
        None,
        json!({"since": format_millis(since), "fetched": report.fetched, "appended": report.appended}),
    )
    .await;
    Ok(Json(json!({
        "since": format_millis(since),
        "listed": report.listed,
        "fetched": report.fetched,
        "appended": report.appended,
        "errors": report.errors,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct AuditParams {
    since: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// The audit trail, oldest first, each record with its hash and the hash
/// of the one before, and `alg`, how the hash was made: `hmac-sha256`
/// (checkable with the audit key) or `sha256` (records from before it).
pub async fn list_audit(State(app): State<Arc<App>>, Query(p): Query<AuditParams>) -> ApiResult {
    let limit = parse_limit(p.limit.as_deref())?;
    let since = parse_when(&app, "since", p.since.as_deref())?.unwrap_or(i64::MIN);
    let after = parse_cursor(p.cursor.as_deref())?.unwrap_or(0);
    let mut rows = app
        .audit
        .list_audit(since, after, limit + 1)
        .await
        .map_err(store_err)?;
    let next = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        rows.last().map(|r| format!("s{}", r.seq))
    });
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "seq": r.seq,
                "at": format_millis(r.at_ms),
                "actor": r.actor,
                "action": r.action,
                "target": r.target,
                "details": r.details,
                "prev_hash": r.prev_hash,
                "hash": r.hash,
                "alg": r.alg,
            })
        })
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": next.flatten()})).into_response())
}

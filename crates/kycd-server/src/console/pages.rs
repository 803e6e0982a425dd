//! The console's pages and forms. Handlers gather what a page shows into a
//! plain view model; the templates only lay it out.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use kycd_core::when::format_millis;
use kycd_log::access::{Scope, UserInfo};
use kycd_log::cases::{CaseQuery, CaseSort, QUEUE_OUTCOMES};
use kycd_log::outbox::ActionQuery;
use kycd_log::store::StoreError;
use serde::Deserialize;
use serde_json::{json, Value};

use super::charts;
use super::{page_error, render, Posted, Role, User};
use crate::decisions::{ReviewField, ReviewRequest, ShadowComparison};
use crate::App;

type Page = Result<Response, Response>;

fn unavailable(e: StoreError) -> Response {
    tracing::error!(error = %e, "console: store unavailable");
    page_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "kycd cannot read its store right now.",
    )
}

/// What the layout needs on every page.
pub struct Nav {
    pub username: String,
    pub role: &'static str,
    pub csrf: String,
    pub admin: bool,
    pub active: &'static str,
}

impl Nav {
    fn new(user: &User, active: &'static str) -> Self {
        Self {
            username: user.username.clone(),
            role: match user.role {
                Role::Viewer => "viewer",
                Role::Reviewer => "reviewer",
                Role::Admin => "admin",
            },
            csrf: user.csrf().to_owned(),
            admin: user.role >= Role::Admin,
            active,
        }
    }
}

/// A console path with `id` as one percent-encoded segment: ids come from
/// Didit's payloads and must not be able to name another route.
pub fn case_path(id: &str, rest: &str) -> String {
    format!("/console/cases/{}{rest}", segment(id))
}

/// `s` percent-encoded as one path segment (unreserved characters kept).
fn segment(s: &str) -> percent_encoding::PercentEncode<'_> {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SEGMENT)
}

/// "3 h 12 min": how long ago, for people.
pub fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub csrf: String,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub message: String,
}

// ---------------------------------------------------------------- queue

#[derive(Debug, Deserialize, Default)]
pub struct QueueParams {
    outcome: Option<String>,
    reason: Option<String>,
    assignee: Option<String>,
    sort: Option<String>,
    page: Option<usize>,
    decided: Option<String>,
    recorded: Option<String>,
}

pub struct Link {
    pub label: String,
    pub count: u64,
    pub href: String,
    pub active: bool,
}

pub struct QueueRow {
    pub session_id: String,
    pub href: String,
    pub subject: String,
    pub score: String,
    pub reasons: String,
    pub age: String,
    pub didit_status: String,
    pub assignee: String,
}

#[derive(Template)]
#[template(path = "queue.html")]
pub struct QueuePage {
    pub nav: Nav,
    pub flash: Option<String>,
    pub outcome: String,
    pub outcomes: Vec<Link>,
    pub reasons: Vec<Link>,
    pub assignees: Vec<Link>,
    pub sorts: Vec<Link>,
    pub rows: Vec<QueueRow>,
    pub total: u64,
    pub oldest: Option<String>,
    pub filtered: bool,
    pub clear_href: String,
    pub prev_href: Option<String>,
    pub next_href: Option<String>,
}

const PAGE_SIZE: usize = 50;

/// A queue link with one parameter changed (and the page reset).
fn queue_href(p: &QueueParams, key: &str, value: Option<&str>) -> String {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    let mut put = |k: &'static str, v: Option<&String>| {
        let v = if k == key {
            value.map(str::to_owned)
        } else {
            v.cloned()
        };
        if let Some(v) = v {
            pairs.push((k, v));
        }
    };
    put("outcome", p.outcome.as_ref());
    put("reason", p.reason.as_ref());
    put("assignee", p.assignee.as_ref());
    put("sort", p.sort.as_ref());
    let page = (key == "page").then(|| value.map(str::to_owned)).flatten();
    if let Some(page) = page {
        pairs.push(("page", page));
    }
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    if query.is_empty() {
        "/console/".into()
    } else {
        format!("/console/?{query}")
    }
}

pub async fn queue(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Query(p): Query<QueueParams>,
) -> Page {
    let outcome = p
        .outcome
        .clone()
        .filter(|o| QUEUE_OUTCOMES.contains(&o.as_str()))
        .unwrap_or_else(|| "review".into());
    let sort = match p.sort.as_deref() {
        Some("risk") => CaseSort::Risk,
        _ => CaseSort::Age,
    };
    let page_no = p.page.unwrap_or(0).min(10_000);
    let now = app.clock.now_millis();
    let q = CaseQuery {
        outcome: Some(outcome.clone()),
        reason: p.reason.clone().filter(|r| !r.is_empty()),
        assignee: p.assignee.clone(),
        sort,
        limit: PAGE_SIZE,
        offset: page_no * PAGE_SIZE,
    };
    let page = app.cases.queue(q).await.map_err(unavailable)?;
    let outcomes = QUEUE_OUTCOMES
        .iter()
        .map(|o| Link {
            label: (*o).to_owned(),
            count: page
                .by_outcome
                .iter()
                .find(|(k, _)| k == o)
                .map_or(0, |(_, n)| *n),
            href: {
                let base = QueueParams {
                    outcome: Some((*o).to_owned()),
                    sort: p.sort.clone(),
                    ..QueueParams::default()
                };
                queue_href(&base, "", None)
            },
            active: *o == outcome,
        })
        .collect();
    let reasons = page
        .by_reason
        .iter()
        .map(|(r, n)| Link {
            label: r.clone(),
            count: *n,
            href: queue_href(&p, "reason", Some(r)),
            active: p.reason.as_deref() == Some(r),
        })
        .collect();
    let assignees = page
        .by_assignee
        .iter()
        .map(|(a, n)| Link {
            label: if a.is_empty() {
                "unassigned".into()
            } else {
                a.clone()
            },
            count: *n,
            href: queue_href(&p, "assignee", Some(a)),
            active: p.assignee.as_deref() == Some(a),
        })
        .collect();
    let sorts = [("age", "oldest first"), ("risk", "highest risk first")]
        .iter()
        .map(|(key, label)| Link {
            label: (*label).to_owned(),
            count: 0,
            href: queue_href(&p, "sort", Some(key)),
            active: (sort == CaseSort::Risk) == (*key == "risk"),
        })
        .collect();
    let rows = page
        .cases
        .iter()
        .map(|c| QueueRow {
            href: case_path(&c.session_id, ""),
            session_id: c.session_id.clone(),
            subject: c.subject.clone().unwrap_or_default(),
            score: format!("{:.0}", c.score),
            reasons: c.reasons.join(", "),
            age: age(now - c.decided_at_ms),
            didit_status: c.didit_status.clone(),
            assignee: c.assignee.clone().unwrap_or_default(),
        })
        .collect();
    let shown_to = (page_no + 1) * PAGE_SIZE;
    let flash = match (&p.decided, &p.recorded) {
        (Some(id), _) => Some(format!(
            "Your decision on {id} was recorded; it has left the queue."
        )),
        (None, Some(id)) => Some(format!(
            "Your decision on {id} was recorded; the queue catches up in a moment."
        )),
        _ => None,
    };
    Ok(render(&QueuePage {
        nav: Nav::new(&user, "queue"),
        flash,
        outcome: outcome.clone(),
        outcomes,
        reasons,
        assignees,
        sorts,
        rows,
        total: page.total,
        oldest: page.oldest_ms.map(|t| age(now - t)),
        filtered: p.reason.is_some() || p.assignee.is_some(),
        clear_href: queue_href(
            &QueueParams {
                outcome: Some(outcome),
                sort: p.sort.clone(),
                ..QueueParams::default()
            },
            "",
            None,
        ),
        prev_href: (page_no > 0).then(|| queue_href(&p, "page", Some(&(page_no - 1).to_string()))),
        next_href: ((shown_to as u64) < page.total)
            .then(|| queue_href(&p, "page", Some(&(page_no + 1).to_string()))),
    }))
}

// ----------------------------------------------------------------- case

pub struct Field {
    pub name: String,
    pub value: String,
}

pub struct Hit {
    pub caption: String,
    pub match_score: String,
    pub risk_score: String,
    pub datasets: String,
    pub kinds: String,
    pub review_status: String,
}

pub struct Feature {
    pub title: String,
    pub node_id: String,
    pub status: String,
    /// `in-review` for `In Review`: a CSS class.
    pub status_class: String,
    pub score: Option<String>,
    pub warnings: Vec<String>,
    pub fields: Vec<Field>,
    pub images: Vec<Field>,
    pub hits: Vec<Hit>,
}

pub struct Reason {
    pub rule: String,
    pub text: String,
}

pub struct TraceRow {
    pub rule: String,
    pub kind: String,
    pub fired: bool,
    pub score: i64,
    pub outcome: String,
    pub detail: String,
}

pub struct HistoryRow {
    pub at: String,
    pub status: String,
    pub webhook_type: String,
    pub source: String,
    pub note: String,
}

pub struct LinkedSubject {
    pub kind: String,
    pub subject: String,
    pub seen: String,
}

pub struct StepUpRow {
    pub session_id: String,
    pub checks: String,
    pub state: String,
    pub requested: String,
}

pub struct ActionRow {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub attempts: u32,
    pub last_error: String,
    pub updated: String,
}

#[derive(Template)]
#[template(path = "case.html")]
pub struct CasePage {
    pub nav: Nav,
    pub error: Option<String>,
    pub session_id: String,
    /// `/console/cases/ID/decide` and `/assign`, encoded.
    pub decide_href: String,
    pub assign_href: String,
    pub subject: String,
    pub didit_status: String,
    pub workflow_id: String,
    pub outcome: String,
    pub score: String,
    pub decided_by: String,
    pub decided_at: String,
    pub decision_id: String,
    pub in_queue: bool,
    pub assignee: String,
    pub reasons: Vec<Reason>,
    pub trace: Vec<TraceRow>,
    pub features: Vec<Feature>,
    pub attributes: Vec<Field>,
    pub linked: Vec<LinkedSubject>,
    pub history: Vec<HistoryRow>,
    pub step_ups: Vec<StepUpRow>,
    pub actions: Vec<ActionRow>,
    pub can_decide: bool,
    pub outcomes: Vec<&'static str>,
    pub resubmit_steps: Vec<&'static str>,
}

const FEATURES: [(&str, &str); 10] = [
    ("id_verifications", "Document"),
    ("nfc_verifications", "NFC chip"),
    ("liveness_checks", "Liveness"),
    ("face_matches", "Face match"),
    ("aml_screenings", "AML screening"),
    ("ip_analyses", "IP address and device"),
    ("phone_verifications", "Phone"),
    ("email_verifications", "Email"),
    ("poa_verifications", "Proof of address"),
    ("database_validations", "Database validation"),
];

fn is_link(key: &str, v: &Value) -> bool {
    let k = key.to_ascii_lowercase();
    v.as_str()
        .is_some_and(|s| s.starts_with("https://") || s.starts_with("http://"))
        && (k.contains("image") || k.contains("video") || k.contains("url") || k.contains("file"))
}

fn warning_text(w: &Value) -> String {
    match w {
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let get = |k: &str| o.get(k).and_then(Value::as_str);
            match (get("risk"), get("short_description").or(get("description"))) {
                (Some(r), Some(d)) => format!("{r}: {d}"),
                (Some(r), None) => r.to_owned(),
                (None, Some(d)) => d.to_owned(),
                (None, None) => w.to_string(),
            }
        }
        other => other.to_string(),
    }
}

fn hits(item: &Value) -> Vec<Hit> {
    let list = |v: &Value| -> String {
        v.as_array()
            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(", "))
            .unwrap_or_else(|| if v.is_null() { String::new() } else { text(v) })
    };
    item["hits"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| {
                    let kinds: Vec<&str> = [
                        ("pep_matches", "PEP"),
                        ("sanction_matches", "sanctions"),
                        ("adverse_media_matches", "adverse media"),
                    ]
                    .iter()
                    .filter(|(k, _)| {
                        h.get(*k).is_some_and(|v| {
                            v.as_array().is_some_and(|a| !a.is_empty())
                                || v.as_bool() == Some(true)
                                || v.as_u64().is_some_and(|n| n > 0)
                        })
                    })
                    .map(|(_, l)| *l)
                    .collect();
                    Hit {
                        caption: h
                            .get("caption")
                            .or(h.get("name"))
                            .map(text)
                            .unwrap_or_default(),
                        match_score: text(&h["match_score"]),
                        risk_score: text(&h["risk_score"]),
                        datasets: list(&h["datasets"]),
                        kinds: kinds.join(", "),
                        review_status: text(&h["review_status"]),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Didit's results, feature by feature, from its decision payload.
pub fn features(decision: &Value) -> Vec<Feature> {
    let mut out = Vec::new();
    for (key, title) in FEATURES {
        let Some(items) = decision.get(key).and_then(Value::as_array) else {
            continue;
        };
        for item in items {
            let Some(obj) = item.as_object() else {
                continue;
            };
            let mut fields = Vec::new();
            let mut images = Vec::new();
            for (k, v) in obj {
                if matches!(
                    k.as_str(),
                    "node_id" | "status" | "score" | "warnings" | "hits"
                ) {
                    continue;
                }
                if is_link(k, v) {
                    images.push(Field {
                        name: k.clone(),
                        value: text(v),
                    });
                } else if !v.is_object() && !v.is_array() {
                    fields.push(Field {
                        name: k.clone(),
                        value: text(v),
                    });
                } else if v
                    .as_array()
                    .is_some_and(|a| a.iter().all(|x| !x.is_object() && !x.is_array()))
                {
                    let joined: Vec<String> =
                        v.as_array().into_iter().flatten().map(text).collect();
                    fields.push(Field {
                        name: k.clone(),
                        value: joined.join(", "),
                    });
                }
            }
            out.push(Feature {
                title: title.to_owned(),
                node_id: text(&item["node_id"]),
                status: text(&item["status"]),
                status_class: text(&item["status"]).to_ascii_lowercase().replace(' ', "-"),
                score: item.get("score").filter(|s| !s.is_null()).map(text),
                warnings: item["warnings"]
                    .as_array()
                    .map(|a| a.iter().map(warning_text).collect())
                    .unwrap_or_default(),
                fields,
                images,
                hits: hits(item),
            });
        }
    }
    out
}

/// The policy's trace: the rules and tables that fired first, then the
/// rest, as evaluated.
fn trace_rows(trace: &Value) -> Vec<TraceRow> {
    let mut trace = trace.clone();
    kycd_policy::expand_trace(&mut trace);
    let Some(rows) = trace.as_array() else {
        return Vec::new();
    };
    let mut out: Vec<TraceRow> = rows
        .iter()
        .map(|t| {
            let mut detail = Vec::new();
            if let Some(hits) = t.get("hits").filter(|h| !h.is_null()) {
                detail.push(format!("rows: {hits}"));
            }
            if let Some(e) = t.get("error").and_then(Value::as_str) {
                detail.push(format!("error: {e}"));
            }
            TraceRow {
                rule: text(&t["id"]),
                kind: text(&t["kind"]),
                fired: t["fired"].as_bool().unwrap_or(false),
                score: t["score"].as_i64().unwrap_or(0),
                outcome: t["outcome"].as_str().unwrap_or_default().to_owned(),
                detail: detail.join("; "),
            }
        })
        .collect();
    out.sort_by_key(|r| !r.fired);
    out
}

#[derive(Debug, Deserialize, Default)]
pub struct CaseParams {
    error: Option<String>,
}

/// Messages a redirect back to the case page may show (by code, so no
/// text from the request is ever echoed).
fn case_error(code: &str) -> Option<&'static str> {
    Some(match code {
        "comment" => "A comment is required (up to 2,000 characters).",
        "nodes" => {
            "Request resubmission of at least one step, and name steps only with resubmission."
        }
        "outcome" => "Choose approve, decline, resubmit or block.",
        "changed" => "This case was decided again while you were looking at it (new results from Didit, or another reviewer). Nothing was recorded: look at it afresh.",
        "unavailable" => {
            "kycd could not record the decision right now; nothing was changed. Try again."
        }
        _ => return None,
    })
}

pub async fn case(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Path(session_id): Path<String>,
    Query(p): Query<CaseParams>,
) -> Page {
    let Some(session) = app
        .store
        .get_session(&session_id)
        .await
        .map_err(unavailable)?
    else {
        return Err(page_error(
            StatusCode::NOT_FOUND,
            "There is no such session.",
        ));
    };
    let now = app.clock.now_millis();
    let doc = &session.doc;
    let summary = &doc["decision"];
    let decision = match summary["id"].as_str() {
        Some(id) => app.store.get_decision(id).await.map_err(unavailable)?,
        None => None,
    };
    let full = decision.as_ref().map(|d| &d.doc).unwrap_or(&Value::Null);
    let subject = session.vendor_data.clone().unwrap_or_default();
    let attributes = if subject.is_empty() {
        Vec::new()
    } else {
        app.store
            .subject(&subject)
            .await
            .map_err(unavailable)?
            .and_then(|v| v.attributes.as_object().cloned())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| Field {
                        name: k.clone(),
                        value: text(v),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let window_from = now - i64::from(app.settings.graph_window_days) * 86_400_000;
    let linked = if subject.is_empty() {
        Vec::new()
    } else {
        app.cases
            .linked(&subject, window_from, 20)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(|(kind, subject, at)| LinkedSubject {
                kind,
                subject,
                seen: format_millis(at),
            })
            .collect()
    };
    let history = doc["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .rev()
                .map(|e| HistoryRow {
                    at: e["received_at_ms"]
                        .as_i64()
                        .map(format_millis)
                        .unwrap_or_default(),
                    status: text(&e["status"]),
                    webhook_type: text(&e["webhook_type"]),
                    source: text(&e["source"]),
                    note: e["skipped"]
                        .as_str()
                        .map(|s| format!("not applied: {s}"))
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let step_ups = app
        .outbox
        .step_ups_of(&session_id)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|s| StepUpRow {
            session_id: s.step_up_session_id,
            checks: s.checks.join(", "),
            state: s.state,
            requested: format_millis(s.requested_at_ms),
        })
        .collect();
    let actions = app
        .outbox
        .list_actions(ActionQuery {
            session_id: Some(session_id.clone()),
            limit: 100,
            ..ActionQuery::default()
        })
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|a| ActionRow {
            id: a.id,
            kind: a.kind,
            state: a.state.as_str().to_owned(),
            attempts: a.attempts,
            last_error: a.last_error.unwrap_or_default(),
            updated: format_millis(a.updated_at_ms),
        })
        .collect();
    let outcome = text(&summary["outcome"]);
    let version = text(&summary["policy_version"]);
    let in_queue = summary.is_object() && version != "reviewer" && outcome != "approve";
    let decided_by = if version == "reviewer" {
        "a reviewer".to_owned()
    } else {
        format!("policy version {version}")
    };
    let assignee = app
        .cases
        .assignee(&session_id)
        .await
        .map_err(unavailable)?
        .unwrap_or_default();
    let reasons = summary["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| Reason {
                    rule: text(&r["rule"]),
                    text: r.get("text").map(text).unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(render(&CasePage {
        nav: Nav::new(&user, "queue"),
        error: p.error.as_deref().and_then(case_error).map(str::to_owned),
        session_id: session.session_id.clone(),
        decide_href: case_path(&session.session_id, "/decide"),
        assign_href: case_path(&session.session_id, "/assign"),
        subject,
        didit_status: session.status.clone(),
        workflow_id: session.workflow_id.clone().unwrap_or_default(),
        outcome,
        score: summary["score"]
            .as_f64()
            .map(|s| format!("{s:.0}"))
            .unwrap_or_else(|| "—".into()),
        decided_by,
        decided_at: text(&summary["decided_at"]),
        decision_id: summary["id"].as_str().unwrap_or_default().to_owned(),
        in_queue,
        assignee,
        reasons,
        trace: trace_rows(&full["trace"]),
        features: features(&doc["didit_decision"]),
        attributes,
        linked,
        history,
        step_ups,
        actions,
        can_decide: user.role >= Role::Reviewer,
        outcomes: crate::decisions::REVIEW_OUTCOMES.to_vec(),
        resubmit_steps: kycd_policy::DIDIT_FEATURES.to_vec(),
    }))
}

fn back_to_case(session_id: &str, error: &str) -> Response {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("error", error)
        .finish();
    Redirect::to(&format!("{}?{q}", case_path(session_id, ""))).into_response()
}

pub async fn decide(
    State(app): State<Arc<App>>,
    Path(session_id): Path<String>,
    posted: Posted,
) -> Page {
    posted.user.require(Role::Reviewer)?;
    let request = ReviewRequest {
        outcome: posted.get("outcome").unwrap_or_default(),
        comment: posted.get("comment").unwrap_or_default(),
        nodes: if posted.get("outcome") == Some("resubmit") {
            posted.all("nodes")
        } else {
            Vec::new()
        },
        decision_id: posted.get("decision_id"),
    };
    if let Err(field) = request.check() {
        let code = match field {
            ReviewField::Outcome => "outcome",
            ReviewField::Comment => "comment",
            ReviewField::UnknownNode | ReviewField::MisplacedNodes => "nodes",
        };
        return Ok(back_to_case(&session_id, code));
    }
    match crate::decisions::review(&app, &posted.user.actor(), &session_id, &request).await {
        Ok(done) => {
            let key = if done.applied { "decided" } else { "recorded" };
            let q: String = form_urlencoded::Serializer::new(String::new())
                .append_pair(key, &session_id)
                .finish();
            Ok(Redirect::to(&format!("/console/?{q}")).into_response())
        }
        Err(e) if e.code == crate::error::Code::NotFound => Err(page_error(
            StatusCode::NOT_FOUND,
            "There is no such session.",
        )),
        Err(e) if e.code == crate::error::Code::Conflict => {
            Ok(back_to_case(&session_id, "changed"))
        }
        Err(e) if e.code == crate::error::Code::Unprocessable => Err(page_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            // Names a step from a fixed list, nothing from the session.
            &format!("Nothing was recorded: {}.", e.message),
        )),
        Err(_) => Ok(back_to_case(&session_id, "unavailable")),
    }
}

pub async fn assign(
    State(app): State<Arc<App>>,
    Path(session_id): Path<String>,
    posted: Posted,
) -> Page {
    posted.user.require(Role::Reviewer)?;
    let take = posted.get("action") != Some("release");
    let who = take.then(|| posted.user.username.clone());
    let found = app
        .cases
        .assign(&session_id, who.clone(), app.clock.now_millis())
        .await
        .map_err(unavailable)?;
    if !found {
        return Err(page_error(StatusCode::NOT_FOUND, "There is no such case."));
    }
    app.record(
        &posted.user.actor(),
        if take {
            "case.assigned"
        } else {
            "case.released"
        },
        Some(&session_id),
        json!({"assignee": who}),
    )
    .await;
    Ok(Redirect::to(&case_path(&session_id, "")).into_response())
}

// ------------------------------------------------------------ dashboard

#[derive(Template)]
#[template(path = "dashboard.html")]
pub struct DashboardPage {
    pub nav: Nav,
    pub decisions_svg: String,
    pub decisions_total: u64,
    pub backlog_svg: String,
    pub backlog: usize,
    pub oldest: String,
    pub intake_svg: String,
    pub intake_total: u64,
    pub failures_total: u64,
    pub actions_svg: String,
    pub action_failures_svg: String,
    pub dead: u64,
}

const HOUR_MS: i64 = 3_600_000;

pub async fn dashboard(State(app): State<Arc<App>>, Extension(user): Extension<User>) -> Page {
    let now = app.clock.now_millis();
    let first_hour = now - now.rem_euclid(HOUR_MS) - 23 * HOUR_MS;
    let rows = app
        .cases
        .decisions_over_time(first_hour, HOUR_MS)
        .await
        .map_err(unavailable)?;
    let outcome_keys: Vec<String> = [
        "approve", "review", "step_up", "resubmit", "decline", "block",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let columns: Vec<(String, Vec<(String, u64)>)> = (0..24)
        .map(|h| {
            let start = first_hour + h * HOUR_MS;
            let label = format_millis(start)[11..16].to_owned();
            let values = rows
                .iter()
                .filter(|(b, _, _)| *b == start)
                .map(|(_, o, n)| (o.clone(), *n))
                .collect();
            (label, values)
        })
        .collect();
    let decisions_total = rows.iter().map(|(_, _, n)| n).sum();
    let ages = app.cases.review_backlog(now).await.map_err(unavailable)?;
    let age_buckets: [(&str, i64); 5] = [
        ("under 1 h", HOUR_MS),
        ("1–4 h", 4 * HOUR_MS),
        ("4–24 h", 24 * HOUR_MS),
        ("1–3 d", 72 * HOUR_MS),
        ("over 3 d", i64::MAX),
    ];
    let mut counts = [0u64; 5];
    for a in &ages {
        let i = age_buckets
            .iter()
            .position(|(_, upto)| a < upto)
            .unwrap_or(4);
        counts[i] += 1;
    }
    let backlog_items: Vec<(String, u64)> = age_buckets
        .iter()
        .zip(counts)
        .map(|((l, _), n)| ((*l).to_owned(), n))
        .collect();
    let minutes = crate::telemetry::activity().recent(60);
    // Every result the intake counts (a second list here had missed
    // `timeout`, so slow bodies never showed on the chart).
    let intake_keys: Vec<String> = crate::intake::DeliveryResult::ALL
        .iter()
        .map(|r| r.as_str().to_owned())
        .collect();
    let intake_columns: Vec<(String, Vec<(String, u64)>)> = minutes
        .iter()
        .map(|m| {
            (
                format_millis(m.start_ms)[11..16].to_owned(),
                m.counts
                    .iter()
                    .filter(|(k, _)| intake_keys.iter().any(|x| x == *k))
                    .map(|(k, n)| ((*k).to_owned(), *n))
                    .collect(),
            )
        })
        .collect();
    let sum = |key: &str| -> u64 {
        minutes
            .iter()
            .filter_map(|m| m.counts.get(key))
            .sum::<u64>()
    };
    let intake_total = intake_keys.iter().map(|k| sum(k)).sum();
    let failure_columns: Vec<(String, Vec<(String, u64)>)> = minutes
        .iter()
        .map(|m| {
            (
                format_millis(m.start_ms)[11..16].to_owned(),
                ["action_failed", "action_dead"]
                    .iter()
                    .filter_map(|k| m.counts.get(k).map(|n| ((*k).to_owned(), *n)))
                    .collect(),
            )
        })
        .collect();
    let action_counts = app.outbox.action_counts().await.map_err(unavailable)?;
    let mut per_state: BTreeMap<String, u64> = BTreeMap::new();
    for ((_kind, state), n) in &action_counts {
        *per_state.entry(state.clone()).or_default() += n;
    }
    let dead = per_state.get("dead").copied().unwrap_or(0);
    let action_items: Vec<(String, u64)> = action_counts
        .iter()
        .filter(|((_, state), _)| state != "done")
        .map(|((kind, state), n)| (format!("{kind} {state}"), *n))
        .collect();
    Ok(render(&DashboardPage {
        nav: Nav::new(&user, "dashboard"),
        decisions_svg: charts::stacked_bars(
            "Decisions per hour by outcome, last 24 hours",
            &columns,
            &outcome_keys,
        ),
        decisions_total,
        backlog_svg: charts::bars("Review backlog by age", &backlog_items, Some("review")),
        backlog: ages.len(),
        oldest: ages
            .iter()
            .max()
            .map(|a| age(*a))
            .unwrap_or_else(|| "—".into()),
        intake_svg: charts::stacked_bars(
            "Webhook deliveries per minute by result, last hour",
            &intake_columns,
            &intake_keys,
        ),
        intake_total,
        failures_total: sum("invalid_signature"),
        actions_svg: charts::bars("Actions not done, by kind and state", &action_items, None),
        action_failures_svg: charts::stacked_bars(
            "Failed action attempts per minute, last hour",
            &failure_columns,
            &["action_failed".to_owned(), "action_dead".to_owned()],
        ),
        dead,
    }))
}

// --------------------------------------------------------------- policy

pub struct PolicyView {
    pub name: String,
    pub version: String,
    pub file: String,
}

pub struct MatrixRow {
    pub active: String,
    pub cells: Vec<u64>,
}

pub struct Disagreement {
    pub session_id: String,
    pub href: String,
    pub active: String,
    pub shadow: String,
}

#[derive(Template)]
#[template(path = "policy.html")]
pub struct PolicyPage {
    pub nav: Nav,
    pub active: PolicyView,
    pub shadow: Option<PolicyView>,
    pub compared: u64,
    pub agreed: u64,
    pub columns: Vec<String>,
    pub matrix: Vec<MatrixRow>,
    pub disagreements: Vec<Disagreement>,
    pub replay: Option<ReplayView>,
}

/// The latest `kycd replay`, as it saved itself in the data directory.
pub struct ReplayView {
    pub at: String,
    pub candidate: String,
    pub compared: String,
    pub changed: String,
    pub summary: Vec<Field>,
    pub columns: Vec<String>,
    pub matrix: Vec<MatrixRow>,
}

/// A from → to matrix of outcome counts as rows over sorted columns.
fn matrix_rows(matrix: &BTreeMap<String, BTreeMap<String, u64>>) -> (Vec<String>, Vec<MatrixRow>) {
    let mut columns: Vec<String> = matrix
        .values()
        .flat_map(|tos| tos.keys().cloned())
        .collect();
    columns.sort();
    columns.dedup();
    let rows = matrix
        .iter()
        .map(|(from, tos)| MatrixRow {
            cells: columns
                .iter()
                .map(|to| tos.get(to).copied().unwrap_or(0))
                .collect(),
            active: from.clone(),
        })
        .collect();
    (columns, rows)
}

fn replay_view(app: &App) -> Option<ReplayView> {
    let bytes = std::fs::read(app.settings.data_dir.join(crate::REPLAY_REPORT_FILE)).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let report = &v["report"];
    let summary = report
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, x)| !x.is_object() && !x.is_array())
                .map(|(k, x)| Field {
                    name: k.clone(),
                    value: text(x),
                })
                .collect()
        })
        .unwrap_or_default();
    let stored: BTreeMap<String, BTreeMap<String, u64>> =
        serde_json::from_value(report["matrix"].clone()).unwrap_or_default();
    let (columns, matrix) = matrix_rows(&stored);
    Some(ReplayView {
        columns,
        matrix,
        at: text(&v["at"]),
        candidate: text(&v["candidate"]),
        compared: text(report.get("compared").unwrap_or(&Value::Null)),
        changed: text(report.get("changed").unwrap_or(&Value::Null)),
        summary,
    })
}

pub async fn policy(State(app): State<Arc<App>>, Extension(user): Extension<User>) -> Page {
    let active = app.policies.active();
    let view = |p: &kycd_policy::Policy, file: Option<&std::path::PathBuf>| PolicyView {
        name: p.name().to_owned(),
        version: p.version().to_owned(),
        file: file.map_or_else(|| "built in".to_owned(), |f| f.display().to_string()),
    };
    let shadow = app
        .policies
        .shadow
        .as_ref()
        .map(|s| view(s, app.settings.shadow_policy.as_ref()));
    let comparison = match shadow {
        Some(_) => ShadowComparison::of(app.store.shadow_pairs(500).await.map_err(unavailable)?),
        None => ShadowComparison::default(),
    };
    let (columns, matrix) = matrix_rows(&comparison.matrix);
    let disagreements = comparison
        .disagreements
        .into_iter()
        .map(|p| Disagreement {
            href: case_path(&p.session_id, ""),
            session_id: p.session_id,
            active: p.active,
            shadow: p.shadow,
        })
        .collect();
    Ok(render(&PolicyPage {
        nav: Nav::new(&user, "policy"),
        active: view(&active, app.settings.policy.as_ref()),
        shadow,
        compared: comparison.compared,
        agreed: comparison.agreed,
        columns,
        matrix,
        disagreements,
        replay: replay_view(&app),
    }))
}

// --------------------------------------------------------------- tokens

pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub scope: &'static str,
    pub created: String,
    pub revoked: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
pub struct TokensPage {
    pub nav: Nav,
    pub tokens: Vec<TokenRow>,
    pub created_id: String,
    pub created_secret: String,
    pub error: Option<String>,
}

async fn tokens_page(
    app: &App,
    user: &User,
    created: Option<(String, String)>,
    error: Option<&str>,
) -> Page {
    let tokens = app
        .access
        .list_tokens()
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|t| TokenRow {
            id: t.id,
            name: t.name,
            scope: t.scope.as_str(),
            created: format_millis(t.created_at_ms),
            revoked: t.revoked_at_ms.map(format_millis).unwrap_or_default(),
        })
        .collect();
    let (created_id, created_secret) = created.unwrap_or_default();
    let mut res = render(&TokensPage {
        nav: Nav::new(user, "tokens"),
        tokens,
        created_id,
        created_secret,
        error: error.map(str::to_owned),
    });
    if error.is_some() {
        *res.status_mut() = StatusCode::BAD_REQUEST;
    }
    Ok(res)
}

pub async fn tokens(State(app): State<Arc<App>>, Extension(user): Extension<User>) -> Page {
    user.require(Role::Admin)?;
    tokens_page(&app, &user, None, None).await
}

pub async fn create_token(State(app): State<Arc<App>>, posted: Posted) -> Page {
    posted.user.require(Role::Admin)?;
    let name = posted
        .get("name")
        .filter(|n| !n.is_empty() && n.len() <= 100);
    let scope = posted.get("scope").and_then(Scope::parse);
    let (Some(name), Some(scope)) = (name, scope) else {
        return tokens_page(
            &app,
            &posted.user,
            None,
            Some("A token needs a name (1 to 100 characters) and a scope."),
        )
        .await;
    };
    let (info, secret) =
        crate::access_api::create_token(app.access.as_ref(), name, scope, app.clock.now_millis())
            .await
            .map_err(unavailable)?;
    app.record(
        &posted.user.actor(),
        "token.created",
        Some(&info.id),
        json!({"scope": scope, "name": name}),
    )
    .await;
    // Shown in this answer only (never in a URL), like the API's.
    tokens_page(&app, &posted.user, Some((info.id, secret)), None).await
}

pub async fn revoke_token(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    posted: Posted,
) -> Page {
    posted.user.require(Role::Admin)?;
    match app
        .access
        .revoke_token(&id, app.clock.now_millis())
        .await
        .map_err(unavailable)?
    {
        Some(t) => {
            app.record(
                &posted.user.actor(),
                "token.revoked",
                Some(&t.id),
                json!({"scope": t.scope}),
            )
            .await;
            Ok(Redirect::to("/console/tokens").into_response())
        }
        None => Err(page_error(StatusCode::NOT_FOUND, "There is no such token.")),
    }
}

// ---------------------------------------------------------------- users

pub struct UserRow {
    pub username: String,
    pub unlock_href: String,
    pub role: String,
    pub created: String,
}

#[derive(Template)]
#[template(path = "users.html")]
pub struct UsersPage {
    pub nav: Nav,
    pub users: Vec<UserRow>,
    pub message: Option<String>,
    pub error: Option<String>,
    pub roles: Vec<&'static str>,
}

async fn users_page(app: &App, user: &User, message: Option<String>, error: Option<&str>) -> Page {
    let users = app
        .access
        .list_users()
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|u| UserRow {
            unlock_href: format!(
                "/console/users/{}/unlock",
                percent_encoding::utf8_percent_encode(
                    &u.username,
                    percent_encoding::NON_ALPHANUMERIC
                )
            ),
            username: u.username,
            role: u.role,
            created: format_millis(u.created_at_ms),
        })
        .collect();
    let mut res = render(&UsersPage {
        nav: Nav::new(user, "users"),
        users,
        message,
        error: error.map(str::to_owned),
        roles: crate::access_api::ROLES.to_vec(),
    });
    if error.is_some() {
        *res.status_mut() = StatusCode::BAD_REQUEST;
    }
    Ok(res)
}

pub async fn users(State(app): State<Arc<App>>, Extension(user): Extension<User>) -> Page {
    user.require(Role::Admin)?;
    users_page(&app, &user, None, None).await
}

/// The shortest password the console accepts for a new user.
const MIN_PASSWORD_CHARS: usize = 12;

pub async fn add_user(State(app): State<Arc<App>>, posted: Posted) -> Page {
    posted.user.require(Role::Admin)?;
    let username = posted.get("username").unwrap_or_default().to_owned();
    let role = posted.get("role").unwrap_or_default().to_owned();
    let password = posted
        .fields
        .iter()
        .find(|(k, _)| k == "password")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let valid_name = !username.is_empty()
        && username.len() <= 64
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if !valid_name
        || !crate::access_api::ROLES.contains(&role.as_str())
        || password.chars().count() < MIN_PASSWORD_CHARS
    {
        return users_page(
            &app,
            &posted.user,
            None,
            Some("A user needs a username (letters, digits, . _ - @; up to 64), a role, and a password of at least 12 characters."),
        )
        .await;
    }
    let hash = tokio::task::spawn_blocking(move || crate::access_api::hash_password(&password))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            page_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The password could not be stored.",
            )
        })?;
    let user = UserInfo {
        username: username.clone(),
        role: role.clone(),
        created_at_ms: app.clock.now_millis(),
    };
    if !app.access.add_user(user, hash).await.map_err(unavailable)? {
        return users_page(&app, &posted.user, None, Some("That username is taken.")).await;
    }
    app.record(
        &posted.user.actor(),
        "user.created",
        Some(&username),
        json!({"role": role}),
    )
    .await;
    users_page(
        &app,
        &posted.user,
        Some(format!("User {username} added as {role}.")),
        None,
    )
    .await
}

/// Lift a user's sign-in pause (after repeated failures).
pub async fn unlock_user(
    State(app): State<Arc<App>>,
    Path(username): Path<String>,
    posted: Posted,
) -> Page {
    posted.user.require(Role::Admin)?;
    let lifted = app
        .access
        .clear_login(&username)
        .await
        .map_err(unavailable)?;
    if lifted {
        app.record(
            &posted.user.actor(),
            "user.unlocked",
            Some(&username),
            json!({}),
        )
        .await;
    }
    let message = if lifted {
        format!("Sign-in for {username} is no longer paused.")
    } else {
        format!("Sign-in for {username} was not paused.")
    };
    users_page(&app, &posted.user, Some(message), None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_id_is_one_path_segment_whatever_it_holds() {
        assert_eq!(
            case_path("c3d4-e5f6", "/decide"),
            "/console/cases/c3d4-e5f6/decide"
        );
        assert_eq!(
            case_path("../tokens/t1/revoke?x=1", "/decide"),
            "/console/cases/..%2Ftokens%2Ft1%2Frevoke%3Fx%3D1/decide"
        );
        assert_eq!(case_path("a b", ""), "/console/cases/a%20b");
    }

    #[test]
    fn ages_read_like_people_say_them() {
        assert_eq!(age(-5), "0 s");
        assert_eq!(age(59_000), "59 s");
        assert_eq!(age(61_000), "1 min");
        assert_eq!(age(3 * HOUR_MS + 12 * 60_000), "3 h 12 min");
        assert_eq!(age(50 * HOUR_MS), "2 d 2 h");
    }

    #[test]
    fn features_show_each_check_with_its_warnings_hits_and_image_links() {
        let d = json!({
            "face_matches": [{"node_id": "f1", "status": "Declined", "score": 41.5,
                "warnings": [{"risk": "LOW_FACE_MATCH_SIMILARITY", "short_description": "low"}],
                "source_image": "https://didit.example/img.jpg"}],
            "aml_screenings": [{"node_id": "a1", "status": "In Review", "total_hits": 1,
                "hits": [{"caption": "A Person", "match_score": 93, "risk_score": 80,
                          "datasets": ["PEP", "Sanctions"], "pep_matches": [{}],
                          "review_status": "Unreviewed"}]}],
        });
        let f = features(&d);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].title, "Face match");
        assert_eq!(f[0].score.as_deref(), Some("41.5"));
        assert_eq!(f[0].warnings, ["LOW_FACE_MATCH_SIMILARITY: low"]);
        assert_eq!(f[0].images[0].value, "https://didit.example/img.jpg");
        assert!(f[0].fields.iter().all(|x| x.name != "source_image"));
        assert_eq!(f[1].hits[0].datasets, "PEP, Sanctions");
        assert_eq!(f[1].hits[0].kinds, "PEP");
        assert!(f[1]
            .fields
            .iter()
            .any(|x| x.name == "total_hits" && x.value == "1"));
    }

    #[test]
    fn queue_links_change_one_filter_and_reset_the_page() {
        let p = QueueParams {
            outcome: Some("review".into()),
            reason: Some("aml hit".into()),
            page: Some(3),
            ..QueueParams::default()
        };
        assert_eq!(
            queue_href(&p, "sort", Some("risk")),
            "/console/?outcome=review&reason=aml+hit&sort=risk"
        );
        assert_eq!(
            queue_href(&p, "page", Some("4")),
            "/console/?outcome=review&reason=aml+hit&page=4"
        );
        assert_eq!(queue_href(&QueueParams::default(), "", None), "/console/");
    }
}

//! Reconciliation: close the gap Didit's short retry window leaves.
//!
//! Didit retries a failed delivery only twice, within about five minutes
//! (docs/didit-protocol.md 1.3), so an outage or a lost delivery leaves kycd without a
//! session's result. Two passes fetch what is missing from Didit's API:
//!
//! - **quiet sessions**: kycd knows the session, it is unfinished (or Didit
//!   decided it but kycd holds no trusted decision) and nothing arrived for
//!   [`Reconciler::after_ms`]: its decision is fetched;
//! - **unknown sessions**: Didit's listing since a date names sessions kycd
//!   never heard of, or whose status differs from kycd's: their decisions
//!   are fetched.
//!
//! What is fetched enters the event log as a `polled` event shaped like a
//! `status.updated` delivery, so it flows through the same state machine,
//! decisions and actions as a webhook. Its dedupe key is the session, the
//! status and a digest of the decision, so polling the same result twice
//! appends it once. Calls go through the Didit client, which keeps to
//! Didit's rate limits (100 decision reads a minute).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use didit::client::{DiditClient, ListSessionsQuery};
use didit::payload::SessionStatus;
use kycd_core::clock::SharedClock;
use kycd_log::store::{SessionQuery, Store};
use kycd_log::{Appended, EventLog, EventSource, NewEvent};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// What one pass did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    /// Sessions Didit listed.
    pub listed: u64,
    /// Decisions fetched.
    pub fetched: u64,
    /// Polled events appended (new results).
    pub appended: u64,
    /// Calls that failed (retried on the next pass).
    pub errors: u64,
}

/// Totals since start, for metrics and the demo's summary.
#[derive(Debug, Default)]
pub struct Totals {
    pub fetched: AtomicU64,
    /// Distinct sessions a polled event was appended for.
    pub sessions: Mutex<std::collections::BTreeSet<String>>,
}

impl Totals {
    pub fn reconciled_sessions(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }
}

pub struct Reconciler {
    pub store: Arc<dyn Store>,
    pub log: Arc<dyn EventLog>,
    pub didit: DiditClient,
    pub clock: SharedClock,
    /// A session quiet for this long is fetched.
    pub after_ms: i64,
    pub totals: Arc<Totals>,
    /// When each session was last fetched, so a session that stays
    /// unfinished at Didit (a link never opened) is asked about at most
    /// once per `after_ms`.
    last_fetch: Mutex<HashMap<String, i64>>,
}

impl Reconciler {
    pub fn new(
        store: Arc<dyn Store>,
        log: Arc<dyn EventLog>,
        didit: DiditClient,
        clock: SharedClock,
        after_ms: i64,
        totals: Arc<Totals>,
    ) -> Self {
        Self {
            store,
            log,
            didit,
            clock,
            after_ms,
            totals,
            last_fetch: Mutex::new(HashMap::new()),
        }
    }

    /// Both passes; the listing covers sessions created since `since_ms`.
    pub async fn pass(&self, since_ms: i64) -> Report {
        let mut report = Report::default();
        self.forget_old_fetches();
        self.quiet_sessions(&mut report).await;
        self.unknown_sessions(since_ms, &mut report).await;
        metrics::counter!("kycd_reconcile_fetched_total").increment(report.fetched);
        metrics::counter!("kycd_reconcile_appended_total").increment(report.appended);
        report
    }

    /// Entries older than `after_ms` no longer hold anything back.
    fn forget_old_fetches(&self) {
        let now = self.clock.now_millis();
        let mut last = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
        last.retain(|_, t| now - *t < self.after_ms);
    }

    fn due(&self, session_id: &str, now: i64) -> bool {
        let mut last = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(session_id) {
            Some(t) if now - *t < self.after_ms => false,
            _ => {
                last.insert(session_id.to_owned(), now);
                true
            }
        }
    }

    async fn quiet_sessions(&self, report: &mut Report) {
        let now = self.clock.now_millis();
        let mut before = None;
        loop {
            let page = match self
                .store
                .list_sessions(SessionQuery {
                    before_seq: before,
                    updated_until_ms: Some(now.saturating_sub(self.after_ms).saturating_add(1)),
                    awaiting_result: true,
                    limit: 500,
                    ..SessionQuery::default()
                })
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "reconciliation could not read sessions");
                    report.errors += 1;
                    return;
                }
            };
            let Some(last) = page.last() else { return };
            before = Some(last.seq);
            for s in page {
                if self.due(&s.session_id, now) {
                    self.fetch(&s.session_id, Some(&s.status), report).await;
                }
            }
        }
    }

    async fn unknown_sessions(&self, since_ms: i64, report: &mut Report) {
        let date_from = kycd_core::when::format_millis(since_ms)
            .get(..10)
            .map(str::to_owned);
        let mut offset = 0u32;
        loop {
            let page = match self
                .didit
                .list_sessions(&ListSessionsQuery {
                    limit: Some(100),
                    offset: Some(offset),
                    date_from: date_from.clone(),
                    ..ListSessionsQuery::default()
                })
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "reconciliation could not list Didit's sessions");
                    report.errors += 1;
                    return;
                }
            };
            let n = page.results.len() as u32;
            for row in &page.results {
                report.listed += 1;
                let Some(id) = row.get("session_id").and_then(Value::as_str) else {
                    continue;
                };
                let didit_status = row.get("status").and_then(Value::as_str);
                let ours = match self.store.get_session(id).await {
                    Ok(s) => s,
                    Err(_) => {
                        report.errors += 1;
                        continue;
                    }
                };
                let differs = match (&ours, didit_status) {
                    (None, _) => true,
                    (Some(s), Some(d)) => s.status != d,
                    (Some(_), None) => false,
                };
                if differs && self.due(id, self.clock.now_millis()) {
                    self.fetch(id, ours.as_ref().map(|s| s.status.as_str()), report)
                        .await;
                }
            }
            if n == 0 || page.next.is_none() {
                return;
            }
            offset += n;
        }
    }

    /// Fetch one session's decision and append it as a polled event when it
    /// tells kycd something new.
    async fn fetch(&self, session_id: &str, ours: Option<&str>, report: &mut Report) {
        let decision = match self.didit.get_decision(session_id).await {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(error = %e, "reconciliation fetch failed; retried on a later pass");
                report.errors += 1;
                return;
            }
        };
        report.fetched += 1;
        self.totals.fetched.fetch_add(1, Ordering::Relaxed);
        let Some(status) = decision.get("status").and_then(Value::as_str) else {
            return;
        };
        let has_result = SessionStatus::from(status).is_decided()
            || matches!(SessionStatus::from(status), SessionStatus::Abandoned);
        if ours == Some(status) && !has_result {
            return;
        }
        let now = self.clock.now_millis();
        let body = polled_body(&decision, status, now.div_euclid(1000), has_result);
        let digest = hex::encode(Sha256::digest(decision.to_string().as_bytes()));
        let event = NewEvent {
            received_at_ms: now,
            source: EventSource::Polled,
            kind: "status.updated".into(),
            session_id: Some(session_id.to_owned()),
            didit_event_id: None,
            dedupe_keys: vec![format!("polled:{session_id}:{status}:{digest}")],
            body: body.to_string().into_bytes(),
            meta: json!({
                "signature": "api",
                "timestamp": now.div_euclid(1000),
                "status": status,
                "sandbox": decision.get("environment").and_then(Value::as_str) == Some("sandbox"),
            }),
        };
        match self.log.append(event).await {
            Ok(Appended::New { .. }) => {
                report.appended += 1;
                if let Ok(mut s) = self.totals.sessions.lock() {
                    s.insert(session_id.to_owned());
                }
            }
            Ok(Appended::Duplicate { .. }) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not log a polled decision");
                report.errors += 1;
            }
        }
    }
}

/// A polled decision as a `status.updated` delivery body.
fn polled_body(decision: &Value, status: &str, timestamp: i64, with_decision: bool) -> Value {
    let mut body = json!({
        "webhook_type": "status.updated",
        "session_id": decision.get("session_id"),
        "status": status,
        "timestamp": timestamp,
    });
    for key in ["vendor_data", "workflow_id", "metadata", "environment"] {
        if let Some(v) = decision.get(key).filter(|v| !v.is_null()) {
            body[key] = v.clone();
        }
    }
    if with_decision {
        body["decision"] = decision.clone();
    }
    body
}

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
//!
//! # Incremental listing
//!
//! The timers' pass ([`Reconciler::incremental_pass`]) does not list the
//! whole lookback every time. The store keeps a cursor,
//! [`LISTING_CURSOR`]: `through_ms`, the newest Didit `created_at` of a
//! walk that completed, meaning every session Didit listed as created up
//! to then was handled. The next walk lists from `through_ms` less
//! [`LISTING_OVERLAP_MS`] (never before the lookback), newest first, and
//! stops at the first row created before that. A first pass, with no
//! cursor, covers the whole lookback, as every pass did before.
//!
//! The boundary: Didit filters and orders the listing by `created_at`
//! only, and `date_from` is documented as a date, so the request asks for
//! the boundary's day and kycd stops reading at the boundary itself (one
//! page covers it unless more than a page of sessions is new). The
//! overlap re-reads the last hour because a session's `created_at` is
//! stamped before Didit commits it: one created just before the newest
//! row kycd saw can become visible after the walk, and with ties and
//! microseconds cut to milliseconds it would be missed by a cursor taken
//! exactly. An hour is far beyond any commit's delay, and it also
//! compares again the statuses of the sessions most likely to change
//! (those of the last hour). A status change of an older session is found
//! by the quiet pass if kycd knows it and awaits a result, and otherwise
//! (one kycd holds as decided, changed later in Didit's console, its
//! delivery lost) by the full walk: once every [`FULL_WALK_EVERY_MS`]
//! (recorded in the store, [`FULL_WALK_CURSOR`], so the cluster's timers
//! holder walks once) the pass lists the whole lookback.
//!
//! Pages are read by offset, newest first, each starting one row before
//! the previous page ended. A session created during the walk pushes
//! rows down (one read twice, harmless); one deleted pushes rows up, and
//! then the first row of the next page is one kycd has not seen: the walk
//! steps back a page rather than skip anything. The cursor moves only
//! after a walk that reached the boundary with every row handled; a
//! listing or store error leaves it where it was, so the next pass reads
//! that range again.
//!
//! A failed fetch does not hold the cursor back. Every fetch is first
//! *taken* in the store's fetch throttle ([`kycd_log::cursors::Cursors::take_fetches`]),
//! unconfirmed, and confirmed only once its result is in the log; the
//! unconfirmed ones (a failure, or a process that died mid-fetch) are
//! fetched again once the throttle's period ([`Reconciler::after_ms`])
//! has passed, for up to the lookback. The throttle lives in the store,
//! so an instance taking over the `timers` lease (or a restarted one)
//! asks Didit about no session the previous holder asked about within
//! the period.

use std::collections::HashSet;
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

/// How far back the timers' passes list Didit's sessions, at most: the
/// first pass (no cursor) covers it all, and a failed fetch is retried for
/// this long.
pub const LISTING_LOOKBACK_MS: i64 = 2 * 86_400_000;

/// How much of what the previous walk saw the next one reads again (see
/// the module's "Incremental listing").
pub const LISTING_OVERLAP_MS: i64 = 3_600_000;

/// The store's cursor of the timers' listing walk.
pub const LISTING_CURSOR: &str = "reconcile/listing";

/// The store's record of the last walk of the whole lookback.
pub const FULL_WALK_CURSOR: &str = "reconcile/full-walk";

/// How often the timers' pass walks the whole lookback instead of what is
/// new: a session kycd holds as decided whose status Didit changed later
/// (a review in Didit's console) and whose delivery was lost is found
/// within this long, at a fraction of walking the lookback every pass.
pub const FULL_WALK_EVERY_MS: i64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, Serialize)]
struct FullWalk {
    at_ms: i64,
}

/// Rows per listing page (Didit's maximum).
const PAGE: u32 = 100;

/// How often one walk may step back after rows moved up under it.
const MAX_STEP_BACKS: u32 = 20;

/// The listing cursor's stored form.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, Serialize)]
struct ListingCursor {
    /// Every session Didit listed as created up to this time was handled.
    through_ms: i64,
}

/// Where one walk of the listing starts and stops.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Walk {
    /// Rows created before this end the walk (`None`: read every page).
    stop_before_ms: Option<i64>,
    /// The `date_from` sent.
    from_ms: i64,
}

impl Walk {
    /// The timers' walk: from the cursor less the overlap, never before
    /// the lookback.
    fn incremental(cursor: Option<i64>, now_ms: i64, lookback_ms: i64, overlap_ms: i64) -> Self {
        let floor = now_ms.saturating_sub(lookback_ms);
        let from = cursor.map_or(floor, |c| c.saturating_sub(overlap_ms).max(floor));
        Self {
            stop_before_ms: Some(from),
            from_ms: from,
        }
    }
}

pub struct Reconciler {
    pub store: Arc<dyn Store>,
    pub log: Arc<dyn EventLog>,
    pub didit: DiditClient,
    pub clock: SharedClock,
    /// A session quiet for this long is fetched; and a session is asked
    /// about at most once per this long (the store's fetch throttle), so
    /// one that stays unfinished at Didit (a link never opened) costs one
    /// read per period.
    pub after_ms: i64,
    pub totals: Arc<Totals>,
    /// See [`LISTING_OVERLAP_MS`]; tests shorten it.
    pub listing_overlap_ms: i64,
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
            listing_overlap_ms: LISTING_OVERLAP_MS,
        }
    }

    /// A backfill (`POST /api/v1/reconcile`, the demo): both passes, the
    /// listing reading every session created since `since_ms`. The cursor
    /// is left alone.
    pub async fn pass(&self, since_ms: i64) -> Report {
        let walk = Walk {
            stop_before_ms: None,
            from_ms: since_ms,
        };
        self.run_walk(walk, None).await.0
    }

    /// The timers' pass: the listing reads only what is new since the
    /// store's cursor (module doc), within `lookback_ms`.
    pub async fn incremental_pass(&self, lookback_ms: i64) -> Report {
        let cursor = match self.store.get_cursor(LISTING_CURSOR).await {
            Ok(c) => c.and_then(|text| serde_json::from_str::<ListingCursor>(&text).ok()),
            Err(e) => {
                tracing::warn!(error = %e, "reconciliation could not read its cursor");
                return Report {
                    errors: 1,
                    ..Report::default()
                };
            }
        };
        let now_ms = self.clock.now_millis();
        let full = match self.store.get_cursor(FULL_WALK_CURSOR).await {
            Ok(c) => c
                .and_then(|text| serde_json::from_str::<FullWalk>(&text).ok())
                .is_none_or(|f| now_ms.saturating_sub(f.at_ms) >= FULL_WALK_EVERY_MS),
            Err(e) => {
                tracing::warn!(error = %e, "reconciliation could not read its cursor");
                return Report {
                    errors: 1,
                    ..Report::default()
                };
            }
        };
        // Now and then the whole lookback, for the status changes of older
        // sessions kycd holds as decided, whose delivery was lost.
        let from = if full {
            None
        } else {
            cursor.map(|c| c.through_ms)
        };
        let walk = Walk::incremental(from, now_ms, lookback_ms, self.listing_overlap_ms);
        let (mut report, completed) = self.run_walk(walk, Some(cursor)).await;
        if full && completed {
            let text = serde_json::to_string(&FullWalk { at_ms: now_ms }).unwrap_or_default();
            if let Err(e) = self.store.set_cursor(FULL_WALK_CURSOR, &text).await {
                tracing::warn!(error = %e, "reconciliation could not record its full walk");
                report.errors += 1;
            }
        }
        report
    }

    /// The passes, and whether the listing's walk completed.
    async fn run_walk(&self, walk: Walk, cursor: Option<Option<ListingCursor>>) -> (Report, bool) {
        let mut report = Report::default();
        self.forget_old_fetches().await;
        self.quiet_sessions(&mut report).await;
        self.unconfirmed(&mut report).await;
        let walked = self.unknown_sessions(walk, &mut report).await;
        if let (Some(old), Some(Some(newest))) = (cursor, walked) {
            let through = old.map_or(newest, |c| c.through_ms.max(newest));
            if old.map(|c| c.through_ms) != Some(through) {
                let text = serde_json::to_string(&ListingCursor {
                    through_ms: through,
                })
                .unwrap_or_default();
                if let Err(e) = self.store.set_cursor(LISTING_CURSOR, &text).await {
                    tracing::warn!(error = %e, "reconciliation could not move its cursor");
                    report.errors += 1;
                }
            }
        }
        metrics::counter!("kycd_reconcile_fetched_total").increment(report.fetched);
        metrics::counter!("kycd_reconcile_appended_total").increment(report.appended);
        let completed = walked.is_some();
        (report, completed)
    }

    /// Confirmed fetches older than `after_ms` no longer hold anything
    /// back; unconfirmed ones older than the lookback are given up on.
    async fn forget_old_fetches(&self) {
        let now = self.clock.now_millis();
        if let Err(e) = self
            .store
            .forget_fetches(
                now.saturating_sub(self.after_ms),
                now.saturating_sub(LISTING_LOOKBACK_MS),
            )
            .await
        {
            tracing::warn!(error = %e, "reconciliation could not forget old fetches");
        }
    }

    /// Of `ids`, those to fetch now (taken in the store's throttle).
    async fn due(&self, ids: Vec<String>, report: &mut Report) -> Option<HashSet<String>> {
        if ids.is_empty() {
            return Some(HashSet::new());
        }
        match self
            .store
            .take_fetches(&ids, self.clock.now_millis(), self.after_ms)
            .await
        {
            Ok(taken) => Some(taken.into_iter().collect()),
            Err(e) => {
                tracing::warn!(error = %e, "reconciliation could not take fetches");
                report.errors += 1;
                None
            }
        }
    }

    /// Fetches that failed, or whose process stopped mid-fetch, again.
    async fn unconfirmed(&self, report: &mut Report) {
        let until = self.clock.now_millis().saturating_sub(self.after_ms);
        let ids = match self.store.unconfirmed_fetches(until, 500).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "reconciliation could not read failed fetches");
                report.errors += 1;
                return;
            }
        };
        let Some(due) = self.due(ids.clone(), report).await else {
            return;
        };
        for id in ids.iter().filter(|id| due.contains(*id)) {
            let ours = match self.store.get_session(id).await {
                Ok(s) => s.map(|s| s.status),
                Err(_) => {
                    report.errors += 1;
                    continue;
                }
            };
            self.fetch(id, ours.as_deref(), report).await;
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
            let ids = page.iter().map(|s| s.session_id.clone()).collect();
            let Some(due) = self.due(ids, report).await else {
                return;
            };
            for s in page.iter().filter(|s| due.contains(&s.session_id)) {
                self.fetch(&s.session_id, Some(&s.status), report).await;
            }
        }
    }

    /// Walk Didit's listing; `Some(newest created_at seen)` when the walk
    /// reached its end with every row handled, `None` when it did not.
    async fn unknown_sessions(&self, walk: Walk, report: &mut Report) -> Option<Option<i64>> {
        let date_from = kycd_core::when::format_millis(walk.from_ms)
            .get(..10)
            .map(str::to_owned);
        let mut seen: HashSet<String> = HashSet::new();
        let mut newest: Option<i64> = None;
        let mut complete = true;
        let mut offset = 0u32;
        let mut step_backs = 0;
        loop {
            let page = match self
                .didit
                .list_sessions(&ListSessionsQuery {
                    limit: Some(PAGE),
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
                    return None;
                }
            };
            let id_of = |row: &Value| {
                row.get("session_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            // Each page after the first starts on a row the walk has seen,
            // unless rows moved up (a session deleted): then step back.
            if offset > 0
                && page
                    .results
                    .first()
                    .and_then(id_of)
                    .is_some_and(|id| !seen.contains(&id))
            {
                step_backs += 1;
                if step_backs > MAX_STEP_BACKS {
                    return None;
                }
                offset = offset.saturating_sub(PAGE - 1);
                continue;
            }
            let n = page.results.len() as u32;
            let mut reached_end = false;
            let mut differing = Vec::new();
            for row in &page.results {
                let created = row
                    .get("created_at")
                    .and_then(Value::as_str)
                    .and_then(|t| kycd_core::when::parse_time(t, 0).ok());
                if let (Some(stop), Some(c)) = (walk.stop_before_ms, created) {
                    if c < stop {
                        reached_end = true;
                        break;
                    }
                }
                let Some(id) = id_of(row) else {
                    continue;
                };
                if !seen.insert(id.clone()) {
                    continue;
                }
                report.listed += 1;
                if let Some(c) = created {
                    newest = Some(newest.map_or(c, |n| n.max(c)));
                }
                let didit_status = row.get("status").and_then(Value::as_str);
                let ours = match self.store.get_session(&id).await {
                    Ok(s) => s,
                    Err(_) => {
                        report.errors += 1;
                        complete = false;
                        continue;
                    }
                };
                let differs = match (&ours, didit_status) {
                    (None, _) => true,
                    (Some(s), Some(d)) => s.status != d,
                    (Some(_), None) => false,
                };
                if differs {
                    differing.push((id, ours.map(|s| s.status)));
                }
            }
            let ids = differing.iter().map(|(id, _)| id.clone()).collect();
            match self.due(ids, report).await {
                Some(due) => {
                    for (id, ours) in differing.iter().filter(|(id, _)| due.contains(id)) {
                        self.fetch(id, ours.as_deref(), report).await;
                    }
                }
                None => complete = false,
            }
            if reached_end || n == 0 || page.next.is_none() {
                return complete.then_some(newest);
            }
            offset += n - 1;
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
            self.confirm(session_id).await;
            return;
        };
        let has_result = SessionStatus::from(status).is_decided()
            || matches!(SessionStatus::from(status), SessionStatus::Abandoned);
        if ours == Some(status) && !has_result {
            self.confirm(session_id).await;
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
                self.confirm(session_id).await;
            }
            Ok(Appended::Duplicate { .. }) => self.confirm(session_id).await,
            Err(e) => {
                tracing::warn!(error = %e, "could not log a polled decision");
                report.errors += 1;
            }
        }
    }
}

impl Reconciler {
    /// The fetch taken of `session_id` got its result into the log.
    async fn confirm(&self, session_id: &str) {
        if let Err(e) = self.store.fetch_succeeded(session_id).await {
            // Unconfirmed, it is fetched once more a period later: harmless.
            tracing::warn!(error = %e, "reconciliation could not confirm a fetch");
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

//! The outbox workers: execute what decisions imply, exactly once in effect.
//!
//! A worker claims due actions ([`Outbox::claim`]), runs each, and records
//! the result. Failures are retried with exponential backoff and full
//! jitter (Didit actions) or on the published operator webhook schedule
//! ([`operator_webhook::RETRY_SCHEDULE`]); a rate limit is retried when
//! Didit's `Retry-After` says. An action that keeps failing, or fails in a
//! way that cannot get better (Didit's 400 on a transition it does not
//! allow, a 404), goes to the dead-letter list for a person to redrive.
//!
//! **Exactly once in effect.** The result is recorded after the call, so a
//! crash between the two repeats the call on restart. Every call here is
//! one Didit treats as a no-op when repeated: setting the status a session
//! already has (200, no webhook), `Resubmitted` on a `Resubmitted` session
//! (a 400 this worker records as done), adding what is already on the
//! blocklist, and creating a session for a `vendor_data` that already has
//! an unfinished one on that workflow (Didit returns the same session).
//! Operator webhooks carry the same `webhook-id` on every attempt so the
//! receiver can drop repeats, as Standard Webhooks prescribes.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use didit::client::{
    ApiError, BlocklistAdd, CreateSessionRequest, DiditClient, NewStatus, NodeToResubmit,
    UpdateStatusRequest,
};
use kycd_core::clock::SharedClock;
use kycd_engine::actions::{self, OPERATOR_WEBHOOK};
use kycd_engine::projector::{STEP_UP_CHECK_META, STEP_UP_CREATED, STEP_UP_EXPIRED, STEP_UP_META};
use kycd_log::outbox::{ActionRecord, Finish, Holder, NewAction, Outbox};
use kycd_log::{EventLog, EventSource, NewEvent};
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::ca_bundle::CaBundle;
use crate::operator_webhook::{self, Message, SendError, Sender};

/// Every `result` of `kycd_actions_total` ([`result_label`]).
pub const RESULTS: [&str; 4] = ["done", "skipped", "retry", "dead"];

/// How an attempt ended, as `kycd_actions_total` counts it.
fn result_label(finish: &Finish) -> &'static str {
    let [done, skipped, retry, dead] = RESULTS;
    match finish {
        Finish::Done(_) => done,
        Finish::Skipped(_) => skipped,
        Finish::Retry { .. } => retry,
        Finish::Dead(_) => dead,
    }
}

/// How long a claim holds an action before another worker may take it.
const LEASE_MS: i64 = 60_000;
/// Largest portrait Didit accepts for a biometric re-authentication.
pub const MAX_PORTRAIT_BYTES: usize = 1024 * 1024;

/// What the workers need besides the outbox.
#[derive(Clone)]
pub struct WorkerConfig {
    pub max_attempts: u32,
    /// First retry delay for Didit actions; doubles per attempt, capped at
    /// ten minutes, full jitter.
    pub backoff_base_ms: i64,
    /// Divides every delay (tests and the demo).
    pub time_scale: f64,
    pub step_up_workflows: std::collections::BTreeMap<String, String>,
    /// How long a customer has for a step-up, already under `time_scale`.
    pub step_up_expiry_ms: i64,
}

impl WorkerConfig {
    fn scaled(&self, ms: i64) -> i64 {
        crate::settings::scale_ms(ms as f64, self.time_scale)
    }

    fn backoff_ms(&self, attempt: u32) -> i64 {
        let cap = 600_000i64;
        let exp = self
            .backoff_base_ms
            .saturating_mul(1i64 << attempt.saturating_sub(1).min(20))
            .min(cap);
        let jittered = rand::thread_rng().gen_range(exp / 2..=exp.max(1));
        self.scaled(jittered)
    }
}

/// The client that fetches Didit's signed media links (a step-up's
/// portrait), trusting `roots` besides the built-in roots.
pub fn media_client(roots: &CaBundle) -> reqwest::Result<reqwest::Client> {
    roots
        .apply(reqwest::Client::builder())
        .timeout(Duration::from_secs(15))
        .build()
}

pub struct Worker {
    pub outbox: Arc<dyn Outbox>,
    pub log: Arc<dyn EventLog>,
    pub didit: Option<DiditClient>,
    pub operator: Option<Sender>,
    pub clock: SharedClock,
    pub config: WorkerConfig,
    /// For fetching portraits from Didit's signed media links.
    pub http: reqwest::Client,
    /// Whether this instance runs the operator webhook lane (one instance
    /// of a cluster at a time, so the endpoint receives in order).
    pub operator_lane: watch::Receiver<bool>,
    /// Who this worker's claims are recorded as held by: this instance's
    /// id and epoch.
    pub holder: Holder,
    /// Hand back every running action at start: right for one process
    /// (what runs is this process's previous run's), wrong when other
    /// instances share the outbox. Without it only the claims of this
    /// instance id's earlier runs are handed back ([`Holder`]); other
    /// instances' claims expire by their lease.
    pub release_at_start: bool,
}

enum Outcome {
    Finish(Finish),
    /// Retry on the action kind's own schedule.
    Failed(String),
}

impl Worker {
    /// Run until `stop`: Didit actions (a few at a time) and operator
    /// webhooks (one at a time, in order) in two loops. `wake` ticks when
    /// new actions may be due (the projector committed).
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>, wake: watch::Receiver<u64>) {
        let now = self.clock.now_millis();
        let released = if self.release_at_start {
            self.outbox.release_running(now).await
        } else {
            self.outbox.release_claims_of(&self.holder, now).await
        };
        match released {
            Ok(n) if n > 0 => tracing::info!(
                actions = n,
                "actions interrupted by a restart are due again"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not release interrupted actions"),
        }
        let didit = {
            let me = self.clone();
            let (stop, wake) = (stop.clone(), wake.clone());
            tokio::spawn(async move { me.lane(false, 8, stop, wake).await })
        };
        self.clone().lane(true, 1, stop, wake).await;
        let _ = didit.await;
    }

    async fn lane(
        self: Arc<Self>,
        operator: bool,
        batch: usize,
        mut stop: watch::Receiver<bool>,
        mut wake: watch::Receiver<u64>,
    ) {
        loop {
            if *stop.borrow() {
                return;
            }
            let worked = match self.exclusions(operator).await {
                Some(exclude) => self.round(batch, exclude).await,
                None => 0,
            };
            if worked > 0 {
                continue;
            }
            tokio::select! {
                r = stop.changed() => if r.is_err() { return },
                r = wake.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// The kinds this lane must not claim; `None` when it has nothing to do.
    async fn exclusions(&self, operator: bool) -> Option<Vec<String>> {
        let didit_kinds = [actions::UPDATE_STATUS, actions::BLOCKLIST, actions::STEP_UP];
        if operator {
            let sender = self.operator.as_ref()?;
            if !*self.operator_lane.borrow() {
                return None;
            }
            // A disabled endpoint's messages wait until it is enabled.
            let state = self.outbox.endpoint(sender.url()).await.ok()?;
            if state.disabled() {
                return None;
            }
            Some(didit_kinds.iter().map(|k| (*k).to_owned()).collect())
        } else {
            // Without an API key, Didit actions wait (readyz says why).
            self.didit.as_ref()?;
            Some(vec![OPERATOR_WEBHOOK.to_owned()])
        }
    }

    async fn round(self: &Arc<Self>, batch: usize, exclude: Vec<String>) -> usize {
        let now = self.clock.now_millis();
        let claimed = match self
            .outbox
            .claim(&self.holder, now, LEASE_MS, batch, exclude)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not claim actions");
                return 0;
            }
        };
        let n = claimed.len();
        let mut runs = tokio::task::JoinSet::new();
        for a in claimed {
            let me = self.clone();
            runs.spawn(async move { me.execute(a).await });
        }
        while runs.join_next().await.is_some() {}
        n
    }

    async fn execute(&self, action: ActionRecord) {
        let outcome = match action.kind.as_str() {
            actions::UPDATE_STATUS => self.update_status(&action).await,
            actions::BLOCKLIST => self.blocklist(&action).await,
            actions::STEP_UP => self.step_up(&action).await,
            OPERATOR_WEBHOOK => self.operator_webhook(&action).await,
            other => Outcome::Finish(Finish::Dead(format!("unknown action kind {other:?}"))),
        };
        let now = self.clock.now_millis();
        let finish = match outcome {
            Outcome::Finish(f) => f,
            Outcome::Failed(error) => self.retry_or_die(&action, error, now),
        };
        let label = result_label(&finish);
        metrics::counter!("kycd_actions_total", "kind" => action.kind.clone(), "result" => label)
            .increment(1);
        if matches!(finish, Finish::Retry { .. } | Finish::Dead(_)) {
            crate::telemetry::activity().bump(if label == "dead" {
                "action_dead"
            } else {
                "action_failed"
            });
        }
        if let Finish::Dead(why) = &finish {
            tracing::warn!(action = %action.id, kind = %action.kind, error = %why, "action is dead; redrive with POST /api/v1/actions/{{id}}/retry");
        }
        match self
            .outbox
            .finish(&action.id, action.attempts, finish, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(action = %action.id, "action was taken over before it finished")
            }
            Err(e) => {
                tracing::warn!(action = %action.id, error = %e, "could not record an action's result; it will run again")
            }
        }
    }

    fn retry_or_die(&self, action: &ActionRecord, error: String, now: i64) -> Finish {
        if action.kind == OPERATOR_WEBHOOK {
            let schedule = operator_webhook::RETRY_SCHEDULE;
            return match schedule.get(action.attempts as usize - 1) {
                Some(d) => Finish::Retry {
                    error,
                    at_ms: now + self.config.scaled(d.as_millis() as i64),
                },
                None => Finish::Dead(error),
            };
        }
        if action.attempts >= self.config.max_attempts {
            Finish::Dead(error)
        } else {
            Finish::Retry {
                error,
                at_ms: now + self.config.backoff_ms(action.attempts),
            }
        }
    }

    fn client(&self) -> &DiditClient {
        // Didit lanes only run with a client (see `exclusions`).
        self.didit
            .as_ref()
            .expect("didit actions run only with a client")
    }

    /// How a Didit error ends this attempt.
    fn didit_failure(&self, e: ApiError) -> Outcome {
        let text = e.with_causes();
        match &e {
            ApiError::BadRequest { .. }
            | ApiError::NotFound { .. }
            | ApiError::InvalidArgument { .. } => Outcome::Finish(Finish::Dead(text)),
            ApiError::RateLimited { retry_after } => {
                let wait = retry_after.unwrap_or(Duration::from_secs(60)).as_millis() as i64;
                Outcome::Finish(Finish::Retry {
                    error: text,
                    at_ms: self.clock.now_millis() + wait.max(1),
                })
            }
            _ => Outcome::Failed(text),
        }
    }

    async fn update_status(&self, a: &ActionRecord) -> Outcome {
        let p = &a.payload;
        let (Some(session), Some(status)) = (
            p.get("session_id").and_then(Value::as_str),
            p.get("new_status").and_then(Value::as_str),
        ) else {
            return Outcome::Finish(Finish::Dead(
                "payload lacks session_id or new_status".into(),
            ));
        };
        let new_status = match status {
            "Approved" => NewStatus::Approved,
            "Declined" => NewStatus::Declined,
            "Resubmitted" => NewStatus::Resubmitted,
            other => return Outcome::Finish(Finish::Dead(format!("cannot set {other:?}"))),
        };
        let nodes: Vec<NodeToResubmit> = p
            .get("nodes_to_resubmit")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|n| {
                Some(NodeToResubmit {
                    node_id: n.get("node_id")?.as_str()?.to_owned(),
                    feature: n.get("feature")?.as_str()?.to_owned(),
                })
            })
            .collect();
        let mut req = UpdateStatusRequest::new(new_status);
        req.comment = p.get("comment").and_then(Value::as_str).map(str::to_owned);
        req.nodes_to_resubmit = nodes;
        match self.client().update_status(session, &req).await {
            Ok(_) => Outcome::Finish(Finish::Done(json!({"status": status}))),
            Err(e @ ApiError::BadRequest { .. }) => self.refused_update(session, status, e).await,
            Err(e) => self.didit_failure(e),
        }
    }

    /// Didit refused the change: ask where the session is now. Already in
    /// the status (a repeat after a crash, `Resubmitted` twice) is done;
    /// moved on to where no update is allowed (the customer is redoing a
    /// step) makes the decision stale, so the write-back is skipped and the
    /// next result is decided afresh; anything else is a real refusal.
    async fn refused_update(&self, session: &str, wanted: &str, e: ApiError) -> Outcome {
        let now = match self.client().get_decision(session).await {
            Ok(d) => d.get("status").and_then(Value::as_str).map(str::to_owned),
            Err(_) => None,
        };
        match now.as_deref() {
            Some(s) if s == wanted => {
                Outcome::Finish(Finish::Done(json!({"noop": true, "didit": e.to_string()})))
            }
            Some(s) if !actions::UPDATABLE_FROM.contains(&s) => {
                Outcome::Finish(Finish::Skipped(format!(
                    "Didit's session is {s} now, where no update is allowed; the decision is stale"
                )))
            }
            _ => self.didit_failure(e),
        }
    }

    async fn blocklist(&self, a: &ActionRecord) -> Outcome {
        let p = &a.payload;
        let flag = |k: &str| p.get(k).and_then(Value::as_bool).unwrap_or(false);
        let Some(session) = p.get("session_id").and_then(Value::as_str) else {
            return Outcome::Finish(Finish::Dead("payload lacks session_id".into()));
        };
        let req = BlocklistAdd {
            session_id: session.to_owned(),
            blocklist_face: flag("blocklist_face"),
            blocklist_document: flag("blocklist_document"),
            blocklist_phone: flag("blocklist_phone"),
            blocklist_email: flag("blocklist_email"),
        };
        match self.client().blocklist_add(&req).await {
            Ok(_) => Outcome::Finish(Finish::Done(json!({"blocklisted": true}))),
            Err(e) => self.didit_failure(e),
        }
    }

    /// Create the step-up session, log its creation (so the projector links
    /// it), and tell the operator where to send the customer.
    async fn step_up(&self, a: &ActionRecord) -> Outcome {
        let p = &a.payload;
        let str_of = |k: &str| p.get(k).and_then(Value::as_str);
        let (Some(original), Some(check)) = (str_of("original_session_id"), str_of("check")) else {
            return Outcome::Finish(Finish::Dead(
                "payload lacks original_session_id or check".into(),
            ));
        };
        let Some(workflow) = self
            .config
            .step_up_workflows
            .get(check)
            .map(String::as_str)
            .or_else(|| str_of("workflow_id"))
        else {
            let why = format!(
                "no workflow configured for step-up check {check} (KYCD_STEP_UP_WORKFLOW_{check})"
            );
            return self.step_up_impossible(a, original, check, why).await;
        };
        let portrait = if check == "BIOMETRIC_AUTH" {
            match self.portrait(original).await {
                Ok(p) => Some(p),
                Err(Outcome::Finish(Finish::Dead(why))) => {
                    return self.step_up_impossible(a, original, check, why).await;
                }
                Err(o) => return o,
            }
        } else {
            None
        };
        let mut req = CreateSessionRequest::new(workflow);
        req.vendor_data = str_of("vendor_data").map(str::to_owned);
        req.metadata = Some(json!({
            STEP_UP_META: original,
            STEP_UP_CHECK_META: check,
            "kycd_decision_id": a.decision_id,
        }));
        req.portrait_image = portrait;
        let created = match self.client().create_session(&req).await {
            Ok(c) => c,
            Err(e) => return self.didit_failure(e),
        };
        let now = self.clock.now_millis();
        let expires_at_ms = now + self.config.step_up_expiry_ms;
        let body = json!({
            "original_session_id": original,
            "step_up_session_id": created.session_id,
            "check": check,
            "workflow_id": workflow,
            "url": created.url,
            "expires_at_ms": expires_at_ms,
            "action_id": a.id,
        });
        let event = NewEvent {
            received_at_ms: now,
            source: EventSource::Internal,
            kind: STEP_UP_CREATED.to_owned(),
            session_id: Some(original.to_owned()),
            didit_event_id: None,
            dedupe_keys: vec![format!(
                "step_up_created:{}:{check}:{}",
                original, created.session_id
            )],
            body: body.to_string().into_bytes(),
            meta: json!({"action": a.id}),
        };
        if let Err(e) = self.log.append(event).await {
            return Outcome::Failed(format!("step-up session created but not logged: {e}"));
        }
        if self.operator.is_some() {
            let msg = actions::operator_message(
                format!("{}:{OPERATOR_WEBHOOK}:step_up.requested", a.idempotency_key),
                "step_up.requested",
                now,
                Some(original),
                json!({
                    "session_id": original,
                    "vendor_data": str_of("vendor_data"),
                    "check": check,
                    "step_up_session_id": created.session_id,
                    "url": created.url,
                    "expires_at": kycd_core::when::format_millis(expires_at_ms),
                    "decision_id": a.decision_id,
                }),
            );
            if let Err(e) = self.outbox.enqueue(vec![msg]).await {
                return Outcome::Failed(format!("could not enqueue step_up.requested: {e}"));
            }
        }
        Outcome::Finish(Finish::Done(json!({
            "step_up_session_id": created.session_id,
            "url": created.url,
        })))
    }

    /// A step-up that can never be created (no workflow for its check, no
    /// portrait to re-authenticate against): the action dies, and the
    /// step-up ends at once as expired with the reason, so the original is
    /// decided again (`step_up_expired`: a person) instead of waiting for
    /// a step-up that will not come.
    async fn step_up_impossible(
        &self,
        a: &ActionRecord,
        original: &str,
        check: &str,
        why: String,
    ) -> Outcome {
        tracing::warn!(session = %original, check, reason = %why, "step-up not created; the session goes to a person");
        let event = NewEvent {
            received_at_ms: self.clock.now_millis(),
            source: EventSource::Internal,
            kind: STEP_UP_EXPIRED.to_owned(),
            session_id: Some(original.to_owned()),
            didit_event_id: None,
            dedupe_keys: vec![format!("step_up_impossible:{}", a.idempotency_key)],
            body: json!({
                "original_session_id": original,
                "check": check,
                "reason": format!("could not be created: {why}"),
                "action_id": a.id,
            })
            .to_string()
            .into_bytes(),
            meta: json!({"action": a.id}),
        };
        match self.log.append(event).await {
            // Dead, so the operator sees the gap and can redrive the
            // action once it is configured; the session is not left
            // waiting meanwhile.
            Ok(_) => Outcome::Finish(Finish::Dead(why)),
            Err(e) => Outcome::Failed(format!("step-up not created and not logged: {e}")),
        }
    }

    /// The original session's document portrait, fetched now (Didit's media
    /// links expire) and base64-encoded for `portrait_image`.
    async fn portrait(&self, original: &str) -> Result<String, Outcome> {
        let decision = self
            .client()
            .get_decision(original)
            .await
            .map_err(|e| self.didit_failure(e))?;
        let link = decision
            .pointer("/id_verifications/0/portrait_image")
            .or_else(|| decision.pointer("/id_verification/portrait_image"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Outcome::Finish(Finish::Dead(
                    "the original decision has no portrait_image to re-authenticate against".into(),
                ))
            })?;
        let resp = self
            .http
            .get(link)
            .send()
            .await
            .map_err(|_| Outcome::Failed("portrait download failed".into()))?;
        if !resp.status().is_success() {
            return Err(Outcome::Failed(format!(
                "portrait download answered {}",
                resp.status().as_u16()
            )));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|_| Outcome::Failed("portrait download broke off".into()))?;
        if bytes.len() > MAX_PORTRAIT_BYTES {
            return Err(Outcome::Finish(Finish::Dead(format!(
                "portrait is {} bytes; Didit takes at most 1 MB",
                bytes.len()
            ))));
        }
        Ok(base64::engine::general_purpose::STANDARD.encode(&bytes))
    }

    async fn operator_webhook(&self, a: &ActionRecord) -> Outcome {
        let Some(sender) = &self.operator else {
            return Outcome::Failed("no operator webhook endpoint configured".into());
        };
        let (Some(id), Some(body)) = (
            a.payload.get("message_id").and_then(Value::as_str),
            a.payload.get("body"),
        ) else {
            return Outcome::Finish(Finish::Dead("payload lacks message_id or body".into()));
        };
        let now = self.clock.now_millis();
        let msg = Message {
            id: id.to_owned(),
            timestamp: now.div_euclid(1000),
            body: serde_json::to_vec(body).unwrap_or_default(),
        };
        let result = sender.send(&msg).await;
        let error = result.as_ref().err().map(|e| e.to_string());
        match self
            .outbox
            .record_endpoint(
                sender.url(),
                error.clone(),
                now,
                operator_webhook::DISABLE_AFTER_FAILURES,
            )
            .await
        {
            Ok((state, true)) => {
                self.endpoint_disabled(sender.url(), &state.last_error)
                    .await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not record the endpoint's health"),
        }
        match result {
            Ok(d) => Outcome::Finish(Finish::Done(
                json!({"status": d.status, "elapsed_ms": d.elapsed_ms}),
            )),
            Err(SendError::Blocked(why)) => {
                Outcome::Finish(Finish::Dead(format!("blocked: {why}")))
            }
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// The operational event of a disabled endpoint: a log line, a metric,
    /// and an internal event in the log (so the audit of what happened
    /// survives restarts).
    async fn endpoint_disabled(&self, url: &str, last_error: &Option<String>) {
        tracing::error!(
            failures = operator_webhook::DISABLE_AFTER_FAILURES,
            error = last_error.as_deref().unwrap_or(""),
            "operator webhook endpoint disabled after repeated failures; enable it with POST /api/v1/operator-webhook/enable"
        );
        metrics::counter!("kycd_operator_webhook_disabled_total").increment(1);
        let now = self.clock.now_millis();
        let event = NewEvent {
            received_at_ms: now,
            source: EventSource::Internal,
            kind: "kycd.operator_webhook.disabled".into(),
            session_id: None,
            didit_event_id: None,
            dedupe_keys: vec![format!("endpoint_disabled:{url}:{now}")],
            body: json!({"url": url, "at_ms": now, "last_error": last_error})
                .to_string()
                .into_bytes(),
            meta: json!({}),
        };
        if let Err(e) = self.log.append(event).await {
            tracing::warn!(error = %e, "could not log the endpoint's disabling");
        }
    }
}

/// Re-send the operator messages created in `[from_ms, until_ms)`: new
/// actions carrying the original message ids, so receivers that saw one
/// already can drop it. Returns how many were queued.
pub async fn replay_operator_webhooks(
    outbox: &dyn Outbox,
    from_ms: i64,
    until_ms: i64,
    now_ms: i64,
) -> Result<usize, kycd_log::store::StoreError> {
    let replay = kycd_core::id::ulid_body(now_ms);
    let mut queued = Vec::new();
    let mut before = None;
    loop {
        let page = outbox
            .list_actions(kycd_log::outbox::ActionQuery {
                kind: Some(OPERATOR_WEBHOOK.to_owned()),
                created_from_ms: Some(from_ms),
                created_until_ms: Some(until_ms),
                before_seq: before,
                limit: 500,
                ..Default::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        before = Some(last.seq);
        for a in page {
            queued.push(NewAction {
                idempotency_key: format!("replay:{replay}:{}", a.id),
                kind: a.kind,
                session_id: a.session_id,
                decision_id: a.decision_id,
                payload: a.payload,
                created_at_ms: now_ms,
            });
        }
    }
    // Oldest first, as they were first sent.
    queued.reverse();
    outbox.enqueue(queued).await
}

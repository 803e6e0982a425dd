//! The projector: the consumer of the event log that keeps one record per
//! Didit session, and decides.
//!
//! It reads a batch of events after its stored offset and, in log order:
//! applies each session event to its session ([`crate::session::apply`]);
//! for an event that brings a trusted Didit decision, builds the facts
//! ([`crate::facts`]) **as of that event's position in the log** and
//! evaluates the active policy (and the shadow policy, if any); records the
//! event's identity values in the identity graph; and keeps the operator's
//! subject writes. Everything the batch produced commits together with the
//! new offset in one transaction. A crash between two commits replays the
//! uncommitted batch from the same offset against the same state, so every
//! event is applied, and decided, exactly once.
//!
//! "As of the event's position" is what makes decisions reproducible: the
//! graph counts, prior declines and subject attributes an event sees are
//! those of the events before it, whether they were committed in earlier
//! batches (queried from the store) or earlier in this batch (held in
//! [`Pending`]). `kycd replay` runs this same code over the log into a
//! scratch store, so a replay with the active policy rebuilds identical
//! facts and decisions.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use didit::payload::{Decision, Envelope, SessionStatus, WebhookType};
use kycd_core::clock::SharedClock;
use kycd_core::when::format_millis;
use kycd_log::audit::NewAudit;
use kycd_log::outbox::StepUpRecord;
use kycd_log::store::{
    DecisionQuery, DecisionRecord, Fence, GraphContext, GraphQuery, IdentityLink, ProjectionBatch,
    SessionQuery, SessionRecord, Store, StoreError, SubjectVersion,
};
use kycd_log::{EventLog, EventSource, LogError, StoredEvent};
use kycd_policy::{Outcome, Policy};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::actions::{self, ActionSettings, PlanInput};
use crate::facts::{self, FactsInput, GraphSignals, IdentityKind};
use crate::session::{apply, Delivery};

/// The consumer name under which the projector's offset is stored.
pub const CONSUMER: &str = "sessions";

const BATCH: usize = 512;

/// The default window of the identity graph: how far back a shared
/// document, device, IP, phone or email counts.
pub const DEFAULT_GRAPH_WINDOW_MS: i64 = 180 * 86_400_000;

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Graph counts stop at this many other subjects. A value shared by
/// thousands (a carrier's IP address) then costs a bounded read, and the
/// count is the same whichever batch an event fell into, so replays stay
/// exact. No sensible rule distinguishes 1,000 subjects from 10,000.
pub const GRAPH_COUNT_CAP: u64 = 1000;

/// The policies the projector decides with.
///
/// The active policy changes at a position in the log: activating a policy
/// (at start, on SIGHUP) appends a [`POLICY_ACTIVATED`] event carrying the
/// policy's text, and the projector switches when it reaches that event
/// (when [`Policies::follow_log`]). Every event is so decided by the policy
/// in force at its position in the log, however far the projector lags,
/// across restarts, and in a replay with the recorded policies.
#[derive(Clone)]
pub struct Policies {
    /// The policy deciding now: the one given until the log activates
    /// another.
    pub active: Arc<RwLock<Arc<Policy>>>,
    pub shadow: Option<Arc<Policy>>,
    pub graph_window_ms: i64,
    /// Where graph counts stop ([`GRAPH_COUNT_CAP`] by default).
    pub graph_count_cap: u64,
    /// What decisions do (nothing by default: see [`crate::actions`]).
    pub actions: Arc<ActionSettings>,
    /// Switch to the policies the log activates (true by default). A
    /// replay with a candidate policy sets it false: the candidate decides
    /// everything.
    pub follow_log: bool,
}

impl Policies {
    pub fn new(active: Policy, shadow: Option<Policy>) -> Self {
        Self {
            active: Arc::new(RwLock::new(Arc::new(active))),
            shadow: shadow.map(Arc::new),
            graph_window_ms: DEFAULT_GRAPH_WINDOW_MS,
            graph_count_cap: GRAPH_COUNT_CAP,
            actions: Arc::new(ActionSettings::default()),
            follow_log: true,
        }
    }

    pub fn active(&self) -> Arc<Policy> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_active(&self, policy: Policy) {
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }
}

/// What earlier events of the current batch wrote, not yet committed.
#[derive(Default)]
struct Pending {
    links: HashMap<(IdentityKind, String), Vec<(String, i64)>>,
    subjects: HashMap<String, Value>,
    declines: HashMap<String, BTreeSet<String>>,
}

pub struct Projector {
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    policies: Policies,
    applied: watch::Sender<u64>,
    /// Whether the policy in force at the stored offset was restored.
    resumed: std::sync::atomic::AtomicBool,
    /// The clock decisions are timed against, when this projector reports
    /// metrics ([`Projector::with_metrics`]); a replay's does not.
    metrics: Option<SharedClock>,
    /// The lease this projector works under when several instances share
    /// the store ([`Projector::with_fence`]): `None` inside while another
    /// instance holds it.
    fence: Option<watch::Receiver<Option<Fence>>>,
}

/// Resolves when the lease a fenced projector works under changes: `true`,
/// or `false` once its sender is gone (the server stopped). Never without a
/// fence.
async fn lease_moved(fence: &mut Option<watch::Receiver<Option<Fence>>>) -> bool {
    match fence {
        Some(f) => f.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// The identity of a subject in the graph: the operator's `vendor_data`,
/// or the session itself when the operator set none.
fn subject_key(vendor_data: Option<&str>, session_id: &str) -> String {
    match vendor_data {
        Some(v) => v.to_owned(),
        None => format!("session:{session_id}"),
    }
}

impl Projector {
    pub fn new(log: Arc<dyn EventLog>, store: Arc<dyn Store>, policies: Policies) -> Self {
        let (applied, _) = watch::channel(0);
        Self {
            log,
            store,
            policies,
            applied,
            resumed: std::sync::atomic::AtomicBool::new(false),
            metrics: None,
            fence: None,
        }
    }

    /// Report metrics: `kycd_decisions_total` by outcome for every decision
    /// committed, and `kycd_webhook_to_decision_seconds` from a webhook
    /// event's receive time in the log to the commit of its decisions, on
    /// `clock` (the intake's). The receive time is the log's, so a decision
    /// made after a restart counts its wait across the restart too. Without
    /// this (a replay into a scratch store) the projector reports nothing.
    pub fn with_metrics(mut self, clock: SharedClock) -> Self {
        self.metrics = Some(clock);
        self
    }

    /// Project only while `fence` holds a lease, and commit every batch
    /// under it: a batch made under a lease taken over since writes
    /// nothing ([`kycd_log::store::StoreError::LeaseLost`]). Each new lease
    /// (a new epoch) resumes from the stored offset with the policy in
    /// force there, which another instance may have moved.
    pub fn with_fence(mut self, fence: watch::Receiver<Option<Fence>>) -> Self {
        self.fence = Some(fence);
        self
    }

    /// The offset up to which events are applied, updated after each commit.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Apply every event currently in the log; returns the offset reached.
    pub async fn catch_up(&self) -> Result<u64, ProjectorError> {
        loop {
            let (offset, more) = self.step().await?;
            if !more {
                return Ok(offset);
            }
        }
    }

    /// Apply one batch; returns the offset reached and whether the batch
    /// was full (so more may be waiting).
    async fn step(&self) -> Result<(u64, bool), ProjectorError> {
        self.resume_policy().await?;
        let from = self.store.consumer_offset(CONSUMER).await?;
        let events = self.log.read(from, BATCH).await?;
        let Some(last) = events.last().map(|e| e.offset) else {
            self.applied.send_replace(from);
            return Ok((from, false));
        };
        self.apply_batch(from, last, &events).await?;
        self.applied.send_replace(last);
        Ok((last, events.len() == BATCH))
    }

    async fn apply_batch(
        &self,
        from: u64,
        to: u64,
        events: &[StoredEvent],
    ) -> Result<(), ProjectorError> {
        let envelopes = parse_envelopes(events);
        let mut ids: Vec<String> = events.iter().filter_map(|e| e.session_id.clone()).collect();
        ids.extend(
            envelopes
                .iter()
                .flatten()
                .filter_map(|p| step_up_of(&p.env).map(str::to_owned)),
        );
        ids.sort();
        ids.dedup();
        let mut sessions: HashMap<String, SessionRecord> = self.store.load_sessions(&ids).await?;
        let mut pending = Pending::default();
        let mut batch = ProjectionBatch::default();
        let mut active = self.policies.active();
        let history = self.prefetch(events, &envelopes, &sessions).await?;

        for (event, parsed) in events.iter().zip(envelopes) {
            if event.source == EventSource::Internal && event.kind == POLICY_ACTIVATED {
                if self.policies.follow_log && self.activate(event) {
                    active = self.policies.active();
                    batch.policy_offset = Some(event.offset);
                }
                continue;
            }
            if event.source == EventSource::Subject {
                self.apply_subject(event, &active, &mut pending, &mut sessions, &mut batch)
                    .await?;
                continue;
            }
            if event.source == EventSource::Internal {
                self.apply_internal(event, &active, &mut sessions, &mut batch)
                    .await?;
                continue;
            }
            let Some(Parsed { env, keys }) = parsed else {
                continue;
            };
            let Some(session_id) = env.session_id.clone() else {
                continue;
            };
            let flag = |k: &str| event.meta.get(k).and_then(Value::as_bool).unwrap_or(false);
            let envelope_only = flag("envelope_only");
            let delivery = Delivery {
                offset: event.offset,
                event_id: event.id.as_str(),
                received_at_ms: event.received_at_ms,
                source: event.source.as_str(),
                envelope_only,
                sandbox: flag("sandbox"),
                envelope: &env,
            };
            // Only session events make sessions: entity, transaction and
            // unknown event types are kept in the log, never projected.
            if !env.webhook_type.is_session_event() {
                continue;
            }
            let current = sessions.remove(&session_id);
            let before = current
                .as_ref()
                .map(|r| SessionStatus::from(r.status.as_str()));
            let Some(applied) = apply(current, &delivery) else {
                continue;
            };
            let mut record = applied.record;
            let original = step_up_of(&env).map(str::to_owned);
            if let Some(o) = &original {
                record.doc["step_up_of"] = json!(o);
                if let Some(check) = env
                    .metadata
                    .as_ref()
                    .and_then(|m| m.get(STEP_UP_CHECK_META))
                {
                    record.doc["step_up_check"] = check.clone();
                }
            }
            let echo = recognise_echo(&mut record, &env, event.source, applied.moved);
            if before.as_ref().map(SessionStatus::as_str) != Some(record.status.as_str()) {
                self.announce_status(event, &record, before.as_ref(), &mut batch);
            }

            let status = SessionStatus::from(record.status.as_str());
            // A session that expired unfinished carries no results, yet the
            // operator needs a decision on it: the delivery that moved it
            // into Expired (the state machine never lets Expired replace a
            // result) is decided on empty results, with no identity values.
            // Its status is authentic even from an envelope-only signature.
            let no_results = Decision::default();
            let expired = applied.moved && status == SessionStatus::Expired;
            let trusted = env
                .decision
                .as_ref()
                .filter(|_| applied.adopted)
                .map(|d| (d, keys))
                .or_else(|| expired.then(|| (&no_results, Vec::new())));
            // Only new facts decide: a move to another status, a reviewer's
            // correction (`data.updated`), or the first trusted results for
            // the status the policy last decided on (an envelope-only
            // delivery followed by its fetch). A delivery the state machine
            // refused, a repeat of a state already decided (a poll, a
            // retried delivery) and Didit's echo of kycd's own write-back
            // are recorded and decide nothing.
            let new_facts = applied.moved
                || env.webhook_type == WebhookType::DataUpdated
                || record.doc.get(DECIDED_STATUS).and_then(Value::as_str)
                    != Some(record.status.as_str());
            let subject = subject_key(record.vendor_data.as_deref(), &session_id);
            if let Some((decision, keys)) = trusted {
                let decides = (status.is_decided() || expired) && new_facts && !echo;
                if decides {
                    let graph = self.graph(
                        &history,
                        &pending,
                        &subject,
                        &session_id,
                        &keys,
                        event.received_at_ms,
                    );
                    let attributes = pending
                        .subjects
                        .get(&subject)
                        .or_else(|| history.attributes.get(&subject))
                        .cloned();
                    let input = FactsInput {
                        now_ms: event.received_at_ms,
                        session_id: &session_id,
                        didit_status: status.as_str(),
                        webhook_type: env.webhook_type.as_str(),
                        workflow_id: record.workflow_id.as_deref(),
                        sandbox: flag("sandbox"),
                        decision,
                        subject: record.vendor_data.as_deref(),
                        attributes: attributes.as_ref(),
                        graph,
                        step_up: if original.is_some() {
                            None
                        } else {
                            record.doc.get("step_up").filter(|v| v.is_object())
                        },
                        is_step_up_session: original.is_some(),
                        later_links: record.doc.get(LATER_LINKS),
                    };
                    let facts = facts::build(&input);
                    record.doc[DECIDED_STATUS] = json!(record.status);
                    self.decide_and_act(
                        event,
                        &active,
                        &mut record,
                        facts,
                        flag("sandbox"),
                        json!({"kind": "delivery"}),
                        &mut batch,
                    );
                    if original.is_none() {
                        // Later evidence re-decides earlier approvals: the
                        // customers this session links to, if approved.
                        let links = self.later_links_of(
                            &history,
                            &pending,
                            &subject,
                            &session_id,
                            &keys,
                            decision,
                            event.received_at_ms,
                        );
                        self.retroactive(
                            event,
                            &active,
                            &subject,
                            &session_id,
                            links,
                            &mut sessions,
                            &mut batch,
                        )
                        .await?;
                    }
                    if let Some(original) = &original {
                        // A step-up session is decided by the policy like
                        // any other; its decision (not only Didit's status)
                        // completes the step-up, and the original is
                        // decided again.
                        let result = if status == SessionStatus::Expired {
                            StepUpResult::Expired
                        } else {
                            StepUpResult::Decided(
                                record
                                    .doc
                                    .pointer("/decision/outcome")
                                    .and_then(Value::as_str)
                                    .unwrap_or("review")
                                    .to_owned(),
                            )
                        };
                        self.complete_step_up(
                            event,
                            &active,
                            original,
                            &record,
                            result,
                            &mut sessions,
                            &mut batch,
                        )
                        .await?;
                    }
                }
                if new_facts {
                    for (kind, value) in keys {
                        pending
                            .links
                            .entry((kind, value.clone()))
                            .or_default()
                            .push((subject.clone(), event.received_at_ms));
                        batch.links.push(IdentityLink {
                            kind: kind.as_str().to_owned(),
                            value,
                            subject: subject.clone(),
                            offset: event.offset,
                            at_ms: event.received_at_ms,
                        });
                    }
                }
            }
            if applied.moved && status == SessionStatus::Declined {
                pending
                    .declines
                    .entry(subject.clone())
                    .or_default()
                    .insert(session_id.clone());
                batch
                    .declines
                    .push((subject, session_id.clone(), event.offset));
            }
            sessions.insert(session_id, record);
        }
        batch.sessions = sessions.into_values().collect();
        if let Some(fence) = &self.fence {
            let held = fence.borrow().clone();
            batch.fences = vec![held.ok_or_else(|| StoreError::LeaseLost {
                lease: "partition".into(),
                epoch: 0,
                now: None,
            })?];
        }
        let decided = self.metrics.as_ref().map(|_| decided(events, &batch));
        self.store.commit(CONSUMER, from, to, batch).await?;
        if let (Some(clock), Some(decided)) = (&self.metrics, decided) {
            let now_ms = clock.now_millis();
            for (outcome, from_webhook_ms) in decided {
                metrics::counter!("kycd_decisions_total", "outcome" => outcome).increment(1);
                if let Some(received_at_ms) = from_webhook_ms {
                    metrics::histogram!("kycd_webhook_to_decision_seconds")
                        .record(now_ms.saturating_sub(received_at_ms).max(0) as f64 / 1000.0);
                }
            }
        }
        Ok(())
    }

    /// Plan what an active decision does (the outbox), remember in the
    /// session what was asked of Didit, and audit the decision.
    fn act(
        &self,
        made: &DecisionRecord,
        record: &mut SessionRecord,
        sandbox: bool,
        batch: &mut ProjectionBatch,
    ) {
        let previous = record
            .doc
            .get("decision")
            .and_then(|d| d.get("outcome"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        // A person's decision may approve over Didit's review or decline;
        // the policy's only when the operator allowed it.
        let reviewer = made.doc.get("reviewer").and_then(Value::as_str);
        let loosened;
        let settings = if reviewer.is_some() && !self.policies.actions.allow_loosening {
            loosened = ActionSettings {
                allow_loosening: true,
                ..(*self.policies.actions).clone()
            };
            &loosened
        } else {
            &*self.policies.actions
        };
        let mut plan = actions::plan(
            settings,
            &PlanInput {
                decision: made,
                previous_outcome: previous.as_deref(),
                didit_status: &record.status,
                sandbox,
                is_step_up_session: record.doc.get("step_up_of").is_some(),
                didit_decision: record.doc.get("didit_decision"),
            },
        );
        batch.audit.push(NewAudit {
            at_ms: made.decided_at_ms,
            actor: reviewer.unwrap_or("kycd:policy").to_owned(),
            action: "decision".into(),
            target: Some(made.session_id.clone()),
            details: json!({
                "decision_id": made.id,
                "event_id": made.doc.get("event_id"),
                "outcome": made.outcome,
                "previous_outcome": previous,
                "score": made.score,
                "policy_version": made.policy_version,
                "reasons": made.doc.get("reasons"),
            }),
        });
        if let Some(status) = &plan.writeback {
            record.doc["writeback"] = actions::writeback_marker(status, &made.id);
        }
        if step_up_open(&record.doc) {
            // One step-up at a time: a session decided again while its
            // step-up is open keeps waiting for that one.
            plan.actions.retain(|a| a.kind != actions::STEP_UP);
        } else if !plan.step_up_checks.is_empty() {
            record.doc["step_up"] = json!({
                "status": "requested",
                "checks": plan.step_up_checks,
                "decision_id": made.id,
                "requested_at_ms": made.decided_at_ms,
                "sessions": {},
            });
        }
        batch.actions.extend(plan.actions);
    }

    /// `session.updated` to the operator when a delivery moved the status.
    fn announce_status(
        &self,
        event: &StoredEvent,
        record: &SessionRecord,
        before: Option<&SessionStatus>,
        batch: &mut ProjectionBatch,
    ) {
        if !self.policies.actions.operator_webhooks {
            return;
        }
        batch.actions.push(actions::operator_message(
            format!(
                "{}:{}:session.updated",
                event.offset,
                actions::OPERATOR_WEBHOOK
            ),
            "session.updated",
            event.received_at_ms,
            Some(&record.session_id),
            json!({
                "session_id": record.session_id,
                "vendor_data": record.vendor_data,
                "status": record.status,
                "previous_status": before.map(SessionStatus::as_str),
                "step_up_of": record.doc.get("step_up_of"),
                "event_id": event.id.as_str(),
            }),
        ));
    }

    /// A step-up session was decided (or expired at Didit): record its
    /// result on the original and, once every requested check has one,
    /// decide the original again. Expiry is strict: a result that arrives
    /// after the step-up's `expires_at_ms` is recorded as completed after
    /// expiry and the step-up counts as expired.
    #[allow(clippy::too_many_arguments)]
    async fn complete_step_up(
        &self,
        event: &StoredEvent,
        active: &Policy,
        original_id: &str,
        step_up: &SessionRecord,
        result: StepUpResult,
        sessions: &mut HashMap<String, SessionRecord>,
        batch: &mut ProjectionBatch,
    ) -> Result<(), ProjectorError> {
        let Some(mut original) = sessions.remove(original_id) else {
            tracing::warn!(session = %step_up.session_id, "step-up session of an unknown original; not linked");
            return Ok(());
        };
        // From the metadata kycd gave the session, so it is known even when
        // the delivery comes before kycd logged the creation.
        let check = step_up
            .doc
            .get("step_up_check")
            .and_then(Value::as_str)
            .unwrap_or("UNKNOWN")
            .to_owned();
        let open = step_up_open(&original.doc);
        let late = original
            .doc
            .pointer("/step_up/expires_at_ms")
            .and_then(Value::as_i64)
            .is_some_and(|at| event.received_at_ms > at);
        if original.doc.get("step_up").is_some_and(Value::is_object) {
            let entry = &mut original.doc["step_up"]["sessions"][&check];
            entry["session_id"] = json!(step_up.session_id);
            entry["didit_status"] = json!(step_up.status);
            entry["decision_id"] = step_up
                .doc
                .pointer("/decision/id")
                .cloned()
                .unwrap_or(Value::Null);
            entry["outcome"] = match &result {
                StepUpResult::Decided(o) => json!(o),
                StepUpResult::Expired => Value::Null,
            };
            if late || !open {
                entry["completed_after_expiry"] = json!(late);
                entry["late"] = json!(true);
            }
        }
        if open && (late || result == StepUpResult::Expired) {
            let reason = if late {
                "completed after expiry"
            } else {
                "step-up session expired at Didit"
            };
            self.expire_step_up(event, active, &mut original, reason, batch)
                .await?;
        } else if open {
            let st = &mut original.doc["step_up"];
            let requested: Vec<String> = st["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            let outcomes: Vec<Outcome> = requested
                .iter()
                .filter_map(|c| st["sessions"][c]["outcome"].as_str())
                .map(|o| Outcome::parse(o).unwrap_or(Outcome::Review))
                .collect();
            if outcomes.len() == requested.len() {
                let worst = outcomes.into_iter().fold(Outcome::Approve, |a, b| a.max(b));
                st["status"] = json!("completed");
                st["outcome"] = json!(worst.as_str());
                st["didit_status"] = json!(step_up.status);
                st["approved"] = json!(worst == Outcome::Approve);
                st["session_id"] = json!(step_up.session_id);
                batch.step_ups.push(finished_step_up(
                    &step_up.session_id,
                    &original.session_id,
                    requested,
                    "completed",
                    event.received_at_ms,
                ));
                self.announce_step_up(event, &original, "step_up.completed", batch);
                self.redecide(
                    event,
                    active,
                    &mut original,
                    json!({"kind": "step_up_completed", "step_up_session_id": step_up.session_id}),
                    batch,
                )
                .await?;
            }
        }
        sessions.insert(original.session_id.clone(), original);
        Ok(())
    }

    /// End an open step-up as expired (`reason` says how), close its rows,
    /// tell the operator and decide the original again.
    async fn expire_step_up(
        &self,
        event: &StoredEvent,
        active: &Policy,
        original: &mut SessionRecord,
        reason: &str,
        batch: &mut ProjectionBatch,
    ) -> Result<(), ProjectorError> {
        original.doc["step_up"]["status"] = json!("expired");
        original.doc["step_up"]["expiry_reason"] = json!(reason);
        for (check, s) in original.doc["step_up"]["sessions"]
            .as_object()
            .cloned()
            .unwrap_or_default()
        {
            if let Some(id) = s.get("session_id").and_then(Value::as_str) {
                batch.step_ups.push(finished_step_up(
                    id,
                    &original.session_id,
                    vec![check],
                    "expired",
                    event.received_at_ms,
                ));
            }
        }
        self.announce_step_up(event, original, "step_up.completed", batch);
        self.redecide(
            event,
            active,
            original,
            json!({"kind": "step_up_expired", "reason": reason}),
            batch,
        )
        .await
    }
    fn announce_step_up(
        &self,
        event: &StoredEvent,
        original: &SessionRecord,
        kind: &str,
        batch: &mut ProjectionBatch,
    ) {
        if !self.policies.actions.operator_webhooks {
            return;
        }
        batch.actions.push(actions::operator_message(
            format!("{}:{}:{kind}", event.offset, actions::OPERATOR_WEBHOOK),
            kind,
            event.received_at_ms,
            Some(&original.session_id),
            json!({
                "session_id": original.session_id,
                "vendor_data": original.vendor_data,
                "step_up": original.doc.get("step_up"),
            }),
        ));
    }

    /// The facts of the session's latest policy decision (a person's
    /// decision has none): this batch's first, then the store's.
    async fn latest_facts(
        &self,
        session_id: &str,
        batch: &ProjectionBatch,
    ) -> Result<Option<Value>, ProjectorError> {
        let in_batch = batch
            .decisions
            .iter()
            .rev()
            .filter(|d| !d.shadow && d.session_id == session_id)
            .find_map(|d| d.doc.get("facts").cloned());
        if in_batch.is_some() {
            return Ok(in_batch);
        }
        Ok(self
            .store
            .list_decisions(DecisionQuery {
                session_id: Some(session_id.to_owned()),
                limit: 20,
                ..DecisionQuery::default()
            })
            .await?
            .into_iter()
            .find_map(|d| d.doc.get("facts").cloned()))
    }

    /// Decide `original` again on the facts of its latest decision, with
    /// its step-up, its later links and its subject as they stand now, at
    /// the time of `event`; `trigger` says why.
    async fn redecide(
        &self,
        event: &StoredEvent,
        active: &Policy,
        original: &mut SessionRecord,
        trigger: Value,
        batch: &mut ProjectionBatch,
    ) -> Result<(), ProjectorError> {
        self.redecide_with(event, active, original, trigger, batch, |_| {})
            .await
    }

    /// [`Projector::redecide`], with `edit` applied to the facts last.
    async fn redecide_with(
        &self,
        event: &StoredEvent,
        active: &Policy,
        original: &mut SessionRecord,
        trigger: Value,
        batch: &mut ProjectionBatch,
        edit: impl FnOnce(&mut Value) + Send,
    ) -> Result<(), ProjectorError> {
        let Some(mut facts) = self.latest_facts(&original.session_id, batch).await? else {
            tracing::warn!(session = %original.session_id, "a session without a policy decision was to be decided again; not decided");
            return Ok(());
        };
        facts["now"] = json!(format_millis(event.received_at_ms));
        facts["step_up"] = facts::step_up_facts(original.doc.get("step_up"));
        let (links, kinds) = facts::later_link_facts(original.doc.get(LATER_LINKS));
        if facts["graph"].is_object() {
            facts["graph"]["later_links"] = links;
            facts["graph"]["later_link_kinds"] = kinds;
        }
        edit(&mut facts);
        let sandbox = original
            .doc
            .get("sandbox")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        self.decide_and_act(event, active, original, facts, sandbox, trigger, batch);
        Ok(())
    }

    /// Other customers this session links to, by document, device, phone
    /// or email (values shared by at most [`LATER_LINK_MAX_SUBJECTS`]
    /// others, so the set is exact whichever batch the event fell into) or
    /// by face (Didit's liveness matches name the other sessions). Subject
    /// -> kinds; face matches are keyed `session:<id>` of the matched
    /// session and resolved by session.
    #[allow(clippy::too_many_arguments)]
    fn later_links_of(
        &self,
        history: &GraphContext,
        pending: &Pending,
        subject: &str,
        session_id: &str,
        keys: &[(IdentityKind, String)],
        decision: &Decision,
        now_ms: i64,
    ) -> LinkTargets {
        let from_ms = now_ms.saturating_sub(self.policies.graph_window_ms);
        let mut targets = LinkTargets::default();
        for (kind, value) in keys {
            if *kind == IdentityKind::Ip {
                continue;
            }
            let mut others: BTreeSet<&str> = BTreeSet::new();
            let key = (kind.as_str().to_owned(), value.clone());
            for (s, at) in history.linked.get(&key).into_iter().flatten() {
                if *at >= from_ms {
                    others.insert(s);
                }
            }
            for (s, at) in pending
                .links
                .get(&(*kind, value.clone()))
                .into_iter()
                .flatten()
            {
                if *at >= from_ms {
                    others.insert(s);
                }
            }
            others.remove(subject);
            if others.len() > LATER_LINK_MAX_SUBJECTS {
                continue;
            }
            for other in others {
                targets
                    .subjects
                    .entry(other.to_owned())
                    .or_default()
                    .insert(kind.as_str());
            }
        }
        for m in decision
            .liveness_checks
            .iter()
            .flat_map(|l| l.matches.iter())
        {
            if let Some(id) = m.session_id.as_deref().filter(|id| *id != session_id) {
                targets.sessions.insert(id.to_owned());
            }
        }
        targets
    }

    /// Decide again, with the link in their facts, the currently approved
    /// sessions of the customers `targets` names (not step-up sessions, not
    /// this customer's own). Each gets `later_links` in its record, kept
    /// for every later decision, and a decision triggered `retroactive`.
    #[allow(clippy::too_many_arguments)]
    async fn retroactive(
        &self,
        event: &StoredEvent,
        active: &Policy,
        subject: &str,
        session_id: &str,
        targets: LinkTargets,
        sessions: &mut HashMap<String, SessionRecord>,
        batch: &mut ProjectionBatch,
    ) -> Result<(), ProjectorError> {
        if targets.subjects.is_empty() && targets.sessions.is_empty() {
            return Ok(());
        }
        // Candidate sessions -> the kinds that link them.
        let mut found: std::collections::BTreeMap<String, BTreeSet<&str>> = Default::default();
        for (other, kinds) in &targets.subjects {
            for id in self.sessions_of(other, sessions).await? {
                found.entry(id).or_default().extend(kinds.iter().copied());
            }
        }
        for id in &targets.sessions {
            found.entry(id.clone()).or_default().insert("face");
        }
        self.load_missing(found.keys(), sessions).await?;
        for (id, kinds) in found {
            if id == session_id {
                continue;
            }
            let Some(mut target) = sessions.remove(&id) else {
                continue;
            };
            let other_subject = subject_key(target.vendor_data.as_deref(), &id);
            let approved = target
                .doc
                .pointer("/decision/outcome")
                .and_then(Value::as_str)
                == Some("approve");
            if other_subject == subject || !approved || target.doc.get("step_up_of").is_some() {
                sessions.insert(id, target);
                continue;
            }
            let mut links: Vec<Value> = target
                .doc
                .get(LATER_LINKS)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut added = Vec::new();
            for kind in &kinds {
                let link = json!({
                    "kind": kind,
                    "session_id": session_id,
                    "subject": subject,
                    "at": format_millis(event.received_at_ms),
                });
                let known = links.iter().any(|l| {
                    l.get("kind") == link.get("kind")
                        && l.get("session_id") == link.get("session_id")
                });
                if !known && links.len() < LATER_LINK_MAX_KEPT {
                    links.push(link);
                    added.push(*kind);
                }
            }
            if added.is_empty() {
                sessions.insert(id, target);
                continue;
            }
            target.doc[LATER_LINKS] = json!(links);
            self.redecide(
                event,
                active,
                &mut target,
                json!({"kind": "retroactive", "links": added, "session_id": session_id}),
                batch,
            )
            .await?;
            sessions.insert(id, target);
        }
        Ok(())
    }

    /// Load into `sessions` those of `ids` this batch does not hold yet.
    async fn load_missing(
        &self,
        ids: impl Iterator<Item = &String>,
        sessions: &mut HashMap<String, SessionRecord>,
    ) -> Result<(), ProjectorError> {
        let missing: Vec<String> = ids
            .filter(|id| !sessions.contains_key(*id))
            .cloned()
            .collect();
        if !missing.is_empty() {
            sessions.extend(self.store.load_sessions(&missing).await?);
        }
        Ok(())
    }

    /// The sessions of `subject` as of now: committed ones and this batch's.
    async fn sessions_of(
        &self,
        subject: &str,
        sessions: &HashMap<String, SessionRecord>,
    ) -> Result<BTreeSet<String>, ProjectorError> {
        let mut ids = BTreeSet::new();
        if let Some(id) = subject.strip_prefix("session:") {
            ids.insert(id.to_owned());
            return Ok(ids);
        }
        for (id, r) in sessions {
            if r.vendor_data.as_deref() == Some(subject) {
                ids.insert(id.clone());
            }
        }
        let stored = self
            .store
            .list_sessions(SessionQuery {
                vendor_data: Some(subject.to_owned()),
                limit: LATER_LINK_MAX_KEPT * 4,
                ..SessionQuery::default()
            })
            .await?;
        ids.extend(stored.into_iter().map(|r| r.session_id));
        Ok(ids)
    }

    /// Decide `record` on `facts` with the active policy and act on it,
    /// then with the shadow policy, if any, on the same facts (stored
    /// apart, never acted on). The facts are copied only for a shadow.
    #[allow(clippy::too_many_arguments)]
    fn decide_and_act(
        &self,
        event: &StoredEvent,
        active: &Policy,
        record: &mut SessionRecord,
        facts: Value,
        sandbox: bool,
        trigger: Value,
        batch: &mut ProjectionBatch,
    ) {
        let for_shadow = self.policies.shadow.as_ref().map(|_| facts.clone());
        let made = decide(active, false, event, record, facts, trigger.clone());
        self.act(&made, record, sandbox, batch);
        record.doc["decision"] = summary(&made);
        batch.decisions.push(made);
        if let (Some(shadow), Some(facts)) = (&self.policies.shadow, for_shadow) {
            batch
                .decisions
                .push(decide(shadow, true, event, record, facts, trigger));
        }
    }

    /// kycd's own events: a step-up session created, or a step-up that ran
    /// out of time (or could not be created).
    async fn apply_internal(
        &self,
        event: &StoredEvent,
        active: &Policy,
        sessions: &mut HashMap<String, SessionRecord>,
        batch: &mut ProjectionBatch,
    ) -> Result<(), ProjectorError> {
        let Ok(body) = serde_json::from_slice::<Value>(&event.body) else {
            tracing::error!(event = %event.id, "stored internal event does not parse; skipped");
            return Ok(());
        };
        if event.kind == REVIEW_DECIDED {
            self.apply_review(event, &body, sessions, batch);
            return Ok(());
        }
        let Some(original_id) = body.get("original_session_id").and_then(Value::as_str) else {
            return Ok(());
        };
        let Some(mut original) = sessions.remove(original_id) else {
            tracing::warn!(event = %event.id, "internal event about an unknown session; skipped");
            return Ok(());
        };
        let open = step_up_open(&original.doc);
        let str_of = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
        match event.kind.as_str() {
            STEP_UP_CREATED if open => {
                let check = str_of("check").unwrap_or_default();
                let session = str_of("step_up_session_id").unwrap_or_default();
                let st = &mut original.doc["step_up"];
                st["sessions"][&check]["session_id"] = json!(session);
                st["sessions"][&check]["url"] = body.get("url").cloned().unwrap_or(Value::Null);
                st["expires_at_ms"] = body.get("expires_at_ms").cloned().unwrap_or(Value::Null);
                if let Some(s) = sessions.get_mut(&session) {
                    s.doc["step_up_of"] = json!(original_id);
                    s.doc["step_up_check"] = json!(check);
                }
                batch.step_ups.push(StepUpRecord {
                    step_up_session_id: session,
                    original_session_id: original_id.to_owned(),
                    checks: vec![check],
                    state: "requested".into(),
                    url: str_of("url"),
                    workflow_id: str_of("workflow_id"),
                    requested_at_ms: event.received_at_ms,
                    expires_at_ms: body
                        .get("expires_at_ms")
                        .and_then(Value::as_i64)
                        .unwrap_or(i64::MAX),
                    finished_at_ms: None,
                });
            }
            STEP_UP_EXPIRED if open => {
                let reason = str_of("reason").unwrap_or_else(|| "expired".to_owned());
                self.expire_step_up(event, active, &mut original, &reason, batch)
                    .await?;
            }
            STEP_UP_EXPIRED => {
                // Already finished: only close the row, so the expiry is
                // not noticed again.
                if let Some(id) = str_of("step_up_session_id") {
                    batch.step_ups.push(finished_step_up(
                        &id,
                        original_id,
                        Vec::new(),
                        "closed",
                        event.received_at_ms,
                    ));
                }
            }
            _ => {}
        }
        sessions.insert(original_id.to_owned(), original);
        Ok(())
    }

    /// A person's decision on a session (`{session_id, outcome, comment,
    /// reviewer, nodes}`): it becomes the session's decision and acts like
    /// any other, through the outbox.
    fn apply_review(
        &self,
        event: &StoredEvent,
        body: &Value,
        sessions: &mut HashMap<String, SessionRecord>,
        batch: &mut ProjectionBatch,
    ) {
        let str_of = |k: &str| body.get(k).and_then(Value::as_str);
        let (Some(session_id), Some(outcome), Some(reviewer)) =
            (str_of("session_id"), str_of("outcome"), str_of("reviewer"))
        else {
            tracing::error!(event = %event.id, "review event lacks session_id, outcome or reviewer; skipped");
            return;
        };
        let Some(mut record) = sessions.remove(session_id) else {
            tracing::warn!(event = %event.id, "review of an unknown session; skipped");
            return;
        };
        let id = format!("dec_{}", kycd_core::id::ulid_body(event.received_at_ms));
        let comment = str_of("comment").unwrap_or("");
        // `{"feature": ...}` objects; reviews logged before kycd used one
        // node format everywhere hold bare feature names.
        let nodes: Vec<Value> = body
            .get("nodes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|n| match n {
                Value::String(f) => Some(json!({"feature": f})),
                Value::Object(_) => Some(n.clone()),
                _ => None,
            })
            .collect();
        let score = record
            .doc
            .pointer("/decision/score")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let doc = json!({
            "id": id,
            "session_id": session_id,
            "subject": record.vendor_data,
            "event_id": event.id.as_str(),
            "event_offset": event.offset,
            "shadow": false,
            "outcome": outcome,
            "score": score,
            "reasons": [{"rule": "reviewer", "text": comment}],
            "checks": [],
            "resubmit_nodes": nodes,
            "reviewer": reviewer,
            "comment": comment,
            "policy": {"name": "reviewer", "version": "reviewer"},
            "decided_at": format_millis(event.received_at_ms),
            "trigger": {"kind": "review"},
        });
        let made = DecisionRecord {
            id,
            event_offset: event.offset,
            session_id: session_id.to_owned(),
            subject: record.vendor_data.clone(),
            policy_version: "reviewer".into(),
            shadow: false,
            outcome: outcome.to_owned(),
            score,
            decided_at_ms: event.received_at_ms,
            decided_by: None,
            doc,
        };
        let sandbox = record
            .doc
            .get("sandbox")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        self.act(&made, &mut record, sandbox, batch);
        record.doc["decision"] = summary(&made);
        batch.decisions.push(made);
        sessions.insert(session_id.to_owned(), record);
    }

    /// An operator's subject write: `{"vendor_data": ..., "attributes": {...}}`.
    /// Blocklisting a customer decides their approved sessions again.
    async fn apply_subject(
        &self,
        event: &StoredEvent,
        active: &Policy,
        pending: &mut Pending,
        sessions: &mut HashMap<String, SessionRecord>,
        batch: &mut ProjectionBatch,
    ) -> Result<(), ProjectorError> {
        self.record_subject(event, pending, batch);
        let Ok(body) = serde_json::from_slice::<Value>(&event.body) else {
            return Ok(());
        };
        let (Some(subject), Some(attributes)) = (
            body.get("vendor_data").and_then(Value::as_str),
            body.get("attributes"),
        ) else {
            return Ok(());
        };
        if attributes.get("blocklisted").and_then(Value::as_bool) != Some(true) {
            return Ok(());
        }
        let ids: Vec<String> = self
            .sessions_of(subject, sessions)
            .await?
            .into_iter()
            .collect();
        self.load_missing(ids.iter(), sessions).await?;
        for id in ids {
            let Some(mut target) = sessions.remove(&id) else {
                continue;
            };
            let approved = target
                .doc
                .pointer("/decision/outcome")
                .and_then(Value::as_str)
                == Some("approve");
            if approved && target.doc.get("step_up_of").is_none() {
                let subject_facts = json!({
                    "id": subject,
                    "attributes": attributes,
                    "blocklisted": true,
                });
                self.redecide_with(
                    event,
                    active,
                    &mut target,
                    json!({"kind": "subject", "change": "blocklisted"}),
                    batch,
                    move |facts| facts["subject"] = subject_facts,
                )
                .await?;
            }
            sessions.insert(id, target);
        }
        Ok(())
    }

    /// Keep an operator's subject write as the subject's latest attributes.
    fn record_subject(
        &self,
        event: &StoredEvent,
        pending: &mut Pending,
        batch: &mut ProjectionBatch,
    ) {
        let Ok(body) = serde_json::from_slice::<Value>(&event.body) else {
            tracing::error!(event = %event.id, "stored subject write does not parse; skipped");
            return;
        };
        let (Some(subject), Some(attributes)) = (
            body.get("vendor_data").and_then(Value::as_str),
            body.get("attributes"),
        ) else {
            tracing::error!(event = %event.id, "stored subject write lacks vendor_data or attributes; skipped");
            return;
        };
        pending
            .subjects
            .insert(subject.to_owned(), attributes.clone());
        batch.subjects.push(SubjectVersion {
            subject: subject.to_owned(),
            offset: event.offset,
            at_ms: event.received_at_ms,
            attributes: attributes.clone(),
        });
    }

    /// One read for the whole batch: the committed history of every
    /// identity value and subject the batch's decisions will look at. Every
    /// event in the batch comes after every committed one, so this is
    /// exactly the history each of them sees, before [`Pending`]'s overlay.
    async fn prefetch(
        &self,
        events: &[StoredEvent],
        envelopes: &[Option<Parsed>],
        sessions: &HashMap<String, SessionRecord>,
    ) -> Result<GraphContext, ProjectorError> {
        // A session's subject is the latest non-empty vendor_data it was
        // given (see `session::apply`): its record's, or any of this batch's.
        let mut vendors: HashMap<&str, BTreeSet<&str>> = HashMap::new();
        for (id, record) in sessions {
            if let Some(v) = record.vendor_data.as_deref() {
                vendors.entry(id.as_str()).or_default().insert(v);
            }
        }
        for Parsed { env, .. } in envelopes.iter().flatten() {
            if let (Some(id), Some(v)) = (&env.session_id, &env.vendor_data) {
                if !v.is_empty() {
                    vendors.entry(id.as_str()).or_default().insert(v.as_str());
                }
            }
        }
        let mut values = BTreeSet::new();
        let mut subjects = BTreeSet::new();
        let mut oldest_ms = i64::MAX;
        for (event, parsed) in events.iter().zip(envelopes) {
            let Some(Parsed { env, keys }) = parsed else {
                continue;
            };
            let Some(session_id) = &env.session_id else {
                continue;
            };
            let expired = env.status == Some(SessionStatus::Expired);
            if env.decision.is_none() && !expired {
                continue;
            }
            subjects.insert(subject_key(None, session_id));
            for vendor in vendors.get(session_id.as_str()).into_iter().flatten() {
                subjects.insert(subject_key(Some(vendor), session_id));
            }
            for (kind, value) in keys {
                values.insert((kind.as_str().to_owned(), value.clone()));
            }
            oldest_ms = oldest_ms.min(event.received_at_ms);
        }
        if subjects.is_empty() {
            return Ok(GraphContext::default());
        }
        let q = GraphQuery {
            values: values.into_iter().collect(),
            subjects: subjects.into_iter().collect(),
            from_ms: oldest_ms.saturating_sub(self.policies.graph_window_ms),
            // One more than the cap: the subject itself may be among them.
            limit: usize::try_from(self.policies.graph_count_cap)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
        };
        Ok(self.store.graph_context(q).await?)
    }

    /// Identity-graph signals as of the event: committed links within the
    /// window plus those earlier in this batch, other subjects only.
    fn graph(
        &self,
        history: &GraphContext,
        pending: &Pending,
        subject: &str,
        session_id: &str,
        keys: &[(IdentityKind, String)],
        now_ms: i64,
    ) -> GraphSignals {
        let from_ms = now_ms.saturating_sub(self.policies.graph_window_ms);
        let mut g = GraphSignals::default();
        for (kind, value) in keys {
            let mut others: BTreeSet<&str> = BTreeSet::new();
            if let Some(list) = history
                .linked
                .get(&(kind.as_str().to_owned(), value.clone()))
            {
                others.extend(
                    list.iter()
                        .filter(|(_, at)| *at >= from_ms)
                        .map(|(s, _)| s.as_str()),
                );
            }
            if let Some(list) = pending.links.get(&(*kind, value.clone())) {
                others.extend(
                    list.iter()
                        .filter(|(_, at)| *at >= from_ms)
                        .map(|(s, _)| s.as_str()),
                );
            }
            others.remove(subject);
            let n = (others.len() as u64).min(self.policies.graph_count_cap);
            let slot = match kind {
                IdentityKind::Document => &mut g.document_subjects,
                IdentityKind::Device => &mut g.device_subjects,
                IdentityKind::Ip => &mut g.ip_subjects,
                IdentityKind::Phone => &mut g.phone_subjects,
                IdentityKind::Email => &mut g.email_subjects,
            };
            *slot = (*slot).max(n);
        }
        let mut declined: BTreeSet<&str> = history
            .declined
            .get(subject)
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if let Some(p) = pending.declines.get(subject) {
            declined.extend(p.iter().map(String::as_str));
        }
        declined.remove(session_id);
        g.prior_declines = declined.len() as u64;
        g
    }

    /// Follow the log until `stop` turns true: apply a batch at a time
    /// (checking `stop` between batches, so shutdown never waits for a
    /// backlog: what is left is applied on the next start), then wait for
    /// the next commit. Transient errors are logged and retried with backoff.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut head = self.log.subscribe();
        let mut backoff = std::time::Duration::from_millis(50);
        let mut fence = self.fence.clone();
        let mut epoch = None;
        loop {
            if *stop.borrow() {
                return;
            }
            if let Some(fence) = &mut fence {
                let held = fence.borrow_and_update().as_ref().map(|f| f.epoch);
                let Some(held) = held else {
                    // Another instance projects; wait for the lease.
                    tokio::select! {
                        r = fence.changed() => if r.is_err() { return },
                        r = stop.changed() => if r.is_err() { return },
                    }
                    continue;
                };
                if epoch != Some(held) {
                    epoch = Some(held);
                    self.resumed
                        .store(false, std::sync::atomic::Ordering::Release);
                }
            }
            match self.step().await {
                Ok((_, true)) => {
                    backoff = std::time::Duration::from_millis(50);
                    continue;
                }
                Ok((_, false)) => backoff = std::time::Duration::from_millis(50),
                Err(ProjectorError::Store(e @ StoreError::LeaseLost { .. })) => {
                    // The partition moved (a rebalance, a stop): the fence
                    // refused the batch, which its new owner makes again.
                    tracing::info!(error = %e, "partition moved; batch not committed");
                    // Until the membership says so (its next tick at most).
                    tokio::select! {
                        alive = lease_moved(&mut fence) => if !alive { return },
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        r = stop.changed() => if r.is_err() { return },
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "projector failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        // A dropped sender means the server is gone: stop.
                        r = stop.changed() => if r.is_err() { return },
                    }
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                    continue;
                }
            }
            // Mark the head as seen before waiting, so a commit between the
            // last read and this wait still wakes us.
            head.borrow_and_update();
            if self
                .log
                .head()
                .await
                .map(|h| h > self.applied_offset())
                .unwrap_or(false)
            {
                continue;
            }
            tokio::select! {
                r = head.changed() => if r.is_err() { return },
                r = stop.changed() => if r.is_err() { return },
                alive = lease_moved(&mut fence) => if !alive { return },
            }
        }
    }

    fn applied_offset(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Once, before the first batch: make the policy in force at the stored
    /// offset active (the last activation applied, read back from the log),
    /// so that a restart decides the backlog as an uninterrupted run would.
    async fn resume_policy(&self) -> Result<(), ProjectorError> {
        use std::sync::atomic::Ordering;
        if !self.policies.follow_log || self.resumed.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(event) = last_applied_activation(&*self.log, &*self.store).await? {
            self.activate(&event);
        }
        self.resumed.store(true, Ordering::Release);
        Ok(())
    }

    /// Make the policy a [`POLICY_ACTIVATED`] event carries active. A policy
    /// that does not load (or not with the version it was recorded with) is
    /// refused loudly and the one in force stays.
    fn activate(&self, event: &StoredEvent) -> bool {
        let recorded = serde_json::from_slice::<PolicyActivated>(&event.body)
            .map_err(|e| e.to_string())
            .and_then(|a| {
                let policy = Policy::from_recorded(&a.source).map_err(|e| e.to_string())?;
                if policy.version() == a.version {
                    Ok(policy)
                } else {
                    Err(format!(
                        "it loads as version {}, not {}",
                        policy.version(),
                        a.version
                    ))
                }
            });
        match recorded {
            Ok(policy) => {
                if policy.version() != self.policies.active().version() {
                    tracing::info!(
                        offset = event.offset,
                        version = policy.version(),
                        "policy activated"
                    );
                }
                self.policies.set_active(policy);
                true
            }
            Err(error) => {
                if self.metrics.is_some() {
                    metrics::counter!("kycd_policy_activations_refused_total").increment(1);
                }
                tracing::error!(offset = event.offset, %error,
                    "the policy activated in the log does not load; the policy in force stays");
                false
            }
        }
    }
}

/// The internal event that makes a policy active from its position in the
/// log on (see [`Policies`]).
pub const POLICY_ACTIVATED: &str = "kycd.policy.activated";

/// The body of a [`POLICY_ACTIVATED`] event.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PolicyActivated {
    pub name: String,
    pub version: String,
    /// Who activated it (`kycd` at start, `operator:sighup`).
    pub actor: String,
    pub source: kycd_policy::PolicySource,
}

/// The event that activates `policy` from its position in the log.
pub fn policy_activation(policy: &Policy, actor: &str, at_ms: i64) -> kycd_log::NewEvent {
    let body = PolicyActivated {
        name: policy.name().to_owned(),
        version: policy.version().to_owned(),
        actor: actor.to_owned(),
        source: policy.source().clone(),
    };
    kycd_log::NewEvent {
        received_at_ms: at_ms,
        source: EventSource::Internal,
        kind: POLICY_ACTIVATED.to_owned(),
        session_id: None,
        didit_event_id: None,
        dedupe_keys: vec![format!(
            "policy:{}:{}",
            policy.version(),
            kycd_core::id::ulid_body(at_ms)
        )],
        body: serde_json::to_vec(&body).unwrap_or_default(),
        meta: json!({}),
    }
}

/// The activation the projector applied last (the store's mark), read back
/// from the log.
async fn last_applied_activation(
    log: &dyn EventLog,
    store: &dyn Store,
) -> Result<Option<StoredEvent>, ProjectorError> {
    let mark = format!("{CONSUMER}{}", kycd_log::store::POLICY_MARK_SUFFIX);
    let at = store.consumer_offset(&mark).await?;
    if at == 0 {
        return Ok(None);
    }
    Ok(log
        .read(at - 1, 1)
        .await?
        .into_iter()
        .find(|e| e.offset == at))
}

/// The version of the policy in force at the head of `log`: the last
/// activation after the projector's mark, else the one the mark names, else
/// none. The server activates its configured policy only when it differs.
pub async fn policy_at_head(
    log: &dyn EventLog,
    store: &dyn Store,
) -> Result<Option<String>, ProjectorError> {
    let version_of = |e: &StoredEvent| {
        serde_json::from_slice::<PolicyActivated>(&e.body)
            .ok()
            .map(|a| a.version)
    };
    let mut version = last_applied_activation(log, store)
        .await?
        .as_ref()
        .and_then(version_of);
    // Activations not yet projected: the backlog after the projector's
    // offset (the mark commits with that offset, so it is never past it).
    let mut after = store.consumer_offset(CONSUMER).await?;
    loop {
        let page = log.read(after, BATCH).await?;
        let Some(last) = page.last() else { break };
        after = last.offset;
        for e in &page {
            if e.source == EventSource::Internal && e.kind == POLICY_ACTIVATED {
                version = version_of(e).or(version);
            }
        }
    }
    Ok(version)
}

/// The internal event a worker appends once Didit created a step-up session.
pub const STEP_UP_CREATED: &str = "kycd.step_up.created";
/// The internal event appended when a step-up ran out of time or could not
/// be created.
pub const STEP_UP_EXPIRED: &str = "kycd.step_up.expired";
/// The internal event the API appends for a person's decision.
pub const REVIEW_DECIDED: &str = "kycd.review";
/// The metadata key kycd sets on a step-up session it creates: the
/// original session's id. Didit echoes metadata in every delivery.
pub const STEP_UP_META: &str = kycd_log::route::STEP_UP_OF_META;
/// The metadata key naming the check a step-up session is for.
pub const STEP_UP_CHECK_META: &str = "kycd_step_up_check";

/// The reason a decision carries when the policy asked to resubmit a step
/// the session's workflow does not have and kycd sent it to review.
pub const RESUBMIT_IMPOSSIBLE: &str = "resubmit_impossible";

/// The session document's key for the links later sessions revealed.
const LATER_LINKS: &str = "later_links";

/// A value shared by more other customers than this is too common to
/// re-decide them all on (a family's tablet, a carrier's number pool);
/// the new session's own graph counts still see it.
pub const LATER_LINK_MAX_SUBJECTS: usize = 10;

/// At most this many later links are kept on one session.
const LATER_LINK_MAX_KEPT: usize = 25;

/// Whom a new session links to, for [`Projector::retroactive`].
#[derive(Debug, Default)]
struct LinkTargets {
    /// Other subjects -> the kinds of value shared with them.
    subjects: std::collections::BTreeMap<String, BTreeSet<&'static str>>,
    /// Sessions Didit's liveness matched this face with.
    sessions: BTreeSet<String>,
}

/// The session document's key for the status the policy last decided on,
/// so that a repeat of that state decides nothing.
const DECIDED_STATUS: &str = "decided_status";

/// How a step-up session ended, for [`Projector::complete_step_up`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum StepUpResult {
    /// The policy decided the step-up session with this outcome.
    Decided(String),
    /// The step-up session expired at Didit unfinished.
    Expired,
}

/// The batch's decisions, for the metrics: each active decision's outcome
/// (as the policy's [`Outcome`] names it, or `other` for a stored outcome
/// it does not know), and the receive time of its event when a webhook
/// delivery brought it. Shadow decisions are left out.
fn decided(events: &[StoredEvent], batch: &ProjectionBatch) -> Vec<(&'static str, Option<i64>)> {
    batch
        .decisions
        .iter()
        .filter(|d| !d.shadow)
        .map(|d| {
            let outcome = Outcome::parse(&d.outcome).map_or("other", Outcome::as_str);
            let event = events
                .binary_search_by_key(&d.event_offset, |e| e.offset)
                .ok()
                .map(|i| &events[i]);
            // Only the decision on the delivery's own session: one that
            // re-decides other sessions (a later link) times its own.
            let from_webhook = event
                .filter(|e| e.source == EventSource::Webhook)
                .filter(|e| e.session_id.as_deref() == Some(d.session_id.as_str()))
                .map(|e| e.received_at_ms);
            (outcome, from_webhook)
        })
        .collect()
}

/// Whether the session's step-up was requested and has no result yet.
fn step_up_open(doc: &Value) -> bool {
    doc.pointer("/step_up/status").and_then(Value::as_str) == Some("requested")
}

/// A step-up row that ended at `at_ms` (only the state and the finish time
/// change on a row that exists).
fn finished_step_up(
    session: &str,
    original: &str,
    checks: Vec<String>,
    state: &str,
    at_ms: i64,
) -> StepUpRecord {
    StepUpRecord {
        step_up_session_id: session.to_owned(),
        original_session_id: original.to_owned(),
        checks,
        state: state.to_owned(),
        url: None,
        workflow_id: None,
        requested_at_ms: at_ms,
        expires_at_ms: at_ms,
        finished_at_ms: Some(at_ms),
    }
}

/// The original session, when this delivery is about a step-up session.
fn step_up_of(env: &Envelope) -> Option<&str> {
    env.metadata
        .as_ref()?
        .get(STEP_UP_META)?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// Whether this delivery is Didit telling kycd about kycd's own write-back,
/// recognised by content: a status update (by webhook or by poll) carrying
/// the status kycd wrote, for the decision that wrote it. The marker stays
/// until Didit reports a status of its own or kycd writes again, so every
/// copy of the echo is recognised, however many arrive and in any order,
/// and a person's decision is never overturned on the strength of an event
/// it caused. The history entry names the decision.
fn recognise_echo(
    record: &mut SessionRecord,
    env: &Envelope,
    source: EventSource,
    moved: bool,
) -> bool {
    let Some(written) = record
        .doc
        .pointer("/writeback/status")
        .and_then(Value::as_str)
    else {
        return false;
    };
    let carrier = env.webhook_type == WebhookType::StatusUpdated || source == EventSource::Polled;
    let ours = carrier && env.status.as_ref().map(SessionStatus::as_str) == Some(written);
    if !ours {
        if moved {
            // Didit moved the session to a status of its own: what kycd
            // wrote is history, and a later copy of it is stale anyway.
            if let Value::Object(doc) = &mut record.doc {
                doc.remove("writeback");
            }
        }
        return false;
    }
    let by = record
        .doc
        .pointer("/writeback/decision_id")
        .cloned()
        .unwrap_or(Value::Null);
    if let Some(Value::Object(last)) = record
        .doc
        .get_mut("history")
        .and_then(Value::as_array_mut)
        .and_then(|h| h.last_mut())
    {
        last.insert("by_kycd".into(), by);
    }
    true
}

/// A session event's envelope, and the identity values its decision
/// carries (hashed once, for both the batch's prefetch and its facts).
struct Parsed {
    env: Envelope,
    keys: Vec<(IdentityKind, String)>,
}

/// Parse each session event's stored body once for the whole batch.
fn parse_envelopes(events: &[StoredEvent]) -> Vec<Option<Parsed>> {
    events
        .iter()
        .map(|event| {
            // Only Didit's deliveries and polls are envelopes: kycd's own
            // events (step-ups, reviews, audit anchors) and the operator's
            // subject writes are read by their own code.
            if matches!(event.source, EventSource::Subject | EventSource::Internal)
                || event.session_id.is_none()
            {
                return None;
            }
            match Envelope::from_slice(&event.body) {
                Ok(env) => {
                    let keys = env
                        .decision
                        .as_ref()
                        .map(facts::identity_keys)
                        .unwrap_or_default();
                    Some(Parsed { env, keys })
                }
                Err(err) => {
                    // The intake only logs what parsed, so this means a bug
                    // or a corrupted row; say which event, never its content.
                    tracing::error!(event = %event.id, error = %err, "stored event does not parse; skipped");
                    None
                }
            }
        })
        .collect()
}

/// Evaluate `policy` on `facts` and record the decision. Its time is the
/// event's receive time, so a replay reproduces it.
fn decide(
    policy: &Policy,
    shadow: bool,
    event: &StoredEvent,
    session: &SessionRecord,
    facts: Value,
    trigger: Value,
) -> DecisionRecord {
    let eval = policy.evaluate(&facts);
    let id = format!("dec_{}", kycd_core::id::ulid_body(event.received_at_ms));
    let outcome = eval.outcome.as_str().to_owned();
    let score = f64::from(eval.score);
    // Built part by part rather than by serialising the whole evaluation
    // into a tree: the trace is stored compactly (a rule that did nothing
    // is its id alone; `kycd_policy::expand_trace` restores the full form
    // for readers), which was most of a decision's cost and size.
    let part = |v: Result<Value, serde_json::Error>| v.unwrap_or(Value::Null);
    let mut doc = json!({
        "id": id,
        "session_id": session.session_id,
        "subject": session.vendor_data,
        "event_id": event.id.as_str(),
        "event_offset": event.offset,
        "shadow": shadow,
        "outcome": outcome,
        "score": score,
        "band": eval.band.as_str(),
        "policy": {"name": policy.name(), "version": policy.version()},
        "decided_at": format_millis(event.received_at_ms),
        "trigger": trigger,
    });
    // Trees are put in directly: inside `json!` each would be serialised
    // into a copy of itself.
    doc["reasons"] = part(serde_json::to_value(&eval.reasons));
    doc["checks"] = part(serde_json::to_value(&eval.checks));
    doc["resubmit_nodes"] = part(serde_json::to_value(&eval.resubmit_nodes));
    doc["trace"] = eval.stored_trace();
    doc["facts"] = facts;
    let mut outcome = outcome;
    if outcome == "resubmit" {
        // A resubmission of a step the workflow does not have would do
        // nothing at Didit: a person decides instead, told why.
        let nodes = doc["resubmit_nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let missing = actions::missing_steps(session.doc.get("didit_decision"), &nodes);
        if !missing.is_empty() {
            outcome = "review".to_owned();
            doc["outcome"] = json!(outcome);
            doc["resubmit_nodes"] = json!([]);
            if let Some(reasons) = doc["reasons"].as_array_mut() {
                reasons.push(json!({
                    "rule": RESUBMIT_IMPOSSIBLE,
                    "text": format!(
                        "The policy asked the customer to redo {}, which this session's workflow does not have: a person decides",
                        missing.join(", ")
                    ),
                }));
            }
        }
    }
    DecisionRecord {
        id,
        event_offset: event.offset,
        session_id: session.session_id.clone(),
        subject: session.vendor_data.clone(),
        policy_version: policy.version().to_owned(),
        shadow,
        outcome,
        score,
        decided_at_ms: event.received_at_ms,
        decided_by: None,
        doc,
    }
}

/// The decision as the session shows it.
pub fn summary(d: &DecisionRecord) -> Value {
    json!({
        "id": d.id,
        "outcome": d.outcome,
        "score": d.score,
        "reasons": d.doc.get("reasons").cloned().unwrap_or(Value::Null),
        "checks": d.doc.get("checks").cloned().unwrap_or(Value::Null),
        "policy_version": d.policy_version,
        "decided_at": d.doc.get("decided_at").cloned().unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kycd_log::sqlite_log::{SqliteLog, SqliteLogOptions};
    use kycd_log::store::{DecisionQuery, SqliteStore};
    use kycd_log::NewEvent;

    #[test]
    fn metrics_count_active_decisions_and_time_only_those_a_webhook_brought() {
        let event = |offset: u64, source: EventSource, received_at_ms: i64| StoredEvent {
            offset,
            id: kycd_core::EventId::new(received_at_ms),
            received_at_ms,
            source,
            kind: "status.updated".into(),
            session_id: Some(format!("s{offset}")),
            didit_event_id: None,
            dedupe_keys: Vec::new(),
            body: Vec::new(),
            meta: json!({}),
            partition: None,
        };
        let decision = |offset: u64, outcome: &str, shadow: bool| DecisionRecord {
            id: format!("dec_{offset}_{shadow}"),
            event_offset: offset,
            session_id: format!("s{offset}"),
            subject: None,
            policy_version: "v1".into(),
            shadow,
            outcome: outcome.into(),
            score: 0.0,
            decided_at_ms: 0,
            decided_by: None,
            doc: json!({}),
        };
        let events = [
            event(7, EventSource::Webhook, 1_000),
            event(8, EventSource::Polled, 2_000),
            event(9, EventSource::Internal, 3_000),
            event(10, EventSource::Webhook, 4_000),
        ];
        let batch = ProjectionBatch {
            decisions: vec![
                decision(7, "approve", false),
                decision(7, "decline", true),
                decision(8, "review", false),
                decision(9, "step_up", false),
                decision(10, "block", false),
                decision(10, "not-an-outcome", false),
            ],
            ..ProjectionBatch::default()
        };
        assert_eq!(
            decided(&events, &batch),
            [
                ("approve", Some(1_000)),
                ("review", None),
                ("step_up", None),
                ("block", Some(4_000)),
                ("other", Some(4_000)),
            ]
        );
    }

    /// The approved vector as a different customer with their own document,
    /// all behind the same IP address.
    fn approval(n: usize, subject: usize) -> Vec<u8> {
        let v: Value = didit::testdata::vectors();
        let case = v["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "approved_full_decision")
            .unwrap();
        let mut body: Value = serde_json::from_str(case["body"].as_str().unwrap()).unwrap();
        body["session_id"] = json!(format!("s-{n}"));
        body["vendor_data"] = json!(format!("user-{subject}"));
        body["event_id"] = json!(format!("e-{n}"));
        let d = &mut body["decision"];
        d["session_id"] = json!(format!("s-{n}"));
        d["id_verifications"][0]["document_number"] = json!(format!("D{n:06}"));
        d["ip_analyses"][0]["ip_address"] = json!("203.0.113.7");
        serde_json::to_vec(&body).unwrap()
    }

    async fn append(log: &SqliteLog, n: usize) {
        append_as(log, n, n).await;
    }

    async fn append_as(log: &SqliteLog, n: usize, subject: usize) {
        log.append(NewEvent {
            received_at_ms: 1_774_970_000_000 + n as i64,
            source: EventSource::Webhook,
            kind: "status.updated".into(),
            session_id: Some(format!("s-{n}")),
            didit_event_id: Some(format!("e-{n}")),
            dedupe_keys: vec![format!("event:e-{n}")],
            body: approval(n, subject),
            meta: json!({}),
        })
        .await
        .unwrap();
    }

    async fn ip_counts(store: &SqliteStore) -> Vec<u64> {
        let mut decisions = store
            .list_decisions(DecisionQuery {
                limit: 100,
                after_offset: Some(0),
                ..Default::default()
            })
            .await
            .unwrap();
        decisions.sort_by_key(|d| d.event_offset);
        decisions
            .iter()
            .map(|d| d.doc["facts"]["graph"]["ip_subjects"].as_u64().unwrap())
            .collect()
    }

    /// A log, a store and a projector whose graph counts stop at 3.
    fn capped_at_three(dir: &tempfile::TempDir) -> (Arc<SqliteLog>, Arc<SqliteStore>, Projector) {
        let log = Arc::new(
            SqliteLog::open(&dir.path().join("events.db"), SqliteLogOptions::default()).unwrap(),
        );
        let store = Arc::new(SqliteStore::open(&dir.path().join("store.db"), false).unwrap());
        let mut policies = Policies::new(Policy::builtin_default(), None);
        policies.graph_count_cap = 3;
        let projector = Projector::new(log.clone(), store.clone(), policies);
        (log, store, projector)
    }

    /// Didit's older payloads (v1 `kyc`, v2 singular objects) are kept in
    /// the session in the v3 shape the console and the actions read.
    #[tokio::test]
    async fn the_session_keeps_older_decisions_in_the_v3_shape() {
        let dir = tempfile::tempdir().unwrap();
        let (log, store, projector) = capped_at_three(&dir);
        let v: Value = didit::testdata::vectors();
        for (n, name) in ["v1_legacy_decision", "v2_singular_decision"]
            .iter()
            .enumerate()
        {
            let case = v["cases"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == *name)
                .unwrap();
            let mut body: Value = serde_json::from_str(case["body"].as_str().unwrap()).unwrap();
            body["session_id"] = json!(format!("old-{n}"));
            body["decision"]["session_id"] = json!(format!("old-{n}"));
            log.append(NewEvent {
                received_at_ms: 1_774_970_000_000 + n as i64,
                source: EventSource::Webhook,
                kind: "status.updated".into(),
                session_id: Some(format!("old-{n}")),
                didit_event_id: None,
                dedupe_keys: vec![format!("old:{n}")],
                body: serde_json::to_vec(&body).unwrap(),
                meta: json!({}),
            })
            .await
            .unwrap();
        }
        projector.catch_up().await.unwrap();
        let ids = ["old-0".to_owned(), "old-1".to_owned()];
        let sessions = store.load_sessions(&ids).await.unwrap();
        for id in ids {
            let d = &sessions[&id].doc["didit_decision"];
            assert!(d["id_verifications"].is_array(), "{id}: {d}");
            assert!(
                d.get("kyc").is_none() && d.get("id_verification").is_none(),
                "{id}: {d}"
            );
        }
    }

    #[tokio::test]
    async fn a_subject_among_the_most_recent_does_not_use_up_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (log, store, projector) = capped_at_three(&dir);
        for n in 0..4 {
            append(&log, n).await;
        }
        projector.catch_up().await.unwrap();
        // user-3 verifies again: the three others count, although user-3
        // itself is the most recently seen subject of that IP.
        append_as(&log, 4, 3).await;
        projector.catch_up().await.unwrap();
        assert_eq!(ip_counts(&store).await, [0, 1, 2, 3, 3]);
    }

    #[tokio::test]
    async fn graph_counts_stop_at_the_cap_within_a_batch_and_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (log, store, projector) = capped_at_three(&dir);

        // One batch: the counts come from the batch's own earlier events.
        for n in 0..6 {
            append(&log, n).await;
        }
        projector.catch_up().await.unwrap();
        assert_eq!(ip_counts(&store).await, [0, 1, 2, 3, 3, 3]);

        // Later batches: the counts come from the store, read with the cap.
        append(&log, 6).await;
        projector.catch_up().await.unwrap();
        append(&log, 7).await;
        projector.catch_up().await.unwrap();
        assert_eq!(ip_counts(&store).await, [0, 1, 2, 3, 3, 3, 3, 3]);
        // Each subject's document is its own: no document links at all.
        let any_document_link = store
            .list_decisions(DecisionQuery {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .iter()
            .any(|d| d.doc["facts"]["graph"]["document_subjects"] != json!(0));
        assert!(!any_document_link);
    }
}

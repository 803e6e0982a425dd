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
use kycd_core::when::format_millis;
use kycd_log::store::{
    DecisionRecord, GraphContext, GraphQuery, IdentityLink, ProjectionBatch, SessionRecord, Store,
    StoreError, SubjectVersion,
};
use kycd_log::{EventLog, EventSource, LogError, StoredEvent};
use kycd_policy::Policy;
use serde_json::{json, Value};
use tokio::sync::watch;

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

/// The policies the projector decides with. The active policy can be
/// swapped while running (SIGHUP); the swap takes effect from the next event.
#[derive(Clone)]
pub struct Policies {
    pub active: Arc<RwLock<Arc<Policy>>>,
    pub shadow: Option<Arc<Policy>>,
    pub graph_window_ms: i64,
    /// Where graph counts stop ([`GRAPH_COUNT_CAP`] by default).
    pub graph_count_cap: u64,
}

impl Policies {
    pub fn new(active: Policy, shadow: Option<Policy>) -> Self {
        Self {
            active: Arc::new(RwLock::new(Arc::new(active))),
            shadow: shadow.map(Arc::new),
            graph_window_ms: DEFAULT_GRAPH_WINDOW_MS,
            graph_count_cap: GRAPH_COUNT_CAP,
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
        }
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
        let from = self.store.consumer_offset(CONSUMER).await?;
        let events = self.log.read(from, BATCH).await?;
        let Some(last) = events.last().map(|e| e.offset) else {
            self.applied.send_replace(from);
            return Ok((from, false));
        };
        self.apply_batch(from, last, &events).await?;
        self.applied.send_replace(last);
        let head = self.log.head().await?;
        metrics::gauge!("kycd_consumer_lag", "consumer" => CONSUMER)
            .set(head.saturating_sub(last) as f64);
        Ok((last, events.len() == BATCH))
    }

    async fn apply_batch(
        &self,
        from: u64,
        to: u64,
        events: &[StoredEvent],
    ) -> Result<(), ProjectorError> {
        let mut ids: Vec<String> = events.iter().filter_map(|e| e.session_id.clone()).collect();
        ids.sort();
        ids.dedup();
        let mut sessions: HashMap<String, SessionRecord> = self.store.load_sessions(&ids).await?;
        let mut pending = Pending::default();
        let mut batch = ProjectionBatch::default();
        let active = self.policies.active();
        let envelopes = parse_envelopes(events);
        let history = self.prefetch(events, &envelopes, &sessions).await?;

        for (event, parsed) in events.iter().zip(envelopes) {
            if event.source == EventSource::Subject {
                self.apply_subject(event, &mut pending, &mut batch);
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
            let current = sessions.remove(&session_id);
            let before = current
                .as_ref()
                .map(|r| SessionStatus::from(r.status.as_str()));
            let held_ts = current
                .as_ref()
                .and_then(|r| r.doc.get("didit_decision_ts"))
                .and_then(Value::as_i64)
                .unwrap_or(i64::MIN);
            let Some(mut record) = apply(current, &delivery) else {
                continue;
            };

            // A trusted decision that became the session's latest is decided on.
            let trusted = env
                .decision
                .as_ref()
                .filter(|_| !envelope_only && env.timestamp >= held_ts);
            let status = env
                .status
                .clone()
                .unwrap_or(SessionStatus::Other(String::new()));
            // A session that expired unfinished carries no results, yet the
            // operator needs a decision on it: the delivery that moved it
            // into Expired (the state machine never lets Expired replace a
            // result) is decided on empty results, with no identity values.
            // Its status is authentic even from an envelope-only signature.
            let no_results = Decision::default();
            let expired = record.status == SessionStatus::Expired.as_str()
                && before != Some(SessionStatus::Expired);
            let trusted = trusted
                .map(|d| (d, keys))
                .or_else(|| expired.then(|| (&no_results, Vec::new())));
            let subject = subject_key(record.vendor_data.as_deref(), &session_id);
            if let Some((decision, keys)) = trusted {
                let decides = status.is_decided()
                    || expired
                    || env.webhook_type == WebhookType::DataUpdated
                    || event.source == EventSource::Polled;
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
                    };
                    let facts = facts::build(&input);
                    let made = decide(&active, false, event, &record, &facts);
                    record.doc["decision"] = summary(&made);
                    batch.decisions.push(made);
                    if let Some(shadow) = &self.policies.shadow {
                        batch
                            .decisions
                            .push(decide(shadow, true, event, &record, &facts));
                    }
                }
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
            if status == SessionStatus::Declined {
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
        self.store.commit(CONSUMER, from, to, batch).await?;
        Ok(())
    }

    /// An operator's subject write: `{"vendor_data": ..., "attributes": {...}}`.
    fn apply_subject(
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
        loop {
            if *stop.borrow() {
                return;
            }
            match self.step().await {
                Ok((_, true)) => {
                    backoff = std::time::Duration::from_millis(50);
                    continue;
                }
                Ok((_, false)) => backoff = std::time::Duration::from_millis(50),
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
            }
        }
    }

    fn applied_offset(&self) -> u64 {
        *self.applied.borrow()
    }
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
            if event.source == EventSource::Subject || event.session_id.is_none() {
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
    facts: &Value,
) -> DecisionRecord {
    let eval = serde_json::to_value(policy.evaluate(facts)).unwrap_or(Value::Null);
    let id = format!("dec_{}", kycd_core::id::ulid_body(event.received_at_ms));
    let outcome = eval
        .get("outcome")
        .and_then(Value::as_str)
        .unwrap_or("review")
        .to_owned();
    let score = eval.get("score").and_then(Value::as_f64).unwrap_or(0.0);
    let doc = json!({
        "id": id,
        "session_id": session.session_id,
        "subject": session.vendor_data,
        "event_id": event.id.as_str(),
        "event_offset": event.offset,
        "shadow": shadow,
        "outcome": outcome,
        "score": score,
        "band": eval.get("band"),
        "reasons": eval.get("reasons"),
        "checks": eval.get("checks"),
        "resubmit_nodes": eval.get("resubmit_nodes"),
        "trace": eval.get("trace"),
        "policy": {"name": policy.name(), "version": policy.version()},
        "facts": facts,
        "decided_at": format_millis(event.received_at_ms),
    });
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

    const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/didit");

    /// The approved vector as a different customer with their own document,
    /// all behind the same IP address.
    fn approval(n: usize, subject: usize) -> Vec<u8> {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{SHARED}/vectors.json")).unwrap(),
        )
        .unwrap();
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

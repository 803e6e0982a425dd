//! Replay: re-evaluate history with a candidate policy, side-effect free.
//!
//! The whole log runs through the same [`Projector`] the server uses, into a
//! scratch store, so every event's facts are rebuilt as of its position in
//! the log exactly as they were live. Only decisions inside the time window
//! are compared. Replaying with the policy that made the stored decisions
//! must reproduce each of them byte for byte apart from its own id.
//!
//! Two kinds of replay: with a candidate policy, which decides every event
//! (the log's policy activations are ignored), and with the recorded
//! policies ([`replay_recorded`]), which switches policy where the log did,
//! so that a log with policy reloads reproduces in full.

use std::collections::BTreeMap;
use std::sync::Arc;

use kycd_log::store::{DecisionQuery, DecisionRecord, Store};
use kycd_log::EventLog;
use kycd_policy::Policy;
use serde_json::{json, Value};

use crate::actions::ActionSettings;
use crate::projector::{Policies, Projector, ProjectorError};

/// A decision as compared: everything but its own id, with the trace in
/// its full form, so that a decision stored before traces were
/// compacted compares equal to the same decision made today.
pub fn comparable(d: &DecisionRecord) -> Value {
    let mut doc = d.doc.clone();
    if let Some(o) = doc.as_object_mut() {
        o.remove("id");
        if let Some(trace) = o.get_mut("trace") {
            kycd_policy::expand_trace(trace);
        }
    }
    doc
}

/// What became of one stored decision in a replay: every decision in the
/// window is in exactly one category, so the categories add up to
/// [`Report::total`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Decided again with the same bytes, apart from its id.
    Reproduced,
    /// Decided again with another outcome.
    ChangedOutcome,
    /// Decided again with the same outcome and other reasons, score,
    /// trace or facts.
    ChangedReasons,
    /// A person's decision: kept as it was, whatever the policy.
    Person,
    /// Not decided again: the replayed history went another way before
    /// it (an earlier decision that changed, say, never asked for the
    /// step-up whose result this decision was on).
    NotDecidedAgain,
}

impl Category {
    pub const ALL: [Category; 5] = [
        Category::Reproduced,
        Category::ChangedOutcome,
        Category::ChangedReasons,
        Category::Person,
        Category::NotDecidedAgain,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Reproduced => "reproduced",
            Category::ChangedOutcome => "changed_outcome",
            Category::ChangedReasons => "changed_reasons",
            Category::Person => "person",
            Category::NotDecidedAgain => "not_decided_again",
        }
    }

    /// How the report prints it.
    pub fn label(self) -> &'static str {
        match self {
            Category::Reproduced => "reproduced byte for byte",
            Category::ChangedOutcome => "would change outcome",
            Category::ChangedReasons => "would change reasons only",
            Category::Person => "decided by a person and kept",
            Category::NotDecidedAgain => "not decided again",
        }
    }
}

/// Why a decision was made (`trigger.kind` in the decision): a Didit
/// delivery or poll, a step-up's completion or expiry, a later session's
/// link (retroactive), an operator's subject change, a person. Decisions
/// stored before kycd recorded triggers count as `delivery`, or `review`
/// for a person's.
pub fn trigger_of(d: &DecisionRecord) -> String {
    match d.doc.pointer("/trigger/kind").and_then(Value::as_str) {
        Some(kind) => kind.to_owned(),
        None if d.policy_version == "reviewer" => "review".to_owned(),
        None => "delivery".to_owned(),
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub candidate_version: String,
    /// Stored active decisions in the window: the sum of `categories`.
    pub total: u64,
    /// Category (see [`Category`]) -> count, every category present.
    pub categories: BTreeMap<String, u64>,
    /// Trigger ([`trigger_of`]) -> category -> count.
    pub by_trigger: BTreeMap<String, BTreeMap<String, u64>>,
    /// Stored policy decisions in the window that the replay decided again.
    pub compared: u64,
    /// Of those, how many changed outcome.
    pub changed: u64,
    /// Of those, how many were reproduced byte for byte (apart from the id).
    pub identical: u64,
    /// Stored outcome -> replayed outcome -> count.
    pub matrix: BTreeMap<String, BTreeMap<String, u64>>,
    pub examples: Vec<Value>,
}

impl Report {
    /// The categories as printed: "N label" each, in [`Category::ALL`] order.
    pub fn category_counts(&self) -> String {
        Category::ALL
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    self.categories.get(c.as_str()).copied().unwrap_or(0),
                    c.label()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Window and presentation of a replay.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub max_examples: usize,
    pub graph_window_ms: i64,
}

/// Replay `log` with `candidate` into `scratch` (an empty store) and compare
/// with the active decisions in `live`.
pub async fn replay(
    log: Arc<dyn EventLog>,
    live: &dyn Store,
    scratch: Arc<dyn Store>,
    candidate: Policy,
    w: Window,
) -> Result<Report, ProjectorError> {
    replay_with(log, live, scratch, candidate, w, Arc::default()).await
}

/// [`replay`] with the action settings the server ran with. What the
/// actions do is part of a session's state (a step-up requested, a
/// write-back whose echo is kycd's own), so a replay that is to reproduce
/// the stored decisions plans actions as the server did; they land in the
/// scratch store's outbox and are never run.
pub async fn replay_with(
    log: Arc<dyn EventLog>,
    live: &dyn Store,
    scratch: Arc<dyn Store>,
    candidate: Policy,
    w: Window,
    actions: Arc<ActionSettings>,
) -> Result<Report, ProjectorError> {
    let version = candidate.version().to_owned();
    let mut policies = Policies::new(candidate, None);
    policies.follow_log = false;
    run(log, live, scratch, policies, version, w, actions).await
}

/// What [`Report::candidate_version`] says of a replay with the recorded
/// policies.
pub const RECORDED: &str = "recorded";

/// Replay with the policies the log recorded: each event is decided by the
/// policy that was in force at its position (the built-in default before
/// the log's first activation). On an untampered log every policy decision
/// reproduces byte for byte, whatever reloads happened.
pub async fn replay_recorded(
    log: Arc<dyn EventLog>,
    live: &dyn Store,
    scratch: Arc<dyn Store>,
    w: Window,
    actions: Arc<ActionSettings>,
) -> Result<Report, ProjectorError> {
    let policies = Policies::new(Policy::builtin_default(), None);
    run(
        log,
        live,
        scratch,
        policies,
        RECORDED.to_owned(),
        w,
        actions,
    )
    .await
}

async fn run(
    log: Arc<dyn EventLog>,
    live: &dyn Store,
    scratch: Arc<dyn Store>,
    mut policies: Policies,
    candidate_version: String,
    w: Window,
    actions: Arc<ActionSettings>,
) -> Result<Report, ProjectorError> {
    let mut report = Report {
        candidate_version,
        categories: Category::ALL
            .iter()
            .map(|c| (c.as_str().to_owned(), 0))
            .collect(),
        ..Report::default()
    };
    policies.graph_window_ms = w.graph_window_ms;
    policies.actions = actions;
    Projector::new(log, scratch.clone(), policies)
        .catch_up()
        .await?;

    let mut after = 0u64;
    loop {
        let page = live
            .list_decisions(DecisionQuery {
                after_offset: Some(after),
                limit: 500,
                ..DecisionQuery::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = last.event_offset;
        for stored in &page {
            let t = stored.decided_at_ms;
            if w.since_ms.is_some_and(|s| t < s) || w.until_ms.is_some_and(|u| t >= u) {
                continue;
            }
            report.total += 1;
            let trigger = trigger_of(stored);
            let mut count = |c: Category| {
                *report.categories.entry(c.as_str().to_owned()).or_default() += 1;
                *report
                    .by_trigger
                    .entry(trigger.clone())
                    .or_default()
                    .entry(c.as_str().to_owned())
                    .or_default() += 1;
            };
            if stored.policy_version == "reviewer" {
                count(Category::Person);
                continue;
            }
            let Some(again) = scratch
                .decision_for_event(stored.event_offset, &stored.session_id, false)
                .await?
            else {
                count(Category::NotDecidedAgain);
                continue;
            };
            count(if comparable(stored) == comparable(&again) {
                Category::Reproduced
            } else if stored.outcome != again.outcome {
                Category::ChangedOutcome
            } else {
                Category::ChangedReasons
            });
            report.compared += 1;
            *report
                .matrix
                .entry(stored.outcome.clone())
                .or_default()
                .entry(again.outcome.clone())
                .or_default() += 1;
            if comparable(stored) == comparable(&again) {
                report.identical += 1;
            }
            if stored.outcome != again.outcome {
                report.changed += 1;
                if report.examples.len() < w.max_examples {
                    report.examples.push(json!({
                        "session_id": stored.session_id,
                        "trigger": trigger,
                        "event_offset": stored.event_offset,
                        "from": stored.outcome,
                        "to": again.outcome,
                        "stored_reasons": stored.doc.get("reasons"),
                        "replayed_reasons": again.doc.get("reasons"),
                    }));
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str, trace: Value) -> DecisionRecord {
        DecisionRecord {
            id: id.into(),
            event_offset: 7,
            session_id: "s-1".into(),
            subject: None,
            policy_version: "v".into(),
            shadow: false,
            outcome: "review".into(),
            score: 40.0,
            decided_at_ms: 0,
            decided_by: None,
            doc: json!({"id": id, "outcome": "review", "trace": trace}),
        }
    }

    #[test]
    fn a_decision_stored_with_its_full_trace_compares_equal_to_a_compact_one() {
        let eval = kycd_policy::Policy::builtin_default().evaluate(&json!({}));
        let full = stored("dec_a", serde_json::to_value(&eval.trace).unwrap());
        let compact = stored("dec_b", eval.stored_trace());
        assert_ne!(full.doc["trace"], compact.doc["trace"]);
        assert_eq!(comparable(&full), comparable(&compact));
        let mut other = eval.stored_trace();
        other[0] = json!("another_rule");
        assert_ne!(comparable(&full), comparable(&stored("dec_c", other)));
    }
}

//! Evaluation: facts in, a decision with its reasons and a full trace out.
//!
//! Semantics, in one place:
//! - every rule, then every table, runs in policy order; nothing
//!   short-circuits, so the trace always shows every rule;
//! - a fired rule adds its score and may force an outcome; a table adds one
//!   contribution per matched row;
//! - the total is clamped to 0..=100 and mapped to a band; the final
//!   outcome is the most severe of the band's outcome and every forced one
//!   (block > decline > review > resubmit > step_up > approve);
//! - `checks` (step-up) and `resubmit_nodes` are the unions, in policy
//!   order, from the contributions that asked for them, and are filled only
//!   when the final outcome is step_up or resubmit respectively: a declined
//!   session has nothing to step up to;
//! - an expression that fails at evaluation time (a type error such as
//!   `null < 18`), a `when` that is not exactly `true` or `false`, or a
//!   table whose output is invalid fails closed: the entry is not "fired",
//!   its error goes in the trace, and it forces `review` with a reason, so
//!   a broken rule can never let a customer through unseen.

use crate::outcome::{Check, Outcome, ResubmitNode};
use crate::policy::Policy;
use crate::table::TableHit;
use serde::Serialize;
use std::sync::Arc;
use zen_expression::vm::VM;
use zen_expression::{Scope, Variable};

/// The text of the reason an evaluation error adds.
pub const ERROR_REASON: &str = "policy error: this rule could not be evaluated on these facts, so the decision is sent to review (see the trace)";

/// The reason id of the step-up hold ([`Policy::evaluate`]).
pub const STEP_UP_HOLD_RULE: &str = "step_up_open";

/// The reason text of the step-up hold.
pub const STEP_UP_HOLD_REASON: &str = "A step-up is open: until it is completed or expires the session waits for it, and only a decline or a block can replace it";

/// A decision and how it was reached. Serialises deterministically: the same
/// policy and facts give byte-identical JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// The policy's name and version, so a stored decision names its rules.
    pub policy: String,
    pub policy_version: String,
    pub outcome: Outcome,
    /// The total of every contribution, clamped to 0..=100 (higher is riskier).
    pub score: u32,
    /// The outcome of the band the score fell in, before forced outcomes.
    pub band: Outcome,
    /// Every rule or table row that fired (and every evaluation error), in
    /// policy order.
    pub reasons: Vec<Reason>,
    /// For `step_up`: the checks to ask for; empty otherwise.
    pub checks: Vec<Check>,
    /// For `resubmit`: the Didit steps to redo; empty otherwise.
    pub resubmit_nodes: Vec<ResubmitNode>,
    /// One entry per rule and table, in policy order.
    pub trace: Vec<TraceEntry>,
}

/// Why: the rule (or table) id and its reason text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub rule: Arc<str>,
    pub text: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceKind {
    Rule,
    Table,
}

/// What one rule or table did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceEntry {
    pub id: Arc<str>,
    pub kind: TraceKind,
    pub fired: bool,
    /// Its contribution to the total (before clamping).
    pub score: i64,
    /// The most severe outcome it forced, if any.
    pub outcome: Option<Outcome>,
    /// Tables only: each matched row's validated output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hits: Option<Vec<TableHit>>,
    /// Set when the entry failed to evaluate (it then forced review).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TraceEntry {
    /// The entry of a rule that did nothing: not fired, no contribution,
    /// no error. The one definition the evaluator, the compact stored
    /// trace and its expansion share.
    fn quiet_rule(id: Arc<str>) -> Self {
        TraceEntry {
            id,
            kind: TraceKind::Rule,
            fired: false,
            score: 0,
            outcome: None,
            hits: None,
            error: None,
        }
    }

    fn is_quiet_rule(&self) -> bool {
        *self == TraceEntry::quiet_rule(self.id.clone())
    }
}

impl Evaluation {
    /// The trace as a decision stores it: a rule that did nothing (most of
    /// them, on most sessions) is written as its id alone; every other
    /// entry in full. Stored decisions are less than half the size, and
    /// building them costs a fraction of serialising every entry.
    /// [`expand_trace`] gives back exactly the full form, which is what the
    /// API and the console show.
    pub fn stored_trace(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.trace
                .iter()
                .map(|t| {
                    if t.is_quiet_rule() {
                        serde_json::Value::String(t.id.to_string())
                    } else {
                        serde_json::to_value(t).unwrap_or(serde_json::Value::Null)
                    }
                })
                .collect(),
        )
    }

    /// Whether any rule or table failed to evaluate.
    pub fn has_errors(&self) -> bool {
        self.trace.iter().any(|t| t.error.is_some())
    }

    /// The ids of the reasons, in order (what golden cases pin).
    pub fn reason_ids(&self) -> Vec<&str> {
        self.reasons.iter().map(|r| &*r.rule).collect()
    }
}

/// Accumulates contributions while rules and tables run.
struct Tally {
    total: i64,
    forced: Option<Outcome>,
    reasons: Vec<Reason>,
    checks: Vec<Check>,
    nodes: Vec<ResubmitNode>,
}

impl Tally {
    fn force(&mut self, outcome: Outcome) {
        self.forced = Some(self.forced.map_or(outcome, |f| f.max(outcome)));
    }

    fn add(
        &mut self,
        id: &Arc<str>,
        score: i64,
        outcome: Option<Outcome>,
        reason: Arc<str>,
        checks: &[Check],
        nodes: &[ResubmitNode],
    ) {
        self.total += score;
        if let Some(o) = outcome {
            self.force(o);
        }
        self.reasons.push(Reason {
            rule: id.clone(),
            text: reason,
        });
        for c in checks {
            if !self.checks.contains(c) {
                self.checks.push(*c);
            }
        }
        for n in nodes {
            if !self.nodes.contains(n) {
                self.nodes.push(n.clone());
            }
        }
    }

    fn error(&mut self, id: &Arc<str>) {
        self.force(Outcome::Review);
        self.reasons.push(Reason {
            rule: id.clone(),
            text: ERROR_REASON.into(),
        });
    }
}

/// How [`Policy::evaluate_with`] runs.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    /// Production: the projected facts, the direct table evaluator.
    Direct,
    /// The whole facts document, the direct table evaluator: differs from
    /// `Direct` only if the projection leaves out something read.
    Unprojected,
    /// The whole facts document, zen-engine's graph evaluator for tables.
    #[cfg(feature = "zen-reference")]
    Reference,
}

impl Policy {
    /// Evaluates the policy over a facts document (docs/facts.md). Pure:
    /// no I/O, no clock; never panics on any facts.
    pub fn evaluate(&self, facts: &serde_json::Value) -> Evaluation {
        self.evaluate_with(facts, Mode::Direct)
    }

    /// Evaluates like [`Policy::evaluate`] but runs tables through
    /// zen-engine's graph evaluator, over the whole facts document: the
    /// reference the direct table evaluator and the projection must agree
    /// with. Slower; used by [`crate::run_cases`]. Only with the
    /// `zen-reference` feature.
    #[cfg(feature = "zen-reference")]
    pub fn evaluate_reference(&self, facts: &serde_json::Value) -> Evaluation {
        self.evaluate_with(facts, Mode::Reference)
    }

    pub(crate) fn evaluate_with(&self, facts: &serde_json::Value, mode: Mode) -> Evaluation {
        // One conversion into ZEN's value type, shared by every rule and
        // table: of only the facts the policy reads, or of everything
        // (which thereby also checks the projection).
        let env = if mode == Mode::Direct {
            self.projection.apply(facts)
        } else {
            Variable::from(facts)
        };
        let scope = Scope::new(env.clone());
        let mut vm = VM::new();
        let mut tally = Tally {
            total: 0,
            forced: None,
            reasons: Vec::new(),
            checks: Vec::new(),
            nodes: Vec::new(),
        };
        let mut trace = Vec::with_capacity(self.rules.len() + self.tables.len());

        for rule in &self.rules {
            let result = rule.compiled.evaluate_with_scope(&scope, &mut vm);
            let fired = match result {
                Ok(Variable::Bool(b)) => Ok(b),
                Ok(other) => Err(format!(
                    "`when` must give true or false, but gave {}",
                    other.type_name()
                )),
                Err(e) => Err(e.to_string()),
            };
            let entry = match fired {
                Ok(true) => {
                    tally.add(
                        &rule.id,
                        rule.score,
                        rule.outcome,
                        rule.reason.clone(),
                        &rule.checks,
                        &rule.nodes,
                    );
                    TraceEntry {
                        id: rule.id.clone(),
                        kind: TraceKind::Rule,
                        fired: true,
                        score: rule.score,
                        outcome: rule.outcome,
                        hits: None,
                        error: None,
                    }
                }
                Ok(false) => TraceEntry::quiet_rule(rule.id.clone()),
                Err(error) => {
                    tally.error(&rule.id);
                    TraceEntry {
                        id: rule.id.clone(),
                        kind: TraceKind::Rule,
                        fired: false,
                        score: 0,
                        outcome: Some(Outcome::Review),
                        hits: None,
                        error: Some(error),
                    }
                }
            };
            trace.push(entry);
        }

        for table in &self.tables {
            let result = match mode {
                Mode::Direct | Mode::Unprojected => table.evaluate(&env, &mut vm),
                #[cfg(feature = "zen-reference")]
                Mode::Reference => table.evaluate_reference(&env),
            };
            let entry = match result {
                Ok(hits) => {
                    let mut score = 0;
                    let mut outcome: Option<Outcome> = None;
                    for hit in &hits {
                        tally.add(
                            &table.id,
                            hit.score,
                            hit.outcome,
                            hit.reason.as_str().into(),
                            &hit.checks,
                            &hit.nodes,
                        );
                        score += hit.score;
                        if let Some(o) = hit.outcome {
                            outcome = Some(outcome.map_or(o, |x| x.max(o)));
                        }
                    }
                    TraceEntry {
                        id: table.id.clone(),
                        kind: TraceKind::Table,
                        fired: !hits.is_empty(),
                        score,
                        outcome,
                        hits: Some(hits),
                        error: None,
                    }
                }
                Err(error) => {
                    tally.error(&table.id);
                    TraceEntry {
                        id: table.id.clone(),
                        kind: TraceKind::Table,
                        fired: false,
                        score: 0,
                        outcome: Some(Outcome::Review),
                        hits: None,
                        error: Some(error),
                    }
                }
            };
            trace.push(entry);
        }

        // Clamped after summing, so a mitigating (negative) rule can offset
        // a risky one but the total can never leave 0..=100.
        let score = tally.total.clamp(0, 100) as u32;
        let band = self.band_for(score);
        let mut outcome = tally.forced.map_or(band, |f| band.max(f));
        // The step-up hold, an invariant of the engine rather than of each
        // rule: while a requested step-up has neither completed nor
        // expired, nothing but a decline or a block may replace it. Rules
        // that asked for the step-up are guarded on `step_up.status ==
        // "none"` and so no longer fire; without the hold, any later event
        // would let the session through as `approve` while the check it
        // waits for is still open.
        if step_up_open(facts) && outcome.severity() < Outcome::Decline.severity() {
            outcome = Outcome::StepUp;
            tally.reasons.push(Reason {
                rule: STEP_UP_HOLD_RULE.into(),
                text: STEP_UP_HOLD_REASON.into(),
            });
            tally.checks = requested_checks(facts);
        }
        Evaluation {
            policy: self.name.clone(),
            policy_version: self.version.clone(),
            outcome,
            score,
            band,
            reasons: tally.reasons,
            checks: if outcome == Outcome::StepUp {
                tally.checks
            } else {
                Vec::new()
            },
            resubmit_nodes: if outcome == Outcome::Resubmit {
                tally.nodes
            } else {
                Vec::new()
            },
            trace,
        }
    }
}

/// Whether the facts show a step-up that was requested and has neither
/// completed nor expired (docs/facts.md, `step_up.status`).
fn step_up_open(facts: &serde_json::Value) -> bool {
    facts
        .pointer("/step_up/status")
        .and_then(serde_json::Value::as_str)
        == Some("requested")
}

/// The checks an open step-up waits for, as the facts name them.
fn requested_checks(facts: &serde_json::Value) -> Vec<Check> {
    facts
        .pointer("/step_up/checks")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| serde_json::from_value::<Check>(c.clone()).ok())
        .collect()
}

/// Turns a stored trace ([`Evaluation::stored_trace`]) back into one object
/// per rule and table, in place: each bare id becomes the entry of a rule
/// that did nothing. A trace already in full form (decisions stored before
/// traces were compacted) is left as it is.
pub fn expand_trace(trace: &mut serde_json::Value) {
    let Some(entries) = trace.as_array_mut() else {
        return;
    };
    for entry in entries {
        if let serde_json::Value::String(id) = entry {
            let quiet = TraceEntry::quiet_rule(id.as_str().into());
            *entry = serde_json::to_value(quiet).unwrap_or(serde_json::Value::Null);
        }
    }
}

//! Golden cases: facts in, the expected outcome and reasons out
//! (`kycd policy test FILE CASES`).
//!
//! A cases file is TOML (or JSON, chosen by a `.json` name; TOML has no
//! `null`, so use JSON for a case that needs an unknown fact):
//!
//! ```toml
//! [base]                 # optional: the facts every case starts from
//! now = "2026-03-31T15:13:20.000Z"
//! # ...
//!
//! [[case]]
//! name = "under-age customer is declined"
//! facts = { document = { age = 16, age_band = "minor" } }   # merged onto base
//! expect = { outcome = "decline", reasons = ["under_age"] }
//! ```
//!
//! `facts` is merged into `base` key by key (objects recursively, anything
//! else replaces), so a case states only what differs from a clean session.
//! `expect.reasons` is the exact list of rule and table ids, in policy
//! order; `expect.checks`, `expect.score` and `expect.resubmit` (features)
//! are checked when given.

use crate::eval::{Evaluation, Mode};
use crate::outcome::{Check, Outcome};
use crate::policy::Policy;
use serde::Deserialize;
use serde_json::Value;
use std::fmt;

/// A cases file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cases {file}: {problem}")]
pub struct CasesError {
    pub file: String,
    pub problem: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    /// Free text for readers of the file.
    #[serde(default, rename = "description")]
    _description: Option<String>,
    #[serde(default)]
    base: Option<Value>,
    #[serde(default, alias = "cases")]
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// Free text for readers of the file.
    #[serde(default, rename = "description")]
    _description: Option<String>,
    #[serde(default)]
    facts: Option<Value>,
    expect: Expect,
}

/// What a case expects.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub outcome: Outcome,
    pub reasons: Vec<String>,
    #[serde(default)]
    pub checks: Option<Vec<Check>>,
    #[serde(default)]
    pub score: Option<u32>,
    /// The features of the resubmit nodes, in order.
    #[serde(default)]
    pub resubmit: Option<Vec<String>>,
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub expect: Expect,
    pub got: Evaluation,
    /// Empty when the case passed.
    pub failures: Vec<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Every case's result, with a readable `Display`.
#[derive(Debug, Clone)]
pub struct Report {
    pub policy: String,
    pub policy_version: String,
    pub cases_file: String,
    pub results: Vec<CaseResult>,
}

impl Report {
    pub fn all_passed(&self) -> bool {
        self.results.iter().all(CaseResult::passed)
    }

    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| !r.passed()).count()
    }
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, patch) => *slot = patch,
    }
}

fn summary(outcome: Outcome, reasons: &[&str]) -> String {
    format!("{outcome} [{}]", reasons.join(", "))
}

fn check(expect: &Expect, got: &Evaluation) -> Vec<String> {
    let mut failures = Vec::new();
    let got_reasons = got.reason_ids();
    if got.outcome != expect.outcome {
        failures.push(format!(
            "outcome: expected {}, got {}",
            expect.outcome, got.outcome
        ));
    }
    if got_reasons != expect.reasons {
        let missing: Vec<&str> = expect
            .reasons
            .iter()
            .map(String::as_str)
            .filter(|r| !got_reasons.contains(r))
            .collect();
        let unexpected: Vec<&str> = got_reasons
            .iter()
            .copied()
            .filter(|r| !expect.reasons.iter().any(|e| e == r))
            .collect();
        if missing.is_empty() && unexpected.is_empty() {
            failures.push("reasons: the same ids in a different order or count".into());
        }
        if !missing.is_empty() {
            failures.push(format!("missing reasons: {}", missing.join(", ")));
        }
        if !unexpected.is_empty() {
            failures.push(format!("unexpected reasons: {}", unexpected.join(", ")));
        }
    }
    if let Some(checks) = &expect.checks {
        if *checks != got.checks {
            let show = |c: &[Check]| c.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
            failures.push(format!(
                "checks: expected [{}], got [{}]",
                show(checks),
                show(&got.checks)
            ));
        }
    }
    if let Some(score) = expect.score {
        if score != got.score {
            failures.push(format!("score: expected {score}, got {}", got.score));
        }
    }
    if let Some(features) = &expect.resubmit {
        let got_features: Vec<&str> = got
            .resubmit_nodes
            .iter()
            .map(|n| n.feature.as_str())
            .collect();
        if got_features != *features {
            failures.push(format!(
                "resubmit: expected [{}], got [{}]",
                features.join(", "),
                got_features.join(", ")
            ));
        }
    }
    for t in got.trace.iter().filter(|t| t.error.is_some()) {
        failures.push(format!(
            "note: {} \"{}\" failed to evaluate: {}",
            match t.kind {
                crate::eval::TraceKind::Rule => "rule",
                crate::eval::TraceKind::Table => "table",
            },
            t.id,
            t.error.as_deref().unwrap_or_default()
        ));
    }
    // Notes alone do not fail a case that expected them.
    if failures.iter().all(|f| f.starts_with("note: ")) {
        failures.clear();
    }
    failures
}

/// Runs every case in `cases_text` against `policy`. `cases_name` names the
/// file in errors and picks the format (`.json` is JSON, anything else TOML).
pub fn run_cases(
    policy: &Policy,
    cases_text: &str,
    cases_name: &str,
) -> Result<Report, CasesError> {
    let err = |problem: String| CasesError {
        file: cases_name.to_owned(),
        problem,
    };
    let file: CaseFile = if cases_name.ends_with(".json") {
        // A bare list of cases is accepted too.
        let value: Value = serde_json::from_str(cases_text).map_err(|e| err(e.to_string()))?;
        let value = if value.is_array() {
            serde_json::json!({ "case": value })
        } else {
            value
        };
        serde_json::from_value(value).map_err(|e| err(e.to_string()))?
    } else {
        toml::from_str(cases_text).map_err(|e| err(e.to_string().trim().to_owned()))?
    };
    if file.case.is_empty() {
        return Err(err("no cases (add [[case]] entries)".into()));
    }
    let mut results: Vec<CaseResult> = Vec::with_capacity(file.case.len());
    for case in file.case {
        if results.iter().any(|r| r.name == case.name) {
            return Err(err(format!("case \"{}\": duplicate name", case.name)));
        }
        let mut facts = file
            .base
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()));
        if let Some(patch) = case.facts {
            merge(&mut facts, patch);
        }
        let got = policy.evaluate(&facts);
        let mut failures = check(&case.expect, &got);
        // Evaluating only the facts the policy reads must not change
        // anything.
        let unprojected = policy.evaluate_with(&facts, Mode::Unprojected);
        if unprojected != got {
            failures.push(format!(
                "the projection of the facts changes the decision: the whole facts give {}",
                serde_json::to_string(&unprojected).unwrap_or_default()
            ));
        }
        // The direct table evaluator must agree with zen-engine's.
        #[cfg(feature = "zen-reference")]
        {
            let reference = policy.evaluate_reference(&facts);
            if reference != got {
                failures.push(format!(
                    "the direct evaluator and zen-engine disagree: zen-engine gives {}",
                    serde_json::to_string(&reference).unwrap_or_default()
                ));
            }
        }
        results.push(CaseResult {
            name: case.name,
            expect: case.expect,
            got,
            failures,
        });
    }
    Ok(Report {
        policy: policy.name().to_owned(),
        policy_version: policy.version().to_owned(),
        cases_file: cases_name.to_owned(),
        results,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "policy {} (version {}), cases {}",
            self.policy, self.policy_version, self.cases_file
        )?;
        for r in &self.results {
            let got = summary(r.got.outcome, &r.got.reason_ids());
            if r.passed() {
                writeln!(f, "PASS  {}: {got}, score {}", r.name, r.got.score)?;
            } else {
                let expected: Vec<&str> = r.expect.reasons.iter().map(String::as_str).collect();
                writeln!(f, "FAIL  {}", r.name)?;
                writeln!(
                    f,
                    "        expected: {}",
                    summary(r.expect.outcome, &expected)
                )?;
                writeln!(f, "        got:      {got}, score {}", r.got.score)?;
                for failure in &r.failures {
                    writeln!(f, "        {failure}")?;
                }
            }
        }
        let failed = self.failed();
        write!(
            f,
            "{} cases: {} passed, {} failed",
            self.results.len(),
            self.results.len() - failed,
            failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_replaces_leaves_and_recurses_into_objects() {
        let mut base = json!({"a": {"b": 1, "c": [1]}, "d": true});
        merge(&mut base, json!({"a": {"c": [2], "e": null}, "d": false}));
        assert_eq!(
            base,
            json!({"a": {"b": 1, "c": [2], "e": null}, "d": false})
        );
    }
}

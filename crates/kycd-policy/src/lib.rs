//! kycd's policy engine: policies as text files in git, evaluated purely
//! and deterministically over the facts document (`docs/facts.md`).
//!
//! A policy is a TOML file of rules whose conditions are GoRules ZEN
//! expressions, plus optional decision tables as JDM graphs that risk
//! teams edit in the GoRules editor (evaluated with zen-engine's table
//! semantics; zen-engine itself is the reference behind the
//! `zen-reference` feature). Each rule
//! adds to a 0..=100 risk score and/or forces an outcome; score bands map
//! the total to an outcome; the most severe outcome wins. See `POLICY.md`
//! for the file format and the built-in default policy, rule by rule.
//!
//! ```
//! let policy = kycd_policy::Policy::builtin_default();
//! let facts = serde_json::json!({ "document": { "age": 16 } });
//! let evaluation = policy.evaluate(&facts);
//! assert_ne!(evaluation.outcome, kycd_policy::Outcome::Approve);
//! ```
//!
//! Every expression is compiled once when the policy loads; evaluation
//! runs bytecode only, does no I/O and reads no clock (expressions that
//! would read the clock or randomness are refused at load time).

#![forbid(unsafe_code)]

mod cases;
mod error;
mod eval;
mod expr;
mod outcome;
mod policy;
mod table;

pub use cases::{run_cases, CaseResult, CasesError, Expect, Report};
pub use error::{Location, PolicyError, Problem};
pub use eval::{expand_trace, Evaluation, Reason, TraceEntry, TraceKind, ERROR_REASON};
pub use outcome::{Check, Outcome, ResubmitNode, DIDIT_FEATURES};
pub use policy::{Band, Policy, PolicySource, Rule};
pub use table::{read_graph, JdmGraph, Table, TableHit};

//! Compiling ZEN expressions once, at load time, with two checks ZEN itself
//! does not make: every fact an expression reads must exist in the facts
//! contract (docs/facts.md), and no expression may call a function that
//! reads the wall clock, the machine's time zone or randomness.
//!
//! Why the first: a misspelt fact (`documnet.age`) is `null` at run time,
//! so the rule silently never fires. Why the second: a decision must be
//! reproducible from the facts and the policy version alone.

use crate::error::Problem;
use std::collections::{BTreeMap, BTreeSet};
use zen_expression::compiler::{FetchFastTarget, Opcode};
use zen_expression::expression::{Standard, Unary};
use zen_expression::functions::{FunctionKind, InternalFunction, MethodKind};
use zen_expression::intellisense::dependency::ReadDependency;
use zen_expression::intellisense::IntelliSense;
use zen_expression::variable::VariableMap;
use zen_expression::{Expression, Isolate, Variable};

/// The facts contract: each top-level key and, for objects, their keys.
/// `subject.attributes` is the operator's own JSON, so anything below it is
/// allowed.
const FACTS: &[(&str, &[&str])] = &[
    ("now", &[]),
    (
        "session",
        &[
            "id",
            "didit_status",
            "webhook_type",
            "workflow_id",
            "payload_version",
            "sandbox",
            "reauthentication",
            "step_up",
        ],
    ),
    (
        "step_up",
        &["status", "checks", "didit_status", "outcome", "approved"],
    ),
    ("subject", &["id", "attributes", "blocklisted"]),
    (
        "didit",
        &[
            "features",
            "risks",
            "declining_risks",
            "review_risks",
            "last_review_status",
        ],
    ),
    (
        "document",
        &[
            "present",
            "status",
            "type",
            "issuing_country",
            "nationality",
            "age",
            "age_band",
            "days_to_expiry",
            "expired",
            "tampering",
        ],
    ),
    (
        "liveness",
        &["present", "status", "score", "method", "attack"],
    ),
    ("face_match", &["present", "status", "score"]),
    (
        "aml",
        &[
            "present",
            "status",
            "total_hits",
            "max_match_score",
            "pep",
            "sanction",
            "adverse_media",
        ],
    ),
    (
        "ip",
        &[
            "present",
            "country",
            "vpn_or_tor",
            "data_center",
            "country_mismatch",
            "distance_km",
        ],
    ),
    ("phone", &["present", "disposable", "virtual"]),
    (
        "email",
        &["present", "disposable", "breached", "undeliverable"],
    ),
    (
        "graph",
        &[
            "document_subjects",
            "device_subjects",
            "ip_subjects",
            "phone_subjects",
            "email_subjects",
            "prior_declines",
            "duplicate_face",
            "duplicate_user",
            "later_links",
            "later_link_kinds",
        ],
    ),
];

/// Whether `path` (segments as ZEN reports them) names a fact.
fn is_known_fact(path: &[&str]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    let Some((_, children)) = FACTS.iter().find(|(k, _)| k == first) else {
        return false;
    };
    let Some((second, deeper)) = rest.split_first() else {
        return true;
    };
    if !children.contains(second) {
        return false;
    }
    // Below a leaf only array indexes make sense (`didit.risks[0]`); below
    // subject.attributes anything goes.
    (*first == "subject" && *second == "attributes")
        || deeper
            .iter()
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}

/// The unknown facts an expression reads, as dotted paths. `$` (a table
/// cell's column value) and closure aliases are not facts and are skipped.
fn unknown_facts(reads: &[ReadDependency], out: &mut Vec<String>) {
    for read in reads {
        let path = match read {
            ReadDependency::Direct { path, .. } | ReadDependency::Unresolved { path, .. } => path,
            // The reads inside a closure (`some(didit.risks, # == 'X')`) are
            // relative to the element, so only the collection is checked.
            ReadDependency::Iteration { collection, .. } => collection,
        };
        let mut segments: Vec<&str> = path.iter().map(|s| s.as_ref()).collect();
        if segments.first().is_some_and(|s| *s == "$" || *s == "#") {
            continue;
        }
        // `$root.document.age` is `document.age`.
        if segments.first() == Some(&"$root") {
            segments.remove(0);
        }
        if !is_known_fact(&segments) {
            let dotted = segments.join(".");
            if !out.contains(&dotted) {
                out.push(dotted);
            }
        }
    }
}

/// Rejects bytecode that would make a decision depend on when or where it
/// was evaluated. Facts already carry every date-derived value a policy
/// needs (`document.age`, `document.days_to_expiry`), so all date functions
/// are refused rather than trying to tell the pure calls from the impure.
fn check_pure(bytecode: &[Opcode]) -> Result<(), Problem> {
    for op in bytecode {
        match op {
            Opcode::CallFunction { kind, .. } => match kind {
                FunctionKind::Internal(InternalFunction::Rand) => {
                    return Err(Problem::ForbiddenFunction {
                        function: "rand".into(),
                        why: "a decision must not depend on randomness",
                    })
                }
                FunctionKind::Internal(InternalFunction::Date) | FunctionKind::Deprecated(_) => {
                    return Err(Problem::ForbiddenFunction {
                        function: kind.to_string(),
                        why: "date functions read the wall clock or the machine's time zone; \
                              use the facts' precomputed values (document.age, document.days_to_expiry)",
                    })
                }
                _ => {}
            },
            Opcode::CallMethod {
                kind: MethodKind::DateMethod(m),
                ..
            } => {
                return Err(Problem::ForbiddenFunction {
                    function: m.to_string(),
                    why: "date methods read the wall clock or the machine's time zone; \
                          use the facts' precomputed values (document.age, document.days_to_expiry)",
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// The part of the facts a policy can read, derived from its bytecode, so
/// that evaluation converts only that part into ZEN's value type. Besides
/// time, this bounds the cost of `subject.attributes` (the operator's own
/// JSON, of any size) to the policies that read it.
///
/// Every read of the environment in zen-expression's VM is one of three
/// opcodes: `FetchFast` (a static path), `FetchEnv` (a top-level name,
/// then dynamic access) or `FetchRootEnv` (everything); `AssignedObject*`
/// also materialise the whole environment. Static paths keep their first
/// two segments (the facts contract is two levels deep); anything else
/// keeps the whole top-level value, or everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct Projection {
    everything: bool,
    /// Top-level key -> `None` (the whole value) or the second-level keys read.
    top: BTreeMap<String, Option<BTreeSet<String>>>,
}

impl Projection {
    fn whole(&mut self, key: &str) {
        self.top.insert(key.to_owned(), None);
    }

    fn child(&mut self, key: &str, child: &str) {
        // A top-level value already kept whole stays whole.
        if let Some(children) = self
            .top
            .entry(key.to_owned())
            .or_insert_with(|| Some(BTreeSet::new()))
        {
            children.insert(child.to_owned());
        }
    }

    fn record(&mut self, bytecode: &[Opcode]) {
        for op in bytecode {
            match op {
                Opcode::FetchRootEnv
                | Opcode::AssignedObjectBegin
                | Opcode::AssignedObjectStep
                | Opcode::AssignedObjectEnd { .. } => self.everything = true,
                Opcode::FetchEnv(name) => self.whole(name),
                Opcode::FetchFast(path) => match path.as_slice() {
                    [FetchFastTarget::Begin | FetchFastTarget::Root, FetchFastTarget::String(top), FetchFastTarget::String(child), ..] => {
                        self.child(top, child)
                    }
                    [FetchFastTarget::Begin | FetchFastTarget::Root, FetchFastTarget::String(top), ..] => {
                        self.whole(top)
                    }
                    _ => self.everything = true,
                },
                _ => {}
            }
        }
    }

    /// Converts the facts a policy reads into ZEN's value type.
    pub(crate) fn apply(&self, facts: &serde_json::Value) -> Variable {
        let Some(object) = facts.as_object().filter(|_| !self.everything) else {
            return Variable::from(facts);
        };
        let map: VariableMap = self
            .top
            .iter()
            .filter_map(|(key, children)| {
                let value = object.get(key)?;
                let converted = match (children, value.as_object()) {
                    (Some(children), Some(inner)) => Variable::from_object(
                        children
                            .iter()
                            .filter_map(|c| {
                                Some((c.as_str().into(), Variable::from(inner.get(c)?)))
                            })
                            .collect(),
                    ),
                    _ => Variable::from(value),
                };
                Some((key.as_str().into(), converted))
            })
            .collect();
        Variable::from_object(map)
    }
}

/// A load-time compiler: one lexer/parser arena reused for every
/// expression of a policy; it also gathers the policy's [`Projection`].
pub(crate) struct Compiler {
    isolate: Isolate,
    sense: IntelliSense,
    projection: Projection,
}

impl Compiler {
    pub(crate) fn new() -> Self {
        Compiler {
            isolate: Isolate::new(),
            sense: IntelliSense::new(),
            projection: Projection::default(),
        }
    }

    pub(crate) fn into_projection(self) -> Projection {
        self.projection
    }

    /// Compiles a standard expression (a rule's `when`, a table's input
    /// field or output cell). `facts` says whether its names are facts
    /// (true for anything fed by the facts document).
    pub(crate) fn standard(
        &mut self,
        source: &str,
        facts: bool,
    ) -> Result<Expression<Standard>, Problem> {
        let compiled = self.isolate.compile_standard(source).map_err(|e| {
            Problem::ExpressionDoesNotCompile {
                expression: source.to_owned(),
                error: e.to_string(),
            }
        })?;
        check_pure(compiled.bytecode())?;
        if facts {
            let reads = self.sense.reads(source);
            self.check_facts(&reads)?;
            self.projection.record(compiled.bytecode());
        }
        Ok(compiled)
    }

    /// Compiles a unary expression (a table input cell such as `> 70` or
    /// `"DEU", "AUT"`, tested against the column's value `$`).
    pub(crate) fn unary(
        &mut self,
        source: &str,
        facts: bool,
    ) -> Result<Expression<Unary>, Problem> {
        let compiled =
            self.isolate
                .compile_unary(source)
                .map_err(|e| Problem::ExpressionDoesNotCompile {
                    expression: source.to_owned(),
                    error: e.to_string(),
                })?;
        check_pure(compiled.bytecode())?;
        if facts {
            let reads = self.sense.reads_unary(source);
            self.check_facts(&reads)?;
            self.projection.record(compiled.bytecode());
        }
        Ok(compiled)
    }

    fn check_facts(&self, reads: &[ReadDependency]) -> Result<(), Problem> {
        let mut unknown = Vec::new();
        unknown_facts(reads, &mut unknown);
        match unknown.into_iter().next() {
            Some(path) => Err(Problem::UnknownFact { path }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_facts_pass_and_typos_do_not() {
        assert!(is_known_fact(&["document", "age"]));
        assert!(is_known_fact(&["document"]));
        assert!(is_known_fact(&["now"]));
        assert!(is_known_fact(&["subject", "attributes", "tier", "x"]));
        assert!(is_known_fact(&["didit", "risks", "0"]));
        assert!(is_known_fact(&["step_up", "status"]));
        assert!(is_known_fact(&["step_up", "checks", "0"]));
        assert!(is_known_fact(&["session", "step_up"]));
        assert!(!is_known_fact(&["documnet", "age"]));
        assert!(!is_known_fact(&["document", "agee"]));
        assert!(!is_known_fact(&["document", "age", "years"]));
        assert!(!is_known_fact(&["step_up", "state"]));
    }

    #[test]
    fn compile_reports_unknown_facts_and_syntax() {
        let mut c = Compiler::new();
        assert!(c
            .standard("document.age != null and document.age < 18", true)
            .is_ok());
        assert!(c
            .standard("some(didit.risks, # == 'DOCUMENT_EXPIRED')", true)
            .is_ok());
        assert!(matches!(
            c.standard("documnet.age < 18", true),
            Err(Problem::UnknownFact { path }) if path == "documnet.age"
        ));
        assert!(matches!(
            c.standard("document.age <", true),
            Err(Problem::ExpressionDoesNotCompile { .. })
        ));
    }

    #[test]
    fn projection_keeps_what_is_read_and_drops_the_rest() {
        let mut c = Compiler::new();
        for source in [
            "document.age != null and document.age < 18",
            "some(didit.risks, # == 'X')",
            "len(keys(subject.attributes)) > 0",
        ] {
            assert!(c.standard(source, true).is_ok(), "{source}");
        }
        let facts = serde_json::json!({
            "document": {"age": 20, "type": "Passport"},
            "didit": {"risks": ["X"], "features": []},
            "subject": {"id": "s", "attributes": {"a": {"b": 1}}},
            "now": "2026-01-01T00:00:00Z",
        });
        let projected = c.into_projection().apply(&facts).to_value();
        assert_eq!(
            projected,
            serde_json::json!({
                "document": {"age": 20},
                "didit": {"risks": ["X"]},
                "subject": {"attributes": {"a": {"b": 1}}},
            })
        );
    }

    #[test]
    fn projection_falls_back_to_everything_for_root_access() {
        let mut c = Compiler::new();
        assert!(c.standard("$root.document.age > 1", true).is_ok());
        assert!(c.standard("document[session.id] != null", true).is_ok());
        let facts = serde_json::json!({"document": {"age": 20, "x": 1}, "session": {"id": "x"}, "now": "n"});
        // `$root` followed by a static path is still a static path; the
        // dynamic member keeps the whole of `document`.
        assert_eq!(
            c.into_projection().apply(&facts).to_value(),
            serde_json::json!({"document": {"age": 20, "x": 1}, "session": {"id": "x"}})
        );
    }

    #[test]
    fn clock_and_randomness_are_refused() {
        let mut c = Compiler::new();
        for source in ["rand(10) > 5", "d() > d('2020-01-01')", "date('now') > 0"] {
            assert!(
                matches!(
                    c.standard(source, true),
                    Err(Problem::ForbiddenFunction { .. })
                ),
                "{source}"
            );
        }
    }
}

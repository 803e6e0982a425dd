//! Golden cases for the built-in default policy, and the policy loader's
//! contract: errors that name the file, the rule and the problem; versions
//! that follow content; deterministic output; evaluation errors that fail
//! closed; and, with the `zen-reference` feature (CI runs this file with
//! it: `cargo test --workspace --locked --features kycd-policy/zen-reference
//! --test golden`), the direct table evaluator agreeing with zen-engine's
//! and every shipped JDM table read identically by both.

mod support;

use kycd_policy::{
    run_cases, Check, Location, Outcome, Policy, PolicyError, Problem, TraceKind, ERROR_REASON,
};
use serde_json::json;
#[cfg(feature = "zen-reference")]
use support::Rng;
use support::{clean_facts, with};

const CASES: &str = include_str!("cases/default.toml");
const NULL_CASES: &str = include_str!("cases/default_nulls.json");

/// A minimal valid policy to mutate in the error tests.
const HEADER: &str = r#"
name = "t"
[bands]
approve = 29
review = 69
decline = 100
"#;

fn load(text: &str) -> Result<Policy, PolicyError> {
    Policy::from_source("tests/bad.toml", text, &[])
}

fn load_err(text: &str) -> PolicyError {
    match load(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

fn rule_err(rule: &str) -> PolicyError {
    load_err(&format!("{HEADER}{rule}"))
}

fn rule_id(e: &PolicyError) -> &str {
    match &e.location {
        Location::Rule { id, .. } => id,
        other => panic!("expected a rule location, got {other:?} ({e})"),
    }
}

// ---------------------------------------------------------------- golden cases

#[test]
fn default_policy_passes_its_golden_cases() {
    let policy = Policy::builtin_default();
    let report = run_cases(&policy, CASES, "tests/cases/default.toml").expect("cases parse");
    assert!(report.all_passed(), "\n{report}");
    assert!(report.results.len() >= 40, "{} cases", report.results.len());
}

#[test]
fn default_policy_passes_its_null_cases_written_in_json() {
    let policy = Policy::builtin_default();
    let report = run_cases(&policy, NULL_CASES, "default_nulls.json").expect("cases parse");
    assert!(report.all_passed(), "\n{report}");
    let json: serde_json::Value = serde_json::from_str(NULL_CASES).expect("json");
    assert_eq!(
        json["base"],
        clean_facts(),
        "the JSON cases share the TOML base"
    );
}

#[test]
fn every_outcome_of_the_default_policy_is_covered_and_carries_reasons() {
    let policy = Policy::builtin_default();
    let report = run_cases(&policy, CASES, "default.toml").expect("cases parse");
    for outcome in Outcome::ALL {
        assert!(
            report.results.iter().any(|r| r.got.outcome == outcome),
            "no golden case ends in {outcome}"
        );
    }
    for r in &report.results {
        if r.got.outcome != Outcome::Approve {
            assert!(!r.got.reasons.is_empty(), "{} has no reasons", r.name);
        }
    }
}

/// A stored trace keeps a rule that did nothing as its id alone, and
/// expands back to exactly the full trace, on every golden case (fired
/// rules, table hits, every outcome) and on one with evaluation errors.
#[test]
fn a_stored_trace_expands_back_to_the_full_trace() {
    let policy = Policy::builtin_default();
    let report = run_cases(&policy, CASES, "default.toml").expect("cases parse");
    let broken = load(&format!(
        "{HEADER}[[rule]]\nid = \"not_a_boolean\"\nwhen = \"document.age\"\nscore = 10\nreason = \"x\"\n"
    ))
    .expect("loads")
    .evaluate(&clean_facts());
    assert!(broken.has_errors());
    let mut bare = 0;
    for e in report.results.iter().map(|r| &r.got).chain([&broken]) {
        let mut stored = e.stored_trace();
        let entries = stored.as_array().expect("an array");
        assert_eq!(entries.len(), e.trace.len());
        for (s, t) in entries.iter().zip(&e.trace) {
            // Only a rule that did nothing is shortened.
            let quiet =
                t.kind == TraceKind::Rule && !t.fired && t.outcome.is_none() && t.error.is_none();
            assert_eq!(s.is_string(), quiet, "{t:?}");
            bare += usize::from(quiet);
        }
        kycd_policy::expand_trace(&mut stored);
        assert_eq!(stored, serde_json::to_value(&e.trace).unwrap());
    }
    assert!(bare > 0);
    // A trace stored in full (before compaction) is left as it is.
    let full = serde_json::to_value(&broken.trace).unwrap();
    let mut again = full.clone();
    kycd_policy::expand_trace(&mut again);
    assert_eq!(again, full);
}

#[test]
fn the_file_on_disk_is_the_builtin_policy() {
    let from_disk = Policy::from_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies/default.toml"
    ))
    .expect("loads from disk");
    assert_eq!(from_disk.version(), Policy::builtin_default().version());
    assert_eq!(from_disk.name(), "kycd-default");
}

#[test]
fn a_failing_case_is_reported_with_expected_and_got() {
    let policy = Policy::builtin_default();
    let cases = r#"
[[case]]
name = "wrong on purpose"
facts = { document = { present = true, age = 16 } }
expect = { outcome = "approve", reasons = ["something_else"] }
"#;
    let report = run_cases(&policy, cases, "wrong.toml").expect("parses");
    assert!(!report.all_passed());
    let text = report.to_string();
    assert!(text.contains("FAIL  wrong on purpose"), "{text}");
    assert!(
        text.contains("expected: approve [something_else]"),
        "{text}"
    );
    assert!(
        text.contains("outcome: expected approve, got decline"),
        "{text}"
    );
    assert!(text.contains("missing reasons: something_else"), "{text}");
    assert!(text.contains("1 cases: 0 passed, 1 failed"), "{text}");
}

#[test]
fn a_bad_cases_file_names_itself() {
    let policy = Policy::builtin_default();
    let e = run_cases(&policy, "[[case]]\nname = 1", "broken.toml").expect_err("bad");
    assert!(e.to_string().starts_with("cases broken.toml: "), "{e}");
    let e = run_cases(&policy, "", "empty.toml").expect_err("empty");
    assert!(e.to_string().contains("no cases"), "{e}");
}

// ---------------------------------------------------------------- semantics

#[test]
fn blocklisted_overrides_a_step_up_and_drops_its_checks() {
    let policy = Policy::builtin_default();
    let e = policy.evaluate(&with(
        clean_facts(),
        json!({"subject": {"blocklisted": true}, "phone": {"disposable": true}}),
    ));
    assert_eq!(e.outcome, Outcome::Block);
    assert!(e.checks.is_empty());
    let fired: Vec<_> = e.trace.iter().filter(|t| t.fired).map(|t| &*t.id).collect();
    assert_eq!(fired, ["blocklisted_subject", "disposable_phone"]);
}

#[test]
fn step_up_carries_its_checks_and_resubmit_its_nodes() {
    let policy = Policy::builtin_default();
    let e = policy.evaluate(&with(clean_facts(), json!({"phone": {"disposable": true}})));
    assert_eq!(e.outcome, Outcome::StepUp);
    assert_eq!(e.checks, [Check::Phone]);
    assert!(e.resubmit_nodes.is_empty());

    let e = policy.evaluate(&with(clean_facts(), json!({"liveness": {"score": 30}})));
    assert_eq!(e.outcome, Outcome::Resubmit);
    assert_eq!(e.resubmit_nodes.len(), 1);
    assert_eq!(e.resubmit_nodes[0].feature, "LIVENESS");
    assert!(e.checks.is_empty());
}

#[test]
fn the_trace_has_one_entry_per_rule_and_table_in_policy_order() {
    let policy = Policy::builtin_default();
    let e = policy.evaluate(&clean_facts());
    let ids: Vec<&str> = e.trace.iter().map(|t| &*t.id).collect();
    let expected: Vec<&str> = policy
        .rules()
        .iter()
        .map(|r| &*r.id)
        .chain(policy.tables().iter().map(|t| &*t.id))
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(e.trace.last().map(|t| t.kind), Some(TraceKind::Table));
    assert_eq!(e.policy, "kycd-default");
    assert_eq!(e.policy_version, policy.version());
}

#[test]
fn scores_are_clamped_to_0_100_and_negative_scores_mitigate() {
    let text = format!(
        r#"{HEADER}
[[rule]]
id = "a"
when = "graph.device_subjects > 0"
score = 80
reason = "a"
[[rule]]
id = "b"
when = "graph.phone_subjects > 0"
score = 80
reason = "b"
[[rule]]
id = "trusted"
when = "subject.attributes.trusted == true"
score = -50
reason = "long-standing customer"
"#
    );
    let policy = load(&text).expect("loads");
    let facts = with(
        clean_facts(),
        json!({"graph": {"device_subjects": 1, "phone_subjects": 1}}),
    );
    let e = policy.evaluate(&facts);
    assert_eq!((e.score, e.outcome), (100, Outcome::Decline));
    let e = policy.evaluate(&with(
        facts,
        json!({"subject": {"attributes": {"trusted": true}}}),
    ));
    assert_eq!((e.score, e.band), (100, Outcome::Decline), "160 - 50 = 110");
    let e = policy.evaluate(&with(
        clean_facts(),
        json!({"subject": {"attributes": {"trusted": true}}}),
    ));
    assert_eq!((e.score, e.outcome), (0, Outcome::Approve), "clamped at 0");
}

#[test]
fn an_expression_that_fails_at_evaluation_fails_closed_to_review() {
    let text = format!(
        r#"{HEADER}
[[rule]]
id = "careless_age"
when = "document.age < 18"
outcome = "decline"
reason = "under 18"
[[rule]]
id = "not_a_boolean"
when = "document.age"
score = 10
reason = "x"
"#
    );
    let policy = load(&text).expect("loads");
    let e = policy.evaluate(&with(clean_facts(), json!({"document": {"age": null}})));
    assert_eq!(e.outcome, Outcome::Review);
    assert!(e.has_errors());
    assert_eq!(e.reason_ids(), ["careless_age", "not_a_boolean"]);
    assert!(e.reasons.iter().all(|r| &*r.text == ERROR_REASON));
    let entry = &e.trace[0];
    assert!(!entry.fired);
    assert_eq!(entry.outcome, Some(Outcome::Review));
    assert!(
        entry
            .error
            .as_deref()
            .is_some_and(|m| m.contains("Compare")),
        "{entry:?}"
    );
    assert!(e.trace[1]
        .error
        .as_deref()
        .is_some_and(|m| m.contains("true or false")));

    // With a known age the same rules evaluate normally.
    let e = policy.evaluate(&with(clean_facts(), json!({"document": {"age": 16}})));
    assert_eq!(e.outcome, Outcome::Decline);
    assert!(e.has_errors(), "`document.age` is still not a boolean");
}

#[test]
fn evaluation_never_panics_on_malformed_facts() {
    let policy = Policy::builtin_default();
    for facts in [
        json!(null),
        json!([]),
        json!({}),
        json!({"document": "x", "graph": [1, 2], "didit": {"risks": "NO_FACE_DETECTED"}}),
    ] {
        let e = policy.evaluate(&facts);
        assert_ne!(e.outcome, Outcome::Approve, "{facts}");
        #[cfg(feature = "zen-reference")]
        assert_eq!(e, policy.evaluate_reference(&facts), "{facts}");
    }
}

// ---------------------------------------------------------------- determinism

#[test]
fn evaluating_twice_gives_byte_identical_json() {
    let policy = Policy::builtin_default();
    let again = Policy::builtin_default();
    let facts = with(
        clean_facts(),
        json!({"aml": {"pep": true, "total_hits": 2, "max_match_score": 91.5},
               "document": {"issuing_country": "VNM"}, "ip": {"country": "MM", "country_mismatch": true},
               "phone": {"disposable": true}, "graph": {"device_subjects": 2}}),
    );
    let a = serde_json::to_string(&policy.evaluate(&facts)).expect("serialises");
    let b = serde_json::to_string(&policy.evaluate(&facts)).expect("serialises");
    let c = serde_json::to_string(&again.evaluate(&facts)).expect("serialises");
    assert_eq!(a, b);
    assert_eq!(a, c);
}

#[cfg(feature = "zen-reference")]
#[test]
fn direct_tables_and_projection_agree_with_zen_engine_on_random_facts() {
    let policy = Policy::builtin_default();
    let mut rng = Rng::new(0x5eed);
    let countries = [
        ("DEU", "DE"),
        ("IRN", "IR"),
        ("MMR", "MM"),
        ("KEN", "KE"),
        ("VNM", "VN"),
        ("PRK", "KP"),
        ("FRA", "FR"),
    ];
    let scores = [
        json!(null),
        json!(0),
        json!(49.9),
        json!(84.99),
        json!(85),
        json!(99),
    ];
    let flags = [json!(true), json!(false), json!(null)];
    let step_up_statuses = [
        json!(null),
        json!("none"),
        json!("requested"),
        json!("completed"),
        json!("expired"),
    ];
    let didit_statuses = [
        json!(null),
        json!("Approved"),
        json!("Declined"),
        json!("In Review"),
    ];
    for i in 0..600 {
        let (doc, _) = rng.pick(&countries);
        let (_, ip) = rng.pick(&countries);
        let facts = with(
            clean_facts(),
            json!({
                "document": {"issuing_country": doc, "age": if rng.chance(7) { json!(null) } else { json!(rng.next() % 90) }},
                "ip": {"country": ip, "vpn_or_tor": rng.pick(&flags), "country_mismatch": rng.pick(&flags)},
                "aml": {
                    "total_hits": rng.next() % 3,
                    "max_match_score": rng.pick(&scores),
                    "pep": rng.pick(&flags), "sanction": rng.chance(4), "adverse_media": rng.pick(&flags),
                },
                "face_match": {"score": rng.pick(&scores)},
                "liveness": {"score": rng.pick(&scores)},
                "phone": {"disposable": rng.pick(&flags)},
                "session": {"step_up": rng.pick(&flags)},
                "step_up": {
                    "status": rng.pick(&step_up_statuses),
                    "didit_status": rng.pick(&didit_statuses),
                    "approved": rng.pick(&flags),
                },
                "graph": {"document_subjects": rng.next() % 4, "device_subjects": rng.next() % 6},
            }),
        );
        assert_eq!(
            policy.evaluate(&facts),
            policy.evaluate_reference(&facts),
            "case {i}: {facts}"
        );
    }
}

// ---------------------------------------------------------------- versions

#[test]
fn version_follows_every_byte_of_the_policy_and_its_tables() {
    let (text, tables) = Policy::builtin_default_source();
    let base = Policy::from_source("p.toml", text, tables).expect("loads");
    assert_eq!(base.version().len(), 16);
    assert!(base.version().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        base.version(),
        Policy::builtin_default().version(),
        "stable"
    );

    let edited = format!("{text} ");
    let v = Policy::from_source("p.toml", &edited, tables).expect("loads");
    assert_ne!(
        v.version(),
        base.version(),
        "a trailing space in the policy"
    );

    for (i, (path, json)) in tables.iter().enumerate() {
        let changed = json.replacen("20", "21", 1);
        assert_ne!(&changed, json);
        let mut edited: Vec<(&str, &str)> = tables.to_vec();
        edited[i] = (path, &changed);
        let v = Policy::from_source("p.toml", text, &edited).expect("loads");
        assert_ne!(v.version(), base.version(), "one byte of {path}");
    }
}

#[test]
fn version_does_not_depend_on_the_file_name() {
    let (text, tables) = Policy::builtin_default_source();
    let a = Policy::from_source("a.toml", text, tables).expect("loads");
    let b = Policy::from_source("elsewhere/b.toml", text, tables).expect("loads");
    assert_eq!(a.version(), b.version());
}

// ---------------------------------------------------------------- load errors

#[test]
fn toml_syntax_error_names_the_file_line_and_column() {
    let e = load_err("name = \"t\"\n[bands\napprove = 29\n");
    assert_eq!(e.file, "tests/bad.toml");
    assert!(
        matches!(*e.problem, Problem::Syntax { line: 2, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("policy tests/bad.toml: line 2, column "),
        "{e}"
    );
}

#[test]
fn expression_that_does_not_compile_names_the_rule() {
    let e = rule_err("[[rule]]\nid = \"under_age\"\nwhen = \"document.age <\"\noutcome = \"decline\"\nreason = \"r\"\n");
    assert_eq!(rule_id(&e), "under_age");
    assert!(
        matches!(*e.problem, Problem::ExpressionDoesNotCompile { .. }),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.starts_with(
            "policy tests/bad.toml: rule \"under_age\" (line 7): expression does not compile: "
        ),
        "{text}"
    );
    assert!(text.contains("`document.age <`"), "{text}");
}

#[test]
fn unknown_function_does_not_compile() {
    let e = rule_err(
        "[[rule]]\nid = \"x\"\nwhen = \"frobnicate(document.age)\"\nscore = 1\nreason = \"r\"\n",
    );
    assert!(
        matches!(*e.problem, Problem::ExpressionDoesNotCompile { .. }),
        "{e}"
    );
}

#[test]
fn misspelt_fact_is_an_error() {
    let e =
        rule_err("[[rule]]\nid = \"x\"\nwhen = \"documnet.age > 1\"\nscore = 1\nreason = \"r\"\n");
    assert_eq!(
        *e.problem,
        Problem::UnknownFact {
            path: "documnet.age".into()
        }
    );
    assert!(e.to_string().contains("rule \"x\""), "{e}");
}

#[test]
fn clock_reading_expression_is_an_error() {
    let e = rule_err(
        "[[rule]]\nid = \"x\"\nwhen = \"d() > d('2020-01-01')\"\nscore = 1\nreason = \"r\"\n",
    );
    assert!(
        matches!(*e.problem, Problem::ForbiddenFunction { .. }),
        "{e}"
    );
}

#[test]
fn unknown_outcome_names_the_rule() {
    let e =
        rule_err("[[rule]]\nid = \"x\"\nwhen = \"true\"\noutcome = \"maybe\"\nreason = \"r\"\n");
    assert_eq!(rule_id(&e), "x");
    assert_eq!(*e.problem, Problem::UnknownOutcome("maybe".into()));
}

#[test]
fn unknown_check_names_the_rule() {
    let e = rule_err("[[rule]]\nid = \"x\"\nwhen = \"true\"\noutcome = \"step_up\"\nchecks = [\"SELFIE\"]\nreason = \"r\"\n");
    assert_eq!(*e.problem, Problem::UnknownCheck("SELFIE".into()));
}

#[test]
fn step_up_and_resubmit_need_their_details() {
    let e =
        rule_err("[[rule]]\nid = \"x\"\nwhen = \"true\"\noutcome = \"step_up\"\nreason = \"r\"\n");
    assert_eq!(*e.problem, Problem::StepUpWithoutChecks);
    let e =
        rule_err("[[rule]]\nid = \"x\"\nwhen = \"true\"\noutcome = \"resubmit\"\nreason = \"r\"\n");
    assert_eq!(*e.problem, Problem::ResubmitWithoutNodes);
    let e = rule_err("[[rule]]\nid = \"x\"\nwhen = \"true\"\noutcome = \"review\"\nchecks = [\"NFC\"]\nreason = \"r\"\n");
    assert_eq!(*e.problem, Problem::ChecksWithoutStepUp);
    let e = rule_err("[[rule]]\nid = \"x\"\nwhen = \"true\"\noutcome = \"resubmit\"\nnodes = [{ feature = \"SELFIE\" }]\nreason = \"r\"\n");
    assert_eq!(*e.problem, Problem::UnknownFeature("SELFIE".into()));
}

#[test]
fn missing_reason_names_the_rule() {
    let e = rule_err("[[rule]]\nid = \"quiet\"\nwhen = \"true\"\noutcome = \"review\"\n");
    assert_eq!(rule_id(&e), "quiet");
    assert_eq!(*e.problem, Problem::MissingReason);
}

#[test]
fn duplicate_rule_id_is_an_error() {
    let rule = "[[rule]]\nid = \"twice\"\nwhen = \"true\"\nscore = 1\nreason = \"r\"\n";
    let e = rule_err(&format!("{rule}{rule}"));
    assert_eq!(rule_id(&e), "twice");
    assert_eq!(*e.problem, Problem::DuplicateId);
    assert!(e.to_string().contains("(line 12)"), "{e}");
}

#[test]
fn rules_that_cannot_matter_are_errors() {
    let e = rule_err("[[rule]]\nid = \"x\"\nwhen = \"true\"\nreason = \"r\"\n");
    assert_eq!(*e.problem, Problem::NoEffect);
    let e =
        rule_err("[[rule]]\nid = \"x\"\nwhen = \"true\"\noutcome = \"approve\"\nreason = \"r\"\n");
    assert_eq!(*e.problem, Problem::ForcedApprove);
    let e = rule_err("[[rule]]\nid = \"x\"\nwhen = \"true\"\nscore = 101\nreason = \"r\"\n");
    assert_eq!(*e.problem, Problem::ScoreOutOfRange(101));
    let e = rule_err("[[rule]]\nid = \"Bad-Id\"\nwhen = \"true\"\nscore = 1\nreason = \"r\"\n");
    assert_eq!(*e.problem, Problem::BadId);
}

#[test]
fn unknown_key_in_a_rule_names_the_rule() {
    let e = rule_err("[[rule]]\nid = \"x\"\nwhen = \"true\"\nscor = 1\nreason = \"r\"\n");
    assert_eq!(rule_id(&e), "x");
    assert!(
        matches!(&*e.problem, Problem::Invalid(m) if m.contains("scor")),
        "{e}"
    );
}

#[test]
fn bad_bands_are_errors() {
    for (bands, needle) in [
        ("review = 29\napprove = 69\ndecline = 100", "more severe"),
        ("approve = 29\nreview = 69", "end at 100"),
        ("approve = 29\nreview = 29\ndecline = 100", "both end at 29"),
        (
            "approve = 29\nstep_up = 50\ndecline = 100",
            "cannot be \"step_up\"",
        ),
        ("approve = 29\nreview = 169\ndecline = 100", "0 to 100"),
    ] {
        let e = load_err(&format!("name = \"t\"\n[bands]\n{bands}\n"));
        assert_eq!(e.location, Location::Bands, "{e}");
        assert!(e.to_string().contains(needle), "{e} (wanted {needle})");
    }
    let e = load_err("name = \"t\"\n[bands]\nsometimes = 100\n");
    assert_eq!(*e.problem, Problem::UnknownOutcome("sometimes".into()));
}

// ---------------------------------------------------------------- table errors

/// A one-row table graph with the given input cell and outputs.
fn table_json(input_cell: &str, outcome: &str, reason: &str, extra_node: bool) -> String {
    let mut nodes = vec![
        json!({"id": "in", "name": "facts", "type": "inputNode", "content": {}}),
        json!({"id": "dt", "name": "Risk", "type": "decisionTableNode", "content": {
            "hitPolicy": "first",
            "inputs": [{"id": "c", "name": "Country", "field": "document.issuing_country"}],
            "outputs": [{"id": "o", "name": "Outcome", "field": "outcome"}, {"id": "r", "name": "Reason", "field": "reason"}],
            "rules": [{"_id": "r1", "c": input_cell, "o": outcome, "r": reason}]
        }}),
        json!({"id": "out", "name": "out", "type": "outputNode", "content": {}}),
    ];
    if extra_node {
        nodes.push(json!({"id": "fn", "name": "js", "type": "functionNode", "content": {"source": "export const handler = () => ({})"}}));
    }
    json!({"nodes": nodes, "edges": [
        {"id": "e1", "sourceId": "in", "targetId": "dt"},
        {"id": "e2", "sourceId": "dt", "targetId": "out"}
    ]})
    .to_string()
}

fn table_policy(json: &str) -> Result<Policy, PolicyError> {
    let text = format!("{HEADER}[[table]]\nid = \"risk\"\njdm = \"tables/risk.json\"\n");
    Policy::from_source("tests/bad.toml", &text, &[("tables/risk.json", json)])
}

#[test]
fn a_valid_table_loads_and_fires() {
    let policy =
        table_policy(&table_json("\"DEU\"", "'review'", "'German'", false)).expect("loads");
    let e = policy.evaluate(&clean_facts());
    assert_eq!(e.outcome, Outcome::Review);
    assert_eq!(e.reason_ids(), ["risk"]);
    assert_eq!(&*e.reasons[0].text, "German");
}

#[test]
fn missing_table_file_names_the_table() {
    let text = format!("{HEADER}[[table]]\nid = \"risk\"\njdm = \"tables/nowhere.json\"\n");
    let e = load_err(&text);
    assert!(
        matches!(&e.location, Location::Table { id, .. } if id == "risk"),
        "{e:?}"
    );
    assert!(matches!(*e.problem, Problem::MissingTableFile(_)), "{e:?}");
    assert!(
        e.to_string().starts_with(
            "policy tests/bad.toml: table \"risk\" (tables/nowhere.json): missing table file"
        ),
        "{e}"
    );
}

#[test]
fn table_cell_that_does_not_compile_names_node_row_and_column() {
    let e = table_policy(&table_json("> > 1", "'review'", "'r'", false)).expect_err("bad cell");
    assert!(
        matches!(*e.problem, Problem::ExpressionDoesNotCompile { .. }),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.starts_with("policy tests/bad.toml: table \"risk\" (tables/risk.json), node \"Risk\", row 1 (r1), column \"Country\": expression does not compile"),
        "{text}"
    );
}

#[test]
fn table_row_with_an_unknown_outcome_or_no_reason_is_an_error() {
    let e = table_policy(&table_json("\"DEU\"", "'maybe'", "'r'", false)).expect_err("bad");
    assert_eq!(*e.problem, Problem::UnknownOutcome("maybe".into()));
    assert!(e.to_string().contains("row 1 (r1)"), "{e}");
    let e = table_policy(&table_json("\"DEU\"", "'review'", "", false)).expect_err("bad");
    assert_eq!(*e.problem, Problem::MissingReason);
}

#[test]
fn table_graph_with_a_function_node_is_refused() {
    let e = table_policy(&table_json("\"DEU\"", "'review'", "'r'", true)).expect_err("bad");
    assert!(
        matches!(&*e.problem, Problem::BadJdm(m) if m.contains("input node -> decision table node -> output node")),
        "{e}"
    );
}

#[test]
fn every_node_type_but_input_table_and_output_is_refused_by_its_type() {
    let others = [
        json!({"type": "functionNode", "content": {"source": "export const handler = () => ({})"}}),
        json!({"type": "functionNode", "content": "module.exports = () => ({})"}),
        json!({"type": "switchNode", "content": {"statements": [{"id": "s", "condition": "true"}]}}),
        json!({"type": "expressionNode", "content": {"expressions": [{"id": "x", "key": "outcome", "value": "'review'"}]}}),
        json!({"type": "customNode", "content": {"kind": "http", "config": {}}}),
        json!({"type": "decisionNode", "content": {"key": "other.json"}}),
    ];
    for other in others {
        let mut graph: serde_json::Value =
            serde_json::from_str(&table_json("\"DEU\"", "'review'", "'r'", false)).expect("json");
        let mut node = other.clone();
        node["id"] = json!("dt");
        node["name"] = json!("Risk");
        graph["nodes"][1] = node;
        let e = table_policy(&graph.to_string()).expect_err("refused");
        assert!(
            matches!(&*e.problem, Problem::BadJdm(m) if m.starts_with("a table graph must be exactly input node -> decision table node -> output node")),
            "{}: {e}",
            other["type"]
        );
    }
    // A type no GoRules release has is not a graph at all.
    let text =
        table_json("\"DEU\"", "'review'", "'r'", false).replace("decisionTableNode", "tableNode");
    let e = table_policy(&text).expect_err("refused");
    assert!(
        matches!(&*e.problem, Problem::BadJdm(m) if m.contains("unknown variant `tableNode`")),
        "{e}"
    );
}

#[test]
fn a_gorules_policy_document_is_not_a_table() {
    let e = table_policy(r#"{"blocks": []}"#).expect_err("refused");
    assert_eq!(
        *e.problem,
        Problem::BadJdm("this is a GoRules policy document, not a decision graph".into())
    );
}

#[test]
fn table_that_is_not_json_is_an_error() {
    let e = table_policy("{ not json").expect_err("bad");
    assert!(matches!(*e.problem, Problem::BadJdm(_)), "{e:?}");
}

#[test]
fn from_file_reads_tables_next_to_the_policy() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kycd-policy-from-file");
    std::fs::create_dir_all(dir.join("tables")).expect("mkdir");
    let json = table_json("\"DEU\"", "'review'", "'German'", false);
    std::fs::write(dir.join("tables/risk.json"), &json).expect("write");
    let text = format!("{HEADER}[[table]]\nid = \"risk\"\njdm = \"tables/risk.json\"\n");
    std::fs::write(dir.join("p.toml"), &text).expect("write");
    let from_file = Policy::from_file(dir.join("p.toml")).expect("loads");
    let from_source = table_policy(&json).expect("loads");
    assert_eq!(from_file.version(), from_source.version());

    let e = Policy::from_file(dir.join("absent.toml")).expect_err("no file");
    assert!(matches!(*e.problem, Problem::Read(_)), "{e:?}");
    assert!(e.to_string().contains("absent.toml"), "{e}");
}

#[test]
fn a_table_row_with_an_invalid_computed_output_fails_closed_to_review() {
    let policy =
        table_policy(&table_json("\"DEU\"", "document.type", "'computed'", false)).expect("loads");
    let e = policy.evaluate(&clean_facts());
    assert_eq!(e.outcome, Outcome::Review);
    assert_eq!(e.reason_ids(), ["risk"]);
    assert_eq!(&*e.reasons[0].text, ERROR_REASON);
    let entry = &e.trace[0];
    assert_eq!(entry.kind, TraceKind::Table);
    assert!(
        entry
            .error
            .as_deref()
            .is_some_and(|m| m.contains("unknown outcome \"Passport\"")),
        "{entry:?}"
    );
    #[cfg(feature = "zen-reference")]
    assert_eq!(e, policy.evaluate_reference(&clean_facts()));
}

#[test]
fn a_constant_output_cell_that_cannot_evaluate_is_a_load_error() {
    let e = table_policy(&table_json("\"DEU\"", "1 + 'a'", "'r'", false)).expect_err("bad");
    assert!(
        e.to_string().contains("row 1 (r1), column \"Outcome\""),
        "{e}"
    );
    assert!(e.to_string().contains("fails to evaluate"), "{e}");
}

/// Every JDM table the repository ships, read by kycd (zen-types' model,
/// [`kycd_policy::read_graph`]) and by zen-engine: the same nodes, with the
/// same rules, inputs, outputs and hit policy, and the same edges.
#[cfg(feature = "zen-reference")]
#[test]
fn every_shipped_jdm_table_is_read_identically_by_kycd_and_zen_engine() {
    use zen_engine::model::{DecisionContent, DecisionNodeKind};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    let mut dirs = vec![
        root.join("config"),
        root.join("examples"),
        root.join("crates/kycd-policy/policies"),
        root.join("crates/kycd-policy/tests/cases"),
    ];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).expect("read");
                let value: serde_json::Value = serde_json::from_str(&text).expect("json");
                if value.get("nodes").is_some() {
                    files.push((path, text));
                }
            }
        }
    }
    assert!(
        files.len() >= 2,
        "the default policy's two tables at least: {files:?}"
    );
    for (path, text) in files {
        let ours = kycd_policy::read_graph(&text).expect("kycd reads it");
        let DecisionContent::Graph(theirs) =
            serde_json::from_str::<DecisionContent>(&text).expect("zen-engine reads it")
        else {
            panic!("{}: zen-engine reads a policy document", path.display());
        };
        assert_eq!(ours.edges, theirs.edges, "{}", path.display());
        assert_eq!(ours.nodes.len(), theirs.nodes.len(), "{}", path.display());
        let mut tables = 0;
        for (a, b) in ours.nodes.iter().zip(&theirs.nodes) {
            // DecisionNode's own == compares ids only.
            assert_eq!((&a.id, &a.name), (&b.id, &b.name), "{}", path.display());
            assert_eq!(a.kind, b.kind, "{}: node {}", path.display(), a.id);
            if let (
                DecisionNodeKind::DecisionTableNode { content: x },
                DecisionNodeKind::DecisionTableNode { content: y },
            ) = (&a.kind, &b.kind)
            {
                assert_eq!(x.hit_policy, y.hit_policy);
                assert_eq!(x.inputs, y.inputs);
                assert_eq!(x.outputs, y.outputs);
                assert_eq!(x.rules, y.rules);
                assert!(!x.rules.is_empty(), "{}", path.display());
                tables += 1;
            }
        }
        assert_eq!(tables, 1, "{}", path.display());
    }
}

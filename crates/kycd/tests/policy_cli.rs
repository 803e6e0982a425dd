//! `kycd policy check` and `kycd policy test` as people run them.

use std::process::Command;

fn kycd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kycd"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const CASES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../kycd-policy/tests/cases/default.toml"
);

#[test]
fn the_builtin_policy_checks_and_passes_its_golden_cases() {
    let (code, out, _) = kycd(&["policy", "check", "builtin"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("kycd-default") && out.contains("version"),
        "{out}"
    );
    let (code, out, err) = kycd(&["policy", "test", "builtin", CASES]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.to_lowercase().contains("pass"), "{out}");
}

#[test]
fn a_bad_policy_is_refused_naming_the_file_the_rule_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "name = \"bad\"\n[bands]\napprove = 29\nreview = 100\n[[rule]]\nid = \"too_young\"\nwhen = \"document.age <\"\noutcome = \"decline\"\nreason = \"x\"\n",
    )
    .unwrap();
    let (code, _, err) = kycd(&["policy", "check", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.toml") && err.contains("too_young"),
        "{err}"
    );
    let (code, _, err) = kycd(&["policy", "check", "/nonexistent/policy.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/policy.toml"), "{err}");
}

#[test]
fn a_failing_golden_case_exits_1_with_a_readable_report() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.toml");
    let original = std::fs::read_to_string(CASES).unwrap();
    // Flip the first expected outcome to something the policy will not say.
    let flipped = original.replacen("outcome = \"approve\"", "outcome = \"block\"", 1);
    assert_ne!(flipped, original, "the cases file has an approve case");
    std::fs::write(&cases, flipped).unwrap();
    let (code, out, _) = kycd(&["policy", "test", "builtin", cases.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL"), "{out}");
}

//! `kycd webhook verify|sign`, run as the real binary against Didit's test
//! vectors (`crates/didit/testdata/vectors.json`).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value as Json;

struct Case {
    name: String,
    body: String,
    headers: Vec<(String, String)>,
    reencoded_body: String,
    timestamp: i64,
}

fn vectors() -> (String, Vec<Case>) {
    let v: Json = didit::testdata::vectors();
    let secret = v["secret"].as_str().unwrap().to_owned();
    let cases = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let body = c["body"].as_str().unwrap().to_owned();
            let parsed: Json = serde_json::from_str(&body).unwrap();
            Case {
                name: c["name"].as_str().unwrap().to_owned(),
                timestamp: parsed["timestamp"].as_i64().unwrap(),
                body,
                headers: c["headers"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect(),
                reencoded_body: c["reencoded_body"].as_str().unwrap().to_owned(),
            }
        })
        .collect();
    (secret, cases)
}

fn kycd(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kycd"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run `kycd webhook verify` on `body` written to a temp file.
fn verify(
    secrets: &[&str],
    body: &[u8],
    headers: &[(String, String)],
    now: i64,
    extra: &[&str],
) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body.json");
    std::fs::write(&path, body).unwrap();
    verify_file(secrets, &path, headers, now, extra)
}

fn verify_file(
    secrets: &[&str],
    path: &Path,
    headers: &[(String, String)],
    now: i64,
    extra: &[&str],
) -> Output {
    let mut args: Vec<String> = vec!["webhook".into(), "verify".into()];
    for s in secrets {
        args.extend(["--secret".into(), (*s).to_owned()]);
    }
    args.extend(["--body".into(), path.display().to_string()]);
    for (k, v) in headers {
        args.extend(["--header".into(), format!("{k}: {v}")]);
    }
    args.extend(["--now".into(), now.to_string()]);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    kycd(&args, b"")
}

fn sign(secret: &str, payload: &[u8], extra: &[&str]) -> Output {
    let mut args = vec!["webhook", "sign", "--secret", secret];
    args.extend_from_slice(extra);
    kycd(&args, payload)
}

/// The body and headers printed by `sign`.
fn signed(out: &Output) -> (String, Vec<(String, String)>) {
    assert!(out.status.success(), "{}", text(out));
    let v: Json = serde_json::from_slice(&out.stdout).unwrap();
    let headers = v["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    (v["body"].as_str().unwrap().to_owned(), headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header"))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn every_vector_body_verifies_by_its_raw_signature() {
    let (secret, cases) = vectors();
    assert_eq!(cases.len(), 12);
    for c in &cases {
        let out = verify(&[&secret], c.body.as_bytes(), &c.headers, c.timestamp, &[]);
        assert_eq!(out.status.code(), Some(0), "{}: {}", c.name, text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().next(),
            Some("verified: raw (secret #1)"),
            "{}",
            c.name
        );
    }
}

#[test]
fn every_reencoded_body_verifies_by_v2_with_the_same_headers() {
    let (secret, cases) = vectors();
    for c in &cases {
        let out = verify(
            &[&secret],
            c.reencoded_body.as_bytes(),
            &c.headers,
            c.timestamp,
            &[],
        );
        assert_eq!(out.status.code(), Some(0), "{}: {}", c.name, text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("verified: v2 (secret #1)\n"),
            "{}: {stdout}",
            c.name
        );
        assert!(stdout.contains("re-encoded"), "{}: {stdout}", c.name);
    }
}

#[test]
fn a_changed_body_is_not_verified() {
    let (secret, cases) = vectors();
    for c in &cases {
        // Same length, still JSON: a digit of the timestamp changes.
        let changed = c.body.replacen("1774970000", "1774970001", 1);
        assert_ne!(changed, c.body, "{}", c.name);
        let out = verify(&[&secret], changed.as_bytes(), &c.headers, c.timestamp, &[]);
        assert_eq!(out.status.code(), Some(1), "{}: {}", c.name, text(&out));
        assert!(
            text(&out).contains("not verified: bad_signature: "),
            "{}: {}",
            c.name,
            text(&out)
        );
    }
}

#[test]
fn a_truncated_body_is_reported_as_malformed() {
    let (secret, cases) = vectors();
    let c = &cases[0];
    let out = verify(
        &[&secret],
        &c.body.as_bytes()[..c.body.len() - 1],
        &c.headers,
        c.timestamp,
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not verified: malformed_body: "));
}

#[test]
fn an_authentic_body_that_is_not_json_is_reported_as_unusable() {
    let body = b"not json, but signed";
    let sig = didit::signature::Secret::new("k1").sign_hex(body);
    let headers = vec![("X-Signature".to_owned(), sig)];
    let out = verify(&["k1"], body, &headers, 0, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not verified: unusable: "));
}

#[test]
fn a_wrong_secret_is_not_verified() {
    let (_, cases) = vectors();
    for c in &cases {
        let out = verify(
            &["not_the_secret"],
            c.body.as_bytes(),
            &c.headers,
            c.timestamp,
            &[],
        );
        assert_eq!(out.status.code(), Some(1), "{}: {}", c.name, text(&out));
        assert!(text(&out).contains("not verified: bad_signature: "));
    }
}

#[test]
fn the_second_of_two_secrets_is_reported_by_number() {
    let (secret, cases) = vectors();
    let c = &cases[0];
    let out = verify(
        &["the_new_secret", &secret],
        c.body.as_bytes(),
        &c.headers,
        c.timestamp,
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("verified: raw (secret #2)"));
}

#[test]
fn a_stale_clock_is_reported_as_stale() {
    let (secret, cases) = vectors();
    let c = &cases[0];
    let out = verify(
        &[&secret],
        c.body.as_bytes(),
        &c.headers,
        c.timestamp + 301,
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("not verified: stale: "),
        "{}",
        text(&out)
    );

    // A wider tolerance accepts the same delivery.
    let out = verify(
        &[&secret],
        c.body.as_bytes(),
        &c.headers,
        c.timestamp + 301,
        &["--tolerance", "400"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_clock_far_behind_is_reported_as_future() {
    let (secret, cases) = vectors();
    let c = &cases[0];
    let out = verify(
        &[&secret],
        c.body.as_bytes(),
        &c.headers,
        c.timestamp - 301,
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("not verified: future: "),
        "{}",
        text(&out)
    );
}

#[test]
fn no_signature_headers_is_reported_as_missing_header() {
    let (secret, cases) = vectors();
    let c = &cases[0];
    let out = verify(&[&secret], c.body.as_bytes(), &[], c.timestamp, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not verified: missing_header: "));
}

#[test]
fn a_simple_only_match_is_verified_with_a_warning_unless_refused() {
    let (secret, cases) = vectors();
    let c = &cases[0];
    // The decision is changed but the envelope is not: only Simple holds.
    let changed = c.body.replacen("\"score\":0,", "\"score\":1,", 1);
    assert_ne!(changed, c.body);
    let out = verify(&[&secret], changed.as_bytes(), &c.headers, c.timestamp, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("verified: simple (secret #1)\n"),
        "{stdout}"
    );
    assert!(stdout.contains("must not be trusted"), "{stdout}");

    let out = verify(
        &[&secret],
        changed.as_bytes(),
        &c.headers,
        c.timestamp,
        &["--accept-simple=false"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not verified: simple_not_accepted: "));

    let out = verify(
        &[&secret],
        changed.as_bytes(),
        &c.headers,
        c.timestamp,
        &["--accept-simple"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn signing_each_vector_body_reproduces_its_headers_and_body() {
    let (secret, cases) = vectors();
    for c in &cases {
        let (body, headers) = signed(&sign(&secret, c.body.as_bytes(), &[]));
        assert_eq!(body, c.body, "{}", c.name);
        for (name, value) in &c.headers {
            assert_eq!(header(&headers, name), value, "{}: {name}", c.name);
        }
        assert_eq!(header(&headers, "Content-Type"), "application/json");
        assert_eq!(
            header(&headers, "User-Agent"),
            "DiditWebhook/2.0 +https://didit.me"
        );
    }
}

#[test]
fn signing_a_reencoded_body_gives_back_the_wire_body() {
    let (secret, cases) = vectors();
    for c in &cases {
        let (body, headers) = signed(&sign(&secret, c.reencoded_body.as_bytes(), &[]));
        assert_eq!(body, c.body, "{}", c.name);
        assert_eq!(
            header(&headers, "X-Signature"),
            header(&c.headers, "X-Signature")
        );
    }
}

#[test]
fn what_sign_prints_verifies_with_verify() {
    let payload = br#"{"session_id":"s-1","status":"Declined","timestamp":1700000000,
        "webhook_type":"status.updated","decision":{"name":"Zo\u00eb","score":1.50}}"#;
    let (body, headers) = signed(&sign("round-trip-secret", payload, &[]));
    // Content-Type and User-Agent are passed too: verify ignores them.
    let out = verify(
        &["round-trip-secret"],
        body.as_bytes(),
        &headers,
        1_700_000_000,
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("verified: raw (secret #1)"));
}

#[test]
fn sign_with_several_secrets_uses_the_first() {
    let (secret, cases) = vectors();
    let c = &cases[0];
    let out = kycd(
        &["webhook", "sign", "--secret", &secret, "--secret", "other"],
        c.body.as_bytes(),
    );
    let (_, headers) = signed(&out);
    assert_eq!(
        header(&headers, "X-Signature"),
        header(&c.headers, "X-Signature")
    );
}

#[test]
fn sign_now_sets_the_timestamp_to_the_current_time() {
    let (secret, cases) = vectors();
    let c = &cases[0];
    let before = unix_now();
    let (body, headers) = signed(&sign(&secret, c.body.as_bytes(), &["--now"]));
    let after = unix_now();
    let parsed: Json = serde_json::from_str(&body).unwrap();
    let ts = parsed["timestamp"].as_i64().expect("an integer timestamp");
    assert!(
        before - 60 <= ts && ts <= after + 60,
        "{ts} not in {before}..{after}"
    );
    assert_eq!(header(&headers, "X-Timestamp"), ts.to_string());
    // Everything but the timestamp is unchanged.
    let mut original: Json = serde_json::from_str(&c.body).unwrap();
    original["timestamp"] = ts.into();
    assert_eq!(parsed, original);
    // And the result verifies against the real clock.
    let out = verify(&[&secret], body.as_bytes(), &headers, ts, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn sign_now_adds_a_timestamp_to_a_payload_without_one() {
    let (body, headers) = signed(&sign("k", br#"{"webhook_type":"x"}"#, &["--now"]));
    let parsed: Json = serde_json::from_str(&body).unwrap();
    let ts = parsed["timestamp"].as_i64().unwrap();
    assert!((ts - unix_now()).abs() <= 60);
    assert_eq!(header(&headers, "X-Timestamp"), ts.to_string());
}

#[test]
fn a_missing_body_file_is_a_usage_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-body.json");
    let out = verify_file(&["k"], &path, &[], 0, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read body file"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn a_header_line_without_a_colon_is_a_usage_error() {
    let (secret, cases) = vectors();
    let c = &cases[0];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body.json");
    std::fs::write(&path, &c.body).unwrap();
    let path = path.display().to_string();
    let base = ["webhook", "verify", "--secret", &secret, "--body", &path];

    let out = kycd(
        &[
            &base[..],
            &["--header", "X-Timestamp: 1", "--header", "X-Signature abc"],
        ]
        .concat(),
        b"",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--header #2 has no ':'"), "{err}");

    let out = kycd(&[&base[..], &["--header", " : abc"]].concat(), b"");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--header #1 has an empty name"), "{err}");
}

#[test]
fn a_payload_that_is_not_json_is_a_usage_error_with_its_offset() {
    let out = sign("k", br#"{"full_name":"Jurgen Gross" "status":1}"#, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not json"), "{err}");
    assert!(err.contains("at byte 28"), "{err}");
    assert!(!err.contains("Jurgen"), "personal data echoed: {err}");

    let out = sign("k", br#"{"full_name":"Jurgen"#, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not json") && err.contains("at byte 20"),
        "{err}"
    );
    assert!(!err.contains("Jurgen"), "personal data echoed: {err}");
}

#[test]
fn empty_stdin_to_sign_is_a_usage_error() {
    let out = sign("k", b"", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stdin is empty"));
}

#[test]
fn no_secret_is_a_usage_error() {
    let out = kycd(&["webhook", "sign"], b"{}");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--secret"));

    let out = kycd(&["webhook", "verify", "--body", "x"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--secret"));
}

#[test]
fn secrets_are_never_printed() {
    let (_, cases) = vectors();
    let c = &cases[0];
    let out = verify(
        &["a-very-secret-value"],
        c.body.as_bytes(),
        &c.headers,
        c.timestamp,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!text(&out).contains("a-very-secret-value"));
}

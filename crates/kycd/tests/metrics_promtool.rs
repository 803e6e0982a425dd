//! `/metrics` of the real binary passes `promtool check metrics`
//! (Prometheus's own linter: HELP text, counter and unit naming), on a
//! fresh server and after decisions, and reports what operators watch:
//! counters from the start, decisions by outcome, webhook-to-decision
//! latency from the receipt of the delivery, the projector's lag in events
//! and seconds, the outbox's backlog by kind, the build and the process.
//!
//! It needs promtool: `KYCD_TEST_PROMTOOL` names it (`.ci/promtool.sh`
//! installs Debian's `prometheus` package and prints the path). Without it
//! the test prints a notice and passes, except under `CI=true`, where that
//! is a failure.
//!
//! ```sh
//! KYCD_TEST_PROMTOOL=$(.ci/promtool.sh) cargo test --workspace --test metrics_promtool
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use didit::canonical::Value;
use didit::signature::{sign, Secret};
use serde_json::{json, Value as Json};

mod support;
use support::{tail, Server};

const SECRET: &str = "metrics-test-secret-Zr4uQe9LbW1nXc7T";
const TOKEN: &str = "metrics-test-api-token";
/// Deadlines only bound a hung test; none is expected to be reached.
const DEADLINE: Duration = Duration::from_secs(120);

fn promtool() -> Option<PathBuf> {
    let path = std::env::var("KYCD_TEST_PROMTOOL")
        .ok()
        .filter(|p| !p.is_empty());
    if path.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "KYCD_TEST_PROMTOOL must name promtool under CI=true \
                 (.ci/promtool.sh installs Debian's prometheus package and prints its path)"
            );
        }
        eprintln!(
            "note: metrics_promtool skipped: set KYCD_TEST_PROMTOOL to promtool's path \
             (.ci/promtool.sh installs it) to lint /metrics"
        );
    }
    path.map(PathBuf::from)
}

/// `promtool check metrics` on `text`: it exits 0 only when there is
/// nothing to complain about.
fn promtool_check(promtool: &Path, text: &str, when: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", promtool.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed {when} ({}):\n{}{}\n--- /metrics:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// The samples of a scrape: series name, labels, value.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let value: f64 = value.parse().expect("a sample's value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("labels end with }");
                let labels = rest
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        out.push((name.to_owned(), labels, value));
    }
    out
}

/// The value of the series `name` with (at least) `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .into_iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A `status.updated` delivery signed with `secret`: Didit approved
/// `session` of a customer aged `age`, with their own document and address.
fn approved(
    secret: &str,
    session: &str,
    n: u32,
    age: u32,
) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let now = now_secs();
    let payload = json!({
        "created_at": now - 60,
        "decision": {
            "aml_screenings": [{"hits": [], "node_id": "feature_aml_1", "score": 0, "status": "Approved", "total_hits": 0, "warnings": []}],
            "face_matches": [{"node_id": "feature_face_match_1", "score": 91.3, "status": "Approved", "warnings": []}],
            "features": ["ID_VERIFICATION", "LIVENESS", "FACE_MATCH", "AML", "IP_ANALYSIS"],
            "id_verifications": [{
                "age": age, "document_number": format!("M{n:08}"), "document_type": "Passport",
                "expiration_date": "2031-01-09", "issuing_state": "DEU", "nationality": "DEU",
                "node_id": "feature_ocr_1", "status": "Approved", "warnings": []
            }],
            "ip_analyses": [{"ip_address": format!("85.123.45.{n}"), "ip_country_code": "DE", "is_data_center": false, "is_vpn_or_tor": false, "node_id": "feature_ip_analysis_1", "status": "Approved", "warnings": []}],
            "liveness_checks": [{"matches": [], "method": "PASSIVE", "node_id": "feature_liveness_1", "score": 97.25, "status": "Approved", "warnings": []}],
            "reviews": [],
            "session_id": session,
            "status": "Approved",
            "vendor_data": format!("metrics-user-{n}")
        },
        "environment": "live",
        "event_id": format!("metrics-evt-{session}"),
        "session_id": session,
        "status": "Approved",
        "timestamp": now,
        "vendor_data": format!("metrics-user-{n}"),
        "webhook_type": "status.updated",
        "workflow_id": "wf-metrics"
    });
    let text = payload.to_string();
    let parsed = Value::parse(text.as_bytes()).expect("payload parses");
    let signed = sign(&Secret::new(secret), &parsed);
    (signed.body, signed.headers)
}

async fn deliver(
    http: &reqwest::Client,
    base: &str,
    (body, headers): &(Vec<u8>, Vec<(&'static str, String)>),
) -> u16 {
    let mut req = http
        .post(format!("{base}/webhooks/didit"))
        .body(body.clone());
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    req.send()
        .await
        .expect("delivery answered")
        .status()
        .as_u16()
}

async fn scrape(http: &reqwest::Client, base: &str) -> String {
    let resp = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("/metrics answers");
    assert_eq!(resp.status().as_u16(), 200);
    resp.text().await.unwrap()
}

async fn api(http: &reqwest::Client, base: &str, path: &str) -> Json {
    http.get(format!("{base}/api/v1{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .json()
        .await
        .unwrap()
}

/// Scrape until `done` holds (returning the scrape), or fail naming `what`.
async fn scrape_until(
    http: &reqwest::Client,
    base: &str,
    log: &Path,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let started = Instant::now();
    loop {
        let text = scrape(http, base).await;
        if done(&text) {
            return text;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{what}: not seen within {DEADLINE:?}; /metrics:\n{text}\n--- server log:\n{}",
            tail(log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_and_report_decisions_lag_backlog_and_build() {
    let Some(promtool) = promtool() else { return };
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let log = root.path().join("server.log");
    let server = Server::start(
        &data,
        &log,
        &[
            ("KYCD_WEBHOOK_SECRETS", SECRET.to_owned()),
            ("KYCD_API_TOKEN", TOKEN.to_owned()),
            // The backlog gauge refreshes every 100 ms rather than 5 s.
            ("KYCD_RETRY_TIME_SCALE", "50".to_owned()),
        ],
    );
    let base = server.base.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // A fresh server: every counter is there at zero, and it lints clean.
    let fresh = scrape_until(&http, &base, &log, "the start's policy applied", |t| {
        value(t, "kycd_projector_lag_events", &[]) == Some(0.0)
    })
    .await;
    promtool_check(&promtool, &fresh, "on a fresh server");
    for (name, labels) in [
        ("kycd_decisions_total", [("outcome", "approve")]),
        ("kycd_decisions_total", [("outcome", "step_up")]),
        ("kycd_decisions_total", [("outcome", "block")]),
        ("kycd_webhook_deliveries_total", [("result", "accepted")]),
        (
            "kycd_webhook_deliveries_total",
            [("result", "invalid_signature")],
        ),
        (
            "kycd_webhook_verification_failures_total",
            [("reason", "bad_signature")],
        ),
        ("kycd_actions_total", [("kind", "didit.update_status")]),
        ("kycd_outbox_backlog", [("kind", "didit.update_status")]),
    ] {
        assert_eq!(
            value(&fresh, name, &labels),
            Some(0.0),
            "{name}{labels:?} is not at 0 from the start:\n{fresh}"
        );
    }
    assert_eq!(value(&fresh, "kycd_projector_lag_seconds", &[]), Some(0.0));

    // Hold the store's write lock, so the projector cannot commit: the
    // deliveries wait in the log, and the lag shows it.
    let db = rusqlite::Connection::open(data.join("store.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let adult = approved(SECRET, "metrics-s-adult", 1, 37);
    let minor = approved(SECRET, "metrics-s-minor", 2, 16);
    assert_eq!(deliver(&http, &base, &adult).await, 200);
    assert_eq!(deliver(&http, &base, &minor).await, 200);
    assert_eq!(deliver(&http, &base, &adult).await, 200, "a duplicate");
    let forged = approved("not-the-secret", "metrics-s-forged", 3, 40);
    assert_eq!(deliver(&http, &base, &forged).await, 401);
    // Wait until the oldest waiting event is a good part of a second old.
    let lagging = scrape_until(&http, &base, &log, "the projector's lag", |t| {
        value(t, "kycd_projector_lag_events", &[]).is_some_and(|n| n >= 2.0)
            && value(t, "kycd_projector_lag_seconds", &[]).is_some_and(|s| s >= 0.5)
    })
    .await;
    let lag_seen = value(&lagging, "kycd_projector_lag_seconds", &[]).unwrap();
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);

    // Both sessions decided; the minor's decline writes back to Didit,
    // which waits without an API key: the backlog.
    let mut outcomes = BTreeMap::new();
    let started = Instant::now();
    for session in ["metrics-s-adult", "metrics-s-minor"] {
        loop {
            // 404 until the projector has applied the session's event.
            let resp = http
                .get(format!("{base}/api/v1/sessions/{session}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            let doc: Json = resp.json().await.unwrap_or(Json::Null);
            if let Some(outcome) = doc.pointer("/decision/outcome").and_then(Json::as_str) {
                outcomes.insert(session, outcome.to_owned());
                break;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{session} not decided: {doc}\n--- server log:\n{}",
                tail(&log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(outcomes["metrics-s-minor"], "decline", "{outcomes:?}");
    let pending = api(&http, &base, "/actions?state=pending&limit=100").await;
    let mut unfinished: BTreeMap<String, f64> = BTreeMap::new();
    for a in pending["items"].as_array().unwrap() {
        *unfinished
            .entry(a["kind"].as_str().unwrap().to_owned())
            .or_default() += 1.0;
    }
    assert!(
        unfinished
            .get("didit.update_status")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "the decline's write-back waits: {pending}"
    );

    let text = scrape_until(&http, &base, &log, "caught up, with the backlog", |t| {
        value(t, "kycd_projector_lag_events", &[]) == Some(0.0)
            && unfinished
                .iter()
                .all(|(kind, n)| value(t, "kycd_outbox_backlog", &[("kind", kind)]) == Some(*n))
    })
    .await;
    promtool_check(&promtool, &text, "after decisions");

    for name in [
        "kycd_decisions_total",
        "kycd_webhook_to_decision_seconds",
        "kycd_projector_lag_events",
        "kycd_projector_lag_seconds",
        "kycd_outbox_backlog",
        "kycd_build_info",
        "kycd_webhook_deliveries_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} ")) && l.len() > name.len() + 8),
            "no HELP line for {name}:\n{text}"
        );
    }

    // Decisions by outcome: each decided outcome at least once.
    let mut by_outcome: BTreeMap<&str, f64> = BTreeMap::new();
    for outcome in outcomes.values() {
        *by_outcome.entry(outcome.as_str()).or_default() += 1.0;
    }
    for (outcome, n) in &by_outcome {
        let counted = value(&text, "kycd_decisions_total", &[("outcome", outcome)]);
        assert!(
            counted.is_some_and(|c| c >= *n),
            "kycd_decisions_total{{outcome={outcome}}} is {counted:?}, expected >= {n}"
        );
    }
    // Webhook to decision: both deliveries, each timed from its receipt,
    // so at least the lag they were seen waiting with.
    let count = value(&text, "kycd_webhook_to_decision_seconds_count", &[]).unwrap();
    let sum = value(&text, "kycd_webhook_to_decision_seconds_sum", &[]).unwrap();
    assert!(count >= 2.0, "webhook_to_decision count {count}");
    assert!(
        sum >= lag_seen,
        "webhook_to_decision sum {sum} below the lag seen before the decisions ({lag_seen})"
    );
    assert_eq!(value(&text, "kycd_projector_lag_seconds", &[]), Some(0.0));

    // What the intake answered.
    let deliveries = |result| {
        value(
            &text,
            "kycd_webhook_deliveries_total",
            &[("result", result)],
        )
    };
    assert_eq!(deliveries("accepted"), Some(2.0));
    assert_eq!(deliveries("duplicate"), Some(1.0));
    assert_eq!(deliveries("invalid_signature"), Some(1.0));
    assert_eq!(
        value(
            &text,
            "kycd_webhook_verification_failures_total",
            &[("reason", "bad_signature")]
        ),
        Some(1.0)
    );

    // The build: the revision `kycd --version` prints.
    let revision = env!("KYCD_GIT_REVISION");
    assert_eq!(
        value(
            &text,
            "kycd_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("revision", revision)
            ]
        ),
        Some(1.0),
        "kycd_build_info with revision {revision}:\n{text}"
    );

    // The process: this one, started a moment ago.
    let started_at = value(&text, "process_start_time_seconds", &[]).unwrap();
    let now = now_secs() as f64;
    assert!(
        started_at <= now + 1.0 && started_at >= now - DEADLINE.as_secs_f64() * 4.0,
        "process_start_time_seconds {started_at}, now {now}"
    );
    assert!(value(&text, "process_resident_memory_bytes", &[]).is_some_and(|b| b > 1e6));
    assert!(value(&text, "process_open_fds", &[]).is_some_and(|n| n >= 3.0));
    drop(server);
}

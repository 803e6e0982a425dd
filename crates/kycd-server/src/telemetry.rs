//! Prometheus metrics. The recorder is process-global (the `metrics` facade
//! allows one), so it is installed once and shared by every server in the
//! process, which matters for tests that start several.
//!
//! [`METRICS`] is the one list of what kycd exports: each metric's name,
//! type, unit, help text, the label values it has from the start and, for
//! a histogram, its buckets. Installing the recorder describes them all
//! (every metric on `/metrics` has a `# HELP` line) and registers every
//! counter with each label value it can take at zero, so a rate over a
//! counter works from the first scrape, not from its first increment. The
//! label values come from the code's own lists (the intake's
//! [`DeliveryResult`], the policy's outcomes, the action kinds), not from a
//! second copy here. Metrics are emitted where things happen (the intake,
//! the log, the projector, the workers); a unit test checks that every
//! metric named in the source is in this list, and the other way round.
//! The process's own metrics (`process_*`: CPU, memory, file descriptors,
//! threads, start time) come from `metrics-process`, collected on each
//! scrape.
//!
//! Names follow Prometheus's conventions: counters end in `_total`,
//! durations are in seconds and end in `_seconds`; `promtool check
//! metrics` passes on a live `/metrics` (crates/kycd/tests/metrics_promtool.rs).

use std::sync::OnceLock;

use metrics::{Label, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::intake::DeliveryResult;

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Label sets a metric has from the start.
type LabelSets = fn() -> Vec<Vec<Label>>;

/// One metric kycd exports.
pub struct Described {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    /// The `# HELP` text.
    pub help: &'static str,
    /// The label sets registered at zero when the recorder is installed
    /// (counters: one unlabelled series unless told otherwise; gauges:
    /// none unless told).
    pub from_start: LabelSets,
    /// A histogram's bucket bounds.
    pub buckets: &'static [f64],
}

fn unlabelled() -> Vec<Vec<Label>> {
    vec![Vec::new()]
}

fn nothing() -> Vec<Vec<Label>> {
    Vec::new()
}

/// One label set per value of `label`.
fn each(label: &'static str, values: &[&'static str]) -> Vec<Vec<Label>> {
    values.iter().map(|v| vec![Label::new(label, *v)]).collect()
}

const fn counter(name: &'static str, help: &'static str) -> Described {
    Described {
        name,
        kind: Kind::Counter,
        unit: None,
        help,
        from_start: unlabelled,
        buckets: &[],
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Described {
    Described {
        name,
        kind: Kind::Gauge,
        unit: None,
        help,
        from_start: nothing,
        buckets: &[],
    }
}

const fn histogram(name: &'static str, help: &'static str, buckets: &'static [f64]) -> Described {
    Described {
        name,
        kind: Kind::Histogram,
        unit: None,
        help,
        from_start: nothing,
        buckets,
    }
}

impl Described {
    const fn unit(mut self, unit: Unit) -> Self {
        self.unit = Some(unit);
        self
    }

    const fn at_zero(mut self, sets: LabelSets) -> Self {
        self.from_start = sets;
        self
    }
}

/// Acknowledgement-path latencies: sub-millisecond to a few seconds.
const LATENCY: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Group-commit batch sizes.
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// Receipt to decision: milliseconds when the projector keeps up, up to an
/// hour behind a backlog or a stopped server.
const DECISION_LATENCY: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Every metric kycd exports (besides the process's `process_*`).
pub static METRICS: &[Described] = &[
    // The intake.
    counter(
        "kycd_webhook_deliveries_total",
        "Webhook deliveries answered, by result: accepted (200), duplicate (200), \
         invalid_signature (401), unusable (400, quarantined), unavailable (503), too_large \
         (413), bad_request (400), timeout (408), unsupported_media_type (415).",
    )
    .at_zero(|| each("result", &DeliveryResult::ALL.map(DeliveryResult::as_str))),
    counter(
        "kycd_webhook_verification_failures_total",
        "Webhook deliveries refused by the signature check, by reason.",
    )
    .at_zero(|| each("reason", &didit::signature::VerifyError::REFUSAL_REASONS)),
    counter(
        "kycd_quarantined_total",
        "Authentic but unusable deliveries kept in the quarantine.",
    ),
    gauge(
        "kycd_quarantine_size",
        "Deliveries in the quarantine (sampled at each scrape).",
    )
    .unit(Unit::Count),
    // The event log.
    counter(
        "kycd_log_appends_total",
        "Appends to the event log, by result (new, duplicate, error).",
    )
    .at_zero(|| each("result", &kycd_log::sqlite_log::APPEND_RESULTS)),
    histogram(
        "kycd_log_append_seconds",
        "Time from an append's submission to its durable commit, in seconds.",
        LATENCY,
    )
    .unit(Unit::Seconds),
    histogram(
        "kycd_log_commit_batch_size",
        "Appends committed together in one group commit.",
        SIZES,
    )
    .unit(Unit::Count),
    // The projector.
    counter(
        "kycd_decisions_total",
        "Decisions stored by the projector (the active policy's and reviewers'; shadow \
         decisions are not counted), by outcome.",
    )
    .at_zero(|| {
        each(
            "outcome",
            &kycd_policy::Outcome::ALL.map(kycd_policy::Outcome::as_str),
        )
    }),
    histogram(
        "kycd_webhook_to_decision_seconds",
        "Time from the intake's receipt of a webhook delivery (its receive time in the event \
         log) to the decision the projector stored for it, in seconds.",
        DECISION_LATENCY,
    )
    .unit(Unit::Seconds),
    gauge(
        "kycd_projector_lag_events",
        "Events in the log the projector has not applied yet (sampled at each scrape).",
    )
    .unit(Unit::Count),
    gauge(
        "kycd_projector_lag_seconds",
        "Age of the oldest event the projector has not applied yet, in seconds; 0 when it \
         has caught up (sampled at each scrape).",
    )
    .unit(Unit::Seconds),
    counter(
        "kycd_policy_activations_refused_total",
        "Policy activations in the log the projector refused (the policy did not load); the \
         policy in force stayed.",
    ),
    // The outbox.
    counter(
        "kycd_actions_total",
        "Action attempts by the outbox workers, by kind and result (done, skipped, retry, \
         dead).",
    )
    .at_zero(|| {
        kycd_engine::actions::KINDS
            .iter()
            .flat_map(|kind| {
                crate::worker::RESULTS
                    .iter()
                    .map(|result| vec![Label::new("kind", *kind), Label::new("result", *result)])
            })
            .collect()
    }),
    gauge(
        "kycd_outbox_backlog",
        "Actions not finished yet (pending or running), by kind; refreshed every few seconds.",
    )
    .unit(Unit::Count)
    .at_zero(|| each("kind", &kycd_engine::actions::KINDS)),
    counter(
        "kycd_operator_webhook_disabled_total",
        "Times the operator's webhook endpoint was disabled after consecutive failures.",
    ),
    // Reconciliation.
    counter(
        "kycd_reconcile_fetched_total",
        "Sessions fetched from Didit's API by reconciliation.",
    ),
    counter(
        "kycd_reconcile_appended_total",
        "Events reconciliation appended to the log (what deliveries had not brought).",
    ),
    // The build.
    gauge(
        "kycd_build_info",
        "Always 1; the labels name the running kycd's version and git revision.",
    ),
];

/// What `kycd_build_info` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: String,
    /// The git revision (`kycd --version` prints the same), or `unknown`.
    pub revision: String,
}

impl Default for BuildInfo {
    /// This crate's version; the revision is the binary's to give.
    fn default() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            revision: "unknown".to_owned(),
        }
    }
}

/// Describe every metric of [`METRICS`] and the process's, and register
/// what exists from the start at zero, with the current recorder.
fn describe_and_register(process: &metrics_process::Collector) {
    metrics::with_recorder(|r| {
        for m in METRICS {
            let name = metrics::KeyName::from_const_str(m.name);
            let help = SharedString::const_str(m.help);
            match m.kind {
                Kind::Counter => r.describe_counter(name, m.unit, help),
                Kind::Gauge => r.describe_gauge(name, m.unit, help),
                Kind::Histogram => r.describe_histogram(name, m.unit, help),
            }
        }
    });
    for m in METRICS {
        for labels in (m.from_start)() {
            match m.kind {
                Kind::Counter => metrics::counter!(m.name, labels).increment(0),
                Kind::Gauge => metrics::gauge!(m.name, labels).set(0.0),
                Kind::Histogram => {}
            }
        }
    }
    process.describe();
}

/// The recorder's builder: [`METRICS`]'s histogram buckets.
fn builder() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    METRICS
        .iter()
        .filter(|m| m.kind == Kind::Histogram)
        .try_fold(PrometheusBuilder::new(), |b, m| {
            b.set_buckets_for_metric(Matcher::Full(m.name.to_owned()), m.buckets)
        })
}

fn set_build_info(build: &BuildInfo) {
    metrics::gauge!(
        "kycd_build_info",
        "version" => build.version.clone(),
        "revision" => build.revision.clone()
    )
    .set(1.0);
}

#[derive(Clone)]
pub struct Metrics {
    handle: Option<PrometheusHandle>,
    process: metrics_process::Collector,
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

impl Metrics {
    /// Install the recorder (once per process) and report `build`.
    pub fn install(build: &BuildInfo) -> Self {
        let process = metrics_process::Collector::default();
        let handle = HANDLE.get_or_init(|| match builder().and_then(|b| b.install_recorder()) {
            Ok(h) => {
                describe_and_register(&process);
                Some(h)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        });
        set_build_info(build);
        Self {
            handle: handle.clone(),
            process,
        }
    }

    pub fn render(&self) -> String {
        match &self.handle {
            Some(h) => {
                self.process.collect();
                h.run_upkeep();
                h.render()
            }
            None => String::new(),
        }
    }
}

/// Per-minute counts of what the console's dashboard charts (webhook
/// deliveries by result, action failures), kept in memory for the last
/// [`ACTIVITY_MINUTES`] minutes of this process. Prometheus has the
/// totals; this is the recent shape, without a time-series database.
pub struct Activity {
    minutes: std::sync::Mutex<std::collections::VecDeque<Minute>>,
}

/// How many minutes [`Activity`] remembers.
pub const ACTIVITY_MINUTES: usize = 60;

/// One minute of [`Activity`]: its start (Unix ms) and counts per key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Minute {
    pub start_ms: i64,
    pub counts: std::collections::BTreeMap<&'static str, u64>,
}

static ACTIVITY: OnceLock<Activity> = OnceLock::new();

/// The process's activity.
pub fn activity() -> &'static Activity {
    ACTIVITY.get_or_init(|| Activity {
        minutes: std::sync::Mutex::new(std::collections::VecDeque::new()),
    })
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Activity {
    /// Count one `key` now.
    pub fn bump(&self, key: &'static str) {
        self.bump_at(key, wall_ms());
    }

    fn bump_at(&self, key: &'static str, now_ms: i64) {
        let start_ms = now_ms - now_ms.rem_euclid(60_000);
        let mut minutes = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        if minutes.back().is_none_or(|m| m.start_ms < start_ms) {
            minutes.push_back(Minute {
                start_ms,
                ..Minute::default()
            });
            while minutes.len() > ACTIVITY_MINUTES {
                minutes.pop_front();
            }
        }
        // A clock step backwards lands in the newest minute.
        if let Some(m) = minutes.back_mut() {
            *m.counts.entry(key).or_default() += 1;
        }
    }

    /// The last `n` minutes up to now, oldest first, including empty ones.
    pub fn recent(&self, n: usize) -> Vec<Minute> {
        self.recent_at(n, wall_ms())
    }

    fn recent_at(&self, n: usize, now_ms: i64) -> Vec<Minute> {
        let now_start = now_ms - now_ms.rem_euclid(60_000);
        let minutes = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        (0..n as i64)
            .rev()
            .map(|ago| {
                let start_ms = now_start - ago * 60_000;
                minutes
                    .iter()
                    .find(|m| m.start_ms == start_ms)
                    .cloned()
                    .unwrap_or(Minute {
                        start_ms,
                        ..Minute::default()
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(kind, name)` of every `metrics::counter!("name"` (and gauge,
    /// histogram) with a literal name in `text`.
    fn emitted(text: &str) -> Vec<(Kind, String)> {
        let mut out = Vec::new();
        for (macro_name, kind) in [
            ("metrics::counter!(", Kind::Counter),
            ("metrics::gauge!(", Kind::Gauge),
            ("metrics::histogram!(", Kind::Histogram),
        ] {
            for (at, _) in text.match_indices(macro_name) {
                let rest = text[at + macro_name.len()..].trim_start();
                if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                    out.push((kind, name.to_owned()));
                }
            }
        }
        out
    }

    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_metric_the_source_emits_is_described_and_every_described_one_is_emitted() {
        let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for krate in std::fs::read_dir(&crates).unwrap() {
            let src = krate.unwrap().path().join("src");
            if src.is_dir() {
                sources(&src, &mut files);
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            // Tests (these ones included) emit metrics too; they do not count.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for (kind, name) in emitted(code) {
                let described = METRICS.iter().find(|m| m.name == name);
                let described = described.unwrap_or_else(|| {
                    panic!("{name} ({}) is not in telemetry::METRICS", file.display())
                });
                assert_eq!(described.kind, kind, "{name} in {}", file.display());
                seen.insert(name);
            }
        }
        for m in METRICS {
            assert!(
                seen.contains(m.name),
                "{} is in METRICS but nothing emits it",
                m.name
            );
            assert!(!m.help.is_empty(), "{}", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                _ => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
            if m.unit == Some(Unit::Seconds) {
                assert!(m.name.ends_with("_seconds"), "{}", m.name);
            }
            assert_eq!(
                m.kind == Kind::Histogram,
                !m.buckets.is_empty(),
                "{}",
                m.name
            );
        }
    }

    #[test]
    fn installing_describes_every_metric_and_counters_start_at_zero() {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe_and_register(&metrics_process::Collector::default());
            metrics::histogram!("kycd_webhook_to_decision_seconds").record(0.02);
        });
        let text = handle.render();
        for m in METRICS.iter().filter(|m| m.kind == Kind::Counter) {
            assert!(
                text.contains(&format!("# HELP {} {}", m.name, m.help)),
                "{}: {text}",
                m.name
            );
        }
        for series in [
            r#"kycd_webhook_deliveries_total{result="accepted"} 0"#,
            r#"kycd_webhook_deliveries_total{result="unsupported_media_type"} 0"#,
            r#"kycd_webhook_verification_failures_total{reason="stale"} 0"#,
            r#"kycd_log_appends_total{result="error"} 0"#,
            r#"kycd_decisions_total{outcome="approve"} 0"#,
            r#"kycd_decisions_total{outcome="step_up"} 0"#,
            r#"kycd_decisions_total{outcome="block"} 0"#,
            r#"kycd_actions_total{kind="operator.webhook",result="dead"} 0"#,
            r#"kycd_actions_total{kind="didit.update_status",result="done"} 0"#,
            r#"kycd_outbox_backlog{kind="didit.step_up"} 0"#,
            "kycd_quarantined_total 0",
            "kycd_reconcile_appended_total 0",
        ] {
            assert!(text.contains(series), "{series} missing: {text}");
        }
        assert!(text.contains("# TYPE kycd_webhook_to_decision_seconds histogram"));
        assert!(text.contains(r#"kycd_webhook_to_decision_seconds_bucket{le="0.025"} 1"#));
        assert!(text.contains(r#"kycd_webhook_to_decision_seconds_bucket{le="3600"} 1"#));
    }

    #[test]
    fn activity_counts_per_minute_and_forgets_the_oldest() {
        let a = Activity {
            minutes: std::sync::Mutex::new(Default::default()),
        };
        let t0 = 1_700_000_040_000; // a minute boundary
        a.bump_at("accepted", t0 + 1);
        a.bump_at("accepted", t0 + 59_999);
        a.bump_at("invalid_signature", t0 + 60_000);
        let r = a.recent_at(3, t0 + 60_001);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].counts.get("accepted"), None, "an empty minute");
        assert_eq!(r[1].counts["accepted"], 2);
        assert_eq!(r[2].counts["invalid_signature"], 1);
        for i in 0..(ACTIVITY_MINUTES as i64 + 5) {
            a.bump_at("accepted", t0 + (i + 2) * 60_000);
        }
        assert_eq!(a.minutes.lock().unwrap().len(), ACTIVITY_MINUTES);
    }
}

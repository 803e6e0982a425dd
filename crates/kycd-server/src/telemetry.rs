//! Prometheus metrics. The recorder is process-global (the `metrics` facade
//! allows one), so it is installed once and shared by every server in the
//! process, which matters for tests that start several.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

#[derive(Clone)]
pub struct Metrics {
    handle: Option<PrometheusHandle>,
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

impl Metrics {
    pub fn install() -> Self {
        let handle = HANDLE.get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ];
            let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("kycd_log_commit_batch_size".into()),
                        &sizes,
                    )
                });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        });
        Self {
            handle: handle.clone(),
        }
    }

    pub fn render(&self) -> String {
        match &self.handle {
            Some(h) => {
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

//! What `/readyz` reports besides the store answering: whether the event
//! log can take writes, whether the projector is keeping up, and whether
//! the audit chain holds. Each is a flag set by whoever finds out, and
//! [`monitor`] sets the first two on its own, so a check that failed
//! recovers once the cause is gone (a disk with room again) without a
//! restart and without a delivery having to prove it first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kycd_log::LogError;
use tokio::sync::watch;

use crate::App;

/// A readiness check that something other than the store answering
/// decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The last write to the event log (a delivery, a quarantine or a
    /// probe) failed, and none has succeeded since.
    EventLog,
    /// Events are waiting for the projector and it has applied none for
    /// `KYCD_PROJECTOR_STALL_SECS`.
    Projector,
    /// The audit chain does not verify. Set by the audit trail's own
    /// verification; nothing here decides it.
    AuditChain,
}

impl Check {
    pub const ALL: [Check; 3] = [Check::EventLog, Check::Projector, Check::AuditChain];

    /// The name `/readyz` uses, in `failing` and `checks`.
    pub fn name(self) -> &'static str {
        match self {
            Check::EventLog => "event_log",
            Check::Projector => "projector",
            Check::AuditChain => "audit_chain",
        }
    }

    fn index(self) -> usize {
        match self {
            Check::EventLog => 0,
            Check::Projector => 1,
            Check::AuditChain => 2,
        }
    }
}

/// The failing flags, one per [`Check`]; all pass at start.
#[derive(Debug, Default)]
pub struct Readiness {
    failing: [AtomicBool; 3],
}

impl Readiness {
    /// Record whether `check` passes now.
    pub fn report(&self, check: Check, ok: bool) {
        let was_failing = self.failing[check.index()].swap(!ok, Ordering::SeqCst);
        if was_failing == ok {
            if ok {
                tracing::info!(check = check.name(), "readiness check passes again");
            } else {
                tracing::warn!(check = check.name(), "readiness check failing");
            }
        }
    }

    pub fn passes(&self, check: Check) -> bool {
        !self.failing[check.index()].load(Ordering::SeqCst)
    }

    /// Record the outcome of a write to the event log. A log closed for
    /// shutdown says nothing about whether it can write.
    pub fn log_write<T>(&self, result: &Result<T, LogError>) {
        match result {
            Ok(_) => self.report(Check::EventLog, true),
            Err(LogError::Closed) => {}
            Err(_) => self.report(Check::EventLog, false),
        }
    }
}

/// How often [`monitor`] looks.
const TICK: Duration = Duration::from_secs(1);

/// While the event log is healthy, how often a probe write checks that it
/// still is (a disk can fill with no delivery arriving to find out).
/// While it is failing, every tick probes.
const HEALTHY_PROBE_EVERY: Duration = Duration::from_secs(30);

/// Whether the projector is stuck: events waiting (`applied < head`) and
/// `applied` unchanged for the stall limit.
#[derive(Debug)]
pub struct StallWatch {
    limit: Duration,
    applied: u64,
    since: Instant,
}

impl StallWatch {
    pub fn new(limit: Duration, now: Instant) -> Self {
        Self {
            limit,
            applied: 0,
            since: now,
        }
    }

    /// Observe the log's head and the projector's offset at `now`; true
    /// when the projector counts as stuck.
    pub fn observe(&mut self, head: u64, applied: u64, now: Instant) -> bool {
        if applied != self.applied || applied >= head {
            self.applied = applied;
            self.since = now;
            return false;
        }
        now.duration_since(self.since) >= self.limit
    }
}

/// Keep [`Check::EventLog`] and [`Check::Projector`] up to date until
/// `stop`.
pub(crate) async fn monitor(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let head = app.log.subscribe();
    let mut stall = StallWatch::new(
        Duration::from_secs(app.settings.projector_stall_secs),
        Instant::now(),
    );
    let mut last_probe = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let failing = !app.readiness.passes(Check::EventLog);
        if failing || last_probe.elapsed() >= HEALTHY_PROBE_EVERY {
            last_probe = Instant::now();
            let probed = app.log.probe_write().await;
            if let Err(e) = &probed {
                tracing::debug!(error = %e, "event log probe write failed");
            }
            app.readiness.log_write(&probed);
        }
        let stuck = stall.observe(*head.borrow(), *app.applied.borrow(), Instant::now());
        app.readiness.report(Check::Projector, !stuck);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_projector_is_stuck_only_with_events_waiting_and_no_progress_for_the_limit() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let mut w = StallWatch::new(Duration::from_secs(10), t0);
        // Nothing waiting: never stuck, however long.
        assert!(!w.observe(0, 0, s(100)));
        // Events waiting, no progress: stuck once the limit passes.
        assert!(!w.observe(5, 0, s(105)));
        assert!(!w.observe(9, 0, s(114)));
        assert!(w.observe(9, 0, s(115)));
        // Any progress resets the clock; catching up clears it.
        assert!(!w.observe(9, 3, s(116)));
        assert!(!w.observe(9, 3, s(125)));
        assert!(w.observe(9, 3, s(126)));
        assert!(!w.observe(9, 9, s(200)));
    }

    #[test]
    fn a_failed_write_fails_the_event_log_until_one_succeeds_and_a_closed_log_says_nothing() {
        let r = Readiness::default();
        assert!(Check::ALL.iter().all(|c| r.passes(*c)));
        r.log_write::<()>(&Err(LogError::Unavailable("disk full".into())));
        assert!(!r.passes(Check::EventLog));
        r.log_write::<()>(&Err(LogError::Closed));
        assert!(!r.passes(Check::EventLog));
        r.log_write(&Ok(()));
        assert!(r.passes(Check::EventLog));
        r.log_write::<()>(&Err(LogError::Closed));
        assert!(r.passes(Check::EventLog));
        r.report(Check::AuditChain, false);
        assert!(!r.passes(Check::AuditChain) && r.passes(Check::Projector));
    }
}

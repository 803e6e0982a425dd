//! What `/readyz` reports besides the store answering: whether the event
//! log can take writes, whether the projector is keeping up, and whether
//! the audit chain holds. Each is a flag, and [`monitor`] keeps all three up
//! to date on its own (deliveries report their writes too), so a check that
//! failed recovers once the cause is gone (a disk with room again) without
//! a restart and without a delivery having to prove it first.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kycd_log::anchor::AnchoredChain;
use kycd_log::audit::AuditKey;
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
    /// The audit chain does not verify from its newest anchor on
    /// ([`audit_tail_holds`]).
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

/// How often [`monitor`] verifies the audit chain's tail.
const AUDIT_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Where the audit chain and its anchors are, for [`audit_tail_holds`]:
/// the embedded files or the database, and the key and anchor files.
#[derive(Clone)]
pub struct AuditTail {
    pub chain: Arc<dyn AnchoredChain>,
    pub key_file: PathBuf,
    pub anchor_file: Option<PathBuf>,
}

/// Whether the audit chain holds from its newest anchor on: what the server
/// checks at start ([`kycd_log::anchor::check_at_start`]), checked again
/// while serving, on either backend. `None` when the chain could not be
/// read at all (the store check reports an unreadable store). Readiness
/// verifies the chain here and nowhere else, so another verification can
/// take this one's place.
pub async fn audit_tail_holds(tail: &AuditTail) -> Option<bool> {
    let key = match AuditKey::load(&tail.key_file) {
        Ok(key) => key,
        Err(e) => {
            tracing::debug!(error = %e, "could not verify the audit chain");
            return None;
        }
    };
    let checked =
        kycd_log::anchor::check_at_start(&*tail.chain, Some(&key), tail.anchor_file.as_deref())
            .await;
    match checked {
        Ok((verification, _)) => {
            if let Some(problem) = &verification.problem {
                tracing::debug!(found = %problem, "the audit chain does not verify");
            }
            Some(verification.problem.is_none())
        }
        Err(e) => {
            tracing::debug!(error = %e, "could not verify the audit chain");
            None
        }
    }
}

/// Whether the projector is stuck: events seen waiting (`applied < head`)
/// and `applied` unchanged for the stall limit, counted from the first
/// observation that saw them waiting or from the last progress.
#[derive(Debug)]
pub struct StallWatch {
    limit: Duration,
    applied: u64,
    /// Since when events have been waiting with no progress; `None` while
    /// none wait.
    since: Option<Instant>,
}

impl StallWatch {
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            applied: 0,
            since: None,
        }
    }

    /// Observe the log's head and the projector's offset at `now`; true
    /// when the projector counts as stuck.
    pub fn observe(&mut self, head: u64, applied: u64, now: Instant) -> bool {
        if applied >= head {
            self.applied = applied;
            self.since = None;
            return false;
        }
        if applied != self.applied || self.since.is_none() {
            self.applied = applied;
            self.since = Some(now);
            return false;
        }
        self.since
            .is_some_and(|since| now.duration_since(since) >= self.limit)
    }
}

/// Keep every [`Check`] up to date until `stop`.
pub(crate) async fn monitor(app: Arc<App>, audit: AuditTail, mut stop: watch::Receiver<bool>) {
    let head = app.log.subscribe();
    let mut stall = StallWatch::new(Duration::from_secs(app.settings.projector_stall_secs));
    let mut last_probe = Instant::now();
    let mut last_audit_check: Option<Instant> = None;
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
        if last_audit_check.is_none_or(|at| at.elapsed() >= AUDIT_CHECK_EVERY) {
            last_audit_check = Some(Instant::now());
            if let Some(holds) = audit_tail_holds(&audit).await {
                if !holds && app.readiness.passes(Check::AuditChain) {
                    tracing::error!(
                        "the audit chain no longer verifies from its newest anchor on; `kycd audit verify` shows what was found"
                    );
                }
                app.readiness.report(Check::AuditChain, holds);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_projector_is_stuck_only_with_events_waiting_and_no_progress_for_the_limit() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let mut w = StallWatch::new(Duration::from_secs(10));
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

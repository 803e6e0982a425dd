//! Didit's per-key rate limits (docs/didit-protocol.md section 4): a fixed window of
//! 60 simulated seconds per scope, so a window lasts `60 / time_scale` real
//! seconds.
//!
//! Every API answer carries `X-RateLimit-Limit`, `X-RateLimit-Remaining`
//! and `X-RateLimit-Reset` (real seconds until the window resets, rounded
//! up). A 429 also carries `Retry-After` with the same number of seconds,
//! never less than 1: HTTP's delta-seconds is a whole number, and a client
//! that honours it must not come back before the window has reset, so at a
//! large time scale it waits longer than strictly needed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The budgets per 60 simulated seconds; Didit's by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateLimits {
    /// Listing sessions, workflows and webhook destinations.
    pub reads: u32,
    /// update-status, blocklist, delete, workflow and destination creation.
    pub writes: u32,
    /// `POST /v3/session/`.
    pub session_creation: u32,
    /// `GET /v3/session/{id}/decision/`.
    pub decision_reads: u32,
    /// `GET /v3/session/{id}/generate-pdf/`.
    pub pdf: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            reads: 600,
            writes: 300,
            session_creation: 600,
            decision_reads: 100,
            pdf: 50,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    Read,
    Write,
    SessionCreation,
    DecisionRead,
    Pdf,
}

impl RateLimits {
    fn limit(&self, scope: Scope) -> u32 {
        match scope {
            Scope::Read => self.reads,
            Scope::Write => self.writes,
            Scope::SessionCreation => self.session_creation,
            Scope::DecisionRead => self.decision_reads,
            Scope::Pdf => self.pdf,
        }
    }
}

/// What the rate-limit headers say about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    /// Real seconds until the window resets, rounded up.
    pub reset_secs: u64,
}

pub(crate) struct Limiter {
    limits: RateLimits,
    window: Duration,
    windows: Mutex<HashMap<(String, Scope), (Instant, u32)>>,
}

impl Limiter {
    /// `window` is the real length of 60 simulated seconds.
    pub(crate) fn new(limits: RateLimits, window: Duration) -> Self {
        Self {
            limits,
            window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request of `key` in `scope`: `Ok` if it is within budget,
    /// `Err` (answer 429) if not.
    pub(crate) fn admit(&self, key: &str, scope: Scope) -> Result<RateInfo, RateInfo> {
        let limit = self.limits.limit(scope);
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let slot = windows.entry((key.to_owned(), scope)).or_insert((now, 0));
        if now.duration_since(slot.0) >= self.window {
            *slot = (now, 0);
        }
        let left = self.window.saturating_sub(now.duration_since(slot.0));
        let reset_secs = left.as_secs_f64().ceil().max(1.0) as u64;
        if slot.1 >= limit {
            return Err(RateInfo {
                limit,
                remaining: 0,
                reset_secs,
            });
        }
        slot.1 += 1;
        Ok(RateInfo {
            limit,
            remaining: limit - slot.1,
            reset_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_refuses_past_its_budget_and_others_are_independent() {
        let limiter = Limiter::new(
            RateLimits {
                pdf: 2,
                ..RateLimits::default()
            },
            Duration::from_secs(60),
        );
        assert_eq!(limiter.admit("k", Scope::Pdf).unwrap().remaining, 1);
        assert_eq!(limiter.admit("k", Scope::Pdf).unwrap().remaining, 0);
        let refused = limiter.admit("k", Scope::Pdf).unwrap_err();
        assert_eq!(refused.remaining, 0);
        assert!(refused.reset_secs >= 1 && refused.reset_secs <= 60);
        assert!(limiter.admit("k", Scope::Read).is_ok());
        assert!(limiter.admit("other", Scope::Pdf).is_ok());
    }

    #[test]
    fn the_window_resets() {
        let limiter = Limiter::new(
            RateLimits {
                pdf: 1,
                ..RateLimits::default()
            },
            Duration::ZERO,
        );
        assert!(limiter.admit("k", Scope::Pdf).is_ok());
        assert!(limiter.admit("k", Scope::Pdf).is_ok());
    }
}

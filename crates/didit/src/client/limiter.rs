//! The client-side rate limiter: one sliding window per Didit rate-limit scope.
//!
//! Didit counts calls per key over 60 s and answers 429 past the budget. A
//! sliding log of admission instants is exact (a token bucket would allow a
//! burst of a full budget on top of a window already spent), and at Didit's
//! budgets it holds at most 600 instants per scope.
//!
//! Waiters queue on a fair (FIFO) tokio mutex and sleep while holding it, so
//! callers are admitted in arrival order and only the head of the queue ever
//! has a timer: no busy loop and no thundering herd when a slot frees up.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::config::RateLimits;

/// A Didit rate-limit scope; each has its own budget per window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RateScope {
    /// Generic reads: 600 per minute.
    Read,
    /// Generic writes, update-status and blocklist included: 300 per minute.
    Write,
    /// Session creation: 600 per minute.
    SessionCreation,
    /// Decision reads: 100 per minute.
    DecisionRead,
    /// PDF generation: 50 per minute.
    Pdf,
    /// Data corrections and image uploads: 10 per minute.
    DataCorrection,
}

impl RateScope {
    /// Every scope, in a fixed order.
    pub const ALL: [RateScope; 6] = [
        RateScope::Read,
        RateScope::Write,
        RateScope::SessionCreation,
        RateScope::DecisionRead,
        RateScope::Pdf,
        RateScope::DataCorrection,
    ];

    fn index(self) -> usize {
        match self {
            RateScope::Read => 0,
            RateScope::Write => 1,
            RateScope::SessionCreation => 2,
            RateScope::DecisionRead => 3,
            RateScope::Pdf => 4,
            RateScope::DataCorrection => 5,
        }
    }
}

/// All scopes' windows.
#[derive(Debug)]
pub(crate) struct Limiter {
    scopes: Vec<Window>,
}

impl Limiter {
    /// Limits must be non-zero; the config is validated before this is built.
    pub(crate) fn new(limits: &RateLimits) -> Self {
        let scopes = RateScope::ALL
            .iter()
            .map(|&scope| Window::new(limits.limit(scope), limits.window))
            .collect();
        Self { scopes }
    }

    fn window(&self, scope: RateScope) -> Option<&Window> {
        self.scopes.get(scope.index())
    }

    /// Waits until one more call in `scope` stays within budget, and counts it.
    pub(crate) async fn acquire(&self, scope: RateScope) {
        if let Some(window) = self.window(scope) {
            window.acquire().await;
        }
    }

    /// Holds every call in `scope` back for `wait`, as a 429's `Retry-After` asks.
    pub(crate) fn pause(&self, scope: RateScope, wait: Duration) {
        if let Some(window) = self.window(scope) {
            window.pause(wait);
        }
    }
}

#[derive(Debug)]
struct Window {
    limit: usize,
    length: Duration,
    /// When each call still inside the window was admitted, oldest first.
    admitted: tokio::sync::Mutex<VecDeque<Instant>>,
    /// Set by a 429. A plain mutex: it is never held across an await, and it
    /// must be settable while a waiter sleeps holding `admitted`.
    paused_until: Mutex<Option<Instant>>,
}

impl Window {
    fn new(limit: u32, length: Duration) -> Self {
        // A zero limit would never admit anything; the config check rejects
        // it, and this keeps the loop below from spinning if it ever slips by.
        let limit = usize::try_from(limit.max(1)).unwrap_or(usize::MAX);
        Self {
            limit,
            length,
            admitted: tokio::sync::Mutex::new(VecDeque::new()),
            paused_until: Mutex::new(None),
        }
    }

    fn paused_until(&self) -> Option<Instant> {
        *self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn pause(&self, wait: Duration) {
        let Some(until) = Instant::now().checked_add(wait) else {
            return;
        };
        let mut paused = self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Never shorten a pause another caller's 429 asked for.
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    async fn acquire(&self) {
        let mut admitted = self.admitted.lock().await;
        loop {
            let now = Instant::now();
            if let Some(until) = self.paused_until() {
                if until > now {
                    sleep_until(until).await;
                    continue;
                }
            }
            while admitted
                .front()
                .is_some_and(|&first| now.duration_since(first) >= self.length)
            {
                admitted.pop_front();
            }
            if admitted.len() < self.limit {
                admitted.push_back(now);
                return;
            }
            // Full: the oldest admission leaving the window frees the next slot.
            match admitted
                .front()
                .and_then(|&first| first.checked_add(self.length))
            {
                Some(free_at) => sleep_until(free_at).await,
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn window_admits_up_to_the_limit_then_waits_a_window() {
        let window = Window::new(2, Duration::from_millis(200));
        let start = Instant::now();
        window.acquire().await;
        window.acquire().await;
        window.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn pause_holds_back_the_next_caller() {
        let window = Window::new(10, Duration::from_secs(60));
        let start = Instant::now();
        window.pause(Duration::from_millis(150));
        window.pause(Duration::from_millis(10));
        window.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(150));
    }
}

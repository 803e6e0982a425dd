//! Simulated time.
//!
//! The simulator thinks in Didit's durations (a user takes a couple of
//! minutes, a retry comes a minute later, a rate-limit window is a minute)
//! and runs them `time_scale` times faster. Only durations are scaled:
//! every timestamp the simulator writes (webhook `timestamp`, `created_at`)
//! is the real wall clock, because receivers check freshness against theirs.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub(crate) struct SimClock {
    origin: Instant,
    scale: f64,
}

impl SimClock {
    pub(crate) fn new(scale: f64) -> Self {
        Self {
            origin: Instant::now(),
            scale,
        }
    }

    /// How long `sim` of simulated time lasts in real time.
    pub(crate) fn real(&self, sim: Duration) -> Duration {
        Duration::try_from_secs_f64(sim.as_secs_f64() / self.scale).unwrap_or(Duration::MAX)
    }

    /// Simulated time elapsed since `since`.
    pub(crate) fn sim_since(&self, since: Instant) -> Duration {
        Duration::try_from_secs_f64(since.elapsed().as_secs_f64() * self.scale)
            .unwrap_or(Duration::MAX)
    }

    /// Real time since the simulator started.
    pub(crate) fn real_elapsed(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// Simulated seconds.
pub(crate) fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_at_600x_lasts_100ms() {
        let clock = SimClock::new(600.0);
        assert_eq!(clock.real(secs(60.0)), Duration::from_millis(100));
    }
}

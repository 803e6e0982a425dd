//! The simulator's shared core: configuration, the state behind one mutex,
//! the delivery dispatcher, and the accounting that tells when everything
//! has settled.
//!
//! Locking: [`Inner::lock`] guards the sessions, workflows, destinations and
//! blocklists; it is never held across an `.await`. The dispatcher's record
//! list has its own mutex, taken while the state lock may be held (an event
//! is dispatched as it is emitted, so deliveries keep the emission order),
//! never the other way round. The API call log's mutex is a leaf too.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use didit::signature::Secret;
use time::Date;
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::calls::CallLog;
use crate::clock::SimClock;
use crate::delivery::Dispatcher;
use crate::ratelimit::Limiter;
use crate::state::State;
use crate::Faults;

pub(crate) struct Inner {
    pub seed: u64,
    pub clock: SimClock,
    pub api_key: String,
    pub secret: Secret,
    pub environment: String,
    pub faults: Faults,
    pub base_url: String,
    pub application_id: String,
    pub today: Date,
    pub state: Mutex<State>,
    pub dispatcher: Dispatcher,
    /// Every logged `/v3/` call (see [`crate::calls`]).
    pub calls: CallLog,
    pub activity: Activity,
    pub limiter: Limiter,
    pub shutdown: watch::Sender<bool>,
    pub runtime: Handle,
    /// When the first run began; outage windows count from it.
    pub run_epoch: OnceLock<Instant>,
    pub started: Instant,
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; carry on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps `sim` of simulated time. `false` if the simulator is shutting
    /// down, in which case the caller stops.
    pub(crate) async fn sleep(&self, sim: Duration) -> bool {
        let mut stop = self.shutdown.subscribe();
        if *stop.borrow() {
            return false;
        }
        let stopped = tokio::select! {
            _ = tokio::time::sleep(self.clock.real(sim)) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        !stopped && !self.stopping()
    }

    pub(crate) fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Spawns `work` on the simulator's runtime, counted by `guard` until it
    /// ends. The guard must be taken before spawning (see [`Activity`]).
    pub(crate) fn spawn<F>(&self, guard: ActivityGuard, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(async move {
            work.await;
            drop(guard);
        });
    }

    /// Whether a delivery attempt now falls in the configured outage.
    pub(crate) fn in_outage(&self) -> bool {
        let Some(outage) = self.faults.outage else {
            return false;
        };
        let epoch = *self.run_epoch.get().unwrap_or(&self.started);
        let since = self.clock.sim_since(epoch);
        since >= outage.start && since < outage.start + outage.length
    }
}

/// Counts the work still under way: customers, resubmission redos, and
/// deliveries not yet settled. A unit is taken synchronously before the
/// work is spawned, so the count can never read zero while work is about
/// to start.
pub(crate) struct Activity {
    count: Arc<AtomicUsize>,
    changed: watch::Sender<usize>,
}

pub(crate) struct ActivityGuard {
    count: Arc<AtomicUsize>,
    changed: watch::Sender<usize>,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            count: Arc::new(AtomicUsize::new(0)),
            changed: watch::Sender::new(0),
        }
    }

    pub(crate) fn enter(&self) -> ActivityGuard {
        let now = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        self.changed.send_replace(now);
        ActivityGuard {
            count: self.count.clone(),
            changed: self.changed.clone(),
        }
    }

    pub(crate) fn busy(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until nothing is under way, or `deadline` passes.
    pub(crate) async fn idle(&self, deadline: Duration) -> bool {
        let mut rx = self.changed.subscribe();
        let count = self.count.clone();
        tokio::time::timeout(deadline, async move {
            loop {
                if count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let now = self.count.fetch_sub(1, Ordering::SeqCst) - 1;
        self.changed.send_replace(now);
    }
}

//! Webhook deliveries, retried exactly as Didit retries them, with faults.
//!
//! Each emitted event becomes one delivery per subscribed destination. A
//! delivery waits its extra delay (fault `delay_ms`), then is attempted:
//!
//! - a 2xx is success;
//! - a 5xx, a 404, a connection error or no answer within 5 s (real time:
//!   it measures the receiver, not the simulation) is retried twice, about
//!   60 s and then about 240 s (simulated, ±10 % jitter) after the previous
//!   attempt, and then dropped for good;
//! - 3xx and other 4xx are not retried (redirects are not followed).
//!
//! Every attempt is signed afresh with the wall-clock time as `timestamp`
//! (receivers check freshness against their real clock); the `event_id`
//! and the rest of the body stay the same.
//!
//! Faults are decided per delivery from the seed, so they are reproducible:
//! `loss` records the delivery as lost and never sends it; `duplicate` sends
//! a second copy (same `event_id`) a few simulated seconds later, with its
//! own retries; `reorder` holds the delivery until the first attempt of the
//! session's next delivery to the same destination (or at most 10 simulated
//! minutes), and that next delivery is then not held itself, so at
//! `reorder = 1.0` a session's deliveries arrive in swapped pairs; an
//! `outage` window fails every attempt inside it as a connection error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::clock::secs;
use crate::ids::{rng_for, SimRng};
use crate::sim::Inner;
use crate::wire::{self, WebhookVersion};

/// How long Didit waits for an answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The retry delays after the first and the second attempt (simulated).
const RETRY_DELAYS: [f64; 2] = [60.0, 240.0];
/// The longest a reordered delivery is held waiting for the next one:
/// longer than any gap the flows leave between a session's deliveries (a
/// Didit reviewer acts 120 to 600 simulated seconds after `In Review`), so
/// that the next delivery releases it, not whichever of it and this timer
/// real timing favoured: at 600, a review near the limit arrived before
/// the held `In Review` in one run and after it in the next.
const MAX_HOLD_SECS: f64 = 900.0;

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Still waiting, being attempted, or between retries.
    Pending,
    /// A 2xx was received.
    Delivered,
    /// A 3xx or a 4xx other than 404: not retried.
    Rejected,
    /// Every attempt failed with a retryable outcome.
    Dropped,
    /// The loss fault: never sent.
    Lost,
}

/// The outcome of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "status")]
pub enum AttemptOutcome {
    /// The receiver answered with this HTTP status.
    Status(u16),
    /// The connection could not be made or broke.
    ConnectionError,
    /// No answer within 5 s.
    Timeout,
    /// Inside the outage window: failed as a connection error without
    /// reaching the receiver.
    Outage,
}

impl AttemptOutcome {
    fn retryable(self) -> bool {
        match self {
            AttemptOutcome::Status(code) => code == 404 || (500..600).contains(&code),
            _ => true,
        }
    }

    fn success(self) -> bool {
        matches!(self, AttemptOutcome::Status(code) if (200..300).contains(&code))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// Real time since the simulator started.
    pub at_ms: u64,
    pub outcome: AttemptOutcome,
}

/// One delivery of one event to one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRecord {
    /// The delivery's number, in emission order.
    pub id: u64,
    pub event_id: String,
    pub session_id: String,
    pub webhook_type: String,
    /// The session status the delivery carries.
    pub status: String,
    pub destination_id: String,
    pub url: String,
    pub webhook_version: WebhookVersion,
    /// The extra copy sent by the duplicate fault.
    pub duplicate: bool,
    /// The reorder fault held it back.
    pub held: bool,
    /// It was released by the session's next delivery, i.e. it really went
    /// out after a later one.
    pub reordered: bool,
    /// The extra delay before the first attempt, in simulated milliseconds.
    pub delay_ms: u64,
    pub attempts: Vec<Attempt>,
    pub fate: Fate,
}

/// A body ready to send, without its `timestamp`.
pub(crate) struct Outgoing {
    pub event_id: String,
    pub session_id: String,
    pub webhook_type: String,
    pub status: String,
    pub destination_id: String,
    pub url: String,
    pub version: WebhookVersion,
    pub body: Map<String, Value>,
}

/// (session id, destination id).
type HoldKey = (String, String);

pub(crate) struct Dispatcher {
    http: reqwest::Client,
    records: Mutex<Vec<DeliveryRecord>>,
    /// Deliveries held by the reorder fault, per (session, destination),
    /// released by the next delivery's first attempt.
    holds: Mutex<HashMap<HoldKey, Vec<oneshot::Sender<()>>>>,
    /// Per (session, destination), the signal that the newest delivery in
    /// line has had its first answer. Each delivery waits for the one
    /// before it, so a session's deliveries reach the receiver in the order
    /// they were emitted whatever the machine's timing: at a time scale of
    /// hundreds, two deliveries a few simulated seconds apart are
    /// milliseconds apart, and sent from separate tasks they were in flight
    /// together and arrived in either order, so the same seed did not give
    /// the same decisions. Arriving out of order is the reorder fault's
    /// job (a held delivery leaves the line); a lost one never joins it;
    /// retries and duplicate copies go out of line, as Didit's do.
    lanes: Mutex<HashMap<HoldKey, oneshot::Receiver<()>>>,
}

/// A delivery's place in its session's line: the signal of the one before
/// it (none for the first), and its own, sent after its first attempt.
type Lane = (Option<oneshot::Receiver<()>>, oneshot::Sender<()>);

fn probability(p: f64) -> f64 {
    if p.is_finite() {
        p.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

impl Dispatcher {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(RESPONSE_TIMEOUT)
            .build()?;
        Ok(Self {
            http,
            records: Mutex::new(Vec::new()),
            holds: Mutex::new(HashMap::new()),
            lanes: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn records(&self) -> Vec<DeliveryRecord> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut DeliveryRecord)) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = records.get_mut(id as usize) {
            f(r);
        }
    }

    fn push(&self, out: &Outgoing, duplicate: bool, held: bool, delay_ms: u64, fate: Fate) -> u64 {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let id = records.len() as u64;
        records.push(DeliveryRecord {
            id,
            event_id: out.event_id.clone(),
            session_id: out.session_id.clone(),
            webhook_type: out.webhook_type.clone(),
            status: out.status.clone(),
            destination_id: out.destination_id.clone(),
            url: out.url.clone(),
            webhook_version: out.version,
            duplicate,
            held,
            reordered: false,
            delay_ms,
            attempts: Vec::new(),
            fate,
        });
        id
    }
}

/// Queues `out`. Called in emission order (with the state lock held), so
/// the reorder fault sees each session's deliveries in order.
pub(crate) fn dispatch(inner: &Arc<Inner>, out: Outgoing) {
    let faults = &inner.faults;
    let mut rng = rng_for(
        inner.seed,
        "delivery",
        &format!("{}/{}", out.event_id, out.destination_id),
    );
    let lost = rng.gen_bool(probability(faults.loss));
    let duplicate = rng.gen_bool(probability(faults.duplicate));
    let reorder = rng.gen_bool(probability(faults.reorder));
    let (lo, hi) = faults.delay_ms;
    let delay_ms = if hi > lo { rng.gen_range(lo..=hi) } else { lo };

    let key = (out.session_id.clone(), out.destination_id.clone());
    let d = &inner.dispatcher;
    let waiting = d
        .holds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&key)
        .unwrap_or_default();
    if lost {
        d.push(&out, false, false, 0, Fate::Lost);
        tracing::debug!(event_id = %out.event_id, "delivery lost by the loss fault");
        release(waiting);
        return;
    }
    // A delivery that releases a held one goes out normally: holding it
    // too would only push both back to the hold limit, in order.
    let hold = (reorder && waiting.is_empty()).then(|| {
        let (tx, rx) = oneshot::channel();
        d.holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .push(tx);
        rx
    });
    let lane = hold.is_none().then(|| {
        let (tx, rx) = oneshot::channel();
        let before = d
            .lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, rx);
        (before, tx)
    });
    let id = d.push(&out, false, hold.is_some(), delay_ms, Fate::Pending);
    let guard = inner.activity.enter();
    let task = Task {
        inner: inner.clone(),
        id,
        out: Arc::new(out),
        rng,
    };
    inner.spawn(guard, task.run(hold, lane, delay_ms, waiting, duplicate));
}

fn release(waiting: Vec<oneshot::Sender<()>>) {
    for tx in waiting {
        let _ = tx.send(());
    }
}

struct Task {
    inner: Arc<Inner>,
    id: u64,
    out: Arc<Outgoing>,
    rng: SimRng,
}

impl Task {
    async fn run(
        mut self,
        hold: Option<oneshot::Receiver<()>>,
        lane: Option<Lane>,
        delay_ms: u64,
        waiting: Vec<oneshot::Sender<()>>,
        duplicate: bool,
    ) {
        let inner = self.inner.clone();
        let (before, done) = match lane {
            Some((before, done)) => (before, Some(done)),
            None => (None, None),
        };
        if let Some(before) = before {
            let mut stop = inner.shutdown.subscribe();
            tokio::select! {
                // A dropped signal (its task ended early) frees the line too.
                _ = before => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        if let Some(rx) = hold {
            let mut stop = inner.shutdown.subscribe();
            let released = tokio::select! {
                r = rx => r.is_ok(),
                _ = tokio::time::sleep(inner.clock.real(secs(MAX_HOLD_SECS))) => false,
                _ = stop.wait_for(|s| *s) => return,
            };
            inner.dispatcher.update(self.id, |r| r.reordered = released);
        }
        if !inner.sleep(Duration::from_millis(delay_ms)).await {
            return;
        }
        if duplicate {
            let copy_delay = secs(self.rng.gen_range(1.0..6.0));
            let copy_rng = rng_for(inner.seed, "duplicate", &self.out.event_id);
            let id = inner
                .dispatcher
                .push(&self.out, true, false, 0, Fate::Pending);
            let copy = Task {
                inner: inner.clone(),
                id,
                out: self.out.clone(),
                rng: copy_rng,
            };
            let guard = inner.activity.enter();
            inner.spawn(guard, async move {
                if copy.inner.sleep(copy_delay).await {
                    copy.attempts(Vec::new(), None).await;
                }
            });
        }
        self.attempts(waiting, done).await;
    }

    /// Up to three attempts; `waiting` (deliveries held for this one) go
    /// out after the first.
    async fn attempts(
        mut self,
        mut waiting: Vec<oneshot::Sender<()>>,
        mut done: Option<oneshot::Sender<()>>,
    ) {
        let inner = self.inner.clone();
        for attempt in 0..=RETRY_DELAYS.len() {
            if attempt > 0 {
                let base = RETRY_DELAYS[attempt - 1];
                let delay = secs(base * self.rng.gen_range(0.9..1.1));
                if !inner.sleep(delay).await {
                    return;
                }
            }
            let outcome = self.send_once().await;
            let at_ms = inner.clock.real_elapsed().as_millis() as u64;
            inner.dispatcher.update(self.id, |r| {
                r.attempts.push(Attempt { at_ms, outcome });
            });
            release(std::mem::take(&mut waiting));
            if let Some(done) = done.take() {
                let _ = done.send(());
            }
            if outcome.success() {
                inner
                    .dispatcher
                    .update(self.id, |r| r.fate = Fate::Delivered);
                return;
            }
            if !outcome.retryable() {
                inner
                    .dispatcher
                    .update(self.id, |r| r.fate = Fate::Rejected);
                return;
            }
        }
        tracing::debug!(event_id = %self.out.event_id, "delivery dropped after three attempts");
        inner.dispatcher.update(self.id, |r| r.fate = Fate::Dropped);
    }

    async fn send_once(&mut self) -> AttemptOutcome {
        let inner = &self.inner;
        if inner.in_outage() {
            return AttemptOutcome::Outage;
        }
        let mut body = self.out.body.clone();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        body.insert("timestamp".to_owned(), Value::from(now));
        let signed = match wire::sign_body(&inner.secret, &body) {
            Ok(signed) => signed,
            Err(e) => {
                // Unreachable with bodies built from serde_json values;
                // recorded as a failed attempt rather than a panic.
                tracing::error!(error = %e, "could not sign a delivery");
                return AttemptOutcome::ConnectionError;
            }
        };
        let mut request = inner.dispatcher.http.post(&self.out.url).body(signed.body);
        for (name, value) in signed.headers {
            request = request.header(name, value);
        }
        let mut stop = inner.shutdown.subscribe();
        let result = tokio::select! {
            r = request.send() => r,
            _ = stop.wait_for(|s| *s) => return AttemptOutcome::ConnectionError,
        };
        match result {
            Ok(response) => AttemptOutcome::Status(response.status().as_u16()),
            Err(e) if e.is_timeout() => AttemptOutcome::Timeout,
            Err(_) => AttemptOutcome::ConnectionError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn didit_retries_5xx_404_and_connection_failures_only() {
        for code in [500, 502, 503, 404] {
            assert!(AttemptOutcome::Status(code).retryable(), "{code}");
        }
        for code in [200, 201, 204, 301, 302, 400, 401, 403, 409, 422, 429] {
            assert!(!AttemptOutcome::Status(code).retryable(), "{code}");
        }
        assert!(AttemptOutcome::ConnectionError.retryable());
        assert!(AttemptOutcome::Timeout.retryable());
        assert!(AttemptOutcome::Outage.retryable());
        assert!(AttemptOutcome::Status(204).success());
        assert!(!AttemptOutcome::Status(302).success());
    }
}

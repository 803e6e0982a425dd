//! The session projector: a consumer of the event log that keeps one record
//! per Didit session in the [`Store`].
//!
//! It reads a batch of events after its stored offset, applies each session
//! event to its session ([`crate::session::apply`]) in log order, and commits
//! the touched sessions together with the new offset in one transaction. A
//! crash between two commits replays the uncommitted batch from the same
//! offset against the same records, so every event is applied exactly once.

use std::collections::HashMap;
use std::sync::Arc;

use didit::payload::Envelope;
use kycd_log::store::{SessionRecord, Store, StoreError};
use kycd_log::{EventLog, LogError, StoredEvent};
use tokio::sync::watch;

use crate::session::{apply, Delivery};

/// The consumer name under which the projector's offset is stored.
pub const CONSUMER: &str = "sessions";

const BATCH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Projector {
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
}

impl Projector {
    pub fn new(log: Arc<dyn EventLog>, store: Arc<dyn Store>) -> Self {
        Self { log, store }
    }

    /// Apply every event currently in the log; returns the offset reached.
    pub async fn catch_up(&self) -> Result<u64, ProjectorError> {
        loop {
            let from = self.store.consumer_offset(CONSUMER).await?;
            let events = self.log.read(from, BATCH).await?;
            let Some(last) = events.last().map(|e| e.offset) else {
                return Ok(from);
            };
            self.apply_batch(from, last, &events).await?;
            let head = self.log.head().await?;
            metrics::gauge!("kycd_consumer_lag", "consumer" => CONSUMER)
                .set(head.saturating_sub(last) as f64);
        }
    }

    async fn apply_batch(
        &self,
        from: u64,
        to: u64,
        events: &[StoredEvent],
    ) -> Result<(), ProjectorError> {
        // Parse once; events that are not about a session only move the offset.
        let parsed: Vec<(&StoredEvent, Envelope)> = events
            .iter()
            .filter(|e| e.session_id.is_some())
            .filter_map(|e| match Envelope::from_slice(&e.body) {
                Ok(env) => Some((e, env)),
                Err(err) => {
                    // The intake only logs what parsed, so this means a bug
                    // or a corrupted row; say which event, never its content.
                    tracing::error!(event = %e.id, error = %err, "stored event does not parse; skipped");
                    None
                }
            })
            .collect();
        let mut ids: Vec<String> = parsed
            .iter()
            .filter_map(|(_, env)| env.session_id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        let mut sessions: HashMap<String, SessionRecord> = self.store.load_sessions(&ids).await?;
        for (event, env) in &parsed {
            let flag = |k: &str| {
                event
                    .meta
                    .get(k)
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false)
            };
            let delivery = Delivery {
                offset: event.offset,
                event_id: event.id.as_str(),
                received_at_ms: event.received_at_ms,
                source: event.source.as_str(),
                envelope_only: flag("envelope_only"),
                sandbox: flag("sandbox"),
                envelope: env,
            };
            let Some(id) = env.session_id.clone() else {
                continue;
            };
            let current = sessions.remove(&id);
            if let Some(next) = apply(current, &delivery) {
                sessions.insert(id, next);
            }
        }
        self.store
            .commit_sessions(CONSUMER, from, to, sessions.into_values().collect())
            .await?;
        Ok(())
    }

    /// Follow the log until `stop` turns true: catch up, then wait for the
    /// next commit. Transient errors are logged and retried with backoff.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut head = self.log.subscribe();
        let mut backoff = std::time::Duration::from_millis(50);
        loop {
            if *stop.borrow() {
                return;
            }
            match self.catch_up().await {
                Ok(_) => backoff = std::time::Duration::from_millis(50),
                Err(e) => {
                    tracing::warn!(error = %e, "projector failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                r = head.changed() => if r.is_err() { return },
                _ = stop.changed() => {}
            }
        }
    }
}

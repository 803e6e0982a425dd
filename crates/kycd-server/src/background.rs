//! The server's timers: reconciliation against Didit's API, step-ups that
//! ran out of time, and the outbox's backlog for `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use kycd_engine::projector::STEP_UP_EXPIRED;
use kycd_log::{EventSource, NewEvent};
use serde_json::json;
use tokio::sync::watch;

use crate::App;

/// Wait `ms` or until stopped; false when stopped.
async fn pause(stop: &mut watch::Receiver<bool>, ms: i64) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms.max(1) as u64)) => !*stop.borrow(),
        r = stop.changed() => r.is_ok() && !*stop.borrow(),
    }
}

/// Run a reconciliation pass every `KYCD_RECONCILE_INTERVAL_SECS`.
pub async fn reconcile_loop(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let (Some(reconciler), interval) =
        (app.reconciler.clone(), app.settings.reconcile_interval_secs)
    else {
        return;
    };
    if interval == 0 {
        return;
    }
    let every = app.settings.scaled_ms(interval as f64 * 1000.0);
    while pause(&mut stop, every).await {
        if !app.roles.timers() {
            continue;
        }
        let report = reconciler
            .incremental_pass(crate::reconcile::LISTING_LOOKBACK_MS)
            .await;
        if report.appended > 0 || report.errors > 0 {
            tracing::info!(
                listed = report.listed,
                fetched = report.fetched,
                appended = report.appended,
                errors = report.errors,
                "reconciliation pass"
            );
        }
    }
}

/// Log the expiry of every step-up whose time ran out; the projector then
/// decides the original session again without it.
pub async fn expire_step_ups(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let every = app.settings.scaled_ms(5_000.0).min(5_000);
    while pause(&mut stop, every).await {
        if !app.roles.timers() {
            continue;
        }
        let now = app.clock.now_millis();
        let due = match app.outbox.step_ups_due(now).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "could not read open step-ups");
                continue;
            }
        };
        for s in due {
            let event = NewEvent {
                received_at_ms: now,
                source: EventSource::Internal,
                kind: STEP_UP_EXPIRED.to_owned(),
                session_id: Some(s.original_session_id.clone()),
                didit_event_id: None,
                dedupe_keys: vec![format!("step_up_expired:{}", s.step_up_session_id)],
                body: json!({
                    "original_session_id": s.original_session_id,
                    "step_up_session_id": s.step_up_session_id,
                    "reason": "expired",
                    "expired_at_ms": s.expires_at_ms,
                })
                .to_string()
                .into_bytes(),
                meta: json!({}),
            };
            if let Err(e) = app.log.append(event).await {
                tracing::warn!(error = %e, "could not log a step-up's expiry");
            }
        }
    }
}

/// Keep `kycd_outbox_backlog{kind}` current: the unfinished actions per
/// kind, read at once and then every 5 s (sooner under a faster retry
/// clock). A kind whose backlog empties shows 0, not its last count.
pub async fn outbox_backlog(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    // Never more often than four times a second: at the demo's scale the
    // scaled 5 s is 8 ms, and each read queues the projector's and the
    // API's reads behind it.
    let every = app.settings.scaled_ms(5_000.0).clamp(250, 5_000);
    let mut kinds: std::collections::BTreeSet<String> = kycd_engine::actions::KINDS
        .iter()
        .map(|k| (*k).to_owned())
        .collect();
    loop {
        match app.outbox.backlog().await {
            Ok(backlog) => {
                kinds.extend(backlog.keys().cloned());
                for kind in &kinds {
                    let n = backlog.get(kind).copied().unwrap_or(0);
                    metrics::gauge!("kycd_outbox_backlog", "kind" => kind.clone()).set(n as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the outbox's backlog"),
        }
        if !pause(&mut stop, every).await {
            return;
        }
    }
}

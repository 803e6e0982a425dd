//! kycd against the Didit simulator, shared by the tests that run both:
//! starting the simulator, an NFC step-up workflow at it, kycd pointed at
//! it, and waiting until the whole loop is quiet.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use didit::signature::Secret;
use kycd_core::SystemClock;
use kycd_log::outbox::{ActionQuery, ActionRecord, ActionState};
use kycd_server::{Running, Settings};
use kycd_sim::{ApiCall, CallEffect, Faults, Sim, SimConfig, WebhookVersion};
use serde_json::Value;

/// The simulator, signing its deliveries with `secret`.
pub async fn simulator(secret: &str, seed: u64, time_scale: f64, faults: Faults) -> Sim {
    kycd_sim::start(SimConfig {
        webhook_secret: secret.into(),
        seed,
        time_scale,
        faults,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// A workflow at the simulator for each step-up check the default policy
/// asks for (NFC, PHONE, BIOMETRIC_AUTH), as an operator configures them.
pub async fn step_up_workflows(sim: &Sim) -> std::collections::BTreeMap<String, String> {
    let client = didit::client::DiditClient::new({
        let mut c = didit::client::ClientConfig::new(sim.api_key().to_owned());
        c.base_url = sim.base_url();
        c
    })
    .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for (check, nfc) in [("NFC", true), ("PHONE", false)] {
        let mut req = didit::client::CreateWorkflowRequest::new(
            format!("{check} step-up"),
            didit::client::WorkflowType::Kyc,
        );
        req.is_nfc_enabled = Some(nfc);
        req.is_phone_verification_enabled = Some(!nfc);
        let wf = client.create_workflow(&req).await.unwrap();
        out.insert(check.to_owned(), wf.id().unwrap().to_owned());
    }
    out.insert(
        "BIOMETRIC_AUTH".to_owned(),
        sim.biometric_workflow_id().to_owned(),
    );
    out
}

/// kycd's settings for acting on the simulator, accepting its deliveries
/// signed with `secret`, with its data in `data_dir`.
pub fn settings(sim: &Sim, secret: &str, data_dir: PathBuf) -> Settings {
    Settings {
        listen: "127.0.0.1:0".into(),
        data_dir,
        webhook_secrets: vec![Secret::new(secret)],
        act_on_sandbox: true,
        didit_api_key: Some(Secret::new(sim.api_key())),
        didit_base_url: sim.base_url(),
        ..Settings::default()
    }
}

/// kycd and the simulator, and whatever a test file runs beside them.
pub struct Stack<X = ()> {
    pub sim: Sim,
    pub running: Running,
    pub extra: X,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// Start kycd with `settings` (its data under `dir`, kept as long as
    /// the stack) and send the simulator's deliveries to it.
    #[allow(dead_code)] // each test binary compiles this module; not all use both
    pub async fn start(
        sim: Sim,
        settings: Settings,
        dir: tempfile::TempDir,
        version: WebhookVersion,
    ) -> Stack {
        Self::start_behind(sim, settings, dir, version, |url| async move { url }).await
    }

    /// [`Stack::start`], with the simulator delivering to the address
    /// `front` returns for kycd's webhook URL (a proxy in front of it).
    pub async fn start_behind<F, Fut>(
        sim: Sim,
        settings: Settings,
        dir: tempfile::TempDir,
        version: WebhookVersion,
        front: F,
    ) -> Stack
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        // The simulator stamps deliveries with the wall clock, so kycd must
        // check freshness against it too.
        let running = kycd_server::start(settings, Arc::new(SystemClock))
            .await
            .unwrap();
        let url = front(format!("http://{}/webhooks/didit", running.addr)).await;
        sim.add_destination(&url, version).unwrap();
        Stack {
            sim,
            running,
            extra: (),
            _dir: dir,
        }
    }
}

impl<X> Stack<X> {
    /// The same stack, with `extra` beside it.
    pub fn with<Y>(self, extra: Y) -> Stack<Y> {
        Stack {
            sim: self.sim,
            running: self.running,
            extra,
            _dir: self._dir,
        }
    }

    /// Wait until the simulation, the projector and the outbox are all
    /// quiet, twice in a row (a write-back makes Didit deliver again).
    pub async fn settle(&self, deadline: Duration) {
        let end = Instant::now() + deadline;
        let mut quiet_rounds = 0;
        while quiet_rounds < 2 {
            assert!(Instant::now() < end, "the loop did not settle");
            self.sim
                .wait_settled(end.saturating_duration_since(Instant::now()))
                .await
                .expect("the simulation settles");
            let app = &self.running.app;
            let head = app.log.head().await.unwrap();
            let mut applied = app.applied.clone();
            while *applied.borrow_and_update() < head {
                assert!(Instant::now() < end, "projector did not catch up");
                let _ = tokio::time::timeout(Duration::from_millis(100), applied.changed()).await;
            }
            let busy = self.actions(ActionState::Pending).await.len()
                + self.actions(ActionState::Running).await.len();
            if busy == 0 && app.log.head().await.unwrap() == head {
                quiet_rounds += 1;
            } else {
                quiet_rounds = 0;
            }
            // The poll interval between two looks at a quiet system.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// The outbox's actions in `state`.
    pub async fn actions(&self, state: ActionState) -> Vec<ActionRecord> {
        self.running
            .app
            .outbox
            .list_actions(ActionQuery {
                state: Some(state),
                limit: 100_000,
                ..Default::default()
            })
            .await
            .unwrap()
    }

    /// kycd's document for session `id` (null if it has none).
    pub async fn session(&self, id: &str) -> Value {
        match self.running.app.store.get_session(id).await.unwrap() {
            Some(s) => s.doc,
            None => Value::Null,
        }
    }

    /// Didit status updates of `session` that changed its status.
    pub fn changes_of(&self, session: &str) -> Vec<ApiCall> {
        self.sim
            .calls()
            .into_iter()
            .filter(|c| {
                c.session_id.as_deref() == Some(session)
                    && c.path.ends_with("/update-status/")
                    && c.effect == CallEffect::Changed
            })
            .collect()
    }
}

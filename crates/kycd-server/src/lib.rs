//! kycd's HTTP face, and the only crate that knows HTTP: the Didit webhook
//! intake ([`intake`]), the read API ([`api`]), health and metrics.
//!
//! [`start`] opens the event log and the store in the data directory,
//! starts the session projector, binds the listener (and the admin one, when
//! configured) and serves until told to stop ([`serving`]: header, body and
//! idle timeouts and a connection cap); then it stops accepting, lets
//! in-flight requests finish, drains the log's pending commits and stops the
//! projector.
#![forbid(unsafe_code)]

pub mod access_api;
pub mod actions_api;
pub mod api;
mod background;
pub mod ca_bundle;
pub mod cluster;
mod console;
pub mod decisions;
pub mod error;
pub mod intake;
pub mod operator_webhook;
pub mod proxy;
pub mod readiness;
pub mod reconcile;
pub mod serving;
pub mod settings;
pub mod storage;
pub mod telemetry;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::{get, post};
use axum::Router;
use didit::client::{ClientConfig, DiditClient};
use didit::signature::Verifier;
use kycd_core::clock::SharedClock;
use kycd_engine::actions::{ActionSettings, BlocklistItems};
use kycd_engine::projector::{Policies, Projector};
use kycd_log::access::Access;
use kycd_log::audit::{Audit, NewAudit};
use kycd_log::outbox::Outbox;
use kycd_log::store::Store;
use kycd_log::EventLog;
use kycd_policy::Policy;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use settings::Settings;

/// The latest `kycd replay` report, in the data directory, shown on the
/// console's policy page.
pub const REPLAY_REPORT_FILE: &str = "replay-latest.json";

/// Everything a request handler needs.
pub struct App {
    pub settings: Settings,
    pub verifier: Verifier,
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn Store>,
    pub clock: SharedClock,
    pub metrics: telemetry::Metrics,
    pub policies: Policies,
    /// The offset up to which the projector has applied the log.
    pub applied: watch::Receiver<u64>,
    /// The actions decisions imply (the same store as `store`).
    pub outbox: Arc<dyn Outbox>,
    /// The tamper-evident audit trail (the same store as `store`).
    pub audit: Arc<dyn Audit>,
    /// API tokens and console users (the same store as `store`).
    pub access: Arc<dyn Access>,
    /// The review queue (the same store as `store`).
    pub cases: Arc<dyn kycd_log::cases::Cases>,
    /// Didit's API, when a key is configured.
    pub didit: Option<DiditClient>,
    /// Reconciliation against Didit's API, when a key is configured.
    pub reconciler: Option<Arc<reconcile::Reconciler>>,
    pub reconcile_totals: Arc<reconcile::Totals>,
    /// What `/readyz` reports beyond the store answering, kept up to date
    /// by [`readiness::monitor`].
    pub readiness: Arc<readiness::Readiness>,
    /// The storage backend.
    pub backend: storage::Backend,
    /// This instance's membership of a cluster (PostgreSQL only).
    pub membership: Option<Arc<cluster::Membership>>,
    /// What this instance does that only one instance may do at a time.
    pub roles: cluster::Roles,
}

/// Load the active policy (built-in unless `path`) and the optional shadow.
pub fn load_policies(settings: &Settings) -> anyhow::Result<Policies> {
    let active = match &settings.policy {
        Some(p) => Policy::from_file(p).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Policy::builtin_default(),
    };
    let shadow = settings
        .shadow_policy
        .as_ref()
        .map(|p| Policy::from_file(p).map_err(|e| anyhow::anyhow!("{e}")))
        .transpose()?;
    let mut policies = Policies::new(active, shadow);
    policies.graph_window_ms = i64::from(settings.graph_window_days) * 86_400_000;
    policies.actions = Arc::new(action_settings(settings)?);
    Ok(policies)
}

/// What decisions do, from the settings.
pub fn action_settings(settings: &Settings) -> anyhow::Result<ActionSettings> {
    Ok(ActionSettings {
        didit: settings.writeback,
        allow_loosening: settings.writeback_allow_loosening,
        blocklist: BlocklistItems::parse(&settings.blocklist_items).map_err(anyhow::Error::msg)?,
        step_up_workflows: settings.step_up_workflows.clone(),
        act_on_sandbox: settings.act_on_sandbox,
        operator_webhooks: settings.operator_webhook_url.is_some(),
    })
}

/// A Didit API client when a key is configured, trusting `roots` besides
/// the built-in roots.
pub fn didit_client(
    settings: &Settings,
    roots: &ca_bundle::CaBundle,
) -> anyhow::Result<Option<DiditClient>> {
    let Some(key) = &settings.didit_api_key else {
        return Ok(None);
    };
    let mut config = ClientConfig::new(key.expose().to_owned());
    config.base_url = settings.didit_base_url.clone();
    config.root_certificates = roots.certificates().to_vec();
    // Didit's limits are per minute; a faster clock (the demo against the
    // simulator, whose minutes are as short) shortens the window too.
    if settings.retry_time_scale > 1.0 {
        config.rate_limits.window = config.rate_limits.window.div_f64(settings.retry_time_scale);
    }
    Ok(Some(
        DiditClient::new(config).map_err(|e| anyhow::anyhow!("didit client: {e}"))?,
    ))
}

/// Reload the active policy from its file (on SIGHUP). An invalid file is
/// refused with its error and the policy in force stays active. Returns the
/// new version, or `None` when the built-in policy is in use.
///
/// The policy is activated through the event log: it decides every event
/// after its activation, and the projector switches when it reaches it.
/// This waits (a few seconds at most) until it has.
pub async fn reload_policy(app: &App) -> Result<Option<String>, String> {
    let Some(path) = &app.settings.policy else {
        return Ok(None);
    };
    let policy = Policy::from_file(path).map_err(|e| e.to_string())?;
    let version = policy.version().to_owned();
    let appended = app
        .log
        .append(kycd_engine::projector::policy_activation(
            &policy,
            "operator:sighup",
            app.clock.now_millis(),
        ))
        .await
        .map_err(|e| format!("the event log refused the activation: {e}"))?;
    if let kycd_log::Appended::New { offset, .. } = appended {
        let mut applied = app.applied.clone();
        let reached = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            applied.wait_for(|o| *o >= offset),
        )
        .await;
        if !matches!(reached, Ok(Ok(_))) {
            tracing::warn!(
                version,
                "policy recorded; it decides once the projector reaches it"
            );
        }
    }
    Ok(Some(version))
}

fn policy_details(app: &App, policy: &Policy) -> serde_json::Value {
    serde_json::json!({
        "name": policy.name(),
        "version": policy.version(),
        "file": app.settings.policy.as_ref().map(|p| p.display().to_string()),
    })
}

impl App {
    /// Append one record to the audit trail. A trail that cannot be written
    /// is logged loudly; the operation it records has already happened.
    pub async fn record(
        &self,
        actor: &str,
        action: &str,
        target: Option<&str>,
        details: serde_json::Value,
    ) {
        let entry = NewAudit {
            at_ms: self.clock.now_millis(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.map(str::to_owned),
            details,
        };
        if let Err(e) = self.audit.audit(vec![entry]).await {
            tracing::error!(error = %e, action, "could not append to the audit trail");
        }
    }

    /// [`reload_policy`], audited: the new policy, or the refusal.
    pub async fn reload_policy_audited(&self, actor: &str) -> Result<Option<String>, String> {
        let result = reload_policy(self).await;
        match &result {
            Ok(Some(_)) => {
                let active = self.policies.active();
                self.record(
                    actor,
                    "policy.activated",
                    None,
                    policy_details(self, &active),
                )
                .await
            }
            Ok(None) => {}
            Err(e) => {
                self.record(
                    actor,
                    "policy.refused",
                    None,
                    serde_json::json!({"error": e}),
                )
                .await
            }
        }
        result
    }
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    /// The admin listener's address, when `KYCD_ADMIN_LISTEN` is set.
    pub admin_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stop accepting, finish in-flight requests and commits, then return.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("server task panicked")?
    }

    /// Serve until `signal` resolves, then shut down gracefully.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut stopped = self.stop.subscribe();
        tokio::select! {
            _ = signal => {}
            // The server may also stop by itself (e.g. a listener error).
            _ = stopped.wait_for(|s| *s) => {}
        }
        self.shutdown().await
    }
}

/// The public listener's router when an admin listener is configured: the
/// webhook intake and health, nothing an operator uses.
pub fn public_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/webhooks/didit", post(intake::didit_webhook))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .with_state(app)
}

/// Every route: the one listener's router, or the admin listener's. Tests
/// may drive it without a socket.
pub fn router(app: Arc<App>) -> Router {
    let api = api::routes(app.clone());
    Router::new()
        .route("/webhooks/didit", post(intake::didit_webhook))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .nest("/api/v1", api)
        .merge(console::routes(app.clone()))
        .with_state(app)
}

/// Lower the calling thread's scheduling priority to `nice` 19, the lowest (on Linux
/// priorities are per thread). Elsewhere a no-op.
fn lower_priority() {
    // `None` is `who = 0`: on Linux, the calling thread.
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        tracing::debug!(error = %e, "could not lower the projector's priority");
    }
}

/// A write past the process's file-size limit (`RLIMIT_FSIZE`) raises
/// SIGXFSZ, whose default action ends the process. Handled, the write fails
/// with EFBIG instead and is answered like a full disk: 503, and `/readyz`
/// not ready, until the limit allows writes again.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    {
        // SIGXFSZ is 25 on every Unix kycd runs on (Linux, the BSDs, macOS).
        const SIGXFSZ: i32 = 25;
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ)) {
            Ok(mut signals) => {
                tokio::spawn(async move {
                    while signals.recv().await.is_some() {
                        tracing::debug!("a write went past the file-size limit");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "could not handle SIGXFSZ"),
        }
    }
}

/// What the program starting a server tells it about itself, beyond the
/// settings.
#[derive(Debug, Clone, Default)]
pub struct Startup {
    /// The version and git revision `kycd_build_info` reports (the binary
    /// knows its revision; this crate does not).
    pub build: telemetry::BuildInfo,
}

/// [`start_with`] with the default [`Startup`]: revision `unknown`.
pub async fn start(settings: Settings, clock: SharedClock) -> anyhow::Result<Running> {
    start_with(settings, clock, Startup::default()).await
}

/// Open storage in `settings.data_dir`, start the projector and serve on
/// `settings.listen`.
pub async fn start_with(
    settings: Settings,
    clock: SharedClock,
    startup: Startup,
) -> anyhow::Result<Running> {
    let metrics = telemetry::Metrics::install(&startup.build);
    // Read once: every outbound HTTPS client trusts these roots as well.
    let roots = ca_bundle::CaBundle::from_settings(&settings)
        .map_err(|e| anyhow::anyhow!("ca_bundle (KYCD_CA_BUNDLE): {e}"))?;
    if !roots.is_empty() {
        tracing::info!(
            certificates = roots.len(),
            "outbound HTTPS trusts the CA bundle besides the built-in roots"
        );
    }
    let storage = storage::open(&settings, lower_priority).await?;
    tracing::info!(backend = storage.backend.name(), "storage open");
    // Key the audit trail and check its tail against the newest anchor
    // before anything is served; a broken chain stops the start here unless
    // the operator allowed it (kycd_log::anchor).
    let anchoring = match &storage.backend {
        storage::Backend::Embedded {
            store,
            log_path,
            store_path,
        } => {
            kycd_log::anchor::attach(
                store,
                store_path,
                log_path,
                &settings.data_dir,
                &settings.audit(),
                clock.now_millis(),
            )
            .await?
        }
        // Every instance must use the same key (`KYCD_AUDIT_KEY_FILE`): a
        // record keyed otherwise reads as forged.
        storage::Backend::Postgres { store, .. } => {
            kycd_log::postgres::anchor::attach(
                store,
                &settings.data_dir,
                &settings.audit(),
                clock.now_millis(),
            )
            .await?
        }
    };
    // Several instances on one database share the work through leases;
    // one process on the embedded store holds every role.
    let (membership, roles) = match &storage.backend {
        storage::Backend::Postgres { db, .. } => {
            let id = storage::instance_id(&settings);
            let joined = kycd_log::postgres::cluster::Cluster::join(
                db.clone(),
                &id,
                env!("CARGO_PKG_VERSION"),
            )
            .await
            .context("join the cluster in the database")?;
            tracing::info!(instance = %id, epoch = joined.epoch(), "joined the cluster");
            let (membership, roles) =
                cluster::Membership::join(joined, storage.log.partitions()).await;
            (Some(membership), roles)
        }
        storage::Backend::Embedded { .. } => (None, cluster::Roles::single()),
    };
    let storage::Storage {
        log,
        store,
        outbox,
        audit,
        access,
        cases,
        backend,
    } = storage;
    let didit = didit_client(&settings, &roots)?;
    let operator = match &settings.operator_webhook_url {
        Some(url) => {
            let secrets = settings
                .operator_webhook_secrets
                .iter()
                .map(|s| operator_webhook::SigningSecret::parse(s.expose()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    anyhow::anyhow!("operator webhook secrets must be whsec_ followed by base64")
                })?;
            Some(
                operator_webhook::Sender::with_ca_bundle(
                    url,
                    secrets,
                    settings.operator_webhook_allow_private,
                    std::time::Duration::from_secs(10),
                    &roots,
                )
                .map_err(|e| anyhow::anyhow!("operator webhook url: {e}"))?,
            )
        }
        None => None,
    };

    let listener = serving::bind(&settings.listen)
        .await
        .with_context(|| format!("bind {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let admin_listener = match &settings.admin_listen {
        Some(admin) => Some(
            serving::bind(admin)
                .await
                .with_context(|| format!("bind the admin listener {admin}"))?,
        ),
        None => None,
    };
    let admin_addr = admin_listener
        .as_ref()
        .map(tokio::net::TcpListener::local_addr)
        .transpose()?;
    let limits = serving::Limits {
        header_read_timeout: std::time::Duration::from_secs(settings.header_read_timeout_secs),
        idle_timeout: std::time::Duration::from_secs(settings.idle_timeout_secs),
        max_connections: serving::connection_cap(
            settings.max_connections,
            1 + usize::from(admin_listener.is_some()),
        ),
    };
    let body_read_timeout = std::time::Duration::from_secs(settings.body_read_timeout_secs);
    ignore_file_size_signal();

    let policies = load_policies(&settings)?;
    let active = policies.active();
    tracing::info!(
        policy = active.name(),
        version = active.version(),
        "active policy"
    );
    // The configured policy decides from its position in the log on; the
    // backlog before it is decided by the policy in force when it arrived
    // (see `Policies`). Recorded only when it is not already in force.
    let in_force = kycd_engine::projector::policy_at_head(&*log, &*store)
        .await
        .context("read the policy in force from the event log")?;
    if in_force.as_deref() != Some(active.version()) {
        log.append(kycd_engine::projector::policy_activation(
            &active,
            "kycd",
            clock.now_millis(),
        ))
        .await
        .context("record the active policy in the event log")?;
    }
    let mut projector =
        Projector::new(log.clone(), store.clone(), policies.clone()).with_metrics(clock.clone());
    if membership.is_some() {
        projector = projector.with_fence(roles.projection.clone());
    }
    let applied = projector.applied();

    let verifier = Verifier::new(settings.webhook_secrets.clone())
        .with_tolerance_secs(settings.webhook_tolerance_secs)
        .accept_simple(settings.accept_simple_signature);
    let reconcile_totals = Arc::new(reconcile::Totals::default());
    let reconciler = didit.clone().map(|client| {
        Arc::new(reconcile::Reconciler::new(
            store.clone(),
            log.clone(),
            client,
            clock.clone(),
            settings.scaled_ms(settings.reconcile_after_secs as f64 * 1000.0),
            reconcile_totals.clone(),
        ))
    });
    let worker = Arc::new(worker::Worker {
        outbox: outbox.clone(),
        log: log.clone(),
        didit: didit.clone(),
        operator,
        clock: clock.clone(),
        config: worker::WorkerConfig {
            max_attempts: settings.action_max_attempts,
            backoff_base_ms: 1000,
            time_scale: settings.retry_time_scale,
            step_up_workflows: settings.step_up_workflows.clone(),
            step_up_expiry_ms: settings.scaled_ms(settings.step_up_expiry_secs as f64 * 1000.0),
        },
        http: worker::media_client(&roots).context("http client")?,
        operator_lane: roles.operator_lane.clone(),
        // The embedded store has one process: its claims are all its own.
        holder: match &membership {
            Some(m) => kycd_log::outbox::Holder::new(m.id(), m.epoch()),
            None => kycd_log::outbox::Holder::new("embedded", 0),
        },
        release_at_start: membership.is_none(),
    });
    let app = Arc::new(App {
        settings,
        verifier,
        log: log.clone(),
        store: store.clone(),
        clock,
        metrics,
        policies,
        applied,
        outbox,
        audit,
        access,
        cases,
        didit,
        reconciler,
        reconcile_totals,
        readiness: Arc::new(readiness::Readiness::default()),
        backend,
        membership: membership.clone(),
        roles: roles.clone(),
    });
    app.record("kycd", "policy.loaded", None, policy_details(&app, &active))
        .await;

    let (stop, stop_rx) = watch::channel(false);
    // The projector decides (facts, policy, store writes): CPU work that
    // must not queue in front of webhook acknowledgements. It gets its own
    // thread and single-threaded runtime, so the intake's workers stay free.
    let projector_stop = stop_rx.clone();
    // Completion is signalled, not joined: a blocking join would hold up the
    // shutdown of whatever runtime is waiting on it.
    let (projector_done, projector_finished) = watch::channel(false);
    //
    // It also runs at a lower scheduling priority (and so do its store
    // threads): when deliveries arrive faster than both can go, the
    // acknowledgements Didit waits for come first and decisions catch up
    // from the log as soon as the burst passes (`kycd_projector_lag_events`).
    std::thread::Builder::new()
        .name("kycd-projector".into())
        .spawn(move || {
            lower_priority();
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // Named apart from the intake's workers, so per-thread CPU
                // figures (`/proc/PID/task`) tell the two apart.
                .thread_name("kycd-proj-store")
                .on_thread_start(lower_priority)
                .build()
            {
                Ok(rt) => rt.block_on(projector.run(projector_stop)),
                Err(e) => tracing::error!(error = %e, "projector runtime failed to start"),
            }
            let _ = projector_done.send(true);
        })
        .context("start the projector thread")?;
    let background = vec![
        tokio::spawn(worker.run(stop_rx.clone(), app.applied.clone())),
        tokio::spawn(background::reconcile_loop(app.clone(), stop_rx.clone())),
        tokio::spawn(background::expire_step_ups(app.clone(), stop_rx.clone())),
        tokio::spawn(background::outbox_backlog(app.clone(), stop_rx.clone())),
        tokio::spawn(readiness::monitor(
            app.clone(),
            readiness::AuditTail {
                chain: match &app.backend {
                    storage::Backend::Embedded {
                        log_path,
                        store_path,
                        ..
                    } => Arc::new(kycd_log::anchor::Files {
                        store_db: store_path.clone(),
                        events_db: log_path.clone(),
                    }),
                    storage::Backend::Postgres { db, .. } => {
                        Arc::new(kycd_log::postgres::anchor::PgChain::new(db.clone()))
                    }
                },
                key_file: app.settings.audit().key_path(&app.settings.data_dir),
                anchor_file: app.settings.audit_anchor_file.clone(),
            },
            stop_rx.clone(),
        )),
    ];
    let mut background = background;
    {
        let clock = app.clock.clone();
        // On PostgreSQL the holder of the `audit-anchor` lease anchors; the
        // embedded store's one process always does.
        let anchoring = anchoring.while_holding(roles.audit_anchor.clone());
        background.push(tokio::spawn(anchoring.run(
            log.clone(),
            move || clock.now_millis(),
            stop_rx.clone(),
        )));
    }
    if let Some(membership) = membership.clone() {
        let stop = stop_rx.clone();
        // The leases go back once the projector's last batch is in.
        let finished = projector_finished.clone();
        background.push(tokio::spawn(async move {
            if let Err(e) = membership.run_until_idle(stop, finished).await {
                // Another process serves under this id now and holds its
                // leases: this one must not go on (its fenced commits are
                // refused anyway), so it stops at once.
                tracing::error!(error = %e, "stopping");
                std::process::exit(1);
            }
        }));
    }
    let with_body_timeout = |router: Router| {
        router.layer(axum::middleware::from_fn_with_state(
            body_read_timeout,
            serving::body_timeout,
        ))
    };
    let mut listeners = vec![];
    match admin_listener {
        Some(admin) => {
            listeners.push((listener, with_body_timeout(public_router(app.clone()))));
            listeners.push((admin, with_body_timeout(router(app.clone()))));
        }
        None => listeners.push((listener, with_body_timeout(router(app.clone())))),
    }
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|(listener, router)| {
            tokio::spawn(serving::serve(listener, router, limits, stop_rx.clone()))
        })
        .collect();
    let task = tokio::spawn(async move {
        let mut served = Ok(());
        for server in servers {
            if let Err(e) = server.await {
                served = Err(e);
            }
        }
        // In-flight requests have been answered and the workers told to
        // stop; let them finish what they hold, let the log finish any
        // commit still queued, then stop the projector.
        for task in background {
            let _ = task.await;
        }
        log.shutdown().await;
        let _ = projector_finished.clone().wait_for(|done| *done).await;
        served.context("http server failed")
    });
    tracing::info!(%addr, admin = ?admin_addr, "kycd serving");
    Ok(Running {
        addr,
        admin_addr,
        app,
        stop,
        task,
    })
}

//! A local Didit simulator: an HTTP server speaking Didit's v3 REST API, and
//! simulated customers whose sessions produce webhook deliveries signed
//! exactly as Didit signs them (with `didit::signature::sign`).
//!
//! - [`start`] binds the server (`127.0.0.1:0` by default) with a default
//!   KYC workflow and a `biometric_authentication` one already created.
//! - Webhook destinations come from [`SimConfig::destinations`],
//!   [`Sim::add_destination`] or `POST /v3/webhook/destinations/`; each gets
//!   deliveries in its payload version (v1, v2 or v3).
//! - [`Sim::run`] starts simulated customers, each drawn from the scenario
//!   catalogue ([`Scenario`]) with a ground-truth [`Label`]; sessions created
//!   through the API run on their own as well.
//! - Time is compressed by [`SimConfig::time_scale`]; a session's
//!   deliveries go out in line (each after the previous one's first
//!   answer), are retried as Didit retries them and can be duplicated,
//!   reordered, delayed, lost or hit by a receiver outage ([`Faults`]).
//! - [`Sim::calls`] logs every API call that asks for an effect (and the
//!   decision and session-list reads) with what it did ([`CallEffect`]), so
//!   tests can prove each effect was asked for exactly once.
//! - Everything is reproducible from [`SimConfig::seed`]: the same seed and
//!   the same calls give the same scenarios, ids and decisions; only
//!   timestamps (which are the real wall clock) differ.
//!
//! See the crate README for the scenario catalogue and the endpoints.
#![forbid(unsafe_code)]

mod api;
mod calls;
mod clock;
mod decision;
mod delivery;
mod flow;
mod ids;
mod media;
mod pdf;
mod people;
mod ratelimit;
mod scenario;
mod session;
mod sim;
mod state;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use didit::payload::SessionStatus;
use didit::signature::Secret;
use rand::Rng;
use serde::Serialize;
use time::{Date, OffsetDateTime};
use tokio::sync::watch;

pub use calls::{ApiCall, CallEffect};
pub use delivery::{Attempt, AttemptOutcome, DeliveryRecord, Fate};
pub use ratelimit::RateLimits;
pub use scenario::{Expectation, Label, Outcome, Scenario, Verdict};
pub use state::{DestinationInfo, Truth};
pub use wire::WebhookVersion;

use crate::decision::Sighting;
use crate::flow::Plan;
use crate::ids::rng_for;
use crate::people::Persona;
use crate::session::{Presenter, Reserved};
use crate::sim::{Activity, Inner};
use crate::state::{iso_micros, State, Workflow, KYC_FEATURES};

/// How the simulator runs. [`SimConfig::default`] gives a sandbox on
/// `127.0.0.1:0`, real time, no faults, seed 0.
#[derive(Clone)]
pub struct SimConfig {
    /// Checked against `x-api-key`; a wrong or missing key gets 403.
    pub api_key: String,
    /// The application's webhook secret: every destination signs with it
    /// and returns it as `secret_shared_key`.
    pub webhook_secret: String,
    pub seed: u64,
    /// 1.0 is real time; 600.0 makes a simulated minute last 100 ms. Scales
    /// customer pacing, retry delays, delivery delays and rate-limit windows.
    pub time_scale: f64,
    pub faults: Faults,
    /// `sandbox` (the default) or `live`: deliveries and decisions say so.
    pub environment: String,
    pub listen: SocketAddr,
    /// Destinations that exist from the start.
    pub destinations: Vec<DestinationConfig>,
    /// Per-scope budgets per 60 simulated seconds; Didit's by default.
    pub rate_limits: RateLimits,
    /// The date documents and ages are computed against; today (UTC) when
    /// `None`. Pin it to compare decisions across days.
    pub today: Option<Date>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            api_key: "sim-api-key".to_owned(),
            webhook_secret: "sim_webhook_secret_0123456789abcdefghijklmno".to_owned(),
            seed: 0,
            time_scale: 1.0,
            faults: Faults::none(),
            environment: "sandbox".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            destinations: Vec::new(),
            rate_limits: RateLimits::default(),
            today: None,
        }
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("api_key", &"[redacted]")
            .field("webhook_secret", &"[redacted]")
            .field("seed", &self.seed)
            .field("time_scale", &self.time_scale)
            .field("faults", &self.faults)
            .field("environment", &self.environment)
            .field("listen", &self.listen)
            .field("destinations", &self.destinations)
            .field("rate_limits", &self.rate_limits)
            .field("today", &self.today)
            .finish()
    }
}

/// A webhook destination that exists from the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationConfig {
    pub url: String,
    pub version: WebhookVersion,
    pub label: Option<String>,
    /// `status.updated` and `data.updated` when empty.
    pub events: Vec<String>,
}

impl DestinationConfig {
    /// A v3 destination for both session events.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            version: WebhookVersion::V3,
            label: None,
            events: Vec::new(),
        }
    }

    pub fn version(mut self, version: WebhookVersion) -> Self {
        self.version = version;
        self
    }
}

/// Delivery faults. Probabilities are per delivery, drawn from the seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// The chance that a delivery is sent twice (same `event_id`, a few
    /// simulated seconds apart).
    pub duplicate: f64,
    /// The chance that a delivery is held until after the session's next one.
    pub reorder: f64,
    /// The chance that a delivery is lost: recorded, never sent.
    pub loss: f64,
    /// Extra delay before the first attempt, uniform in this range of
    /// simulated milliseconds.
    pub delay_ms: (u64, u64),
    /// A receiver outage: every attempt inside the window fails as a
    /// connection error.
    pub outage: Option<Outage>,
}

/// A window of simulated time, counted from the first [`Sim::run`] (or from
/// [`start`] if nothing has run yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    pub start: Duration,
    pub length: Duration,
}

impl Faults {
    /// Every delivery once, in order, on time.
    pub fn none() -> Self {
        Self {
            duplicate: 0.0,
            reorder: 0.0,
            loss: 0.0,
            delay_ms: (0, 0),
            outage: None,
        }
    }

    /// What a demo should show a receiver coping with: about 5 %
    /// duplicates, 10 % reordered, up to two simulated seconds of extra
    /// delay, no loss, no outage.
    pub fn demo_default() -> Self {
        Self {
            duplicate: 0.05,
            reorder: 0.10,
            loss: 0.0,
            delay_ms: (0, 2_000),
            outage: None,
        }
    }
}

/// Counters over everything the simulator has done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Simulated customers started by [`Sim::run`].
    pub customers: usize,
    pub sessions: usize,
    pub sessions_by_status: BTreeMap<String, usize>,
    /// Deliveries, including duplicate copies and lost ones.
    pub deliveries: usize,
    /// Deliveries with at least one attempt.
    pub attempted: usize,
    /// HTTP attempts (including failed ones and retries).
    pub attempts: usize,
    /// Deliveries that got a 2xx.
    pub acknowledged: usize,
    /// Duplicate copies sent by the duplicate fault.
    pub duplicated: usize,
    /// Deliveries that really went out after a later one (reorder fault).
    pub reordered: usize,
    /// Deliveries lost by the loss fault.
    pub lost: usize,
    /// Retry attempts (second and third attempts).
    pub retried: usize,
    /// Dropped plus rejected.
    pub failed: usize,
    /// Dropped after three retryable failures.
    pub dropped: usize,
    /// Refused with a 3xx or a 4xx other than 404 (not retried).
    pub rejected: usize,
    /// Not settled yet.
    pub pending: usize,
    /// Logged API calls ([`Sim::calls`]) by effect: `created`,
    /// `returned_existing`, `changed`, `noop`, `rejected`, `read`. Only
    /// effects that occurred are present.
    pub api_calls: BTreeMap<String, usize>,
}

/// A running simulator. Dropping it stops its work; [`Sim::shutdown`] also
/// waits for the server to close.
pub struct Sim {
    inner: Arc<Inner>,
    addr: SocketAddr,
    server: Option<tokio::task::JoinHandle<()>>,
    kyc_workflow: String,
    biometric_workflow: String,
}

/// The customers started by one [`Sim::run`].
pub struct RunHandle {
    first: usize,
    vendor_data: Vec<String>,
    remaining: watch::Receiver<usize>,
}

impl RunHandle {
    /// The customers' numbers (they continue across runs).
    pub fn customers(&self) -> std::ops::Range<usize> {
        self.first..self.first + self.vendor_data.len()
    }

    /// Their `vendor_data`, `user-000123`.
    pub fn vendor_data(&self) -> &[String] {
        &self.vendor_data
    }

    /// Customers still under way (deliveries not counted).
    pub fn remaining(&self) -> usize {
        *self.remaining.borrow()
    }

    /// Waits until every customer of this run has finished.
    pub async fn finished(&self, deadline: Duration) -> anyhow::Result<()> {
        let mut rx = self.remaining.clone();
        tokio::time::timeout(deadline, rx.wait_for(|n| *n == 0))
            .await
            .context("customers still under way at the deadline")?
            .context("the simulator stopped")?;
        Ok(())
    }
}

/// Starts the simulator: binds `config.listen`, creates the default
/// workflows and the configured destinations, and serves the API.
pub async fn start(config: SimConfig) -> anyhow::Result<Sim> {
    anyhow::ensure!(
        config.time_scale.is_finite() && config.time_scale > 0.0,
        "time_scale must be a positive number"
    );
    anyhow::ensure!(!config.api_key.is_empty(), "api_key must not be empty");
    anyhow::ensure!(
        !config.webhook_secret.is_empty(),
        "webhook_secret must not be empty"
    );
    anyhow::ensure!(
        config.environment == "sandbox" || config.environment == "live",
        "environment must be \"sandbox\" or \"live\""
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let base_url = format!("http://{addr}");

    let mut setup = rng_for(config.seed, "setup", "");
    let application_id = ids::uuid(&mut setup);
    let now = iso_micros(OffsetDateTime::now_utc());
    let kyc = Workflow {
        id: ids::uuid(&mut setup),
        label: "KYC (simulated default)".to_owned(),
        kind: "kyc".to_owned(),
        version: 1,
        features: KYC_FEATURES.to_vec(),
        face_review_below: 70.0,
        face_decline_below: 50.0,
        created_at: now.clone(),
        settings: serde_json::Map::new(),
        is_default: true,
    };
    let biometric = Workflow {
        id: ids::uuid(&mut setup),
        label: "Biometric re-authentication (simulated)".to_owned(),
        kind: "biometric_authentication".to_owned(),
        version: 1,
        features: vec![decision::Feat::Liveness, decision::Feat::FaceMatch],
        face_review_below: 70.0,
        face_decline_below: 50.0,
        created_at: now,
        settings: serde_json::Map::new(),
        is_default: false,
    };
    let (kyc_workflow, biometric_workflow) = (kyc.id.clone(), biometric.id.clone());
    let state = State {
        workflows: vec![kyc, biometric],
        sessions: HashMap::new(),
        order: Vec::new(),
        destinations: Vec::new(),
        blocklist: Default::default(),
        people: HashMap::new(),
        faces: HashMap::new(),
        documents: HashMap::new(),
        next_number: 1,
        next_customer: 0,
        runs: 0,
        api_rng: rng_for(config.seed, "api", ""),
        rings: Vec::new(),
        failing_decisions: HashMap::new(),
    };
    let clock = clock::SimClock::new(config.time_scale);
    let inner = Arc::new(Inner {
        seed: config.seed,
        clock,
        api_key: config.api_key.clone(),
        secret: Secret::new(config.webhook_secret.clone()),
        environment: config.environment.clone(),
        faults: config.faults.clone(),
        base_url,
        application_id,
        today: config
            .today
            .unwrap_or_else(|| OffsetDateTime::now_utc().date()),
        state: Mutex::new(state),
        dispatcher: delivery::Dispatcher::new()?,
        calls: calls::CallLog::new(),
        activity: Activity::new(),
        limiter: ratelimit::Limiter::new(config.rate_limits, clock.real(clock::secs(60.0))),
        shutdown: watch::Sender::new(false),
        runtime: tokio::runtime::Handle::current(),
        run_epoch: std::sync::OnceLock::new(),
        started: Instant::now(),
    });
    for d in &config.destinations {
        let events = if d.events.is_empty() {
            vec!["status.updated".to_owned(), "data.updated".to_owned()]
        } else {
            d.events.clone()
        };
        api::add_destination(
            &inner,
            d.label.clone(),
            d.url.clone(),
            d.version,
            events,
            true,
        )
        .map_err(|e| anyhow::anyhow!("destination {}: {}", d.url, e.detail))?;
    }

    let app = api::router(inner.clone());
    let mut stop = inner.shutdown.subscribe();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "simulator server failed");
        }
    });
    tracing::info!(%addr, seed = config.seed, time_scale = config.time_scale, "didit simulator listening");
    Ok(Sim {
        inner,
        addr,
        server: Some(server),
        kyc_workflow,
        biometric_workflow,
    })
}

/// Mean gap between customer arrivals, simulated seconds.
const MEAN_ARRIVAL_GAP_SECS: f64 = 3.0;

impl Sim {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the base URL to give a Didit client.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    pub fn api_key(&self) -> &str {
        &self.inner.api_key
    }

    /// The webhook secret every destination signs with.
    pub fn webhook_secret(&self) -> &str {
        self.inner.secret.expose()
    }

    /// The application id deliveries carry.
    pub fn application_id(&self) -> &str {
        &self.inner.application_id
    }

    /// The default KYC workflow: IP analysis, document, liveness, face
    /// match, AML, phone and email.
    pub fn kyc_workflow_id(&self) -> &str {
        &self.kyc_workflow
    }

    /// The default `biometric_authentication` workflow: liveness and face
    /// match against the operator's `portrait_image`.
    pub fn biometric_workflow_id(&self) -> &str {
        &self.biometric_workflow
    }

    /// Adds a destination for `status.updated` and `data.updated`.
    pub fn add_destination(
        &self,
        url: &str,
        version: WebhookVersion,
    ) -> anyhow::Result<DestinationInfo> {
        api::add_destination(
            &self.inner,
            None,
            url.to_owned(),
            version,
            vec!["status.updated".to_owned(), "data.updated".to_owned()],
            true,
        )
        .map_err(|e| anyhow::anyhow!("{}", e.detail))
    }

    /// Starts `users` simulated customers. Each draws its scenario, persona
    /// and timings from the seed and its number, arrives on average three
    /// simulated seconds after the previous one, and creates its session
    /// through the same code as `POST /v3/session/`.
    pub fn run(&self, users: usize) -> RunHandle {
        let inner = &self.inner;
        let _ = inner.run_epoch.set(Instant::now());
        let (remaining_tx, remaining) = watch::channel(users);
        let remaining_tx = Arc::new(remaining_tx);
        let mut plans = Vec::with_capacity(users);
        let first;
        {
            let mut st = inner.lock();
            st.runs += 1;
            first = st.next_customer;
            let mut arrivals = rng_for(inner.seed, "arrivals", &st.runs.to_string());
            let mut at = 0.0f64;
            for i in 0..users {
                let gap: f64 = -(1.0 - arrivals.gen::<f64>()).ln() * MEAN_ARRIVAL_GAP_SECS;
                at += gap;
                let plan = self.plan(&mut st, first + i, clock::secs(at));
                plans.push(plan);
            }
            st.next_customer += users;
            // A ring that never got a second member is no ring: its one
            // customer presented their own documents and face, nothing
            // links them to anyone, and the ground truth says what they
            // are, a clean customer.
            let lone: Vec<usize> = st
                .rings
                .iter()
                .filter(|r| r.members == 1)
                .map(|r| r.leader_customer)
                .collect();
            st.rings.retain(|r| r.members > 1 && r.members < r.size);
            for plan in plans
                .iter_mut()
                .filter(|p| lone.contains(&p.presenter.customer))
            {
                plan.scenario = Scenario::CleanApproval;
                plan.presenter.scenario = Scenario::CleanApproval;
                plan.presenter.label = Scenario::CleanApproval.label();
                plan.presenter.traits = scenario::Traits::default();
            }
        }
        let vendor_data = plans.iter().map(|p| p.vendor_data.clone()).collect();
        for plan in plans {
            let guard = inner.activity.enter();
            let done = remaining_tx.clone();
            let task = flow::customer(inner.clone(), plan);
            inner.spawn(guard, async move {
                task.await;
                done.send_modify(|n| *n = n.saturating_sub(1));
            });
        }
        RunHandle {
            first,
            vendor_data,
            remaining,
        }
    }

    fn plan(&self, st: &mut State, customer: usize, mut arrival: Duration) -> Plan {
        let inner = &self.inner;
        let today = inner.today;
        let mut rng = rng_for(inner.seed, "customer", &customer.to_string());
        let scenario = scenario::draw(&mut rng, false);
        let vendor_data = format!("user-{customer:06}");
        let mut persona =
            Persona::generate(&mut rng_for(inner.seed, "persona", &vendor_data), today);
        if matches!(scenario, Scenario::DocumentRing | Scenario::MultiAccount) {
            persona = session::ring_member(st, scenario, persona, &mut rng, customer, &mut arrival);
        }
        session::apply_scenario(&mut persona, scenario, &mut rng, today);
        st.people.insert(vendor_data.clone(), persona.clone());
        let traits = scenario::Traits::for_scenario(scenario, &mut rng);
        let reserve = |st: &mut State, rng: &mut ids::SimRng| {
            let number = st.next_number;
            st.next_number += 1;
            Reserved {
                id: ids::uuid(rng),
                number,
                token: ids::alnum(rng, 12),
            }
        };
        let kyc = reserve(st, &mut rng);
        st.register(
            &persona,
            Sighting {
                session_id: kyc.id.clone(),
                session_number: kyc.number,
                vendor_data: Some(vendor_data.clone()),
            },
        );
        let biometric = matches!(
            scenario,
            Scenario::ReturningCustomer | Scenario::AccountTakeover
        )
        .then(|| {
            let reserved = reserve(st, &mut rng);
            let mut presenter = persona.clone();
            let mut label = Label::Genuine;
            if scenario == Scenario::AccountTakeover {
                presenter.face = rng.gen();
                label = Label::Fraudulent;
            }
            Presenter {
                persona: presenter,
                traits: scenario::Traits::default(),
                scenario,
                label,
                customer,
                reserved,
            }
        });
        let channel = people::pick(&mut rng, &["web", "ios", "android"]);
        Plan {
            vendor_data,
            scenario,
            arrival,
            kyc_workflow: self.kyc_workflow.clone(),
            biometric_workflow: self.biometric_workflow.clone(),
            presenter: Presenter {
                persona,
                traits,
                scenario,
                label: scenario.label(),
                customer,
                reserved: kyc,
            },
            biometric,
            metadata: serde_json::json!({"signup_channel": channel}),
            rng,
        }
    }

    /// Waits until every customer has finished and every delivery has
    /// settled (delivered, rejected, dropped or lost).
    pub async fn wait_settled(&self, deadline: Duration) -> anyhow::Result<()> {
        if self.inner.activity.idle(deadline).await {
            Ok(())
        } else {
            anyhow::bail!(
                "not settled after {deadline:?}: {} customers or deliveries still under way",
                self.inner.activity.busy()
            )
        }
    }

    /// Ground truth for every session, by session number.
    pub fn truth(&self) -> Vec<Truth> {
        truth_of(&self.inner)
    }

    pub fn stats(&self) -> Stats {
        stats_of(&self.inner)
    }

    /// Every delivery so far, in emission order.
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.inner.dispatcher.records()
    }

    /// Every logged API call so far, in answer order: the calls that ask
    /// for an effect (session creation, update-status, blocklist add and
    /// remove, deletion, workflow and destination creation) and the
    /// decision and session-list reads, including refused ones (4xx, 403,
    /// 429). See [`ApiCall`].
    pub fn calls(&self) -> Vec<ApiCall> {
        self.inner.calls.all()
    }

    /// Test control: puts a session in `status` without delivering
    /// anything, and stops whatever its flow was going to do next. For
    /// reaching states such as `Kyc Expired` that no scenario produces.
    pub fn set_status(&self, session_id: &str, status: &str) -> anyhow::Result<()> {
        let mut st = self.inner.lock();
        let s = st.live_session_mut(session_id).context("no such session")?;
        s.status = SessionStatus::from(status);
        s.flow += 1;
        Ok(())
    }

    /// Test control: the next `times` decision reads of the session answer
    /// 503, as Didit does when it is briefly unavailable.
    pub fn fail_decision_reads(&self, session_id: &str, times: u32) {
        self.inner
            .lock()
            .failing_decisions
            .insert(session_id.to_owned(), times);
    }

    /// Stops customers and deliveries and closes the server.
    pub async fn shutdown(mut self) {
        self.inner.shutdown.send_replace(true);
        if let Some(mut server) = self.server.take() {
            // Keep-alive connections from clients can hold a graceful
            // shutdown open; do not wait for them for long.
            if tokio::time::timeout(Duration::from_secs(2), &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.inner.shutdown.send_replace(true);
    }
}

pub(crate) fn truth_of(inner: &Inner) -> Vec<Truth> {
    let st = inner.lock();
    let mut out: Vec<Truth> = st.sessions.values().map(state::Session::truth).collect();
    out.sort_by_key(|t| t.session_number);
    out
}

pub(crate) fn stats_of(inner: &Inner) -> Stats {
    let mut stats = Stats::default();
    {
        let st = inner.lock();
        stats.customers = st.next_customer;
        stats.sessions = st.sessions.len();
        for s in st.sessions.values() {
            *stats
                .sessions_by_status
                .entry(s.status.as_str().to_owned())
                .or_default() += 1;
        }
    }
    for r in inner.dispatcher.records() {
        stats.deliveries += 1;
        if !r.attempts.is_empty() {
            stats.attempted += 1;
        }
        stats.attempts += r.attempts.len();
        stats.retried += r.attempts.len().saturating_sub(1);
        stats.duplicated += usize::from(r.duplicate);
        stats.reordered += usize::from(r.reordered);
        match r.fate {
            Fate::Pending => stats.pending += 1,
            Fate::Delivered => stats.acknowledged += 1,
            Fate::Rejected => stats.rejected += 1,
            Fate::Dropped => stats.dropped += 1,
            Fate::Lost => stats.lost += 1,
        }
    }
    stats.failed = stats.dropped + stats.rejected;
    for call in inner.calls.all() {
        *stats
            .api_calls
            .entry(call.effect.as_str().to_owned())
            .or_default() += 1;
    }
    stats
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A ring's members are planned one whole flow apart, so that they
    /// finish one after another however the machine's timing goes, and
    /// the same seed gives kycd the same order to decide them in.
    #[tokio::test]
    async fn a_rings_members_arrive_one_flow_apart() {
        let sim = start(SimConfig {
            seed: 11,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let mut members: BTreeMap<(&str, String), Vec<Duration>> = BTreeMap::new();
        {
            let mut st = sim.inner.lock();
            for customer in 0..400 {
                // Every customer planned for the same moment: only the
                // ring's spacing sets them apart.
                let plan = sim.plan(&mut st, customer, Duration::ZERO);
                if matches!(
                    plan.scenario,
                    Scenario::DocumentRing | Scenario::MultiAccount
                ) {
                    let key = (
                        plan.scenario.name(),
                        plan.presenter.persona.document_number.clone(),
                    );
                    members.entry(key).or_default().push(plan.arrival);
                }
            }
        }
        let rings: Vec<_> = members.values().filter(|m| m.len() > 1).collect();
        assert!(rings.len() >= 3, "{members:?}");
        for arrivals in rings {
            for pair in arrivals.windows(2) {
                assert!(
                    pair[1] >= pair[0] + crate::state::RING_MEMBER_GAP,
                    "{arrivals:?}"
                );
            }
        }
        sim.shutdown().await;
    }
}

//! `kycd demo`: the whole product in one process, offline. The Didit
//! simulator plays Didit and a few hundred customers; kycd receives its
//! signed webhooks, decides with the default policy, and the summary says
//! how the policy did against the simulator's ground truth.
//!
//! Nothing here reads `KYCD_*` variables or configuration files: the demo
//! runs on the embedded defaults in a new temporary data directory on free
//! loopback ports, so it can run beside a `kycd serve`. `--cluster` runs it
//! on PostgreSQL instead, with three instances ([`cluster`]), and reads
//! `KYCD_DATABASE_URL` only.

mod cluster;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use didit::signature::Secret;
use kycd_core::{Clock, SystemClock};
use kycd_log::store::{DecisionQuery, DecisionRecord, Store};
use kycd_server::settings::Settings;
use kycd_server::App;
use kycd_sim::{Faults, Label, Outcome, SimConfig, Truth, Verdict};
use rand::Rng;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Simulated customers to run through verification.
    #[arg(long, default_value_t = 300)]
    pub users: usize,
    /// The same seed gives the same customers, scenarios and faults.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Leave the engine and the simulator running after the summary and
    /// print the URLs to explore, until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
    /// How much faster than real time simulated customers move (and
    /// Didit's retries and rate-limit windows shrink).
    #[arg(long, default_value_t = 600.0)]
    pub time_scale: f64,
    /// Give up waiting for the customers after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// The share of Didit's deliveries lost for good (kycd recovers them by
    /// reconciling with Didit's API).
    #[arg(long, default_value_t = 0.10)]
    pub loss: f64,
    /// Run on PostgreSQL (KYCD_DATABASE_URL, in a new schema) with three
    /// instances behind a round-robin front; half-way, the instance that
    /// projects is stopped and another takes over. The summary adds which
    /// instance decided what.
    #[arg(long)]
    pub cluster: bool,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.users == 0 {
        bail!("--users must be at least 1");
    }
    if !(0.0..=0.9).contains(&args.loss) {
        bail!("--loss must be between 0 and 0.9");
    }
    let database = args
        .cluster
        .then(|| cluster::database_url(std::env::var("KYCD_DATABASE_URL").ok()))
        .transpose()?;
    // Warnings only: the summary is the output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(demo(args, database))
}

fn random_token(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::thread_rng().gen();
    format!("{prefix}{}", hex::encode(bytes))
}

/// When each log offset was first seen applied by the projector: the moment
/// the decisions on events up to it were committed.
#[derive(Default)]
struct AppliedTimes {
    marks: Vec<(u64, i64)>,
}

impl AppliedTimes {
    fn committed_at(&self, offset: u64) -> Option<i64> {
        let i = self.marks.partition_point(|(o, _)| *o < offset);
        self.marks.get(i).map(|(_, at)| *at)
    }
}

/// `database`: the PostgreSQL URL of `--cluster`.
async fn demo(args: DemoArgs, database: Option<String>) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // Take Ctrl-C (and a service manager's SIGTERM) from the start: an
    // interrupted run still shuts down cleanly and removes its temporary
    // data directory.
    let mut interrupted = tokio::spawn(stop_signal());
    let data = tempfile::Builder::new()
        .prefix("kycd-demo-")
        .tempdir()
        .context("create a temporary data directory")?;
    let webhook_secret = random_token("whsec-demo-");
    let didit_key = random_token("demo-key-");
    let sim = kycd_sim::start(SimConfig {
        api_key: didit_key.clone(),
        webhook_secret: webhook_secret.clone(),
        seed: args.seed,
        time_scale: args.time_scale,
        faults: Faults {
            loss: args.loss,
            ..Faults::demo_default()
        },
        ..SimConfig::default()
    })
    .await
    .context("start the Didit simulator")?;
    let step_up_workflows = step_up_workflows(&sim, &didit_key).await?;

    let api_token = random_token("demo-token-");
    let settings = Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: data.path().to_path_buf(),
        webhook_secrets: vec![Secret::new(webhook_secret.clone())],
        api_token: Some(Secret::new(api_token.clone())),
        didit_api_key: Some(Secret::new(didit_key.clone())),
        didit_base_url: sim.base_url(),
        // The simulator's deliveries are sandbox deliveries.
        act_on_sandbox: true,
        step_up_workflows,
        // Kycd's clocks (retries, step-up expiry) run as fast as the
        // simulated customers.
        retry_time_scale: args.time_scale,
        // No reconciliation passes while customers are under way: a pass
        // polls every session whose latest delivery is merely in flight
        // (delayed, held back, retried) and decides it at a moment real
        // timing picks, against whatever else has arrived by then, so the
        // same seed would give different tables. The demo reconciles once
        // the simulated Didit has settled (`wait_all_decided`), when only
        // the lost deliveries are missing.
        reconcile_interval_secs: 0,
        reconcile_after_secs: 120,
        // A simulated step-up takes at most about 300 simulated seconds;
        // an hour (6 real seconds at the default scale) was close enough
        // that a loaded machine's lag expired a few of them in one run and
        // not in the next, and the same seed gave different tables. Four
        // hours (24 real seconds) leaves lag no say, and a step-up that is
        // never finished still expires well inside the demo's timeout.
        step_up_expiry_secs: 4 * 3600,
        ..Settings::default()
    };
    // For the replay at the end: the actions as the server plans them.
    let replay_actions = kycd_server::action_settings(&settings)?;
    let graph_window_ms = i64::from(settings.graph_window_days) * 86_400_000;
    let clock = Arc::new(SystemClock);
    let engine = match &database {
        None => Engine::Embedded(
            kycd_server::start_with(settings, clock.clone(), crate::startup())
                .await
                .context("start kycd")?,
        ),
        Some(url) => Engine::Cluster(cluster::Cluster::start(&settings, url, started).await?),
    };

    // Record when the projector commits each offset, for the latency figures.
    let applied_times = Arc::new(Mutex::new(AppliedTimes::default()));
    {
        let times = applied_times.clone();
        let mut applied = engine.applied();
        let clock = clock.clone();
        tokio::spawn(async move {
            loop {
                let offset = *applied.borrow_and_update();
                {
                    let mut t = times.lock().unwrap_or_else(|p| p.into_inner());
                    if t.marks.last().is_none_or(|(o, _)| *o < offset) {
                        t.marks.push((offset, clock.now_millis()));
                    }
                }
                if applied.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    // Register kycd as a webhook destination, as an operator does in
    // Didit's console: through the API, which answers with the secret.
    let webhook_url = engine.webhook_url();
    let http = reqwest::Client::new();
    let dest: serde_json::Value = http
        .post(format!("{}/v3/webhook/destinations/", sim.base_url()))
        .header("x-api-key", &didit_key)
        .json(&serde_json::json!({
            "label": "kycd demo",
            "url": webhook_url,
            "webhook_version": "v3",
            "subscribed_events": ["status.updated", "data.updated"],
        }))
        .send()
        .await
        .context("register the webhook destination")?
        .error_for_status()
        .context("register the webhook destination")?
        .json()
        .await?;
    if dest.get("secret_shared_key").and_then(|v| v.as_str()) != Some(webhook_secret.as_str()) {
        bail!("the simulator's destination secret is not the one kycd verifies with");
    }

    eprintln!(
        "kycd demo{}: {} simulated customers (seed {}), Didit simulator at {}, {}",
        if args.cluster { " --cluster" } else { "" },
        args.users,
        args.seed,
        sim.base_url(),
        engine.describe()
    );
    let handle = sim.run(args.users);
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let progress = Progress::new(args.users);
    let mut settled = false;
    let mut decided = DecidedSessions::default();
    let mut engine = engine;
    loop {
        let finished = args.users - handle.remaining();
        let decided_now = decided.count(&*engine.app().store).await?;
        progress.show(finished, decided_now);
        if let Engine::Cluster(c) = &mut engine {
            c.progress(finished, decided_now, args.users).await?;
        }
        if handle.remaining() == 0 {
            // Deliveries still in flight (delays, retries), the projector,
            // and reconciliation of what was lost.
            let left = deadline.saturating_duration_since(Instant::now());
            settled = sim.wait_settled(left).await.is_ok();
            if settled {
                wait_applied(&engine, deadline).await;
                if let Engine::Cluster(c) = &mut engine {
                    // Not yet half decided: the takeover comes before
                    // what reconciliation recovers.
                    let decided_now = decided.count(&*c.app().store).await?;
                    c.take_over_once(args.users, decided_now).await?;
                }
                wait_all_decided(&engine, &sim, deadline).await?;
            }
            break;
        }
        if Instant::now() >= deadline || interrupted.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let truth = sim.truth();
    let app = engine.app().clone();
    progress.finish(args.users, decided.count(&*app.store).await?);

    let report = Report::build(&*app.store, &truth, &applied_times).await?;
    let elapsed = started.elapsed();
    report.print(&sim.stats(), elapsed, args.users);
    print_actions(&engine).await?;
    if let Engine::Cluster(c) = &mut engine {
        c.print(&*app.store, args.users).await?;
    }
    if settled {
        print_replay(&engine, data.path(), replay_actions, graph_window_ms).await?;
    }
    let ok = settled
        && report.undecided_customers == 0
        && match &engine {
            Engine::Embedded(_) => true,
            Engine::Cluster(c) => c.took_over(),
        };
    if !settled {
        println!(
            "\nThe simulation did not settle within {} s.",
            args.timeout_secs
        );
    }

    if interrupted.is_finished() {
        println!("\nInterrupted.");
        engine.shutdown().await?;
        sim.shutdown().await;
        remove_data(data)?;
        return Ok(ExitCode::from(130));
    }
    if args.keep_running {
        let data_dir = data.path().to_path_buf();
        let reviewer_password = random_token("");
        demo_reviewer(&app, &reviewer_password).await?;
        let addr = engine.addr();
        println!("\nStill running (Ctrl-C to stop):");
        println!("  review console  http://{addr}/console/");
        println!("                  username {DEMO_REVIEWER}, password {reviewer_password}");
        println!("  kycd API        http://{addr}/api/v1/sessions");
        println!("                  Authorization: Bearer {api_token}");
        println!("  decisions       http://{addr}/api/v1/decisions");
        if let Engine::Cluster(c) = &engine {
            println!("  cluster         http://{addr}/api/v1/cluster");
            let others: Vec<String> = c
                .addresses()
                .iter()
                .map(|(id, a)| format!("{id} http://{a}"))
                .collect();
            println!(
                "  instances       {} (each serves the API and the console)",
                others.join(", ")
            );
        }
        println!("  metrics         http://{addr}/metrics");
        println!("  Didit simulator {}/v3/sessions/", sim.base_url());
        println!("                  x-api-key: {didit_key}");
        println!("  ground truth    {}/sim/v1/truth", sim.base_url());
        if let Engine::Cluster(c) = &engine {
            println!("  database        {}", c.describe_database());
        }
        println!("  data directory  {} (removed on exit)", data_dir.display());
        std::io::stdout().flush()?;
        let _ = (&mut interrupted).await;
    }
    // kycd first: its reconciliation and workers call the simulator.
    engine.shutdown().await?;
    sim.shutdown().await;
    remove_data(data)?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The kycd under demonstration: one process on the embedded store, or
/// [`cluster::Cluster`]'s three instances on PostgreSQL.
enum Engine {
    Embedded(kycd_server::Running),
    Cluster(cluster::Cluster),
}

impl Engine {
    /// The instance the demo reads the store, log and outbox through.
    fn app(&self) -> &Arc<App> {
        match self {
            Engine::Embedded(running) => &running.app,
            Engine::Cluster(c) => c.app(),
        }
    }

    /// Every instance, stopped ones too (for their counters).
    fn apps(&self) -> Vec<&Arc<App>> {
        match self {
            Engine::Embedded(running) => vec![&running.app],
            Engine::Cluster(c) => c.apps().collect(),
        }
    }

    /// The address of [`Engine::app`]'s listener.
    fn addr(&self) -> std::net::SocketAddr {
        match self {
            Engine::Embedded(running) => running.addr,
            Engine::Cluster(c) => c.addresses().first().map_or_else(
                || std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                |(_, a)| *a,
            ),
        }
    }

    /// The offset up to which the log is applied: in a cluster, the
    /// furthest any instance's projector has committed.
    fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        match self {
            Engine::Embedded(running) => running.app.applied.clone(),
            Engine::Cluster(c) => c.applied(),
        }
    }

    /// Where Didit delivers.
    fn webhook_url(&self) -> String {
        match self {
            Engine::Embedded(running) => format!("http://{}/webhooks/didit", running.addr),
            Engine::Cluster(c) => c.webhook_url(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Engine::Embedded(running) => format!("kycd at http://{}", running.addr),
            Engine::Cluster(c) => c.describe(),
        }
    }

    async fn shutdown(self) -> anyhow::Result<()> {
        match self {
            Engine::Embedded(running) => running.shutdown().await,
            Engine::Cluster(c) => c.shutdown().await,
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Removes the demo's data directory once kycd has stopped writing to it;
/// `--keep-running` only keeps it while the demo runs.
fn remove_data(data: tempfile::TempDir) -> anyhow::Result<()> {
    let path = data.path().to_path_buf();
    data.close()
        .with_context(|| format!("remove the demo's data directory {}", path.display()))
}

/// The demo's console user.
const DEMO_REVIEWER: &str = "demo-reviewer";

/// A reviewer for the demo's console, with a fresh random password (the
/// demo's data directory is its own, so the name is always free).
async fn demo_reviewer(app: &App, password: &str) -> anyhow::Result<()> {
    let hash = kycd_server::access_api::hash_password(password).map_err(anyhow::Error::msg)?;
    let user = kycd_log::access::UserInfo {
        username: DEMO_REVIEWER.to_owned(),
        role: "reviewer".to_owned(),
        created_at_ms: app.clock.now_millis(),
    };
    app.access
        .add_user(user, hash)
        .await
        .context("create the demo reviewer")?;
    Ok(())
}

/// Workflows for the step-up checks, created in the simulated Didit as an
/// operator would in Didit's console.
/// Replay this run's log with the built-in policy (what `kycd replay
/// --policy builtin` does) and print where every stored decision landed.
async fn print_replay(
    engine: &Engine,
    data_dir: &std::path::Path,
    actions: kycd_engine::actions::ActionSettings,
    graph_window_ms: i64,
) -> anyhow::Result<()> {
    use kycd_engine::replay::{Category, Window};
    let w = Window {
        since_ms: None,
        until_ms: None,
        max_examples: 0,
        graph_window_ms,
    };
    let builtin = Some(kycd_policy::Policy::builtin_default());
    let r = match engine {
        Engine::Embedded(_) => crate::replay::replay(data_dir, builtin, w, actions).await?,
        // The files are not there: the log and the store are PostgreSQL's.
        Engine::Cluster(c) => {
            let app = c.app();
            crate::replay::replay_over(app.log.clone(), &*app.store, builtin, w, actions).await?
        }
    };
    println!("\nReplay of this run's log with the built-in policy (kycd replay --policy builtin)");
    println!("  {} decisions: {}", r.total, r.category_counts());
    for (trigger, row) in &r.by_trigger {
        let cells: Vec<String> = Category::ALL
            .iter()
            .filter_map(|c| {
                row.get(c.as_str())
                    .filter(|n| **n > 0)
                    .map(|n| format!("{n} {}", c.as_str()))
            })
            .collect();
        println!("    {trigger:<18} {}", cells.join(", "));
    }
    Ok(())
}

async fn step_up_workflows(
    sim: &kycd_sim::Sim,
    key: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut config = didit::client::ClientConfig::new(key.to_owned());
    config.base_url = sim.base_url();
    let client = didit::client::DiditClient::new(config).context("didit client")?;
    let mut out = std::collections::BTreeMap::new();
    for (check, nfc) in [("NFC", true), ("PHONE", false)] {
        let mut req = didit::client::CreateWorkflowRequest::new(
            format!("kycd step-up: {check}"),
            didit::client::WorkflowType::Kyc,
        );
        req.is_nfc_enabled = Some(nfc);
        req.is_phone_verification_enabled = Some(!nfc);
        let wf = client
            .create_workflow(&req)
            .await
            .context("create a step-up workflow")?;
        let id = wf.id().context("the workflow has an id")?.to_owned();
        out.insert(check.to_owned(), id);
    }
    out.insert(
        "BIOMETRIC_AUTH".to_owned(),
        sim.biometric_workflow_id().to_owned(),
    );
    Ok(out)
}

/// Wait until every session Didit finished has a decision at kycd and the
/// outbox is idle. Lost deliveries come back through reconciliation, run
/// whenever the simulated Didit has settled and something is missing.
async fn wait_all_decided(
    engine: &Engine,
    sim: &kycd_sim::Sim,
    deadline: Instant,
) -> anyhow::Result<()> {
    use kycd_log::outbox::{ActionQuery, ActionState};
    let app = engine.app();
    // Every session the simulator made is younger than the demo.
    let since = app.clock.now_millis() - 86_400_000;
    let mut last_quiet_head = None;
    while Instant::now() < deadline {
        let mut missing = 0;
        for t in sim.truth() {
            let finished = ["Approved", "Declined", "In Review", "Abandoned", "Expired"]
                .contains(&t.final_status.as_str());
            if t.deleted || !finished {
                continue;
            }
            let decided = app
                .store
                .get_session(&t.session_id)
                .await?
                .is_some_and(|s| s.doc.get("decision").is_some_and(|d| !d.is_null()));
            if !decided {
                missing += 1;
            }
        }
        // Running counts as busy too: a write-back in flight to Didit makes
        // Didit deliver again once it lands, and a report built meanwhile
        // missed that delivery's decision in some runs and not in others.
        let mut busy = 0;
        for state in [ActionState::Pending, ActionState::Running] {
            busy += app
                .outbox
                .list_actions(ActionQuery {
                    state: Some(state),
                    limit: 1,
                    ..Default::default()
                })
                .await?
                .len();
        }
        let settled = sim.wait_settled(Duration::from_millis(1)).await.is_ok();
        if settled && missing == 0 && busy == 0 {
            wait_applied(engine, deadline).await;
            // Quiet twice in a row, with nothing appended in between.
            let head = app.log.head().await?;
            if last_quiet_head == Some(head) {
                return Ok(());
            }
            last_quiet_head = Some(head);
        } else {
            last_quiet_head = None;
        }
        if settled && missing > 0 {
            if let Some(reconciler) = &app.reconciler {
                // Applied first, so that the pass compares Didit's
                // statuses with everything kycd has received.
                wait_applied(engine, deadline).await;
                reconciler.pass(since).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// What kycd did about its decisions: actions by kind, step-ups and
/// reconciled sessions.
async fn print_actions(engine: &Engine) -> anyhow::Result<()> {
    let counts = engine.app().outbox.action_counts().await?;
    let mut by_kind: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for ((kind, state), n) in &counts {
        *by_kind.entry(kind).or_default().entry(state).or_default() += n;
    }
    let mut out = String::from("\nActions taken\n");
    if by_kind.is_empty() {
        out.push_str("  none\n");
    }
    for (kind, states) in &by_kind {
        let parts: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
        out.push_str(&format!("  {kind:<22} {}\n", parts.join(", ")));
    }
    let step_ups = counts
        .get(&("didit.step_up".to_owned(), "done".to_owned()))
        .copied()
        .unwrap_or(0);
    out.push_str(&format!("  step-up sessions created: {step_ups}\n"));
    let apps = engine.apps();
    out.push_str(&format!(
        "  sessions updated by reconciliation: {} ({} decisions fetched from Didit's API; lost deliveries are counted below)\n",
        reconciled_sessions(&apps),
        apps.iter()
            .map(|a| {
                a.reconcile_totals
                    .fetched
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum::<u64>()
    ));
    print!("{out}");
    Ok(())
}

/// Sessions any instance updated through reconciliation.
fn reconciled_sessions(apps: &[&Arc<App>]) -> usize {
    if let [one] = apps {
        return one.reconcile_totals.reconciled_sessions();
    }
    let mut all = HashSet::new();
    for a in apps {
        let sessions = a
            .reconcile_totals
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        all.extend(sessions.iter().cloned());
    }
    all.len()
}

/// Wait until the projector has applied everything in the log.
async fn wait_applied(engine: &Engine, deadline: Instant) {
    let mut applied = engine.applied();
    loop {
        let head = engine.app().log.head().await.unwrap_or(0);
        if *applied.borrow_and_update() >= head || Instant::now() >= deadline {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), applied.changed()).await;
    }
}

/// Sessions with at least one decision, read incrementally: each call
/// reads only the decisions made since the last.
#[derive(Default)]
struct DecidedSessions {
    after: u64,
    sessions: HashSet<String>,
}

impl DecidedSessions {
    async fn count(&mut self, store: &dyn Store) -> anyhow::Result<usize> {
        let new = decisions_after(store, self.after).await?;
        if let Some(last) = new.last() {
            self.after = last.event_offset;
        }
        self.sessions.extend(new.into_iter().map(|d| d.session_id));
        Ok(self.sessions.len())
    }
}

/// Every active-policy decision on events after `offset`, oldest first.
async fn decisions_after(store: &dyn Store, offset: u64) -> anyhow::Result<Vec<DecisionRecord>> {
    let mut out: Vec<DecisionRecord> = Vec::new();
    loop {
        let after = out.last().map_or(offset, |d| d.event_offset);
        let page = store
            .list_decisions(DecisionQuery {
                after_offset: Some(after),
                limit: 500,
                ..Default::default()
            })
            .await?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

struct Progress {
    tty: bool,
    last_line: Mutex<Instant>,
    total: usize,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            last_line: Mutex::new(Instant::now()),
            total,
        }
    }

    fn line(&self, finished: usize, decided: usize) -> String {
        const WIDTH: usize = 30;
        let filled = (finished * WIDTH) / self.total.max(1);
        format!(
            "[{}{}] {finished}/{} customers through verification, {decided} sessions decided",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            self.total
        )
    }

    fn show(&self, finished: usize, decided: usize) {
        if self.tty {
            eprint!("\r{}", self.line(finished, decided));
        } else {
            let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() >= Duration::from_secs(5) {
                eprintln!("{}", self.line(finished, decided));
                *last = Instant::now();
            }
        }
    }

    fn finish(&self, finished: usize, decided: usize) {
        if self.tty {
            eprintln!("\r{}", self.line(finished, decided));
        } else {
            eprintln!("{}", self.line(finished, decided));
        }
    }
}

/// One simulated session as kycd ended it.
struct Case {
    truth: Truth,
    /// kycd's current decision, after any re-decision.
    outcome: Option<String>,
    /// Every decision kycd made on the session, oldest first.
    history: Vec<String>,
    /// A session kycd created as a step-up of another: it is not decided
    /// on its own, its result is folded into the original's decision.
    is_step_up: bool,
    /// What became of the step-up kycd asked for on this session, if any
    /// (`requested`, `completed`, ...).
    step_up: Option<String>,
}

impl Case {
    fn final_outcome(&self) -> Option<Outcome> {
        self.outcome.as_deref().and_then(Outcome::from_name)
    }

    fn earlier(&self) -> Vec<Outcome> {
        self.history
            .iter()
            .filter_map(|o| Outcome::from_name(o))
            .collect()
    }

    fn had(&self, kind: Outcome) -> bool {
        self.history.iter().any(|o| o == kind.name())
    }

    fn had_friction(&self) -> bool {
        self.earlier().iter().any(|o| o.is_friction())
    }

    /// Whether kycd's final decision is one the ground truth calls right.
    fn right(&self) -> bool {
        self.final_outcome()
            .is_some_and(|o| self.truth.expected.accepts(o, &self.earlier()))
    }
}

#[derive(Default)]
struct Report {
    /// Every session of the simulated customers, in session-number order.
    cases: Vec<Case>,
    customers: usize,
    undecided_customers: usize,
    latencies_ms: Vec<i64>,
    decisions: usize,
}

fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn pct(n: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

/// The outcome columns of the tables, in the policy's order.
const COLUMNS: [&str; 7] = [
    "approve",
    "review",
    "step_up",
    "resubmit",
    "decline",
    "block",
    "undecided",
];

fn label_name(label: Label) -> &'static str {
    match label {
        Label::Genuine => "genuine",
        Label::Fraudulent => "fraud",
    }
}

/// A row of counts per outcome column, with its total and how many of
/// them are right.
#[derive(Default)]
struct Row {
    counts: BTreeMap<&'static str, usize>,
    total: usize,
    right: usize,
}

impl Row {
    fn add(&mut self, case: &Case) {
        let column = COLUMNS
            .iter()
            .copied()
            .find(|c| Some(*c) == case.outcome.as_deref())
            .unwrap_or("undecided");
        *self.counts.entry(column).or_default() += 1;
        self.total += 1;
        self.right += usize::from(case.right());
    }

    fn cells(&self) -> String {
        let mut out = String::new();
        for c in COLUMNS {
            out.push_str(&format!(" {:>9}", self.counts.get(c).copied().unwrap_or(0)));
        }
        out.push_str(&format!(" {:>6}", self.right));
        out
    }
}

fn column_header() -> String {
    let mut out = String::new();
    for c in COLUMNS {
        out.push_str(&format!(" {c:>9}"));
    }
    out.push_str(&format!(" {:>6}", "right"));
    out
}

impl Report {
    async fn build(
        store: &dyn Store,
        truth: &[Truth],
        applied: &Mutex<AppliedTimes>,
    ) -> anyhow::Result<Self> {
        let mut r = Report::default();
        let decisions = decisions_after(store, 0).await?;
        let mut history: HashMap<&str, Vec<String>> = HashMap::new();
        for d in &decisions {
            history
                .entry(d.session_id.as_str())
                .or_default()
                .push(d.outcome.clone());
        }
        let mut by_customer: BTreeMap<usize, bool> = BTreeMap::new();
        for t in truth {
            let record = store.get_session(&t.session_id).await?;
            let doc = record.as_ref().map(|s| &s.doc);
            let outcome = doc
                .and_then(|d| d.get("decision"))
                .and_then(|d| d.get("outcome"))
                .and_then(|o| o.as_str())
                .map(str::to_owned);
            let is_step_up = doc.is_some_and(|d| d.get("step_up_of").is_some_and(|v| !v.is_null()));
            let step_up = doc
                .and_then(|d| d.get("step_up"))
                .filter(|s| s.is_object())
                .map(|s| s["status"].as_str().unwrap_or("unknown").to_owned());
            if let Some(c) = t.customer {
                let ok = by_customer.entry(c).or_insert(true);
                *ok &= outcome.is_some();
            }
            r.cases.push(Case {
                truth: t.clone(),
                outcome,
                history: history.remove(t.session_id.as_str()).unwrap_or_default(),
                is_step_up,
                step_up,
            });
        }
        r.customers = by_customer.len();
        r.undecided_customers = by_customer.values().filter(|ok| !**ok).count();

        // Webhook-to-decision latency: from the delivery's arrival (the
        // event's receive time, which is also the decision's time) to the
        // commit that made the decision visible.
        let applied = applied.lock().unwrap_or_else(|p| p.into_inner());
        r.decisions = decisions.len();
        for d in &decisions {
            if let Some(at) = applied.committed_at(d.event_offset) {
                r.latencies_ms.push((at - d.decided_at_ms).max(0));
            }
        }
        r.latencies_ms.sort_unstable();
        Ok(r)
    }

    /// The sessions the figures are about: every session of the simulated
    /// customers except the step-up sessions kycd created, whose results
    /// count in their originals' decisions.
    fn scored(&self) -> impl Iterator<Item = &Case> {
        self.cases.iter().filter(|c| !c.is_step_up)
    }

    /// The parts of the summary that the seed fixes: outcomes by scenario,
    /// the figures against the ground truth, friction and the confusion
    /// matrix. Nothing timed is in here.
    fn tables(&self) -> String {
        let mut out = String::new();
        // Keyed by scenario and label: an account takeover's KYC session is
        // genuine, its re-authentication is not.
        let mut scenarios: BTreeMap<(&str, Label), Row> = BTreeMap::new();
        let mut matrix: BTreeMap<(Verdict, Label), Row> = BTreeMap::new();
        for c in self.scored() {
            let t = &c.truth;
            scenarios
                .entry((t.scenario.name(), t.label))
                .or_default()
                .add(c);
            matrix
                .entry((t.expected.verdict, t.label))
                .or_default()
                .add(c);
        }

        out.push_str("Outcomes by scenario (sessions, kycd's final decision)\n");
        out.push_str(&format!(
            "  {:<22} {:>7} {:>8} {:>6}{}\n",
            "scenario",
            "truth",
            "expected",
            "total",
            column_header()
        ));
        for ((name, label), row) in &scenarios {
            let verdict = kycd_sim::Scenario::from_name(name)
                .map(|s| s.expectation(*label).verdict.name())
                .unwrap_or("?");
            out.push_str(&format!(
                "  {name:<22} {:>7} {verdict:>8} {:>6}{}\n",
                label_name(*label),
                row.total,
                row.cells()
            ));
        }

        let scored: Vec<&Case> = self.scored().collect();
        let fraud: Vec<&Case> = scored
            .iter()
            .copied()
            .filter(|c| c.truth.label == Label::Fraudulent)
            .collect();
        let eligible: Vec<&Case> = scored
            .iter()
            .copied()
            .filter(|c| c.truth.label == Label::Genuine && c.truth.expected.is_eligible())
            .collect();
        let ineligible: Vec<&Case> = scored
            .iter()
            .copied()
            .filter(|c| {
                c.truth.label == Label::Genuine && c.truth.expected.verdict == Verdict::Reject
            })
            .collect();
        let fraud_approved = fraud
            .iter()
            .filter(|c| c.final_outcome() == Some(Outcome::Approve))
            .count();
        let smooth = eligible
            .iter()
            .filter(|c| c.final_outcome() == Some(Outcome::Approve) && !c.had_friction())
            .count();
        let declined = ineligible.iter().filter(|c| c.right()).count();
        let right = scored.iter().filter(|c| c.right()).count();
        out.push_str(
            "\nThe policy against the ground truth (final decisions, after re-decisions)\n",
        );
        out.push_str(&format!(
            "  fraud approved                {fraud_approved:>5} of {:<5} ({:.1} %)  goal: at most 1 %\n",
            fraud.len(),
            pct(fraud_approved, fraud.len())
        ));
        out.push_str(&format!(
            "  eligible genuine, approved    {smooth:>5} of {:<5} ({:.1} %)  without review, step-up or resubmission; goal: at least 92 %\n",
            eligible.len(),
            pct(smooth, eligible.len())
        ));
        out.push_str(&format!(
            "  ineligible, declined          {declined:>5} of {:<5} ({:.1} %)  minors, expired documents, abandoned and expired sessions; goal: 100 %\n",
            ineligible.len(),
            pct(declined, ineligible.len())
        ));
        out.push_str(&format!(
            "  right outcome                 {right:>5} of {:<5} ({:.1} %)  an outcome the scenario accepts\n",
            scored.len(),
            pct(right, scored.len())
        ));

        out.push_str("\nFriction (sessions kycd asked for a person or more proof at some point)\n");
        for kind in [Outcome::Review, Outcome::StepUp, Outcome::Resubmit] {
            let with: Vec<&&Case> = scored.iter().filter(|c| c.had(kind)).collect();
            let of_eligible = with
                .iter()
                .filter(|c| c.truth.expected.is_eligible())
                .count();
            out.push_str(&format!(
                "  {:<9} {:>5} sessions, {of_eligible} of them eligible genuine",
                kind.name(),
                with.len()
            ));
            if kind == Outcome::StepUp {
                let mut states: BTreeMap<&str, usize> = BTreeMap::new();
                for c in &scored {
                    if let Some(s) = &c.step_up {
                        *states.entry(s.as_str()).or_default() += 1;
                    }
                }
                let created = self.cases.iter().filter(|c| c.is_step_up).count();
                let states: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
                out.push_str(&format!(
                    "; step-ups: {created} sessions created at Didit, {}",
                    if states.is_empty() {
                        "none asked for".to_owned()
                    } else {
                        states.join(", ")
                    }
                ));
            }
            out.push('\n');
        }

        out.push_str(
            "\nConfusion matrix (rows: what a careful operator should reach; columns: kycd's final decision)\n",
        );
        out.push_str(&format!(
            "  {:<24} {:>6}{}\n",
            "expected",
            "total",
            column_header()
        ));
        for ((verdict, label), row) in &matrix {
            let name = match (verdict, label) {
                (Verdict::Approve, _) => "approve (eligible)".to_owned(),
                (Verdict::Reject, Label::Genuine) => "reject (ineligible)".to_owned(),
                (v, l) => format!("{} ({})", v.name(), label_name(*l)),
            };
            out.push_str(&format!("  {name:<24} {:>6}{}\n", row.total, row.cells()));
        }
        out
    }

    fn print(&self, stats: &kycd_sim::Stats, elapsed: Duration, users: usize) {
        let mut out = String::new();
        out.push_str(&format!(
            "\nkycd demo: {users} customers, {} sessions, {} decisions, in {:.1} s\n\n",
            self.cases.len(),
            self.decisions,
            elapsed.as_secs_f64()
        ));
        out.push_str(&self.tables());

        out.push_str("\nWebhook to decision (arrival at kycd to the committed decision)\n");
        match (
            percentile(&self.latencies_ms, 50.0),
            percentile(&self.latencies_ms, 99.0),
        ) {
            (Some(p50), Some(p99)) => out.push_str(&format!(
                "  p50 {p50} ms, p99 {p99} ms over {} decisions\n",
                self.latencies_ms.len()
            )),
            _ => out.push_str("  no decisions\n"),
        }

        out.push_str("\nDeliveries from the simulated Didit\n");
        out.push_str(&format!(
            "  {} deliveries, {} acknowledged, {} duplicated, {} reordered, {} retried, {} lost, {} failed\n",
            stats.deliveries,
            stats.acknowledged,
            stats.duplicated,
            stats.reordered,
            stats.retried,
            stats.lost,
            stats.failed
        ));
        if self.undecided_customers == 0 {
            out.push_str(&format!(
                "\nEvery customer reached a decision ({} of {}).\n",
                self.customers, self.customers
            ));
        } else {
            out.push_str(&format!(
                "\n{} of {} customers have a session without a decision.\n",
                self.undecided_customers, self.customers
            ));
        }
        print!("{out}");
    }
}

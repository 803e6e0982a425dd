//! `kycd demo`: the whole product in one process, offline. The Didit
//! simulator plays Didit and a few hundred customers; kycd receives its
//! signed webhooks, decides with the default policy, and the summary says
//! how the policy did against the simulator's ground truth.
//!
//! Nothing here reads `KYCD_*` variables or configuration files: the demo
//! runs on the embedded defaults in a new temporary data directory on free
//! loopback ports, so it can run beside a `kycd serve`.

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
use kycd_sim::{Faults, Label, SimConfig, Truth};
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
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.users == 0 {
        bail!("--users must be at least 1");
    }
    if !(0.0..=0.9).contains(&args.loss) {
        bail!("--loss must be between 0 and 0.9");
    }
    // Warnings only: the summary is the output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(demo(args))
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

async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // Take Ctrl-C from the start: an interrupted run still shuts down
    // cleanly and removes its temporary data directory.
    let mut interrupted = tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
    });
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
        // Kycd's clocks (retries, reconciliation, step-up expiry) run as
        // fast as the simulated customers: a quiet session is fetched from
        // Didit after two simulated minutes, checked every simulated minute.
        retry_time_scale: args.time_scale,
        reconcile_interval_secs: 60,
        reconcile_after_secs: 120,
        step_up_expiry_secs: 3600,
        ..Settings::default()
    };
    let clock = Arc::new(SystemClock);
    let running = kycd_server::start(settings, clock.clone())
        .await
        .context("start kycd")?;
    let app = running.app.clone();

    // Record when the projector commits each offset, for the latency figures.
    let applied_times = Arc::new(Mutex::new(AppliedTimes::default()));
    {
        let times = applied_times.clone();
        let mut applied = app.applied.clone();
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
    let webhook_url = format!("http://{}/webhooks/didit", running.addr);
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
        "kycd demo: {} simulated customers (seed {}), Didit simulator at {}, kycd at http://{}",
        args.users,
        args.seed,
        sim.base_url(),
        running.addr
    );
    let handle = sim.run(args.users);
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let progress = Progress::new(args.users);
    let mut settled = false;
    let mut decided = DecidedSessions::default();
    loop {
        let finished = args.users - handle.remaining();
        progress.show(finished, decided.count(&*app.store).await?);
        if handle.remaining() == 0 {
            // Deliveries still in flight (delays, retries), the projector,
            // and reconciliation of what was lost.
            let left = deadline.saturating_duration_since(Instant::now());
            settled = sim.wait_settled(left).await.is_ok();
            if settled {
                wait_applied(&app, deadline).await;
                wait_all_decided(&app, &sim, deadline).await?;
            }
            break;
        }
        if Instant::now() >= deadline || interrupted.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let truth = sim.truth();
    progress.finish(args.users, decided.count(&*app.store).await?);

    let report = Report::build(&*app.store, &truth, &applied_times).await?;
    let elapsed = started.elapsed();
    report.print(&sim.stats(), elapsed, args.users);
    print_actions(&app).await?;
    let ok = settled && report.undecided_customers == 0;
    if !settled {
        println!(
            "\nThe simulation did not settle within {} s.",
            args.timeout_secs
        );
    }

    if interrupted.is_finished() {
        println!("\nInterrupted.");
        running.shutdown().await?;
        sim.shutdown().await;
        return Ok(ExitCode::from(130));
    }
    if args.keep_running {
        let data_dir = data.keep();
        let reviewer_password = random_token("");
        demo_reviewer(&running, &reviewer_password).await?;
        println!("\nStill running (Ctrl-C to stop):");
        println!("  review console  http://{}/console/", running.addr);
        println!("                  username {DEMO_REVIEWER}, password {reviewer_password}");
        println!("  kycd API        http://{}/api/v1/sessions", running.addr);
        println!("                  Authorization: Bearer {api_token}");
        println!("  decisions       http://{}/api/v1/decisions", running.addr);
        println!("  metrics         http://{}/metrics", running.addr);
        println!("  Didit simulator {}/v3/sessions/", sim.base_url());
        println!("                  x-api-key: {didit_key}");
        println!("  ground truth    {}/sim/v1/truth", sim.base_url());
        println!("  data directory  {}", data_dir.display());
        std::io::stdout().flush()?;
        let _ = (&mut interrupted).await;
    }
    // kycd first: its reconciliation and workers call the simulator.
    running.shutdown().await?;
    sim.shutdown().await;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The demo's console user.
const DEMO_REVIEWER: &str = "demo-reviewer";

/// A reviewer for the demo's console, with a fresh random password (the
/// demo's data directory is its own, so the name is always free).
async fn demo_reviewer(running: &kycd_server::Running, password: &str) -> anyhow::Result<()> {
    let hash = kycd_server::access_api::hash_password(password).map_err(anyhow::Error::msg)?;
    let user = kycd_log::access::UserInfo {
        username: DEMO_REVIEWER.to_owned(),
        role: "reviewer".to_owned(),
        created_at_ms: running.app.clock.now_millis(),
    };
    running
        .app
        .access
        .add_user(user, hash)
        .await
        .context("create the demo reviewer")?;
    Ok(())
}

/// Workflows for the step-up checks, created in the simulated Didit as an
/// operator would in Didit's console.
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

/// Wait until every session Didit finished has a decision at kycd (lost
/// deliveries come back through reconciliation) and the outbox is idle.
async fn wait_all_decided(
    app: &kycd_server::App,
    sim: &kycd_sim::Sim,
    deadline: Instant,
) -> anyhow::Result<()> {
    use kycd_log::outbox::{ActionQuery, ActionState};
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
        let busy = app
            .outbox
            .list_actions(ActionQuery {
                state: Some(ActionState::Pending),
                limit: 1,
                ..Default::default()
            })
            .await?
            .len();
        if missing == 0 && busy == 0 {
            // Write-backs make Didit deliver again: let those land too.
            if sim.wait_settled(Duration::from_millis(1)).await.is_ok() {
                wait_applied(app, deadline).await;
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// What kycd did about its decisions: actions by kind, step-ups and
/// reconciled sessions.
async fn print_actions(app: &kycd_server::App) -> anyhow::Result<()> {
    let counts = app.outbox.action_counts().await?;
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
    out.push_str(&format!(
        "  sessions updated by reconciliation: {} ({} decisions fetched from Didit's API; lost deliveries are counted below)\n",
        app.reconcile_totals.reconciled_sessions(),
        app.reconcile_totals
            .fetched
            .load(std::sync::atomic::Ordering::Relaxed)
    ));
    print!("{out}");
    Ok(())
}

/// Wait until the projector has applied everything in the log.
async fn wait_applied(app: &kycd_server::App, deadline: Instant) {
    let mut applied = app.applied.clone();
    loop {
        let head = app.log.head().await.unwrap_or(0);
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

/// Sessions of one scenario and label: count per outcome, and the total.
type ScenarioRow<'a> = (BTreeMap<&'a str, usize>, usize);

/// kycd's current decision on one simulated session.
struct Outcome {
    truth: Truth,
    outcome: Option<String>,
}

#[derive(Default)]
struct Report {
    sessions: Vec<Outcome>,
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

impl Report {
    async fn build(
        store: &dyn Store,
        truth: &[Truth],
        applied: &Mutex<AppliedTimes>,
    ) -> anyhow::Result<Self> {
        let mut r = Report::default();
        let mut by_customer: HashMap<usize, bool> = HashMap::new();
        for t in truth {
            let outcome = store.get_session(&t.session_id).await?.and_then(|s| {
                s.doc
                    .get("decision")
                    .and_then(|d| d.get("outcome"))
                    .and_then(|o| o.as_str())
                    .map(str::to_owned)
            });
            if let Some(c) = t.customer {
                let ok = by_customer.entry(c).or_insert(true);
                *ok &= outcome.is_some();
            }
            r.sessions.push(Outcome {
                truth: t.clone(),
                outcome,
            });
        }
        r.customers = by_customer.len();
        r.undecided_customers = by_customer.values().filter(|ok| !**ok).count();

        // Webhook-to-decision latency: from the delivery's arrival (the
        // event's receive time, which is also the decision's time) to the
        // commit that made the decision visible.
        let decisions = decisions_after(store, 0).await?;
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

    fn print(&self, stats: &kycd_sim::Stats, elapsed: Duration, users: usize) {
        let mut out = String::new();
        // Keyed by scenario and label: an account takeover's KYC session is
        // genuine, its re-authentication is not.
        let mut scenarios: BTreeMap<(&str, Label), ScenarioRow> = BTreeMap::new();
        let mut columns: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &self.sessions {
            let e = scenarios
                .entry((s.truth.scenario.name(), s.truth.label))
                .or_default();
            e.1 += 1;
            let o = s.outcome.as_deref().unwrap_or("undecided");
            *e.0.entry(o).or_default() += 1;
            *columns.entry(o).or_default() += 1;
        }
        let order = [
            "approve",
            "review",
            "step_up",
            "resubmit",
            "decline",
            "block",
            "undecided",
        ];
        let mut cols: Vec<&str> = order
            .iter()
            .copied()
            .filter(|c| columns.contains_key(c))
            .collect();
        cols.extend(columns.keys().copied().filter(|c| !order.contains(c)));

        out.push_str(&format!(
            "\nkycd demo: {users} customers, {} sessions, {} decisions, in {:.1} s\n\n",
            self.sessions.len(),
            self.decisions,
            elapsed.as_secs_f64()
        ));
        out.push_str("Outcomes by scenario (sessions)\n");
        out.push_str(&format!(
            "  {:<28} {:>8} {:>6}",
            "scenario", "truth", "total"
        ));
        for c in &cols {
            out.push_str(&format!(" {:>9}", c));
        }
        out.push('\n');
        for ((name, label), (counts, total)) in &scenarios {
            let label = match label {
                Label::Genuine => "genuine",
                Label::Fraudulent => "fraud",
            };
            out.push_str(&format!("  {name:<28} {label:>8} {total:>6}"));
            for c in &cols {
                out.push_str(&format!(" {:>9}", counts.get(c).copied().unwrap_or(0)));
            }
            out.push('\n');
        }

        let decided = |s: &&Outcome| s.outcome.is_some();
        let fraud: Vec<&Outcome> = self
            .sessions
            .iter()
            .filter(|s| s.truth.label == Label::Fraudulent)
            .filter(decided)
            .collect();
        let genuine: Vec<&Outcome> = self
            .sessions
            .iter()
            .filter(|s| s.truth.label == Label::Genuine)
            .filter(decided)
            .collect();
        let count = |set: &[&Outcome], outcomes: &[&str]| {
            set.iter()
                .filter(|s| outcomes.contains(&s.outcome.as_deref().unwrap_or("")))
                .count()
        };
        let pct = |n: usize, of: usize| {
            if of == 0 {
                0.0
            } else {
                100.0 * n as f64 / of as f64
            }
        };
        let friction = ["review", "step_up", "resubmit"];
        let stopped = ["decline", "block"];
        let f_stopped = count(&fraud, &stopped);
        let f_review = count(&fraud, &friction);
        let f_missed = count(&fraud, &["approve"]);
        let g_approved = count(&genuine, &["approve"]);
        let g_friction = count(&genuine, &friction);
        let g_declined = count(&genuine, &stopped);
        out.push_str("\nThe policy against the ground truth (decided sessions)\n");
        out.push_str(&format!(
            "  fraud caught            {f_stopped:>5} of {:<5} ({:.1} %) declined or blocked, {f_review} more sent to review or step-up\n",
            fraud.len(),
            pct(f_stopped, fraud.len())
        ));
        out.push_str(&format!(
            "  fraud approved          {f_missed:>5} of {:<5} ({:.1} %)\n",
            fraud.len(),
            pct(f_missed, fraud.len())
        ));
        out.push_str(&format!(
            "  genuine, no friction    {g_approved:>5} of {:<5} ({:.1} %) approved straight away\n",
            genuine.len(),
            pct(g_approved, genuine.len())
        ));
        out.push_str(&format!(
            "  genuine, with friction  {g_friction:>5} of {:<5} ({:.1} %) review, step-up or resubmission\n",
            genuine.len(),
            pct(g_friction, genuine.len())
        ));
        out.push_str(&format!(
            "  genuine, declined       {g_declined:>5} of {:<5} ({:.1} %)\n",
            genuine.len(),
            pct(g_declined, genuine.len())
        ));
        let review = self
            .sessions
            .iter()
            .filter(|s| s.outcome.as_deref() == Some("review"))
            .count();
        out.push_str(&format!(
            "  sent to review          {review:>5} of {:<5} ({:.1} %)\n",
            self.sessions.len(),
            pct(review, self.sessions.len())
        ));

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

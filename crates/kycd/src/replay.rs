//! `kycd replay --policy FILE [--since T] [--until T]`: re-evaluate history
//! with a candidate policy, side-effect free, and report what would change.
//!
//! The whole log is run through the same projector the server uses, into a
//! scratch store in a temporary directory, so facts are rebuilt as of each
//! event's position in the log exactly as they were live. Only decisions
//! inside the time window are compared and reported. The event log and the
//! store are only read; the report is also left in the data directory
//! ([`kycd_server::REPLAY_REPORT_FILE`]) for the console's policy page.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use kycd_engine::replay::{Category, Report, Window};
use kycd_log::sqlite_log::{SqliteLog, SqliteLogOptions};
use kycd_log::store::{SqliteStore, Store};
use kycd_log::EventLog;
use kycd_policy::Policy;
use serde_json::json;

use crate::config::{self, ServeArgs};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The candidate policy file (`builtin` for the built-in default), or
    /// `recorded`: each event with the policy that was in force for it, as
    /// the log recorded its activations (reloads included).
    #[arg(long)]
    pub policy: String,
    /// Only decisions at or after this time (RFC 3339 or e.g. 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Only decisions before this time (RFC 3339 or e.g. 24h).
    #[arg(long)]
    pub until: Option<String>,
    /// How many changed decisions to show.
    #[arg(long, default_value_t = 10)]
    pub examples: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Replay the log in `data_dir` with `candidate` and compare with the
/// stored decisions in the window.
pub async fn replay(
    data_dir: &std::path::Path,
    candidate: Option<Policy>,
    w: Window,
    actions: kycd_engine::actions::ActionSettings,
) -> anyhow::Result<Report> {
    let log_path = data_dir.join("events.db");
    anyhow::ensure!(log_path.exists(), "no event log at {}", log_path.display());
    let log: Arc<dyn EventLog> = Arc::new(
        SqliteLog::open(&log_path, SqliteLogOptions::default())
            .with_context(|| format!("open {}", log_path.display()))?,
    );
    let live =
        SqliteStore::open(&data_dir.join("store.db"), false).context("open the live store")?;
    replay_over(log, &live, candidate, w, actions).await
}

/// [`replay`] from a log and store already open (PostgreSQL's, for `kycd
/// demo --cluster`), into a scratch SQLite store.
pub async fn replay_over(
    log: Arc<dyn EventLog>,
    live: &dyn Store,
    candidate: Option<Policy>,
    w: Window,
    actions: kycd_engine::actions::ActionSettings,
) -> anyhow::Result<Report> {
    let scratch_dir = tempdir()?;
    let scratch: Arc<dyn Store> =
        Arc::new(SqliteStore::open_scratch(&scratch_dir.join("store.db"))?);
    let actions = Arc::new(actions);
    let report = match candidate {
        Some(c) => kycd_engine::replay::replay_with(log, live, scratch, c, w, actions).await,
        None => kycd_engine::replay::replay_recorded(log, live, scratch, w, actions).await,
    };
    let _ = std::fs::remove_dir_all(&scratch_dir);
    report.context("replay the log")
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "kycd-replay-{}-{}",
        std::process::id(),
        kycd_core::id::ulid_body(0)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// Leave the report where the console's policy page finds it, replacing
/// the previous one atomically (written aside, then renamed).
fn save_report(
    data_dir: &std::path::Path,
    candidate: &str,
    r: &Report,
    now_ms: i64,
) -> anyhow::Result<()> {
    let path = data_dir.join(kycd_server::REPLAY_REPORT_FILE);
    let aside = path.with_extension("json.tmp");
    let doc = json!({
        "at": kycd_core::when::format_millis(now_ms),
        "candidate": candidate,
        "report": r,
    });
    std::fs::write(&aside, doc.to_string())
        .and_then(|()| std::fs::rename(&aside, &path))
        .with_context(|| format!("save the replay report to {}", path.display()))
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let loaded = config::load(&args.serve, &config::process_env())?;
    config::embedded_only(&loaded.settings, "replay")?;
    let candidate = match args.policy.as_str() {
        "builtin" => Some(Policy::builtin_default()),
        kycd_engine::replay::RECORDED => None,
        file => Some(
            Policy::from_file(std::path::Path::new(file)).map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
    };
    let now = kycd_core::Clock::now_millis(&kycd_core::SystemClock);
    let when = |v: &Option<String>| -> anyhow::Result<Option<i64>> {
        v.as_deref()
            .map(|s| kycd_core::when::parse_time(s, now).map_err(|e| anyhow::anyhow!("{e}")))
            .transpose()
    };
    let (since, until) = (when(&args.since)?, when(&args.until)?);
    let w = Window {
        since_ms: since,
        until_ms: until,
        max_examples: args.examples,
        graph_window_ms: i64::from(loaded.settings.graph_window_days) * 86_400_000,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The server's action settings (write-back, step-up workflows): they
    // shape the sessions' state, so the replay plans actions as it did.
    let actions = kycd_server::action_settings(&loaded.settings)?;
    let r = runtime.block_on(replay(&loaded.settings.data_dir, candidate, w, actions))?;
    save_report(&loaded.settings.data_dir, &args.policy, &r, now)?;
    if args.json {
        println!("{}", json!(r));
        return Ok(ExitCode::SUCCESS);
    }
    if candidate_is_recorded(&r) {
        println!("replayed with the policies the log recorded");
    } else {
        println!("replayed with policy version {}", r.candidate_version);
    }
    println!(
        "{} decisions stored in the window: {}",
        r.total,
        r.category_counts()
    );
    println!(
        "\nby trigger     {}",
        Category::ALL
            .map(|c| format!("{:>18}", c.as_str()))
            .join("")
    );
    for (trigger, row) in &r.by_trigger {
        let cells: String = Category::ALL
            .iter()
            .map(|c| format!("{:>18}", row.get(c.as_str()).copied().unwrap_or(0)))
            .collect();
        println!("{trigger:<14} {cells}");
    }
    let outcomes = [
        "approve", "review", "step_up", "resubmit", "decline", "block",
    ];
    println!(
        "\nfrom \\ to   {}",
        outcomes.map(|o| format!("{o:>9}")).join("")
    );
    for from in outcomes {
        let row = r.matrix.get(from);
        let cells: String = outcomes
            .iter()
            .map(|to| format!("{:>9}", row.and_then(|m| m.get(*to)).copied().unwrap_or(0)))
            .collect();
        println!("{from:<11} {cells}");
    }
    if !r.examples.is_empty() {
        println!("\nexamples:");
        for e in &r.examples {
            println!(
                "  session {} (event #{}): {} -> {}; now because {}",
                e["session_id"].as_str().unwrap_or(""),
                e["event_offset"],
                e["from"].as_str().unwrap_or(""),
                e["to"].as_str().unwrap_or(""),
                e["replayed_reasons"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(|r| r["rule"].as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn candidate_is_recorded(r: &Report) -> bool {
    r.candidate_version == kycd_engine::replay::RECORDED
}

//! `kycd`: the command line. Subcommands:
//!
//! - `serve`: the webhook intake, event log, session projection and API;
//! - `config check`: the effective configuration, secrets hidden (and
//!   `config default`, `config docs`: every setting, as a file and a table);
//! - `completions`: shell completions;
//! - `backup`: an online-consistent copy of the data directory;
//! - `webhook verify|sign`: tools for people integrating with Didit;
//! - `bench`: a load generator for the intake.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// mimalloc rather than the system allocator: deciding a session builds and
/// drops thousands of small JSON values, and glibc's malloc and free were
/// over a third of the projector's instructions (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod access_cmd;
mod audit_cmd;
mod backup_cmd;
mod bench;
mod config;
mod demo;
mod logging;
mod ops_cmd;
mod policy_cmd;
mod replay;
mod serve;
mod sim_cmd;
mod webhook;

/// The git revision the binary was built from (build.rs: `git rev-parse`,
/// or `KYCD_GIT_REVISION` set by a packager; `unknown` without either).
pub const GIT_REVISION: &str = env!("KYCD_GIT_REVISION");

/// How the server reports this binary (`kycd_build_info`): the version and
/// revision `kycd --version` prints.
pub fn startup() -> kycd_server::Startup {
    kycd_server::Startup {
        build: kycd_server::telemetry::BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            revision: GIT_REVISION.to_owned(),
        },
    }
}

/// The backends compiled in. Each is fixed today; one that becomes a cargo
/// feature gets a `#[cfg(feature = ...)]` entry here.
pub const BACKENDS: &[&str] = &[
    "event-log:sqlite",
    "event-log:postgres",
    "store:sqlite",
    "store:postgres",
];

/// What `kycd --version` prints after the name.
fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        format!(
            "{} (revision {GIT_REVISION}; backends: {})",
            env!("CARGO_PKG_VERSION"),
            BACKENDS.join(", ")
        )
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "kycd",
    version = version(),
    about = "Real-time KYC decisioning behind Didit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: webhook intake, event log, session projection, API.
    Serve(config::ServeArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Verify or sign Didit webhook deliveries.
    #[command(subcommand)]
    Webhook(webhook::WebhookCmd),
    /// Fire signed deliveries at an intake and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Validate and test decision policies.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCmd),
    /// Re-evaluate history with a candidate policy, without side effects.
    Replay(replay::ReplayArgs),
    /// The whole product offline: a simulated Didit and its customers
    /// against kycd on the embedded defaults, with a summary.
    Demo(demo::DemoArgs),
    /// Run the Didit simulator on its own (for trying kycd serve without a
    /// Didit account).
    Sim(sim_cmd::SimArgs),
    /// The outbox of a running server: list actions, redrive dead ones.
    #[command(subcommand)]
    Actions(ops_cmd::ActionsCmd),
    /// Ask a running server to fetch from Didit's API what it is missing
    /// since a time (lost deliveries, unknown sessions).
    Reconcile(ops_cmd::ReconcileArgs),
    /// The tamper-evident audit trail.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCmd),
    /// API tokens: create, list, revoke.
    #[command(subcommand)]
    Token(access_cmd::TokenCmd),
    /// Console users.
    #[command(subcommand)]
    User(access_cmd::UserCmd),
    /// Copy the data directory (store and event log, and the audit key kept
    /// there) consistently, while the server runs.
    Backup(backup_cmd::BackupArgs),
    /// Print a shell completion script: `kycd completions bash >
    /// /etc/bash_completion.d/kycd`, `... zsh > ~/.zfunc/_kycd`, `... fish >
    /// ~/.config/fish/completions/kycd.fish`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The command line's definition (for completions and the list of
/// variables kycd reads).
pub fn cli() -> clap::Command {
    Cli::command()
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration as TOML, with where each value
    /// came from, secrets hidden.
    Check(config::ServeArgs),
    /// Print every setting at its default, with its help, as a
    /// configuration file (config/default.toml is this output).
    Default,
    /// Print the table of every setting in Markdown (docs/settings.md is
    /// this output).
    Docs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Config(ConfigCommand::Check(args)) => config::check(args),
        Command::Config(ConfigCommand::Default) => {
            print!("{}", config::render_default());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Docs) => {
            print!("{}", config::render_docs());
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics on a write error (a
            // closed pipe), where an error and its exit code are better.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut crate::cli(), "kycd", &mut script);
            let mut out = std::io::stdout().lock();
            std::io::Write::write_all(&mut out, &script)
                .and_then(|()| std::io::Write::flush(&mut out))
                .map(|()| ExitCode::SUCCESS)
                .map_err(|e| anyhow::anyhow!("write the completion script: {e}"))
        }
        Command::Webhook(cmd) => webhook::run(cmd),
        Command::Bench(args) => bench::run(args),
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Replay(args) => replay::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Sim(args) => sim_cmd::run(args),
        Command::Actions(cmd) => ops_cmd::actions(cmd),
        Command::Reconcile(args) => ops_cmd::reconcile(args),
        Command::Audit(cmd) => audit_cmd::run(cmd),
        Command::Token(cmd) => access_cmd::token(cmd),
        Command::User(cmd) => access_cmd::user(cmd),
        Command::Backup(args) => backup_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

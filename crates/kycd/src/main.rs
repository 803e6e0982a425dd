//! `kycd`: the command line. Subcommands:
//!
//! - `serve`: the webhook intake, event log, session projection and API;
//! - `config check`: the effective configuration, secrets hidden;
//! - `backup`: an online-consistent copy of the data directory;
//! - `webhook verify|sign`: tools for people integrating with Didit;
//! - `bench`: a load generator for the intake.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
mod ops_cmd;
mod policy_cmd;
mod replay;
mod serve;
mod sim_cmd;
mod webhook;

#[derive(Debug, Parser)]
#[command(
    name = "kycd",
    version,
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
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration with secrets hidden.
    Check(config::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Config(ConfigCommand::Check(args)) => config::check(args),
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

//! `kycd policy check FILE` and `kycd policy test FILE CASES`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kycd_policy::Policy;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy file (syntax, outcomes, checks, every expression
    /// and decision table); print its name, version and rules.
    Check {
        /// The policy file (TOML); `builtin` checks the built-in default.
        file: String,
    },
    /// Run golden cases (facts in, expected outcome and reasons out)
    /// against a policy and print a report; exits 1 if any case fails.
    Test {
        /// The policy file; `builtin` for the built-in default.
        file: String,
        /// The cases file.
        cases: PathBuf,
    },
}

fn load(file: &str) -> anyhow::Result<Policy> {
    if file == "builtin" {
        return Ok(Policy::builtin_default());
    }
    Policy::from_file(std::path::Path::new(file)).map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn run(cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCmd::Check { file } => {
            let policy = load(&file)?;
            println!(
                "ok: policy {:?} version {}",
                policy.name(),
                policy.version()
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Test { file, cases } => {
            let policy = load(&file)?;
            let text = std::fs::read_to_string(&cases)
                .with_context(|| format!("read cases file {}", cases.display()))?;
            let report = kycd_policy::run_cases(&policy, &text, &cases.display().to_string())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            print!("{report}");
            Ok(if report.all_passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

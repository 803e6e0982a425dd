//! `kycd audit verify`: check the audit trail's hash chain in the data
//! directory (created and migrated if it does not exist yet: an empty chain
//! is intact).

use std::process::ExitCode;

use anyhow::Context;
use kycd_log::audit::Audit;
use kycd_log::store::SqliteStore;

use crate::config::{self, ServeArgs};

#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// Check every record's hash and its link to the one before. Exits 0
    /// when the chain is intact, 1 naming the first broken record.
    Verify(ServeArgs),
}

pub fn run(cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    let AuditCmd::Verify(args) = cmd;
    let loaded = config::load(&args, &config::process_env())?;
    let dir = &loaded.settings.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("create data directory {}", dir.display()))?;
    let path = dir.join("store.db");
    let store = SqliteStore::open(&path, false)
        .with_context(|| format!("open store {}", path.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let v = rt.block_on(store.verify_audit())?;
    match v.first_broken {
        None => {
            println!("audit chain intact: {} records", v.records);
            Ok(ExitCode::SUCCESS)
        }
        Some((seq, why)) => {
            println!("audit chain broken at record {seq}: {why}");
            Ok(ExitCode::from(1))
        }
    }
}

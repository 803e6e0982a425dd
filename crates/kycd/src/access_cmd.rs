//! `kycd token create|list|revoke` and `kycd user add`: access control on
//! the data directory (created and migrated if needed). A running server
//! sees a new or revoked token at its next request.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{bail, Context};
use kycd_core::Clock;
use kycd_log::access::{Access, Scope, UserInfo};
use kycd_log::audit::{Audit, NewAudit};
use kycd_log::store::SqliteStore;
use kycd_server::access_api;
use serde_json::json;

use crate::config::{self, ServeArgs};

#[derive(Debug, clap::Subcommand)]
pub enum TokenCmd {
    /// Create an API token; its secret is printed once.
    Create {
        #[command(flatten)]
        serve: ServeArgs,
        /// What the token is for (shown in listings).
        #[arg(long)]
        name: String,
        /// read (every GET), review (decisions, subject writes) or admin.
        #[arg(long)]
        scope: String,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Revoke a token by id; it stops working at once.
    Revoke {
        #[command(flatten)]
        serve: ServeArgs,
        /// The token's id (`tok_...`).
        id: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum UserCmd {
    /// Add a console user.
    Add {
        #[command(flatten)]
        serve: ServeArgs,
        #[arg(long)]
        username: String,
        /// admin, reviewer or viewer.
        #[arg(long)]
        role: String,
        /// Read the password from standard input (one trailing newline is
        /// removed).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

fn open(serve: &ServeArgs) -> anyhow::Result<SqliteStore> {
    let loaded = config::load(serve, &config::process_env())?;
    config::embedded_only(&loaded.settings, "token / user")?;
    let dir = &loaded.settings.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("create data directory {}", dir.display()))?;
    // A data directory is its store and its event log together: create the
    // log too, so that `kycd audit verify` finds a whole data directory
    // (and anchors have a place) before the server first starts.
    let log_path = dir.join("events.db");
    drop(
        kycd_log::sqlite_log::SqliteLog::open(&log_path, Default::default())
            .with_context(|| format!("open event log {}", log_path.display()))?,
    );
    let path = dir.join("store.db");
    let store = SqliteStore::open(&path, false)
        .with_context(|| format!("open store {}", path.display()))?;
    crate::audit_cmd::key_store(&store, &loaded.settings)?;
    Ok(store)
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

async fn record(store: &SqliteStore, action: &str, target: &str, details: serde_json::Value) {
    let entry = NewAudit {
        at_ms: kycd_core::SystemClock.now_millis(),
        actor: "cli".into(),
        action: action.into(),
        target: Some(target.into()),
        details,
    };
    if let Err(e) = store.audit(vec![entry]).await {
        eprintln!("warning: could not append to the audit trail: {e}");
    }
}

pub fn token(cmd: TokenCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCmd::Create { serve, name, scope } => {
            let Some(scope) = Scope::parse(&scope) else {
                bail!("--scope must be read, review or admin");
            };
            if name.trim().is_empty() {
                bail!("--name must not be empty");
            }
            let store = open(&serve)?;
            let (info, secret) = block_on(async {
                let made = access_api::create_token(
                    &store,
                    name.trim(),
                    scope,
                    kycd_core::SystemClock.now_millis(),
                )
                .await?;
                record(
                    &store,
                    "token.created",
                    &made.0.id,
                    json!({"scope": scope, "name": name.trim()}),
                )
                .await;
                anyhow::Ok(made)
            })??;
            eprintln!(
                "created {} ({}, scope {}); the token is shown only now:",
                info.id,
                info.name,
                scope.as_str()
            );
            println!("{secret}");
            Ok(ExitCode::SUCCESS)
        }
        TokenCmd::List { serve } => {
            let store = open(&serve)?;
            let tokens = block_on(store.list_tokens())??;
            if tokens.is_empty() {
                println!("no tokens");
            }
            for t in tokens {
                println!(
                    "{}  {:<7} {}  created {}{}",
                    t.id,
                    t.scope.as_str(),
                    t.name,
                    kycd_core::when::format_millis(t.created_at_ms),
                    t.revoked_at_ms
                        .map(|r| format!("  revoked {}", kycd_core::when::format_millis(r)))
                        .unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCmd::Revoke { serve, id } => {
            let store = open(&serve)?;
            let revoked = block_on(async {
                let t = store
                    .revoke_token(&id, kycd_core::SystemClock.now_millis())
                    .await?;
                if let Some(t) = &t {
                    record(&store, "token.revoked", &t.id, json!({"scope": t.scope})).await;
                }
                anyhow::Ok(t)
            })??;
            match revoked {
                Some(t) => {
                    println!("revoked {}", t.id);
                    Ok(ExitCode::SUCCESS)
                }
                None => bail!("no token {id}"),
            }
        }
    }
}

pub fn user(cmd: UserCmd) -> anyhow::Result<ExitCode> {
    let UserCmd::Add {
        serve,
        username,
        role,
        password_stdin: _,
    } = cmd;
    if !access_api::ROLES.contains(&role.as_str()) {
        bail!("--role must be admin, reviewer or viewer");
    }
    let username = username.trim().to_owned();
    if username.is_empty() || username.len() > 64 || username.chars().any(char::is_control) {
        bail!("--username must be 1 to 64 printable characters");
    }
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("read the password from standard input")?;
    // One trailing newline (as `echo` or a here-string adds) is not part of it.
    if let Some(p) = password.strip_suffix('\n') {
        password = p.strip_suffix('\r').unwrap_or(p).to_owned();
    }
    if password.chars().count() < 8 {
        bail!("the password must have at least 8 characters");
    }
    let hash = access_api::hash_password(&password).map_err(anyhow::Error::msg)?;
    let store = open(&serve)?;
    let added = block_on(async {
        let added = store
            .add_user(
                UserInfo {
                    username: username.clone(),
                    role: role.clone(),
                    created_at_ms: kycd_core::SystemClock.now_millis(),
                },
                hash,
            )
            .await?;
        if added {
            record(&store, "user.added", &username, json!({"role": role})).await;
        }
        anyhow::Ok(added)
    })??;
    if !added {
        bail!("a user named {username:?} already exists");
    }
    println!("added {username} ({role})");
    Ok(ExitCode::SUCCESS)
}

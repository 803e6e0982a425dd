//! `kycd token create|list|revoke` and `kycd user add`: access control in
//! the store the settings name: the data directory (created and migrated
//! if needed) or the PostgreSQL database of `KYCD_DATABASE_URL` (migrated
//! if needed), as `kycd serve` opens it. A running server (every instance
//! of a cluster) sees a new or revoked token at its next request. Each
//! change is audited in the chain the servers append to.

use std::future::Future;
use std::io::Read;
use std::process::ExitCode;

use anyhow::{bail, Context};
use kycd_core::Clock;
use kycd_log::access::{Scope, UserInfo};
use kycd_log::audit::{AuditKey, KeyError, NewAudit};
use kycd_server::access_api;
use kycd_server::storage::{self, Backend, Storage};
use kycd_server::Settings;
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

/// Key the store like the server does, so that records a command appends
/// chain on. A missing key file is fine while the chain has no keyed
/// record (the store then refuses to append after one, and the command
/// warns that it could not audit).
fn key_store(backend: &Backend, settings: &Settings) -> anyhow::Result<()> {
    let key = match AuditKey::load(&settings.audit().key_path(&settings.data_dir)) {
        Ok(key) => key,
        Err(KeyError::Missing(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    match backend {
        Backend::Embedded { store, .. } => store.set_audit_key(key),
        Backend::Postgres { store, .. } => store.set_audit_key(key),
    }
    Ok(())
}

/// Open the store the settings name and run `work` on it. On the embedded
/// backend this creates the event log too, so that `kycd audit verify`
/// finds a whole data directory (and anchors have a place) before the
/// server first starts.
fn with_storage<T, F, Fut>(serve: &ServeArgs, work: F) -> anyhow::Result<T>
where
    F: FnOnce(Storage) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let loaded = config::load(serve, &config::process_env())?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let storage = storage::open(&loaded.settings, || {}).await?;
            key_store(&storage.backend, &loaded.settings)?;
            let log = storage.log.clone();
            let done = work(storage).await;
            log.shutdown().await;
            done
        })
}

async fn record(storage: &Storage, action: &str, target: &str, details: serde_json::Value) {
    let entry = NewAudit {
        at_ms: kycd_core::SystemClock.now_millis(),
        actor: "cli".into(),
        action: action.into(),
        target: Some(target.into()),
        details,
    };
    if let Err(e) = storage.audit.audit(vec![entry]).await {
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
            let (info, secret) = with_storage(&serve, |storage| async move {
                let made = access_api::create_token(
                    &*storage.access,
                    name.trim(),
                    scope,
                    kycd_core::SystemClock.now_millis(),
                )
                .await?;
                record(
                    &storage,
                    "token.created",
                    &made.0.id,
                    json!({"scope": scope, "name": name.trim()}),
                )
                .await;
                anyhow::Ok(made)
            })?;
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
            let tokens = with_storage(&serve, |storage| async move {
                Ok(storage.access.list_tokens().await?)
            })?;
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
            let id = id.as_str();
            let revoked = with_storage(&serve, |storage| async move {
                let t = storage
                    .access
                    .revoke_token(id, kycd_core::SystemClock.now_millis())
                    .await?;
                if let Some(t) = &t {
                    record(&storage, "token.revoked", &t.id, json!({"scope": t.scope})).await;
                }
                anyhow::Ok(t)
            })?;
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
    let (username, role) = (username.as_str(), role.as_str());
    let added = with_storage(&serve, |storage| async move {
        let added = storage
            .access
            .add_user(
                UserInfo {
                    username: username.to_owned(),
                    role: role.to_owned(),
                    created_at_ms: kycd_core::SystemClock.now_millis(),
                },
                hash,
            )
            .await?;
        if added {
            record(&storage, "user.added", username, json!({"role": role})).await;
        }
        anyhow::Ok(added)
    })?;
    if !added {
        bail!("a user named {username:?} already exists");
    }
    println!("added {username} ({role})");
    Ok(ExitCode::SUCCESS)
}

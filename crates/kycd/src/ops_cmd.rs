//! Operations on a running server through its API: the dead-letter list
//! (`kycd actions list|retry`) and a reconciliation backfill
//! (`kycd reconcile --since T`). The server does the work; these commands
//! only ask, so they never contend with it for the data directory.

use std::process::ExitCode;

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// Where the server is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The server's base URL [default: http:// + KYCD_LISTEN, or http://127.0.0.1:8080].
    #[arg(long, env = "KYCD_API_URL")]
    pub url: Option<String>,
    /// The API bearer token.
    #[arg(long, env = "KYCD_API_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum ActionsCmd {
    /// List actions, newest first (`--state dead` is the dead-letter list).
    List {
        #[command(flatten)]
        target: Target,
        /// pending, running, done, skipped or dead.
        #[arg(long)]
        state: Option<String>,
        /// Only this session's actions.
        #[arg(long)]
        session: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the raw JSON page.
        #[arg(long)]
        json: bool,
    },
    /// Put a dead action back in the queue with a fresh attempt budget.
    Retry {
        #[command(flatten)]
        target: Target,
        /// The action's id (`act_...`).
        id: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub target: Target,
    /// List Didit's sessions created since this time (RFC 3339, a date, or
    /// a duration ago such as `2d`) and fetch what kycd is missing.
    #[arg(long)]
    pub since: String,
}

fn base(target: &Target) -> String {
    let url = target.url.clone().unwrap_or_else(|| {
        let listen = std::env::var("KYCD_LISTEN")
            .unwrap_or_else(|_| kycd_server::settings::DEFAULT_LISTEN.into());
        format!("http://{listen}")
    });
    url.trim_end_matches('/').to_owned()
}

fn call(
    target: &Target,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let url = format!("{}/api/v1{path}", base(target));
        let mut req = reqwest::Client::new()
            .request(method, &url)
            .bearer_auth(&target.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("reach kycd at {}", base(target)))?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            bail!("kycd answered {}: {msg}", status.as_u16());
        }
        Ok(value)
    })
}

pub fn actions(cmd: ActionsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ActionsCmd::List {
            target,
            state,
            session,
            limit,
            json,
        } => {
            let mut q = vec![format!("limit={limit}")];
            if let Some(s) = state {
                q.push(format!("state={s}"));
            }
            if let Some(s) = session {
                q.push(format!("session_id={s}"));
            }
            let page = call(
                &target,
                reqwest::Method::GET,
                &format!("/actions?{}", q.join("&")),
                None,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
                return Ok(ExitCode::SUCCESS);
            }
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                println!("no actions");
            }
            for a in items {
                let s = |k: &str| a[k].as_str().unwrap_or("-").to_owned();
                println!(
                    "{}  {:<20} {:<8} attempts {:<3} session {}  {}",
                    s("id"),
                    s("kind"),
                    s("state"),
                    a["attempts"],
                    s("session_id"),
                    a["last_error"].as_str().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ActionsCmd::Retry { target, id } => {
            let a = call(
                &target,
                reqwest::Method::POST,
                &format!("/actions/{id}/retry"),
                None,
            )?;
            println!(
                "{} is {} again",
                a["id"].as_str().unwrap_or(&id),
                a["state"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn reconcile(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let report = call(
        &args.target,
        reqwest::Method::POST,
        "/reconcile",
        Some(json!({"since": args.since})),
    )?;
    println!(
        "listed {} sessions at Didit since {}, fetched {} decisions, logged {} new results, {} errors",
        report["listed"],
        report["since"].as_str().unwrap_or(&args.since),
        report["fetched"],
        report["appended"],
        report["errors"]
    );
    Ok(if report["errors"].as_u64() == Some(0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

//! `kycd serve`: run the server until SIGTERM or Ctrl-C, then shut down
//! gracefully (stop accepting, finish in-flight commits, exit).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use kycd_core::SystemClock;

use crate::config::{self, ServeArgs};

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down: finishing in-flight requests and commits");
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let loaded = config::load(&args, &config::process_env())?;
    crate::logging::init(&loaded.settings);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let settings = loaded.settings;
    if settings.webhook_secrets.is_empty() {
        tracing::warn!("KYCD_WEBHOOK_SECRETS is not set: every webhook delivery will be refused");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        let running = kycd_server::start_with(settings, Arc::new(SystemClock), crate::startup()).await?;
        // The one line on stdout: tools and tests read the bound address here
        // (the admin listener's, when there is one, just before it).
        let mut out = std::io::stdout().lock();
        if let Some(admin) = running.admin_addr {
            writeln!(out, "admin listening on http://{admin}")?;
        }
        writeln!(out, "listening on http://{}", running.addr)?;
        out.flush()?;
        drop(out);
        #[cfg(unix)]
        {
            let app = running.app.clone();
            tokio::spawn(async move {
                let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                    return;
                };
                while hup.recv().await.is_some() {
                    match app.reload_policy_audited("operator:sighup").await {
                        Ok(Some(version)) => tracing::info!(version, "policy reloaded"),
                        Ok(None) => tracing::info!("SIGHUP: the built-in policy is in use; nothing to reload"),
                        Err(e) => tracing::error!(error = %e, "policy reload refused; the previous policy stays active"),
                    }
                }
            });
        }
        running.run_until(shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

//! The log: to stderr, filtered by the `log` setting (`KYCD_LOG`, or
//! `RUST_LOG`; `KYCD_LOG` wins when both are set), as text or, with
//! `KYCD_LOG_FORMAT=json`, one JSON object a line. Text has ANSI colours
//! only when stderr is a terminal and `NO_COLOR` is not set.

use std::io::IsTerminal;

use kycd_server::settings::LogFormat;
use kycd_server::Settings;
use tracing_subscriber::EnvFilter;

/// A filter from the `log` setting's text; empty means `info`.
pub fn filter(text: &str) -> Result<EnvFilter, String> {
    let text = if text.trim().is_empty() { "info" } else { text };
    EnvFilter::try_new(text)
        .map_err(|_| "expected a tracing filter such as info or kycd_server=debug,info".to_owned())
}

/// Start logging as the settings say (once; later calls do nothing).
pub fn init(settings: &Settings) {
    // The settings were validated, so the filter parses; `info` otherwise.
    let filter = filter(&settings.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr on a full disk) is
        // dropped. Reporting it would go through eprintln!, which panics
        // when stderr fails: the request logging it would get no answer.
        .log_internal_errors(false);
    let _ = match settings.log_format {
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
        LogFormat::Text => builder.with_ansi(colour()).try_init(),
    };
}

fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

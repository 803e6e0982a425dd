//! Configuration layering: compiled-in defaults, then an optional TOML file
//! (`--config`, or `KYCD_CONFIG`), then `KYCD_*` environment variables, then
//! flags. Unknown keys in the file are an error; unknown `KYCD_*` variables
//! are warnings. Secrets are held in [`Secret`], whose `Debug` redacts them,
//! and only ever printed as `<hidden>`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use didit::signature::Secret;
use kycd_log::sqlite_log::Durability;
use kycd_server::Settings;
use serde::Deserialize;

/// Flags shared by `serve` and `config check`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// A TOML configuration file (see config/default.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [env: KYCD_LISTEN] [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<String>,
    /// Serve the API, console and metrics here only [env: KYCD_ADMIN_LISTEN] [default: unset].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Data directory [env: KYCD_DATA_DIR] [default: ./kycd-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Webhook freshness tolerance in seconds [env: KYCD_WEBHOOK_TOLERANCE_SECS] [default: 300].
    #[arg(long, value_name = "SECS")]
    pub webhook_tolerance_secs: Option<i64>,
    /// Accept deliveries that only pass X-Signature-Simple [env: KYCD_ACCEPT_SIMPLE_SIGNATURE].
    #[arg(long, value_name = "BOOL")]
    pub accept_simple_signature: Option<bool>,
    /// Act on sandbox and test deliveries [env: KYCD_ACT_ON_SANDBOX].
    #[arg(long, value_name = "BOOL")]
    pub act_on_sandbox: Option<bool>,
    /// `full` (a commit survives power loss) or `normal` (survives a crash) [env: KYCD_DURABILITY].
    #[arg(long, value_name = "MODE")]
    pub durability: Option<String>,
    /// (serve) Start even if the audit chain is broken; the start is itself
    /// recorded in the audit trail [env: KYCD_ALLOW_BROKEN_AUDIT].
    #[arg(long)]
    pub allow_broken_audit: bool,
}

/// The configuration file. Every key is optional; unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    header_read_timeout_secs: Option<u64>,
    body_read_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    projector_stall_secs: Option<u64>,
    data_dir: Option<PathBuf>,
    webhook_secrets: Option<Vec<String>>,
    webhook_tolerance_secs: Option<i64>,
    api_token: Option<String>,
    accept_simple_signature: Option<bool>,
    didit_api_key: Option<String>,
    didit_base_url: Option<String>,
    act_on_sandbox: Option<bool>,
    durability: Option<String>,
    policy: Option<PathBuf>,
    shadow_policy: Option<PathBuf>,
    graph_window_days: Option<u32>,
    operator_webhook_url: Option<String>,
    operator_webhook_secrets: Option<Vec<String>>,
    operator_webhook_allow_private: Option<bool>,
    writeback: Option<bool>,
    writeback_allow_loosening: Option<bool>,
    blocklist_items: Option<String>,
    step_up_workflows: Option<std::collections::BTreeMap<String, String>>,
    step_up_expiry_secs: Option<u64>,
    reconcile_interval_secs: Option<u64>,
    reconcile_after_secs: Option<u64>,
    action_max_attempts: Option<u32>,
    console_cookie_secure: Option<bool>,
    audit_key_file: Option<PathBuf>,
    audit_anchor_file: Option<PathBuf>,
}

/// Every `KYCD_*` variable kycd reads; others draw a warning.
pub const KNOWN_ENV: &[&str] = &[
    "KYCD_CONFIG",
    "KYCD_LOG",
    "KYCD_LISTEN",
    "KYCD_ADMIN_LISTEN",
    "KYCD_HEADER_READ_TIMEOUT_SECS",
    "KYCD_BODY_READ_TIMEOUT_SECS",
    "KYCD_IDLE_TIMEOUT_SECS",
    "KYCD_MAX_CONNECTIONS",
    "KYCD_PROJECTOR_STALL_SECS",
    "KYCD_DATA_DIR",
    "KYCD_WEBHOOK_SECRETS",
    "KYCD_WEBHOOK_TOLERANCE_SECS",
    "KYCD_API_TOKEN",
    "KYCD_ACCEPT_SIMPLE_SIGNATURE",
    "KYCD_DIDIT_API_KEY",
    "KYCD_DIDIT_BASE_URL",
    "KYCD_ACT_ON_SANDBOX",
    "KYCD_DURABILITY",
    "KYCD_BENCH_SECRET",
    "KYCD_POLICY",
    "KYCD_SHADOW_POLICY",
    "KYCD_GRAPH_WINDOW_DAYS",
    "KYCD_OPERATOR_WEBHOOK_URL",
    "KYCD_OPERATOR_WEBHOOK_SECRETS",
    "KYCD_OPERATOR_WEBHOOK_ALLOW_PRIVATE",
    "KYCD_WRITEBACK",
    "KYCD_WRITEBACK_ALLOW_LOOSENING",
    "KYCD_BLOCKLIST_ITEMS",
    "KYCD_STEP_UP_WORKFLOW_NFC",
    "KYCD_STEP_UP_WORKFLOW_PHONE",
    "KYCD_STEP_UP_WORKFLOW_BIOMETRIC_AUTH",
    "KYCD_STEP_UP_EXPIRY_SECS",
    "KYCD_RECONCILE_INTERVAL_SECS",
    "KYCD_RECONCILE_AFTER_SECS",
    "KYCD_ACTION_MAX_ATTEMPTS",
    "KYCD_RETRY_TIME_SCALE",
    "KYCD_CONSOLE_COOKIE_SECURE",
    "KYCD_API_URL",
    "KYCD_AUDIT_KEY_FILE",
    "KYCD_AUDIT_ANCHOR_FILE",
    "KYCD_ALLOW_BROKEN_AUDIT",
];

/// The checks a step-up can ask for, as named in `KYCD_STEP_UP_WORKFLOW_*`.
const STEP_UP_CHECKS: [&str; 3] = ["NFC", "PHONE", "BIOMETRIC_AUTH"];

fn parse_num<T: std::str::FromStr>(name: &str, v: &str) -> anyhow::Result<T> {
    v.trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{name}: expected a whole number"))
}

/// The effective settings, and warnings to log once logging is up.
pub struct Loaded {
    pub settings: Settings,
    pub warnings: Vec<String>,
}

fn parse_bool(name: &str, v: &str) -> anyhow::Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => bail!("{name}: expected true or false"),
    }
}

fn parse_durability(name: &str, v: &str) -> anyhow::Result<Durability> {
    match v.trim().to_ascii_lowercase().as_str() {
        "full" => Ok(Durability::Full),
        "normal" => Ok(Durability::Normal),
        _ => bail!("{name}: expected full or normal"),
    }
}

fn secrets(list: impl IntoIterator<Item = String>) -> Vec<Secret> {
    list.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .map(Secret::new)
        .collect()
}

/// Build the settings from every layer. `env` is passed in so tests can
/// supply their own.
pub fn load(args: &ServeArgs, env: &[(String, String)]) -> anyhow::Result<Loaded> {
    let var = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut warnings = Vec::new();
    for (name, _) in env {
        if name.starts_with("KYCD_") && !KNOWN_ENV.contains(&name.as_str()) {
            warnings.push(format!("unknown environment variable {name} is ignored"));
        }
    }
    let mut s = Settings::default();

    // The file.
    let path = args
        .config
        .clone()
        .or_else(|| var("KYCD_CONFIG").map(PathBuf::from));
    if let Some(path) = path {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("read config file {}", path.display()))?;
        let f: FileConfig =
            toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
        if let Some(v) = f.listen {
            s.listen = v;
        }
        if let Some(v) = f.admin_listen {
            s.admin_listen = Some(v);
        }
        if let Some(v) = f.header_read_timeout_secs {
            s.header_read_timeout_secs = v;
        }
        if let Some(v) = f.body_read_timeout_secs {
            s.body_read_timeout_secs = v;
        }
        if let Some(v) = f.idle_timeout_secs {
            s.idle_timeout_secs = v;
        }
        if let Some(v) = f.max_connections {
            s.max_connections = v;
        }
        if let Some(v) = f.projector_stall_secs {
            s.projector_stall_secs = v;
        }
        if let Some(v) = f.data_dir {
            s.data_dir = v;
        }
        if let Some(v) = f.webhook_secrets {
            s.webhook_secrets = secrets(v);
        }
        if let Some(v) = f.webhook_tolerance_secs {
            s.webhook_tolerance_secs = v;
        }
        if let Some(v) = f.api_token {
            s.api_token = Some(Secret::new(v));
        }
        if let Some(v) = f.accept_simple_signature {
            s.accept_simple_signature = v;
        }
        if let Some(v) = f.didit_api_key {
            s.didit_api_key = Some(Secret::new(v));
        }
        if let Some(v) = f.didit_base_url {
            s.didit_base_url = v;
        }
        if let Some(v) = f.act_on_sandbox {
            s.act_on_sandbox = v;
        }
        if let Some(v) = f.console_cookie_secure {
            s.console_cookie_secure = v;
        }
        if let Some(v) = f.durability {
            s.durability = parse_durability("durability", &v)?;
        }
        if let Some(v) = f.policy {
            s.policy = Some(v);
        }
        if let Some(v) = f.shadow_policy {
            s.shadow_policy = Some(v);
        }
        if let Some(v) = f.graph_window_days {
            s.graph_window_days = v;
        }
        if let Some(v) = f.operator_webhook_url {
            s.operator_webhook_url = Some(v);
        }
        if let Some(v) = f.operator_webhook_secrets {
            s.operator_webhook_secrets = secrets(v);
        }
        if let Some(v) = f.operator_webhook_allow_private {
            s.operator_webhook_allow_private = v;
        }
        if let Some(v) = f.writeback {
            s.writeback = v;
        }
        if let Some(v) = f.writeback_allow_loosening {
            s.writeback_allow_loosening = v;
        }
        if let Some(v) = f.blocklist_items {
            s.blocklist_items = v;
        }
        if let Some(v) = f.step_up_workflows {
            for k in v.keys() {
                if !STEP_UP_CHECKS.contains(&k.as_str()) {
                    bail!("step_up_workflows: unknown check {k:?} (NFC, PHONE or BIOMETRIC_AUTH)");
                }
            }
            s.step_up_workflows = v;
        }
        if let Some(v) = f.step_up_expiry_secs {
            s.step_up_expiry_secs = v;
        }
        if let Some(v) = f.reconcile_interval_secs {
            s.reconcile_interval_secs = v;
        }
        if let Some(v) = f.reconcile_after_secs {
            s.reconcile_after_secs = v;
        }
        if let Some(v) = f.action_max_attempts {
            s.action_max_attempts = v;
        }
        if let Some(v) = f.audit_key_file {
            s.audit.key_file = Some(v);
        }
        if let Some(v) = f.audit_anchor_file {
            s.audit.anchor_file = Some(v);
        }
    }

    // The environment.
    if let Some(v) = var("KYCD_LISTEN") {
        s.listen = v;
    }
    if let Some(v) = var("KYCD_ADMIN_LISTEN").filter(|v| !v.is_empty()) {
        s.admin_listen = Some(v);
    }
    if let Some(v) = var("KYCD_HEADER_READ_TIMEOUT_SECS") {
        s.header_read_timeout_secs = parse_num("KYCD_HEADER_READ_TIMEOUT_SECS", &v)?;
    }
    if let Some(v) = var("KYCD_BODY_READ_TIMEOUT_SECS") {
        s.body_read_timeout_secs = parse_num("KYCD_BODY_READ_TIMEOUT_SECS", &v)?;
    }
    if let Some(v) = var("KYCD_IDLE_TIMEOUT_SECS") {
        s.idle_timeout_secs = parse_num("KYCD_IDLE_TIMEOUT_SECS", &v)?;
    }
    if let Some(v) = var("KYCD_MAX_CONNECTIONS") {
        s.max_connections = parse_num("KYCD_MAX_CONNECTIONS", &v)?;
    }
    if let Some(v) = var("KYCD_PROJECTOR_STALL_SECS") {
        s.projector_stall_secs = parse_num("KYCD_PROJECTOR_STALL_SECS", &v)?;
    }
    if let Some(v) = var("KYCD_DATA_DIR") {
        s.data_dir = PathBuf::from(v);
    }
    if let Some(v) = var("KYCD_WEBHOOK_SECRETS") {
        s.webhook_secrets = secrets(v.split(',').map(str::to_owned));
    }
    if let Some(v) = var("KYCD_WEBHOOK_TOLERANCE_SECS") {
        s.webhook_tolerance_secs = v
            .trim()
            .parse()
            .context("KYCD_WEBHOOK_TOLERANCE_SECS: expected a whole number of seconds")?;
    }
    if let Some(v) = var("KYCD_API_TOKEN").filter(|v| !v.is_empty()) {
        s.api_token = Some(Secret::new(v));
    }
    if let Some(v) = var("KYCD_ACCEPT_SIMPLE_SIGNATURE") {
        s.accept_simple_signature = parse_bool("KYCD_ACCEPT_SIMPLE_SIGNATURE", &v)?;
    }
    if let Some(v) = var("KYCD_DIDIT_API_KEY").filter(|v| !v.is_empty()) {
        s.didit_api_key = Some(Secret::new(v));
    }
    if let Some(v) = var("KYCD_DIDIT_BASE_URL") {
        s.didit_base_url = v;
    }
    if let Some(v) = var("KYCD_ACT_ON_SANDBOX") {
        s.act_on_sandbox = parse_bool("KYCD_ACT_ON_SANDBOX", &v)?;
    }
    if let Some(v) = var("KYCD_POLICY").filter(|v| !v.is_empty()) {
        s.policy = Some(PathBuf::from(v));
    }
    if let Some(v) = var("KYCD_SHADOW_POLICY").filter(|v| !v.is_empty()) {
        s.shadow_policy = Some(PathBuf::from(v));
    }
    if let Some(v) = var("KYCD_GRAPH_WINDOW_DAYS") {
        s.graph_window_days = v
            .trim()
            .parse()
            .context("KYCD_GRAPH_WINDOW_DAYS: expected a whole number of days")?;
    }
    if let Some(v) = var("KYCD_DURABILITY") {
        s.durability = parse_durability("KYCD_DURABILITY", &v)?;
    }
    if let Some(v) = var("KYCD_OPERATOR_WEBHOOK_URL").filter(|v| !v.is_empty()) {
        s.operator_webhook_url = Some(v);
    }
    if let Some(v) = var("KYCD_OPERATOR_WEBHOOK_SECRETS") {
        s.operator_webhook_secrets = secrets(v.split(',').map(str::to_owned));
    }
    if let Some(v) = var("KYCD_OPERATOR_WEBHOOK_ALLOW_PRIVATE") {
        s.operator_webhook_allow_private = parse_bool("KYCD_OPERATOR_WEBHOOK_ALLOW_PRIVATE", &v)?;
    }
    if let Some(v) = var("KYCD_WRITEBACK") {
        s.writeback = parse_bool("KYCD_WRITEBACK", &v)?;
    }
    if let Some(v) = var("KYCD_WRITEBACK_ALLOW_LOOSENING") {
        s.writeback_allow_loosening = parse_bool("KYCD_WRITEBACK_ALLOW_LOOSENING", &v)?;
    }
    if let Some(v) = var("KYCD_BLOCKLIST_ITEMS") {
        s.blocklist_items = v;
    }
    for check in STEP_UP_CHECKS {
        if let Some(v) = var(&format!("KYCD_STEP_UP_WORKFLOW_{check}")).filter(|v| !v.is_empty()) {
            s.step_up_workflows.insert(check.to_owned(), v);
        }
    }
    if let Some(v) = var("KYCD_STEP_UP_EXPIRY_SECS") {
        s.step_up_expiry_secs = parse_num("KYCD_STEP_UP_EXPIRY_SECS", &v)?;
    }
    if let Some(v) = var("KYCD_RECONCILE_INTERVAL_SECS") {
        s.reconcile_interval_secs = parse_num("KYCD_RECONCILE_INTERVAL_SECS", &v)?;
    }
    if let Some(v) = var("KYCD_RECONCILE_AFTER_SECS") {
        s.reconcile_after_secs = parse_num("KYCD_RECONCILE_AFTER_SECS", &v)?;
    }
    if let Some(v) = var("KYCD_ACTION_MAX_ATTEMPTS") {
        s.action_max_attempts = parse_num("KYCD_ACTION_MAX_ATTEMPTS", &v)?;
    }
    if let Some(v) = var("KYCD_CONSOLE_COOKIE_SECURE") {
        s.console_cookie_secure = parse_bool("KYCD_CONSOLE_COOKIE_SECURE", &v)?;
    }
    if let Some(v) = var("KYCD_AUDIT_KEY_FILE").filter(|v| !v.is_empty()) {
        s.audit.key_file = Some(PathBuf::from(v));
    }
    if let Some(v) = var("KYCD_AUDIT_ANCHOR_FILE").filter(|v| !v.is_empty()) {
        s.audit.anchor_file = Some(PathBuf::from(v));
    }
    // Not a file setting on purpose: serving over a broken chain is a
    // decision for one start, not a standing configuration.
    if let Some(v) = var("KYCD_ALLOW_BROKEN_AUDIT") {
        s.audit.allow_broken = parse_bool("KYCD_ALLOW_BROKEN_AUDIT", &v)?;
    }
    if let Some(v) = var("KYCD_RETRY_TIME_SCALE") {
        s.retry_time_scale = v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x > 0.0)
            .context("KYCD_RETRY_TIME_SCALE: expected a positive number")?;
    }

    // The flags.
    if let Some(v) = &args.listen {
        s.listen = v.clone();
    }
    if let Some(v) = &args.admin_listen {
        s.admin_listen = Some(v.clone());
    }
    if let Some(v) = &args.data_dir {
        s.data_dir = v.clone();
    }
    if let Some(v) = args.webhook_tolerance_secs {
        s.webhook_tolerance_secs = v;
    }
    if let Some(v) = args.accept_simple_signature {
        s.accept_simple_signature = v;
    }
    if let Some(v) = args.act_on_sandbox {
        s.act_on_sandbox = v;
    }
    if let Some(v) = &args.durability {
        s.durability = parse_durability("--durability", v)?;
    }
    if args.allow_broken_audit {
        s.audit.allow_broken = true;
    }

    kycd_engine::actions::BlocklistItems::parse(&s.blocklist_items)
        .map_err(|e| anyhow::anyhow!("blocklist items: {e}"))?;
    for secret in &s.operator_webhook_secrets {
        kycd_server::operator_webhook::SigningSecret::parse(secret.expose()).map_err(|_| {
            anyhow::anyhow!("operator webhook secrets must each be whsec_ followed by base64")
        })?;
    }
    if s.operator_webhook_url.is_some() && s.operator_webhook_secrets.is_empty() {
        bail!("KYCD_OPERATOR_WEBHOOK_URL needs KYCD_OPERATOR_WEBHOOK_SECRETS (whsec_...) to sign with");
    }
    for (name, secs) in [
        ("header read timeout", s.header_read_timeout_secs),
        ("body read timeout", s.body_read_timeout_secs),
        ("idle timeout", s.idle_timeout_secs),
        ("projector stall limit", s.projector_stall_secs),
    ] {
        if secs == 0 {
            bail!("{name} must be at least 1 second");
        }
    }
    if s.max_connections == 0 {
        bail!("max connections must be at least 1");
    }
    // Port 0 picks a free port for each, so the same text is fine there.
    if s.admin_listen.as_deref() == Some(s.listen.as_str()) && !s.listen.ends_with(":0") {
        bail!("the admin listener must have an address of its own, not the listen address");
    }
    if s.action_max_attempts == 0 {
        bail!("action max attempts must be at least 1");
    }
    if s.webhook_tolerance_secs <= 0 {
        bail!("webhook tolerance must be a positive number of seconds");
    }
    if !s.didit_base_url.starts_with("http://") && !s.didit_base_url.starts_with("https://") {
        bail!("didit base url must start with http:// or https://");
    }
    Ok(Loaded {
        settings: s,
        warnings,
    })
}

pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

fn hidden(present: bool) -> &'static str {
    if present {
        "\"<hidden>\""
    } else {
        "# not set"
    }
}

/// The effective configuration as TOML, secrets hidden.
pub fn render(s: &Settings) -> String {
    let q = |v: &str| toml::Value::String(v.to_owned()).to_string();
    let durability = match s.durability {
        Durability::Full => "full",
        Durability::Normal => "normal",
    };
    let mut out = String::new();
    out.push_str(&format!("listen = {}\n", q(&s.listen)));
    match &s.admin_listen {
        Some(a) => out.push_str(&format!("admin_listen = {}\n", q(a))),
        None => out.push_str("admin_listen = # not set\n"),
    }
    out.push_str(&format!(
        "header_read_timeout_secs = {}\n",
        s.header_read_timeout_secs
    ));
    out.push_str(&format!(
        "body_read_timeout_secs = {}\n",
        s.body_read_timeout_secs
    ));
    out.push_str(&format!("idle_timeout_secs = {}\n", s.idle_timeout_secs));
    out.push_str(&format!("max_connections = {}\n", s.max_connections));
    out.push_str(&format!(
        "projector_stall_secs = {}\n",
        s.projector_stall_secs
    ));
    out.push_str(&format!(
        "data_dir = {}\n",
        q(&s.data_dir.to_string_lossy())
    ));
    out.push_str(&format!(
        "webhook_secrets = [{}]\n",
        vec!["\"<hidden>\""; s.webhook_secrets.len()].join(", ")
    ));
    out.push_str(&format!(
        "webhook_tolerance_secs = {}\n",
        s.webhook_tolerance_secs
    ));
    out.push_str(&format!("api_token = {}\n", hidden(s.api_token.is_some())));
    out.push_str(&format!(
        "accept_simple_signature = {}\n",
        s.accept_simple_signature
    ));
    out.push_str(&format!(
        "didit_api_key = {}\n",
        hidden(s.didit_api_key.is_some())
    ));
    out.push_str(&format!("didit_base_url = {}\n", q(&s.didit_base_url)));
    out.push_str(&format!("act_on_sandbox = {}\n", s.act_on_sandbox));
    out.push_str(&format!(
        "console_cookie_secure = {}\n",
        s.console_cookie_secure
    ));
    out.push_str(&format!("durability = {}\n", q(durability)));
    let path = |p: &Option<PathBuf>| match p {
        Some(p) => q(&p.to_string_lossy()),
        None => "# not set".to_owned(),
    };
    out.push_str(&format!("policy = {}\n", path(&s.policy)));
    out.push_str(&format!("shadow_policy = {}\n", path(&s.shadow_policy)));
    out.push_str(&format!("graph_window_days = {}\n", s.graph_window_days));
    match &s.operator_webhook_url {
        Some(u) => out.push_str(&format!("operator_webhook_url = {}\n", q(u))),
        None => out.push_str("operator_webhook_url = # not set\n"),
    }
    out.push_str(&format!(
        "operator_webhook_secrets = [{}]\n",
        vec!["\"<hidden>\""; s.operator_webhook_secrets.len()].join(", ")
    ));
    out.push_str(&format!(
        "operator_webhook_allow_private = {}\n",
        s.operator_webhook_allow_private
    ));
    out.push_str(&format!("writeback = {}\n", s.writeback));
    out.push_str(&format!(
        "writeback_allow_loosening = {}\n",
        s.writeback_allow_loosening
    ));
    out.push_str(&format!("blocklist_items = {}\n", q(&s.blocklist_items)));
    out.push_str(&format!(
        "step_up_expiry_secs = {}\n",
        s.step_up_expiry_secs
    ));
    out.push_str(&format!(
        "reconcile_interval_secs = {}\n",
        s.reconcile_interval_secs
    ));
    out.push_str(&format!(
        "reconcile_after_secs = {}\n",
        s.reconcile_after_secs
    ));
    out.push_str(&format!(
        "action_max_attempts = {}\n",
        s.action_max_attempts
    ));
    out.push_str(&format!(
        "audit_key_file = {}\n",
        q(&s.audit.key_path(&s.data_dir).to_string_lossy())
    ));
    out.push_str(&format!(
        "audit_anchor_file = {}\n",
        path(&s.audit.anchor_file)
    ));
    out.push_str("[step_up_workflows]\n");
    for (check, wf) in &s.step_up_workflows {
        out.push_str(&format!("{check} = {}\n", q(wf)));
    }
    out
}

pub fn check(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let loaded = load(&args, &process_env())?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", render(&loaded.settings));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn layers_apply_defaults_then_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kycd.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/from/file\"\nwebhook_tolerance_secs = 60\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            listen: Some("127.0.0.1:3".into()),
            ..Default::default()
        };
        let l = load(
            &args,
            &env(&[
                ("KYCD_LISTEN", "127.0.0.1:2"),
                ("KYCD_DATA_DIR", "/from/env"),
            ]),
        )
        .unwrap();
        assert_eq!(l.settings.listen, "127.0.0.1:3");
        assert_eq!(l.settings.data_dir, PathBuf::from("/from/env"));
        assert_eq!(l.settings.webhook_tolerance_secs, 60);
        let d = load(&ServeArgs::default(), &[]).unwrap().settings;
        assert_eq!(d.listen, "127.0.0.1:8080");
        assert_eq!(d.data_dir, PathBuf::from("./kycd-data"));
        assert_eq!(d.didit_base_url, "https://verification.didit.me");
        assert!(!d.accept_simple_signature && !d.act_on_sandbox);
    }

    #[test]
    fn unknown_file_keys_are_errors_and_unknown_env_vars_are_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kycd.toml");
        std::fs::write(&file, "listne = \"x\"\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            ..Default::default()
        };
        let e = load(&args, &[]).err().unwrap();
        assert!(format!("{e:#}").contains("listne"), "{e:#}");
        let l = load(
            &ServeArgs::default(),
            &env(&[("KYCD_LISTN", "x"), ("OTHER", "y")]),
        )
        .unwrap();
        assert_eq!(
            l.warnings,
            vec!["unknown environment variable KYCD_LISTN is ignored"]
        );
    }

    #[test]
    fn secrets_are_split_and_never_rendered() {
        let l = load(
            &ServeArgs::default(),
            &env(&[
                ("KYCD_WEBHOOK_SECRETS", "current-secret, previous-secret"),
                ("KYCD_API_TOKEN", "tok-123456"),
                ("KYCD_DIDIT_API_KEY", "key-abcdef"),
            ]),
        )
        .unwrap();
        assert_eq!(l.settings.webhook_secrets.len(), 2);
        assert_eq!(l.settings.webhook_secrets[0].expose(), "current-secret");
        let shown = format!("{}{:?}", render(&l.settings), l.settings);
        for secret in [
            "current-secret",
            "previous-secret",
            "tok-123456",
            "key-abcdef",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked");
        }
        assert!(shown.contains("webhook_secrets = [\"<hidden>\", \"<hidden>\"]"));
    }

    #[test]
    fn the_reference_config_file_loads_with_the_defaults() {
        let path = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/default.toml"
        ));
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        let s = load(&args, &[]).unwrap().settings;
        let d = Settings::default();
        assert_eq!(
            (s.listen, s.data_dir, s.graph_window_days),
            (d.listen, d.data_dir, d.graph_window_days)
        );
        assert_eq!(s.webhook_tolerance_secs, d.webhook_tolerance_secs);
        assert_eq!(
            (
                s.admin_listen,
                s.header_read_timeout_secs,
                s.body_read_timeout_secs,
                s.idle_timeout_secs,
                s.max_connections,
                s.projector_stall_secs
            ),
            (
                d.admin_listen,
                d.header_read_timeout_secs,
                d.body_read_timeout_secs,
                d.idle_timeout_secs,
                d.max_connections,
                d.projector_stall_secs
            )
        );
    }

    #[test]
    fn serving_limits_layer_and_are_rendered() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kycd.toml");
        std::fs::write(
            &file,
            "admin_listen = \"127.0.0.1:9\"\nheader_read_timeout_secs = 3\nmax_connections = 50\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            ..Default::default()
        };
        let s = load(
            &args,
            &env(&[
                ("KYCD_IDLE_TIMEOUT_SECS", "7"),
                ("KYCD_BODY_READ_TIMEOUT_SECS", "4"),
                ("KYCD_MAX_CONNECTIONS", "60"),
                ("KYCD_PROJECTOR_STALL_SECS", "9"),
            ]),
        )
        .unwrap()
        .settings;
        assert_eq!(s.admin_listen.as_deref(), Some("127.0.0.1:9"));
        assert_eq!(
            (
                s.header_read_timeout_secs,
                s.body_read_timeout_secs,
                s.idle_timeout_secs,
                s.max_connections,
                s.projector_stall_secs
            ),
            (3, 4, 7, 60, 9)
        );
        let shown = render(&s);
        for line in [
            "admin_listen = \"127.0.0.1:9\"",
            "header_read_timeout_secs = 3",
            "body_read_timeout_secs = 4",
            "idle_timeout_secs = 7",
            "max_connections = 60",
            "projector_stall_secs = 9",
        ] {
            assert!(shown.contains(line), "{line} missing from\n{shown}");
        }
        let d = load(&ServeArgs::default(), &[]).unwrap().settings;
        assert_eq!(d.admin_listen, None);
        assert_eq!(
            (
                d.header_read_timeout_secs,
                d.body_read_timeout_secs,
                d.idle_timeout_secs,
                d.max_connections
            ),
            (10, 30, 60, 1024)
        );
        for (k, v) in [
            ("KYCD_IDLE_TIMEOUT_SECS", "0"),
            ("KYCD_MAX_CONNECTIONS", "0"),
            ("KYCD_HEADER_READ_TIMEOUT_SECS", "soon"),
            ("KYCD_ADMIN_LISTEN", "127.0.0.1:8080"),
        ] {
            assert!(
                load(&ServeArgs::default(), &env(&[(k, v)])).is_err(),
                "{k}={v}"
            );
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (k, v) in [
            ("KYCD_ACCEPT_SIMPLE_SIGNATURE", "maybe"),
            ("KYCD_WEBHOOK_TOLERANCE_SECS", "five"),
            ("KYCD_DURABILITY", "sometimes"),
            ("KYCD_DIDIT_BASE_URL", "ftp://x"),
        ] {
            let e = load(&ServeArgs::default(), &env(&[(k, v)])).err().unwrap();
            let msg = format!("{e:#}").to_lowercase();
            assert!(
                msg.contains(&k.to_lowercase()) || msg.contains("base url"),
                "{msg}"
            );
        }
    }
}

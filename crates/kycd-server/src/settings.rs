//! What the server is configured with. Layering (defaults, file,
//! environment, flags) is the binary's job; this is the result.

use std::path::PathBuf;

use didit::signature::Secret;
use kycd_log::sqlite_log::Durability;

/// The effective settings of a server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `KYCD_LISTEN`, default `127.0.0.1:8080`.
    pub listen: String,
    /// `KYCD_ADMIN_LISTEN`: when set, the API, the console and `/metrics`
    /// are served here only, and `listen` serves `POST /webhooks/didit`,
    /// `/healthz` and `/readyz` alone. Unset: `listen` serves everything.
    pub admin_listen: Option<String>,
    /// `KYCD_HEADER_READ_TIMEOUT_SECS`, default 10: a request's line and
    /// headers must arrive within this long of their first byte, or the
    /// connection is closed.
    pub header_read_timeout_secs: u64,
    /// `KYCD_BODY_READ_TIMEOUT_SECS`, default 30: a request's body must
    /// arrive within this long of its headers, or it is answered 408.
    pub body_read_timeout_secs: u64,
    /// `KYCD_IDLE_TIMEOUT_SECS`, default 60: a connection with no request in
    /// flight and nothing arriving is closed after this long.
    pub idle_timeout_secs: u64,
    /// `KYCD_MAX_CONNECTIONS`, default 1024: open connections per listener.
    /// At the cap a new connection takes the place of the oldest one with
    /// no request in flight; lowered at start-up to what the process's
    /// file-descriptor limit leaves room for.
    pub max_connections: usize,
    /// `KYCD_PROJECTOR_STALL_SECS`, default 60: the projector counts as
    /// stuck (and `/readyz` as not ready) when events are waiting for it
    /// and it has applied none for this long.
    pub projector_stall_secs: u64,
    /// `KYCD_DATA_DIR`, default `./kycd-data`.
    pub data_dir: PathBuf,
    /// `KYCD_WEBHOOK_SECRETS`: all are accepted, the first is current.
    pub webhook_secrets: Vec<Secret>,
    /// `KYCD_WEBHOOK_TOLERANCE_SECS`, default 300.
    pub webhook_tolerance_secs: i64,
    /// `KYCD_API_TOKEN`: bearer token for `/api/v1`; without one the API
    /// refuses every request.
    pub api_token: Option<Secret>,
    /// `KYCD_ACCEPT_SIMPLE_SIGNATURE`, default false.
    pub accept_simple_signature: bool,
    /// `KYCD_DIDIT_API_KEY`: without it, whatever needs Didit's API waits.
    pub didit_api_key: Option<Secret>,
    /// `KYCD_DIDIT_BASE_URL`, default `https://verification.didit.me`.
    pub didit_base_url: String,
    /// `KYCD_ACT_ON_SANDBOX`, default false.
    pub act_on_sandbox: bool,
    /// `KYCD_DURABILITY`: `full` (default; a commit survives power loss) or
    /// `normal` (survives a process crash; the last commits may be lost on
    /// power loss, for more throughput on slow disks).
    pub durability: Durability,
    /// Largest webhook body accepted, default 1 MiB.
    pub max_body_bytes: usize,
    /// `KYCD_POLICY`: the active policy file; the built-in default when unset.
    pub policy: Option<PathBuf>,
    /// `KYCD_SHADOW_POLICY`: a policy evaluated beside the active one, whose
    /// decisions are stored apart and never acted on.
    pub shadow_policy: Option<PathBuf>,
    /// `KYCD_GRAPH_WINDOW_DAYS`: how far back a shared document, device,
    /// IP, phone or email counts in the identity graph, default 180.
    pub graph_window_days: u32,
    /// A size cap for the event log file; when it is full the intake
    /// answers 503 (so Didit retries) instead of filling the disk.
    pub max_log_bytes: Option<u64>,
    /// `KYCD_OPERATOR_WEBHOOK_URL`: where decision webhooks go; none when unset.
    pub operator_webhook_url: Option<String>,
    /// `KYCD_OPERATOR_WEBHOOK_SECRETS`: comma-separated `whsec_...`; each signs.
    pub operator_webhook_secrets: Vec<Secret>,
    /// `KYCD_OPERATOR_WEBHOOK_ALLOW_PRIVATE`, default false: allow loopback
    /// and private addresses (tests, an app on the same host).
    pub operator_webhook_allow_private: bool,
    /// `KYCD_WRITEBACK`, default true: write decisions back to Didit and
    /// create step-up sessions (needs `KYCD_DIDIT_API_KEY`; until then the
    /// actions wait).
    pub writeback: bool,
    /// `KYCD_WRITEBACK_ALLOW_LOOSENING`, default false: let automatic
    /// write-back approve a session Didit declined or sent to review.
    pub writeback_allow_loosening: bool,
    /// `KYCD_BLOCKLIST_ITEMS`, default `face,document`: what `block` puts
    /// on Didit's blocklist (any of face, document, phone, email).
    pub blocklist_items: String,
    /// `KYCD_STEP_UP_WORKFLOW_NFC`, `..._PHONE`, `..._BIOMETRIC_AUTH`: the
    /// Didit workflow each step-up check runs on.
    pub step_up_workflows: std::collections::BTreeMap<String, String>,
    /// `KYCD_STEP_UP_EXPIRY_SECS`, default 86400: how long a customer has
    /// to complete a step-up before the policy decides without it.
    pub step_up_expiry_secs: u64,
    /// `KYCD_RECONCILE_INTERVAL_SECS`, default 60 (0: never on its own):
    /// how often kycd asks Didit about sessions it has not heard of or
    /// that went quiet.
    pub reconcile_interval_secs: u64,
    /// `KYCD_RECONCILE_AFTER_SECS`, default 900: a session unfinished for
    /// this long without a delivery is fetched from Didit.
    pub reconcile_after_secs: u64,
    /// `KYCD_ACTION_MAX_ATTEMPTS`, default 10: attempts before a Didit
    /// action goes to the dead-letter list.
    pub action_max_attempts: u32,
    /// `KYCD_RETRY_TIME_SCALE`, default 1: divides every retry delay and
    /// the reconciliation and expiry clocks (demos and tests run faster).
    pub retry_time_scale: f64,
    /// `KYCD_CONSOLE_COOKIE_SECURE`, default true: mark the console's
    /// cookies `Secure`. Browsers keep such cookies over HTTPS and on
    /// loopback addresses only; turn it off only to try the console over
    /// plain HTTP on another address.
    pub console_cookie_secure: bool,
    /// The audit trail's key and anchors: `KYCD_AUDIT_KEY_FILE`,
    /// `KYCD_AUDIT_ANCHOR_FILE`, `--allow-broken-audit`.
    pub audit: kycd_log::anchor::AuditOptions,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./kycd-data";
pub const DEFAULT_DIDIT_BASE_URL: &str = "https://verification.didit.me";
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_BODY_READ_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_PROJECTOR_STALL_SECS: u64 = 60;

impl Settings {
    /// `ms` of real time under [`Settings::retry_time_scale`].
    pub fn scaled_ms(&self, ms: f64) -> i64 {
        scale_ms(ms, self.retry_time_scale)
    }
}

/// `ms` divided by `scale` (a non-positive scale counts as 1), at least 1 ms.
pub fn scale_ms(ms: f64, scale: f64) -> i64 {
    let scale = if scale > 0.0 { scale } else { 1.0 };
    (ms / scale).round().max(1.0) as i64
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            admin_listen: None,
            header_read_timeout_secs: DEFAULT_HEADER_READ_TIMEOUT_SECS,
            body_read_timeout_secs: DEFAULT_BODY_READ_TIMEOUT_SECS,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            projector_stall_secs: DEFAULT_PROJECTOR_STALL_SECS,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            webhook_secrets: Vec::new(),
            webhook_tolerance_secs: didit::signature::DEFAULT_TOLERANCE_SECS,
            api_token: None,
            accept_simple_signature: false,
            didit_api_key: None,
            didit_base_url: DEFAULT_DIDIT_BASE_URL.to_owned(),
            act_on_sandbox: false,
            durability: Durability::Full,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_log_bytes: None,
            policy: None,
            shadow_policy: None,
            graph_window_days: 180,
            operator_webhook_url: None,
            operator_webhook_secrets: Vec::new(),
            operator_webhook_allow_private: false,
            writeback: true,
            writeback_allow_loosening: false,
            blocklist_items: "face,document".to_owned(),
            step_up_workflows: std::collections::BTreeMap::new(),
            step_up_expiry_secs: 86_400,
            reconcile_interval_secs: 60,
            reconcile_after_secs: 900,
            action_max_attempts: 10,
            retry_time_scale: 1.0,
            console_cookie_secure: true,
            audit: kycd_log::anchor::AuditOptions::default(),
        }
    }
}

//! What the server is configured with: every setting, declared once.
//!
//! The [`settings!`] table below is the only place a setting is declared.
//! From each entry come: the [`Settings`] field (its type and doc comment),
//! the configuration file key (the field's name), the `KYCD_*` environment
//! variable, the command-line flag where there is one, the default, and the
//! help text (the doc comment), which `kycd` turns into `--help`,
//! `config/default.toml` (`kycd config default`), `docs/settings.md`
//! (`kycd config docs`) and `kycd config check` (the effective
//! configuration as TOML, secrets hidden, with where each value came from).
//! The layering itself (defaults, file, environment, flags) is in the
//! binary's `config` module, and works on [`SETTINGS`] alone.
//!
//! Why a table of our own rather than figment or confique: both would add
//! crates and a derive to the build for less than kycd needs. Neither
//! declares flags, so clap would still carry a second list; figment does not
//! write a template, and confique does not say where a value came from,
//! which `config check` prints. And kycd's public spellings predate them:
//! a map spread over one variable per entry (`KYCD_STEP_UP_WORKFLOW_NFC`),
//! comma-separated secret lists, booleans spelled `yes`/`on`/`1`, empty
//! optional variables meaning unset, a setting that is deliberately not a
//! file key (`KYCD_ALLOW_BROKEN_AUDIT`). Each of those would be a custom
//! deserializer there; here they are the [`Value`] impls below, about a
//! hundred lines, and the table costs nothing to build.
//!
//! # Adding a setting
//!
//! Add one entry to the table: a doc comment (the help text operators
//! read, first paragraph is the one-line summary), `name: Type = default,`
//! and its [`Meta`], at least `Meta::env("KYCD_NAME")`, with `.flag(..)`,
//! `.secret()`, `.example(..)` as needed. If `Type` is new, implement
//! [`Value`] for it. Then regenerate the checked-in files (the tests fail
//! until they match):
//!
//! ```sh
//! cargo run -p kycd -- config default > config/default.toml
//! cargo run -p kycd -- config docs > docs/settings.md
//! ```
//!
//! Checks that involve more than one setting, or a range, go in the
//! binary's `config::validate`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use didit::signature::Secret;
use kycd_log::sqlite_log::Durability;

pub use crate::proxy::{PublicUrl, TrustedProxies};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./kycd-data";
pub const DEFAULT_DATABASE_MAX_CONNECTIONS: u32 = 16;
pub const DEFAULT_DIDIT_BASE_URL: &str = "https://verification.didit.me";
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_BODY_READ_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_PROJECTOR_STALL_SECS: u64 = 60;

/// How a setting is spelled outside the code.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// The `KYCD_*` variable. For a map setting ([`Meta::entries`]), the
    /// prefix of one variable per entry.
    pub env: &'static str,
    /// The flag's long name (without `--`), when there is one.
    pub flag: Option<&'static str>,
    /// The flag's value name; `None` with a flag: a switch that sets true.
    pub value_name: Option<&'static str>,
    /// Never printed: `config check` shows `<hidden>` in a comment.
    pub secret: bool,
    /// A key of the configuration file (all but a few are).
    pub file: bool,
    /// A TOML value shown (commented out) in `config/default.toml` when the
    /// default is unset.
    pub example: Option<&'static str>,
    /// The keys a map setting accepts; entry `K` is also `{env}{K}`.
    pub entries: &'static [&'static str],
    /// Another variable read for the same setting, below `env`: when both
    /// are set, `env` wins.
    pub alias: Option<&'static str>,
}

impl Meta {
    /// A setting read from the file key and the `env` variable.
    pub const fn env(env: &'static str) -> Self {
        Self {
            env,
            flag: None,
            value_name: None,
            secret: false,
            file: true,
            example: None,
            entries: &[],
            alias: None,
        }
    }
    /// Also a flag, `--name VALUE`.
    pub const fn flag(mut self, name: &'static str, value_name: &'static str) -> Self {
        self.flag = Some(name);
        self.value_name = Some(value_name);
        self
    }
    /// Also a flag, `--name`, that sets a boolean true.
    pub const fn switch(mut self, name: &'static str) -> Self {
        self.flag = Some(name);
        self.value_name = None;
        self
    }
    pub const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }
    /// Not a key of the configuration file: the environment and flag only.
    pub const fn not_in_file(mut self) -> Self {
        self.file = false;
        self
    }
    pub const fn example(mut self, toml: &'static str) -> Self {
        self.example = Some(toml);
        self
    }
    pub const fn entries(mut self, keys: &'static [&'static str]) -> Self {
        self.entries = keys;
        self
    }
    pub const fn alias(mut self, env: &'static str) -> Self {
        self.alias = Some(env);
        self
    }
}

/// One declared setting, with its value reached through function pointers
/// so that the layering can treat every setting alike.
pub struct Setting {
    /// The file key, and the field of [`Settings`].
    pub key: &'static str,
    /// The doc comment's lines.
    help: &'static [&'static str],
    pub meta: Meta,
    /// What a valid value looks like, for error messages.
    pub expected: &'static str,
    /// The value as TOML; `None` when unset. Secrets come out `<hidden>`.
    pub get: fn(&Settings) -> Option<toml::Value>,
    /// Set from the environment or a flag; `Ok(false)`: the text means
    /// unset (an empty optional value), nothing changed.
    pub set_text: fn(&mut Settings, &str) -> Result<bool, String>,
    /// Set from the file.
    pub set_toml: fn(&mut Settings, &toml::Value, &Meta) -> Result<(), String>,
    /// Set one entry of a map setting from its variable.
    pub set_entry: fn(&mut Settings, &str, &str) -> Result<bool, String>,
}

impl Setting {
    /// The help text, one line per doc comment line.
    pub fn help(&self) -> String {
        let lines: Vec<&str> = self
            .help
            .iter()
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .collect();
        lines.join("\n").trim().to_owned()
    }

    /// The help text's first paragraph on one line.
    pub fn summary(&self) -> String {
        let help = self.help();
        let first = help.split("\n\n").next().unwrap_or("");
        first.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// Every variable this setting reads.
    pub fn env_names(&self) -> Vec<String> {
        if self.meta.entries.is_empty() {
            vec![self.meta.env.to_owned()]
        } else {
            self.meta
                .entries
                .iter()
                .map(|k| format!("{}{k}", self.meta.env))
                .collect()
        }
    }
}

/// The setting with this file key.
pub fn setting(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

macro_rules! settings {
    (
        $(
            $(#[doc = $doc:literal])*
            $name:ident: $ty:ty = $default:expr, $meta:expr;
        )*
        // Fields the server has that are not configured (tests set them).
        @internal {
            $(
                $(#[doc = $idoc:literal])*
                $iname:ident: $ity:ty = $idefault:expr;
            )*
        }
    ) => {
        /// The effective settings of a server.
        #[derive(Debug, Clone)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $name: $ty, )*
            $( $(#[doc = $idoc])* pub $iname: $ity, )*
        }

        impl Default for Settings {
            fn default() -> Self {
                Self {
                    $( $name: $default, )*
                    $( $iname: $idefault, )*
                }
            }
        }

        /// Every setting, in the order `config/default.toml` lists them.
        pub static SETTINGS: &[Setting] = &[
            $(
                Setting {
                    key: stringify!($name),
                    help: &[$($doc),*],
                    meta: $meta,
                    expected: <$ty as Value>::EXPECTED,
                    get: |s| Value::to_toml(&s.$name),
                    set_text: |s, text| match <$ty as Value>::from_text(text)? {
                        Some(v) => {
                            s.$name = v;
                            Ok(true)
                        }
                        None => Ok(false),
                    },
                    set_toml: |s, v, meta| {
                        s.$name = <$ty as Value>::from_toml(v, meta)?;
                        Ok(())
                    },
                    set_entry: |s, key, text| Value::set_entry(&mut s.$name, key, text),
                },
            )*
        ];
    };
}

settings! {
    /// Address of the HTTP server (webhook intake, API, console, health,
    /// metrics).
    listen: String = DEFAULT_LISTEN.to_owned(),
        Meta::env("KYCD_LISTEN").flag("listen", "ADDR");

    /// A second address for the API (/api/v1), the review console and
    /// /metrics. When set, those are served there only, and `listen` serves
    /// POST /webhooks/didit, /healthz and /readyz alone: the port open to
    /// Didit offers nothing else. Unset: `listen` serves everything.
    admin_listen: Option<String> = None,
        Meta::env("KYCD_ADMIN_LISTEN").flag("admin-listen", "ADDR").example("\"127.0.0.1:8081\"");

    /// A request's line and headers must arrive within this many seconds of
    /// their first byte, or the connection is closed.
    header_read_timeout_secs: u64 = DEFAULT_HEADER_READ_TIMEOUT_SECS,
        Meta::env("KYCD_HEADER_READ_TIMEOUT_SECS");

    /// A request's body must arrive within this many seconds of its
    /// headers, or it is answered 408 and the connection closed.
    body_read_timeout_secs: u64 = DEFAULT_BODY_READ_TIMEOUT_SECS,
        Meta::env("KYCD_BODY_READ_TIMEOUT_SECS");

    /// A connection with no request in flight and nothing arriving is
    /// closed after this many seconds.
    idle_timeout_secs: u64 = DEFAULT_IDLE_TIMEOUT_SECS,
        Meta::env("KYCD_IDLE_TIMEOUT_SECS");

    /// Open connections per listener. At the cap a new connection takes the
    /// place of the oldest one with no request in flight (a client still
    /// trickling its headers, or an idle keep-alive one), so slow clients
    /// cannot keep deliveries out; when every connection has a request in
    /// flight, new ones wait in the backlog. kycd raises its file-descriptor
    /// limit toward the hard limit as far as the cap needs, and lowers the
    /// cap (with a warning) to what the limit leaves room for.
    max_connections: usize = DEFAULT_MAX_CONNECTIONS,
        Meta::env("KYCD_MAX_CONNECTIONS");

    /// /readyz reports the projector stuck when events are waiting for it
    /// and it has applied none for this many seconds.
    projector_stall_secs: u64 = DEFAULT_PROJECTOR_STALL_SECS,
        Meta::env("KYCD_PROJECTOR_STALL_SECS");

    /// Where the event log (events.db) and projections (store.db) live.
    data_dir: PathBuf = PathBuf::from(DEFAULT_DATA_DIR),
        Meta::env("KYCD_DATA_DIR").flag("data-dir", "DIR");

    /// Keep the event log and the store in PostgreSQL instead of the
    /// embedded SQLite files: `postgres://user:password@host:port/database`,
    /// with libpq's parameters (`sslmode=require`, a schema with
    /// `options=-csearch_path%3Dkycd`). Several `kycd serve` processes may
    /// share one database. The schema is created and migrated at start. The
    /// data directory still holds the audit key (unless
    /// `KYCD_AUDIT_KEY_FILE` names one, which every instance must share).
    database_url: Option<Secret> = None,
        Meta::env("KYCD_DATABASE_URL").secret().example("\"postgres://kycd@db.internal:5432/kycd\"");

    /// At most this many connections to the database per process.
    database_max_connections: u32 = DEFAULT_DATABASE_MAX_CONNECTIONS,
        Meta::env("KYCD_DATABASE_MAX_CONNECTIONS");

    /// This instance's name among several on one database (`GET
    /// /api/v1/cluster` lists it with the leases it holds). Unique per
    /// running process: a second start under the same name takes the
    /// first's leases and the first stops. Default: the host name and the
    /// process id.
    instance_id: Option<String> = None,
        Meta::env("KYCD_INSTANCE_ID").example("\"kycd-a\"");

    /// Didit webhook secrets (secret_shared_key). All are accepted; the
    /// first is the current one, so a secret rotates without downtime. In
    /// the environment: comma-separated. Without one, every delivery is
    /// refused.
    webhook_secrets: Vec<Secret> = Vec::new(),
        Meta::env("KYCD_WEBHOOK_SECRETS").secret().example("[\"current\", \"previous\"]");

    /// Freshness window for a delivery's signed timestamp, either way, in
    /// seconds.
    webhook_tolerance_secs: i64 = didit::signature::DEFAULT_TOLERANCE_SECS,
        Meta::env("KYCD_WEBHOOK_TOLERANCE_SECS").flag("webhook-tolerance-secs", "SECS");

    /// Bearer token for /api/v1 (full access). Without it (and without
    /// tokens made with `kycd token create`) the API refuses every request.
    api_token: Option<Secret> = None,
        Meta::env("KYCD_API_TOKEN").secret().example("\"...\"");

    /// Accept deliveries that only pass X-Signature-Simple, which
    /// authenticates the envelope but not the decision; such a decision is
    /// then fetched from the API rather than trusted.
    accept_simple_signature: bool = false,
        Meta::env("KYCD_ACCEPT_SIMPLE_SIGNATURE").flag("accept-simple-signature", "BOOL");

    /// Didit API key. Without it kycd still takes webhooks; whatever needs
    /// Didit's API (decision fetches, write-back, reconciliation) waits, and
    /// /readyz says so.
    didit_api_key: Option<Secret> = None,
        Meta::env("KYCD_DIDIT_API_KEY").secret().example("\"...\"");

    /// Didit's API (http:// or https://).
    didit_base_url: String = DEFAULT_DIDIT_BASE_URL.to_owned(),
        Meta::env("KYCD_DIDIT_BASE_URL");

    /// Act on sandbox deliveries and Didit console test deliveries (they
    /// are always stored and marked).
    act_on_sandbox: bool = false,
        Meta::env("KYCD_ACT_ON_SANDBOX").flag("act-on-sandbox", "BOOL");

    /// Mark the review console's cookies Secure. Browsers keep Secure
    /// cookies over HTTPS and on loopback addresses only; set false only to
    /// try the console over plain HTTP on another address.
    console_cookie_secure: bool = true,
        Meta::env("KYCD_CONSOLE_COOKIE_SECURE");

    /// The console's address as browsers reach it through a reverse proxy,
    /// an origin such as https://kyc.example.com. When set, a console form
    /// (the sign-in included) is accepted only if its Origin is exactly this
    /// URL's scheme, host and port, whatever Host or X-Forwarded-Host say.
    /// Unset: the request's Host, or X-Forwarded-Host from a trusted proxy.
    public_url: Option<PublicUrl> = None,
        Meta::env("KYCD_PUBLIC_URL").example("\"https://kyc.example.com\"");

    /// The reverse proxies in front of kycd, as IP addresses or CIDR ranges
    /// (in the environment: comma-separated). On a connection from one of
    /// them the console's origin check takes the host from X-Forwarded-Host
    /// (and the scheme from X-Forwarded-Proto, when sent) instead of Host;
    /// from any other address those headers are ignored. `public_url`, when
    /// set, wins over both.
    trusted_proxies: TrustedProxies = TrustedProxies::default(),
        Meta::env("KYCD_TRUSTED_PROXIES").example("[\"127.0.0.1\", \"10.0.0.0/8\"]");

    /// "full": a committed event survives power loss (fsync per group
    /// commit). "normal": survives a crash of kycd; the last commits may be
    /// lost on power loss, for more throughput on slow disks.
    durability: Durability = Durability::Full,
        Meta::env("KYCD_DURABILITY").flag("durability", "MODE");

    /// The active decision policy (TOML; see crates/kycd-policy/POLICY.md).
    /// Unset: the built-in default. SIGHUP reloads it; an invalid file is
    /// refused and the previous policy stays active.
    policy: Option<PathBuf> = None,
        Meta::env("KYCD_POLICY").example("\"policies/mine.toml\"");

    /// A candidate policy evaluated beside the active one on live traffic;
    /// its decisions are stored apart, never acted on, and compared at
    /// GET /api/v1/shadow.
    shadow_policy: Option<PathBuf> = None,
        Meta::env("KYCD_SHADOW_POLICY").example("\"policies/candidate.toml\"");

    /// How far back, in days, the identity graph counts another subject
    /// sharing a document, device, IP address, phone or email.
    graph_window_days: u32 = 180,
        Meta::env("KYCD_GRAPH_WINDOW_DAYS");

    /// Where decision webhooks go (an HTTPS URL of your application). Unset:
    /// none are sent. Needs `operator_webhook_secrets`.
    operator_webhook_url: Option<String> = None,
        Meta::env("KYCD_OPERATOR_WEBHOOK_URL").example("\"https://app.example.com/kycd\"");

    /// Secrets that sign decision webhooks (Standard Webhooks), each
    /// `whsec_` followed by base64; every one signs, so a secret rotates
    /// without downtime. In the environment: comma-separated.
    operator_webhook_secrets: Vec<Secret> = Vec::new(),
        Meta::env("KYCD_OPERATOR_WEBHOOK_SECRETS").secret().example("[\"whsec_...\"]");

    /// Allow decision webhooks to loopback and private addresses (tests, an
    /// application on the same host).
    operator_webhook_allow_private: bool = false,
        Meta::env("KYCD_OPERATOR_WEBHOOK_ALLOW_PRIVATE");

    /// A PEM file of extra root certificates that every outbound HTTPS
    /// connection trusts besides the built-in (Mozilla) roots: Didit's API,
    /// the decision webhooks, Didit's media links. For an endpoint whose
    /// certificate a private CA issued (else it fails with UnknownIssuer).
    /// Read at start; a file that cannot be read or holds no valid
    /// certificate stops the start.
    ca_bundle: Option<PathBuf> = None,
        Meta::env("KYCD_CA_BUNDLE").example("\"/etc/kycd/ca.pem\"");

    /// Write decisions back to Didit and create step-up sessions (needs
    /// `didit_api_key`; until then the actions wait).
    writeback: bool = true,
        Meta::env("KYCD_WRITEBACK");

    /// Let automatic write-back approve a session Didit declined or sent to
    /// review.
    writeback_allow_loosening: bool = false,
        Meta::env("KYCD_WRITEBACK_ALLOW_LOOSENING");

    /// What a `block` decision puts on Didit's blocklist: any of face,
    /// document, phone, email, comma-separated.
    blocklist_items: String = "face,document".to_owned(),
        Meta::env("KYCD_BLOCKLIST_ITEMS");

    /// The Didit workflow each step-up check runs on, by check: NFC, PHONE,
    /// BIOMETRIC_AUTH. In the environment: one variable per check,
    /// KYCD_STEP_UP_WORKFLOW_NFC and so on.
    step_up_workflows: BTreeMap<String, String> = BTreeMap::new(),
        Meta::env("KYCD_STEP_UP_WORKFLOW_")
            .entries(&["NFC", "PHONE", "BIOMETRIC_AUTH"])
            .example("{ NFC = \"workflow-id\", PHONE = \"workflow-id\" }");

    /// How long, in seconds, a customer has to complete a step-up before the
    /// policy decides without it.
    step_up_expiry_secs: u64 = 86_400,
        Meta::env("KYCD_STEP_UP_EXPIRY_SECS");

    /// How often, in seconds, kycd asks Didit about sessions it has not
    /// heard of or that went quiet (0: never on its own).
    reconcile_interval_secs: u64 = 60,
        Meta::env("KYCD_RECONCILE_INTERVAL_SECS");

    /// A session unfinished for this many seconds without a delivery is
    /// fetched from Didit.
    reconcile_after_secs: u64 = 900,
        Meta::env("KYCD_RECONCILE_AFTER_SECS");

    /// Attempts before a Didit action goes to the dead-letter list.
    action_max_attempts: u32 = 10,
        Meta::env("KYCD_ACTION_MAX_ATTEMPTS");

    /// Divides every retry delay and the reconciliation and expiry clocks,
    /// for demos and tests that run faster than real time. Leave it at 1 in
    /// production.
    retry_time_scale: f64 = 1.0,
        Meta::env("KYCD_RETRY_TIME_SCALE");

    /// The key of the audit trail's MACs: 32 random bytes in hex, created
    /// (mode 0600) at the first start, refused if group or others may read
    /// it. Keep it away from store.db (another disk, a secrets mount) so
    /// that whoever can edit the store cannot forge the chain. Unset:
    /// audit.key in the data directory.
    audit_key_file: Option<PathBuf> = None,
        Meta::env("KYCD_AUDIT_KEY_FILE").example("\"/run/secrets/kycd-audit.key\"");

    /// A file rewritten (atomically) with the audit chain's head each time
    /// it is anchored, beside the anchors in the event log: put it where the
    /// data directory's users cannot write.
    audit_anchor_file: Option<PathBuf> = None,
        Meta::env("KYCD_AUDIT_ANCHOR_FILE").example("\"/var/lib/kycd-anchor/head.json\"");

    /// What is logged, as a tracing filter: `info`, `warn`,
    /// `kycd_server=debug,info`, ... RUST_LOG is read too; when both are
    /// set, KYCD_LOG wins.
    log: String = "info".to_owned(),
        Meta::env("KYCD_LOG").alias("RUST_LOG");

    /// `text`, or `json`: one JSON object a line (timestamp, level, target,
    /// fields). Text has colours only when the log goes to a terminal (and
    /// NO_COLOR is not set).
    log_format: LogFormat = LogFormat::Text,
        Meta::env("KYCD_LOG_FORMAT");

    /// (serve) Start even if the audit chain is broken; the start is itself
    /// recorded in the audit trail. Not a file key on purpose: serving over
    /// a broken chain is a decision for one start, not a standing
    /// configuration.
    allow_broken_audit: bool = false,
        Meta::env("KYCD_ALLOW_BROKEN_AUDIT").switch("allow-broken-audit").not_in_file();

    @internal {
        /// Largest webhook body accepted, default 1 MiB.
        max_body_bytes: usize = DEFAULT_MAX_BODY_BYTES;
        /// A size cap for the event log file; when it is full the intake
        /// answers 503 (so Didit retries) instead of filling the disk.
        max_log_bytes: Option<u64> = None;
    }
}

impl Settings {
    /// `ms` of real time under [`Settings::retry_time_scale`].
    pub fn scaled_ms(&self, ms: f64) -> i64 {
        scale_ms(ms, self.retry_time_scale)
    }

    /// How the audit trail is keyed and anchored.
    pub fn audit(&self) -> kycd_log::anchor::AuditOptions {
        kycd_log::anchor::AuditOptions {
            key_file: self.audit_key_file.clone(),
            anchor_file: self.audit_anchor_file.clone(),
            allow_broken: self.allow_broken_audit,
        }
    }
}

/// `ms` divided by `scale` (a non-positive scale counts as 1), at least 1 ms.
pub fn scale_ms(ms: f64, scale: f64) -> i64 {
    let scale = if scale > 0.0 { scale } else { 1.0 };
    (ms / scale).round().max(1.0) as i64
}

/// A type a setting can have: how it is read from the environment (or a
/// flag) and from the file, and shown as TOML. Errors are what was
/// expected; the caller names the setting and its variable (never the
/// value, which may be a secret).
pub trait Value: Sized {
    const EXPECTED: &'static str;
    /// `Ok(None)`: the text means unset (an empty optional value).
    fn from_text(text: &str) -> Result<Option<Self>, String>;
    fn from_toml(v: &toml::Value, meta: &Meta) -> Result<Self, String>;
    /// `None`: unset.
    fn to_toml(&self) -> Option<toml::Value>;
    /// One entry of a map setting from its own variable.
    fn set_entry(&mut self, _key: &str, _text: &str) -> Result<bool, String> {
        Err("not a map".to_owned())
    }
}

fn expected<T: Value>() -> String {
    format!("expected {}", T::EXPECTED)
}

impl Value for String {
    const EXPECTED: &'static str = "a string";
    fn from_text(text: &str) -> Result<Option<Self>, String> {
        Ok(Some(text.to_owned()))
    }
    fn from_toml(v: &toml::Value, _: &Meta) -> Result<Self, String> {
        v.as_str().map(str::to_owned).ok_or_else(expected::<Self>)
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::String(self.clone()))
    }
}

impl Value for PathBuf {
    const EXPECTED: &'static str = "a path";
    fn from_text(text: &str) -> Result<Option<Self>, String> {
        Ok(Some(PathBuf::from(text)))
    }
    fn from_toml(v: &toml::Value, _: &Meta) -> Result<Self, String> {
        v.as_str().map(PathBuf::from).ok_or_else(expected::<Self>)
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::String(self.to_string_lossy().into_owned()))
    }
}

/// Unset when absent; an empty variable also means unset.
impl<T: Value> Value for Option<T> {
    const EXPECTED: &'static str = T::EXPECTED;
    fn from_text(text: &str) -> Result<Option<Self>, String> {
        if text.is_empty() {
            return Ok(None);
        }
        Ok(T::from_text(text)?.map(Some))
    }
    fn from_toml(v: &toml::Value, meta: &Meta) -> Result<Self, String> {
        T::from_toml(v, meta).map(Some)
    }
    fn to_toml(&self) -> Option<toml::Value> {
        self.as_ref().and_then(T::to_toml)
    }
}

macro_rules! whole_numbers {
    ($($t:ty),*) => {$(
        impl Value for $t {
            const EXPECTED: &'static str = "a whole number";
            fn from_text(text: &str) -> Result<Option<Self>, String> {
                text.trim().parse().map(Some).map_err(|_| expected::<Self>())
            }
            fn from_toml(v: &toml::Value, _: &Meta) -> Result<Self, String> {
                v.as_integer()
                    .and_then(|i| <$t>::try_from(i).ok())
                    .ok_or_else(expected::<Self>)
            }
            fn to_toml(&self) -> Option<toml::Value> {
                Some(toml::Value::Integer(i64::try_from(*self).unwrap_or(i64::MAX)))
            }
        }
    )*};
}
whole_numbers!(u32, u64, usize, i64);

impl Value for f64 {
    const EXPECTED: &'static str = "a number";
    fn from_text(text: &str) -> Result<Option<Self>, String> {
        text.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(expected::<Self>)
    }
    fn from_toml(v: &toml::Value, _: &Meta) -> Result<Self, String> {
        match v {
            toml::Value::Float(x) if x.is_finite() => Ok(*x),
            toml::Value::Integer(i) => Ok(*i as f64),
            _ => Err(expected::<Self>()),
        }
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::Float(*self))
    }
}

impl Value for bool {
    const EXPECTED: &'static str = "true or false";
    /// Also `1`/`0`, `yes`/`no`, `on`/`off`, any case; empty is false.
    fn from_text(text: &str) -> Result<Option<Self>, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Some(true)),
            "false" | "0" | "no" | "off" | "" => Ok(Some(false)),
            _ => Err(expected::<Self>()),
        }
    }
    fn from_toml(v: &toml::Value, _: &Meta) -> Result<Self, String> {
        v.as_bool().ok_or_else(expected::<Self>)
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::Boolean(*self))
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

const HIDDEN: &str = "<hidden>";

/// Shown only as `<hidden>`.
impl Value for Secret {
    const EXPECTED: &'static str = "a string";
    fn from_text(text: &str) -> Result<Option<Self>, String> {
        Ok(Some(Secret::new(text)))
    }
    fn from_toml(v: &toml::Value, _: &Meta) -> Result<Self, String> {
        v.as_str().map(Secret::new).ok_or_else(expected::<Self>)
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::String(HIDDEN.to_owned()))
    }
}

fn secret_list(items: impl IntoIterator<Item = String>) -> Vec<Secret> {
    items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .map(Secret::new)
        .collect()
}

/// Comma-separated in the environment, an array of strings in the file;
/// blanks are dropped. Unset when empty.
impl Value for Vec<Secret> {
    const EXPECTED: &'static str = "a list of strings";
    fn from_text(text: &str) -> Result<Option<Self>, String> {
        Ok(Some(secret_list(text.split(',').map(str::to_owned))))
    }
    fn from_toml(v: &toml::Value, _: &Meta) -> Result<Self, String> {
        let items = v.as_array().ok_or_else(expected::<Self>)?;
        let strings = items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(expected::<Self>)?;
        Ok(secret_list(strings))
    }
    fn to_toml(&self) -> Option<toml::Value> {
        if self.is_empty() {
            return None;
        }
        Some(toml::Value::Array(
            self.iter().filter_map(Value::to_toml).collect(),
        ))
    }
}

/// An enum spelled by name, any case.
macro_rules! named {
    ($t:ty, $expected:literal, { $($variant:path => $name:literal),* }) => {
        impl Value for $t {
            const EXPECTED: &'static str = $expected;
            fn from_text(text: &str) -> Result<Option<Self>, String> {
                match text.trim().to_ascii_lowercase().as_str() {
                    $($name => Ok(Some($variant)),)*
                    _ => Err(expected::<Self>()),
                }
            }
            fn from_toml(v: &toml::Value, _: &Meta) -> Result<Self, String> {
                let text = v.as_str().ok_or_else(expected::<Self>)?;
                Self::from_text(text)?.ok_or_else(expected::<Self>)
            }
            fn to_toml(&self) -> Option<toml::Value> {
                let name = match self {
                    $($variant => $name,)*
                };
                Some(toml::Value::String(name.to_owned()))
            }
        }
    };
}
named!(Durability, "full or normal", { Durability::Full => "full", Durability::Normal => "normal" });
named!(LogFormat, "text or json", { LogFormat::Text => "text", LogFormat::Json => "json" });

/// A table in the file (which replaces the default as a whole), one
/// variable per entry in the environment (each added to what the file
/// gave). Unset when empty.
impl Value for BTreeMap<String, String> {
    const EXPECTED: &'static str = "a table of strings";
    fn from_text(_: &str) -> Result<Option<Self>, String> {
        Err("set one variable per entry".to_owned())
    }
    fn from_toml(v: &toml::Value, meta: &Meta) -> Result<Self, String> {
        let table = v.as_table().ok_or_else(expected::<Self>)?;
        let mut map = BTreeMap::new();
        for (k, v) in table {
            if !meta.entries.is_empty() && !meta.entries.contains(&k.as_str()) {
                return Err(format!(
                    "unknown entry {k:?} (expected one of {})",
                    meta.entries.join(", ")
                ));
            }
            let v = v.as_str().ok_or_else(expected::<Self>)?;
            map.insert(k.clone(), v.to_owned());
        }
        Ok(map)
    }
    fn to_toml(&self) -> Option<toml::Value> {
        if self.is_empty() {
            return None;
        }
        Some(toml::Value::Table(
            self.iter()
                .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
                .collect(),
        ))
    }
    fn set_entry(&mut self, key: &str, text: &str) -> Result<bool, String> {
        if text.is_empty() {
            return Ok(false);
        }
        self.insert(key.to_owned(), text.to_owned());
        Ok(true)
    }
}

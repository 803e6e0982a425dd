//! Client configuration and the secret wrapper.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::limiter::RateScope;

/// The production base URL of Didit's verification API.
pub const DEFAULT_BASE_URL: &str = "https://verification.didit.me";

/// A string that must never reach a log: the API key, a webhook signing secret.
///
/// `Debug` prints `[redacted]` and there is deliberately no `Display` and no
/// `Serialize`, so the only way to the text is the explicit [`Secret::expose`].
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret text, for the one place that needs it (a header, an HMAC key).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty (Didit sends `""` to callers not allowed to see it).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// Didit's per-key budgets (docs/didit-protocol.md section 4), one per [`RateScope`].
///
/// The client keeps itself under these so that Didit never has to answer 429.
/// They are per API key at Didit but per [`super::DiditClient`] (and its
/// clones) here: if other software shares the key, lower them accordingly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// The window every budget is counted over; Didit's is 60 s. Tests shrink it.
    pub window: Duration,
    /// Generic reads: listing sessions, webhook destinations.
    pub reads: u32,
    /// Generic writes: update-status, blocklist, delete, workflow and destination creation.
    pub writes: u32,
    /// `POST /v3/session/`.
    pub session_creation: u32,
    /// `GET /v3/session/{id}/decision/`.
    pub decision_reads: u32,
    /// `GET /v3/session/{id}/generate-pdf/`.
    pub pdf: u32,
    /// Data corrections (`update-data`) and image uploads.
    pub data_corrections: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            reads: 600,
            writes: 300,
            session_creation: 600,
            decision_reads: 100,
            pdf: 50,
            data_corrections: 10,
        }
    }
}

impl RateLimits {
    /// The budget of one scope per [`RateLimits::window`].
    pub fn limit(&self, scope: RateScope) -> u32 {
        match scope {
            RateScope::Read => self.reads,
            RateScope::Write => self.writes,
            RateScope::SessionCreation => self.session_creation,
            RateScope::DecisionRead => self.decision_reads,
            RateScope::Pdf => self.pdf,
            RateScope::DataCorrection => self.data_corrections,
        }
    }
}

/// Everything [`super::DiditClient::new`] needs; start from [`ClientConfig::new`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Where Didit (or the simulator standing in for it) listens; a path prefix is kept.
    pub base_url: String,
    /// Sent as `x-api-key` on every call.
    pub api_key: Secret,
    /// Total time for one attempt, from connecting until the body is read.
    pub timeout: Duration,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Further attempts after the first one fails with a retryable error.
    pub max_retries: u32,
    /// First backoff delay; it doubles per attempt, with jitter.
    pub backoff_base: Duration,
    /// Ceiling of one backoff delay.
    pub backoff_max: Duration,
    /// Ceiling on how long a 429's `Retry-After` is honoured before retrying.
    pub max_retry_after: Duration,
    /// Largest successful response body accepted (a PDF report is the biggest).
    pub max_response_bytes: usize,
    /// Client-side budgets per Didit rate-limit scope.
    pub rate_limits: RateLimits,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Roots trusted besides the built-in ones (webpki-roots), for a Didit
    /// base URL behind a private CA (a proxy, a simulator over TLS).
    pub root_certificates: Vec<reqwest::Certificate>,
}

impl ClientConfig {
    /// The production defaults with the given API key.
    pub fn new(api_key: impl Into<Secret>) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: api_key.into(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_retries: 3,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            max_response_bytes: 32 * 1024 * 1024,
            rate_limits: RateLimits::default(),
            user_agent: concat!("kycd/", env!("CARGO_PKG_VERSION")).to_owned(),
            root_certificates: Vec::new(),
        }
    }

    /// The same configuration pointed at another base URL (the simulator, a mock).
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }
}

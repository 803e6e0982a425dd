//! The Didit REST API client: every call of docs/didit-protocol.md section 4, typed.
//!
//! [`DiditClient`] sends `x-api-key` and a `kycd/<version>` user agent on every
//! call, bounds each attempt with a timeout, turns error bodies
//! (`{"detail": ...}`) into [`ApiError`], retries what is safe to retry, and
//! keeps each Didit rate-limit scope within its budget on the client side.
//! The base URL is configurable so the simulator can stand in for Didit.
//!
//! # Which calls are retried
//!
//! Every attempt passes the scope's limiter first, so retries spend budget
//! like any other call. Then:
//!
//! - **429, any call.** A 429 means Didit did not process the request, so it
//!   is always safe to repeat. The client waits `Retry-After` (delta-seconds;
//!   an HTTP-date is not parsed and falls back to the backoff), capped at
//!   [`ClientConfig::max_retry_after`], and pauses the whole scope for that
//!   long so that concurrent callers do not walk into the same wall.
//! - **A connection that could not be established, any call.** Nothing
//!   reached Didit.
//! - **5xx, timeouts and broken connections, only for calls that can be
//!   repeated without acting twice:**
//!   - GET (`get_decision`, `list_sessions`, `generate_pdf`, listing webhook
//!     destinations) and `delete_session`. A repeated delete whose earlier
//!     attempt may have gone through, and which then gets 404, reports
//!     success: the session is gone, as asked.
//!   - `update_status` to `Approved` or `Declined`: Didit answers setting the
//!     current status again with a 200 no-op and no webhook. Not to
//!     `Resubmitted`: a repeat gets 400 "The new status is the same as the
//!     current status." after the first one went through.
//!   - `create_session` **with `vendor_data`**: for a `vendor_data` that has
//!     an unfinished session on the workflow's latest version, Didit returns
//!     that session again (201) instead of creating one, so a repeat yields
//!     the same session. Without `vendor_data` a repeat could create a second
//!     session, so it is not retried.
//!   - `blocklist_add`/`blocklist_remove`: they set membership, and setting
//!     it twice leaves the same state.
//!
//!   Not retried on these errors: `create_workflow` and
//!   `create_webhook_destination` (a repeat creates a duplicate).
//! - **Never retried:** 400, 401, 403, 404 and other 4xx, decode errors.
//!
//! Backoff is exponential from [`ClientConfig::backoff_base`], capped at
//! [`ClientConfig::backoff_max`], with "equal jitter" (half fixed, half
//! random) so that retries from many callers spread out but never fire at once.
//!
//! Redirects are not followed: `x-api-key` is a custom header, which reqwest
//! would forward to whatever host a redirect names.

mod config;
mod error;
mod limiter;
mod types;

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use config::{ClientConfig, RateLimits, Secret, DEFAULT_BASE_URL};
pub use error::{ApiError, ConfigError, ErrorDetail};
pub use limiter::RateScope;
pub use types::{
    BlocklistAdd, BlocklistRemove, BlocklistResult, CreateSessionRequest, CreateWebhookDestination,
    CreateWorkflowRequest, CreatedSession, ListSessionsQuery, NewStatus, NodeToResubmit,
    SessionPage, StatusUpdated, UpdateStatusRequest, WebhookDestination, Workflow, WorkflowType,
};

use limiter::Limiter;
use types::DestinationList;

/// How much of an error body is read: enough for any `detail`, bounded
/// against a proxy that answers with a large page.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

const JSON: &str = "application/json";
const PDF: &str = "application/pdf";

/// A client for Didit's REST API. Cloning is cheap and clones share the
/// connection pool and the rate-limit budgets.
#[derive(Clone)]
pub struct DiditClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The base URL without a trailing slash; endpoint paths are appended.
    base: String,
    config: ClientConfig,
    limiter: Limiter,
}

impl fmt::Debug for DiditClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiditClient")
            .field("base_url", &self.inner.base)
            .finish_non_exhaustive()
    }
}

/// Whether an attempt that may have reached Didit can be repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replay {
    /// Repeating cannot act twice: retry 5xx, timeouts and broken connections too.
    Safe,
    /// Repeating may act twice: retry only what Didit provably did not process.
    Unsafe,
}

/// One API call, ready to be attempted as many times as the policy allows.
struct Call {
    /// The method's name, for logs: never the URL, whose query may hold `vendor_data`.
    op: &'static str,
    method: Method,
    url: Url,
    scope: RateScope,
    replay: Replay,
    body: Option<Vec<u8>>,
    accept: &'static str,
    /// A 404 after an attempt that may have been processed means done (deletes).
    gone_is_done: bool,
}

/// A 2xx answer.
struct Reply {
    body: Vec<u8>,
}

impl Reply {
    fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.body).map_err(|error| ApiError::decode(&error))
    }

    /// Like [`Reply::json`], but an empty body (a bare 200/204) is the default value.
    fn json_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            Ok(T::default())
        } else {
            self.json()
        }
    }
}

/// A failed attempt, and whether Didit may have acted on it anyway.
struct Failure {
    error: ApiError,
    maybe_processed: bool,
}

impl Failure {
    fn from_reqwest(error: reqwest::Error) -> Self {
        // A failed connect (including a connect timeout) sent nothing.
        let maybe_processed = !error.is_connect();
        Self {
            error: ApiError::from_reqwest(error),
            maybe_processed,
        }
    }
}

impl DiditClient {
    /// Builds a client; fails on a bad base URL, API key or rate limit.
    pub fn new(config: ClientConfig) -> Result<Self, ConfigError> {
        let base = validate_base_url(&config.base_url)?;
        let limits = &config.rate_limits;
        if limits.window.is_zero() || RateScope::ALL.iter().any(|&s| limits.limit(s) == 0) {
            return Err(ConfigError::RateLimit);
        }
        if config.api_key.is_empty() {
            return Err(ConfigError::ApiKey);
        }
        let mut api_key =
            HeaderValue::from_str(config.api_key.expose()).map_err(|_| ConfigError::ApiKey)?;
        // Keeps the key out of reqwest's and hyper's own debug output.
        api_key.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", api_key);
        let user_agent =
            HeaderValue::from_str(&config.user_agent).map_err(|_| ConfigError::UserAgent)?;
        let http = config
            .root_certificates
            .iter()
            .cloned()
            .fold(reqwest::Client::builder(), |b, c| b.add_root_certificate(c))
            .default_headers(headers)
            .user_agent(user_agent)
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| ConfigError::Http { source })?;
        let limiter = Limiter::new(&config.rate_limits);
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                config,
                limiter,
            }),
        })
    }

    /// The configuration the client was built from.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// `POST /v3/session/`: creates a verification session (or, for a
    /// `vendor_data` with an unfinished session, returns that one).
    pub async fn create_session(
        &self,
        request: &CreateSessionRequest,
    ) -> Result<CreatedSession, ApiError> {
        let replay = if request.vendor_data.is_some() {
            Replay::Safe
        } else {
            Replay::Unsafe
        };
        let call = self
            .call(
                "create_session",
                Method::POST,
                "/v3/session/",
                RateScope::SessionCreation,
                replay,
            )?
            .with_json(request)?;
        self.execute(call).await?.json()
    }

    /// `GET /v3/session/{id}/decision/`: the decision of docs/didit-protocol.md section 3,
    /// as Didit sent it; `payload` gives it types.
    pub async fn get_decision(&self, session_id: &str) -> Result<Value, ApiError> {
        let path = session_path(session_id, "decision")?;
        let call = self.call(
            "get_decision",
            Method::GET,
            &path,
            RateScope::DecisionRead,
            Replay::Safe,
        )?;
        self.execute(call).await?.json()
    }

    /// `PATCH /v3/session/{id}/update-status/`: approves, declines or sends
    /// steps back for resubmission.
    pub async fn update_status(
        &self,
        session_id: &str,
        request: &UpdateStatusRequest,
    ) -> Result<StatusUpdated, ApiError> {
        let path = session_path(session_id, "update-status")?;
        let replay = match request.new_status {
            NewStatus::Approved | NewStatus::Declined => Replay::Safe,
            NewStatus::Resubmitted => Replay::Unsafe,
        };
        let call = self
            .call(
                "update_status",
                Method::PATCH,
                &path,
                RateScope::Write,
                replay,
            )?
            .with_json(request)?;
        self.execute(call).await?.json_or_default()
    }

    /// `POST /v3/blocklist/add/`: blocks the chosen items of a session.
    pub async fn blocklist_add(&self, request: &BlocklistAdd) -> Result<BlocklistResult, ApiError> {
        require_id(&request.session_id)?;
        let call = self
            .call(
                "blocklist_add",
                Method::POST,
                "/v3/blocklist/add/",
                RateScope::Write,
                Replay::Safe,
            )?
            .with_json(request)?;
        self.execute(call).await?.json_or_default()
    }

    /// `POST /v3/blocklist/remove/`: unblocks the chosen items of a session.
    pub async fn blocklist_remove(
        &self,
        request: &BlocklistRemove,
    ) -> Result<BlocklistResult, ApiError> {
        require_id(&request.session_id)?;
        let call = self
            .call(
                "blocklist_remove",
                Method::POST,
                "/v3/blocklist/remove/",
                RateScope::Write,
                Replay::Safe,
            )?
            .with_json(request)?;
        self.execute(call).await?.json_or_default()
    }

    /// `GET /v3/sessions/`: one page of sessions, newest first.
    pub async fn list_sessions(&self, query: &ListSessionsQuery) -> Result<SessionPage, ApiError> {
        let mut call = self.call(
            "list_sessions",
            Method::GET,
            "/v3/sessions/",
            RateScope::Read,
            Replay::Safe,
        )?;
        let pairs = query.pairs();
        if !pairs.is_empty() {
            let mut serializer = call.url.query_pairs_mut();
            for (name, value) in &pairs {
                serializer.append_pair(name, value);
            }
        }
        self.execute(call).await?.json()
    }

    /// `DELETE /v3/session/{id}/delete/`: deletes a session and its data.
    pub async fn delete_session(&self, session_id: &str) -> Result<(), ApiError> {
        let path = session_path(session_id, "delete")?;
        let mut call = self.call(
            "delete_session",
            Method::DELETE,
            &path,
            RateScope::Write,
            Replay::Safe,
        )?;
        call.gone_is_done = true;
        self.execute(call).await.map(|_| ())
    }

    /// `GET /v3/session/{id}/generate-pdf/`: the session report as PDF bytes.
    pub async fn generate_pdf(&self, session_id: &str) -> Result<Vec<u8>, ApiError> {
        let path = session_path(session_id, "generate-pdf")?;
        let mut call = self.call(
            "generate_pdf",
            Method::GET,
            &path,
            RateScope::Pdf,
            Replay::Safe,
        )?;
        call.accept = PDF;
        Ok(self.execute(call).await?.body)
    }

    /// `POST /v3/workflows/`: creates a workflow. Not retried on ambiguous
    /// failures: a repeat would create a second workflow.
    pub async fn create_workflow(
        &self,
        request: &CreateWorkflowRequest,
    ) -> Result<Workflow, ApiError> {
        let call = self
            .call(
                "create_workflow",
                Method::POST,
                "/v3/workflows/",
                RateScope::Write,
                Replay::Unsafe,
            )?
            .with_json(request)?;
        self.execute(call).await?.json()
    }

    /// `GET /v3/webhook/destinations/`: every destination (Didit omits the
    /// secrets from this list).
    pub async fn list_webhook_destinations(&self) -> Result<Vec<WebhookDestination>, ApiError> {
        let call = self.call(
            "list_webhook_destinations",
            Method::GET,
            "/v3/webhook/destinations/",
            RateScope::Read,
            Replay::Safe,
        )?;
        Ok(self
            .execute(call)
            .await?
            .json::<DestinationList>()?
            .into_vec())
    }

    /// `POST /v3/webhook/destinations/`: creates a destination; the answer
    /// carries its `secret_shared_key`. Not retried on ambiguous failures.
    pub async fn create_webhook_destination(
        &self,
        request: &CreateWebhookDestination,
    ) -> Result<WebhookDestination, ApiError> {
        let call = self
            .call(
                "create_webhook_destination",
                Method::POST,
                "/v3/webhook/destinations/",
                RateScope::Write,
                Replay::Unsafe,
            )?
            .with_json(request)?;
        self.execute(call).await?.json()
    }

    fn call(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        scope: RateScope,
        replay: Replay,
    ) -> Result<Call, ApiError> {
        let url = Url::parse(&format!("{}{path}", self.inner.base)).map_err(|_| {
            ApiError::InvalidArgument {
                reason: "could not build the request url",
            }
        })?;
        Ok(Call {
            op,
            method,
            url,
            scope,
            replay,
            body: None,
            accept: JSON,
            gone_is_done: false,
        })
    }

    /// Runs a call through the limiter and the retry policy (see the module docs).
    async fn execute(&self, call: Call) -> Result<Reply, ApiError> {
        let config = &self.inner.config;
        let mut attempt: u32 = 0;
        let mut earlier_maybe_processed = false;
        loop {
            self.inner.limiter.acquire(call.scope).await;
            let failure = match self.attempt(&call).await {
                Ok(reply) => return Ok(reply),
                Err(failure) => failure,
            };
            if call.gone_is_done
                && earlier_maybe_processed
                && matches!(failure.error, ApiError::NotFound { .. })
            {
                tracing::debug!(
                    op = call.op,
                    attempt,
                    "didit resource already gone after an earlier attempt"
                );
                return Ok(Reply { body: Vec::new() });
            }
            if let ApiError::RateLimited {
                retry_after: Some(wait),
            } = &failure.error
            {
                // Didit's word on the scope holds for every caller, whether or
                // not this one retries: later calls wait it out in the limiter.
                self.inner
                    .limiter
                    .pause(call.scope, (*wait).min(config.max_retry_after));
            }
            let wait = if attempt >= config.max_retries {
                None
            } else {
                self.retry_wait(&call, &failure, attempt)
            };
            let Some(wait) = wait else {
                tracing::debug!(
                    op = call.op,
                    attempt,
                    error = failure.error.kind(),
                    status = failure.error.status(),
                    "didit call failed"
                );
                return Err(failure.error);
            };
            tracing::warn!(
                op = call.op,
                attempt,
                error = failure.error.kind(),
                status = failure.error.status(),
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "retrying didit call"
            );
            // After a 429 with `Retry-After` the scope is paused, so the
            // limiter does the waiting; everything else sleeps its backoff.
            if !matches!(
                failure.error,
                ApiError::RateLimited {
                    retry_after: Some(_)
                }
            ) {
                tokio::time::sleep(wait).await;
            }
            earlier_maybe_processed |= failure.maybe_processed;
            attempt += 1;
        }
    }

    /// How long to wait before repeating a failed attempt, or `None` to give up.
    fn retry_wait(&self, call: &Call, failure: &Failure, attempt: u32) -> Option<Duration> {
        match &failure.error {
            ApiError::RateLimited { retry_after } => Some(match retry_after {
                Some(wait) => (*wait).min(self.inner.config.max_retry_after),
                None => self.backoff(attempt),
            }),
            error
                if error.is_retryable()
                    && (call.replay == Replay::Safe || !failure.maybe_processed) =>
            {
                Some(self.backoff(attempt))
            }
            _ => None,
        }
    }

    /// Exponential backoff with equal jitter: in `[d/2, d]` for `d = base * 2^attempt`, capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let config = &self.inner.config;
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        let ceiling = config
            .backoff_base
            .checked_mul(factor)
            .unwrap_or(config.backoff_max)
            .min(config.backoff_max);
        let half = ceiling / 2;
        half + jitter(ceiling - half)
    }

    async fn attempt(&self, call: &Call) -> Result<Reply, Failure> {
        let mut request = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone())
            .header(ACCEPT, call.accept);
        if let Some(body) = &call.body {
            request = request.header(CONTENT_TYPE, JSON).body(body.clone());
        }
        let mut response = request.send().await.map_err(Failure::from_reqwest)?;
        let status = response.status();
        if status.is_success() {
            let body = read_body(&mut response, self.inner.config.max_response_bytes).await?;
            tracing::debug!(
                op = call.op,
                status = status.as_u16(),
                "didit call succeeded"
            );
            return Ok(Reply { body });
        }
        let retry_after = parse_retry_after(response.headers());
        // An unreadable error body still leaves the status to report.
        let body = read_error_body(&mut response).await;
        Err(Failure {
            error: ApiError::from_status(status.as_u16(), retry_after, &body),
            // A 4xx (429 included) was refused; a 5xx may have done some or all of the work.
            maybe_processed: status.is_server_error(),
        })
    }
}

impl Call {
    fn with_json<T: Serialize>(mut self, body: &T) -> Result<Self, ApiError> {
        let bytes = serde_json::to_vec(body).map_err(|_| ApiError::InvalidArgument {
            reason: "the request body could not be serialised",
        })?;
        self.body = Some(bytes);
        Ok(self)
    }
}

fn validate_base_url(base_url: &str) -> Result<String, ConfigError> {
    let url = Url::parse(base_url).map_err(|error| ConfigError::BaseUrl {
        reason: error.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::BaseUrl {
            reason: format!("scheme {} is not http or https", url.scheme()),
        });
    }
    if url.host().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::BaseUrl {
            reason: "expected scheme, host and an optional path only".to_owned(),
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::BaseUrl {
            reason: "credentials belong in the api key, not the url".to_owned(),
        });
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn require_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::InvalidArgument {
            reason: "the session id is empty",
        });
    }
    Ok(())
}

/// `/v3/session/{id}/{action}/` with the id percent-encoded, so that no id can
/// change which endpoint is called.
fn session_path(session_id: &str, action: &str) -> Result<String, ApiError> {
    require_id(session_id)?;
    let mut path = String::from("/v3/session/");
    for byte in session_id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path.push('/');
    path.push_str(action);
    path.push('/');
    Ok(path)
}

/// Reads a success body, refusing one larger than `limit`.
async fn read_body(response: &mut reqwest::Response, limit: usize) -> Result<Vec<u8>, Failure> {
    let too_large = || Failure {
        error: ApiError::Decode {
            reason: format!("response body exceeds {limit} bytes"),
        },
        maybe_processed: true,
    };
    if response
        .content_length()
        .is_some_and(|length| usize::try_from(length).map_or(true, |length| length > limit))
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| Failure {
        // The request was answered, so whatever it did is done.
        maybe_processed: true,
        ..Failure::from_reqwest(error)
    })? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads at most [`MAX_ERROR_BODY_BYTES`] of an error body; failures leave what was read.
async fn read_error_body(response: &mut reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ERROR_BODY_BYTES.saturating_sub(body.len());
        if chunk.len() >= room {
            body.extend_from_slice(chunk.get(..room).unwrap_or_default());
            break;
        }
        body.extend_from_slice(&chunk);
    }
    body
}

/// `Retry-After` as delta-seconds. The HTTP-date form is not parsed: Didit
/// sends seconds, and without a date parser the caller falls back to backoff.
fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let seconds = text.parse::<f64>().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

/// A uniformly random duration in `[0, upper]`.
///
/// The randomness comes from std's randomly keyed SipHash (`RandomState`
/// draws fresh keys per instance), which is plenty for spreading retries and
/// avoids a dependency for it.
fn jitter(upper: Duration) -> Duration {
    let upper_nanos = u64::try_from(upper.as_nanos()).unwrap_or(u64::MAX);
    if upper_nanos == 0 {
        return Duration::ZERO;
    }
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(upper_nanos);
    let random = hasher.finish();
    Duration::from_nanos(random % upper_nanos.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(config: ClientConfig) -> DiditClient {
        match DiditClient::new(config) {
            Ok(client) => client,
            Err(error) => panic!("config rejected: {error}"),
        }
    }

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let mut config = ClientConfig::new("key");
        config.backoff_base = Duration::from_millis(100);
        config.backoff_max = Duration::from_millis(1000);
        let client = client(config);
        for attempt in 0..40 {
            let wait = client.backoff(attempt);
            let ceiling = Duration::from_millis(100)
                .checked_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
                .unwrap_or(Duration::from_millis(1000))
                .min(Duration::from_millis(1000));
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "attempt {attempt}: {wait:?}"
            );
        }
    }

    #[test]
    fn retry_after_is_read_as_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(parse_retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(
            parse_retry_after(&headers),
            Some(Duration::from_millis(500))
        );
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(parse_retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("-1"));
        assert_eq!(parse_retry_after(&headers), None);
    }

    #[test]
    fn session_ids_cannot_escape_their_path_segment() {
        assert_eq!(
            session_path("../../v3/workflows", "delete").ok().as_deref(),
            Some("/v3/session/..%2F..%2Fv3%2Fworkflows/delete/")
        );
        assert!(matches!(
            session_path("", "delete"),
            Err(ApiError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn base_url_keeps_its_path_prefix_without_trailing_slash() {
        assert_eq!(
            validate_base_url("http://127.0.0.1:8080/didit/")
                .ok()
                .as_deref(),
            Some("http://127.0.0.1:8080/didit")
        );
        assert_eq!(
            validate_base_url(DEFAULT_BASE_URL).ok().as_deref(),
            Some("https://verification.didit.me")
        );
        assert!(validate_base_url("ftp://example.com").is_err());
        assert!(validate_base_url("https://user:pw@example.com").is_err());
    }

    #[test]
    fn zero_rate_limit_is_rejected() {
        let mut config = ClientConfig::new("key");
        config.rate_limits.pdf = 0;
        assert!(matches!(
            DiditClient::new(config),
            Err(ConfigError::RateLimit)
        ));
    }

    #[test]
    fn empty_api_key_is_rejected() {
        assert!(matches!(
            DiditClient::new(ClientConfig::new("")),
            Err(ConfigError::ApiKey)
        ));
    }
}

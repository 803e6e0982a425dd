//! Typed errors of the API client.
//!
//! Messages carry Didit's status and `detail` text but never a request body:
//! bodies hold personal data (names, documents, portraits) and error messages
//! end up in logs.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

/// The `detail` Didit put in an error body.
///
/// Usually `{"detail": "text"}`, but validation errors can be any JSON value
/// (for example `{"workflow_id": ["This field is required."]}`), and a proxy
/// in front of Didit may answer with plain text. All three are kept.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorDetail(Value);

/// Longest non-JSON error text kept, so an HTML error page does not flood logs.
const MAX_TEXT_DETAIL_CHARS: usize = 200;

impl ErrorDetail {
    /// Extracts the detail from an error response body, if there is anything to keep.
    pub(crate) fn from_body(body: &[u8]) -> Option<Self> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(mut map)) => match map.remove("detail") {
                Some(detail) => Some(Self(detail)),
                None => Some(Self(Value::Object(map))),
            },
            Ok(other) => Some(Self(other)),
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text: String = text.trim().chars().take(MAX_TEXT_DETAIL_CHARS).collect();
                Some(Self(Value::String(text)))
            }
        }
    }

    /// The detail when Didit sent a plain string, the common case.
    pub fn as_str(&self) -> Option<&str> {
        self.0.as_str()
    }

    /// The detail as Didit sent it.
    pub fn value(&self) -> &Value {
        &self.0
    }
}

impl fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Value::String(text) => f.write_str(text),
            other => write!(f, "{other}"),
        }
    }
}

/// Renders `": detail"` when there is a detail, nothing otherwise.
struct Suffix<'a>(&'a Option<ErrorDetail>);

impl fmt::Display for Suffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(detail) => write!(f, ": {detail}"),
            None => Ok(()),
        }
    }
}

/// Renders an optional `Retry-After` for the rate-limit message.
struct RetryAfter<'a>(&'a Option<Duration>);

impl fmt::Display for RetryAfter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(wait) => write!(f, " (retry after {} s)", wait.as_secs_f64()),
            None => Ok(()),
        }
    }
}

/// A failed Didit API call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 401 or 403: the API key is wrong, revoked, or lacks the permission.
    /// Didit answers a bad key with 403 (some of its pages say 401).
    #[error("didit refused the api key (http {status}){}", Suffix(.detail))]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// Didit's explanation.
        detail: Option<ErrorDetail>,
    },
    /// 404: the session (or other resource) does not exist or was deleted.
    #[error("didit resource not found{}", Suffix(.detail))]
    NotFound {
        /// Didit's explanation.
        detail: Option<ErrorDetail>,
    },
    /// 400: Didit rejected the request, e.g. a status transition it does not allow.
    #[error("didit rejected the request{}", Suffix(.detail))]
    BadRequest {
        /// Didit's explanation.
        detail: Option<ErrorDetail>,
    },
    /// 429 that was still there after every retry.
    #[error("didit rate limit exceeded{}", RetryAfter(.retry_after))]
    RateLimited {
        /// The last `Retry-After` Didit sent, uncapped.
        retry_after: Option<Duration>,
    },
    /// A 5xx that was not retried or was still there after every retry.
    #[error("didit server error (http {status}){}", Suffix(.detail))]
    Server {
        /// The 5xx status.
        status: u16,
        /// Didit's explanation, if any.
        detail: Option<ErrorDetail>,
    },
    /// Any other non-2xx status (3xx are not followed, see the client docs).
    #[error("unexpected http status {status} from didit{}", Suffix(.detail))]
    UnexpectedStatus {
        /// The status.
        status: u16,
        /// The body's detail, if any.
        detail: Option<ErrorDetail>,
    },
    /// No complete response within the configured timeout.
    #[error("didit call timed out")]
    Timeout,
    /// The connection failed or broke. The URL is stripped from the source
    /// because a query string can carry `vendor_data`.
    #[error("didit call failed in transport")]
    Transport {
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// A 2xx response whose body is not what the call expects.
    #[error("didit response could not be decoded: {reason}")]
    Decode {
        /// What was wrong, without the body's content.
        reason: String,
    },
    /// The call was refused before anything was sent, e.g. an empty session id.
    #[error("invalid didit request: {reason}")]
    InvalidArgument {
        /// What was wrong.
        reason: &'static str,
    },
}

impl ApiError {
    /// The message followed by its causes, `: `-separated, for an action's
    /// recorded error: a transport failure then says why (a certificate
    /// from an unknown issuer, a refused connection) instead of only that
    /// it failed. The causes are the HTTP stack's own errors, without the
    /// URL; Didit's text appears only as far as `Display` shows it.
    pub fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(cause) = next {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            next = cause.source();
        }
        text
    }

    /// The HTTP status Didit answered with, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Unauthorized { status, .. }
            | Self::Server { status, .. }
            | Self::UnexpectedStatus { status, .. } => Some(*status),
            Self::NotFound { .. } => Some(404),
            Self::BadRequest { .. } => Some(400),
            Self::RateLimited { .. } => Some(429),
            Self::Timeout | Self::Transport { .. } | Self::Decode { .. } => None,
            Self::InvalidArgument { .. } => None,
        }
    }

    /// Whether trying again later may succeed: rate limits, 5xx, timeouts and
    /// transport failures. Whether a given call may be repeated safely is a
    /// separate question; the client answers it per call (see the module docs).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::Server { .. } | Self::Timeout | Self::Transport { .. }
        )
    }

    /// The `detail` Didit sent, if any.
    pub fn detail(&self) -> Option<&ErrorDetail> {
        match self {
            Self::Unauthorized { detail, .. }
            | Self::NotFound { detail }
            | Self::BadRequest { detail }
            | Self::Server { detail, .. }
            | Self::UnexpectedStatus { detail, .. } => detail.as_ref(),
            _ => None,
        }
    }

    /// A short, fixed name for logs and metrics: unlike `Display` it never
    /// carries Didit's free text, which may quote personal data back.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "unauthorized",
            Self::NotFound { .. } => "not_found",
            Self::BadRequest { .. } => "bad_request",
            Self::RateLimited { .. } => "rate_limited",
            Self::Server { .. } => "server",
            Self::UnexpectedStatus { .. } => "unexpected_status",
            Self::Timeout => "timeout",
            Self::Transport { .. } => "transport",
            Self::Decode { .. } => "decode",
            Self::InvalidArgument { .. } => "invalid_argument",
        }
    }

    /// The error for a non-2xx response.
    pub(crate) fn from_status(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Self {
        let detail = ErrorDetail::from_body(body);
        match status {
            400 => Self::BadRequest { detail },
            401 | 403 => Self::Unauthorized { status, detail },
            404 => Self::NotFound { detail },
            429 => Self::RateLimited { retry_after },
            500..=599 => Self::Server { status, detail },
            _ => Self::UnexpectedStatus { status, detail },
        }
    }

    /// The error for a reqwest failure; the URL is dropped (see [`ApiError::Transport`]).
    pub(crate) fn from_reqwest(error: reqwest::Error) -> Self {
        if error.is_timeout() {
            Self::Timeout
        } else {
            Self::Transport {
                source: error.without_url(),
            }
        }
    }

    /// The error for a body that does not decode. Only serde's category and
    /// position are kept: its full message quotes offending values, which can
    /// be personal data.
    pub(crate) fn decode(error: &serde_json::Error) -> Self {
        let category = match error.classify() {
            serde_json::error::Category::Io => "i/o error",
            serde_json::error::Category::Syntax => "invalid json",
            serde_json::error::Category::Data => "unexpected json shape",
            serde_json::error::Category::Eof => "truncated json",
        };
        Self::Decode {
            reason: format!(
                "{category} at line {} column {}",
                error.line(),
                error.column()
            ),
        }
    }
}

/// Why [`super::DiditClient::new`] refused a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The base URL does not parse or is not http(s).
    #[error("invalid didit base url: {reason}")]
    BaseUrl {
        /// What was wrong.
        reason: String,
    },
    /// The API key cannot be sent as a header value.
    #[error("the didit api key is empty or not a valid header value")]
    ApiKey,
    /// The user agent cannot be sent as a header value.
    #[error("the user agent is not a valid header value")]
    UserAgent,
    /// A rate limit or its window is zero.
    #[error("rate limits and their window must be greater than zero")]
    RateLimit,
    /// reqwest could not build its client (e.g. no TLS backend).
    #[error("could not build the http client")]
    Http {
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_detail_is_extracted() {
        let error = ApiError::from_status(
            400,
            None,
            br#"{"detail": "The new status is the same as the current status."}"#,
        );
        assert!(matches!(error, ApiError::BadRequest { .. }));
        assert_eq!(
            error.to_string(),
            "didit rejected the request: The new status is the same as the current status."
        );
        assert_eq!(
            error.detail().and_then(ErrorDetail::as_str),
            Some("The new status is the same as the current status.")
        );
    }

    #[test]
    fn structured_detail_is_kept_as_json() {
        let error = ApiError::from_status(400, None, br#"{"detail": {"new_status": ["bad"]}}"#);
        assert_eq!(
            error.detail().map(ErrorDetail::value),
            Some(&serde_json::json!({"new_status": ["bad"]}))
        );
    }

    #[test]
    fn body_without_detail_is_kept_whole() {
        let error = ApiError::from_status(400, None, br#"{"workflow_id": ["required"]}"#);
        assert_eq!(
            error.detail().map(ErrorDetail::value),
            Some(&serde_json::json!({"workflow_id": ["required"]}))
        );
    }

    #[test]
    fn plain_text_detail_is_truncated() {
        let body = "x".repeat(1000);
        let error = ApiError::from_status(502, None, body.as_bytes());
        let kept = error
            .detail()
            .and_then(ErrorDetail::as_str)
            .unwrap_or_default();
        assert_eq!(kept.len(), MAX_TEXT_DETAIL_CHARS);
    }

    #[test]
    fn empty_body_has_no_detail() {
        let error = ApiError::from_status(503, None, b"  ");
        assert!(error.detail().is_none());
        assert_eq!(error.to_string(), "didit server error (http 503)");
    }

    #[test]
    fn statuses_map_to_variants() {
        assert!(matches!(
            ApiError::from_status(401, None, b""),
            ApiError::Unauthorized { status: 401, .. }
        ));
        assert!(matches!(
            ApiError::from_status(403, None, b""),
            ApiError::Unauthorized { status: 403, .. }
        ));
        assert!(matches!(
            ApiError::from_status(404, None, b""),
            ApiError::NotFound { .. }
        ));
        assert!(matches!(
            ApiError::from_status(409, None, b""),
            ApiError::UnexpectedStatus { status: 409, .. }
        ));
        assert_eq!(ApiError::from_status(429, None, b"").status(), Some(429));
        assert!(ApiError::from_status(500, None, b"").is_retryable());
        assert!(!ApiError::from_status(404, None, b"").is_retryable());
    }

    #[test]
    fn decode_error_does_not_quote_the_body() {
        let Err(error) = serde_json::from_str::<u64>(r#""Alice Example""#) else {
            panic!("a string is not a u64");
        };
        let message = ApiError::decode(&error).to_string();
        assert!(!message.contains("Alice"), "{message}");
    }
}

//! Signing and verifying Didit's three webhook signatures (docs/didit-protocol.md 1.2).
//!
//! - `X-Signature`: HMAC-SHA256 over the body bytes exactly as received;
//! - `X-Signature-V2`: HMAC-SHA256 over the canonical UTF-8 re-encoding of
//!   the parsed body ([`crate::canonical`]), so it survives a proxy that
//!   re-encodes the body;
//! - `X-Signature-Simple`: HMAC-SHA256 over
//!   `"{timestamp}:{session_id}:{status}:{webhook_type}"`, which
//!   authenticates only those four envelope fields, never `decision`.
//!
//! The key is the destination's `secret_shared_key` as UTF-8 bytes. Several
//! secrets may be configured at once so a secret can be rotated without
//! downtime. Comparisons are constant time (`Mac::verify_slice`).
//!
//! [`Verifier::verify`] tries the raw signature first (it needs no
//! re-encoding), then V2, then Simple when allowed, and only then checks the
//! body's signed `timestamp` for freshness, so that a reason such as "stale"
//! is only ever reported for a body that is authentic.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::canonical::{CanonicalError, Mode, Value};

type HmacSha256 = Hmac<Sha256>;

/// Default freshness window, either direction (docs/didit-protocol.md 1.3).
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// A webhook signing secret. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct Secret {
    value: String,
    // The HMAC state after absorbing the key, cloned for every message so
    // the key schedule is not redone per delivery.
    keyed: HmacSha256,
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        // HMAC accepts keys of any length, so this cannot fail.
        let keyed = match HmacSha256::new_from_slice(value.as_bytes()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("hmac accepts keys of any length"),
        };
        Self { value, keyed }
    }

    pub fn expose(&self) -> &str {
        &self.value
    }

    fn mac(&self, message: &[u8]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(message);
        mac
    }

    /// Lowercase hex HMAC-SHA256 of `message`.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.mac(message).finalize().into_bytes())
    }

    fn matches(&self, message: &[u8], expected: &[u8; 32]) -> bool {
        self.mac(message).verify_slice(expected).is_ok()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Which signature authenticated a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `X-Signature`, over the raw bytes.
    Raw,
    /// `X-Signature-V2`, over the canonical UTF-8 re-encoding.
    V2,
    /// `X-Signature-Simple`, over four envelope fields only.
    Simple,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Raw => "raw",
            Scheme::V2 => "v2",
            Scheme::Simple => "simple",
        }
    }

    /// Whether only the envelope (timestamp, session, status, type) is
    /// authenticated, so the body's `decision` must not be trusted.
    pub fn envelope_only(self) -> bool {
        self == Scheme::Simple
    }
}

/// The signature headers of one delivery; names are matched
/// case-insensitively by [`SignatureHeaders::from_pairs`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureHeaders {
    pub x_signature: Option<String>,
    pub x_signature_v2: Option<String>,
    pub x_signature_simple: Option<String>,
    pub x_timestamp: Option<String>,
}

impl SignatureHeaders {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut h = Self::default();
        for (name, value) in pairs {
            let Some(slot) = h.slot(name.trim()) else {
                continue;
            };
            *slot = Some(value.trim().to_owned());
        }
        h
    }

    /// The field for a header name, compared case-insensitively without
    /// lowercasing a copy of every header a delivery carries.
    fn slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        let is = |expected: &str| name.eq_ignore_ascii_case(expected);
        if is("x-signature") {
            Some(&mut self.x_signature)
        } else if is("x-signature-v2") {
            Some(&mut self.x_signature_v2)
        } else if is("x-signature-simple") {
            Some(&mut self.x_signature_simple)
        } else if is("x-timestamp") {
            Some(&mut self.x_timestamp)
        } else {
            None
        }
    }

    fn any_signature(&self) -> bool {
        self.x_signature.is_some()
            || self.x_signature_v2.is_some()
            || self.x_signature_simple.is_some()
    }
}

/// Why a delivery was refused. Externally every one of these is the same
/// `401 invalid_signature` except [`VerifyError::Unusable`]; the precise
/// reason is for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no signature header")]
    MissingSignature,
    #[error("no signature matched any configured secret")]
    BadSignature,
    #[error("only the simple signature matched, and it is not accepted")]
    SimpleNotAccepted,
    #[error("body is neither authentic by its raw signature nor parseable: {0}")]
    MalformedBody(CanonicalError),
    #[error("timestamp is {age_secs} s old, beyond the {tolerance_secs} s tolerance")]
    Stale { age_secs: i64, tolerance_secs: i64 },
    #[error("timestamp is {ahead_secs} s in the future, beyond the {tolerance_secs} s tolerance")]
    Future {
        ahead_secs: i64,
        tolerance_secs: i64,
    },
    #[error("x-timestamp header disagrees with the body's timestamp")]
    TimestampMismatch,
    /// The bytes are authentic but cannot be used: not JSON, or without a
    /// usable `timestamp`. Didit never retries a 4xx, so callers keep them.
    #[error("authentic delivery is unusable: {reason}")]
    Unusable { scheme: Scheme, reason: String },
}

impl VerifyError {
    /// Every [`VerifyError::reason`] of a refusal: all but
    /// [`VerifyError::Unusable`], which is kept rather than refused. Metrics
    /// register these up front.
    pub const REFUSAL_REASONS: [&'static str; 7] = [
        "missing_header",
        "bad_signature",
        "simple_not_accepted",
        "malformed_body",
        "stale",
        "future",
        "timestamp_mismatch",
    ];

    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::MissingSignature => "missing_header",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::SimpleNotAccepted => "simple_not_accepted",
            VerifyError::MalformedBody(_) => "malformed_body",
            VerifyError::Stale { .. } => "stale",
            VerifyError::Future { .. } => "future",
            VerifyError::TimestampMismatch => "timestamp_mismatch",
            VerifyError::Unusable { .. } => "unusable",
        }
    }
}

/// An authenticated delivery, with its parsed body.
#[derive(Debug, Clone)]
pub struct Verified<'a> {
    pub scheme: Scheme,
    /// Index of the configured secret that matched (0 is the current one).
    pub secret_index: usize,
    /// The body's signed `timestamp`, Unix seconds.
    pub timestamp: i64,
    pub body: Value<'a>,
}

impl Verified<'_> {
    pub fn envelope_only(&self) -> bool {
        self.scheme.envelope_only()
    }
}

/// Verifies deliveries against one or more secrets.
#[derive(Debug, Clone)]
pub struct Verifier {
    secrets: Vec<Secret>,
    tolerance_secs: i64,
    accept_simple: bool,
}

impl Verifier {
    /// `secrets` in order of preference: the first is the current one.
    pub fn new(secrets: Vec<Secret>) -> Self {
        Self {
            secrets,
            tolerance_secs: DEFAULT_TOLERANCE_SECS,
            accept_simple: false,
        }
    }

    pub fn with_tolerance_secs(mut self, secs: i64) -> Self {
        self.tolerance_secs = secs;
        self
    }

    pub fn accept_simple(mut self, yes: bool) -> Self {
        self.accept_simple = yes;
        self
    }

    /// Verify `body` as received with its headers at `now_secs`.
    pub fn verify<'a>(
        &self,
        body: &'a [u8],
        headers: &SignatureHeaders,
        now_secs: i64,
    ) -> Result<Verified<'a>, VerifyError> {
        if !headers.any_signature() {
            return Err(VerifyError::MissingSignature);
        }
        let raw = headers
            .x_signature
            .as_deref()
            .and_then(decode_hex32)
            .and_then(|sig| self.find(body, &sig));
        let parsed = Value::parse(body);
        let (scheme, secret_index, value) = match (raw, parsed) {
            (Some(i), Ok(v)) => (Scheme::Raw, i, v),
            (Some(_), Err(e)) => {
                return Err(VerifyError::Unusable {
                    scheme: Scheme::Raw,
                    reason: e.to_string(),
                })
            }
            (None, Err(e)) => return Err(VerifyError::MalformedBody(e)),
            (None, Ok(v)) => match self.verify_parsed(&v, headers)? {
                Some((scheme, i)) => (scheme, i, v),
                None => return Err(VerifyError::BadSignature),
            },
        };
        let timestamp = match value.get("timestamp") {
            Some(Value::Number(lit)) => lit.parse::<i64>().ok(),
            _ => None,
        }
        .ok_or_else(|| VerifyError::Unusable {
            scheme,
            reason: "missing or non-integer timestamp".to_owned(),
        })?;
        if let Some(h) = headers.x_timestamp.as_deref() {
            if h.parse::<i64>().ok() != Some(timestamp) {
                return Err(VerifyError::TimestampMismatch);
            }
        }
        let tolerance_secs = self.tolerance_secs;
        if now_secs - timestamp > tolerance_secs {
            return Err(VerifyError::Stale {
                age_secs: now_secs - timestamp,
                tolerance_secs,
            });
        }
        if timestamp - now_secs > tolerance_secs {
            return Err(VerifyError::Future {
                ahead_secs: timestamp - now_secs,
                tolerance_secs,
            });
        }
        Ok(Verified {
            scheme,
            secret_index,
            timestamp,
            body: value,
        })
    }

    /// V2, then Simple, on an already parsed body.
    fn verify_parsed(
        &self,
        value: &Value<'_>,
        headers: &SignatureHeaders,
    ) -> Result<Option<(Scheme, usize)>, VerifyError> {
        if let Some(sig) = headers.x_signature_v2.as_deref().and_then(decode_hex32) {
            let message = value.to_canonical(Mode::Utf8);
            if let Some(i) = self.find(&message, &sig) {
                return Ok(Some((Scheme::V2, i)));
            }
        }
        if let Some(sig) = headers.x_signature_simple.as_deref().and_then(decode_hex32) {
            if let Some(i) = self.find(simple_message(value).as_bytes(), &sig) {
                if !self.accept_simple {
                    return Err(VerifyError::SimpleNotAccepted);
                }
                return Ok(Some((Scheme::Simple, i)));
            }
        }
        Ok(None)
    }

    fn find(&self, message: &[u8], sig: &[u8; 32]) -> Option<usize> {
        // Every secret is tried even after a match would be found, so the
        // time taken does not tell which secret (if any) matched.
        let mut found = None;
        for (i, secret) in self.secrets.iter().enumerate() {
            if secret.matches(message, sig) && found.is_none() {
                found = Some(i);
            }
        }
        found
    }
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// The message signed by `X-Signature-Simple`: the four envelope fields
/// joined by `:`, a missing one as the empty string.
pub fn simple_message(body: &Value<'_>) -> String {
    let field = |k: &str| body.get(k).map(Value::simple_text).unwrap_or_default();
    format!(
        "{}:{}:{}:{}",
        field("timestamp"),
        field("session_id"),
        field("status"),
        field("webhook_type")
    )
}

/// A delivery as Didit would send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The canonical ASCII body.
    pub body: Vec<u8>,
    /// Header names and values, in the order Didit sends them.
    pub headers: Vec<(&'static str, String)>,
}

/// The `User-Agent` Didit sends with every delivery.
pub const USER_AGENT: &str = "DiditWebhook/2.0 +https://didit.me";

/// Sign `payload` exactly as Didit does: canonical ASCII body, the three
/// signatures, `X-Timestamp` from the body's `timestamp`, and Didit's
/// `Content-Type` and `User-Agent`.
pub fn sign(secret: &Secret, payload: &Value<'_>) -> Signed {
    let body = payload.to_canonical(Mode::Ascii);
    let v2 = payload.to_canonical(Mode::Utf8);
    let mut headers = vec![
        ("Content-Type", "application/json".to_owned()),
        ("User-Agent", USER_AGENT.to_owned()),
        ("X-Signature", secret.sign_hex(&body)),
        ("X-Signature-V2", secret.sign_hex(&v2)),
        (
            "X-Signature-Simple",
            secret.sign_hex(simple_message(payload).as_bytes()),
        ),
    ];
    if let Some(ts) = payload.get("timestamp") {
        headers.push(("X-Timestamp", ts.simple_text()));
    }
    Signed { body, headers }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_774_970_000;

    fn signed(body: &str, secret: &str) -> (Vec<u8>, SignatureHeaders) {
        let v = Value::parse(body.as_bytes()).unwrap();
        let s = sign(&Secret::new(secret), &v);
        let h = SignatureHeaders::from_pairs(s.headers.iter().map(|(k, v)| (*k, v.as_str())));
        (s.body, h)
    }

    const BODY: &str = r#"{"session_id":"s1","status":"Approved","timestamp":1774970000,"webhook_type":"status.updated","decision":{"n":"Jürgen"}}"#;

    #[test]
    fn refusal_reasons_are_exactly_the_reasons_of_refusals() {
        // A new variant stops this from compiling until it is listed below.
        fn listed(e: &VerifyError) {
            match e {
                VerifyError::MissingSignature
                | VerifyError::BadSignature
                | VerifyError::SimpleNotAccepted
                | VerifyError::MalformedBody(_)
                | VerifyError::Stale { .. }
                | VerifyError::Future { .. }
                | VerifyError::TimestampMismatch
                | VerifyError::Unusable { .. } => {}
            }
        }
        let refusals = [
            VerifyError::MissingSignature,
            VerifyError::BadSignature,
            VerifyError::SimpleNotAccepted,
            VerifyError::MalformedBody(CanonicalError::UnexpectedEnd),
            VerifyError::Stale {
                age_secs: 400,
                tolerance_secs: 300,
            },
            VerifyError::Future {
                ahead_secs: 400,
                tolerance_secs: 300,
            },
            VerifyError::TimestampMismatch,
        ];
        refusals.iter().for_each(listed);
        let reasons: Vec<&str> = refusals.iter().map(VerifyError::reason).collect();
        assert_eq!(reasons, VerifyError::REFUSAL_REASONS);
        let unusable = VerifyError::Unusable {
            scheme: Scheme::Raw,
            reason: "not JSON".into(),
        };
        assert!(!VerifyError::REFUSAL_REASONS.contains(&unusable.reason()));
    }

    #[test]
    fn signed_bodies_verify_by_raw_signature() {
        let (body, h) = signed(BODY, "k1");
        let v = Verifier::new(vec![Secret::new("k1")])
            .verify(&body, &h, NOW)
            .unwrap();
        assert_eq!(v.scheme, Scheme::Raw);
        assert_eq!(v.timestamp, NOW);
    }

    #[test]
    fn a_rotated_secret_still_verifies_and_is_identified() {
        let (body, h) = signed(BODY, "old");
        let verifier = Verifier::new(vec![Secret::new("new"), Secret::new("old")]);
        assert_eq!(verifier.verify(&body, &h, NOW).unwrap().secret_index, 1);
        let wrong = Verifier::new(vec![Secret::new("other")]);
        assert_eq!(
            wrong.verify(&body, &h, NOW).unwrap_err(),
            VerifyError::BadSignature
        );
    }

    #[test]
    fn reencoded_body_verifies_through_v2_only() {
        let (_, h) = signed(BODY, "k1");
        let pretty = "{\n  \"webhook_type\": \"status.updated\", \"decision\": {\"n\": \"J\\u00fcrgen\"},\n \"timestamp\": 1774970000, \"status\": \"Approved\", \"session_id\": \"s1\"}";
        let v = Verifier::new(vec![Secret::new("k1")])
            .verify(pretty.as_bytes(), &h, NOW)
            .unwrap();
        assert_eq!(v.scheme, Scheme::V2);
    }

    #[test]
    fn simple_only_is_refused_unless_accepted_and_then_marked_envelope_only() {
        let (_, mut h) = signed(BODY, "k1");
        h.x_signature = None;
        h.x_signature_v2 = None;
        let tampered = BODY.replace("Jürgen", "Mallory");
        let strict = Verifier::new(vec![Secret::new("k1")]);
        assert_eq!(
            strict.verify(tampered.as_bytes(), &h, NOW).unwrap_err(),
            VerifyError::SimpleNotAccepted
        );
        let v = strict
            .accept_simple(true)
            .verify(tampered.as_bytes(), &h, NOW)
            .unwrap();
        assert_eq!(v.scheme, Scheme::Simple);
        assert!(v.envelope_only());
    }

    #[test]
    fn freshness_is_checked_both_ways_with_a_configurable_tolerance() {
        let (body, h) = signed(BODY, "k1");
        let v = Verifier::new(vec![Secret::new("k1")]);
        assert!(v.verify(&body, &h, NOW + 300).is_ok());
        assert!(v.verify(&body, &h, NOW - 300).is_ok());
        assert!(matches!(
            v.verify(&body, &h, NOW + 301),
            Err(VerifyError::Stale { age_secs: 301, .. })
        ));
        assert!(matches!(
            v.verify(&body, &h, NOW - 301),
            Err(VerifyError::Future {
                ahead_secs: 301,
                ..
            })
        ));
        let tight = v.with_tolerance_secs(10);
        assert!(matches!(
            tight.verify(&body, &h, NOW + 11),
            Err(VerifyError::Stale { .. })
        ));
    }

    #[test]
    fn x_timestamp_must_agree_with_the_body() {
        let (body, mut h) = signed(BODY, "k1");
        h.x_timestamp = Some("1774970001".into());
        let v = Verifier::new(vec![Secret::new("k1")]);
        assert_eq!(
            v.verify(&body, &h, NOW).unwrap_err(),
            VerifyError::TimestampMismatch
        );
        h.x_timestamp = None;
        assert!(v.verify(&body, &h, NOW).is_ok());
    }

    #[test]
    fn each_failure_has_its_own_reason() {
        let v = Verifier::new(vec![Secret::new("k1")]);
        let none = SignatureHeaders::default();
        assert_eq!(
            v.verify(BODY.as_bytes(), &none, NOW).unwrap_err().reason(),
            "missing_header"
        );
        let garbage = SignatureHeaders {
            x_signature: Some("zz".into()),
            ..Default::default()
        };
        assert_eq!(
            v.verify(b"not json", &garbage, NOW).unwrap_err().reason(),
            "malformed_body"
        );
        // Authentic bytes that are not JSON are unusable, not forged.
        let s = Secret::new("k1");
        let h = SignatureHeaders {
            x_signature: Some(s.sign_hex(b"not json")),
            ..Default::default()
        };
        assert_eq!(
            v.verify(b"not json", &h, NOW).unwrap_err().reason(),
            "unusable"
        );
        let no_ts = br#"{"webhook_type":"status.updated"}"#;
        let h = SignatureHeaders {
            x_signature: Some(s.sign_hex(no_ts)),
            ..Default::default()
        };
        assert_eq!(v.verify(no_ts, &h, NOW).unwrap_err().reason(), "unusable");
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let v = Verifier::new(vec![Secret::new("supersecretvalue")]);
        assert!(!format!("{v:?}").contains("supersecret"));
    }

    #[test]
    fn header_names_match_case_insensitively() {
        let h = SignatureHeaders::from_pairs([
            ("x-signature-v2", "ab"),
            ("X-TIMESTAMP", " 5 "),
            ("Other", "x"),
        ]);
        assert_eq!(h.x_signature_v2.as_deref(), Some("ab"));
        assert_eq!(h.x_timestamp.as_deref(), Some("5"));
    }
}

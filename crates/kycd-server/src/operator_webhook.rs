//! Signing of kycd's own webhooks to the operator's application, per the
//! Standard Webhooks specification (<https://www.standardwebhooks.com/>):
//!
//! - `webhook-id`: the message id, the same on every retry of one message;
//! - `webhook-timestamp`: Unix seconds of this attempt;
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256>` of `id.timestamp.body`,
//!   keyed with the base64-decoded part of a `whsec_...` secret; with
//!   several secrets (a rotation), one signature per secret, separated by
//!   spaces, so a receiver holding either verifies.
//!
//! This module only signs; delivery, retries and the outbox build on it.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A signing secret: the key bytes of a `whsec_<base64>` string.
#[derive(Clone)]
pub struct SigningSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret([redacted])")
    }
}

/// Why a secret was refused. Never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("an operator webhook secret must start with whsec_")]
    MissingPrefix,
    #[error("the part of an operator webhook secret after whsec_ is not valid base64")]
    NotBase64,
    #[error("an operator webhook secret must hold at least 16 key bytes")]
    TooShort,
}

impl SigningSecret {
    /// Parse `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = BASE64.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        if key.len() < 16 {
            return Err(SecretError::TooShort);
        }
        Ok(Self { key })
    }

    /// `v1,<base64 HMAC-SHA256 of id.timestamp.body>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

/// The three headers for one attempt of one message.
pub fn headers(
    secrets: &[SigningSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> [(&'static str, String); 3] {
    let signatures: Vec<String> = secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect();
    [
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signatures.join(" ")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the specification's reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn secrets_are_checked_without_echoing_them() {
        assert!(SigningSecret::parse(SECRET).is_ok());
        assert_eq!(
            SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            SecretError::MissingPrefix
        );
        let err = SigningSecret::parse("whsec_not base64!").unwrap_err();
        assert_eq!(err, SecretError::NotBase64);
        assert!(!err.to_string().contains("not base64!"));
        assert_eq!(
            SigningSecret::parse("whsec_c2hvcnQ=").unwrap_err(),
            SecretError::TooShort
        );
        let debug = format!("{:?}", SigningSecret::parse(SECRET).unwrap());
        assert!(!debug.contains("MfKQ"), "{debug}");
    }

    #[test]
    fn the_specification_example_signs_as_published() {
        // From the Standard Webhooks reference libraries' test suites.
        let s = SigningSecret::parse(SECRET).unwrap();
        let sig = s.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_rotation_signs_with_every_secret() {
        let a = SigningSecret::parse(SECRET).unwrap();
        let b = SigningSecret::parse("whsec_dGhpcy1pcy1hLXNlY29uZC1rZXktMzItYnl0ZXM=").unwrap();
        let h = headers(&[a.clone(), b.clone()], "msg_1", 1_700_000_000, b"{}");
        let sig = &h[2].1;
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], a.sign("msg_1", 1_700_000_000, b"{}"));
        assert_eq!(parts[1], b.sign("msg_1", 1_700_000_000, b"{}"));
        assert_ne!(parts[0], parts[1]);
    }
}

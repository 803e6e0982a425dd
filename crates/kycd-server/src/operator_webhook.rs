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
//! On top of signing, [`Sender`] delivers one attempt of one [`Message`] to
//! the operator's endpoint; the outbox worker owns retries, using
//! [`RETRY_SCHEDULE`] and [`DISABLE_AFTER_FAILURES`].
//!
//! The endpoint URL comes from configuration, but a webhook sender is a
//! classic server-side request forgery vector (a URL pointing at
//! `169.254.169.254` or an internal admin port), so unless private delivery
//! is explicitly allowed the sender refuses every non-public address
//! ([`is_public`]) both when it is built and at each connection: DNS
//! answers are filtered by a custom resolver, since a name that was public
//! yesterday may resolve to `127.0.0.1` today.
//!
//! An endpoint whose certificate a private CA issued is trusted through
//! `KYCD_CA_BUNDLE` ([`Sender::with_ca_bundle`], [`crate::ca_bundle`]).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ca_bundle::CaBundle;

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

/// One message as delivered: the same `id` on every retry of it, so the
/// receiver can deduplicate; `timestamp` (Unix seconds) is that of this
/// attempt and is signed, so a receiver can refuse stale replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    /// Unix seconds.
    pub timestamp: i64,
    pub body: Vec<u8>,
}

/// The published retry schedule (Standard Webhooks / Svix practice): entry
/// `n - 1` is the delay before attempt `n + 1` after `n` failed attempts of
/// one message. Eight attempts in all, spread over about 27.6 hours, so an
/// endpoint down for a deploy or a long night still receives everything;
/// after the last entry the message has failed for good.
pub const RETRY_SCHEDULE: [std::time::Duration; 7] = [
    std::time::Duration::from_secs(5),
    std::time::Duration::from_secs(5 * 60),
    std::time::Duration::from_secs(30 * 60),
    std::time::Duration::from_secs(2 * 60 * 60),
    std::time::Duration::from_secs(5 * 60 * 60),
    std::time::Duration::from_secs(10 * 60 * 60),
    std::time::Duration::from_secs(10 * 60 * 60),
];

/// After this many consecutive failed attempts to one endpoint, with no
/// success in between, the endpoint is disabled (until the operator
/// re-enables it) rather than retried for ever.
///
/// 15 is just under two messages' full schedules (8 attempts each), so a
/// single poisoned message cannot disable an endpoint on its own, while an
/// endpoint that fails everything for more than a day of retries stops
/// costing connections and log noise. It counts attempts, not time: a
/// worker that attempts many messages to one endpoint concurrently reaches
/// it sooner, in wall-clock terms, than one delivering in order.
pub const DISABLE_AFTER_FAILURES: u32 = 15;

/// The user agent of every delivery.
const USER_AGENT: &str = concat!("kycd/", env!("CARGO_PKG_VERSION"));

/// Whether `ip` is an address on the public Internet, i.e. one a webhook
/// may be delivered to without `allow_private`.
///
/// Refused: unspecified and "this network" (`0.0.0.0/8`, `::`), loopback
/// (`127/8`, `::1`), private (`10/8`, `172.16/12`, `192.168/16`),
/// carrier-grade NAT (`100.64/10`), link-local (`169.254/16`, `fe80::/10`),
/// unique-local (`fc00::/7`) and deprecated site-local (`fec0::/10`),
/// multicast, broadcast and the reserved `240/4`, IETF protocol assignments
/// (`192.0.0/24`), benchmarking (`198.18/15`), documentation ranges, the
/// IPv6 discard prefix (`100::/64`) and Teredo (`2001::/32`). IPv6 forms
/// that embed an IPv4 address (mapped `::ffff:a.b.c.d`, compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by that
/// IPv4 address, since the connection ends up there.
///
/// (`std`'s `is_global` would do most of this but is not stable.)
pub fn is_public(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => is_public_v4(v4),
        std::net::IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: std::net::Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network", including 0.0.0.0
        || a == 10
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || a == 127
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224) // multicast 224/4, reserved 240/4, broadcast
}

fn is_public_v6(ip: std::net::Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| {
        std::net::Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
    };
    if ip.is_unspecified() || ip.is_loopback() {
        return false;
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // IPv4-compatible ::a.b.c.d (deprecated, but still routed by some stacks).
    if s[..6] == [0; 6] {
        return is_public_v4(embedded(s[6], s[7]));
    }
    // NAT64 well-known prefix: the gateway connects to the embedded address.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(s[6], s[7]));
    }
    // 6to4: 2002:aabb:ccdd::/48 tunnels to a.b.c.d.
    if s[0] == 0x2002 {
        return is_public_v4(embedded(s[1], s[2]));
    }
    !((s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64 64:ff9b:1::/48
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
        || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32
        || (s[0] == 0x2001 && s[1] == 0xdb8) // documentation 2001:db8::/32
        || (s[0] & 0xfff0) == 0x3ff0 // documentation 3fff::/20
        || (s[0] & 0xfe00) == 0xfc00 // unique-local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
        || (s[0] & 0xff00) == 0xff00) // multicast ff00::/8
}

/// Why an endpoint URL was refused by [`Sender::new`]. Never contains the
/// URL itself (it may carry credentials).
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("the operator webhook URL is not a valid URL: {0}")]
    InvalidUrl(String),
    #[error("the operator webhook URL must be http or https, not {0}")]
    Scheme(String),
    #[error("the operator webhook URL has no host")]
    NoHost,
    #[error("the operator webhook URL points at the non-public address {0}, and private delivery is not allowed")]
    PrivateAddress(std::net::IpAddr),
    #[error("could not build the HTTP client for operator webhooks: {0}")]
    Client(String),
}

/// Why one delivery attempt failed. Every variant is retryable by the
/// outbox; [`SendError::code`] is the label for metrics.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// A non-2xx answer, including 3xx: redirects are not followed, since a
    /// redirect could point the signed body anywhere, private addresses
    /// included.
    #[error("the operator endpoint answered {0}")]
    Status(u16),
    /// No complete answer within the sender's timeout.
    #[error("the operator endpoint did not answer in time")]
    Timeout,
    /// Connection, DNS, TLS or protocol failure. The message describes the
    /// failure only: neither the body nor the URL.
    #[error("could not reach the operator endpoint: {0}")]
    Connect(String),
    /// The host resolved only to non-public addresses and private delivery
    /// is not allowed.
    #[error("refused to deliver to the operator endpoint: {0}")]
    Blocked(String),
}

impl SendError {
    /// A short stable label for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            SendError::Status(_) => "status",
            SendError::Timeout => "timeout",
            SendError::Connect(_) => "connect",
            SendError::Blocked(_) => "blocked",
        }
    }
}

/// One successful delivery: the 2xx status and the time to the answer's
/// headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub status: u16,
    pub elapsed_ms: u64,
}

/// Delivers messages to one operator endpoint, one attempt per
/// [`Sender::send`]. Cheap to clone (the HTTP client is shared).
#[derive(Clone, Debug)]
pub struct Sender {
    client: reqwest::Client,
    url: reqwest::Url,
    secrets: Vec<SigningSecret>,
    allow_private: bool,
}

impl Sender {
    /// Validates the URL (http or https only, with a host) and builds the
    /// client. With `allow_private == false` an IP-literal host that is not
    /// [public](is_public) is refused here already, and names are resolved
    /// by a resolver that drops non-public answers at every connection.
    ///
    /// `timeout` bounds a whole attempt: connecting, sending and receiving
    /// the answer's headers.
    pub fn new(
        url: &str,
        secrets: Vec<SigningSecret>,
        allow_private: bool,
        timeout: std::time::Duration,
    ) -> Result<Sender, EndpointError> {
        Self::with_ca_bundle(url, secrets, allow_private, timeout, &CaBundle::default())
    }

    /// [`Sender::new`], trusting `roots` (`KYCD_CA_BUNDLE`) besides the
    /// built-in roots: an endpoint behind the operator's private CA.
    pub fn with_ca_bundle(
        url: &str,
        secrets: Vec<SigningSecret>,
        allow_private: bool,
        timeout: std::time::Duration,
        roots: &CaBundle,
    ) -> Result<Sender, EndpointError> {
        let url = reqwest::Url::parse(url.trim())
            .map_err(|e| EndpointError::InvalidUrl(e.to_string()))?;
        match url.scheme() {
            "http" | "https" => {}
            other => return Err(EndpointError::Scheme(other.to_owned())),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(EndpointError::NoHost);
        }
        if !allow_private {
            if let Some(ip) = host_ip(&url) {
                if !is_public(ip) {
                    return Err(EndpointError::PrivateAddress(ip));
                }
            }
        }
        let mut builder = roots
            .apply(reqwest::Client::builder())
            // A redirect would let the endpoint send the signed body (and
            // our connection) anywhere, past the address check.
            .redirect(reqwest::redirect::Policy::none())
            // An environment proxy would connect on our behalf, past the
            // address check, and see every body.
            .no_proxy()
            .user_agent(USER_AGENT)
            .timeout(timeout)
            .connect_timeout(timeout);
        if !allow_private {
            builder = builder.dns_resolver(std::sync::Arc::new(PublicOnlyResolver));
        }
        let client = builder
            .build()
            .map_err(|e| EndpointError::Client(error_chain(e)))?;
        Ok(Sender {
            client,
            url,
            secrets,
            allow_private,
        })
    }

    /// The endpoint URL, as normalised by parsing (for example
    /// `https://example.com` becomes `https://example.com/`).
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// One attempt: POSTs the body with `content-type: application/json`,
    /// the three `webhook-*` headers (signed with every secret), the user
    /// agent `kycd/<version>` and a `Content-Length` (a fixed-length body,
    /// never chunked, which some receivers refuse). A 2xx answer is a
    /// delivery; anything else is a [`SendError`].
    pub async fn send(&self, msg: &Message) -> Result<Delivered, SendError> {
        // IP literals bypass reqwest's resolver, so check them here too
        // (already refused by `new`; kept so that a change there cannot
        // silently open the hole).
        if !self.allow_private {
            if let Some(ip) = host_ip(&self.url) {
                if !is_public(ip) {
                    return Err(SendError::Blocked(format!("{ip} is not a public address")));
                }
            }
        }
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/json"),
        );
        for (name, value) in self::headers(&self.secrets, &msg.id, msg.timestamp, &msg.body) {
            // Only the id can be invalid (timestamp and signatures are
            // ASCII); an id the outbox generated that is not a header value
            // is a bug there, reported rather than panicking here.
            let value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                SendError::Connect(format!("the message id is not a valid {name} header value"))
            })?;
            headers.insert(name, value);
        }
        let started = std::time::Instant::now();
        // A `Vec<u8>` body has a known length, so reqwest sends
        // Content-Length rather than chunked encoding.
        let result = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(msg.body.clone())
            .send()
            .await;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match result {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    Ok(Delivered {
                        status: status.as_u16(),
                        elapsed_ms,
                    })
                } else {
                    Err(SendError::Status(status.as_u16()))
                }
            }
            Err(e) => Err(classify(e)),
        }
    }
}

/// The address of an IP-literal host, if it is one. Parsing has already
/// normalised IPv4 spellings such as `0x7f.1` or `2130706433` to dotted
/// form, and IPv6 literals come bracketed.
fn host_ip(url: &reqwest::Url) -> Option<std::net::IpAddr> {
    let host = url.host_str()?;
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// Map a reqwest error to a [`SendError`], finding our resolver's refusal
/// wherever it sits in the source chain.
fn classify(e: reqwest::Error) -> SendError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(blocked) = err.downcast_ref::<BlockedAddresses>() {
            return SendError::Blocked(blocked.to_string());
        }
        source = err.source();
    }
    if e.is_timeout() {
        return SendError::Timeout;
    }
    SendError::Connect(error_chain(e))
}

/// The error and its sources, without the URL (which may carry
/// credentials). reqwest errors never include the request body.
fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}

/// Our resolver's refusal: the name resolved, but only to non-public
/// addresses.
#[derive(Debug)]
struct BlockedAddresses {
    host: String,
    addresses: Vec<std::net::IpAddr>,
}

impl std::fmt::Display for BlockedAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolved only to non-public addresses (", self.host)?;
        for (i, ip) in self.addresses.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{ip}")?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for BlockedAddresses {}

/// Resolves with the system resolver (via tokio) and drops every non-public
/// address, so the check holds at connection time whatever DNS says then;
/// fails with [`BlockedAddresses`] when nothing public remains.
struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest substitutes the URL's (or the scheme's) port.
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let (public, refused): (Vec<_>, Vec<_>) = resolved.partition(|a| is_public(a.ip()));
            if public.is_empty() && !refused.is_empty() {
                let addresses = refused.iter().map(|a| a.ip()).collect();
                return Err(Box::new(BlockedAddresses { host, addresses }) as _);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
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

    #[test]
    fn only_public_addresses_are_public() {
        let table: &[(&str, bool)] = &[
            // Public.
            ("93.184.216.34", true),
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("100.63.255.255", true),
            ("100.128.0.0", true),
            ("172.15.255.255", true),
            ("172.32.0.0", true),
            ("192.169.0.1", true),
            ("223.255.255.255", true),
            ("2606:2800::1", true),
            ("2a00:1450:4001:80b::200e", true),
            ("::ffff:93.184.216.34", true),
            ("64:ff9b::5db8:d822", true), // NAT64 of 93.184.216.34
            ("2002:5db8:d822::1", true),  // 6to4 of 93.184.216.34
            // "This network" and unspecified.
            ("0.0.0.0", false),
            ("0.1.2.3", false),
            ("::", false),
            // Loopback.
            ("127.0.0.1", false),
            ("127.255.255.254", false),
            ("::1", false),
            // Private and carrier-grade NAT.
            ("10.0.0.1", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("192.168.1.1", false),
            ("100.64.0.1", false),
            ("100.127.255.255", false),
            // Link-local (cloud metadata lives here) and unique-local.
            ("169.254.169.254", false),
            ("fe80::1", false),
            ("febf::1", false),
            ("fc00::1", false),
            ("fd12:3456::1", false),
            ("fec0::1", false),
            // Multicast, broadcast, reserved.
            ("224.0.0.1", false),
            ("239.255.255.250", false),
            ("255.255.255.255", false),
            ("240.0.0.1", false),
            ("ff02::1", false),
            // Documentation, benchmarking, protocol assignments.
            ("192.0.2.1", false),
            ("198.51.100.1", false),
            ("203.0.113.1", false),
            ("198.18.0.1", false),
            ("192.0.0.8", false),
            ("2001:db8::1", false),
            ("3fff::1", false),
            ("100::1", false),
            ("2001::1", false), // Teredo
            // IPv6 forms of non-public IPv4 addresses.
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.0.0.1", false),
            ("::ffff:169.254.169.254", false),
            ("::ffff:0.0.0.0", false),
            ("::127.0.0.1", false), // IPv4-compatible
            ("::10.0.0.1", false),
            ("64:ff9b::7f00:1", false), // NAT64 of 127.0.0.1
            ("64:ff9b:1::1", false),
            ("2002:7f00:1::1", false), // 6to4 of 127.0.0.1
            ("2002:a00:1::1", false),  // 6to4 of 10.0.0.1
        ];
        for (text, public) in table {
            let ip: std::net::IpAddr = text.parse().unwrap();
            assert_eq!(is_public(ip), *public, "{text}");
        }
    }

    #[test]
    fn the_schedule_spans_about_a_day_and_failures_have_stable_codes() {
        let total: std::time::Duration = RETRY_SCHEDULE.iter().sum();
        assert_eq!(total.as_secs(), 5 + 5 * 60 + 30 * 60 + 27 * 60 * 60);
        assert!(RETRY_SCHEDULE.windows(2).all(|w| w[0] <= w[1]));
        // A single message's attempts cannot disable an endpoint alone.
        assert!(DISABLE_AFTER_FAILURES as usize > RETRY_SCHEDULE.len() + 1);
        let codes = [
            SendError::Status(500).code(),
            SendError::Timeout.code(),
            SendError::Connect(String::new()).code(),
            SendError::Blocked(String::new()).code(),
        ];
        assert_eq!(codes, ["status", "timeout", "connect", "blocked"]);
    }

    /// `new` refuses private IP literals, so `send`'s own check is only
    /// reachable by building a `Sender` around it: the second line of
    /// defence must hold on its own, without a connection attempt.
    #[tokio::test]
    async fn send_blocks_a_private_ip_literal_itself() {
        for url in ["http://127.0.0.1:9/", "http://[::ffff:10.0.0.1]:9/"] {
            let sender = Sender {
                client: reqwest::Client::new(),
                url: reqwest::Url::parse(url).unwrap(),
                secrets: Vec::new(),
                allow_private: false,
            };
            let msg = Message {
                id: "msg_1".into(),
                timestamp: 0,
                body: b"{}".to_vec(),
            };
            let err = sender.send(&msg).await.unwrap_err();
            assert!(matches!(err, SendError::Blocked(_)), "{url}: {err:?}");
        }
    }

    #[test]
    fn endpoint_errors_do_not_echo_the_url() {
        let err = Sender::new(
            "gopher://user:hunter2@example.com/",
            Vec::new(),
            false,
            std::time::Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = Sender::new(
            "http://user:hunter2@10.0.0.1/",
            Vec::new(),
            false,
            std::time::Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, EndpointError::PrivateAddress(_)));
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}

//! The console behind a reverse proxy: which origin its forms come from.
//!
//! Besides its CSRF token, a console form is refused unless its `Origin`
//! is the console's own ([`same_origin`], called by `console::Posted` and
//! the sign-in). Served directly, that is the request's `Host`. A reverse
//! proxy that rewrites `Host` (to `127.0.0.1:8081`, say) breaks that: the
//! browser's `Origin` (`https://kyc.example.com`) never matches, and every
//! sign-in and form is refused. Two settings say where the console really
//! is:
//!
//! - `KYCD_PUBLIC_URL` ([`PublicUrl`]): the console's address as browsers
//!   use it. When set, a form's `Origin` must be exactly its origin
//!   (scheme, host and port), whatever the request's headers say.
//! - `KYCD_TRUSTED_PROXIES` ([`TrustedProxies`]): the proxies' addresses.
//!   On a connection whose peer is one of them, `X-Forwarded-Host` stands
//!   in for `Host`, and `X-Forwarded-Proto`, when sent, must be the
//!   `Origin`'s scheme. From any other peer both are ignored, so a client
//!   cannot name its own origin by sending them. The peer is the TCP peer
//!   that `serving` puts in each request as axum's `ConnectInfo`.
//!
//! The public URL wins over forwarded headers. Nothing else in kycd builds
//! an absolute URL from `Host` (its redirects are paths), so the origin
//! check is the only place either setting is read.

use std::net::IpAddr;

use axum::http::{header, HeaderMap};
use ipnet::IpNet;

use crate::settings::{Meta, Value};
use crate::Settings;

/// The console's public address: an `http://` or `https://` URL with a
/// host, and nothing after it but an optional `/` (the console is served
/// at the root, `/console/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    /// The URL as parsed (lowercased host, default port dropped).
    url: String,
    /// Its origin as browsers send it in `Origin`: `https://kyc.example.com`.
    origin: String,
}

impl PublicUrl {
    /// Parse and check a public URL. The error says what is wrong without
    /// repeating the text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(text.trim())
            .map_err(|e| format!("expected an http:// or https:// URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("expected an http:// or https:// URL".to_owned());
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the URL has no host".to_owned());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the URL must not carry a user name or password".to_owned());
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(
                "the URL must be an origin only, like https://kyc.example.com: kycd serves the console at /console/ and cannot be mounted under a path"
                    .to_owned(),
            );
        }
        Ok(Self {
            origin: url.origin().ascii_serialization(),
            url: url.to_string(),
        })
    }

    /// `scheme://host[:port]`, as a browser's `Origin` header spells it.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }
}

/// The reverse proxies whose forwarded headers are believed: addresses and
/// CIDR ranges. Empty: none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// `10.0.0.0/8, 127.0.0.1, ::1`: comma-separated addresses and ranges;
    /// blanks are skipped.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::from_entries(text.split(','))
    }

    fn from_entries<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
            let net = match entry.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => entry.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    format!(
                        "{entry:?} is neither an IP address nor a CIDR range (such as 10.0.0.0/8)"
                    )
                })?,
            };
            nets.push(net);
        }
        Ok(Self(nets))
    }

    /// Whether `peer` is one of the proxies. An IPv4 peer seen on an IPv6
    /// socket (`::ffff:10.0.0.1`) counts as its IPv4 address.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|net| net.contains(&peer))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each entry as written back: a bare address for a single host.
    fn entries(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|net| {
                if net.prefix_len() == net.max_prefix_len() {
                    net.addr().to_string()
                } else {
                    net.to_string()
                }
            })
            .collect()
    }
}

/// Whether a console form posted with `headers`, over a connection from
/// `peer` (unknown when the router is driven without a socket), comes from
/// the console's own origin. No `Origin` at all passes: the CSRF token
/// still decides, and some browsers omit it.
pub fn same_origin(settings: &Settings, headers: &HeaderMap, peer: Option<IpAddr>) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if let Some(public) = &settings.public_url {
        return origin == public.origin();
    }
    let Some((scheme, host_port)) = origin.split_once("://") else {
        // `null` (a sandboxed or privacy-sensitive context) and garbage.
        return false;
    };
    let from_proxy = peer.is_some_and(|p| settings.trusted_proxies.contains(p));
    let forwarded_host = from_proxy
        .then(|| last_value(headers, "x-forwarded-host"))
        .flatten();
    let (host, proto) = match forwarded_host {
        Some(host) => (host, last_value(headers, "x-forwarded-proto")),
        None => (
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default(),
            None,
        ),
    };
    !host.is_empty()
        && host_port.eq_ignore_ascii_case(host)
        && proto.is_none_or(|p| scheme.eq_ignore_ascii_case(p))
}

/// The last value of a header that proxies may append to: the one the
/// proxy nearest kycd (the trusted one) set. Empty values count as absent.
fn last_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|v| !v.is_empty())
}

/// A string, checked as [`PublicUrl::parse`] checks it.
impl Value for PublicUrl {
    const EXPECTED: &'static str = "an http:// or https:// URL such as https://kyc.example.com";
    fn from_text(text: &str) -> Result<Option<Self>, String> {
        Self::parse(text).map(Some)
    }
    fn from_toml(v: &toml::Value, _: &Meta) -> Result<Self, String> {
        Self::parse(
            v.as_str()
                .ok_or_else(|| format!("expected {}", Self::EXPECTED))?,
        )
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::String(self.url.clone()))
    }
}

/// Comma-separated in the environment; in the file an array of strings (or
/// one comma-separated string). Unset when empty.
impl Value for TrustedProxies {
    const EXPECTED: &'static str = "IP addresses or CIDR ranges";
    fn from_text(text: &str) -> Result<Option<Self>, String> {
        Self::parse(text).map(Some)
    }
    fn from_toml(v: &toml::Value, _: &Meta) -> Result<Self, String> {
        let expected = || format!("expected {}", Self::EXPECTED);
        match v {
            toml::Value::String(text) => Self::parse(text),
            toml::Value::Array(items) => {
                let entries = items
                    .iter()
                    .map(toml::Value::as_str)
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(expected)?;
                Self::from_entries(entries)
            }
            _ => Err(expected()),
        }
    }
    fn to_toml(&self) -> Option<toml::Value> {
        if self.is_empty() {
            return None;
        }
        Some(toml::Value::Array(
            self.entries()
                .into_iter()
                .map(toml::Value::String)
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_url_is_an_origin_with_an_http_scheme() {
        let u = PublicUrl::parse(" https://KYC.example.com/ ").unwrap();
        assert_eq!(u.origin(), "https://kyc.example.com");
        assert_eq!(u.as_str(), "https://kyc.example.com/");
        let u = PublicUrl::parse("https://kyc.example.com:443").unwrap();
        assert_eq!(
            u.origin(),
            "https://kyc.example.com",
            "default port dropped"
        );
        let u = PublicUrl::parse("http://10.1.2.3:8443").unwrap();
        assert_eq!(u.origin(), "http://10.1.2.3:8443");
        for (bad, why) in [
            ("kyc.example.com", "URL"),
            ("ftp://kyc.example.com", "http:// or https://"),
            ("https://kyc.example.com/kyc", "origin only"),
            ("https://kyc.example.com/?a=1", "origin only"),
            ("https://kyc.example.com/#x", "origin only"),
            ("https://admin:pw@kyc.example.com", "user name or password"),
            ("", "URL"),
        ] {
            let e = PublicUrl::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
    }

    #[test]
    fn trusted_proxies_are_addresses_and_ranges() {
        let t = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1,, ::1 ,fd00::/8").unwrap();
        assert!(t.contains("10.200.0.1".parse().unwrap()));
        assert!(t.contains("127.0.0.1".parse().unwrap()));
        assert!(!t.contains("127.0.0.2".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(!t.contains("192.168.1.1".parse().unwrap()));
        assert!(
            t.contains("::ffff:10.0.0.7".parse().unwrap()),
            "an IPv4 peer on an IPv6 socket"
        );
        assert_eq!(t.entries(), ["10.0.0.0/8", "127.0.0.1", "::1", "fd00::/8"]);
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        for bad in ["10.0.0.0/33", "proxy.example.com", "10.0.0", "127.0.0.1/"] {
            let e = TrustedProxies::parse(&format!("127.0.0.1,{bad}")).unwrap_err();
            assert!(e.contains(bad) && e.contains("CIDR"), "{bad}: {e}");
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_origin_is_the_public_url_else_the_forwarded_host_from_a_proxy_else_host() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let direct = Settings::default();
        let behind = Settings {
            trusted_proxies: TrustedProxies::parse("10.0.0.0/8").unwrap(),
            ..Settings::default()
        };
        let public = Settings {
            public_url: Some(PublicUrl::parse("https://kyc.example.com").unwrap()),
            ..behind.clone()
        };
        let rewritten = [
            ("host", "internal:8080"),
            ("origin", "https://kyc.example.com"),
        ];
        let forwarded = [
            ("host", "internal:8080"),
            ("origin", "https://kyc.example.com"),
            ("x-forwarded-host", "kyc.example.com"),
            ("x-forwarded-proto", "https"),
        ];
        // Served directly: Host.
        assert!(same_origin(
            &direct,
            &headers(&[
                ("host", "127.0.0.1:8081"),
                ("origin", "http://127.0.0.1:8081")
            ]),
            None
        ));
        assert!(!same_origin(&direct, &headers(&rewritten), Some(proxy)));
        assert!(
            same_origin(&direct, &headers(&[("host", "x")]), None),
            "no Origin"
        );
        assert!(!same_origin(
            &direct,
            &headers(&[("host", "x"), ("origin", "null")]),
            None
        ));
        // Forwarded headers count from a trusted peer only.
        assert!(!same_origin(&direct, &headers(&forwarded), Some(proxy)));
        assert!(same_origin(&behind, &headers(&forwarded), Some(proxy)));
        assert!(!same_origin(&behind, &headers(&forwarded), Some(stranger)));
        assert!(!same_origin(&behind, &headers(&forwarded), None));
        // The scheme must match X-Forwarded-Proto when the proxy sends it.
        let mut plain = headers(&forwarded);
        plain.insert("x-forwarded-proto", "http".parse().unwrap());
        assert!(!same_origin(&behind, &plain, Some(proxy)));
        plain.remove("x-forwarded-proto");
        assert!(same_origin(&behind, &plain, Some(proxy)));
        // The proxy's own (last) value counts, not one the client sent first.
        let appended = headers(&[
            ("host", "internal:8080"),
            ("origin", "https://evil.example"),
            ("x-forwarded-host", "evil.example, kyc.example.com"),
        ]);
        assert!(!same_origin(&behind, &appended, Some(proxy)));
        // The public URL wins over Host and forwarded headers alike.
        assert!(same_origin(&public, &headers(&rewritten), Some(stranger)));
        assert!(same_origin(&public, &headers(&forwarded), Some(proxy)));
        let elsewhere = headers(&[
            ("host", "other.example"),
            ("origin", "https://other.example"),
            ("x-forwarded-host", "other.example"),
        ]);
        assert!(!same_origin(&public, &elsewhere, Some(proxy)));
        assert!(
            !same_origin(
                &public,
                &headers(&[
                    ("host", "kyc.example.com"),
                    ("origin", "http://kyc.example.com")
                ]),
                None
            ),
            "another scheme is another origin"
        );
    }
}

//! Extra root certificates for kycd's outbound HTTPS (`KYCD_CA_BUNDLE`).
//!
//! kycd calls out over HTTPS to Didit's API, to the operator's decision
//! webhook endpoint and to Didit's signed media links (a step-up's
//! portrait). Every one of those clients trusts the roots built into the
//! binary (reqwest's rustls with webpki-roots), which do not include an
//! operator's private CA: an endpoint whose certificate it issued fails
//! with `UnknownIssuer`. [`CaBundle`] holds the certificates of a PEM file
//! that every outbound client trusts *as well as* the built-in roots,
//! read once at start ([`CaBundle::from_settings`]) and handed to each
//! client as it is built ([`CaBundle::apply`]).
//!
//! A file that cannot be read, holds no certificate or holds one that does
//! not parse is refused with its path and the reason, at start and by
//! `kycd config check`, rather than failing the first delivery.
//! Certificates are public, but the file's bytes are never echoed: a
//! wrong path may well name a private key.

use std::path::{Path, PathBuf};

use crate::Settings;

/// The extra roots every outbound HTTPS client trusts; empty (the
/// built-in roots alone) when `ca_bundle` is unset. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct CaBundle {
    certificates: Vec<reqwest::Certificate>,
}

/// Why a CA bundle was refused. Names the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("{}: cannot read it: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}: holds no PEM certificate (expected one or more -----BEGIN CERTIFICATE----- blocks)",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error("{}: not valid PEM (a certificate block is cut short or not base64)", path.display())]
    Malformed { path: PathBuf },
    #[error("{}: certificate {index} is not a valid X.509 certificate", path.display())]
    Invalid { path: PathBuf, index: usize },
}

impl CaBundle {
    /// The bundle `settings.ca_bundle` names, read now; none when unset.
    pub fn from_settings(settings: &Settings) -> Result<Self, CaBundleError> {
        match &settings.ca_bundle {
            Some(path) => Self::load(path),
            None => Ok(Self::default()),
        }
    }

    /// Read and check every certificate of the PEM file at `path`.
    pub fn load(path: &Path) -> Result<Self, CaBundleError> {
        let bytes = std::fs::read(path).map_err(|source| CaBundleError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        let certificates = reqwest::Certificate::from_pem_bundle(&bytes).map_err(|_| {
            CaBundleError::Malformed {
                path: path.to_owned(),
            }
        })?;
        if certificates.is_empty() {
            return Err(CaBundleError::Empty {
                path: path.to_owned(),
            });
        }
        for (i, certificate) in certificates.iter().enumerate() {
            // reqwest parses a certificate only when a client is built;
            // building one that trusts this certificate alone checks it now.
            reqwest::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(certificate.clone())
                .build()
                .map_err(|_| CaBundleError::Invalid {
                    path: path.to_owned(),
                    index: i + 1,
                })?;
        }
        Ok(Self { certificates })
    }

    /// How many certificates the bundle adds.
    pub fn len(&self) -> usize {
        self.certificates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty()
    }

    /// The certificates, for a client built elsewhere (Didit's).
    pub fn certificates(&self) -> &[reqwest::Certificate] {
        &self.certificates
    }

    /// `builder`, trusting the bundle's certificates besides the built-in
    /// roots.
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        self.certificates
            .iter()
            .cloned()
            .fold(builder, reqwest::ClientBuilder::add_root_certificate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn a_file_without_certificates_or_with_a_broken_one_is_refused_by_name() {
        let (_d, path) = file(b"");
        let e = CaBundle::load(&path).unwrap_err();
        assert!(matches!(e, CaBundleError::Empty { .. }), "{e}");
        assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");

        let key =
            b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
        let (_d, path) = file(key);
        let e = CaBundle::load(&path).unwrap_err();
        assert!(matches!(e, CaBundleError::Empty { .. }), "{e}");
        assert!(!e.to_string().contains("c2VjcmV0"), "never echoes the file");

        let (_d, path) =
            file(b"-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n");
        let e = CaBundle::load(&path).unwrap_err();
        assert!(matches!(e, CaBundleError::Malformed { .. }), "{e}");

        let (_d, path) = file(b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n");
        let e = CaBundle::load(&path).unwrap_err();
        assert!(matches!(e, CaBundleError::Malformed { .. }), "{e}");

        // Good base64, but not a certificate.
        let (_d, path) = file(
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        );
        let e = CaBundle::load(&path).unwrap_err();
        assert!(matches!(e, CaBundleError::Invalid { index: 1, .. }), "{e}");
        assert!(
            e.to_string().contains("certificate 1 is not a valid X.509"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_file_or_a_directory_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere.pem");
        let e = CaBundle::load(&missing).unwrap_err();
        assert!(matches!(e, CaBundleError::Unreadable { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&*missing.to_string_lossy()) && text.contains("cannot read it"),
            "{text}"
        );
        let e = CaBundle::load(dir.path()).unwrap_err();
        assert!(matches!(e, CaBundleError::Unreadable { .. }), "{e}");
    }

    #[test]
    fn unset_is_the_built_in_roots_alone() {
        let bundle = CaBundle::from_settings(&Settings::default()).unwrap();
        assert!(bundle.is_empty());
    }
}

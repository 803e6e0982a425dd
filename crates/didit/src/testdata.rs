//! Didit's test vectors, kept in this repository (`crates/didit/testdata/`)
//! so that every crate's tests run from a bare clone.
//!
//! - `vectors.json`: one secret and twelve signed deliveries (v3, v2 and v1
//!   decisions, a biometric re-authentication, an entity event), each with
//!   its exact wire body, the three `X-` headers, the text V2 signs, the
//!   Simple message, and a re-encoded body as a proxy might forward it
//!   (`docs/didit-protocol.md` section 6).
//! - `official-fixtures.json`: eight deliveries Didit itself published as
//!   fixtures for its own receiver, each with its secret, body and three
//!   signatures.
//!
//! The files are compiled in with `include_str!`, so a test never depends on
//! the directory it runs from. The module exists only under the `testdata`
//! feature, which the workspace's dev-dependencies enable: release builds
//! carry none of it.

use serde_json::Value;

/// `vectors.json`, byte for byte.
pub const VECTORS_JSON: &str = include_str!("../testdata/vectors.json");

/// `official-fixtures.json`, byte for byte.
pub const OFFICIAL_FIXTURES_JSON: &str = include_str!("../testdata/official-fixtures.json");

/// `vectors.json`, parsed: `{"secret": ..., "cases": [{"name", "body",
/// "headers", ...}]}`.
pub fn vectors() -> Value {
    serde_json::from_str(VECTORS_JSON).expect("vectors.json is valid JSON")
}

/// `official-fixtures.json`, parsed: an object from case name to
/// `{"secret", "body", ...}`.
pub fn official_fixtures() -> Value {
    serde_json::from_str(OFFICIAL_FIXTURES_JSON).expect("official-fixtures.json is valid JSON")
}

#[cfg(test)]
mod tests {
    /// The helpers hand back what the files hold, so a test that finds a
    /// case missing is looking at the data, not at a loading mistake.
    #[test]
    fn the_files_parse_into_their_cases() {
        let vectors = super::vectors();
        assert!(vectors["secret"].is_string());
        assert_eq!(vectors["cases"].as_array().map(Vec::len), Some(12));
        assert_eq!(
            super::official_fixtures().as_object().map(|o| o.len()),
            Some(8)
        );
    }
}

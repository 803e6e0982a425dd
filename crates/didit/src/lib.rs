//! The Didit protocol, as `docs/didit-protocol.md` describes it:
//!
//! - [`canonical`]: byte-exact canonical JSON, the form Didit's bodies and
//!   `X-Signature-V2` are computed over;
//! - [`signature`]: signing and verifying the three webhook signatures;
//! - [`payload`]: typed webhook envelopes and decisions, with v1 and v2
//!   payloads normalised into the v3 model;
//! - [`client`]: the REST API client.
#![forbid(unsafe_code)]

pub mod canonical;
pub mod client;
pub mod payload;
pub mod signature;
#[cfg(feature = "testdata")]
pub mod testdata;

//! kycd's domain words, shared by every other crate: typed ids, the clock
//! abstraction, and the parsing of times given by people (RFC 3339 or a
//! relative duration such as `24h`).
//!
//! This crate does no I/O. Nothing in it reads the wall clock except
//! [`SystemClock`], and nothing reads the environment, so that code which
//! takes a [`Clock`] can be driven deterministically by tests.
#![forbid(unsafe_code)]

pub mod clock;
pub mod id;
pub mod when;

pub use clock::{Clock, FixedClock, SystemClock};
pub use id::EventId;

//! Durable storage for kycd.
//!
//! - [`EventLog`]: the append-only log of everything kycd received (verified
//!   webhook deliveries, polled decisions, subject writes), with dedupe and a
//!   quarantine for authentic but unusable deliveries. The embedded backend is
//!   SQLite with group commit ([`sqlite_log::SqliteLog`]).
//! - [`store`]: projections (sessions and their history) with consumer
//!   offsets committed in the same transaction as the projection.
//!
//! - [`outbox`]: the actions decisions imply, enqueued in the projection's
//!   transaction and executed by workers with retries and a dead-letter state.
//!
//! - [`audit`]: the tamper-evident trail of decisions and what kycd did,
//!   each record chained to the previous by a keyed MAC; [`anchor`] puts
//!   the chain's head in the event log, where editing the store cannot
//!   reach it.
//!
//! - [`cursors`]: named cursors and reconciliation's fetch throttle, part
//!   of every store.
//!
//! Every backend of a trait passes the same conformance suite (`suite`,
//! `store::suite`, `outbox::suite`, `audit::suite`, `access::suite`,
//! `cases::suite`), compiled only for tests and with the `testsuite`
//! feature, never into a release build.
#![forbid(unsafe_code)]

pub mod access;
pub mod anchor;
pub mod audit;
pub mod cases;
mod checkpoint;
pub mod cursors;
pub mod log;
pub mod outbox;
pub mod postgres;
pub mod route;
pub mod sqlite_log;
pub mod store;
#[cfg(any(test, feature = "testsuite"))]
pub mod suite;

pub use log::*;

//! The pipeline behind the intake. For now: the session state machine
//! ([`session`]) and the consumer that projects the event log into sessions
//! ([`projector`]).
#![forbid(unsafe_code)]

pub mod actions;
pub mod countries;
pub mod facts;
pub mod projector;
pub mod replay;
pub mod session;

//! Black-box tests of the simulator: its HTTP API, its deliveries as a
//! receiver sees them, and its simulated customers.

mod api;
mod calls;
mod customers;
mod deliveries;
mod monitoring;
mod step_up;
mod support;

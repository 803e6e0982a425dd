//! Black-box tests of the simulator: its HTTP API, its deliveries as a
//! receiver sees them, and its simulated customers.

mod api;
mod customers;
mod deliveries;
mod support;

//! acmeproxy: an ACME (RFC 8555) Registration Authority that validates challenges
//! inside a private network and asks an upstream CA to sign.
//!
//! The library holds everything; `main.rs` only parses the command line and calls
//! [`app`]. Dependencies point one way: `app` picks concrete types,
//! `http` talks to `ra`, and `ra` reaches the store, validators and upstream through
//! their seams.

pub mod acme;
pub mod app;
pub mod cli;
pub mod config;
mod danger;
pub mod http;
pub mod metrics;
pub mod model;
pub mod nonce;
pub mod policy;
pub mod ra;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod validate;

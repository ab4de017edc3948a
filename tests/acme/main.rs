//! The server seen from outside through ACME (RFC 8555) and its other
//! interfaces: flows, errors, accounts, rate limits, hardening, metrics and
//! the alerting rules and dashboard built on them,
//! validation egress, the admin CLI, backup and restore, crash safety, and the repository's
//! docs, packaging and fuzz corpora. One test binary; one module per
//! concern (`cargo test --test acme flows::`).

mod accounts;
mod admin_cli;
mod alerts;
mod architecture;
mod backup;
mod crash;
mod docs;
mod errors;
mod flows;
mod full_disk;
mod fuzz_corpus;
mod haproxy;
mod hardening_conn;
mod hardening_ops;
mod metrics;
mod migrate;
mod packaging;
mod postgres;
mod profiles;
mod rate_limits;
mod replicas;
mod validation_egress;

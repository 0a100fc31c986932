//! sidekey: a local secrets sidecar for AWS Secrets Manager and SSM Parameter Store.
//!
//! Bird's-eye view: configured secrets and parameters are prefetched into an in-memory
//! [`cache::Store`] and kept fresh by one scheduler task that owns every backend call
//! ([`cache`]). Values come from a [`source::Source`]: AWS, a local file, or a fake. The HTTP
//! API ([`api`]) serves them on `127.0.0.1:2773` and a Unix socket with the contracts of the
//! AWS Parameters and Secrets Lambda Extension and the AWS Secrets Manager Agent, plus native
//! routes. [`app::run`] wires it together; `main.rs` only parses the CLI and maps exit codes.
//!
//! See ARCHITECTURE.md for the code map and invariants.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod cache;
pub mod config;
pub mod control;
pub mod exec;
pub mod harden;
pub mod lambda;
pub mod metrics;
pub mod reaper;
pub mod refs;
pub mod render;
pub mod source;
pub mod telemetry;
pub mod watch;

#[cfg(test)]
mod props;

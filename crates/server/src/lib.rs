//! jobstream-server: the `jobstream` binary's library.
//!
//! Configuration, logging, JWT auth, the Socket.IO gateway (socketioxide), the
//! HTTP API and SSE streams (axum), wired together by [`app::Application`].

pub mod app;
pub mod auth;
pub mod budget;
pub mod config;
pub mod conn;
pub mod dashboard;
pub mod demo;
pub mod expiry;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod order;
pub mod serve;
pub mod socket;
pub mod telemetry;
pub mod testing;

pub use app::{AppState, Application};

/// The Rust snippets of the README, compiled and run as doctests
/// (`cargo test --doc -p jobstream-server`, part of `scripts/test.sh`).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
pub use config::Config;

//! wattserve: a model-inference server that tells you what every request cost.
//!
//! The library holds everything; the `wattserve` binary is a thin CLI over it, and the
//! integration tests and benchmarks use it directly. Dependencies point one way:
//! [`api`] → [`batch`] → [`engine`] (→ the `wattserve-kernels` crate).

pub mod api;
pub mod batch;
pub mod bench;
pub mod cache;
pub mod charts;
pub mod config;
pub mod drift;
pub mod engine;
pub mod governance;
pub mod meter;
pub mod metrics;
pub mod registry;
pub mod repository;
pub mod server;
pub mod tco;

pub use config::Config;
pub use server::{ServeError, Server};

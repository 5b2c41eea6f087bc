//! Schedulers: they own each model's engine on a dedicated compute thread and feed it work
//! (dynamic batching for encoders, continuous batching for decoders).
//!
//! Callers talk to a scheduler through a bounded channel and get their results back on a oneshot
//! channel, so tokio workers never run model code.

pub mod embedding;
pub mod generation;

pub use embedding::{EmbedOutput, EmbeddingScheduler, SchedulerError};
pub use generation::{GenerationLimits, GenerationScheduler};

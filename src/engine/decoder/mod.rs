//! Text-generation decoders: the GGUF Llama (continuous batching: every sequence its own KV
//! cache, one forward pass over any mix of prompt chunks and decode tokens), the CPU thread pool
//! its kernels share, and [`GenerationModel`], which implements [`crate::engine::Decoder`].

pub mod cpu_pool;
pub mod llama;
pub mod model;
pub mod step_pool;

pub use model::{GenerationLoadOptions, GenerationModel};

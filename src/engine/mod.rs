//! Model execution: devices, precisions, the model implementations, tokenizers and weight loading.
//!
//! `engine` knows nothing of HTTP or queues: it turns token ids into vectors (encoders) or
//! next-token logits (decoders). The scheduler in
//! [`crate::batch`] owns an engine on a dedicated compute thread.

pub mod activation;
pub(crate) mod attention;
pub mod bert;
pub mod chat_template;
pub mod cpu_pool;
pub mod device;
pub mod embedding_model;
pub mod generation_model;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod linear;
#[cfg(feature = "cuda")]
pub mod linear_cuda;
pub mod llama;
pub mod pooling;
pub mod precision;
pub mod sampling;
pub mod tokenizer;

pub use device::DeviceSpec;
pub use embedding_model::{Embedder, EmbeddingModel};
pub use precision::Precision;
pub use tokenizer::{EmbeddingTokenizer, TokenizeError};

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A model file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file of the model folder is malformed or lacks a field.
    #[error("{path}: {message}")]
    Config {
        /// The file that failed.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The tokenizer could not be built or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tensor operation failed (shapes, missing weights, device errors).
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The model or an option asked for is not supported by this build.
    #[error("{0}")]
    Unsupported(String),
}

/// Reads and parses a JSON file of a model folder, naming the file in every error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> Result<T, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| EngineError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

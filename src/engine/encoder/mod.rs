//! Sentence-embedding encoders (BERT family) from safetensors: the transformer, its int8 and
//! CUDA linear layers, pooling, and the tokenizer, put together by [`EmbeddingModel`].

pub mod activation;
pub mod bert;
pub mod linear;
#[cfg(feature = "cuda")]
pub mod linear_cuda;
pub mod model;
pub mod pooling;
pub mod tokenizer;

pub use model::{EmbeddingLoadOptions, EmbeddingModel};
pub use tokenizer::{EmbeddingTokenizer, TokenizeError};

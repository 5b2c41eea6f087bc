//! Model execution: devices, precisions, the model implementations, tokenizers and weight loading.
//!
//! `engine` knows nothing of HTTP or queues: it turns token ids into vectors (encoders, behind
//! [`Embedder`]) or next-token logits (decoders, behind [`Decoder`]). The schedulers in
//! [`crate::batch`] own an engine on a dedicated compute thread and are written against these
//! two traits only.

pub mod decoder;
pub mod device;
pub mod elementwise;
pub mod encoder;
pub mod gguf;
pub mod logprobs;
pub mod precision;
pub mod sampling;
pub mod text_stream;

pub use decoder::{GenerationLoadOptions, GenerationModel};
pub use device::DeviceSpec;
pub use encoder::{EmbeddingLoadOptions, EmbeddingModel, EmbeddingTokenizer, TokenizeError};
pub use logprobs::TokenLogprob;
pub use precision::Precision;

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

/// What the embedding scheduler's compute thread needs from an encoder. The scheduler is written
/// against this trait so that tests can drive it with engines that fail on purpose.
pub trait Embedder: Send + 'static {
    /// One vector per sequence of token ids (special tokens included), in order.
    fn embed_tokens(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>, EngineError>;
}

/// One sequence's share of a decoder step: the tokens to append at positions
/// `cache.len()..cache.len() + tokens.len()` of its cache, and which next-token logits the
/// caller needs.
pub struct SeqInput<'a, C> {
    /// New tokens (a prompt chunk, or the one token sampled last step).
    pub tokens: &'a [u32],
    /// The sequence's cache, extended by this step.
    pub cache: &'a mut C,
    /// Which logits rows to return for these tokens.
    pub logits: Logits,
}

/// Which next-token logits a step returns for one sequence's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None (a prompt chunk that is not the prompt's last).
    None,
    /// After the last token: what the next token is sampled from.
    Last,
    /// After every token, in order (row `i` predicts the token after `tokens[i]`): what scoring
    /// a prompt (echo with logprobs, perplexity) needs.
    All,
}

impl Logits {
    /// Rows this request returns for `tokens` new tokens.
    pub fn rows(self, tokens: usize) -> usize {
        match self {
            Logits::None => 0,
            Logits::Last => usize::from(tokens > 0),
            Logits::All => tokens,
        }
    }
}

/// What the continuous-batching scheduler needs from a text-generation model: per-sequence
/// caches and one forward step over any mix of prompt chunks and decode tokens. Written as a
/// trait so the scheduler can be tested with a decoder whose behaviour the test controls.
pub trait Decoder: Send + Sync + 'static {
    /// A sequence's state between steps (its KV cache).
    type Cache: Send;

    /// An empty cache with room reserved for `capacity` tokens (it may grow past them).
    fn new_cache(&self, capacity: usize) -> Self::Cache;

    /// One forward pass over `inputs`, extending each sequence's cache; returns the rows of
    /// `vocab_size` logits each input asks for ([`Logits::rows`]), inputs in order.
    fn step(&self, inputs: &mut [SeqInput<'_, Self::Cache>]) -> Result<Vec<Vec<f32>>, EngineError>;

    /// Most tokens (prompt + completion) one sequence may hold.
    fn context_len(&self) -> usize;

    /// Width of a logits row.
    fn vocab_size(&self) -> usize;

    /// Bytes one token occupies in a sequence's cache (all layers, keys and values): what the
    /// scheduler's KV-cache budget is counted in.
    fn cache_bytes_per_token(&self) -> usize;

    /// Whether `token` ends a completion (end-of-sequence, end-of-turn).
    fn is_stop(&self, token: u32) -> bool;

    /// The text of `ids`, special tokens skipped (generated text is streamed through
    /// [`text_stream::TextStream`] with this).
    fn decode(&self, ids: &[u32]) -> Result<String, EngineError>;

    /// The bytes one token stands for (what logprobs show per token): its text for special
    /// tokens, the bytes of its byte-level BPE text otherwise.
    fn token_bytes(&self, token: u32) -> Vec<u8>;
}

//! Tokenization for embedding models, from the model's own `tokenizer.json`.
//!
//! The file's own padding and truncation are switched off (all-MiniLM-L6-v2 ships `Fixed 128`
//! padding and truncation at 128, which sentence-transformers overrides): padding is done per
//! batch by the engine, and inputs over the model's limit are rejected or truncated at the limit
//! per request.

use std::path::Path;
use std::sync::Arc;

use tokenizers::{Tokenizer, TruncationParams};

use crate::engine::EngineError;

/// Why one input could not be tokenized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizeError {
    /// The input has more tokens than the model accepts and truncation was not requested.
    #[error("input has {tokens} tokens, more than this model's limit of {max} tokens")]
    TooLong {
        /// Tokens the input has, special tokens included.
        tokens: usize,
        /// The model's limit.
        max: usize,
    },
    /// The tokenizer itself failed.
    #[error("tokenizer failed: {0}")]
    Failed(String),
}

/// A cheap-to-clone tokenizer shared by request handlers (tokenization runs on tokio's blocking
/// pool, not on the compute thread).
#[derive(Clone)]
pub struct EmbeddingTokenizer {
    plain: Arc<Tokenizer>,
    truncating: Arc<Tokenizer>,
    max_tokens: usize,
    pad_id: u32,
}

impl EmbeddingTokenizer {
    /// Loads `tokenizer.json`; sequences longer than `max_tokens` (special tokens included) are
    /// rejected or truncated.
    pub fn from_file(path: &Path, max_tokens: usize) -> Result<Self, EngineError> {
        let mut plain = Tokenizer::from_file(path)
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
        let pad_id = plain
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| plain.token_to_id("[PAD]"))
            .unwrap_or(0);
        plain.with_padding(None);
        plain
            .with_truncation(None)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut truncating = plain.clone();
        truncating
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(Self {
            plain: Arc::new(plain),
            truncating: Arc::new(truncating),
            max_tokens,
            pad_id,
        })
    }

    /// The most tokens (special tokens included) one input may have.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The id used to pad a batch.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token ids of `text` with the model's special tokens. Over the limit: truncated when
    /// `truncate`, else [`TokenizeError::TooLong`].
    pub fn encode(&self, text: &str, truncate: bool) -> Result<Vec<u32>, TokenizeError> {
        let enc = self
            .plain
            .encode(text, true)
            .map_err(|e| TokenizeError::Failed(e.to_string()))?;
        if enc.len() <= self.max_tokens {
            return Ok(enc.get_ids().to_vec());
        }
        if !truncate {
            return Err(TokenizeError::TooLong {
                tokens: enc.len(),
                max: self.max_tokens,
            });
        }
        let enc = self
            .truncating
            .encode(text, true)
            .map_err(|e| TokenizeError::Failed(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }
}

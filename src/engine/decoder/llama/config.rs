//! The decoder's shapes and constants, read from the GGUF metadata.

use crate::engine::gguf::GgufFile;
use crate::engine::EngineError;

/// Shapes and constants of the decoder, read from the GGUF metadata (`<arch>.*` keys).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_kv_head: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Feed-forward inner size.
    pub ffn_dim: usize,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// Dimensions of each head that RoPE rotates (the first `rope_dim`, in adjacent pairs).
    pub rope_dim: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Positions the model was trained for; a sequence never grows past it.
    pub context_len: usize,
    /// Rows of the embedding table.
    pub vocab_size: usize,
}

impl LlamaConfig {
    /// Reads the configuration of a `llama` GGUF, checking that the shapes are consistent.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, EngineError> {
        let arch = file.str("general.architecture")?;
        if arch != "llama" {
            return Err(EngineError::Unsupported(format!(
                "{}: architecture `{arch}` is not supported (llama only)",
                file.path().display()
            )));
        }
        let key = |k: &str| format!("llama.{k}");
        let d_model = file.usize(&key("embedding_length"))?;
        let n_head = file.usize(&key("attention.head_count"))?;
        let n_kv_head = if file.has(&key("attention.head_count_kv")) {
            file.usize(&key("attention.head_count_kv"))?
        } else {
            n_head
        };
        let bad = |message: String| EngineError::Config {
            path: file.path().to_path_buf(),
            message,
        };
        if n_head == 0 || n_kv_head == 0 || d_model % n_head != 0 || n_head % n_kv_head != 0 {
            return Err(bad(format!(
                "inconsistent heads: d_model {d_model}, {n_head} heads, {n_kv_head} kv heads"
            )));
        }
        let head_dim = d_model / n_head;
        let rope_dim = if file.has(&key("rope.dimension_count")) {
            file.usize(&key("rope.dimension_count"))?
        } else {
            head_dim
        };
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(bad(format!(
                "rope.dimension_count {rope_dim} must be even and at most the head size {head_dim}"
            )));
        }
        let rope_base = if file.has(&key("rope.freq_base")) {
            file.f64(&key("rope.freq_base"))? as f32
        } else {
            10_000.0
        };
        let vocab_size = if file.has(&key("vocab_size")) {
            file.usize(&key("vocab_size"))?
        } else {
            file.strings("tokenizer.ggml.tokens")?.len()
        };
        Ok(Self {
            n_layer: file.usize(&key("block_count"))?,
            d_model,
            n_head,
            n_kv_head,
            head_dim,
            ffn_dim: file.usize(&key("feed_forward_length"))?,
            rope_base,
            rope_dim,
            rms_eps: file.f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
            context_len: file.usize(&key("context_length"))?,
            vocab_size,
        })
    }

    /// Floats one token occupies in one layer's K (or V) cache.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }
}

/// Configurations for unit tests of the decoder's parts.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::LlamaConfig;

    /// A one-layer decoder of width 8: two query heads of 4 sharing one key/value head.
    pub(crate) fn tiny_config() -> LlamaConfig {
        LlamaConfig {
            n_layer: 1,
            d_model: 8,
            n_head: 2,
            n_kv_head: 1,
            head_dim: 4,
            ffn_dim: 16,
            rope_base: 10_000.0,
            rope_dim: 4,
            rms_eps: 1e-5,
            context_len: 16,
            vocab_size: 10,
        }
    }
}

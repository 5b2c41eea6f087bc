//! A Llama-architecture decoder (SmolLM2 and its kin) loaded from GGUF, built for continuous
//! batching: every token carries its own position, every sequence its own KV cache, and one
//! forward pass runs any mix of prompt chunks and decode tokens from many sequences. The
//! projections run as ONE matmul over all tokens of the step (`wattserve-kernels`' int8 kernel,
//! or candle's quantized module for the other precisions);
//! RoPE and attention run here, per token against its own sequence's cache (`attention.rs`).
//!
//! candle-transformers' `quantized_llama` shares one position and one cache length across the
//! batch, so it cannot do this; it is the reference our greedy output is tested against.

mod attention;
mod config;
mod kv_cache;
mod projection;

pub use config::LlamaConfig;
pub use kv_cache::KvCache;

use candle_core::{DType, Device, Tensor};
use wattserve_kernels::q8_tiles;

use self::attention::{attention, Span};
use self::projection::{projections, split_outputs, Projection};
use super::cpu_pool;
use crate::engine::elementwise::{add, On};
use crate::engine::gguf::GgufFile;
use crate::engine::{EngineError, Logits, Precision, SeqInput};

struct Block {
    attn_norm: Tensor,
    /// Q, K and V: one projection whose outputs are split when the weights allow it.
    qkv: Vec<Projection>,
    wo: Projection,
    ffn_norm: Tensor,
    /// Gate and up: one projection when the weights allow it.
    gate_up: Vec<Projection>,
    down: Projection,
}

/// The decoder's weights, RoPE tables and configuration. Immutable after load: all state of a
/// sequence lives in its [`KvCache`].
pub struct Llama {
    cfg: LlamaConfig,
    precision: Precision,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    output: Projection,
    /// `cos`, `sin` of position × frequency, `context_len × rope_dim / 2` each.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    weight_bytes: usize,
    device: Device,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("cfg", &self.cfg)
            .field("precision", &self.precision)
            .finish_non_exhaustive()
    }
}

/// The precisions a GGUF decoder can be served at.
pub const GENERATION_PRECISIONS: &str = "gguf (as stored), int8 or f32";

impl Llama {
    /// Loads the decoder from `file` at `precision`: `gguf` keeps every tensor as stored, `int8`
    /// requantizes the matmul weights to int8 (blocks of 64 with one f16 scale on CPUs with
    /// AVX-512 VNNI, else Q8_0: blocks of 32), `f32` dequantizes them.
    pub fn load(
        file: &mut GgufFile,
        precision: Precision,
        device: &Device,
    ) -> Result<Self, EngineError> {
        if !matches!(
            precision,
            Precision::Gguf | Precision::Int8 | Precision::F32
        ) {
            return Err(EngineError::Unsupported(format!(
                "precision {precision} is not available for GGUF decoders: use {GENERATION_PRECISIONS}"
            )));
        }
        let cfg = LlamaConfig::from_gguf(file)?;
        let mut bytes = 0usize;
        let token_embd = file.tensor("token_embd.weight", device)?;
        let embed = token_embd.dequantize(device)?;
        bytes += embed.elem_count() * 4;
        let (rows, cols) = embed.dims2()?;
        if cols != cfg.d_model || rows != cfg.vocab_size {
            return Err(EngineError::Config {
                path: file.path().to_path_buf(),
                message: format!(
                    "token_embd.weight is {rows} × {cols}, expected {} × {}",
                    cfg.vocab_size, cfg.d_model
                ),
            });
        }
        // Models with tied embeddings (SmolLM2) have no output.weight.
        let output = if file.has_tensor("output.weight") {
            file.tensor("output.weight", device)?
        } else {
            token_embd
        };
        let output = projections(vec![output], precision, device, &mut bytes)?
            .pop()
            .ok_or_else(|| EngineError::Unsupported("the output projection is missing".into()))?;
        let norm_vec = |file: &mut GgufFile, name: &str, bytes: &mut usize| {
            let t = file.tensor(name, device)?.dequantize(device)?;
            *bytes += t.elem_count() * 4;
            Ok::<_, EngineError>(t)
        };
        let norm = norm_vec(file, "output_norm.weight", &mut bytes)?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let attn_norm = norm_vec(file, &format!("blk.{i}.attn_norm.weight"), &mut bytes)?;
            let ffn_norm = norm_vec(file, &format!("blk.{i}.ffn_norm.weight"), &mut bytes)?;
            let mut w = |names: &[&str]| -> Result<Vec<Projection>, EngineError> {
                let parts = names
                    .iter()
                    .map(|p| file.tensor(&format!("blk.{i}.{p}.weight"), device))
                    .collect::<Result<Vec<_>, _>>()?;
                projections(parts, precision, device, &mut bytes)
            };
            let one = |mut v: Vec<Projection>| {
                v.pop()
                    .ok_or_else(|| EngineError::Unsupported("a projection is missing".into()))
            };
            blocks.push(Block {
                attn_norm,
                qkv: w(&["attn_q", "attn_k", "attn_v"])?,
                wo: one(w(&["attn_output"])?)?,
                ffn_norm,
                gate_up: w(&["ffn_gate", "ffn_up"])?,
                down: one(w(&["ffn_down"])?)?,
            });
        }
        let (rope_cos, rope_sin) = rope_tables(&cfg);
        if matches!(output, Projection::Tiles(_)) {
            let kernel = q8_tiles::Kernel::detect();
            if kernel == q8_tiles::Kernel::Amx && q8_tiles::Kernel::Vnni.available() {
                tracing::info!(
                    "int8 matmuls: AMX tiles from {} rows, AVX-512 VNNI below (set {}=1 for \
                     VNNI only)",
                    q8_tiles::AMX_MIN_ROWS,
                    wattserve_kernels::amx::DISABLE_ENV
                );
            } else {
                tracing::info!("int8 matmuls: {}", kernel.name());
            }
        }
        Ok(Self {
            cfg,
            precision,
            embed,
            blocks,
            norm,
            output,
            rope_cos,
            rope_sin,
            weight_bytes: bytes,
            device: device.clone(),
        })
    }

    /// The model's shapes.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The precision it was loaded at.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes of weights held (after any requantization).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// An empty cache for one sequence, with room for `capacity` tokens.
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(&self.cfg, capacity)
    }

    /// Runs one step over all `inputs` together and returns the next-token logits (f32,
    /// `n × vocab`) each input asks for ([`Logits`]), in order. Each input's cache grows by its
    /// tokens.
    pub fn forward(&self, inputs: &mut [SeqInput<'_, KvCache>]) -> Result<Tensor, EngineError> {
        let cfg = &self.cfg;
        let mut ids = Vec::new();
        let mut token_pos = Vec::new();
        let mut spans = Vec::with_capacity(inputs.len());
        let mut last_rows = Vec::new();
        for input in inputs.iter() {
            let start = input.cache.len();
            if input.tokens.is_empty() {
                return Err(EngineError::Unsupported(
                    "a sequence joined a forward pass with no tokens".into(),
                ));
            }
            if start + input.tokens.len() > cfg.context_len {
                return Err(EngineError::Unsupported(format!(
                    "sequence would reach {} tokens, past the context length {}",
                    start + input.tokens.len(),
                    cfg.context_len
                )));
            }
            if let Some(bad) = input.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(EngineError::Unsupported(format!(
                    "token id {bad} is outside the vocabulary ({} tokens)",
                    cfg.vocab_size
                )));
            }
            spans.push(Span {
                row: ids.len(),
                tokens: input.tokens.len(),
                start,
            });
            ids.extend_from_slice(input.tokens);
            token_pos.extend(start..start + input.tokens.len());
            match input.logits {
                Logits::None => {}
                Logits::Last => last_rows.push((ids.len() - 1) as u32),
                Logits::All => {
                    last_rows.extend((ids.len() - input.tokens.len()..ids.len()).map(|r| r as u32))
                }
            }
        }
        let n_tokens = ids.len();
        let ids = Tensor::from_vec(ids, n_tokens, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, cfg.rms_eps)?;
            let widths = [cfg.n_head * cfg.head_dim, cfg.kv_dim(), cfg.kv_dim()];
            let mut parts = split_outputs(&block.qkv, &h, &widths)?.into_iter();
            let (Some(mut q), Some(mut k), Some(v)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(EngineError::Unsupported(
                    "Q/K/V projection lost a part".into(),
                ));
            };
            self.rope(&mut q, cfg.n_head, &token_pos);
            self.rope(&mut k, cfg.n_kv_head, &token_pos);
            let kv_dim = cfg.kv_dim();
            let mut row = 0;
            for input in inputs.iter_mut() {
                let n = input.tokens.len();
                let (kc, vc) = &mut input.cache.layers[layer];
                kc.extend_from_slice(&k[row * kv_dim..(row + n) * kv_dim]);
                vc.extend_from_slice(&v[row * kv_dim..(row + n) * kv_dim]);
                row += n;
            }
            let caches: Vec<(&[f32], &[f32])> = inputs
                .iter()
                .map(|i| {
                    let (k, v) = &i.cache.layers[layer];
                    (k.as_slice(), v.as_slice())
                })
                .collect();
            let attn = attention(cfg, &q, &spans, &caches)?;
            let attn = Tensor::from_vec(attn, (n_tokens, cfg.n_head * cfg.head_dim), &self.device)?;
            x = add(&x, &block.wo.forward(&attn)?, None, On::Caller)?;
            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, cfg.rms_eps)?;
            let act = match block.gate_up.as_slice() {
                [fused] => {
                    let y = fused.forward_vec(&h)?;
                    let act = silu_times_up(&y, cfg.ffn_dim);
                    Tensor::from_vec(act, (n_tokens, cfg.ffn_dim), &self.device)?
                }
                [gate, up] => (candle_nn::ops::silu(&gate.forward(&h)?)? * up.forward(&h)?)?,
                _ => {
                    return Err(EngineError::Unsupported(
                        "gate/up projection lost a part".into(),
                    ))
                }
            };
            x = add(&x, &block.down.forward(&act)?, None, On::Caller)?;
        }
        for input in inputs.iter_mut() {
            input.cache.len += input.tokens.len();
        }
        let rows = last_rows.len();
        if rows == 0 {
            return Ok(Tensor::zeros(
                (0, cfg.vocab_size),
                DType::F32,
                &self.device,
            )?);
        }
        let last = x.index_select(&Tensor::from_vec(last_rows, rows, &self.device)?, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, cfg.rms_eps)?;
        Ok(self.output.forward(&last)?.to_dtype(DType::F32)?)
    }

    /// Rotates adjacent pairs `(2i, 2i + 1)`, `i < rope_dim / 2`, of every head of every row
    /// (GGUF's llama layout: the converter permuted Q and K for this) by the row's position.
    fn rope(&self, data: &mut [f32], heads: usize, positions: &[usize]) {
        let d = self.cfg.head_dim;
        let half = self.cfg.rope_dim / 2;
        // A few thousand multiply-adds per token: not worth waking a thread pool.
        for (row, &pos) in data.chunks_exact_mut(heads * d).zip(positions) {
            let cos = &self.rope_cos[pos * half..(pos + 1) * half];
            let sin = &self.rope_sin[pos * half..(pos + 1) * half];
            for head in row.chunks_exact_mut(d) {
                for i in 0..half {
                    let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = x0 * cos[i] - x1 * sin[i];
                    head[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }
}

/// `silu(gate) · up` for rows of `[gate | up]` (each `ffn` wide), as candle's `silu` and `mul`
/// compute it (`g / (1 + exp(-g)) · u`), rows in parallel on the decoder's step pool.
fn silu_times_up(gate_up: &[f32], ffn: usize) -> Vec<f32> {
    let rows = gate_up.len() / (2 * ffn).max(1);
    let mut out = vec![0f32; rows * ffn];
    let filled: Result<(), std::convert::Infallible> =
        cpu_pool::fill_chunks(&mut out, (0..rows).map(|_| ffn), |r, row| {
            let (gate, up) = gate_up[r * 2 * ffn..(r + 1) * 2 * ffn].split_at(ffn);
            for ((o, &g), &u) in row.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
            Ok(())
        });
    let Ok(()) = filled;
    out
}

/// `cos` and `sin` of `pos × base^(-2i / rope_dim)` for every position of the context, computed
/// in f32 exactly as candle-transformers' llama does (so the two agree bit for bit).
fn rope_tables(cfg: &LlamaConfig) -> (Vec<f32>, Vec<f32>) {
    let theta: Vec<f32> = (0..cfg.rope_dim)
        .step_by(2)
        .map(|i| 1f32 / cfg.rope_base.powf(i as f32 / cfg.rope_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(cfg.context_len * theta.len());
    let mut sin = Vec::with_capacity(cfg.context_len * theta.len());
    for pos in 0..cfg.context_len {
        for &t in &theta {
            let angle = pos as f32 * t;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::config::tests_support::tiny_config as cfg;

    #[test]
    fn fused_silu_times_up_equals_candles_ops() {
        let (rows, ffn) = (3, 40);
        let y: Vec<f32> = (0..rows * 2 * ffn)
            .map(|i| (i as f32 * 0.73).sin() * 6.0)
            .collect();
        let t = Tensor::from_vec(y.clone(), (rows, 2 * ffn), &Device::Cpu).unwrap();
        let gate = t.narrow(1, 0, ffn).unwrap();
        let up = t.narrow(1, ffn, ffn).unwrap();
        let want = (candle_nn::ops::silu(&gate).unwrap() * up).unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(silu_times_up(&y, ffn), want);
    }

    #[test]
    fn rope_tables_start_at_identity_and_rotate_by_position() {
        let c = cfg();
        let (cos, sin) = rope_tables(&c);
        assert_eq!(cos.len(), 16 * 2);
        assert_eq!((cos[0], sin[0], cos[1], sin[1]), (1.0, 0.0, 1.0, 0.0));
        // Position 3, first frequency (θ = 1): angle 3.
        assert_eq!((cos[6], sin[6]), (3f32.cos(), 3f32.sin()));
        // Second frequency: θ = 10000^(-2/4) = 0.01.
        assert!((sin[7] - (3.0f32 * 0.01).sin()).abs() < 1e-7);
    }
}

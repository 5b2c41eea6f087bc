//! A Llama-architecture decoder (SmolLM2 and its kin) loaded from GGUF, built for continuous
//! batching: every token carries its own position, every sequence its own KV cache, and one
//! forward pass runs any mix of prompt chunks and decode tokens from many sequences. The
//! projections run as ONE matmul over all tokens of the step through candle's quantized module;
//! RoPE and attention run here, per token against its own sequence's cache, in parallel.
//!
//! candle-transformers' `quantized_llama` shares one position and one cache length across the
//! batch, so it cannot do this; it is the reference our greedy output is tested against.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use rayon::prelude::*;

use wattserve_kernels::default_threads;
use wattserve_kernels::q8_0::{matmul_q8_0, Q8Path, Q8_0Weights};

use super::gguf::GgufFile;
use super::{EngineError, Precision};

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

/// The keys and values one sequence has produced so far, per layer, after RoPE. Owned by the
/// sequence, so sequences of any lengths share a forward pass.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer: keys, then values, each `len × kv_dim` floats.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    len: usize,
    kv_dim: usize,
}

impl KvCache {
    /// An empty cache for a model of shape `cfg`, with room for `capacity` tokens reserved.
    pub fn new(cfg: &LlamaConfig, capacity: usize) -> Self {
        let floats = capacity.min(cfg.context_len) * cfg.kv_dim();
        Self {
            layers: (0..cfg.n_layer)
                .map(|_| (Vec::with_capacity(floats), Vec::with_capacity(floats)))
                .collect(),
            len: 0,
            kv_dim: cfg.kv_dim(),
        }
    }

    /// Tokens cached (the position the next token gets).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.layers.len() * 2 * self.len * self.kv_dim * std::mem::size_of::<f32>()
    }
}

/// One sequence's share of a forward pass: the tokens to append at positions
/// `cache.len()..cache.len() + tokens.len()`, and whether to return the logits of the last one.
pub struct SeqInput<'a> {
    /// New tokens (a prompt chunk, or the one token sampled last step).
    pub tokens: &'a [u32],
    /// The sequence's cache, extended by this pass.
    pub cache: &'a mut KvCache,
    /// Whether the caller needs the next-token logits after these tokens (false for a prompt
    /// chunk that is not the prompt's last).
    pub logits: bool,
}

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
pub const GENERATION_PRECISIONS: &str = "gguf (as stored), int8 (Q8_0) or f32";

impl Llama {
    /// Loads the decoder from `file` at `precision`: `gguf` keeps every tensor as stored, `int8`
    /// requantizes the matmul weights to Q8_0 (blocks of 32 with one f16 scale), `f32`
    /// dequantizes them.
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
    /// `n × vocab`) of those with `logits` set, in order. Each input's cache grows by its tokens.
    pub fn forward(&self, inputs: &mut [SeqInput<'_>]) -> Result<Tensor, EngineError> {
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
            if input.logits {
                last_rows.push((ids.len() - 1) as u32);
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
            let attn = attention(cfg, &q, &spans, &caches, &self.device)?;
            let attn = Tensor::from_vec(attn, (n_tokens, cfg.n_head * cfg.head_dim), &self.device)?;
            x = (x + block.wo.forward(&attn)?)?;
            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, cfg.rms_eps)?;
            let (gate, up) = match block.gate_up.as_slice() {
                [fused] => {
                    let y = fused.forward(&h)?;
                    (
                        y.narrow(1, 0, cfg.ffn_dim)?,
                        y.narrow(1, cfg.ffn_dim, cfg.ffn_dim)?,
                    )
                }
                [gate, up] => (gate.forward(&h)?, up.forward(&h)?),
                _ => {
                    return Err(EngineError::Unsupported(
                        "gate/up projection lost a part".into(),
                    ))
                }
            };
            let gate = candle_nn::ops::silu(&gate)?;
            x = (x + block.down.forward(&(gate * up)?)?)?;
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
        data.par_chunks_mut(heads * d)
            .zip(positions.par_iter())
            .for_each(|(row, &pos)| {
                let cos = &self.rope_cos[pos * half..(pos + 1) * half];
                let sin = &self.rope_sin[pos * half..(pos + 1) * half];
                for head in row.chunks_exact_mut(d) {
                    for i in 0..half {
                        let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                        head[2 * i] = x0 * cos[i] - x1 * sin[i];
                        head[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
                    }
                }
            });
    }
}

/// A projection's weights and the matmul that applies them.
enum Projection {
    /// candle's (quantized or dense) matmul: as stored (`gguf`), dequantized (`f32`), or Q8_0 off
    /// the CPU.
    Candle(QMatMul),
    /// Q8_0 through candle's repacked VNNI kernel, which needs K to be a multiple of 256: the
    /// weights carry zero columns up to `padded_k`, and inputs get zeros appended.
    PaddedK {
        /// The Q8_0 matmul over `padded_k` inputs.
        matmul: QMatMul,
        /// Real inputs.
        k: usize,
        /// Inputs after padding.
        padded_k: usize,
    },
    /// Q8_0 on the CPU through `wattserve-kernels` (CPUs without VNNI): candle's per-row Q8_0
    /// arithmetic, with every weight block shared by a tile of rows.
    Q8(Q8_0Weights),
}

/// Whether candle's repacked Q8_0 kernel runs on this CPU (it needs VNNI).
fn candle_q8_0_repack_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Projection {
    /// The int8 (Q8_0) projection of `parts` stacked along the outputs (Q, K, V as one matmul:
    /// the input is quantized and read once), with the CPU's fastest Q8_0 kernel.
    fn int8(parts: Vec<QTensor>, device: &Device, bytes: &mut usize) -> Result<Self, EngineError> {
        let dense: Vec<Tensor> = parts
            .iter()
            .map(|t| t.dequantize(device))
            .collect::<Result<_, _>>()?;
        let dense = if dense.len() == 1 {
            dense.into_iter().next().unwrap_or_else(|| unreachable!())
        } else {
            Tensor::cat(&dense, 0)?
        };
        let (n, k) = dense.dims2()?;
        if device.is_cpu() && candle_q8_0_repack_available() {
            let padded_k = k.div_ceil(256) * 256;
            let dense = if padded_k > k {
                Tensor::cat(
                    &[dense, Tensor::zeros((n, padded_k - k), DType::F32, device)?],
                    1,
                )?
            } else {
                dense
            };
            let q = QTensor::quantize(&dense, GgmlDType::Q8_0)?;
            *bytes += q.storage_size_in_bytes();
            let matmul = QMatMul::from_qtensor(q)?;
            return Ok(if padded_k > k {
                Projection::PaddedK {
                    matmul,
                    k,
                    padded_k,
                }
            } else {
                Projection::Candle(matmul)
            });
        }
        let q = QTensor::quantize(&dense, GgmlDType::Q8_0)?;
        if device.is_cpu() {
            if let Some(w) = Q8_0Weights::from_ggml_blocks(&q.data()?, n, k) {
                *bytes += w.bytes();
                return Ok(Projection::Q8(w));
            }
        }
        *bytes += q.storage_size_in_bytes();
        Ok(Projection::Candle(QMatMul::from_qtensor(q)?))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        match self {
            Projection::Candle(m) => Ok(m.forward(x)?),
            Projection::PaddedK {
                matmul,
                k,
                padded_k,
            } => {
                let rows = x.dims2()?.0;
                let zeros = Tensor::zeros((rows, padded_k - k), x.dtype(), x.device())?;
                Ok(matmul.forward(&Tensor::cat(&[x, &zeros], 1)?)?)
            }
            Projection::Q8(w) => {
                let (rows, k) = x.dims2()?;
                if k != w.k {
                    return Err(EngineError::Unsupported(format!(
                        "projection expects {} inputs, got {k}",
                        w.k
                    )));
                }
                let data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let y = matmul_q8_0(&data, rows, w, Q8Path::detect(), default_threads());
                Ok(Tensor::from_vec(y, (rows, w.n), x.device())?)
            }
        }
    }
}

/// The projections for the weights `parts` (same input) at `precision`, adding their size to
/// `bytes`: one stacked int8 projection, or one candle matmul per part (`gguf` keeps every
/// tensor as stored, `f32` dequantizes).
fn projections(
    parts: Vec<QTensor>,
    precision: Precision,
    device: &Device,
    bytes: &mut usize,
) -> Result<Vec<Projection>, EngineError> {
    if precision == Precision::Int8 {
        return Ok(vec![Projection::int8(parts, device, bytes)?]);
    }
    parts
        .into_iter()
        .map(|t| {
            if precision == Precision::F32 {
                let dense = t.dequantize(device)?;
                *bytes += dense.elem_count() * 4;
                return Ok(Projection::Candle(QMatMul::Tensor(dense)));
            }
            let stored_dense =
                matches!(t.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
            *bytes += if stored_dense {
                t.shape().elem_count() * 4
            } else {
                t.storage_size_in_bytes()
            };
            Ok(Projection::Candle(QMatMul::from_qtensor(t)?))
        })
        .collect()
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

/// The outputs of `projections` applied to `x`, split into parts of `widths` columns (one
/// projection per part, or one fused projection for all), each row-major `rows × width`.
fn split_outputs(
    projections: &[Projection],
    x: &Tensor,
    widths: &[usize],
) -> Result<Vec<Vec<f32>>, EngineError> {
    if projections.len() == widths.len() {
        return projections.iter().map(|p| to_vec(&p.forward(x)?)).collect();
    }
    let [fused] = projections else {
        return Err(EngineError::Unsupported(format!(
            "{} projections for {} outputs",
            projections.len(),
            widths.len()
        )));
    };
    let y = to_vec(&fused.forward(x)?)?;
    let total: usize = widths.iter().sum();
    let rows = y.len() / total.max(1);
    let mut parts: Vec<Vec<f32>> = widths
        .iter()
        .map(|w| Vec::with_capacity(rows * w))
        .collect();
    for row in y.chunks_exact(total) {
        let mut off = 0;
        for (part, &w) in parts.iter_mut().zip(widths) {
            part.extend_from_slice(&row[off..off + w]);
            off += w;
        }
    }
    Ok(parts)
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>, EngineError> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Where one sequence's tokens are in a forward pass.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// First row of the pass's token matrix.
    row: usize,
    /// Tokens this pass adds.
    tokens: usize,
    /// Tokens cached before this pass (the position of the first new one).
    start: usize,
}

/// Causal attention of every sequence's new tokens against its own cache (which already holds
/// them): softmax(q·kᵀ / √d) · v per query head, each key/value head shared by
/// `n_head / n_kv_head` query heads. Sequences run in parallel; each one with candle's own
/// matmul and softmax on exactly the shapes and layouts candle-transformers' `quantized_llama`
/// uses for a lone sequence, so the arithmetic is bit-for-bit the reference's. That matters:
/// behind int8/int4 weights the activations are re-quantized at every matmul, so a last-bit
/// difference in attention flips some of those roundings and grows into visibly different
/// logits (measured: 0.85 max abs logit difference with a differently ordered but equally
/// accurate attention, versus 3e-5 in f32). Returns `rows × n_head·head_dim`.
fn attention(
    cfg: &LlamaConfig,
    q: &[f32],
    spans: &[Span],
    caches: &[(&[f32], &[f32])],
    device: &Device,
) -> Result<Vec<f32>, EngineError> {
    let q_dim = cfg.n_head * cfg.head_dim;
    let parts: Vec<Result<Vec<f32>, EngineError>> = spans
        .par_iter()
        .zip(caches.par_iter())
        .map(|(span, &(keys, values))| {
            let rows = &q[span.row * q_dim..(span.row + span.tokens) * q_dim];
            sequence_attention(cfg, rows, *span, keys, values, device)
        })
        .collect();
    let mut out = Vec::with_capacity(q.len());
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// [`attention`] for one sequence: `q` holds its `span.tokens` rows.
fn sequence_attention(
    cfg: &LlamaConfig,
    q: &[f32],
    span: Span,
    keys: &[f32],
    values: &[f32],
    device: &Device,
) -> Result<Vec<f32>, EngineError> {
    let (t, d, heads) = (span.tokens, cfg.head_dim, cfg.n_head);
    let len = span.start + t;
    if t == 1 {
        // One new token: the query heads sharing a key/value head are the rows of one matmul,
        // so each key/value head is copied once, not once per query head (same arithmetic:
        // the logits stay bit-identical to the reference's, tested).
        let group = cfg.n_head / cfg.n_kv_head;
        let q = Tensor::from_slice(q, (1, cfg.n_kv_head, group, d), device)?;
        let k = kv_heads(cfg, keys, len, device)?;
        let v = kv_heads(cfg, values, len, device)?;
        let att = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        return Ok(att.matmul(&v)?.flatten_all()?.to_vec1::<f32>()?);
    }
    let q = Tensor::from_slice(q, (1, t, heads, d), device)?
        .transpose(1, 2)?
        .contiguous()?;
    let k = repeat_heads(cfg, keys, len, device)?;
    let v = repeat_heads(cfg, values, len, device)?;
    let att = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
    let att = if t > 1 {
        // Token i (position start + i) sees keys 0..=start + i.
        let mask: Vec<u8> = (0..t)
            .flat_map(|i| (0..len).map(move |j| u8::from(j > span.start + i)))
            .collect();
        let mask = Tensor::from_vec(mask, (t, len), device)?.broadcast_as(att.shape())?;
        let neg_inf = Tensor::new(f32::NEG_INFINITY, device)?.broadcast_as(att.shape())?;
        mask.where_cond(&neg_inf, &att)?
    } else {
        att
    };
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    let y = att.matmul(&v)?.transpose(1, 2)?.reshape((t, heads * d))?;
    Ok(y.flatten_all()?.to_vec1::<f32>()?)
}

/// The first `len` cached rows as a contiguous `(1, n_kv_head, len, head_dim)` tensor.
fn kv_heads(
    cfg: &LlamaConfig,
    cache: &[f32],
    len: usize,
    device: &Device,
) -> Result<Tensor, EngineError> {
    let (d, kv_dim) = (cfg.head_dim, cfg.kv_dim());
    let mut data = Vec::with_capacity(cfg.n_kv_head * len * d);
    for head in 0..cfg.n_kv_head {
        for j in 0..len {
            data.extend_from_slice(&cache[j * kv_dim + head * d..j * kv_dim + head * d + d]);
        }
    }
    Ok(Tensor::from_vec(data, (1, cfg.n_kv_head, len, d), device)?)
}

/// The first `len` cached rows as a contiguous `(1, n_head, len, head_dim)` tensor, each
/// key/value head repeated for the query heads that share it (what `repeat_kv` produces).
fn repeat_heads(
    cfg: &LlamaConfig,
    cache: &[f32],
    len: usize,
    device: &Device,
) -> Result<Tensor, EngineError> {
    let (d, kv_dim) = (cfg.head_dim, cfg.kv_dim());
    let group = cfg.n_head / cfg.n_kv_head;
    let mut data = Vec::with_capacity(cfg.n_head * len * d);
    for head in 0..cfg.n_head {
        let off = (head / group) * d;
        for j in 0..len {
            data.extend_from_slice(&cache[j * kv_dim + off..j * kv_dim + off + d]);
        }
    }
    Ok(Tensor::from_vec(data, (1, cfg.n_head, len, d), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LlamaConfig {
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

    #[test]
    fn attention_of_a_single_visible_key_returns_its_value() {
        let c = cfg();
        // One sequence, one token at position 0: the only key gets weight 1.
        let q = vec![0.3, -1.0, 2.0, 0.5, 1.0, 1.0, 1.0, 1.0];
        let k = vec![0.1, 0.2, 0.3, 0.4];
        let v = vec![5.0, -6.0, 7.0, 8.0];
        let span = Span {
            row: 0,
            tokens: 1,
            start: 0,
        };
        let out = attention(&c, &q, &[span], &[(&k, &v)], &Device::Cpu).unwrap();
        assert_eq!(out, vec![5.0, -6.0, 7.0, 8.0, 5.0, -6.0, 7.0, 8.0]);
    }

    #[test]
    fn attention_matches_softmax_by_hand_and_is_causal() {
        let c = cfg();
        // Keys at positions 0, 1 and 2; the query at position 1 must not see position 2.
        let k = vec![1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 9.0, 9.0, 9.0, 9.0];
        let v = vec![
            1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 100.0, 100.0, 100.0, 100.0,
        ];
        let q = vec![2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        // The query is the sequence's second token (position 1), added in this pass.
        let span = Span {
            row: 0,
            tokens: 1,
            start: 1,
        };
        let out = attention(&c, &q, &[span], &[(&k, &v)], &Device::Cpu).unwrap();
        let s0 = 2.0f32 * 0.5; // q·k0 / √4
        let s1 = 2.0f32 * 0.5; // q·k1 / √4
        let w0 = s0.exp() / (s0.exp() + s1.exp());
        assert!((out[0] - w0).abs() < 1e-6 && (out[1] - (1.0 - w0)).abs() < 1e-6);
        // Head 1 has a zero query: uniform weights over the two visible keys.
        assert!((out[4] - 0.5).abs() < 1e-6 && (out[5] - 0.5).abs() < 1e-6);
        assert!(out.iter().all(|&x| x < 2.0), "position 2 leaked: {out:?}");
    }

    #[test]
    fn a_chunk_of_tokens_equals_its_tokens_one_by_one() {
        let c = cfg();
        let k: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
        let v: Vec<f32> = (0..12).map(|i| (i as f32 * 0.91).cos()).collect();
        let q: Vec<f32> = (0..16).map(|i| (i as f32 * 0.53).sin()).collect();
        // Two tokens at positions 1 and 2 in one pass, then each alone.
        let both = attention(
            &c,
            &q,
            &[Span {
                row: 0,
                tokens: 2,
                start: 1,
            }],
            &[(&k, &v)],
            &Device::Cpu,
        )
        .unwrap();
        let first = attention(
            &c,
            &q[..8],
            &[Span {
                row: 0,
                tokens: 1,
                start: 1,
            }],
            &[(&k, &v)],
            &Device::Cpu,
        )
        .unwrap();
        let second = attention(
            &c,
            &q[8..],
            &[Span {
                row: 0,
                tokens: 1,
                start: 2,
            }],
            &[(&k, &v)],
            &Device::Cpu,
        )
        .unwrap();
        for (a, b) in both.iter().zip(first.iter().chain(&second)) {
            assert!((a - b).abs() < 1e-6, "{both:?} vs {first:?} {second:?}");
        }
        // Two sequences in one call give what each gives alone.
        let k2: Vec<f32> = k.iter().map(|x| x * 2.0).collect();
        let pair = attention(
            &c,
            &q,
            &[
                Span {
                    row: 0,
                    tokens: 1,
                    start: 2,
                },
                Span {
                    row: 1,
                    tokens: 1,
                    start: 0,
                },
            ],
            &[(&k, &v), (&k2, &v)],
            &Device::Cpu,
        )
        .unwrap();
        let alone = attention(
            &c,
            &q[8..],
            &[Span {
                row: 0,
                tokens: 1,
                start: 0,
            }],
            &[(&k2, &v)],
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(&pair[8..], &alone[..]);
    }

    #[test]
    fn int8_projections_track_f32_and_the_q8_kernel_matches_candle_bit_for_bit() {
        // K = 576 (SmolLM2's width): not a multiple of 256, so candle's own Q8_0 matmul takes
        // its per-row vec_dot path, whose arithmetic the wattserve kernel reproduces exactly.
        let (rows, k, n) = (5, 576, 40);
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1009) as f32 / 504.5) - 1.0)
            .collect();
        let w = Tensor::from_vec(w, (n, k), &dev).unwrap();
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 104729 % 997) as f32 / 99.7) - 5.0)
            .collect();
        let x = Tensor::from_vec(x, (rows, k), &dev).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let candle = QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let ours = Q8_0Weights::from_ggml_blocks(&q.data().unwrap(), n, k).unwrap();
        let ours = Projection::Q8(ours).forward(&x).unwrap();
        assert_eq!(flat(&candle), flat(&ours));
        // Whatever kernel this CPU gets (padded VNNI or ours), the int8 projection of two
        // stacked parts is close to the f32 product.
        let rows_of = |from: usize, count: usize| {
            let v = w.narrow(0, from, count).unwrap().flatten_all().unwrap();
            Tensor::from_vec(v.to_vec1::<f32>().unwrap(), (count, k), &dev).unwrap()
        };
        let (w1, w2) = (rows_of(0, 16), rows_of(16, 24));
        let parts = vec![
            QTensor::quantize(&w1, GgmlDType::F32).unwrap(),
            QTensor::quantize(&w2, GgmlDType::F32).unwrap(),
        ];
        let mut bytes = 0;
        let p = Projection::int8(parts, &dev, &mut bytes).unwrap();
        assert!(bytes > 0);
        let exact = flat(&x.matmul(&w.t().unwrap()).unwrap());
        let got = flat(&p.forward(&x).unwrap());
        let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in got.iter().zip(&exact) {
            assert!((a - b).abs() < 0.02 * scale, "{a} vs {b}");
        }
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

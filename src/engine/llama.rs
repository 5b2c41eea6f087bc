//! A Llama-architecture decoder (SmolLM2 and its kin) loaded from GGUF, built for continuous
//! batching: every token carries its own position, every sequence its own KV cache, and one
//! forward pass runs any mix of prompt chunks and decode tokens from many sequences. The
//! projections run as ONE matmul over all tokens of the step (`wattserve-kernels`' int8 kernel,
//! or candle's quantized module for the other precisions);
//! RoPE and attention run here, per token against its own sequence's cache (`attention.rs`).
//!
//! candle-transformers' `quantized_llama` shares one position and one cache length across the
//! batch, so it cannot do this; it is the reference our greedy output is tested against.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use wattserve_kernels::default_threads;
use wattserve_kernels::q8_0::{matmul_q8_0, Q8Path, Q8_0Weights};
use wattserve_kernels::q8_tiles::{self, Q8Tiles};

use super::attention::{attention, Span};
use super::cpu_pool;
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

    /// Forgets the tokens past the first `len` (keeping the room reserved), so that a sequence
    /// can be rewound: a benchmark repeating one step, or a step to be retried.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for (k, v) in &mut self.layers {
            k.truncate(len * self.kv_dim);
            v.truncate(len * self.kv_dim);
        }
        self.len = len;
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
            let attn = attention(cfg, &q, &spans, &caches)?;
            let attn = Tensor::from_vec(attn, (n_tokens, cfg.n_head * cfg.head_dim), &self.device)?;
            x = (x + block.wo.forward(&attn)?)?;
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
            x = (x + block.down.forward(&act)?)?;
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
    /// int8 in blocks of 64 through `wattserve-kernels`' tile kernels (any K that is a multiple
    /// of 64; 16-column weight tiles shared by up to 16 rows on AMX, 8 on AVX-512 VNNI), on
    /// candle's CPU threads.
    Tiles(Q8Tiles),
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
    /// The int8 projection of `parts` stacked along the outputs (Q, K, V as one matmul: the
    /// input is quantized and read once), with the CPU's fastest int8 kernel: blocks of 64 with
    /// AMX or AVX-512 VNNI, else Q8_0 (candle's repacked kernel with AVX-VNNI, ours without).
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
        if device.is_cpu() && q8_tiles::Kernel::detect() != q8_tiles::Kernel::Portable {
            let values = dense.flatten_all()?.to_vec1::<f32>()?;
            if let Some(tiles) = Q8Tiles::quantize(&values, n, k) {
                *bytes += tiles.bytes();
                return Ok(Projection::Tiles(tiles));
            }
        }
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

    /// [`Projection::forward`] as a row-major `rows × n` vector (no tensor for the kernels of
    /// `wattserve-kernels`, which produce one).
    fn forward_vec(&self, x: &Tensor) -> Result<Vec<f32>, EngineError> {
        match self {
            Projection::Tiles(w) => {
                let (rows, data) = input_rows(x, w.k)?;
                Ok(q8_tiles::matmul(&data, rows, w, &cpu_pool::run))
            }
            _ => to_vec(&self.forward(x)?),
        }
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
            Projection::Tiles(w) => {
                let rows = x.dims2()?.0;
                Ok(Tensor::from_vec(
                    self.forward_vec(x)?,
                    (rows, w.n),
                    x.device(),
                )?)
            }
        }
    }
}

/// The rows of `x` (`rows × k`) as f32, checking the width a projection expects.
fn input_rows(x: &Tensor, k: usize) -> Result<(usize, Vec<f32>), EngineError> {
    let (rows, width) = x.dims2()?;
    if width != k {
        return Err(EngineError::Unsupported(format!(
            "projection expects {k} inputs, got {width}"
        )));
    }
    Ok((rows, to_vec(x)?))
}

/// `silu(gate) · up` for rows of `[gate | up]` (each `ffn` wide), as candle's `silu` and `mul`
/// compute it (`g / (1 + exp(-g)) · u`), rows in parallel on candle's pool.
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
        return projections.iter().map(|p| p.forward_vec(x)).collect();
    }
    let [fused] = projections else {
        return Err(EngineError::Unsupported(format!(
            "{} projections for {} outputs",
            projections.len(),
            widths.len()
        )));
    };
    let y = fused.forward_vec(x)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    use super::tests_support::tiny_config as cfg;

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
    fn a_truncated_cache_forgets_the_tail_and_keeps_its_room() {
        let c = cfg();
        let mut cache = KvCache::new(&c, 8);
        for (k, v) in &mut cache.layers {
            k.extend_from_slice(&[1.0; 3 * 4]);
            v.extend_from_slice(&[2.0; 3 * 4]);
        }
        cache.len = 3;
        let room = cache.layers[0].0.capacity();
        cache.truncate(5);
        assert_eq!(cache.len(), 3, "truncating past the end keeps everything");
        cache.truncate(1);
        assert_eq!((cache.len(), cache.bytes()), (1, 2 * 4 * 4));
        assert_eq!(cache.layers[0].0, vec![1.0; 4]);
        assert_eq!(cache.layers[0].0.capacity(), room);
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

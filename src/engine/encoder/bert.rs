//! A BERT encoder (as in all-MiniLM-L6-v2), written for batched serving: padded batches with an
//! attention mask built in f32 (so that f16/bf16 never see -inf), every projection a [`Linear`]
//! whose precision is chosen at load.
//!
//! Shapes in comments: `B` batch, `T` padded sequence length, `H` hidden size, `nh` heads,
//! `hd = H / nh` head size, `I` intermediate size.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Embedding, LayerNorm, Module, VarBuilder};
use serde::Deserialize;

use super::linear::{activation_dtype, candle_ops_forced, Input, Linear};
use crate::engine::elementwise::{add, with_f32_slice, On};
use crate::engine::{EngineError, Precision};
use wattserve_kernels::attention::attend_packed;
use wattserve_kernels::{default_threads, Epilogue};

/// The fields of a Hugging Face `config.json` this encoder uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size (rows of the word embedding table).
    pub vocab_size: usize,
    /// `H`.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// `nh`.
    pub num_attention_heads: usize,
    /// `I`.
    pub intermediate_size: usize,
    /// Activation of the feed-forward block (`gelu` = exact erf GELU).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Rows of the position embedding table: the hard upper bound on `T`.
    pub max_position_embeddings: usize,
    /// Rows of the token type table.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Only `absolute` is supported.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// Additive mask value for padded key positions. Finite so that no NaN can appear; applied to
/// scores that are always f32.
const MASKED: f32 = -1e9;

#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Result<Self, EngineError> {
        match name {
            "gelu" => Ok(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(EngineError::Unsupported(format!(
                "BERT hidden_act `{other}` is not supported (gelu, gelu_new, relu)"
            ))),
        }
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::GeluErf => super::activation::gelu_erf(x),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
        }
    }
}

struct SelfAttention {
    /// Q, K and V stacked: (H) -> (3H).
    qkv: Linear,
    /// The packed layout in f32 on the CPU runs our attention kernel (unless candle's ops were
    /// asked for).
    attention_kernel: bool,
    output: Linear,
    output_norm: LayerNorm,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn load(cfg: &BertConfig, precision: Precision, vb: VarBuilder) -> Result<Self, EngineError> {
        let h = cfg.hidden_size;
        let sa = vb.pp("self");
        let out = vb.pp("output");
        Ok(Self {
            qkv: Linear::load_stacked(
                h,
                &[(h, sa.pp("query")), (h, sa.pp("key")), (h, sa.pp("value"))],
                precision,
                Input::Normalized,
            )?,
            attention_kernel: !candle_ops_forced(),
            output: Linear::load(h, h, precision, Input::Other, out.pp("dense"))?,
            output_norm: candle_nn::layer_norm(h, cfg.layer_norm_eps, out.pp("LayerNorm"))?,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
        })
    }

    /// Self-attention block over a batch in either layout; returns the same shape as `x`.
    fn forward(&self, x: &Tensor, layout: &Layout) -> Result<Tensor, EngineError> {
        // (.., 3H)
        let qkv = self.qkv.forward(x)?;
        if let Layout::Packed { spans } = layout {
            if self.attention_kernel && qkv.dtype() == DType::F32 && qkv.device().is_cpu() {
                let context = self.attend_packed_f32(&qkv, spans)?;
                let projected = self.output.forward(&context)?;
                return Ok(self
                    .output_norm
                    .forward(&add(&projected, x, None, On::Pool)?)?);
            }
        }
        // three (.., H)
        let last = qkv.rank() - 1;
        let h = qkv.dim(last)? / 3;
        let q = qkv.narrow(last, 0, h)?.contiguous()?;
        let k = qkv.narrow(last, h, h)?.contiguous()?;
        let v = qkv.narrow(last, 2 * h, h)?.contiguous()?;
        let context = match layout {
            Layout::Padded { mask } => self.attend_padded(&q, &k, &v, mask)?,
            Layout::Packed { spans } => self.attend_packed(&q, &k, &v, spans)?,
        };
        let projected = self.output.forward(&context)?;
        Ok(self
            .output_norm
            .forward(&add(&projected, x, None, On::Pool)?)?)
    }

    /// `q`, `k`, `v`: (B, T, H); `mask`: (B, 1, 1, T) additive f32. Returns (B, T, H).
    fn attend_padded(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor, EngineError> {
        let (b, t, h) = q.dims3()?;
        let split = |y: &Tensor| -> candle_core::Result<Tensor> {
            // (B, T, H) -> (B, nh, T, hd)
            y.reshape((b, t, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(q)?, split(k)?, split(v)?);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // (B, nh, T, T), softmax always in f32
        let scores = (q.matmul(&k.t()?)? * scale)?
            .to_dtype(DType::F32)?
            .broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        // (B, nh, T, hd) -> (B, T, H)
        Ok(probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, h))?)
    }

    /// The packed layout in f32 on the CPU: the attention kernel reads Q, K and V straight from
    /// the fused projection (N, 3H) and writes the context (N, H).
    fn attend_packed_f32(
        &self,
        qkv: &Tensor,
        spans: &[(usize, usize)],
    ) -> Result<Tensor, EngineError> {
        let n = qkv.dim(0)?;
        let h = self.heads * self.head_dim;
        let mut context = vec![0f32; n * h];
        with_f32_slice(qkv, |qkv| {
            attend_packed(
                qkv,
                spans,
                self.heads,
                self.head_dim,
                default_threads(),
                &mut context,
            )
        })?;
        Ok(Tensor::from_vec(context, (n, h), &Device::Cpu)?)
    }

    /// `q`, `k`, `v`: (N, H), the tokens of all sequences one after another; each span is one
    /// sequence. Attention runs per sequence, so no token ever sees another sequence and nothing
    /// is padded. Returns (N, H).
    fn attend_packed(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        spans: &[(usize, usize)],
    ) -> Result<Tensor, EngineError> {
        let h = q.dim(1)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let attend_one = |&(start, len): &(usize, usize)| -> candle_core::Result<Tensor> {
            let split = |y: &Tensor| -> candle_core::Result<Tensor> {
                // (len, H) -> (nh, len, hd)
                y.narrow(0, start, len)?
                    .reshape((len, self.heads, self.head_dim))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let (qi, ki, vi) = (split(q)?, split(k)?, split(v)?);
            // (nh, len, len), softmax in f32
            let scores = (qi.matmul(&ki.t()?)? * scale)?.to_dtype(DType::F32)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(vi.dtype())?;
            // (nh, len, hd) -> (len, H)
            probs
                .matmul(&vi)?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((len, h))
        };
        // Sequences are independent: attend to them in parallel (candle runs these small ops on
        // one thread each).
        use rayon::prelude::*;
        let contexts = spans
            .par_iter()
            .map(attend_one)
            .collect::<candle_core::Result<Vec<Tensor>>>()?;
        Ok(Tensor::cat(&contexts, 0)?)
    }
}

/// How the sequences of a batch are laid out in the activations.
pub enum Layout<'a> {
    /// (B, T, H) padded to the longest, with an additive (B, 1, 1, T) f32 mask. One batched
    /// attention for all: the layout for GPUs, where many small kernels cost more than padding.
    Padded {
        /// 0 for real tokens, a large negative number for padding.
        mask: Tensor,
    },
    /// (N, H): the real tokens of every sequence one after another, no padding; attention per
    /// sequence. The layout for CPUs, where padded tokens cost as much as real ones: every
    /// projection (95% of the FLOPs) runs on real tokens only.
    Packed {
        /// (first row, length) of each sequence.
        spans: &'a [(usize, usize)],
    },
}

struct FeedForward {
    up: Linear,
    down: Linear,
    norm: LayerNorm,
    act: Activation,
}

impl FeedForward {
    fn load(cfg: &BertConfig, precision: Precision, vb: VarBuilder) -> Result<Self, EngineError> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            up: Linear::load(
                h,
                i,
                precision,
                Input::Normalized,
                vb.pp("intermediate").pp("dense"),
            )?,
            down: Linear::load(i, h, precision, Input::Other, vb.pp("output").pp("dense"))?,
            norm: candle_nn::layer_norm(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            act: Activation::parse(&cfg.hidden_act)?,
        })
    }

    /// (B, T, H) -> (B, T, I) -> (B, T, H), residual + LayerNorm. The exact GELU is fused into
    /// the up projection where its kernel can.
    fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        let up = match self.act {
            Activation::GeluErf if self.up.fuses_epilogue() => {
                self.up.forward_with(x, Epilogue::GeluErf)?
            }
            act => act.apply(&self.up.forward(x)?)?,
        };
        let down = self.down.forward(&up)?;
        Ok(self.norm.forward(&add(&down, x, None, On::Pool)?)?)
    }
}

struct Layer {
    attention: SelfAttention,
    ffn: FeedForward,
}

/// The BERT encoder: embeddings, then `num_hidden_layers` blocks. Produces the last hidden state;
/// pooling is applied by [`super::pooling`].
pub struct BertEncoder {
    word: Embedding,
    position: Tensor,
    token_type0: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    device: Device,
    hidden_size: usize,
    max_positions: usize,
}

impl BertEncoder {
    /// Builds the encoder from weights under `vb` (names as in Hugging Face `BertModel`, with or
    /// without a `bert.` prefix).
    pub fn load(
        cfg: &BertConfig,
        precision: Precision,
        vb: VarBuilder,
    ) -> Result<Self, EngineError> {
        if let Some(kind) = cfg.position_embedding_type.as_deref() {
            if kind != "absolute" {
                return Err(EngineError::Unsupported(format!(
                    "BERT position_embedding_type `{kind}` is not supported (absolute only)"
                )));
            }
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(EngineError::Unsupported(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        // Layers other than the projections stay in f32 (embeddings, LayerNorm) unless the whole
        // model is dense half precision through candle, where activations flow in that dtype.
        let dtype = activation_dtype(precision, vb.device());
        let emb = vb.pp("embeddings");
        let h = cfg.hidden_size;
        let word = candle_nn::embedding(cfg.vocab_size, h, emb.pp("word_embeddings"))?;
        let word = Embedding::new(word.embeddings().to_dtype(dtype)?, h);
        let position = emb
            .pp("position_embeddings")
            .get((cfg.max_position_embeddings, h), "weight")?
            .to_dtype(dtype)?;
        let token_type0 = emb
            .pp("token_type_embeddings")
            .get((cfg.type_vocab_size, h), "weight")?
            .get(0)?
            .to_dtype(dtype)?;
        let embed_norm = candle_nn::layer_norm(h, cfg.layer_norm_eps, emb.pp("LayerNorm"))?;
        let embed_norm = cast_norm(embed_norm, dtype, cfg.layer_norm_eps)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let lvb = vb.pp("encoder").pp("layer").pp(i.to_string());
            let mut attention = SelfAttention::load(cfg, precision, lvb.pp("attention"))?;
            attention.output_norm = cast_norm(attention.output_norm, dtype, cfg.layer_norm_eps)?;
            let mut ffn = FeedForward::load(cfg, precision, lvb.clone())?;
            ffn.norm = cast_norm(ffn.norm, dtype, cfg.layer_norm_eps)?;
            layers.push(Layer { attention, ffn });
        }
        Ok(Self {
            word,
            position,
            token_type0,
            embed_norm,
            layers,
            device: vb.device().clone(),
            hidden_size: h,
            max_positions: cfg.max_position_embeddings,
        })
    }

    /// `H`, the width of every hidden state (and of mean/CLS-pooled embeddings).
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `input_ids`: (B, T) u32, `attention_mask`: (B, T) f32 with 1 for real tokens and 0 for
    /// padding. Returns the last hidden state (B, T, H) in f32.
    pub fn forward_padded(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor, EngineError> {
        let (b, t) = input_ids.dims2()?;
        self.check_len(t)?;
        // (B, T, H)
        let words = self.word.forward(input_ids)?;
        let positions = self.position.narrow(0, 0, t)?;
        let x = words
            .broadcast_add(&positions)?
            .broadcast_add(&self.token_type0)?;
        // (B, 1, 1, T): 0 where attended, MASKED where padded.
        let mask = (attention_mask.to_dtype(DType::F32)?.affine(-1.0, 1.0)? * MASKED as f64)?
            .reshape((b, 1, 1, t))?;
        self.encode(x, &Layout::Padded { mask })
    }

    /// `sequences` packed without padding. Returns the last hidden state (N, H) in f32, N the
    /// total number of tokens, and each sequence's (first row, length).
    pub fn forward_packed(
        &self,
        sequences: &[&[u32]],
    ) -> Result<(Tensor, Vec<(usize, usize)>), EngineError> {
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut spans = Vec::with_capacity(sequences.len());
        for seq in sequences {
            self.check_len(seq.len())?;
            if seq.is_empty() {
                return Err(EngineError::Unsupported(
                    "cannot encode an empty token sequence".into(),
                ));
            }
            spans.push((ids.len(), seq.len()));
            ids.extend_from_slice(seq);
            positions.extend(0..seq.len() as u32);
        }
        let n = ids.len();
        let ids = Tensor::from_vec(ids, n, &self.device)?;
        let positions = Tensor::from_vec(positions, n, &self.device)?;
        // (N, H)
        let x = add(
            &self.word.forward(&ids)?,
            &self.position.index_select(&positions, 0)?,
            Some(&self.token_type0),
            On::Pool,
        )?;
        let hidden = self.encode(x, &Layout::Packed { spans: &spans })?;
        Ok((hidden, spans))
    }

    fn check_len(&self, t: usize) -> Result<(), EngineError> {
        if t > self.max_positions {
            return Err(EngineError::Unsupported(format!(
                "sequence of {t} tokens exceeds the model's {} positions",
                self.max_positions
            )));
        }
        Ok(())
    }

    /// Embedding LayerNorm, then every layer; returns f32.
    fn encode(&self, x: Tensor, layout: &Layout) -> Result<Tensor, EngineError> {
        let mut x = self.embed_norm.forward(&x)?;
        for layer in &self.layers {
            x = layer.attention.forward(&x, layout)?;
            x = layer.ffn.forward(&x)?;
        }
        Ok(x.to_dtype(DType::F32)?)
    }

    /// Bytes of weights held, in the precision they are served at (for memory reports).
    pub fn weight_bytes(&self) -> usize {
        let t = |x: &Tensor| x.elem_count() * x.dtype().size_in_bytes();
        let norm = |n: &LayerNorm| t(n.weight()) + n.bias().map_or(0, t);
        let mut total = t(self.word.embeddings())
            + t(&self.position)
            + t(&self.token_type0)
            + norm(&self.embed_norm);
        for l in &self.layers {
            let a = &l.attention;
            total += [&a.qkv, &a.output, &l.ffn.up, &l.ffn.down]
                .iter()
                .map(|lin| lin.weight_bytes())
                .sum::<usize>();
            total += norm(&a.output_norm) + norm(&l.ffn.norm);
        }
        total
    }
}

/// Re-creates a LayerNorm with its parameters in `dtype`.
fn cast_norm(norm: LayerNorm, dtype: DType, eps: f64) -> Result<LayerNorm, EngineError> {
    if norm.weight().dtype() == dtype {
        return Ok(norm);
    }
    let weight = norm.weight().to_dtype(dtype)?;
    let bias = match norm.bias() {
        Some(b) => b.to_dtype(dtype)?,
        None => weight.zeros_like()?,
    };
    Ok(LayerNorm::new(weight, bias, eps))
}

/// Builds the (B, T) u32 id tensor and (B, T) f32 mask for sequences padded to the longest, with
/// `pad_id` in the padding.
pub fn pad_batch(
    sequences: &[&[u32]],
    pad_id: u32,
    device: &Device,
) -> Result<(Tensor, Tensor), EngineError> {
    let b = sequences.len();
    let t = sequences.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(b * t);
    let mut mask = Vec::with_capacity(b * t);
    for seq in sequences {
        ids.extend_from_slice(seq);
        ids.extend(std::iter::repeat_n(pad_id, t - seq.len()));
        mask.extend(std::iter::repeat_n(1f32, seq.len()));
        mask.extend(std::iter::repeat_n(0f32, t - seq.len()));
    }
    let ids = Tensor::from_vec(ids, (b, t), device)?;
    let mask = Tensor::from_vec(mask, (b, t), device)?;
    Ok((ids, mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_batch_pads_to_longest_with_mask() {
        let (ids, mask) = pad_batch(&[&[1, 2, 3], &[4]], 0, &Device::Cpu).unwrap();
        assert_eq!(
            ids.to_vec2::<u32>().unwrap(),
            vec![vec![1, 2, 3], vec![4, 0, 0]]
        );
        assert_eq!(
            mask.to_vec2::<f32>().unwrap(),
            vec![vec![1., 1., 1.], vec![1., 0., 0.]]
        );
    }

    #[test]
    fn activations_parse() {
        assert!(Activation::parse("gelu").is_ok());
        assert!(Activation::parse("swish").is_err());
    }
}

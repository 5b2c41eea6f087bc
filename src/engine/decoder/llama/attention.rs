//! Causal attention of a continuous batch: every sequence's new tokens against its own KV cache,
//! read in place (no copy of the cache per step, no tensor per sequence).
//!
//! The arithmetic is bit-for-bit that of candle-transformers' `quantized_llama` (our reference):
//! the two matmuls go to the same `gemm` routine candle's CPU matmul calls, with the same
//! shapes and the same unit strides (only the strides that step over rows differ, which choose
//! no different kernel), then the same scaling and the same softmax reductions. That matters:
//! behind int8/int4 weights the activations are re-quantized at every matmul, so a last-bit
//! difference in attention flips some of those roundings and grows into visibly different
//! logits, far beyond the f32 rounding noise. Tested against candle's own ops below.
//!
//! Sequences run in parallel on the decoder's step pool ([`cpu_pool`]), the same threads as the
//! int8 matmuls.

use candle_core::cpu::kernels::VecOps;

use super::config::LlamaConfig;
use crate::engine::decoder::cpu_pool;
use crate::engine::EngineError;

/// Where one sequence's tokens are in a forward pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    /// First row of the pass's token matrix.
    pub row: usize,
    /// Tokens this pass adds.
    pub tokens: usize,
    /// Tokens cached before this pass (the position of the first new one).
    pub start: usize,
}

/// Attention of every sequence's new tokens (rows of `q`, `rows × n_head·head_dim`, after RoPE)
/// against its cache `(keys, values)`, each `len × kv_dim` token-major and already holding the
/// new tokens: softmax(q·kᵀ / √d) · v per query head, each key/value head shared by
/// `n_head / n_kv_head` query heads; token `i` of a span sees positions `0..=start + i`.
/// Returns `rows × n_head·head_dim`.
pub(crate) fn attention(
    cfg: &LlamaConfig,
    q: &[f32],
    spans: &[Span],
    caches: &[(&[f32], &[f32])],
) -> Result<Vec<f32>, EngineError> {
    let q_dim = cfg.n_head * cfg.head_dim;
    if spans.len() != caches.len() {
        return Err(EngineError::Unsupported(format!(
            "attention: {} spans for {} caches",
            spans.len(),
            caches.len()
        )));
    }
    let mut out = vec![0f32; q.len()];
    cpu_pool::fill_chunks(
        &mut out,
        spans.iter().map(|s| s.tokens * q_dim),
        |i, out| {
            let span = spans[i];
            let (keys, values) = caches[i];
            let Some(rows) = q.get(span.row * q_dim..(span.row + span.tokens) * q_dim) else {
                return Err(EngineError::Unsupported(
                    "attention: a span lies outside the query rows".into(),
                ));
            };
            sequence_attention(cfg, rows, span, keys, values, out)
        },
    )?;
    Ok(out)
}

/// [`attention`] for one sequence: `q` holds its `span.tokens` rows, `out` receives them.
fn sequence_attention(
    cfg: &LlamaConfig,
    q: &[f32],
    span: Span,
    keys: &[f32],
    values: &[f32],
    out: &mut [f32],
) -> Result<(), EngineError> {
    let (t, d, heads, kv_dim) = (span.tokens, cfg.head_dim, cfg.n_head, cfg.kv_dim());
    let len = span.start + t;
    let group = heads / cfg.n_kv_head;
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    let cache = Cache {
        keys: Strided {
            data: keys,
            row: 1,
            col: kv_dim,
        },
        values: Strided {
            data: values,
            row: kv_dim,
            col: 1,
        },
        len,
    };
    // Rows of one matmul: the query heads of a key/value head (decode), or the tokens (prompt).
    let mut scores = vec![0f32; if t == 1 { group } else { t } * len];
    if t == 1 {
        // One new token: the query heads sharing a key/value head are the rows of one matmul
        // (as candle's `(1, n_kv, group, d) × (1, n_kv, d, len)`).
        for kv in 0..cfg.n_kv_head {
            let rows = Strided {
                data: &q[kv * group * d..],
                row: d,
                col: 1,
            };
            let out = &mut out[kv * group * d..];
            head_attention(
                rows,
                group,
                &cache,
                kv * d,
                d,
                scale,
                None,
                &mut scores,
                out,
                d,
            )?;
        }
    } else {
        // A prompt chunk: one matmul per query head over the chunk's tokens (as candle's
        // `(1, n_head, t, d) × (1, n_head, d, len)` after repeating the key/value heads).
        let row_stride = heads * d;
        for head in 0..heads {
            let rows = Strided {
                data: &q[head * d..],
                row: row_stride,
                col: 1,
            };
            let off = (head / group) * d;
            let causal = Some(span.start);
            let out = &mut out[head * d..];
            let scores = &mut scores;
            head_attention(
                rows, t, &cache, off, d, scale, causal, scores, out, row_stride,
            )?;
        }
    }
    Ok(())
}

/// One sequence's cache as matmul operands: `keys` as `Kᵀ` (`head_dim × len`), `values` as `V`
/// (`len × kv_dim`), both before the offset of a key/value head.
struct Cache<'a> {
    keys: Strided<'a>,
    values: Strided<'a>,
    len: usize,
}

/// `softmax(q·kᵀ · scale [masked]) · v` for `rows` query rows against the key/value head at
/// offset `off` of `cache`, written to `out` (rows `out_row` apart); `scores` (`rows × len`) is
/// scratch.
#[allow(clippy::too_many_arguments)] // the shapes and strides of one matmul pair
fn head_attention(
    q: Strided<'_>,
    rows: usize,
    cache: &Cache<'_>,
    off: usize,
    d: usize,
    scale: f32,
    causal_from: Option<usize>,
    scores: &mut [f32],
    out: &mut [f32],
    out_row: usize,
) -> Result<(), EngineError> {
    let len = cache.len;
    matmul(scores, len, q, cache.keys.shifted(off)?, rows, len, d)?;
    scale_and_softmax(scores, len, scale, causal_from);
    let att = Strided {
        data: scores,
        row: len,
        col: 1,
    };
    matmul(out, out_row, att, cache.values.shifted(off)?, rows, d, len)
}

/// Scales each `len`-wide row of `scores` by `scale`, masks (with `Some(start)`, row `i` sees
/// columns `0..=start + i`) and softmaxes it, with candle's affine and `softmax_last_dim`
/// arithmetic: `x * scale + 0`, max and sum by its `VecOps` reductions, `exp(x - max) / sum`.
fn scale_and_softmax(scores: &mut [f32], len: usize, scale: f32, causal_from: Option<usize>) {
    for (i, row) in scores.chunks_exact_mut(len).enumerate() {
        for x in row.iter_mut() {
            *x = *x * scale + 0.0;
        }
        if let Some(start) = causal_from {
            for x in row.iter_mut().skip(start + i + 1) {
                *x = f32::NEG_INFINITY;
            }
        }
        let mut max = f32::NEG_INFINITY;
        // SAFETY: `row` holds `len` > 0 floats and `max` is a valid f32.
        unsafe { <f32 as VecOps>::vec_reduce_max(row.as_ptr(), &mut max, len) };
        for x in row.iter_mut() {
            *x = (*x - max).exp();
        }
        let mut sum = 0f32;
        // SAFETY: as above.
        unsafe { <f32 as VecOps>::vec_reduce_sum(row.as_ptr(), &mut sum, len) };
        for x in row.iter_mut() {
            *x /= sum;
        }
    }
}

/// A matrix operand inside a slice: element `(r, c)` at `r * row + c * col`.
#[derive(Clone, Copy)]
struct Strided<'a> {
    data: &'a [f32],
    row: usize,
    col: usize,
}

impl<'a> Strided<'a> {
    /// The same strides starting `off` elements later.
    fn shifted(self, off: usize) -> Result<Self, EngineError> {
        let data = self.data.get(off..).ok_or_else(|| {
            EngineError::Unsupported("attention: operand offset past its data".into())
        })?;
        Ok(Self { data, ..self })
    }

    /// Whether an `rows × cols` matrix fits in the slice.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.row + (cols - 1) * self.col < self.data.len()
    }
}

/// `dst (m × n, rows `dst_row` apart) = lhs (m × k) · rhs (k × n)` through the `gemm` routine
/// candle's CPU matmul uses, on one thread (the caller parallelizes over sequences).
fn matmul(
    dst: &mut [f32],
    dst_row: usize,
    lhs: Strided<'_>,
    rhs: Strided<'_>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<(), EngineError> {
    let dst_fits = m == 0 || n == 0 || (m - 1) * dst_row + n <= dst.len();
    if !dst_fits || !lhs.holds(m, k) || !rhs.holds(k, n) {
        return Err(EngineError::Unsupported(format!(
            "attention: a {m}×{k} · {k}×{n} matmul does not fit its buffers"
        )));
    }
    // SAFETY: every index the routine touches, `(r, c) ↦ r * row + c * col` for r < rows and
    // c < cols of each operand, lies inside its slice (checked above); `dst` is exclusively
    // borrowed and does not overlap the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row as isize,
            false,
            lhs.data.as_ptr(),
            lhs.col as isize,
            lhs.row as isize,
            rhs.data.as_ptr(),
            rhs.col as isize,
            rhs.row as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use rayon::prelude::*;

    // The candle-ops attention this module replaced, kept as the oracle it must equal bit for
    // bit (it ran candle's matmul and softmax on the shapes candle-transformers' llama uses).
    fn candle_attention(
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
                candle_sequence_attention(cfg, rows, *span, keys, values, device)
            })
            .collect();
        let mut out = Vec::with_capacity(q.len());
        for part in parts {
            out.extend(part?);
        }
        Ok(out)
    }

    /// [`attention`] for one sequence: `q` holds its `span.tokens` rows.
    fn candle_sequence_attention(
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

    use super::super::config::tests_support::tiny_config as cfg;

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
        let out = attention(&c, &q, &[span], &[(&k, &v)]).unwrap();
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
        let out = attention(&c, &q, &[span], &[(&k, &v)]).unwrap();
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
        )
        .unwrap();
        assert_eq!(&pair[8..], &alone[..]);
    }

    fn smollm2_shapes() -> LlamaConfig {
        LlamaConfig {
            n_layer: 1,
            d_model: 576,
            n_head: 9,
            n_kv_head: 3,
            head_dim: 64,
            ffn_dim: 1536,
            rope_base: 100_000.0,
            rope_dim: 64,
            rms_eps: 1e-5,
            context_len: 8192,
            vocab_size: 10,
        }
    }

    fn noise(len: usize, seed: u32) -> Vec<f32> {
        let mut s = Ord::max(seed.wrapping_mul(2_654_435_761), 1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 20_001) as f32 / 5_000.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn equals_candles_ops_bit_for_bit_on_smollm2_shapes() {
        // Cache lengths on both sides of gemm's small-matrix kernels (m·n ≤ 256) and of its
        // depth blocking; decode tokens and prompt chunks (first and later chunks) in one pass.
        let c = smollm2_shapes();
        let q_dim = c.n_head * c.head_dim;
        let cases: [(usize, usize); 10] = [
            (0, 1),
            (1, 1),
            (84, 1),
            (85, 1),
            (300, 1),
            (700, 1),
            (0, 7),
            (0, 40),
            (37, 9),
            (260, 33),
        ];
        let mut spans = Vec::new();
        let mut caches = Vec::new();
        let mut row = 0;
        for (i, &(start, tokens)) in cases.iter().enumerate() {
            spans.push(Span { row, tokens, start });
            let len = start + tokens;
            caches.push((
                noise(len * c.kv_dim(), 3 * i as u32 + 1),
                noise(len * c.kv_dim(), 3 * i as u32 + 2),
            ));
            row += tokens;
        }
        let q = noise(row * q_dim, 99);
        let refs: Vec<(&[f32], &[f32])> = caches
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        let ours = attention(&c, &q, &spans, &refs).unwrap();
        let theirs = candle_attention(&c, &q, &spans, &refs, &Device::Cpu).unwrap();
        assert_eq!(ours.len(), theirs.len());
        let differing = ours
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(differing, 0, "{differing} of {} outputs differ", ours.len());
    }

    #[test]
    fn a_span_outside_the_queries_is_an_error_not_a_panic() {
        let c = cfg();
        let k = vec![0.5; 4];
        let q = vec![1.0; 8];
        let span = Span {
            row: 3,
            tokens: 1,
            start: 0,
        };
        assert!(attention(&c, &q, &[span], &[(&k, &k)]).is_err());
        // A cache shorter than the span claims.
        let span = Span {
            row: 0,
            tokens: 1,
            start: 5,
        };
        assert!(attention(&c, &q, &[span], &[(&k, &k)]).is_err());
    }
}

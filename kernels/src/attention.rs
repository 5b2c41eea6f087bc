//! Self-attention of a packed batch in f32, straight from the fused QKV projection: the tokens of
//! every sequence one after another (no padding), each sequence attending only to itself.
//!
//! Why our own: through tensor ops, every sequence and head costs a split, two transposes, two
//! copies, two small matmuls and a softmax, each allocating; for the short sequences of an
//! embedding batch that overhead outweighs the arithmetic. Here one unit of work is one
//! (sequence, head): its keys are transposed once into a scratch buffer so that the score and
//! context loops run along contiguous memory and vectorize, and the exponential is a
//! branch-free polynomial ([`fast_exp`]).

use rayon::prelude::*;

use crate::cpu;

/// Multiply-adds below which a batch's attention runs on one thread (about 50 µs of work).
const PARALLEL_WORK: usize = 1 << 20;

/// `qkv`: N rows of `3H` (Q, K and V of each token side by side, heads `head_dim` apart inside
/// each); `spans`: each sequence's (first row, length). Writes the context, N rows of `H`
/// (heads side by side), into `out`. Split over rayon's pool when `threads > 1`.
pub fn attend_packed(
    qkv: &[f32],
    spans: &[(usize, usize)],
    heads: usize,
    head_dim: usize,
    threads: usize,
    out: &mut [f32],
) {
    let wide = cpu::features().avx512();
    attend_packed_on(qkv, spans, heads, head_dim, threads, out, wide)
}

/// [`attend_packed`] with the AVX-512 build (`wide`, which the CPU must have) or the portable one.
fn attend_packed_on(
    qkv: &[f32],
    spans: &[(usize, usize)],
    heads: usize,
    head_dim: usize,
    threads: usize,
    out: &mut [f32],
    wide: bool,
) {
    let h = heads * head_dim;
    let n = qkv.len() / (3 * h).max(1);
    assert_eq!(qkv.len(), n * 3 * h, "qkv must be N × 3H");
    assert_eq!(out.len(), n * h, "out must be N × H");
    for &(start, len) in spans {
        assert!(start + len <= n, "span ({start}, {len}) beyond {n} rows");
    }
    let units = spans.len() * heads;
    let ptr = OutPtr(out.as_mut_ptr());
    let run = |u: usize| {
        let (start, len) = spans[u / heads];
        let head = u % heads;
        // SAFETY: each unit writes the rows of its own span and the columns of its own head;
        // the AVX-512 build runs only where the CPU has it.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if wide {
                return attend_one_avx512(qkv, h, start, len, head, head_dim, ptr);
            }
            attend_one::<false>(qkv, h, start, len, head, head_dim, ptr)
        }
    };
    // Waking a pool thread costs more than a few heads of a short batch: small batches stay on
    // the calling thread.
    let work: usize = spans.iter().map(|&(_, len)| len * len).sum::<usize>() * h;
    if threads > 1 && units > 1 && work >= PARALLEL_WORK {
        (0..units).into_par_iter().for_each(run);
    } else {
        (0..units).for_each(run);
    }
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: units write disjoint (rows, head columns) of `out` (see `attend_packed`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// [`attend_one`] compiled for AVX-512, so that its loops vectorize 16 wide and the exponential's
/// rounding is one instruction (the arithmetic, and so the result, is the same).
///
/// # Safety
/// As [`attend_one`]; the CPU must have AVX-512F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn attend_one_avx512(
    qkv: &[f32],
    h: usize,
    start: usize,
    len: usize,
    head: usize,
    d: usize,
    out: OutPtr,
) {
    attend_one::<true>(qkv, h, start, len, head, d, out)
}

/// One sequence, one head: `softmax(q kᵀ / √d) v` for each of its `len` queries.
///
/// # Safety
/// `out` points at the N × H output; no other unit writes these rows of this head.
#[inline(always)]
unsafe fn attend_one<const WIDE: bool>(
    qkv: &[f32],
    h: usize,
    start: usize,
    len: usize,
    head: usize,
    d: usize,
    out: OutPtr,
) {
    let stride = 3 * h;
    let (qo, ko, vo) = (head * d, h + head * d, 2 * h + head * d);
    let scale = 1.0 / (d as f32).sqrt();
    // Keys transposed, the key axis padded with zeros to whole blocks of LANES: kt[c][j] = k_j[c].
    // A block of LANES scores then accumulates in registers over c (not in memory, where each
    // step would wait on the previous store).
    let lp = len.div_ceil(LANES) * LANES;
    let mut kt = vec![0f32; d * lp];
    for j in 0..len {
        let row = &qkv[(start + j) * stride + ko..][..d];
        for (c, &v) in row.iter().enumerate() {
            kt[c * lp + j] = v;
        }
    }
    let mut scores = vec![0f32; lp];
    for i in 0..len {
        let q = &qkv[(start + i) * stride + qo..][..d];
        query_scores::<WIDE>(q, &kt, lp, &mut scores);
        let real = &mut scores[..len];
        let max = lanes_fold(real, f32::NEG_INFINITY, f32::max);
        for s in real.iter_mut() {
            *s = fast_exp((*s - max) * scale);
        }
        let inv = 1.0 / lanes_fold(real, 0.0, |a, b| a + b);
        let dst = out.0.add((start + i) * h + head * d);
        // The context in blocks of LANES head dimensions, each accumulated in registers over
        // the keys; a last partial block lane by lane.
        let mut c0 = 0;
        while c0 < d {
            let width = LANES.min(d - c0);
            let mut acc = [0f32; LANES];
            if width == LANES {
                context_block::<WIDE>(real, &qkv[start * stride + vo + c0..], stride, &mut acc);
            } else {
                for (j, &p) in real.iter().enumerate() {
                    let v = &qkv[(start + j) * stride + vo + c0..][..width];
                    for (a, &vv) in acc.iter_mut().zip(v) {
                        *a += p * vv;
                    }
                }
            }
            for (c, &a) in acc[..width].iter().enumerate() {
                *dst.add(c0 + c) = a * inv;
            }
            c0 += width;
        }
    }
}

/// Scores and context values computed together (one AVX-512 register of f32).
const LANES: usize = 16;

/// `scores[j] = Σ_c q[c] · kt[c][j]` (c in order, multiply then add) for all `lp` keys, in
/// blocks of [`LANES`] keys, four blocks at a time so that four accumulator chains overlap.
/// `WIDE`: AVX-512 registers, only where inlined into [`attend_one_avx512`].
#[inline(always)]
unsafe fn query_scores<const WIDE: bool>(q: &[f32], kt: &[f32], lp: usize, scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if WIDE {
        // SAFETY: WIDE code runs inlined into `attend_one_avx512`, so with AVX-512F; `kt`
        // holds `q.len()` rows of `lp`, `scores` holds `lp`.
        return x86::query_scores(q, kt, lp, scores);
    }
    for (jb, block) in scores.chunks_exact_mut(LANES).enumerate() {
        let mut acc = [0f32; LANES];
        for (c, &qc) in q.iter().enumerate() {
            let keys = &kt[c * lp + jb * LANES..][..LANES];
            for (a, &k) in acc.iter_mut().zip(keys) {
                *a += qc * k;
            }
        }
        block.copy_from_slice(&acc);
    }
}

/// `acc[c] = Σ_j p[j] · v_j[c]` (j in order, multiply then add) for one block of [`LANES`] head
/// dimensions; `v` starts at the block in key 0's row, rows `stride` apart.
#[inline(always)]
unsafe fn context_block<const WIDE: bool>(
    p: &[f32],
    v: &[f32],
    stride: usize,
    acc: &mut [f32; LANES],
) {
    #[cfg(target_arch = "x86_64")]
    if WIDE {
        // SAFETY: as in `query_scores`; `v` holds `p.len()` rows of `stride` from its start.
        return x86::context_block(p, v, stride, acc);
    }
    for (j, &pj) in p.iter().enumerate() {
        for (a, &vv) in acc.iter_mut().zip(&v[j * stride..][..LANES]) {
            *a += pj * vv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::LANES;
    use std::arch::x86_64::*;

    /// [`super::query_scores`] with AVX-512 registers (same operations, same order per lane).
    #[inline(always)]
    pub unsafe fn query_scores(q: &[f32], kt: &[f32], lp: usize, scores: &mut [f32]) {
        let blocks = lp / LANES;
        let mut jb = 0;
        while jb < blocks {
            let group = (blocks - jb).min(4);
            let mut acc = [_mm512_setzero_ps(); 4];
            for (c, &qc) in q.iter().enumerate() {
                let qv = _mm512_set1_ps(qc);
                let row = kt.as_ptr().add(c * lp + jb * LANES);
                for (g, a) in acc.iter_mut().enumerate().take(group) {
                    *a = _mm512_add_ps(*a, _mm512_mul_ps(qv, _mm512_loadu_ps(row.add(g * LANES))));
                }
            }
            for (g, a) in acc.iter().enumerate().take(group) {
                _mm512_storeu_ps(scores.as_mut_ptr().add((jb + g) * LANES), *a);
            }
            jb += group;
        }
    }

    /// [`super::context_block`] with AVX-512 registers (same operations, same order per lane).
    #[inline(always)]
    pub unsafe fn context_block(p: &[f32], v: &[f32], stride: usize, acc: &mut [f32; LANES]) {
        let mut a = _mm512_setzero_ps();
        for (j, &pj) in p.iter().enumerate() {
            let vv = _mm512_loadu_ps(v.as_ptr().add(j * stride));
            a = _mm512_add_ps(a, _mm512_mul_ps(_mm512_set1_ps(pj), vv));
        }
        _mm512_storeu_ps(acc.as_mut_ptr(), a);
    }
}

/// Folds `v` with `f` in 16 interleaved lanes, then the lanes in order: an order that
/// vectorizes (a strictly sequential float fold does not), the same on every CPU.
#[inline(always)]
fn lanes_fold(v: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; 16];
    let mut chunks = v.chunks_exact(16);
    for chunk in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l = f(*l, x);
        }
    }
    for (l, &x) in lanes.iter_mut().zip(chunks.remainder()) {
        *l = f(*l, x);
    }
    lanes.into_iter().fold(init, f)
}

/// `e^x` for f32 in plain arithmetic (so it vectorizes): `x = n ln2 + r` with |r| ≤ ln2/2, a
/// degree-6 polynomial for `e^r` (Cephes' `expf` coefficients) and `2^n` from the exponent bits.
/// Relative error below 2e-7 on [-87, 88] (tested against libm); below -87 it returns 0.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let underflow = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E).round_ties_even();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let y = e * scale;
    if underflow {
        0.0
    } else {
        y
    }
}

/// The definition [`attend_packed`] is tested against: the same attention in f64 with libm's
/// exponential, one query at a time. The kernel agrees to f32 rounding: within
/// `4e-6 · s² · (1 + |y|)` for inputs of magnitude up to `s` (tested).
pub fn attend_packed_reference(
    qkv: &[f32],
    spans: &[(usize, usize)],
    heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    let h = heads * head_dim;
    let n = qkv.len() / (3 * h).max(1);
    let mut out = vec![0f32; n * h];
    let at = |row: usize, col: usize| qkv[row * 3 * h + col] as f64;
    for &(start, len) in spans {
        for head in 0..heads {
            for i in 0..len {
                let scores: Vec<f64> = (0..len)
                    .map(|j| {
                        (0..head_dim)
                            .map(|c| {
                                at(start + i, head * head_dim + c)
                                    * at(start + j, h + head * head_dim + c)
                            })
                            .sum::<f64>()
                            / (head_dim as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..head_dim {
                    let v: f64 = (0..len)
                        .map(|j| e[j] * at(start + j, 2 * h + head * head_dim + c))
                        .sum();
                    out[(start + i) * h + head * head_dim + c] = (v / sum) as f32;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::values;
    use proptest::prelude::*;

    #[test]
    fn fast_exp_matches_libm() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let want = (x as f64).exp();
            worst = worst.max(((fast_exp(x) as f64 - want) / want).abs());
        }
        assert!(worst < 2e-7, "max relative error {worst}");
        assert_eq!(fast_exp(-100.0), 0.0);
        assert_eq!(fast_exp(0.0), 1.0);
    }

    fn check(spans: &[(usize, usize)], heads: usize, d: usize, spread: f32, seed: u32) {
        let n = spans.iter().map(|s| s.0 + s.1).max().unwrap_or(0);
        let h = heads * d;
        let qkv: Vec<f32> = values(n * 3 * h, seed).iter().map(|v| v * spread).collect();
        let want = attend_packed_reference(&qkv, spans, heads, d);
        let mut portable = vec![f32::NAN; n * h];
        attend_packed_on(&qkv, spans, heads, d, 1, &mut portable, false);
        for threads in [1, 2] {
            let mut got = vec![f32::NAN; n * h];
            attend_packed(&qkv, spans, heads, d, threads, &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&got),
                bits(&portable),
                "the SIMD build differs from the portable one"
            );
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // f32 scores of magnitude ~spread² · √d carry absolute errors of that times
                // 2⁻²⁴, which the exponential turns into relative errors of the weights.
                let tolerance = 4e-6 * spread.max(1.0).powi(2) * (1.0 + w.abs());
                assert!(
                    (g - w).abs() <= tolerance,
                    "element {i}: {g} vs {w} (spans {spans:?})"
                );
            }
        }
    }

    #[test]
    fn equals_the_reference_on_an_encoder_batch() {
        check(&[(0, 41), (41, 7), (48, 76), (124, 3)], 12, 32, 3.0, 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn equals_the_reference(
            lens in proptest::collection::vec(1usize..=40, 1..=4),
            heads in 1usize..=3,
            d in 1usize..=20,
            spread in 0.1f32..8.0,
            seed in 1u32..1000,
        ) {
            let mut spans = Vec::new();
            let mut at = 0;
            for len in lens {
                spans.push((at, len));
                at += len;
            }
            check(&spans, heads, d, spread, seed);
        }
    }
}

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
    // Queries go QUERIES at a time: their score and context chains are independent, so they
    // overlap in the core instead of each waiting on its own previous add.
    let mut scores = vec![0f32; QUERIES * lp];
    let mut inv = [0f32; QUERIES];
    let mut i = 0;
    while i < len {
        let g = (len - i).min(QUERIES);
        let qs: [&[f32]; QUERIES] =
            std::array::from_fn(|r| &qkv[(start + i + r.min(g - 1)) * stride + qo..][..d]);
        query_scores::<WIDE>(&qs[..g], &kt, lp, &mut scores);
        for (r, row) in scores.chunks_exact_mut(lp).take(g).enumerate() {
            let real = &mut row[..len];
            let max = lanes_fold(real, f32::NEG_INFINITY, f32::max);
            exp_scaled::<WIDE>(real, max, scale);
            inv[r] = 1.0 / lanes_fold(real, 0.0, |a, b| a + b);
        }
        // The context in blocks of LANES head dimensions, each accumulated in registers over
        // the keys; a last partial block lane by lane.
        let mut c0 = 0;
        while c0 < d {
            let width = LANES.min(d - c0);
            let mut acc = [[0f32; LANES]; QUERIES];
            if width == LANES {
                let v = &qkv[start * stride + vo + c0..];
                context_block::<WIDE>(&scores, lp, len, g, v, stride, &mut acc);
            } else {
                for (r, acc) in acc.iter_mut().enumerate().take(g) {
                    for (j, &p) in scores[r * lp..][..len].iter().enumerate() {
                        let v = &qkv[(start + j) * stride + vo + c0..][..width];
                        for (a, &vv) in acc.iter_mut().zip(v) {
                            *a += p * vv;
                        }
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate().take(g) {
                let dst = out.0.add((start + i + r) * h + head * d);
                for (c, &a) in acc[..width].iter().enumerate() {
                    *dst.add(c0 + c) = a * inv[r];
                }
            }
            c0 += width;
        }
        i += g;
    }
}

/// `s ← e^((s − max) · scale)` for every score, with [`fast_exp`].
#[inline(always)]
unsafe fn exp_scaled<const WIDE: bool>(scores: &mut [f32], max: f32, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if WIDE {
        // SAFETY: as in `query_scores`.
        return x86::exp_scaled(scores, max, scale);
    }
    for s in scores.iter_mut() {
        *s = fast_exp((*s - max) * scale);
    }
}

/// Queries of one (sequence, head) computed together.
const QUERIES: usize = 4;

/// Scores and context values computed together (one AVX-512 register of f32).
const LANES: usize = 16;

/// For each query `r` of `qs`: `scores[r·lp + j] = Σ_c q_r[c] · kt[c][j]` (c in order,
/// multiply then add) for all `lp` keys, in blocks of [`LANES`] keys. `WIDE`: AVX-512 registers,
/// only where inlined into [`attend_one_avx512`].
#[inline(always)]
unsafe fn query_scores<const WIDE: bool>(qs: &[&[f32]], kt: &[f32], lp: usize, scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if WIDE {
        // SAFETY: WIDE code runs inlined into `attend_one_avx512`, so with AVX-512F; `kt`
        // holds `q.len()` rows of `lp`, `scores` holds `qs.len()` rows of `lp`.
        return x86::query_scores(qs, kt, lp, scores);
    }
    for (q, row) in qs.iter().zip(scores.chunks_exact_mut(lp)) {
        for (jb, block) in row.chunks_exact_mut(LANES).enumerate() {
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
}

/// For each of the first `g` rows `p_r` of `scores` (rows `lp` apart, `len` keys):
/// `acc[r][c] = Σ_j p_r[j] · v_j[c]` (j in order, multiply then add) for one block of [`LANES`]
/// head dimensions; `v` starts at the block in key 0's row, rows `stride` apart.
#[inline(always)]
unsafe fn context_block<const WIDE: bool>(
    scores: &[f32],
    lp: usize,
    len: usize,
    g: usize,
    v: &[f32],
    stride: usize,
    acc: &mut [[f32; LANES]; QUERIES],
) {
    #[cfg(target_arch = "x86_64")]
    if WIDE {
        // SAFETY: as in `query_scores`; `v` holds `len` rows of `stride` from its start.
        return x86::context_block(scores, lp, len, g, v, stride, acc);
    }
    for (r, acc) in acc.iter_mut().enumerate().take(g) {
        for (j, &pj) in scores[r * lp..][..len].iter().enumerate() {
            for (a, &vv) in acc.iter_mut().zip(&v[j * stride..][..LANES]) {
                *a += pj * vv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{LANES, QUERIES};
    use std::arch::x86_64::*;

    /// [`super::query_scores`] with AVX-512 registers (same operations, same order per lane):
    /// two key blocks of every query at once, up to eight independent chains.
    #[inline(always)]
    pub unsafe fn query_scores(qs: &[&[f32]], kt: &[f32], lp: usize, scores: &mut [f32]) {
        let g = qs.len().min(QUERIES);
        let blocks = lp / LANES;
        let mut jb = 0;
        while jb < blocks {
            let pair = (blocks - jb).min(2);
            let mut acc = [[_mm512_setzero_ps(); 2]; QUERIES];
            for c in 0..qs[0].len() {
                let row = kt.as_ptr().add(c * lp + jb * LANES);
                let k0 = _mm512_loadu_ps(row);
                let k1 = if pair == 2 {
                    _mm512_loadu_ps(row.add(LANES))
                } else {
                    k0
                };
                for (q, a) in qs.iter().zip(acc.iter_mut()).take(g) {
                    let qv = _mm512_set1_ps(*q.get_unchecked(c));
                    a[0] = _mm512_add_ps(a[0], _mm512_mul_ps(qv, k0));
                    a[1] = _mm512_add_ps(a[1], _mm512_mul_ps(qv, k1));
                }
            }
            for (r, a) in acc.iter().enumerate().take(g) {
                let dst = scores.as_mut_ptr().add(r * lp + jb * LANES);
                _mm512_storeu_ps(dst, a[0]);
                if pair == 2 {
                    _mm512_storeu_ps(dst.add(LANES), a[1]);
                }
            }
            jb += pair;
        }
    }

    /// [`super::exp_scaled`] 16 scores at a time: [`super::fast_exp`]'s operations, in its order,
    /// on vectors (same results bit for bit).
    #[inline(always)]
    pub unsafe fn exp_scaled(scores: &mut [f32], max: f32, scale: f32) {
        let (maxv, scalev) = (_mm512_set1_ps(max), _mm512_set1_ps(scale));
        let mut j = 0;
        while j < scores.len() {
            let n = (scores.len() - j).min(LANES);
            let mask: __mmask16 = if n == LANES { !0 } else { (1u16 << n) - 1 };
            let p = scores.as_mut_ptr().add(j);
            let x = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, p), maxv), scalev);
            _mm512_mask_storeu_ps(p, mask, exp16(x));
            j += n;
        }
    }

    /// [`super::fast_exp`] on 16 lanes.
    #[inline(always)]
    unsafe fn exp16(x: __m512) -> __m512 {
        use super::exp_constants as k;
        let underflow = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-87.0));
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-87.0)),
            _mm512_set1_ps(88.0),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(k::LOG2E)),
        );
        let r = _mm512_sub_ps(
            _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(k::LN2_HI))),
            _mm512_mul_ps(n, _mm512_set1_ps(k::LN2_LO)),
        );
        let mut p = _mm512_set1_ps(k::P[0]);
        for &c in &k::P[1..] {
            p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
        }
        let e = _mm512_add_ps(
            _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r),
            _mm512_set1_ps(1.0),
        );
        let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_cvtps_epi32(n),
            _mm512_set1_epi32(127),
        ));
        let y = _mm512_mul_ps(e, _mm512_castsi512_ps(bits));
        _mm512_mask_mov_ps(y, underflow, _mm512_setzero_ps())
    }

    /// [`super::context_block`] with AVX-512 registers (same operations, same order per lane).
    #[inline(always)]
    pub unsafe fn context_block(
        scores: &[f32],
        lp: usize,
        len: usize,
        g: usize,
        v: &[f32],
        stride: usize,
        acc: &mut [[f32; LANES]; QUERIES],
    ) {
        let g = g.min(QUERIES);
        let mut a = [_mm512_setzero_ps(); QUERIES];
        for j in 0..len {
            let vv = _mm512_loadu_ps(v.as_ptr().add(j * stride));
            for (r, a) in a.iter_mut().enumerate().take(g) {
                let p = _mm512_set1_ps(*scores.get_unchecked(r * lp + j));
                *a = _mm512_add_ps(*a, _mm512_mul_ps(p, vv));
            }
        }
        for (r, a) in a.iter().enumerate().take(g) {
            _mm512_storeu_ps(acc[r].as_mut_ptr(), *a);
        }
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
    use exp_constants::*;
    let underflow = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E).round_ties_even();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = P[0];
    for &c in &P[1..] {
        p = p * r + c;
    }
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let y = e * scale;
    if underflow {
        0.0
    } else {
        y
    }
}

/// [`fast_exp`]'s constants, shared with its AVX-512 form.
mod exp_constants {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    /// ln 2 in two parts, so that `n · ln 2` is subtracted without losing `r`'s low bits.
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    /// Cephes' `expf` polynomial for `(e^r − 1 − r) / r²`, highest degree first.
    pub const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5e-1,
    ];
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

    /// The AVX-512 exponential compiled as the kernel compiles it.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn exp_avx512(v: &mut [f32]) {
        x86::exp_scaled(v, 0.0, 1.0)
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_exponential_equals_the_scalar_one() {
        if !cpu::features().avx512() {
            return;
        }
        // Every 1/1000 from below the underflow to above the clamp, in an odd-length slice so
        // that the masked tail is covered too.
        let xs: Vec<f32> = (-90_000..=90_001).map(|i| i as f32 / 1000.0).collect();
        let mut got = xs.clone();
        // SAFETY: the CPU has AVX-512 (checked above).
        unsafe { exp_avx512(&mut got) };
        for (x, g) in xs.iter().zip(&got) {
            assert_eq!(g.to_bits(), fast_exp(*x).to_bits(), "e^{x}");
        }
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

//! x86-64 SIMD kernels for [`crate::gemm`]. Each computes exact i32 dot products of int8 rows
//! against packed weight blocks; see the layout in `gemm/mod.rs`.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::layout::{BLOCK_N, TILE_M};

/// AVX-512 VNNI: activations as u8 (q + 128) against s8 weights with `vpdpbusd`, then
/// `- 128 × Σw` per channel. `values` holds `rows` (a multiple of [`TILE_M`]) rows of `kp` bytes.
///
/// Tiles of up to [`VNNI_ROWS`] rows × two blocks (32 channels): 24 independent accumulator
/// chains, enough to keep both `vpdpbusd` ports busy through its latency (8 chains, as a 4-row
/// tile has, leave a fifth of its throughput unused), and each weight register loaded once per
/// 12 rows.
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX-512 VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn dot_rows_vnni(
    values: &[i8],
    rows: usize,
    kp: usize,
    k4: usize,
    blocks: usize,
    weights: &[i8],
    col_sums: &[i32],
    out: &mut [i32],
) {
    let np = blocks * BLOCK_N;
    // u8 view with the +128 offset, one row after another.
    let shifted: Vec<u8> = values.iter().map(|&v| (v as u8) ^ 0x80).collect();
    let mut nb = 0;
    while nb < blocks {
        let pair = nb + 1 < blocks;
        let w0 = weights.as_ptr().add(nb * k4 * 64);
        // A lone last block runs with itself as its partner; only its own half is stored.
        let w1 = if pair {
            weights.as_ptr().add((nb + 1) * k4 * 64)
        } else {
            w0
        };
        // 128 × Σw per channel.
        let corr0 = _mm512_slli_epi32(
            _mm512_loadu_si512(col_sums.as_ptr().add(nb * BLOCK_N) as *const _),
            7,
        );
        let corr1 = if pair {
            _mm512_slli_epi32(
                _mm512_loadu_si512(col_sums.as_ptr().add((nb + 1) * BLOCK_N) as *const _),
                7,
            )
        } else {
            corr0
        };
        let mut r = 0;
        while r < rows {
            let take = VNNI_ROWS.min(rows - r);
            let tile = VnniTile {
                a: shifted.as_ptr().add(r * kp),
                kp,
                k4,
                w0,
                w1,
                corr0,
                corr1,
                out: out.as_mut_ptr().add(r * np + nb * BLOCK_N),
                np,
            };
            match (take, pair) {
                (12, true) => tile.run::<12, true>(),
                (8, true) => tile.run::<8, true>(),
                (_, true) => tile.run::<4, true>(),
                (12, false) => tile.run::<12, false>(),
                (8, false) => tile.run::<8, false>(),
                (_, false) => tile.run::<4, false>(),
            }
            r += take;
        }
        nb += 2;
    }
}

/// Rows per VNNI tile (a multiple of [`TILE_M`], so that padded row counts split into 12, 8
/// and 4).
const VNNI_ROWS: usize = 3 * TILE_M;

/// One VNNI tile's operands: `R` rows of u8 activations from `a` (rows `kp` apart) against
/// blocks `w0` and `w1` (`PAIR`; else `w0` only), exact i32 results to `out` (rows `np`
/// apart).
struct VnniTile {
    a: *const u8,
    kp: usize,
    k4: usize,
    w0: *const i8,
    w1: *const i8,
    corr0: __m512i,
    corr1: __m512i,
    out: *mut i32,
    np: usize,
}

impl VnniTile {
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn run<const R: usize, const PAIR: bool>(&self) {
        let mut c0 = [_mm512_setzero_si512(); R];
        let mut c1 = [_mm512_setzero_si512(); R];
        for kg in 0..self.k4 {
            let wv0 = _mm512_loadu_si512(self.w0.add(kg * 64) as *const _);
            let wv1 = _mm512_loadu_si512(self.w1.add(kg * 64) as *const _);
            for i in 0..R {
                let av = _mm512_set1_epi32(std::ptr::read_unaligned(
                    self.a.add(i * self.kp + kg * 4) as *const i32,
                ));
                c0[i] = _mm512_dpbusd_epi32(c0[i], av, wv0);
                if PAIR {
                    c1[i] = _mm512_dpbusd_epi32(c1[i], av, wv1);
                }
            }
        }
        for i in 0..R {
            let row = self.out.add(i * self.np);
            _mm512_storeu_si512(row as *mut _, _mm512_sub_epi32(c0[i], self.corr0));
            if PAIR {
                _mm512_storeu_si512(
                    row.add(BLOCK_N) as *mut _,
                    _mm512_sub_epi32(c1[i], self.corr1),
                );
            }
        }
    }
}

/// AVX2: `vpmaddubsw(|a|, sign(a)·w)` (at most 2 × 127 × 127, no saturation), then `vpmaddwd`
/// with ones to i32.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn dot_rows_avx2(
    values: &[i8],
    rows: usize,
    kp: usize,
    k4: usize,
    blocks: usize,
    weights: &[i8],
    out: &mut [i32],
) {
    let np = blocks * BLOCK_N;
    let ones = _mm256_set1_epi16(1);
    for nb in 0..blocks {
        let wblock = weights.as_ptr().add(nb * k4 * 64);
        for r in 0..rows {
            let a = values.as_ptr().add(r * kp);
            let mut lo = _mm256_setzero_si256();
            let mut hi = _mm256_setzero_si256();
            for kg in 0..k4 {
                let av = _mm256_set1_epi32(std::ptr::read_unaligned(a.add(kg * 4) as *const i32));
                let aabs = _mm256_abs_epi8(av);
                let wlo = _mm256_loadu_si256(wblock.add(kg * 64) as *const __m256i);
                let whi = _mm256_loadu_si256(wblock.add(kg * 64 + 32) as *const __m256i);
                let plo = _mm256_maddubs_epi16(aabs, _mm256_sign_epi8(wlo, av));
                let phi = _mm256_maddubs_epi16(aabs, _mm256_sign_epi8(whi, av));
                lo = _mm256_add_epi32(lo, _mm256_madd_epi16(plo, ones));
                hi = _mm256_add_epi32(hi, _mm256_madd_epi16(phi, ones));
            }
            let dst = out.as_mut_ptr().add(r * np + nb * BLOCK_N);
            _mm256_storeu_si256(dst as *mut __m256i, lo);
            _mm256_storeu_si256(dst.add(8) as *mut __m256i, hi);
        }
    }
}

/// Quantizes one row like [`crate::reference::quantize_rows_into`], bit for bit on finite input
/// (`vcvtps2dq` rounds half to even, as the scalar rounding does), with AVX-512. Returns the scale.
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512BW; `out` must hold `row.len()` bytes.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize_row_avx512(row: &[f32], out: &mut [i8]) -> f32 {
    let n = row.len();
    let chunks = n / 16;
    let mut vmax = _mm512_setzero_ps();
    for i in 0..chunks {
        let v = _mm512_loadu_ps(row.as_ptr().add(i * 16));
        vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
    }
    let mut max_abs = _mm512_reduce_max_ps(vmax);
    for &x in &row[chunks * 16..] {
        max_abs = max_abs.max(x.abs());
    }
    let scale = max_abs / 127.0;
    if scale == 0.0 {
        out[..n].fill(0);
        return 0.0;
    }
    let inv = 1.0 / scale;
    let (vinv, lo, hi) = (
        _mm512_set1_ps(inv),
        _mm512_set1_ps(-127.0),
        _mm512_set1_ps(127.0),
    );
    for i in 0..chunks {
        let v = _mm512_mul_ps(_mm512_loadu_ps(row.as_ptr().add(i * 16)), vinv);
        let v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
        let bytes = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v));
        _mm_storeu_si128(out.as_mut_ptr().add(i * 16) as *mut __m128i, bytes);
    }
    for i in chunks * 16..n {
        out[i] = crate::reference::round_to_i8((row[i] * inv).clamp(-127.0, 127.0));
    }
    scale
}

/// What turns a row's exact sums into outputs: `sum × a_scales[row] × w_scales[col] + bias[col]`
/// (or `+ 0.0`), the order and roundings of the scalar epilogue in `gemm/mod.rs`.
pub struct Rescale<'a> {
    /// One scale per activation row of the call.
    pub a_scales: &'a [f32],
    /// One scale per output channel.
    pub w_scales: &'a [f32],
    /// One bias per output channel.
    pub bias: Option<&'a [f32]>,
    /// Output channels.
    pub n: usize,
}

/// Rescales `sums` (channels `c0..c0 + sums.len()` of row `row`) into `out`, bit for bit as the
/// scalar epilogue does (`vcvtdq2ps` rounds to nearest even like `as f32`; two multiplies and
/// an add, no fused multiply-add).
///
/// # Safety
/// The CPU must support AVX-512F; `out` must have `sums.len()` values and the channels must
/// exist.
#[target_feature(enable = "avx512f")]
pub unsafe fn rescale_row(
    sums: &[i32],
    rescale: &Rescale,
    row: usize,
    c0: usize,
    out: &mut [MaybeUninit<f32>],
) {
    let len = sums.len();
    debug_assert!(out.len() == len && c0 + len <= rescale.n);
    let sa = _mm512_set1_ps(rescale.a_scales[row]);
    let sw = rescale.w_scales.as_ptr().add(c0);
    let bias = rescale.bias.map(|b| b.as_ptr().add(c0));
    let mut i = 0;
    while i < len {
        let mask: __mmask16 = if len - i >= 16 {
            0xffff
        } else {
            (1u16 << (len - i)) - 1
        };
        let s = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(mask, sums.as_ptr().add(i)));
        let v = _mm512_mul_ps(_mm512_mul_ps(s, sa), _mm512_maskz_loadu_ps(mask, sw.add(i)));
        let b = match bias {
            Some(b) => _mm512_maskz_loadu_ps(mask, b.add(i)),
            None => _mm512_setzero_ps(),
        };
        _mm512_mask_storeu_ps(
            out.as_mut_ptr().add(i) as *mut f32,
            mask,
            _mm512_add_ps(v, b),
        );
        i += 16;
    }
}

/// `y[c] = fma(x, q[c][ch] × scales[c], y[c])` for every output channel `c` (`scales.len()` of
/// them): one outlier activation `x` of input channel `ch` times the dequantized packed weights,
/// bit for bit as the scalar code in `gemm/mod.rs` (the same product, then a fused add).
///
/// # Safety
/// AVX-512F and BW; `weights` packed with `k4` groups and enough blocks for `scales.len()`
/// channels; `y` writable for `scales.len()` values.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn add_outlier(
    x: f32,
    weights: &[i8],
    k4: usize,
    ch: usize,
    scales: &[f32],
    y: *mut f32,
) {
    let n = scales.len();
    let (kg, j) = (ch / 4, ch % 4);
    let vx = _mm512_set1_ps(x);
    let mut c = 0;
    while c < n {
        let nb = c / BLOCK_N;
        let mask: __mmask16 = if n - c >= 16 {
            0xffff
        } else {
            (1u16 << (n - c)) - 1
        };
        // 16 channels × 4 k-values; byte `j` of each lane, sign-extended.
        let group = _mm512_loadu_si512(weights.as_ptr().add((nb * k4 + kg) * 64) as *const _);
        let q = match j {
            0 => _mm512_srai_epi32::<24>(_mm512_slli_epi32::<24>(group)),
            1 => _mm512_srai_epi32::<24>(_mm512_slli_epi32::<16>(group)),
            2 => _mm512_srai_epi32::<24>(_mm512_slli_epi32::<8>(group)),
            _ => _mm512_srai_epi32::<24>(group),
        };
        let w = _mm512_mul_ps(
            _mm512_cvtepi32_ps(q),
            _mm512_maskz_loadu_ps(mask, scales.as_ptr().add(c)),
        );
        let acc = _mm512_maskz_loadu_ps(mask, y.add(c));
        _mm512_mask_storeu_ps(y.add(c), mask, _mm512_fmadd_ps(vx, w, acc));
        c += 16;
    }
}

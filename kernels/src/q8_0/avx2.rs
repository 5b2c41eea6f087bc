//! The Q8_0 tile in AVX2 + FMA, with the arithmetic of candle's `vec_dot_q8_0_q8_0` (so the same
//! bits), each weight block shared by a tile of rows. x86-64 only; the dispatcher
//! calls it when [`crate::cpu::features`] says the CPU has AVX2 and FMA.

use super::blocks::{Q8Rows, Q8_0Weights, QK8_0};
use std::arch::x86_64::*;

/// candle's `hsum_float_8`: the 8 lanes summed in its order of additions.
#[target_feature(enable = "avx2,fma")]
fn hsum(x: __m256) -> f32 {
    let res = _mm256_extractf128_ps(x, 1);
    let res = _mm_add_ps(res, _mm256_castps256_ps128(x));
    let res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    let res = _mm_add_ss(res, _mm_movehdup_ps(res));
    _mm_cvtss_f32(res)
}

/// Up to 4 rows × 2 columns; each output keeps its own 8-lane accumulator.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `r0 + nr <= m`, `c0 + nc <= n`, `nr <= 4`, `nc <= 2`.
#[allow(clippy::needless_range_loop)] // (row, column) indices address both operands
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile(
    a: &Q8Rows,
    r0: usize,
    nr: usize,
    w: &Q8_0Weights,
    c0: usize,
    nc: usize,
    tile: &mut [[f32; 2]; 4],
) {
    let (k, nb) = (w.k, w.k / QK8_0);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    for b in 0..nb {
        let mut wv = [_mm256_setzero_si256(); 2];
        let mut dw = [0f32; 2];
        for j in 0..nc {
            let off = (c0 + j) * k + b * QK8_0;
            // SAFETY: 32 bytes of row c0 + j, block b, are in bounds.
            wv[j] = unsafe { _mm256_loadu_si256(w.qs.as_ptr().add(off) as *const __m256i) };
            dw[j] = w.d[(c0 + j) * nb + b];
        }
        for i in 0..nr {
            let row = r0 + i;
            // SAFETY: as above, for the activations.
            let av = unsafe {
                _mm256_loadu_si256(a.qs.as_ptr().add(row * k + b * QK8_0) as *const __m256i)
            };
            let ax = _mm256_sign_epi8(av, av);
            let da = a.d[row * nb + b];
            for j in 0..nc {
                let sw = _mm256_sign_epi8(wv[j], av);
                let dot = _mm256_maddubs_epi16(ax, sw);
                let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, dot));
                let d = _mm256_set1_ps(dw[j] * da);
                acc[i][j] = _mm256_fmadd_ps(d, q, acc[i][j]);
            }
        }
    }
    for i in 0..nr {
        for j in 0..nc {
            tile[i][j] = hsum(acc[i][j]);
        }
    }
}

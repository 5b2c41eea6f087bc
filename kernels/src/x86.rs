//! x86-64 SIMD kernels for [`crate::gemm`]. Each computes exact i32 dot products of int8 rows
//! against packed weight blocks; see the layout in `gemm.rs`.

use std::arch::x86_64::*;

use crate::gemm::{BLOCK_N, TILE_M};

/// AVX-512 VNNI: activations as u8 (q + 128) against s8 weights with `vpdpbusd`, then
/// `- 128 × Σw` per channel. `values` holds `rows` (a multiple of [`TILE_M`]) rows of `kp` bytes.
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
    for nb in 0..blocks {
        let wblock = weights.as_ptr().add(nb * k4 * 64);
        let sums = _mm512_loadu_si512(col_sums.as_ptr().add(nb * BLOCK_N) as *const _);
        let correction = _mm512_slli_epi32(sums, 7); // 128 × Σw
        let mut r = 0;
        while r < rows {
            let a = shifted.as_ptr().add(r * kp);
            let mut c0 = _mm512_setzero_si512();
            let mut c1 = _mm512_setzero_si512();
            let mut c2 = _mm512_setzero_si512();
            let mut c3 = _mm512_setzero_si512();
            for kg in 0..k4 {
                let wv = _mm512_loadu_si512(wblock.add(kg * 64) as *const _);
                let at = |row: usize| -> __m512i {
                    _mm512_set1_epi32(std::ptr::read_unaligned(
                        a.add(row * kp + kg * 4) as *const i32
                    ))
                };
                c0 = _mm512_dpbusd_epi32(c0, at(0), wv);
                c1 = _mm512_dpbusd_epi32(c1, at(1), wv);
                c2 = _mm512_dpbusd_epi32(c2, at(2), wv);
                c3 = _mm512_dpbusd_epi32(c3, at(3), wv);
            }
            for (i, c) in [c0, c1, c2, c3].into_iter().enumerate() {
                let exact = _mm512_sub_epi32(c, correction);
                _mm512_storeu_si512(
                    out.as_mut_ptr().add((r + i) * np + nb * BLOCK_N) as *mut _,
                    exact,
                );
            }
            r += TILE_M;
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

//! The AVX-512 code of the tile matmul: the activation quantizer (AVX-512F/BW, used before the
//! VNNI and the AMX kernels alike) and the VNNI kernel, which broadcasts 4 activation bytes per
//! `vpdpbusd` over a weight register of 16 columns, up to 8 rows per weight load. Both give the
//! portable code's bits. x86-64 only; the dispatcher calls them when [`crate::cpu::features`]
//! says the CPU has the instructions.

use super::pack::{Q8Blocks, Q8Tiles, BLOCK, TILE_BLOCK, TILE_N, VNNI_ROWS};
use std::arch::x86_64::*;

/// [`Q8Blocks::quantize_portable`] with AVX-512: four registers per block.
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512BW; `out` must have room for `x`.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn quantize(x: &[f32], out: &mut Q8Blocks) {
    let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
    for (b, block) in x.chunks_exact(BLOCK).enumerate() {
        let p = block.as_ptr();
        let v = [
            _mm512_loadu_ps(p),
            _mm512_loadu_ps(p.add(16)),
            _mm512_loadu_ps(p.add(32)),
            _mm512_loadu_ps(p.add(48)),
        ];
        let m01 = _mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1]));
        let m23 = _mm512_max_ps(_mm512_abs_ps(v[2]), _mm512_abs_ps(v[3]));
        let d = _mm512_reduce_max_ps(_mm512_max_ps(m01, m23)) / 127.0;
        let id = _mm512_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let dst = out.qs.as_mut_ptr().add(b * BLOCK);
        let mut sum = _mm512_setzero_si512();
        for (i, v) in v.iter().enumerate() {
            // Nearest, ties to even: the default rounding of cvtps.
            let scaled = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(*v, id), lo), hi);
            let q = _mm512_cvtps_epi32(scaled);
            _mm_storeu_si128(dst.add(16 * i) as *mut __m128i, _mm512_cvtsepi32_epi8(q));
            sum = _mm512_add_epi32(sum, q);
        }
        out.d[b] = d;
        out.offsets[b] = 128 * _mm512_reduce_add_epi32(sum);
    }
}

/// One 16-column tile for rows `r0..r0 + rows` (`rows <= 8`): each weight register (4
/// k-values of 16 columns) is loaded once, made unsigned (`q + 128`, one XOR of the sign
/// bits) for `vpdpbusd`, and used by every row.
///
/// # Safety
/// The CPU must support AVX-512F/BW and VNNI; `r0 + rows` rows exist in `a`; `t` is a tile.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn tile(
    a: &Q8Blocks,
    r0: usize,
    rows: usize,
    w: &Q8Tiles,
    t: usize,
    out: &mut [[f32; TILE_N]; VNNI_ROWS],
) {
    match rows {
        1 => tile_rows::<1>(a, r0, w, t, out),
        2 => tile_rows::<2>(a, r0, w, t, out),
        3 => tile_rows::<3>(a, r0, w, t, out),
        4 => tile_rows::<4>(a, r0, w, t, out),
        5 => tile_rows::<5>(a, r0, w, t, out),
        6 => tile_rows::<6>(a, r0, w, t, out),
        7 => tile_rows::<7>(a, r0, w, t, out),
        _ => tile_rows::<8>(a, r0, w, t, out),
    }
}

/// [`tile`] for `R` rows: a constant, so that the accumulators stay in registers.
///
/// # Safety
/// As for [`tile`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_rows<const R: usize>(
    a: &Q8Blocks,
    r0: usize,
    w: &Q8Tiles,
    t: usize,
    out: &mut [[f32; TILE_N]; VNNI_ROWS],
) {
    let (k, nb) = (a.k, a.k / BLOCK);
    let mut acc = [_mm512_setzero_ps(); R];
    let sign = _mm512_set1_epi8(i8::MIN);
    for b in 0..nb {
        let wq = w.qs.as_ptr().add((t * nb + b) * TILE_BLOCK);
        // Two chains of integer sums per row, so that the dot products of one row never
        // wait on each other; the first starts at -128·Σq (the `+128` of the weights taken
        // back). Exact integers: the order is free.
        let mut s0 = [_mm512_setzero_si512(); R];
        let mut s1 = [_mm512_setzero_si512(); R];
        for (r, s) in s0.iter_mut().enumerate() {
            *s = _mm512_set1_epi32(-*a.offsets.get_unchecked((r0 + r) * nb + b));
        }
        for g in (0..BLOCK / 4).step_by(2) {
            let w0 = _mm512_xor_si512(_mm512_loadu_si512(wq.add(g * 64) as *const _), sign);
            let w1 = _mm512_xor_si512(_mm512_loadu_si512(wq.add(g * 64 + 64) as *const _), sign);
            for r in 0..R {
                let ap = a.qs.as_ptr().add((r0 + r) * k + b * BLOCK + g * 4) as *const i32;
                s0[r] = _mm512_dpbusd_epi32(s0[r], w0, _mm512_set1_epi32(ap.read_unaligned()));
                s1[r] =
                    _mm512_dpbusd_epi32(s1[r], w1, _mm512_set1_epi32(ap.add(1).read_unaligned()));
            }
        }
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(
            w.d.as_ptr().add((t * nb + b) * TILE_N) as *const __m256i
        ));
        for r in 0..R {
            let s = _mm512_add_epi32(s0[r], s1[r]);
            let da = *a.d.get_unchecked((r0 + r) * nb + b);
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(da));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[r]);
        }
    }
    for r in 0..R {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}

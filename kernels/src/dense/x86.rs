//! AVX-512 tiles for [`crate::dense`]: up to [`TILE_ROWS`] rows × one [`PANEL`] of 32 channels,
//! 2 × rows accumulators in registers, the weights of a K-step loaded once per tile and every
//! activation broadcast once per step; bias and the epilogue applied before the (masked) store.

use std::arch::x86_64::*;

use super::{Epilogue, PANEL, TILE_ROWS};
use crate::activation::{ERF_P, ERF_Q};

/// f32 tile: `a` points at row 0 of the tile (rows `lda` floats apart), `panel` holds K steps of
/// 32 weights, `y` at the tile's first output (rows `ldy` apart), of which `cols` are stored.
///
/// # Safety
/// AVX-512F and BW; `a` readable for `rows` rows of `k`; `y` writable for `rows` rows of `cols`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_f32(
    a: *const f32,
    k: usize,
    rows: usize,
    panel: &[f32],
    bias: &[f32],
    epilogue: Epilogue,
    y: *mut f32,
    ldy: usize,
    cols: usize,
) {
    debug_assert!(rows <= TILE_ROWS && panel.len() >= k * PANEL && bias.len() == PANEL);
    macro_rules! go {
        ($($r:literal)*) => {
            match rows {
                $($r => tile_f32_rows::<$r>(a, k, panel.as_ptr(), bias, epilogue, y, ldy, cols),)*
                _ => unreachable!("a tile has 1 to {TILE_ROWS} rows"),
            }
        };
    }
    go!(1 2 3 4 5 6 7 8 9 10 11 12)
}

#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_f32_rows<const R: usize>(
    a: *const f32,
    k: usize,
    panel: *const f32,
    bias: &[f32],
    epilogue: Epilogue,
    y: *mut f32,
    ldy: usize,
    cols: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for kk in 0..k {
        let w0 = _mm512_loadu_ps(panel.add(kk * PANEL));
        let w1 = _mm512_loadu_ps(panel.add(kk * PANEL + 16));
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*a.add(r * k + kk));
            acc[0] = _mm512_fmadd_ps(x, w0, acc[0]);
            acc[1] = _mm512_fmadd_ps(x, w1, acc[1]);
        }
    }
    store(&acc, bias, epilogue, y, ldy, cols);
}

/// bf16 tile: `a` points at row 0's K-pairs (rows `lda` pairs apart), `panel` holds `steps`
/// pairs of 32 channels; otherwise as [`tile_f32`].
///
/// # Safety
/// AVX-512F, BW and BF16; pointers as in [`tile_f32`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_bf16(
    a: *const u32,
    steps: usize,
    rows: usize,
    panel: &[u32],
    bias: &[f32],
    epilogue: Epilogue,
    y: *mut f32,
    ldy: usize,
    cols: usize,
) {
    debug_assert!(rows <= TILE_ROWS && panel.len() >= steps * PANEL && bias.len() == PANEL);
    macro_rules! go {
        ($($r:literal)*) => {
            match rows {
                $($r => tile_bf16_rows::<$r>(a, steps, panel.as_ptr(), bias, epilogue, y, ldy, cols),)*
                _ => unreachable!("a tile has 1 to {TILE_ROWS} rows"),
            }
        };
    }
    go!(1 2 3 4 5 6 7 8 9 10 11 12)
}

#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_bf16_rows<const R: usize>(
    a: *const u32,
    steps: usize,
    panel: *const u32,
    bias: &[f32],
    epilogue: Epilogue,
    y: *mut f32,
    ldy: usize,
    cols: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for s in 0..steps {
        let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(panel.add(s * PANEL).cast()));
        let w1: __m512bh =
            std::mem::transmute(_mm512_loadu_si512(panel.add(s * PANEL + 16).cast()));
        for (r, acc) in acc.iter_mut().enumerate() {
            let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * steps + s) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], x, w0);
            acc[1] = _mm512_dpbf16_ps(acc[1], x, w1);
        }
    }
    store(&acc, bias, epilogue, y, ldy, cols);
}

/// bf16 weights widened to f32 in registers, f32 activations: `a` as in [`tile_f32`] (rows `k`
/// apart), `panel` as in [`tile_bf16`]. Each 32-bit lane holds weights `2s` (low half) and
/// `2s + 1` (high half): a shift and a mask make them f32 exactly. K order is kept (even, then
/// odd), so the result equals the f32 kernel on the rounded weights.
///
/// # Safety
/// AVX-512F and BW; pointers as in [`tile_f32`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_bf16_widened(
    a: *const f32,
    k: usize,
    rows: usize,
    panel: &[u32],
    bias: &[f32],
    epilogue: Epilogue,
    y: *mut f32,
    ldy: usize,
    cols: usize,
) {
    debug_assert!(rows <= TILE_ROWS && panel.len() >= k.div_ceil(2) * PANEL && bias.len() == PANEL);
    macro_rules! go {
        ($($r:literal)*) => {
            match rows {
                $($r => tile_bf16_widened_rows::<$r>(a, k, panel.as_ptr(), bias, epilogue, y, ldy, cols),)*
                _ => unreachable!("a tile has 1 to {TILE_ROWS} rows"),
            }
        };
    }
    go!(1 2 3 4 5 6 7 8 9 10 11 12)
}

#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_bf16_widened_rows<const R: usize>(
    a: *const f32,
    k: usize,
    panel: *const u32,
    bias: &[f32],
    epilogue: Epilogue,
    y: *mut f32,
    ldy: usize,
    cols: usize,
) {
    let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for s in 0..k / 2 {
        let (v0, v1) = load_pairs(panel, s);
        let (e0, e1) = (
            _mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)),
            _mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)),
        );
        let (o0, o1) = (
            _mm512_castsi512_ps(_mm512_and_si512(v0, high)),
            _mm512_castsi512_ps(_mm512_and_si512(v1, high)),
        );
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*a.add(r * k + 2 * s));
            acc[0] = _mm512_fmadd_ps(x, e0, acc[0]);
            acc[1] = _mm512_fmadd_ps(x, e1, acc[1]);
            let x = _mm512_set1_ps(*a.add(r * k + 2 * s + 1));
            acc[0] = _mm512_fmadd_ps(x, o0, acc[0]);
            acc[1] = _mm512_fmadd_ps(x, o1, acc[1]);
        }
    }
    if k % 2 == 1 {
        let s = k / 2;
        let (v0, v1) = load_pairs(panel, s);
        let (e0, e1) = (
            _mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)),
            _mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)),
        );
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*a.add(r * k + 2 * s));
            acc[0] = _mm512_fmadd_ps(x, e0, acc[0]);
            acc[1] = _mm512_fmadd_ps(x, e1, acc[1]);
        }
    }
    store(&acc, bias, epilogue, y, ldy, cols);
}

/// The 32 lanes of K-step `s` of a bf16 panel, as two registers of 16.
#[inline(always)]
unsafe fn load_pairs(panel: *const u32, s: usize) -> (__m512i, __m512i) {
    let v0 = _mm512_loadu_si512(panel.add(s * PANEL).cast());
    let v1 = _mm512_loadu_si512(panel.add(s * PANEL + 16).cast());
    (v0, v1)
}

/// GFLOP/s of one core on independent chains of `vdpbf16ps` and of f32 FMAs (best of three
/// short runs each), for [`super::Bf16Math::detect`].
///
/// # Safety
/// AVX-512F and AVX-512 BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn bf16_vs_fma_flops() -> (f64, f64) {
    let best = |f: unsafe fn() -> __m512, flops: f64| {
        (0..3)
            .map(|_| {
                let t = std::time::Instant::now();
                // SAFETY: the caller guarantees the features both loops need.
                std::hint::black_box(unsafe { f() });
                flops / t.elapsed().as_secs_f64().max(1e-9)
            })
            .fold(0f64, f64::max)
    };
    let n = (PROBE_ITERS * PROBE_CHAINS) as f64;
    (best(dot_chains, n * 64.0), best(fma_chains, n * 32.0))
}

const PROBE_ITERS: usize = 4096;
const PROBE_CHAINS: usize = 12;

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_chains() -> __m512 {
    let a: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80));
    let mut acc = [_mm512_setzero_ps(); PROBE_CHAINS];
    for _ in 0..PROBE_ITERS {
        for r in acc.iter_mut() {
            *r = _mm512_dpbf16_ps(*r, a, a);
        }
    }
    acc.iter()
        .fold(_mm512_setzero_ps(), |s, r| _mm512_add_ps(s, *r))
}

#[target_feature(enable = "avx512f")]
unsafe fn fma_chains() -> __m512 {
    let (a, b) = (_mm512_set1_ps(0.999), _mm512_set1_ps(0.001));
    let mut acc = [_mm512_setzero_ps(); PROBE_CHAINS];
    for _ in 0..PROBE_ITERS {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(a, *r, b);
        }
    }
    acc.iter()
        .fold(_mm512_setzero_ps(), |s, r| _mm512_add_ps(s, *r))
}

/// `epilogue(acc + bias)` into `y`, the last 16 lanes masked when `cols < 32`.
#[inline(always)]
unsafe fn store<const R: usize>(
    acc: &[[__m512; 2]; R],
    bias: &[f32],
    epilogue: Epilogue,
    y: *mut f32,
    ldy: usize,
    cols: usize,
) {
    for (r, acc) in acc.iter().enumerate() {
        store_lanes(acc[0], acc[1], bias, epilogue, y.add(r * ldy), cols);
    }
}

/// One row of a panel's sums (32 values in memory) through [`store`]'s steps: the AMX tiles'
/// store.
///
/// # Safety
/// AVX-512F; `y` writable for `cols` values; `bias` has 32.
#[target_feature(enable = "avx512f")]
pub unsafe fn store_row(
    sums: &[f32; PANEL],
    bias: &[f32],
    epilogue: Epilogue,
    y: *mut f32,
    cols: usize,
) {
    let s0 = _mm512_loadu_ps(sums.as_ptr());
    let s1 = _mm512_loadu_ps(sums.as_ptr().add(16));
    store_lanes(s0, s1, bias, epilogue, y, cols);
}

/// `epilogue(v + bias)` of one row's 32 channels into `y`, masked to `cols`.
#[inline(always)]
unsafe fn store_lanes(
    v0: __m512,
    v1: __m512,
    bias: &[f32],
    epilogue: Epilogue,
    y: *mut f32,
    cols: usize,
) {
    let mask = |c: usize| -> __mmask16 {
        if c >= 16 {
            0xffff
        } else {
            ((1u32 << c) - 1) as __mmask16
        }
    };
    let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
    let mut v0 = _mm512_add_ps(v0, _mm512_loadu_ps(bias.as_ptr()));
    let mut v1 = _mm512_add_ps(v1, _mm512_loadu_ps(bias.as_ptr().add(16)));
    if epilogue == Epilogue::GeluErf {
        v0 = gelu(v0);
        v1 = gelu(v1);
    }
    _mm512_mask_storeu_ps(y, m0, v0);
    if m1 != 0 {
        _mm512_mask_storeu_ps(y.add(16), m1, v1);
    }
}

/// [`crate::activation::gelu_erf`] on 16 lanes, the same operations in the same order.
#[inline(always)]
unsafe fn gelu(v: __m512) -> __m512 {
    let x = _mm512_mul_ps(v, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-4.0)), _mm512_set1_ps(4.0));
    let x2 = _mm512_mul_ps(x, x);
    let mut p = _mm512_set1_ps(ERF_P[0]);
    for &c in &ERF_P[1..] {
        p = _mm512_add_ps(_mm512_mul_ps(p, x2), _mm512_set1_ps(c));
    }
    let mut q = _mm512_set1_ps(ERF_Q[0]);
    for &c in &ERF_Q[1..] {
        q = _mm512_add_ps(_mm512_mul_ps(q, x2), _mm512_set1_ps(c));
    }
    let erf = _mm512_div_ps(_mm512_mul_ps(x, p), q);
    let half_v = _mm512_mul_ps(_mm512_set1_ps(0.5), v);
    _mm512_mul_ps(half_v, _mm512_add_ps(_mm512_set1_ps(1.0), erf))
}

/// One row of f32 as bf16 pairs (`out.len()` = K / 2 rounded up), rounded by
/// `vcvtne2ps2bf16`; a last odd value gets a zero partner.
///
/// # Safety
/// AVX-512F, BW and BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn row_to_bf16_pairs(row: &[f32], out: &mut [u32]) {
    let k = row.len();
    let mut i = 0;
    while i + 32 <= k {
        let lo = _mm512_loadu_ps(row.as_ptr().add(i));
        let hi = _mm512_loadu_ps(row.as_ptr().add(i + 16));
        let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(out.as_mut_ptr().add(i / 2).cast(), packed);
        i += 32;
    }
    if i < k {
        let mut buf = [0f32; 32];
        buf[..k - i].copy_from_slice(&row[i..]);
        let lo = _mm512_loadu_ps(buf.as_ptr());
        let hi = _mm512_loadu_ps(buf.as_ptr().add(16));
        let packed: [u32; 16] = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        let left = out.len() - i / 2;
        out[i / 2..].copy_from_slice(&packed[..left]);
    }
}

//! The AMX kernel of [`crate::gemm`]: exact i32 dot products of int8 rows against the packed
//! weights with `tdpbssd`, 32 rows × 32 channels per pass.
//!
//! The packed layout is already the right-hand operand AMX reads: block `nb`'s groups `kg..kg+16`
//! are 16 rows of 64 bytes (16 channels × 4 k-values), contiguous. An activation tile is 16 rows
//! × 64 k-values of the quantized rows (signed, so no +128 offset as VNNI needs). Each pass's
//! exact sums (32 × 32 i32, 4 KiB) are stored to a small buffer that stays in L1 and rescaled
//! from there straight into the output with the shared AVX-512 rescale ([`super::x86::rescale_row`],
//! the scalar epilogue's bits), so the sums never travel through a full-size accumulator.
//!
//! Tiles 0–3: the sums of rows 0–15 × block 0, rows 0–15 × block 1, rows 16–31 × block 0, rows
//! 16–31 × block 1; 4–5: the two activation tiles; 6–7: the two weight tiles. Each k-step loads
//! four tiles for four `tdpbssd`, and a pair of weight blocks (K/2 bytes each) stays in cache
//! across the row groups of a part.

use crate::amx_tiles::{configure_pairs, pair_row_groups, release, TILE_ROWS as AMX_ROWS};
use std::arch::asm;
use std::mem::MaybeUninit;

use super::layout::BLOCK_N;
use super::x86::{rescale_row, Rescale};

/// k-groups (of 4 bytes) per tile: 64 k-values.
pub(super) const TILE_GROUPS: usize = 16;

/// `y = rescale(Σ_k a[r][k] · w[c][k])` for the `rescale.a_scales.len()` rows of `values` (rows
/// `kp` bytes apart, padded to `rows`, a multiple of 4), `y` row-major with `rescale.n` columns.
///
/// # Safety
/// AMX and AVX-512F must be usable ([`crate::cpu::CpuFeatures::amx_int8`]); `k4` must be a
/// multiple of [`TILE_GROUPS`], `kp >= 4 × k4`, `values` must hold `rows × kp` bytes, `weights`
/// `blocks` packed blocks of `k4` groups with `blocks × 16 >= rescale.n`, and `y` the real rows'
/// outputs.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn linear_rows_amx(
    values: &[i8],
    rows: usize,
    kp: usize,
    k4: usize,
    blocks: usize,
    weights: &[i8],
    rescale: &Rescale,
    y: &mut [MaybeUninit<f32>],
) {
    debug_assert_eq!(k4 % TILE_GROUPS, 0);
    debug_assert!(values.len() >= rows * kp && y.len() == rescale.a_scales.len() * rescale.n);
    debug_assert!(blocks * BLOCK_N >= rescale.n);
    let mut sums = Sums([[0; 2 * BLOCK_N]; 2 * AMX_ROWS]);
    for (range, h0, h1) in pair_row_groups(rows) {
        if range.is_empty() {
            continue;
        }
        configure_pairs(h0, h1);
        for r in range.step_by(2 * AMX_ROWS) {
            let pass = Pass {
                a: values.as_ptr().add(r * kp),
                kp,
                k4,
                sums: sums.0.as_mut_ptr() as *mut i32,
            };
            // The real rows of this group (padding rows are computed, never stored).
            let real = rescale.a_scales.len().saturating_sub(r).min(2 * AMX_ROWS);
            let mut nb = 0;
            while nb < blocks {
                let w0 = weights.as_ptr().add(nb * k4 * 64);
                match (h1 > 0, nb + 1 < blocks) {
                    (true, true) => pass.run::<true, true>(w0),
                    (true, false) => pass.run::<true, false>(w0),
                    (false, true) => pass.run::<false, true>(w0),
                    (false, false) => pass.run::<false, false>(w0),
                }
                let c0 = nb * BLOCK_N;
                let cols = (rescale.n - c0.min(rescale.n)).min(2 * BLOCK_N);
                for i in 0..real {
                    let row = r + i;
                    rescale_row(
                        &sums.0[i][..cols],
                        rescale,
                        row,
                        c0,
                        &mut y[row * rescale.n + c0..row * rescale.n + c0 + cols],
                    );
                }
                nb += 2;
            }
        }
    }
    release();
}

/// One pass's exact sums: 32 rows × 32 channels, as `tilestored` writes them.
#[repr(C, align(64))]
struct Sums([[i32; 2 * BLOCK_N]; 2 * AMX_ROWS]);

/// One row group's operands: activations from `a` (rows `kp` apart), sums to `sums` (a
/// [`Sums`]).
struct Pass {
    a: *const i8,
    kp: usize,
    k4: usize,
    sums: *mut i32,
}

impl Pass {
    /// Blocks `nb` (weights at `w0`) and, with `PAIR`, `nb + 1` (right after it) for rows 0–15
    /// and, with `TWO`, rows 16–31 (as configured).
    #[inline(always)]
    unsafe fn run<const TWO: bool, const PAIR: bool>(&self, w0: *const i8) {
        let w1 = w0.add(self.k4 * 64);
        let (kp, s) = (self.kp, 64usize);
        let a1 = self.a.add(AMX_ROWS * kp);
        // Only configured tiles may be touched (an empty one raises #UD).
        asm!("tilezero tmm0", options(nostack, nomem));
        if PAIR {
            asm!("tilezero tmm1", options(nostack, nomem));
        }
        if TWO {
            asm!("tilezero tmm2", options(nostack, nomem));
            if PAIR {
                asm!("tilezero tmm3", options(nostack, nomem));
            }
        }
        for kt in 0..self.k4 / TILE_GROUPS {
            let (ak, wk) = (kt * 64, kt * TILE_GROUPS * 64);
            asm!("tileloadd tmm4, [{a} + {kp}*1]", "tileloadd tmm6, [{w} + {s}*1]",
                 "tdpbssd tmm0, tmm4, tmm6",
                 a = in(reg) self.a.add(ak), kp = in(reg) kp, w = in(reg) w0.add(wk),
                 s = in(reg) s, options(nostack, readonly));
            if PAIR {
                asm!("tileloadd tmm7, [{w} + {s}*1]", "tdpbssd tmm1, tmm4, tmm7",
                     w = in(reg) w1.add(wk), s = in(reg) s, options(nostack, readonly));
            }
            if TWO {
                asm!("tileloadd tmm5, [{a} + {kp}*1]", "tdpbssd tmm2, tmm5, tmm6",
                     a = in(reg) a1.add(ak), kp = in(reg) kp, options(nostack, readonly));
                if PAIR {
                    asm!("tdpbssd tmm3, tmm5, tmm7", options(nostack, nomem));
                }
            }
        }
        let stride = 2 * BLOCK_N * 4;
        let c0 = self.sums;
        let c1 = c0.add(AMX_ROWS * 2 * BLOCK_N);
        asm!("tilestored [{c} + {s}*1], tmm0", c = in(reg) c0, s = in(reg) stride,
             options(nostack));
        if PAIR {
            asm!("tilestored [{c} + {s}*1], tmm1", c = in(reg) c0.add(BLOCK_N), s = in(reg) stride,
                 options(nostack));
        }
        if TWO {
            asm!("tilestored [{c} + {s}*1], tmm2", c = in(reg) c1, s = in(reg) stride,
                 options(nostack));
            if PAIR {
                asm!("tilestored [{c} + {s}*1], tmm3", c = in(reg) c1.add(BLOCK_N),
                     s = in(reg) stride, options(nostack));
            }
        }
    }
}

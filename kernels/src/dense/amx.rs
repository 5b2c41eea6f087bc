//! The AMX-BF16 kernel of [`crate::dense`] (`tdpbf16ps`: 16 rows × 16 channels × 32 k-values per
//! instruction, f32 accumulation), for CPUs with AMX (Sapphire Rapids and later Xeons), where
//! `vdpbf16ps` runs at half the f32 FMA's rate and bf16 could not otherwise beat f32.
//!
//! The bf16 panels are already AMX's right-hand operand: 16 consecutive K-steps (pairs) of a
//! panel's channels 0–15 are 16 rows of 64 bytes, 128 bytes apart, and channels 16–31 the same
//! 64 bytes on. The activations, rounded to bf16 pairs once per call, are the left-hand tiles
//! (16 rows × 16 pairs). A pass computes 32 rows × one panel in four sum tiles, stores them to a
//! 4 KiB buffer that stays in L1, and the AVX-512 store adds the bias and applies the epilogue
//! there ([`super::x86::store_row`], the other tiles' code).

use std::arch::asm;
use std::ops::Range;

use super::x86::store_row;
use super::{Epilogue, PANEL};
use crate::amx_tiles::{configure_pairs, pair_row_groups, release, TILE_ROWS as AMX_ROWS};

/// K-steps (bf16 pairs) per tile: 32 k-values.
pub(super) const TILE_STEPS: usize = 16;

/// One pass's sums: 32 rows × one panel, as `tilestored` writes them.
#[repr(C, align(64))]
struct Sums([[f32; PANEL]; 2 * AMX_ROWS]);

/// `y[r][p·32 + c] = epilogue(Σ_k x[r][k] · w[p·32 + c][k] + bias)` for rows `rows` and panels
/// `panels`, from the activations' bf16 pairs `a` (rows `steps` pairs apart) and the packed bf16
/// panels `data`.
///
/// # Safety
/// AMX-BF16 and AVX-512F/BW must be usable ([`crate::cpu::CpuFeatures::amx_bf16`]); `steps` must
/// be a multiple of [`TILE_STEPS`]; `a` readable for the rows; `data` holds the panels and
/// `bias` `panels × 32` values; `y` (rows `n` apart) writable in this rectangle and written by
/// no one else meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn rows_bf16(
    a: *const u32,
    steps: usize,
    rows: Range<usize>,
    panels: Range<usize>,
    data: &[u32],
    bias: &[f32],
    epilogue: Epilogue,
    y: *mut f32,
    n: usize,
) {
    debug_assert_eq!(steps % TILE_STEPS, 0);
    let mut sums = Sums([[0.0; PANEL]; 2 * AMX_ROWS]);
    let m = rows.end - rows.start;
    for (group, h0, h1) in pair_row_groups(m) {
        if group.is_empty() {
            continue;
        }
        configure_pairs(h0, h1);
        for r in group.step_by(2 * AMX_ROWS) {
            let row0 = rows.start + r;
            let real = (m - r).min(2 * AMX_ROWS);
            for p in panels.clone() {
                let panel = data.as_ptr().add(p * steps * PANEL);
                let pass = Pass {
                    a: a.add(row0 * steps),
                    steps,
                    panel,
                    sums: sums.0.as_mut_ptr() as *mut f32,
                };
                if h1 > 0 {
                    pass.run::<true>();
                } else {
                    pass.run::<false>();
                }
                let cols = PANEL.min(n - p * PANEL);
                let b = &bias[p * PANEL..(p + 1) * PANEL];
                for (i, row) in sums.0.iter().enumerate().take(real) {
                    store_row(row, b, epilogue, y.add((row0 + i) * n + p * PANEL), cols);
                }
            }
        }
    }
    release();
}

/// One pass's operands: activations from `a` (rows `steps` pairs apart), the panel, and where
/// the sums go (a [`Sums`]).
struct Pass {
    a: *const u32,
    steps: usize,
    panel: *const u32,
    sums: *mut f32,
}

impl Pass {
    /// Rows 0–15 and, with `TWO`, rows 16–31 (as configured) × the panel's 32 channels.
    #[inline(always)]
    unsafe fn run<const TWO: bool>(&self) {
        let lda = self.steps * 4;
        let ldw = PANEL * 4;
        let a1 = self.a.add(AMX_ROWS * self.steps);
        // Only configured tiles may be touched (an empty one raises #UD).
        asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
        if TWO {
            asm!("tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        }
        for kt in 0..self.steps / TILE_STEPS {
            let (ak, wk) = (kt * TILE_STEPS, kt * TILE_STEPS * PANEL);
            asm!("tileloadd tmm4, [{a} + {lda}*1]",
                 "tileloadd tmm6, [{w0} + {ldw}*1]",
                 "tileloadd tmm7, [{w1} + {ldw}*1]",
                 "tdpbf16ps tmm0, tmm4, tmm6",
                 "tdpbf16ps tmm1, tmm4, tmm7",
                 a = in(reg) self.a.add(ak), lda = in(reg) lda,
                 w0 = in(reg) self.panel.add(wk), w1 = in(reg) self.panel.add(wk + 16),
                 ldw = in(reg) ldw, options(nostack, readonly));
            if TWO {
                asm!("tileloadd tmm5, [{a} + {lda}*1]",
                     "tdpbf16ps tmm2, tmm5, tmm6",
                     "tdpbf16ps tmm3, tmm5, tmm7",
                     a = in(reg) a1.add(ak), lda = in(reg) lda, options(nostack, readonly));
            }
        }
        let ld = PANEL * 4;
        let c0 = self.sums;
        let c1 = c0.add(AMX_ROWS * PANEL);
        asm!("tilestored [{c} + {ld}*1], tmm0", "tilestored [{d} + {ld}*1], tmm1",
             c = in(reg) c0, d = in(reg) c0.add(16), ld = in(reg) ld, options(nostack));
        if TWO {
            asm!("tilestored [{c} + {ld}*1], tmm2", "tilestored [{d} + {ld}*1], tmm3",
                 c = in(reg) c1, d = in(reg) c1.add(16), ld = in(reg) ld, options(nostack));
        }
    }
}

//! The AMX (Advanced Matrix Extensions, Sapphire Rapids and later Xeons) kernel of the tile
//! matmul, with its tile-register plumbing.
//!
//! Why it exists: one AMX `tdpbssd` multiplies a 16 × 64 int8 tile by a 64 × 16 one (16 384
//! multiply-adds) where AVX-512 VNNI needs 16 `vpdpbusd` per row. Whether this process may use
//! the tiles (CPU, OS permission, [`crate::cpu::AMX_DISABLE_ENV`]) is the probe's business
//! ([`crate::cpu::CpuFeatures::amx_int8`]); each thread then loads a tile configuration before
//! its first tile instruction, and releases its tiles when done. The instructions are written as
//! inline assembly (stable Rust has no AMX intrinsics).
//!
//! Per work item, its 16-row groups then the remaining rows, one tile configuration each (loading
//! one costs more than a block's product). Two phases per group of up to 4 column tiles, so that
//! neither waits on the other: the tile unit computes every block's exact integer sums and stores
//! them (1 KiB per tile and block, in a per-thread buffer), then AVX-512 runs the float epilogue
//! of each column tile over all its blocks with the rows' accumulators in registers
//! (interleaving them per block left the epilogue waiting on freshly stored sums).

use super::output::SharedOut;
use super::pack::{Q8Blocks, Q8Tiles, BLOCK, TILE_BLOCK, TILE_N};
use crate::amx_tiles::{release, TileConfig, TILE_ROWS as AMX_ROWS};
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

/// Column tiles multiplied per pass: one activation tile shared by four weight tiles.
const GROUP: usize = 4;

/// One block's exact integer sums as `tilestored` writes them: 16 i32 per row.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Sums([[i32; TILE_N]; AMX_ROWS]);

thread_local! {
    /// Each thread's sums of one group: `GROUP × blocks` tiles, reused across calls.
    static SUMS: RefCell<Vec<Sums>> = const { RefCell::new(Vec::new()) };
}

/// Tiles `tiles` of the output for all `m` rows.
///
/// # Safety
/// AMX and AVX-512F/BW must be usable ([`crate::cpu::CpuFeatures::amx_int8`]); `tiles` must be
/// tiles of `w`, `a` must hold `m` rows of `w.k`, and no one else may write these tiles of `out`.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn item(
    a: &Q8Blocks,
    m: usize,
    w: &Q8Tiles,
    tiles: Range<usize>,
    out: &SharedOut,
) {
    SUMS.with_borrow_mut(|sums| {
        sums.resize(GROUP * (w.k / BLOCK), Sums([[0; TILE_N]; AMX_ROWS]));
        let full = m - m % AMX_ROWS;
        for (rows, height) in [(0..full, AMX_ROWS), (full..m, m - full)] {
            if rows.is_empty() {
                continue;
            }
            configure(height);
            for t in tiles.clone().step_by(GROUP) {
                let n = (tiles.end - t).min(GROUP);
                for r0 in rows.clone().step_by(AMX_ROWS) {
                    products(a, r0, w, t, n, sums);
                    for j in 0..n {
                        epilogue(height, a, r0, w, t + j, &sums[j * (w.k / BLOCK)..], out);
                    }
                }
            }
        }
        release();
    })
}

/// Tiles 0–3: sums (`rows` × 16 i32) of up to 4 column tiles; 4: activations (`rows` × 64
/// i8); 5–7: weights (16 groups of 4 k-values × 16 columns).
unsafe fn configure(rows: usize) {
    let r = rows as u8;
    let (c, w) = ((r, 64), (16, 64));
    TileConfig::new(&[c, c, c, c, (r, 64), w, w, w]).load();
}

/// The exact integer sums of rows `r0..` (the configured tile rows) with column tiles
/// `t..t + n` (`n <= 4`), every block: tile `j`'s block `b` into `sums[j·blocks + b]`.
unsafe fn products(a: &Q8Blocks, r0: usize, w: &Q8Tiles, t: usize, n: usize, sums: &mut [Sums]) {
    let (k, nb) = (a.k, a.k / BLOCK);
    let ap = a.qs.as_ptr().add(r0 * k);
    let s = 64usize;
    for b in 0..nb {
        asm!("tileloadd tmm4, [{a} + {k}*1]", a = in(reg) ap.add(b * BLOCK), k = in(reg) k,
             options(nostack, readonly));
        for j in 0..n {
            let wp = w.qs.as_ptr().add(((t + j) * nb + b) * TILE_BLOCK);
            match j {
                0 => asm!("tilezero tmm0", "tileloadd tmm5, [{w} + {s}*1]",
                          "tdpbssd tmm0, tmm4, tmm5",
                          w = in(reg) wp, s = in(reg) s, options(nostack, readonly)),
                1 => asm!("tilezero tmm1", "tileloadd tmm6, [{w} + {s}*1]",
                          "tdpbssd tmm1, tmm4, tmm6",
                          w = in(reg) wp, s = in(reg) s, options(nostack, readonly)),
                2 => asm!("tilezero tmm2", "tileloadd tmm7, [{w} + {s}*1]",
                          "tdpbssd tmm2, tmm4, tmm7",
                          w = in(reg) wp, s = in(reg) s, options(nostack, readonly)),
                _ => asm!("tilezero tmm3", "tileloadd tmm5, [{w} + {s}*1]",
                          "tdpbssd tmm3, tmm4, tmm5",
                          w = in(reg) wp, s = in(reg) s, options(nostack, readonly)),
            }
        }
        for j in 0..n {
            let c = sums[j * nb + b].0.as_mut_ptr();
            match j {
                0 => asm!("tilestored [{c} + {s}*1], tmm0", c = in(reg) c, s = in(reg) s,
                          options(nostack)),
                1 => asm!("tilestored [{c} + {s}*1], tmm1", c = in(reg) c, s = in(reg) s,
                          options(nostack)),
                2 => asm!("tilestored [{c} + {s}*1], tmm2", c = in(reg) c, s = in(reg) s,
                          options(nostack)),
                _ => asm!("tilestored [{c} + {s}*1], tmm3", c = in(reg) c, s = in(reg) s,
                          options(nostack)),
            }
        }
    }
}

/// The float epilogue of column tile `t` for `rows` rows from `r0`, from its blocks' sums.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn epilogue(
    rows: usize,
    a: &Q8Blocks,
    r0: usize,
    w: &Q8Tiles,
    t: usize,
    sums: &[Sums],
    out: &SharedOut,
) {
    let f = match rows {
        1 => epilogue_rows::<1>,
        2 => epilogue_rows::<2>,
        3 => epilogue_rows::<3>,
        4 => epilogue_rows::<4>,
        5 => epilogue_rows::<5>,
        6 => epilogue_rows::<6>,
        7 => epilogue_rows::<7>,
        8 => epilogue_rows::<8>,
        9 => epilogue_rows::<9>,
        10 => epilogue_rows::<10>,
        11 => epilogue_rows::<11>,
        12 => epilogue_rows::<12>,
        13 => epilogue_rows::<13>,
        14 => epilogue_rows::<14>,
        15 => epilogue_rows::<15>,
        _ => epilogue_rows::<16>,
    };
    f(a, r0, w, t, sums, out)
}

/// [`epilogue`] for `R` rows: `y = Σ_b fma(s_b, d_w · d_x, ·)` in block order, from 0.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn epilogue_rows<const R: usize>(
    a: &Q8Blocks,
    r0: usize,
    w: &Q8Tiles,
    t: usize,
    sums: &[Sums],
    out: &SharedOut,
) {
    let nb = a.k / BLOCK;
    let mut acc = [_mm512_setzero_ps(); R];
    for (b, sum) in sums.iter().enumerate().take(nb) {
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(
            w.d.as_ptr().add((t * nb + b) * TILE_N) as *const __m256i
        ));
        for (r, acc) in acc.iter_mut().enumerate() {
            let da = _mm512_set1_ps(*a.d.get_unchecked((r0 + r) * nb + b));
            let s = _mm512_cvtepi32_ps(_mm512_load_si512(sum.0[r].as_ptr() as *const _));
            *acc = _mm512_fmadd_ps(s, _mm512_mul_ps(dw, da), *acc);
        }
    }
    let cols = (w.n - t * TILE_N).min(TILE_N);
    let mask = (1u32 << cols).wrapping_sub(1) as u16;
    for (r, acc) in acc.into_iter().enumerate() {
        _mm512_mask_storeu_ps(out.ptr((r0 + r) * w.n + t * TILE_N), mask, acc);
    }
}

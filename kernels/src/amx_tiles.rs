//! The AMX tile registers' plumbing shared by the tile kernels ([`crate::q8_tiles`]'s and
//! [`crate::gemm`]'s): a tile configuration and the release of the tiles. Stable Rust has no AMX
//! intrinsics, so the kernels write the tile instructions as inline assembly; whether this
//! process may use them at all is [`crate::cpu::CpuFeatures::amx_int8`]'s business.

use std::arch::asm;
use std::ops::Range;

/// Rows of one AMX tile.
pub(crate) const TILE_ROWS: usize = 16;

/// The row groups of a 2 × 2 tile kernel (two activation tiles × two weight tiles, four sum
/// tiles) over `rows` rows: groups of 32 rows, then the rest, each as (rows, rows of the first
/// activation tile, rows of the second, 0 for none). One tile configuration per entry, since
/// loading one zeroes the tiles; an empty range needs none.
pub(crate) fn pair_row_groups(rows: usize) -> [(Range<usize>, usize, usize); 2] {
    let full = rows - rows % (2 * TILE_ROWS);
    let rest = rows - full;
    [
        (0..full, TILE_ROWS, TILE_ROWS),
        (
            full..rows,
            rest.min(TILE_ROWS),
            rest.saturating_sub(TILE_ROWS),
        ),
    ]
}

/// Loads the 2 × 2 kernels' configuration, every row 64 bytes: tiles 0–1 (sums) and 4
/// (activations) `h0` rows; 2–3 and 5 `h1` rows (left empty when 0: a tile of no rows must have
/// no bytes either, or the configuration faults); 6–7 (weights) 16 rows.
///
/// # Safety
/// AMX must be usable ([`crate::cpu::CpuFeatures::amx_int8`] or `amx_bf16`).
pub(crate) unsafe fn configure_pairs(h0: usize, h1: usize) {
    let a = (h0 as u8, 64);
    let b = if h1 == 0 { (0, 0) } else { (h1 as u8, 64) };
    let w = (TILE_ROWS as u8, 64);
    TileConfig::new(&[a, a, b, b, a, b, w, w]).load();
}

/// A tile configuration (palette 1): rows and bytes per row of each of the 8 tile registers.
#[repr(C, align(64))]
pub(crate) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// Palette 1 with `shapes[i] = (rows, bytes per row)` for tile register `i` (unused ones
    /// stay empty).
    pub(crate) fn new(shapes: &[(u8, u16)]) -> Self {
        let mut cfg = Self {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for (i, &(rows, colsb)) in shapes.iter().enumerate().take(8) {
            cfg.rows[i] = rows;
            cfg.colsb[i] = colsb;
        }
        cfg
    }

    /// Loads this configuration into the calling thread's tile registers (zeroing them).
    ///
    /// # Safety
    /// AMX must be usable ([`crate::cpu::CpuFeatures::amx_int8`]).
    pub(crate) unsafe fn load(&self) {
        asm!("ldtilecfg [{}]", in(reg) self, options(nostack, readonly));
    }
}

/// Returns the calling thread's tiles to their initial state, so that the OS need not save them
/// on a context switch.
///
/// # Safety
/// AMX must be usable ([`crate::cpu::CpuFeatures::amx_int8`]).
pub(crate) unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}

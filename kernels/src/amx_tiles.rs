//! The AMX tile registers' plumbing shared by the tile kernels ([`crate::q8_tiles`]'s and
//! [`crate::gemm`]'s): a tile configuration and the release of the tiles. Stable Rust has no AMX
//! intrinsics, so the kernels write the tile instructions as inline assembly; whether this
//! process may use them at all is [`crate::cpu::CpuFeatures::amx_int8`]'s business.

use std::arch::asm;

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

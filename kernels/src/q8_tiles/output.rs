//! The output matrix as the work items of one matmul share it: each writes its own column tiles,
//! from whichever thread the caller's pool runs it on. A leaf beside `pack.rs`, so that the
//! dispatcher and the AMX kernel can both write without importing each other.

use super::pack::{Q8Tiles, TILE_N};

/// The output buffer, written by several threads at disjoint places.
pub(super) struct SharedOut(*mut f32, usize);

// SAFETY: every writer writes a disjoint range (see `matmul_with`), and the buffer outlives them.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Shares `y` (row-major `m × n`) among the work items of one call; the caller keeps `y`
    /// alive and untouched until they are done.
    pub(super) fn new(y: &mut [f32]) -> Self {
        Self(y.as_mut_ptr(), y.len())
    }

    /// Where output value `at` lives (row-major `m × n`).
    ///
    /// # Safety
    /// `at` must be within the buffer; the caller may write there only if no one else does.
    #[cfg(target_arch = "x86_64")]
    pub(super) unsafe fn ptr(&self, at: usize) -> *mut f32 {
        debug_assert!(at < self.1);
        self.0.add(at)
    }

    /// Writes the rows of tile `t` (columns `16t..`, cut at `w.n`) for rows `r0..`.
    ///
    /// # Safety
    /// The rows must exist in the `m × n` output, and no one else may touch that range: items
    /// own disjoint tiles, and `y` outlives `par`.
    pub(super) unsafe fn write_tile(
        &self,
        w: &Q8Tiles,
        r0: usize,
        t: usize,
        rows: &[[f32; TILE_N]],
    ) {
        let cols = (w.n - t * TILE_N).min(TILE_N);
        for (i, row) in rows.iter().enumerate() {
            let at = (r0 + i) * w.n + t * TILE_N;
            debug_assert!(at + cols <= self.1);
            std::ptr::copy_nonoverlapping(row.as_ptr(), self.0.add(at), cols);
        }
    }
}

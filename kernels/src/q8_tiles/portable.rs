//! The tile kernel in plain code, for CPUs without AVX-512 VNNI or AMX: the same arithmetic as
//! the SIMD kernels (exact integer block sums, then one `fma` per block in block order), so the
//! same bits, one output at a time.

use super::pack::{Q8Blocks, Q8Tiles, BLOCK, TILE_BLOCK, TILE_N, VNNI_ROWS};

/// One tile for rows `r0..r0 + rows` (`rows <= 8`), in portable code.
pub(super) fn tile(
    a: &Q8Blocks,
    r0: usize,
    rows: usize,
    w: &Q8Tiles,
    t: usize,
    tile: &mut [[f32; TILE_N]; VNNI_ROWS],
) {
    let (k, nb) = (w.k, w.k / BLOCK);
    for (i, out) in tile.iter_mut().enumerate().take(rows) {
        let row = r0 + i;
        for (c, y) in out.iter_mut().enumerate() {
            let mut acc = 0f32;
            for b in 0..nb {
                let base = (t * nb + b) * TILE_BLOCK;
                let mut s = 0i32;
                for j in 0..BLOCK {
                    let wv = w.qs[base + ((j / 4) * TILE_N + c) * 4 + j % 4] as i32;
                    s += wv * a.qs[row * k + b * BLOCK + j] as i32;
                }
                let scale = w.d[(t * nb + b) * TILE_N + c].to_f32() * a.d[row * nb + b];
                acc = (s as f32).mul_add(scale, acc);
            }
            *y = acc;
        }
    }
}

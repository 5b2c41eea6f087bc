//! int8 matmul for decoders on AMX or AVX-512 VNNI: `y = x Wᵀ` with `W` quantized at load in
//! blocks of 64 values per output column (one f16 scale each) and packed into tiles of 16 output
//! columns, and `x` quantized per row in blocks of 64 at call time.
//!
//! Why not candle's repacked Q8_0 kernel: it quantizes activations in blocks of 256 (so inputs of
//! 576 must be zero-padded to 768: a third more work), it shares each weight tile among at most 4
//! rows (decoding 16 sequences reads the weights 4 times), and its activation quantizer is
//! scalar. Why blocks of 64 and not Q8_0's 32: every block costs a float epilogue per row (convert
//! the exact integer sum, scale, accumulate) beside its dot products; with 64 values per block
//! there are twice the dot products per epilogue, and a block is exactly one AMX tile row.
//! Activations in blocks of 64 are still 4× finer than candle's blocks of 256; weights
//! requantized from a 4-bit GGUF lose nothing that matters (the int8 step is a few percent of a
//! 4-bit step).
//!
//! The packed tile block is the layout AMX reads as its right-hand tile (16 rows of 4 k-values ×
//! 16 columns), so [`Kernel::Amx`] multiplies up to 16 rows by a weight block in one `tdpbssd`;
//! [`Kernel::Vnni`] broadcasts 4 activation bytes per `vpdpbusd` over the same bytes, up to 8 rows
//! per weight load.
//!
//! The arithmetic, which [`matmul_reference`] states in plain code and every path reproduces bit
//! for bit: per block `b` of 64, `q = round_half_even(v / d)` with `d = max|v| / 127` (weights
//! and activations alike; the weights' `d` then stored as f16); the block's exact integer dot
//! product `s_b = Σ q_x · q_w`; and per output `y = Σ_b fma(s_b, d_w · d_x, ·)` in block order,
//! from 0. Each row's outputs are independent of the other rows of the call (tested), so
//! batching never changes a sequence's tokens.
//!
//! Files, imports one way: `pack.rs` (the packed operands and shapes) imports none of the others;
//! `output.rs` (the shared output) reads it; `portable.rs`, `avx512.rs` and `amx.rs` (one
//! instruction set each) read those two; this module picks the kernel (from
//! [`crate::cpu::features`]) and calls them.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod output;
mod pack;
mod portable;

pub use pack::{Q8Blocks, Q8Tiles, BLOCK, TILE_N};

use crate::cpu;
use output::SharedOut;
use pack::VNNI_ROWS;

/// Fewest rows for which [`matmul`] uses AMX rather than VNNI: below, AMX's tiles are too empty
/// to pay for their loads and stores.
pub const AMX_MIN_ROWS: usize = 12;

impl Q8Blocks {
    /// Quantizes `x` (rows of `k`, a multiple of 64), with AVX-512 where the CPU has it (same
    /// bits as the portable code): the activations of a [`matmul`], once for every kernel.
    pub fn quantize(x: &[f32], k: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if cpu::features().avx512() {
            let mut out = Self::zeros(x.len(), k);
            // SAFETY: the CPU has AVX-512F/BW (checked); `out` has room for `x`.
            unsafe { avx512::quantize(x, &mut out) };
            return out;
        }
        Self::quantize_portable(x, k)
    }
}

/// Which code runs a [`matmul`]: every kernel gives the same bits; they differ in speed only, so
/// callers may pick one ([`matmul_with`]) to compare or to avoid one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AMX tiles: up to 16 rows × 16 columns × 64 k-values per instruction (Sapphire Rapids+).
    Amx,
    /// AVX-512 VNNI: up to 8 rows per pass over a weight tile.
    Vnni,
    /// Plain code: slow, for CPUs without either (callers should prefer another kernel there).
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU and OS allow (AMX unless [`cpu::AMX_DISABLE_ENV`] is set).
    pub fn detect() -> Self {
        if Kernel::Amx.available() {
            Kernel::Amx
        } else if Kernel::Vnni.available() {
            Kernel::Vnni
        } else {
            Kernel::Portable
        }
    }

    /// The kernel for a call with `m` rows: AMX from [`AMX_MIN_ROWS`] rows, where its tiles are
    /// full enough to pay for their loads and stores; below, VNNI (`cargo bench --bench
    /// q8_0_matmul` compares them).
    pub fn for_rows(m: usize) -> Self {
        match Self::detect() {
            Kernel::Amx if m < AMX_MIN_ROWS && Kernel::Vnni.available() => Kernel::Vnni,
            kernel => kernel,
        }
    }

    /// Whether this kernel can run here (from [`cpu::features`]), so that callers never ask
    /// [`matmul_with`] for code the CPU lacks.
    pub fn available(self) -> bool {
        let f = cpu::features();
        match self {
            Kernel::Amx => f.amx_int8,
            Kernel::Vnni => f.avx512_vnni(),
            Kernel::Portable => true,
        }
    }

    /// Name for logs and benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Amx => "amx",
            Kernel::Vnni => "avx512-vnni",
            Kernel::Portable => "portable",
        }
    }
}

/// Runs `f(i)` for every `i < n`, in parallel where the caller's pool allows (the engine passes
/// candle's CPU pool, so that these matmuls and candle's own ops share one set of threads).
pub type ParallelFor<'a> = &'a (dyn Fn(usize, &(dyn Fn(usize) + Sync)) + Sync);

/// Runs every item on the calling thread: the [`ParallelFor`] for tests, benchmarks of one
/// thread, and callers without a pool.
pub fn serial(n: usize, f: &(dyn Fn(usize) + Sync)) {
    (0..n).for_each(f)
}

/// `y (m × n) = x (m × k) · Wᵀ` with the fastest kernel here for `m` rows ([`Kernel::for_rows`]).
pub fn matmul(x: &[f32], m: usize, w: &Q8Tiles, par: ParallelFor<'_>) -> Vec<f32> {
    matmul_with(Kernel::for_rows(m), x, m, w, par)
}

/// [`matmul`] with a chosen kernel (for tests and benchmarks that compare them); work items (a
/// run of tiles for all rows) go to `par`.
///
/// # Panics
/// If `kernel` is not [`Kernel::available`] here, or `x` is not `m × k`.
pub fn matmul_with(
    kernel: Kernel,
    x: &[f32],
    m: usize,
    w: &Q8Tiles,
    par: ParallelFor<'_>,
) -> Vec<f32> {
    assert_eq!(x.len(), m * w.k, "x must be m × k");
    assert!(
        kernel.available(),
        "int8 kernel {} unavailable",
        kernel.name()
    );
    let mut y = vec![0f32; m * w.n];
    if m == 0 || w.n == 0 {
        return y;
    }
    let a = Q8Blocks::quantize(x, w.k);
    // Items of several tiles (a few per thread keep the threads balanced), tile-major within an
    // item so that a tile stays in cache for all its row groups.
    let tiles = w.tiles();
    let tiles_per_item = tiles.div_ceil(16).clamp(1, 64);
    let items = tiles.div_ceil(tiles_per_item);
    let out = SharedOut::new(&mut y);
    par(items, &|item| {
        let t0 = item * tiles_per_item;
        let item_tiles = t0..(t0 + tiles_per_item).min(tiles);
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AMX (with AVX-512) is available (asserted above); the tiles exist.
            Kernel::Amx => unsafe { amx::item(&a, m, w, item_tiles, &out) },
            _ => {
                for t in item_tiles {
                    for r0 in (0..m).step_by(VNNI_ROWS) {
                        let rows = (m - r0).min(VNNI_ROWS);
                        let mut tile = [[0f32; TILE_N]; VNNI_ROWS];
                        #[cfg(target_arch = "x86_64")]
                        if kernel == Kernel::Vnni {
                            // SAFETY: VNNI is available (asserted); r0 + rows <= m, t < tiles.
                            unsafe { avx512::tile(&a, r0, rows, w, t, &mut tile) };
                        } else {
                            portable::tile(&a, r0, rows, w, t, &mut tile);
                        }
                        #[cfg(not(target_arch = "x86_64"))]
                        portable::tile(&a, r0, rows, w, t, &mut tile);
                        // SAFETY: this item alone writes tile `t`, rows r0..r0 + rows.
                        unsafe { out.write_tile(w, r0, t, &tile[..rows]) };
                    }
                }
            }
        }
    });
    y
}

/// The arithmetic of [`matmul`] in plain code, from the f32 weights (`n × k`): what every path
/// must equal bit for bit, and what the tests compare them with.
pub fn matmul_reference(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
    let nb = k / BLOCK;
    let a = Q8Blocks::quantize_portable(x, k);
    let q = Q8Blocks::quantize_portable(w, k);
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        for c in 0..n {
            let mut acc = 0f32;
            for b in 0..nb {
                let s: i32 = (0..BLOCK)
                    .map(|j| {
                        q.qs[c * k + b * BLOCK + j] as i32 * a.qs[r * k + b * BLOCK + j] as i32
                    })
                    .sum();
                let dw = half::f16::from_f32(q.d[c * nb + b]).to_f32();
                acc = (s as f32).mul_add(dw * a.d[r * nb + b], acc);
            }
            y[r * n + c] = acc;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::values;
    use proptest::prelude::*;

    fn rayon_for(n: usize, f: &(dyn Fn(usize) + Sync)) {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(f)
    }

    #[test]
    fn product_is_close_to_f32() {
        let (m, k, n) = (3, 192, 21);
        let w = values(n * k, 7);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.61).sin() * 3.0).collect();
        let y = matmul(&x, m, &Q8Tiles::quantize(&w, n, k).unwrap(), &serial);
        for r in 0..m {
            for c in 0..n {
                let terms: Vec<f32> = (0..k).map(|i| x[r * k + i] * w[c * k + i]).collect();
                let exact: f32 = terms.iter().sum();
                // Rounding of both operands: at most a step (1/127 of a block max) per term.
                let bound: f32 = terms.iter().map(|t| t.abs()).sum::<f32>() / 100.0 + 1e-5;
                assert!(
                    (y[r * n + c] - exact).abs() <= bound,
                    "{} vs {exact}",
                    y[r * n + c]
                );
            }
        }
    }

    #[test]
    fn quantizers_agree_and_zero_blocks_stay_zero() {
        let mut x: Vec<f32> = (0..4 * 128)
            .map(|i| (i as f32 * 0.37).cos() * 9.0)
            .collect();
        x[128..192].fill(0.0);
        // Exact ties at ±0.5 steps: 127 / 2 = 63.5 rounds to 64 (even), 62.5 to 62.
        x[256] = 127.0;
        x[257] = 63.5;
        x[258] = 62.5;
        x[259] = -62.5;
        let fast = Q8Blocks::quantize(&x, 128);
        let slow = Q8Blocks::quantize_portable(&x, 128);
        assert_eq!(fast, slow);
        assert!(fast.qs[128..192].iter().all(|&q| q == 0) && fast.d[2] == 0.0);
        assert_eq!(&fast.qs[256..260], &[127, 64, 62, -62]);
    }

    #[test]
    fn the_kernel_for_any_row_count_runs_here() {
        for m in [0, 1, AMX_MIN_ROWS - 1, AMX_MIN_ROWS, 16, 640] {
            let kernel = Kernel::for_rows(m);
            assert!(kernel.available(), "{m} rows: {}", kernel.name());
            if m >= AMX_MIN_ROWS {
                assert_eq!(kernel, Kernel::detect());
            }
        }
    }

    #[test]
    fn rejects_widths_that_are_not_whole_blocks() {
        assert!(Q8Tiles::quantize(&[0.0; 96], 1, 96).is_none());
        assert!(Q8Tiles::quantize(&[0.0; 64], 2, 64).is_none());
        assert!(Q8Tiles::quantize(&[], 0, 0).is_none());
        assert!(Q8Tiles::quantize(&[0.0; 128], 2, 64).is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Every kernel this CPU has, and the reference, give the same bits whatever the pool,
        /// and a row's result does not depend on the other rows of the call (m up to 35: AMX's
        /// full 16-row groups and a remainder).
        #[test]
        fn kernels_agree_and_rows_are_independent(
            m in 1usize..=35, kb in 1usize..=4, n in 1usize..=70, seed in 0u32..1000,
            x in proptest::collection::vec(-4.0f32..4.0, 35 * 4 * 64),
        ) {
            let k = kb * BLOCK;
            let w = values(n * k, seed);
            let tiles = Q8Tiles::quantize(&w, n, k).unwrap();
            let x = &x[..m * k];
            let want = matmul_reference(x, m, &w, n, k);
            for kernel in [Kernel::Amx, Kernel::Vnni, Kernel::Portable] {
                if !kernel.available() {
                    continue;
                }
                let got = matmul_with(kernel, x, m, &tiles, &rayon_for);
                prop_assert_eq!(&got, &want, "{}", kernel.name());
                let last = matmul_with(kernel, &x[(m - 1) * k..], 1, &tiles, &serial);
                prop_assert_eq!(&last[..], &want[(m - 1) * n..], "{}", kernel.name());
            }
        }
    }
}

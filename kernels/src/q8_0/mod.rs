//! GGML's Q8_0 matmul for many rows at once: `y = x Wᵀ` with `W` in Q8_0 blocks (32 int8 values
//! and one f16 scale) and `x` quantized to Q8_0 per row at call time.
//!
//! candle computes this one (row, column) dot product at a time, converting both f16 scales of
//! every block each time; decoding 16 sequences then costs 16 passes over the weights. Here a
//! tile of 4 rows × 2 columns shares each weight block and scale, with the same arithmetic as
//! candle's AVX2 `vec_dot_q8_0_q8_0`: exact int32 sums of 4 products per lane (8 lanes per block),
//! `acc = fma(d_w · d_x, lane, acc)` across blocks, and the same final horizontal sum. So every
//! output equals candle's bit for bit (tested in the engine), and does not depend on which other
//! rows share the call.
//!
//! Files, imports one way: `blocks.rs` (the operands) imports neither of the others; `avx2.rs`
//! reads it; this module holds the scalar path, picks the path and calls them.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod blocks;

pub use blocks::{Q8_0Weights, BLOCK_BYTES, QK8_0};

use blocks::{quantize_rows, Q8Rows};

/// The lane sums candle's AVX2 kernel forms: lane `l` of a block holds Σ of products `4l..4l+4`.
#[inline]
fn lane_sums(a: &[i8], w: &[i8]) -> [i32; 8] {
    let mut lanes = [0i32; 8];
    for (l, lane) in lanes.iter_mut().enumerate() {
        for i in 4 * l..4 * l + 4 {
            *lane += a[i] as i32 * w[i] as i32;
        }
    }
    lanes
}

/// candle's `hsum_float_8`: (x0+x4 + x2+x6) + (x1+x5 + x3+x7), in that order.
#[inline]
fn hsum8(x: [f32; 8]) -> f32 {
    let r = [x[4] + x[0], x[5] + x[1], x[6] + x[2], x[7] + x[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// Which code runs the tiles: chosen at run time ([`Q8Path::detect`]) so that one binary uses
/// AVX2 where the CPU has it; both give the same bits, so tests can compare them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q8Path {
    /// AVX2 + FMA.
    Avx2,
    /// Portable code with the same arithmetic.
    Scalar,
}

impl Q8Path {
    /// The best path this CPU runs (from [`crate::cpu::features`]).
    pub fn detect() -> Self {
        let f = crate::cpu::features();
        if f.avx2 && f.fma {
            Q8Path::Avx2
        } else {
            Q8Path::Scalar
        }
    }
}

/// `y (m × n) = x (m × k) · Wᵀ` with candle's Q8_0 arithmetic (so the same bits), for many rows
/// at once; columns split into `threads` parts on rayon's pool.
pub fn matmul_q8_0(x: &[f32], m: usize, w: &Q8_0Weights, path: Q8Path, threads: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * w.k, "x must be m × k");
    let mut y = vec![0f32; m * w.n];
    if m == 0 || w.n == 0 {
        return y;
    }
    let a = quantize_rows(x, w.k);
    // Columns in parts of an even size (the kernel pairs columns).
    let parts = threads.clamp(1, w.n.div_ceil(2));
    let per_part = w.n.div_ceil(parts).div_ceil(2) * 2;
    let compute = |c0: usize| -> Vec<f32> {
        let c1 = (c0 + per_part).min(w.n);
        let mut out = vec![0f32; m * (c1 - c0)];
        run_columns(&a, m, w, c0..c1, &mut out, path);
        out
    };
    let starts: Vec<usize> = (0..w.n).step_by(per_part).collect();
    let results: Vec<Vec<f32>> = if starts.len() == 1 {
        vec![compute(0)]
    } else {
        use rayon::prelude::*;
        starts.par_iter().map(|&c0| compute(c0)).collect()
    };
    for (&c0, part) in starts.iter().zip(&results) {
        let cols = part.len() / m;
        for r in 0..m {
            y[r * w.n + c0..r * w.n + c0 + cols].copy_from_slice(&part[r * cols..(r + 1) * cols]);
        }
    }
    y
}

/// Columns `cols` of the product into `out` (`m × cols.len()`, row-major).
fn run_columns(
    a: &Q8Rows,
    m: usize,
    w: &Q8_0Weights,
    cols: std::ops::Range<usize>,
    out: &mut [f32],
    path: Q8Path,
) {
    let width = cols.len();
    let mut c = cols.start;
    while c < cols.end {
        let nc = (cols.end - c).min(2);
        let mut r = 0;
        while r < m {
            let nr = (m - r).min(4);
            let mut tile = [[0f32; 2]; 4];
            match path {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Q8Path::Avx2` is only chosen when the CPU has AVX2 and FMA.
                Q8Path::Avx2 => unsafe { avx2::tile(a, r, nr, w, c, nc, &mut tile) },
                _ => tile_scalar(a, r, nr, w, c, nc, &mut tile),
            }
            for (i, row) in tile.iter().enumerate().take(nr) {
                for (j, v) in row.iter().enumerate().take(nc) {
                    out[(r + i) * width + (c - cols.start) + j] = *v;
                }
            }
            r += nr;
        }
        c += nc;
    }
}

#[allow(clippy::needless_range_loop)] // (row, column) indices address both operands
fn tile_scalar(
    a: &Q8Rows,
    r0: usize,
    nr: usize,
    w: &Q8_0Weights,
    c0: usize,
    nc: usize,
    tile: &mut [[f32; 2]; 4],
) {
    let (k, nb) = (w.k, w.k / QK8_0);
    for i in 0..nr {
        for j in 0..nc {
            let (row, col) = (r0 + i, c0 + j);
            let mut acc = [0f32; 8];
            for b in 0..nb {
                let av = &a.qs[row * k + b * QK8_0..row * k + (b + 1) * QK8_0];
                let wv = &w.qs[col * k + b * QK8_0..col * k + (b + 1) * QK8_0];
                let d = w.d[col * nb + b] * a.d[row * nb + b];
                for (acc, lane) in acc.iter_mut().zip(lane_sums(av, wv)) {
                    *acc = d.mul_add(lane as f32, *acc);
                }
            }
            tile[i][j] = hsum8(acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Random Q8_0 weights as GGML bytes.
    fn weights(n: usize, k: usize, seed: u64) -> Q8_0Weights {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            (s >> 33) as u32
        };
        let mut raw = Vec::new();
        for _ in 0..n * k / QK8_0 {
            let d = half::f16::from_f32((next() % 1000) as f32 / 1e5);
            raw.extend_from_slice(&d.to_le_bytes());
            for _ in 0..QK8_0 {
                raw.push(((next() % 255) as i32 - 127) as i8 as u8);
            }
        }
        Q8_0Weights::from_ggml_blocks(&raw, n, k).unwrap()
    }

    #[test]
    fn stacked_weights_give_the_parts_outputs_side_by_side() {
        let (a, b) = (weights(3, 64, 1), weights(5, 64, 2));
        let x: Vec<f32> = (0..2 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        let both = matmul_q8_0(
            &x,
            2,
            &Q8_0Weights::stack(&[&a, &b]).unwrap(),
            Q8Path::detect(),
            2,
        );
        let ya = matmul_q8_0(&x, 2, &a, Q8Path::detect(), 1);
        let yb = matmul_q8_0(&x, 2, &b, Q8Path::detect(), 1);
        for r in 0..2 {
            assert_eq!(&both[r * 8..r * 8 + 3], &ya[r * 3..r * 3 + 3]);
            assert_eq!(&both[r * 8 + 3..r * 8 + 8], &yb[r * 5..r * 5 + 5]);
        }
        assert!(Q8_0Weights::stack(&[&a, &weights(1, 32, 3)]).is_none());
    }

    #[test]
    fn rejects_mismatched_sizes() {
        assert!(Q8_0Weights::from_ggml_blocks(&[0u8; 34], 1, 64).is_none());
        assert!(Q8_0Weights::from_ggml_blocks(&[0u8; 34], 1, 33).is_none());
        assert!(Q8_0Weights::from_ggml_blocks(&[0u8; 34], 1, 32).is_some());
    }

    #[test]
    fn product_is_close_to_f32() {
        let (m, k, n) = (3, 64, 5);
        let w = weights(n, k, 1);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0)
            .collect();
        let y = matmul_q8_0(&x, m, &w, Q8Path::Scalar, 1);
        for r in 0..m {
            for c in 0..n {
                let terms: Vec<f32> = (0..k)
                    .map(|i| x[r * k + i] * w.qs[c * k + i] as f32 * w.d[c * 2 + i / 32])
                    .collect();
                let exact: f32 = terms.iter().sum();
                // Activation rounding: at most half a step (1/254 of the block max) per term.
                let bound: f32 = terms.iter().map(|t| t.abs()).sum::<f32>() / 127.0 + 1e-6;
                assert!(
                    (y[r * n + c] - exact).abs() <= bound,
                    "{} vs {exact} (bound {bound})",
                    y[r * n + c]
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Every path and thread split gives the same bits, and a row's result does not depend on
        /// the other rows of the call.
        #[test]
        fn paths_agree_and_rows_are_independent(
            m in 1usize..=11, kb in 1usize..=6, n in 1usize..=9, threads in 1usize..=3, seed in 0u64..1000,
            x in proptest::collection::vec(-4.0f32..4.0, 11 * 6 * 32),
        ) {
            let k = kb * QK8_0;
            let w = weights(n, k, seed);
            let x = &x[..m * k];
            let want = matmul_q8_0(x, m, &w, Q8Path::Scalar, 1);
            let got = matmul_q8_0(x, m, &w, Q8Path::detect(), threads);
            prop_assert_eq!(&got, &want);
            let last = matmul_q8_0(&x[(m - 1) * k..], 1, &w, Q8Path::detect(), 1);
            prop_assert_eq!(&last[..], &want[(m - 1) * n..]);
        }
    }
}

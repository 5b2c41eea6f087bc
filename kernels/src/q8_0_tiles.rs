//! Q8_0 matmul for decoders on AVX-512 VNNI: `y = x Wᵀ` with `W` in Q8_0 blocks (32 int8 and one
//! f16 scale) packed into tiles of 16 output columns, and `x` quantized per row in blocks of 32.
//!
//! Why not candle's repacked Q8_0 kernel: it quantizes activations in blocks of 256 (so inputs of
//! 576 must be zero-padded to 768: a third more work), it shares each weight tile among at most 4
//! rows (decoding 16 sequences reads the weights 4 times), and its activation quantizer is
//! scalar. Here any K that is a multiple of 32 runs as is, each weight tile serves up to 8 rows
//! per load, and activations are quantized with AVX-512.
//!
//! The arithmetic, which [`matmul_reference`] states in plain code and every path reproduces bit
//! for bit: per block `b` of 32, activations `q = round_half_even(x / d_x)` with
//! `d_x = max|x| / 127`; the block's exact integer dot product `s_b = Σ q · w`; and per output
//! `y = Σ_b fma(s_b, d_w · d_x, ·)` in block order, starting from 0. Each row's outputs are
//! independent of the other rows of the call (tested), so batching never changes a sequence's
//! tokens.

use crate::q8_0::{Q8_0Weights, QK8_0};

/// Output columns per tile: one AVX-512 register of i32/f32 lanes.
pub const TILE_N: usize = 16;
/// Rows that share one pass over a weight tile.
const MAX_ROWS: usize = 8;
/// Bytes of one tile's block: 8 groups of 4 k-values × 16 columns.
const TILE_BLOCK: usize = QK8_0 * TILE_N;

/// Q8_0 weights repacked for [`matmul`]: per tile of 16 columns and block of 32 k-values, the
/// values as `w + 128` (u8, so that VNNI's unsigned×signed product applies), grouped by 4
/// k-values so that one register holds 4 values of all 16 columns, and the 16 f16 scales.
#[derive(Debug, Clone)]
pub struct Q8_0Tiles {
    /// Output channels.
    pub n: usize,
    /// Inner dimension (a multiple of 32).
    pub k: usize,
    /// `tiles × blocks × 512` bytes: byte `(g·16 + c)·4 + i` of a tile block is
    /// `w[16t + c][32b + 4g + i] + 128` (padding columns past `n` hold weights of 0).
    qs: Vec<u8>,
    /// `tiles × blocks × 16` f16 scales (0 for padding columns).
    d: Vec<half::f16>,
}

impl Q8_0Tiles {
    /// Repacks `w` (any number of columns; the last tile is padded with zero weights).
    pub fn pack(w: &Q8_0Weights) -> Self {
        let (n, k) = (w.n, w.k);
        let nb = k / QK8_0;
        let tiles = n.div_ceil(TILE_N);
        let mut qs = vec![128u8; tiles * nb * TILE_BLOCK];
        let mut d = vec![half::f16::ZERO; tiles * nb * TILE_N];
        for col in 0..n {
            let (t, c) = (col / TILE_N, col % TILE_N);
            for b in 0..nb {
                let block = &w.qs()[col * k + b * QK8_0..col * k + (b + 1) * QK8_0];
                let base = (t * nb + b) * TILE_BLOCK;
                for (j, &v) in block.iter().enumerate() {
                    let (g, i) = (j / 4, j % 4);
                    qs[base + (g * TILE_N + c) * 4 + i] = (v as i16 + 128) as u8;
                }
                d[(t * nb + b) * TILE_N + c] = half::f16::from_f32(w.scales()[col * nb + b]);
            }
        }
        Self { n, k, qs, d }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.qs.len() + 2 * self.d.len()
    }

    fn tiles(&self) -> usize {
        self.n.div_ceil(TILE_N)
    }
}

/// Activations of `m` rows quantized in blocks of 32: values, scales, and `128 · Σ q` per block
/// (what the `+128` of the weights adds to each block's dot product).
#[derive(Debug, Clone, PartialEq)]
pub struct Q8Blocks {
    qs: Vec<i8>,
    d: Vec<f32>,
    offsets: Vec<i32>,
    k: usize,
}

impl Q8Blocks {
    /// Quantizes `x` (`m × k`, `k` a multiple of 32), with AVX-512 where the CPU has it (same
    /// bits as the portable code).
    pub fn quantize(x: &[f32], k: usize) -> Self {
        let blocks = x.len() / QK8_0;
        let mut out = Self {
            qs: vec![0; x.len()],
            d: vec![0.0; blocks],
            offsets: vec![0; blocks],
            k,
        };
        #[cfg(target_arch = "x86_64")]
        if avx512_available() {
            // SAFETY: the CPU has AVX-512F/BW (checked); the buffers hold `blocks` blocks.
            unsafe { avx512::quantize(x, &mut out) };
            return out;
        }
        quantize_portable(x, &mut out);
        out
    }
}

fn quantize_portable(x: &[f32], out: &mut Q8Blocks) {
    for (b, block) in x.chunks_exact(QK8_0).enumerate() {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in out.qs[b * QK8_0..(b + 1) * QK8_0].iter_mut().zip(block) {
            *q = (v * id).clamp(-127.0, 127.0).round_ties_even() as i8;
            sum += *q as i32;
        }
        out.d[b] = d;
        out.offsets[b] = 128 * sum;
    }
}

/// Whether [`matmul`] runs its AVX-512 VNNI code on this CPU (else the portable code, which is
/// slow: callers should prefer another kernel there).
pub fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512_available() && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512_available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

/// Runs `f(i)` for every `i < n`, in parallel where the caller's pool allows (the engine passes
/// candle's CPU pool, so that these matmuls and candle's own ops share one set of threads).
pub type ParallelFor<'a> = &'a (dyn Fn(usize, &(dyn Fn(usize) + Sync)) + Sync);

/// Runs every item on the calling thread.
pub fn serial(n: usize, f: &(dyn Fn(usize) + Sync)) {
    (0..n).for_each(f)
}

/// `y (m × n) = x (m × k) · Wᵀ`; work items (a group of up to 8 rows × a run of tiles) go to
/// `par`.
pub fn matmul(x: &[f32], m: usize, w: &Q8_0Tiles, par: ParallelFor<'_>) -> Vec<f32> {
    assert_eq!(x.len(), m * w.k, "x must be m × k");
    let mut y = vec![0f32; m * w.n];
    if m == 0 || w.n == 0 {
        return y;
    }
    let a = Q8Blocks::quantize(x, w.k);
    let vnni = vnni_available();
    let row_groups = m.div_ceil(MAX_ROWS);
    // Items of several tiles (a few per thread and row group keep the threads balanced),
    // tile-major within an item so that a tile stays in cache for all its row groups.
    let tiles = w.tiles();
    let tiles_per_item = tiles.div_ceil(16).clamp(1, 64);
    let items = tiles.div_ceil(tiles_per_item);
    let out = SharedOut(y.as_mut_ptr(), y.len());
    par(items, &|item| {
        let t0 = item * tiles_per_item;
        for t in t0..(t0 + tiles_per_item).min(tiles) {
            for g in 0..row_groups {
                let r0 = g * MAX_ROWS;
                let rows = (m - r0).min(MAX_ROWS);
                let mut tile = [[0f32; TILE_N]; MAX_ROWS];
                #[cfg(target_arch = "x86_64")]
                if vnni {
                    // SAFETY: VNNI is available (checked); r0 + rows <= m and t < tiles.
                    unsafe { avx512::tile(&a, r0, rows, w, t, &mut tile) };
                } else {
                    tile_portable(&a, r0, rows, w, t, &mut tile);
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let _ = vnni;
                    tile_portable(&a, r0, rows, w, t, &mut tile);
                }
                let cols = (w.n - t * TILE_N).min(TILE_N);
                for (i, row) in tile.iter().enumerate().take(rows) {
                    // SAFETY: (row r0 + i, columns 16t..16t + cols) is in bounds and written by
                    // this item only: items own disjoint tiles, and `y` outlives `par`.
                    unsafe { out.write((r0 + i) * w.n + t * TILE_N, &row[..cols]) };
                }
            }
        }
    });
    y
}

/// The output buffer, written by several threads at disjoint places.
struct SharedOut(*mut f32, usize);

// SAFETY: every writer writes a disjoint range (see `matmul`), and the buffer outlives them.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `at + values.len()` must be within the buffer, and no one else may touch that range.
    unsafe fn write(&self, at: usize, values: &[f32]) {
        debug_assert!(at + values.len() <= self.1);
        std::ptr::copy_nonoverlapping(values.as_ptr(), self.0.add(at), values.len());
    }
}

/// One tile for rows `r0..r0 + rows`, in portable code.
fn tile_portable(
    a: &Q8Blocks,
    r0: usize,
    rows: usize,
    w: &Q8_0Tiles,
    t: usize,
    tile: &mut [[f32; TILE_N]; MAX_ROWS],
) {
    let (k, nb) = (w.k, w.k / QK8_0);
    for (i, out) in tile.iter_mut().enumerate().take(rows) {
        let row = r0 + i;
        for (c, y) in out.iter_mut().enumerate() {
            let mut acc = 0f32;
            for b in 0..nb {
                let base = (t * nb + b) * TILE_BLOCK;
                let mut s = 0i32;
                for j in 0..QK8_0 {
                    let wv = w.qs[base + ((j / 4) * TILE_N + c) * 4 + j % 4] as i32;
                    s += wv * a.qs[row * k + b * QK8_0 + j] as i32;
                }
                s -= a.offsets[row * nb + b];
                let scale = w.d[(t * nb + b) * TILE_N + c].to_f32() * a.d[row * nb + b];
                acc = (s as f32).mul_add(scale, acc);
            }
            *y = acc;
        }
    }
}

/// The arithmetic of [`matmul`] in plain code, from the unpacked weights: what every path must
/// equal bit for bit.
pub fn matmul_reference(x: &[f32], m: usize, w: &Q8_0Weights) -> Vec<f32> {
    let (k, nb) = (w.k, w.k / QK8_0);
    let mut a = Q8Blocks {
        qs: vec![0; x.len()],
        d: vec![0.0; x.len() / QK8_0],
        offsets: vec![0; x.len() / QK8_0],
        k,
    };
    quantize_portable(x, &mut a);
    let mut y = vec![0f32; m * w.n];
    for r in 0..m {
        for c in 0..w.n {
            let mut acc = 0f32;
            for b in 0..nb {
                let s: i32 = (0..QK8_0)
                    .map(|j| {
                        w.qs()[c * k + b * QK8_0 + j] as i32 * a.qs[r * k + b * QK8_0 + j] as i32
                    })
                    .sum();
                let dw = half::f16::from_f32(w.scales()[c * nb + b]).to_f32();
                acc = (s as f32).mul_add(dw * a.d[r * nb + b], acc);
            }
            y[r * w.n + c] = acc;
        }
    }
    y
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Q8Blocks, Q8_0Tiles, MAX_ROWS, QK8_0, TILE_BLOCK, TILE_N};
    use std::arch::x86_64::*;

    /// [`super::quantize_portable`] with AVX-512: two registers per block.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX-512BW; `out` must have room for `x`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize(x: &[f32], out: &mut Q8Blocks) {
        let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
        for (b, block) in x.chunks_exact(QK8_0).enumerate() {
            let v0 = _mm512_loadu_ps(block.as_ptr());
            let v1 = _mm512_loadu_ps(block.as_ptr().add(16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            let d = amax / 127.0;
            let id = _mm512_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            // Nearest, ties to even: the default rounding of cvtps.
            let q0 =
                _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v0, id), lo), hi));
            let q1 =
                _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v1, id), lo), hi));
            let dst = out.qs.as_mut_ptr().add(b * QK8_0);
            _mm_storeu_si128(dst as *mut __m128i, _mm512_cvtsepi32_epi8(q0));
            _mm_storeu_si128(dst.add(16) as *mut __m128i, _mm512_cvtsepi32_epi8(q1));
            out.d[b] = d;
            out.offsets[b] = 128 * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        }
    }

    /// One 16-column tile for rows `r0..r0 + rows` (`rows <= 8`): each weight register (4
    /// k-values of 16 columns) is loaded once and used by every row.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW and VNNI; `r0 + rows` rows exist in `a`; `t` is a tile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile(
        a: &Q8Blocks,
        r0: usize,
        rows: usize,
        w: &Q8_0Tiles,
        t: usize,
        out: &mut [[f32; TILE_N]; MAX_ROWS],
    ) {
        match rows {
            1 => tile_rows::<1>(a, r0, w, t, out),
            2 => tile_rows::<2>(a, r0, w, t, out),
            3 => tile_rows::<3>(a, r0, w, t, out),
            4 => tile_rows::<4>(a, r0, w, t, out),
            5 => tile_rows::<5>(a, r0, w, t, out),
            6 => tile_rows::<6>(a, r0, w, t, out),
            7 => tile_rows::<7>(a, r0, w, t, out),
            _ => tile_rows::<8>(a, r0, w, t, out),
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_rows<const R: usize>(
        a: &Q8Blocks,
        r0: usize,
        w: &Q8_0Tiles,
        t: usize,
        out: &mut [[f32; TILE_N]; MAX_ROWS],
    ) {
        let (k, nb) = (a.k, a.k / QK8_0);
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let wq = w.qs.as_ptr().add((t * nb + b) * TILE_BLOCK);
            // Two chains of integer sums per row (exact, so their order is free).
            let mut s0 = [_mm512_setzero_si512(); R];
            let mut s1 = [_mm512_setzero_si512(); R];
            for g in (0..8).step_by(2) {
                let w0 = _mm512_loadu_si512(wq.add(g * 64) as *const _);
                let w1 = _mm512_loadu_si512(wq.add(g * 64 + 64) as *const _);
                for r in 0..R {
                    let ap = a.qs.as_ptr().add((r0 + r) * k + b * QK8_0 + g * 4) as *const i32;
                    s0[r] = _mm512_dpbusd_epi32(s0[r], w0, _mm512_set1_epi32(ap.read_unaligned()));
                    s1[r] = _mm512_dpbusd_epi32(
                        s1[r],
                        w1,
                        _mm512_set1_epi32(ap.add(1).read_unaligned()),
                    );
                }
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(
                w.d.as_ptr().add((t * nb + b) * TILE_N) as *const __m256i
            ));
            for r in 0..R {
                let at = (r0 + r) * nb + b;
                let s = _mm512_sub_epi32(
                    _mm512_add_epi32(s0[r], s1[r]),
                    _mm512_set1_epi32(*a.offsets.get_unchecked(at)),
                );
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*a.d.get_unchecked(at)));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[r]);
            }
        }
        for r in 0..R {
            _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
                // The whole int8 range, -128 included.
                raw.push((next() % 256) as u8);
            }
        }
        Q8_0Weights::from_ggml_blocks(&raw, n, k).unwrap()
    }

    fn rayon_for(n: usize, f: &(dyn Fn(usize) + Sync)) {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(f)
    }

    #[test]
    fn product_is_close_to_f32() {
        let (m, k, n) = (3, 96, 21);
        let w = weights(n, k, 7);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.61).sin() * 3.0).collect();
        let y = matmul(&x, m, &Q8_0Tiles::pack(&w), &serial);
        for r in 0..m {
            for c in 0..n {
                let terms: Vec<f32> = (0..k)
                    .map(|i| {
                        let dw = half::f16::from_f32(w.scales()[c * 3 + i / 32]).to_f32();
                        x[r * k + i] * w.qs()[c * k + i] as f32 * dw
                    })
                    .collect();
                let exact: f32 = terms.iter().sum();
                // Activation rounding: at most half a step (1/254 of the block max) per term.
                let bound: f32 = terms.iter().map(|t| t.abs()).sum::<f32>() / 127.0 + 1e-5;
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
        let mut x: Vec<f32> = (0..4 * 64).map(|i| (i as f32 * 0.37).cos() * 9.0).collect();
        x[64..96].fill(0.0);
        // Exact ties at ±0.5 steps: 127 / 2 = 63.5 rounds to 64 (even), 62.5 to 62.
        x[128] = 127.0;
        x[129] = 63.5;
        x[130] = 62.5;
        x[131] = -62.5;
        let fast = Q8Blocks::quantize(&x, 64);
        let mut slow = fast.clone();
        quantize_portable(&x, &mut slow);
        assert_eq!(fast, slow);
        assert!(fast.qs[64..96].iter().all(|&q| q == 0) && fast.d[2] == 0.0);
        assert_eq!(&fast.qs[128..132], &[127, 64, 62, -62]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// The fast path, the portable path and the reference give the same bits, whatever the
        /// pool, and a row's result does not depend on the other rows of the call.
        #[test]
        fn paths_agree_and_rows_are_independent(
            m in 1usize..=19, kb in 1usize..=6, n in 1usize..=70, seed in 0u64..1000,
            x in proptest::collection::vec(-4.0f32..4.0, 19 * 6 * 32),
        ) {
            let k = kb * QK8_0;
            let w = weights(n, k, seed);
            let tiles = Q8_0Tiles::pack(&w);
            let x = &x[..m * k];
            let want = matmul_reference(x, m, &w);
            let got = matmul(x, m, &tiles, &rayon_for);
            prop_assert_eq!(&got, &want);
            let a = Q8Blocks::quantize(x, k);
            let mut tile = [[0f32; TILE_N]; MAX_ROWS];
            tile_portable(&a, 0, m.min(MAX_ROWS), &tiles, 0, &mut tile);
            for (r, row) in tile.iter().enumerate().take(m.min(MAX_ROWS)) {
                let cols = n.min(TILE_N);
                prop_assert_eq!(&row[..cols], &want[r * n..r * n + cols]);
            }
            let last = matmul(&x[(m - 1) * k..], 1, &tiles, &serial);
            prop_assert_eq!(&last[..], &want[(m - 1) * n..]);
        }
    }
}

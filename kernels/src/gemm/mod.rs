//! Int8 GEMM with weights packed once at load: `y = x Wᵀ + b` where `W` (N × K) is quantized per
//! output channel and `x` (M × K) per row at call time.
//!
//! Packed layout: output channels in blocks of 16, K in groups of 4 (zero-padded); the 64 bytes of
//! one (block, group) hold, for each of the 16 channels, its 4 consecutive weights. That is exactly
//! the operand `vpdpbusd` wants (16 × i32 lanes of 4 bytes each), and two 32-byte halves for AVX2.
//! Every path computes the exact i32 dot products, and one shared epilogue turns them into f32, so
//! every path gives bit-identical results to the scalar path (tested).

#[cfg(target_arch = "x86_64")]
mod amx;
mod layout;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use layout::{BLOCK_N, TILE_M};

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::thread::LocalKey;

use crate::cpu;
use crate::reference::{quantize_rows, quantize_rows_into};

/// The instruction set a GEMM runs with. Chosen at run time ([`Isa::detect`]) so that one
/// binary runs the fastest code each CPU has; every path gives the same bits, so tests and
/// benchmarks may also pick one ([`Isa::available`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AMX tiles (`tdpbssd`, 16 rows × 16 channels × 64 k-values per instruction) where K is a
    /// multiple of 64; other shapes run the VNNI code.
    Amx,
    /// AVX-512 VNNI (`vpdpbusd`, u8 × s8 with the +128 offset trick).
    Avx512Vnni,
    /// AVX2 (`vpmaddubsw` on |a| × sign(a)·w, then `vpmaddwd`): no saturation since |q| ≤ 127.
    Avx2,
    /// Portable scalar code.
    Scalar,
}

impl Isa {
    /// The best instruction set this CPU supports (from [`cpu::features`]).
    pub fn detect() -> Isa {
        let f = cpu::features();
        if f.amx_int8 {
            Isa::Amx
        } else if f.avx512_vnni() {
            Isa::Avx512Vnni
        } else if f.avx2 {
            Isa::Avx2
        } else {
            Isa::Scalar
        }
    }

    /// Whether this CPU can run `self`, so that callers (tests, benchmarks, a forced setting)
    /// never ask [`linear_i8`] for code the CPU lacks.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => cfg!(target_arch = "x86_64") && Isa::detect() != Isa::Scalar,
            Isa::Avx512Vnni => cpu::features().avx512_vnni(),
            // The tile kernel falls back to VNNI for K not a multiple of 64.
            Isa::Amx => cpu::features().amx_int8 && cpu::features().avx512_vnni(),
        }
    }

    /// A short name for logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Amx => "amx-int8",
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Avx2 => "avx2",
            Isa::Scalar => "scalar",
        }
    }
}

/// Weights quantized per output channel and packed for the kernels, once at load, so that a
/// call only quantizes its activations.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    /// Output channels.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// Groups of 4 along K (K rounded up to a multiple of 4, divided by 4).
    k4: usize,
    /// Blocks of 16 output channels.
    blocks: usize,
    data: Vec<i8>,
    /// One scale per output channel (padding channels: 0).
    scales: Vec<f32>,
    /// `Σ_k w[n][k]`, for the VNNI offset correction (read by the x86-64 VNNI path only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    col_sums: Vec<i32>,
    /// `ratio` of [`quantize_with_outlier_split`](Self::quantize_with_outlier_split), if split.
    outlier_ratio: Option<f32>,
}

/// The ratio to a row's rms above which the encoder splits an activation off
/// ([`PackedWeights::quantize_with_outlier_split`]): MiniLM's outliers stand 10–25× above their
/// rows' rms and ordinary values rarely 5×; 4, 6 and 8 gave the same accuracy within 0.001.
pub const OUTLIER_RATIO: f32 = 6.0;

/// Most activations per row that [`PackedWeights::quantize_with_outlier_split`] multiplies in
/// f32 (a bound on the extra work; rows with more keep the rest in int8).
pub const MAX_OUTLIERS_PER_ROW: usize = 8;

/// One activation multiplied in f32: (row within the call's part, input channel, value).
type Outlier = (usize, usize, f32);

/// Moves the outliers of `row` (row `r` of a part) to `out` and zeroes them in `row`: values
/// with `|x| > ratio × rms(row)`, the first [`MAX_OUTLIERS_PER_ROW`] in channel order. Plain
/// code shared by every kernel, so every path splits the same values.
fn split_outliers(r: usize, row: &mut [f32], ratio: f32, out: &mut Vec<Outlier>) {
    if row.is_empty() {
        return;
    }
    // Sixteen independent partial sums (a fixed order the compiler vectorizes; a plain
    // sequential sum is one long dependency chain; `mul_add` would call libm's `fmaf` here,
    // the crate being built without FMA), and the largest magnitude in the same pass.
    let mut squares = [0f32; 16];
    let mut largest = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        for i in 0..16 {
            squares[i] += chunk[i] * chunk[i];
            largest[i] = largest[i].max(chunk[i].abs());
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        squares[i] += v * v;
        largest[i] = largest[i].max(v.abs());
    }
    let mean_square = squares.iter().sum::<f32>() / row.len() as f32;
    let limit = ratio * mean_square.sqrt();
    if largest.iter().fold(0f32, |a, &b| a.max(b)) <= limit {
        return;
    }
    let mut taken = 0;
    // Blocks of 16 tested at once (branch-free, vectorized); only a block with a hit is walked.
    for (b, block) in row.chunks_mut(16).enumerate() {
        if !block.iter().fold(false, |hit, v| hit | (v.abs() > limit)) {
            continue;
        }
        for (i, v) in block.iter_mut().enumerate() {
            if taken < MAX_OUTLIERS_PER_ROW && v.abs() > limit {
                out.push((r, b * 16 + i, *v));
                *v = 0.0;
                taken += 1;
            }
        }
    }
}

impl PackedWeights {
    /// Quantizes `w` (row-major N × K, one row per output channel) symmetrically per channel and
    /// packs it.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Self {
        let q = quantize_rows(w, n, k);
        let k4 = k.div_ceil(4);
        let blocks = n.div_ceil(BLOCK_N);
        let mut data = vec![0i8; blocks * k4 * BLOCK_N * 4];
        let mut col_sums = vec![0i32; blocks * BLOCK_N];
        let mut scales = vec![0f32; blocks * BLOCK_N];
        for ch in 0..n {
            let (nb, lane) = (ch / BLOCK_N, ch % BLOCK_N);
            for kk in 0..k {
                let v = q.values[ch * k + kk];
                let (kg, j) = (kk / 4, kk % 4);
                data[((nb * k4 + kg) * BLOCK_N + lane) * 4 + j] = v;
                col_sums[ch] += v as i32;
            }
            scales[ch] = q.scales[ch];
        }
        Self {
            n,
            k,
            k4,
            blocks,
            data,
            scales,
            col_sums,
            outlier_ratio: None,
        }
    }

    /// [`quantize`](Self::quantize), and at each call every activation far larger than the
    /// rest of its row (`|x| > ratio × rms(row)`, at most [`MAX_OUTLIERS_PER_ROW`] per row, the
    /// first in channel order) kept out of the int8 product and multiplied in f32 by the
    /// dequantized weights instead: a mixed-precision decomposition that needs no extra
    /// memory. Transformers' residual streams carry a few such channels (in MiniLM about 20×
    /// a row's rms, on [CLS] and on punctuation); left in, one of them sets the scale of its
    /// whole row and leaves the row's other values a few quantization steps, which mean pooling
    /// over a short input does not average away.
    pub fn quantize_with_outlier_split(w: &[f32], n: usize, k: usize, ratio: f32) -> Self {
        assert!(
            ratio.is_finite() && ratio > 0.0,
            "the outlier ratio must be positive"
        );
        let mut packed = Self::quantize(w, n, k);
        packed.outlier_ratio = Some(ratio);
        packed
    }

    /// The weight of input channel `ch` for output channel `c` as the int8 part sees it
    /// (`q × scale`, one rounding), which the outliers are multiplied by.
    fn dequantized(&self, ch: usize, c: usize) -> f32 {
        let (kg, j) = (ch / 4, ch % 4);
        let (nb, lane) = (c / BLOCK_N, c % BLOCK_N);
        self.data[((nb * self.k4 + kg) * BLOCK_N + lane) * 4 + j] as f32 * self.scales[c]
    }

    /// `y[r][c] = fma(x, dequantized(ch, c), y[r][c])` for every outlier `(r, ch, x)`, in the
    /// order found, after the int8 part has written `y` (rows of `n`).
    fn add_outliers(&self, outliers: &[Outlier], y: &mut [MaybeUninit<f32>], isa: Isa) {
        let n = self.n;
        for &(r, ch, v) in outliers {
            let yr = &mut y[r * n..(r + 1) * n];
            #[cfg(target_arch = "x86_64")]
            if matches!(isa, Isa::Avx512Vnni | Isa::Amx) {
                // SAFETY: both imply AVX-512F/BW (checked by `linear_i8`); `yr` has the `n`
                // outputs of a row, all written by the int8 part.
                unsafe {
                    x86::add_outlier(
                        v,
                        &self.data,
                        self.k4,
                        ch,
                        &self.scales[..n],
                        yr.as_mut_ptr() as *mut f32,
                    )
                };
                continue;
            }
            let _ = isa;
            for (c, out) in yr.iter_mut().enumerate() {
                // SAFETY: the int8 part wrote every output of the part's rows before this runs.
                let acc = unsafe { out.assume_init() };
                out.write(v.mul_add(self.dequantized(ch, c), acc));
            }
        }
    }

    /// Bytes held (for memory reports).
    pub fn bytes(&self) -> usize {
        self.data.len() + 8 * self.scales.len()
    }
}

/// Quantizes the `m` rows of `x` into `values` (rows `kp` bytes apart, `values.len() / kp` rows,
/// a multiple of [`TILE_M`]), zeroing the padding (bytes past `k`, rows past `m`) so that a
/// reused buffer holds no stale bytes. Returns one scale per padded row.
fn quantize_activations(
    x: &[f32],
    m: usize,
    k: usize,
    kp: usize,
    isa: Isa,
    values: &mut [i8],
) -> Vec<f32> {
    let rows = values.len() / kp;
    let mut scales = vec![0f32; rows];
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Amx => {
            for r in 0..m {
                // SAFETY: VNNI availability (asserted by `linear_i8`, and part of `Amx`'s)
                // implies AVX-512F/BW.
                scales[r] = unsafe {
                    x86::quantize_row_avx512(
                        &x[r * k..(r + 1) * k],
                        &mut values[r * kp..r * kp + k],
                    )
                };
            }
        }
        _ => quantize_rows_into(x, m, k, values, kp, &mut scales),
    }
    if kp > k {
        for row in values[..m * kp].chunks_exact_mut(kp) {
            row[k..].fill(0);
        }
    }
    values[m * kp..].fill(0);
    scales
}

/// `y (M × N) = x (M × K) · Wᵀ + bias` with int8 arithmetic on `isa` (which must be available).
/// Rows are split into parts (up to four per thread) run on rayon's pool (`threads` 1 = the
/// calling thread only); each part quantizes its rows, computes their dot products and rescales
/// them.
pub fn linear_i8(
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    isa: Isa,
    threads: usize,
) -> Vec<f32> {
    assert_eq!(x.len(), m * w.k, "x must be M × K");
    assert!(isa.available(), "{isa:?} is not available on this CPU");
    if let Some(b) = bias {
        assert_eq!(b.len(), w.n, "bias must have N values");
    }
    if m == 0 || w.n == 0 {
        return vec![0f32; m * w.n];
    }
    // Every output is written below, so the vector is not zeroed first (a memset of the whole
    // output cost as much as a tenth of the call).
    let mut y = Vec::<f32>::with_capacity(m * w.n);
    let tiles = m.div_ceil(TILE_M);
    // Up to four parts per thread, so that a thread that finishes early (or a core another
    // process takes for a while) leaves its remaining parts to the others instead of stalling
    // the step; but parts of at least PART_ROWS rows, which keep the weight loads hidden, and
    // at least one part per thread.
    const PART_ROWS: usize = 24;
    let parts = (4 * threads)
        .min(m.div_ceil(PART_ROWS))
        .max(threads)
        .clamp(1, tiles);
    let rows_per_part = tiles.div_ceil(parts) * TILE_M;
    let run = |part: usize, ychunk: &mut [MaybeUninit<f32>]| {
        let r0 = part * rows_per_part;
        let rows = ychunk.len() / w.n;
        let kp = w.k4 * 4;
        let padded = rows.div_ceil(TILE_M) * TILE_M;
        with_reused(&ACTIVATIONS, padded * kp, |values| {
            let xpart = &x[r0 * w.k..(r0 + rows) * w.k];
            let mut outliers = Vec::new();
            let scales = match w.outlier_ratio {
                Some(ratio) if w.k > 0 => with_reused(&INLIERS, xpart.len(), |inliers| {
                    inliers.copy_from_slice(xpart);
                    for (r, row) in inliers.chunks_exact_mut(w.k).enumerate() {
                        split_outliers(r, row, ratio, &mut outliers);
                    }
                    quantize_activations(inliers, rows, w.k, kp, isa, values)
                }),
                _ => quantize_activations(xpart, rows, w.k, kp, isa, values),
            };
            #[cfg(target_arch = "x86_64")]
            let tiles = isa == Isa::Amx && w.k4.is_multiple_of(amx::TILE_GROUPS);
            #[cfg(not(target_arch = "x86_64"))]
            let tiles = false;
            if tiles {
                #[cfg(target_arch = "x86_64")]
                {
                    let rescale = x86::Rescale {
                        a_scales: &scales[..rows],
                        w_scales: &w.scales[..w.n],
                        bias,
                        n: w.n,
                    };
                    // SAFETY: `linear_i8` asserted that AMX is usable (which includes
                    // AVX-512F); K is whole tiles; `values` holds `padded × kp` bytes, `ychunk`
                    // the real rows.
                    unsafe {
                        amx::linear_rows_amx(
                            values, padded, kp, w.k4, w.blocks, &w.data, &rescale, ychunk,
                        )
                    };
                }
            } else {
                let np = w.blocks * BLOCK_N;
                with_reused(&ACCUMULATORS, padded * np, |acc| {
                    dot_rows(values, padded, kp, acc, w, isa);
                    epilogue(acc, np, &scales[..rows], w, bias, isa, ychunk);
                });
            }
            w.add_outliers(&outliers, ychunk, isa);
        });
    };
    let out = &mut y.spare_capacity_mut()[..m * w.n];
    if parts == 1 {
        run(0, out);
    } else {
        use rayon::prelude::*;
        out.par_chunks_mut(rows_per_part * w.n)
            .enumerate()
            .for_each(|(part, chunk)| run(part, chunk));
    }
    // SAFETY: every part wrote each of its rows' `n` outputs (all paths store every column of
    // every real row), and the parts cover all `m` rows.
    unsafe { y.set_len(m * w.n) };
    y
}

/// Reused buffers up to this many bytes stay with their thread for the next call (16 MiB).
const KEEP_BYTES: usize = 16 << 20;

thread_local! {
    /// This thread's i32 accumulators, reused across calls: every kernel stores (never adds to)
    /// each accumulator the epilogue reads, so the buffer needs no clearing, and a fresh one
    /// per call cost a zero-fill and page faults (several percent of an encoder's time).
    static ACCUMULATORS: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    /// This thread's quantized activations, reused likewise ([`quantize_activations`] writes
    /// every byte the kernels read).
    static ACTIVATIONS: RefCell<Vec<i8>> = const { RefCell::new(Vec::new()) };
    /// This thread's activations without their outliers (for
    /// [`PackedWeights::quantize_with_outlier_split`] weights), reused likewise.
    static INLIERS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` values of unspecified contents: this thread's buffer in `key`, or a fresh
/// one when it is in use or `len` is too large to keep.
fn with_reused<T: Copy + Default, R>(
    key: &'static LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    if len * std::mem::size_of::<T>() <= KEEP_BYTES {
        let kept = key.with(|cell| {
            let mut buf = cell.try_borrow_mut().ok()?;
            if buf.len() < len {
                buf.resize(len, T::default());
            }
            Some(std::mem::take(&mut *buf))
        });
        if let Some(mut buf) = kept {
            let out = f(&mut buf[..len]);
            key.with(|cell| {
                if let Ok(mut slot) = cell.try_borrow_mut() {
                    *slot = buf;
                }
            });
            return out;
        }
    }
    f(&mut vec![T::default(); len])
}

/// The one float step every path shares: `acc × scale_a × scale_w + bias`, row by row (with
/// AVX-512 where `isa` implies it, same bits).
fn epilogue(
    acc: &[i32],
    np: usize,
    a_scales: &[f32],
    w: &PackedWeights,
    bias: Option<&[f32]>,
    isa: Isa,
    y: &mut [MaybeUninit<f32>],
) {
    let n = w.n;
    let w_scales = &w.scales[..n];
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512Vnni | Isa::Amx) {
        let rescale = x86::Rescale {
            a_scales,
            w_scales,
            bias,
            n,
        };
        for r in 0..a_scales.len() {
            // SAFETY: both ISAs imply AVX-512F (checked by `linear_i8`); the row's sums and
            // outputs both have `n` values.
            unsafe {
                x86::rescale_row(
                    &acc[r * np..r * np + n],
                    &rescale,
                    r,
                    0,
                    &mut y[r * n..(r + 1) * n],
                )
            };
        }
        return;
    }
    let _ = isa;
    for (r, &sa) in a_scales.iter().enumerate() {
        let accr = &acc[r * np..r * np + n];
        let yr = &mut y[r * n..(r + 1) * n];
        match bias {
            Some(b) => {
                for (((out, &a), &sw), &bb) in yr.iter_mut().zip(accr).zip(w_scales).zip(b) {
                    out.write(a as f32 * sa * sw + bb);
                }
            }
            None => {
                for ((out, &a), &sw) in yr.iter_mut().zip(accr).zip(w_scales) {
                    out.write(a as f32 * sa * sw + 0.0);
                }
            }
        }
    }
}

/// Exact `Σ_k q_a[r][k] · q_w[c][k]` for every (padded) row of `a`.
fn dot_rows(values: &[i8], rows: usize, kp: usize, out: &mut [i32], w: &PackedWeights, isa: Isa) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `linear_i8` asserted that the CPU supports the ISA (`Amx`, whose tile kernel
        // runs before this for K of whole tiles, implies VNNI).
        Isa::Avx512Vnni | Isa::Amx => unsafe {
            x86::dot_rows_vnni(values, rows, kp, w.k4, w.blocks, &w.data, &w.col_sums, out)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::dot_rows_avx2(values, rows, kp, w.k4, w.blocks, &w.data, out) },
        _ => dot_rows_scalar(values, rows, kp, w, out),
    }
}

fn dot_rows_scalar(values: &[i8], rows: usize, kp: usize, w: &PackedWeights, out: &mut [i32]) {
    let np = w.blocks * BLOCK_N;
    for r in 0..rows {
        let arow = &values[r * kp..(r + 1) * kp];
        for nb in 0..w.blocks {
            for lane in 0..BLOCK_N {
                let mut acc = 0i32;
                for kg in 0..w.k4 {
                    let base = ((nb * w.k4 + kg) * BLOCK_N + lane) * 4;
                    for j in 0..4 {
                        acc += arow[kg * 4 + j] as i32 * w.data[base + j] as i32;
                    }
                }
                out[r * np + nb * BLOCK_N + lane] = acc;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::gemm_i8_reference;

    use crate::test_data::values as data;

    #[test]
    fn scalar_packed_path_equals_the_unpacked_reference() {
        let (m, k, n) = (5, 37, 19);
        let x = data(m * k, 1);
        let w = data(n * k, 2);
        let bias = data(n, 3);
        let packed = PackedWeights::quantize(&w, n, k);
        let got = linear_i8(&x, m, &packed, Some(&bias), Isa::Scalar, 1);
        let want = gemm_i8_reference(
            &quantize_rows(&x, m, k),
            &quantize_rows(&w, n, k),
            Some(&bias),
        );
        assert_eq!(got, want);
    }

    #[test]
    fn every_available_path_equals_scalar_bit_for_bit() {
        for (m, k, n, threads) in [
            (1, 4, 16, 1),
            (3, 5, 7, 2),
            (9, 384, 40, 2),
            (17, 1536, 33, 3),
            (64, 384, 1536, 2),
            // AMX: one and two activation tiles, partial ones, a lone last block, K of 1536.
            (4, 64, 16, 1),
            (16, 128, 48, 1),
            (20, 384, 40, 1),
            (36, 1536, 64, 2),
            (100, 384, 384, 2),
        ] {
            let x = data(m * k, (m * 7 + k) as u32);
            let w = data(n * k, (n * 3 + k) as u32);
            let packed = PackedWeights::quantize(&w, n, k);
            let want = linear_i8(&x, m, &packed, None, Isa::Scalar, 1);
            for isa in [Isa::Avx2, Isa::Avx512Vnni, Isa::Amx] {
                if isa.available() {
                    assert_eq!(
                        linear_i8(&x, m, &packed, None, isa, threads),
                        want,
                        "{isa:?} {m}x{k}x{n}"
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_quantization_equals_scalar_bit_for_bit() {
        if !Isa::Avx512Vnni.available() {
            return;
        }
        for (len, seed) in [
            (1usize, 1u32),
            (15, 2),
            (16, 3),
            (17, 4),
            (384, 5),
            (1536, 6),
            (1000, 7),
        ] {
            let mut row = data(len, seed);
            // Exact ties and extremes: the rounding must agree on them too.
            if len > 3 {
                row[0] = 1.0;
                row[1] = 0.5 / 127.0;
                row[2] = -1.5 / 127.0;
            }
            let want = quantize_rows(&row, 1, len);
            let mut got = vec![0i8; len];
            // SAFETY: checked above.
            let scale = unsafe { x86::quantize_row_avx512(&row, &mut got) };
            assert_eq!(scale, want.scales[0], "len {len}");
            assert_eq!(got, want.values, "len {len}");
        }
    }

    /// Random matrices with the values that stress the arithmetic: zeros, exact rounding ties,
    /// the per-row maximum in either sign, and magnitudes from tiny to large.
    fn matrix(len: usize) -> impl proptest::strategy::Strategy<Value = Vec<f32>> {
        use proptest::prelude::*;
        let value = prop_oneof![
            6 => -1.0f32..1.0,
            1 => Just(0.0f32),
            1 => (-127i32..=127).prop_map(|q| (q as f32 + 0.5) / 127.0),
            1 => -1.0e4f32..1.0e4,
            1 => -1.0e-6f32..1.0e-6,
        ];
        proptest::collection::vec(value, len)
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// (m, k, n, threads): m and n cross the 4-row tile and 16-channel block edges, k crosses
        /// the 4-byte groups and the 64-byte AVX-512 vectors; K is often a multiple of 64 (the
        /// tile kernel's shapes) and m up to 40 (crossing its 16- and 32-row groups).
        fn shape() -> impl Strategy<Value = (usize, usize, usize, usize)> {
            let k = prop_oneof![1usize..=300, (1usize..=5).prop_map(|t| 64 * t)];
            (1usize..=40, k, 1usize..=70, 1usize..=4)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

            #[test]
            fn every_simd_path_equals_the_scalar_reference(
                ((m, k, n, threads), x, w, bias) in shape().prop_flat_map(|(m, k, n, t)| {
                    (Just((m, k, n, t)), matrix(m * k), matrix(n * k), matrix(n))
                })
            ) {
                let packed = PackedWeights::quantize(&w, n, k);
                let want = gemm_i8_reference(
                    &quantize_rows(&x, m, k),
                    &quantize_rows(&w, n, k),
                    Some(&bias),
                );
                prop_assert_eq!(&linear_i8(&x, m, &packed, Some(&bias), Isa::Scalar, 1), &want);
                for isa in [Isa::Avx2, Isa::Avx512Vnni, Isa::Amx] {
                    if isa.available() {
                        let got = linear_i8(&x, m, &packed, Some(&bias), isa, threads);
                        prop_assert_eq!(&got, &want, "{:?} {}x{}x{} threads {}", isa, m, k, n, threads);
                    }
                }
                // The outlier split, at a ratio that finds some (the values mix magnitudes
                // from 1e-6 to 1e4) and at one that hits the per-row cap.
                for ratio in [6.0, 0.5] {
                    let split = PackedWeights::quantize_with_outlier_split(&w, n, k, ratio);
                    let want = split_reference(&x, m, k, &w, n, Some(&bias), ratio);
                    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Amx] {
                        if isa.available() {
                            let got = linear_i8(&x, m, &split, Some(&bias), isa, threads);
                            prop_assert_eq!(&got, &want, "split {} {:?} {}x{}x{}", ratio, isa, m, k, n);
                        }
                    }
                }
            }

            #[cfg(target_arch = "x86_64")]
            #[test]
            fn simd_activation_quantizer_equals_the_scalar_reference(row in (1usize..=700).prop_flat_map(matrix)) {
                if Isa::Avx512Vnni.available() {
                    let want = quantize_rows(&row, 1, row.len());
                    let mut got = vec![0i8; row.len()];
                    // SAFETY: AVX-512 availability checked above.
                    let scale = unsafe { x86::quantize_row_avx512(&row, &mut got) };
                    prop_assert_eq!(scale.to_bits(), want.scales[0].to_bits());
                    prop_assert_eq!(got, want.values);
                }
            }
        }
    }

    /// The outlier split stated plainly: the reference int8 GEMM of the activations without
    /// their outliers, then each outlier times the dequantized weights, fused-added in order.
    fn split_reference(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        n: usize,
        bias: Option<&[f32]>,
        ratio: f32,
    ) -> Vec<f32> {
        let mut inliers = x.to_vec();
        let mut outliers = Vec::new();
        for r in 0..m {
            split_outliers(r, &mut inliers[r * k..(r + 1) * k], ratio, &mut outliers);
        }
        let qw = quantize_rows(w, n, k);
        let mut y = gemm_i8_reference(&quantize_rows(&inliers, m, k), &qw, bias);
        for (r, ch, v) in outliers {
            for c in 0..n {
                let deq = qw.values[c * k + ch] as f32 * qw.scales[c];
                y[r * n + c] = v.mul_add(deq, y[r * n + c]);
            }
        }
        y
    }

    #[test]
    fn outliers_leave_the_int8_product_and_the_row_keeps_its_precision() {
        let (m, k, n) = (6, 384, 40);
        let mut x = data(m * k, 31);
        // Row 1: one channel 40× the others (as MiniLM's [CLS] row); row 3: two; row 5: a row
        // of equal values (nothing stands out).
        x[k + 99] = 40.0;
        x[3 * k + 63] = -35.0;
        x[3 * k + 200] = 30.0;
        x[5 * k..6 * k].fill(0.5);
        let w = data(n * k, 32);
        let bias = data(n, 33);
        let plain = PackedWeights::quantize(&w, n, k);
        let split = PackedWeights::quantize_with_outlier_split(&w, n, k, 6.0);
        let want = split_reference(&x, m, k, &w, n, Some(&bias), 6.0);
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Amx] {
            if isa.available() {
                for threads in [1, 2] {
                    let got = linear_i8(&x, m, &split, Some(&bias), isa, threads);
                    assert_eq!(got, want, "{isa:?} threads {threads}");
                }
            }
        }
        let exact = |r: usize, c: usize| -> f32 {
            (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum::<f32>() + bias[c]
        };
        let error = |y: &[f32], r: usize| -> f32 {
            (0..n)
                .map(|c| (y[r * n + c] - exact(r, c)).abs())
                .fold(0.0, f32::max)
        };
        let unsplit = linear_i8(&x, m, &plain, Some(&bias), Isa::Scalar, 1);
        for r in [1, 3] {
            assert!(
                error(&want, r) * 4.0 < error(&unsplit, r),
                "row {r}: split error {} vs unsplit {}",
                error(&want, r),
                error(&unsplit, r)
            );
        }
        // Rows without outliers are computed exactly as without the split.
        for r in [0, 2, 4, 5] {
            assert_eq!(
                want[r * n..(r + 1) * n],
                unsplit[r * n..(r + 1) * n],
                "row {r}"
            );
        }
    }

    #[test]
    fn int8_is_close_to_f32() {
        let (m, k, n) = (8, 384, 64);
        let x = data(m * k, 11);
        let w = data(n * k, 12);
        let packed = PackedWeights::quantize(&w, n, k);
        let got = linear_i8(&x, m, &packed, None, Isa::detect(), 2);
        for r in 0..m {
            for c in 0..n {
                let exact: f32 = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum();
                assert!(
                    (got[r * n + c] - exact).abs() < 0.05 * (k as f32).sqrt() / 4.0,
                    "{} vs {exact}",
                    got[r * n + c]
                );
            }
        }
    }
}

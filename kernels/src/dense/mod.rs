//! Dense float GEMM with weights packed once at load: `y = epilogue(x Wᵀ + b)` for f32 weights
//! (AVX-512 FMA) and bf16 weights (AVX-512 BF16 `vdpbf16ps`, f32 accumulation), with the
//! encoder's bias and GELU fused into the store.
//!
//! Why our own: candle's CPU matmul (the `gemm` crate) runs its AVX2 microkernels on CPUs whose
//! AVX-512 FMAs are twice as wide, repacks the weights at every call, and synchronises its
//! threads at spinning barriers; bf16 goes through an f32 upcast. Here the weights are packed
//! once, in panels of [`PANEL`] output channels with K running down the panel, so that a tile of
//! [`TILE_ROWS`] rows × one panel keeps 24 accumulators in registers and reads each weight once
//! per tile.
//!
//! Every path computes each output the same way as the scalar reference in this module
//! (`acc = fma(x[k], w[k], acc)` for k in order from 0, then `+ bias`, then the epilogue; for bf16
//! the rounding steps of `vdpbf16ps`, emulated), so SIMD and scalar agree bit for bit (tested).

#[cfg(target_arch = "x86_64")]
mod amx;
mod bf16;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use bf16::{bf16_round, bf16_to_f32};

use crate::activation::gelu_erf;
use crate::cpu;

/// Output channels per packed panel: two AVX-512 registers of 16 f32 lanes.
pub const PANEL: usize = 32;
/// Rows computed together: 12 rows × 2 registers = 24 accumulators, which with the two weight
/// registers and a broadcast fits the 32 AVX-512 registers.
pub const TILE_ROWS: usize = 12;

/// What happens to `x Wᵀ + b` before it is stored: fused so that the activation costs no extra
/// pass over memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// Store as is.
    None,
    /// Exact (erf) GELU, with [`crate::activation::fast_erf`].
    GeluErf,
}

impl Epilogue {
    #[inline(always)]
    fn apply(self, v: f32) -> f32 {
        match self {
            Epilogue::None => v,
            Epilogue::GeluErf => gelu_erf(v),
        }
    }
}

/// The code a dense GEMM runs: chosen at run time ([`DensePath::detect_f32`],
/// [`DensePath::detect_bf16`]); both give the same bits, so tests may force either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DensePath {
    /// AVX-512F (f32) or AVX-512F + AVX-512 BF16 (bf16).
    Avx512,
    /// Portable scalar code (the reference; slow).
    Scalar,
}

impl DensePath {
    /// AVX-512 when the CPU has AVX-512F and BW, else scalar. Callers on CPUs without AVX-512
    /// should prefer another GEMM (the scalar path is the reference, not a fast path).
    pub fn detect_f32() -> DensePath {
        if cpu::features().avx512() {
            DensePath::Avx512
        } else {
            DensePath::Scalar
        }
    }

    /// AVX-512 when the CPU also has AVX-512 BF16 (`vdpbf16ps`), else scalar.
    pub fn detect_bf16() -> DensePath {
        let f = cpu::features();
        if f.avx512() && f.avx512bf16 {
            DensePath::Avx512
        } else {
            DensePath::Scalar
        }
    }

    /// A short name for logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            DensePath::Avx512 => "avx512",
            DensePath::Scalar => "scalar",
        }
    }
}

/// How a bf16 layer multiplies, chosen at run time ([`Bf16Math::detect`]) because which is
/// faster depends on the CPU, not only on its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Math {
    /// `vdpbf16ps`: activations rounded to bf16 too, two products per f32 lane and instruction.
    /// Twice the f32 FMA rate where the CPU runs it at full speed (AMD Zen 4 and later).
    DotProduct,
    /// The bf16 weights widened to f32 in registers (exact) and multiplied with f32 FMAs by f32
    /// activations: half the weight memory and traffic of f32, the FMA rate, and more accurate
    /// than [`DotProduct`](Self::DotProduct). For CPUs that run `vdpbf16ps` at half the FMA rate
    /// or less (Intel's without AMX).
    Widened,
    /// AMX-BF16 tiles (`tdpbf16ps`), activations rounded to bf16 as for
    /// [`DotProduct`](Self::DotProduct): 16 × 16 × 32 multiply-adds per instruction where the CPU
    /// has AMX (Intel Xeons from Sapphire Rapids). Layers whose K is not a multiple of 32 run the
    /// dot-product code.
    Tiles,
}

impl Bf16Math {
    /// [`Tiles`](Self::Tiles) where AMX-BF16 is usable; else the faster of the other two on this
    /// CPU, measured once per process (about a millisecond: a chain of each instruction on one
    /// core, best of three); unless [`BF16_MATH_ENV`] names one (`amx`, `dot` or `widen`).
    /// [`Widened`](Self::Widened) without AVX-512 BF16.
    pub fn detect() -> Bf16Math {
        static CHOICE: std::sync::OnceLock<Bf16Math> = std::sync::OnceLock::new();
        *CHOICE.get_or_init(|| match std::env::var(BF16_MATH_ENV).as_deref() {
            Ok("dot") if DensePath::detect_bf16() == DensePath::Avx512 => Bf16Math::DotProduct,
            Ok("widen") => Bf16Math::Widened,
            // `amx`, or nothing named: the tiles wherever they are usable.
            _ if Bf16Math::Tiles.available() => Bf16Math::Tiles,
            _ => Self::measure(),
        })
    }

    /// Whether this CPU can run `self` on the AVX-512 path (every math runs on the scalar
    /// reference path).
    pub fn available(self) -> bool {
        match self {
            Bf16Math::Widened => DensePath::detect_f32() == DensePath::Avx512,
            Bf16Math::DotProduct => DensePath::detect_bf16() == DensePath::Avx512,
            Bf16Math::Tiles => cpu::features().amx_bf16,
        }
    }

    fn measure() -> Bf16Math {
        #[cfg(target_arch = "x86_64")]
        if DensePath::detect_bf16() == DensePath::Avx512 {
            // SAFETY: AVX-512 BF16 checked above.
            let (dot, fma) = unsafe { x86::bf16_vs_fma_flops() };
            // Each dot instruction does twice the work of an FMA: it pays when it runs at more
            // than half the FMA rate, with a margin for the activations' conversion.
            if dot > 1.2 * fma {
                return Bf16Math::DotProduct;
            }
        }
        Bf16Math::Widened
    }

    /// A short name for logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Math::DotProduct => "vdpbf16ps",
            Bf16Math::Widened => "widened-to-f32",
            Bf16Math::Tiles => "amx-bf16",
        }
    }
}

/// Environment variable that forces [`Bf16Math`]: `amx`, `dot` or `widen` (for comparisons;
/// read once; a choice the CPU cannot run is ignored).
pub const BF16_MATH_ENV: &str = "WATTSERVE_BF16_MATH";

/// The weights of one layer in either element type, packed: panel `p`, K-step `s`, lane `c`
/// at `(p × steps + s) × PANEL + c` (f32: one K value per step; bf16: one pair per step, as a
/// `u32` holding `w[2s]` in its low and `w[2s+1]` in its high 16 bits).
#[derive(Debug, Clone)]
enum Panels {
    F32(Vec<f32>),
    Bf16(Vec<u32>, Bf16Math),
}

/// A layer's weights packed for [`linear_dense`], once at load.
#[derive(Debug, Clone)]
pub struct PackedDense {
    /// Output channels.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// Panels of [`PANEL`] channels.
    panels: usize,
    /// K-steps per panel: `k` (f32) or `k / 2` rounded up (bf16).
    steps: usize,
    data: Panels,
    /// Bias padded to `panels × PANEL` (zeros where there is none).
    bias: Vec<f32>,
}

impl PackedDense {
    /// Packs f32 weights `w` (row-major N × K, one row per output channel) and an optional bias.
    pub fn f32(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Self {
        assert_eq!(w.len(), n * k, "w must be N × K");
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0f32; panels * k * PANEL];
        for ch in 0..n {
            let (p, lane) = (ch / PANEL, ch % PANEL);
            for kk in 0..k {
                data[(p * k + kk) * PANEL + lane] = w[ch * k + kk];
            }
        }
        Self {
            n,
            k,
            panels,
            steps: k,
            data: Panels::F32(data),
            bias: padded_bias(bias, n, panels),
        }
    }

    /// Rounds f32 weights to bf16 (round to nearest even, as the CPU converts) and packs them
    /// in pairs along K, to be multiplied the `math` way.
    pub fn bf16(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>, math: Bf16Math) -> Self {
        assert_eq!(w.len(), n * k, "w must be N × K");
        let panels = n.div_ceil(PANEL);
        let steps = k.div_ceil(2);
        let mut data = vec![0u32; panels * steps * PANEL];
        for ch in 0..n {
            let (p, lane) = (ch / PANEL, ch % PANEL);
            let row = &w[ch * k..(ch + 1) * k];
            for s in 0..steps {
                data[(p * steps + s) * PANEL + lane] = bf16::pair(row, s);
            }
        }
        Self {
            n,
            k,
            panels,
            steps,
            data: Panels::Bf16(data, math),
            bias: padded_bias(bias, n, panels),
        }
    }

    /// How bf16 weights are multiplied (`None` for f32 weights).
    pub fn bf16_math(&self) -> Option<Bf16Math> {
        match self.data {
            Panels::F32(_) => None,
            Panels::Bf16(_, math) => Some(math),
        }
    }

    /// Bytes held (for memory reports).
    pub fn bytes(&self) -> usize {
        let data = match &self.data {
            Panels::F32(d) => 4 * d.len(),
            Panels::Bf16(d, _) => 4 * d.len(),
        };
        data + 4 * self.bias.len()
    }

    /// The f32 weights as an N × K matrix again (for tests and references).
    pub fn unpack(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.n * self.k];
        for ch in 0..self.n {
            let (p, lane) = (ch / PANEL, ch % PANEL);
            for kk in 0..self.k {
                w[ch * self.k + kk] = match &self.data {
                    Panels::F32(d) => d[(p * self.steps + kk) * PANEL + lane],
                    Panels::Bf16(d, _) => {
                        let pair = d[(p * self.steps + kk / 2) * PANEL + lane];
                        bf16_to_f32((pair >> (16 * (kk % 2))) as u16)
                    }
                };
            }
        }
        w
    }
}

fn padded_bias(bias: Option<&[f32]>, n: usize, panels: usize) -> Vec<f32> {
    let mut padded = vec![0f32; panels * PANEL];
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias must have N values");
        padded[..n].copy_from_slice(b);
    }
    padded
}

/// `y (M × N) = epilogue(x (M × K) · Wᵀ + bias)` on `path` (which must be available for the
/// weights' type), split over up to `threads` of rayon's pool (1 = the calling thread only).
/// `y` is overwritten; callers reuse it across calls.
#[allow(clippy::too_many_arguments)]
pub fn linear_dense_into(
    x: &[f32],
    m: usize,
    w: &PackedDense,
    epilogue: Epilogue,
    path: DensePath,
    threads: usize,
    y: &mut [f32],
) {
    assert_eq!(x.len(), m * w.k, "x must be M × K");
    assert_eq!(y.len(), m * w.n, "y must be M × N");
    let available = match (&w.data, path) {
        (_, DensePath::Scalar) => true,
        (Panels::F32(_), DensePath::Avx512) => DensePath::detect_f32() == DensePath::Avx512,
        (Panels::Bf16(_, math), DensePath::Avx512) => math.available(),
    };
    assert!(available, "{path:?} is not available on this CPU");
    if m == 0 || w.n == 0 {
        return;
    }
    // bf16 activations: each row rounded to bf16 pairs once, for every panel.
    let pairs: Vec<u32>;
    let a = match &w.data {
        Panels::F32(_) | Panels::Bf16(_, Bf16Math::Widened) => Rows::F32(x),
        Panels::Bf16(_, Bf16Math::DotProduct | Bf16Math::Tiles) => {
            pairs = bf16::rows_to_pairs(x, m, w.k, w.steps, path, threads);
            Rows::Bf16(&pairs)
        }
    };
    #[cfg(target_arch = "x86_64")]
    let amx_panels = match (&w.data, &a, path) {
        (Panels::Bf16(d, Bf16Math::Tiles), Rows::Bf16(pairs), DensePath::Avx512)
            if w.steps.is_multiple_of(amx::TILE_STEPS) =>
        {
            Some((d, pairs))
        }
        _ => None,
    };
    let plan = Plan::new(m, w.panels, threads);
    let out = OutPtr(y.as_mut_ptr());
    let run = |unit: usize| {
        let (rows, panels) = plan.unit(unit, m, w.panels);
        #[cfg(target_arch = "x86_64")]
        if let Some((d, pairs)) = amx_panels {
            // SAFETY: `Tiles` is available (asserted above); K-steps are whole tiles; units
            // cover disjoint rectangles of `y`, which outlives the parallel loop.
            unsafe {
                amx::rows_bf16(
                    pairs.as_ptr(),
                    w.steps,
                    rows,
                    panels,
                    d,
                    &w.bias,
                    epilogue,
                    out.0,
                    w.n,
                )
            };
            return;
        }
        // Rows split evenly over the fewest tiles (16 rows: 8 + 8, not 12 + 4), so that no
        // tile is left with too few rows to hide the weight loads.
        let tiles = (rows.end - rows.start).div_ceil(TILE_ROWS);
        let per_tile = (rows.end - rows.start).div_ceil(tiles.max(1));
        for p in panels {
            let mut r = rows.start;
            while r < rows.end {
                let take = per_tile.min(rows.end - r);
                // SAFETY: units cover disjoint (row, panel) rectangles of `y`, which outlives
                // the parallel loop; `tile` writes only inside its rectangle.
                unsafe { tile(&a, w, r, take, p, epilogue, path, out) };
                r += take;
            }
        }
    };
    if plan.units == 1 {
        run(0);
    } else {
        use rayon::prelude::*;
        (0..plan.units).into_par_iter().for_each(run);
    }
}

/// [`linear_dense_into`] into a fresh vector.
pub fn linear_dense(
    x: &[f32],
    m: usize,
    w: &PackedDense,
    epilogue: Epilogue,
    path: DensePath,
    threads: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; m * w.n];
    linear_dense_into(x, m, w, epilogue, path, threads, &mut y);
    y
}

/// The activations as a tile reads them: f32 rows of K, or bf16 pair rows of `steps`.
enum Rows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u32]),
}

/// `y`'s base pointer, shared by the units of a parallel GEMM (each writes its own rectangle).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: units write disjoint parts of `y` (see `linear_dense_into`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// How the (rows × panels) rectangle is cut into units of work: row groups of up to
/// `group_tiles` tiles, times panel chunks of `chunk` panels; enough units to keep every thread
/// busy, and chunks small enough that a chunk's weights stay in the core's L2 while its rows go by.
struct Plan {
    units: usize,
    row_groups: usize,
    group_rows: usize,
    chunk: usize,
}

impl Plan {
    fn new(m: usize, panels: usize, threads: usize) -> Self {
        const GROUP_TILES: usize = 4;
        const MAX_CHUNK: usize = 8;
        let tiles = m.div_ceil(TILE_ROWS);
        let group_rows = GROUP_TILES * TILE_ROWS;
        let row_groups = tiles.div_ceil(GROUP_TILES);
        let threads = threads.max(1);
        let chunk = if threads == 1 {
            MAX_CHUNK
        } else {
            // Aim at four units per thread; cut the panels finer only when rows are few.
            let want_chunks = (4 * threads).div_ceil(row_groups);
            panels.div_ceil(want_chunks).clamp(1, MAX_CHUNK)
        };
        let chunks = panels.div_ceil(chunk);
        Self {
            units: row_groups * chunks,
            row_groups,
            group_rows,
            chunk,
        }
    }

    /// Rows and panels of unit `u`: units run over row groups first, so neighbouring units share
    /// a chunk of weights.
    fn unit(
        &self,
        u: usize,
        m: usize,
        panels: usize,
    ) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (c, g) = (u / self.row_groups, u % self.row_groups);
        let rows = g * self.group_rows..((g + 1) * self.group_rows).min(m);
        let ps = c * self.chunk..((c + 1) * self.chunk).min(panels);
        (rows, ps)
    }
}

/// One tile: rows `r0..r0 + rows` (≤ [`TILE_ROWS`]) × panel `p`, stored with the epilogue.
///
/// # Safety
/// `out` must point at an M × N matrix no other thread writes in this rectangle; `path` must be
/// available.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    a: &Rows,
    w: &PackedDense,
    r0: usize,
    rows: usize,
    p: usize,
    epilogue: Epilogue,
    path: DensePath,
    out: OutPtr,
) {
    let cols = PANEL.min(w.n - p * PANEL);
    let bias = &w.bias[p * PANEL..(p + 1) * PANEL];
    let y = out.0.add(r0 * w.n + p * PANEL);
    match (a, &w.data, path) {
        #[cfg(target_arch = "x86_64")]
        (Rows::F32(x), Panels::F32(d), DensePath::Avx512) => x86::tile_f32(
            x.as_ptr().add(r0 * w.k),
            w.k,
            rows,
            &d[p * w.steps * PANEL..(p + 1) * w.steps * PANEL],
            bias,
            epilogue,
            y,
            w.n,
            cols,
        ),
        #[cfg(target_arch = "x86_64")]
        (Rows::F32(x), Panels::Bf16(d, _), DensePath::Avx512) => x86::tile_bf16_widened(
            x.as_ptr().add(r0 * w.k),
            w.k,
            rows,
            &d[p * w.steps * PANEL..(p + 1) * w.steps * PANEL],
            bias,
            epilogue,
            y,
            w.n,
            cols,
        ),
        #[cfg(target_arch = "x86_64")]
        (Rows::Bf16(x), Panels::Bf16(d, _), DensePath::Avx512) => x86::tile_bf16(
            x.as_ptr().add(r0 * w.steps),
            w.steps,
            rows,
            &d[p * w.steps * PANEL..(p + 1) * w.steps * PANEL],
            bias,
            epilogue,
            y,
            w.n,
            cols,
        ),
        (Rows::F32(x), Panels::F32(d), _) => {
            let panel = &d[p * w.steps * PANEL..];
            for r in 0..rows {
                let xr = &x[(r0 + r) * w.k..(r0 + r + 1) * w.k];
                for c in 0..cols {
                    let mut acc = 0f32;
                    for (kk, &xv) in xr.iter().enumerate() {
                        acc = xv.mul_add(panel[kk * PANEL + c], acc);
                    }
                    *y.add(r * w.n + c) = epilogue.apply(acc + bias[c]);
                }
            }
        }
        (Rows::F32(x), Panels::Bf16(d, _), _) => {
            let panel = &d[p * w.steps * PANEL..];
            for r in 0..rows {
                let xr = &x[(r0 + r) * w.k..(r0 + r + 1) * w.k];
                for c in 0..cols {
                    let mut acc = 0f32;
                    for (kk, &xv) in xr.iter().enumerate() {
                        let pair = panel[(kk / 2) * PANEL + c];
                        acc = xv.mul_add(bf16_to_f32((pair >> (16 * (kk % 2))) as u16), acc);
                    }
                    *y.add(r * w.n + c) = epilogue.apply(acc + bias[c]);
                }
            }
        }
        (Rows::Bf16(x), Panels::Bf16(d, _), _) => {
            let panel = &d[p * w.steps * PANEL..];
            for r in 0..rows {
                let xr = &x[(r0 + r) * w.steps..(r0 + r + 1) * w.steps];
                for c in 0..cols {
                    let mut acc = 0f32;
                    for (s, &xv) in xr.iter().enumerate() {
                        acc = bf16::dot_pair(acc, xv, panel[s * PANEL + c]);
                    }
                    *y.add(r * w.n + c) = epilogue.apply(acc + bias[c]);
                }
            }
        }
        _ => unreachable!("activations are converted to the weights' type"),
    }
}

/// The plain definition every path is tested against: `W` unpacked (N × K), f32 products
/// accumulated with `fma` in K order from 0, then `+ bias`, then the epilogue.
pub fn linear_f32_reference(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    let k = x.len().checked_div(m).unwrap_or(0);
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        for c in 0..n {
            let mut acc = 0f32;
            for kk in 0..k {
                acc = x[r * k + kk].mul_add(w[c * k + kk], acc);
            }
            y[r * n + c] = epilogue.apply(acc + bias.map_or(0.0, |b| b[c]));
        }
    }
    y
}

/// The plain definition of the [widened](Bf16Math::Widened) bf16 GEMM: `W` rounded to bf16,
/// then exactly [`linear_f32_reference`].
pub fn linear_bf16_widened_reference(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    let rounded: Vec<f32> = w.iter().map(|&v| bf16_to_f32(bf16_round(v))).collect();
    linear_f32_reference(x, m, &rounded, n, bias, epilogue)
}

/// The plain definition of the [dot-product](Bf16Math::DotProduct) bf16 GEMM: `x` and `W` rounded to bf16 ([`bf16_round`]), then
/// per pair of K values the two exact products added to the f32 accumulator one after the other
/// (odd index first) with subnormal results flushed to zero, as `vdpbf16ps` defines it; then
/// `+ bias` and the epilogue.
pub fn linear_bf16_reference(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    let k = x.len().checked_div(m).unwrap_or(0);
    let steps = k.div_ceil(2);
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        for c in 0..n {
            let mut acc = 0f32;
            for s in 0..steps {
                acc = bf16::dot_pair(
                    acc,
                    bf16::pair(&x[r * k..(r + 1) * k], s),
                    bf16::pair(&w[c * k..(c + 1) * k], s),
                );
            }
            y[r * n + c] = epilogue.apply(acc + bias.map_or(0.0, |b| b[c]));
        }
    }
    y
}

#[cfg(test)]
mod tests;

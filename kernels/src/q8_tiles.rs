//! int8 matmul for decoders on AMX or AVX-512 VNNI: `y = x Wᵀ` with `W` quantized at load in
//! blocks of 64 values per output column (one f16 scale each) and packed into tiles of 16 output
//! columns, and `x` quantized per row in blocks of 64 at call time.
//!
//! Why not candle's repacked Q8_0 kernel: it quantizes activations in blocks of 256 (so inputs of
//! 576 must be zero-padded to 768: a third more work), it shares each weight tile among at most 4
//! rows (decoding 16 sequences reads the weights 4 times), and its activation quantizer is
//! scalar. Why blocks of 64 and not Q8_0's 32: every block costs a float epilogue per row (convert
//! the exact integer sum, scale, accumulate) beside its dot products; with 64 values per block
//! there are twice the dot products per epilogue (measured on this kernel: +20–35% at 16 rows),
//! and a block is exactly one AMX tile row. Activations in blocks of 64 are still 4× finer than
//! candle's blocks of 256; weights requantized from a 4-bit GGUF lose nothing that matters (the
//! int8 step is a few percent of a 4-bit step).
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

use crate::amx;

/// Values per quantization block (weights and activations).
pub const BLOCK: usize = 64;
/// Output columns per tile: one AVX-512 register of i32/f32 lanes.
pub const TILE_N: usize = 16;
/// Rows that share one pass over a weight tile in the VNNI kernel (register budget).
const VNNI_ROWS: usize = 8;
/// Rows of one AMX tile.
const AMX_ROWS: usize = 16;
/// Fewest rows for which [`matmul`] uses AMX rather than VNNI.
pub const AMX_MIN_ROWS: usize = 12;
/// Bytes of one tile's block: 16 groups of 4 k-values × 16 columns.
const TILE_BLOCK: usize = BLOCK * TILE_N;

/// Weights quantized and packed for [`matmul`]: per tile of 16 columns and block of 64 k-values,
/// the values grouped by 4 k-values so that one register (or AMX tile row) holds 4 values of all
/// 16 columns, and the 16 f16 scales.
#[derive(Debug, Clone)]
pub struct Q8Tiles {
    /// Output channels.
    pub n: usize,
    /// Inner dimension (a multiple of 64).
    pub k: usize,
    /// `tiles × blocks × 1024` values: value `(g·16 + c)·4 + i` of a tile block is
    /// `q[16t + c][64b + 4g + i]` (padding columns past `n` hold weights of 0).
    qs: Vec<i8>,
    /// `tiles × blocks × 16` f16 scales (0 for padding columns).
    d: Vec<half::f16>,
}

impl Q8Tiles {
    /// Quantizes `w` (`n × k` row-major, one row per output column). `None` unless `k` is a
    /// positive multiple of 64 and `w` holds `n × k` values.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Option<Self> {
        if k == 0 || !k.is_multiple_of(BLOCK) || w.len() != n * k {
            return None;
        }
        let q = Q8Blocks::quantize_portable(w, k);
        let nb = k / BLOCK;
        let tiles = n.div_ceil(TILE_N);
        let mut qs = vec![0i8; tiles * nb * TILE_BLOCK];
        let mut d = vec![half::f16::ZERO; tiles * nb * TILE_N];
        for col in 0..n {
            let (t, c) = (col / TILE_N, col % TILE_N);
            for b in 0..nb {
                let block = &q.qs[col * k + b * BLOCK..col * k + (b + 1) * BLOCK];
                let base = (t * nb + b) * TILE_BLOCK;
                for (j, &v) in block.iter().enumerate() {
                    let (g, i) = (j / 4, j % 4);
                    qs[base + (g * TILE_N + c) * 4 + i] = v;
                }
                d[(t * nb + b) * TILE_N + c] = half::f16::from_f32(q.d[col * nb + b]);
            }
        }
        Some(Self { n, k, qs, d })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.qs.len() + 2 * self.d.len()
    }

    fn tiles(&self) -> usize {
        self.n.div_ceil(TILE_N)
    }
}

/// Rows quantized in blocks of 64: values, scales, and `128 · Σ q` per block (what the VNNI
/// kernel's `+128` on the weights, which makes them the unsigned operand, adds to each block's
/// dot product).
#[derive(Debug, Clone, PartialEq)]
pub struct Q8Blocks {
    qs: Vec<i8>,
    d: Vec<f32>,
    offsets: Vec<i32>,
    k: usize,
}

impl Q8Blocks {
    /// Quantizes `x` (rows of `k`, a multiple of 64), with AVX-512 where the CPU has it (same
    /// bits as the portable code).
    pub fn quantize(x: &[f32], k: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if avx512_available() {
            let mut out = Self::zeros(x.len(), k);
            // SAFETY: the CPU has AVX-512F/BW (checked); `out` has room for `x`.
            unsafe { avx512::quantize(x, &mut out) };
            return out;
        }
        Self::quantize_portable(x, k)
    }

    fn zeros(len: usize, k: usize) -> Self {
        let blocks = len / BLOCK;
        Self {
            qs: vec![0; len],
            d: vec![0.0; blocks],
            offsets: vec![0; blocks],
            k,
        }
    }

    fn quantize_portable(x: &[f32], k: usize) -> Self {
        let mut out = Self::zeros(x.len(), k);
        for (b, block) in x.chunks_exact(BLOCK).enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in out.qs[b * BLOCK..(b + 1) * BLOCK].iter_mut().zip(block) {
                *q = (v * id).clamp(-127.0, 127.0).round_ties_even() as i8;
                sum += *q as i32;
            }
            out.d[b] = d;
            out.offsets[b] = 128 * sum;
        }
        out
    }
}

/// Which code runs a [`matmul`]: every kernel gives the same bits; they differ in speed only.
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
    /// The fastest kernel this CPU and OS allow (AMX unless [`amx::DISABLE_ENV`] is set).
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
    /// q8_0_matmul` on a 2-vCPU Sapphire Rapids guest: VNNI 1.3–2× faster at 1 and 4 rows, AMX up
    /// to 1.8× faster at 16).
    pub fn for_rows(m: usize) -> Self {
        match Self::detect() {
            Kernel::Amx if m < AMX_MIN_ROWS && Kernel::Vnni.available() => Kernel::Vnni,
            kernel => kernel,
        }
    }

    /// Whether this kernel can run here.
    pub fn available(self) -> bool {
        match self {
            Kernel::Amx => amx::available(),
            Kernel::Vnni => vnni_available(),
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

/// Whether the AVX-512 VNNI kernel runs on this CPU.
fn vnni_available() -> bool {
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

/// `y (m × n) = x (m × k) · Wᵀ` with the fastest kernel here for `m` rows ([`Kernel::for_rows`]).
pub fn matmul(x: &[f32], m: usize, w: &Q8Tiles, par: ParallelFor<'_>) -> Vec<f32> {
    matmul_with(Kernel::for_rows(m), x, m, w, par)
}

/// [`matmul`] with a chosen kernel; work items (a run of tiles for all rows) go to `par`.
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
    let out = SharedOut(y.as_mut_ptr(), y.len());
    par(items, &|item| {
        let t0 = item * tiles_per_item;
        let item_tiles = t0..(t0 + tiles_per_item).min(tiles);
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AMX (with AVX-512) is available (asserted above); the tiles exist.
            Kernel::Amx => unsafe { amx_kernel::item(&a, m, w, item_tiles, &out) },
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
                            tile_portable(&a, r0, rows, w, t, &mut tile);
                        }
                        #[cfg(not(target_arch = "x86_64"))]
                        tile_portable(&a, r0, rows, w, t, &mut tile);
                        // SAFETY: this item alone writes tile `t`, rows r0..r0 + rows.
                        unsafe { out.write_tile(w, r0, t, &tile[..rows]) };
                    }
                }
            }
        }
    });
    y
}

/// The output buffer, written by several threads at disjoint places.
struct SharedOut(*mut f32, usize);

// SAFETY: every writer writes a disjoint range (see `matmul_with`), and the buffer outlives them.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Where output value `at` lives (row-major `m × n`).
    ///
    /// # Safety
    /// `at` must be within the buffer; the caller may write there only if no one else does.
    #[cfg(target_arch = "x86_64")]
    unsafe fn ptr(&self, at: usize) -> *mut f32 {
        debug_assert!(at < self.1);
        self.0.add(at)
    }

    /// Writes the rows of tile `t` (columns `16t..`, cut at `w.n`) for rows `r0..`.
    ///
    /// # Safety
    /// The rows must exist in the `m × n` output, and no one else may touch that range: items
    /// own disjoint tiles, and `y` outlives `par`.
    unsafe fn write_tile(&self, w: &Q8Tiles, r0: usize, t: usize, rows: &[[f32; TILE_N]]) {
        let cols = (w.n - t * TILE_N).min(TILE_N);
        for (i, row) in rows.iter().enumerate() {
            let at = (r0 + i) * w.n + t * TILE_N;
            debug_assert!(at + cols <= self.1);
            std::ptr::copy_nonoverlapping(row.as_ptr(), self.0.add(at), cols);
        }
    }
}

/// One tile for rows `r0..r0 + rows`, in portable code.
fn tile_portable(
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

/// The arithmetic of [`matmul`] in plain code, from the f32 weights (`n × k`): what every path
/// must equal bit for bit.
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Q8Blocks, Q8Tiles, BLOCK, TILE_BLOCK, TILE_N, VNNI_ROWS};
    use std::arch::x86_64::*;

    /// [`Q8Blocks::quantize_portable`] with AVX-512: four registers per block.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX-512BW; `out` must have room for `x`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize(x: &[f32], out: &mut Q8Blocks) {
        let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
        for (b, block) in x.chunks_exact(BLOCK).enumerate() {
            let p = block.as_ptr();
            let v = [
                _mm512_loadu_ps(p),
                _mm512_loadu_ps(p.add(16)),
                _mm512_loadu_ps(p.add(32)),
                _mm512_loadu_ps(p.add(48)),
            ];
            let m01 = _mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1]));
            let m23 = _mm512_max_ps(_mm512_abs_ps(v[2]), _mm512_abs_ps(v[3]));
            let d = _mm512_reduce_max_ps(_mm512_max_ps(m01, m23)) / 127.0;
            let id = _mm512_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            let dst = out.qs.as_mut_ptr().add(b * BLOCK);
            let mut sum = _mm512_setzero_si512();
            for (i, v) in v.iter().enumerate() {
                // Nearest, ties to even: the default rounding of cvtps.
                let scaled = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(*v, id), lo), hi);
                let q = _mm512_cvtps_epi32(scaled);
                _mm_storeu_si128(dst.add(16 * i) as *mut __m128i, _mm512_cvtsepi32_epi8(q));
                sum = _mm512_add_epi32(sum, q);
            }
            out.d[b] = d;
            out.offsets[b] = 128 * _mm512_reduce_add_epi32(sum);
        }
    }

    /// One 16-column tile for rows `r0..r0 + rows` (`rows <= 8`): each weight register (4
    /// k-values of 16 columns) is loaded once, made unsigned (`q + 128`, one XOR of the sign
    /// bits) for `vpdpbusd`, and used by every row.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW and VNNI; `r0 + rows` rows exist in `a`; `t` is a tile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile(
        a: &Q8Blocks,
        r0: usize,
        rows: usize,
        w: &Q8Tiles,
        t: usize,
        out: &mut [[f32; TILE_N]; VNNI_ROWS],
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
        w: &Q8Tiles,
        t: usize,
        out: &mut [[f32; TILE_N]; VNNI_ROWS],
    ) {
        let (k, nb) = (a.k, a.k / BLOCK);
        let mut acc = [_mm512_setzero_ps(); R];
        let sign = _mm512_set1_epi8(i8::MIN);
        for b in 0..nb {
            let wq = w.qs.as_ptr().add((t * nb + b) * TILE_BLOCK);
            // Two chains of integer sums per row, so that the dot products of one row never
            // wait on each other; the first starts at -128·Σq (the `+128` of the weights taken
            // back). Exact integers: the order is free.
            let mut s0 = [_mm512_setzero_si512(); R];
            let mut s1 = [_mm512_setzero_si512(); R];
            for (r, s) in s0.iter_mut().enumerate() {
                *s = _mm512_set1_epi32(-*a.offsets.get_unchecked((r0 + r) * nb + b));
            }
            for g in (0..BLOCK / 4).step_by(2) {
                let w0 = _mm512_xor_si512(_mm512_loadu_si512(wq.add(g * 64) as *const _), sign);
                let w1 =
                    _mm512_xor_si512(_mm512_loadu_si512(wq.add(g * 64 + 64) as *const _), sign);
                for r in 0..R {
                    let ap = a.qs.as_ptr().add((r0 + r) * k + b * BLOCK + g * 4) as *const i32;
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
                let s = _mm512_add_epi32(s0[r], s1[r]);
                let da = *a.d.get_unchecked((r0 + r) * nb + b);
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(da));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[r]);
            }
        }
        for r in 0..R {
            _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
        }
    }
}

/// The AMX kernel: per work item, its 16-row groups then the remaining rows, one tile
/// configuration each (loading one costs more than a block's product).
///
/// Two phases per group of up to 4 column tiles, so that neither waits on the other: the tile
/// unit computes every block's exact integer sums and stores them (1 KiB per tile and block, in
/// a per-thread buffer), then AVX-512 runs the float epilogue of each column tile over all its
/// blocks with the rows' accumulators in registers. (Interleaving them per block left the
/// epilogue waiting on freshly stored sums: 1.5–2× slower in `cargo bench --bench q8_0_matmul`.)
#[cfg(target_arch = "x86_64")]
mod amx_kernel {
    use super::{Q8Blocks, Q8Tiles, SharedOut, AMX_ROWS, BLOCK, TILE_BLOCK, TILE_N};
    use crate::amx::{self, TileConfig};
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
    /// AMX and AVX-512F/BW must be available; `tiles` must be tiles of `w`, `a` must hold `m`
    /// rows of `w.k`, and no one else may write these tiles of `out`.
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
            amx::release();
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
    unsafe fn products(
        a: &Q8Blocks,
        r0: usize,
        w: &Q8Tiles,
        t: usize,
        n: usize,
        sums: &mut [Sums],
    ) {
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

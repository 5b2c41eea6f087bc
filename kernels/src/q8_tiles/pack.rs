//! The operands of the tile matmul, packed: weights in tiles of 16 columns ([`Q8Tiles`], once at
//! load) and activations in blocks of 64 ([`Q8Blocks`], per call), with the portable quantizer
//! that defines their values and the shapes every kernel shares.
//!
//! A leaf: the kernels (`portable.rs`, `avx512.rs`, `amx.rs`) and the dispatcher (`mod.rs`) read
//! these types, and this module imports none of them. [`Q8Blocks::quantize`], which picks the
//! AVX-512 quantizer where the CPU has it, lives with the dispatcher for that reason.

/// Values per quantization block (weights and activations): one AMX tile row, and enough dot
/// products per float epilogue to amortize it.
pub const BLOCK: usize = 64;
/// Output columns per tile: one AVX-512 register of i32/f32 lanes.
pub const TILE_N: usize = 16;
/// Rows that share one pass over a weight tile in the VNNI kernel (register budget), and so the
/// rows of the output buffer the VNNI and portable kernels fill.
pub(super) const VNNI_ROWS: usize = 8;
/// Bytes of one tile's block: 16 groups of 4 k-values × 16 columns.
pub(super) const TILE_BLOCK: usize = BLOCK * TILE_N;

/// Weights quantized and packed for [`super::matmul`], once at load: per tile of 16 columns and
/// block of 64 k-values, the values grouped by 4 k-values so that one register (or AMX tile row)
/// holds 4 values of all 16 columns, and the 16 f16 scales.
#[derive(Debug, Clone)]
pub struct Q8Tiles {
    /// Output channels.
    pub n: usize,
    /// Inner dimension (a multiple of 64).
    pub k: usize,
    /// `tiles × blocks × 1024` values: value `(g·16 + c)·4 + i` of a tile block is
    /// `q[16t + c][64b + 4g + i]` (padding columns past `n` hold weights of 0).
    pub(super) qs: Vec<i8>,
    /// `tiles × blocks × 16` f16 scales (0 for padding columns).
    pub(super) d: Vec<half::f16>,
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

    /// Bytes held (for memory reports).
    pub fn bytes(&self) -> usize {
        self.qs.len() + 2 * self.d.len()
    }

    /// Column tiles (the last one padded to 16 columns).
    pub(super) fn tiles(&self) -> usize {
        self.n.div_ceil(TILE_N)
    }
}

/// Rows quantized in blocks of 64, as [`super::matmul`] quantizes its input once per call for
/// every kernel: values, scales, and `128 · Σ q` per block (what the VNNI kernel's `+128` on the
/// weights, which makes them the unsigned operand, adds to each block's dot product).
#[derive(Debug, Clone, PartialEq)]
pub struct Q8Blocks {
    /// The values, row-major (`rows × k`).
    pub(super) qs: Vec<i8>,
    /// One scale per block: `max|v| / 127`.
    pub(super) d: Vec<f32>,
    /// `128 · Σ q` per block.
    pub(super) offsets: Vec<i32>,
    /// Values per row.
    pub(super) k: usize,
}

impl Q8Blocks {
    /// All zeros for `len` values (rows of `k`): the buffer a quantizer fills.
    pub(super) fn zeros(len: usize, k: usize) -> Self {
        let blocks = len / BLOCK;
        Self {
            qs: vec![0; len],
            d: vec![0.0; blocks],
            offsets: vec![0; blocks],
            k,
        }
    }

    /// The quantizer in plain code: per block, `d = max|v| / 127` and
    /// `q = round_half_even(v / d)` (as `v · (1 / d)`, clamped to ±127). It defines the bits the
    /// AVX-512 quantizer must give, and packs the weights.
    pub(super) fn quantize_portable(x: &[f32], k: usize) -> Self {
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

//! The operands of the Q8_0 matmul: GGML's Q8_0 weights split into values and scales, and
//! activations quantized per row as candle quantizes them. A leaf: the kernels (`avx2.rs` and
//! the scalar code in `mod.rs`) read these, and this module imports neither.

/// Values per Q8_0 block (GGML's format, which the weights arrive in).
pub const QK8_0: usize = 32;
/// Bytes of one GGML Q8_0 block: f16 scale, then 32 int8.
pub const BLOCK_BYTES: usize = 34;

/// Q8_0 weights, `n` rows (output channels) of `k` values, split into scales and values so that
/// the kernels read the values contiguously and never convert a scale from f16 per call.
#[derive(Debug, Clone)]
pub struct Q8_0Weights {
    /// Output channels.
    pub n: usize,
    /// Inner dimension (a multiple of 32).
    pub k: usize,
    /// The values, row after row.
    pub(super) qs: Vec<i8>,
    /// Block scales, already converted from f16.
    pub(super) d: Vec<f32>,
}

impl Q8_0Weights {
    /// From GGML's raw Q8_0 blocks (`n × k / 32` blocks of 34 bytes, row-major). `None` when the
    /// sizes do not match.
    pub fn from_ggml_blocks(raw: &[u8], n: usize, k: usize) -> Option<Self> {
        if !k.is_multiple_of(QK8_0) || raw.len() != n * (k / QK8_0) * BLOCK_BYTES {
            return None;
        }
        let blocks = n * (k / QK8_0);
        let mut qs = Vec::with_capacity(n * k);
        let mut d = Vec::with_capacity(blocks);
        for b in raw.chunks_exact(BLOCK_BYTES) {
            d.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            qs.extend(b[2..].iter().map(|&v| v as i8));
        }
        Some(Self { n, k, qs, d })
    }

    /// The rows of all `parts` (same `k`) as one matrix, in order: one matmul then computes
    /// all their outputs side by side. `None` when the parts' `k` differ or there are none.
    pub fn stack(parts: &[&Q8_0Weights]) -> Option<Self> {
        let k = parts.first()?.k;
        if parts.iter().any(|p| p.k != k) {
            return None;
        }
        Some(Self {
            n: parts.iter().map(|p| p.n).sum(),
            k,
            qs: parts.iter().flat_map(|p| p.qs.iter().copied()).collect(),
            d: parts.iter().flat_map(|p| p.d.iter().copied()).collect(),
        })
    }

    /// Bytes held (for memory reports).
    pub fn bytes(&self) -> usize {
        self.qs.len() + 4 * self.d.len()
    }
}

/// Activations quantized to Q8_0 per row, as candle's `BlockQ8_0::from_float` does.
pub(super) struct Q8Rows {
    /// The values, row after row.
    pub(super) qs: Vec<i8>,
    /// Block scales (rounded through f16, as candle stores them).
    pub(super) d: Vec<f32>,
}

/// Quantizes `m × k` values: per block of 32, `d = max|x| / 127` (stored as f16),
/// `q = round(x / d)` half away from zero (computed as `x · (1 / d)` with the unrounded `d`).
pub(super) fn quantize_rows(x: &[f32], k: usize) -> Q8Rows {
    let mut qs = vec![0i8; x.len()];
    let mut d = vec![0f32; x.len() / QK8_0];
    for ((block, out), scale) in x
        .chunks_exact(QK8_0)
        .zip(qs.chunks_exact_mut(QK8_0))
        .zip(d.iter_mut())
    {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let dd = amax / 127.0;
        let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
        *scale = half::f16::from_f32(dd).to_f32();
        for (q, &v) in out.iter_mut().zip(block) {
            *q = (v * id).round() as i8;
        }
    }
    debug_assert_eq!(qs.len() % k.max(1), 0);
    Q8Rows { qs, d }
}

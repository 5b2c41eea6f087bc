//! Portable scalar reference kernels: the definition of the int8 arithmetic.

/// A row-major matrix quantized per row: `values[r * cols + c] ≈ data[r][c] / scales[r]`. The
/// operands of [`gemm_i8_reference`], and the weights the engine uploads for its CUDA path.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedRows {
    /// Row count.
    pub rows: usize,
    /// Column count.
    pub cols: usize,
    /// int8 values, row-major.
    pub values: Vec<i8>,
    /// One scale per row: the real value of one int8 step.
    pub scales: Vec<f32>,
}

/// Symmetric per-row quantization of a row-major `rows × cols` f32 matrix to int8 in
/// `[-127, 127]`, rounding half to even. An all-zero row gets scale 0 and zeros.
///
/// Used for weights (one row per output channel) and for activations (one row per token).
pub fn quantize_rows(data: &[f32], rows: usize, cols: usize) -> QuantizedRows {
    assert_eq!(data.len(), rows * cols, "data length must be rows × cols");
    let mut values = vec![0i8; rows * cols];
    let mut scales = vec![0f32; rows];
    quantize_rows_into(data, rows, cols, &mut values, cols, &mut scales);
    QuantizedRows {
        rows,
        cols,
        values,
        scales,
    }
}

/// 1.5 × 2²³: adding and subtracting it rounds an f32 of magnitude < 2²² to the nearest integer,
/// ties to even, in plain IEEE arithmetic (vectorizes, unlike `f32::round`).
const ROUNDER: f32 = 12_582_912.0;

/// [`quantize_rows`] into caller-provided storage: row `r` goes to
/// `out[r * stride .. r * stride + cols]`, its scale to `scales[r]`. For callers that quantize
/// into padded rows (the packed GEMM's activations) without a copy.
pub fn quantize_rows_into(
    data: &[f32],
    rows: usize,
    cols: usize,
    out: &mut [i8],
    stride: usize,
    scales: &mut [f32],
) {
    assert!(
        stride >= cols
            && out.len() >= rows.saturating_sub(1) * stride + cols
            && scales.len() >= rows
    );
    for r in 0..rows {
        let row = &data[r * cols..(r + 1) * cols];
        let max_abs = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = max_abs / 127.0;
        scales[r] = scale;
        let dst = &mut out[r * stride..r * stride + cols];
        if scale == 0.0 {
            dst.fill(0);
            continue;
        }
        let inv = 1.0 / scale;
        for (d, &x) in dst.iter_mut().zip(row) {
            *d = round_to_i8((x * inv).clamp(-127.0, 127.0));
        }
    }
}

/// Rounds `v` (already within ±127) half to even.
#[inline]
pub(crate) fn round_to_i8(v: f32) -> i8 {
    ((v + ROUNDER) - ROUNDER) as i8
}

/// `out[m][n] = (Σ_k a[m][k] · w[n][k]) · a.scale[m] · w.scale[n] + bias[n]` with exact i32
/// accumulation. `a` is `M × K` (activations), `w` is `N × K` (weights, one row per output).
/// The definition every packed path ([`crate::linear_i8`]) must equal bit for bit.
pub fn gemm_i8_reference(a: &QuantizedRows, w: &QuantizedRows, bias: Option<&[f32]>) -> Vec<f32> {
    assert_eq!(a.cols, w.cols, "inner dimensions differ");
    if let Some(b) = bias {
        assert_eq!(b.len(), w.rows, "bias length must equal output channels");
    }
    let k = a.cols;
    let mut out = Vec::with_capacity(a.rows * w.rows);
    for m in 0..a.rows {
        let ar = &a.values[m * k..(m + 1) * k];
        for n in 0..w.rows {
            let wr = &w.values[n * k..(n + 1) * k];
            let acc: i32 = ar.iter().zip(wr).map(|(&x, &y)| x as i32 * y as i32).sum();
            let b = bias.map_or(0.0, |b| b[n]);
            out.push(acc as f32 * a.scales[m] * w.scales[n] + b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_maps_max_to_127_and_keeps_sign() {
        let q = quantize_rows(&[0.5, -1.0, 0.25, 0.0, 0.0, 0.0], 2, 3);
        assert_eq!(q.values, vec![64, -127, 32, 0, 0, 0]);
        assert!((q.scales[0] - 1.0 / 127.0).abs() < 1e-9);
        assert_eq!(q.scales[1], 0.0);
    }

    #[test]
    fn gemm_approximates_the_f32_product() {
        // A: 2×3, W: 2×3 (N = 2 outputs).
        let a = [1.0f32, -2.0, 0.5, 0.1, 0.2, 0.3];
        let w = [0.3f32, 0.1, -0.2, -1.0, 0.5, 0.25];
        let exact: Vec<f32> = (0..2)
            .flat_map(|m| {
                (0..2).map(move |n| (0..3).map(|k| a[m * 3 + k] * w[n * 3 + k]).sum::<f32>() + 1.0)
            })
            .collect();
        let got = gemm_i8_reference(
            &quantize_rows(&a, 2, 3),
            &quantize_rows(&w, 2, 3),
            Some(&[1.0, 1.0]),
        );
        for (g, e) in got.iter().zip(&exact) {
            assert!((g - e).abs() < 0.02, "{got:?} vs {exact:?}");
        }
    }
}

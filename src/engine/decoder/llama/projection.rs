//! The decoder's projections: a weight matrix at its served precision and the kernel that
//! applies it (candle's quantized matmul, or `wattserve-kernels`' int8 kernels on the CPU).

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use wattserve_kernels::default_threads;
use wattserve_kernels::q8_0::{matmul_q8_0, Q8Path, Q8_0Weights};
use wattserve_kernels::q8_tiles::{self, Q8Tiles};

use crate::engine::decoder::cpu_pool;
use crate::engine::{EngineError, Precision};

/// A projection's weights and the matmul that applies them.
pub(super) enum Projection {
    /// candle's (quantized or dense) matmul: as stored (`gguf`), dequantized (`f32`), or Q8_0 off
    /// the CPU.
    Candle(QMatMul),
    /// Q8_0 through candle's repacked VNNI kernel, which needs K to be a multiple of 256: the
    /// weights carry zero columns up to `padded_k`, and inputs get zeros appended.
    PaddedK {
        /// The Q8_0 matmul over `padded_k` inputs.
        matmul: QMatMul,
        /// Real inputs.
        k: usize,
        /// Inputs after padding.
        padded_k: usize,
    },
    /// Q8_0 on the CPU through `wattserve-kernels` (CPUs without VNNI): candle's per-row Q8_0
    /// arithmetic, with every weight block shared by a tile of rows.
    Q8(Q8_0Weights),
    /// int8 in blocks of 64 through `wattserve-kernels`' tile kernels (any K that is a multiple
    /// of 64; 16-column weight tiles shared by up to 16 rows on AMX, 8 on AVX-512 VNNI), on
    /// the decoder's step pool.
    Tiles(Q8Tiles),
}

/// Whether candle's repacked Q8_0 kernel runs on this CPU (it needs VNNI).
fn candle_q8_0_repack_available() -> bool {
    let cpu = wattserve_kernels::cpu::features();
    cpu.avx512vnni || cpu.avxvnni
}

impl Projection {
    /// The int8 projection of `parts` stacked along the outputs (Q, K, V as one matmul: the
    /// input is quantized and read once), with the CPU's fastest int8 kernel: blocks of 64 with
    /// AMX or AVX-512 VNNI, else Q8_0 (candle's repacked kernel with AVX-VNNI, ours without).
    fn int8(parts: Vec<QTensor>, device: &Device, bytes: &mut usize) -> Result<Self, EngineError> {
        let dense: Vec<Tensor> = parts
            .iter()
            .map(|t| t.dequantize(device))
            .collect::<Result<_, _>>()?;
        let dense = if dense.len() == 1 {
            dense.into_iter().next().unwrap_or_else(|| unreachable!())
        } else {
            Tensor::cat(&dense, 0)?
        };
        let (n, k) = dense.dims2()?;
        if device.is_cpu() && q8_tiles::Kernel::detect() != q8_tiles::Kernel::Portable {
            let values = dense.flatten_all()?.to_vec1::<f32>()?;
            if let Some(tiles) = Q8Tiles::quantize(&values, n, k) {
                *bytes += tiles.bytes();
                return Ok(Projection::Tiles(tiles));
            }
        }
        if device.is_cpu() && candle_q8_0_repack_available() {
            let padded_k = k.div_ceil(256) * 256;
            let dense = if padded_k > k {
                Tensor::cat(
                    &[dense, Tensor::zeros((n, padded_k - k), DType::F32, device)?],
                    1,
                )?
            } else {
                dense
            };
            let q = QTensor::quantize(&dense, GgmlDType::Q8_0)?;
            *bytes += q.storage_size_in_bytes();
            let matmul = QMatMul::from_qtensor(q)?;
            return Ok(if padded_k > k {
                Projection::PaddedK {
                    matmul,
                    k,
                    padded_k,
                }
            } else {
                Projection::Candle(matmul)
            });
        }
        let q = QTensor::quantize(&dense, GgmlDType::Q8_0)?;
        if device.is_cpu() {
            if let Some(w) = Q8_0Weights::from_ggml_blocks(&q.data()?, n, k) {
                *bytes += w.bytes();
                return Ok(Projection::Q8(w));
            }
        }
        *bytes += q.storage_size_in_bytes();
        Ok(Projection::Candle(QMatMul::from_qtensor(q)?))
    }

    /// [`Projection::forward`] as a row-major `rows × n` vector (no tensor for the kernels of
    /// `wattserve-kernels`, which produce one).
    pub(super) fn forward_vec(&self, x: &Tensor) -> Result<Vec<f32>, EngineError> {
        match self {
            Projection::Tiles(w) => {
                let (rows, data) = input_rows(x, w.k)?;
                Ok(q8_tiles::matmul(&data, rows, w, &cpu_pool::run))
            }
            _ => to_vec(&self.forward(x)?),
        }
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        match self {
            Projection::Candle(m) => Ok(m.forward(x)?),
            Projection::PaddedK {
                matmul,
                k,
                padded_k,
            } => {
                let rows = x.dims2()?.0;
                let zeros = Tensor::zeros((rows, padded_k - k), x.dtype(), x.device())?;
                Ok(matmul.forward(&Tensor::cat(&[x, &zeros], 1)?)?)
            }
            Projection::Q8(w) => {
                let (rows, k) = x.dims2()?;
                if k != w.k {
                    return Err(EngineError::Unsupported(format!(
                        "projection expects {} inputs, got {k}",
                        w.k
                    )));
                }
                let data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let y = matmul_q8_0(&data, rows, w, Q8Path::detect(), default_threads());
                Ok(Tensor::from_vec(y, (rows, w.n), x.device())?)
            }
            Projection::Tiles(w) => {
                let rows = x.dims2()?.0;
                Ok(Tensor::from_vec(
                    self.forward_vec(x)?,
                    (rows, w.n),
                    x.device(),
                )?)
            }
        }
    }
}

/// The rows of `x` (`rows × k`) as f32, checking the width a projection expects.
fn input_rows(x: &Tensor, k: usize) -> Result<(usize, Vec<f32>), EngineError> {
    let (rows, width) = x.dims2()?;
    if width != k {
        return Err(EngineError::Unsupported(format!(
            "projection expects {k} inputs, got {width}"
        )));
    }
    Ok((rows, to_vec(x)?))
}

/// The projections for the weights `parts` (same input) at `precision`, adding their size to
/// `bytes`: one stacked int8 projection, or one candle matmul per part (`gguf` keeps every
/// tensor as stored, `f32` dequantizes).
pub(super) fn projections(
    parts: Vec<QTensor>,
    precision: Precision,
    device: &Device,
    bytes: &mut usize,
) -> Result<Vec<Projection>, EngineError> {
    if precision == Precision::Int8 {
        return Ok(vec![Projection::int8(parts, device, bytes)?]);
    }
    parts
        .into_iter()
        .map(|t| {
            if precision == Precision::F32 {
                let dense = t.dequantize(device)?;
                *bytes += dense.elem_count() * 4;
                return Ok(Projection::Candle(QMatMul::Tensor(dense)));
            }
            let stored_dense =
                matches!(t.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
            *bytes += if stored_dense {
                t.shape().elem_count() * 4
            } else {
                t.storage_size_in_bytes()
            };
            Ok(Projection::Candle(QMatMul::from_qtensor(t)?))
        })
        .collect()
}

/// The outputs of `projections` applied to `x`, split into parts of `widths` columns (one
/// projection per part, or one fused projection for all), each row-major `rows × width`.
pub(super) fn split_outputs(
    projections: &[Projection],
    x: &Tensor,
    widths: &[usize],
) -> Result<Vec<Vec<f32>>, EngineError> {
    if projections.len() == widths.len() {
        return projections.iter().map(|p| p.forward_vec(x)).collect();
    }
    let [fused] = projections else {
        return Err(EngineError::Unsupported(format!(
            "{} projections for {} outputs",
            projections.len(),
            widths.len()
        )));
    };
    let y = fused.forward_vec(x)?;
    let total: usize = widths.iter().sum();
    let rows = y.len() / total.max(1);
    let mut parts: Vec<Vec<f32>> = widths
        .iter()
        .map(|w| Vec::with_capacity(rows * w))
        .collect();
    for row in y.chunks_exact(total) {
        let mut off = 0;
        for (part, &w) in parts.iter_mut().zip(widths) {
            part.extend_from_slice(&row[off..off + w]);
            off += w;
        }
    }
    Ok(parts)
}

pub(super) fn to_vec(t: &Tensor) -> Result<Vec<f32>, EngineError> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_projections_track_f32_and_the_q8_kernel_matches_candle_bit_for_bit() {
        // K = 576 (SmolLM2's width): not a multiple of 256, so candle's own Q8_0 matmul takes
        // its per-row vec_dot path, whose arithmetic the wattserve kernel reproduces exactly.
        let (rows, k, n) = (5, 576, 40);
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1009) as f32 / 504.5) - 1.0)
            .collect();
        let w = Tensor::from_vec(w, (n, k), &dev).unwrap();
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 104729 % 997) as f32 / 99.7) - 5.0)
            .collect();
        let x = Tensor::from_vec(x, (rows, k), &dev).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let candle = QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let ours = Q8_0Weights::from_ggml_blocks(&q.data().unwrap(), n, k).unwrap();
        let ours = Projection::Q8(ours).forward(&x).unwrap();
        assert_eq!(flat(&candle), flat(&ours));
        // Whatever kernel this CPU gets (padded VNNI or ours), the int8 projection of two
        // stacked parts is close to the f32 product.
        let rows_of = |from: usize, count: usize| {
            let v = w.narrow(0, from, count).unwrap().flatten_all().unwrap();
            Tensor::from_vec(v.to_vec1::<f32>().unwrap(), (count, k), &dev).unwrap()
        };
        let (w1, w2) = (rows_of(0, 16), rows_of(16, 24));
        let parts = vec![
            QTensor::quantize(&w1, GgmlDType::F32).unwrap(),
            QTensor::quantize(&w2, GgmlDType::F32).unwrap(),
        ];
        let mut bytes = 0;
        let p = Projection::int8(parts, &dev, &mut bytes).unwrap();
        assert!(bytes > 0);
        let exact = flat(&x.matmul(&w.t().unwrap()).unwrap());
        let got = flat(&p.forward(&x).unwrap());
        let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in got.iter().zip(&exact) {
            assert!((a - b).abs() < 0.02 * scale, "{a} vs {b}");
        }
    }
}

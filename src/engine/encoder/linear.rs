//! The `Linear` layer every encoder projection goes through, so that the precision of all of them
//! is switched in one place: on CPUs with AVX-512, f32 and bf16 through our packed-weight GEMM
//! ([`wattserve_kernels::dense`]); int8 through our int8 kernels; otherwise (GPUs, f16, CPUs
//! without AVX-512) dense through candle.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use wattserve_kernels::{
    default_threads, linear_dense, linear_i8, Bf16Math, DensePath, Epilogue, Isa, PackedDense,
    PackedWeights, OUTLIER_RATIO,
};

use crate::engine::elementwise::with_f32_slice;
use crate::engine::{EngineError, Precision};

/// `y = x Wᵀ + b` with `W` of shape `(out, in)`, in the precision the model is served at.
#[derive(Debug, Clone)]
pub enum Linear {
    /// Dense weights in f32, f16 or bf16; compute in the weights' dtype.
    Dense(candle_nn::Linear),
    /// int8 weights (per output channel, packed at load), int8 activations quantized per row at
    /// each call (for [normalized](Input::Normalized) inputs the few far above their row's rms
    /// split off and multiplied in f32), i32
    /// accumulation, f32 rescale + bias; on the CPU kernels of `wattserve-kernels`.
    Int8 {
        /// Packed weights.
        weights: Arc<PackedWeights>,
        /// f32 bias.
        bias: Arc<Vec<f32>>,
        /// The kernel's instruction set.
        isa: Isa,
    },
    /// f32 or bf16 weights packed once at load for our AVX-512 GEMM (bf16: AMX tiles,
    /// `vdpbf16ps` or widened, f32 accumulation); f32 activations in and out, bias (and GELU,
    /// when asked) fused.
    Packed {
        /// Packed weights and bias.
        weights: Arc<PackedDense>,
        /// The kernel's code path.
        path: DensePath,
    },
    /// The same int8 scheme on a CUDA GPU (`__dp4a` kernels; compiled, never run on a GPU here).
    #[cfg(feature = "cuda")]
    Int8Cuda(Arc<super::linear_cuda::CudaInt8Linear>),
}

/// What a layer reads, which decides how int8 quantizes its activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A LayerNorm's output (the residual stream): it carries a few channels far above the
    /// rest, so int8 splits those activations off into f32
    /// ([`PackedWeights::quantize_with_outlier_split`]).
    Normalized,
    /// Anything else (attention context, GELU output): per-row int8 as is. Splitting there
    /// found many values per row above the ratio (sparse GELU outputs) and cost a fifth of
    /// the encoder's int8 throughput.
    Other,
}

impl Linear {
    /// Loads `weight` `(out_dim, in_dim)` and `bias` `(out_dim)` from `vb` at `precision`.
    pub fn load(
        in_dim: usize,
        out_dim: usize,
        precision: Precision,
        input: Input,
        vb: VarBuilder,
    ) -> Result<Self, EngineError> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = vb.get(out_dim, "bias")?;
        Self::from_tensors(weight, bias, precision, input)
    }

    /// One layer from several stacked along the output dimension (e.g. Q, K and V as one
    /// `(3H, H)` projection: the input is read, and for int8 quantized, once instead of three
    /// times). Each part is `(out_dim, in_dim)` under its `VarBuilder`.
    pub fn load_stacked(
        in_dim: usize,
        parts: &[(usize, VarBuilder)],
        precision: Precision,
        input: Input,
    ) -> Result<Self, EngineError> {
        let mut weights = Vec::with_capacity(parts.len());
        let mut biases = Vec::with_capacity(parts.len());
        for (out_dim, vb) in parts {
            weights.push(vb.get((*out_dim, in_dim), "weight")?);
            biases.push(vb.get(*out_dim, "bias")?);
        }
        Self::from_tensors(
            Tensor::cat(&weights, 0)?,
            Tensor::cat(&biases, 0)?,
            precision,
            input,
        )
    }

    /// Builds the layer from `weight` `(out, in)` and `bias` `(out)` at `precision`.
    pub fn from_tensors(
        weight: Tensor,
        bias: Tensor,
        precision: Precision,
        input: Input,
    ) -> Result<Self, EngineError> {
        let (out_dim, in_dim) = weight.dims2()?;
        if let Some((path, bf16)) = packed_kernel(precision, weight.device()) {
            let flat = weight
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let bias = bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            let weights = if bf16 {
                PackedDense::bf16(&flat, out_dim, in_dim, Some(&bias), Bf16Math::detect())
            } else {
                PackedDense::f32(&flat, out_dim, in_dim, Some(&bias))
            };
            static LOGGED: std::sync::Once = std::sync::Once::new();
            LOGGED.call_once(|| {
                tracing::info!(
                    "dense GEMM kernel: {} (packed weights; {CANDLE_OPS_ENV}=1 uses candle's)",
                    path.name()
                )
            });
            static LOGGED_BF16: std::sync::Once = std::sync::Once::new();
            if bf16 {
                LOGGED_BF16.call_once(|| {
                    tracing::info!(
                        "bf16 math: {} (AMX-BF16 where usable, else measured on this CPU; {}=amx|dot|widen overrides)",
                        Bf16Math::detect().name(),
                        wattserve_kernels::dense::BF16_MATH_ENV
                    )
                });
            }
            return Ok(Linear::Packed {
                weights: Arc::new(weights),
                path,
            });
        }
        match precision.dense_dtype() {
            Some(dtype) => {
                let weight = weight.to_dtype(dtype)?;
                let bias = bias.to_dtype(dtype)?;
                Ok(Linear::Dense(candle_nn::Linear::new(weight, Some(bias))))
            }
            None => {
                let weight = weight.to_dtype(DType::F32)?;
                let bias = bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                let flat = weight.flatten_all()?.to_vec1::<f32>()?;
                if !weight.device().is_cpu() {
                    return Self::int8_on_gpu(&flat, &bias, out_dim, in_dim, weight.device());
                }
                let isa = Isa::detect();
                static LOGGED: std::sync::Once = std::sync::Once::new();
                LOGGED.call_once(|| {
                    tracing::info!(
                        "int8 GEMM kernel: {} (detected at run time); outlier split {} ({OUTLIER_SPLIT_ENV}=0 turns it off)",
                        isa.name(),
                        if outlier_split_enabled() { "on" } else { "off" }
                    )
                });
                let weights = match input {
                    Input::Normalized if outlier_split_enabled() => {
                        PackedWeights::quantize_with_outlier_split(
                            &flat,
                            out_dim,
                            in_dim,
                            OUTLIER_RATIO,
                        )
                    }
                    _ => PackedWeights::quantize(&flat, out_dim, in_dim),
                };
                Ok(Linear::Int8 {
                    weights: Arc::new(weights),
                    bias: Arc::new(bias),
                    isa,
                })
            }
        }
    }

    #[cfg(feature = "cuda")]
    fn int8_on_gpu(
        weight: &[f32],
        bias: &[f32],
        out_dim: usize,
        in_dim: usize,
        device: &candle_core::Device,
    ) -> Result<Self, EngineError> {
        let layer = super::linear_cuda::CudaInt8Linear::new(weight, bias, out_dim, in_dim, device)?;
        Ok(Linear::Int8Cuda(Arc::new(layer)))
    }

    #[cfg(not(feature = "cuda"))]
    fn int8_on_gpu(
        _: &[f32],
        _: &[f32],
        _: usize,
        _: usize,
        device: &candle_core::Device,
    ) -> Result<Self, EngineError> {
        Err(EngineError::Unsupported(format!(
            "precision int8 on {device:?} needs a build with the `cuda` feature"
        )))
    }

    /// Bytes of weights and bias held.
    pub fn weight_bytes(&self) -> usize {
        match self {
            Linear::Dense(l) => {
                let t = |x: &Tensor| x.elem_count() * x.dtype().size_in_bytes();
                t(l.weight()) + l.bias().map_or(0, t)
            }
            Linear::Int8 { weights, bias, .. } => weights.bytes() + 4 * bias.len(),
            Linear::Packed { weights, .. } => weights.bytes(),
            #[cfg(feature = "cuda")]
            Linear::Int8Cuda(layer) => layer.bytes(),
        }
    }

    /// Whether [`forward_with`](Self::forward_with) applies an epilogue inside the GEMM (else
    /// the caller applies the activation itself).
    pub fn fuses_epilogue(&self) -> bool {
        matches!(self, Linear::Packed { .. })
    }

    /// Applies the layer to `x` of shape `(.., in_dim)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        self.forward_with(x, Epilogue::None)
    }

    /// Applies the layer and, for layers that [fuse](Self::fuses_epilogue) it, `epilogue`;
    /// other layers ignore `epilogue`.
    pub fn forward_with(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor, EngineError> {
        match self {
            Linear::Dense(l) => Ok(l.forward(x)?),
            Linear::Packed { weights, path } => {
                let (m, dims) = rows_of(x, weights.k, weights.n)?;
                let y = with_f32_slice(x, |data| {
                    linear_dense(data, m, weights, epilogue, *path, default_threads())
                })?;
                Ok(Tensor::from_vec(y, dims, x.device())?)
            }
            Linear::Int8 { weights, bias, isa } => {
                let (m, dims) = rows_of(x, weights.k, weights.n)?;
                let y = with_f32_slice(x, |data| {
                    linear_i8(data, m, weights, Some(bias), *isa, default_threads())
                })?;
                Ok(Tensor::from_vec(y, dims, x.device())?)
            }
            #[cfg(feature = "cuda")]
            Linear::Int8Cuda(layer) => Ok(layer.forward(x)?),
        }
    }
}

/// Environment variable (`0`) that turns the int8 encoder's outlier split off (see
/// [`Input::Normalized`]): about 6% more int8 throughput, less accuracy on short inputs. Read
/// when a model loads.
pub const OUTLIER_SPLIT_ENV: &str = "WATTSERVE_INT8_OUTLIER_SPLIT";

/// Whether [`OUTLIER_SPLIT_ENV`] leaves the outlier split on (anything but `0`).
pub fn outlier_split_enabled() -> bool {
    std::env::var(OUTLIER_SPLIT_ENV).as_deref() != Ok("0")
}

/// Environment variable (`1`) that sends the encoder's f32 and bf16 projections and its packed
/// attention through candle's tensor ops instead of our kernels, for comparisons. Read when a
/// model loads.
pub const CANDLE_OPS_ENV: &str = "WATTSERVE_CANDLE_OPS";

/// Whether [`CANDLE_OPS_ENV`] asks for candle's ops.
pub fn candle_ops_forced() -> bool {
    std::env::var(CANDLE_OPS_ENV).as_deref() == Ok("1")
}

/// The packed GEMM a layer at `precision` on `device` runs on, with whether its weights are
/// bf16; `None` where candle's matmul (or the int8 kernels) serve instead: GPUs, f16, CPUs
/// without AVX-512, or [`CANDLE_OPS_ENV`] set.
pub fn packed_kernel(precision: Precision, device: &Device) -> Option<(DensePath, bool)> {
    if !device.is_cpu() || candle_ops_forced() {
        return None;
    }
    let (path, bf16) = match precision {
        Precision::F32 => (DensePath::detect_f32(), false),
        // Every bf16 math needs AVX-512F; the dot product also BF16 and the tiles AMX-BF16,
        // which `Bf16Math::detect` checks before choosing them.
        Precision::Bf16 => (DensePath::detect_f32(), true),
        _ => return None,
    };
    (path != DensePath::Scalar).then_some((path, bf16))
}

/// The dtype activations flow in between layers at `precision` on `device`: f32 wherever our
/// kernels compute (they take and give f32), else the weights' dtype.
pub fn activation_dtype(precision: Precision, device: &Device) -> DType {
    if packed_kernel(precision, device).is_some() {
        return DType::F32;
    }
    precision.dense_dtype().unwrap_or(DType::F32)
}

/// The number of rows of `x` `(.., k)` and the output dims `(.., n)`, or an error if the last
/// dimension is not `k`.
fn rows_of(x: &Tensor, k: usize, n: usize) -> Result<(usize, Vec<usize>), EngineError> {
    let mut dims = x.dims().to_vec();
    let got = dims.last().copied().unwrap_or(0);
    if got != k {
        return Err(EngineError::Unsupported(format!(
            "linear layer expects {k} inputs, got {got}"
        )));
    }
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    Ok((x.elem_count() / k.max(1), dims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    #[test]
    fn dense_forward_matches_hand_computation() {
        let dev = Device::Cpu;
        let mut map = HashMap::new();
        map.insert(
            "weight".to_string(),
            Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev).unwrap(),
        );
        map.insert(
            "bias".to_string(),
            Tensor::new(&[0.5f32, -1., 0.], &dev).unwrap(),
        );
        let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
        let lin = Linear::load(2, 3, Precision::F32, Input::Other, vb).unwrap();
        let x = Tensor::new(&[[10f32, 100.]], &dev).unwrap();
        let y = lin.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y, vec![vec![210.5, 429.0, 650.0]]);
    }

    #[test]
    fn int8_forward_keeps_leading_dims_and_approximates_dense() {
        let dev = Device::Cpu;
        let (k, n) = (40, 24);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 / 10.0).collect();
        let tensors = |w: &Vec<f32>, b: &Vec<f32>| {
            let mut map = HashMap::new();
            map.insert(
                "weight".to_string(),
                Tensor::from_vec(w.clone(), (n, k), &dev).unwrap(),
            );
            map.insert(
                "bias".to_string(),
                Tensor::from_vec(b.clone(), n, &dev).unwrap(),
            );
            VarBuilder::from_tensors(map, DType::F32, &dev)
        };
        let dense = Linear::load(k, n, Precision::F32, Input::Other, tensors(&w, &b)).unwrap();
        let int8 = Linear::load(k, n, Precision::Int8, Input::Other, tensors(&w, &b)).unwrap();
        assert!(matches!(int8, Linear::Int8 { .. }));
        let x: Vec<f32> = (0..2 * 3 * k)
            .map(|i| ((i * 13 % 29) as f32 / 14.0) - 1.0)
            .collect();
        let x = Tensor::from_vec(x, (2, 3, k), &dev).unwrap();
        let want = dense.forward(&x).unwrap();
        let got = int8.forward(&x).unwrap();
        assert_eq!(got.dims(), &[2, 3, n]);
        let diff = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 0.1, "int8 differs from f32 by {diff}");
    }
}

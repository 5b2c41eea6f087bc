//! The int8 `Linear` on CUDA GPUs: weights quantized per output channel on the host at load (the
//! CPU's quantizer, so both devices hold the same int8 weights), uploaded once; at each call the
//! activations are quantized per row and multiplied with `__dp4a` by the kernels of
//! `wattserve-kernels/cuda/int8_gemm.cu`, launched on candle's stream as a custom op.
//!
//! Compiled with `--features cuda` (`make check-cuda`); never run on a GPU in this project so far.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{
    bail, CpuStorage, CudaDevice, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor,
};
use wattserve_kernels::cuda::{GEMM_TILE, INT8_GEMM_PTX, QUANTIZE_THREADS};
use wattserve_kernels::quantize_rows;

/// Name the PTX module is cached under in candle's CUDA device.
const MODULE: &str = "wattserve_int8_gemm";

/// int8 weights, their scales and the f32 bias, resident on one GPU.
pub struct CudaInt8Linear {
    n: usize,
    k: usize,
    /// K padded to a multiple of 4 (the kernel reads 4 int8 values as one int32).
    kp: usize,
    weights: CudaSlice<i8>,
    scales: CudaSlice<f32>,
    bias: CudaSlice<f32>,
}

impl std::fmt::Debug for CudaInt8Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaInt8Linear({} × {})", self.n, self.k)
    }
}

impl CudaInt8Linear {
    /// Quantizes `weight` (row-major `n × k`) per output channel and uploads it with `bias`.
    pub fn new(
        weight: &[f32],
        bias: &[f32],
        n: usize,
        k: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let Device::Cuda(dev) = device else {
            bail!("CudaInt8Linear needs a CUDA device, got {device:?}")
        };
        let q = quantize_rows(weight, n, k);
        let kp = k.div_ceil(4) * 4;
        let mut padded = vec![0i8; n * kp];
        for (dst, src) in padded.chunks_exact_mut(kp).zip(q.values.chunks_exact(k)) {
            dst[..k].copy_from_slice(src);
        }
        Ok(Self {
            n,
            k,
            kp,
            weights: upload(dev, &padded)?,
            scales: upload(dev, &q.scales)?,
            bias: upload(dev, bias)?,
        })
    }

    /// Output channels.
    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// Bytes held on the GPU.
    pub fn bytes(&self) -> usize {
        self.n * self.kp + 8 * self.n
    }

    /// `y = x Wᵀ + b` for `x` of shape `(.., k)` on this GPU.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.to_dtype(DType::F32)?.contiguous()?.apply_op1_no_bwd(self)
    }
}

fn upload<T>(dev: &CudaDevice, host: &[T]) -> candle_core::Result<CudaSlice<T>>
where
    T: candle_core::cuda_backend::cudarc::driver::DeviceRepr
        + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits
        + 'static,
{
    let mut slice = dev.alloc_zeros::<T>(host.len().max(1))?;
    if !host.is_empty() {
        dev.memcpy_htod(host, &mut slice)?;
    }
    Ok(slice)
}

impl CustomOp1 for CudaInt8Linear {
    fn name(&self) -> &'static str {
        "wattserve-int8-linear"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        bail!("the CUDA int8 linear was given a CPU tensor")
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = storage.device().clone();
        let x = storage.as_cuda_slice::<f32>()?;
        let x = match layout.contiguous_offsets() {
            Some((start, end)) => x.slice(start..end),
            None => bail!("the int8 linear needs a contiguous input"),
        };
        let mut dims = layout.shape().dims().to_vec();
        if dims.last().copied() != Some(self.k) {
            bail!("int8 linear expects {} inputs, got shape {dims:?}", self.k)
        }
        let m = layout.shape().elem_count() / self.k.max(1);
        let (m_i, k_i, kp_i, n_i) = (
            to_i32(m)?,
            to_i32(self.k)?,
            to_i32(self.kp)?,
            to_i32(self.n)?,
        );
        let q = dev.alloc_zeros::<i8>((m * self.kp).max(1))?;
        let a_scales = dev.alloc_zeros::<f32>(m.max(1))?;
        let y = dev.alloc_zeros::<f32>((m * self.n).max(1))?;
        if m > 0 {
            let quantize =
                dev.get_or_load_custom_func("ws_quantize_rows", MODULE, INT8_GEMM_PTX)?;
            let mut launch = quantize.builder();
            launch.arg(&x);
            launch.arg(&q);
            launch.arg(&a_scales);
            launch.arg(&m_i);
            launch.arg(&k_i);
            launch.arg(&kp_i);
            let cfg = LaunchConfig {
                grid_dim: (m_i as u32, 1, 1),
                block_dim: (QUANTIZE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the arguments match the kernel's signature; buffers hold m × k inputs,
            // m × kp int8 values and m scales.
            unsafe { launch.launch(cfg) }.w()?;

            let gemm = dev.get_or_load_custom_func("ws_gemm_i8", MODULE, INT8_GEMM_PTX)?;
            let has_bias = 1i32;
            let mut launch = gemm.builder();
            launch.arg(&q);
            launch.arg(&a_scales);
            launch.arg(&self.weights);
            launch.arg(&self.scales);
            launch.arg(&self.bias);
            launch.arg(&y);
            launch.arg(&m_i);
            launch.arg(&n_i);
            launch.arg(&kp_i);
            launch.arg(&has_bias);
            let cfg = LaunchConfig {
                grid_dim: (
                    (self.n as u32).div_ceil(GEMM_TILE),
                    (m as u32).div_ceil(GEMM_TILE),
                    1,
                ),
                block_dim: (16, 16, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: as above; weights are n × kp, y is m × n.
            unsafe { launch.launch(cfg) }.w()?;
        }
        if let Some(last) = dims.last_mut() {
            *last = self.n;
        }
        Ok((CudaStorage::wrap_cuda_slice(y, dev), Shape::from(dims)))
    }
}

fn to_i32(v: usize) -> candle_core::Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{v} exceeds the kernel's i32")))
}

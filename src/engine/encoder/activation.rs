//! A fast exact-GELU for f32 tensors on the CPU, for layers whose GEMM does not fuse it: the
//! kernels' [`gelu_erf`](wattserve_kernels::activation::gelu_erf) (a rational erf, error below
//! 1e-6, tested against libm here) over the tensor, split over rayon's pool.
//! candle's own `gelu_erf` calls libm's `erff` per element on one thread, which took a sixth of
//! the int8 forward pass.

use candle_core::{DType, Tensor};
use rayon::prelude::*;
pub use wattserve_kernels::activation::fast_erf;
use wattserve_kernels::activation::gelu_erf as gelu_one;

/// Exact (erf) GELU of an f32 tensor of any shape; other dtypes go through candle's `gelu_erf`.
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return x.gelu_erf();
    }
    let mut v = x.flatten_all()?.to_vec1::<f32>()?;
    v.par_chunks_mut(16 * 1024).for_each(|chunk| {
        for y in chunk.iter_mut() {
            *y = gelu_one(*y);
        }
    });
    Tensor::from_vec(v, x.shape(), x.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_erf_matches_libm() {
        let mut worst = 0f32;
        for i in -60_000..=60_000 {
            let x = i as f32 / 10_000.0;
            worst = worst.max((fast_erf(x) - libm::erff(x)).abs());
        }
        assert!(worst < 1e-6, "max |fast_erf - erff| = {worst}");
        assert!((fast_erf(10.0) - 1.0).abs() < 1e-6 && (fast_erf(-10.0) + 1.0).abs() < 1e-6);
    }

    #[test]
    fn gelu_matches_candle() {
        let xs: Vec<f32> = (-500..500).map(|i| i as f32 / 70.0).collect();
        let t = Tensor::from_vec(xs, (10, 100), &candle_core::Device::Cpu).unwrap();
        let ours = gelu_erf(&t).unwrap();
        let theirs = t.gelu_erf().unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        let diff = (ours - theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }
}

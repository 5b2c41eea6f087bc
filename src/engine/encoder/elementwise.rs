//! The encoder's element-wise sums (residual connections, embedding sums) on the compute pool.
//!
//! candle hands element-wise ops on tensors of 64K elements or more (every residual add of a
//! batch of a few hundred tokens) to its own thread pool, whose worker then spins for about a
//! millisecond beside the compute pool's threads after every add: a few percent of all CPU time
//! lost, and two pools competing for the same cores. Here the sum is computed on the compute
//! pool instead; the arithmetic (one f32 add per element, in the same order) is candle's.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::linear::with_f32_slice;
use crate::engine::EngineError;

/// Elements per parallel part.
const PART: usize = 16 * 1024;

/// Whether `t` is an f32 tensor on the CPU laid out contiguously (what the fast path reads).
fn plain_f32(t: &Tensor) -> bool {
    t.dtype() == DType::F32 && t.device().is_cpu() && t.is_contiguous()
}

/// `a + b` for tensors of one shape; `+ row` broadcast over the last dimension too when given
/// (`row` has that dimension's length), added after `a + b` as candle's `(a + b) + row` would.
pub fn add(a: &Tensor, b: &Tensor, row: Option<&Tensor>) -> Result<Tensor, EngineError> {
    let width = a.dims().last().copied().unwrap_or(1).max(1);
    let row_fits = row.is_none_or(|r| plain_f32(r) && r.elem_count() == width);
    if !(plain_f32(a) && plain_f32(b) && a.dims() == b.dims() && row_fits) {
        let sum = (a + b)?;
        return Ok(match row {
            Some(r) => sum.broadcast_add(r)?,
            None => sum,
        });
    }
    let row: Vec<f32> = match row {
        Some(r) => r.flatten_all()?.to_vec1::<f32>()?,
        None => Vec::new(),
    };
    // Written straight into the new vector (no zero-fill first), in parts of whole rows.
    let mut out = Vec::with_capacity(a.elem_count());
    let part = PART.div_ceil(width) * width;
    with_f32_slice(a, |a| {
        with_f32_slice(b, |b| {
            a.par_iter()
                .zip(b.par_iter())
                .with_min_len(part)
                .map(|(&x, &y)| x + y)
                .collect_into_vec(&mut out)
        })
    })??;
    if !row.is_empty() {
        out.par_chunks_mut(part).for_each(|rows| {
            for out in rows.chunks_exact_mut(width) {
                for (o, &r) in out.iter_mut().zip(&row) {
                    *o += r;
                }
            }
        });
    }
    Ok(Tensor::from_vec(out, a.dims(), a.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 + seed) * 0.731).sin() * 3.0)
            .collect()
    }

    #[test]
    fn equals_candles_sum_bit_for_bit() {
        let dev = Device::Cpu;
        // Large enough for candle's own pool and for several parts here, with a width that
        // does not divide the part size.
        for (n, h) in [(3, 5), (700, 384), (171, 383)] {
            let a = Tensor::from_vec(values(n * h, 1.0), (n, h), &dev).unwrap();
            let b = Tensor::from_vec(values(n * h, 2.0), (n, h), &dev).unwrap();
            let r = Tensor::from_vec(values(h, 3.0), h, &dev).unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            let want = (&a + &b).unwrap();
            assert_eq!(bits(&add(&a, &b, None).unwrap()), bits(&want));
            let want = want.broadcast_add(&r).unwrap();
            assert_eq!(bits(&add(&a, &b, Some(&r)).unwrap()), bits(&want));
            // A non-contiguous operand takes candle's path, with the same result.
            let bt = b.t().unwrap().contiguous().unwrap().t().unwrap();
            assert_eq!(bits(&add(&a, &bt, Some(&r)).unwrap()), bits(&want));
        }
    }
}

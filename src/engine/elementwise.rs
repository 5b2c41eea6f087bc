//! Element-wise sums of f32 tensors (residual connections, embedding sums) computed here rather
//! than by candle, and borrowing a tensor's values as a slice.
//!
//! candle hands element-wise ops on tensors of 64K elements or more (every residual add of a
//! batch of a few hundred tokens) to its own thread pool, whose worker then spins for about a
//! millisecond beside the engine's own threads after every add: a few percent of all CPU time
//! lost, and two pools competing for the same cores. Here the sum runs on rayon's pool (the
//! encoder's) or on the calling thread (the decoder's, whose parts run on its step pool); the
//! arithmetic (one f32 add per element, in the same order) is candle's.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::engine::EngineError;

/// Elements per parallel part.
const PART: usize = 16 * 1024;

/// Whether `t` is an f32 tensor on the CPU laid out contiguously (what the fast path reads).
fn plain_f32(t: &Tensor) -> bool {
    t.dtype() == DType::F32 && t.device().is_cpu() && t.is_contiguous()
}

/// Where [`add`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// Split over rayon's pool.
    Pool,
    /// On the calling thread.
    Caller,
}

/// `a + b` for tensors of one shape; `+ row` broadcast over the last dimension too when given
/// (`row` has that dimension's length), added after `a + b` as candle's `(a + b) + row` would.
/// Tensors that are not contiguous f32 on the CPU go through candle.
pub fn add(a: &Tensor, b: &Tensor, row: Option<&Tensor>, on: On) -> Result<Tensor, EngineError> {
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
        with_f32_slice(b, |b| match on {
            On::Pool => a
                .par_iter()
                .zip(b.par_iter())
                .with_min_len(part)
                .map(|(&x, &y)| x + y)
                .collect_into_vec(&mut out),
            On::Caller => out.extend(a.iter().zip(b).map(|(&x, &y)| x + y)),
        })
    })??;
    let add_row = |rows: &mut [f32]| {
        for out in rows.chunks_exact_mut(width) {
            for (o, &r) in out.iter_mut().zip(&row) {
                *o += r;
            }
        }
    };
    match (row.is_empty(), on) {
        (true, _) => {}
        (false, On::Pool) => out.par_chunks_mut(part).for_each(add_row),
        (false, On::Caller) => add_row(&mut out),
    }
    Ok(Tensor::from_vec(out, a.dims(), a.device())?)
}

/// Runs `f` on `x`'s values as one contiguous f32 slice: borrowed from the tensor's storage
/// when it already is one (no copy), else converted.
pub fn with_f32_slice<T>(x: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T, EngineError> {
    if x.dtype() == DType::F32 && x.is_contiguous() {
        let (storage, layout) = x.storage_and_layout();
        if let candle_core::Storage::Cpu(cpu) = &*storage {
            let all = cpu.as_slice::<f32>()?;
            let start = layout.start_offset();
            return Ok(f(&all[start..start + x.elem_count()]));
        }
    }
    let data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(f(&data))
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
            for on in [On::Pool, On::Caller] {
                let want = (&a + &b).unwrap();
                assert_eq!(bits(&add(&a, &b, None, on).unwrap()), bits(&want));
                let want = want.broadcast_add(&r).unwrap();
                assert_eq!(bits(&add(&a, &b, Some(&r), on).unwrap()), bits(&want));
                // A non-contiguous operand takes candle's path, with the same result.
                let bt = b.t().unwrap().contiguous().unwrap().t().unwrap();
                assert_eq!(bits(&add(&a, &bt, Some(&r), on).unwrap()), bits(&want));
            }
        }
    }
}

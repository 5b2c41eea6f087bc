//! The decoder's parallel parts (int8 matmuls, attention, fused activations) run on one pool of
//! CPU threads, [`Pool`], built for the many short parts of a decode step; see
//! [`super::step_pool`] for why not rayon's or candle's.
//!
//! candle's own CPU ops (its quantized matmuls for `gguf` and `f32` weights) still run on
//! candle's pool.

use std::sync::{Mutex, OnceLock};

use wattserve_kernels::default_threads;

use super::step_pool::Pool;

/// Runs `f(i)` for every `i < n` on the decoder's step pool (the calling thread takes part). Its
/// signature is `wattserve_kernels::q8_tiles::ParallelFor`'s.
pub fn run(n: usize, f: &(dyn Fn(usize) + Sync)) {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(default_threads().saturating_sub(1)))
        .run(n, f);
}

/// Splits `out` into consecutive chunks of `lens` (the last ones shorter or empty if `out` runs
/// out) and runs `f(i, chunk i)` for each on [`run`]'s threads. Returns the first error, if any
/// (the other chunks are still filled).
pub(crate) fn fill_chunks<E: Send>(
    out: &mut [f32],
    lens: impl IntoIterator<Item = usize>,
    f: impl Fn(usize, &mut [f32]) -> Result<(), E> + Sync,
) -> Result<(), E> {
    // Each chunk behind its own (uncontended) lock, so that the threads can fill them in any
    // order without unsafe code.
    let mut chunks = Vec::new();
    let mut rest = out;
    for len in lens {
        let (mine, tail) = rest.split_at_mut(len.min(rest.len()));
        chunks.push(Mutex::new(mine));
        rest = tail;
    }
    let failure: Mutex<Option<E>> = Mutex::new(None);
    run(chunks.len(), &|i| {
        let mut chunk = chunks[i].lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f(i, &mut chunk) {
            failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(e);
        }
    });
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_filled_in_place_and_the_first_error_is_returned() {
        let mut out = vec![0f32; 7];
        let done: Result<(), String> = fill_chunks(&mut out, [3, 0, 4], |i, chunk| {
            chunk.fill(i as f32 + 1.0);
            Ok(())
        });
        assert!(done.is_ok());
        assert_eq!(out, [1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0]);
        let failed = fill_chunks(&mut out, [2, 2, 3], |i, chunk| {
            chunk.fill(-1.0);
            if i == 1 {
                Err(format!("chunk {i}"))
            } else {
                Ok(())
            }
        });
        assert_eq!(failed, Err("chunk 1".to_string()));
        assert!(out.iter().all(|&v| v == -1.0), "other chunks still filled");
    }
}

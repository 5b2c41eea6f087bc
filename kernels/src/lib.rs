//! `wattserve-kernels`: the CPU GEMMs of wattserve's encoder and decoders.
//!
//! [`dense`] is the f32 and bf16 GEMM with packed weights (AVX-512 FMA and `vdpbf16ps`, bias and
//! GELU fused). The int8 scheme (see the README): per-output-channel symmetric int8 weights, dynamic per-row
//! symmetric int8 activations, i32 accumulation, f32 rescale plus bias.
//! [`reference`](mod@reference) defines the arithmetic; [`gemm`] packs weights once and runs it
//! with AVX-512 VNNI, AVX2 or scalar code, chosen at run time, all bit-identical. [`q8_0`] and
//! [`q8_tiles`] are the decoders' block-wise int8 matmuls. Every run-time choice of instruction
//! set asks one probe, [`cpu::features`].

#![warn(missing_docs)]

pub mod activation;
#[cfg(target_arch = "x86_64")]
mod amx_tiles;
pub mod attention;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dense;
pub mod gemm;
pub mod q8_0;
pub mod q8_tiles;
pub mod reference;

/// The AMX switch under the path the engine names it by (the probe itself is [`cpu`]).
pub mod amx {
    pub use crate::cpu::AMX_DISABLE_ENV as DISABLE_ENV;
}

pub use dense::{linear_dense, linear_dense_into, Bf16Math, DensePath, Epilogue, PackedDense};
pub use gemm::{linear_i8, Isa, PackedWeights, OUTLIER_RATIO};
pub use reference::{gemm_i8_reference, quantize_rows, QuantizedRows};

/// Threads a GEMM should be split into by default: the size of rayon's global pool, which
/// candle's CPU kernels use too (`RAYON_NUM_THREADS`, else one per core).
pub fn default_threads() -> usize {
    rayon::current_num_threads()
}

/// Deterministic pseudo-random values for the kernels' unit tests and benchmarks (one
/// generator, so that a bench and a test of the same shape see the same data).
pub mod test_data {
    /// `len` values in [-1, 1] from a xorshift generator seeded by `seed`.
    pub fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).max(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }
}

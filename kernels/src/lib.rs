//! `wattserve-kernels`: int8 quantization and GEMM for wattserve's int8 precision.
//!
//! The scheme (see the README): per-output-channel symmetric int8 weights, dynamic per-row
//! symmetric int8 activations, i32 accumulation, f32 rescale plus bias. This crate starts with the
//! portable scalar reference that every SIMD path must equal exactly.

pub mod reference;

pub use reference::{gemm_i8_reference, quantize_rows, QuantizedRows};

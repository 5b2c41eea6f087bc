//! PTX of the CUDA int8 kernels (`cuda/int8_gemm.cu`, compiled by `build.rs` with nvcc), for the
//! engine to load into a CUDA context. Same arithmetic as [`crate::reference`]; never run on a GPU
//! in this project so far (see the README).

/// PTX module holding `ws_quantize_rows` and `ws_gemm_i8`.
pub const INT8_GEMM_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/int8_gemm.ptx"));

/// Threads per block `ws_quantize_rows` is written for (one block per row).
pub const QUANTIZE_THREADS: u32 = 256;

/// Output rows and columns computed by one 16 × 16-thread block of `ws_gemm_i8`.
pub const GEMM_TILE: u32 = 64;

//! The packed layout's shape, shared by the dispatcher ([`super`]) and the SIMD kernels
//! (`x86.rs`) without either importing the other.

/// Output channels per packed block: one AVX-512 register of 16 i32 lanes (two AVX2 ones), so
/// that one `vpdpbusd` computes 4 k-values of a whole block.
pub const BLOCK_N: usize = 16;
/// Rows computed together by the SIMD kernels, so that each weight register is loaded once per
/// tile of rows (activations are padded to a multiple of it).
pub const TILE_M: usize = 4;

//! The encoder's exact GELU, in one definition shared by the fused GEMM epilogue
//! ([`crate::dense::Epilogue::GeluErf`]) and the engine's stand-alone activation: `gelu(x) =
//! x/2 · (1 + erf(x/√2))` with erf as a rational function (Eigen's `generic_fast_erf_float`
//! coefficients, as used by XLA; error below 1e-6, tested against libm in the engine).
//!
//! Written as plain multiplies and adds (no `mul_add`, which without the FMA target feature
//! calls a software `fmaf`) so that it vectorizes, and so that the AVX-512 epilogue, which does
//! the same operations in the same order, gives the same bits.

/// erf(x) for f32: `x · P(x²) / Q(x²)` on x clamped to [-4, 4] (beyond, erf is ±1 in f32).
#[inline(always)]
pub fn fast_erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = ERF_P[0];
    for c in &ERF_P[1..] {
        p = p * x2 + c;
    }
    let mut q = ERF_Q[0];
    for c in &ERF_Q[1..] {
        q = q * x2 + c;
    }
    x * p / q
}

/// Exact (erf) GELU of one value.
#[inline(always)]
pub fn gelu_erf(v: f32) -> f32 {
    0.5 * v * (1.0 + fast_erf(v * std::f32::consts::FRAC_1_SQRT_2))
}

/// Numerator coefficients of [`fast_erf`], highest power first.
pub(crate) const ERF_P: [f32; 7] = [
    -2.726_142_3e-10,
    2.770_681_4e-8,
    -2.101_024e-6,
    -5.692_506_4e-5,
    -7.349_906e-4,
    -2.954_6e-3,
    -1.609_603_3e-2,
];
/// Denominator coefficients of [`fast_erf`], highest power first.
pub(crate) const ERF_Q: [f32; 5] = [
    -1.456_607_2e-5,
    -2.133_740_6e-4,
    -1.682_827e-3,
    -7.373_329e-3,
    -1.426_474e-2,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_has_its_known_values() {
        assert_eq!(gelu_erf(0.0), 0.0);
        // gelu(1) = Φ(1) = 0.841344746...; gelu(-1) = -(1 - Φ(1)).
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu_erf(-1.0) + 0.158_655_25).abs() < 1e-6);
        assert!((gelu_erf(10.0) - 10.0).abs() < 1e-5);
        assert!(gelu_erf(-10.0).abs() < 1e-5);
    }
}

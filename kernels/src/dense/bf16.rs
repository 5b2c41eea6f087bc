//! bf16 arithmetic exactly as the AVX-512 BF16 instructions do it, in scalar code: the rounding
//! of `vcvtne2ps2bf16` and the accumulation of `vdpbf16ps`, so that the scalar path and the
//! reference give the SIMD path's bits.

use super::DensePath;

/// f32 → bf16 as `vcvtne2ps2bf16` rounds: subnormal inputs become (signed) zero, NaN stays a
/// quiet NaN, everything else rounds to nearest, ties to even.
pub fn bf16_round(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x0040) as u16;
    }
    if v.is_subnormal() {
        return ((bits >> 16) & 0x8000) as u16;
    }
    let lsb = (bits >> 16) & 1;
    (bits.wrapping_add(0x7fff + lsb) >> 16) as u16
}

/// bf16 → f32 (exact).
pub fn bf16_to_f32(v: u16) -> f32 {
    f32::from_bits((v as u32) << 16)
}

/// K values `2s` and `2s + 1` of `row` as one bf16 pair (`2s` in the low half); past the end,
/// zero.
pub(super) fn pair(row: &[f32], s: usize) -> u32 {
    let lo = bf16_round(row[2 * s]) as u32;
    let hi = row.get(2 * s + 1).map_or(0, |&v| bf16_round(v) as u32);
    lo | (hi << 16)
}

/// Flush-to-zero of a subnormal result, keeping its sign.
#[inline(always)]
fn ftz(v: f32) -> f32 {
    if v.is_subnormal() {
        f32::from_bits(v.to_bits() & 0x8000_0000)
    } else {
        v
    }
}

/// One lane of `vdpbf16ps`: `acc += a.hi × b.hi; acc += a.lo × b.lo`, each step rounded to f32
/// with subnormal inputs and results treated as zero.
#[inline(always)]
pub(super) fn dot_pair(acc: f32, a: u32, b: u32) -> f32 {
    let half = |v: u32, h: u32| ftz(bf16_to_f32((v >> (16 * h)) as u16));
    let acc = ftz(acc);
    let acc = ftz(acc + ftz(half(a, 1) * half(b, 1)));
    ftz(acc + ftz(half(a, 0) * half(b, 0)))
}

/// The M rows of `x` (M × K) as bf16 pairs, `steps` per row: what the bf16 tiles broadcast.
pub(super) fn rows_to_pairs(
    x: &[f32],
    m: usize,
    k: usize,
    steps: usize,
    path: DensePath,
    threads: usize,
) -> Vec<u32> {
    let mut pairs = vec![0u32; m * steps];
    if steps == 0 {
        return pairs;
    }
    let convert = |(r, out): (usize, &mut [u32])| {
        let row = &x[r * k..(r + 1) * k];
        match path {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller checked that the AVX-512 bf16 path is available.
            DensePath::Avx512 => unsafe { super::x86::row_to_bf16_pairs(row, out) },
            _ => {
                for (s, o) in out.iter_mut().enumerate() {
                    *o = pair(row, s);
                }
            }
        }
    };
    if threads > 1 && m * k >= 64 * 1024 {
        use rayon::prelude::*;
        pairs.par_chunks_mut(steps).enumerate().for_each(convert);
    } else {
        pairs.chunks_mut(steps).enumerate().for_each(convert);
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even_with_subnormals_as_zero() {
        assert_eq!(bf16_round(1.0), 0x3f80);
        // 1 + 2^-8 is exactly half-way between two bf16 values: ties go to the even one (1.0).
        assert_eq!(bf16_round(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 × 2^-8 is half-way too; the even neighbour is above.
        assert_eq!(bf16_round(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_round(-2.5), 0xc020);
        assert_eq!(bf16_round(f32::from_bits(1)), 0);
        assert_eq!(bf16_round(-f32::from_bits(1)), 0x8000);
        assert_eq!(bf16_round(f32::MAX), 0x7f80, "rounds up to infinity");
        assert!(bf16_to_f32(bf16_round(f32::NAN)).is_nan());
        assert_eq!(bf16_to_f32(0x4040), 3.0);
    }

    #[test]
    fn a_pair_step_adds_the_odd_product_first() {
        // acc = 1, products 2^24 (odd) and -2^24 (even): (1 + 2^24) rounds to 2^24, minus 2^24
        // gives 0; the other order would give 1.
        let big = bf16_round(4096.0) as u32;
        let neg = bf16_round(-4096.0) as u32;
        let a = big | (big << 16);
        let b = neg | (big << 16);
        assert_eq!(dot_pair(1.0, a, b), 0.0);
    }
}

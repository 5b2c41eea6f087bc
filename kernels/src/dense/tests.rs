use super::*;
use crate::test_data::values as data;
use proptest::prelude::*;

/// The weight formats under test: f32, and bf16 multiplied either way.
const FORMATS: [Option<Bf16Math>; 4] = [
    None,
    Some(Bf16Math::Widened),
    Some(Bf16Math::DotProduct),
    Some(Bf16Math::Tiles),
];

fn paths_for(format: Option<Bf16Math>) -> Vec<DensePath> {
    let fast = match format {
        Some(math) => math.available(),
        None => DensePath::detect_f32() == DensePath::Avx512,
    };
    let mut paths = vec![DensePath::Scalar];
    if fast {
        paths.push(DensePath::Avx512);
    }
    paths
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every available path, at several thread counts, equals the plain reference bit for bit.
fn check_all(x: &[f32], m: usize, w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) {
    for format in FORMATS {
        let packed = match format {
            Some(math) => PackedDense::bf16(w, n, k, bias, math),
            None => PackedDense::f32(w, n, k, bias),
        };
        for epilogue in [Epilogue::None, Epilogue::GeluErf] {
            let want = match format {
                None => linear_f32_reference(x, m, w, n, bias, epilogue),
                Some(Bf16Math::Widened) => {
                    linear_bf16_widened_reference(x, m, w, n, bias, epilogue)
                }
                Some(Bf16Math::DotProduct | Bf16Math::Tiles) => {
                    linear_bf16_reference(x, m, w, n, bias, epilogue)
                }
            };
            for path in paths_for(format) {
                for threads in [1, 2, 3] {
                    let got = linear_dense(x, m, &packed, epilogue, path, threads);
                    if format == Some(Bf16Math::Tiles) && path == DensePath::Avx512 {
                        let label = format!("{epilogue:?} {m}x{k}x{n} threads {threads}");
                        assert_within_summation_bound(&got, &want, x, w, k, bias, epilogue, &label);
                        continue;
                    }
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{format:?} {path:?} {epilogue:?} {m}x{k}x{n} threads {threads}"
                    );
                }
            }
        }
    }
}

/// AMX's `tdpbf16ps` accumulates in f32 like `vdpbf16ps` but does not round in the same order
/// (measured: last-bit differences on most outputs), so its results are held to the error bound
/// that any f32 summation of the same bf16 products meets, against the dot-product reference:
/// `2 · (steps + 2) · 2⁻²⁴ · (Σ|x̂·ŵ| + |b|)` (both sides within half of it of the exact sum),
/// and through GELU (slope below 1.13) 1.13 times that plus four ulps of its own rounding.
#[allow(clippy::too_many_arguments)]
fn assert_within_summation_bound(
    got: &[f32],
    want: &[f32],
    x: &[f32],
    w: &[f32],
    k: usize,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    label: &str,
) {
    let round = |v: f32| bf16_to_f32(bf16_round(v)) as f64;
    let n = want.len() / (x.len() / k.max(1)).max(1);
    let steps = k.div_ceil(2) as f64;
    for (i, (&g, &r)) in got.iter().zip(want).enumerate() {
        let (row, col) = (i / n, i % n);
        let magnitude: f64 = (0..k)
            .map(|kk| (round(x[row * k + kk]) * round(w[col * k + kk])).abs())
            .sum::<f64>()
            + bias.map_or(0.0, |b| b[col].abs() as f64);
        let mut bound = 2.0 * (steps + 2.0) * f64::from(f32::EPSILON) / 2.0 * magnitude;
        if epilogue == Epilogue::GeluErf {
            bound = 1.13 * bound + 4.0 * f64::from(f32::EPSILON) * f64::from(r.abs());
        }
        assert!(
            (g as f64 - r as f64).abs() <= bound,
            "Tiles {label}: output {i} is {g}, the reference {r}, beyond the bound {bound:e}"
        );
    }
}

#[test]
fn every_path_equals_the_reference_on_the_encoders_shapes() {
    for (m, k, n) in [
        (1, 384, 1152),
        (5, 384, 384),
        (41, 384, 1536),
        (13, 1536, 384),
        (100, 384, 64),
    ] {
        let x = data(m * k, (m + k) as u32);
        let w = data(n * k, (n * 7 + k) as u32);
        let b = data(n, n as u32);
        check_all(&x, m, &w, n, k, Some(&b));
    }
}

#[test]
fn edges_of_tiles_and_panels() {
    for (m, k, n) in [
        (1, 1, 1),
        (12, 2, 32),
        (13, 3, 33),
        (25, 31, 31),
        (7, 33, 65),
    ] {
        let x = data(m * k, 3);
        let w = data(n * k, 4);
        check_all(&x, m, &w, n, k, None);
    }
}

#[test]
fn packing_round_trips() {
    let (n, k) = (45, 37);
    let w = data(n * k, 9);
    assert_eq!(PackedDense::f32(&w, n, k, None).unpack(), w);
    let rounded: Vec<f32> = w.iter().map(|&v| bf16_to_f32(bf16_round(v))).collect();
    for math in [Bf16Math::Widened, Bf16Math::DotProduct, Bf16Math::Tiles] {
        assert_eq!(PackedDense::bf16(&w, n, k, None, math).unpack(), rounded);
    }
}

#[test]
fn bf16_is_close_to_f32() {
    let (m, k, n) = (16, 384, 96);
    let x = data(m * k, 21);
    let w = data(n * k, 22);
    let exact = linear_f32_reference(&x, m, &w, n, None, Epilogue::None);
    for math in [Bf16Math::Widened, Bf16Math::DotProduct, Bf16Math::Tiles] {
        let path = if math.available() {
            DensePath::Avx512
        } else {
            DensePath::Scalar
        };
        let packed = PackedDense::bf16(&w, n, k, None, math);
        let got = linear_dense(&x, m, &packed, Epilogue::None, path, 2);
        let (mut dot, mut nx, mut ny) = (0f64, 0f64, 0f64);
        for (a, b) in got.iter().zip(&exact) {
            dot += (*a as f64) * (*b as f64);
            nx += (*a as f64).powi(2);
            ny += (*b as f64).powi(2);
        }
        let cosine = dot / (nx.sqrt() * ny.sqrt());
        assert!(cosine > 0.9999, "{math:?} cosine {cosine}");
    }
}

#[test]
fn the_bf16_choice_is_stable_and_runnable() {
    let math = Bf16Math::detect();
    assert_eq!(math, Bf16Math::detect());
    assert!(math.available() || math == Bf16Math::Widened, "{math:?}");
    if math == Bf16Math::DotProduct {
        assert_eq!(DensePath::detect_bf16(), DensePath::Avx512);
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn simd_conversion_equals_scalar_rounding() {
    if DensePath::detect_bf16() != DensePath::Avx512 {
        return;
    }
    for len in [1usize, 2, 31, 32, 33, 64, 384, 385] {
        let mut row = data(len, len as u32);
        if len > 4 {
            row[0] = 1.0 + 1.0 / 256.0;
            row[1] = 1.0 + 3.0 / 256.0;
            row[2] = f32::from_bits(7);
            row[3] = -f32::MAX;
        }
        let steps = len.div_ceil(2);
        let want: Vec<u32> = (0..steps).map(|s| bf16::pair(&row, s)).collect();
        let mut got = vec![0u32; steps];
        // SAFETY: checked above.
        unsafe { x86::row_to_bf16_pairs(&row, &mut got) };
        assert_eq!(got, want, "len {len}");
    }
}

/// Values that stress the arithmetic: zeros, bf16 rounding ties, tiny and large magnitudes.
fn matrix(len: usize) -> impl Strategy<Value = Vec<f32>> {
    let value = prop_oneof![
        6 => -1.0f32..1.0,
        1 => Just(0.0f32),
        1 => (-255i32..=255).prop_map(|q| 1.0 + (q as f32 + 0.5) / 128.0),
        1 => -1.0e3f32..1.0e3,
        1 => -1.0e-6f32..1.0e-6,
    ];
    proptest::collection::vec(value, len)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// (m, k, n) cross the 12-row tile, the 32-channel panel and the odd-K pair edges.
    #[test]
    fn every_path_equals_the_reference(
        ((m, k, n), x, w, b) in (1usize..=30, 1usize..=80, 1usize..=70)
            .prop_flat_map(|(m, k, n)| (Just((m, k, n)), matrix(m * k), matrix(n * k), matrix(n)))
    ) {
        check_all(&x, m, &w, n, k, Some(&b));
    }
}

use super::*;
use crate::test_data::values as data;
use proptest::prelude::*;

/// The weight formats under test: f32, and bf16 multiplied either way.
const FORMATS: [Option<Bf16Math>; 3] = [None, Some(Bf16Math::Widened), Some(Bf16Math::DotProduct)];

fn paths_for(format: Option<Bf16Math>) -> Vec<DensePath> {
    let fast = match format {
        Some(Bf16Math::DotProduct) => DensePath::detect_bf16(),
        _ => DensePath::detect_f32(),
    };
    let mut paths = vec![DensePath::Scalar];
    if fast != DensePath::Scalar {
        paths.push(fast);
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
                Some(Bf16Math::DotProduct) => linear_bf16_reference(x, m, w, n, bias, epilogue),
            };
            for path in paths_for(format) {
                for threads in [1, 2, 3] {
                    let got = linear_dense(x, m, &packed, epilogue, path, threads);
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
    for math in [Bf16Math::Widened, Bf16Math::DotProduct] {
        assert_eq!(PackedDense::bf16(&w, n, k, None, math).unpack(), rounded);
    }
}

#[test]
fn bf16_is_close_to_f32() {
    let (m, k, n) = (16, 384, 96);
    let x = data(m * k, 21);
    let w = data(n * k, 22);
    let exact = linear_f32_reference(&x, m, &w, n, None, Epilogue::None);
    for (math, path) in [
        (Bf16Math::Widened, DensePath::detect_f32()),
        (Bf16Math::DotProduct, DensePath::detect_bf16()),
    ] {
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

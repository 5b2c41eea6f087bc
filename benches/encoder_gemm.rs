//! The encoder's GEMMs (wattserve-kernels: packed f32 and bf16, int8) against candle's f32
//! matmul at the encoder's shapes, plus the machine's instruction peaks for context.
//! `cargo bench --bench encoder_gemm`; throughput is shown in elements/s where one element = one
//! operation (2 per multiply-add), i.e. GOP/s.

use candle_core::{Device, Tensor};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wattserve_kernels::test_data::values as data;
use wattserve_kernels::{
    default_threads, linear_dense_into, linear_i8, Bf16Math, DensePath, Epilogue, Isa, PackedDense,
    PackedWeights,
};

/// 32 sequences × 64 tokens.
const M: usize = 2048;
const SHAPES: [(usize, usize); 3] = [(384, 384), (384, 1536), (1536, 384)];

fn gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("linear");
    group.sample_size(20);
    let threads = default_threads();
    for (k, n) in SHAPES {
        group.throughput(Throughput::Elements((2 * M * k * n) as u64));
        let x = data(M * k, 1);
        let w = data(n * k, 2);
        let bias = data(n, 3);
        let xt = Tensor::from_vec(x.clone(), (M, k), &Device::Cpu).unwrap();
        let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
        let id = format!("{k}x{n}");
        group.bench_with_input(BenchmarkId::new("candle_f32", &id), &(), |b, _| {
            b.iter(|| black_box(xt.matmul(&wt.t().unwrap()).unwrap()))
        });
        let mut y = vec![0f32; M * n];
        for (name, packed, path) in [
            (
                "f32",
                PackedDense::f32(&w, n, k, Some(&bias)),
                DensePath::detect_f32(),
            ),
            (
                "bf16_widened",
                PackedDense::bf16(&w, n, k, Some(&bias), Bf16Math::Widened),
                DensePath::detect_f32(),
            ),
            (
                "bf16_dot",
                PackedDense::bf16(&w, n, k, Some(&bias), Bf16Math::DotProduct),
                DensePath::detect_bf16(),
            ),
            (
                "bf16_amx",
                PackedDense::bf16(&w, n, k, Some(&bias), Bf16Math::Tiles),
                if Bf16Math::Tiles.available() {
                    DensePath::Avx512
                } else {
                    DensePath::Scalar
                },
            ),
        ] {
            if path == DensePath::Scalar {
                continue;
            }
            group.bench_with_input(
                BenchmarkId::new(format!("{name}_{}", path.name()), &id),
                &(),
                |b, _| {
                    b.iter(|| {
                        linear_dense_into(&x, M, &packed, Epilogue::None, path, threads, &mut y);
                        black_box(&y);
                    })
                },
            );
        }
        let packed = PackedWeights::quantize(&w, n, k);
        for isa in [Isa::Amx, Isa::Avx512Vnni, Isa::Avx2] {
            if isa.available() {
                group.bench_with_input(
                    BenchmarkId::new(format!("int8_{}", isa.name()), &id),
                    &(),
                    |b, _| {
                        b.iter(|| black_box(linear_i8(&x, M, &packed, Some(&bias), isa, threads)))
                    },
                );
            }
        }
    }
    group.finish();
}

/// Instruction throughput of one core: independent chains of AVX-512 FMA (32 flops each),
/// `vdpbf16ps` (64 flops each) and VNNI `vpdpbusd` (128 int8 ops each).
#[cfg(target_arch = "x86_64")]
fn peaks(c: &mut Criterion) {
    use std::arch::x86_64::*;
    const ITERS: u64 = 1 << 16;
    let mut group = c.benchmark_group("peak_one_core");
    if std::arch::is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        unsafe fn fma_loop() -> __m512 {
            let (a, b) = (_mm512_set1_ps(0.999), _mm512_set1_ps(0.001));
            let mut acc = [_mm512_setzero_ps(); 12];
            for _ in 0..ITERS {
                for r in acc.iter_mut() {
                    *r = _mm512_fmadd_ps(a, *r, b);
                }
            }
            acc.iter()
                .fold(_mm512_setzero_ps(), |s, r| _mm512_add_ps(s, *r))
        }
        group.throughput(Throughput::Elements(ITERS * 12 * 32));
        group.bench_function("f32_fma_avx512", |b| {
            b.iter(|| black_box(unsafe { fma_loop() }))
        });
    }
    if DensePath::detect_bf16() == DensePath::Avx512 {
        #[target_feature(enable = "avx512f,avx512bf16")]
        unsafe fn bf16_loop() -> __m512 {
            let a: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80));
            let mut acc = [_mm512_setzero_ps(); 12];
            for _ in 0..ITERS {
                for r in acc.iter_mut() {
                    *r = _mm512_dpbf16_ps(*r, a, a);
                }
            }
            acc.iter()
                .fold(_mm512_setzero_ps(), |s, r| _mm512_add_ps(s, *r))
        }
        group.throughput(Throughput::Elements(ITERS * 12 * 64));
        group.bench_function("bf16_dpbf16ps_avx512", |b| {
            b.iter(|| black_box(unsafe { bf16_loop() }))
        });
    }
    if Isa::Avx512Vnni.available() {
        #[target_feature(enable = "avx512f,avx512vnni")]
        unsafe fn vnni_loop() -> __m512i {
            let (a, b) = (_mm512_set1_epi8(3), _mm512_set1_epi8(-2));
            let mut acc = [_mm512_setzero_si512(); 12];
            for _ in 0..ITERS {
                for r in acc.iter_mut() {
                    *r = _mm512_dpbusd_epi32(*r, a, b);
                }
            }
            acc.iter()
                .fold(_mm512_setzero_si512(), |s, r| _mm512_add_epi32(s, *r))
        }
        group.throughput(Throughput::Elements(ITERS * 12 * 128));
        group.bench_function("int8_vnni_avx512", |b| {
            b.iter(|| black_box(unsafe { vnni_loop() }))
        });
    }
    group.finish();
}

#[cfg(not(target_arch = "x86_64"))]
fn peaks(_: &mut Criterion) {}

criterion_group!(benches, gemm, peaks);
criterion_main!(benches);

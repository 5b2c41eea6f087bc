//! Q8_0 matmuls for the decoder at SmolLM2's shapes and the row counts of decoding 1, 4 and 16
//! sequences and of a 64-token prompt chunk: candle's `QMatMul` (per row, or its repacked VNNI kernel when K is a multiple of
//! 256), candle's repacked kernel on inputs zero-padded to a multiple of 256 (`candle-padded`,
//! what the engine used before), wattserve's portable-SIMD Q8_0 kernel (`wattserve`, CPUs
//! without VNNI) and wattserve's tile kernels (int8 in blocks of 64, the engine's default where
//! the CPU has AMX or AVX-512 VNNI: `wattserve-tiles-amx`, `wattserve-tiles-avx512-vnni`).
//! `cargo bench --bench q8_0_matmul`; GOP/s as elements/s.

use std::hint::black_box;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wattserve::engine::decoder::cpu_pool;
use wattserve_kernels::default_threads;
use wattserve_kernels::q8_0::{matmul_q8_0, Q8Path, Q8_0Weights};
use wattserve_kernels::q8_tiles::{self, Kernel, Q8Tiles};
use wattserve_kernels::test_data::values as data;

/// (K, N): attention q/o, k/v, FFN gate/up, FFN down, output head.
const SHAPES: [(usize, usize); 5] = [
    (576, 576),
    (576, 192),
    (576, 1536),
    (1536, 576),
    (576, 49152),
];

fn q8(c: &mut Criterion) {
    let mut group = c.benchmark_group("q8_0");
    group.sample_size(20);
    let threads = default_threads();
    let path = Q8Path::detect();
    for (k, n) in SHAPES {
        let w = Tensor::from_vec(data(n * k, 2), (n, k), &Device::Cpu).unwrap();
        let qt = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let ours = Q8_0Weights::from_ggml_blocks(&qt.data().unwrap(), n, k).unwrap();
        let candle = QMatMul::from_qtensor(qt).unwrap();
        let tiles = Q8Tiles::quantize(&data(n * k, 2), n, k).unwrap();
        let padded_k = k.div_ceil(256) * 256;
        let padded = (padded_k > k).then(|| {
            let zeros = Tensor::zeros((n, padded_k - k), candle_core::DType::F32, &Device::Cpu);
            let wp = Tensor::cat(&[&w, &zeros.unwrap()], 1).unwrap();
            QMatMul::from_qtensor(QTensor::quantize(&wp, GgmlDType::Q8_0).unwrap()).unwrap()
        });
        for m in [1usize, 4, 16, 64] {
            group.throughput(Throughput::Elements((2 * m * k * n) as u64));
            let x = data(m * k, 1);
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let id = format!("{k}x{n}/m{m}");
            group.bench_with_input(BenchmarkId::new("candle", &id), &(), |b, _| {
                b.iter(|| black_box(candle.forward(&xt).unwrap()))
            });
            group.bench_with_input(BenchmarkId::new("wattserve", &id), &(), |b, _| {
                b.iter(|| black_box(matmul_q8_0(&x, m, &ours, path, threads)))
            });
            if let Some(padded) = &padded {
                let xp = Tensor::cat(
                    &[
                        &xt,
                        &Tensor::zeros((m, padded_k - k), candle_core::DType::F32, &Device::Cpu)
                            .unwrap(),
                    ],
                    1,
                )
                .unwrap();
                group.bench_with_input(BenchmarkId::new("candle-padded", &id), &(), |b, _| {
                    b.iter(|| black_box(padded.forward(&xp).unwrap()))
                });
            }
            for kernel in [Kernel::Amx, Kernel::Vnni] {
                if !kernel.available() {
                    continue;
                }
                let name = format!("wattserve-tiles-{}", kernel.name());
                group.bench_with_input(BenchmarkId::new(name, &id), &(), |b, _| {
                    b.iter(|| {
                        black_box(q8_tiles::matmul_with(kernel, &x, m, &tiles, &cpu_pool::run))
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, q8);
criterion_main!(benches);

//! One continuous-batching decode step of SmolLM2-135M (int8, the served default) with the engine
//! alone (no HTTP, no scheduler): `n` sequences, each with a ~40-token prompt already cached,
//! each adding one token, in ONE forward pass. The time per step at 1, 4 and 16 sequences shows
//! how much a bigger batch costs, which is what bounds aggregate tokens/s at N streams.
//! `cargo bench --bench decode_step`; throughput is in output tokens (elements/s).
//! Needs the weights (`models/fetch.sh smollm2`); prints SKIPPED and measures nothing without.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wattserve::engine::decoder::llama::KvCache;
use wattserve::engine::{DeviceSpec, Precision};
use wattserve::engine::{GenerationLoadOptions, GenerationModel, Logits, SeqInput};

fn gguf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/smollm2/weights/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Prompt lengths of the cached sequences (like the bench's chat prompts: 30–50 tokens).
fn prompt(i: usize) -> Vec<u32> {
    (0..30 + (i * 7) % 21)
        .map(|j| 100 + ((i * 131 + j * 17) % 4000) as u32)
        .collect()
}

fn decode(c: &mut Criterion) {
    if !gguf().is_file() {
        eprintln!("SKIPPED: SmolLM2 GGUF missing; run models/fetch.sh smollm2");
        return;
    }
    let engine = GenerationModel::load(&GenerationLoadOptions {
        path: gguf(),
        precision: Precision::Int8,
        device: DeviceSpec::Cpu,
        max_context: None,
    })
    .expect("SmolLM2 loads");
    let model = engine.model();
    let mut group = c.benchmark_group("decode_step");
    group.sample_size(20);
    for n in [1usize, 4, 16] {
        let prompts: Vec<Vec<u32>> = (0..n).map(prompt).collect();
        let mut caches: Vec<KvCache> = prompts
            .iter()
            .map(|p| model.new_cache(p.len() + 64))
            .collect();
        {
            let mut inputs: Vec<SeqInput<'_, KvCache>> = prompts
                .iter()
                .zip(caches.iter_mut())
                .map(|(p, cache)| SeqInput {
                    tokens: p,
                    cache,
                    logits: Logits::Last,
                })
                .collect();
            model.forward(&mut inputs).expect("prefill");
        }
        let token = [42u32];
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let mut inputs: Vec<SeqInput<'_, KvCache>> = caches
                    .iter_mut()
                    .map(|cache| SeqInput {
                        tokens: &token,
                        cache,
                        logits: Logits::Last,
                    })
                    .collect();
                let logits = black_box(model.forward(&mut inputs).expect("decode step"));
                // Rewind, so that every step runs at the same context length.
                for (cache, p) in caches.iter_mut().zip(&prompts) {
                    cache.truncate(p.len());
                }
                logits
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);

//! `wattserve bench --html FILE`: the report as a self-contained page. Throughput and p50/p99
//! latency against concurrency per model, energy per request or output token per model and
//! precision, and each model's accuracy against the reference, then the tables.

use std::collections::BTreeSet;

use super::report::BenchReport;
use crate::charts::page::Page;
use crate::charts::{human, BarChart, LineChart, Series};

/// The clients of a `c=N` level (`None` for open-loop levels).
fn clients(load: &str) -> Option<f64> {
    load.strip_prefix("c=").and_then(|n| n.parse().ok())
}

/// The page.
pub fn page(r: &BenchReport) -> String {
    let load = |l: Option<[f64; 3]>| {
        l.map_or("n/a".into(), |l| {
            format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
        })
    };
    let mut p = Page::new(
        "wattserve bench",
        &format!(
            "Target {}; {} distinct inputs, {} per request; load average {} → {}. Energy per the server's x-energy-source.",
            r.target,
            r.distinct_inputs,
            r.inputs_per_request,
            load(r.load_average_start),
            load(r.load_average_end)
        ),
    );
    let precision = |model: &str| {
        r.energy_labels
            .iter()
            .find(|l| l.model == model)
            .map_or_else(String::new, |l| format!(" ({})", l.precision))
    };
    let mut charts = Vec::new();
    // Embedding levels: one series per model × protocol.
    let series_keys: Vec<(String, &str)> = {
        let mut keys = Vec::new();
        for l in &r.levels {
            let k = (l.model.clone(), l.protocol);
            if clients(&l.load).is_some() && !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys
    };
    let xs: Vec<f64> = r
        .levels
        .iter()
        .filter_map(|l| clients(&l.load))
        .map(|c| c as u64)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|c| c as f64)
        .collect();
    let protocols: BTreeSet<&str> = series_keys.iter().map(|k| k.1).collect();
    let name = |(model, protocol): &(String, &str)| {
        if protocols.len() > 1 {
            format!("{model}{} {protocol}", precision(model))
        } else {
            format!("{model}{}", precision(model))
        }
    };
    let at = |key: &(String, &str), x: f64, f: &dyn Fn(&super::report::LevelReport) -> f64| {
        r.levels
            .iter()
            .find(|l| l.model == key.0 && l.protocol == key.1 && clients(&l.load) == Some(x))
            .map_or(f64::NAN, f)
    };
    if !series_keys.is_empty() {
        charts.push(
            LineChart {
                id: "throughput".into(),
                title: "Embeddings: throughput against concurrency".into(),
                x_label: "concurrent clients".into(),
                unit: "requests/s".into(),
                x: xs.clone(),
                series: series_keys
                    .iter()
                    .map(|k| Series {
                        name: name(k),
                        values: xs
                            .iter()
                            .map(|&x| at(k, x, &|l| l.requests_per_s))
                            .collect(),
                    })
                    .collect(),
            }
            .svg(),
        );
        let mut latency = Vec::new();
        for k in &series_keys {
            for (q, f) in [
                (
                    "p50",
                    (|l: &super::report::LevelReport| l.p50_ms) as fn(&_) -> f64,
                ),
                ("p99", |l| l.p99_ms),
            ] {
                latency.push(Series {
                    name: format!("{} {q}", name(k)),
                    values: xs.iter().map(|&x| at(k, x, &f)).collect(),
                });
            }
        }
        charts.push(
            LineChart {
                id: "latency".into(),
                title: "Embeddings: p50 and p99 latency against concurrency".into(),
                x_label: "concurrent clients".into(),
                unit: "ms".into(),
                x: xs.clone(),
                series: latency,
            }
            .svg(),
        );
        if r.levels.iter().any(|l| l.joules_per_request.is_some()) {
            charts.push(
                BarChart {
                    id: "energy-per-request".into(),
                    title: "Embeddings: energy per request".into(),
                    unit: "mJ per request".into(),
                    categories: series_keys.iter().map(name).collect(),
                    series: xs
                        .iter()
                        .map(|&x| Series {
                            name: format!("{} clients", human(x)),
                            values: series_keys
                                .iter()
                                .map(|k| {
                                    at(k, x, &|l| l.joules_per_request.unwrap_or(f64::NAN) * 1e3)
                                })
                                .collect(),
                        })
                        .collect(),
                    stacked: false,
                }
                .svg(),
            );
        }
    }
    // Generation levels: one series per model.
    let gen_models: Vec<&str> = {
        let mut m: Vec<&str> = Vec::new();
        for g in &r.generation {
            if !m.contains(&g.model.as_str()) {
                m.push(&g.model);
            }
        }
        m
    };
    if !gen_models.is_empty() {
        let streams: Vec<f64> = r
            .generation
            .iter()
            .map(|g| g.streams)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|s| s as f64)
            .collect();
        let at = |model: &str, s: f64, f: &dyn Fn(&super::report::GenLevelReport) -> f64| {
            r.generation
                .iter()
                .find(|g| g.model == model && g.streams as f64 == s)
                .map_or(f64::NAN, f)
        };
        let per_model = |f: &dyn Fn(&super::report::GenLevelReport) -> f64, suffix: &str| {
            gen_models
                .iter()
                .map(|m| Series {
                    name: format!("{m}{}{suffix}", precision(m)),
                    values: streams.iter().map(|&s| at(m, s, f)).collect(),
                })
                .collect::<Vec<_>>()
        };
        charts.push(
            LineChart {
                id: "generation-throughput".into(),
                title: "Generation: output tokens per second against streams".into(),
                x_label: "concurrent streams".into(),
                unit: "tokens/s".into(),
                x: streams.clone(),
                series: per_model(&|g| g.tokens_per_s, ""),
            }
            .svg(),
        );
        let mut ttft = per_model(&|g| g.ttft_p50_ms, " TTFT p50");
        ttft.extend(per_model(&|g| g.ttft_p99_ms, " TTFT p99"));
        charts.push(
            LineChart {
                id: "generation-latency".into(),
                title: "Generation: time to first token against streams".into(),
                x_label: "concurrent streams".into(),
                unit: "ms".into(),
                x: streams.clone(),
                series: ttft,
            }
            .svg(),
        );
        if r.generation.iter().any(|g| g.joules_per_token.is_some()) {
            charts.push(
                BarChart {
                    id: "energy-per-token".into(),
                    title: "Generation: energy per output token".into(),
                    unit: "mJ per token".into(),
                    categories: gen_models
                        .iter()
                        .map(|m| format!("{m}{}", precision(m)))
                        .collect(),
                    series: streams
                        .iter()
                        .map(|&s| Series {
                            name: format!("{} streams", human(s)),
                            values: gen_models
                                .iter()
                                .map(|m| {
                                    at(m, s, &|g| g.joules_per_token.unwrap_or(f64::NAN) * 1e3)
                                })
                                .collect(),
                        })
                        .collect(),
                    stacked: false,
                }
                .svg(),
            );
        }
    }
    if !r.accuracy.is_empty() {
        charts.push(
            BarChart {
                id: "accuracy".into(),
                title: format!(
                    "Accuracy: cosine similarity to {}{}",
                    r.accuracy[0].reference,
                    precision(&r.accuracy[0].reference)
                ),
                unit: "cosine".into(),
                categories: r
                    .accuracy
                    .iter()
                    .map(|a| format!("{}{}", a.model, precision(&a.model)))
                    .collect(),
                series: vec![
                    Series {
                        name: "mean".into(),
                        values: r.accuracy.iter().map(|a| a.mean_cosine).collect(),
                    },
                    Series {
                        name: "min".into(),
                        values: r.accuracy.iter().map(|a| a.min_cosine).collect(),
                    },
                ],
                stacked: false,
            }
            .svg(),
        );
    }
    p.heading("Pictures").charts(&charts);
    if !r.energy_labels.is_empty() {
        let rows: Vec<Vec<String>> = r
            .energy_labels
            .iter()
            .map(|l| {
                vec![
                    l.model.clone(),
                    l.precision.clone(),
                    l.task.clone(),
                    l.class.clone().unwrap_or_else(|| "-".into()),
                    l.joules_per_1k_tokens
                        .map_or("-".into(), |j| format!("{j:.3}")),
                    l.energy_source.clone(),
                ]
            })
            .collect();
        p.heading("Energy labels").table(
            &[
                "model",
                "precision",
                "task",
                "class",
                "J per 1k tokens",
                "source",
            ],
            &rows,
        );
    }
    if !r.levels.is_empty() {
        let rows: Vec<Vec<String>> = r
            .levels
            .iter()
            .map(|l| {
                vec![
                    l.model.clone(),
                    l.load.clone(),
                    l.protocol.to_string(),
                    format!("{:.1}", l.requests_per_s),
                    format!("{:.2}", l.p50_ms),
                    format!("{:.2}", l.p99_ms),
                    format!("{:.1}", l.mean_batch_size),
                    l.joules_per_request
                        .map_or("-".into(), |j| format!("{:.1}", j * 1e3)),
                    l.errors.values().sum::<u64>().to_string(),
                ]
            })
            .collect();
        p.heading("Embedding levels").table(
            &[
                "model", "load", "protocol", "req/s", "p50 ms", "p99 ms", "batch", "mJ/req",
                "errors",
            ],
            &rows,
        );
    }
    if !r.generation.is_empty() {
        let rows: Vec<Vec<String>> = r
            .generation
            .iter()
            .map(|g| {
                vec![
                    g.model.clone(),
                    g.streams.to_string(),
                    format!("{:.1}", g.tokens_per_s),
                    format!("{:.1}", g.ttft_p50_ms),
                    format!("{:.1}", g.ttft_p99_ms),
                    format!("{:.2}", g.itl_p50_ms),
                    g.joules_per_token
                        .map_or("-".into(), |j| format!("{:.2}", j * 1e3)),
                    g.errors.to_string(),
                ]
            })
            .collect();
        p.heading("Generation levels").table(
            &[
                "model",
                "streams",
                "tok/s",
                "TTFT p50 ms",
                "TTFT p99 ms",
                "ITL p50 ms",
                "mJ/token",
                "errors",
            ],
            &rows,
        );
    }
    p.finish("wattserve bench — method: docs/benchmarking.md")
}

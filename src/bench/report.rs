//! Benchmark results: per-level statistics, the stdout table and the JSON file.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

pub use super::perplexity::PerplexityReport;

/// What one request brought back.
pub struct Sent {
    /// HTTP status (0: the connection failed; gRPC codes as the status they stand for).
    pub status: u16,
    /// Latency, µs.
    pub micros: u64,
    /// `x-batch-size`.
    pub batch: Option<u64>,
    /// `x-energy-joules`.
    pub joules: Option<f64>,
    /// `x-cache: hit`.
    pub cache_hit: bool,
}

/// Raw observations of one load level, merged across client tasks.
pub struct Recorder {
    /// Latency of successful requests, microseconds.
    pub ok: Histogram<u64>,
    /// Latency of failed requests, microseconds.
    pub failed: Histogram<u64>,
    /// Successful requests.
    pub requests_ok: u64,
    /// Inputs in successful requests.
    pub inputs_ok: u64,
    /// Failures by HTTP status (`0` = connection error).
    pub errors: BTreeMap<u16, u64>,
    /// Sum of `x-batch-size` over successful requests.
    pub batch_size_sum: u64,
    /// Open loop: arrivals not sent because too many were outstanding.
    pub not_sent: u64,
    /// Sum of `x-energy-joules` over successful requests that carried it.
    pub joules_sum: f64,
    /// Successful requests that carried `x-energy-joules`.
    pub metered: u64,
    /// Successful requests answered from the server's cache (`x-cache: hit`).
    pub cache_hits: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        let hist = || {
            Histogram::new_with_bounds(1, 600_000_000, 3)
                .expect("static histogram bounds are valid")
        };
        Self {
            ok: hist(),
            failed: hist(),
            requests_ok: 0,
            inputs_ok: 0,
            errors: BTreeMap::new(),
            batch_size_sum: 0,
            not_sent: 0,
            joules_sum: 0.0,
            metered: 0,
            cache_hits: 0,
        }
    }
}

impl Recorder {
    /// Records one answered request of `inputs` inputs.
    pub fn record(&mut self, sent: &Sent, inputs: usize) {
        let (status, batch_size, joules) = (sent.status, sent.batch, sent.joules);
        let micros = sent.micros.clamp(1, 600_000_000);
        if status == 200 {
            self.cache_hits += u64::from(sent.cache_hit);
            if let Some(j) = joules {
                self.joules_sum += j;
                self.metered += 1;
            }
            self.requests_ok += 1;
            self.inputs_ok += inputs as u64;
            self.batch_size_sum += batch_size.unwrap_or(0);
            let _ = self.ok.record(micros);
        } else {
            *self.errors.entry(status).or_default() += 1;
            let _ = self.failed.record(micros);
        }
    }

    /// Adds another recorder's observations.
    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.ok.add(&other.ok);
        let _ = self.failed.add(&other.failed);
        self.requests_ok += other.requests_ok;
        self.inputs_ok += other.inputs_ok;
        self.batch_size_sum += other.batch_size_sum;
        self.not_sent += other.not_sent;
        self.joules_sum += other.joules_sum;
        self.metered += other.metered;
        self.cache_hits += other.cache_hits;
        for (k, v) in &other.errors {
            *self.errors.entry(*k).or_default() += v;
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    /// Model name as requested.
    pub model: String,
    /// `c=N` (closed loop, N clients) or `rate=R/s` (open loop).
    pub load: String,
    /// How the requests were sent: `openai`, `v2-json`, `v2-binary`, `grpc`.
    pub protocol: &'static str,
    /// Wall time of the measured window, seconds.
    pub seconds: f64,
    /// Successful requests.
    pub requests: u64,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Inputs embedded per second.
    pub inputs_per_s: f64,
    /// Latency percentiles of successful requests, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
    /// Mean `x-batch-size` of successful requests.
    pub mean_batch_size: f64,
    /// Failures by status (`0` = connection error).
    pub errors: BTreeMap<u16, u64>,
    /// p99 latency of failures (how fast a 503 comes back), milliseconds.
    pub error_p99_ms: Option<f64>,
    /// Open loop: arrivals skipped because `--max-outstanding` requests were pending.
    pub not_sent: u64,
    /// In-process runs: process CPU seconds (server + load generator) during the window.
    pub cpu_seconds: Option<f64>,
    /// In-process runs: inputs per CPU-second.
    pub inputs_per_cpu_s: Option<f64>,
    /// In-process runs: resident memory at the end of the level, MiB.
    pub rss_mib: Option<f64>,
    /// Mean `x-energy-joules` of successful requests (absent when not metered).
    pub joules_per_request: Option<f64>,
    /// Share of successful requests answered wholly from the server's cache.
    pub cache_hit_ratio: f64,
}

impl LevelReport {
    /// Summarizes a level.
    pub fn new(
        model: &str,
        load: String,
        protocol: &'static str,
        seconds: f64,
        rec: &Recorder,
        cpu_seconds: Option<f64>,
        rss_mib: Option<f64>,
    ) -> Self {
        let ms = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1e3
            }
        };
        Self {
            model: model.to_string(),
            load,
            protocol,
            seconds,
            requests: rec.requests_ok,
            requests_per_s: rec.requests_ok as f64 / seconds,
            inputs_per_s: rec.inputs_ok as f64 / seconds,
            p50_ms: ms(&rec.ok, 0.5),
            p90_ms: ms(&rec.ok, 0.9),
            p95_ms: ms(&rec.ok, 0.95),
            p99_ms: ms(&rec.ok, 0.99),
            max_ms: if rec.ok.is_empty() {
                0.0
            } else {
                rec.ok.max() as f64 / 1e3
            },
            mean_batch_size: if rec.requests_ok == 0 {
                0.0
            } else {
                rec.batch_size_sum as f64 / rec.requests_ok as f64
            },
            errors: rec.errors.clone(),
            error_p99_ms: (!rec.failed.is_empty()).then(|| ms(&rec.failed, 0.99)),
            not_sent: rec.not_sent,
            cpu_seconds,
            inputs_per_cpu_s: cpu_seconds
                .filter(|&c| c > 0.0)
                .map(|c| rec.inputs_ok as f64 / c),
            rss_mib,
            joules_per_request: (rec.metered > 0).then(|| rec.joules_sum / rec.metered as f64),
            cache_hit_ratio: if rec.requests_ok == 0 {
                0.0
            } else {
                rec.cache_hits as f64 / rec.requests_ok as f64
            },
        }
    }
}

/// The engine alone, in-process, at a fixed batch size: the ceiling for server throughput.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingReport {
    /// Model name.
    pub model: String,
    /// Inputs per forward pass.
    pub batch_size: usize,
    /// Inputs embedded per second.
    pub inputs_per_s: f64,
    /// Forward passes timed.
    pub batches: usize,
    /// Median time of one forward pass (milliseconds).
    pub batch_p50_ms: f64,
    /// Inputs per process CPU-second during the measurement (the server is idle meanwhile).
    pub inputs_per_cpu_s: Option<f64>,
}

/// How close a model's embeddings are to a reference model's on the same inputs.
#[derive(Debug, Clone, Serialize)]
pub struct AccuracyReport {
    /// The model compared.
    pub model: String,
    /// The model it is compared with (the first one benchmarked).
    pub reference: String,
    /// Inputs compared.
    pub inputs: usize,
    /// Mean cosine similarity.
    pub mean_cosine: f64,
    /// Smallest cosine similarity.
    pub min_cosine: f64,
}

/// Everything one `wattserve bench` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Target URL, or `in-process`.
    pub target: String,
    /// Load average (1, 5, 15 min) at the start.
    pub load_average_start: Option<[f64; 3]>,
    /// Load average at the end.
    pub load_average_end: Option<[f64; 3]>,
    /// CPU compute threads of an in-process server (0 = one per core).
    pub threads: Option<usize>,
    /// Distinct inputs cycled through.
    pub distinct_inputs: usize,
    /// Inputs per request.
    pub inputs_per_request: usize,
    /// Engine ceilings measured in-process.
    pub ceilings: Vec<CeilingReport>,
    /// Each model's outputs against the first model's, on the same inputs.
    pub accuracy: Vec<AccuracyReport>,
    /// One row per model and load level.
    pub levels: Vec<LevelReport>,
    /// Generation models: one row per model and number of concurrent streams.
    pub generation: Vec<GenLevelReport>,
    /// Generation models: perplexity on the `--perplexity` text, with what scoring cost.
    pub perplexity: Vec<PerplexityReport>,
    /// Each model's energy label after the run.
    pub energy_labels: Vec<EnergyLabelReport>,
}

/// A model's energy label (A best to E) as the server computed it from what it served: joules
/// per 1,000 input tokens (embeddings) or output tokens (generation) against its thresholds
/// (docs/energy.md#energy-label).
#[derive(Debug, Clone, Serialize)]
pub struct EnergyLabelReport {
    /// Model name.
    pub model: String,
    /// Its precision.
    pub precision: String,
    /// `embedding` or `generation`.
    pub task: String,
    /// How its energy was measured (`estimate`, `rapl`, ...; `none` when not metered).
    pub energy_source: String,
    /// The class; `None` when the model was not metered or served no tokens.
    pub class: Option<String>,
    /// Joules per 1,000 input (embeddings) or output (generation) tokens.
    pub joules_per_1k_tokens: Option<f64>,
}

/// Quality beside speed and energy: per generation model, its perplexity on the `--perplexity`
/// text and what scoring cost, next to the decode speed and joules per token of its busiest
/// level in the same run.
fn quality_table(r: &BenchReport) -> String {
    let mut out = format!(
        "{:<22} {:>9} {:>8} {:>7} {:>20} {:>13} {:>14} {:>12} {:>10}\n",
        "generation model",
        "precision",
        "context",
        "scored",
        "perplexity ± se",
        "scored tok/s",
        "J/1k scored",
        "gen tok/s",
        "J/token"
    );
    for p in &r.perplexity {
        let busiest = r
            .generation
            .iter()
            .filter(|g| g.model == p.model)
            .max_by_key(|g| g.streams);
        out.push_str(&format!(
            "{:<22} {:>9} {:>8} {:>7} {:>20} {:>13.1} {:>14} {:>12} {:>10}\n",
            p.model,
            p.precision,
            p.context,
            p.scored_tokens,
            format!("{:.4} ± {:.4}", p.perplexity, p.stderr),
            p.scored_tokens_per_s,
            p.joules_per_1k_scored
                .map_or("-".into(), |j| format!("{j:.2}")),
            busiest.map_or("-".into(), |g| format!(
                "{:.1} ({})",
                g.tokens_per_s, g.streams
            )),
            busiest
                .and_then(|g| g.joules_per_token)
                .map_or("-".into(), |j| format!("{j:.4}")),
        ));
    }
    if let Some(src) = r.perplexity.iter().find_map(|p| p.energy_source.clone()) {
        out.push_str(&format!(
            "perplexity: the second half of each chunk scored, as llama.cpp's perplexity tool; gen tok/s at the most streams (in brackets); energy source: {src}\n"
        ));
    }
    out
}

/// The column headers of the embedding levels' table.
fn level_header() -> String {
    format!(
        "{:<22} {:>10} {:>9} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>9} {:>8} {:>8}  {}\n",
        "model",
        "load",
        "protocol",
        "req/s",
        "inputs/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "batch",
        "in/CPU-s",
        "RSS MiB",
        "err p99",
        "mJ/req",
        "errors"
    )
}

/// Renders the report as a plain-text table.
pub fn table(r: &BenchReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "target: {}   inputs: {} distinct, {} per request   threads: {}   load average: {} -> {}\n",
        r.target,
        r.distinct_inputs,
        r.inputs_per_request,
        r.threads.map_or("n/a".into(), |t| if t == 0 {
            "all cores".into()
        } else {
            t.to_string()
        }),
        fmt_load(r.load_average_start),
        fmt_load(r.load_average_end),
    ));
    // The embedding levels' header, only when there are embedding levels.
    if !r.levels.is_empty() {
        out.push_str(&level_header());
    }
    for l in &r.levels {
        let errors = if l.errors.is_empty() && l.not_sent == 0 {
            "-".to_string()
        } else {
            let mut e: Vec<String> = l
                .errors
                .iter()
                .map(|(s, n)| {
                    if *s == 0 {
                        format!("conn:{n}")
                    } else {
                        format!("{s}:{n}")
                    }
                })
                .collect();
            if l.not_sent > 0 {
                e.push(format!("not-sent:{}", l.not_sent));
            }
            e.join(" ")
        };
        out.push_str(&format!(
            "{:<22} {:>10} {:>9} {:>9.1} {:>10.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6.1} {:>9} {:>9} {:>8} {:>8}  {}\n",
            l.model,
            l.load,
            l.protocol,
            l.requests_per_s,
            l.inputs_per_s,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms,
            l.mean_batch_size,
            l.inputs_per_cpu_s.map_or("-".into(), |v| format!("{v:.1}")),
            l.rss_mib.map_or("-".into(), |v| format!("{v:.0}")),
            l.error_p99_ms.map_or("-".into(), |v| format!("{v:.2}")),
            l.joules_per_request.map_or("-".into(), |v| format!("{:.1}", v * 1000.0)),
            errors
        ));
    }
    for l in r.levels.iter().filter(|l| l.load.contains(" r=")) {
        out.push_str(&format!(
            "cache: {} {} {}: {:.1}% of requests answered from the cache\n",
            l.model,
            l.load,
            l.protocol,
            l.cache_hit_ratio * 100.0
        ));
    }
    for a in &r.accuracy {
        out.push_str(&format!(
            "accuracy: {} vs {} on {} inputs: mean cosine {:.6}, min {:.6}\n",
            a.model, a.reference, a.inputs, a.mean_cosine, a.min_cosine
        ));
    }
    for c in &r.ceilings {
        out.push_str(&format!(
            "engine ceiling (in-process, no HTTP): {} at batch {}: {:.1} inputs/s ({} inputs/CPU-s), batch p50 {:.2} ms over {} batches\n",
            c.model,
            c.batch_size,
            c.inputs_per_s,
            c.inputs_per_cpu_s.map_or("-".into(), |v| format!("{v:.1}")),
            c.batch_p50_ms,
            c.batches
        ));
    }
    if !r.generation.is_empty() {
        out.push_str(&format!(
            "{:<22} {:>7} {:>8} {:>9} {:>10} {:>10} {:>9} {:>9} {:>12} {:>9}  {}\n",
            "generation model",
            "streams",
            "requests",
            "tok/s",
            "TTFT p50",
            "TTFT p99",
            "ITL p50",
            "ITL p99",
            "tok/s/stream",
            "J/token",
            "errors"
        ));
        for g in &r.generation {
            out.push_str(&format!(
                "{:<22} {:>7} {:>8} {:>9.1} {:>8.1}ms {:>8.1}ms {:>7.2}ms {:>7.2}ms {:>12.1} {:>9}  {}\n",
                g.model,
                g.streams,
                g.requests,
                g.tokens_per_s,
                g.ttft_p50_ms,
                g.ttft_p99_ms,
                g.itl_p50_ms,
                g.itl_p99_ms,
                g.decode_tokens_per_s_per_stream,
                g.joules_per_token.map_or("-".into(), |j| format!("{j:.4}")),
                if g.errors == 0 { "-".to_string() } else { g.errors.to_string() }
            ));
        }
        if let Some(src) = r.generation.iter().find_map(|g| g.energy_source.clone()) {
            out.push_str(&format!("energy source: {src}; every completion is exactly --max-tokens long (ignore_eos)\n"));
        }
    }
    if !r.perplexity.is_empty() {
        out.push_str(&quality_table(r));
    }
    for l in &r.energy_labels {
        let unit = if l.task == "generation" {
            "output"
        } else {
            "input"
        };
        out.push_str(&format!(
            "energy label: {} ({}): {} ({} J per 1k {unit} tokens, {})\n",
            l.model,
            l.precision,
            l.class.as_deref().unwrap_or("-"),
            l.joules_per_1k_tokens
                .map_or("-".into(), |j| format!("{j:.3}")),
            l.energy_source,
        ));
    }
    out
}

fn fmt_load(l: Option<[f64; 3]>) -> String {
    l.map_or("n/a".into(), |l| {
        format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
    })
}

/// One model at one number of concurrent streams.
#[derive(Debug, Clone, Serialize)]
pub struct GenLevelReport {
    /// Model name.
    pub model: String,
    /// Concurrent streams.
    pub streams: usize,
    /// Wall time of the level.
    pub seconds: f64,
    /// Completions finished.
    pub requests: u64,
    /// Requests that failed (status or stream error).
    pub errors: u64,
    /// Output tokens of all completions.
    pub output_tokens: u64,
    /// Output tokens per second, all streams together.
    pub tokens_per_s: f64,
    /// Time to first token, median.
    pub ttft_p50_ms: f64,
    /// Time to first token, 99th percentile.
    pub ttft_p99_ms: f64,
    /// Inter-token latency (per completion mean), median.
    pub itl_p50_ms: f64,
    /// Inter-token latency (per completion mean), 99th percentile.
    pub itl_p99_ms: f64,
    /// Decode speed of one stream: 1 / median inter-token latency.
    pub decode_tokens_per_s_per_stream: f64,
    /// Joules per output token (all energy of the completions over their output tokens).
    pub joules_per_token: Option<f64>,
    /// `x-energy-source` of the figures.
    pub energy_source: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> BenchReport {
        BenchReport {
            target: "in-process".into(),
            load_average_start: None,
            load_average_end: None,
            threads: Some(2),
            distinct_inputs: 1,
            inputs_per_request: 1,
            ceilings: Vec::new(),
            accuracy: Vec::new(),
            levels: Vec::new(),
            generation: Vec::new(),
            perplexity: Vec::new(),
            energy_labels: Vec::new(),
        }
    }

    #[test]
    fn a_run_without_embedding_levels_prints_no_embedding_header_and_the_quality_table() {
        let mut r = report();
        assert!(!table(&r).contains("in/CPU-s"));
        r.perplexity.push(PerplexityReport {
            model: "smollm2".into(),
            precision: "int8".into(),
            context: 512,
            chunks: 2,
            scored_tokens: 510,
            perplexity: 18.5,
            stderr: 0.9,
            scored_tokens_per_s: 300.0,
            joules_per_1k_scored: Some(51.8),
            energy_source: Some("estimate".into()),
        });
        let text = table(&r);
        assert!(text.contains("18.5000 ± 0.9000"), "{text}");
        assert!(text.contains("51.80"), "{text}");
        assert!(text.contains("energy source: estimate"), "{text}");
    }
}

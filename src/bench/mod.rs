//! `wattserve bench`: the load generator every performance claim is measured with.
//!
//! It drives a server at a URL, or one it starts in-process from the same configuration as
//! `wattserve serve`, with closed-loop clients (`--concurrency 1,8,32`) or open-loop Poisson
//! arrivals (`--rate`), and reports per model and level: requests/s, inputs/s, latency
//! percentiles, errors by status, mean batch size, and in-process also CPU time and memory.
//! `--unbatched-baseline` serves each model a second time with `max_batch_size = 1` so that
//! batching on and off are compared in one run; `--offline-ceiling` times the engine alone.

pub mod generation;
pub mod html;
pub mod inputs;
pub mod load;
pub mod perplexity;
pub mod procfs;
pub mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::config::{Config, Overrides};
use crate::engine::{Embedder, EmbeddingModel};
use crate::repository::{discover, ModelEntry};
use crate::Server;
use load::{Protocol, Stop, Target};
use report::{BenchReport, CeilingReport, LevelReport};

/// Options of `wattserve bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server to load, e.g. http://127.0.0.1:8080. Default: start one in-process from the
    /// config options below.
    #[arg(long)]
    pub url: Option<String>,
    /// With `--url` and `--protocol grpc`: the server's gRPC address, e.g. 127.0.0.1:8081.
    #[arg(long)]
    pub grpc_url: Option<String>,
    /// Protocols to load embedding models through, each at every level: openai, v2-json,
    /// v2-binary (Open Inference Protocol REST), grpc [default: openai].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub protocol: Vec<Protocol>,
    /// In-process server: config file (as `serve --config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// In-process server: the model repository.
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// In-process server: model folders to load (repeatable). Also the models benchmarked, in
    /// this order; the first is the accuracy reference (`--compare minilm,minilm-int8` is the
    /// same flag).
    #[arg(long = "model", visible_alias = "compare", value_delimiter = ',')]
    pub models: Vec<String>,
    /// In-process server: CPU compute threads (0 = one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Model names to benchmark against a --url server (default: all it lists).
    #[arg(long = "target-model", value_delimiter = ',')]
    pub target_models: Vec<String>,
    /// In-process: also serve every model with max_batch_size = 1 as `<name>@unbatched` and
    /// measure it in the same run.
    #[arg(long)]
    pub unbatched_baseline: bool,
    /// In-process: also serve every model with metering off as `<name>@unmetered` and measure it
    /// in the same run (the metering overhead).
    #[arg(long)]
    pub unmetered_baseline: bool,
    /// In-process: time the engine alone (no HTTP, no queue) at the model's max_batch_size on the
    /// same inputs.
    #[arg(long)]
    pub offline_ceiling: bool,
    /// With --offline-ceiling: the batch sizes to time the engine at, each in turn (e.g. `1,32`)
    /// [default: the model's max_batch_size].
    #[arg(long, value_delimiter = ',')]
    pub ceiling_batch: Vec<usize>,
    /// Closed loop: concurrent clients per level, run in turn [default: 1,8,32 without --rate].
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Open loop: Poisson arrivals at this many requests per second, run before any
    /// --concurrency levels (which then show how the server serves afterwards).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: most requests outstanding at once (arrivals beyond are counted as not sent).
    #[arg(long, default_value_t = 20_000)]
    pub max_outstanding: usize,
    /// Seconds per level (ignored with --requests).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Requests per level instead of a duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Seconds of unmeasured warm-up per model before its first level.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Inputs from a JSONL file (a string, or an object with `text`, per line). Default: the
    /// built-in generator.
    #[arg(long)]
    pub inputs: Option<PathBuf>,
    /// Also write the inputs, one JSON string per line, here (so that other tools can be fed
    /// the same text; `--inputs` reads the file back).
    #[arg(long)]
    pub save_inputs: Option<PathBuf>,
    /// Distinct generated inputs.
    #[arg(long, default_value_t = 512)]
    pub generate: usize,
    /// Inputs per request.
    #[arg(long, default_value_t = 1)]
    pub inputs_per_request: usize,
    /// Generation models: tokens per completion (every completion is exactly this long:
    /// `ignore_eos`). Levels default to 1,4,16 concurrent streams.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Seed of the generator and of open-loop arrivals.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Embedding levels: run each level once per fraction, that share of the inputs repeating
    /// one of 32 earlier ones and the rest unique, to show the response cache at work (e.g.
    /// `0,0.5,0.9`). Without it an in-process server runs with its cache off, so that repeated
    /// inputs are computed (what the other levels measure).
    #[arg(long, value_delimiter = ',')]
    pub repeat_fraction: Vec<f64>,
    /// Generation models: also score this text's perplexity with every generation model of the
    /// run (tokenized by the server, each model with its own tokenizer).
    #[arg(long)]
    pub perplexity: Option<PathBuf>,
    /// With --perplexity: tokens per chunk (the second half of each is scored, as llama.cpp's
    /// perplexity tool does).
    #[arg(long, default_value_t = 512)]
    pub context: usize,
    /// With --perplexity: score at most this many chunks [default: all the text holds].
    #[arg(long)]
    pub perplexity_chunks: Option<usize>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write the report as a self-contained HTML page with charts here.
    #[arg(long)]
    pub html: Option<PathBuf>,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad options or inputs.
    #[error("{0}")]
    Usage(String),
    /// The in-process server could not start.
    #[error(transparent)]
    Serve(#[from] crate::ServeError),
    /// The target did not answer as expected.
    #[error("{0}")]
    Target(String),
}

/// Runs the benchmark and returns its report (also printed and written by the CLI).
pub async fn run(args: &BenchArgs) -> Result<BenchReport, BenchError> {
    if args.inputs_per_request == 0 || args.concurrency.contains(&0) {
        return Err(BenchError::Usage(
            "--inputs-per-request and --concurrency must be at least 1".into(),
        ));
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(BenchError::Usage("--rate must be a positive number".into()));
    }
    let protocols: Vec<Protocol> = if args.protocol.is_empty() {
        vec![Protocol::Openai]
    } else {
        args.protocol.clone()
    };
    let wants_grpc = protocols.contains(&Protocol::Grpc);
    if args.url.is_some() && wants_grpc && args.grpc_url.is_none() {
        return Err(BenchError::Usage(
            "--protocol grpc with --url needs --grpc-url HOST:PORT (the server's server.grpc_port)"
                .into(),
        ));
    }
    if args.url.is_some()
        && (args.unbatched_baseline || args.unmetered_baseline || args.offline_ceiling)
    {
        return Err(BenchError::Usage(
            "--unbatched-baseline, --unmetered-baseline and --offline-ceiling need the in-process server \
             (omit --url)"
                .into(),
        ));
    }
    if args.perplexity.is_some() && args.context < 4 {
        return Err(BenchError::Usage(format!(
            "--context must be at least 4 tokens, got {}",
            args.context
        )));
    }
    if let Some(f) = args
        .repeat_fraction
        .iter()
        .find(|f| !(f.is_finite() && (0.0..=1.0).contains(*f)))
    {
        return Err(BenchError::Usage(format!(
            "--repeat-fraction takes shares between 0 and 1, got {f}"
        )));
    }
    let inputs = Arc::new(match &args.inputs {
        Some(p) => inputs::from_jsonl(p).map_err(BenchError::Usage)?,
        None => inputs::generate(args.generate.max(1), args.seed),
    });
    if let Some(path) = &args.save_inputs {
        inputs::to_jsonl(&inputs, path).map_err(BenchError::Usage)?;
    }
    let load_start = procfs::load_average();

    // The server: given, or in-process.
    let mut in_process = None;
    let mut grpc_addr = args.grpc_url.clone();
    let mut entries: Vec<ModelEntry> = Vec::new();
    let mut threads = None;
    let base = match &args.url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let overrides = Overrides {
                models_dir: args.models_dir.clone(),
                models: args.models.clone(),
                threads: args.threads,
                port: Some(0),
                grpc_port: None,
                usage_path: None,
                host: Some("127.0.0.1".into()),
                precision: None,
            };
            let mut config = Config::load(args.config.as_deref(), &overrides)
                .map_err(crate::ServeError::from)?;
            // Generation levels ask for completions of exactly --max-tokens (`ignore_eos`).
            config.limits.allow_ignore_eos = true;
            if args.repeat_fraction.is_empty() {
                config.cache.max_bytes = 0;
            }
            config.limits.max_completion_tokens =
                config.limits.max_completion_tokens.max(args.max_tokens);
            if wants_grpc {
                config.server.grpc_port = Some(0);
            }
            threads = Some(config.runtime.threads);
            entries = discover(&config.server.models_dir, &config.server.models)
                .map_err(crate::ServeError::from)?;
            let mut served = entries.clone();
            if args.unbatched_baseline {
                for e in &entries {
                    let mut u = e.clone();
                    u.spec.name = format!("{}@unbatched", e.spec.name);
                    u.spec.batching.max_batch_size = 1;
                    served.push(u);
                }
            }
            if args.unmetered_baseline {
                for e in &entries {
                    let mut u = e.clone();
                    u.spec.name = format!("{}@unmetered", e.spec.name);
                    u.metered = false;
                    served.push(u);
                }
            }
            let server = Server::bind_entries(&config, served).await?;
            let addr = server
                .local_addr()
                .map_err(|e| BenchError::Target(format!("in-process server: {e}")))?;
            grpc_addr = match server.grpc_addr() {
                Some(a) => Some(
                    a.map_err(|e| BenchError::Target(format!("in-process gRPC: {e}")))?
                        .to_string(),
                ),
                None => None,
            };
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(server.run(async {
                let _ = rx.await;
            }));
            in_process = Some((tx, task));
            format!("http://{addr}")
        }
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(|e| BenchError::Target(format!("HTTP client: {e}")))?;
    let served_tasks = wait_ready(&client, &base).await?;
    let grpc = match (&grpc_addr, wants_grpc) {
        (Some(addr), true) => {
            let url = if addr.contains("://") {
                addr.clone()
            } else {
                format!("http://{addr}")
            };
            Some(
                load::GrpcClient::connect(url.clone())
                    .await
                    .map_err(|e| BenchError::Target(format!("gRPC {url}: {e}")))?
                    .max_decoding_message_size(usize::MAX),
            )
        }
        _ => None,
    };
    let served: Vec<String> = served_tasks.iter().map(|(n, _)| n.clone()).collect();
    let is_generation = |m: &str| {
        served_tasks
            .iter()
            .any(|(n, t)| n == m && t == "generation")
    };

    let mut models: Vec<String> = if args.url.is_some() {
        if args.target_models.is_empty() {
            served.clone()
        } else {
            args.target_models.clone()
        }
    } else {
        entries.iter().map(|e| e.spec.name.clone()).collect()
    };
    let base_models = models.clone();
    for (flag, suffix) in [
        (args.unbatched_baseline, "@unbatched"),
        (args.unmetered_baseline, "@unmetered"),
    ] {
        if flag {
            models.extend(base_models.iter().map(|m| format!("{m}{suffix}")));
        }
    }
    if let Some(missing) = models.iter().find(|m| !served.contains(m)) {
        return Err(BenchError::Target(format!(
            "model `{missing}` is not served by {base} (serves: {})",
            served.join(", ")
        )));
    }

    let stop = match args.requests {
        Some(n) => Stop::Requests(n),
        None => Stop::Duration(Duration::from_secs_f64(args.duration.max(0.1))),
    };
    let mut levels = Vec::new();
    let mut gen_levels = Vec::new();
    let prompts: Arc<Vec<String>> = Arc::new(match &args.inputs {
        Some(_) => inputs.iter().take(64).cloned().collect(),
        None => generation::DEFAULT_PROMPTS
            .iter()
            .map(|p| p.to_string())
            .collect(),
    });
    for model in &models {
        if is_generation(model) {
            if args.rate.is_some() {
                return Err(BenchError::Usage(format!(
                    "`{model}` is a generation model: --rate (open loop) is for embedding models; use --concurrency"
                )));
            }
            // Warm-up: one short completion (loads caches, JITs nothing, but pages in weights).
            let _ = generation::run_level(&client, &base, model, 1, Stop::Requests(1), 8, &prompts)
                .await;
            let streams: &[usize] = if args.concurrency.is_empty() {
                &[1, 4, 16]
            } else {
                &args.concurrency
            };
            for &n in streams {
                let row = generation::run_level(
                    &client,
                    &base,
                    model,
                    n,
                    stop,
                    args.max_tokens,
                    &prompts,
                )
                .await;
                eprintln!(
                    "{:<22} {:>3} streams: {:.1} tok/s, TTFT p50 {:.0} ms, ITL p50 {:.1} ms, {} requests",
                    row.model, n, row.tokens_per_s, row.ttft_p50_ms, row.itl_p50_ms, row.requests
                );
                gen_levels.push(row);
            }
            continue;
        }
        let target = Target {
            client: client.clone(),
            base: base.clone(),
            model: model.clone(),
            inputs: inputs.clone(),
            per_request: args.inputs_per_request,
            protocol: Protocol::Openai,
            grpc: grpc.clone(),
            repeat_fraction: None,
        };
        if args.warmup > 0.0 {
            let c = args.concurrency.iter().copied().max().unwrap_or(8).min(32);
            for &protocol in &protocols {
                let target = Target {
                    protocol,
                    ..target.clone()
                };
                let _ = load::closed_loop(
                    &target,
                    c,
                    Stop::Duration(Duration::from_secs_f64(args.warmup)),
                    &format!("{model} {} warm-up", protocol.name()),
                )
                .await;
            }
        }
        let mut plan: Vec<(String, Option<usize>)> = Vec::new();
        if let Some(r) = args.rate {
            plan.push((format!("rate={r}/s"), None));
        }
        let levels_c: &[usize] = match (&args.rate, args.concurrency.is_empty()) {
            (None, true) => &[1, 8, 32],
            _ => &args.concurrency,
        };
        plan.extend(levels_c.iter().map(|&c| (format!("c={c}"), Some(c))));
        // Protocols side by side at each level, so that they are compared under the same
        // conditions of the host.
        let fractions: Vec<Option<f64>> = if args.repeat_fraction.is_empty() {
            vec![None]
        } else {
            args.repeat_fraction.iter().map(|&f| Some(f)).collect()
        };
        let runs: Vec<(Protocol, Option<f64>)> = protocols
            .iter()
            .flat_map(|&p| fractions.iter().map(move |&f| (p, f)))
            .collect();
        for (label, clients) in plan {
            for &(protocol, repeat_fraction) in &runs {
                let target = Target {
                    protocol,
                    repeat_fraction,
                    ..target.clone()
                };
                let label = match repeat_fraction {
                    Some(f) => format!("{label} r={f}"),
                    None => label.clone(),
                };
                let name = format!("{model} {label} {}", protocol.name());
                let cpu0 = in_process.as_ref().and(procfs::process_cpu_seconds());
                let (rec, elapsed) = match (clients, args.rate) {
                    (Some(c), _) => load::closed_loop(&target, c, stop, &name).await,
                    (None, Some(rate)) => {
                        load::open_loop(&target, rate, args.max_outstanding, stop, args.seed, &name)
                            .await
                    }
                    (None, None) => unreachable!("a level is closed or open loop"),
                };
                let cpu = match (cpu0, procfs::process_cpu_seconds()) {
                    (Some(a), Some(b)) => Some(b - a),
                    _ => None,
                };
                let rss = in_process.as_ref().and(procfs::rss_mib());
                let row = LevelReport::new(
                    model,
                    label.clone(),
                    protocol.name(),
                    elapsed.as_secs_f64(),
                    &rec,
                    cpu,
                    rss,
                );
                eprintln!(
                    "{:<22} {:>10} {:>9}: {:.1} req/s, p50 {:.2} ms, p99 {:.2} ms, batch {:.1}",
                    row.model,
                    row.load,
                    row.protocol,
                    row.requests_per_s,
                    row.p50_ms,
                    row.p99_ms,
                    row.mean_batch_size
                );
                levels.push(row);
            }
        }
    }

    let mut perplexities = Vec::new();
    if let Some(path) = &args.perplexity {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BenchError::Usage(format!("--perplexity {}: {e}", path.display())))?;
        for name in base_models.iter().filter(|m| is_generation(m)) {
            let (tokens, bos) = perplexity::tokenize(&client, &base, name, &text).await?;
            let mut chunks = perplexity::chunks(&tokens, args.context, bos);
            if let Some(n) = args.perplexity_chunks {
                chunks.truncate(n);
            }
            if chunks.is_empty() {
                return Err(BenchError::Usage(format!(
                    "--perplexity {}: {} tokens, fewer than one chunk of --context {}",
                    path.display(),
                    tokens.len(),
                    args.context
                )));
            }
            let precision = perplexity::precision_of(&client, &base, name).await;
            let row = perplexity::measure(&client, &base, name, &precision, &chunks).await?;
            eprintln!(
                "{:<22} perplexity {:.4} ± {:.4} over {} tokens ({} chunks of {}), {:.1} scored tok/s",
                name, row.perplexity, row.stderr, row.scored_tokens, row.chunks, row.context,
                row.scored_tokens_per_s
            );
            perplexities.push(row);
        }
    }

    // Before the accuracy comparison adds traffic of its own.
    let energy_labels = energy_labels(&client, &base, &models).await?;
    let embedding_models: Vec<String> = models
        .iter()
        .filter(|m| !is_generation(m))
        .cloned()
        .collect();
    let accuracy = if embedding_models.len() > 1 {
        compare_outputs(&client, &base, &embedding_models, &inputs).await?
    } else {
        Vec::new()
    };
    let mut ceilings = Vec::new();
    if args.offline_ceiling {
        for e in entries.iter().filter(|e| !is_generation(&e.spec.name)) {
            let sizes = match args.ceiling_batch.is_empty() {
                true => vec![e.spec.batching.max_batch_size],
                false => args.ceiling_batch.clone(),
            };
            for b in sizes {
                let seconds = args.duration.clamp(1.0, 30.0);
                ceilings.push(offline_ceiling(e, &inputs, b, seconds).await?);
            }
        }
    }
    if let Some((tx, task)) = in_process {
        let _ = tx.send(());
        let _ = task.await;
    }
    Ok(BenchReport {
        target: args.url.clone().unwrap_or_else(|| "in-process".into()),
        load_average_start: load_start,
        load_average_end: procfs::load_average(),
        threads,
        distinct_inputs: inputs.len(),
        inputs_per_request: args.inputs_per_request,
        ceilings,
        accuracy,
        levels,
        generation: gen_levels,
        perplexity: perplexities,
        energy_labels,
    })
}

/// Each benchmarked model's energy label as the server gives it in `/v1/models` after the
/// levels (over everything it served of that model: for an in-process run, the bench's own
/// requests and warm-ups).
async fn energy_labels(
    client: &reqwest::Client,
    base: &str,
    models: &[String],
) -> Result<Vec<report::EnergyLabelReport>, BenchError> {
    let v: serde_json::Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| BenchError::Target(format!("{base}/v1/models: {e}")))?
        .json()
        .await
        .map_err(|e| BenchError::Target(format!("{base}/v1/models: {e}")))?;
    let cards = v["data"].as_array().cloned().unwrap_or_default();
    Ok(models
        .iter()
        .filter_map(|model| {
            let card = cards.iter().find(|c| c["id"].as_str() == Some(model))?;
            let text = |k: &str| card[k].as_str().map(str::to_string);
            Some(report::EnergyLabelReport {
                model: model.clone(),
                precision: text("precision").unwrap_or_default(),
                task: text("task").unwrap_or_default(),
                energy_source: text("energy_source").unwrap_or_default(),
                class: text("energy_class"),
                joules_per_1k_tokens: card["joules_per_1k_tokens"].as_f64(),
            })
        })
        .collect())
}

/// Embeds the same inputs (up to 64) with every model and compares each model's vectors with the
/// first model's: the accuracy cost of a precision, measured in the same run.
async fn compare_outputs(
    client: &reqwest::Client,
    base: &str,
    models: &[String],
    inputs: &[String],
) -> Result<Vec<report::AccuracyReport>, BenchError> {
    let sample: Vec<&String> = inputs.iter().take(64).collect();
    let mut outputs: Vec<Vec<Vec<f32>>> = Vec::with_capacity(models.len());
    for model in models {
        let mut vectors = Vec::with_capacity(sample.len());
        for chunk in sample.chunks(32) {
            let v: serde_json::Value = client
                .post(format!("{base}/v1/embeddings"))
                .json(&serde_json::json!({"model": model, "input": chunk}))
                .send()
                .await
                .map_err(|e| BenchError::Target(format!("accuracy comparison, {model}: {e}")))?
                .json()
                .await
                .map_err(|e| BenchError::Target(format!("accuracy comparison, {model}: {e}")))?;
            let data = v["data"].as_array().ok_or_else(|| {
                BenchError::Target(format!("accuracy comparison, {model}: no `data` in {v}"))
            })?;
            for d in data {
                let vec: Vec<f32> = d["embedding"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_f64())
                            .map(|x| x as f32)
                            .collect()
                    })
                    .unwrap_or_default();
                vectors.push(vec);
            }
        }
        outputs.push(vectors);
    }
    let cosine = |a: &[f32], b: &[f32]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        dot / (na * nb).max(f64::MIN_POSITIVE)
    };
    Ok(models
        .iter()
        .zip(&outputs)
        .skip(1)
        .map(|(model, vectors)| {
            let c: Vec<f64> = vectors
                .iter()
                .zip(&outputs[0])
                .map(|(a, b)| cosine(a, b))
                .collect();
            report::AccuracyReport {
                model: model.clone(),
                reference: models[0].clone(),
                inputs: c.len(),
                mean_cosine: c.iter().sum::<f64>() / c.len().max(1) as f64,
                min_cosine: c.iter().copied().fold(1.0, f64::min),
            }
        })
        .collect())
}

/// Polls `/ready`, then returns the served models' names and tasks from `/v1/models`.
async fn wait_ready(
    client: &reqwest::Client,
    base: &str,
) -> Result<Vec<(String, String)>, BenchError> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(r) = client.get(format!("{base}/ready")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(BenchError::Target(format!(
                "{base} was not ready within 300 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v: serde_json::Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .map_err(|e| BenchError::Target(format!("{base}/v1/models: {e}")))?
        .json()
        .await
        .map_err(|e| BenchError::Target(format!("{base}/v1/models: {e}")))?;
    Ok(v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| {
                    let id = m["id"].as_str()?.to_string();
                    let task = m["task"].as_str().unwrap_or("embedding").to_string();
                    Some((id, task))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The engine alone on the same inputs, in order, in batches of `batch_size`, on a blocking
/// thread, for about `seconds`.
async fn offline_ceiling(
    entry: &ModelEntry,
    inputs: &Arc<Vec<String>>,
    batch_size: usize,
    seconds: f64,
) -> Result<CeilingReport, BenchError> {
    if batch_size == 0 {
        return Err(BenchError::Usage(
            "--ceiling-batch sizes must be at least 1".into(),
        ));
    }
    let entry = entry.clone();
    let inputs = inputs.clone();
    tokio::task::spawn_blocking(move || {
        let spec = &entry.spec;
        let model = EmbeddingModel::load(&entry.embedding_load_options())
            .map_err(|e| BenchError::Target(format!("offline ceiling: {e}")))?;
        let ids: Vec<Vec<u32>> = inputs
            .iter()
            .map(|t| model.tokenizer().encode(t, true))
            .collect::<Result<_, _>>()
            .map_err(|e| BenchError::Target(format!("offline ceiling: {e}")))?;
        let b = batch_size;
        let batches: Vec<Vec<&[u32]>> = ids
            .chunks(b)
            .map(|c| c.iter().map(Vec::as_slice).collect())
            .collect();
        let run = |batch: &[&[u32]]| {
            model
                .embed_tokens(batch)
                .map_err(|e| BenchError::Target(format!("offline ceiling: {e}")))
        };
        run(&batches[0])?; // warm-up
        let cpu0 = procfs::process_cpu_seconds();
        let start = Instant::now();
        let (mut done, mut count) = (0usize, 0usize);
        let mut latencies_ms = Vec::new();
        while start.elapsed().as_secs_f64() < seconds || count == 0 {
            let batch = &batches[count % batches.len()];
            let t0 = Instant::now();
            run(batch)?;
            latencies_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            done += batch.len();
            count += 1;
        }
        latencies_ms.sort_by(f64::total_cmp);
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = match (cpu0, procfs::process_cpu_seconds()) {
            (Some(a), Some(b)) if b > a => Some(b - a),
            _ => None,
        };
        Ok(CeilingReport {
            model: spec.name.clone(),
            batch_size: b,
            inputs_per_s: done as f64 / elapsed,
            batches: count,
            batch_p50_ms: latencies_ms[latencies_ms.len() / 2],
            inputs_per_cpu_s: cpu.map(|c| done as f64 / c),
        })
    })
    .await
    .map_err(|e| BenchError::Target(format!("offline ceiling task: {e}")))?
}

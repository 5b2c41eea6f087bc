//! Generation benchmark: N concurrent streams, each sending its next streamed chat completion
//! when the previous one ends, every completion exactly `max_tokens` long (`ignore_eos`) so that
//! levels and engines compare like with like. Per level: time to first token, inter-token
//! latency, single-stream decode speed, aggregate output tokens/s and joules per output token
//! (from each stream's final usage chunk).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::load::Stop;
use super::report::GenLevelReport;

/// Chat prompts used when no `--inputs` file is given: short questions of the kind the peers'
/// numbers were taken with.
pub const DEFAULT_PROMPTS: &[&str] = &[
    "What is a GPU?",
    "Give me three tips to save electricity at home.",
    "Why does training a neural network use more energy than running it once?",
    "Write a haiku about the sea.",
    "Explain what a heat pump does in two sentences.",
    "What is the capital of Australia, and why is it not Sydney?",
    "List four renewable energy sources.",
    "How do I reverse a list in Python?",
];

/// One streamed completion as the client saw it.
#[derive(Debug, Clone, Copy)]
struct StreamSample {
    ttft: Duration,
    /// Mean time between tokens after the first.
    itl: Option<Duration>,
    tokens: u64,
    joules: Option<f64>,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Runs one level: `streams` clients until `stop`.
pub async fn run_level(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    streams: usize,
    stop: Stop,
    max_tokens: usize,
    prompts: &Arc<Vec<String>>,
) -> GenLevelReport {
    let url = format!("{base}/v1/chat/completions");
    let samples = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let source: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for _ in 0..streams {
        let (client, url, model) = (client.clone(), url.clone(), model.to_string());
        let (samples, errors, sent, source, prompts) = (
            samples.clone(),
            errors.clone(),
            sent.clone(),
            source.clone(),
            prompts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = sent.fetch_add(1, Ordering::SeqCst);
                let more = match stop {
                    Stop::Duration(d) => start.elapsed() < d,
                    Stop::Requests(n) => i < n,
                };
                if !more {
                    break;
                }
                let prompt = &prompts[i as usize % prompts.len()];
                match one_stream(&client, &url, &model, prompt, max_tokens).await {
                    Ok((sample, src)) => {
                        if let Ok(mut s) = samples.lock() {
                            s.push(sample);
                        }
                        if let (Some(src), Ok(mut slot)) = (src, source.lock()) {
                            slot.get_or_insert(src);
                        }
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::SeqCst) == 0 {
                            eprintln!("{model}: {e}");
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let mut ttft: Vec<f64> = samples.iter().map(|s| s.ttft.as_secs_f64() * 1e3).collect();
    let mut itl: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.itl.map(|d| d.as_secs_f64() * 1e3))
        .collect();
    ttft.sort_by(f64::total_cmp);
    itl.sort_by(f64::total_cmp);
    let output_tokens: u64 = samples.iter().map(|s| s.tokens).sum();
    let joules: Option<f64> = samples.iter().map(|s| s.joules).sum();
    let itl_p50 = percentile(&itl, 0.5);
    GenLevelReport {
        model: model.to_string(),
        streams,
        seconds,
        requests: samples.len() as u64,
        errors: errors.load(Ordering::SeqCst),
        output_tokens,
        tokens_per_s: output_tokens as f64 / seconds.max(1e-9),
        ttft_p50_ms: percentile(&ttft, 0.5),
        ttft_p99_ms: percentile(&ttft, 0.99),
        itl_p50_ms: itl_p50,
        itl_p99_ms: percentile(&itl, 0.99),
        decode_tokens_per_s_per_stream: 1e3 / itl_p50,
        joules_per_token: joules
            .filter(|_| output_tokens > 0)
            .map(|j| j / output_tokens as f64),
        energy_source: source.lock().ok().and_then(|s| s.clone()),
    }
}

/// One streamed chat completion: its timings, tokens and energy, and the energy source.
async fn one_stream(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    prompt: &str,
    max_tokens: usize,
) -> Result<(StreamSample, Option<String>), String> {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let start = Instant::now();
    let mut resp = client
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        return Err(format!("status {status}: {text}"));
    }
    let mut buf = String::new();
    let (mut first, mut last) = (None, None);
    let mut usage: Option<Value> = None;
    loop {
        let chunk = resp
            .chunk()
            .await
            .map_err(|e| format!("stream broke: {e}"))?;
        let Some(chunk) = chunk else {
            break;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if data == "[DONE]" {
                    continue;
                }
                let v: Value = serde_json::from_str(data).map_err(|e| format!("bad chunk: {e}"))?;
                if v.get("error").is_some() {
                    return Err(format!("stream error: {v}"));
                }
                let has_text = v["choices"]
                    .get(0)
                    .and_then(|c| c["delta"]["content"].as_str())
                    .is_some_and(|t| !t.is_empty());
                if has_text {
                    let now = start.elapsed();
                    first.get_or_insert(now);
                    last = Some(now);
                }
                if !v["usage"].is_null() {
                    usage = Some(v["usage"].clone());
                }
            }
        }
    }
    let usage = usage.ok_or("no usage chunk")?;
    let tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
    let first = first.ok_or("no text")?;
    let itl = match (last, tokens) {
        (Some(l), n) if n > 1 && l > first => Some((l - first) / (n as u32 - 1)),
        _ => None,
    };
    let sample = StreamSample {
        ttft: first,
        itl,
        tokens,
        joules: usage["energy"]["joules"].as_f64(),
    };
    let source = usage["energy"]["source"].as_str().map(str::to_string);
    Ok((sample, source))
}

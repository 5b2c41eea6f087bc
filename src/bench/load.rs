//! The load generators: closed loop (N clients, each sends its next request when the previous
//! one is answered) and open loop (Poisson arrivals at a fixed rate, whatever the server does).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::report::{Recorder, Sent};
use crate::api::grpc::pb;
use crate::api::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::api::v2::tensor::join_byte_strings;

/// When a level stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this long.
    Duration(Duration),
    /// After this many requests have been sent.
    Requests(u64),
}

/// The protocol a level's requests speak: what `wattserve bench --protocol` compares on the
/// same model in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// `POST /v1/embeddings`, JSON.
    Openai,
    /// `POST /v2/models/{m}/infer`, JSON tensors both ways.
    V2Json,
    /// `POST /v2/models/{m}/infer`, binary tensors both ways (tritonclient's default).
    V2Binary,
    /// gRPC `ModelInfer` with raw contents, over one HTTP/2 connection.
    Grpc,
}

impl Protocol {
    /// Its name in reports (as on the command line).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Openai => "openai",
            Protocol::V2Json => "v2-json",
            Protocol::V2Binary => "v2-binary",
            Protocol::Grpc => "grpc",
        }
    }
}

/// The gRPC client of the Open Inference Protocol.
pub type GrpcClient = GrpcInferenceServiceClient<tonic::transport::Channel>;

/// What every request of a level looks like.
#[derive(Clone)]
pub struct Target {
    /// The HTTP client (connection pool shared by all tasks).
    pub client: reqwest::Client,
    /// `http://host:port`.
    pub base: String,
    /// Model name.
    pub model: String,
    /// The inputs, cycled through in order.
    pub inputs: Arc<Vec<String>>,
    /// Inputs per request.
    pub per_request: usize,
    /// How requests are sent.
    pub protocol: Protocol,
    /// The gRPC client, for [`Protocol::Grpc`].
    pub grpc: Option<GrpcClient>,
    /// `--repeat-fraction`: the share of inputs that repeat one of a few earlier ones; the rest
    /// are then made unique. `None`: the inputs are cycled through as they are.
    pub repeat_fraction: Option<f64>,
}

/// Inputs repeated under `--repeat-fraction` come from this many (the first of the inputs).
pub const HOT_INPUTS: usize = 32;

/// Numbers the unique inputs of a `--repeat-fraction` run, across levels and protocols.
static FRESH: AtomicU64 = AtomicU64::new(0);

/// A well-mixed 64-bit hash (SplitMix64's finalizer), for choosing repeats by request number.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Target {
    /// The texts of request number `i`.
    fn texts(&self, i: usize) -> Vec<String> {
        let n = self.inputs.len();
        (0..self.per_request)
            .map(|k| {
                let j = i * self.per_request + k;
                match self.repeat_fraction {
                    None => self.inputs[j % n].clone(),
                    Some(f) => {
                        let h = mix(j as u64);
                        if (h >> 11) as f64 / (1u64 << 53) as f64 <= f {
                            self.inputs[(mix(h) as usize) % HOT_INPUTS.min(n)].clone()
                        } else {
                            let fresh = FRESH.fetch_add(1, Ordering::Relaxed);
                            format!("{} (#{fresh})", self.inputs[j % n])
                        }
                    }
                }
            })
            .collect()
    }

    /// Sends request number `i`.
    async fn send(&self, i: usize) -> Sent {
        let texts = self.texts(i);
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let start = Instant::now();
        let v2_url = || format!("{}/v2/models/{}/infer", self.base, self.model);
        let tensor = |extra: serde_json::Value| {
            let mut t = json!({"name": "text", "datatype": "BYTES", "shape": [texts.len()]});
            if let (Some(t), Some(e)) = (t.as_object_mut(), extra.as_object()) {
                t.extend(e.clone());
            }
            t
        };
        let (status, batch, joules, cache_hit) = match self.protocol {
            Protocol::Openai => {
                let body = if self.per_request == 1 {
                    json!({"model": self.model, "input": texts[0]})
                } else {
                    json!({"model": self.model, "input": texts})
                };
                let url = format!("{}/v1/embeddings", self.base);
                http(self.client.post(url).json(&body)).await
            }
            Protocol::V2Json => {
                let body = json!({"inputs": [tensor(json!({"data": texts}))]});
                http(self.client.post(v2_url()).json(&body)).await
            }
            Protocol::V2Binary => {
                let raw = join_byte_strings(texts.iter().map(|t| t.as_bytes()));
                let header = json!({
                    "inputs": [tensor(json!({"parameters": {"binary_data_size": raw.len()}}))],
                    "parameters": {"binary_data_output": true},
                });
                let mut body = serde_json::to_vec(&header).unwrap_or_default();
                let len = body.len();
                body.extend_from_slice(&raw);
                let req = self
                    .client
                    .post(v2_url())
                    .header("inference-header-content-length", len)
                    .header("content-type", "application/octet-stream")
                    .body(body);
                http(req).await
            }
            Protocol::Grpc => self.grpc(&texts).await,
        };
        Sent {
            status,
            micros: start.elapsed().as_micros() as u64,
            batch,
            joules,
            cache_hit,
        }
    }

    async fn grpc(&self, texts: &[&str]) -> (u16, Option<u64>, Option<f64>, bool) {
        let Some(mut client) = self.grpc.clone() else {
            return (0, None, None, false);
        };
        let req = pb::ModelInferRequest {
            model_name: self.model.clone(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "text".into(),
                datatype: "BYTES".into(),
                shape: vec![texts.len() as i64],
                ..Default::default()
            }],
            raw_input_contents: vec![join_byte_strings(texts.iter().map(|t| t.as_bytes()))],
            ..Default::default()
        };
        match client.model_infer(req).await {
            // The trailers (batch size, energy) are merged into the metadata of a unary call.
            Ok(resp) => {
                let md = resp.metadata();
                let get = |name: &str| md.get(name).and_then(|v| v.to_str().ok());
                let batch = get("x-batch-size").and_then(|v| v.parse().ok());
                let joules = get("x-energy-joules").and_then(|v| v.parse().ok());
                (200, batch, joules, false)
            }
            Err(status) => {
                let code = match status.code() {
                    tonic::Code::InvalidArgument => 400,
                    tonic::Code::Unauthenticated => 401,
                    tonic::Code::NotFound => 404,
                    tonic::Code::DeadlineExceeded => 504,
                    tonic::Code::Unavailable => 503,
                    _ => 500,
                };
                (code, None, None, false)
            }
        }
    }
}

/// Sends an HTTP request; returns (status, x-batch-size, x-energy-joules, x-cache is `hit`),
/// status 0 when the connection failed. Reads the whole body: the client's latency includes the
/// transfer.
async fn http(req: reqwest::RequestBuilder) -> (u16, Option<u64>, Option<f64>, bool) {
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let batch = header("x-batch-size").and_then(|v| v.parse().ok());
            let joules = header("x-energy-joules").and_then(|v| v.parse().ok());
            let hit = header("x-cache").as_deref() == Some("hit");
            match resp.bytes().await {
                Ok(_) => (status, batch, joules, hit),
                Err(_) => (0, None, None, false),
            }
        }
        Err(_) => (0, None, None, false),
    }
}

fn progress(stop: Stop, label: &str) -> ProgressBar {
    let quiet = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = match stop {
        Stop::Duration(d) => ProgressBar::new(d.as_millis() as u64),
        Stop::Requests(n) => ProgressBar::new(n),
    };
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template("{prefix:>28} [{bar:30}] {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_string());
    bar
}

/// Runs `clients` closed-loop clients. Returns the merged observations and the measured wall time.
pub async fn closed_loop(
    target: &Target,
    clients: usize,
    stop: Stop,
    label: &str,
) -> (Recorder, Duration) {
    let sent = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = match stop {
        Stop::Duration(d) => Some(start + d),
        Stop::Requests(_) => None,
    };
    let bar = progress(stop, label);
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (target, sent, next) = (target.clone(), sent.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::default();
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let k = sent.fetch_add(1, Ordering::SeqCst);
                if matches!(stop, Stop::Requests(n) if k >= n) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let s = target.send(i).await;
                rec.record(&s, target.per_request);
            }
            rec
        }));
    }
    let ticker = spawn_ticker(bar.clone(), stop, start, sent.clone());
    let mut total = Recorder::default();
    for t in tasks {
        if let Ok(rec) = t.await {
            total.merge(&rec);
        }
    }
    ticker.abort();
    bar.finish_and_clear();
    (total, start.elapsed())
}

/// Sends requests at Poisson arrivals of `rate` per second; at most `max_outstanding` at once
/// (arrivals beyond are counted as not sent). Returns observations and the measured wall time.
pub async fn open_loop(
    target: &Target,
    rate: f64,
    max_outstanding: usize,
    stop: Stop,
    seed: u64,
    label: &str,
) -> (Recorder, Duration) {
    let rec = Arc::new(Mutex::new(Recorder::default()));
    let outstanding = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let bar = progress(stop, label);
    let ticker = spawn_ticker(bar.clone(), stop, start, sent.clone());
    let mut next_at = start;
    let mut tasks = Vec::new();
    let mut i = 0usize;
    loop {
        // Exponential inter-arrival times give a Poisson process.
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        next_at += Duration::from_secs_f64(-u.ln() / rate);
        match stop {
            Stop::Duration(d) if next_at >= start + d => break,
            Stop::Requests(n) if sent.load(Ordering::SeqCst) >= n => break,
            _ => {}
        }
        tokio::time::sleep_until(next_at.into()).await;
        sent.fetch_add(1, Ordering::SeqCst);
        if outstanding.load(Ordering::SeqCst) >= max_outstanding {
            if let Ok(mut r) = rec.lock() {
                r.not_sent += 1;
            }
            continue;
        }
        outstanding.fetch_add(1, Ordering::SeqCst);
        let (target, rec, outstanding) = (target.clone(), rec.clone(), outstanding.clone());
        let n = i;
        i += 1;
        tasks.push(tokio::spawn(async move {
            let s = target.send(n).await;
            if let Ok(mut r) = rec.lock() {
                r.record(&s, target.per_request);
            }
            outstanding.fetch_sub(1, Ordering::SeqCst);
        }));
        // Keep the task list from growing without bound on long runs.
        if tasks.len() > 4096 {
            tasks.retain(|t| !t.is_finished());
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    ticker.abort();
    bar.finish_and_clear();
    let elapsed = start.elapsed();
    let rec = match Arc::try_unwrap(rec) {
        Ok(m) => m.into_inner().unwrap_or_default(),
        Err(shared) => {
            let mut r = Recorder::default();
            if let Ok(g) = shared.lock() {
                r.merge(&g);
            }
            r
        }
    };
    (rec, elapsed)
}

fn spawn_ticker(
    bar: ProgressBar,
    stop: Stop,
    start: Instant,
    sent: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let n = sent.load(Ordering::SeqCst);
            match stop {
                Stop::Duration(_) => bar.set_position(start.elapsed().as_millis() as u64),
                Stop::Requests(_) => bar.set_position(n),
            }
            bar.set_message(format!("{n} requests"));
        }
    })
}

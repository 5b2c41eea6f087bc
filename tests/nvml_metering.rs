//! NVML end to end without a GPU: the real binary on 127.0.0.1, real HTTP, and a stand-in NVML
//! library (tests/nvml/standin.c, compiled here with the system C compiler, loaded through
//! `energy.nvml_library` exactly as NVIDIA's would be) whose GPUs follow a trace the test writes.
//! The models compute on the CPU and are metered by a GPU's NVML (`metered_device`), so every
//! step of the NVML path but the driver itself runs.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

/// Builds the stand-in library into `dir`.
fn standin(dir: &Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/nvml/standin.c");
    let lib = dir.join("libnvidia-ml-standin.so");
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
        .expect("a C compiler (cc) builds the stand-in NVML library");
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

/// A server whose models (MiniLM f32, on the CPU) are metered by the GPUs `metered[i]`, with
/// the stand-in library following `trace`. Returns the child, its address, and the temp dir.
async fn start(
    trace: &str,
    metered: &[(&str, u32)],
) -> (
    std::process::Child,
    String,
    tempfile::TempDir,
    common::Output,
) {
    let dir = tempfile::tempdir().unwrap();
    let lib = standin(dir.path());
    let trace_path = dir.path().join("trace");
    std::fs::write(&trace_path, trace).unwrap();
    let models = dir.path().join("models");
    let weights = common::models_dir().join("minilm/weights");
    for (name, gpu) in metered {
        std::fs::create_dir_all(models.join(name)).unwrap();
        std::fs::write(
            models.join(name).join("model.toml"),
            format!(
                "task = \"embedding\"\nformat = \"safetensors\"\npath = {weights:?}\nprecision = \"f32\"\nmetered_device = \"cuda:{gpu}\"\n"
            ),
        )
        .unwrap();
    }
    let config = dir.path().join("wattserve.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nport = 0\nmodels_dir = {models:?}\n[energy]\nnvml_library = {lib:?}\nsample_interval_ms = 50\nsettle_timeout_ms = 1000\n[cache]\nmax_bytes = 0\n"
        ),
    )
    .unwrap();
    let (child, addr, output) =
        common::spawn_server_with_env(&config, &[("WATTSERVE_NVML_TRACE", trace_path.as_os_str())])
            .await;
    (child, addr, dir, output)
}

/// One embedding request: its joules, energy source, average watts and wall time.
async fn embed(addr: &str, model: &str, text: &str) -> (f64, String, f64, Duration) {
    let started = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/v1/embeddings"))
        .json(&json!({"model": model, "input": text}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let header = |h: &str| r.headers()[h].to_str().unwrap().to_string();
    let (joules, source) = (header("x-energy-joules"), header("x-energy-source"));
    let v: serde_json::Value = r.json().await.unwrap();
    let watts = v["usage"]["energy"]["avg_watts"].as_f64().unwrap();
    (joules.parse().unwrap(), source, watts, started.elapsed())
}

async fn metrics(addr: &str) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Asserts that `joules` is a whole, non-zero number of a counter's `step`s: all the energy a
/// stepping counter reported, and nothing else.
fn assert_whole_steps(joules: f64, step: f64, what: &str) {
    let steps = joules / step;
    assert!(
        (steps - steps.round()).abs() < 1e-6 && steps >= 1.0,
        "{what}: {joules} J is not a whole number of {step} J counter steps"
    );
}

fn stop(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// 100 W from the start on one GPU whose counter moves every 100 ms, by exactly 10 J.
const COUNTER_100W: &str = "gpu StandIn-A100 counter 100\nwatts 0 0 100\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_counter_energy_is_conserved() {
    if !common::minilm_available() {
        return;
    }
    let launched = Instant::now();
    let (child, addr, _dir, _) = start(COUNTER_100W, &[("minilm-a", 0)]).await;
    let ready = Instant::now();
    let mut attributed = 0.0;
    for i in 0..12 {
        let (joules, source, _, _) = embed(&addr, "minilm-a", &format!("request {i}")).await;
        assert_eq!(source, "nvml-counter");
        attributed += joules;
    }
    // Let the sampler take the last readings, then compare the ledger with the counter.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let text = metrics(&addr).await;
    let read = Instant::now();
    let model_total = common::metric_sum(&text, "wattserve_energy_joules_total", "minilm-a");
    let idle = common::metric_sum(&text, "wattserve_idle_energy_joules_total", "gpu0");
    assert!(
        (model_total - attributed).abs() < 1e-6 * attributed.max(1.0),
        "per-request joules {attributed} vs the model's total {model_total}"
    );
    // And it is the trace's energy: at 100 W, no more than since NVML started (before the
    // server was ready), no less than from ready to the metrics read, give or take the 10 J
    // steps at either end and the 50 ms sampling.
    let seen = model_total + idle;
    let most = 100.0 * read.duration_since(launched).as_secs_f64() + 10.0;
    let least = 100.0 * read.duration_since(ready).as_secs_f64() - 20.0;
    assert!(
        (least..=most).contains(&seen),
        "{seen} J outside the trace's {least:.1}..{most:.1} J"
    );
    // Everything the counter reported went somewhere: attributed + idle is a whole number of
    // 10 J counter steps.
    assert_whole_steps(seen, 10.0, "attributed + idle");
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_short_batches_inside_a_counter_step_get_their_share_in_time() {
    if !common::minilm_available() {
        return;
    }
    let (child, addr, _dir, _) = start(COUNTER_100W, &[("minilm-a", 0)]).await;
    for i in 0..8 {
        let (joules, source, watts, took) = embed(&addr, "minilm-a", &format!("short {i}")).await;
        assert_eq!(source, "nvml-counter");
        // A batch of a few ms inside a 100 ms counter step gets its share, never 0, and waits
        // for the counter's next step at most, well under the 1 s settle deadline.
        assert!(
            joules > 0.0 && watts > 0.0,
            "request {i}: {joules} J, {watts} W"
        );
        assert!(
            took < Duration::from_millis(600),
            "request {i} took {took:?}"
        );
    }
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_power_only_gpu_is_integrated() {
    if !common::minilm_available() {
        return;
    }
    // No counter: 50 W, read as a 1 s average.
    let trace = "gpu StandIn-T4 power 1000\nwatts 0 0 50\n";
    let (child, addr, _dir, _) = start(trace, &[("minilm-p", 0)]).await;
    for i in 0..8 {
        let (joules, source, watts, _) = embed(&addr, "minilm-p", &format!("power {i}")).await;
        assert_eq!(source, "nvml-power");
        // The integral of a constant 50 W over the batch: 50 W on average (trapezoids of equal
        // readings), whatever the batch's length.
        assert!(joules > 0.0);
        assert!((watts - 50.0).abs() < 0.1, "average power {watts} W");
    }
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_two_gpus_are_metered_apart() {
    if !common::minilm_available() {
        return;
    }
    // GPU 0: a counter at 100 ms, 100 W; GPU 1: a counter at 20 ms, 200 W.
    let trace =
        "gpu StandIn-A100 counter 100\nwatts 0 0 100\ngpu StandIn-H100 counter 20\nwatts 1 0 200\n";
    let (child, addr, _dir, _) = start(trace, &[("minilm-a", 0), ("minilm-b", 1)]).await;
    let (mut on_a, mut on_b) = (0.0, 0.0);
    for i in 0..8 {
        on_a += embed(&addr, "minilm-a", &format!("a {i}")).await.0;
        on_b += embed(&addr, "minilm-b", &format!("b {i}")).await.0;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let text = metrics(&addr).await;
    let total = |model: &str| {
        common::metric_sum(
            &text,
            "wattserve_energy_joules_total",
            &format!("model=\"{model}\""),
        )
    };
    let idle = |gpu: &str| {
        common::metric_sum(
            &text,
            "wattserve_idle_energy_joules_total",
            &format!("device=\"{gpu}\""),
        )
    };
    // Each model's total is its own requests', and each GPU's attributed + idle energy is a
    // whole number of its own counter's steps (10 J and 4 J).
    assert!((total("minilm-a") - on_a).abs() < 1e-6 * on_a.max(1.0));
    assert!((total("minilm-b") - on_b).abs() < 1e-6 * on_b.max(1.0));
    for (model, gpu, step) in [("minilm-a", "gpu0", 10.0), ("minilm-b", "gpu1", 4.0)] {
        assert_whole_steps(total(model) + idle(gpu), step, gpu);
    }
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_lost_gpu_hands_over_to_the_estimate_without_failing_a_request() {
    if !common::minilm_available() {
        return;
    }
    // The GPU falls off the bus 4 s after NVML starts (the server is ready before, even on a
    // busy machine).
    let trace = "gpu StandIn-L4 counter 50\nwatts 0 0 100\nlost 0 4000\n";
    let (child, addr, _dir, output) = start(trace, &[("minilm-l", 0)]).await;
    let started = Instant::now();
    let mut sources = Vec::new();
    while started.elapsed() < Duration::from_secs(7) {
        // `embed` asserts every request succeeds.
        let (joules, source, _, _) = embed(&addr, "minilm-l", "still served").await;
        assert!(joules > 0.0);
        sources.push(source);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sources.first().map(String::as_str), Some("nvml-counter"));
    assert_eq!(
        sources.last().map(String::as_str),
        Some("estimate"),
        "{sources:?}"
    );
    // Once lost, always the estimate: the sources switch exactly once.
    let switches = sources.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(switches, 1, "{sources:?}");
    let text = metrics(&addr).await;
    assert_eq!(
        common::metric_sum(&text, "wattserve_energy_source_lost_total", "gpu0"),
        1.0
    );
    let lines = output.lock().unwrap().clone();
    let lost: Vec<&String> = lines.iter().filter(|l| l.contains("is lost")).collect();
    assert_eq!(lost.len(), 1, "one log line: {lost:?}");
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_counter_that_stops_moving_costs_at_most_the_settle_deadline() {
    if !common::minilm_available() {
        return;
    }
    // The counter freezes 2 s after NVML starts: batches after it never settle.
    let trace = "gpu StandIn-A100 counter 100\nwatts 0 0 100\nstall 0 2000\n";
    let (child, addr, _dir, _) = start(trace, &[("minilm-s", 0)]).await;
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < Duration::from_secs(4) {
        let (joules, source, _, took) = embed(&addr, "minilm-s", "frozen counter").await;
        // Never longer than the 1 s settle deadline (plus the request itself), never 0.
        assert!(took < Duration::from_millis(1500), "took {took:?}");
        assert!(joules > 0.0);
        last = Some(source);
    }
    // Past the stall, the response says its energy is an estimate.
    assert_eq!(last.as_deref(), Some("estimate"));
    let text = metrics(&addr).await;
    assert!(
        common::metric_sum(&text, "wattserve_energy_settle_fallbacks_total", "minilm-s") >= 1.0
    );
    stop(child);
}

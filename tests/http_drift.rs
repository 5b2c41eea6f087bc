//! Input drift end to end on a real server: traffic drawn from the reference's distribution
//! stays under the threshold; 250-token inputs after a reference of short ones push the KS
//! statistic of `input_tokens` over 0.15 within one window, in `/v1/drift` and in
//! `wattserve_drift_ks`. A test binary of its own: it reads the process-wide metrics.

mod common;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use common::{metric_sum, TestServer};

const WORDS: [&str; 16] = [
    "energy", "carbon", "request", "model", "batch", "server", "token", "latency", "budget",
    "tenant", "joule", "cache", "drift", "window", "input", "answer",
];

/// `n` texts of `lo..=hi` words drawn with `rng`.
fn texts(rng: &mut StdRng, n: usize, lo: usize, hi: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let k = rng.random_range(lo..=hi);
            (0..k)
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

async fn embed(s: &TestServer, inputs: &[String]) {
    for chunk in inputs.chunks(32) {
        let r = reqwest::Client::new()
            .post(s.url("/v1/embeddings"))
            .json(&json!({"model": "minilm", "input": chunk, "truncate": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

async fn drift(s: &TestServer) -> Value {
    reqwest::get(s.url("/v1/drift"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn feature<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["model"] == "minilm" && f["feature"] == name)
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longer_inputs_drift_and_the_same_distribution_does_not() {
    if !common::minilm_available() {
        return;
    }
    let s = TestServer::start(|c| {
        c.drift.reference_size = 320;
        c.drift.window_size = 320;
        c.drift.interval_ms = 100;
    })
    .await;
    let mut rng = StdRng::seed_from_u64(20261202);
    // The reference: the first 320 inputs, 3 to 8 words.
    embed(&s, &texts(&mut rng, 320, 3, 8)).await;
    let v = drift(&s).await;
    assert_eq!(v["threshold"], 0.15);
    let f = feature(&v, "input_tokens");
    assert_eq!(f["reference_size"], 320, "{f}");
    assert_eq!(f["window_size"], 0);
    assert_eq!(f["ks"], Value::Null, "no live inputs yet");
    assert_eq!(f["reference_source"], "first requests");

    // More of the same: under the threshold, on every feature.
    embed(&s, &texts(&mut rng, 320, 3, 8)).await;
    let v = drift(&s).await;
    for name in [
        "input_tokens",
        "projection_0",
        "projection_1",
        "projection_2",
    ] {
        let f = feature(&v, name);
        assert_eq!(f["window_size"], 320, "{f}");
        let ks = f["ks"].as_f64().unwrap();
        assert!(
            ks < 0.15,
            "{name}: KS {ks} on the reference's own distribution: {f}"
        );
        assert_eq!(f["drifted"], false);
    }

    // 160 inputs of 200 to 260 words (250+ tokens, truncated at the model's 256): half the
    // window is now unlike the reference.
    embed(&s, &texts(&mut rng, 160, 200, 260)).await;
    let v = drift(&s).await;
    let f = feature(&v, "input_tokens");
    let ks = f["ks"].as_f64().unwrap();
    assert!(ks > 0.15 && f["drifted"] == true, "{f}");
    assert!(f["p_value"].as_f64().unwrap() < 1e-6, "{f}");
    // The gauge says the same (it is set when the statistic is computed).
    let m = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = metric_sum(
        &m,
        "wattserve_drift_ks",
        "model=\"minilm\",feature=\"input_tokens\"",
    );
    assert!((gauge - ks).abs() < 1e-9, "gauge {gauge} vs {ks}");
    assert_eq!(metric_sum(&m, "wattserve_drift_threshold", ""), 0.15);
    s.stop().await.unwrap();

    // In the same test (the metrics are the process's): a reference from a file.
    a_reference_file_is_the_reference_from_the_start().await;
}

/// `wattserve drift reference` writes the features of a JSONL file's inputs; a server with
/// `drift.reference_dir` compares with them from its first request.
async fn a_reference_file_is_the_reference_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let jsonl: String = texts(&mut rng, 200, 3, 8)
        .iter()
        .map(|t| format!("{}\n", json!({"text": t})))
        .collect();
    std::fs::write(dir.path().join("inputs.jsonl"), jsonl).unwrap();
    let out = dir.path().join("minilm.json");
    let (models, inputs, out_arg) = (
        common::models_dir(),
        dir.path().join("inputs.jsonl"),
        out.clone(),
    );
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_wattserve"))
            .args(["drift", "reference", "--model", "minilm", "--inputs"])
            .arg(&inputs)
            .arg("--out")
            .arg(&out_arg)
            .arg("--models-dir")
            .arg(&models)
            .env("WATTSERVE_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(
        file["features"]["input_tokens"].as_array().unwrap().len(),
        200
    );
    assert_eq!(
        file["features"]["projection_2"].as_array().unwrap().len(),
        200
    );
    let reference_dir = dir.path().to_path_buf();
    let s = TestServer::start(move |c| {
        c.drift.reference_dir = Some(reference_dir);
        c.drift.window_size = 100;
        c.drift.interval_ms = 100;
    })
    .await;
    embed(&s, &texts(&mut rng, 100, 200, 260)).await;
    let v = drift(&s).await;
    let f = feature(&v, "input_tokens");
    assert_eq!(f["reference_size"], 200, "{f}");
    assert!(
        f["reference_source"]
            .as_str()
            .unwrap()
            .starts_with("wattserve drift reference --inputs"),
        "{f}"
    );
    assert!(
        f["ks"].as_f64().unwrap() > 0.9 && f["drifted"] == true,
        "{f}"
    );
    s.stop().await.unwrap();
}

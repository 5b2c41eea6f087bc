//! `wattserve bench` end to end: an in-process server, the real model, the JSON report.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

#[test]
fn bench_reports_every_request_of_every_level() {
    if !minilm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_wattserve"))
        .args([
            "bench",
            "--model",
            "minilm",
            "--unbatched-baseline",
            "--concurrency",
            "1,4",
        ])
        .args(["--requests", "12", "--warmup", "0", "--generate", "16"])
        .arg("--models-dir")
        .arg(models_dir())
        .arg("--json")
        .arg(&json)
        .current_dir(dir.path())
        .env("WATTSERVE_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("req/s") && stdout.contains("minilm@unbatched"),
        "{stdout}"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let levels = report["levels"].as_array().unwrap();
    let rows: Vec<(String, String)> = levels
        .iter()
        .map(|l| {
            (
                l["model"].as_str().unwrap().into(),
                l["load"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("minilm", "c=1"),
            ("minilm", "c=4"),
            ("minilm@unbatched", "c=1"),
            ("minilm@unbatched", "c=4")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    for l in levels {
        assert_eq!(l["requests"], 12, "{l}");
        assert!(l["errors"].as_object().unwrap().is_empty(), "{l}");
        assert!(l["p50_ms"].as_f64().unwrap() > 0.0);
        assert!(l["p99_ms"].as_f64().unwrap() >= l["p50_ms"].as_f64().unwrap());
        assert!(l["cpu_seconds"].as_f64().unwrap() > 0.0);
        // Metering is on by default: every level reports its mean energy per request.
        assert!(l["joules_per_request"].as_f64().unwrap() > 0.0, "{l}");
    }
    // Without batching every request is computed alone.
    assert_eq!(levels[2]["mean_batch_size"], 1.0);
    assert_eq!(levels[3]["mean_batch_size"], 1.0);
    assert_eq!(report["distinct_inputs"], 16);
    // The same model with and without batching gives the same vectors.
    let acc = &report["accuracy"][0];
    assert_eq!(acc["model"], "minilm@unbatched");
    assert_eq!(acc["reference"], "minilm");
    assert_eq!(acc["inputs"], 16);
    assert!(acc["min_cosine"].as_f64().unwrap() > 0.99999, "{acc}");
    // Each model's energy label, as /v1/models computes it, against the default thresholds
    // for embeddings (J per 1,000 input tokens: A ≤ 4 < B ≤ 16 < C ≤ 64 < D ≤ 256 < E).
    let labels = report["energy_labels"].as_array().unwrap();
    assert_eq!(labels.len(), 2, "{labels:?}");
    for (label, model) in labels.iter().zip(["minilm", "minilm@unbatched"]) {
        assert_eq!(label["model"], model);
        assert_eq!(label["task"], "embedding");
        assert_eq!(label["energy_source"], "estimate");
        let j = label["joules_per_1k_tokens"].as_f64().unwrap();
        assert!(j > 0.0, "{label}");
        let expected = match j {
            j if j <= 4.0 => "A",
            j if j <= 16.0 => "B",
            j if j <= 64.0 => "C",
            j if j <= 256.0 => "D",
            _ => "E",
        };
        assert_eq!(label["class"], expected, "{label}");
        assert!(
            stdout.contains(&format!("energy label: {model} (f32): {expected}")),
            "{stdout}"
        );
    }
}

#[test]
fn bench_rejects_bad_options_with_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_wattserve"))
        .args(["bench", "--url", "http://127.0.0.1:9", "--offline-ceiling"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in-process"), "{stderr}");
}

#[test]
fn bench_compares_protocols_on_the_same_model() {
    if !minilm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_wattserve"))
        .args(["bench", "--model", "minilm", "--concurrency", "1,4"])
        .args(["--protocol", "openai,v2-json,v2-binary,grpc"])
        .args(["--requests", "10", "--warmup", "0", "--generate", "8"])
        .args(["--inputs-per-request", "2"])
        .arg("--models-dir")
        .arg(models_dir())
        .arg("--json")
        .arg(&json)
        .current_dir(dir.path())
        .env("WATTSERVE_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let levels = report["levels"].as_array().unwrap();
    let rows: Vec<String> = levels
        .iter()
        .map(|l| {
            format!(
                "{} {}",
                l["load"].as_str().unwrap(),
                l["protocol"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            "c=1 openai",
            "c=1 v2-json",
            "c=1 v2-binary",
            "c=1 grpc",
            "c=4 openai",
            "c=4 v2-json",
            "c=4 v2-binary",
            "c=4 grpc",
        ]
    );
    for l in levels {
        // Every request of every protocol succeeded, was metered and embedded two inputs.
        assert_eq!(l["requests"], 10, "{l}");
        assert!(l["errors"].as_object().unwrap().is_empty(), "{l}");
        assert!(l["joules_per_request"].as_f64().unwrap() > 0.0, "{l}");
        assert!(l["mean_batch_size"].as_f64().unwrap() >= 2.0, "{l}");
        let ratio = l["inputs_per_s"].as_f64().unwrap() / l["requests_per_s"].as_f64().unwrap();
        assert!((ratio - 2.0).abs() < 1e-9, "{l}");
    }
}

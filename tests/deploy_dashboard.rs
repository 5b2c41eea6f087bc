//! The Grafana dashboard (deploy/grafana/wattserve.json) against a real server's /metrics: every
//! query parses with promtool, and every metric and label it uses is exported
//! (tests/deploy/check_dashboard.py). promtool comes from tests/deploy/tool.sh; without it (or
//! without python3) the test is skipped locally and fails with CI=true.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Prints why the test is skipped and returns `None`, or fails the test with `CI=true`.
fn skip<T>(msg: &str) -> Option<T> {
    assert!(
        !common::weights_required(),
        "{msg} (CI=true: a missing tool fails)"
    );
    eprintln!("SKIPPED: {msg}");
    None
}

/// The path `tests/deploy/tool.sh promtool` prints (it unpacks promtool under target/tools/).
fn promtool() -> Option<PathBuf> {
    let out = Command::new("bash")
        .arg(repo().join("tests/deploy/tool.sh"))
        .arg("promtool")
        .current_dir(repo())
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let path = PathBuf::from(stdout.trim().lines().last().unwrap_or("").trim());
            if path.is_file() {
                Some(path)
            } else {
                skip(&format!(
                    "tests/deploy/tool.sh promtool printed {stdout:?}, not a file"
                ))
            }
        }
        Ok(out) => skip(&format!(
            "no promtool: tests/deploy/tool.sh promtool failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => skip(&format!(
            "no promtool: cannot run tests/deploy/tool.sh: {e}"
        )),
    }
}

fn python3_available() -> bool {
    match Command::new("python3").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        _ => {
            let _ = skip::<()>("no python3 on PATH (tests/deploy/check_dashboard.py needs it)");
            false
        }
    }
}

/// The checker's own tests of its PromQL extractor and /metrics matching (no server, no
/// promtool).
#[test]
fn the_dashboard_checker_passes_its_self_test() {
    if !python3_available() {
        return;
    }
    let out = Command::new("python3")
        .arg(repo().join("tests/deploy/check_dashboard.py"))
        .arg("--self-test")
        .current_dir(repo())
        .output()
        .expect("cannot run python3 tests/deploy/check_dashboard.py --self-test");
    assert!(
        out.status.success(),
        "check_dashboard.py --self-test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_metrics_the_server_exports() {
    if !common::smollm2_available() || !python3_available() {
        return;
    }
    // tool.sh may download a package: keep it off the runtime's threads.
    let Some(promtool) = tokio::task::spawn_blocking(promtool).await.unwrap() else {
        return;
    };

    let s = common::smollm2_server().await;
    let client = reqwest::Client::new();

    // Requests that make the per-model, per-endpoint, generation and energy series exist.
    let (status, _, body) = common::post_json(
        &s,
        "/v1/embeddings",
        json!({"model": "minilm", "input": ["energy per request", "watts"]}),
    )
    .await;
    assert_eq!(status, 200, "embeddings: {body}");

    let (status, _, body) = common::post_json(
        &s,
        "/v1/completions",
        json!({"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 4,
               "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "completion: {body}");

    let resp = client
        .post(s.url("/v1/chat/completions"))
        .json(
            &json!({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}],
                       "max_tokens": 4, "temperature": 0, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "streamed chat completion");
    let streamed = resp.text().await.unwrap();
    assert!(
        streamed.contains("[DONE]"),
        "the stream must end with [DONE]: {streamed}"
    );

    let (status, _, body) = common::post_json(
        &s,
        "/v1/embeddings",
        json!({"model": "no-such-model", "input": "x"}),
    )
    .await;
    assert_eq!(status, 404, "unknown model: {body}");

    let metrics = s.metrics(None).await;
    assert!(
        metrics.contains("wattserve_requests_total"),
        "/metrics lacks wattserve_requests_total:\n{metrics}"
    );
    let dir = tempfile::tempdir().unwrap();
    let metrics_file = dir.path().join("metrics.prom");
    std::fs::write(&metrics_file, &metrics).unwrap();

    let out = tokio::task::spawn_blocking(move || run_checker(&metrics_file, &promtool))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check_dashboard.py failed ({}):\n{stdout}\n{stderr}\n--- /metrics ---\n{metrics}",
        out.status
    );
    eprintln!("{stdout}");
    s.stop().await.unwrap();
}

fn run_checker(metrics_file: &Path, promtool: &Path) -> std::process::Output {
    Command::new("python3")
        .arg(repo().join("tests/deploy/check_dashboard.py"))
        .arg("--dashboard")
        .arg(repo().join("deploy/grafana/wattserve.json"))
        .arg("--metrics")
        .arg(metrics_file)
        .arg("--promtool")
        .arg(promtool)
        .arg("--source")
        .arg(repo().join("src/metrics.rs"))
        .current_dir(repo())
        .output()
        .expect("cannot run python3 tests/deploy/check_dashboard.py")
}

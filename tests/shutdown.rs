//! SIGTERM ends the process within the grace period plus one second, whatever the clients do: an
//! open stream gets a final error event, a half-sent request is dropped, the exit code is 0.
//! The real binary, as an orchestrator runs it.

mod common;

use std::io::Write;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::json;

use common::Output;

/// Starts `wattserve serve` on a free port with a 1-second grace period; returns the child, its
/// address once it is ready, and its output so far and to come.
async fn start(dir: &std::path::Path) -> (Child, String, Output) {
    let config = dir.join("wattserve.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nport = 0\nmodels_dir = {:?}\nmodels = [\"smollm2\"]\nshutdown_grace_s = 1.0\n[limits]\nallow_ignore_eos = true\n[usage]\npath = {:?}\n",
            common::models_dir(),
            dir.join("usage.sqlite")
        ),
    )
    .unwrap();
    common::spawn_server(&config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_half_sent_requests_within_the_grace_period() {
    if !common::weights_available(&["smollm2/weights/SmolLM2-135M-Instruct.Q4_1.gguf"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, output) = start(dir.path()).await;
    // A stream that would run for minutes.
    let mut stream = reqwest::Client::new()
        .post(format!("http://{addr}/v1/completions"))
        .json(
            &json!({"model": "smollm2", "prompt": "Count:", "max_tokens": 4000,
                      "ignore_eos": true, "temperature": 0, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut text = String::from_utf8_lossy(&stream.chunk().await.unwrap().unwrap()).to_string();
    // A request whose body never completes.
    let mut half = std::net::TcpStream::connect(&addr).unwrap();
    half.write_all(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\"",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let sent = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    // The stream ends with an error event and [DONE].
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(chunk)) = stream.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(read.is_ok(), "the stream was not ended");
    assert!(
        text.contains("shutting_down") && text.trim_end().ends_with("data: [DONE]"),
        "no final error event: ...{}",
        &text[text.len().saturating_sub(400)..]
    );
    // The process exits 0 within grace (1 s) + 1 s.
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if sent.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            panic!("still running 5 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(2), "exited after {took:?}");
    drop(half);
    // One access-log line per request, naming its id, tenant, path, status and model.
    std::thread::sleep(Duration::from_millis(100));
    let lines = output.lock().unwrap();
    let access = lines
        .iter()
        .find(|l| l.contains(" request request_id=") && l.contains("path=/v1/completions"))
        .unwrap_or_else(|| panic!("no access line for the stream:\n{}", lines.join("\n")));
    for field in [
        "request_id=",
        "tenant=anonymous",
        "status=200",
        "model=smollm2",
        "duration_ms=",
    ] {
        assert!(access.contains(field), "{field} missing in {access}");
    }
}

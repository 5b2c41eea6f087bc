//! `wattserve_requests_in_flight{endpoint}`, the autoscaling signal: every inference endpoint's
//! series exists at 0 from the start, and a request counts from its arrival until the last byte
//! of its answer — a stream until it ends, or until its client goes away. A test binary of its
//! own: the gauge is process-wide.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use common::{metric_sum, TestServer};

async fn in_flight(s: &TestServer, endpoint: &str) -> f64 {
    let text = s.metrics(None).await;
    metric_sum(
        &text,
        "wattserve_requests_in_flight",
        &format!("endpoint=\"{endpoint}\""),
    )
}

/// Polls until the gauge of `endpoint` reads `want` (the server drops a finished body a moment
/// after the client has read it).
async fn eventually(s: &TestServer, endpoint: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = in_flight(s, endpoint).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint}: in flight {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_in_flight_until_their_answer_is_done() {
    if !common::smollm2_available() {
        return;
    }
    let s = TestServer::start(|c| {
        c.server.models = vec!["smollm2".into(), "minilm".into()];
        c.limits.allow_ignore_eos = true;
    })
    .await;
    let text = s.metrics(None).await;
    for endpoint in wattserve::metrics::INFERENCE_ENDPOINTS {
        let line = format!("wattserve_requests_in_flight{{endpoint=\"{endpoint}\"}} 0");
        assert!(text.contains(&line), "no `{line}` in\n{text}");
    }

    let client = reqwest::Client::new();
    let stream = || {
        client
            .post(s.url("/v1/completions"))
            .json(&json!({
                "model": "smollm2", "prompt": "Once upon a time", "max_tokens": 64,
                "ignore_eos": true, "stream": true, "temperature": 0
            }))
            .send()
    };
    // A stream is in flight while it runs, and leaves when it ends.
    let mut resp = stream().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.chunk().await.unwrap().is_some());
    assert_eq!(in_flight(&s, "completions").await, 1.0);
    while resp.chunk().await.unwrap().is_some() {}
    eventually(&s, "completions", 0.0).await;

    // A stream whose client goes away leaves too.
    let mut resp = stream().await.unwrap();
    assert!(resp.chunk().await.unwrap().is_some());
    assert_eq!(in_flight(&s, "completions").await, 1.0);
    drop(resp);
    eventually(&s, "completions", 0.0).await;

    // Whole answers and errors are counted and leave as well.
    let (status, _, _) = common::post_json(
        &s,
        "/v1/embeddings",
        json!({"model": "minilm", "input": "hi"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = common::post_json(
        &s,
        "/v1/embeddings",
        json!({"model": "nope", "input": "hi"}),
    )
    .await;
    assert_eq!(status, 404);
    eventually(&s, "embeddings", 0.0).await;
    s.stop().await.unwrap();
}

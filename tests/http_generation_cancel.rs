//! A client that disconnects mid-stream cancels its sequence: no tokens are generated for it
//! afterwards. In a test binary of its own because it reads `wattserve_tokens_total`, and the
//! metrics recorder is one per process: other tests generating on their own servers in the same
//! process would move the counter (which made this test flaky beside `http_generation.rs`).

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::{post_json as post, smollm2_available as available, smollm2_server as server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_stops_its_generation() {
    if !available() {
        return;
    }
    let s = server().await;
    let completion_tokens =
        |text: &str| common::metric_sum(text, "wattserve_tokens_total", "kind=\"completion\"");
    let metrics = || async {
        reqwest::get(s.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let mut resp = reqwest::Client::new()
        .post(s.url("/v1/completions"))
        .json(
            &json!({"model": "smollm2", "prompt": "Tell a long story:", "max_tokens": 4000,
                      "temperature": 0, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    // Read a few chunks, then hang up.
    for _ in 0..3 {
        resp.chunk().await.unwrap().unwrap();
    }
    drop(resp);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = completion_tokens(&metrics().await);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = completion_tokens(&metrics().await);
    assert_eq!(before, after, "generation went on after the client left");
    assert!(
        before < 200.0,
        "{before} tokens generated for a client that left"
    );
    // The usage ledger records what the abandoned stream generated and spent (its model, every
    // token the metric counted, joules), not an empty request.
    let usage: Value = reqwest::get(s.url("/v1/usage?group_by=model,endpoint"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = usage["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{usage}");
    let row = &rows[0];
    assert_eq!(
        (&row["model"], &row["endpoint"]),
        (&json!("smollm2"), &json!("completions"))
    );
    assert_eq!(row["requests"], 1, "{row}");
    assert!(before > 0.0);
    assert_eq!(row["completion_tokens"].as_f64().unwrap(), before, "{row}");
    assert!(row["joules"].as_f64().unwrap() > 0.0, "{row}");
    // The model still serves.
    let (status, _, _) = post(
        &s,
        "/v1/completions",
        json!({"model": "smollm2", "prompt": "Hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200);
}

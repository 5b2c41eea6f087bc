//! The scheduler seen over HTTP: batching across requests, queue-full 503, cancellation on
//! disconnect, `/metrics`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn metrics(server: &TestServer) -> String {
    reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn long_inputs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("input {i} talks about energy and batching ").repeat(6))
        .collect()
}

#[tokio::test]
async fn concurrent_single_requests_share_batches_and_metrics_count_them() {
    if !minilm_available() {
        return;
    }
    let server = TestServer::start_with(
        |_| {},
        |m| {
            m[0].spec.name = "minilm-batching".into();
            m[0].spec.batching.max_queue_delay_ms = 20;
        },
    )
    .await;
    let client = reqwest::Client::new();
    let items: Vec<RefItem> = minilm_reference()
        .into_iter()
        .filter(|i| !i.text.is_empty())
        .collect();
    let mut tasks = Vec::new();
    for item in items.iter().take(16) {
        let (client, url, text, reference) = (
            client.clone(),
            server.url("/v1/embeddings"),
            item.text.clone(),
            item.embedding.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .json(&json!({"model": "minilm-batching", "input": text}))
                .send()
                .await
                .unwrap();
            let batch: usize = resp.headers()["x-batch-size"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let v: Value = resp.json().await.unwrap();
            let got: Vec<f32> = v["data"][0]["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            // Riding in a padded batch must not change the vector.
            assert!(max_abs_diff(&got, &reference) <= 1e-4);
            batch
        }));
    }
    let mut largest = 0;
    for t in tasks {
        largest = largest.max(t.await.unwrap());
    }
    assert!(largest > 1, "16 concurrent requests never shared a batch");
    let text = metrics(&server).await;
    let label = "model=\"minilm-batching\"";
    assert_eq!(
        metric_sum(&text, "wattserve_requests_total", label),
        16.0,
        "{text}"
    );
    assert!(
        text.contains("endpoint=\"embeddings\"") && text.contains("status=\"200\""),
        "{text}"
    );
    let batches = metric_sum(&text, "wattserve_batch_size_count", label);
    let inputs = metric_sum(&text, "wattserve_batch_size_sum", label);
    assert_eq!(inputs, 16.0, "every input computed exactly once: {text}");
    assert!(batches < 16.0, "{text}");
    for name in [
        "wattserve_queue_depth",
        "wattserve_queue_duration_seconds_bucket",
        "wattserve_request_duration_seconds_bucket",
        "wattserve_tokens_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn full_queue_answers_503_with_retry_after_then_recovers() {
    if !minilm_available() {
        return;
    }
    let server = TestServer::start_with(
        |_| {},
        |m| {
            m[0].spec.name = "minilm-small-queue".into();
            m[0].spec.batching.queue_capacity = 1;
            m[0].spec.batching.max_batch_size = 4;
        },
    )
    .await;
    let url = server.url("/v1/embeddings");
    let busy = tokio::spawn({
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"model": "minilm-small-queue", "input": long_inputs(96)}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    // Wait until the long request is admitted (it holds the only place): its inputs show in
    // the queue depth.
    let label = "model=\"minilm-small-queue\"";
    for _ in 0..400 {
        if metric_sum(&metrics(&server).await, "wattserve_queue_depth", label) > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let client = reqwest::Client::new();
    let r = client
        .post(&url)
        .json(&json!({"model": "minilm-small-queue", "input": "one more"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "queue_full");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("queue_capacity"),
        "{v}"
    );
    assert_eq!(busy.await.unwrap(), 200);
    let after = client
        .post(&url)
        .json(&json!({"model": "minilm-small-queue", "input": "after the storm"}))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_disconnected_client_has_its_queued_inputs_dropped() {
    if !minilm_available() {
        return;
    }
    let server = TestServer::start_with(
        |_| {},
        |m| {
            m[0].spec.name = "minilm-cancel".into();
            m[0].spec.batching.max_batch_size = 1;
            m[0].spec.batching.max_queue_delay_ms = 0;
        },
    )
    .await;
    let url = server.url("/v1/embeddings");
    // 48 inputs, one per batch: keeps the compute thread busy for a while.
    let busy = tokio::spawn({
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"model": "minilm-cancel", "input": long_inputs(48)}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // This client gives up after 150 ms, long before its 20 inputs could be computed.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(&url)
        .json(&json!({"model": "minilm-cancel", "input": long_inputs(20)}))
        .send()
        .await;
    assert!(gave_up.is_err(), "expected the client-side timeout");
    assert_eq!(busy.await.unwrap(), 200);
    // A final request flushes the queue past the abandoned one.
    let last = reqwest::Client::new()
        .post(&url)
        .json(&json!({"model": "minilm-cancel", "input": "done"}))
        .send()
        .await
        .unwrap();
    assert_eq!(last.status(), 200);
    let text = metrics(&server).await;
    let computed = metric_sum(&text, "wattserve_batch_size_sum", "model=\"minilm-cancel\"");
    assert_eq!(
        computed, 49.0,
        "the abandoned request's 20 inputs must not be computed:\n{text}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_request_is_not_stuck_behind_a_huge_one() {
    if !minilm_available() {
        return;
    }
    let server = TestServer::start(|_| {}).await;
    let client = reqwest::Client::new();
    let huge: Vec<String> = (0..2048).map(|i| format!("sentence number {i}")).collect();
    let big = {
        let client = client.clone();
        let url = server.url("/v1/embeddings");
        tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"model": "minilm", "input": huge}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            std::time::Instant::now()
        })
    };
    // Let the big one get queued and start.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = client
        .post(server.url("/v1/embeddings"))
        .json(&json!({"model": "minilm", "input": "a small request"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let small_done = std::time::Instant::now();
    let big_done = big.await.unwrap();
    // 2,048 inputs take about 64 batches; the small request rides in one of the next ones
    // rather than waiting for all of them.
    assert!(
        small_done < big_done,
        "the small request waited for the whole huge one"
    );
}

#[tokio::test]
async fn an_input_over_the_byte_limit_is_refused_before_tokenizing() {
    if !minilm_available() {
        return;
    }
    let server = TestServer::start(|c| c.limits.max_input_bytes = 1000).await;
    let (status, _, v) = post_json(
        &server,
        "/v1/embeddings",
        json!({"model": "minilm", "input": ["ok", "x".repeat(1001)]}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "input[1]");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_input_bytes"),
        "{v}"
    );
}

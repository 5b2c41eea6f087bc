//! End to end: the real server on 127.0.0.1:0 with the real minilm model, over real HTTP.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

async fn post(server: &TestServer, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.url("/v1/embeddings"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Asserts an OpenAI error object with this status and code; returns the message.
async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> (String, Value) {
    assert_eq!(resp.status().as_u16(), status);
    assert!(resp.headers().contains_key("x-request-id"));
    let v: Value = resp.json().await.unwrap();
    let err = &v["error"];
    assert_eq!(err["code"], code, "{v}");
    assert!(err["type"].is_string(), "{v}");
    assert!(err.get("param").is_some(), "{v}");
    (
        err["message"].as_str().unwrap().to_string(),
        err["param"].clone(),
    )
}

fn embedding(v: &Value, i: usize) -> Vec<f32> {
    v["data"][i]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test]
async fn single_string_matches_the_reference_and_carries_headers() {
    if !minilm_available() {
        return;
    }
    let server = TestServer::start(|_| {}).await;
    let items = minilm_reference();
    let item = &items[0];
    let resp = reqwest::Client::new()
        .post(server.url("/v1/embeddings"))
        .header("x-request-id", "req-42")
        .json(&json!({"model": "minilm", "input": item.text}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-request-id"], "req-42");
    assert_eq!(h["x-model"], "minilm");
    assert_eq!(h["x-precision"], "f32");
    assert_eq!(h["x-batch-size"], "1");
    let timing = h["server-timing"].to_str().unwrap();
    assert!(
        timing.starts_with("queue;dur=")
            && timing.contains("compute;dur=")
            && timing.contains("total;dur="),
        "{timing}"
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "minilm");
    assert_eq!(v["data"][0]["object"], "embedding");
    assert_eq!(v["data"][0]["index"], 0);
    let real_tokens = item.token_ids.iter().filter(|&&t| t != 0).count();
    assert_eq!(v["usage"]["prompt_tokens"], real_tokens);
    assert_eq!(v["usage"]["total_tokens"], real_tokens);
    let got = embedding(&v, 0);
    assert!(cosine(&got, &item.embedding) >= 0.9999);
    assert!(max_abs_diff(&got, &item.embedding) <= 1e-4);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn array_input_keeps_order_and_base64_decodes_to_the_same_floats() {
    if !minilm_available() {
        return;
    }
    let server = TestServer::start(|_| {}).await;
    let items = minilm_reference();
    let texts: Vec<&str> = items
        .iter()
        .filter(|i| !i.text.is_empty())
        .map(|i| i.text.as_str())
        .collect();
    let floats: Value = post(&server, json!({"model": "minilm", "input": texts}))
        .await
        .json()
        .await
        .unwrap();
    let b64: Value = post(
        &server,
        json!({"model": "minilm", "input": texts, "encoding_format": "base64"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let refs: Vec<&RefItem> = items.iter().filter(|i| !i.text.is_empty()).collect();
    assert_eq!(floats["data"].as_array().unwrap().len(), texts.len());
    let mut total_tokens = 0;
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(floats["data"][i]["index"], i);
        let got = embedding(&floats, i);
        assert!(cosine(&got, &r.embedding) >= 0.9999, "item {i}");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64["data"][i]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(decoded, got, "base64 item {i} differs from float");
        total_tokens += r.token_ids.iter().filter(|&&t| t != 0).count();
    }
    // The long fixture sentence has more than 128 tokens: its fixture ids stop at 128.
    assert!(floats["usage"]["prompt_tokens"].as_u64().unwrap() as usize > total_tokens - 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_openai_errors_with_fitting_statuses() {
    if !minilm_available() {
        return;
    }
    let server = TestServer::start(|c| {
        c.limits.max_body_bytes = 64 * 1024;
        c.limits.max_inputs_per_request = 8;
    })
    .await;
    let client = reqwest::Client::new();

    // Malformed JSON.
    let resp = client
        .post(server.url("/v1/embeddings"))
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    let (msg, _) = expect_error(resp, 400, "invalid_json").await;
    assert!(msg.contains("not valid JSON"), "{msg}");
    // JSON under another media type (what a cross-site form or `curl -d` sends), or none.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut req = client
            .post(server.url("/v1/embeddings"))
            .body(r#"{"model": "minilm", "input": "x"}"#);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let (msg, _) = expect_error(req.send().await.unwrap(), 415, "unsupported_media_type").await;
        assert!(msg.contains("application/json"), "{msg}");
    }
    // A media type with parameters is fine.
    let resp = client
        .post(server.url("/v1/embeddings"))
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"model": "minilm", "input": "x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Missing field.
    let (msg, _) = expect_error(
        post(&server, json!({"input": "x"})).await,
        400,
        "invalid_json",
    )
    .await;
    assert!(msg.contains("model"), "{msg}");
    // Empty input, as string and as array, and an empty element.
    expect_error(
        post(&server, json!({"model": "minilm", "input": ""})).await,
        400,
        "invalid_input",
    )
    .await;
    expect_error(
        post(&server, json!({"model": "minilm", "input": []})).await,
        400,
        "invalid_input",
    )
    .await;
    let (_, param) = expect_error(
        post(&server, json!({"model": "minilm", "input": ["a", ""]})).await,
        400,
        "invalid_input",
    )
    .await;
    assert_eq!(param, "input[1]");
    // Too many inputs.
    let (msg, _) = expect_error(
        post(&server, json!({"model": "minilm", "input": vec!["a"; 9]})).await,
        400,
        "invalid_input",
    )
    .await;
    assert!(msg.contains("limit of 8"), "{msg}");
    // Unknown model.
    let (msg, param) = expect_error(
        post(&server, json!({"model": "nope", "input": "x"})).await,
        404,
        "model_not_found",
    )
    .await;
    assert!(msg.contains("nope") && msg.contains("minilm"), "{msg}");
    assert_eq!(param, "model");
    // Body over the limit.
    let big = "word ".repeat(20_000);
    let (msg, _) = expect_error(
        post(&server, json!({"model": "minilm", "input": big})).await,
        413,
        "request_too_large",
    )
    .await;
    assert!(msg.contains("65536"), "{msg}");
    // Input over the model's 256 tokens: rejected, naming the limit; accepted with truncate.
    let long = "energy ".repeat(300);
    let (msg, param) = expect_error(
        post(&server, json!({"model": "minilm", "input": long})).await,
        400,
        "context_length_exceeded",
    )
    .await;
    assert!(msg.contains("256"), "{msg}");
    assert_eq!(param, "input");
    let ok = post(
        &server,
        json!({"model": "minilm", "input": long, "truncate": true}),
    )
    .await;
    assert_eq!(ok.status(), 200);
    let v: Value = ok.json().await.unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], 256);
    // Bad encoding_format, wrong dimensions.
    expect_error(
        post(
            &server,
            json!({"model": "minilm", "input": "x", "encoding_format": "int8"}),
        )
        .await,
        400,
        "invalid_encoding_format",
    )
    .await;
    expect_error(
        post(
            &server,
            json!({"model": "minilm", "input": "x", "dimensions": 128}),
        )
        .await,
        400,
        "invalid_dimensions",
    )
    .await;
    assert_eq!(
        post(
            &server,
            json!({"model": "minilm", "input": "x", "dimensions": 384})
        )
        .await
        .status(),
        200
    );
    // Unknown route and wrong method are JSON errors too.
    expect_error(
        client.get(server.url("/v1/nothing")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    expect_error(
        client
            .get(server.url("/v1/embeddings"))
            .send()
            .await
            .unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    // After all that, the server still serves.
    assert_eq!(
        post(&server, json!({"model": "minilm", "input": "still alive"}))
            .await
            .status(),
        200
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn thirty_two_concurrent_requests_are_all_answered_correctly() {
    if !minilm_available() {
        return;
    }
    let server = TestServer::start(|_| {}).await;
    let items: Vec<RefItem> = minilm_reference()
        .into_iter()
        .filter(|i| !i.text.is_empty())
        .collect();
    let client = reqwest::Client::new();
    let url = server.url("/v1/embeddings");
    let mut tasks = Vec::new();
    for n in 0..32 {
        let item = &items[n % items.len()];
        let (client, url, text, reference) = (
            client.clone(),
            url.clone(),
            item.text.clone(),
            item.embedding.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let v: Value = client
                .post(url)
                .json(&json!({"model": "minilm", "input": text}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            cosine(&embedding(&v, 0), &reference)
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap() >= 0.9999);
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn models_health_and_ready_describe_the_server() {
    if !minilm_available() {
        return;
    }
    let server = TestServer::start(|_| {}).await;
    let client = reqwest::Client::new();
    let v: Value = client
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let m = &v["data"][0];
    assert_eq!(m["id"], "minilm");
    assert_eq!(m["object"], "model");
    assert_eq!(m["precision"], "f32");
    assert_eq!(m["dimensions"], 384);
    assert_eq!(m["max_input_tokens"], 256);
    let one: Value = client
        .get(server.url("/v1/models/minilm"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], "minilm");
    expect_error(
        client
            .get(server.url("/v1/models/other"))
            .send()
            .await
            .unwrap(),
        404,
        "model_not_found",
    )
    .await;
    assert_eq!(
        client
            .get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: Value = client
        .get(server.url("/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["models"], json!(["minilm"]));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    if !minilm_available() {
        return;
    }
    let server = TestServer::start(|_| {}).await;
    let url = server.url("/v1/embeddings");
    // A request with many long inputs takes a while to compute; stop the server while it runs.
    let inputs: Vec<String> = (0..256)
        .map(|i| format!("sentence number {i} ").repeat(20))
        .collect();
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&json!({"model": "minilm", "input": inputs}))
            .send()
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let addr = server.addr;
    server.stop().await.unwrap();
    let resp = in_flight.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 256);
    // And it no longer accepts connections.
    assert!(reqwest::Client::new()
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn precision_override_serves_int8_with_smaller_weights() {
    if !minilm_available() {
        return;
    }
    let f32_server = TestServer::start(|_| {}).await;
    let int8_server =
        TestServer::start(|c| c.server.precision = Some(wattserve::engine::Precision::Int8)).await;
    let card = |s: &TestServer| {
        let url = s.url("/v1/models");
        async move {
            let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            v["data"][0].clone()
        }
    };
    let (a, b) = (card(&f32_server).await, card(&int8_server).await);
    assert_eq!(a["precision"], "f32");
    assert_eq!(b["precision"], "int8");
    let (fa, fb) = (
        a["weights_bytes"].as_u64().unwrap(),
        b["weights_bytes"].as_u64().unwrap(),
    );
    // 22.7 M parameters; the encoder's 10.6 M projection weights shrink 4x, embeddings stay f32.
    assert!(
        fa > 80_000_000 && fb < fa * 2 / 3,
        "f32 {fa} B, int8 {fb} B"
    );
    let resp = post(
        &int8_server,
        json!({"model": "minilm", "input": "quantized at load"}),
    )
    .await;
    assert_eq!(resp.headers()["x-precision"], "int8");
    f32_server.stop().await.unwrap();
    int8_server.stop().await.unwrap();
}

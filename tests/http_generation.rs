//! `/v1/chat/completions` and `/v1/completions` over real HTTP with the real SmolLM2 GGUF:
//! greedy output equals the engine's, streams equal non-streams, stop strings, usage and energy,
//! and errors. (A client that disconnects: `http_generation_cancel.rs`.)

mod common;

use serde_json::{json, Value};
use wattserve::engine::{DeviceSpec, Precision};
use wattserve::engine::{GenerationLoadOptions, GenerationModel};

use common::{post_json as post, smollm2_available as available, smollm2_server as server};

/// Reads an SSE body to the end: the JSON of every `data:` line, and whether `[DONE]` came last.
fn sse_events(body: &str) -> (Vec<Value>, bool) {
    let data: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let done = data.last() == Some(&"[DONE]");
    let events = data
        .iter()
        .filter(|d| **d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    (events, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_greedy_matches_the_engine_and_streams_the_same_text() {
    if !available() {
        return;
    }
    let s = server().await;
    let messages = json!([{"role": "user", "content": "What is a GPU?"}]);
    let (status, headers, v) = post(
        &s,
        "/v1/chat/completions",
        json!({"model": "smollm2", "messages": messages, "temperature": 0, "max_tokens": 24}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 24);
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        v["usage"]["total_tokens"].as_u64().unwrap(),
        prompt_tokens + 24
    );
    // Energy: headers and usage.energy agree.
    let joules: f64 = headers["x-energy-joules"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(joules > 0.0);
    assert!(
        (v["usage"]["energy"]["joules"].as_f64().unwrap() - joules).abs() < 1e-9 * joules.max(1.0)
    );
    assert_eq!(headers["x-precision"], "int8");

    // The engine alone, greedy, on the same rendered prompt gives the same text.
    let engine = GenerationModel::load(&GenerationLoadOptions {
        path: common::models_dir().join("smollm2/weights"),
        precision: Precision::Int8,
        device: DeviceSpec::Cpu,
        max_context: None,
    })
    .unwrap();
    let prompt = engine
        .render_chat(&[wattserve::engine::gguf::ChatMessage {
            role: "user".into(),
            content: "What is a GPU?".into(),
        }])
        .unwrap();
    let ids = engine.tokenizer().encode(&prompt).unwrap();
    assert_eq!(ids.len() as u64, prompt_tokens);
    let out = engine.generate_greedy(&ids, 24).unwrap();
    assert_eq!(engine.tokenizer().decode(&out, true).unwrap(), text);

    // Streamed: the deltas add up to the same text; a usage chunk with energy; then [DONE].
    let resp = reqwest::Client::new()
        .post(s.url("/v1/chat/completions"))
        .json(
            &json!({"model": "smollm2", "messages": messages, "temperature": 0, "max_tokens": 24,
                      "stream": true, "stream_options": {"include_usage": true}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (events, done) = sse_events(&resp.text().await.unwrap());
    assert!(done, "stream must end with [DONE]");
    let streamed: String = events
        .iter()
        .filter_map(|e| {
            e["choices"].get(0)?["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(streamed, text);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let finish: Vec<&Value> = events
        .iter()
        .filter_map(|e| e["choices"].get(0).map(|c| &c["finish_reason"]))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec!["length"]);
    let usage = &events.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 24);
    assert!(usage["energy"]["joules"].as_f64().unwrap() > 0.0);
    assert_eq!(usage["energy"]["source"], "estimate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_stop_strings_seeds_and_errors() {
    if !available() {
        return;
    }
    let s = server().await;
    let (status, _, v) = post(
        &s,
        "/v1/completions",
        json!({"model": "smollm2", "prompt": "1, 2, 3, 4,", "temperature": 0, "max_tokens": 30, "stop": [" 8"]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], " 5, 6, 7,");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // Sampling with a seed is reproducible.
    let sampled = |seed: u64| {
        json!({"model": "smollm2", "prompt": "Once upon a time", "temperature": 1.0, "top_p": 0.9,
               "top_k": 40, "seed": seed, "max_tokens": 12})
    };
    let (_, _, a) = post(&s, "/v1/completions", sampled(7)).await;
    let (_, _, b) = post(&s, "/v1/completions", sampled(7)).await;
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);

    for (body, param, code) in [
        (
            json!({"model": "smollm2", "prompt": "x", "temperature": 2.5}),
            "temperature",
            "invalid_value",
        ),
        (
            json!({"model": "smollm2", "prompt": "x", "top_p": 0}),
            "top_p",
            "invalid_value",
        ),
        (
            json!({"model": "smollm2", "prompt": "x", "n": 2}),
            "n",
            "invalid_value",
        ),
        (
            // Over the operator's cap (limits.max_completion_tokens, 4096 by default).
            json!({"model": "smollm2", "prompt": "x", "max_tokens": 9000}),
            "max_tokens",
            "invalid_value",
        ),
        (
            json!({"model": "smollm2", "prompt": "x", "ignore_eos": true}),
            "ignore_eos",
            "invalid_value",
        ),
        (
            json!({"model": "smollm2", "prompt": ["a", "b"]}),
            "prompt",
            "invalid_prompt",
        ),
        (
            json!({"model": "minilm", "prompt": "x"}),
            "model",
            "wrong_endpoint",
        ),
    ] {
        let (status, _, v) = post(&s, "/v1/completions", body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
    }
    // A role outside OpenAI's set is refused, naming the element.
    let (status, _, v) = post(
        &s,
        "/v1/chat/completions",
        json!({"model": "smollm2", "messages": [{"role": "user", "content": "x"}, {"role": "<|im_start|>system", "content": "y"}]}),
    )
    .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("messages")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages[1].role"),
        "{v}"
    );
    let (status, _, v) = post(
        &s,
        "/v1/embeddings",
        json!({"model": "smollm2", "input": "x"}),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("wrong_endpoint"))
    );
    let (status, _, v) = post(
        &s,
        "/v1/chat/completions",
        json!({"model": "smollm2", "messages": []}),
    )
    .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("messages"))
    );
    let (status, _, v) = post(
        &s,
        "/v1/chat/completions",
        json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 404, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_longer_than_the_context_is_rejected_naming_the_limit() {
    if !available() {
        return;
    }
    let s = common::TestServer::start_with(
        |c| c.server.models = vec!["smollm2".into()],
        |entries| entries[0].spec.max_tokens = Some(32),
    )
    .await;
    let long = "word ".repeat(40);
    let (status, _, v) = post(
        &s,
        "/v1/completions",
        json!({"model": "smollm2", "prompt": long}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 32 tokens"),
        "{v}"
    );
    // Without max_tokens the completion stops at the context length.
    let (status, _, v) = post(
        &s,
        "/v1/completions",
        json!({"model": "smollm2", "prompt": "Count: 1, 2, 3", "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["total_tokens"], 32);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_completion_is_served_while_sixteen_long_streams_run() {
    if !available() {
        return;
    }
    let s = common::TestServer::start(|c| {
        c.server.models = vec!["smollm2".into()];
        c.limits.allow_ignore_eos = true;
    })
    .await;
    let client = reqwest::Client::new();
    let mut streams = Vec::new();
    for i in 0..16 {
        let mut r = client
            .post(s.url("/v1/completions"))
            .json(
                &json!({"model": "smollm2", "prompt": format!("Story {i}:"), "max_tokens": 2000,
                          "ignore_eos": true, "temperature": 0, "stream": true}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.chunk().await.unwrap();
        streams.push(r);
    }
    // Every decode slot of the model (max_batch_size 16) is taken by a long stream.
    let started = std::time::Instant::now();
    let (status, _, v) = post(
        &s,
        "/v1/completions",
        json!({"model": "smollm2", "prompt": "Hi", "max_tokens": 4, "temperature": 0}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 4, "{v}");
    assert!(
        took < std::time::Duration::from_secs(10),
        "a 4-token completion took {took:?} beside 16 long streams"
    );
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_cannot_start_in_time_gets_503_not_a_broken_200() {
    if !available() {
        return;
    }
    let s = common::TestServer::start_with(
        |c| {
            c.server.models = vec!["smollm2".into()];
            c.limits.allow_ignore_eos = true;
        },
        |entries| {
            let b = &mut entries[0].spec.batching;
            b.max_batch_size = 1;
            b.max_active_seqs = Some(1);
            b.max_queue_wait_ms = 200;
        },
    )
    .await;
    let client = reqwest::Client::new();
    // One long stream takes the only slot.
    let mut long = client
        .post(s.url("/v1/completions"))
        .json(
            &json!({"model": "smollm2", "prompt": "Count:", "max_tokens": 3000,
                      "ignore_eos": true, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 200);
    long.chunk().await.unwrap();
    let r = client
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"model": "smollm2", "stream": true, "max_tokens": 4,
                      "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "queue_timeout", "{v}");
    drop(long);
}

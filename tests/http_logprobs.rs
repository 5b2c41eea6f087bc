//! `logprobs` and `echo` over real HTTP with the real SmolLM2 GGUF: the log-probabilities equal
//! the log-softmax of the engine's own logits, `echo` returns exactly the prompt's tokens,
//! `max_tokens: 0` scores without generating, alternatives are sorted, unique and never more
//! likely than certain, streams carry the same numbers, and bad values are 400s naming the
//! parameter.

mod common;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use wattserve::engine::{Decoder, DeviceSpec, Precision};
use wattserve::engine::{GenerationLoadOptions, GenerationModel, Logits, SeqInput};

use common::{post_json as post, smollm2_available as available, smollm2_server as server};

fn engine() -> GenerationModel {
    GenerationModel::load(&GenerationLoadOptions {
        path: common::models_dir().join("smollm2/weights"),
        precision: Precision::Int8,
        device: DeviceSpec::Cpu,
        max_context: None,
    })
    .unwrap()
}

/// candle's log-softmax of one logits row (the reference).
fn log_softmax(row: &[f32]) -> Vec<f32> {
    let t = Tensor::from_vec(row.to_vec(), row.len(), &Device::Cpu).unwrap();
    candle_nn::ops::log_softmax(&t, 0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The engine's logits as the server computes them for a request alone: the prompt in one
/// chunk (every row, for its scores), then one token at a time, greedy. Returns the rows
/// predicting prompt tokens 1.. and the generated tokens, and the generated tokens.
fn engine_rows(model: &GenerationModel, prompt: &[u32], new: usize) -> (Vec<Vec<f32>>, Vec<u32>) {
    let mut cache = model.new_cache(prompt.len() + new);
    let mut rows = model
        .step(&mut [SeqInput {
            tokens: prompt,
            cache: &mut cache,
            logits: Logits::All,
        }])
        .unwrap();
    let mut generated = Vec::new();
    while generated.len() < new {
        let last = rows.last().unwrap();
        let token = wattserve::engine::sampling::argmax(last);
        generated.push(token);
        if generated.len() == new {
            break;
        }
        let mut next = model
            .step(&mut [SeqInput {
                tokens: &[token],
                cache: &mut cache,
                logits: Logits::Last,
            }])
            .unwrap();
        rows.append(&mut next);
    }
    (rows, generated)
}

fn token_text(model: &GenerationModel, id: u32) -> String {
    String::from_utf8_lossy(&model.token_bytes(id)).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_logprobs_equal_the_log_softmax_of_the_engines_logits() {
    if !available() {
        return;
    }
    let model = engine();
    let prompt = model
        .tokenizer()
        .encode("The quick brown fox jumps over the")
        .unwrap();
    let new = 6;
    let (rows, generated) = engine_rows(&model, &prompt, new);
    let s = server().await;
    let (status, _, v) = post(
        &s,
        "/v1/completions",
        json!({"model": "smollm2", "prompt": prompt, "max_tokens": new, "temperature": 0,
               "echo": true, "logprobs": 5}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let all: Vec<u32> = prompt.iter().chain(&generated).copied().collect();
    let want: Vec<String> = all.iter().map(|&t| token_text(&model, t)).collect();
    assert_eq!(
        tokens, want,
        "echoed prompt, then the engine's greedy tokens"
    );
    assert_eq!(lp["token_logprobs"][0], Value::Null);
    assert_eq!(lp["top_logprobs"][0], Value::Null);
    for (i, &token) in all.iter().enumerate().skip(1) {
        let reference = log_softmax(&rows[i - 1]);
        let got = lp["token_logprobs"][i].as_f64().unwrap() as f32;
        let expected = reference[token as usize];
        assert!(
            (got - expected).abs() < 1e-4,
            "token {i}: {got} vs log-softmax {expected}"
        );
        // The five most likely, as the reference ranks them, plus the chosen one.
        let top = lp["top_logprobs"][i].as_object().unwrap();
        let mut ranked: Vec<(usize, f32)> = reference.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        for &(id, l) in ranked.iter().take(5) {
            let shown = top[&token_text(&model, id as u32)].as_f64().unwrap() as f32;
            assert!((shown - l).abs() < 1e-4, "alternative {id} at {i}");
        }
        assert!(top.len() == 5 || top.len() == 6, "{top:?}");
    }
    // The generated tokens are the most likely ones: their logprob is the top alternative's.
    for i in prompt.len()..all.len() {
        let top = lp["top_logprobs"][i].as_object().unwrap();
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert_eq!(lp["token_logprobs"][i].as_f64().unwrap(), best);
    }
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    let mut at = 0;
    for (o, t) in offsets.iter().zip(&want) {
        assert_eq!(*o, at);
        at += t.chars().count() as u64;
    }
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert_eq!(
        text,
        want.concat(),
        "ASCII text: the token strings spell it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_with_max_tokens_zero_scores_the_prompt_without_generating() {
    if !available() {
        return;
    }
    let model = engine();
    let s = server().await;
    let prompt = "Energy is measured in joules; power in watts.";
    let ids = model.tokenizer().encode(prompt).unwrap();
    let body = json!({"model": "smollm2", "prompt": prompt, "max_tokens": 0, "echo": true,
                      "logprobs": 0});
    let (status, headers, v) = post(&s, "/v1/completions", body.clone()).await;
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["text"], prompt);
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 0);
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    assert!(
        headers["x-energy-joules"]
            .to_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            > 0.0
    );
    let tokens: Vec<String> = ids.iter().map(|&t| token_text(&model, t)).collect();
    assert_eq!(choice["logprobs"]["tokens"], json!(tokens));
    // logprobs: 0 shows the chosen token alone at each position.
    let (rows, _) = engine_rows(&model, &ids, 0);
    assert_eq!(rows.len(), ids.len());
    for i in 1..ids.len() {
        let top = choice["logprobs"]["top_logprobs"][i].as_object().unwrap();
        assert_eq!(top.len(), 1);
        let got = choice["logprobs"]["token_logprobs"][i].as_f64().unwrap() as f32;
        assert!((got - log_softmax(&rows[i - 1])[ids[i] as usize]).abs() < 1e-4);
    }
    // Token ids as the prompt (what lm-evaluation-harness sends), in a batch of one: the same.
    let (status, _, by_ids) = post(
        &s,
        "/v1/completions",
        json!({"model": "smollm2", "prompt": [ids], "max_tokens": 0, "echo": true, "logprobs": 0}),
    )
    .await;
    assert_eq!(status, 200, "{by_ids}");
    assert_eq!(by_ids["choices"][0]["logprobs"], choice["logprobs"]);
    // Streamed: the echoed prompt with its scores in one chunk, then the end.
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (status, _, sse) = post(&s, "/v1/completions", streamed).await;
    assert_eq!(status, 200);
    let chunks: Vec<Value> = sse
        .as_str()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["text"], prompt);
    assert_eq!(chunks[0]["choices"][0]["logprobs"], choice["logprobs"]);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_alternatives_are_sorted_unique_and_streams_carry_the_same() {
    if !available() {
        return;
    }
    let s = server().await;
    let body = json!({"model": "smollm2", "messages": [{"role": "user", "content": "Name a colour."}],
                      "max_tokens": 10, "temperature": 0.8, "seed": 7, "logprobs": true,
                      "top_logprobs": 20});
    let (status, _, v) = post(&s, "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let mut bytes = Vec::new();
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 20);
        let lps: Vec<f64> = top.iter().map(|a| a["logprob"].as_f64().unwrap()).collect();
        assert!(lps.windows(2).all(|w| w[0] >= w[1]), "sorted: {lps:?}");
        let mut seen: Vec<&Value> = top.iter().map(|a| &a["bytes"]).collect();
        seen.sort_by_key(|b| b.to_string());
        seen.dedup();
        assert_eq!(seen.len(), 20, "unique alternatives");
        let p: f64 = lps.iter().map(|l| l.exp()).sum();
        assert!(p <= 1.0 + 1e-5, "probabilities sum to {p}");
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
        // A sampled token need not be the most likely, but it is never more likely than it.
        assert!(t["logprob"].as_f64().unwrap() <= lps[0]);
        bytes.extend(
            t["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8),
        );
    }
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    if v["choices"][0]["finish_reason"] == "length" {
        assert_eq!(String::from_utf8_lossy(&bytes), text);
    }
    // The same seed, streamed: the same tokens and numbers, spread over the chunks.
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (_, _, sse) = post(&s, "/v1/chat/completions", streamed).await;
    let from_stream: Vec<Value> = sse
        .as_str()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(&from_stream, content);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_logprob_options_are_400s_naming_the_parameter() {
    if !available() {
        return;
    }
    let s = server().await;
    let chat = |extra: Value| {
        let mut b = json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let completion = |extra: Value| {
        let mut b = json!({"model": "smollm2", "prompt": "hi"});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    for (path, body, param, says) in [
        (
            "/v1/completions",
            completion(json!({"logprobs": 6})),
            "logprobs",
            "between 0 and 5",
        ),
        (
            "/v1/completions",
            completion(json!({"max_tokens": 0})),
            "max_tokens",
            "only with echo",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs",
            "between 0 and 20",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"top_logprobs": 2})),
            "top_logprobs",
            "needs logprobs",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"echo": true})),
            "echo",
            "/v1/completions",
        ),
    ] {
        let (status, _, v) = post(&s, path, body).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["param"], param, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokenizer_endpoints_use_the_served_models_tokenizer() {
    if !available() {
        return;
    }
    let model = engine();
    let s = server().await;
    let text = "Tokens, counted: 12 joules <|im_start|>!";
    let want = model.tokenizer().encode(text).unwrap();
    // The only generation model served: `model` may be left out (as lm-evaluation-harness does).
    let (status, _, v) = post(&s, "/tokenize", json!({"prompt": text})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["tokens"], json!(want));
    assert_eq!(v["count"], want.len());
    assert_eq!(v["max_model_len"], model.context_len());
    let (_, _, v) = post(
        &s,
        "/detokenize",
        json!({"model": "smollm2", "tokens": want}),
    )
    .await;
    assert_eq!(v["prompt"], text);
    let info: Value = reqwest::get(s.url("/tokenizer_info"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let eos = model
        .tokenizer()
        .token_text(model.tokenizer().eos())
        .unwrap();
    assert_eq!(info["eos_token"], eos);
    assert_eq!(info["model"], "smollm2");
    assert!(info["chat_template"].as_str().unwrap().contains("im_start"));
    // An embedding model has no such tokenizer; ids outside the vocabulary are refused.
    let (status, _, v) = post(&s, "/tokenize", json!({"model": "minilm", "prompt": "x"})).await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("model")),
        "{v}"
    );
    let (status, _, v) = post(&s, "/detokenize", json!({"tokens": [1, 999999]})).await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("tokens")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("999999"),
        "{v}"
    );
}

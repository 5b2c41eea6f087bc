//! The response cache end to end: a repeated embedding is a hit with the same vector for a
//! hundredth of the joules, a request with some cached inputs is `partial` and computes only the
//! rest, deterministic completions are cached per tenant, the counters, the usage ledger and the
//! headers agree, and a flood of distinct inputs stays within the byte bound. A test binary of
//! its own: it reads the process-wide metrics.

mod common;

use serde_json::{json, Value};

use common::{keys_file, metric_sum, TestServer};

struct Answer {
    status: u16,
    cache: Option<String>,
    joules: f64,
    body: Value,
}

async fn post(s: &TestServer, key: &str, path: &str, body: Value) -> Answer {
    let r = reqwest::Client::new()
        .post(s.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let h = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    let cache = h("x-cache");
    let joules = h("x-energy-joules").map_or(0.0, |j| j.parse().unwrap());
    Answer {
        status,
        cache,
        joules,
        body: r.json().await.unwrap(),
    }
}

async fn metrics(s: &TestServer) -> String {
    // With keys, /metrics takes one too.
    reqwest::Client::new()
        .get(s.url("/metrics"))
        .bearer_auth("sk-ops")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_answers_repeats_for_almost_no_energy_and_keeps_tenants_apart() {
    if !(common::minilm_available() && common::smollm2_available()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(
        dir.path(),
        &[
            ("team-a", "sk-a", ""),
            ("team-b", "sk-b", ""),
            ("ops", "sk-ops", "admin"),
        ],
    );
    let s = TestServer::start(move |c| {
        c.server.models = vec!["minilm".into(), "smollm2".into()];
        c.auth.keys_file = Some(keys);
        c.cache = wattserve::cache::CacheConfig::default();
    })
    .await;
    let before = metrics(&s).await;
    let mut told = 0.0;

    // The same input twice: computed, then a hit with the very same vector.
    let embed = |input: Value| json!({"model": "minilm", "input": input});
    let miss = post(&s, "sk-a", "/v1/embeddings", embed(json!("hello world"))).await;
    let hit = post(&s, "sk-a", "/v1/embeddings", embed(json!("hello world"))).await;
    assert_eq!((miss.status, hit.status), (200, 200));
    assert_eq!(miss.cache.as_deref(), Some("miss"));
    assert_eq!(hit.cache.as_deref(), Some("hit"));
    assert_eq!(
        miss.body["data"][0]["embedding"], hit.body["data"][0]["embedding"],
        "bit-identical"
    );
    assert_eq!(
        miss.body["usage"]["prompt_tokens"],
        hit.body["usage"]["prompt_tokens"]
    );
    assert!(
        hit.joules > 0.0 && hit.joules < 0.01 * miss.joules,
        "hit {} J vs miss {} J",
        hit.joules,
        miss.joules
    );
    assert_eq!(hit.body["usage"]["energy"]["source"], "estimate");
    told += miss.joules + hit.joules;

    // Another tenant does not get team-a's entry.
    let other = post(&s, "sk-b", "/v1/embeddings", embed(json!("hello world"))).await;
    assert_eq!(other.cache.as_deref(), Some("miss"));
    told += other.joules;

    // Some inputs cached: `partial`, and only the rest is computed (the prompt-token counter
    // moves by the new input's tokens alone, while the answer counts both).
    let alone = post(
        &s,
        "sk-a",
        "/v1/embeddings",
        embed(json!("beta words here")),
    )
    .await;
    told += alone.joules;
    let beta_tokens = alone.body["usage"]["prompt_tokens"].as_u64().unwrap() as f64;
    let prompt_tokens = |m: &str| metric_sum(m, "wattserve_tokens_total", "kind=\"prompt\"");
    let tokens_before = prompt_tokens(&metrics(&s).await);
    let partial = post(
        &s,
        "sk-a",
        "/v1/embeddings",
        embed(json!([
            "hello world",
            "a brand new input",
            "beta words here"
        ])),
    )
    .await;
    assert_eq!(partial.cache.as_deref(), Some("partial"));
    told += partial.joules;
    let computed = prompt_tokens(&metrics(&s).await) - tokens_before;
    let all = partial.body["usage"]["prompt_tokens"].as_u64().unwrap() as f64;
    let hello = miss.body["usage"]["prompt_tokens"].as_u64().unwrap() as f64;
    assert_eq!(
        computed,
        all - hello - beta_tokens,
        "only the new input computed"
    );
    assert_eq!(
        partial.body["data"][0]["embedding"], miss.body["data"][0]["embedding"],
        "the cached vector in its place"
    );

    // Deterministic completions: cached per tenant; a sampled one is not cached at all.
    let complete = |t: f64| {
        json!({"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 6,
               "temperature": t})
    };
    let c1 = post(&s, "sk-a", "/v1/completions", complete(0.0)).await;
    let c2 = post(&s, "sk-a", "/v1/completions", complete(0.0)).await;
    assert_eq!(
        (c1.cache.as_deref(), c2.cache.as_deref()),
        (Some("miss"), Some("hit"))
    );
    assert_eq!(c1.body["choices"][0]["text"], c2.body["choices"][0]["text"]);
    assert_eq!(
        c1.body["usage"]["completion_tokens"],
        c2.body["usage"]["completion_tokens"]
    );
    assert!(
        c2.joules < 0.01 * c1.joules,
        "{} vs {}",
        c2.joules,
        c1.joules
    );
    let c3 = post(&s, "sk-b", "/v1/completions", complete(0.0)).await;
    assert_eq!(
        c3.cache.as_deref(),
        Some("miss"),
        "never another tenant's completion"
    );
    let sampled = post(&s, "sk-a", "/v1/completions", complete(0.8)).await;
    assert_eq!(sampled.status, 200);
    assert_eq!(sampled.cache, None, "not deterministic: not cached");
    told += c1.joules + c2.joules + c3.joules + sampled.joules;

    // The counters: hits and misses per model; the energy counter equals the headers' sum.
    let after = metrics(&s).await;
    let delta = |name: &str, labels: &str| {
        metric_sum(&after, name, labels) - metric_sum(&before, name, labels)
    };
    assert_eq!(delta("wattserve_cache_hits_total", "model=\"minilm\""), 3.0);
    assert_eq!(
        delta("wattserve_cache_misses_total", "model=\"minilm\""),
        4.0
    );
    assert_eq!(
        delta("wattserve_cache_hits_total", "model=\"smollm2\""),
        1.0
    );
    assert_eq!(
        delta("wattserve_cache_misses_total", "model=\"smollm2\""),
        2.0
    );
    assert!(metric_sum(&after, "wattserve_cache_bytes", "") > 0.0);
    let counted = delta("wattserve_energy_joules_total", "");
    assert!(
        (counted - told).abs() <= 1e-9 * told,
        "counter {counted} J vs headers {told} J"
    );

    // The ledger counts the hits too (an admin sees both tenants).
    let usage: Value = reqwest::Client::new()
        .get(s.url("/v1/usage?group_by=model"))
        .bearer_auth("sk-ops")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hits_of = |model: &str| {
        usage["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == model)
            .map_or(0, |r| r["cache_hits"].as_u64().unwrap())
    };
    assert_eq!((hits_of("minilm"), hits_of("smollm2")), (3, 1), "{usage}");
    s.stop().await.unwrap();

    // In the same test (the metrics are the process's): a small cache under a flood.
    a_flood_of_distinct_inputs_stays_within_the_bound().await;
}

async fn a_flood_of_distinct_inputs_stays_within_the_bound() {
    let bound = 32 * 1024;
    let s = TestServer::start(move |c| {
        c.cache.max_bytes = bound;
    })
    .await;
    let client = reqwest::Client::new();
    for i in 0..16 {
        let inputs: Vec<String> = (0..8).map(|k| format!("distinct input {i}-{k}")).collect();
        let r = client
            .post(s.url("/v1/embeddings"))
            .json(&json!({"model": "minilm", "input": inputs}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let held = metric_sum(&metrics(&s).await, "wattserve_cache_bytes", "");
        assert!(
            held > 0.0 && held <= bound as f64,
            "{held} bytes held, bound {bound}"
        );
    }
    // 128 vectors of 384 floats (1.5 KiB each) do not fit in 32 KiB: the oldest went.
    let m = metrics(&s).await;
    let evicted = metric_sum(&m, "wattserve_cache_evictions_total", "model=\"minilm\"");
    assert!(evicted > 100.0, "{evicted} evictions");
    // The newest are still there; the first are gone.
    let probe = |input: &str| {
        let client = client.clone();
        let url = s.url("/v1/embeddings");
        let input = input.to_string();
        async move {
            let r = client
                .post(url)
                .json(&json!({"model": "minilm", "input": input}))
                .send()
                .await
                .unwrap();
            r.headers()["x-cache"].to_str().unwrap().to_string()
        }
    };
    assert_eq!(probe("distinct input 15-7").await, "hit");
    assert_eq!(probe("distinct input 0-0").await, "miss");
    s.stop().await.unwrap();
}

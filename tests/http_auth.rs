//! API keys over real HTTP: 401 without a valid key (OpenAI's error shape), admitted with
//! `Authorization: Bearer` or `x-api-key`, probes open, and every rejection counted in
//! `wattserve_requests_total`. A test binary of its own: it reads the process-wide metrics.

mod common;

use std::io::Write;

use serde_json::{json, Value};

use common::{sha256_hex, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_required_and_name_their_tenant() {
    if !common::minilm_available() {
        return;
    }
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "# tenants\nteam-a {}\nteam-b {}",
        sha256_hex("sk-a"),
        sha256_hex("sk-b")
    )
    .unwrap();
    let path = file.path().to_path_buf();
    let s = TestServer::start(move |c| c.auth.keys_file = Some(path)).await;
    let client = reqwest::Client::new();
    let body = json!({"model": "minilm", "input": "hello"});
    let embed = |auth: Option<(&'static str, String)>| {
        let mut req = client.post(s.url("/v1/embeddings")).json(&body);
        if let Some((name, value)) = auth {
            req = req.header(name, value);
        }
        req.send()
    };

    for (auth, message) in [
        (None, "No API key provided"),
        (
            Some(("authorization", "Bearer sk-c".to_string())),
            "Incorrect API key",
        ),
        (Some(("x-api-key", sha256_hex("sk-a"))), "Incorrect API key"),
    ] {
        let r = embed(auth).await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert!(r.headers().contains_key("x-request-id"));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
        assert_eq!(v["error"]["type"], "authentication_error", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(message),
            "{v}"
        );
    }
    let r = embed(Some(("authorization", "Bearer sk-a".into())))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-energy-joules"));
    let r = embed(Some(("x-api-key", "sk-b".into()))).await.unwrap();
    assert_eq!(r.status(), 200);

    // Probes are open; everything else, unknown paths and /metrics included, needs a key.
    for path in ["/health", "/ready"] {
        assert_eq!(
            reqwest::get(s.url(path)).await.unwrap().status(),
            200,
            "{path}"
        );
    }
    for path in ["/metrics", "/v1/models", "/nowhere"] {
        assert_eq!(
            reqwest::get(s.url(path)).await.unwrap().status(),
            401,
            "{path}"
        );
    }
    let metrics = client
        .get(s.url("/metrics"))
        .bearer_auth("sk-a")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |status: &str| -> f64 {
        let status = format!("status=\"{status}\"");
        metrics
            .lines()
            .filter(|l| l.starts_with("wattserve_requests_total{"))
            .filter(|l| l.contains("endpoint=\"embeddings\"") && l.contains(&status))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(count("401"), 3.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_keys_file_stops_the_server_with_its_line() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "team-a not-a-digest").unwrap();
    let mut config = wattserve::config::Config::default();
    config.server.port = 0;
    config.auth.keys_file = Some(file.path().to_path_buf());
    let entries = Vec::new();
    let err = match wattserve::Server::bind_entries(&config, entries).await {
        Ok(_) => panic!("started with a malformed keys file"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(":1:") && err.contains("64 hexadecimal"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_have_a_port_of_their_own_without_a_key() {
    if !common::minilm_available() {
        return;
    }
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "ops {}", sha256_hex("sk-ops")).unwrap();
    let path = file.path().to_path_buf();
    let s = TestServer::start(move |c| {
        c.server.metrics_port = Some(0);
        c.auth.keys_file = Some(path);
    })
    .await;
    let metrics = s.metrics_addr.expect("a metrics listener");
    let r = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("# TYPE"));
    // Only /metrics there; the API stays on the main port, behind its keys.
    let r = reqwest::get(format!("http://{metrics}/v1/models"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(reqwest::get(s.url("/metrics")).await.unwrap().status(), 401);
}

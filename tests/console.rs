//! The console and the JSON it reads, end to end on a real server: `/v1/stats` agrees with what
//! the responses said, `/v1/budgets` shows each key only its own tenant's budget, `/ui` is behind
//! the keys and loads in headless Chromium with live charts, no console error and no request
//! outside the server. A test binary of its own: `/v1/stats` reads the process-wide metrics.

mod common;

use serde_json::{json, Value};

use common::{keys_file, TestServer};

async fn get(s: &TestServer, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut r = reqwest::Client::new().get(s.url(path));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_live_numbers_and_each_tenant_its_own_spend() {
    if !common::minilm_available() {
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
    let ledger = dir.path().join("usage.sqlite");
    let s = TestServer::start(move |c| {
        c.server.models = vec!["minilm".into()];
        c.auth.keys_file = Some(keys);
        c.usage.path = ledger;
        c.budgets = ["team-a", "team-b"]
            .map(|t| wattserve::governance::budgets::BudgetConfig {
                tenant: t.into(),
                project: None,
                period: wattserve::governance::budgets::Period::Month,
                usd: Some(1.0),
                kwh: Some(1.0),
                gco2e: None,
                soft_fraction: 0.8,
            })
            .to_vec();
    })
    .await;

    // team-a embeds; the headers say what each request cost.
    let client = reqwest::Client::new();
    let (mut joules, mut n) = (0.0, 0);
    for input in ["one", "two", "three", "four", "five"] {
        let r = client
            .post(s.url("/v1/embeddings"))
            .bearer_auth("sk-a")
            .json(&json!({"model": "minilm", "input": input}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        joules += r.headers()["x-energy-joules"]
            .to_str()
            .unwrap()
            .parse::<f64>()
            .unwrap();
        n += 1;
    }

    // /v1/stats: the requests and joules of the window are those the responses reported.
    let (status, stats) = get(&s, "/v1/stats?window=60", Some("sk-a")).await;
    assert_eq!(status, 200, "{stats}");
    let m = stats["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "minilm")
        .unwrap_or_else(|| panic!("{stats}"));
    let window = stats["window_s"].as_f64().unwrap();
    let served = m["requests_per_s"].as_f64().unwrap() * window;
    assert!((served - n as f64).abs() < 1e-6, "{served} vs {n}: {stats}");
    let j = m["joules_per_request"].as_f64().unwrap() * n as f64;
    assert!(
        (j - joules).abs() <= 1e-9 * joules,
        "stats {j} J vs headers {joules} J"
    );
    assert_eq!(m["error_ratio"], 0.0);
    let (p50, p99) = (m["p50_ms"].as_f64().unwrap(), m["p99_ms"].as_f64().unwrap());
    assert!(p50 > 0.0 && p99 >= p50, "{m}");
    assert!(!stats["series"].as_array().unwrap().is_empty());
    let (status, bad) = get(&s, "/v1/stats?window=0", Some("sk-a")).await;
    assert_eq!(
        (status, &bad["error"]["param"]),
        (400, &json!("window")),
        "{bad}"
    );
    assert_eq!(get(&s, "/v1/stats", None).await.0, 401);

    // /v1/budgets: a key sees its own tenant's budget, with what it spent; an admin sees all.
    let (status, b) = get(&s, "/v1/budgets", Some("sk-a")).await;
    assert_eq!(status, 200, "{b}");
    let data = b["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{b}");
    assert_eq!(data[0]["tenant"], "team-a");
    assert_eq!(data[0]["state"], "ok");
    let kwh = data[0]["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["unit"] == "kwh")
        .unwrap();
    let used = kwh["used"].as_f64().unwrap() * 3.6e6;
    assert!(
        (used - joules).abs() <= 1e-6 * joules,
        "budget used {used} J vs {joules} J"
    );
    let (_, b) = get(&s, "/v1/budgets", Some("sk-b")).await;
    assert_eq!(b["data"][0]["tenant"], "team-b");
    assert_eq!(b["data"][0]["limits"][0]["used"], 0.0);
    let (_, all) = get(&s, "/v1/budgets", Some("sk-ops")).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);

    // /ui: behind the keys like everything else; with one, the page.
    assert_eq!(client.get(s.url("/ui")).send().await.unwrap().status(), 401);
    let r = client
        .get(s.url("/ui"))
        .bearer_auth("sk-a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));

    // In a real browser: ready with data, four live charts with points, the model and team-a's
    // spend on the page, nothing from outside.
    let Some(report) = common::check_page(
        &s.url("/ui"),
        &["Authorization: Bearer sk-a"],
        4,
        &["minilm", "team-a", "req/s"],
        "console",
    ) else {
        return;
    };
    assert_eq!(report["ok"], true, "{report}");
    assert!(
        report["console_errors"].as_array().unwrap().is_empty(),
        "{report}"
    );
    assert!(
        report["external_requests"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let charts = report["charts"].as_array().unwrap();
    assert!(
        charts.iter().all(|c| c["points"].as_u64().unwrap() > 0),
        "{report}"
    );
    s.stop().await.unwrap();
}

//! The usage ledger end to end: two tenants with their own keys drive traffic (embeddings, V2,
//! a completion, a stream, an error); `/v1/usage` gives each tenant exactly what the metering
//! headers told it, shows a key only its own tenant, and still does after a restart.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{keys_file, TestServer};

/// What a tenant was told it spent: requests, errors, joules, gCO2e, $.
#[derive(Debug, Default, Clone, Copy)]
struct Told {
    requests: u64,
    errors: u64,
    joules: f64,
    co2e: f64,
    cost: f64,
}

impl Told {
    fn add_headers(&mut self, h: &reqwest::header::HeaderMap) {
        let f = |name: &str| -> f64 { h[name].to_str().unwrap().parse().unwrap() };
        self.requests += 1;
        self.joules += f("x-energy-joules");
        self.co2e += f("x-co2e-grams");
        self.cost += f("x-cost-usd");
    }
}

/// RFC 4180 CSV: fields split on commas outside quotes, `""` inside quotes is a quote.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (mut row, mut field, mut quoted) = (Vec::new(), String::new(), false);
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                ('"', _) => quoted = !quoted,
                (',', false) => row.push(std::mem::take(&mut field)),
                (c, _) => field.push(c),
            }
        }
        row.push(field);
        rows.push(row);
    }
    rows
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-3 * a.abs().max(b.abs()).max(1e-12)
}

async fn post(
    s: &TestServer,
    key: &str,
    path: &str,
    body: Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = reqwest::Client::new()
        .post(s.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

async fn usage(s: &TestServer, key: &str, query: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(s.url(&format!("/v1/usage?{query}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Polls `/v1/usage` for `key` until it counts `told.requests` (a stream's record is handed to
/// the ledger as its stream ends, a moment after the client read it), then checks the totals.
async fn assert_usage(s: &TestServer, key: &str, tenant: &str, told: Told) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let (status, v) = usage(s, key, "group_by=tenant").await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["tenant"], tenant, "{v}");
        let data = v["data"].as_array().unwrap();
        assert!(data.len() <= 1, "a key sees only its own tenant: {v}");
        let requests = data.first().map_or(0, |r| r["requests"].as_u64().unwrap());
        if requests >= told.requests || Instant::now() > deadline {
            break data.first().cloned().unwrap_or(Value::Null);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(row["tenant"], tenant, "{row}");
    assert_eq!(row["requests"], told.requests, "{row}");
    assert_eq!(row["errors"], told.errors, "{row}");
    let (j, g, c) = (
        row["joules"].as_f64().unwrap(),
        row["co2e_grams"].as_f64().unwrap(),
        row["cost_usd"].as_f64().unwrap(),
    );
    assert!(
        close(j, told.joules),
        "{tenant}: ledger {j} J, headers {} J",
        told.joules
    );
    assert!(
        close(g, told.co2e),
        "{tenant}: ledger {g} g, headers {} g",
        told.co2e
    );
    let parts =
        row["cost_energy_usd"].as_f64().unwrap() + row["cost_hardware_usd"].as_f64().unwrap();
    assert!(
        close(parts, c) && row["cost_hardware_usd"].as_f64().unwrap() > 0.0,
        "{tenant}: the cost's parts {row}"
    );
    assert!(
        close(c, told.cost),
        "{tenant}: ledger ${c}, headers ${}",
        told.cost
    );
    assert!(close(row["kwh"].as_f64().unwrap(), j / 3.6e6), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_sees_what_it_was_told_it_spent_across_a_restart() {
    if !common::smollm2_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.sqlite");
    let keys = keys_file(
        dir.path(),
        &[("team-a", "sk-a", ""), ("team-b", "sk-b", "")],
    );
    let config = |ledger: std::path::PathBuf, keys: std::path::PathBuf| {
        move |c: &mut wattserve::config::Config| {
            c.server.models = vec!["minilm".into(), "smollm2".into()];
            c.auth.keys_file = Some(keys);
            c.usage.path = ledger;
            // A long interval: the records a query reads were flushed by the query itself.
            c.usage.flush_interval_ms = 60_000;
            // Both parts of the cost: electricity and the machine's time.
            c.cost.hardware_usd_per_hour = 3.6;
        }
    };
    let s = TestServer::start(config(ledger.clone(), keys.clone())).await;

    // team-a: embeddings (one and two inputs) and a V2 infer.
    let mut a = Told::default();
    for input in [json!("hello"), json!(["one", "two"]), json!("three")] {
        let (status, h, body) = post(
            &s,
            "sk-a",
            "/v1/embeddings",
            json!({"model": "minilm", "input": input}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        a.add_headers(&h);
    }
    let v2 =
        json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["v2"]}]});
    let (status, h, body) = post(&s, "sk-a", "/v2/models/minilm/infer", v2).await;
    assert_eq!(status, 200, "{body}");
    a.add_headers(&h);

    // team-b: an embedding, a completion, a stream (its energy in the usage chunk), an error.
    let mut b = Told::default();
    let (status, h, body) = post(
        &s,
        "sk-b",
        "/v1/embeddings",
        json!({"model": "minilm", "input": "bee"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    b.add_headers(&h);
    let (status, h, body) = post(
        &s,
        "sk-b",
        "/v1/completions",
        json!({"model": "smollm2", "prompt": "Hi", "max_tokens": 4}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    b.add_headers(&h);
    let (status, _, body) = post(
        &s,
        "sk-b",
        "/v1/completions",
        json!({"model": "smollm2", "prompt": "Hi", "max_tokens": 4, "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let usage_chunk: Value = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .find(|c| !c["usage"].is_null())
        .expect("a usage chunk");
    let e = &usage_chunk["usage"]["energy"];
    b.requests += 1;
    b.joules += e["joules"].as_f64().unwrap();
    b.co2e += e["co2e_grams"].as_f64().unwrap();
    b.cost += e["cost_usd"].as_f64().unwrap();
    let (status, _, _) = post(
        &s,
        "sk-b",
        "/v1/embeddings",
        json!({"model": "no-such-model", "input": "x"}),
    )
    .await;
    assert_eq!(status, 404);
    b.requests += 1;
    b.errors += 1;

    assert_usage(&s, "sk-a", "team-a", a).await;
    assert_usage(&s, "sk-b", "team-b", b).await;

    // Grouping by model and a bad dimension.
    let (status, v) = usage(&s, "sk-b", "group_by=model").await;
    assert_eq!(status, 200);
    let models: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["minilm", "smollm2", "unknown"], "{v}");
    let smollm2 = &v["data"][1];
    assert!(smollm2["completion_tokens"].as_u64().unwrap() > 0, "{v}");
    let (status, v) = usage(&s, "sk-a", "group_by=zone").await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "group_by");

    // The FOCUS export: the required columns, valid values, only the key's tenant, the same cost.
    let r = reqwest::Client::new()
        .get(s.url("/v1/usage/export?format=focus"))
        .bearer_auth("sk-a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = r.text().await.unwrap();
    let rows = parse_csv(&csv);
    let header = &rows[0];
    for required in [
        "BilledCost",
        "EffectiveCost",
        "ListCost",
        "BillingCurrency",
        "ChargePeriodStart",
        "ChargePeriodEnd",
        "ChargeCategory",
        "ChargeDescription",
        "ConsumedQuantity",
        "ConsumedUnit",
        "PricingQuantity",
        "PricingUnit",
        "ServiceName",
        "ServiceCategory",
        "ResourceId",
        "ResourceName",
        "Tags",
    ] {
        assert!(
            header.iter().any(|h| h == required),
            "no {required} in {header:?}"
        );
    }
    let col =
        |row: &Vec<String>, name: &str| row[header.iter().position(|h| h == name).unwrap()].clone();
    let mut billed = 0.0;
    for row in &rows[1..] {
        assert_eq!(row.len(), header.len(), "{row:?}");
        assert_eq!(
            col(row, "SubAccountId"),
            "team-a",
            "a key sees only its tenant"
        );
        assert_eq!(col(row, "BillingCurrency"), "USD");
        assert_eq!(col(row, "ChargeCategory"), "Usage");
        let start = col(row, "ChargePeriodStart");
        assert!(start.ends_with(":00:00Z") && start.len() == 20, "{start}");
        let cost: f64 = col(row, "BilledCost").parse().unwrap();
        assert!(cost >= 0.0 && cost == col(row, "EffectiveCost").parse::<f64>().unwrap());
        let tags: Value = serde_json::from_str(&col(row, "Tags")).unwrap();
        assert_eq!(tags["wattserve/tenant"], "team-a", "{tags}");
        assert!(tags["wattserve/kwh"].as_f64().unwrap() >= 0.0, "{tags}");
        // The cost's two parts add up to it.
        let parts: f64 = ["x_EnergyCost", "x_HardwareCost"]
            .iter()
            .map(|c| col(row, c).parse::<f64>().unwrap())
            .sum();
        assert!(close(parts, cost), "{parts} vs {cost}");
        billed += cost;
    }
    assert!(
        close(billed, a.cost),
        "FOCUS billed {billed} vs headers {}",
        a.cost
    );
    // And the FinOps Foundation's own validator finds no rule broken.
    if let Some(python) =
        common::client_python("WATTSERVE_FOCUS_PYTHON", "focus-venv", "focus-validator")
    {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("focus.csv");
        std::fs::write(&file, &csv).unwrap();
        let venv = python.parent().unwrap().parent().unwrap();
        let out = std::process::Command::new("tests/usage/focus_check.sh")
            .arg(venv)
            .arg(&file)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "focus-validator: {stdout}\n{}\n{csv}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(" 0 failed"), "{stdout}");
    }
    let r = reqwest::Client::new()
        .get(s.url("/v1/usage/export?format=xlsx"))
        .bearer_auth("sk-a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A clean restart keeps everything (the records were flushed on shutdown).
    s.stop().await.unwrap();
    let s = TestServer::start(config(ledger, keys)).await;
    assert_usage(&s, "sk-a", "team-a", a).await;
    assert_usage(&s, "sk-b", "team-b", b).await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_are_charged_as_keys_allow_and_admins_see_every_tenant() {
    if !common::minilm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(
        dir.path(),
        &[
            (
                "team-c",
                "sk-c",
                "project=search project=chat default-project=search",
            ),
            ("team-d", "sk-d", ""),
            ("ops", "sk-ops", "admin"),
        ],
    );
    let s = TestServer::start(move |c| c.auth.keys_file = Some(keys)).await;
    let embed = |key: &'static str, project: Option<&'static str>| {
        let mut req = reqwest::Client::new()
            .post(s.url("/v1/embeddings"))
            .bearer_auth(key)
            .json(&json!({"model": "minilm", "input": "hello"}));
        if let Some(p) = project {
            req = req.header("x-wattserve-project", p);
        }
        req.send()
    };
    let mut joules = std::collections::HashMap::new();
    for (key, project, charged) in [
        ("sk-c", None, "search"),
        ("sk-c", Some("chat"), "chat"),
        ("sk-c", Some("chat"), "chat"),
        ("sk-d", None, "default"),
    ] {
        let r = embed(key, project).await.unwrap();
        assert_eq!(r.status(), 200);
        let j: f64 = r.headers()["x-energy-joules"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        *joules.entry(charged).or_insert(0.0) += j;
    }
    // A project the key may not charge: 403 before any compute, naming the allowed ones.
    let r = embed("sk-c", Some("billing")).await.unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "project_not_allowed", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("search, chat"), "{message}");
    let r = embed("sk-d", Some("search")).await.unwrap();
    assert_eq!(r.status(), 403);

    // Read until the refusal's record is in (on a loaded machine it has been seen to come a
    // moment later than the answers before it).
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let (status, v) = usage(&s, "sk-c", "group_by=project").await;
        assert_eq!(status, 200, "{v}");
        if v["data"].as_array().unwrap().len() >= 3 || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rows: Vec<(String, u64, f64)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["project"].as_str().unwrap().to_string(),
                r["requests"].as_u64().unwrap(),
                r["joules"].as_f64().unwrap(),
            )
        })
        .collect();
    // The refusal is the tenant's, charged to no project (`-`), and cost nothing.
    assert_eq!(rows.len(), 3, "{v}");
    assert_eq!((rows[0].0.as_str(), rows[0].1, rows[0].2), ("-", 1, 0.0));
    assert_eq!(v["data"][0]["errors"], 1);
    assert_eq!((rows[1].0.as_str(), rows[1].1), ("chat", 2));
    assert_eq!((rows[2].0.as_str(), rows[2].1), ("search", 1));
    assert!(close(rows[1].2, joules["chat"]), "{rows:?} {joules:?}");
    assert!(close(rows[2].2, joules["search"]), "{rows:?} {joules:?}");
    // The admin key sees every tenant (or the one it names); others only their own.
    let (_, v) = usage(&s, "sk-ops", "group_by=tenant").await;
    let tenants: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["team-c", "team-d"], "{v}");
    let (_, v) = usage(&s, "sk-ops", "group_by=tenant&tenant=team-d").await;
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
    let (_, v) = usage(&s, "sk-d", "group_by=tenant&tenant=team-c").await;
    assert_eq!(
        v["data"][0]["tenant"], "team-d",
        "a non-admin key cannot name another tenant: {v}"
    );

    // The per-tenant counters say the same.
    let m = s.metrics(Some("sk-ops")).await;
    let chat = common::metric_sum(
        &m,
        "wattserve_tenant_energy_joules_total",
        "tenant=\"team-c\",project=\"chat\"",
    );
    assert!(close(chat, joules["chat"]), "{chat} vs {joules:?}\n{m}");
    let refused = common::metric_sum(
        &m,
        "wattserve_tenant_requests_total",
        "tenant=\"team-c\",project=\"-\"",
    );
    assert_eq!(
        refused, 1.0,
        "a refused project is counted for its tenant, charged to none"
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_gets_a_worse_carbon_class_on_a_dirtier_grid() {
    if !common::minilm_available() {
        return;
    }
    let class_of = |c: char| "ABCDE".find(c).unwrap();
    let mut carbon = Vec::new();
    for intensity in [900.0, 30.0] {
        let s = TestServer::start(move |c| {
            c.energy.source = wattserve::config::SourceChoice::Estimate;
            c.carbon.intensity = Some(intensity);
            c.carbon.embodied_kgco2e = 0.0;
        })
        .await;
        let text = "a sentence of a dozen or so tokens, embedded for its label";
        let r = reqwest::Client::new()
            .post(s.url("/v1/embeddings"))
            .json(&json!({"model": "minilm", "input": text}))
            .send()
            .await
            .unwrap();
        let h = r.headers().clone();
        let v: Value = r.json().await.unwrap();
        let energy = &v["usage"]["energy"];
        let class = h["x-energy-class"]
            .to_str()
            .unwrap()
            .chars()
            .next()
            .unwrap();
        assert_eq!(energy["class"], class.to_string(), "{v}");
        let carbon_class = h["x-carbon-class"]
            .to_str()
            .unwrap()
            .chars()
            .next()
            .unwrap();
        assert_eq!(energy["carbon_class"], carbon_class.to_string(), "{v}");
        // The label over the model's requests so far.
        let m: Value = reqwest::get(s.url("/v1/models/minilm"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(m["energy_class"].is_string(), "{m}");
        assert!(m["joules_per_1k_tokens"].as_f64().unwrap() > 0.0, "{m}");
        // Joules per 1k tokens and grams per 1k tokens at this grid.
        let tokens = v["usage"]["prompt_tokens"].as_f64().unwrap();
        let g_per_1k = energy["co2e_grams"].as_f64().unwrap() / tokens * 1000.0;
        carbon.push((class_of(carbon_class), g_per_1k, class_of(class)));
        s.stop().await.unwrap();
    }
    let (dirty, clean) = (carbon[0], carbon[1]);
    // 30 times the intensity: at least two classes apart (each class is 4x), unless the
    // energy itself differed between the two runs by more than that.
    assert!(
        dirty.0 > clean.0,
        "carbon class {dirty:?} on a 900 g/kWh grid vs {clean:?} on 30 g/kWh"
    );
}

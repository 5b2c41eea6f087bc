//! Budgets end to end: a tenant spends until its daily kWh budget is used up; from then on every
//! request is refused with 429 `budget_exceeded` before any compute (the model's energy counter
//! stands still), served ones say what remains, and the budget still holds after a restart (its
//! spending comes back from the usage ledger). A test binary of its own: it reads the
//! process-wide metrics.

mod common;

use serde_json::{json, Value};

use common::{keys_file, metric_sum, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_budget_refuses_before_compute_and_survives_a_restart() {
    if !common::minilm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.sqlite");
    let keys = keys_file(
        dir.path(),
        &[("team-e", "sk-e", ""), ("team-f", "sk-f", "")],
    );
    // About 0.5 J per embedding here: a few requests use up 1 J (2.8e-7 kWh).
    let limit_kwh = 1.0 / 3.6e6;
    let config = move |ledger: std::path::PathBuf, keys: std::path::PathBuf| {
        move |c: &mut wattserve::config::Config| {
            c.auth.keys_file = Some(keys);
            c.usage.path = ledger;
            c.budgets = vec![wattserve::governance::budgets::BudgetConfig {
                tenant: "team-e".into(),
                project: None,
                period: wattserve::governance::budgets::Period::Day,
                usd: None,
                kwh: Some(limit_kwh),
                gco2e: None,
                soft_fraction: 0.5,
            }];
        }
    };
    let s = TestServer::start(config(ledger.clone(), keys.clone())).await;
    let embed = |s: &TestServer, key: &str| {
        reqwest::Client::new()
            .post(s.url("/v1/embeddings"))
            .bearer_auth(key)
            .json(&json!({"model": "minilm", "input": "spend some joules"}))
            .send()
    };

    let mut spent = 0.0;
    let mut served = 0;
    let refused = loop {
        let r = embed(&s, "sk-e").await.unwrap();
        if r.status() == 429 {
            break r;
        }
        assert_eq!(r.status(), 200);
        // Served only while something remained before it.
        assert!(spent < 1.0, "served at {spent} J of a 1 J budget");
        let h = r.headers();
        assert!(
            h["x-budget-remaining"].to_str().unwrap().ends_with(" kwh"),
            "{h:?}"
        );
        assert!(h["x-budget-period-end"]
            .to_str()
            .unwrap()
            .ends_with("T00:00:00Z"));
        if spent >= 0.5 {
            assert!(
                h.contains_key("x-budget-warning"),
                "past half the budget: {h:?}"
            );
        }
        spent += h["x-energy-joules"]
            .to_str()
            .unwrap()
            .parse::<f64>()
            .unwrap();
        served += 1;
        assert!(served < 100, "the budget never filled");
    };
    assert!(
        spent >= 1.0,
        "refused at {spent} J, before the budget was used up"
    );
    assert!(refused.headers().contains_key("retry-after"));
    let v: Value = refused.json().await.unwrap();
    assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("daily budget of team-e") && message.contains("resets at"),
        "{message}"
    );

    // From now on nothing is computed for team-e; another tenant is not held.
    let energy = |m: &str| metric_sum(m, "wattserve_energy_joules_total", "model=\"minilm\"");
    let before = energy(&s.metrics(Some("sk-f")).await);
    for _ in 0..3 {
        assert_eq!(embed(&s, "sk-e").await.unwrap().status(), 429);
    }
    assert_eq!(
        energy(&s.metrics(Some("sk-f")).await),
        before,
        "a refusal computed"
    );
    assert_eq!(embed(&s, "sk-f").await.unwrap().status(), 200);
    let m = s.metrics(Some("sk-f")).await;
    assert_eq!(
        metric_sum(&m, "wattserve_budget_refusals_total", "tenant=\"team-e\""),
        4.0,
        "{m}"
    );

    // The spending comes back from the ledger after a restart.
    s.stop().await.unwrap();
    let s = TestServer::start(config(ledger, keys)).await;
    assert_eq!(embed(&s, "sk-e").await.unwrap().status(), 429);
    assert_eq!(embed(&s, "sk-f").await.unwrap().status(), 200);
    s.stop().await.unwrap();
}

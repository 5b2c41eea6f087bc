//! The metering contract end to end: headers and `usage.energy` on every success, their sum equal
//! to the Prometheus total, the SCI and cost formulas for the configured values, nothing on errors,
//! nothing when metering is off.

mod common;

use common::*;
use serde_json::{json, Value};
use wattserve::config::SourceChoice;

const PUE: f64 = 1.25;
const INTENSITY: f64 = 400.0;
const PRICE: f64 = 0.2;
const HARDWARE_USD_PER_HOUR: f64 = 3.6;
const EMBODIED_KG: f64 = 1000.0;
const LIFETIME_YEARS: f64 = 4.0;

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn every_success_carries_energy_that_adds_up_to_the_metric() {
    if !minilm_available() {
        return;
    }
    let server = TestServer::start_with(
        |c| {
            c.energy.source = SourceChoice::Estimate;
            c.carbon.intensity = Some(INTENSITY);
            c.carbon.embodied_kgco2e = EMBODIED_KG;
            c.carbon.lifetime_years = LIFETIME_YEARS;
            c.cost.pue = PUE;
            c.cost.electricity_usd_per_kwh = PRICE;
            c.cost.hardware_usd_per_hour = HARDWARE_USD_PER_HOUR;
        },
        |m| m[0].spec.name = "minilm-metered".into(),
    )
    .await;
    let client = reqwest::Client::new();
    let label = "model=\"minilm-metered\"";
    let before = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let energy_before = metric_sum(&before, "wattserve_energy_joules_total", label);

    let items: Vec<RefItem> = minilm_reference()
        .into_iter()
        .filter(|i| !i.text.is_empty())
        .collect();
    let mut tasks = Vec::new();
    for (n, item) in items.iter().enumerate() {
        let (client, url) = (client.clone(), server.url("/v1/embeddings"));
        // Some single inputs, some pairs, all at once: batches overlap requests.
        let input = if n % 3 == 0 {
            json!([item.text, "and a second input"])
        } else {
            json!(item.text)
        };
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"model": "minilm-metered", "input": input}))
                .send()
                .await
                .unwrap()
        }));
    }
    let mut sum_joules = 0.0;
    let (mut sum_co2, mut sum_cost) = (0.0, 0.0);
    let embodied_g_per_s = EMBODIED_KG * 1000.0 / (LIFETIME_YEARS * 365.25 * 86400.0);
    let hardware_usd_per_s = HARDWARE_USD_PER_HOUR / 3600.0;
    for t in tasks {
        let resp = t.await.unwrap();
        assert_eq!(resp.status(), 200);
        let joules: f64 = header(&resp, "x-energy-joules").parse().unwrap();
        let co2: f64 = header(&resp, "x-co2e-grams").parse().unwrap();
        let cost: f64 = header(&resp, "x-cost-usd").parse().unwrap();
        let watts: f64 = header(&resp, "x-power-watts").parse().unwrap();
        assert_eq!(header(&resp, "x-energy-source"), "estimate");
        assert_eq!(header(&resp, "x-carbon-intensity"), "400");
        assert_eq!(header(&resp, "x-carbon-zone"), "custom");
        assert!(joules > 0.0 && watts > 0.0, "{joules} J, {watts} W");
        // SCI: operational part from the energy, embodied part from device-seconds; cost likewise.
        // Both extras are proportional to the same device-seconds, so their ratio is fixed.
        let kwh = joules / 3.6e6;
        let extra_co2 = co2 - kwh * PUE * INTENSITY;
        let extra_cost = cost - kwh * PUE * PRICE;
        assert!(
            extra_co2 > 0.0 && extra_cost > 0.0,
            "{co2} {cost} for {joules} J"
        );
        let seconds_from_co2 = extra_co2 / embodied_g_per_s;
        let seconds_from_cost = extra_cost / hardware_usd_per_s;
        assert!(
            (seconds_from_co2 - seconds_from_cost).abs() <= 1e-6 * seconds_from_cost,
            "device-seconds disagree: {seconds_from_co2} vs {seconds_from_cost}"
        );
        assert!(seconds_from_cost < 60.0);
        let v: Value = resp.json().await.unwrap();
        let e = &v["usage"]["energy"];
        // serde_json's default float parsing may miss the last bit: compare to 1e-12.
        let same = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
        assert!(
            same(e["joules"].as_f64().unwrap(), joules),
            "{e} vs {joules}"
        );
        assert!(same(e["co2e_grams"].as_f64().unwrap(), co2), "{e} vs {co2}");
        assert!(same(e["cost_usd"].as_f64().unwrap(), cost), "{e} vs {cost}");
        assert!(
            same(e["avg_watts"].as_f64().unwrap(), watts)
                || (e["avg_watts"].as_f64().unwrap() - watts).abs() < 1e-3
        );
        assert_eq!(e["source"], "estimate");
        assert_eq!(e["zone"], "custom");
        assert_eq!(e["carbon_intensity_g_per_kwh"], 400.0);
        sum_joules += joules;
        sum_co2 += co2;
        sum_cost += cost;
    }
    let after = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let delta = metric_sum(&after, "wattserve_energy_joules_total", label) - energy_before;
    assert!(
        (delta - sum_joules).abs() <= 1e-9 * sum_joules.max(1.0),
        "Σ x-energy-joules {sum_joules} vs metric delta {delta}\n{after}"
    );
    let co2_total = metric_sum(&after, "wattserve_co2e_grams_total", label);
    let cost_total = metric_sum(&after, "wattserve_cost_usd_total", label);
    assert!(
        (co2_total - sum_co2).abs() <= 1e-9 * sum_co2,
        "{co2_total} vs {sum_co2}"
    );
    assert!(
        (cost_total - sum_cost).abs() <= 1e-9 * sum_cost,
        "{cost_total} vs {sum_cost}"
    );
    assert!(
        after.contains("wattserve_energy_per_request_joules_bucket"),
        "{after}"
    );
    assert!(
        after.contains("wattserve_device_power_watts{device=\"cpu\"}"),
        "{after}"
    );
    assert!(after.contains("source=\"estimate\""), "{after}");

    // Errors carry no energy headers.
    let bad = client
        .post(server.url("/v1/embeddings"))
        .json(&json!({"model": "minilm-metered", "input": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.headers().get("x-energy-joules").is_none());
    let models: Value = client
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["energy_source"], "estimate");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn metering_off_means_no_energy_anywhere() {
    if !minilm_available() {
        return;
    }
    let server = TestServer::start_with(
        |c| c.energy.enabled = false,
        |m| m[0].spec.name = "minilm-unmetered".into(),
    )
    .await;
    let client = reqwest::Client::new();
    let resp = client
        .post(server.url("/v1/embeddings"))
        .json(&json!({"model": "minilm-unmetered", "input": "no meter"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-energy-joules").is_none());
    assert!(resp.headers().get("x-batch-size").is_some());
    let v: Value = resp.json().await.unwrap();
    assert!(v["usage"].get("energy").is_none(), "{v}");
    let models: Value = client
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["energy_source"], "none");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn rapl_on_a_powercap_tree_meters_requests() {
    if !minilm_available() {
        return;
    }
    // A powercap tree in a temp dir, its package counter driven at ~20 W by a thread and wrapping
    // every 0.5 J: the same files and code path as /sys/class/powercap.
    let tmp = tempfile::tempdir().unwrap();
    let zone = tmp.path().join("intel-rapl:0");
    std::fs::create_dir_all(&zone).unwrap();
    std::fs::write(zone.join("name"), "package-0\n").unwrap();
    std::fs::write(zone.join("max_energy_range_uj"), "500000\n").unwrap();
    std::fs::write(zone.join("energy_uj"), "0\n").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let driver = {
        let (zone, stop) = (zone.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut uj: u64 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(1));
                uj = (uj + 20_000) % 500_000;
                let tmp = zone.join("energy_uj.tmp");
                std::fs::write(&tmp, format!("{uj}\n")).unwrap();
                std::fs::rename(&tmp, zone.join("energy_uj")).unwrap();
            }
        })
    };
    let root = tmp.path().to_path_buf();
    let server = TestServer::start_with(
        move |c| {
            c.energy.source = SourceChoice::Rapl;
            c.energy.powercap_root = root;
            c.energy.rapl_process_share = false;
        },
        |m| m[0].spec.name = "minilm-rapl".into(),
    )
    .await;
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let resp = client
            .post(server.url("/v1/embeddings"))
            .json(&json!({"model": "minilm-rapl", "input": "measured by a package counter"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-energy-source"), "rapl");
        let joules: f64 = header(&resp, "x-energy-joules").parse().unwrap();
        let watts: f64 = header(&resp, "x-power-watts").parse().unwrap();
        assert!(joules > 0.0, "{joules}");
        // The driver adds 20 mJ per ~1 ms (less when the sleep overshoots): at most ~20 W, never
        // negative or wrapped into a huge value.
        assert!(watts > 0.0 && watts < 25.0, "{watts} W");
    }
    server.stop().await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    driver.join().unwrap();
}

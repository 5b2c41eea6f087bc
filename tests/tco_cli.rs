//! `wattserve tco` end to end: two bench reports (a model in f32 and in int8, measured on the
//! same machine) priced in two grid zones, checked against figures computed by hand, in every
//! output (the Markdown table, CSV, JSON, HTML).

mod common;

use std::process::Command;

use serde_json::{json, Value};

/// A bench report as `wattserve bench --json` writes it (the fields `tco` reads).
fn report(precision: &str, levels: &[(&str, f64, f64, f64)]) -> Value {
    json!({
        "target": "in-process",
        "levels": levels.iter().map(|&(load, rps, p99, joules)| json!({
            "model": "minilm", "load": load, "protocol": "openai", "requests_per_s": rps,
            "p50_ms": p99 / 4.0, "p90_ms": p99 / 2.0, "p95_ms": p99 * 0.8, "p99_ms": p99,
            "errors": {}, "joules_per_request": joules,
        })).collect::<Vec<_>>(),
        "generation": [],
        "energy_labels": [{"model": "minilm", "precision": precision, "task": "embedding",
                           "energy_source": "estimate", "class": "B", "joules_per_1k_tokens": 9.0}],
    })
}

fn tco(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wattserve"))
        .arg("tco")
        .args(["--bench", "f32.json", "--bench", "int8.json"])
        .args(["--requests-per-day", "10000000", "--peak-to-mean", "3"])
        .args(["--slo", "p99=100ms"])
        .args([
            "--hardware",
            "vm:usd_per_hour=0.1,idle_watts=20,embodied_kgco2e=1000",
        ])
        .args([
            "--pue",
            "1.5",
            "--usd-per-kwh",
            "0.2",
            "--ops-usd-per-month",
            "100",
        ])
        .args(["--zone", "coal=900,hydro=30", "--years", "3,5"])
        .args(extra)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn tco_prices_two_precisions_to_the_cent() {
    let dir = tempfile::tempdir().unwrap();
    let f32_levels = [
        ("c=1", 100.0, 20.0, 0.1),
        ("c=8", 200.0, 80.0, 0.06),
        ("c=32", 250.0, 300.0, 0.05),
    ];
    let int8_levels = [
        ("c=1", 150.0, 10.0, 0.05),
        ("c=8", 400.0, 60.0, 0.03),
        ("c=32", 450.0, 250.0, 0.028),
    ];
    std::fs::write(
        dir.path().join("f32.json"),
        report("f32", &f32_levels).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("int8.json"),
        report("int8", &int8_levels).to_string(),
    )
    .unwrap();
    let out = tco(
        dir.path(),
        &["--csv", "t.csv", "--json", "t.json", "--html", "t.html"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("t.json")).unwrap()).unwrap();
    let options = r["options"].as_array().unwrap();
    assert_eq!(options.len(), 4, "2 precisions × 1 machine × 2 zones");
    let find = |precision: &str, zone: &str| {
        options
            .iter()
            .find(|o| o["capacity"]["precision"] == precision && o["zone"] == zone)
            .unwrap()
    };
    let cents = |v: &Value| format!("{:.2}", v.as_f64().unwrap());
    // f32: the objective p99 ≤ 100 ms holds up to c=8 (200 req/s, 0.06 J). Peak: 10M/day ×
    // 3 / 86400 = 347.2 req/s → 2 machines. Energy: 3.65e9 requests × 0.06 J = 60.83 kWh of
    // work; 17520 machine-hours less 5069.44 busy = 12450.56 idle h × 20 W = 249.01 kWh;
    // × PUE 1.5 = 464.77 kWh a year. Rent 2 × 8760 h × $0.10 = $1752, ops $1200:
    // $2952 a year, $8856 in 3 years, $14760 in 5; $0.8088 per million requests.
    let f = find("f32", "coal");
    assert_eq!(f["capacity"]["level"], "c=8");
    assert_eq!(f["years"][0]["machines"], 2);
    assert_eq!(cents(&f["years"][0]["kwh"]), "464.77");
    assert_eq!(cents(&f["horizons"][0]["total_usd"]), "8856.00");
    assert_eq!(cents(&f["horizons"][1]["total_usd"]), "14760.00");
    assert_eq!(cents(&f["horizons"][1]["hardware_usd"]), "8760.00");
    assert_eq!(cents(&f["horizons"][1]["ops_usd"]), "6000.00");
    assert_eq!(
        cents(&f["horizons"][1]["energy_usd"]),
        "0.00",
        "electricity is in the rent"
    );
    assert_eq!(
        format!("{:.4}", f["usd_per_million"].as_f64().unwrap()),
        "0.8088"
    );
    // CO2e, coal (900 g/kWh): 464.77 kWh × 0.9 = 418.29 kg + embodied 2 × 1000 kg / 4 years.
    assert_eq!(cents(&f["years"][0]["co2e_operational_kg"]), "418.29");
    assert_eq!(cents(&f["years"][0]["co2e_embodied_kg"]), "500.00");
    // int8: c=8 gives 400 req/s at 0.03 J → 1 machine. 30.42 kWh of work + (8760 − 2534.72) h
    // × 20 W = 124.51 kWh idle; × 1.5 = 232.38 kWh. $876 rent + $1200 ops = $2076 a year.
    let i = find("int8", "hydro");
    assert_eq!(i["years"][0]["machines"], 1);
    assert_eq!(cents(&i["years"][0]["kwh"]), "232.38");
    assert_eq!(cents(&i["horizons"][0]["total_usd"]), "6228.00");
    assert_eq!(cents(&i["horizons"][1]["total_usd"]), "10380.00");
    // Hydro (30 g/kWh): 6.97 kg a year + 250 kg embodied; 5 years: 1284.86 kg.
    assert_eq!(cents(&i["horizons"][1]["co2e_kg"]), "1284.86");
    // The winners, in the table's words.
    assert!(
        stdout.contains("cheapest over 5 years: minilm (int8) on vm in coal ($10380.00)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("lowest carbon over 5 years: minilm (int8) on vm in hydro (1285 kgCO2e)"),
        "{stdout}"
    );
    assert!(stdout.contains("| minilm | f32 | vm | coal |"), "{stdout}");
    // The CSV: a header and one row per option, the same figures.
    let csv = std::fs::read_to_string(dir.path().join("t.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 5, "{csv}");
    let col = |name: &str| rows[0].iter().position(|h| *h == name).unwrap();
    let int8_hydro = rows
        .iter()
        .find(|r| r[1] == "int8" && r[3] == "hydro")
        .unwrap();
    let total: f64 = int8_hydro[col("tco_5y_total_usd")].parse().unwrap();
    assert_eq!(format!("{total:.2}"), "10380.00");
    assert_eq!(int8_hydro[col("machines_year1")], "1");
    // The HTML: self-contained, three charts with data.
    let html = std::fs::read_to_string(dir.path().join("t.html")).unwrap();
    assert_eq!(html.matches("<svg class=\"ws-chart\"").count(), 3);
    assert!(
        !html.contains("<script") && !html.contains("<link") && !html.contains(" src="),
        "no script, no external assets"
    );
}

#[test]
fn tco_says_what_is_wrong_with_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let levels = [("c=1", 100.0, 150.0, 0.1)];
    std::fs::write(
        dir.path().join("f32.json"),
        report("f32", &levels).to_string(),
    )
    .unwrap();
    std::fs::write(dir.path().join("int8.json"), "{not json").unwrap();
    let out = tco(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("int8.json") && stderr.contains("not a `wattserve bench --json` report"),
        "{stderr}"
    );
    // Two machines: each report must say which it was measured on.
    let out = Command::new(env!("CARGO_BIN_EXE_wattserve"))
        .args(["tco", "--bench", "f32.json", "--requests-per-day", "1000"])
        .args([
            "--hardware",
            "a:usd_per_hour=1",
            "--hardware",
            "b:usd_per_hour=2",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("f32.json@NAME"));
    // A bad hardware option is a usage error naming the key.
    let out = Command::new(env!("CARGO_BIN_EXE_wattserve"))
        .args(["tco", "--bench", "f32.json", "--hardware", "a:watts=3"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key"));
    // No level meets a tight objective: said, not priced.
    std::fs::write(
        dir.path().join("int8.json"),
        report("int8", &levels).to_string(),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wattserve"))
        .args([
            "tco",
            "--bench",
            "f32.json",
            "--requests-per-day",
            "1000",
            "--slo",
            "p99=10ms",
        ])
        .args(["--hardware", "a:usd_per_hour=1"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("cannot meet p99 ≤ 10 ms on a: minilm (levels measured: c=1: 150 ms)"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tco_takes_the_traffic_from_a_running_servers_ledger() {
    if !common::minilm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let levels = [("c=1", 100.0, 20.0, 0.1), ("c=8", 200.0, 80.0, 0.06)];
    std::fs::write(
        dir.path().join("f32.json"),
        report("f32", &levels).to_string(),
    )
    .unwrap();
    let ledger = dir.path().join("usage.sqlite");
    let s = common::TestServer::start(move |c| {
        c.server.models = vec!["minilm".into()];
        c.usage.path = ledger;
    })
    .await;
    let client = reqwest::Client::new();
    for input in ["a", "b", "c"] {
        let r = client
            .post(s.url("/v1/embeddings"))
            .json(&json!({"model": "minilm", "input": input}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // A refused request is not traffic to serve.
    let r = client
        .post(s.url("/v1/embeddings"))
        .json(&json!({"model": "minilm", "input": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let url = s.url("");
    let dir_path = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_wattserve"))
            .args(["tco", "--bench", "f32.json", "--traffic-from", &url])
            .args(["--traffic-days", "1", "--json", "t.json"])
            .args(["--hardware", "vm:usd_per_hour=0.1"])
            .current_dir(dir_path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("minilm 3 requests/day (usage ledger)"),
        "{stdout}"
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("t.json")).unwrap()).unwrap();
    assert_eq!(r["traffic"][0]["per_day"], 3.0, "{r}");
    assert_eq!(r["traffic"][0]["source"], "usage ledger");
    assert_eq!(r["options"][0]["years"][0]["units"], 3.0 * 365.0);
    s.stop().await.unwrap();
}

//! The HTML reports in a real browser: a real `wattserve bench` run writes its page, `wattserve
//! tco` prices that run and writes its own; headless Chromium loads both from disk: every chart
//! has its data points, nothing is requested from anywhere, nothing logs an error, and a
//! screenshot of each is kept in target/browser-artifacts.

mod common;

use std::process::Command;

use serde_json::Value;

fn run(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wattserve"))
        .args(args)
        .current_dir(dir)
        .env("WATTSERVE_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn assert_clean(report: &Value, min_charts: usize) {
    assert_eq!(report["ok"], true, "{report}");
    for list in [
        "console_errors",
        "page_errors",
        "external_requests",
        "failed_requests",
    ] {
        assert!(
            report[list].as_array().unwrap().is_empty(),
            "{list}: {report}"
        );
    }
    let charts = report["charts"].as_array().unwrap();
    assert!(charts.len() >= min_charts, "{report}");
    assert!(
        charts.iter().all(|c| c["points"].as_u64().unwrap() > 0),
        "{report}"
    );
}

#[test]
fn bench_and_tco_pages_render_their_charts() {
    if !common::minilm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let models = common::models_dir();
    let models = models.to_str().unwrap();
    run(
        dir.path(),
        &[
            "bench",
            "--model",
            "minilm",
            "--concurrency",
            "1,2,4",
            "--requests",
            "8",
            "--warmup",
            "0",
            "--generate",
            "8",
            "--models-dir",
            models,
            "--json",
            "bench.json",
            "--html",
            "bench.html",
        ],
    );
    let html = std::fs::read_to_string(dir.path().join("bench.html")).unwrap();
    assert!(
        !html.contains("<script") && !html.contains(" src="),
        "self-contained"
    );
    run(
        dir.path(),
        &[
            "tco",
            "--bench",
            "bench.json",
            "--requests-per-day",
            "1000000",
            "--slo",
            "p99=5s",
            "--hardware",
            "here:usd_per_hour=0.05,idle_watts=10",
            "--zone",
            "FR,PL",
            "--html",
            "tco.html",
        ],
    );
    let page = |name: &str| format!("file://{}", dir.path().join(name).display());
    let Some(bench) = common::check_page(
        &page("bench.html"),
        &[],
        3,
        &["minilm", "Energy labels"],
        "bench-report",
    ) else {
        return;
    };
    assert_clean(&bench, 3);
    let ids: Vec<&str> = bench["charts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["throughput", "latency", "energy-per-request"],
        "{bench}"
    );
    // Three levels of one model: three points on the throughput line, six on the latency chart
    // (p50 and p99).
    assert_eq!(bench["charts"][0]["points"], 3, "{bench}");
    assert_eq!(bench["charts"][1]["points"], 6, "{bench}");
    let tco = common::check_page(
        &page("tco.html"),
        &[],
        3,
        &["Cheapest over 5 years", "Lowest carbon over 5 years"],
        "tco-report",
    )
    .unwrap();
    assert_clean(&tco, 3);
    // One model on one machine in two zones: its cost (the same in any zone) over two horizons,
    // 2 stacks of 3 parts; CO2e by zone: 2 bars; cost per million: 1 bar.
    let points: Vec<u64> = tco["charts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["points"].as_u64().unwrap())
        .collect();
    assert_eq!(points, [6, 2, 1], "{tco}");
}

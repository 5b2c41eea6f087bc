//! `wattserve tco`: the total cost of ownership of serving a model, from what `wattserve bench`
//! measured. For each model × precision × hardware × zone: the machines the traffic needs at its
//! peak under a latency objective, energy and CO2e per year, the cost per million units of work
//! and the N-year cost split into hardware, energy and operations; the cheapest and the
//! lowest-carbon option named. Written as a Markdown table, CSV, JSON and a self-contained HTML
//! page with charts.

pub mod html;
pub mod inputs;
pub mod model;
pub mod output;

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use inputs::{BenchSource, Hardware, Slo, Zone};
use model::{best_level, Candidate, Capacity, Economics, Priced, Traffic};

/// Options of `wattserve tco`.
#[derive(Debug, Clone, Args)]
pub struct TcoArgs {
    /// A `wattserve bench --json` report, `FILE` or `FILE@HARDWARE` (the hardware option it was
    /// measured on; needed when there are several). Repeatable.
    #[arg(long = "bench", required = true)]
    pub bench: Vec<BenchSource>,
    /// Embedding traffic: requests per day in the first year.
    #[arg(long)]
    pub requests_per_day: Option<f64>,
    /// Generation traffic: output tokens per day in the first year.
    #[arg(long)]
    pub tokens_per_day: Option<f64>,
    /// Take each model's traffic from a running server's usage ledger instead: its requests
    /// (embeddings) or output tokens (generation) per day over the last `--traffic-days`, read
    /// from `URL/v1/usage` (an admin key sees every tenant's). Models it did not serve fall back
    /// to --requests-per-day / --tokens-per-day.
    #[arg(long, value_name = "URL")]
    pub traffic_from: Option<String>,
    /// The API key for --traffic-from (or WATTSERVE_API_KEY).
    #[arg(long, env = "WATTSERVE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Days of usage --traffic-from averages over.
    #[arg(long, default_value_t = 7)]
    pub traffic_days: u32,
    /// The busiest rate over the mean rate (sizes the fleet for the peak).
    #[arg(long, default_value_t = 3.0)]
    pub peak_to_mean: f64,
    /// Traffic growth per year, as a fraction (0.2 = +20% a year).
    #[arg(long, default_value_t = 0.0)]
    pub growth: f64,
    /// The latency objective: request latency (embeddings) or time to first token (generation)
    /// at a percentile, e.g. p99=250ms, p95=0.5s.
    #[arg(long, default_value = "p99=500ms")]
    pub slo: Slo,
    /// A hardware option: `NAME:usd_per_hour=X` (rented; electricity in the price) or
    /// `NAME:price_usd=X` (bought), with optional `idle_watts`, `embodied_kgco2e`,
    /// `lifetime_years` (default 4). Repeatable.
    #[arg(long = "hardware", required = true)]
    pub hardware: Vec<Hardware>,
    /// Facility overhead (power usage effectiveness).
    #[arg(long, default_value_t = 1.0)]
    pub pue: f64,
    /// Electricity price, USD per kWh (paid apart for bought hardware).
    #[arg(long, default_value_t = 0.15)]
    pub usd_per_kwh: f64,
    /// Grid zones: codes of the built-in table, or `NAME=gCO2e_per_kWh`. Repeatable.
    #[arg(long = "zone", value_delimiter = ',', default_value = "WORLD")]
    pub zones: Vec<Zone>,
    /// Horizons, years.
    #[arg(long, value_delimiter = ',', default_value = "3,5")]
    pub years: Vec<u32>,
    /// Fixed operating cost per month (people, monitoring, network), USD.
    #[arg(long, default_value_t = 0.0)]
    pub ops_usd_per_month: f64,
    /// Also write the options as CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Also write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write a self-contained HTML report with charts.
    #[arg(long)]
    pub html: Option<PathBuf>,
}

/// Why `wattserve tco` cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum TcoError {
    /// A bench report cannot be read.
    #[error("{path}: {message}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The options do not fit together.
    #[error("{0}")]
    Usage(String),
    /// The server named by --traffic-from did not answer as expected.
    #[error("--traffic-from {url}: {message}")]
    Live {
        /// The server.
        url: String,
        /// What went wrong.
        message: String,
    },
}

/// Each model's traffic per day as a server's usage ledger saw it: `(requests, output tokens)`.
pub type LiveTraffic = std::collections::HashMap<String, (f64, f64)>;

/// Reads each model's mean traffic per day over the last `days` from `url`'s `/v1/usage`.
pub async fn live_traffic(
    url: &str,
    key: Option<&str>,
    days: u32,
) -> Result<LiveTraffic, TcoError> {
    let fail = |message: String| TcoError::Live {
        url: url.to_string(),
        message,
    };
    let days = days.max(1);
    let now = crate::governance::ledger::now_ms() / 1000;
    let from = now - i64::from(days) * 86_400;
    let mut req = reqwest::Client::new().get(format!(
        "{}/v1/usage?group_by=model&from={from}&to={}",
        url.trim_end_matches('/'),
        now + 1
    ));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.map_err(|e| fail(e.to_string()))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.map_err(|e| fail(e.to_string()))?;
    if !status.is_success() {
        return Err(fail(format!(
            "{status}: {}",
            body["error"]["message"].as_str().unwrap_or("no message")
        )));
    }
    let rows = body["data"]
        .as_array()
        .ok_or_else(|| fail(format!("no `data` in {body}")))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let model = r["model"].as_str()?.to_string();
            let requests =
                r["requests"].as_f64().unwrap_or(0.0) - r["errors"].as_f64().unwrap_or(0.0);
            let tokens = r["completion_tokens"].as_f64().unwrap_or(0.0);
            Some((
                model,
                (requests / f64::from(days), tokens / f64::from(days)),
            ))
        })
        .collect())
}

/// A model the objective cannot be met for on some hardware: no measured level is fast enough.
#[derive(Debug, Clone, Serialize)]
pub struct Unmet {
    /// The model.
    pub model: String,
    /// The hardware it was measured on.
    pub hardware: String,
    /// The levels measured and their latency at the objective's percentile.
    pub levels: Vec<(String, Option<f64>)>,
}

/// Everything `wattserve tco` computed, and the inputs it computed it from.
#[derive(Debug, Clone, Serialize)]
pub struct TcoReport {
    /// The objective.
    pub slo: String,
    /// Requests per day (embeddings), first year.
    pub requests_per_day: Option<f64>,
    /// Output tokens per day (generation), first year.
    pub tokens_per_day: Option<f64>,
    /// Peak over mean.
    pub peak_to_mean: f64,
    /// Growth per year.
    pub growth: f64,
    /// PUE.
    pub pue: f64,
    /// USD per kWh.
    pub usd_per_kwh: f64,
    /// USD per month.
    pub ops_usd_per_month: f64,
    /// The horizons.
    pub horizons: Vec<u32>,
    /// Every option priced, in input order.
    pub options: Vec<Priced>,
    /// Index in `options` of the lowest total cost over the longest horizon.
    pub cheapest: Option<usize>,
    /// Index in `options` of the lowest emissions over the longest horizon.
    pub lowest_carbon: Option<usize>,
    /// Models that cannot meet the objective on some hardware.
    pub unmet: Vec<Unmet>,
    /// Each model's traffic per day in the first year, and where it came from.
    pub traffic: Vec<ModelTraffic>,
}

/// The traffic a model was priced for.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelTraffic {
    /// The model.
    pub model: String,
    /// `requests` or `output tokens`.
    pub unit: &'static str,
    /// Units per day in the first year.
    pub per_day: f64,
    /// `usage ledger` (--traffic-from) or `given`.
    pub source: &'static str,
}

impl TcoReport {
    /// The longest horizon.
    pub fn longest(&self) -> u32 {
        self.horizons.iter().copied().max().unwrap_or(1)
    }
}

/// A short name for an option.
pub fn option_name(o: &Priced) -> String {
    format!(
        "{} ({}) on {} in {}",
        o.capacity.model, o.capacity.precision, o.capacity.hardware, o.zone
    )
}

fn check(args: &TcoArgs) -> Result<(), TcoError> {
    let positive = |name: &str, v: f64, min: f64| {
        if v.is_finite() && v >= min {
            Ok(())
        } else {
            Err(TcoError::Usage(format!(
                "--{name} must be ≥ {min}, got {v}"
            )))
        }
    };
    positive("peak-to-mean", args.peak_to_mean, 1.0)?;
    positive("growth", args.growth, -0.99)?;
    positive("pue", args.pue, 1.0)?;
    positive("usd-per-kwh", args.usd_per_kwh, 0.0)?;
    positive("ops-usd-per-month", args.ops_usd_per_month, 0.0)?;
    for (name, v) in [
        ("requests-per-day", args.requests_per_day),
        ("tokens-per-day", args.tokens_per_day),
    ] {
        if let Some(v) = v {
            positive(name, v, 0.0)?;
        }
    }
    if args.years.is_empty() || args.years.iter().any(|&y| y == 0 || y > 30) {
        return Err(TcoError::Usage("--years must be 1..30, e.g. 3,5".into()));
    }
    let mut names: Vec<&str> = args.hardware.iter().map(|h| h.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(TcoError::Usage(
            "two --hardware options have the same name".into(),
        ));
    }
    Ok(())
}

/// The hardware option a bench report was measured on.
fn hardware_of<'a>(src: &BenchSource, all: &'a [Hardware]) -> Result<&'a Hardware, TcoError> {
    match &src.hardware {
        Some(name) => all.iter().find(|h| &h.name == name).ok_or_else(|| {
            TcoError::Usage(format!(
                "{}@{name}: no --hardware option named `{name}` (have: {})",
                src.path.display(),
                all.iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }),
        None if all.len() == 1 => Ok(&all[0]),
        None => Err(TcoError::Usage(format!(
            "{}: say which --hardware it was measured on, as {}@NAME",
            src.path.display(),
            src.path.display()
        ))),
    }
}

/// The distinct items of `items`, in their first order.
fn unique<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// Computes the report (`live`: the traffic read by [`live_traffic`], when --traffic-from).
pub fn run(args: &TcoArgs, live: Option<&LiveTraffic>) -> Result<TcoReport, TcoError> {
    check(args)?;
    let traffic = |per_day: f64| Traffic {
        per_day,
        peak_to_mean: args.peak_to_mean,
        growth: args.growth,
    };
    let economics = Economics {
        pue: args.pue,
        usd_per_kwh: args.usd_per_kwh,
        ops_usd_per_month: args.ops_usd_per_month,
    };
    let mut options = Vec::new();
    let mut unmet = Vec::new();
    let mut traffic_used: Vec<(String, &'static str, f64, bool)> = Vec::new();
    for src in &args.bench {
        let hardware = hardware_of(src, &args.hardware)?;
        let file = inputs::read_bench(&src.path)?;
        let precision = |model: &str| {
            file.energy_labels
                .iter()
                .find(|l| l.model == model)
                .map_or_else(|| "-".to_string(), |l| l.precision.clone())
        };
        let mut capacities = Vec::new();
        // Embedding models: the OpenAI protocol's levels when the report has them.
        for model in unique(file.levels.iter().map(|l| l.model.as_str())) {
            let rows = || file.levels.iter().filter(move |l| l.model == model);
            let protocol = if rows().any(|l| l.protocol == "openai") {
                "openai"
            } else {
                rows().next().map_or("openai", |l| l.protocol.as_str())
            };
            let candidates = rows()
                .filter(|l| l.protocol == protocol && l.load.starts_with("c="))
                .map(|l| Candidate {
                    level: l.load.as_str(),
                    per_second: l.requests_per_s,
                    latency: Box::new(move |p| match p {
                        50 => Some(l.p50_ms),
                        90 => Some(l.p90_ms),
                        95 => l.p95_ms,
                        99 => Some(l.p99_ms),
                        _ => None,
                    }),
                    joules: l.joules_per_request.unwrap_or(0.0),
                    failed: l.errors.values().any(|&n| n > 0),
                });
            capacities.push((model, "requests", best_level(args.slo, candidates)));
        }
        let labels: Vec<(String, &inputs::GenerationLevel)> = file
            .generation
            .iter()
            .map(|g| (format!("{} streams", g.streams), g))
            .collect();
        for model in unique(file.generation.iter().map(|g| g.model.as_str())) {
            let candidates = labels
                .iter()
                .filter(|(_, g)| g.model == model)
                .map(|(label, g)| Candidate {
                    level: label.as_str(),
                    per_second: g.tokens_per_s,
                    latency: Box::new(move |p| match p {
                        50 => Some(g.ttft_p50_ms),
                        99 => Some(g.ttft_p99_ms),
                        _ => None,
                    }),
                    joules: g.joules_per_token.unwrap_or(0.0),
                    failed: g.errors > 0,
                });
            capacities.push((model, "output tokens", best_level(args.slo, candidates)));
        }
        for (model, unit, best) in capacities {
            let model::Chosen {
                level,
                per_second,
                latency_ms,
                joules: joules_per_unit,
            } = match best {
                Ok(b) => b,
                Err(levels) => {
                    unmet.push(Unmet {
                        model: model.to_string(),
                        hardware: hardware.name.clone(),
                        levels: levels
                            .into_iter()
                            .map(|(l, ms)| (l.to_string(), ms))
                            .collect(),
                    });
                    continue;
                }
            };
            let measured = live.and_then(|l| l.get(model)).map(|&(requests, tokens)| {
                if unit == "requests" {
                    requests
                } else {
                    tokens
                }
            });
            let per_day = measured
                .or(if unit == "requests" {
                    args.requests_per_day
                } else {
                    args.tokens_per_day
                })
                .ok_or_else(|| {
                    TcoError::Usage(format!(
                        "`{model}` in {} serves {unit}: give --{}",
                        src.path.display(),
                        if unit == "requests" {
                            "requests-per-day"
                        } else {
                            "tokens-per-day"
                        }
                    ))
                })?;
            let capacity = Capacity {
                model: model.to_string(),
                precision: precision(model),
                unit,
                level: level.to_string(),
                per_second,
                latency_ms,
                joules_per_unit,
                hardware: hardware.name.clone(),
            };
            traffic_used.push((model.to_string(), unit, per_day, measured.is_some()));
            for zone in &args.zones {
                options.push(model::price(
                    &capacity,
                    hardware,
                    zone,
                    traffic(per_day),
                    economics,
                    &args.years,
                ));
            }
        }
    }
    let mut horizons = args.years.clone();
    horizons.sort_unstable();
    horizons.dedup();
    let longest = horizons.last().copied().unwrap_or(1);
    let at_longest = |o: &Priced| o.horizon(longest).cloned();
    let pick = |key: &dyn Fn(&model::Horizon) -> f64| {
        options
            .iter()
            .enumerate()
            .filter_map(|(i, o)| at_longest(o).map(|h| (i, key(&h))))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    };
    Ok(TcoReport {
        slo: args.slo.to_string(),
        requests_per_day: args.requests_per_day,
        tokens_per_day: args.tokens_per_day,
        peak_to_mean: args.peak_to_mean,
        growth: args.growth,
        pue: args.pue,
        usd_per_kwh: args.usd_per_kwh,
        ops_usd_per_month: args.ops_usd_per_month,
        cheapest: pick(&|h| h.total_usd),
        lowest_carbon: pick(&|h| h.co2e_kg),
        horizons,
        options,
        unmet,
        traffic: {
            let mut seen: Vec<ModelTraffic> = Vec::new();
            for (model, unit, per_day, measured) in traffic_used {
                if !seen.iter().any(|t| t.model == model) {
                    seen.push(ModelTraffic {
                        model,
                        unit,
                        per_day,
                        source: if measured { "usage ledger" } else { "given" },
                    });
                }
            }
            seen
        },
    })
}

//! `GET /v1/stats`: the last minutes of the server as JSON, for the console page (and anyone
//! who wants numbers without a Prometheus). A task samples the server's own metrics (the text
//! `/metrics` serves) every few seconds and keeps the last quarter of an hour; the answer gives,
//! per model, requests per second, errors, p50/p99 latency and joules per request over a
//! window, the energy attributed to requests against the idle energy, and the same per sample
//! interval for charts. Being derived from `/metrics`, it always agrees with it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::Json;
use serde::Serialize;

use super::{ApiError, AppState};

/// How often the sampler reads the metrics.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How many samples are kept (15 minutes).
pub const KEEP: usize = 180;

/// Cumulative figures of one model at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelTotals {
    /// Requests answered.
    pub requests: f64,
    /// Of them, with a 4xx or 5xx status.
    pub errors: f64,
    /// Request duration histogram: cumulative counts per upper bound (seconds), all endpoints.
    pub buckets: BTreeMap<Bound, f64>,
    /// Joules attributed.
    pub joules: f64,
}

/// A histogram bound that orders (`+Inf` last).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound(pub f64);

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One line of the text format: the metric's name, its labels, its value.
struct Line<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

/// The server's cumulative figures at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Unix ms.
    pub t_ms: i64,
    /// Per model.
    pub models: BTreeMap<String, ModelTotals>,
    /// Joules measured while no batch was active, all devices.
    pub idle_joules: f64,
}

/// The labels of a metric line, and its value.
fn parse_line(line: &str) -> Option<Line<'_>> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match head.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let mut out = Vec::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (k, after) = rest.split_once("=\"")?;
        // The value ends at the first quote not escaped by a backslash.
        let mut v = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        v.push(match n {
                            'n' => '\n',
                            n => n,
                        });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => v.push(c),
            }
        }
        let end = end?;
        out.push((k.trim_start_matches(','), v));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(Line {
        name,
        labels: out,
        value,
    })
}

/// The figures of a `/metrics` text.
pub fn parse(text: &str, t_ms: i64) -> Snapshot {
    let mut s = Snapshot {
        t_ms,
        ..Default::default()
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(Line {
            name,
            labels,
            value,
        }) = parse_line(line)
        else {
            continue;
        };
        let label = |k: &str| {
            labels
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.as_str())
        };
        let model = || label("model").map(str::to_string);
        match name {
            crate::metrics::IDLE_ENERGY => s.idle_joules += value,
            n if n == crate::metrics::REQUESTS => {
                if let Some(m) = model() {
                    let e = s.models.entry(m).or_default();
                    e.requests += value;
                    if label("status").and_then(|v| v.parse::<u16>().ok()) >= Some(400) {
                        e.errors += value;
                    }
                }
            }
            n if n == crate::metrics::ENERGY => {
                if let Some(m) = model() {
                    s.models.entry(m).or_default().joules += value;
                }
            }
            n if n.strip_suffix("_bucket") == Some(crate::metrics::REQUEST_DURATION) => {
                let le = match label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => v.parse().unwrap_or(f64::NAN),
                    None => continue,
                };
                if let (Some(m), false) = (model(), le.is_nan()) {
                    *s.models
                        .entry(m)
                        .or_default()
                        .buckets
                        .entry(Bound(le))
                        .or_default() += value;
                }
            }
            _ => {}
        }
    }
    s
}

/// A quantile of the observations between two cumulative histograms (as PromQL's
/// `histogram_quantile` interpolates: linearly within the bucket), in the buckets' unit.
fn quantile(q: f64, from: &BTreeMap<Bound, f64>, to: &BTreeMap<Bound, f64>) -> Option<f64> {
    let deltas: Vec<(f64, f64)> = to
        .iter()
        .map(|(b, v)| (b.0, v - from.get(b).copied().unwrap_or(0.0)))
        .collect();
    let total = deltas.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in &deltas {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let within = count - prev.1;
            let f = if within > 0.0 {
                (rank - prev.1) / within
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * f);
        }
        prev = (le, count);
    }
    None
}

/// One model over an interval.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelRates {
    /// The model.
    pub model: String,
    /// Requests answered per second.
    pub requests_per_s: f64,
    /// Share of them with a 4xx or 5xx status.
    pub error_ratio: f64,
    /// Median latency, ms (`None` without requests).
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Joules attributed per request answered.
    pub joules_per_request: Option<f64>,
    /// Joules attributed in the interval.
    pub joules: f64,
}

/// `from` → `to` for one model.
fn rates(model: &str, from: &ModelTotals, to: &ModelTotals, seconds: f64) -> ModelRates {
    let requests = (to.requests - from.requests).max(0.0);
    let joules = (to.joules - from.joules).max(0.0);
    ModelRates {
        model: model.to_string(),
        requests_per_s: requests / seconds,
        error_ratio: if requests > 0.0 {
            (to.errors - from.errors).max(0.0) / requests
        } else {
            0.0
        },
        p50_ms: quantile(0.5, &from.buckets, &to.buckets).map(|s| s * 1e3),
        p99_ms: quantile(0.99, &from.buckets, &to.buckets).map(|s| s * 1e3),
        joules_per_request: (requests > 0.0).then(|| joules / requests),
        joules,
    }
}

/// One sample interval, for charts.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// The interval's end, Unix seconds.
    pub t: f64,
    /// Per model.
    pub models: BTreeMap<String, ModelRates>,
    /// Mean power attributed to requests, W.
    pub attributed_watts: f64,
    /// Mean idle power, W.
    pub idle_watts: f64,
}

/// Energy over the window.
#[derive(Debug, Clone, Serialize)]
pub struct WindowEnergy {
    /// Joules attributed to requests.
    pub attributed_joules: f64,
    /// Joules measured while idle.
    pub idle_joules: f64,
}

/// The answer of `GET /v1/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// `stats`.
    pub object: &'static str,
    /// Unix seconds.
    pub now: f64,
    /// Seconds between samples.
    pub interval_s: u64,
    /// The window the totals cover, seconds (shorter when the server is younger).
    pub window_s: f64,
    /// Per model over the window.
    pub models: Vec<ModelRates>,
    /// Energy over the window.
    pub energy: WindowEnergy,
    /// Per sample interval, oldest first.
    pub series: Vec<Point>,
}

/// What the window of samples says.
pub fn summarize(samples: &[Snapshot], now: &Snapshot, window_ms: i64) -> Stats {
    let start = samples
        .iter()
        .find(|s| s.t_ms >= now.t_ms - window_ms)
        .or(samples.last())
        .cloned()
        .unwrap_or_else(|| Snapshot {
            t_ms: now.t_ms,
            ..Default::default()
        });
    let seconds = ((now.t_ms - start.t_ms) as f64 / 1e3).max(1e-3);
    let empty = ModelTotals::default();
    let models = now
        .models
        .iter()
        .map(|(m, to)| rates(m, start.models.get(m).unwrap_or(&empty), to, seconds))
        .collect::<Vec<_>>();
    let mut chain: Vec<&Snapshot> = samples
        .iter()
        .filter(|s| s.t_ms >= start.t_ms && s.t_ms < now.t_ms)
        .collect();
    chain.push(now);
    let series = chain
        .windows(2)
        .map(|w| {
            let (a, b) = (w[0], w[1]);
            let dt = ((b.t_ms - a.t_ms) as f64 / 1e3).max(1e-3);
            let per: BTreeMap<String, ModelRates> = b
                .models
                .iter()
                .map(|(m, to)| {
                    (
                        m.clone(),
                        rates(m, a.models.get(m).unwrap_or(&empty), to, dt),
                    )
                })
                .collect();
            let attributed: f64 = per.values().map(|r| r.joules).sum();
            Point {
                t: b.t_ms as f64 / 1e3,
                attributed_watts: attributed / dt,
                idle_watts: (b.idle_joules - a.idle_joules).max(0.0) / dt,
                models: per,
            }
        })
        .collect();
    Stats {
        object: "stats",
        now: now.t_ms as f64 / 1e3,
        interval_s: SAMPLE_EVERY.as_secs(),
        window_s: seconds,
        energy: WindowEnergy {
            attributed_joules: models.iter().map(|r| r.joules).sum(),
            idle_joules: (now.idle_joules - start.idle_joules).max(0.0),
        },
        models,
        series,
    }
}

/// The samples kept, shared between the sampler and the handler.
#[derive(Clone, Default)]
pub struct History(Arc<Mutex<VecDeque<Snapshot>>>);

impl History {
    /// Takes a sample now.
    pub fn sample(&self) {
        let Some(s) = now() else { return };
        if let Ok(mut h) = self.0.lock() {
            if h.len() == KEEP {
                h.pop_front();
            }
            h.push_back(s);
        }
    }

    fn samples(&self) -> Vec<Snapshot> {
        self.0
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Samples every [`SAMPLE_EVERY`] until the history is dropped everywhere else.
    pub fn spawn_sampler(&self) {
        let weak = Arc::downgrade(&self.0);
        self.sample();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                History(inner).sample();
            }
        });
    }
}

/// The server's figures now (`None` when the metrics recorder is not ours).
fn now() -> Option<Snapshot> {
    let handle = crate::metrics::install()?;
    let mut text = handle.render();
    text.push_str(&crate::metrics::render_floats());
    Some(parse(&text, crate::governance::ledger::now_ms()))
}

/// `GET /v1/stats?window=SECONDS` (default 300, at most the 15 minutes kept).
pub async fn stats(
    State(state): State<AppState>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<Stats>, ApiError> {
    let window_s: u64 = match params.get("window") {
        None => 300,
        Some(w) => w
            .parse()
            .ok()
            .filter(|w| (1..=KEEP as u64 * SAMPLE_EVERY.as_secs()).contains(w))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_value",
                    format!(
                        "window must be 1..{} seconds, got `{w}`",
                        KEEP as u64 * SAMPLE_EVERY.as_secs()
                    ),
                )
                .with_param("window")
            })?,
    };
    let history = state.stats_history();
    let now = tokio::task::spawn_blocking(now)
        .await
        .map_err(|e| ApiError::internal(format!("stats: {e}")))?
        .ok_or_else(|| {
            ApiError::internal("metrics are disabled: another metrics recorder was installed first")
        })?;
    Ok(Json(summarize(
        &history.samples(),
        &now,
        window_s as i64 * 1000,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = r#"# HELP wattserve_requests_total x
wattserve_requests_total{model="m",endpoint="embeddings",status="200"} 10
wattserve_requests_total{model="m",endpoint="embeddings",status="429"} 2
wattserve_request_duration_seconds_bucket{model="m",endpoint="embeddings",le="0.01"} 4
wattserve_request_duration_seconds_bucket{model="m",endpoint="embeddings",le="0.1"} 12
wattserve_request_duration_seconds_bucket{model="m",endpoint="embeddings",le="+Inf"} 12
wattserve_energy_joules_total{model="m",source="estimate"} 1.5
wattserve_idle_energy_joules_total{device="cpu"} 3
"#;
    const T1: &str = r#"wattserve_requests_total{model="m",endpoint="embeddings",status="200"} 110
wattserve_requests_total{model="m",endpoint="embeddings",status="429"} 2
wattserve_requests_total{model="m\"q",endpoint="embeddings",status="200"} 1
wattserve_request_duration_seconds_bucket{model="m",endpoint="embeddings",le="0.01"} 54
wattserve_request_duration_seconds_bucket{model="m",endpoint="embeddings",le="0.1"} 112
wattserve_request_duration_seconds_bucket{model="m",endpoint="embeddings",le="+Inf"} 112
wattserve_energy_joules_total{model="m",source="estimate"} 11.5
wattserve_idle_energy_joules_total{device="cpu"} 8
"#;

    #[test]
    fn rates_and_quantiles_over_a_window() {
        let a = parse(T0, 0);
        let b = parse(T1, 10_000);
        assert_eq!(a.models["m"].requests, 12.0);
        assert_eq!(a.models["m"].errors, 2.0);
        assert!(b.models.contains_key("m\"q"), "escaped labels");
        let s = summarize(std::slice::from_ref(&a), &b, 300_000);
        let m = &s.models[0];
        assert_eq!(m.model, "m");
        assert_eq!(m.requests_per_s, 10.0); // 100 requests in 10 s
        assert_eq!(m.error_ratio, 0.0);
        assert_eq!(m.joules_per_request, Some(0.1)); // 10 J over 100 requests
                                                     // 50 of 100 at ≤ 10 ms, 50 in (10, 100] ms: the median is the first bucket's top, the
                                                     // 99th percentile 98% of the way through the second bucket.
        assert!((m.p50_ms.unwrap() - 10.0).abs() < 1e-9);
        assert!((m.p99_ms.unwrap() - (10.0 + 90.0 * 0.98)).abs() < 1e-9);
        assert_eq!(s.energy.attributed_joules, 10.0);
        assert_eq!(s.energy.idle_joules, 5.0);
        assert_eq!(s.series.len(), 1);
        assert!((s.series[0].attributed_watts - 1.0).abs() < 1e-12);
        assert!((s.series[0].idle_watts - 0.5).abs() < 1e-12);
        // Nothing answered: no latency, no joules per request.
        let idle = summarize(std::slice::from_ref(&b), &b, 300_000);
        assert_eq!(idle.models[0].p50_ms, None);
        assert_eq!(idle.models[0].joules_per_request, None);
    }
}

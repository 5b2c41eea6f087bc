//! Metric names, help texts and the Prometheus exporter.
//!
//! Everything goes through the `metrics` facade; the exporter is installed once per process
//! ([`install`]) and rendered by `GET /metrics`. Names carry their units, as Prometheus' naming
//! guide asks. When no recorder is installed (library use without a server) recording is a no-op.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Inputs admitted and waiting for compute, per model.
pub const QUEUE_DEPTH: &str = "wattserve_queue_depth";
/// Inputs per forward pass, per model.
pub const BATCH_SIZE: &str = "wattserve_batch_size";
/// Inference requests being served, from arrival until the last byte of the answer (a stream
/// until it ends), by endpoint: the signal to autoscale on (see deploy/README.md).
pub const REQUESTS_IN_FLIGHT: &str = "wattserve_requests_in_flight";
/// One series per served model, value 1, whose labels say how it is served (`precision`,
/// `device`, `task`, `energy_source`): what dashboards join on to show precision and device.
pub const MODEL_INFO: &str = "wattserve_model_info";
/// The endpoints counted in [`REQUESTS_IN_FLIGHT`].
pub const INFERENCE_ENDPOINTS: [&str; 7] = [
    "embeddings",
    "chat_completions",
    "completions",
    "v2_infer",
    "v2_generate",
    "v2_generate_stream",
    "grpc_infer",
];
/// Time from a request's arrival at the scheduler to the start of its first batch.
pub const QUEUE_DURATION: &str = "wattserve_queue_duration_seconds";
/// Time from request parsing to response, per model and endpoint.
pub const REQUEST_DURATION: &str = "wattserve_request_duration_seconds";
/// Requests answered, by model, endpoint and HTTP status.
pub const REQUESTS: &str = "wattserve_requests_total";
/// Tokens processed, by model and kind (`prompt`, `completion`).
pub const TOKENS: &str = "wattserve_tokens_total";
/// Generation: time from a request's admission to its first token, per model.
pub const TIME_TO_FIRST_TOKEN: &str = "wattserve_time_to_first_token_seconds";
/// Generation: mean time between a completion's tokens after the first, per model.
pub const TIME_PER_OUTPUT_TOKEN: &str = "wattserve_time_per_output_token_seconds";

/// Energy attributed to requests (all batches, failed ones included), by model and source.
pub const ENERGY: &str = "wattserve_energy_joules_total";
/// Energy measured while no batch was active, by device.
pub const IDLE_ENERGY: &str = "wattserve_idle_energy_joules_total";
/// CO2e attributed to requests, grams, by model.
pub const CO2E: &str = "wattserve_co2e_grams_total";
/// Cost attributed to requests, USD, by model.
pub const COST: &str = "wattserve_cost_usd_total";
/// Average device power over the latest closed ledger interval.
pub const DEVICE_POWER: &str = "wattserve_device_power_watts";
/// Requests whose energy could not be settled from the meter in time and was estimated, by
/// model.
pub const ENERGY_SETTLE_FALLBACKS: &str = "wattserve_energy_settle_fallbacks_total";
/// Failed readings of an energy source, by device.
pub const ENERGY_READ_FAILURES: &str = "wattserve_energy_read_failures_total";
/// Energy sources lost for good (a GPU that fell off the bus), after which the estimate meters
/// the device.
pub const ENERGY_SOURCE_LOST: &str = "wattserve_energy_source_lost_total";
/// Energy per successful request, joules.
pub const ENERGY_PER_REQUEST: &str = "wattserve_energy_per_request_joules";

/// Inference requests by tenant and project (the API key's name and the project it charged),
/// model and status class (`2xx`, `4xx`, `5xx`): labels bounded by the keys file, never by
/// requests.
pub const TENANT_REQUESTS: &str = "wattserve_tenant_requests_total";
/// Tokens by tenant, project, model and kind (`prompt`, `completion`).
pub const TENANT_TOKENS: &str = "wattserve_tenant_tokens_total";
/// Joules by tenant, project and model.
pub const TENANT_ENERGY: &str = "wattserve_tenant_energy_joules_total";
/// Grams of CO2e by tenant, project and model.
pub const TENANT_CO2E: &str = "wattserve_tenant_co2e_grams_total";
/// US dollars by tenant, project and model.
pub const TENANT_COST: &str = "wattserve_tenant_cost_usd_total";

/// Response-cache lookups that found their answer, by model and kind (`embedding`, `completion`).
pub const CACHE_HITS: &str = "wattserve_cache_hits_total";
/// Response-cache lookups that found nothing, by model and kind.
pub const CACHE_MISSES: &str = "wattserve_cache_misses_total";
/// Bytes the response cache holds.
pub const CACHE_BYTES: &str = "wattserve_cache_bytes";
/// Entries the response cache dropped to stay within its bound, by model.
pub const CACHE_EVICTIONS: &str = "wattserve_cache_evictions_total";
/// The Kolmogorov–Smirnov statistic between a model's reference inputs and its live window, by
/// model and feature.
pub const DRIFT_KS: &str = "wattserve_drift_ks";
/// Observations behind it, by model, feature and window (`reference`, `live`).
pub const DRIFT_WINDOW: &str = "wattserve_drift_window_size";
/// The statistic past which a feature has drifted (`drift.threshold`).
pub const DRIFT_THRESHOLD: &str = "wattserve_drift_threshold";
/// Requests refused because a budget was used up, by tenant.
pub const BUDGET_REFUSALS: &str = "wattserve_budget_refusals_total";

/// Fractional counters (joules, grams, dollars): the `metrics` facade counts in integers, so these
/// are kept here and rendered beside the exporter's output.
static FLOATS: Mutex<BTreeMap<(&'static str, String), f64>> = Mutex::new(BTreeMap::new());

const FLOAT_HELP: &[(&str, &str)] = &[
    (
        TENANT_ENERGY,
        "Energy of requests, joules, by tenant, project and model",
    ),
    (
        TENANT_CO2E,
        "CO2e of requests, grams, by tenant, project and model",
    ),
    (
        TENANT_COST,
        "Cost of requests, USD, by tenant, project and model",
    ),
    (
        ENERGY,
        "Energy attributed to requests, joules (failed batches included)",
    ),
    (
        IDLE_ENERGY,
        "Energy measured while no batch was active, joules",
    ),
    (
        CO2E,
        "CO2e attributed to requests, grams (SCI: energy x PUE x intensity + embodied share)",
    ),
    (
        COST,
        "Cost attributed to requests, USD (energy x PUE x price + hardware share)",
    ),
];

/// Adds `value` to the fractional counter `name{labels}`.
pub fn add_float(name: &'static str, labels: &[(&str, &str)], value: f64) {
    if !value.is_finite() || value <= 0.0 {
        return;
    }
    let rendered = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect::<Vec<_>>()
        .join(",");
    if let Ok(mut map) = FLOATS.lock() {
        *map.entry((name, rendered)).or_default() += value;
    }
}

/// The fractional counters in Prometheus text format.
pub fn render_floats() -> String {
    let Ok(map) = FLOATS.lock() else {
        return String::new();
    };
    let mut out = String::new();
    for (name, help) in FLOAT_HELP {
        let rows: Vec<_> = map.iter().filter(|((n, _), _)| n == name).collect();
        if rows.is_empty() {
            continue;
        }
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        for ((_, labels), v) in rows {
            out.push_str(&format!("{name}{{{labels}}} {v}\n"));
        }
    }
    out
}

/// Counts a request whose energy was estimated after the settle deadline.
pub fn record_settle_fallback(model: &str) {
    counter!(ENERGY_SETTLE_FALLBACKS, "model" => model.to_string()).increment(1);
}

/// Counts a failed reading of an energy source.
pub fn record_read_failure(device: &str) {
    counter!(ENERGY_READ_FAILURES, "device" => device.to_string()).increment(1);
}

/// Counts a device's energy source lost for good (`wattserve_energy_source_lost_total{device}`).
pub fn record_source_lost(device: &str) {
    counter!(ENERGY_SOURCE_LOST, "device" => device.to_string()).increment(1);
}

/// Sets `wattserve_device_power_watts{device}`.
pub fn set_device_power(device: &str, watts: f64) {
    gauge!(DEVICE_POWER, "device" => device.to_string()).set(watts);
}

/// Counts one response-cache lookup of `model`'s `kind` (`embedding`, `completion`).
pub fn record_cache_lookup(model: &str, kind: &'static str, hit: bool) {
    let name = if hit { CACHE_HITS } else { CACHE_MISSES };
    counter!(name, "model" => model.to_string(), "kind" => kind).increment(1);
}

/// Sets the response cache's size.
pub fn set_cache_bytes(bytes: usize) {
    gauge!(CACHE_BYTES).set(bytes as f64);
}

/// Counts entries of `model` the response cache dropped to stay within its bound.
pub fn record_cache_evictions(model: &str, n: u64) {
    counter!(CACHE_EVICTIONS, "model" => model.to_string()).increment(n);
}

/// Publishes a feature's drift statistic and its window sizes.
pub fn set_drift(model: &str, feature: &str, ks: f64, reference: usize, live: usize) {
    gauge!(DRIFT_KS, "model" => model.to_string(), "feature" => feature.to_string()).set(ks);
    for (window, n) in [("reference", reference), ("live", live)] {
        gauge!(DRIFT_WINDOW, "model" => model.to_string(), "feature" => feature.to_string(), "window" => window)
            .set(n as f64);
    }
}

/// Publishes the drift threshold.
pub fn set_drift_threshold(threshold: f64) {
    gauge!(DRIFT_THRESHOLD).set(threshold);
}

/// Observes one request's energy.
pub fn record_request_energy(model: &str, joules: f64) {
    histogram!(ENERGY_PER_REQUEST, "model" => model.to_string()).record(joules);
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process; later calls return the same handle).
/// `None` when another recorder was installed first, in which case `/metrics` says so.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(BATCH_SIZE.into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(ENERGY_PER_REQUEST.into()),
                        &[
                            0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 50.0, 100.0,
                        ],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_seconds".into()),
                        &[
                            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                            10.0, 30.0, 60.0,
                        ],
                    )
                });
            let handle = match builder.map(|b| b.install_recorder()) {
                Ok(Ok(h)) => Some(h),
                Ok(Err(e)) => {
                    tracing::warn!("metrics disabled: cannot install the Prometheus recorder: {e}");
                    None
                }
                Err(e) => {
                    tracing::warn!("metrics disabled: bad histogram buckets: {e}");
                    None
                }
            };
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(
        REQUESTS_IN_FLIGHT,
        Unit::Count,
        "Inference requests being served, until the last byte of the answer"
    );
    describe_counter!(
        TENANT_REQUESTS,
        Unit::Count,
        "Inference requests by tenant, project, model and status class"
    );
    describe_counter!(
        TENANT_TOKENS,
        Unit::Count,
        "Tokens by tenant, project, model and kind"
    );
    describe_gauge!(
        MODEL_INFO,
        "1 per served model; its labels say its precision, device, task and energy source"
    );
    // Every series exists from the start, so that an autoscaler reads 0 rather than nothing.
    for endpoint in INFERENCE_ENDPOINTS {
        gauge!(REQUESTS_IN_FLIGHT, "endpoint" => endpoint).set(0.0);
    }
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Inputs admitted and waiting for compute"
    );
    describe_histogram!(
        BATCH_SIZE,
        Unit::Count,
        "Inputs computed together in one forward pass"
    );
    describe_histogram!(
        QUEUE_DURATION,
        Unit::Seconds,
        "Time from a request's admission to the start of its first batch"
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from request parsing to response"
    );
    describe_counter!(
        REQUESTS,
        Unit::Count,
        "Requests answered, by model, endpoint and status"
    );
    describe_counter!(TOKENS, Unit::Count, "Tokens processed, by model and kind");
    describe_counter!(
        CACHE_HITS,
        Unit::Count,
        "Response-cache lookups answered from the cache, by model and kind"
    );
    describe_counter!(
        CACHE_MISSES,
        Unit::Count,
        "Response-cache lookups that had to compute, by model and kind"
    );
    describe_gauge!(CACHE_BYTES, Unit::Bytes, "Bytes held by the response cache");
    describe_gauge!(
        DRIFT_KS,
        "Kolmogorov-Smirnov statistic of a feature's live window against its reference, by model and feature"
    );
    describe_gauge!(
        DRIFT_WINDOW,
        "Observations in a drift feature's reference and live windows"
    );
    describe_gauge!(
        DRIFT_THRESHOLD,
        "KS statistic past which a feature has drifted (drift.threshold)"
    );
    describe_counter!(
        CACHE_EVICTIONS,
        Unit::Count,
        "Response-cache entries dropped to stay within cache.max_bytes, by model"
    );
    describe_counter!(
        ENERGY_SETTLE_FALLBACKS,
        Unit::Count,
        "Requests whose energy was estimated because the meter did not settle in time"
    );
    describe_counter!(
        ENERGY_READ_FAILURES,
        Unit::Count,
        "Failed readings of an energy source, by device"
    );
    describe_counter!(
        ENERGY_SOURCE_LOST,
        Unit::Count,
        "Energy sources lost for good (a GPU that fell off the bus), after which the estimate meters the device"
    );
    describe_histogram!(
        TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "Generation: time from admission to the first generated token"
    );
    describe_histogram!(
        TIME_PER_OUTPUT_TOKEN,
        Unit::Seconds,
        "Generation: mean time between a completion's tokens after the first"
    );
    describe_gauge!(
        DEVICE_POWER,
        "Average device power over the latest ledger interval, watts"
    );
    describe_histogram!(
        ENERGY_PER_REQUEST,
        "Energy attributed to each successful request, joules"
    );
}

/// Observes one finished completion's time to first token and, when it has more than one
/// token, its mean time per output token after the first.
pub fn record_generation(model: &str, ttft: Duration, tokens: usize, total: Duration) {
    // A request that only scored its prompt (`echo`, `max_tokens: 0`) has no first token.
    if tokens == 0 {
        return;
    }
    histogram!(TIME_TO_FIRST_TOKEN, "model" => model.to_string()).record(ttft.as_secs_f64());
    if tokens > 1 && total > ttft {
        let per = (total - ttft).as_secs_f64() / (tokens - 1) as f64;
        histogram!(TIME_PER_OUTPUT_TOKEN, "model" => model.to_string()).record(per);
    }
}

/// Publishes `wattserve_model_info` for a loaded model.
pub fn set_model_info(
    model: &str,
    precision: &str,
    device: &str,
    task: &'static str,
    source: &'static str,
) {
    gauge!(
        MODEL_INFO,
        "model" => model.to_string(),
        "precision" => precision.to_string(),
        "device" => device.to_string(),
        "task" => task,
        "energy_source" => source
    )
    .set(1.0);
}

/// What one finished inference request spent, by who spent it: the per-tenant counters.
pub struct TenantUsage<'a> {
    /// The key's name.
    pub tenant: &'a str,
    /// The project charged.
    pub project: &'a str,
    /// The model (`unknown` when none was served).
    pub model: &'a str,
    /// The status answered.
    pub status: u16,
    /// Tokens read.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Joules.
    pub joules: f64,
    /// Grams of CO2e.
    pub co2e_grams: f64,
    /// US dollars.
    pub cost_usd: f64,
}

/// Counts `u` in the per-tenant counters.
pub fn record_tenant_usage(u: &TenantUsage<'_>) {
    let class = match u.status {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    };
    let (t, p, m) = (
        u.tenant.to_string(),
        u.project.to_string(),
        u.model.to_string(),
    );
    counter!(TENANT_REQUESTS, "tenant" => t.clone(), "project" => p.clone(), "model" => m.clone(), "status_class" => class)
        .increment(1);
    for (kind, n) in [
        ("prompt", u.prompt_tokens),
        ("completion", u.completion_tokens),
    ] {
        if n > 0 {
            counter!(TENANT_TOKENS, "tenant" => t.clone(), "project" => p.clone(), "model" => m.clone(), "kind" => kind)
                .increment(n);
        }
    }
    let labels = [
        ("tenant", u.tenant),
        ("project", u.project),
        ("model", u.model),
    ];
    add_float(TENANT_ENERGY, &labels, u.joules);
    add_float(TENANT_CO2E, &labels, u.co2e_grams);
    add_float(TENANT_COST, &labels, u.cost_usd);
}

/// Counts a request refused for `tenant`'s used-up budget.
pub fn record_budget_refusal(tenant: &str) {
    counter!(BUDGET_REFUSALS, "tenant" => tenant.to_string()).increment(1);
}

/// One inference request in flight: counted in `wattserve_requests_in_flight{endpoint}` from
/// [`InFlight::enter`] until dropped.
#[derive(Debug)]
pub struct InFlight(&'static str);

impl InFlight {
    /// Counts a request of `endpoint` (one of [`INFERENCE_ENDPOINTS`]) as in flight.
    pub fn enter(endpoint: &'static str) -> Self {
        gauge!(REQUESTS_IN_FLIGHT, "endpoint" => endpoint).increment(1.0);
        Self(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!(REQUESTS_IN_FLIGHT, "endpoint" => self.0).decrement(1.0);
    }
}

/// Sets `wattserve_queue_depth{model}`.
pub fn set_queue_depth(model: &str, depth: usize) {
    gauge!(QUEUE_DEPTH, "model" => model.to_string()).set(depth as f64);
}

/// Observes one batch of `size` inputs.
pub fn record_batch_size(model: &str, size: usize) {
    histogram!(BATCH_SIZE, "model" => model.to_string()).record(size as f64);
}

/// Observes one request's queueing time.
pub fn record_queue_duration(model: &str, d: Duration) {
    histogram!(QUEUE_DURATION, "model" => model.to_string()).record(d.as_secs_f64());
}

/// Counts one answered request and observes its duration.
pub fn record_request(model: &str, endpoint: &'static str, status: u16, d: Duration) {
    counter!(REQUESTS, "model" => model.to_string(), "endpoint" => endpoint, "status" => status.to_string())
        .increment(1);
    histogram!(REQUEST_DURATION, "model" => model.to_string(), "endpoint" => endpoint)
        .record(d.as_secs_f64());
}

/// Counts processed tokens of a kind (`prompt`, `completion`).
pub fn record_tokens(model: &str, kind: &'static str, n: usize) {
    counter!(TOKENS, "model" => model.to_string(), "kind" => kind).increment(n as u64);
}

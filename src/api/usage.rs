//! What every response says a request cost: `usage.energy` and the metering headers, shared by
//! all endpoints so that they follow one contract.

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use tokio::sync::oneshot;

use super::ApiError;
use crate::governance::ledger::UsageRecord;
use crate::meter::class::Work;
use crate::meter::EnergyShare;
use crate::registry::ServedModel;

/// What a handler tells the usage ledger about a request it served: put in the response's
/// extensions (or sent through [`PendingUsage`] by a stream when it ends); the request-id
/// layer adds who asked, the status and the time, and records it.
#[derive(Debug, Clone, Default)]
pub struct UsageReport {
    /// The served model.
    pub model: String,
    /// Its precision.
    pub precision: &'static str,
    /// Tokens read.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// What it cost, when metered.
    pub energy: Option<UsageEnergy>,
    /// The largest batch it was part of.
    pub batch_size: u32,
    /// Inputs (or completions) answered from the response cache.
    pub cache_hits: u64,
}

impl UsageReport {
    /// The report of a request `model` served.
    pub fn new(
        model: &ServedModel,
        prompt_tokens: usize,
        completion_tokens: usize,
        energy: Option<&UsageEnergy>,
        batch_size: usize,
    ) -> Self {
        Self {
            model: model.name.clone(),
            precision: model.precision.as_str(),
            prompt_tokens: prompt_tokens as u64,
            completion_tokens: completion_tokens as u64,
            energy: energy.cloned(),
            batch_size: batch_size as u32,
            cache_hits: 0,
        }
    }

    /// The same, `hits` of whose inputs came from the response cache.
    pub fn with_cache_hits(mut self, hits: usize) -> Self {
        self.cache_hits = hits as u64;
        self
    }
}

/// A stream's report, sent when the stream ends (dropped unsent when its client went away).
/// Shared, because response extensions must be cloneable; the first [`PendingUsage::take`] gets
/// the receiver.
#[derive(Clone)]
pub struct PendingUsage(Arc<Mutex<Option<oneshot::Receiver<UsageReport>>>>);

impl PendingUsage {
    /// Waits on `rx` for the report.
    pub fn new(rx: oneshot::Receiver<UsageReport>) -> Self {
        Self(Arc::new(Mutex::new(Some(rx))))
    }

    /// The receiver, once.
    pub fn take(&self) -> Option<oneshot::Receiver<UsageReport>> {
        self.0.lock().ok().and_then(|mut r| r.take())
    }
}

/// Who asked and how it ended: what the ledger needs besides a [`UsageReport`].
#[derive(Debug, Clone)]
pub struct RequestFacts {
    /// Its `x-request-id`.
    pub request_id: String,
    /// The key's tenant.
    pub tenant: String,
    /// The project charged.
    pub project: String,
    /// The endpoint label.
    pub endpoint: &'static str,
    /// The status answered.
    pub status: u16,
    /// From arrival to the last byte, ms.
    pub duration_ms: f64,
}

/// The ledger record of a request (`report` is `None` for a request no handler served: a 401,
/// a malformed body), also counted in the per-tenant metrics.
pub fn usage_record(facts: RequestFacts, report: Option<UsageReport>) -> UsageRecord {
    let record = build_record(facts, report);
    crate::metrics::record_tenant_usage(&crate::metrics::TenantUsage {
        tenant: &record.tenant,
        project: &record.project,
        model: &record.model,
        status: record.status,
        prompt_tokens: record.prompt_tokens,
        completion_tokens: record.completion_tokens,
        joules: record.joules,
        co2e_grams: record.co2e_grams,
        cost_usd: record.cost_usd,
    });
    record
}

fn build_record(facts: RequestFacts, report: Option<UsageReport>) -> UsageRecord {
    let r = report.unwrap_or_else(|| UsageReport {
        model: "unknown".into(),
        precision: "-",
        ..Default::default()
    });
    let e = r.energy.as_ref();
    UsageRecord {
        ts_ms: crate::governance::ledger::now_ms(),
        request_id: facts.request_id,
        tenant: facts.tenant,
        project: facts.project,
        model: r.model,
        precision: r.precision.to_string(),
        endpoint: facts.endpoint.to_string(),
        status: facts.status,
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        joules: e.map_or(0.0, |e| e.joules),
        energy_source: e.map_or("none", |e| e.source).to_string(),
        co2e_grams: e.map_or(0.0, |e| e.co2e_grams),
        cost_usd: e.map_or(0.0, |e| e.cost_usd),
        cost_energy_usd: e.map_or(0.0, |e| e.cost_energy_usd),
        cost_hardware_usd: e.map_or(0.0, |e| e.cost_hardware_usd),
        duration_ms: facts.duration_ms,
        batch_size: r.batch_size,
        cache_hits: r.cache_hits,
    }
}

/// `usage.energy`: the same numbers as the metering headers.
#[derive(Debug, Clone, Serialize)]
pub struct UsageEnergy {
    /// Joules attributed to this request.
    pub joules: f64,
    /// How they were measured: `nvml-counter`, `nvml-power`, `rapl` or `estimate`.
    pub source: &'static str,
    /// Average device power over the batches that served it.
    pub avg_watts: f64,
    /// Grams of CO2e (SCI).
    pub co2e_grams: f64,
    /// US dollars: `cost_energy_usd + cost_hardware_usd`.
    pub cost_usd: f64,
    /// The part of `cost_usd` paid for electricity (kept in the usage ledger, not in responses).
    #[serde(skip)]
    pub cost_energy_usd: f64,
    /// The part of `cost_usd` paid for the device's time (ledger only, as above).
    #[serde(skip)]
    pub cost_hardware_usd: f64,
    /// Grid intensity used, gCO2e/kWh.
    pub carbon_intensity_g_per_kwh: f64,
    /// Zone the intensity came from (`custom` when set explicitly).
    pub zone: String,
    /// The energy label, A (best) to E: joules per 1,000 input tokens (embeddings) or output
    /// tokens (generation) against the thresholds of docs/energy.md.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<&'static str>,
    /// The same from grams of CO2e: tells grid zones apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carbon_class: Option<&'static str>,
}

/// Waits for the request's shares of its batches to be final and prices them; `None` when the
/// model is not metered. Also counts the joules in the per-request energy metric.
pub async fn settle_energy(
    model: &ServedModel,
    shares: &[EnergyShare],
    work: Work,
) -> Result<Option<UsageEnergy>, ApiError> {
    let Some(meter) = &model.meter else {
        return Ok(None);
    };
    let settled = meter.settle(shares).await;
    let a = settled.attribution;
    let source = if settled.estimated > 0 {
        crate::metrics::record_settle_fallback(&model.name);
        tracing::warn!(
            model = %model.name,
            batches = settled.estimated,
            "energy: the meter did not settle in time (energy.settle_timeout_ms); estimated"
        );
        "estimate"
    } else {
        meter.method()
    };
    let p = meter.pricing();
    crate::metrics::record_request_energy(&model.name, a.joules);
    model.add_energy(a.joules, work);
    let co2e_grams = p.co2e_grams(a.joules, a.device_seconds);
    Ok(Some(UsageEnergy {
        joules: a.joules,
        source,
        avg_watts: a.avg_watts,
        co2e_grams,
        cost_usd: p.cost_usd(a.joules, a.device_seconds),
        cost_energy_usd: p.energy_cost_usd(a.joules),
        cost_hardware_usd: p.hardware_cost_usd(a.device_seconds),
        carbon_intensity_g_per_kwh: p.intensity_g_per_kwh,
        zone: p.zone.clone(),
        class: p.classes.energy_class(work, a.joules),
        carbon_class: p.classes.carbon_class(work, co2e_grams),
    }))
}

/// The energy of answering from the response cache: the lookup's `seconds` on one core at
/// `watts` (the estimate's watts per busy core), labelled `estimate` whatever the model's meter
/// (a lookup is below any counter's resolution), priced like any request, and counted in the
/// model's energy, CO2e and cost counters so that the headers still add up to them. `None` when
/// the model is not metered.
pub fn lookup_energy(
    model: &ServedModel,
    seconds: f64,
    watts: f64,
    work: Work,
) -> Option<UsageEnergy> {
    let meter = model.meter.as_ref()?;
    let p = meter.pricing();
    let joules = seconds * watts;
    let co2e_grams = p.co2e_grams(joules, seconds);
    let cost_usd = p.cost_usd(joules, seconds);
    use crate::metrics as m;
    m::add_float(
        m::ENERGY,
        &[("model", &model.name), ("source", "estimate")],
        joules,
    );
    m::add_float(m::CO2E, &[("model", &model.name)], co2e_grams);
    m::add_float(m::COST, &[("model", &model.name)], cost_usd);
    model.add_energy(joules, work);
    Some(UsageEnergy {
        joules,
        source: "estimate",
        avg_watts: watts,
        co2e_grams,
        cost_usd,
        cost_energy_usd: p.energy_cost_usd(joules),
        cost_hardware_usd: p.hardware_cost_usd(seconds),
        carbon_intensity_g_per_kwh: p.intensity_g_per_kwh,
        zone: p.zone.clone(),
        class: p.classes.energy_class(work, joules),
        carbon_class: p.classes.carbon_class(work, co2e_grams),
    })
}

/// A request partly computed and partly answered from the cache: the computed part's energy
/// plus the lookup's, classed over the whole request's `work`.
pub fn with_lookup(
    model: &ServedModel,
    computed: UsageEnergy,
    lookup: &UsageEnergy,
    work: Work,
) -> UsageEnergy {
    let joules = computed.joules + lookup.joules;
    let co2e_grams = computed.co2e_grams + lookup.co2e_grams;
    let classes = model.meter.as_ref().map(|m| &m.pricing().classes);
    UsageEnergy {
        joules,
        co2e_grams,
        cost_usd: computed.cost_usd + lookup.cost_usd,
        cost_energy_usd: computed.cost_energy_usd + lookup.cost_energy_usd,
        cost_hardware_usd: computed.cost_hardware_usd + lookup.cost_hardware_usd,
        class: classes.and_then(|c| c.energy_class(work, joules)),
        carbon_class: classes.and_then(|c| c.carbon_class(work, co2e_grams)),
        ..computed
    }
}

/// Sets header `name` to `value` (skipped if the value is not valid header text).
pub fn put_header(h: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

/// The names of the metering headers [`set_energy_headers`] writes (gRPC sends them as trailing
/// metadata).
pub const ENERGY_HEADERS: [&str; 9] = [
    "x-energy-joules",
    "x-energy-class",
    "x-carbon-class",
    "x-energy-source",
    "x-power-watts",
    "x-co2e-grams",
    "x-carbon-intensity",
    "x-carbon-zone",
    "x-cost-usd",
];

/// The metering contract's headers. `{}` prints an f64 as the shortest text that parses back to
/// the same number, so summing headers reproduces the metric totals up to addition order.
pub fn set_energy_headers(h: &mut HeaderMap, e: &UsageEnergy) {
    let mut put = |name: &'static str, value: String| put_header(h, name, value);
    put("x-energy-joules", format!("{}", e.joules));
    put("x-energy-source", e.source.to_string());
    put("x-power-watts", format!("{:.3}", e.avg_watts));
    put("x-co2e-grams", format!("{}", e.co2e_grams));
    put(
        "x-carbon-intensity",
        format!("{}", e.carbon_intensity_g_per_kwh),
    );
    put("x-carbon-zone", e.zone.clone());
    put("x-cost-usd", format!("{}", e.cost_usd));
    if let Some(c) = e.class {
        put("x-energy-class", c.to_string());
    }
    if let Some(c) = e.carbon_class {
        put("x-carbon-class", c.to_string());
    }
}

//! What every response says a request cost: `usage.energy` and the metering headers, shared by
//! all endpoints so that they follow one contract.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

use super::ApiError;
use crate::meter::EnergyShare;
use crate::registry::ServedModel;

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
    /// US dollars.
    pub cost_usd: f64,
    /// Grid intensity used, gCO2e/kWh.
    pub carbon_intensity_g_per_kwh: f64,
    /// Zone the intensity came from (`custom` when set explicitly).
    pub zone: String,
}

/// Waits for the request's shares of its batches to be final and prices them; `None` when the
/// model is not metered. Also counts the joules in the per-request energy metric.
pub async fn settle_energy(
    model: &ServedModel,
    shares: &[EnergyShare],
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
    Ok(Some(UsageEnergy {
        joules: a.joules,
        source,
        avg_watts: a.avg_watts,
        co2e_grams: p.co2e_grams(a.joules, a.device_seconds),
        cost_usd: p.cost_usd(a.joules, a.device_seconds),
        carbon_intensity_g_per_kwh: p.intensity_g_per_kwh,
        zone: p.zone.clone(),
    }))
}

/// Sets header `name` to `value` (skipped if the value is not valid header text).
pub fn put_header(h: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

/// The names of the metering headers [`set_energy_headers`] writes (gRPC sends them as trailing
/// metadata).
pub const ENERGY_HEADERS: [&str; 7] = [
    "x-energy-joules",
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
}

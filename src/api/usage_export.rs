//! `GET /v1/usage/export?format=focus`: the ledger as a FinOps FOCUS 1.2 cost and usage
//! dataset (CSV), one row per tenant × project × model × UTC hour, so that FinOps tools load
//! wattserve beside their cloud bills. Scoped like `/v1/usage` (a key sees its own tenant; an
//! admin key every tenant).
//!
//! Columns: the 21 columns FOCUS 1.2 makes mandatory, then the conditional ones that apply to a
//! self-hosted service (consumed quantity and unit, resource, sub account, tags), then custom
//! columns with the `x_` prefix the specification reserves for them (energy, CO2e, source).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::{ApiError, AppState};
use crate::governance::budgets::{period_end, period_start, rfc3339, Period};
use crate::governance::ledger::now_ms;
use crate::governance::sqlite_store::HourlyCharge;
use crate::governance::Grant;

/// The FOCUS version the export follows.
pub const FOCUS_VERSION: &str = "1.2";

/// The columns, in order.
pub const COLUMNS: [&str; 41] = [
    // FOCUS 1.2, mandatory.
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ServiceCategory",
    "ServiceName",
    // FOCUS 1.2, conditional or recommended, applicable here.
    "ChargeFrequency",
    "CommitmentDiscountStatus",
    "ConsumedQuantity",
    "ConsumedUnit",
    "InvoiceId",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceSubcategory",
    "SubAccountId",
    "SubAccountName",
    "Tags",
    // Custom (x_ prefix).
    "x_Project",
    "x_Precision",
    "x_EnergyKWh",
    "x_CO2eGrams",
    "x_EnergySource",
    "x_Requests",
    "x_EnergyCost",
    "x_HardwareCost",
];

/// The name the provider columns carry: the operator runs the service.
const PROVIDER: &str = "wattserve (self-hosted)";

/// A CSV field: quoted when it holds a comma, a quote or a line break (quotes doubled).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A FOCUS Decimal: `{}` (the shortest text that parses back to the number, never an exponent)
/// with a fractional part, so that a whole number does not read as an integer.
fn decimal(x: f64) -> String {
    let s = format!("{x}");
    if s.contains(['.', 'e', 'N', 'i']) {
        s
    } else {
        format!("{s}.0")
    }
}

/// The CSV line of one hourly charge.
fn line(c: &HourlyCharge) -> String {
    let hour_end = c.hour_ms + 3_600_000;
    let month = period_start(Period::Month, c.hour_ms);
    let kwh = c.joules / 3.6e6;
    // Provider-defined tag keys carry the provider's prefix (FOCUS 1.2, Tags).
    let tags = serde_json::json!({
        "wattserve/tenant": c.tenant,
        "wattserve/project": c.project,
        "wattserve/model": c.model,
        "wattserve/precision": c.precision,
        "wattserve/kwh": kwh,
        "wattserve/gco2e": c.co2e_grams,
        "wattserve/energy_source": c.energy_source,
    })
    .to_string();
    let cost = decimal(c.cost_usd);
    let values: [String; 41] = [
        cost.clone(),
        "wattserve".into(),
        "wattserve".into(),
        "USD".into(),
        rfc3339(period_end(Period::Month, month)),
        rfc3339(month),
        "Usage".into(),
        String::new(),
        format!(
            "Inference with {} ({}) for {}/{}",
            c.model, c.precision, c.tenant, c.project
        ),
        rfc3339(hour_end),
        rfc3339(c.hour_ms),
        cost.clone(),
        cost.clone(),
        PROVIDER.into(),
        cost,
        decimal(c.requests as f64),
        "Requests".into(),
        PROVIDER.into(),
        PROVIDER.into(),
        "AI and Machine Learning".into(),
        "wattserve inference".into(),
        "Usage-Based".into(),
        // No commitment discounts, no invoices: null.
        String::new(),
        decimal(c.tokens as f64),
        "Tokens".into(),
        String::new(),
        format!("wattserve/models/{}", c.model),
        c.model.clone(),
        "Model".into(),
        "AI Platforms".into(),
        c.tenant.clone(),
        c.tenant.clone(),
        tags,
        c.project.clone(),
        c.precision.clone(),
        decimal(kwh),
        decimal(c.co2e_grams),
        c.energy_source.clone(),
        c.requests.to_string(),
        decimal(c.cost_energy_usd),
        decimal(c.cost_hardware_usd),
    ];
    values
        .iter()
        .map(|v| field(v))
        .collect::<Vec<_>>()
        .join(",")
}

/// The CSV document of `charges`, header first.
pub fn focus_csv(charges: &[HourlyCharge]) -> String {
    let mut out = COLUMNS.join(",");
    out.push('\n');
    for c in charges {
        out.push_str(&line(c));
        out.push('\n');
    }
    out
}

/// `GET /v1/usage/export?format=focus&from=&to=`.
pub async fn export(
    State(state): State<AppState>,
    grant: Option<Extension<Grant>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    match params.get("format").map(String::as_str) {
        Some("focus") => {}
        other => {
            return ApiError::bad_request(
                "invalid_value",
                format!(
                    "format must be `focus` (FinOps FOCUS {FOCUS_VERSION} CSV), got {}",
                    other.map_or("nothing".to_string(), |f| format!("`{f}`"))
                ),
            )
            .with_param("format")
            .into_response()
        }
    }
    let Some(backend) = state.usage().cloned() else {
        return ApiError::bad_request(
            "usage_disabled",
            "The usage ledger is off on this server (usage.enabled = false)",
        )
        .into_response();
    };
    let query = match super::usage_query::parse_query(&params, now_ms()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let tenant = super::usage_query::scope(&state, grant.map(|Extension(g)| g), &params);
    let (from, to) = (query.from_ms, query.to_ms);
    let result = tokio::task::spawn_blocking(move || {
        backend.ledger.flush()?;
        backend.reader.hourly_charges(from, to, tenant.as_deref())
    })
    .await;
    match result {
        Ok(Ok(charges)) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"wattserve-focus.csv\"",
                ),
            ],
            focus_csv(&charges),
        )
            .into_response(),
        Ok(Err(e)) => ApiError::internal(e.to_string()).into_response(),
        Err(e) => ApiError::internal(format!("usage export failed: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_the_header_and_escape_their_fields() {
        let c = HourlyCharge {
            hour_ms: 1_767_229_200_000, // 2026-01-01T01:00:00Z
            tenant: "team-a".into(),
            project: "chat".into(),
            model: "minilm".into(),
            precision: "int8".into(),
            energy_source: "estimate".into(),
            requests: 3,
            tokens: 40,
            joules: 7.2e6,
            co2e_grams: 0.5,
            cost_usd: 0.25,
            cost_energy_usd: 0.2,
            cost_hardware_usd: 0.05,
        };
        let csv = focus_csv(&[c]);
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(header, COLUMNS);
        let row = lines.next().unwrap();
        // The tags are JSON in one quoted field.
        assert!(
            row.contains("\"{\"\"wattserve/energy_source\"\":\"\"estimate\"\""),
            "{row}"
        );
        let col = |name: &str| {
            let i = COLUMNS.iter().position(|c| *c == name).unwrap();
            // No field before Tags holds a comma, so the first fields split plainly.
            row.split(',').nth(i).unwrap().to_string()
        };
        assert_eq!(col("BilledCost"), "0.25");
        assert_eq!(col("ChargePeriodStart"), "2026-01-01T01:00:00Z");
        assert_eq!(col("ChargePeriodEnd"), "2026-01-01T02:00:00Z");
        assert_eq!(col("BillingPeriodStart"), "2026-01-01T00:00:00Z");
        assert_eq!(col("BillingPeriodEnd"), "2026-02-01T00:00:00Z");
        assert_eq!(col("ConsumedQuantity"), "40.0");
        assert_eq!(col("PricingQuantity"), "3.0");
        assert_eq!(col("ServiceSubcategory"), "AI Platforms");
        assert_eq!(
            (col("InvoiceId"), col("CommitmentDiscountStatus")),
            ("".into(), "".into())
        );
        assert!(
            row.ends_with(",chat,int8,2.0,0.5,estimate,3,0.2,0.05"),
            "{row}"
        );
        assert_eq!(
            (decimal(0.0), decimal(1e-7), decimal(2.5)),
            ("0.0".into(), "0.0000001".into(), "2.5".into())
        );
        assert_eq!(field("a\"b"), "\"a\"\"b\"");
    }
}

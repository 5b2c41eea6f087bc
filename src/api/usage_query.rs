//! `GET /v1/usage`: what was spent, from the usage ledger, grouped as asked and scoped to the
//! caller's tenant (an admin key: every tenant, or the one named by `tenant=`; without API keys,
//! everything).
//!
//! `from` and `to` are Unix seconds or UTC dates and times (`2026-12-01`, `2026-12-01T13:00:00Z`);
//! the default is the last 24 hours. `group_by` is a comma-separated list of `tenant`, `project`,
//! `model`, `precision`, `endpoint`, `day`, `hour`. Records written in the last flush interval are
//! flushed first, so that a client reads its own requests.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{ApiError, AppState};
use crate::governance::budgets::days_from_civil;
use crate::governance::ledger::{now_ms, Dimension, UsageQuery, UsageTotals};
use crate::governance::Grant;

/// Joules in a kWh.
const JOULES_PER_KWH: f64 = 3.6e6;

/// The answer.
#[derive(Debug, Serialize)]
struct UsageResponse {
    object: &'static str,
    /// The range, Unix seconds.
    from: i64,
    to: i64,
    group_by: Vec<&'static str>,
    /// Only this tenant's usage (when API keys are on).
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    data: Vec<Map<String, Value>>,
}

fn bad(param: &str, message: String) -> ApiError {
    ApiError::bad_request("invalid_value", message).with_param(param.to_string())
}

/// A time given as Unix seconds, `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ` (UTC), in ms.
fn parse_time(text: &str) -> Option<i64> {
    if let Ok(secs) = text.parse::<i64>() {
        return secs.checked_mul(1000);
    }
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z')?)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    if let Some(t) = time {
        let mut hms = t.splitn(3, ':').map(|p| p.parse::<i64>().ok());
        let (h, mi, s) = (
            hms.next()??,
            hms.next()??,
            hms.next().flatten().unwrap_or(0),
        );
        if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..61).contains(&s) {
            return None;
        }
        secs += h * 3600 + mi * 60 + s;
    }
    Some(secs * 1000)
}

/// The query string as a [`UsageQuery`] (tenant scoping added by the handler).
pub fn parse_query(params: &HashMap<String, String>, now: i64) -> Result<UsageQuery, ApiError> {
    let time = |name: &str, default: i64| {
        match params.get(name) {
        None => Ok(default),
        Some(t) => parse_time(t).ok_or_else(|| {
            bad(
                name,
                format!("`{name}` must be Unix seconds or a UTC date (2026-12-01 or 2026-12-01T13:00:00Z), got `{t}`"),
            )
        }),
    }
    };
    let to_ms = time("to", now)?;
    let from_ms = time("from", to_ms - 86_400_000)?;
    if from_ms >= to_ms {
        return Err(bad("from", "`from` must be before `to`".into()));
    }
    let mut group_by = Vec::new();
    for name in params
        .get("group_by")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        let d = Dimension::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Dimension::ALL.iter().map(|d| d.name()).collect();
            bad(
                "group_by",
                format!("cannot group by `{name}`; use any of {}", known.join(", ")),
            )
        })?;
        if !group_by.contains(&d) {
            group_by.push(d);
        }
    }
    Ok(UsageQuery {
        from_ms,
        to_ms,
        group_by,
        tenant: None,
        project: None,
    })
}

/// One group of the answer: its dimensions, totals and the derived figures.
fn row(group_by: &[Dimension], t: &UsageTotals) -> Map<String, Value> {
    let mut m = Map::new();
    for (d, v) in group_by.iter().zip(&t.key) {
        m.insert(d.name().into(), Value::from(v.clone()));
    }
    let tokens = t.prompt_tokens + t.completion_tokens;
    m.insert("requests".into(), t.requests.into());
    m.insert("errors".into(), t.errors.into());
    m.insert("prompt_tokens".into(), t.prompt_tokens.into());
    m.insert("completion_tokens".into(), t.completion_tokens.into());
    m.insert("joules".into(), t.joules.into());
    m.insert("kwh".into(), (t.joules / JOULES_PER_KWH).into());
    m.insert("co2e_grams".into(), t.co2e_grams.into());
    m.insert("cost_usd".into(), t.cost_usd.into());
    m.insert("cost_energy_usd".into(), t.cost_energy_usd.into());
    m.insert("cost_hardware_usd".into(), t.cost_hardware_usd.into());
    m.insert("cache_hits".into(), t.cache_hits.into());
    let per = |n: u64, scale: f64| {
        if n == 0 {
            Value::Null
        } else {
            Value::from(t.joules / n as f64 * scale)
        }
    };
    m.insert("mean_joules_per_request".into(), per(t.requests, 1.0));
    m.insert("joules_per_1k_tokens".into(), per(tokens, 1000.0));
    m
}

/// The tenant a usage read is limited to: with keys, the key's own; an admin key sees all, or the
/// one it names in `tenant=`; without keys, all.
pub fn scope(
    state: &AppState,
    grant: Option<Grant>,
    params: &HashMap<String, String>,
) -> Option<String> {
    match (state.auth().enabled(), grant) {
        (true, Some(g)) if g.admin => params.get("tenant").cloned(),
        (true, Some(g)) => Some(g.tenant.0),
        (true, None) => Some("-".into()),
        (false, _) => None,
    }
}

/// `GET /v1/usage`.
pub async fn usage(
    State(state): State<AppState>,
    grant: Option<Extension<Grant>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(backend) = state.usage().cloned() else {
        return ApiError::bad_request(
            "usage_disabled",
            "The usage ledger is off on this server (usage.enabled = false)",
        )
        .into_response();
    };
    let mut query = match parse_query(&params, now_ms()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    query.tenant = scope(&state, grant.map(|Extension(g)| g), &params);
    let q = query.clone();
    let result = tokio::task::spawn_blocking(move || {
        backend.ledger.flush()?;
        backend.reader.totals(&q)
    })
    .await;
    let totals = match result {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return ApiError::internal(e.to_string()).into_response(),
        Err(e) => return ApiError::internal(format!("usage query failed: {e}")).into_response(),
    };
    Json(UsageResponse {
        object: "usage",
        from: query.from_ms / 1000,
        to: query.to_ms / 1000,
        group_by: query.group_by.iter().map(|d| d.name()).collect(),
        tenant: query.tenant.clone(),
        data: totals.iter().map(|t| row(&query.group_by, t)).collect(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_unix_seconds_or_utc_dates() {
        assert_eq!(parse_time("0"), Some(0));
        assert_eq!(parse_time("1767225600"), Some(1_767_225_600_000));
        assert_eq!(parse_time("2026-01-01"), Some(1_767_225_600_000));
        assert_eq!(parse_time("2026-01-01T01:02:03Z"), Some(1_767_229_323_000));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2000-03-01"), Some(951_868_800_000));
        for bad in [
            "yesterday",
            "2026-13-01",
            "2026-01-01T25:00:00Z",
            "2026-01-01T01:00:00",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn queries_parse_with_defaults_and_clear_errors() {
        let p = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let q = parse_query(&p(&[]), 100_000_000).unwrap();
        assert_eq!(
            (q.from_ms, q.to_ms),
            (100_000_000 - 86_400_000, 100_000_000)
        );
        assert!(q.group_by.is_empty());
        let q = parse_query(&p(&[("group_by", "tenant, day,tenant")]), 100_000_000).unwrap();
        assert_eq!(q.group_by, [Dimension::Tenant, Dimension::Day]);
        let e = parse_query(&p(&[("group_by", "zone")]), 1).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("group_by"));
        assert!(e.message.contains("tenant, project"), "{}", e.message);
        let e = parse_query(&p(&[("from", "soon")]), 1).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("from"));
        let e = parse_query(&p(&[("from", "20"), ("to", "10")]), 1).unwrap_err();
        assert!(e.message.contains("before"), "{}", e.message);
    }
}

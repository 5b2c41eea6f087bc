//! Budgets at the door: a request to an inference endpoint whose tenant or project has used up
//! a budget is answered 429 `budget_exceeded` before any compute; the others carry
//! `x-budget-remaining` and `x-budget-period-end` (and `x-budget-warning` past the soft
//! threshold). Spending is counted as requests are recorded ([`Budgets::spend_record`]).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::usage::put_header;
use super::{ApiError, AppState};
use crate::governance::budgets::{rfc3339, Budgets, Standing};
use crate::governance::ledger::now_ms;
use crate::governance::{Project, Tenant};

/// Middleware (inside the API-key layer, which names the tenant and project).
pub async fn enforce(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let budgets = state.usage().and_then(|u| u.budgets.clone());
    let label = super::request_id::endpoint_label(req.uri().path());
    let (Some(budgets), true) = (
        budgets,
        crate::metrics::INFERENCE_ENDPOINTS.contains(&label),
    ) else {
        return next.run(req).await;
    };
    let tenant = req.extensions().get::<Tenant>().map(|t| t.0.clone());
    let project = req.extensions().get::<Project>().map(|p| p.0.clone());
    let (Some(tenant), Some(project)) = (tenant, project) else {
        return next.run(req).await;
    };
    let path = req.uri().path().to_string();
    match check(&budgets, &tenant, &project) {
        Err(e) => {
            let mut resp = e.into_response_for(&path);
            resp.extensions_mut().insert(Tenant(tenant));
            resp.extensions_mut().insert(Project(project));
            resp
        }
        Ok(standing) => {
            let mut resp = next.run(req).await;
            write_headers(&mut resp, &standing);
            resp
        }
    }
}

/// Where a request stands: `Err` (429) when a budget is used up.
pub fn check(budgets: &Budgets, tenant: &str, project: &str) -> Result<Standing, ApiError> {
    let now = now_ms();
    match budgets.standing(tenant, project, now) {
        Standing::Exceeded {
            budget,
            used,
            period_end_ms,
        } => {
            crate::metrics::record_budget_refusal(tenant);
            let retry = ((period_end_ms - now).max(0) / 1000 + 1) as u64;
            Err(ApiError::budget_exceeded(
                &budget,
                &used,
                &rfc3339(period_end_ms),
                retry,
            ))
        }
        standing => Ok(standing),
    }
}

fn write_headers(resp: &mut Response, standing: &Standing) {
    if let Standing::Within {
        remaining,
        period_end_ms,
        warn,
    } = standing
    {
        let h = resp.headers_mut();
        put_header(h, "x-budget-remaining", remaining.clone());
        put_header(h, "x-budget-period-end", rfc3339(*period_end_ms));
        if *warn {
            put_header(
                h,
                "x-budget-warning",
                "past the budget's soft threshold".to_string(),
            );
        }
    }
}

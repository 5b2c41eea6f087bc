//! `GET /v1/budgets`: where each budget stands this period (used, limit, share, state, when it
//! resets), scoped like `/v1/usage`: a key sees its own tenant's budgets, an admin key all.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;

use super::{ApiError, AppState};
use crate::governance::budgets::BudgetStatus;
use crate::governance::ledger::now_ms;
use crate::governance::Grant;

/// The answer.
#[derive(Serialize)]
struct BudgetList {
    object: &'static str,
    /// The tenant the list is limited to (`None`: every tenant).
    tenant: Option<String>,
    data: Vec<BudgetStatus>,
}

/// `GET /v1/budgets`.
pub async fn budgets(
    State(state): State<AppState>,
    grant: Option<Extension<Grant>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(backend) = state.usage() else {
        return ApiError::bad_request(
            "usage_disabled",
            "The usage ledger is off on this server (usage.enabled = false): no budgets",
        )
        .into_response();
    };
    let tenant = super::usage_query::scope(&state, grant.map(|Extension(g)| g), &params);
    let data = backend
        .budgets
        .as_ref()
        .map(|b| b.statuses(now_ms(), tenant.as_deref()))
        .unwrap_or_default();
    Json(BudgetList {
        object: "list",
        tenant,
        data,
    })
    .into_response()
}

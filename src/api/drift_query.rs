//! `GET /v1/drift`: per model and feature, the Kolmogorov–Smirnov statistic between the
//! reference inputs and the live window, its p-value, both window sizes, and where the reference
//! came from. Server-wide (it names no tenant): any valid key may read it.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::{ApiError, AppState};
use crate::drift::FeatureDrift;

/// The answer.
#[derive(Serialize)]
pub struct DriftList {
    object: &'static str,
    /// The statistic past which a feature counts as drifted.
    threshold: f64,
    data: Vec<FeatureDrift>,
}

/// `GET /v1/drift`.
pub async fn drift(State(state): State<AppState>) -> Result<Json<DriftList>, ApiError> {
    let Some(d) = state.drift().cloned() else {
        return Err(ApiError::bad_request(
            "drift_disabled",
            "Drift monitoring is off on this server (drift.enabled = false)",
        ));
    };
    let threshold = d.threshold();
    let data = tokio::task::spawn_blocking(move || d.status())
        .await
        .map_err(|e| ApiError::internal(format!("drift: {e}")))?;
    Ok(Json(DriftList {
        object: "list",
        threshold,
        data,
    }))
}

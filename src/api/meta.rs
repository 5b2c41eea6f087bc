//! `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`, `GET /ready`, `GET /metrics`.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;

use super::{ApiError, AppState};
use crate::registry::ServedModel;

/// One entry of `/v1/models`: OpenAI's fields plus what a benchmarker needs to know.
#[derive(Serialize)]
pub struct ModelCard {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    task: &'static str,
    precision: &'static str,
    device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<usize>,
    max_input_tokens: usize,
    load_time_ms: u64,
    /// How this model's energy is measured (`none` when metering is off).
    energy_source: &'static str,
    /// Bytes of weights held in the served precision.
    weights_bytes: usize,
    /// The model's energy label over the requests served so far (A–E).
    #[serde(skip_serializing_if = "Option::is_none")]
    energy_class: Option<&'static str>,
    /// Its joules per 1,000 input (embeddings) or output (generation) tokens so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    joules_per_1k_tokens: Option<f64>,
}

impl ModelCard {
    fn of(m: &ServedModel) -> Self {
        let label = m.energy_label();
        Self {
            id: m.name.clone(),
            object: "model",
            created: m.created,
            owned_by: "wattserve",
            task: m.task(),
            precision: m.precision.as_str(),
            device: m.device.to_string(),
            dimensions: m.embedding().map(|e| e.dimensions),
            max_input_tokens: m.max_input_tokens(),
            load_time_ms: m.load_time.as_millis() as u64,
            energy_source: m.meter.as_ref().map_or("none", |m| m.method()),
            weights_bytes: m.weight_bytes,
            energy_class: label.map(|l| l.0),
            joules_per_1k_tokens: label.map(|l| l.1),
        }
    }
}

/// The `/v1/models` list.
#[derive(Serialize)]
pub struct ModelList {
    object: &'static str,
    data: Vec<ModelCard>,
}

/// `GET /v1/models`.
pub async fn list_models(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    let registry = state.registry()?;
    Ok(Json(ModelList {
        object: "list",
        data: registry.iter().map(|m| ModelCard::of(m)).collect(),
    }))
}

/// `GET /v1/models/{id}`.
pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    let registry = state.registry()?;
    registry
        .get(&id)
        .map(|m| Json(ModelCard::of(m)))
        .ok_or_else(|| ApiError::model_not_found(&id, &registry.names()))
}

/// Liveness and readiness replies.
#[derive(Serialize)]
pub struct Status {
    status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    models: Vec<String>,
}

/// `GET /health`: the process answers HTTP (liveness). Always 200.
pub async fn health() -> Json<Status> {
    Json(Status {
        status: "ok",
        models: Vec::new(),
    })
}

/// `GET /ready`: every configured model is loaded and serving (readiness). 503 while loading,
/// once shutdown has begun, or naming a model whose compute thread stopped.
pub async fn ready(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    Ok(Json(Status {
        status: "ready",
        models: readiness(&state)?,
    }))
}

/// Whether the server is ready for inference: the served models' names, or a 503 while
/// models load, after shutdown has begun, or when a model's compute thread has stopped.
/// What every protocol's readiness check answers from.
pub fn readiness(state: &AppState) -> Result<Vec<String>, ApiError> {
    if state.is_draining() {
        return Err(ApiError::unavailable(
            "shutting_down",
            "The server is shutting down",
            1,
        ));
    }
    let registry = state.registry()?;
    let dead = registry.dead_models();
    if !dead.is_empty() {
        return Err(ApiError::unavailable(
            "model_failed",
            format!(
                "The compute thread of model(s) {} stopped; the server is shutting down to be restarted",
                dead.join(", ")
            ),
            1,
        ));
    }
    Ok(registry.names())
}

/// `GET /metrics`: Prometheus text exposition format.
pub async fn metrics() -> Result<impl IntoResponse, ApiError> {
    let handle = crate::metrics::install().ok_or_else(|| {
        ApiError::internal("metrics are disabled: another metrics recorder was installed first")
    })?;
    handle.run_upkeep();
    let mut body = handle.render();
    body.push_str(&crate::metrics::render_floats());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::Auth;
    use crate::config::Limits;

    #[tokio::test]
    async fn ready_turns_503_once_shutdown_begins() {
        let state = AppState::new(Limits::default(), Auth::default(), None);
        // Still loading: 503 not_ready.
        let e = ready(State(state.clone())).await.err().unwrap();
        assert_eq!((e.status.as_u16(), e.code), (503, "not_ready"));
        state.begin_drain();
        let e = ready(State(state)).await.err().unwrap();
        assert_eq!((e.status.as_u16(), e.code), (503, "shutting_down"));
        assert_eq!(e.retry_after, Some(1));
    }
}

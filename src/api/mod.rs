//! The HTTP API (axum): routes, wire types, errors and response headers.
//!
//! `api` knows nothing of tensors: it validates and tokenizes requests, hands token ids to a
//! model's scheduler and turns what comes back into OpenAI-shaped JSON.

pub mod completions;
pub mod embeddings;
pub mod error;
pub mod handler;
pub mod json;
pub mod meta;
pub mod request_id;
pub mod usage;

use std::sync::{Arc, OnceLock};

use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::routing::{get, post};
use axum::Router;

pub use error::ApiError;

use crate::config::Limits;
use crate::registry::Registry;

/// Shared state of all handlers: the limits, and the models once they are loaded.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

struct StateInner {
    limits: Limits,
    registry: OnceLock<Registry>,
}

impl AppState {
    /// State with no models yet: inference answers 503 and `/ready` is not ready until
    /// [`AppState::set_registry`] is called.
    pub fn new(limits: Limits) -> Self {
        Self {
            inner: Arc::new(StateInner {
                limits,
                registry: OnceLock::new(),
            }),
        }
    }

    /// Publishes the loaded models; the server is ready from now on. Later calls are ignored.
    pub fn set_registry(&self, registry: Registry) {
        let _ = self.inner.registry.set(registry);
    }

    /// The loaded models, or a 503 while they are still loading.
    pub fn registry(&self) -> Result<&Registry, ApiError> {
        self.inner.registry.get().ok_or_else(|| {
            ApiError::unavailable("not_ready", "Models are still loading; retry shortly", 1)
        })
    }

    /// The configured request limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }
}

/// All routes, with the body limit and request-id layers.
pub fn router(state: AppState) -> Router {
    let body_limit = state.limits().max_body_bytes;
    Router::new()
        .route("/v1/embeddings", post(embeddings::create))
        .route("/v1/chat/completions", post(completions::chat))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(meta::list_models))
        .route("/v1/models/{*id}", get(meta::get_model))
        .route("/health", get(meta::health))
        .route("/ready", get(meta::ready))
        .route("/metrics", get(meta::metrics))
        .fallback(|uri: Uri| async move { ApiError::no_route(uri.path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(request_id::layer))
        .with_state(state)
}

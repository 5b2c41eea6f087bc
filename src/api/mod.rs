//! The HTTP API (axum): routes, wire types, errors and response headers.
//!
//! `api` knows nothing of tensors: it validates and tokenizes requests, hands token ids to a
//! model's scheduler and turns what comes back into OpenAI-shaped JSON.

pub mod auth;
pub mod budget;
pub mod budgets_query;
pub mod console;
pub mod drift_query;
pub mod error;
pub mod grpc;
pub mod handler;
pub mod json;
pub mod meta;
pub mod openai;
pub mod request_id;
pub mod stats;
pub mod tokenizer;
pub mod usage;
pub mod usage_export;
pub mod usage_query;
pub mod v2;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{watch, Semaphore};

pub use error::ApiError;

use crate::config::Limits;
use crate::registry::Registry;

/// Shared state of all handlers: the limits, the models once they are loaded, and where the
/// server is in its shutdown.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

struct StateInner {
    limits: Limits,
    auth: auth::Auth,
    registry: OnceLock<Registry>,
    /// Shutdown has begun: `/ready` answers 503 so that load balancers stop sending work.
    draining: AtomicBool,
    /// The grace period is over: open streams end with an error event.
    closing: watch::Sender<bool>,
    /// Places on the blocking pool for tokenizing (`limits.tokenizer_concurrency`).
    tokenizing: Arc<Semaphore>,
    /// The usage ledger and its reader; `None` when `usage.enabled` is false.
    usage: Option<UsageBackend>,
    /// The last minutes of metrics, for `/v1/stats` and the console.
    stats: stats::History,
    /// The response cache, when on, and the watts a lookup is charged at.
    cache: Option<(crate::cache::ResponseCache, f64)>,
    /// The input drift monitor, when on.
    drift: OnceLock<crate::drift::Drift>,
}

/// Where usage is recorded and read back.
#[derive(Clone)]
pub struct UsageBackend {
    /// Records go here (off the request path).
    pub ledger: crate::governance::ledger::Ledger,
    /// `/v1/usage` reads here.
    pub reader: Arc<crate::governance::sqlite_store::SqliteReader>,
    /// The budgets and their spending; `None` without `[[budgets]]`.
    pub budgets: Option<Arc<crate::governance::budgets::Budgets>>,
}

impl AppState {
    /// State with no models yet: inference answers 503 and `/ready` is not ready until
    /// [`AppState::set_registry`] is called.
    pub fn new(limits: Limits, auth: auth::Auth, usage: Option<UsageBackend>) -> Self {
        Self::with_cache(limits, auth, usage, None)
    }

    /// The same with a response cache, whose lookups are charged at `watts` (the estimate's
    /// watts per busy core: a lookup is a moment of one core).
    pub fn with_cache(
        limits: Limits,
        auth: auth::Auth,
        usage: Option<UsageBackend>,
        cache: Option<(crate::cache::ResponseCache, f64)>,
    ) -> Self {
        let limits_tokenizers = limits.tokenizers();
        Self {
            inner: Arc::new(StateInner {
                limits,
                auth,
                registry: OnceLock::new(),
                draining: AtomicBool::new(false),
                closing: watch::Sender::new(false),
                tokenizing: Arc::new(Semaphore::new(limits_tokenizers)),
                usage,
                stats: stats::History::default(),
                cache,
                drift: OnceLock::new(),
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

    /// The places for tokenizing work on the blocking pool.
    pub fn tokenizing(&self) -> &Arc<Semaphore> {
        &self.inner.tokenizing
    }

    /// The usage ledger, when kept.
    pub fn usage(&self) -> Option<&UsageBackend> {
        self.inner.usage.as_ref()
    }

    /// The samples `/v1/stats` reads (the server starts their sampler).
    pub fn stats_history(&self) -> &stats::History {
        &self.inner.stats
    }

    /// The response cache and the watts its lookups are charged at, when on.
    pub fn cache(&self) -> Option<(&crate::cache::ResponseCache, f64)> {
        self.inner.cache.as_ref().map(|(c, w)| (c, *w))
    }

    /// Starts watching inputs for drift (once; the server does it when `drift.enabled`).
    pub fn set_drift(&self, drift: crate::drift::Drift) {
        let _ = self.inner.drift.set(drift);
    }

    /// The input drift monitor, when on.
    pub fn drift(&self) -> Option<&crate::drift::Drift> {
        self.inner.drift.get()
    }

    /// The API keys and the paths open without one.
    pub fn auth(&self) -> &auth::Auth {
        &self.inner.auth
    }

    /// Shutdown has begun: from now on `/ready` answers 503 (requests in flight go on).
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// The grace period is over: every open stream sends a final `shutting_down` error event
    /// and `[DONE]`, and ends.
    pub fn end_streams(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Resolves once [`AppState::end_streams`] has been called.
    pub fn streams_ending(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.closing.subscribe();
        async move {
            let _ = rx.wait_for(|closing| *closing).await;
        }
    }
}

/// The metrics listener's one route (`server.metrics_port`): `GET /metrics`, no key.
pub fn metrics_router() -> Router {
    Router::new()
        .route("/metrics", get(meta::metrics))
        .fallback(|uri: Uri| async move { ApiError::no_route(uri.path()) })
}

/// All routes, with the body limit, API-key and request-id (access log) layers.
pub fn router(state: AppState) -> Router {
    let body_limit = state.limits().max_body_bytes;
    Router::new()
        .route("/v1/embeddings", post(openai::embeddings::create))
        .route("/v1/chat/completions", post(openai::completions::chat))
        .route("/v1/completions", post(openai::completions::completions))
        .route("/v1/models", get(meta::list_models))
        .route("/tokenize", post(tokenizer::tokenize))
        .route("/detokenize", post(tokenizer::detokenize))
        .route("/tokenizer_info", get(tokenizer::info))
        .route("/v1/models/{*id}", get(meta::get_model))
        .route("/health", get(meta::health))
        .route("/ready", get(meta::ready))
        .route("/metrics", get(meta::metrics))
        .route("/v1/usage", get(usage_query::usage))
        .route("/v1/usage/export", get(usage_export::export))
        .route("/v1/budgets", get(budgets_query::budgets))
        .route("/v1/stats", get(stats::stats))
        .route("/v1/drift", get(drift_query::drift))
        .route("/ui", get(console::ui))
        .merge(v2::routes())
        .fallback(
            |uri: Uri| async move { ApiError::no_route(uri.path()).into_response_for(uri.path()) },
        )
        .method_not_allowed_fallback(|uri: Uri| async move {
            ApiError::method_not_allowed().into_response_for(uri.path())
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            budget::enforce,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.auth().clone(),
            auth::require_key,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_id::layer,
        ))
        .with_state(state)
}

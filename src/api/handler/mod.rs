//! The core every inference handler shares, whatever its protocol (OpenAI, the Open Inference
//! Protocol over REST or gRPC), so that all find models, time and count requests, tokenize, and
//! describe how they were served in one way; [`embed`] and [`generate`] are the two tasks.
//!
//! A handler brackets its work with [`RequestMetrics::start`] and [`RequestMetrics::finish`],
//! finds its model with [`find_model`], tokenizes with [`tokenize_blocking`], bounds the wait for
//! its answer with [`within_timeout`], and answers with [`metered_json`] (or, for a stream,
//! [`Serving::write`] on its own response).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

pub mod embed;
pub mod generate;

use super::usage::{put_header, set_energy_headers, UsageEnergy};
use super::{ApiError, AppState};
use crate::registry::{EmbeddingServing, GenerationServing, ServedModel};

/// The side of a served model one family of endpoints needs, so that [`find_model`] can hand a
/// handler exactly that side and answer `wrong_endpoint` for a model of the other kind.
pub trait Task {
    /// That side of `model`, when it has one.
    fn of(model: &ServedModel) -> Option<&Self>;

    /// The `wrong_endpoint` message for `model`, which lacks that side: where to send it instead.
    fn wrong_endpoint(model: &str) -> String;
}

impl Task for EmbeddingServing {
    fn of(model: &ServedModel) -> Option<&Self> {
        model.embedding()
    }

    fn wrong_endpoint(model: &str) -> String {
        format!(
            "Model `{model}` is a generation model; use /v1/chat/completions or /v1/completions"
        )
    }
}

impl Task for GenerationServing {
    fn of(model: &ServedModel) -> Option<&Self> {
        model.generation()
    }

    fn wrong_endpoint(model: &str) -> String {
        format!("Model `{model}` is an embedding model; use /v1/embeddings")
    }
}

/// The model named `name` and its side for task `T`: 503 while models load, 404
/// `model_not_found` (listing the served names) for an unknown name, 400 `wrong_endpoint` for a
/// model of the other task. Both references live as long as `state`.
pub fn find_model<'a, T: Task>(
    state: &'a AppState,
    name: &str,
) -> Result<(&'a Arc<ServedModel>, &'a T), ApiError> {
    let registry = state.registry()?;
    let model = registry
        .get(name)
        .ok_or_else(|| ApiError::model_not_found(name, &registry.names()))?;
    let side = T::of(model).ok_or_else(|| {
        ApiError::bad_request("wrong_endpoint", T::wrong_endpoint(&model.name)).with_param("model")
    })?;
    Ok((model, side))
}

/// One request being served: when it started, and the labels it is counted under in
/// `requests_total` and `request_duration_seconds` when it is answered.
pub struct RequestMetrics {
    started: Instant,
    model: String,
    endpoint: &'static str,
}

impl RequestMetrics {
    /// Starts the clock. The model label is the served model's name, or `unknown` for a name
    /// that is not served (so that clients cannot grow the label set without bound).
    pub fn start(state: &AppState, model: &str, endpoint: &'static str) -> Self {
        let started = Instant::now();
        let model = state
            .registry()
            .ok()
            .and_then(|r| r.get(model))
            .map_or_else(|| "unknown".to_string(), |m| m.name.clone());
        Self {
            started,
            model,
            endpoint,
        }
    }

    /// When the request started (the `total` of `server-timing`).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Counts the answer with its status and duration, and hands it back (marked as counted,
    /// so that the access layer does not count it again).
    pub fn finish(self, mut resp: Response) -> Response {
        self.finish_status(resp.status().as_u16());
        resp.extensions_mut().insert(super::request_id::Counted);
        resp
    }

    /// Counts an answer that is not an HTTP response (gRPC) under the HTTP status it stands for.
    pub fn finish_status(self, status: u16) {
        crate::metrics::record_request(&self.model, self.endpoint, status, self.started.elapsed());
    }
}

/// Runs `work` within `limits.request_timeout_ms`: its response or error, else a 504. Dropping
/// `work` on timeout drops its receivers, which is how the schedulers learn to skip the request.
pub async fn within_timeout<F>(state: &AppState, work: F) -> Response
where
    F: Future<Output = Result<Response, ApiError>>,
{
    match tokio::time::timeout(state.limits().request_timeout(), work).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::timeout(state.limits().request_timeout_ms).into_response(),
    }
}

/// Runs `work` (tokenizing, rendering a template: CPU-bound) on tokio's blocking pool so that it
/// never stalls the async workers, at most `limits.tokenizer_concurrency` at once (a flood of
/// large requests cannot start hundreds of blocking threads); waiting for a place counts
/// against the caller's deadline. Its error becomes the response, a lost task a 500.
pub async fn tokenize_blocking<T, E, F>(state: &AppState, work: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    let permit = state
        .tokenizing()
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::internal("the tokenizer pool is closed"))?;
    tokio::task::spawn_blocking(move || {
        let out = work();
        drop(permit);
        out
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenization task failed: {e}")))?
    .map_err(Into::into)
}

/// The names of the headers [`Serving::write`] sets (gRPC sends them as trailing metadata).
pub const SERVING_HEADERS: [&str; 4] = ["x-model", "x-precision", "x-batch-size", "server-timing"];

/// How a response was served, as the `x-model`, `x-precision`, `x-batch-size` and
/// `server-timing` headers of the metering contract say it.
pub struct Serving<'a> {
    /// The model that served it.
    pub model: &'a ServedModel,
    /// The largest batch it was part of; `None` where that is not known yet (a stream's headers
    /// go out before its first step).
    pub batch_size: Option<usize>,
    /// The first `server-timing` entries, in order: a name and a duration (written in
    /// milliseconds).
    pub timing: Vec<(&'static str, Duration)>,
    /// The last entry (`total`, or `ttft` for a stream, whose headers go out with its first
    /// token): a name and the time since an instant, taken when the headers are written, so
    /// that it includes building the body.
    pub until_now: (&'static str, Instant),
}

impl Serving<'_> {
    /// Sets the headers on `h`.
    pub fn write(&self, h: &mut HeaderMap) {
        put_header(h, "x-model", self.model.name.clone());
        put_header(h, "x-precision", self.model.precision.to_string());
        if let Some(n) = self.batch_size {
            put_header(h, "x-batch-size", n.to_string());
        }
        let (name, since) = self.until_now;
        let last = [(name, since.elapsed())];
        put_header(
            h,
            "server-timing",
            server_timing(self.timing.iter().chain(&last)),
        );
    }
}

/// W3C Server-Timing text: `name;dur=1.234, ...` (milliseconds, three decimals).
fn server_timing<'e>(entries: impl IntoIterator<Item = &'e (&'static str, Duration)>) -> String {
    entries
        .into_iter()
        .map(|(name, d)| format!("{name};dur={:.3}", d.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tenant a request runs for: its key's name, `anonymous` without keys (the auth layer
/// attaches the name to every request it admits).
pub fn tenant_name(tenant: Option<&crate::governance::Tenant>) -> &str {
    tenant.map_or("anonymous", |t| t.0.as_str())
}

/// `x-cache: hit | partial | miss` when the response cache is on.
pub fn set_cache_header(h: &mut axum::http::HeaderMap, cache: Option<crate::cache::CacheStatus>) {
    if let Some(c) = cache {
        crate::api::usage::put_header(h, "x-cache", c.as_str().to_string());
    }
}

/// A 200 JSON answer with the serving headers and, when the model is metered, the energy headers.
pub fn metered_json<B: Serialize>(
    body: B,
    serving: Serving<'_>,
    energy: Option<&UsageEnergy>,
) -> Response {
    let mut resp = Json(body).into_response();
    serving.write(resp.headers_mut());
    if let Some(e) = energy {
        set_energy_headers(resp.headers_mut(), e);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_lists_entries_in_milliseconds() {
        let t = server_timing(&[
            ("queue", Duration::from_micros(1500)),
            ("compute", Duration::from_millis(2)),
            ("total", Duration::from_nanos(3_456_789)),
        ]);
        assert_eq!(t, "queue;dur=1.500, compute;dur=2.000, total;dur=3.457");
        assert_eq!(
            server_timing(&[("prepare", Duration::ZERO)]),
            "prepare;dur=0.000"
        );
    }

    #[test]
    fn wrong_endpoint_messages_point_to_the_other_endpoints() {
        assert_eq!(
            <EmbeddingServing as Task>::wrong_endpoint("m"),
            "Model `m` is a generation model; use /v1/chat/completions or /v1/completions"
        );
        assert_eq!(
            <GenerationServing as Task>::wrong_endpoint("m"),
            "Model `m` is an embedding model; use /v1/embeddings"
        );
    }
}

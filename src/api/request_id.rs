//! `x-request-id`: echoed when the client sends a sane one, generated otherwise, on every
//! response (errors included) so that operators can correlate logs and clients. The same layer
//! writes the access log (one line per request) and counts the requests that were answered
//! before any handler ran (401, 404, 405, 413, 415, a malformed body) in
//! `wattserve_requests_total`, so that every rejection is counted.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};

use axum::extract::Request;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use super::usage::{usage_record, PendingUsage, RequestFacts, UsageReport};
use super::{AppState, UsageBackend};
use crate::governance::{Project, Tenant};

/// The header name.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied id that is echoed; longer ones are replaced.
const MAX_LEN: usize = 128;

/// The id of the request being served, available to handlers as an extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Middleware: resolves the id, stores it in the request's extensions, sets it on the response.
pub async fn layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= MAX_LEN && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let label = endpoint_label(&path);
    let in_flight = crate::metrics::INFERENCE_ENDPOINTS
        .contains(&label)
        .then(|| crate::metrics::InFlight::enter(label));
    let mut resp = next.run(req).await;
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    // Rejections no handler counted (probes that succeed are not requests worth counting).
    if status >= 400 && resp.extensions().get::<Counted>().is_none() {
        crate::metrics::record_request("unknown", label, status, elapsed);
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let tenant = resp
        .extensions()
        .get::<Tenant>()
        .map_or("-", |t| t.0.as_str())
        .to_string();
    let project = resp
        .extensions()
        .get::<Project>()
        .map_or("-", |p| p.0.as_str())
        .to_string();
    tracing::info!(
        target: "wattserve::access",
        request_id = %id,
        tenant = %tenant,
        project = %project,
        method = %method,
        path = %path,
        status,
        duration_ms = elapsed.as_secs_f64() * 1e3,
        model = %header("x-model"),
        joules = %header("x-energy-joules"),
        "request"
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    record_usage(
        state.usage(),
        &mut resp,
        id,
        (tenant, project),
        label,
        started,
    );
    match in_flight {
        // In flight until the body is sent or dropped (a stream: until it ends).
        Some(guard) => resp.map(|inner| {
            Body::new(Tracked {
                inner,
                _in_flight: guard,
            })
        }),
        None => resp,
    }
}

/// Counts the request in the per-tenant metrics and hands its record to the ledger (when kept):
/// at once for a whole answer, when its stream ends for a stream. Every request to an inference
/// endpoint is recorded, refused ones included; probes, metadata, usage and metrics reads are
/// not.
fn record_usage(
    usage: Option<&UsageBackend>,
    resp: &mut Response,
    request_id: String,
    (tenant, project): (String, String),
    endpoint: &'static str,
    started: Instant,
) {
    if !crate::metrics::INFERENCE_ENDPOINTS.contains(&endpoint) {
        return;
    }
    let status = resp.status().as_u16();
    let report = resp.extensions_mut().remove::<UsageReport>();
    let pending = resp.extensions_mut().remove::<PendingUsage>();
    let facts = move || RequestFacts {
        request_id,
        tenant,
        project,
        endpoint,
        status,
        duration_ms: started.elapsed().as_secs_f64() * 1e3,
    };
    let usage = usage.cloned();
    let keep = move |record: crate::governance::ledger::UsageRecord| {
        if let Some(u) = usage {
            if let Some(b) = &u.budgets {
                b.spend_record(&record);
            }
            u.ledger.record(record);
        }
    };
    match pending.and_then(|p| p.take()) {
        Some(rx) => {
            tokio::spawn(async move {
                let report = rx.await.ok();
                keep(usage_record(facts(), report));
            });
        }
        None => keep(usage_record(facts(), report)),
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct Tracked {
    inner: Body,
    _in_flight: crate::metrics::InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Marks a response whose request a handler already counted in `wattserve_requests_total`.
#[derive(Debug, Clone, Copy)]
pub struct Counted;

/// The `endpoint` label of a path (a bounded set: unknown paths are `other`).
pub fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/v1/embeddings" => "embeddings",
        "/v1/chat/completions" => "chat_completions",
        "/v1/completions" => "completions",
        "/v1/models" => "models",
        "/health" | "/ready" => "health",
        "/metrics" => "metrics",
        p if p.starts_with("/v1/models/") => "models",
        p if p.starts_with("/v2/") && p.ends_with("/infer") => "v2_infer",
        p if p.starts_with("/v2/") && p.ends_with("/generate") => "v2_generate",
        p if p.starts_with("/v2/") && p.ends_with("/generate_stream") => "v2_generate_stream",
        p if crate::api::error::is_v2_path(p) => "v2_metadata",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint_label;

    #[test]
    fn paths_map_to_a_bounded_set_of_endpoint_labels() {
        assert_eq!(endpoint_label("/v1/embeddings"), "embeddings");
        assert_eq!(endpoint_label("/v2/models/m/infer"), "v2_infer");
        assert_eq!(endpoint_label("/v2/models/m/versions/1/infer"), "v2_infer");
        assert_eq!(endpoint_label("/v2/models/m/generate"), "v2_generate");
        assert_eq!(
            endpoint_label("/v2/models/m/generate_stream"),
            "v2_generate_stream"
        );
        assert_eq!(endpoint_label("/v2/models/m"), "v2_metadata");
        assert_eq!(endpoint_label("/v2"), "v2_metadata");
        assert_eq!(endpoint_label("/v2x/infer"), "other");
        assert_eq!(endpoint_label("/anything"), "other");
    }
}

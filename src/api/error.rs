//! Errors with a fitting status, in the shape of the dialect that was spoken: OpenAI's
//! `{"error":{"message","type","param","code"}}`, or the Open Inference Protocol's
//! `{"error":"message"}` for `/v2` (see [`ApiError::into_v2_response`]).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// An error response. Built by handlers and extractors; never a panic.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message that says what to do.
    pub message: String,
    /// The request field at fault, if one.
    pub param: Option<String>,
    /// Machine-readable code (`model_not_found`, `context_length_exceeded`, ...).
    pub code: &'static str,
    /// Seconds after which a retry may succeed (sets `Retry-After`).
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: &'static str,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code,
            retry_after: None,
        }
    }

    /// Names the request field at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// 400: the request is malformed or breaks a limit.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404: no model of that name is served.
    pub fn model_not_found(name: &str, served: &[String]) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "The model `{name}` does not exist or is not served here; served models: {}",
                served.join(", ")
            ),
        )
        .with_param("model")
    }

    /// 401: no API key, or one that is not accepted.
    pub fn unauthorized(presented: bool) -> Self {
        let message = if presented {
            "Incorrect API key provided"
        } else {
            "No API key provided: send `Authorization: Bearer YOUR_KEY` (or `x-api-key`)"
        };
        Self::new(StatusCode::UNAUTHORIZED, "invalid_api_key", message)
    }

    /// 415: a JSON endpoint got a body declared as something else (or not declared).
    pub fn unsupported_media_type(got: Option<&str>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Send the body as JSON with `Content-Type: application/json` (got {})",
                got.map_or_else(|| "no Content-Type".to_string(), |t| format!("`{t}`"))
            ),
        )
    }

    /// 408: the body did not arrive within `limits.body_read_timeout_ms`.
    pub fn body_timeout(ms: u64) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("The request body did not arrive within {ms} ms (limits.body_read_timeout_ms)"),
        )
    }

    /// 413: the body is over `limits.max_body_bytes`.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("The request body is larger than the limit of {limit} bytes (limits.max_body_bytes)"),
        )
    }

    /// 503 with `Retry-After`: overloaded or not ready yet.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        e.retry_after = Some(retry_after);
        e
    }

    /// 504: the request ran past `limits.request_timeout_ms`.
    pub fn timeout(ms: u64) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("The request did not finish within {ms} ms (limits.request_timeout_ms)"),
        )
    }

    /// 500: something failed inside the server; the message says what.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// 404 for a model version that is not served (every model has only version `1`).
    pub fn model_version_not_found(model: &str, version: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("Model `{model}` has no version `{version}`; its only version is `1`"),
        )
        .with_param("model_version")
    }

    /// 403 for a project the request's key may not charge.
    pub fn project_not_allowed(project: &str, tenant: &str, allowed: &[&str]) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "project_not_allowed",
            format!(
                "Project `{project}` (x-wattserve-project) is not one of tenant `{tenant}`'s projects: {}",
                allowed.join(", ")
            ),
        )
        .with_param("x-wattserve-project")
    }

    /// 429 for a request whose budget is used up: names the budget, what was used and when it
    /// resets; `Retry-After` says how long that is.
    pub fn budget_exceeded(budget: &str, used: &str, resets: &str, retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "budget_exceeded",
            format!("The {budget} is used up ({used}); it resets at {resets}"),
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 404 for a path no route serves.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("No endpoint at `{path}`; see GET /v1/models and the README for the API"),
        )
    }

    /// 405 for a known path called with the wrong method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "This endpoint does not accept that HTTP method",
        )
    }

    /// The OpenAI `type` for this status.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            503 | 429 => "overloaded_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl ApiError {
    /// The Open Inference Protocol's error: `{"error": "message"}` with the same status and
    /// headers (`retry-after`, `www-authenticate`) as the OpenAI shape.
    pub fn into_v2_response(self) -> Response {
        let resp = (
            self.status,
            Json(V2Body {
                error: &self.message,
            }),
        )
            .into_response();
        self.with_headers(resp)
    }

    /// This error in the shape `path`'s API speaks: `/v2` paths get the Open Inference
    /// Protocol's, all others OpenAI's.
    pub fn into_response_for(self, path: &str) -> Response {
        if is_v2_path(path) {
            self.into_v2_response()
        } else {
            self.into_response()
        }
    }

    fn with_headers(&self, mut resp: Response) -> Response {
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Whether `path` belongs to the Open Inference Protocol's REST API.
pub fn is_v2_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// `{"error": "..."}`: the Open Inference Protocol's error body.
#[derive(Serialize)]
struct V2Body<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: self.kind(),
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        let resp = (self.status, Json(body)).into_response();
        self.with_headers(resp)
    }
}

impl From<crate::batch::SchedulerError> for ApiError {
    /// Full queue or shutdown: 503 with Retry-After; engine failure or panic: 500.
    fn from(e: crate::batch::SchedulerError) -> Self {
        use crate::batch::SchedulerError;
        match e {
            SchedulerError::QueueFull { setting, .. } => {
                ApiError::unavailable("queue_full", format!("{e}; retry later ({setting})"), 1)
            }
            SchedulerError::Stopped(_) => ApiError::unavailable("shutting_down", e.to_string(), 1),
            SchedulerError::Overloaded { .. } => ApiError::unavailable(
                "queue_full",
                format!("{e}; retry later (batching.max_queue_wait_ms)"),
                1,
            ),
            SchedulerError::QueueTimeout { .. } => ApiError::unavailable(
                "queue_timeout",
                format!("{e}; retry later (batching.max_queue_wait_ms)"),
                1,
            ),
            SchedulerError::Engine(_) | SchedulerError::Panicked(_) => {
                ApiError::internal(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serializes_openai_shape_with_retry_after() {
        let resp = ApiError::unavailable("queue_full", "busy", 2).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["message"], "busy");
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert_eq!(v["error"]["code"], "queue_full");
        assert!(v["error"]["param"].is_null());
    }

    #[tokio::test]
    async fn v2_paths_get_the_open_inference_protocol_shape() {
        let e = ApiError::unavailable("queue_full", "busy", 2);
        let resp = e.clone().into_response_for("/v2/models/m/infer");
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        assert_eq!(&bytes[..], br#"{"error":"busy"}"#);
        let resp = e.into_response_for("/v2x");
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        assert!(bytes.starts_with(br#"{"error":{"#));
    }
}

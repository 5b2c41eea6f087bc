//! API keys on every route but the open ones: `Authorization: Bearer KEY` (what OpenAI SDKs
//! send) or `x-api-key: KEY`. A request without a valid key gets 401 with an OpenAI error
//! object; an admitted one carries its [`Tenant`] (the key's name) as a request extension, and
//! its response carries it too, for the access log.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;

use super::ApiError;
use crate::governance::{ApiKeys, Tenant};

/// What the middleware checks against: the accepted keys (none: authentication off) and the
/// paths open without a key.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    keys: Option<Arc<ApiKeys>>,
    open_paths: Arc<Vec<String>>,
}

impl Auth {
    /// Keys required everywhere but `open_paths`; `None` turns authentication off.
    pub fn new(keys: Option<ApiKeys>, open_paths: Vec<String>) -> Self {
        Self {
            keys: keys.map(Arc::new),
            open_paths: Arc::new(open_paths),
        }
    }

    /// Whether keys are required at all.
    pub fn enabled(&self) -> bool {
        self.keys.is_some()
    }

    /// The tenant of a request to `path` with `headers` (HTTP headers, or gRPC metadata as
    /// headers): anonymous when no keys are configured or the path is open, the key's tenant
    /// when it presents a valid one, else a 401.
    pub fn admit(&self, path: &str, headers: &HeaderMap) -> Result<Tenant, ApiError> {
        let Some(keys) = &self.keys else {
            return Ok(Tenant::anonymous());
        };
        if self.open_paths.iter().any(|p| p == path) {
            return Ok(Tenant::anonymous());
        }
        match presented_key(headers) {
            Some(key) => keys.verify(key).ok_or_else(|| ApiError::unauthorized(true)),
            None => Err(ApiError::unauthorized(false)),
        }
    }
}

/// The key a request presents, from `Authorization: Bearer` or `x-api-key`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
}

/// Middleware: admits requests with a valid key (or to an open path, or when keys are off),
/// refuses the others with 401.
pub async fn require_key(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    let tenant = match auth.admit(req.uri().path(), req.headers()) {
        Ok(tenant) => tenant,
        Err(e) => return e.into_response_for(req.uri().path()),
    };
    req.extensions_mut().insert(tenant.clone());
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(tenant);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_key_comes_from_bearer_or_x_api_key() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("x-api-key", HeaderValue::from_static("k2"));
        assert_eq!(presented_key(&h), Some("k2"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  k1 "),
        );
        assert_eq!(presented_key(&h), Some("k1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(presented_key(&h), Some("k2"), "not a bearer token");
    }
}

//! API keys on every route but the open ones: `Authorization: Bearer KEY` (what OpenAI SDKs
//! send) or `x-api-key: KEY`. A request without a valid key gets 401 with an OpenAI error
//! object; an admitted one carries its [`crate::governance::Tenant`] (the key's name), its
//! [`Project`] and [`Grant`] as request extensions, and
//! its response carries it too, for the access log.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;

use super::ApiError;
use crate::governance::{ApiKeys, Grant, Project};

/// The header a request names its project in.
pub const PROJECT_HEADER: &str = "x-wattserve-project";

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
    pub fn admit(&self, path: &str, headers: &HeaderMap) -> Result<Grant, ApiError> {
        let Some(keys) = &self.keys else {
            return Ok(Grant::anonymous());
        };
        if self.open_paths.iter().any(|p| p == path) {
            return Ok(Grant::anonymous());
        }
        match presented_key(headers) {
            Some(key) => keys.verify(key).ok_or_else(|| ApiError::unauthorized(true)),
            None => Err(ApiError::unauthorized(false)),
        }
    }

    /// The grant and the project a request is charged to: [`Auth::admit`], then the project it
    /// names in `x-wattserve-project` (403 when its key may not charge it) or the key's default.
    pub fn charge(&self, path: &str, headers: &HeaderMap) -> Result<(Grant, Project), ApiError> {
        let grant = self.admit(path, headers)?;
        let asked = headers
            .get(PROJECT_HEADER)
            .map(|v| v.to_str().unwrap_or("(not text)"));
        match grant.project(asked) {
            Some(project) => Ok((grant, project)),
            None => Err(ApiError::project_not_allowed(
                asked.unwrap_or_default(),
                &grant.tenant.0,
                &grant.all_projects(),
            )),
        }
    }

    /// Every (tenant, project) pair requests can be charged to: the bounded label set of the
    /// per-tenant metrics.
    pub fn charges(&self) -> Vec<(String, String)> {
        match &self.keys {
            Some(keys) => keys.charges(),
            None => {
                let g = Grant::anonymous();
                vec![(g.tenant.0, g.default_project)]
            }
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
    let (grant, project) = match auth.charge(req.uri().path(), req.headers()) {
        Ok(charge) => charge,
        Err(e) => {
            // A valid key naming a project it may not charge: the refusal is its tenant's.
            let tenant = auth.admit(req.uri().path(), req.headers()).ok();
            let mut resp = e.into_response_for(req.uri().path());
            if let Some(g) = tenant {
                resp.extensions_mut().insert(g.tenant);
            }
            return resp;
        }
    };
    let tenant = grant.tenant.clone();
    req.extensions_mut().insert(tenant.clone());
    req.extensions_mut().insert(project.clone());
    req.extensions_mut().insert(grant);
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(tenant);
    resp.extensions_mut().insert(project);
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

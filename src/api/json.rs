//! A JSON body extractor whose rejections are OpenAI error objects (axum's own are plain text).
//!
//! The body must be declared `application/json` (parameters such as `charset` allowed): a
//! `text/plain` or form POST is what any web page can make a visitor's browser send without a
//! CORS check, so accepting one would let any site spend this server's compute (415 instead).
//! The body must arrive within `limits.body_read_timeout_ms` (408 instead), so a client that
//! sends less than its `Content-Length` cannot hold a request open.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::{ApiError, AppState};

/// Whether a `Content-Type` value names JSON: `application/json` or `application/*+json`,
/// with any parameters.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A request body parsed as JSON into `T`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !content_type.is_some_and(is_json) {
            return Err(ApiError::unsupported_media_type(content_type));
        }
        let bytes = read_body(req, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_json",
                "The request body is empty; send a JSON object",
            ));
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            let what = if e.is_data() {
                "The request body does not match the expected schema"
            } else {
                "The request body is not valid JSON"
            };
            ApiError::bad_request("invalid_json", format!("{what}: {e}"))
        })
    }
}

/// The whole body of `req`, within `limits.body_read_timeout_ms` (408) and
/// `limits.max_body_bytes` (413).
pub async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let limit = state.limits().body_read_timeout();
    let read = tokio::time::timeout(limit, Bytes::from_request(req, state)).await;
    let Ok(read) = read else {
        return Err(ApiError::body_timeout(state.limits().body_read_timeout_ms));
    };
    read.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(state.limits().max_body_bytes)
        } else {
            ApiError::bad_request(
                "invalid_body",
                format!("Could not read the request body: {rejection}"),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_media_types_are_recognized_with_their_parameters() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.api+json",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
            "json",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }
}

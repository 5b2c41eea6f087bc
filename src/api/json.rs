//! A JSON body extractor whose rejections are OpenAI error objects (axum's own are plain text).
//!
//! It accepts a JSON body whatever its `Content-Type` says, so that `curl -d '{...}'` (which sends
//! `application/x-www-form-urlencoded`) works as users expect.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::{ApiError, AppState};

/// A request body parsed as JSON into `T`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large(state.limits().max_body_bytes)
            } else {
                ApiError::bad_request(
                    "invalid_body",
                    format!("Could not read the request body: {rejection}"),
                )
            }
        })?;
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

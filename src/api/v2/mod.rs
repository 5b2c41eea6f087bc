//! The Open Inference Protocol (KServe / Triton "V2"), REST side: metadata, health, `infer` with
//! JSON or binary tensors, and Triton's generate extension, all under `/v2` on the OpenAI
//! API's listener, metered and batched through the same handler core. [`infer`] is the
//! transport-independent part that the gRPC service shares.

pub mod binary;
pub mod generate;
pub mod infer;
pub mod params;
pub mod rest;
pub mod tensor;

use axum::routing::{get, post};
use axum::Router;

use super::AppState;

/// The `/v2` routes. Every model path exists with and without `/versions/{version}`.
pub fn routes() -> Router<AppState> {
    let mut r = Router::new()
        .route("/v2", get(rest::server_metadata))
        .route("/v2/health/live", get(rest::live))
        .route("/v2/health/ready", get(rest::ready));
    for base in [
        "/v2/models/{model}",
        "/v2/models/{model}/versions/{version}",
    ] {
        r = r
            .route(base, get(rest::model_metadata))
            .route(&format!("{base}/ready"), get(rest::model_ready))
            .route(&format!("{base}/infer"), post(rest::infer))
            .route(&format!("{base}/generate"), post(generate::generate))
            .route(
                &format!("{base}/generate_stream"),
                post(generate::generate_stream),
            );
    }
    r
}

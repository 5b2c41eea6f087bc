//! The Open Inference Protocol over gRPC: KServe's `GRPCInferenceService` (ServerLive,
//! ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer) with tonic, on its own
//! port (`server.grpc_port`). Inference goes through the same transport-independent core as
//! `/v2` REST ([`crate::api::v2::infer`]): same queue, batching, limits and metering. The API
//! keys apply to every call when configured (`authorization: Bearer KEY` or `x-api-key`
//! metadata); the metering values come back as trailing metadata and in the response
//! `parameters`.

pub mod pb;
pub mod service;
pub mod trailers;

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use self::pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use self::service::InferenceService;
use super::AppState;

/// Serves the gRPC service on `listener` until `shutdown` resolves; calls in flight then
/// finish (each is bounded by `limits.request_timeout_ms`).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let max_message = state.limits().max_body_bytes;
    let auth = state.auth().clone();
    let service = GrpcInferenceServiceServer::new(InferenceService::new(state))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(usize::MAX);
    let service = tonic::service::interceptor::InterceptedService::new(
        service,
        move |req: tonic::Request<()>| service::admit(&auth, req),
    );
    tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn(trailers::MeteringTrailers::new))
        .add_service(service)
        // Without TCP_NODELAY a small unary answer waits on the client's delayed ACK (~40 ms).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

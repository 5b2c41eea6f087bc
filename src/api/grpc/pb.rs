//! The messages, client and server of `GRPCInferenceService`, generated from
//! `grpc_predict_v2.proto` by build.rs.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("inference");

//! Generates the gRPC service of the Open Inference Protocol (`GRPCInferenceService`) from
//! `src/api/grpc/grpc_predict_v2.proto`, with the protoc that comes with the build
//! (`protoc-bin-vendored`), so that a fresh machine needs no protoc of its own.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "src/api/grpc/grpc_predict_v2.proto";
    println!("cargo:rerun-if-changed={proto}");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC (build scripts are single-threaded).
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[proto], &["src/api/grpc"])?;
    Ok(())
}

//! The official Open Inference Protocol clients against a real server on 127.0.0.1 (REST and
//! gRPC): `tritonclient` (http binary, http JSON, grpc) and the `kserve` SDK (REST and gRPC),
//! for an embedding and a generation model — health, metadata, embeddings equal to
//! `/v1/embeddings`, greedy text equal to `/v1/completions`, the generate extension, energy in
//! every response, errors (tests/v2/*_check.py). The clients live in target/v2-venv
//! (`make v2-clients`, run by `make test`).

mod common;

use std::path::PathBuf;

fn python() -> Option<PathBuf> {
    common::client_python("WATTSERVE_V2_PYTHON", "v2-venv", "v2-clients")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_and_kserve_work_unchanged() {
    let Some(python) = python() else {
        return;
    };
    if !common::smollm2_available() {
        return;
    }
    let s = common::TestServer::start(|c| {
        c.server.models = vec!["minilm".into(), "smollm2".into()];
        c.server.grpc_port = Some(0);
    })
    .await;
    let http = s.url("");
    let grpc = s.grpc_addr.expect("grpc listener").to_string();
    for script in ["triton_check.py", "kserve_check.py"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/v2")
            .join(script);
        let (python, http, grpc) = (python.clone(), http.clone(), grpc.clone());
        // The server runs on this runtime: wait for the client on a blocking thread.
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(python)
                .arg(path)
                .args(["--http", http.trim_end_matches('/'), "--grpc", &grpc])
                .args(["--embed-model", "minilm", "--gen-model", "smollm2"])
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
        eprintln!("{stdout}");
    }
    s.stop().await.unwrap();
}

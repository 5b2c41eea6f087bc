//! The official `openai` Python client against a real server on 127.0.0.1: chat and completions,
//! streamed and not, usage with energy, typed errors (tests/openai/client_check.py). The client
//! lives in target/openai-venv (`make openai-client`, run by `make test`).

mod common;

use std::path::PathBuf;

fn python() -> Option<PathBuf> {
    common::client_python("WATTSERVE_OPENAI_PYTHON", "openai-venv", "openai-client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_works() {
    let Some(python) = python() else {
        return;
    };
    if !common::weights_available(&["smollm2/weights/SmolLM2-135M-Instruct.Q4_1.gguf"]) {
        return;
    }
    let s = common::TestServer::start(|c| c.server.models = vec!["smollm2".into()]).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai/client_check.py");
    let base = s.url("");
    // The server runs on this runtime: wait for the client on a blocking thread.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(base)
            .arg("smollm2")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "client_check.py failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");
}

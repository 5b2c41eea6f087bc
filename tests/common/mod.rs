//! Helpers shared by the integration tests: where the models and fixtures are, and a real server
//! on 127.0.0.1:0.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use wattserve::config::{Config, Overrides};
use wattserve::Server;

/// The repository's `models/` folder.
pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// The repository's reference data, `tests/fixtures/` (its README says where each number came
/// from).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Whether a test that lacks its model weights must fail rather than skip: in CI (`CI=true`,
/// as CI services set it) a missing weight file is a broken set-up, not a reason to pass.
pub fn weights_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// True when every file in `files` (relative to `models/`) exists. Otherwise prints why the
/// test is skipped and returns false, or, with `CI=true`, fails the test.
pub fn weights_available(files: &[&str]) -> bool {
    let missing: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| !models_dir().join(f).is_file())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "model weights missing: models/{}; run models/fetch.sh (make test does)",
        missing.join(", models/")
    );
    assert!(
        !weights_required(),
        "{msg} (CI=true: a missing weight fails)"
    );
    eprintln!("SKIPPED: {msg}");
    false
}

/// True when the minilm weights are present (see [`weights_available`]).
pub fn minilm_available() -> bool {
    weights_available(&["minilm/weights/model.safetensors"])
}

/// One fixture sentence with its sentence-transformers embedding.
#[derive(serde::Deserialize)]
pub struct RefItem {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub embedding: Vec<f32>,
}

#[derive(serde::Deserialize)]
struct RefFile {
    items: Vec<RefItem>,
}

/// The minilm reference fixture.
pub fn minilm_reference() -> Vec<RefItem> {
    reference_file("minilm_reference.json")
}

/// One- to three-word inputs with their fp32 embeddings (tests/fixtures/README.md): the inputs
/// int8 finds hardest.
pub fn minilm_short_reference() -> Vec<RefItem> {
    reference_file("minilm_short_reference.json")
}

fn reference_file(name: &str) -> Vec<RefItem> {
    let path = fixtures_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str::<RefFile>(&text).unwrap().items
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Largest absolute element-wise difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A server running in this process on 127.0.0.1:0; shut down on drop (or with `stop`).
pub struct TestServer {
    pub addr: SocketAddr,
    /// The metrics listener, when `server.metrics_port` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The gRPC listener, when `server.grpc_port` is set.
    pub grpc_addr: Option<SocketAddr>,
    /// Holds the usage ledger's file (unless the test pointed it elsewhere).
    _ledger_dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), wattserve::ServeError>>>,
}

impl TestServer {
    /// Starts a server over the repository's models with `edit` applied to the config, and waits
    /// until `/ready`.
    pub async fn start(edit: impl FnOnce(&mut Config)) -> Self {
        Self::start_with(edit, |_| {}).await
    }

    /// Like [`TestServer::start`], with the model entries (from models/minilm) edited too.
    pub async fn start_with(
        edit: impl FnOnce(&mut Config),
        edit_models: impl FnOnce(&mut Vec<wattserve::repository::ModelEntry>),
    ) -> Self {
        let mut config = Config::load(None, &Overrides::default()).unwrap();
        config.server.host = "127.0.0.1".into();
        config.server.port = 0;
        config.server.models_dir = models_dir();
        config.server.models = vec!["minilm".into()];
        // Each server its own usage ledger, deleted with the server.
        let ledger_dir = tempfile::tempdir().unwrap();
        config.usage.path = ledger_dir.path().join("usage.sqlite");
        // The tests that compute the same input twice expect it computed twice (batching,
        // metering); the cache's own tests turn it on.
        config.cache.max_bytes = 0;
        edit(&mut config);
        let mut entries =
            wattserve::repository::discover(&config.server.models_dir, &config.server.models)
                .unwrap();
        edit_models(&mut entries);
        let server = Server::bind_entries(&config, entries).await.unwrap();
        let addr = server.local_addr().unwrap();
        let metrics_addr = server.metrics_addr().map(Result::unwrap);
        let grpc_addr = server.grpc_addr().map(Result::unwrap);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        let me = Self {
            addr,
            metrics_addr,
            grpc_addr,
            _ledger_dir: ledger_dir,
            stop: Some(tx),
            task: Some(task),
        };
        me.wait_ready().await;
        me
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = client.get(self.url("/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server not ready within 120 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The text of `GET /metrics` (with `key` as a bearer token when given).
    #[allow(dead_code)]
    pub async fn metrics(&self, key: Option<&str>) -> String {
        let mut req = reqwest::Client::new().get(self.url("/metrics"));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send().await.unwrap().text().await.unwrap()
    }

    /// Graceful shutdown; returns the server's result.
    pub async fn stop(mut self) -> Result<(), wattserve::ServeError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Sum of the values of a Prometheus metric's samples whose line contains `label`.
pub fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// True when the SmolLM2 GGUF (and minilm, which the generation tests' server also loads) is
/// present (see [`weights_available`]).
pub fn smollm2_available() -> bool {
    weights_available(&[
        "smollm2/weights/SmolLM2-135M-Instruct.Q4_1.gguf",
        "minilm/weights/model.safetensors",
    ])
}

/// A server with `smollm2` and `minilm`.
pub async fn smollm2_server() -> TestServer {
    TestServer::start(|c| {
        c.server.models = vec!["smollm2".into(), "minilm".into()];
    })
    .await
}

/// POSTs `body` as JSON to `path`: status, headers, and the body as JSON (or as a JSON string
/// when it is not JSON).
pub async fn post_json(
    s: &TestServer,
    path: &str,
    body: serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(s.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, headers, v)
}

/// The hex SHA-256 of an API key: what a keys file holds.
#[allow(dead_code)]
pub fn sha256_hex(key: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The Python interpreter of a client venv: `$env_var` when set, else `target/VENV/bin/python`.
/// When it is missing: `None` (a skip, with a line saying how to make it), or a failure under
/// `CI=true`.
#[allow(dead_code)]
pub fn client_python(env_var: &str, venv: &str, make_target: &str) -> Option<PathBuf> {
    let p = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join(venv)
                .join("bin/python")
        });
    if p.is_file() {
        return Some(p);
    }
    let msg = format!(
        "no Python client at {}; run `make {make_target}` (make test does)",
        p.display()
    );
    assert!(
        !weights_required(),
        "{msg} (CI=true: a missing client fails)"
    );
    eprintln!("SKIPPED: {msg}");
    None
}

/// Everything a spawned server printed, line by line.
#[allow(dead_code)]
pub type Output = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Starts the real binary, `wattserve serve --config CONFIG` (the config names a free port),
/// as an orchestrator runs it; returns the child, its address once `/ready` answers 200, and its
/// output so far and to come.
#[allow(dead_code)]
pub async fn spawn_server(config: &std::path::Path) -> (std::process::Child, String, Output) {
    spawn_server_with_env(config, &[]).await
}

/// [`spawn_server`] with more environment variables for the server.
#[allow(dead_code)]
pub async fn spawn_server_with_env(
    config: &std::path::Path,
    env: &[(&str, &std::ffi::OsStr)],
) -> (std::process::Child, String, Output) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_wattserve"))
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .env("WATTSERVE_LOG", "info")
        .env_remove("WATTSERVE_PORT")
        .env_remove("WATTSERVE_MODELS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let output = Output::default();
    let lines = output.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line.clone());
            if let Some(i) = line.find("listening on http://") {
                let addr = line[i + "listening on http://".len()..].trim().to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server printed its address");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = reqwest::get(format!("http://{addr}/ready")).await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "not ready in 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, addr, output)
}

/// Writes a keys file of `(name, key)` entries (each line `NAME SHA256-OF-KEY`, then any extra
/// words of the entry: `project=P`, `admin`) into `dir`; returns its path.
#[allow(dead_code)]
pub fn keys_file(dir: &std::path::Path, entries: &[(&str, &str, &str)]) -> PathBuf {
    let path = dir.join("keys");
    let text: String = entries
        .iter()
        .map(|(name, key, extra)| format!("{name} {} {extra}\n", sha256_hex(key)))
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// Loads `url` in headless Chromium with `tests/browser/check_page.mjs` (sending `headers`),
/// waits for the page to be ready, saves a screenshot as `target/browser-artifacts/NAME.png`, and
/// returns the checker's report (`ok`, `charts` with their data points, console errors, requests
/// outside the page's origin). `None` (a skip, saying how to set it up) when the browser tools
/// are missing, a failure under `CI=true`.
#[allow(dead_code)]
pub fn check_page(
    url: &str,
    headers: &[&str],
    min_charts: usize,
    texts: &[&str],
    name: &str,
) -> Option<serde_json::Value> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let modules = root.join("target/browser/node_modules/playwright-core");
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !modules.is_dir() || !chromium.is_file() {
        let msg = format!(
            "no headless browser (need {} and {}); run `make browser` (make test does)",
            modules.display(),
            chromium.display()
        );
        assert!(
            !weights_required(),
            "{msg} (CI=true: a missing browser fails)"
        );
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    let artifacts = root.join("target/browser-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join(format!("{name}.png"));
    let mut cmd = std::process::Command::new("node");
    cmd.arg(root.join("tests/browser/check_page.mjs"))
        .args(["--url", url, "--screenshot"])
        .arg(&shot)
        .args(["--min-charts", &min_charts.to_string()]);
    for h in headers {
        cmd.args(["--header", h]);
    }
    for t in texts {
        cmd.args(["--text", t]);
    }
    let out = cmd.output().expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "check_page printed no report: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(shot.is_file(), "no screenshot at {}", shot.display());
    Some(report)
}

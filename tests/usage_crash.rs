//! What a crash costs the usage ledger: the real binary is killed with SIGKILL under load, and
//! every request answered more than one flush interval (`usage.flush_interval_ms`) before the
//! kill is in the ledger; only the last interval's may be lost.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

const FLUSH_MS: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_at_most_the_last_flush_interval() {
    if !common::minilm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.sqlite");
    let config = dir.path().join("wattserve.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nport = 0\nmodels_dir = {:?}\nmodels = [\"minilm\"]\n[usage]\npath = {:?}\nflush_interval_ms = {FLUSH_MS}\n",
            common::models_dir(),
            ledger
        ),
    )
    .unwrap();
    let (mut child, addr, _) = common::spawn_server(&config).await;

    // Four clients send embeddings until the server dies; each answer's id and arrival time.
    let answered: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for c in 0..4 {
        let (client, answered, url) = (
            client.clone(),
            answered.clone(),
            format!("http://{addr}/v1/embeddings"),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let r = client
                    .post(&url)
                    .json(&json!({"model": "minilm", "input": format!("client {c} request {i}")}))
                    .send()
                    .await;
                let Ok(r) = r else { break };
                if r.status() == 200 {
                    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
                    answered.lock().unwrap().insert(id, Instant::now());
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    child.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    let _ = child.wait();
    for t in tasks {
        let _ = t.await;
    }

    let conn = rusqlite::Connection::open(&ledger).unwrap();
    let mut stmt = conn.prepare("SELECT request_id FROM requests").unwrap();
    let recorded: HashSet<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let answered = answered.lock().unwrap();
    assert!(
        answered.len() > 20,
        "too little load: {} answers",
        answered.len()
    );
    // A record is handed to the ledger as its answer goes out; the writer appends every
    // FLUSH_MS. Allow one interval plus scheduling slack.
    let window = Duration::from_millis(FLUSH_MS + 150);
    let mut lost_recent = 0;
    for (id, at) in answered.iter() {
        if recorded.contains(id) {
            continue;
        }
        let before_kill = killed.duration_since(*at);
        assert!(
            before_kill <= window,
            "request {id}, answered {before_kill:?} before the kill, is not in the ledger"
        );
        lost_recent += 1;
    }
    eprintln!(
        "{} answered, {} recorded, {lost_recent} lost (all within {window:?} of the kill)",
        answered.len(),
        recorded.len()
    );
}

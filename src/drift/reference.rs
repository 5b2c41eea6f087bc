//! `wattserve drift reference`: a reference for drift monitoring from inputs the model was
//! validated on. It serves the embedding model in-process (its cache off), embeds each input of
//! a JSONL file, and writes the features `[drift]` watches (input tokens, projections) as
//! `<out>`, the file a server reads from `drift.reference_dir/<model>.json`.

use std::path::PathBuf;

use clap::Args;

use super::{direction, embedding_features, ReferenceFile, PROJECTIONS};
use crate::config::{Config, Overrides};

/// Options of `wattserve drift reference`.
#[derive(Debug, Clone, Args)]
pub struct ReferenceArgs {
    /// The embedding model (a folder of the model repository).
    #[arg(long)]
    pub model: String,
    /// The inputs: JSONL, a string or an object with `text` per line.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write the reference (a server reads `drift.reference_dir/<model>.json`).
    #[arg(long)]
    pub out: PathBuf,
    /// The model repository.
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Config file (as `serve --config`), for the model's settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Why no reference was written.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// Bad options or inputs.
    #[error("{0}")]
    Usage(String),
    /// The model could not be served or answered badly.
    #[error("{0}")]
    Serve(String),
}

/// Writes the reference; returns how many inputs it holds.
pub async fn run(args: &ReferenceArgs) -> Result<usize, ReferenceError> {
    let inputs = crate::bench::inputs::from_jsonl(&args.inputs).map_err(ReferenceError::Usage)?;
    let overrides = Overrides {
        models_dir: args.models_dir.clone(),
        models: vec![args.model.clone()],
        port: Some(0),
        host: Some("127.0.0.1".into()),
        ..Default::default()
    };
    let mut config = Config::load(args.config.as_deref(), &overrides)
        .map_err(|e| ReferenceError::Usage(e.to_string()))?;
    config.cache.max_bytes = 0;
    config.drift.enabled = false;
    config.usage.enabled = false;
    let server = crate::Server::bind(&config)
        .await
        .map_err(|e| ReferenceError::Serve(e.to_string()))?;
    let addr = server
        .local_addr()
        .map_err(|e| ReferenceError::Serve(e.to_string()))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let result = async {
        // Ready once the model is loaded.
        for _ in 0..600 {
            if let Ok(r) = client.get(format!("{base}/ready")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let mut features = std::collections::BTreeMap::<String, Vec<f64>>::new();
        let mut directions = None;
        // One input per request: its token count is the request's.
        for (i, text) in inputs.iter().enumerate() {
            let v: serde_json::Value = client
                .post(format!("{base}/v1/embeddings"))
                .json(&serde_json::json!({"model": args.model, "input": text, "truncate": true}))
                .send()
                .await
                .map_err(|e| ReferenceError::Serve(e.to_string()))?
                .json()
                .await
                .map_err(|e| ReferenceError::Serve(e.to_string()))?;
            let vector: Vec<f32> = v["data"][0]["embedding"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_f64())
                        .map(|x| x as f32)
                        .collect()
                })
                .filter(|v: &Vec<f32>| !v.is_empty())
                .ok_or_else(|| {
                    ReferenceError::Serve(format!("input {}: no embedding in {v}", i + 1))
                })?;
            let tokens = v["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize;
            let dirs = directions.get_or_insert_with(|| {
                (0..PROJECTIONS)
                    .map(|k| direction(k, vector.len()))
                    .collect::<Vec<_>>()
            });
            for (name, value) in embedding_features(tokens, &vector, dirs) {
                features.entry(name.to_string()).or_default().push(value);
            }
        }
        Ok::<_, ReferenceError>(features)
    }
    .await;
    let _ = stop.send(());
    let _ = task.await;
    let file = ReferenceFile {
        model: args.model.clone(),
        source: format!(
            "wattserve drift reference --inputs {}",
            args.inputs.display()
        ),
        features: result?,
    };
    let json = serde_json::to_string(&file).map_err(|e| ReferenceError::Serve(e.to_string()))?;
    std::fs::write(&args.out, json)
        .map_err(|e| ReferenceError::Usage(format!("cannot write {}: {e}", args.out.display())))?;
    Ok(inputs.len())
}

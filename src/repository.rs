//! The model repository: `models/<folder>/model.toml`, one folder per served model.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::batch::{EmbeddingLimits, GenerationLimits};
use crate::config::{parse_toml, ConfigError};
use crate::engine::encoder::pooling::PoolingMode;
use crate::engine::{DeviceSpec, Precision};
use crate::engine::{EmbeddingLoadOptions, GenerationLoadOptions};

/// What a model does, hence which endpoint serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// `/v1/embeddings`.
    Embedding,
    /// `/v1/chat/completions`, `/v1/completions`.
    Generation,
}

/// How the weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    /// Hugging Face layout: `*.safetensors` + `config.json` + `tokenizer.json`.
    Safetensors,
    /// A single GGUF file.
    Gguf,
}

/// Default active sequences of a generation model per sequence of its step.
const ACTIVE_PER_STEP: usize = 4;

/// `[batching]` of a model.toml: how the model's scheduler forms batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingSpec {
    /// Most inputs computed in one forward pass.
    pub max_batch_size: usize,
    /// Most padded tokens (longest sequence × count) in one forward pass.
    pub max_batch_tokens: usize,
    /// After the first job arrives, how long to wait for more before computing.
    pub max_queue_delay_ms: u64,
    /// Requests waiting for compute before new ones are refused with 503.
    pub queue_capacity: usize,
    /// Embedding models: inputs waiting for compute, all requests together, before new
    /// requests are refused with 503. Default 16384.
    pub max_queued_inputs: usize,
    /// Generation models: sequences in progress at most; steps take turns among them when
    /// more are active than `max_batch_size`. Default 4 × `max_batch_size`.
    pub max_active_seqs: Option<usize>,
    /// Generation models: bytes the running sequences' KV caches may hold together, each
    /// counted at its worst case (prompt + max tokens). Default 2 GiB.
    pub max_kv_bytes: usize,
    /// Generation models: longest a request waits for a decode slot before it is refused with
    /// 503 (`queue_timeout`). Default 30000 ms.
    pub max_queue_wait_ms: u64,
}

impl BatchingSpec {
    /// The embedding scheduler's limits.
    pub fn embedding_limits(&self) -> EmbeddingLimits {
        EmbeddingLimits {
            max_batch_size: self.max_batch_size,
            max_batch_tokens: self.max_batch_tokens,
            max_queue_delay: std::time::Duration::from_millis(self.max_queue_delay_ms),
            queue_capacity: self.queue_capacity,
            max_queued_inputs: self.max_queued_inputs,
            max_queue_wait: std::time::Duration::from_millis(self.max_queue_wait_ms),
        }
    }

    /// The continuous-batching scheduler's limits (`max_batch_size` sequences decode together;
    /// `max_queue_delay_ms` does not apply: a step starts as soon as there is work).
    pub fn generation_limits(&self) -> GenerationLimits {
        GenerationLimits {
            max_running_seqs: self.max_batch_size,
            max_active_seqs: self
                .max_active_seqs
                .unwrap_or(ACTIVE_PER_STEP * self.max_batch_size)
                .max(self.max_batch_size),
            max_batch_tokens: self.max_batch_tokens,
            queue_capacity: self.queue_capacity,
            max_kv_bytes: self.max_kv_bytes,
            max_queue_wait: std::time::Duration::from_millis(self.max_queue_wait_ms),
        }
    }
}

impl Default for BatchingSpec {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_tokens: 8192,
            max_queue_delay_ms: 5,
            queue_capacity: 1024,
            max_queued_inputs: 16384,
            max_active_seqs: None,
            max_kv_bytes: 2 << 30,
            max_queue_wait_ms: 30_000,
        }
    }
}

/// One `model.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The OpenAI `model` field clients send. Defaults to the folder name.
    #[serde(default)]
    pub name: String,
    /// embedding | generation.
    pub task: Task,
    /// safetensors | gguf.
    pub format: WeightFormat,
    /// Weights folder (or file), relative to the model folder or absolute. Default `weights`.
    #[serde(default = "default_weights_path")]
    pub path: PathBuf,
    /// f32 | f16 | bf16 | int8 (encoders); gguf | int8 | f32 (GGUF decoders). Default f32.
    #[serde(default)]
    pub precision: Precision,
    /// cpu | cuda | cuda:N. Default cpu.
    #[serde(default)]
    pub device: DeviceSpec,
    /// The device whose energy source meters this model; default `device`. A test and
    /// diagnostic setting: a model computing on the CPU with `metered_device = "cuda:1"` is
    /// charged what GPU 1's NVML reports, energy it did not spend (used to exercise the NVML
    /// path end to end on machines without a GPU, with a stand-in NVML library).
    #[serde(default)]
    pub metered_device: Option<DeviceSpec>,
    /// Embeddings: mean | cls | max; default from the sentence-transformers files.
    #[serde(default)]
    pub pooling: Option<PoolingMode>,
    /// Embeddings: L2-normalize; default from the sentence-transformers files.
    #[serde(default)]
    pub normalize: Option<bool>,
    /// Token limit per input (embeddings) or per sequence, prompt plus completion (generation);
    /// default from the model's own files.
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Scheduler settings.
    #[serde(default)]
    pub batching: BatchingSpec,
}

fn default_weights_path() -> PathBuf {
    PathBuf::from("weights")
}

/// A model.toml found in the repository, with its location resolved.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// The parsed file.
    pub spec: ModelSpec,
    /// The model.toml itself (named in error messages).
    pub file: PathBuf,
    /// `spec.path` resolved against the model folder.
    pub weights: PathBuf,
    /// Whether this model is metered (when `[energy] enabled`); the benchmark turns it off for a
    /// variant to measure the metering overhead.
    pub metered: bool,
}

impl ModelEntry {
    /// The engine's load options for this embedding model.
    pub fn embedding_load_options(&self) -> EmbeddingLoadOptions {
        EmbeddingLoadOptions {
            weights_dir: self.weights.clone(),
            precision: self.spec.precision,
            device: self.spec.device,
            pooling: self.spec.pooling,
            normalize: self.spec.normalize,
            max_tokens: self.spec.max_tokens,
        }
    }

    /// The engine's load options for this generation model (`max_tokens` caps the context).
    pub fn generation_load_options(&self) -> GenerationLoadOptions {
        GenerationLoadOptions {
            path: self.weights.clone(),
            precision: self.spec.precision,
            device: self.spec.device,
            max_context: self.spec.max_tokens,
        }
    }
}

/// Reads `models_dir/<folder>/model.toml` for each folder in `selected` (every folder that has
/// one when `selected` is empty), validates them and checks that names are unique.
pub fn discover(models_dir: &Path, selected: &[String]) -> Result<Vec<ModelEntry>, ConfigError> {
    let invalid = |field: &str, message: String| ConfigError::Invalid {
        source_name: models_dir.display().to_string(),
        field: field.to_string(),
        message,
    };
    if !models_dir.is_dir() {
        return Err(invalid(
            "server.models_dir",
            "is not a directory (set --models-dir or WATTSERVE_MODELS_DIR)".into(),
        ));
    }
    let folders: Vec<String> = if selected.is_empty() {
        let mut all: Vec<String> = std::fs::read_dir(models_dir)
            .map_err(|source| ConfigError::Read {
                path: models_dir.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("model.toml").is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        all.sort();
        all
    } else {
        selected.to_vec()
    };
    if folders.is_empty() {
        return Err(invalid(
            "server.models",
            "no model folder with a model.toml was found".into(),
        ));
    }
    let mut entries: Vec<ModelEntry> = Vec::with_capacity(folders.len());
    for folder in folders {
        let file = models_dir.join(&folder).join("model.toml");
        if !file.is_file() {
            return Err(invalid(
                "server.models",
                format!("names `{folder}` but {} does not exist", file.display()),
            ));
        }
        let entry = read_entry(&file, &folder)?;
        if let Some(dup) = entries.iter().find(|e| e.spec.name == entry.spec.name) {
            return Err(ConfigError::Invalid {
                source_name: file.display().to_string(),
                field: "name".into(),
                message: format!(
                    "`{}` is already used by {}",
                    entry.spec.name,
                    dup.file.display()
                ),
            });
        }
        entries.push(entry);
    }
    Ok(entries)
}

fn read_entry(file: &Path, folder: &str) -> Result<ModelEntry, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let mut spec: ModelSpec = parse_toml(file, &text)?;
    if spec.name.is_empty() {
        spec.name = folder.to_string();
    }
    let invalid = |field: &str, message: &str| ConfigError::Invalid {
        source_name: file.display().to_string(),
        field: field.to_string(),
        message: message.to_string(),
    };
    let b = &spec.batching;
    if b.max_batch_size == 0 {
        return Err(invalid("batching.max_batch_size", "must be at least 1"));
    }
    if b.max_batch_tokens == 0 {
        return Err(invalid("batching.max_batch_tokens", "must be at least 1"));
    }
    if b.queue_capacity == 0 {
        return Err(invalid("batching.queue_capacity", "must be at least 1"));
    }
    if spec.batching.max_queued_inputs == 0 {
        return Err(invalid("batching.max_queued_inputs", "must be at least 1"));
    }
    if spec.batching.max_kv_bytes == 0 {
        return Err(invalid("batching.max_kv_bytes", "must be at least 1"));
    }
    if spec.max_tokens == Some(0) {
        return Err(invalid("max_tokens", "must be at least 1"));
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    let weights = if spec.path.is_absolute() {
        spec.path.clone()
    } else {
        dir.join(&spec.path)
    };
    Ok(ModelEntry {
        spec,
        file: file.to_path_buf(),
        weights,
        metered: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (folder, text) in files {
            std::fs::create_dir_all(dir.path().join(folder)).unwrap();
            std::fs::write(dir.path().join(folder).join("model.toml"), text).unwrap();
        }
        dir
    }

    #[test]
    fn discovers_all_folders_with_defaults() {
        let dir = repo(&[
            ("b", "task = \"embedding\"\nformat = \"safetensors\"\n"),
            ("a", "name = \"alpha\"\ntask = \"embedding\"\nformat = \"safetensors\"\nprecision = \"f16\"\n"),
        ]);
        std::fs::create_dir(dir.path().join("no-model-here")).unwrap();
        let e = discover(dir.path(), &[]).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].spec.name, "alpha");
        assert_eq!(e[0].spec.precision, Precision::F16);
        assert_eq!(e[1].spec.name, "b");
        assert_eq!(e[1].spec.batching.max_batch_size, 32);
        assert_eq!(e[1].weights, dir.path().join("b").join("weights"));
    }

    #[test]
    fn unknown_model_and_duplicate_names_are_errors() {
        let dir = repo(&[
            (
                "a",
                "name = \"x\"\ntask = \"embedding\"\nformat = \"safetensors\"\n",
            ),
            (
                "b",
                "name = \"x\"\ntask = \"embedding\"\nformat = \"safetensors\"\n",
            ),
        ]);
        let msg = discover(dir.path(), &["zzz".into()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("zzz"), "{msg}");
        let msg = discover(dir.path(), &[]).unwrap_err().to_string();
        assert!(msg.contains("already used"), "{msg}");
    }

    #[test]
    fn bad_field_names_the_file_and_field() {
        let dir = repo(&[(
            "a",
            "task = \"embedding\"\nformat = \"safetensors\"\nprecision = \"fp8\"\n",
        )]);
        let msg = discover(dir.path(), &[]).unwrap_err().to_string();
        assert!(msg.contains("model.toml:3"), "{msg}");
        assert!(msg.contains("precision"), "{msg}");
        let dir = repo(&[(
            "a",
            "task = \"embedding\"\nformat = \"safetensors\"\n[batching]\nmax_batch_size = 0\n",
        )]);
        let msg = discover(dir.path(), &[]).unwrap_err().to_string();
        assert!(msg.contains("batching.max_batch_size"), "{msg}");
    }
}

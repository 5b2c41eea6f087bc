//! The models this process serves: each loaded from its model.toml into an engine behind a
//! scheduler, plus what the API needs to validate requests without touching the engine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::HashMap;

use crate::batch::EmbeddingScheduler;
use crate::config::Config;
use crate::engine::{DeviceSpec, EmbeddingModel, EmbeddingTokenizer, EngineError, Precision};
use crate::meter::pricing::Pricing;
use crate::meter::source::SourceError;
use crate::meter::{select_source, Meter};
use crate::repository::{ModelEntry, Task, WeightFormat};

/// A model that failed to load, with the file that configured it.
#[derive(Debug, thiserror::Error)]
#[error("model `{model}` ({file}): {source}")]
pub struct LoadError {
    /// The model's name.
    pub model: String,
    /// Its model.toml.
    pub file: PathBuf,
    /// What went wrong.
    pub source: Box<EngineError>,
}

/// One served embedding model.
pub struct ServedModel {
    /// The OpenAI `model` name.
    pub name: String,
    /// Precision it runs at (`x-precision`).
    pub precision: Precision,
    /// Device it runs on.
    pub device: DeviceSpec,
    /// Embedding width.
    pub dimensions: usize,
    /// Tokenizer for request validation (runs on the blocking pool).
    pub tokenizer: EmbeddingTokenizer,
    /// The compute queue.
    pub scheduler: EmbeddingScheduler,
    /// Unix time the model became ready (`created` in /v1/models).
    pub created: u64,
    /// How long loading took.
    pub load_time: Duration,
    /// The meter of its device; `None` when metering is off.
    pub meter: Option<Arc<Meter>>,
    /// Bytes of weights held in the served precision.
    pub weight_bytes: usize,
}

/// All served models by name.
#[derive(Default)]
pub struct Registry {
    models: BTreeMap<String, Arc<ServedModel>>,
}

impl Registry {
    /// Loads every entry (blocking: call from a blocking thread). Fails on the first model that
    /// cannot be loaded.
    pub fn load(entries: &[ModelEntry], config: &Config) -> Result<Self, LoadError> {
        let mut models = BTreeMap::new();
        let mut meters: HashMap<DeviceSpec, Arc<Meter>> = HashMap::new();
        let pricing = Arc::new(Pricing::from_config(&config.carbon, &config.cost));
        for entry in entries {
            let meter =
                if config.energy.enabled && entry.metered {
                    let meter = meter_for(entry.spec.device, config, &pricing, &mut meters)
                        .map_err(|e| LoadError {
                            model: entry.spec.name.clone(),
                            file: entry.file.clone(),
                            source: Box::new(EngineError::Unsupported(format!(
                                "energy.source = \"{}\": {e}",
                                config.energy.source.as_str()
                            ))),
                        })?;
                    Some(meter)
                } else {
                    None
                };
            let served = load_one(entry, meter).map_err(|source| LoadError {
                model: entry.spec.name.clone(),
                file: entry.file.clone(),
                source: Box::new(source),
            })?;
            models.insert(served.name.clone(), Arc::new(served));
        }
        Ok(Self { models })
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<ServedModel>> {
        self.models.get(name)
    }

    /// All models, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ServedModel>> {
        self.models.values()
    }

    /// Served model names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }
}

/// The device's meter: the one already started for it, else a new one from `energy.source`.
fn meter_for(
    device: DeviceSpec,
    config: &Config,
    pricing: &Arc<Pricing>,
    meters: &mut HashMap<DeviceSpec, Arc<Meter>>,
) -> Result<Arc<Meter>, SourceError> {
    if let Some(m) = meters.get(&device) {
        return Ok(m.clone());
    }
    let (source, skipped) = select_source(&config.energy, device)?;
    for line in skipped {
        tracing::warn!("{line}");
    }
    let meter = Meter::start(source, &config.energy, pricing.clone());
    tracing::info!("energy: metering {device} with {}", meter.method());
    meters.insert(device, meter.clone());
    Ok(meter)
}

fn load_one(entry: &ModelEntry, meter: Option<Arc<Meter>>) -> Result<ServedModel, EngineError> {
    let spec = &entry.spec;
    let start = Instant::now();
    match (spec.task, spec.format) {
        (Task::Embedding, WeightFormat::Safetensors) => {}
        (Task::Embedding, WeightFormat::Gguf) => {
            return Err(EngineError::Unsupported(
                "format = \"gguf\" is not supported for embedding models (use safetensors)".into(),
            ))
        }
        (Task::Generation, _) => {
            return Err(EngineError::Unsupported(
                "task = \"generation\" is not supported by this version of wattserve yet".into(),
            ))
        }
    }
    if !entry.weights.is_dir() {
        return Err(EngineError::Config {
            path: entry.weights.clone(),
            message:
                "weights folder is missing (path = ...; run models/fetch.sh for the default models)"
                    .into(),
        });
    }
    let model = EmbeddingModel::load(&entry.embedding_load_options())?;
    let tokenizer = model.tokenizer().clone();
    let dimensions = model.dimensions();
    let weight_bytes = model.weight_bytes();
    let scheduler =
        EmbeddingScheduler::start(&spec.name, Box::new(model), &spec.batching, meter.clone())
            .map_err(|source| EngineError::Io {
                path: entry.file.clone(),
                source,
            })?;
    let load_time = start.elapsed();
    tracing::info!(
        model = %spec.name,
        precision = %spec.precision,
        device = %spec.device,
        dimensions,
        max_tokens = tokenizer.max_tokens(),
        load_ms = load_time.as_millis() as u64,
        weights_mib = format!("{:.1}", weight_bytes as f64 / (1024.0 * 1024.0)),
        "model loaded"
    );
    Ok(ServedModel {
        name: spec.name.clone(),
        precision: spec.precision,
        device: spec.device,
        dimensions,
        tokenizer,
        scheduler,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        load_time,
        meter,
        weight_bytes,
    })
}

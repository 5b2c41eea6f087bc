//! The models this process serves: each loaded from its model.toml into an engine behind a
//! scheduler, plus what the API needs to validate requests without touching the engine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::HashMap;

use crate::batch::{EmbeddingScheduler, GenerationScheduler};
use crate::config::Config;
use crate::engine::GenerationModel;
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

/// One served model.
pub struct ServedModel {
    /// The OpenAI `model` name.
    pub name: String,
    /// Precision it runs at (`x-precision`).
    pub precision: Precision,
    /// Device it runs on.
    pub device: DeviceSpec,
    /// What it does, with what its endpoints need.
    pub kind: ModelKind,
    /// Unix time the model became ready (`created` in /v1/models).
    pub created: u64,
    /// How long loading took.
    pub load_time: Duration,
    /// The meter of its device; `None` when metering is off.
    pub meter: Option<Arc<Meter>>,
    /// Bytes of weights held in the served precision.
    pub weight_bytes: usize,
    /// Joules and thousands of units of work (input tokens for embeddings, output tokens for
    /// generation) of the requests settled so far: the model's energy label.
    pub energy_so_far: std::sync::Mutex<(f64, f64)>,
}

/// What a served model does.
pub enum ModelKind {
    /// An encoder behind `/v1/embeddings`.
    Embedding(EmbeddingServing),
    /// A decoder behind `/v1/chat/completions` and `/v1/completions`.
    Generation(GenerationServing),
}

/// What `/v1/embeddings` needs of a model.
pub struct EmbeddingServing {
    /// Embedding width.
    pub dimensions: usize,
    /// Tokenizer for request validation (runs on the blocking pool).
    pub tokenizer: EmbeddingTokenizer,
    /// The compute queue.
    pub scheduler: EmbeddingScheduler,
}

/// What the completion endpoints need of a model.
pub struct GenerationServing {
    /// Tokenizer, chat template and limits (the decoder itself runs on the scheduler's thread).
    pub engine: Arc<GenerationModel>,
    /// The continuous-batching loop.
    pub scheduler: GenerationScheduler,
}

impl ServedModel {
    /// Adds a settled request's joules and work to the model's totals.
    pub fn add_energy(&self, joules: f64, work: crate::meter::class::Work) {
        let k = match work {
            crate::meter::class::Work::Embedding { input_tokens } => input_tokens,
            crate::meter::class::Work::Generation { output_tokens } => output_tokens,
        } as f64
            / 1000.0;
        if let Ok(mut e) = self.energy_so_far.lock() {
            e.0 += joules;
            e.1 += k;
        }
    }

    /// The model's energy class over the requests settled so far, and its joules per 1,000
    /// units of work; `None` before any, or when not metered.
    pub fn energy_label(&self) -> Option<(&'static str, f64)> {
        let meter = self.meter.as_ref()?;
        let (joules, k) = *self.energy_so_far.lock().ok()?;
        if k <= 0.0 {
            return None;
        }
        let work = match self.kind {
            ModelKind::Embedding(_) => crate::meter::class::Work::Embedding { input_tokens: 1000 },
            ModelKind::Generation(_) => crate::meter::class::Work::Generation {
                output_tokens: 1000,
            },
        };
        let per_1k = joules / k;
        Some((meter.pricing().classes.energy_class(work, per_1k)?, per_1k))
    }

    /// The embedding side, when this is an embedding model.
    pub fn embedding(&self) -> Option<&EmbeddingServing> {
        match &self.kind {
            ModelKind::Embedding(e) => Some(e),
            ModelKind::Generation(_) => None,
        }
    }

    /// The generation side, when this is a generation model.
    pub fn generation(&self) -> Option<&GenerationServing> {
        match &self.kind {
            ModelKind::Generation(g) => Some(g),
            ModelKind::Embedding(_) => None,
        }
    }

    /// `embedding` or `generation` (in `/v1/models`).
    pub fn task(&self) -> &'static str {
        match &self.kind {
            ModelKind::Embedding(_) => "embedding",
            ModelKind::Generation(_) => "generation",
        }
    }

    /// Most tokens one input may have: an embedding input, or a prompt plus its completion.
    pub fn max_input_tokens(&self) -> usize {
        match &self.kind {
            ModelKind::Embedding(e) => e.tokenizer.max_tokens(),
            ModelKind::Generation(g) => g.engine.context_len(),
        }
    }
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
        let pricing = Arc::new(
            Pricing::from_config(&config.carbon, &config.cost)
                .with_classes(config.energy_class.clone()),
        );
        for entry in entries {
            let meter = if config.energy.enabled && entry.metered {
                let meter = meter_for(
                    entry.spec.metered_device.unwrap_or(entry.spec.device),
                    config,
                    &pricing,
                    &mut meters,
                )
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
            crate::metrics::set_model_info(
                &served.name,
                served.precision.as_str(),
                &served.device.to_string(),
                served.task(),
                served.meter.as_ref().map_or("none", |m| m.method()),
            );
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

    /// Models whose compute thread has stopped: they cannot serve any more.
    pub fn dead_models(&self) -> Vec<String> {
        self.models
            .values()
            .filter(|m| match &m.kind {
                ModelKind::Embedding(e) => !e.scheduler.is_alive(),
                ModelKind::Generation(g) => !g.scheduler.is_alive(),
            })
            .map(|m| m.name.clone())
            .collect()
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
    let (kind, weight_bytes) = match (spec.task, spec.format) {
        (Task::Embedding, WeightFormat::Safetensors) => load_embedding(entry, &meter)?,
        (Task::Embedding, WeightFormat::Gguf) => {
            return Err(EngineError::Unsupported(
                "format = \"gguf\" is not supported for embedding models (use safetensors)".into(),
            ))
        }
        (Task::Generation, WeightFormat::Gguf) => load_generation(entry, &meter)?,
        (Task::Generation, WeightFormat::Safetensors) => {
            return Err(EngineError::Unsupported(
                "generation models load from GGUF (format = \"gguf\")".into(),
            ))
        }
    };
    let load_time = start.elapsed();
    let served = ServedModel {
        name: spec.name.clone(),
        precision: spec.precision,
        device: spec.device,
        kind,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        load_time,
        meter,
        weight_bytes,
        energy_so_far: std::sync::Mutex::new((0.0, 0.0)),
    };
    tracing::info!(
        model = %spec.name,
        task = served.task(),
        precision = %spec.precision,
        device = %spec.device,
        max_tokens = served.max_input_tokens(),
        load_ms = load_time.as_millis() as u64,
        weights_mib = format!("{:.1}", weight_bytes as f64 / (1024.0 * 1024.0)),
        "model loaded"
    );
    Ok(served)
}

fn load_embedding(
    entry: &ModelEntry,
    meter: &Option<Arc<Meter>>,
) -> Result<(ModelKind, usize), EngineError> {
    let spec = &entry.spec;
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
    let scheduler = EmbeddingScheduler::start(
        &spec.name,
        Box::new(model),
        spec.batching.embedding_limits(),
        meter.clone(),
    )
    .map_err(|source| EngineError::Io {
        path: entry.file.clone(),
        source,
    })?;
    let serving = EmbeddingServing {
        dimensions,
        tokenizer,
        scheduler,
    };
    Ok((ModelKind::Embedding(serving), weight_bytes))
}

fn load_generation(
    entry: &ModelEntry,
    meter: &Option<Arc<Meter>>,
) -> Result<(ModelKind, usize), EngineError> {
    let spec = &entry.spec;
    let engine = Arc::new(GenerationModel::load(&entry.generation_load_options())?);
    let weight_bytes = engine.model().weight_bytes();
    let limits = spec.batching.generation_limits();
    let scheduler = GenerationScheduler::start(&spec.name, engine.clone(), limits, meter.clone())
        .map_err(|source| EngineError::Io {
        path: entry.file.clone(),
        source,
    })?;
    Ok((
        ModelKind::Generation(GenerationServing { engine, scheduler }),
        weight_bytes,
    ))
}

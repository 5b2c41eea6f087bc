//! An embedding model as served: tokenizer + encoder + pooling, loaded from one model folder.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::bert::{pad_batch, BertConfig, BertEncoder};
use super::pooling::{Pooling, PoolingMode};
use super::tokenizer::EmbeddingTokenizer;
use crate::engine::{read_json, DeviceSpec, Embedder, EngineError, Precision};

/// How to load an [`EmbeddingModel`]; model.toml fields resolved to values.
#[derive(Debug, Clone)]
pub struct EmbeddingLoadOptions {
    /// Folder with config.json, tokenizer.json, *.safetensors and the sentence-transformers files.
    pub weights_dir: PathBuf,
    /// Precision the weights are converted to at load.
    pub precision: Precision,
    /// Device to run on.
    pub device: DeviceSpec,
    /// Pooling mode; `None` = from the sentence-transformers files.
    pub pooling: Option<PoolingMode>,
    /// L2 normalization; `None` = from the sentence-transformers files (a `Normalize` module).
    pub normalize: Option<bool>,
    /// Token limit; `None` = sentence_bert_config.json's `max_seq_length`, else the position
    /// table size.
    pub max_tokens: Option<usize>,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct ModelType {
    model_type: Option<String>,
}

/// A loaded sentence-embedding model (BERT family).
pub struct EmbeddingModel {
    encoder: BertEncoder,
    pooling: Pooling,
    tokenizer: EmbeddingTokenizer,
    precision: Precision,
}

impl EmbeddingModel {
    /// Loads everything from `opts.weights_dir`, naming the offending file in every error.
    pub fn load(opts: &EmbeddingLoadOptions) -> Result<Self, EngineError> {
        let dir = &opts.weights_dir;
        let config_path = dir.join("config.json");
        let kind: ModelType = read_json(&config_path)?;
        if let Some(t) = kind.model_type.as_deref() {
            if t != "bert" {
                return Err(EngineError::Config {
                    path: config_path,
                    message: format!("model_type `{t}` is not supported (bert only)"),
                });
            }
        }
        let cfg: BertConfig = read_json(&config_path)?;

        let st_pooling = Pooling::from_sentence_transformers(dir)?;
        let pooling = match (opts.pooling, st_pooling) {
            (Some(mode), st) => Pooling {
                mode,
                normalize: opts.normalize.or(st.map(|p| p.normalize)).unwrap_or(false),
            },
            (None, Some(st)) => Pooling {
                mode: st.mode,
                normalize: opts.normalize.unwrap_or(st.normalize),
            },
            (None, None) => {
                return Err(EngineError::Config {
                    path: dir.join("modules.json"),
                    message: "no sentence-transformers pooling config; set `pooling` in model.toml"
                        .into(),
                })
            }
        };

        let st_path = dir.join("sentence_bert_config.json");
        let st_max = if st_path.exists() {
            read_json::<SentenceBertConfig>(&st_path)?.max_seq_length
        } else {
            None
        };
        let max_tokens = opts
            .max_tokens
            .or(st_max)
            .unwrap_or(cfg.max_position_embeddings)
            .min(cfg.max_position_embeddings);
        let tokenizer = EmbeddingTokenizer::from_file(&dir.join("tokenizer.json"), max_tokens)?;

        if opts.precision == Precision::Gguf {
            return Err(EngineError::Unsupported(
                "precision gguf applies to GGUF decoders only; embedding models take f32, f16, bf16 or int8".into(),
            ));
        }
        let device = opts.device.open()?;
        let vb = load_safetensors(dir, &device)?;
        let encoder = BertEncoder::load(&cfg, opts.precision, vb)?;
        Ok(Self {
            encoder,
            pooling,
            tokenizer,
            precision: opts.precision,
        })
    }

    /// The tokenizer, for handlers that validate and tokenize before queuing.
    pub fn tokenizer(&self) -> &EmbeddingTokenizer {
        &self.tokenizer
    }

    /// Width of the embeddings.
    pub fn dimensions(&self) -> usize {
        self.encoder.hidden_size()
    }

    /// The precision the model runs at.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes of weights held in the served precision.
    pub fn weight_bytes(&self) -> usize {
        self.encoder.weight_bytes()
    }

    /// The pooling applied.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Embeds texts in one padded batch, truncating inputs over the limit (as sentence-transformers
    /// does). For offline use, tests and benchmarks; the server tokenizes per request instead.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EngineError> {
        let ids = texts
            .iter()
            .map(|t| self.tokenizer.encode(t, true))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        self.embed_tokens(&refs)
    }

    /// The batch layout used by [`Embedder::embed_tokens`] on this model's device.
    pub fn default_layout(&self) -> BatchLayout {
        if self.encoder.device().is_cpu() {
            BatchLayout::Packed
        } else {
            BatchLayout::Padded
        }
    }

    /// Embeds token sequences in one forward pass with an explicit layout.
    pub fn embed_tokens_with(
        &self,
        sequences: &[&[u32]],
        layout: BatchLayout,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        if sequences.is_empty() {
            return Ok(Vec::new());
        }
        let pooled = match layout {
            BatchLayout::Padded => {
                let (ids, mask) =
                    pad_batch(sequences, self.tokenizer.pad_id(), self.encoder.device())?;
                let hidden = self.encoder.forward_padded(&ids, &mask)?; // (B, T, H) f32
                self.pooling.apply(&hidden, &mask)? // (B, H)
            }
            BatchLayout::Packed => {
                // The whole pass runs on one of rayon's threads: its many small parallel steps
                // then share work with the other pool threads directly, instead of this thread
                // handing each step to the pool and sleeping until it is done (two context
                // switches per step, a large share of a short batch's time).
                let forward = || -> Result<Tensor, EngineError> {
                    let (hidden, spans) = self.encoder.forward_packed(sequences)?; // (N, H) f32
                    self.pooling.apply_packed(&hidden, &spans) // (B, H)
                };
                if self.encoder.device().is_cpu() && rayon::current_thread_index().is_none() {
                    // `scope` runs its closure on a pool thread and returns its result.
                    rayon::scope(|_| forward())?
                } else {
                    forward()?
                }
            }
        };
        Ok(pooled.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}

/// How a batch of sequences of different lengths is laid out for the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchLayout {
    /// Padded to the longest, with an attention mask (default on GPUs).
    Padded,
    /// Packed without padding, attention per sequence (default on CPUs: padded tokens cost as
    /// much compute as real ones there).
    Packed,
}

impl Embedder for EmbeddingModel {
    fn embed_tokens(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>, EngineError> {
        self.embed_tokens_with(sequences, self.default_layout())
    }
}

/// Reads every `*.safetensors` file of the folder into memory on `device` (weights are copied,
/// not memory-mapped, so that a file replaced on disk cannot change a running model).
fn load_safetensors(dir: &Path, device: &Device) -> Result<VarBuilder<'static>, EngineError> {
    let entries = std::fs::read_dir(dir).map_err(|source| EngineError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EngineError::Config {
            path: dir.to_path_buf(),
            message: "no *.safetensors weights in this folder (run models/fetch.sh?)".into(),
        });
    }
    let mut tensors = std::collections::HashMap::new();
    for file in &files {
        let loaded =
            candle_core::safetensors::load(file, device).map_err(|e| EngineError::Config {
                path: file.clone(),
                message: e.to_string(),
            })?;
        tensors.extend(loaded);
    }
    Ok(VarBuilder::from_tensors(tensors, DType::F32, device))
}

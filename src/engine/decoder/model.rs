//! A servable text-generation model: the GGUF decoder with the tokenizer and chat template read
//! from the same file, and the limits derived from it.

use std::path::{Path, PathBuf};

use candle_core::Tensor;

use super::llama::{KvCache, Llama};
use crate::engine::gguf::{ChatMessage, ChatTemplate, GenerationTokenizer, GgufFile};
use crate::engine::{Decoder, DeviceSpec, EngineError, Logits, Precision, SeqInput};

/// How to load a generation model (from its model.toml).
#[derive(Debug, Clone)]
pub struct GenerationLoadOptions {
    /// The GGUF file, or a folder holding exactly one.
    pub path: PathBuf,
    /// gguf | int8 | f32.
    pub precision: Precision,
    /// Where it runs.
    pub device: DeviceSpec,
    /// Cap on prompt + completion tokens per sequence (default: the model's context length).
    pub max_context: Option<usize>,
}

/// Why a conversation could not be turned into a prompt: the client's to fix (a 400), never the
/// server's, so it is kept apart from [`EngineError`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderChatError {
    /// The GGUF file carries no chat template.
    #[error("this model has no chat template; use /v1/completions")]
    NoTemplate,
    /// The template rejected the messages (e.g. a role it does not know); its message says why.
    #[error("{0}")]
    Rejected(String),
    /// The tokenizer failed on the rendered prompt.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// The decoder, its tokenizer and chat template, and the context limit it is served with.
#[derive(Debug)]
pub struct GenerationModel {
    model: Llama,
    tokenizer: GenerationTokenizer,
    template: Option<ChatTemplate>,
    /// The chat template's Jinja source, as the file stores it.
    template_source: Option<String>,
    context_len: usize,
    file: PathBuf,
}

impl GenerationModel {
    /// Loads everything from the GGUF at `opts.path`.
    pub fn load(opts: &GenerationLoadOptions) -> Result<Self, EngineError> {
        let file = resolve_gguf(&opts.path)?;
        let mut gguf = GgufFile::open(&file)?;
        let tokenizer = GenerationTokenizer::from_gguf(&gguf)?;
        let template_source = if gguf.has("tokenizer.chat_template") {
            Some(gguf.str("tokenizer.chat_template")?.to_string())
        } else {
            None
        };
        let template = if gguf.has("tokenizer.chat_template") {
            let text =
                |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
            Some(ChatTemplate::new(
                gguf.str("tokenizer.chat_template")?,
                &text(tokenizer.bos()),
                &text(Some(tokenizer.eos())),
            )?)
        } else {
            None
        };
        let device = opts.device.open()?;
        let model = Llama::load(&mut gguf, opts.precision, &device)?;
        let native = model.config().context_len;
        let context_len = match opts.max_context {
            Some(0) => {
                return Err(EngineError::Unsupported(
                    "max_tokens (the context cap) must be at least 1".into(),
                ))
            }
            Some(n) => n.min(native),
            None => native,
        };
        Ok(Self {
            model,
            tokenizer,
            template,
            template_source,
            context_len,
            file,
        })
    }

    /// The decoder.
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &GenerationTokenizer {
        &self.tokenizer
    }

    /// The chat template's Jinja source, when the model has one (for clients that render
    /// conversations themselves).
    pub fn chat_template_source(&self) -> Option<&str> {
        self.template_source.as_deref()
    }

    /// The GGUF file it was loaded from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Most tokens (prompt + completion) one sequence may hold.
    pub fn context_len(&self) -> usize {
        self.context_len
    }

    /// The prompt text for a conversation; an error (for a 400) when the model has no chat
    /// template or the template rejects the messages.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, RenderChatError> {
        match &self.template {
            Some(t) => t.render(messages, true).map_err(RenderChatError::Rejected),
            None => Err(RenderChatError::NoTemplate),
        }
    }

    /// The prompt token ids for a conversation: the chat template's own markers are special
    /// tokens, while control-token text inside a message's content (`<|im_start|>` written by
    /// a user) is tokenized as the plain text it is, so no message can open a turn of another
    /// role. A template that transforms the contents (so that they cannot be located in its
    /// output) falls back to tokenizing the whole rendered text, logged once.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, RenderChatError> {
        let template = self.template.as_ref().ok_or(RenderChatError::NoTemplate)?;
        let pieces = template
            .render_pieces(messages, true)
            .map_err(RenderChatError::Rejected)?;
        let ids = match pieces {
            Some(pieces) => {
                let pieces: Vec<(&str, bool)> = pieces
                    .iter()
                    .map(|(t, trusted)| (t.as_str(), *trusted))
                    .collect();
                self.tokenizer.encode_pieces(&pieces)
            }
            None => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        file = %self.file.display(),
                        "the chat template transforms message contents: special tokens written \
                         in messages cannot be told apart and are parsed as such"
                    )
                });
                let text = template
                    .render(messages, true)
                    .map_err(RenderChatError::Rejected)?;
                self.tokenizer.encode(&text)
            }
        };
        ids.map_err(|e| RenderChatError::Tokenizer(e.to_string()))
    }

    /// Greedy decoding of one sequence alone: up to `max_new` tokens after `prompt`, stopping
    /// after a stop token (which is included). For tests and the offline benchmark; serving goes
    /// through the continuous-batching scheduler.
    pub fn generate_greedy(&self, prompt: &[u32], max_new: usize) -> Result<Vec<u32>, EngineError> {
        let mut cache: KvCache = self.model.new_cache(prompt.len() + max_new);
        let mut out = Vec::with_capacity(max_new);
        let mut next = prompt.to_vec();
        while out.len() < max_new {
            let logits = self.model.forward(&mut [SeqInput {
                tokens: &next,
                cache: &mut cache,
                logits: Logits::Last,
            }])?;
            let token = argmax(&logits.squeeze(0)?)?;
            out.push(token);
            if self.tokenizer.is_stop(token) {
                break;
            }
            next = vec![token];
        }
        Ok(out)
    }
}

impl Decoder for GenerationModel {
    type Cache = KvCache;

    fn new_cache(&self, capacity: usize) -> KvCache {
        self.model.new_cache(capacity)
    }

    fn step(&self, inputs: &mut [SeqInput<'_, KvCache>]) -> Result<Vec<Vec<f32>>, EngineError> {
        Ok(self.model.forward(inputs)?.to_vec2::<f32>()?)
    }

    fn context_len(&self) -> usize {
        self.context_len
    }

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn cache_bytes_per_token(&self) -> usize {
        let cfg = self.model.config();
        cfg.n_layer * 2 * cfg.kv_dim() * std::mem::size_of::<f32>()
    }

    fn is_stop(&self, token: u32) -> bool {
        self.tokenizer.is_stop(token)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.tokenizer.decode(ids, true)
    }

    fn token_bytes(&self, token: u32) -> Vec<u8> {
        self.tokenizer.token_bytes(token)
    }
}

/// The id of the largest logit of a `(vocab)` tensor (the first one on ties).
pub fn argmax(logits: &Tensor) -> Result<u32, EngineError> {
    Ok(crate::engine::sampling::argmax(&logits.to_vec1::<f32>()?))
}

/// `path` itself when it is a file, else the one `*.gguf` file in the folder `path`.
fn resolve_gguf(path: &Path) -> Result<PathBuf, EngineError> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.exists() {
        return Err(EngineError::Config {
            path: path.to_path_buf(),
            message: "does not exist (path = ...; run models/fetch.sh for the default models)"
                .into(),
        });
    }
    let entries = std::fs::read_dir(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(EngineError::Config {
            path: path.to_path_buf(),
            message: "holds no .gguf file (run models/fetch.sh)".into(),
        }),
        n => Err(EngineError::Config {
            path: path.to_path_buf(),
            message: format!("holds {n} .gguf files; name one in model.toml's `path`"),
        }),
    }
}

//! The tokenizer of a GGUF decoder, built from the file's own `tokenizer.ggml.*` metadata with the
//! `tokenizers` crate: byte-level BPE from `tokens` + `merges`, the pre-tokenizer named by
//! `tokenizer.ggml.pre`, control tokens (`<|im_start|>`, ...) parsed as single tokens, and
//! streaming detokenization that never splits a UTF-8 character.
//!
//! Built by hand rather than with a generic GGUF→HF conversion because that adds a prefix space
//! for SmolLM2 and does not round-trip (see the tests).

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use super::reader::GgufFile;
use crate::engine::EngineError;

/// GGUF `token_type` of control tokens (bos, eos, chat markers).
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF `token_type` of user-defined special tokens.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Text ↔ token ids for a GGUF decoder, plus its special ids.
pub struct GenerationTokenizer {
    inner: Tokenizer,
    /// The same tokenizer with special-token parsing off: `<|im_start|>` written in a message
    /// is three ordinary tokens of text, not the control token.
    plain: Tokenizer,
    bos: Option<u32>,
    eos: u32,
    /// Tokens that end a sequence: eos and, when present, `<|endoftext|>`/`<|eot_id|>`-style
    /// end-of-turn tokens.
    stop_ids: Vec<u32>,
    add_bos: bool,
    special: Vec<bool>,
}

impl std::fmt::Debug for GenerationTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationTokenizer")
            .field("vocab", &self.special.len())
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

impl GenerationTokenizer {
    /// Builds the tokenizer from `file`'s metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, EngineError> {
        let model = file.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(EngineError::Unsupported(format!(
                "{}: tokenizer model `{model}` is not supported (byte-level BPE `gpt2` only)",
                file.path().display()
            )));
        }
        let tokens = file.strings("tokenizer.ggml.tokens")?;
        let merges = file.strings("tokenizer.ggml.merges")?;
        let types = if file.has("tokenizer.ggml.token_type") {
            file.integers("tokenizer.ggml.token_type")?
        } else {
            vec![1; tokens.len()]
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tok_err(format!("merge `{m}` is not two tokens")))
            })
            .collect::<Result<_, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tok_err)?;
        let mut inner = Tokenizer::new(bpe);
        let byte_level: PreTokenizerWrapper = ByteLevel::new(false, true, true).into();
        let pre = if file.has("tokenizer.ggml.pre") {
            file.str("tokenizer.ggml.pre")?
        } else {
            "default"
        };
        let pre_tokenizer = match pre {
            // llama.cpp's SMOLLM pre-tokenizer: every digit alone, then GPT-2's split.
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level]).into(),
            "default" | "gpt2" => byte_level,
            other => {
                return Err(EngineError::Unsupported(format!(
                    "{}: pre-tokenizer `{other}` is not supported (smollm, gpt2)",
                    file.path().display()
                )))
            }
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevel::default()));
        let special: Vec<bool> = types
            .iter()
            .map(|&t| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
            .collect();
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&special)
            .filter(|(_, &s)| s)
            .map(|(t, _)| AddedToken::from(t.to_string(), true))
            .collect();
        inner.add_special_tokens(added).map_err(tok_err)?;

        let id = |key: &str| -> Result<Option<u32>, EngineError> {
            if !file.has(key) {
                return Ok(None);
            }
            let id = file.u64(key)?;
            if id as usize >= tokens.len() {
                return Err(tok_err(format!("{key} = {id} is outside the vocabulary")));
            }
            Ok(Some(id as u32))
        };
        let eos = id("tokenizer.ggml.eos_token_id")?
            .ok_or_else(|| tok_err("tokenizer.ggml.eos_token_id is missing"))?;
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let mut stop_ids = vec![eos];
        for name in ["<|endoftext|>", "<|eot_id|>", "<|end_of_text|>"] {
            if let Some(i) = tokens.iter().position(|t| *t == name) {
                // Only as a stop token when it is a control token of this vocabulary.
                if special[i] && !stop_ids.contains(&(i as u32)) {
                    stop_ids.push(i as u32);
                }
            }
        }
        let add_bos = if file.has("tokenizer.ggml.add_bos_token") {
            file.bool("tokenizer.ggml.add_bos_token")?
        } else {
            false
        };
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        Ok(Self {
            inner,
            plain,
            bos,
            eos,
            stop_ids,
            add_bos,
            special,
        })
    }

    /// Token ids of `text`, special tokens written in it (`<|im_start|>`) parsed as such, and bos
    /// prepended when the model asks for it (`tokenizer.ggml.add_bos_token`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            if let Some(bos) = self.bos {
                ids.push(bos);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids of a prompt given in pieces: pieces marked `trusted` (the chat template's own
    /// text) have their special tokens parsed, the others (what users wrote) are plain text, so
    /// a message cannot forge a turn marker. Bos is prepended as by [`Self::encode`].
    pub fn encode_pieces(&self, pieces: &[(&str, bool)]) -> Result<Vec<u32>, EngineError> {
        let mut ids = Vec::new();
        if self.add_bos {
            if let Some(bos) = self.bos {
                ids.push(bos);
            }
        }
        for &(text, trusted) in pieces {
            if text.is_empty() {
                continue;
            }
            let tokenizer = if trusted { &self.inner } else { &self.plain };
            let enc = tokenizer.encode(text, false).map_err(tok_err)?;
            ids.extend_from_slice(enc.get_ids());
        }
        Ok(ids)
    }

    /// The text of `ids`; special tokens are dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, EngineError> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// Whether `id` ends a sequence (eos or an end-of-turn control token).
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }

    /// The end-of-sequence id.
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// Whether [`encode`](Self::encode) prepends the beginning-of-sequence token
    /// (`tokenizer.ggml.add_bos_token`).
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// The beginning-of-sequence id, when the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The text of a token id (`<|im_start|>`, `Ġhello`), for templates and errors.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is a control or user-defined token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The bytes token `id` stands for: a special token's text as written, else its byte-level
    /// BPE text mapped back to bytes (a token may hold part of a UTF-8 character); empty for an
    /// id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(text) = self.inner.id_to_token(id) else {
            return Vec::new();
        };
        if self.is_special(id) {
            return text.into_bytes();
        }
        let table = byte_of_char();
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            match table.get(&c) {
                Some(&b) => out.push(b),
                // Not a byte-level character: keep it as text.
                None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        out
    }
}

/// The inverse of GPT-2's byte-to-character table (`bytes_to_unicode`): printable Latin-1 bytes
/// stand for themselves, the other 68 bytes for characters from U+0100 on, in byte order.
fn byte_of_char() -> &'static std::collections::HashMap<char, u8> {
    static TABLE: std::sync::OnceLock<std::collections::HashMap<char, u8>> =
        std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
        let mut next = 0x100u32;
        (0..=255u8)
            .map(|b| {
                let c = if printable(b) {
                    char::from(b)
                } else {
                    next += 1;
                    char::from_u32(next - 1).unwrap_or(char::REPLACEMENT_CHARACTER)
                };
                (c, b)
            })
            .collect()
    })
}

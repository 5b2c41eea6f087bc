//! `POST /tokenize`, `POST /detokenize` and `GET /tokenizer_info`: a generation model's own
//! tokenizer over HTTP, in vLLM's shapes, so that tools which count or align tokens
//! (lm-evaluation-harness's remote tokenizer, `wattserve bench --perplexity`) use exactly the
//! server's token ids rather than a copy of the tokenizer that may differ.
//!
//! `model` may be left out when the server serves exactly one generation model (vLLM serves
//! one model, and lm-evaluation-harness sends none); with several, it is required.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::handler::{find_model, tokenize_blocking};
use super::json::JsonBody;
use super::openai::completions::validate::check_prompt_bytes;
use super::{ApiError, AppState};
use crate::registry::{GenerationServing, ServedModel};

/// `POST /tokenize` body.
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    /// A served generation model (optional when only one is served).
    #[serde(default)]
    pub model: Option<String>,
    /// The text.
    pub prompt: String,
    /// Add the model's beginning-of-sequence token when it uses one (default true), as a
    /// completion's prompt gets it.
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
}

fn yes() -> bool {
    true
}

/// `POST /tokenize` answer.
#[derive(Debug, Serialize)]
pub struct TokenizeResponse {
    /// Number of tokens.
    pub count: usize,
    /// Most tokens (prompt + completion) one sequence may hold on this server.
    pub max_model_len: usize,
    /// The token ids.
    pub tokens: Vec<u32>,
}

/// `POST /detokenize` body.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    /// A served generation model (optional when only one is served).
    #[serde(default)]
    pub model: Option<String>,
    /// Token ids.
    pub tokens: Vec<u32>,
}

/// `POST /detokenize` answer.
#[derive(Debug, Serialize)]
pub struct DetokenizeResponse {
    /// The text of the tokens (special tokens included).
    pub prompt: String,
}

/// `GET /tokenizer_info` query.
#[derive(Debug, Deserialize)]
pub struct InfoQuery {
    /// A served generation model (optional when only one is served).
    #[serde(default)]
    pub model: Option<String>,
}

/// `GET /tokenizer_info` answer.
#[derive(Debug, Serialize)]
pub struct TokenizerInfo {
    /// Whether a prompt gets the beginning-of-sequence token.
    pub add_bos_token: bool,
    /// The beginning-of-sequence token's text, when the vocabulary has one.
    pub bos_token: Option<String>,
    /// The chat template (Jinja), when the model has one.
    pub chat_template: Option<String>,
    /// The end-of-sequence token's text.
    pub eos_token: Option<String>,
    /// The served model.
    pub model: String,
    /// Most tokens (prompt + completion) one sequence may hold on this server.
    pub model_max_length: usize,
    /// No padding token: sequences are never padded.
    pub pad_token: Option<String>,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
}

/// The generation model `name` names, or the only one served when `name` is `None`.
fn generation_model<'a>(
    state: &'a AppState,
    name: Option<&str>,
) -> Result<(&'a Arc<ServedModel>, &'a GenerationServing), ApiError> {
    if let Some(name) = name {
        return find_model::<GenerationServing>(state, name);
    }
    let registry = state.registry()?;
    let mut generation = registry
        .iter()
        .filter_map(|m| m.generation().map(|g| (m, g)));
    match (generation.next(), generation.next()) {
        (Some(only), None) => Ok(only),
        (None, _) => Err(ApiError::bad_request(
            "invalid_value",
            "This server serves no generation model",
        )
        .with_param("model")),
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_value",
            "model is required: this server serves several generation models",
        )
        .with_param("model")),
    }
}

/// `POST /tokenize`: the token ids of a text, as a completion's prompt would have them.
pub async fn tokenize(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let (_, gen) = generation_model(&state, req.model.as_deref())?;
    check_prompt_bytes(req.prompt.len(), state.limits(), "prompt")?;
    let engine = gen.engine.clone();
    let max_model_len = engine.context_len();
    let tokens = tokenize_blocking(&state, move || {
        let t = engine.tokenizer();
        let ids = t
            .encode(&req.prompt)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        // `encode` adds bos when the model uses one; without special tokens, drop it.
        Ok::<_, ApiError>(match (req.add_special_tokens, t.adds_bos()) {
            (false, true) => ids.into_iter().skip(1).collect(),
            _ => ids,
        })
    })
    .await?;
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        max_model_len,
        tokens,
    }))
}

/// `POST /detokenize`: the text of token ids.
pub async fn detokenize(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let (_, gen) = generation_model(&state, req.model.as_deref())?;
    let engine = gen.engine.clone();
    let vocab = engine.model().config().vocab_size;
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::bad_request(
            "invalid_value",
            format!("Token id {bad} is outside the vocabulary ({vocab} tokens)"),
        )
        .with_param("tokens"));
    }
    let prompt = tokenize_blocking(&state, move || {
        engine
            .tokenizer()
            .decode(&req.tokens, false)
            .map_err(|e| ApiError::internal(e.to_string()))
    })
    .await?;
    Ok(Json(DetokenizeResponse { prompt }))
}

/// `GET /tokenizer_info`: the special tokens, chat template and limits of a model's tokenizer.
pub async fn info(
    State(state): State<AppState>,
    Query(q): Query<InfoQuery>,
) -> Result<Json<TokenizerInfo>, ApiError> {
    let (model, gen) = generation_model(&state, q.model.as_deref())?;
    let engine = &gen.engine;
    let t = engine.tokenizer();
    Ok(Json(TokenizerInfo {
        add_bos_token: t.adds_bos(),
        bos_token: t.bos().and_then(|b| t.token_text(b)),
        chat_template: engine.chat_template_source().map(str::to_string),
        eos_token: t.token_text(t.eos()),
        model: model.name.clone(),
        model_max_length: engine.context_len(),
        pad_token: None,
        vocab_size: engine.model().config().vocab_size,
    }))
}

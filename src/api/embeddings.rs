//! `POST /v1/embeddings`, OpenAI-compatible.

use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::handler::{self, RequestMetrics, Serving};
use super::json::JsonBody;
use super::usage::{settle_energy, UsageEnergy};
use super::{ApiError, AppState};
use crate::batch::{EmbedOutput, EmbeddingScheduler};
use crate::engine::{EmbeddingTokenizer, TokenizeError};
use crate::registry::EmbeddingServing;

/// The request body. Unknown fields are ignored, as OpenAI SDKs may send more than we use.
#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    /// A served model's name.
    pub model: String,
    /// A string or an array of strings (kept raw so that errors can be precise).
    pub input: serde_json::Value,
    /// `float` (default) or `base64` (little-endian f32).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Accepted only when equal to the model's width (no Matryoshka truncation).
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// OpenAI's end-user id; accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,
    /// Truncate inputs over the model's token limit instead of rejecting them (as TEI allows).
    #[serde(default)]
    pub truncate: bool,
}

/// One embedding, as float array or base64 string.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EmbeddingValue {
    /// `encoding_format: "float"`.
    Float(Vec<f32>),
    /// `encoding_format: "base64"`: little-endian f32 bytes, base64 (standard alphabet).
    Base64(String),
}

/// One element of `data`.
#[derive(Debug, Serialize)]
pub struct EmbeddingData {
    object: &'static str,
    index: usize,
    embedding: EmbeddingValue,
}

/// Token counts, and what the request cost when metered.
#[derive(Debug, Serialize)]
pub struct Usage {
    /// Tokens of all inputs, special tokens included, padding excluded.
    pub prompt_tokens: usize,
    /// Same as `prompt_tokens` for embeddings.
    pub total_tokens: usize,
    /// Energy, CO2e and cost (absent when metering is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy: Option<UsageEnergy>,
}

/// The response body.
#[derive(Debug, Serialize)]
pub struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<EmbeddingData>,
    model: String,
    usage: Usage,
}

#[derive(Clone, Copy)]
enum Encoding {
    Float,
    Base64,
}

/// Handler: validate, tokenize (blocking pool), queue, await, settle the energy, answer — all
/// within the request timeout. Error responses carry no energy headers.
pub async fn create(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<EmbeddingsRequest>,
) -> Response {
    let metrics = RequestMetrics::start(&state, &req.model, "embeddings");
    // Dropping `serve` on timeout drops the reply receiver: the scheduler skips inputs not yet
    // computed.
    let resp = handler::within_timeout(&state, serve(&state, req, metrics.started())).await;
    metrics.finish(resp)
}

async fn serve(
    state: &AppState,
    req: EmbeddingsRequest,
    started: Instant,
) -> Result<Response, ApiError> {
    let (model, emb) = handler::find_model::<EmbeddingServing>(state, &req.model)?;
    let encoding = match req.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_encoding_format",
                format!("encoding_format `{other}` is not supported; use `float` or `base64`"),
            )
            .with_param("encoding_format"))
        }
    };
    if let Some(d) = req.dimensions {
        if d != emb.dimensions {
            return Err(ApiError::bad_request(
                "invalid_dimensions",
                format!(
                    "Model `{}` produces {} dimensions; `dimensions` must be omitted or equal to it",
                    model.name, emb.dimensions
                ),
            )
            .with_param("dimensions"));
        }
    }
    let texts = parse_input(req.input, state.limits().max_inputs_per_request)?;
    let max_bytes = state.limits().max_input_bytes;
    if let Some(i) = texts.iter().position(|t| t.len() > max_bytes) {
        let param = input_param(texts.len(), i);
        return Err(ApiError::bad_request(
            "invalid_input",
            format!(
                "`{param}` is {} bytes long, more than the limit of {max_bytes} (limits.max_input_bytes)",
                texts[i].len()
            ),
        )
        .with_param(param));
    }

    let tokenizer = emb.tokenizer.clone();
    let truncate = req.truncate;
    let ids = handler::tokenize_blocking(state, move || tokenize_all(&tokenizer, &texts, truncate))
        .await?;
    let prompt_tokens: usize = ids.iter().map(Vec::len).sum();
    crate::metrics::record_tokens(&model.name, "prompt", prompt_tokens);

    let output = run(&emb.scheduler, ids).await?;
    let energy = settle_energy(model, &output.energy).await?;
    let data = output
        .embeddings
        .iter()
        .enumerate()
        .map(|(index, v)| EmbeddingData {
            object: "embedding",
            index,
            embedding: match encoding {
                Encoding::Float => EmbeddingValue::Float(v.clone()),
                Encoding::Base64 => EmbeddingValue::Base64(encode_base64(v)),
            },
        })
        .collect();
    let body = EmbeddingsResponse {
        object: "list",
        data,
        model: model.name.clone(),
        usage: Usage {
            prompt_tokens,
            total_tokens: prompt_tokens,
            energy: energy.clone(),
        },
    };
    let serving = Serving {
        model,
        batch_size: Some(output.batch_size),
        timing: &[
            ("queue", output.queue_time),
            ("compute", output.compute_time),
        ],
        until_now: ("total", started),
    };
    Ok(handler::metered_json(body, serving, energy.as_ref()))
}

async fn run(scheduler: &EmbeddingScheduler, ids: Vec<Vec<u32>>) -> Result<EmbedOutput, ApiError> {
    let rx = scheduler.submit(ids).map_err(ApiError::from)?;
    rx.await
        .map_err(|_| ApiError::internal("the compute thread stopped before answering"))?
        .map_err(ApiError::from)
}

/// Turns `input` into texts, with an error naming the element at fault.
/// The `param` naming input `i` of `count`: `input` for a lone string, else `input[i]`.
fn input_param(count: usize, i: usize) -> String {
    if count == 1 {
        "input".to_string()
    } else {
        format!("input[{i}]")
    }
}

fn parse_input(input: serde_json::Value, max_inputs: usize) -> Result<Vec<String>, ApiError> {
    use serde_json::Value;
    let bad =
        |param: String, msg: String| ApiError::bad_request("invalid_input", msg).with_param(param);
    let texts = match input {
        Value::String(s) => vec![s],
        Value::Array(items) => {
            if items.is_empty() {
                return Err(bad(
                    "input".into(),
                    "`input` must not be an empty array".into(),
                ));
            }
            if items.len() > max_inputs {
                return Err(bad(
                    "input".into(),
                    format!(
                        "`input` has {} items, more than the limit of {max_inputs} (limits.max_inputs_per_request)",
                        items.len()
                    ),
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s),
                    Value::Number(_) | Value::Array(_) => Err(bad(
                        "input".into(),
                        "token-id arrays are not supported as `input`; send text".into(),
                    )),
                    _ => Err(bad(
                        format!("input[{i}]"),
                        format!("`input[{i}]` must be a string"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Value::Null => return Err(bad("input".into(), "`input` is required".into())),
        _ => {
            return Err(bad(
                "input".into(),
                "`input` must be a string or an array of strings".into(),
            ))
        }
    };
    if let Some(i) = texts.iter().position(|t| t.is_empty()) {
        let param = input_param(texts.len(), i);
        return Err(bad(
            param.clone(),
            format!("`{param}` is an empty string; inputs must not be empty"),
        ));
    }
    Ok(texts)
}

fn tokenize_all(
    tokenizer: &EmbeddingTokenizer,
    texts: &[String],
    truncate: bool,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let many = texts.len() > 1;
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            tokenizer.encode(t, truncate).map_err(|e| {
                let param = if many { format!("input[{i}]") } else { "input".to_string() };
                match e {
                    TokenizeError::TooLong { tokens, max } => ApiError::bad_request(
                        "context_length_exceeded",
                        format!(
                            "`{param}` has {tokens} tokens, more than this model's limit of {max} tokens; \
                             shorten it or send \"truncate\": true"
                        ),
                    )
                    .with_param(param),
                    TokenizeError::Failed(m) => {
                        ApiError::bad_request("invalid_input", format!("`{param}` could not be tokenized: {m}"))
                            .with_param(param)
                    }
                }
            })
        })
        .collect()
}

fn encode_base64(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn input_shapes() {
        assert_eq!(parse_input(json!("a"), 4).unwrap(), vec!["a"]);
        assert_eq!(parse_input(json!(["a", "b"]), 4).unwrap(), vec!["a", "b"]);
        let e = parse_input(json!([]), 4).unwrap_err();
        assert_eq!(e.status, 400);
        let e = parse_input(json!(["a", ""]), 4).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[1]"));
        let e = parse_input(json!(["a", "b", "c"]), 2).unwrap_err();
        assert!(e.message.contains("limit of 2"), "{}", e.message);
        let e = parse_input(json!([1, 2]), 4).unwrap_err();
        assert!(e.message.contains("token-id"), "{}", e.message);
        let e = parse_input(json!(["a", 3.5, {}]), 4).unwrap_err();
        assert_eq!(e.code, "invalid_input");
        assert!(parse_input(json!(42), 4).is_err());
        assert!(parse_input(json!(null), 4).is_err());
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let s = encode_base64(&[1.0, -2.5]);
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
    }
}

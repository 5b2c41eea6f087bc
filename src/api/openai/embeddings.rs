//! `POST /v1/embeddings`, OpenAI-compatible.

use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::api::handler::embed::{self, InputNames};
use crate::api::handler::{self, RequestMetrics};
use crate::api::json::JsonBody;
use crate::api::usage::UsageEnergy;
use crate::api::{ApiError, AppState};
use crate::governance::Tenant;

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
    tenant: Option<Extension<Tenant>>,
    JsonBody(req): JsonBody<EmbeddingsRequest>,
) -> Response {
    let metrics = RequestMetrics::start(&state, &req.model, "embeddings");
    let tenant = handler::tenant_name(tenant.as_ref().map(|Extension(t)| t));
    // Dropping `serve` on timeout drops the reply receiver: the scheduler skips inputs not yet
    // computed.
    let resp = handler::within_timeout(&state, serve(&state, req, metrics.started(), tenant)).await;
    metrics.finish(resp)
}

async fn serve(
    state: &AppState,
    req: EmbeddingsRequest,
    started: Instant,
    tenant: &str,
) -> Result<Response, ApiError> {
    let dimensions = embed::dimensions(state, &req.model)?;
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
        if d != dimensions {
            return Err(ApiError::bad_request(
                "invalid_dimensions",
                format!(
                    "Model `{}` produces {dimensions} dimensions; `dimensions` must be omitted or equal to it",
                    req.model
                ),
            )
            .with_param("dimensions"));
        }
    }
    let texts = parse_input(req.input)?;
    let names = InputNames {
        field: "input",
        count: texts.len(),
    };
    let out = embed::embed(state, &req.model, texts, req.truncate, names, tenant).await?;
    let data = out
        .vectors
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
        model: out.model.name.clone(),
        usage: Usage {
            prompt_tokens: out.prompt_tokens,
            total_tokens: out.prompt_tokens,
            energy: out.energy.clone(),
        },
    };
    let mut resp = handler::metered_json(body, out.serving(started), out.energy.as_ref());
    handler::set_cache_header(resp.headers_mut(), out.cache);
    resp.extensions_mut().insert(out.report());
    Ok(resp)
}

/// Turns `input` into texts (a string or an array of strings), with an error naming the
/// element at fault; the texts' own checks are the shared ones ([`embed::check_texts`]).
fn parse_input(input: serde_json::Value) -> Result<Vec<String>, ApiError> {
    use serde_json::Value;
    let bad =
        |param: String, msg: String| ApiError::bad_request("invalid_input", msg).with_param(param);
    match input {
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) => items
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
            .collect(),
        Value::Null => Err(bad("input".into(), "`input` is required".into())),
        _ => Err(bad(
            "input".into(),
            "`input` must be a string or an array of strings".into(),
        )),
    }
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
        assert_eq!(parse_input(json!("a")).unwrap(), vec!["a"]);
        assert_eq!(parse_input(json!(["a", "b"])).unwrap(), vec!["a", "b"]);
        assert!(parse_input(json!([])).unwrap().is_empty());
        let e = parse_input(json!([1, 2])).unwrap_err();
        assert!(e.message.contains("token-id"), "{}", e.message);
        let e = parse_input(json!(["a", {}])).unwrap_err();
        assert_eq!(e.code, "invalid_input");
        assert_eq!(e.param.as_deref(), Some("input[1]"));
        assert!(parse_input(json!(42)).is_err());
        assert!(parse_input(json!(null)).is_err());
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

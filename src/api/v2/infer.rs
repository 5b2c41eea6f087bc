//! Inference through the Open Inference Protocol, independent of transport (REST JSON, REST
//! binary, gRPC): what tensors each kind of model takes and gives, and one `infer` that decodes
//! the inputs, runs them through the same handler core (queue, batching, limits, metering) as
//! the OpenAI endpoints, and returns the output tensors with what the request cost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::params::{self, Params};
use super::tensor::{DataType, InputTensor, OutputData, OutputTensor};
use crate::api::handler::embed::{self, InputNames};
use crate::api::handler::{generate, Serving};
use crate::api::openai::completions::wire::Endpoint;
use crate::api::usage::{UsageEnergy, UsageReport};
use crate::api::{ApiError, AppState};
use crate::registry::{ModelKind, ServedModel};

/// The only model version: every model is served at version `1`.
pub const VERSION: &str = "1";

/// The platform models report in their metadata.
pub const PLATFORM: &str = "wattserve";

/// Embedding models' input: BYTES texts.
pub const TEXT: &str = "text";
/// Embedding models' optional input: BOOL, truncate over-long texts.
pub const TRUNCATE: &str = "truncate";
/// Embedding models' output: FP32 vectors.
pub const EMBEDDING: &str = "embedding";
/// Generation models' input: one BYTES prompt.
pub const TEXT_INPUT: &str = "text_input";
/// Generation models' output: one BYTES completion.
pub const TEXT_OUTPUT: &str = "text_output";

/// Shapes `text` may have: `[N]` or `[N, 1]`.
const TEXT_SHAPES: &[&[i64]] = &[&[-1], &[-1, 1]];
/// Shapes `text_input` may have: one element.
const PROMPT_SHAPES: &[&[i64]] = &[&[1], &[1, 1]];
/// Shapes `truncate` may have: one element.
const FLAG_SHAPES: &[&[i64]] = &[&[1], &[1, 1]];

/// A tensor's metadata: name, datatype and shape (-1 for a variable dimension).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorMetadata {
    /// Its name.
    pub name: &'static str,
    /// Its datatype's name.
    pub datatype: &'static str,
    /// Its shape.
    pub shape: Vec<i64>,
}

/// A model's metadata, as `GET /v2/models/{m}` and gRPC `ModelMetadata` describe it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelMetadata {
    /// The served name.
    pub name: String,
    /// Always `["1"]`.
    pub versions: Vec<&'static str>,
    /// `wattserve`.
    pub platform: &'static str,
    /// The input tensors it takes.
    pub inputs: Vec<TensorMetadata>,
    /// The output tensors it gives.
    pub outputs: Vec<TensorMetadata>,
}

fn tensor(name: &'static str, datatype: DataType, shape: Vec<i64>) -> TensorMetadata {
    TensorMetadata {
        name,
        datatype: datatype.name(),
        shape,
    }
}

/// The metadata of `model`.
pub fn metadata(model: &ServedModel) -> ModelMetadata {
    let (inputs, outputs) = match &model.kind {
        ModelKind::Embedding(emb) => (
            vec![
                tensor(TEXT, DataType::Bytes, vec![-1]),
                tensor(TRUNCATE, DataType::Bool, vec![1]),
            ],
            vec![tensor(
                EMBEDDING,
                DataType::Fp32,
                vec![-1, emb.dimensions as i64],
            )],
        ),
        ModelKind::Generation(_) => (
            vec![tensor(TEXT_INPUT, DataType::Bytes, vec![1])],
            vec![tensor(TEXT_OUTPUT, DataType::Bytes, vec![1])],
        ),
    };
    ModelMetadata {
        name: model.name.clone(),
        versions: vec![VERSION],
        platform: PLATFORM,
        inputs,
        outputs,
    }
}

/// The served model `name` at `version` (none, or `1`): 503 while loading, 404 for an unknown
/// model or another version.
pub fn find<'a>(
    state: &'a AppState,
    name: &str,
    version: Option<&str>,
) -> Result<&'a Arc<ServedModel>, ApiError> {
    let registry = state.registry()?;
    let model = registry
        .get(name)
        .ok_or_else(|| ApiError::model_not_found(name, &registry.names()))?;
    match version {
        None | Some("") | Some(VERSION) => Ok(model),
        Some(v) => Err(ApiError::model_version_not_found(&model.name, v)),
    }
}

/// An inference request, decoded from its transport.
#[derive(Debug)]
pub struct InferRequest {
    /// The model's name.
    pub model: String,
    /// The version asked for, if any.
    pub version: Option<String>,
    /// Echoed in the response.
    pub id: Option<String>,
    /// Request parameters.
    pub params: Params,
    /// Input tensors.
    pub inputs: Vec<InputTensor>,
    /// Names of the outputs asked for; all when empty.
    pub outputs: Vec<String>,
}

/// The answer to an [`InferRequest`]: its output tensors, with what it cost and how it was
/// served.
pub struct Inferred<'a> {
    /// The model that served it.
    pub model: &'a Arc<ServedModel>,
    /// The request's id, echoed.
    pub id: Option<String>,
    /// The output tensors, in the order asked for.
    pub outputs: Vec<OutputTensor>,
    /// Energy, CO2e and cost; `None` when metering is off.
    pub energy: Option<UsageEnergy>,
    /// The largest batch it was part of.
    pub batch_size: usize,
    /// The `server-timing` entries before `total`.
    pub timing: Vec<(&'static str, Duration)>,
    /// Tokens read.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// What came from the response cache (`None`: off, or not cached).
    pub cache: Option<crate::cache::CacheStatus>,
    /// Inputs answered from the cache.
    pub cache_hits: usize,
}

impl Inferred<'_> {
    /// What the usage ledger records of it.
    pub fn report(&self) -> UsageReport {
        UsageReport::new(
            self.model,
            self.prompt_tokens,
            self.completion_tokens,
            self.energy.as_ref(),
            self.batch_size,
        )
        .with_cache_hits(self.cache_hits)
    }

    /// The response `parameters`: how it was served and what it cost.
    pub fn parameters(&self) -> Params {
        params::served(self.batch_size, self.model.precision, self.energy.as_ref())
    }

    /// The serving headers, `total` counted from `started`.
    pub fn serving(&self, started: Instant) -> Serving<'_> {
        Serving {
            model: self.model,
            batch_size: Some(self.batch_size),
            timing: self.timing.clone(),
            until_now: ("total", started),
        }
    }
}

/// Runs `req`: decodes its inputs as its model takes them, computes through the shared core,
/// and returns the outputs asked for.
pub async fn infer<'a>(
    state: &'a AppState,
    req: InferRequest,
    tenant: &str,
) -> Result<Inferred<'a>, ApiError> {
    let model = find(state, &req.model, req.version.as_deref())?;
    let produced = match &model.kind {
        ModelKind::Embedding(_) => EMBEDDING,
        ModelKind::Generation(_) => TEXT_OUTPUT,
    };
    if let Some(unknown) = req.outputs.iter().find(|o| o.as_str() != produced) {
        return Err(ApiError::bad_request(
            "invalid_tensor",
            format!(
                "Model `{}` has no output `{unknown}`; its output is `{produced}`",
                model.name
            ),
        )
        .with_param(unknown.clone()));
    }
    match &model.kind {
        ModelKind::Embedding(_) => embed_tensors(state, model, req, tenant).await,
        ModelKind::Generation(_) => generate_tensors(state, model, req).await,
    }
}

/// Takes the inputs named in `names` out of `inputs` (one each at most), refusing any other.
fn take_inputs<const N: usize>(
    model: &str,
    inputs: Vec<InputTensor>,
    names: [&str; N],
) -> Result<[Option<InputTensor>; N], ApiError> {
    let mut found: [Option<InputTensor>; N] = std::array::from_fn(|_| None);
    for input in inputs {
        let Some(i) = names.iter().position(|n| *n == input.name) else {
            return Err(ApiError::bad_request(
                "invalid_tensor",
                format!(
                    "Model `{model}` has no input `{}`; its inputs are {}",
                    input.name,
                    names.map(|n| format!("`{n}`")).join(", ")
                ),
            )
            .with_param(input.name));
        };
        if found[i].is_some() {
            return Err(ApiError::bad_request(
                "invalid_tensor",
                format!("Input `{}` is given more than once", input.name),
            )
            .with_param(input.name));
        }
        found[i] = Some(input);
    }
    Ok(found)
}

fn required(model: &str, input: Option<InputTensor>, name: &str) -> Result<InputTensor, ApiError> {
    input.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_tensor",
            format!("Model `{model}` needs input `{name}`"),
        )
        .with_param(name.to_string())
    })
}

/// UTF-8 text of element `i` of `tensor`.
fn utf8(bytes: Vec<u8>, tensor: &str, i: usize) -> Result<String, ApiError> {
    String::from_utf8(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_tensor",
            format!("Element {i} of input `{tensor}` is not UTF-8 text: {e}"),
        )
        .with_param(tensor.to_string())
    })
}

async fn embed_tensors<'a>(
    state: &'a AppState,
    model: &'a Arc<ServedModel>,
    req: InferRequest,
    tenant: &str,
) -> Result<Inferred<'a>, ApiError> {
    let [text, flag] = take_inputs(&model.name, req.inputs, [TEXT, TRUNCATE])?;
    let texts = required(&model.name, text, TEXT)?
        .byte_strings(TEXT_SHAPES)?
        .into_iter()
        .enumerate()
        .map(|(i, b)| utf8(b, TEXT, i))
        .collect::<Result<Vec<_>, _>>()?;
    let truncate = match flag {
        Some(t) => t.bools(FLAG_SHAPES)?[0],
        None => params::truncate(&req.params)?.unwrap_or(false),
    };
    let names = InputNames {
        field: TEXT,
        count: texts.len(),
    };
    let out = embed::embed(state, &model.name, texts, truncate, names, tenant).await?;
    let rows = out.vectors.len();
    let dims = out.vectors.first().map_or(0, Vec::len);
    let flat: Vec<f32> = out.vectors.into_iter().flatten().collect();
    Ok(Inferred {
        model: out.model,
        id: req.id,
        outputs: vec![OutputTensor {
            name: EMBEDDING,
            shape: vec![rows as i64, dims as i64],
            data: OutputData::Fp32(flat),
        }],
        energy: out.energy,
        batch_size: out.batch_size,
        timing: vec![("queue", out.queue_time), ("compute", out.compute_time)],
        prompt_tokens: out.prompt_tokens,
        completion_tokens: 0,
        cache: out.cache,
        cache_hits: out.cache_hits,
    })
}

async fn generate_tensors<'a>(
    state: &'a AppState,
    model: &'a Arc<ServedModel>,
    req: InferRequest,
) -> Result<Inferred<'a>, ApiError> {
    let [prompt] = take_inputs(&model.name, req.inputs, [TEXT_INPUT])?;
    let mut prompts = required(&model.name, prompt, TEXT_INPUT)?.byte_strings(PROMPT_SHAPES)?;
    let prompt = utf8(prompts.swap_remove(0), TEXT_INPUT, 0)?;
    let c = complete(state, &model.name, prompt, &req.params).await?;
    Ok(Inferred {
        model: c.model,
        id: req.id,
        outputs: vec![OutputTensor {
            name: TEXT_OUTPUT,
            shape: vec![1],
            data: OutputData::Bytes(vec![c.text.into_bytes()]),
        }],
        batch_size: c.done.max_batch,
        prompt_tokens: c.done.prompt_tokens,
        completion_tokens: c.done.completion_tokens,
        timing: vec![
            ("queue", c.done.queue_time),
            ("ttft", c.done.time_to_first_token),
            ("compute", c.done.compute_time),
        ],
        energy: c.energy,
        cache: None,
        cache_hits: 0,
    })
}

/// Prepares a completion of `prompt` with the sampling options in `params` (as
/// `/v1/completions` checks them).
pub async fn prepare<'a>(
    state: &'a AppState,
    model: &str,
    prompt: String,
    params: &Params,
) -> Result<generate::Prepared<'a>, ApiError> {
    let fields = params::generation_fields(params)?;
    generate::prepare(
        state,
        Endpoint::Completions,
        model,
        fields,
        Value::String(prompt),
    )
    .await
}

/// The whole completion of `prompt`.
async fn complete<'a>(
    state: &'a AppState,
    model: &str,
    prompt: String,
    params: &Params,
) -> Result<generate::Completed<'a>, ApiError> {
    prepare(state, model, prompt, params)
        .await?
        .submit()?
        .complete()
        .await
}

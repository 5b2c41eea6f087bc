//! `POST /v1/chat/completions` and `POST /v1/completions`, OpenAI-compatible, streamed (SSE) or
//! not, with every response saying what it cost.
//!
//! Non-streamed responses carry the metering headers and `usage.energy`. A stream cannot carry
//! headers for what it has not computed yet: its energy comes in the final usage chunk
//! (`stream_options.include_usage`), after which `data: [DONE]` ends it. A client that goes away
//! (closed connection, dropped stream) cancels its sequence at the next step.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::json::JsonBody;
use super::usage::{put_header, set_energy_headers, settle_energy, UsageEnergy};
use super::{ApiError, AppState};
use crate::batch::generation::{Finished, GenEvent, GenerationJob};
use crate::engine::gguf::ChatMessage;
use crate::engine::sampling::SamplingParams;
use crate::registry::{GenerationServing, ServedModel};

/// Most stop strings per request (OpenAI's limit).
const MAX_STOP_STRINGS: usize = 4;

/// Fields both endpoints share. Unknown fields are ignored, as OpenAI SDKs send more than we use.
#[derive(Debug, Default, Deserialize)]
pub struct GenerationFields {
    /// Most tokens to generate (legacy name).
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// Most tokens to generate (current name; wins over `max_tokens`).
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    /// 0–2; 0 = greedy. Default 1.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// (0, 1]. Default 1.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Keep the k most likely tokens; 0 or -1 = off (vLLM's extension).
    #[serde(default)]
    pub top_k: Option<i64>,
    /// Seed of the sampler: the same seed gives the same completion.
    #[serde(default)]
    pub seed: Option<i64>,
    /// A string or up to 4 strings that end the completion.
    #[serde(default)]
    pub stop: Option<Value>,
    /// Completions per prompt: only 1.
    #[serde(default)]
    pub n: Option<i64>,
    /// Server-sent events instead of one JSON body.
    #[serde(default)]
    pub stream: Option<bool>,
    /// `{"include_usage": true}`: a final chunk with `usage` (and `usage.energy`).
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Only 0 is supported.
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Only 0 is supported.
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Not supported (false / null only).
    #[serde(default)]
    pub logprobs: Option<Value>,
    /// OpenAI's end-user id; accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,
    /// Keep generating past stop tokens until `max_tokens` (vLLM's extension, for benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a usage chunk before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// A served generation model.
    pub model: String,
    /// The conversation (kept raw so that errors can name the element at fault).
    pub messages: Value,
    /// Sampling and limits.
    #[serde(flatten)]
    pub fields: GenerationFields,
}

/// `POST /v1/completions` body.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// A served generation model.
    pub model: String,
    /// A string, an array holding one string, or an array of token ids.
    pub prompt: Value,
    /// Sampling and limits.
    #[serde(flatten)]
    pub fields: GenerationFields,
}

/// `usage` of a completion.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionUsage {
    /// Prompt tokens (after the chat template).
    pub prompt_tokens: usize,
    /// Generated tokens (a final stop token included).
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
    /// What it cost (absent when metering is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy: Option<UsageEnergy>,
}

#[derive(Clone, Copy, PartialEq)]
enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat_completions",
            Endpoint::Completions => "completions",
        }
    }
}

/// What the prompt is before tokenization.
#[derive(Debug)]
enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
    Tokens(Vec<u32>),
}

/// Validated options of one request.
struct Plan {
    max_tokens: Option<usize>,
    sampling: SamplingParams,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
    ignore_eos: bool,
}

/// `POST /v1/chat/completions`.
pub async fn chat(State(state): State<AppState>, JsonBody(req): JsonBody<ChatRequest>) -> Response {
    let started = Instant::now();
    let prompt = parse_messages(req.messages).map(Prompt::Chat);
    handle(
        state,
        Endpoint::Chat,
        req.model,
        prompt,
        req.fields,
        started,
    )
    .await
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CompletionRequest>,
) -> Response {
    let started = Instant::now();
    let prompt = parse_prompt(req.prompt);
    handle(
        state,
        Endpoint::Completions,
        req.model,
        prompt,
        req.fields,
        started,
    )
    .await
}

async fn handle(
    state: AppState,
    endpoint: Endpoint,
    model_name: String,
    prompt: Result<Prompt, ApiError>,
    fields: GenerationFields,
    started: Instant,
) -> Response {
    let label = state
        .registry()
        .ok()
        .and_then(|r| r.get(&model_name))
        .map_or_else(|| "unknown".to_string(), |m| m.name.clone());
    let timeout = state.limits().request_timeout();
    let resp = match prepare(&state, endpoint, &model_name, prompt, fields).await {
        Err(e) => e.into_response(),
        Ok((model, plan, job_prompt)) => {
            if plan.stream {
                stream(model, endpoint, plan, job_prompt, started)
            } else {
                match tokio::time::timeout(
                    timeout,
                    complete(model, endpoint, plan, job_prompt, started),
                )
                .await
                {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => e.into_response(),
                    // Dropping `complete` drops the event receiver: the sequence is cancelled.
                    Err(_) => ApiError::timeout(state.limits().request_timeout_ms).into_response(),
                }
            }
        }
    };
    crate::metrics::record_request(
        &label,
        endpoint.label(),
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

/// Finds the model, validates the options, renders and tokenizes the prompt (blocking pool)
/// and checks it against the context length.
async fn prepare(
    state: &AppState,
    endpoint: Endpoint,
    model_name: &str,
    prompt: Result<Prompt, ApiError>,
    fields: GenerationFields,
) -> Result<(Arc<ServedModel>, Plan, Vec<u32>), ApiError> {
    let registry = state.registry()?;
    let model = registry
        .get(model_name)
        .ok_or_else(|| ApiError::model_not_found(model_name, &registry.names()))?
        .clone();
    let gen = model.generation().ok_or_else(|| {
        ApiError::bad_request(
            "wrong_endpoint",
            format!(
                "Model `{}` is an embedding model; use /v1/embeddings",
                model.name
            ),
        )
        .with_param("model")
    })?;
    let plan = parse_fields(fields)?;
    let prompt = prompt?;
    let engine = gen.engine.clone();
    let ids = tokio::task::spawn_blocking(move || -> Result<Vec<u32>, ApiError> {
        let text = match prompt {
            Prompt::Tokens(ids) => return Ok(ids),
            Prompt::Text(t) => t,
            Prompt::Chat(messages) => engine
                .render_chat(&messages)
                .map_err(|m| ApiError::bad_request("invalid_messages", m).with_param("messages"))?,
        };
        engine
            .tokenizer()
            .encode(&text)
            .map_err(|e| ApiError::internal(e.to_string()))
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenization task failed: {e}")))??;
    check_context(gen, &ids, plan.max_tokens, endpoint)?;
    crate::metrics::record_tokens(&model.name, "prompt", ids.len());
    Ok((model, plan, ids))
}

fn check_context(
    gen: &GenerationServing,
    ids: &[u32],
    max_tokens: Option<usize>,
    endpoint: Endpoint,
) -> Result<(), ApiError> {
    let ctx = gen.engine.context_len();
    let vocab = gen.engine.model().config().vocab_size;
    let param = if endpoint == Endpoint::Chat {
        "messages"
    } else {
        "prompt"
    };
    if ids.is_empty() {
        return Err(
            ApiError::bad_request("invalid_prompt", "The prompt is empty").with_param(param),
        );
    }
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::bad_request(
            "invalid_prompt",
            format!("Token id {bad} is outside the vocabulary ({vocab} tokens)"),
        )
        .with_param(param));
    }
    let requested = ids.len() + max_tokens.unwrap_or(1);
    if ids.len() >= ctx || requested > ctx {
        let detail = match max_tokens {
            Some(m) => format!(
                "you requested {requested} tokens ({} in the prompt, {m} for the completion)",
                ids.len()
            ),
            None => format!("the prompt has {} tokens", ids.len()),
        };
        return Err(ApiError::bad_request(
            "context_length_exceeded",
            format!(
                "This model's maximum context length is {ctx} tokens; {detail}. Shorten the prompt or lower max_tokens"
            ),
        )
        .with_param(if max_tokens.is_some() && ids.len() < ctx {
            "max_tokens"
        } else {
            param
        }));
    }
    Ok(())
}

fn parse_fields(f: GenerationFields) -> Result<Plan, ApiError> {
    let bad = |param: &str, message: String| {
        ApiError::bad_request("invalid_value", message).with_param(param)
    };
    if let Some(n) = f.n {
        if n != 1 {
            return Err(bad("n", format!("Only n = 1 is supported, got {n}")));
        }
    }
    for (name, v) in [
        ("presence_penalty", f.presence_penalty),
        ("frequency_penalty", f.frequency_penalty),
    ] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(bad(
                name,
                format!("{name} is not supported; omit it or send 0"),
            ));
        }
    }
    match &f.logprobs {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Number(n)) if n.as_u64() == Some(0) => {}
        Some(_) => return Err(bad("logprobs", "logprobs are not supported".into())),
    }
    let max_tokens = match f.max_completion_tokens.or(f.max_tokens) {
        None => None,
        Some(m) if m >= 1 => Some(m as usize),
        Some(m) => {
            return Err(bad(
                "max_tokens",
                format!("max_tokens must be at least 1, got {m}"),
            ))
        }
    };
    let top_k = match f.top_k {
        None | Some(0) | Some(-1) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(bad(
                "top_k",
                format!("top_k must be positive, or 0 / -1 for no limit; got {k}"),
            ))
        }
    };
    let sampling = SamplingParams {
        temperature: f.temperature.unwrap_or(1.0),
        top_p: f.top_p.unwrap_or(1.0),
        top_k,
        seed: f.seed.map(|s| s as u64),
    };
    sampling.validate().map_err(|m| {
        let param = if m.starts_with("temperature") {
            "temperature"
        } else {
            "top_p"
        };
        bad(param, m)
    })?;
    let stop = parse_stop(f.stop)?;
    Ok(Plan {
        max_tokens,
        sampling,
        stop,
        stream: f.stream.unwrap_or(false),
        include_usage: f.stream_options.is_some_and(|o| o.include_usage),
        ignore_eos: f.ignore_eos,
    })
}

fn parse_stop(stop: Option<Value>) -> Result<Vec<String>, ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_value", m).with_param("stop");
    let list = match stop {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                other => Err(bad(format!("stop[{i}] must be a string, got {other}"))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(bad(format!(
                "stop must be a string or an array of strings, got {other}"
            )))
        }
    };
    if list.len() > MAX_STOP_STRINGS {
        return Err(bad(format!(
            "At most {MAX_STOP_STRINGS} stop strings are allowed, got {}",
            list.len()
        )));
    }
    if list.iter().any(String::is_empty) {
        return Err(bad("stop strings must not be empty".into()));
    }
    Ok(list)
}

fn parse_messages(messages: Value) -> Result<Vec<ChatMessage>, ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_messages", m).with_param("messages");
    let Value::Array(items) = messages else {
        return Err(bad(
            "messages must be an array of {role, content} objects".into()
        ));
    };
    if items.is_empty() {
        return Err(bad("messages must not be empty".into()));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let role = item
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("messages[{i}].role must be a string")))?
                .to_string();
            let content = match item.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.iter().enumerate() {
                        match (part.get("type").and_then(Value::as_str), part.get("text")) {
                            (Some("text"), Some(Value::String(t))) => text.push_str(t),
                            _ => {
                                return Err(bad(format!(
                                    "messages[{i}].content[{j}]: only {{\"type\": \"text\", \"text\": ...}} parts are supported"
                                )))
                            }
                        }
                    }
                    text
                }
                Some(other) => {
                    return Err(bad(format!(
                        "messages[{i}].content must be a string or an array of text parts, got {other}"
                    )))
                }
            };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

fn parse_prompt(prompt: Value) -> Result<Prompt, ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_prompt", m).with_param("prompt");
    match prompt {
        Value::String(s) => Ok(Prompt::Text(s)),
        Value::Array(items) if items.len() == 1 && items[0].is_string() => Ok(Prompt::Text(
            items[0].as_str().unwrap_or_default().to_string(),
        )),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_u64) => {
            Ok(Prompt::Tokens(
                items
                    .iter()
                    .map(|v| v.as_u64().unwrap_or(u64::MAX).min(u32::MAX as u64) as u32)
                    .collect(),
            ))
        }
        Value::Array(items) if items.len() > 1 && items.iter().all(Value::is_string) => Err(bad(
            "Only one prompt per request is supported (send one request per prompt)".into(),
        )),
        other => Err(bad(format!(
            "prompt must be a string, an array with one string, or an array of token ids; got {}",
            short(&other)
        ))),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// Submits the sequence; events arrive on the receiver.
fn submit(
    gen: &GenerationServing,
    plan: &Plan,
    prompt: Vec<u32>,
) -> Result<UnboundedReceiver<GenEvent>, ApiError> {
    let (tx, rx) = unbounded_channel();
    let room = gen.engine.context_len() - prompt.len();
    let job = GenerationJob {
        max_new_tokens: plan.max_tokens.unwrap_or(room).min(room),
        prompt,
        sampling: plan.sampling,
        stop: plan.stop.clone(),
        ignore_eos: plan.ignore_eos,
        events: tx,
    };
    gen.scheduler.submit(job)?;
    Ok(rx)
}

fn ids(endpoint: Endpoint) -> (String, &'static str, u64) {
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completions => "cmpl",
    };
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let object = match endpoint {
        Endpoint::Chat => "chat.completion",
        Endpoint::Completions => "text_completion",
    };
    (
        format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
        object,
        created,
    )
}

fn usage_of(done: &Finished, energy: Option<UsageEnergy>) -> CompletionUsage {
    CompletionUsage {
        prompt_tokens: done.prompt_tokens,
        completion_tokens: done.completion_tokens,
        total_tokens: done.prompt_tokens + done.completion_tokens,
        energy,
    }
}

async fn complete(
    model: Arc<ServedModel>,
    endpoint: Endpoint,
    plan: Plan,
    prompt: Vec<u32>,
    started: Instant,
) -> Result<Response, ApiError> {
    let gen = model
        .generation()
        .ok_or_else(|| ApiError::internal("not a generation model"))?;
    let mut rx = submit(gen, &plan, prompt)?;
    let mut text = String::new();
    let done = loop {
        match rx.recv().await {
            Some(GenEvent::Text(piece)) => text.push_str(&piece),
            Some(GenEvent::Finished(done)) => break done,
            Some(GenEvent::Failed(e)) => return Err(e.into()),
            None => return Err(ApiError::internal("the compute thread stopped")),
        }
    };
    let energy = settle_energy(&model, &done.energy).await?;
    let (id, object, created) = ids(endpoint);
    let choice = match endpoint {
        Endpoint::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": done.reason.as_str(),
        }),
        Endpoint::Completions => json!({
            "index": 0,
            "text": text,
            "logprobs": null,
            "finish_reason": done.reason.as_str(),
        }),
    };
    let body = json!({
        "id": id,
        "object": object,
        "created": created,
        "model": model.name,
        "choices": [choice],
        "usage": usage_of(&done, energy.clone()),
    });
    let mut resp = Json(body).into_response();
    let h = resp.headers_mut();
    set_generation_headers(h, &model, &done, started.elapsed());
    if let Some(e) = &energy {
        set_energy_headers(h, e);
    }
    Ok(resp)
}

fn set_generation_headers(
    h: &mut axum::http::HeaderMap,
    model: &ServedModel,
    done: &Finished,
    total: Duration,
) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    put_header(h, "x-model", model.name.clone());
    put_header(h, "x-precision", model.precision.to_string());
    put_header(h, "x-batch-size", done.max_batch.to_string());
    put_header(
        h,
        "server-timing",
        format!(
            "queue;dur={:.3}, ttft;dur={:.3}, compute;dur={:.3}, total;dur={:.3}",
            ms(done.queue_time),
            ms(done.time_to_first_token),
            ms(done.compute_time),
            ms(total)
        ),
    );
}

/// State of an SSE response.
struct StreamState {
    rx: UnboundedReceiver<GenEvent>,
    model: Arc<ServedModel>,
    endpoint: Endpoint,
    id: String,
    created: u64,
    include_usage: bool,
    /// Role chunk sent (chat).
    opened: bool,
    /// `[DONE]` sent: the stream ends.
    closed: bool,
    /// Events ready to send before reading more.
    queued: std::collections::VecDeque<Event>,
}

impl StreamState {
    fn chunk(&self, delta_or_text: Value, finish_reason: Value) -> Event {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0, "delta": delta_or_text, "logprobs": null, "finish_reason": finish_reason,
            }),
            Endpoint::Completions => json!({
                "index": 0, "text": delta_or_text, "logprobs": null, "finish_reason": finish_reason,
            }),
        };
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        };
        let mut body = json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model.name,
            "choices": [choice],
        });
        if self.include_usage {
            body["usage"] = Value::Null;
        }
        Event::default().data(body.to_string())
    }

    fn text_chunk(&mut self, piece: String) -> Event {
        match self.endpoint {
            Endpoint::Chat => self.chunk(json!({ "content": piece }), Value::Null),
            Endpoint::Completions => self.chunk(Value::String(piece), Value::Null),
        }
    }

    async fn next_events(&mut self) {
        if !self.opened {
            self.opened = true;
            if self.endpoint == Endpoint::Chat {
                let e = self.chunk(json!({"role": "assistant", "content": ""}), Value::Null);
                self.queued.push_back(e);
                return;
            }
        }
        match self.rx.recv().await {
            Some(GenEvent::Text(piece)) => {
                if !piece.is_empty() {
                    let e = self.text_chunk(piece);
                    self.queued.push_back(e);
                }
            }
            Some(GenEvent::Finished(done)) => {
                let last = match self.endpoint {
                    Endpoint::Chat => self.chunk(json!({}), json!(done.reason.as_str())),
                    Endpoint::Completions => {
                        self.chunk(Value::String(String::new()), json!(done.reason.as_str()))
                    }
                };
                self.queued.push_back(last);
                if self.include_usage {
                    let energy = settle_energy(&self.model, &done.energy)
                        .await
                        .ok()
                        .flatten();
                    let object = match self.endpoint {
                        Endpoint::Chat => "chat.completion.chunk",
                        Endpoint::Completions => "text_completion",
                    };
                    let body = json!({
                        "id": self.id, "object": object, "created": self.created,
                        "model": self.model.name, "choices": [],
                        "usage": usage_of(&done, energy),
                    });
                    self.queued
                        .push_back(Event::default().data(body.to_string()));
                }
                self.queued.push_back(Event::default().data("[DONE]"));
                self.closed = true;
            }
            Some(GenEvent::Failed(e)) => {
                let err = ApiError::from(e);
                let body = json!({"error": {"message": err.message, "type": "server_error", "param": null, "code": err.code}});
                self.queued
                    .push_back(Event::default().data(body.to_string()));
                self.queued.push_back(Event::default().data("[DONE]"));
                self.closed = true;
            }
            None => {
                self.queued.push_back(Event::default().data("[DONE]"));
                self.closed = true;
            }
        }
    }
}

fn stream(
    model: Arc<ServedModel>,
    endpoint: Endpoint,
    plan: Plan,
    prompt: Vec<u32>,
    started: Instant,
) -> Response {
    let Some(gen) = model.generation() else {
        return ApiError::internal("not a generation model").into_response();
    };
    let rx = match submit(gen, &plan, prompt) {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    let (id, _, created) = ids(endpoint);
    let state = StreamState {
        rx,
        model: model.clone(),
        endpoint,
        id,
        created,
        include_usage: plan.include_usage,
        opened: false,
        closed: false,
        queued: Default::default(),
    };
    let events = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(e) = st.queued.pop_front() {
                return Some((Ok::<Event, Infallible>(e), st));
            }
            if st.closed {
                return None;
            }
            st.next_events().await;
        }
    });
    let mut resp = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    let h = resp.headers_mut();
    put_header(h, "x-model", model.name.clone());
    put_header(h, "x-precision", model.precision.to_string());
    put_header(
        h,
        "server-timing",
        format!("prepare;dur={:.3}", started.elapsed().as_secs_f64() * 1e3),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_validated_with_the_parameter_named() {
        let f = |v: Value| serde_json::from_value::<GenerationFields>(v).unwrap();
        let err = |v: Value| parse_fields(f(v)).err().unwrap();
        assert_eq!(err(json!({"n": 2})).param.as_deref(), Some("n"));
        assert_eq!(
            err(json!({"temperature": 3.0})).param.as_deref(),
            Some("temperature")
        );
        assert_eq!(err(json!({"top_p": 0})).param.as_deref(), Some("top_p"));
        assert_eq!(err(json!({"top_k": -5})).param.as_deref(), Some("top_k"));
        assert_eq!(
            err(json!({"max_tokens": 0})).param.as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            err(json!({"stop": ["a", "b", "c", "d", "e"]}))
                .param
                .as_deref(),
            Some("stop")
        );
        assert_eq!(err(json!({"stop": 5})).param.as_deref(), Some("stop"));
        assert_eq!(
            err(json!({"presence_penalty": 0.5})).param.as_deref(),
            Some("presence_penalty")
        );
        assert_eq!(
            err(json!({"logprobs": true})).param.as_deref(),
            Some("logprobs")
        );
        let ok = parse_fields(f(json!({"max_completion_tokens": 5, "max_tokens": 9, "stop": "x", "seed": 3, "temperature": 0}))).unwrap();
        assert_eq!(ok.max_tokens, Some(5));
        assert_eq!(ok.stop, vec!["x"]);
        assert!(ok.sampling.is_greedy());
    }

    #[test]
    fn messages_and_prompts_parse_or_name_the_element_at_fault() {
        let m = parse_messages(json!([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])).unwrap();
        assert_eq!(m[0].content, "ab");
        let e = parse_messages(json!([{"role": "user", "content": "x"}, {"content": "y"}]))
            .unwrap_err();
        assert!(e.message.contains("messages[1].role"), "{}", e.message);
        assert!(parse_messages(json!([])).is_err());
        assert!(matches!(parse_prompt(json!(["hi"])).unwrap(), Prompt::Text(t) if t == "hi"));
        assert!(
            matches!(parse_prompt(json!([1, 2, 3])).unwrap(), Prompt::Tokens(t) if t == vec![1, 2, 3])
        );
        assert!(parse_prompt(json!(["a", "b"]))
            .unwrap_err()
            .message
            .contains("one prompt"));
        assert!(parse_prompt(json!({"x": 1})).is_err());
    }
}

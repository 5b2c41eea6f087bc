//! `POST /v1/chat/completions` and `POST /v1/completions`, OpenAI-compatible, streamed (SSE) or
//! not, with every response saying what it cost.
//!
//! The handlers here only orchestrate: [`validate`] checks the request, the shared
//! [`crate::api::handler`] core finds the model, tokenizes and times, the scheduler generates,
//! and [`wire`] (whole responses) or [`sse`] (streams) shapes the answer. Non-streamed responses
//! carry the metering headers and `usage.energy`; a stream's energy comes in its final usage
//! chunk (`stream_options.include_usage`), after which `data: [DONE]` ends it. A client that goes
//! away (closed connection, dropped stream) cancels its sequence at the next step.

pub mod sse;
pub mod validate;
pub mod wire;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use self::validate::{FittingPrompt, Plan, Prompt};
use self::wire::{ChatRequest, CompletionRequest, CompletionResponse, Endpoint, ResponseId};
use super::handler::{self, RequestMetrics, Serving};
use super::json::JsonBody;
use super::usage::settle_energy;
use super::{ApiError, AppState};
use crate::batch::generation::{GenEvent, GenerationJob};
use crate::engine::decoder::model::RenderChatError;
use crate::engine::GenerationModel;
use crate::registry::{GenerationServing, ServedModel};

/// `POST /v1/chat/completions`.
pub async fn chat(State(state): State<AppState>, JsonBody(req): JsonBody<ChatRequest>) -> Response {
    let metrics = RequestMetrics::start(&state, &req.model, Endpoint::Chat.label());
    let resp = handle(
        &state,
        Endpoint::Chat,
        &req.model,
        req.fields,
        req.messages,
        metrics.started(),
    )
    .await;
    metrics.finish(resp)
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CompletionRequest>,
) -> Response {
    let metrics = RequestMetrics::start(&state, &req.model, Endpoint::Completions.label());
    let resp = handle(
        &state,
        Endpoint::Completions,
        &req.model,
        req.fields,
        req.prompt,
        metrics.started(),
    )
    .await;
    metrics.finish(resp)
}

/// A request ready to queue: its model, options and prompt, all checked.
struct Prepared<'a> {
    model: &'a Arc<ServedModel>,
    gen: &'a GenerationServing,
    plan: Plan,
    prompt: FittingPrompt,
}

/// Prepares the request, then streams it or answers it whole within the request timeout.
async fn handle(
    state: &AppState,
    endpoint: Endpoint,
    model_name: &str,
    fields: wire::GenerationFields,
    raw_prompt: Value,
    started: Instant,
) -> Response {
    // The whole request, preparing (tokenizing) included, runs within the request deadline; a
    // stream's own deadline then runs on in the stream (see `ending`). Dropping `complete` on
    // timeout drops the event receiver: the sequence is cancelled.
    let work = async {
        let p = prepare(state, endpoint, model_name, fields, raw_prompt).await?;
        if p.plan.stream {
            stream(p, endpoint, started, state).await
        } else {
            complete(p, endpoint, started).await
        }
    };
    handler::within_timeout(state, work).await
}

/// Finds the model, validates the request, renders and tokenizes the prompt (blocking pool)
/// and checks it against the context length.
async fn prepare<'a>(
    state: &'a AppState,
    endpoint: Endpoint,
    model_name: &str,
    fields: wire::GenerationFields,
    raw_prompt: Value,
) -> Result<Prepared<'a>, ApiError> {
    let (model, gen) = handler::find_model::<GenerationServing>(state, model_name)?;
    let validate::Request { plan, prompt } =
        validate::request(endpoint, fields, raw_prompt, state.limits())?;
    let engine = gen.engine.clone();
    let ids = handler::tokenize_blocking(state, move || tokenize(&engine, prompt)).await?;
    let prompt = validate::check_context(gen, ids, &plan, endpoint)?;
    crate::metrics::record_tokens(&model.name, "prompt", prompt.len());
    Ok(Prepared {
        model,
        gen,
        plan,
        prompt,
    })
}

/// The prompt's token ids: given, a raw text tokenized (special tokens written in it are
/// parsed: a raw prompt is the caller's whole prompt), or a conversation rendered by the chat
/// template with its messages' contents tokenized as plain text. CPU work: runs on the
/// blocking pool.
fn tokenize(engine: &GenerationModel, prompt: Prompt) -> Result<Vec<u32>, ApiError> {
    match prompt {
        Prompt::Tokens(ids) => Ok(ids),
        Prompt::Text(t) => engine
            .tokenizer()
            .encode(&t)
            .map_err(|e| ApiError::internal(e.to_string())),
        Prompt::Chat(messages) => match engine.encode_chat(&messages) {
            Ok(ids) => Ok(ids),
            Err(RenderChatError::Tokenizer(e)) => Err(ApiError::internal(e)),
            Err(e) => Err(validate::ValidationError::from(e).into()),
        },
    }
}

/// Submits the sequence; its events arrive on the receiver.
fn submit(
    gen: &GenerationServing,
    plan: &Plan,
    prompt: FittingPrompt,
) -> Result<UnboundedReceiver<GenEvent>, ApiError> {
    let (tx, rx) = unbounded_channel();
    let job = GenerationJob {
        max_new_tokens: prompt.max_new_tokens(),
        prompt: prompt.into_ids(),
        sampling: plan.sampling,
        stop: plan.stop.clone(),
        ignore_eos: plan.ignore_eos,
        events: tx,
    };
    gen.scheduler.submit(job)?;
    Ok(rx)
}

/// Generates the whole completion, settles its energy and answers with the metering headers.
async fn complete(
    p: Prepared<'_>,
    endpoint: Endpoint,
    started: Instant,
) -> Result<Response, ApiError> {
    let mut rx = submit(p.gen, &p.plan, p.prompt)?;
    let mut text = String::new();
    let done = loop {
        match rx.recv().await {
            Some(GenEvent::Text(piece)) => text.push_str(&piece),
            Some(GenEvent::Finished(done)) => break done,
            Some(GenEvent::Failed(e)) => return Err(e.into()),
            None => return Err(ApiError::internal("the compute thread stopped")),
        }
    };
    let energy = settle_energy(p.model, &done.energy).await?;
    let body = CompletionResponse::new(
        ResponseId::new(endpoint, &p.model.name),
        text,
        &done,
        energy.clone(),
    );
    let serving = Serving {
        model: p.model,
        batch_size: Some(done.max_batch),
        timing: &[
            ("queue", done.queue_time),
            ("ttft", done.time_to_first_token),
            ("compute", done.compute_time),
        ],
        until_now: ("total", started),
    };
    Ok(handler::metered_json(body, serving, energy.as_ref()))
}

/// Submits the sequence and answers with its event stream once the sequence has produced its
/// first event, so that a request that cannot start (a full queue, the queue-wait deadline, a
/// failed first step) gets its status (503, 500) rather than a 200 and an error event. Only
/// what is known then goes in the headers: the model, its precision, the time to first event.
async fn stream(
    p: Prepared<'_>,
    endpoint: Endpoint,
    started: Instant,
    state: &AppState,
) -> Result<Response, ApiError> {
    let mut rx = submit(p.gen, &p.plan, p.prompt)?;
    let first = match rx.recv().await {
        Some(GenEvent::Failed(e)) => return Err(e.into()),
        Some(event) => event,
        None => return Err(ApiError::internal("the compute thread stopped")),
    };
    let rid = ResponseId::new(endpoint, &p.model.name);
    let events = sse::events(
        first,
        rx,
        p.model.clone(),
        rid,
        p.plan.include_usage,
        ending(state, started),
    );
    let mut resp = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    Serving {
        model: p.model,
        batch_size: None,
        timing: &[],
        until_now: ("ttft", started),
    }
    .write(resp.headers_mut());
    Ok(resp)
}

/// What cuts a stream short: the server's shutdown, or the request deadline (counted from
/// `started`, as for a whole response).
fn ending(state: &AppState, started: Instant) -> sse::Ending {
    let shutdown = state.streams_ending();
    let ms = state.limits().request_timeout_ms;
    let deadline = tokio::time::Instant::from_std(started) + state.limits().request_timeout();
    Box::pin(async move {
        tokio::select! {
            _ = shutdown => sse::EndReason::ShuttingDown,
            _ = tokio::time::sleep_until(deadline) => sse::EndReason::Deadline { ms },
        }
    })
}

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

use std::time::Instant;

use axum::extract::State;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use self::wire::{ChatRequest, CompletionRequest, CompletionResponse, Endpoint, ResponseId};
use crate::api::handler::{self, generate, RequestMetrics, Serving};
use crate::api::json::JsonBody;
use crate::api::{ApiError, AppState};

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
    // stream's own deadline then runs on in the stream (see `ending`). Dropping `work` on
    // timeout drops the event receiver: the sequence is cancelled.
    let work = async {
        let p = generate::prepare(state, endpoint, model_name, fields, raw_prompt).await?;
        if p.plan.stream {
            stream(p.submit()?, endpoint, started, state).await
        } else {
            let c = p.submit()?.complete().await?;
            let body = CompletionResponse::new(
                ResponseId::new(endpoint, &c.model.name),
                c.text.clone(),
                &c.done,
                c.energy.clone(),
            );
            let mut resp = handler::metered_json(body, c.serving(started), c.energy.as_ref());
            resp.extensions_mut().insert(c.report());
            Ok(resp)
        }
    };
    handler::within_timeout(state, work).await
}

/// Answers with the sequence's event stream once it has produced its first event (see
/// [`generate::Submitted::first_event`]). Only what is known then goes in the headers: the
/// model, its precision, the time to first event.
async fn stream(
    mut s: generate::Submitted<'_>,
    endpoint: Endpoint,
    started: Instant,
    state: &AppState,
) -> Result<Response, ApiError> {
    let first = s.first_event().await?;
    let rid = ResponseId::new(endpoint, &s.model.name);
    let (model, include_usage) = (s.model, s.plan.include_usage);
    let (seq, pending) = s.into_stream();
    let events = sse::events(
        first,
        seq,
        rid,
        include_usage,
        generate::ending(state, started),
    );
    let mut resp = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    resp.extensions_mut().insert(pending);
    Serving {
        model,
        batch_size: None,
        timing: Vec::new(),
        until_now: ("ttft", started),
    }
    .write(resp.headers_mut());
    Ok(resp)
}

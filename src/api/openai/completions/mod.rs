//! `POST /v1/chat/completions` and `POST /v1/completions`, OpenAI-compatible, streamed (SSE) or
//! not, with every response saying what it cost.
//!
//! The handlers here only orchestrate: [`validate`] checks the request, the shared
//! [`crate::api::handler`] core finds the model, tokenizes and times, the scheduler generates,
//! and [`wire`] (whole responses) or [`sse`] (streams) shapes the answer. Non-streamed responses
//! carry the metering headers and `usage.energy`; a stream's energy comes in its final usage
//! chunk (`stream_options.include_usage`), after which `data: [DONE]` ends it. A client that goes
//! away (closed connection, dropped stream) cancels its sequence at the next step.

pub mod logprobs;
pub mod sse;
pub mod validate;
pub mod wire;

use std::time::Instant;

use axum::extract::State;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::Value;

use self::wire::{ChatRequest, CompletionRequest, CompletionResponse, Endpoint, ResponseId};
use crate::api::handler::{self, generate, RequestMetrics, Serving};
use crate::api::json::JsonBody;
use crate::api::usage::{lookup_energy, UsageReport};
use crate::api::{ApiError, AppState};
use crate::batch::generation::{FinishReason, Finished};
use crate::cache::{CacheStatus, CachedCompletion};
use crate::governance::Tenant;
use crate::meter::class::Work;
use crate::registry::ServedModel;

/// `POST /v1/chat/completions`.
pub async fn chat(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Response {
    let metrics = RequestMetrics::start(&state, &req.model, Endpoint::Chat.label());
    let resp = handle(
        &state,
        Endpoint::Chat,
        &req.model,
        req.fields,
        req.messages,
        metrics.started(),
        handler::tenant_name(tenant.as_ref().map(|Extension(t)| t)),
    )
    .await;
    metrics.finish(resp)
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
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
        handler::tenant_name(tenant.as_ref().map(|Extension(t)| t)),
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
    tenant: &str,
) -> Response {
    // The whole request, preparing (tokenizing) included, runs within the request deadline; a
    // stream's own deadline then runs on in the stream (see `ending`). Dropping `work` on
    // timeout drops the event receiver: the sequence is cancelled.
    let work = async {
        let p = generate::prepare(state, endpoint, model_name, fields, raw_prompt).await?;
        if p.plan.stream {
            stream(p.submit()?, endpoint, started, state).await
        } else {
            // A deterministic completion may come from, and goes to, the response cache.
            let key = cache_key(state, tenant, endpoint, &p);
            let looked_up = Instant::now();
            if let (Some(key), Some((cache, watts))) = (&key, state.cache()) {
                if let Some(hit) = cache.get_completion(&p.model.name, key) {
                    let lookup = looked_up.elapsed();
                    return Ok(cached(endpoint, p.model, hit, lookup, watts, started));
                }
            }
            let mut c = p.submit()?.complete().await?;
            if let (Some(key), Some((cache, _))) = (key.clone(), state.cache()) {
                let value = CachedCompletion {
                    text: c.text.as_str().into(),
                    finish_reason: c.done.reason.as_str(),
                    prompt_tokens: c.done.prompt_tokens,
                    completion_tokens: c.done.completion_tokens,
                };
                cache.put_completion(&c.model.name, key, value);
            }
            let logprobs = c.choice_logprobs(endpoint);
            let body = CompletionResponse::new(
                ResponseId::new(endpoint, &c.model.name),
                c.response_text(),
                &c.done,
                c.energy.clone(),
                logprobs,
            );
            let mut resp = handler::metered_json(body, c.serving(started), c.energy.as_ref());
            if key.is_some() {
                handler::set_cache_header(resp.headers_mut(), Some(CacheStatus::Miss));
            }
            resp.extensions_mut().insert(c.report());
            Ok(resp)
        }
    };
    handler::within_timeout(state, work).await
}

/// The response-cache key of a completion whose result is deterministic (temperature 0, or a
/// seed), when the cache keeps completions: everything that shapes the result is in it.
fn cache_key(
    state: &AppState,
    tenant: &str,
    endpoint: Endpoint,
    p: &generate::Prepared<'_>,
) -> Option<String> {
    let (cache, _) = state.cache()?;
    let s = &p.plan.sampling;
    if !cache.caches_completions() || !(s.temperature == 0.0 || s.seed.is_some()) {
        return None;
    }
    // The cache keeps text and counts only.
    if p.plan.logprobs.is_some() || p.plan.echo {
        return None;
    }
    let options = format!(
        "{}|{s:?}|{:?}|{}|{}",
        endpoint.label(),
        p.plan.stop,
        p.prompt.max_new_tokens(),
        p.plan.ignore_eos
    );
    Some(cache.completion_key(
        tenant,
        &p.model.name,
        p.model.precision.as_str(),
        &options,
        p.prompt.ids(),
    ))
}

/// The answer of a completion found in the cache: the cached text and counts, the lookup's
/// energy, `x-cache: hit`.
fn cached(
    endpoint: Endpoint,
    model: &ServedModel,
    hit: CachedCompletion,
    lookup: std::time::Duration,
    watts: f64,
    started: Instant,
) -> Response {
    let work = Work::Generation {
        output_tokens: hit.completion_tokens,
    };
    let energy = lookup_energy(model, lookup.as_secs_f64(), watts, work);
    if let Some(e) = &energy {
        crate::metrics::record_request_energy(&model.name, e.joules);
    }
    let done = Finished {
        reason: if hit.finish_reason == "stop" {
            FinishReason::Stop
        } else {
            FinishReason::Length
        },
        prompt_tokens: hit.prompt_tokens,
        completion_tokens: hit.completion_tokens,
        queue_time: std::time::Duration::ZERO,
        time_to_first_token: std::time::Duration::ZERO,
        compute_time: std::time::Duration::ZERO,
        max_batch: 0,
        energy: Vec::new(),
    };
    let body = CompletionResponse::new(
        ResponseId::new(endpoint, &model.name),
        hit.text.to_string(),
        &done,
        energy.clone(),
        None,
    );
    let serving = Serving {
        model,
        batch_size: Some(0),
        timing: vec![("cache", lookup)],
        until_now: ("total", started),
    };
    let mut resp = handler::metered_json(body, serving, energy.as_ref());
    handler::set_cache_header(resp.headers_mut(), Some(CacheStatus::Hit));
    resp.extensions_mut().insert(
        UsageReport::new(
            model,
            hit.prompt_tokens,
            hit.completion_tokens,
            energy.as_ref(),
            0,
        )
        .with_cache_hits(1),
    );
    resp
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
    let shaping = sse::Shaping {
        logprobs: s.logprob_shaper(),
        echo: s.echo.clone(),
    };
    let (seq, pending) = s.into_stream();
    let events = sse::events(
        first,
        seq,
        rid,
        include_usage,
        shaping,
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

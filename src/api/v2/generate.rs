//! Triton's generate extension: `POST /v2/models/{m}/generate` answers a prompt with its whole
//! completion, `generate_stream` with server-sent events, one per piece of text. The body is a
//! JSON object: `text_input`, and sampling parameters either in `parameters` or as top-level
//! keys (as Triton's LLM backends take them). The answer carries `text_output`, and its
//! `parameters` say what it cost (on the last event of a stream).

use std::convert::Infallible;

use axum::extract::{Path, Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use serde::Serialize;
use serde_json::Value;

use super::infer::{self, TEXT_INPUT};
use super::params::{self, Params};
use super::rest::{read_v2_body, ModelPath};
use crate::api::handler::generate::{self, EndReason, SequenceEvents, Submitted};
use crate::api::handler::RequestMetrics;
use crate::api::{ApiError, AppState};
use crate::batch::generation::GenEvent;

/// A generate request: the prompt and the parameters (top-level keys other than `text_input`
/// and `parameters` count as parameters; `parameters` wins over them).
struct GenerateRequest {
    prompt: String,
    params: Params,
}

fn parse(body: &[u8]) -> Result<GenerateRequest, ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_json", m);
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("The generate request is not valid JSON: {e}")))?;
    let Value::Object(mut top) = value else {
        return Err(bad("The generate request must be a JSON object".into()));
    };
    let prompt = match top.remove(TEXT_INPUT) {
        Some(Value::String(s)) => s,
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_string()
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_tensor",
                format!("`{TEXT_INPUT}` must be a string, got {other}"),
            )
            .with_param(TEXT_INPUT))
        }
        None => {
            return Err(ApiError::bad_request(
                "invalid_tensor",
                format!("The generate request needs `{TEXT_INPUT}`"),
            )
            .with_param(TEXT_INPUT))
        }
    };
    let nested = match top.remove("parameters") {
        None | Some(Value::Null) => Params::new(),
        Some(Value::Object(p)) => p,
        Some(other) => return Err(bad(format!("`parameters` must be an object, got {other}"))),
    };
    let mut params = top;
    params.extend(nested);
    Ok(GenerateRequest { prompt, params })
}

/// The whole answer.
#[derive(Serialize)]
struct GenerateResponse<'a> {
    model_name: &'a str,
    model_version: &'static str,
    text_output: String,
    parameters: Params,
}

/// `POST /v2/models/{m}[/versions/{v}]/generate`.
pub async fn generate(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
    req: Request,
) -> Response {
    let metrics = RequestMetrics::start(&state, &path.model, "v2_generate");
    let started = metrics.started();
    let work = async {
        let submitted = start(&state, &path, req).await?;
        let c = submitted.complete().await.map_err(Reply::from)?;
        let mut parameters = params::served(c.done.max_batch, c.model.precision, c.energy.as_ref());
        parameters.insert("finish_reason".into(), Value::from(c.done.reason.as_str()));
        let body = GenerateResponse {
            model_name: &c.model.name,
            model_version: infer::VERSION,
            text_output: c.text.clone(),
            parameters,
        };
        let mut resp = Json(body).into_response();
        c.serving(started).write(resp.headers_mut());
        if let Some(e) = &c.energy {
            crate::api::usage::set_energy_headers(resp.headers_mut(), e);
        }
        resp.extensions_mut().insert(c.report());
        Ok::<_, Reply>(resp)
    };
    metrics.finish(within_timeout(&state, work).await)
}

/// `POST /v2/models/{m}[/versions/{v}]/generate_stream`: server-sent events once the sequence
/// has produced its first event (a request that cannot start gets its error status).
pub async fn generate_stream(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
    req: Request,
) -> Response {
    let metrics = RequestMetrics::start(&state, &path.model, "v2_generate_stream");
    let started = metrics.started();
    let work = async {
        let mut s = start(&state, &path, req).await?;
        let first = s.first_event().await.map_err(Reply::from)?;
        let model = s.model.clone();
        let ending = generate::ending(&state, started);
        let (seq, pending) = s.into_stream();
        let mut resp = Sse::new(events(first, seq, model.clone(), ending))
            .keep_alive(KeepAlive::default())
            .into_response();
        resp.extensions_mut().insert(pending);
        crate::api::handler::Serving {
            model: &model,
            batch_size: None,
            timing: Vec::new(),
            until_now: ("ttft", started),
        }
        .write(resp.headers_mut());
        Ok::<_, Reply>(resp)
    };
    metrics.finish(within_timeout(&state, work).await)
}

/// Why a generate request did not answer normally: its body was refused (already a
/// response), or it failed.
enum Reply {
    Rejected(Response),
    Failed(ApiError),
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        Reply::Failed(e)
    }
}

async fn within_timeout<F>(state: &AppState, work: F) -> Response
where
    F: std::future::Future<Output = Result<Response, Reply>>,
{
    match tokio::time::timeout(state.limits().request_timeout(), work).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(Reply::Rejected(resp))) => resp,
        Ok(Err(Reply::Failed(e))) => e.into_v2_response(),
        Err(_) => ApiError::timeout(state.limits().request_timeout_ms).into_v2_response(),
    }
}

/// Reads and checks the request, prepares the completion and queues it.
async fn start<'a>(
    state: &'a AppState,
    path: &ModelPath,
    req: Request,
) -> Result<Submitted<'a>, Reply> {
    let model = infer::find(state, &path.model, path.version.as_deref())?;
    if model.generation().is_none() {
        return Err(ApiError::bad_request(
            "wrong_endpoint",
            format!(
                "Model `{}` is an embedding model; the generate extension serves generation models (use /v2/models/{}/infer)",
                model.name, model.name
            ),
        )
        .into());
    }
    let (body, _) = read_v2_body(req, state).await.map_err(Reply::Rejected)?;
    let g = parse(&body)?;
    let prepared = infer::prepare(state, &path.model, g.prompt, &g.params).await?;
    Ok(prepared.submit()?)
}

/// One event of a stream.
#[derive(Serialize)]
struct StreamEvent<'a> {
    model_name: &'a str,
    model_version: &'static str,
    text_output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Params>,
}

/// The events of a stream: one per piece of text, the last with the parameters (energy,
/// `finish_reason`); an error ends the stream with `{"error": "..."}`.
fn events(
    first: GenEvent,
    seq: SequenceEvents,
    model: std::sync::Arc<crate::registry::ServedModel>,
    ending: generate::Ending,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = (Some(first), seq, ending, false);
    futures_util::stream::unfold(state, move |(mut first, mut seq, mut ending, done)| {
        let model = model.clone();
        async move {
            if done {
                return None;
            }
            let event = match first.take() {
                Some(e) => Some(e),
                None => tokio::select! {
                    e = seq.recv() => e,
                    reason = &mut ending => {
                        let message = match reason {
                            EndReason::ShuttingDown => "The server is shutting down; the completion was cut short".to_string(),
                            EndReason::Deadline { ms } => format!("The completion did not finish within {ms} ms (limits.request_timeout_ms)"),
                        };
                        return Some((Ok(error_event(&message)), (None, seq, ending, true)));
                    }
                },
            };
            let piece = |text: String, parameters| StreamEvent {
                model_name: &model.name,
                model_version: infer::VERSION,
                text_output: text,
                parameters,
            };
            let (out, finished) = match event {
                Some(GenEvent::Text(text)) => (json_event(&piece(text, None)), false),
                // Never asked for here: nothing to send.
                Some(GenEvent::Logprobs(_) | GenEvent::PromptLogprobs(_)) => {
                    (Event::default().comment("logprobs"), false)
                }
                Some(GenEvent::Finished(done)) => {
                    let energy = seq.settle(&done).await;
                    let mut p = params::served(done.max_batch, model.precision, energy.as_ref());
                    p.insert("finish_reason".into(), Value::from(done.reason.as_str()));
                    (json_event(&piece(String::new(), Some(p))), true)
                }
                Some(GenEvent::Failed(e)) => (error_event(&ApiError::from(e).message), true),
                None => (error_event("the compute thread stopped"), true),
            };
            Some((Ok(out), (None, seq, ending, finished)))
        }
    })
}

fn json_event<T: Serialize>(body: &T) -> Event {
    match serde_json::to_string(body) {
        Ok(json) => Event::default().data(json),
        Err(e) => error_event(&format!("could not serialize an event: {e}")),
    }
}

fn error_event(message: &str) -> Event {
    Event::default().data(serde_json::json!({ "error": message }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_come_nested_or_at_the_top() {
        let g = parse(br#"{"text_input": "hi", "max_tokens": 4, "parameters": {"temperature": 0, "max_tokens": 8}}"#)
            .unwrap();
        assert_eq!(g.prompt, "hi");
        assert_eq!(g.params["max_tokens"], 8, "`parameters` wins");
        assert_eq!(g.params["temperature"], 0);
        let g = parse(br#"{"text_input": ["hi"]}"#).unwrap();
        assert_eq!(g.prompt, "hi");
    }

    #[test]
    fn malformed_generate_requests_are_400s_naming_the_field() {
        let e = parse(br#"{"parameters": {}}"#).map(|_| ()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("text_input"));
        let e = parse(br#"{"text_input": 5}"#).map(|_| ()).unwrap_err();
        assert!(e.message.contains("must be a string"), "{}", e.message);
        assert!(parse(b"[1]").is_err());
        assert!(parse(b"{").is_err());
        let e = parse(br#"{"text_input": "a", "parameters": 3}"#)
            .map(|_| ())
            .unwrap_err();
        assert!(e.message.contains("must be an object"), "{}", e.message);
    }
}

//! The JSON of `/v1/chat/completions` and `/v1/completions`: request bodies as clients send
//! them, and every body we answer with (whole responses, stream chunks, the in-stream error).
//!
//! Response fields are declared in alphabetical order, nested objects included. That is the
//! order the `json!` bodies these types replaced produced (serde_json without `preserve_order`
//! keeps object keys sorted), kept so that responses stay byte for byte what they were; the tests
//! below pin it. `logprobs` is always present, `null` when not requested, as OpenAI sends it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::logprobs::{ChoiceLogprobs, LogprobShaper};
use crate::api::usage::UsageEnergy;
use crate::batch::generation::Finished;
use crate::engine::TokenLogprob;

/// Which of the two endpoints a request came to: it decides the `object` names, the id prefix,
/// the metrics label and the parameter that holds the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completions,
}

impl Endpoint {
    /// The `endpoint` label of the request metrics.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat_completions",
            Endpoint::Completions => "completions",
        }
    }

    /// The request field that holds the prompt (the `param` of errors about it).
    pub fn prompt_param(self) -> &'static str {
        match self {
            Endpoint::Chat => "messages",
            Endpoint::Completions => "prompt",
        }
    }

    /// `object` of a whole response.
    fn object(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completion",
            Endpoint::Completions => "text_completion",
        }
    }

    /// `object` of a stream chunk.
    fn chunk_object(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        }
    }

    /// This endpoint's `logprobs` object for `tokens` (after an echoed prompt's first token
    /// `first`, which only completions show): what a whole answer and each stream chunk carry.
    pub fn logprobs(
        self,
        shaper: &mut LogprobShaper,
        first: Option<u32>,
        tokens: &[TokenLogprob],
    ) -> ChoiceLogprobs {
        match self {
            Endpoint::Chat => ChoiceLogprobs::Chat(shaper.chat(tokens)),
            Endpoint::Completions => ChoiceLogprobs::Text(shaper.text(first, tokens)),
        }
    }

    /// Prefix of the response id, as OpenAI's.
    fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
        }
    }
}

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
    /// Completions: 0–5 alternatives per token; chat: `true` (with `top_logprobs`).
    #[serde(default)]
    pub logprobs: Option<Value>,
    /// Chat: 0–20 alternatives per token, with `logprobs: true`.
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    /// Completions: return the prompt before the completion.
    #[serde(default)]
    pub echo: Option<bool>,
    /// OpenAI's end-user id; accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,
    /// Keep generating past stop tokens until `max_tokens` (vLLM's extension, for benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
}

/// `stream_options`: what a stream sends besides the text.
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

/// What every body of one response shares: its id, creation time and model, fixed once so that
/// all chunks of a stream carry the same.
#[derive(Debug, Clone)]
pub struct ResponseId {
    /// `chatcmpl-…` or `cmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// The endpoint, for the `object` names.
    pub endpoint: Endpoint,
}

impl ResponseId {
    /// A fresh id, created now.
    pub fn new(endpoint: Endpoint, model: &str) -> Self {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            id: format!("{}-{}", endpoint.id_prefix(), uuid::Uuid::new_v4().simple()),
            created,
            model: model.to_string(),
            endpoint,
        }
    }
}

/// A value that is always `null` on the wire (`logprobs`, the in-stream error's `param`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Null;

/// `usage` of a completion: token counts, and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionUsage {
    /// Generated tokens (a final stop token included).
    pub completion_tokens: usize,
    /// What it cost (absent when metering is off); keys sorted like every other object here.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "with_sorted_keys"
    )]
    pub energy: Option<UsageEnergy>,
    /// Prompt tokens (after the chat template).
    pub prompt_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

impl CompletionUsage {
    /// The counts of a finished sequence, with its settled energy.
    pub fn new(done: &Finished, energy: Option<UsageEnergy>) -> Self {
        Self {
            completion_tokens: done.completion_tokens,
            energy,
            prompt_tokens: done.prompt_tokens,
            total_tokens: done.prompt_tokens + done.completion_tokens,
        }
    }
}

/// Serializes `value` through a `serde_json::Value`, whose objects keep their keys sorted:
/// [`UsageEnergy`] declares its fields in the order `/v1/embeddings` shows them, while the
/// completion bodies have always shown them sorted.
fn with_sorted_keys<T: Serialize, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    serde_json::to_value(value)
        .map_err(serde::ser::Error::custom)?
        .serialize(s)
}

/// The body of a non-streamed response.
#[derive(Debug, Serialize)]
pub struct CompletionResponse {
    /// The one completion (n = 1).
    pub choices: Vec<Choice>,
    /// Unix seconds.
    pub created: u64,
    /// `chatcmpl-…` or `cmpl-…`.
    pub id: String,
    /// The served model's name.
    pub model: String,
    /// `chat.completion` or `text_completion`.
    pub object: &'static str,
    /// Token counts and energy.
    pub usage: CompletionUsage,
}

impl CompletionResponse {
    /// The response for `text`, generated to the end `done` describes, with its `logprobs`
    /// when asked for.
    pub fn new(
        rid: ResponseId,
        text: String,
        done: &Finished,
        energy: Option<UsageEnergy>,
        logprobs: Option<ChoiceLogprobs>,
    ) -> Self {
        let finish_reason = done.reason.as_str();
        let choice = match rid.endpoint {
            Endpoint::Chat => Choice::Chat(ChatChoice {
                finish_reason,
                index: 0,
                logprobs,
                message: AssistantMessage {
                    content: text,
                    role: "assistant",
                },
            }),
            Endpoint::Completions => Choice::Text(TextChoice {
                finish_reason,
                index: 0,
                logprobs,
                text,
            }),
        };
        Self {
            choices: vec![choice],
            created: rid.created,
            id: rid.id,
            model: rid.model,
            object: rid.endpoint.object(),
            usage: CompletionUsage::new(done, energy),
        }
    }
}

/// One element of `choices`, shaped by the endpoint.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Choice {
    /// `/v1/chat/completions`: a message.
    Chat(ChatChoice),
    /// `/v1/completions`: text.
    Text(TextChoice),
}

/// A chat completion's choice.
#[derive(Debug, Serialize)]
pub struct ChatChoice {
    /// `stop` or `length`.
    pub finish_reason: &'static str,
    /// Always 0 (n = 1).
    pub index: u32,
    /// The tokens' log-probabilities when asked for, else `null`.
    pub logprobs: Option<ChoiceLogprobs>,
    /// The assistant's answer.
    pub message: AssistantMessage,
}

/// `message` of a chat choice.
#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    /// The generated text.
    pub content: String,
    /// Always `assistant`.
    pub role: &'static str,
}

/// A text completion's choice.
#[derive(Debug, Serialize)]
pub struct TextChoice {
    /// `stop` or `length`.
    pub finish_reason: &'static str,
    /// Always 0 (n = 1).
    pub index: u32,
    /// The tokens' log-probabilities when asked for, else `null`.
    pub logprobs: Option<ChoiceLogprobs>,
    /// The generated text (after the prompt, with `echo`).
    pub text: String,
}

/// One `data:` chunk of a stream: a piece of the completion, its end, or the final usage.
#[derive(Debug, Serialize)]
pub struct Chunk {
    /// One choice, or none in the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Unix seconds (the same in every chunk).
    pub created: u64,
    /// The same in every chunk.
    pub id: String,
    /// The served model's name.
    pub model: String,
    /// `chat.completion.chunk` or `text_completion`.
    pub object: &'static str,
    /// Absent unless the client asked for a usage chunk; then `null` on content chunks and the
    /// totals on the usage chunk (OpenAI's shape).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<ChunkUsage>,
}

/// `usage` of a chunk, where present.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ChunkUsage {
    /// `null`: a content chunk of a stream that ends with a usage chunk.
    Pending,
    /// The totals, on the usage chunk.
    Final(CompletionUsage),
}

impl Chunk {
    /// A chunk with one choice; `usage: null` when `include_usage` (the client asked for a
    /// usage chunk), else no `usage` at all.
    pub fn content(rid: &ResponseId, choice: ChunkChoice, include_usage: bool) -> Self {
        Self {
            choices: vec![choice],
            created: rid.created,
            id: rid.id.clone(),
            model: rid.model.clone(),
            object: rid.endpoint.chunk_object(),
            usage: include_usage.then_some(ChunkUsage::Pending),
        }
    }

    /// The usage chunk: no choices, the totals (and energy) in `usage`.
    pub fn usage(rid: &ResponseId, usage: CompletionUsage) -> Self {
        Self {
            choices: Vec::new(),
            created: rid.created,
            id: rid.id.clone(),
            model: rid.model.clone(),
            object: rid.endpoint.chunk_object(),
            usage: Some(ChunkUsage::Final(usage)),
        }
    }
}

/// The choice of a chunk, shaped by the endpoint.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ChunkChoice {
    /// `/v1/chat/completions`: a delta of the message.
    Chat(ChatChunkChoice),
    /// `/v1/completions`: a piece of text.
    Text(TextChunkChoice),
}

impl ChunkChoice {
    /// The chat stream's first chunk: the assistant's role, no text yet.
    pub fn opening() -> Self {
        Self::chat(
            Delta {
                content: Some(String::new()),
                role: Some("assistant"),
            },
            None,
        )
    }

    /// A piece of the completion.
    pub fn text(endpoint: Endpoint, piece: String) -> Self {
        match endpoint {
            Endpoint::Chat => Self::chat(
                Delta {
                    content: Some(piece),
                    role: None,
                },
                None,
            ),
            Endpoint::Completions => Self::completion(piece, None),
        }
    }

    /// The end: no text, the `finish_reason`.
    pub fn finish(endpoint: Endpoint, reason: &'static str) -> Self {
        match endpoint {
            Endpoint::Chat => Self::chat(Delta::default(), Some(reason)),
            Endpoint::Completions => Self::completion(String::new(), Some(reason)),
        }
    }

    /// The same choice carrying the log-probabilities of its tokens.
    pub fn with_logprobs(mut self, logprobs: Option<ChoiceLogprobs>) -> Self {
        match &mut self {
            Self::Chat(c) => c.logprobs = logprobs,
            Self::Text(c) => c.logprobs = logprobs,
        }
        self
    }

    fn chat(delta: Delta, finish_reason: Option<&'static str>) -> Self {
        Self::Chat(ChatChunkChoice {
            delta,
            finish_reason,
            index: 0,
            logprobs: None,
        })
    }

    fn completion(text: String, finish_reason: Option<&'static str>) -> Self {
        Self::Text(TextChunkChoice {
            finish_reason,
            index: 0,
            logprobs: None,
            text,
        })
    }
}

/// A chat chunk's choice.
#[derive(Debug, Serialize)]
pub struct ChatChunkChoice {
    /// What the message gained.
    pub delta: Delta,
    /// `null` until the last chunk.
    pub finish_reason: Option<&'static str>,
    /// Always 0 (n = 1).
    pub index: u32,
    /// The log-probabilities of this chunk's tokens when asked for, else `null`.
    pub logprobs: Option<ChoiceLogprobs>,
}

/// `delta` of a chat chunk: only what changed (`{}` in the last chunk).
#[derive(Debug, Default, Serialize)]
pub struct Delta {
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// `assistant`, in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
}

/// A text completion chunk's choice.
#[derive(Debug, Serialize)]
pub struct TextChunkChoice {
    /// `null` until the last chunk.
    pub finish_reason: Option<&'static str>,
    /// Always 0 (n = 1).
    pub index: u32,
    /// The log-probabilities of this chunk's tokens when asked for, else `null`.
    pub logprobs: Option<ChoiceLogprobs>,
    /// New text (empty in the last chunk).
    pub text: String,
}

/// A failure after the stream's 200 went out: the OpenAI error object, sent as a chunk.
#[derive(Debug, Serialize)]
pub struct StreamError {
    /// The error.
    pub error: StreamErrorBody,
}

/// `error` of [`StreamError`].
#[derive(Debug, Serialize)]
pub struct StreamErrorBody {
    /// Machine-readable code.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
    /// Always `null`: a failure mid-stream is the server's, not a field's.
    pub param: Null,
    /// Always `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

impl StreamError {
    /// The chunk for an error with `code` and `message`.
    pub fn new(code: &'static str, message: String) -> Self {
        Self {
            error: StreamErrorBody {
                code,
                message,
                param: Null,
                kind: "server_error",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::batch::generation::FinishReason;

    fn rid(endpoint: Endpoint) -> ResponseId {
        ResponseId {
            id: "x-1".into(),
            created: 7,
            model: "m".into(),
            endpoint,
        }
    }

    fn done() -> Finished {
        Finished {
            reason: FinishReason::Length,
            prompt_tokens: 3,
            completion_tokens: 2,
            queue_time: Duration::ZERO,
            time_to_first_token: Duration::ZERO,
            compute_time: Duration::ZERO,
            max_batch: 1,
            energy: Vec::new(),
        }
    }

    fn energy() -> UsageEnergy {
        UsageEnergy {
            joules: 1.5,
            source: "estimate",
            avg_watts: 30.0,
            co2e_grams: 0.25,
            cost_usd: 0.125,
            cost_energy_usd: 0.1,
            cost_hardware_usd: 0.025,
            carbon_intensity_g_per_kwh: 400.0,
            zone: "DE".into(),
            class: None,
            carbon_class: None,
        }
    }

    fn text<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn ids_and_objects_follow_the_endpoint() {
        let r = ResponseId::new(Endpoint::Chat, "m");
        assert!(
            r.id.starts_with("chatcmpl-") && r.id.len() == 9 + 32,
            "{}",
            r.id
        );
        assert!(r.created > 0);
        assert!(ResponseId::new(Endpoint::Completions, "m")
            .id
            .starts_with("cmpl-"));
        assert_eq!(Endpoint::Chat.label(), "chat_completions");
        assert_eq!(Endpoint::Completions.prompt_param(), "prompt");
    }

    #[test]
    fn whole_responses_have_the_json_shape_of_before() {
        let chat = CompletionResponse::new(rid(Endpoint::Chat), "hi".into(), &done(), None, None);
        assert_eq!(
            text(&chat),
            r#"{"choices":[{"finish_reason":"length","index":0,"logprobs":null,"message":{"content":"hi","role":"assistant"}}],"created":7,"id":"x-1","model":"m","object":"chat.completion","usage":{"completion_tokens":2,"prompt_tokens":3,"total_tokens":5}}"#
        );
        // The same bytes as the `json!` literal this type replaced.
        let old = json!({
            "id": "x-1", "object": "chat.completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                         "logprobs": null, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        });
        assert_eq!(text(&chat), old.to_string());

        let plain = CompletionResponse::new(
            rid(Endpoint::Completions),
            "hi".into(),
            &done(),
            Some(energy()),
            None,
        );
        assert_eq!(
            text(&plain),
            r#"{"choices":[{"finish_reason":"length","index":0,"logprobs":null,"text":"hi"}],"created":7,"id":"x-1","model":"m","object":"text_completion","usage":{"completion_tokens":2,"energy":{"avg_watts":30.0,"carbon_intensity_g_per_kwh":400.0,"co2e_grams":0.25,"cost_usd":0.125,"joules":1.5,"source":"estimate","zone":"DE"},"prompt_tokens":3,"total_tokens":5}}"#
        );
        let old = json!({
            "id": "x-1", "object": "text_completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "text": "hi", "logprobs": null, "finish_reason": "length"}],
            "usage": CompletionUsage::new(&done(), Some(energy())),
        });
        assert_eq!(text(&plain), old.to_string());
    }

    #[test]
    fn chunks_carry_usage_null_only_when_a_usage_chunk_follows() {
        let r = rid(Endpoint::Chat);
        assert_eq!(
            text(&Chunk::content(&r, ChunkChoice::opening(), false)),
            r#"{"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":7,"id":"x-1","model":"m","object":"chat.completion.chunk"}"#
        );
        assert_eq!(
            text(&Chunk::content(
                &r,
                ChunkChoice::text(Endpoint::Chat, "a".into()),
                true
            )),
            r#"{"choices":[{"delta":{"content":"a"},"finish_reason":null,"index":0,"logprobs":null}],"created":7,"id":"x-1","model":"m","object":"chat.completion.chunk","usage":null}"#
        );
        assert_eq!(
            text(&Chunk::content(
                &r,
                ChunkChoice::finish(Endpoint::Chat, "stop"),
                true
            )),
            r#"{"choices":[{"delta":{},"finish_reason":"stop","index":0,"logprobs":null}],"created":7,"id":"x-1","model":"m","object":"chat.completion.chunk","usage":null}"#
        );

        let r = rid(Endpoint::Completions);
        assert_eq!(
            text(&Chunk::content(
                &r,
                ChunkChoice::text(Endpoint::Completions, "a".into()),
                false
            )),
            r#"{"choices":[{"finish_reason":null,"index":0,"logprobs":null,"text":"a"}],"created":7,"id":"x-1","model":"m","object":"text_completion"}"#
        );
        let last = Chunk::content(
            &r,
            ChunkChoice::finish(Endpoint::Completions, "length"),
            true,
        );
        assert_eq!(
            text(&last),
            r#"{"choices":[{"finish_reason":"length","index":0,"logprobs":null,"text":""}],"created":7,"id":"x-1","model":"m","object":"text_completion","usage":null}"#
        );
        let mut old = json!({
            "id": "x-1", "object": "text_completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": "length"}],
        });
        old["usage"] = Value::Null;
        assert_eq!(text(&last), old.to_string());
    }

    #[test]
    fn the_usage_chunk_has_no_choices_and_the_totals() {
        let chunk = Chunk::usage(
            &rid(Endpoint::Chat),
            CompletionUsage::new(&done(), Some(energy())),
        );
        assert_eq!(
            text(&chunk),
            r#"{"choices":[],"created":7,"id":"x-1","model":"m","object":"chat.completion.chunk","usage":{"completion_tokens":2,"energy":{"avg_watts":30.0,"carbon_intensity_g_per_kwh":400.0,"co2e_grams":0.25,"cost_usd":0.125,"joules":1.5,"source":"estimate","zone":"DE"},"prompt_tokens":3,"total_tokens":5}}"#
        );
        let chunk = Chunk::usage(
            &rid(Endpoint::Completions),
            CompletionUsage::new(&done(), None),
        );
        assert_eq!(
            text(&chunk),
            r#"{"choices":[],"created":7,"id":"x-1","model":"m","object":"text_completion","usage":{"completion_tokens":2,"prompt_tokens":3,"total_tokens":5}}"#
        );
    }

    #[test]
    fn the_stream_error_is_an_openai_error_object() {
        let e = StreamError::new("internal_error", "boom".into());
        assert_eq!(
            text(&e),
            r#"{"error":{"code":"internal_error","message":"boom","param":null,"type":"server_error"}}"#
        );
        let old = json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": "internal_error"}});
        assert_eq!(text(&e), old.to_string());
    }
}

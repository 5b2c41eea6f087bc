//! Everything checked about a completion request before it is queued, producing the types the
//! handler trusts: a [`Request`] (options and prompt, checked field by field) and, after
//! tokenization, a [`FittingPrompt`] (token ids that fit the model's context).
//!
//! Errors are [`ValidationError`]s: each variant knows its `code` and the parameter at fault, and
//! one `From` impl makes the 400 of it.

use serde_json::Value;

use super::wire::{Endpoint, GenerationFields};
use crate::api::ApiError;
use crate::config::Limits;
use crate::engine::decoder::model::RenderChatError;
use crate::engine::gguf::ChatMessage;
use crate::engine::sampling::{SamplingError, SamplingParams};
use crate::engine::Decoder;
use crate::registry::GenerationServing;

/// Most stop strings per request (OpenAI's limit).
const MAX_STOP_STRINGS: usize = 4;

/// Longest stop string, in bytes: every one is searched for in the new text of every token on
/// the model's one scheduler thread.
const MAX_STOP_BYTES: usize = 256;

/// Chat roles a message may have (OpenAI's); anything else is pasted into the chat template
/// verbatim, so it is refused rather than trusted.
const CHAT_ROLES: [&str; 5] = ["system", "user", "assistant", "developer", "tool"];

/// Why a completion request is rejected (always a 400): the variant gives the error `code`, and
/// carries or implies the parameter at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// An option we do not support or whose value is out of range (`n`, the penalties,
    /// `logprobs`, `max_tokens`, `top_k`, `stop`): `invalid_value`.
    #[error("{message}")]
    InvalidValue {
        /// The option at fault.
        param: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// `temperature` or `top_p` out of range, as the sampler defines it: `invalid_value`.
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    /// `messages` is not a list of `{role, content}` objects with text content:
    /// `invalid_messages`.
    #[error("{0}")]
    Messages(String),
    /// The model's chat template cannot render the messages: `invalid_messages`.
    #[error(transparent)]
    ChatTemplate(#[from] RenderChatError),
    /// The prompt is malformed, empty, or holds a token id outside the vocabulary:
    /// `invalid_prompt`.
    #[error("{message}")]
    Prompt {
        /// `prompt`, or `messages` for a chat.
        param: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Prompt plus completion do not fit the context: `context_length_exceeded`.
    #[error("{message}")]
    ContextLength {
        /// `max_tokens` when lowering it would help, else the prompt's parameter.
        param: &'static str,
        /// The limit and what was asked.
        message: String,
    },
}

impl ValidationError {
    /// The OpenAI error `code`.
    pub fn code(&self) -> &'static str {
        match self {
            ValidationError::InvalidValue { .. } | ValidationError::Sampling(_) => "invalid_value",
            ValidationError::Messages(_) | ValidationError::ChatTemplate(_) => "invalid_messages",
            ValidationError::Prompt { .. } => "invalid_prompt",
            ValidationError::ContextLength { .. } => "context_length_exceeded",
        }
    }

    /// The request parameter at fault.
    pub fn param(&self) -> &'static str {
        match self {
            ValidationError::InvalidValue { param, .. }
            | ValidationError::Prompt { param, .. }
            | ValidationError::ContextLength { param, .. } => param,
            ValidationError::Sampling(e) => e.param(),
            ValidationError::Messages(_) | ValidationError::ChatTemplate(_) => "messages",
        }
    }

    fn invalid_value(param: &'static str, message: String) -> Self {
        ValidationError::InvalidValue { param, message }
    }

    fn prompt(param: &'static str, message: String) -> Self {
        ValidationError::Prompt { param, message }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::bad_request(e.code(), e.to_string()).with_param(e.param())
    }
}

/// What the prompt is before tokenization.
#[derive(Debug)]
pub enum Prompt {
    /// A conversation, for the chat template.
    Chat(Vec<ChatMessage>),
    /// Text, tokenized as is.
    Text(String),
    /// Token ids, used as they are (checked against the vocabulary later).
    Tokens(Vec<u32>),
}

/// Validated options of one request.
#[derive(Debug)]
pub struct Plan {
    /// Most tokens to generate, as asked (within `limits.max_completion_tokens`).
    pub max_tokens: Option<usize>,
    /// Most tokens to generate when `max_tokens` is not given
    /// (`limits.default_completion_tokens`).
    pub default_max_tokens: usize,
    /// Checked sampling parameters.
    pub sampling: SamplingParams,
    /// Up to [`MAX_STOP_STRINGS`] non-empty stop strings.
    pub stop: Vec<String>,
    /// Answer with server-sent events.
    pub stream: bool,
    /// Send a usage chunk before `[DONE]`.
    pub include_usage: bool,
    /// Generate past stop tokens.
    pub ignore_eos: bool,
    /// Report log-probabilities with this many alternatives per token (`logprobs` 0–5 on
    /// completions; chat's `logprobs: true` with `top_logprobs` 0–20); `None`: not asked for.
    pub logprobs: Option<usize>,
    /// Completions: return the prompt before the completion (with its log-probabilities when
    /// `logprobs` is asked for); `max_tokens: 0` then only scores the prompt.
    pub echo: bool,
}

/// A request checked field by field: what the handler tokenizes and queues.
#[derive(Debug)]
pub struct Request {
    /// The options.
    pub plan: Plan,
    /// The prompt, parsed.
    pub prompt: Prompt,
}

/// Checks a request to `endpoint`: the options first, then the prompt (`messages` for a chat,
/// `prompt` otherwise), so that the first error reported is the same whatever else is wrong.
pub fn request(
    endpoint: Endpoint,
    fields: GenerationFields,
    raw_prompt: Value,
    limits: &Limits,
) -> Result<Request, ValidationError> {
    let plan = parse_fields(endpoint, fields, limits)?;
    let prompt = match endpoint {
        Endpoint::Chat => Prompt::Chat(parse_messages(raw_prompt)?),
        Endpoint::Completions => parse_prompt(raw_prompt)?,
    };
    let bytes = match &prompt {
        Prompt::Text(t) => t.len(),
        Prompt::Chat(messages) => messages
            .iter()
            .map(|m| m.role.len() + m.content.len())
            .sum(),
        Prompt::Tokens(_) => 0,
    };
    check_prompt_bytes(bytes, limits, endpoint.prompt_param())?;
    Ok(Request { plan, prompt })
}

/// A prompt of `bytes` bytes (in `param`) within `limits.max_input_bytes`.
pub fn check_prompt_bytes(
    bytes: usize,
    limits: &Limits,
    param: &'static str,
) -> Result<(), ValidationError> {
    if bytes > limits.max_input_bytes {
        return Err(ValidationError::prompt(
            param,
            format!(
                "The prompt is {bytes} bytes long, more than the limit of {} (limits.max_input_bytes)",
                limits.max_input_bytes
            ),
        ));
    }
    Ok(())
}

/// Prompt token ids checked against the model: not empty, inside the vocabulary, and leaving
/// room for the completion. Only [`check_context`] makes one, so its numbers can be trusted.
#[derive(Debug)]
pub struct FittingPrompt {
    ids: Vec<u32>,
    max_new_tokens: usize,
}

impl FittingPrompt {
    /// Number of prompt tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Never true: an empty prompt is rejected.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Tokens to generate at most: `max_tokens`, or what is left of the context.
    pub fn max_new_tokens(&self) -> usize {
        self.max_new_tokens
    }

    /// The token ids, borrowed.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The token ids.
    pub fn into_ids(self) -> Vec<u32> {
        self.ids
    }
}

/// Checks tokenized prompt `ids` against `gen`'s vocabulary and context length with room for
/// `max_tokens`; errors name the prompt's parameter, or `max_tokens` when lowering it would help.
pub fn check_context(
    gen: &GenerationServing,
    ids: Vec<u32>,
    plan: &Plan,
    endpoint: Endpoint,
) -> Result<FittingPrompt, ValidationError> {
    // A sequence must also fit the model's KV-cache budget at its worst case.
    let per_token = gen.engine.cache_bytes_per_token().max(1);
    let budget_tokens = gen.scheduler.max_kv_bytes() / per_token;
    let mut fitting = fits(
        gen.engine.context_len().min(budget_tokens.max(1)),
        gen.engine.model().config().vocab_size,
        ids,
        plan.max_tokens,
        endpoint.prompt_param(),
    )?;
    if plan.max_tokens.is_none() {
        fitting.max_new_tokens = fitting.max_new_tokens.min(plan.default_max_tokens);
    }
    Ok(fitting)
}

/// [`check_context`] for a context of `ctx` tokens and a vocabulary of `vocab`.
fn fits(
    ctx: usize,
    vocab: usize,
    ids: Vec<u32>,
    max_tokens: Option<usize>,
    param: &'static str,
) -> Result<FittingPrompt, ValidationError> {
    if ids.is_empty() {
        return Err(ValidationError::prompt(param, "The prompt is empty".into()));
    }
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(ValidationError::prompt(
            param,
            format!("Token id {bad} is outside the vocabulary ({vocab} tokens)"),
        ));
    }
    // At least one token to generate, unless the request only scores its prompt.
    let requested = ids.len() + max_tokens.unwrap_or(1);
    if requested > ctx {
        let detail = match max_tokens {
            Some(m) => format!(
                "you requested {requested} tokens ({} in the prompt, {m} for the completion)",
                ids.len()
            ),
            None => format!("the prompt has {} tokens", ids.len()),
        };
        return Err(ValidationError::ContextLength {
            param: if max_tokens.is_some() && ids.len() < ctx {
                "max_tokens"
            } else {
                param
            },
            message: format!(
                "This model's maximum context length is {ctx} tokens; {detail}. Shorten the prompt or lower max_tokens"
            ),
        });
    }
    let room = ctx - ids.len();
    Ok(FittingPrompt {
        max_new_tokens: max_tokens.unwrap_or(room).min(room),
        ids,
    })
}

/// Most alternatives per token `logprobs` may ask for on `/v1/completions` (OpenAI's limit).
pub const MAX_COMPLETION_LOGPROBS: u64 = 5;

/// `logprobs`, `top_logprobs` and `echo` as `endpoint` defines them: the alternatives per token
/// (`None`: no log-probabilities) and whether to echo the prompt.
fn parse_logprobs(
    endpoint: Endpoint,
    f: &GenerationFields,
) -> Result<(Option<usize>, bool), ValidationError> {
    let bad = ValidationError::invalid_value;
    let max_top = crate::engine::logprobs::MAX_TOP as i64;
    match endpoint {
        Endpoint::Completions => {
            if f.top_logprobs.is_some() {
                return Err(bad(
                    "top_logprobs",
                    "top_logprobs is a chat parameter; on /v1/completions, logprobs (0-5) gives the alternatives".into(),
                ));
            }
            let n = match &f.logprobs {
                None | Some(Value::Null) | Some(Value::Bool(false)) => None,
                Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= MAX_COMPLETION_LOGPROBS) => {
                    n.as_u64().map(|n| n as usize)
                }
                Some(other) => {
                    return Err(bad(
                        "logprobs",
                        format!("logprobs must be an integer between 0 and {MAX_COMPLETION_LOGPROBS}, got {other}"),
                    ))
                }
            };
            Ok((n, f.echo.unwrap_or(false)))
        }
        Endpoint::Chat => {
            if f.echo == Some(true) {
                return Err(bad(
                    "echo",
                    "echo is not available on /v1/chat/completions; use /v1/completions".into(),
                ));
            }
            let on = match &f.logprobs {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(bad(
                        "logprobs",
                        format!(
                            "logprobs must be true or false on /v1/chat/completions, got {other}"
                        ),
                    ))
                }
            };
            match f.top_logprobs {
                None => Ok((on.then_some(0), false)),
                Some(n) if !(0..=max_top).contains(&n) => Err(bad(
                    "top_logprobs",
                    format!("top_logprobs must be between 0 and {max_top}, got {n}"),
                )),
                Some(_) if !on => Err(bad(
                    "top_logprobs",
                    "top_logprobs needs logprobs: true".into(),
                )),
                Some(n) => Ok((Some(n as usize), false)),
            }
        }
    }
}

/// Checks the options (everything but the prompt) into a [`Plan`], within the operator's
/// `limits` (`max_tokens` capped, the default filled in, `ignore_eos` only where allowed).
fn parse_fields(
    endpoint: Endpoint,
    f: GenerationFields,
    limits: &Limits,
) -> Result<Plan, ValidationError> {
    let bad = ValidationError::invalid_value;
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
    let (logprobs, echo) = parse_logprobs(endpoint, &f)?;
    let cap = limits.max_completion_tokens;
    let max_tokens = match f.max_completion_tokens.or(f.max_tokens) {
        None => None,
        Some(m) if m as u64 > cap as u64 => {
            return Err(bad(
                "max_tokens",
                format!("max_tokens must be at most {cap} on this server (limits.max_completion_tokens), got {m}"),
            ))
        }
        Some(m) if m >= 1 => Some(m as usize),
        // Scoring a prompt: nothing to generate.
        Some(0) if echo => Some(0),
        Some(m) => {
            return Err(bad(
                "max_tokens",
                format!("max_tokens must be at least 1 (0 only with echo), got {m}"),
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
    sampling.validate()?;
    let stop = parse_stop(f.stop)?;
    if f.ignore_eos && !limits.allow_ignore_eos {
        return Err(bad(
            "ignore_eos",
            "ignore_eos is not allowed on this server (limits.allow_ignore_eos)".into(),
        ));
    }
    Ok(Plan {
        default_max_tokens: limits.default_completion_tokens,
        max_tokens,
        sampling,
        stop,
        stream: f.stream.unwrap_or(false),
        include_usage: f.stream_options.is_some_and(|o| o.include_usage),
        ignore_eos: f.ignore_eos,
        logprobs,
        echo,
    })
}

/// `stop`: absent, a string, or up to [`MAX_STOP_STRINGS`] non-empty strings.
fn parse_stop(stop: Option<Value>) -> Result<Vec<String>, ValidationError> {
    let bad = |m: String| ValidationError::invalid_value("stop", m);
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
    if let Some(long) = list.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(bad(format!(
            "stop strings may be at most {MAX_STOP_BYTES} bytes long, got one of {}",
            long.len()
        )));
    }
    Ok(list)
}

/// `messages`: a non-empty array of `{role, content}`, content a string, null, or text parts
/// (joined); errors name the element at fault.
fn parse_messages(messages: Value) -> Result<Vec<ChatMessage>, ValidationError> {
    let bad = ValidationError::Messages;
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
            if !CHAT_ROLES.contains(&role.as_str()) {
                return Err(bad(format!(
                    "messages[{i}].role must be one of {}; got {}",
                    CHAT_ROLES.join(", "),
                    short(&Value::String(role))
                )));
            }
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

/// `prompt`: a string, an array holding one string, or an array of token ids.
fn parse_prompt(prompt: Value) -> Result<Prompt, ValidationError> {
    let bad = |m: String| ValidationError::prompt("prompt", m);
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
        // One prompt of token ids in a batch of one (what lm-evaluation-harness sends).
        Value::Array(items) if items.len() == 1 && items[0].is_array() => {
            match parse_prompt(items.into_iter().next().unwrap_or_default())? {
                Prompt::Tokens(ids) => Ok(Prompt::Tokens(ids)),
                _ => Err(bad(
                    "prompt must be a string, an array with one string, or an array of token ids"
                        .into(),
                )),
            }
        }
        Value::Array(items)
            if items.len() > 1 && items.iter().all(|v| v.is_string() || v.is_array()) =>
        {
            Err(bad(
                "Only one prompt per request is supported (send one request per prompt)".into(),
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

/// `v` as JSON, cut to 80 characters for an error message.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// [`parse_fields`] under the default limits.
    fn parse_fields_default(f: GenerationFields) -> Result<Plan, ValidationError> {
        parse_fields(Endpoint::Completions, f, &Limits::default())
    }

    #[test]
    fn fields_are_validated_with_the_parameter_named() {
        let f = |v: Value| serde_json::from_value::<GenerationFields>(v).unwrap();
        let err = |v: Value| {
            parse_fields(Endpoint::Completions, f(v), &Limits::default())
                .err()
                .unwrap()
        };
        assert_eq!(err(json!({"n": 2})).param(), "n");
        assert_eq!(err(json!({"temperature": 3.0})).param(), "temperature");
        assert_eq!(err(json!({"top_p": 0})).param(), "top_p");
        assert_eq!(err(json!({"top_k": -5})).param(), "top_k");
        assert_eq!(err(json!({"max_tokens": 0})).param(), "max_tokens");
        assert_eq!(
            err(json!({"stop": ["a", "b", "c", "d", "e"]})).param(),
            "stop"
        );
        assert_eq!(err(json!({"stop": 5})).param(), "stop");
        assert_eq!(
            err(json!({"presence_penalty": 0.5})).param(),
            "presence_penalty"
        );
        assert_eq!(err(json!({"logprobs": true})).param(), "logprobs");
        let ok = parse_fields_default(f(json!({"max_completion_tokens": 5, "max_tokens": 9, "stop": "x", "seed": 3, "temperature": 0}))).unwrap();
        assert_eq!(ok.max_tokens, Some(5));
        assert_eq!(ok.stop, vec!["x"]);
        assert!(ok.sampling.is_greedy());
    }

    #[test]
    fn logprobs_follow_each_endpoints_rules() {
        let f = |v: Value| serde_json::from_value::<GenerationFields>(v).unwrap();
        let parse = |e: Endpoint, v: Value| parse_fields(e, f(v), &Limits::default());
        let (c, chat) = (Endpoint::Completions, Endpoint::Chat);
        let ok = |e, v| {
            let p: Plan = parse(e, v).unwrap();
            (p.logprobs, p.echo, p.max_tokens)
        };
        assert_eq!(ok(c, json!({"logprobs": 0})), (Some(0), false, None));
        assert_eq!(
            ok(c, json!({"logprobs": 5, "echo": true, "max_tokens": 0})),
            (Some(5), true, Some(0))
        );
        assert_eq!(
            ok(c, json!({"echo": true, "max_tokens": 0})),
            (None, true, Some(0))
        );
        assert_eq!(ok(chat, json!({"logprobs": true})), (Some(0), false, None));
        assert_eq!(
            ok(chat, json!({"logprobs": true, "top_logprobs": 20})),
            (Some(20), false, None)
        );
        assert_eq!(ok(chat, json!({"logprobs": false})), (None, false, None));
        let err = |e, v| {
            let err: ValidationError = parse(e, v).unwrap_err();
            (err.param(), err.to_string())
        };
        let (param, msg) = err(c, json!({"logprobs": 6}));
        assert_eq!(param, "logprobs");
        assert!(msg.contains("between 0 and 5, got 6"), "{msg}");
        assert_eq!(err(c, json!({"logprobs": -1})).0, "logprobs");
        assert_eq!(err(c, json!({"logprobs": true})).0, "logprobs");
        assert_eq!(err(c, json!({"top_logprobs": 2})).0, "top_logprobs");
        assert_eq!(err(c, json!({"max_tokens": 0})).0, "max_tokens");
        let (param, msg) = err(chat, json!({"logprobs": true, "top_logprobs": 21}));
        assert_eq!(param, "top_logprobs");
        assert!(msg.contains("between 0 and 20, got 21"), "{msg}");
        assert_eq!(err(chat, json!({"top_logprobs": 3})).0, "top_logprobs");
        assert_eq!(err(chat, json!({"logprobs": 2})).0, "logprobs");
        assert_eq!(err(chat, json!({"echo": true})).0, "echo");
    }

    #[test]
    fn a_scoring_request_may_fill_the_whole_context() {
        assert_eq!(
            fits(8, 100, vec![1; 8], Some(0), "prompt")
                .unwrap()
                .max_new_tokens(),
            0
        );
        assert_eq!(
            fits(8, 100, vec![1; 8], None, "prompt")
                .unwrap_err()
                .param(),
            "prompt"
        );
        assert_eq!(
            fits(8, 100, vec![1; 7], Some(2), "prompt")
                .unwrap_err()
                .param(),
            "max_tokens"
        );
    }

    #[test]
    fn errors_become_400s_with_code_param_and_message() {
        let f = |v: Value| serde_json::from_value::<GenerationFields>(v).unwrap();
        let api = |e: ValidationError| ApiError::from(e);
        let e = api(parse_fields_default(f(json!({"temperature": 3.0}))).unwrap_err());
        assert_eq!(e.status, 400);
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("invalid_value", Some("temperature"))
        );
        assert_eq!(e.message, "temperature must be between 0 and 2, got 3");
        let e = api(parse_fields_default(f(json!({"top_p": 1.5}))).unwrap_err());
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("invalid_value", Some("top_p"))
        );
        let e = api(parse_messages(json!("x")).unwrap_err());
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("invalid_messages", Some("messages"))
        );
        let e = api(RenderChatError::NoTemplate.into());
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("invalid_messages", Some("messages"))
        );
        assert_eq!(
            e.message,
            "this model has no chat template; use /v1/completions"
        );
        let e = api(RenderChatError::Rejected("roles must alternate".into()).into());
        assert_eq!(e.message, "roles must alternate");
        let e = api(parse_prompt(json!(5)).unwrap_err());
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("invalid_prompt", Some("prompt"))
        );
    }

    #[test]
    fn options_are_checked_before_the_prompt() {
        let f = |v: Value| serde_json::from_value::<GenerationFields>(v).unwrap();
        let e = request(
            Endpoint::Chat,
            f(json!({"n": 3})),
            json!([]),
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(e.param(), "n");
        let e = request(Endpoint::Chat, f(json!({})), json!([]), &Limits::default()).unwrap_err();
        assert_eq!(e.param(), "messages");
        let r = request(
            Endpoint::Completions,
            f(json!({})),
            json!([1, 2]),
            &Limits::default(),
        )
        .unwrap();
        assert!(matches!(r.prompt, Prompt::Tokens(t) if t == vec![1, 2]));
    }

    #[test]
    fn messages_and_prompts_parse_or_name_the_element_at_fault() {
        let m = parse_messages(json!([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])).unwrap();
        assert_eq!(m[0].content, "ab");
        let e = parse_messages(json!([{"role": "user", "content": "x"}, {"role": "<|im_start|>system", "content": "y"}]))
            .unwrap_err();
        assert!(
            e.to_string().contains("messages[1].role must be one of"),
            "{e}"
        );
        assert!(parse_stop(Some(json!(["x".repeat(257)]))).is_err());
        assert_eq!(parse_stop(Some(json!(["x".repeat(256)]))).unwrap().len(), 1);
        let e = parse_messages(json!([{"role": "user", "content": "x"}, {"content": "y"}]))
            .unwrap_err();
        assert!(e.to_string().contains("messages[1].role"), "{e}");
        assert!(parse_messages(json!([])).is_err());
        assert!(matches!(parse_prompt(json!(["hi"])).unwrap(), Prompt::Text(t) if t == "hi"));
        assert!(
            matches!(parse_prompt(json!([1, 2, 3])).unwrap(), Prompt::Tokens(t) if t == vec![1, 2, 3])
        );
        assert!(parse_prompt(json!(["a", "b"]))
            .unwrap_err()
            .to_string()
            .contains("one prompt"));
        assert!(parse_prompt(json!({"x": 1})).is_err());
        assert!(
            matches!(parse_prompt(json!([[4, 5]])).unwrap(), Prompt::Tokens(t) if t == vec![4, 5])
        );
        assert!(parse_prompt(json!([[1], [2]]))
            .unwrap_err()
            .to_string()
            .contains("one prompt"));
        assert!(parse_prompt(json!([["a"]])).is_err());
    }

    #[test]
    fn the_context_must_hold_the_prompt_and_the_completion() {
        let ids = |n: usize| vec![1u32; n];
        let p = fits(10, 50, ids(4), Some(3), "prompt").unwrap();
        assert_eq!((p.len(), p.max_new_tokens()), (4, 3));
        let p = fits(10, 50, ids(4), None, "prompt").unwrap();
        assert_eq!(p.max_new_tokens(), 6);
        let e = fits(10, 50, ids(4), Some(7), "messages").unwrap_err();
        assert_eq!(
            (e.code(), e.param()),
            ("context_length_exceeded", "max_tokens")
        );
        assert_eq!(e.to_string(), "This model's maximum context length is 10 tokens; you requested 11 tokens (4 in the prompt, 7 for the completion). Shorten the prompt or lower max_tokens");
        let e = fits(10, 50, ids(10), Some(1), "messages").unwrap_err();
        assert_eq!(e.param(), "messages");
        let e = fits(10, 50, ids(10), None, "prompt").unwrap_err();
        assert!(e.to_string().contains("the prompt has 10 tokens"), "{e}");
        let e = fits(10, 50, Vec::new(), None, "prompt").unwrap_err();
        assert_eq!((e.code(), e.param()), ("invalid_prompt", "prompt"));
        let e = fits(10, 50, vec![3, 50], None, "prompt").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Token id 50 is outside the vocabulary (50 tokens)"
        );
    }

    #[test]
    fn the_operators_limits_bound_max_tokens_and_ignore_eos() {
        let f = |v: Value| serde_json::from_value::<GenerationFields>(v).unwrap();
        let limits = Limits {
            max_completion_tokens: 100,
            default_completion_tokens: 10,
            ..Limits::default()
        };
        let e = parse_fields(
            Endpoint::Completions,
            f(json!({"max_tokens": 101})),
            &limits,
        )
        .unwrap_err();
        assert_eq!(e.param(), "max_tokens");
        assert!(
            e.to_string().contains("limits.max_completion_tokens"),
            "{e}"
        );
        let ok = parse_fields(
            Endpoint::Completions,
            f(json!({"max_tokens": 100})),
            &limits,
        )
        .unwrap();
        assert_eq!((ok.max_tokens, ok.default_max_tokens), (Some(100), 10));
        let e = parse_fields(
            Endpoint::Completions,
            f(json!({"ignore_eos": true})),
            &limits,
        )
        .unwrap_err();
        assert_eq!(e.param(), "ignore_eos");
        let allowed = Limits {
            allow_ignore_eos: true,
            ..limits
        };
        assert!(
            parse_fields(
                Endpoint::Completions,
                f(json!({"ignore_eos": true})),
                &allowed
            )
            .unwrap()
            .ignore_eos
        );
    }
}

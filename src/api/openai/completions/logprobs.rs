//! `logprobs` of a choice as OpenAI shapes them: the legacy object of `/v1/completions`
//! (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`) and the `content` list of
//! `/v1/chat/completions` (`token`, `logprob`, `bytes`, `top_logprobs`), built from the
//! scheduler's [`TokenLogprob`]s, whole or one stream chunk at a time.

use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::engine::TokenLogprob;

/// The lowest log-probability shown: JSON has no infinity, and OpenAI shows impossible tokens
/// as -9999.
const FLOOR: f32 = -9999.0;

/// A finite log-probability for the wire.
fn shown(logprob: f32) -> f32 {
    if logprob.is_nan() {
        FLOOR
    } else {
        logprob.max(FLOOR)
    }
}

/// The bytes a token id stands for ([`crate::engine::Decoder::token_bytes`]).
pub type TokenBytes = Arc<dyn Fn(u32) -> Vec<u8> + Send + Sync>;

/// `logprobs` of a choice, shaped by the endpoint.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ChoiceLogprobs {
    /// `/v1/completions`.
    Text(TextLogprobs),
    /// `/v1/chat/completions`.
    Chat(ChatLogprobs),
}

/// `choices[].logprobs` of `/v1/completions`: one entry per token in each list.
#[derive(Debug, Default, Serialize)]
pub struct TextLogprobs {
    /// Where each token's text starts in the choice's `text`, in characters (counted over the
    /// token strings before it).
    pub text_offset: Vec<usize>,
    /// Each token's log-probability; `null` for an echoed prompt's first token (no context).
    pub token_logprobs: Vec<Option<f32>>,
    /// Each token's text (bytes that are not valid UTF-8 on their own show as U+FFFD).
    pub tokens: Vec<String>,
    /// The `logprobs` most likely tokens at each position, plus the chosen one when it is not
    /// among them (so up to `logprobs + 1` entries); `null` where `token_logprobs` is.
    pub top_logprobs: Vec<Option<TopLogprobs>>,
}

/// An object of token text → log-probability, most likely first.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TopLogprobs(pub Vec<(String, f32)>);

impl Serialize for TopLogprobs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (token, logprob) in &self.0 {
            map.serialize_entry(token, logprob)?;
        }
        map.end()
    }
}

/// `choices[].logprobs` of `/v1/chat/completions`.
#[derive(Debug, Default, Serialize)]
pub struct ChatLogprobs {
    /// One entry per generated token.
    pub content: Vec<ChatTokenLogprob>,
}

/// One token of [`ChatLogprobs::content`].
#[derive(Debug, Serialize)]
pub struct ChatTokenLogprob {
    /// The token's bytes (a token may hold part of a UTF-8 character).
    pub bytes: Vec<u8>,
    /// Its log-probability.
    pub logprob: f32,
    /// Its text (invalid UTF-8 shows as U+FFFD).
    pub token: String,
    /// The `top_logprobs` most likely tokens, most likely first.
    pub top_logprobs: Vec<ChatTopLogprob>,
}

/// One alternative of [`ChatTokenLogprob::top_logprobs`].
#[derive(Debug, Serialize)]
pub struct ChatTopLogprob {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its log-probability.
    pub logprob: f32,
    /// Its text.
    pub token: String,
}

/// Turns token log-probabilities into the wire shapes, keeping the character offset across
/// the chunks of a stream.
pub struct LogprobShaper {
    bytes_of: TokenBytes,
    /// Alternatives per token (the request's `logprobs` / `top_logprobs`).
    top: usize,
    /// Characters of the choice's text so far (for `text_offset`).
    offset: usize,
}

impl std::fmt::Debug for LogprobShaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogprobShaper")
            .field("top", &self.top)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl LogprobShaper {
    /// A shaper for `top` alternatives per token, token texts from `bytes_of`.
    pub fn new(bytes_of: TokenBytes, top: usize) -> Self {
        Self {
            bytes_of,
            top,
            offset: 0,
        }
    }

    fn text_of(&self, token: u32) -> (String, Vec<u8>) {
        let bytes = (self.bytes_of)(token);
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }

    /// The completions object for `tokens`, after an echoed prompt's first token `first`
    /// (which has no log-probability) when given.
    pub fn text(&mut self, first: Option<u32>, tokens: &[TokenLogprob]) -> TextLogprobs {
        let mut out = TextLogprobs::default();
        if let Some(first) = first {
            let (text, _) = self.text_of(first);
            out.text_offset.push(self.offset);
            self.offset += text.chars().count();
            out.tokens.push(text);
            out.token_logprobs.push(None);
            out.top_logprobs.push(None);
        }
        for t in tokens {
            let (text, _) = self.text_of(t.token);
            out.text_offset.push(self.offset);
            self.offset += text.chars().count();
            let mut top: Vec<(String, f32)> = t
                .top
                .iter()
                .take(self.top)
                .map(|&(id, l)| (self.text_of(id).0, shown(l)))
                .collect();
            if !t.top.iter().take(self.top).any(|&(id, _)| id == t.token) {
                top.push((text.clone(), shown(t.logprob)));
            }
            out.tokens.push(text);
            out.token_logprobs.push(Some(shown(t.logprob)));
            out.top_logprobs.push(Some(TopLogprobs(top)));
        }
        out
    }

    /// The chat object for `tokens`.
    pub fn chat(&self, tokens: &[TokenLogprob]) -> ChatLogprobs {
        let content = tokens
            .iter()
            .map(|t| {
                let (token, bytes) = self.text_of(t.token);
                let top_logprobs = t
                    .top
                    .iter()
                    .take(self.top)
                    .map(|&(id, l)| {
                        let (token, bytes) = self.text_of(id);
                        ChatTopLogprob {
                            bytes,
                            logprob: shown(l),
                            token,
                        }
                    })
                    .collect();
                ChatTokenLogprob {
                    bytes,
                    logprob: shown(t.logprob),
                    token,
                    top_logprobs,
                }
            })
            .collect();
        ChatLogprobs { content }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaper(top: usize) -> LogprobShaper {
        let words = ["a", "bc", "\u{e9}", "d"];
        LogprobShaper::new(
            Arc::new(move |t: u32| match t {
                // Half of a two-byte character.
                9 => vec![0xc3],
                t => words[t as usize].as_bytes().to_vec(),
            }),
            top,
        )
    }

    fn lp(token: u32, logprob: f32, top: &[(u32, f32)]) -> TokenLogprob {
        TokenLogprob {
            token,
            logprob,
            top: top.to_vec(),
        }
    }

    #[test]
    fn completions_logprobs_have_offsets_and_the_chosen_token_among_the_alternatives() {
        let mut s = shaper(1);
        let out = s.text(
            Some(0),
            &[
                lp(1, -0.5, &[(1, -0.5), (2, -1.0)]),
                lp(2, -2.0, &[(3, -0.25)]),
                lp(9, f32::NEG_INFINITY, &[(3, -0.25)]),
            ],
        );
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "text_offset": [0, 1, 3, 4],
                "token_logprobs": [null, -0.5, -2.0, -9999.0],
                "tokens": ["a", "bc", "\u{e9}", "\u{fffd}"],
                "top_logprobs": [null, {"bc": -0.5}, {"d": -0.25, "\u{e9}": -2.0}, {"d": -0.25, "\u{fffd}": -9999.0}],
            })
        );
        // The offsets go on in the next chunk of a stream.
        let more = s.text(None, &[lp(3, -0.3, &[(3, -0.3)])]);
        assert_eq!(more.text_offset, vec![5]);
    }

    #[test]
    fn chat_logprobs_carry_bytes_and_exactly_the_asked_alternatives() {
        let s = shaper(2);
        let out = s.chat(&[lp(2, -0.25, &[(2, -0.25), (0, -2.0), (1, -3.0)])]);
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"content": [{
                "bytes": [0xc3, 0xa9], "logprob": -0.25, "token": "\u{e9}",
                "top_logprobs": [
                    {"bytes": [0xc3, 0xa9], "logprob": -0.25, "token": "\u{e9}"},
                    {"bytes": [97], "logprob": -2.0, "token": "a"},
                ],
            }]})
        );
    }
}

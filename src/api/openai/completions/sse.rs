//! The server-sent events of a streamed completion: a state machine that turns the sequence's
//! events into `data:` chunks, ending with the usage chunk (when asked for) and `data: [DONE]`.
//!
//! A stream cannot carry headers for what it has not computed yet, so its energy rides on the
//! usage chunk. Dropping the stream (the client went away) drops the event receiver, which
//! cancels the sequence at its next step; the usage ledger still records what it spent.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::Event;
use futures_util::Stream;
use serde::Serialize;

use super::logprobs::{ChoiceLogprobs, LogprobShaper};
use super::wire::{Chunk, ChunkChoice, CompletionUsage, Endpoint, ResponseId, StreamError};
use crate::api::handler::generate::{Echo, EndReason, Ending, SequenceEvents};
use crate::api::ApiError;
use crate::batch::generation::GenEvent;
use crate::engine::TokenLogprob;

/// What a stream shows besides the generated text.
#[derive(Debug, Default)]
pub struct Shaping {
    /// The tokens' log-probabilities, when asked for.
    pub logprobs: Option<LogprobShaper>,
    /// The prompt, first (completions with `echo`).
    pub echo: Option<Echo>,
}

/// The chunks of one streamed completion: `first` (the event the handler waited for before
/// answering), then the sequence's events from `rx`.
pub fn events(
    first: GenEvent,
    seq: SequenceEvents,
    rid: ResponseId,
    include_usage: bool,
    shaping: Shaping,
    ending: Ending,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = StreamState {
        first: Some(first),
        seq,
        rid,
        include_usage,
        shaping,
        pending: Vec::new(),
        ending,
        opened: false,
        closed: false,
        queued: VecDeque::new(),
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(e) = st.queued.pop_front() {
                return Some((Ok::<Event, Infallible>(e), st));
            }
            if st.closed {
                return None;
            }
            st.next_events().await;
        }
    })
}

/// The in-stream error for a stream cut short for `reason`.
fn end_error(reason: EndReason) -> StreamError {
    match reason {
        EndReason::ShuttingDown => StreamError::new(
            "shutting_down",
            "The server is shutting down; the completion was cut short".into(),
        ),
        EndReason::Deadline { ms } => StreamError::new(
            "timeout",
            format!("The completion did not finish within {ms} ms (limits.request_timeout_ms)"),
        ),
    }
}

/// State of an SSE response.
struct StreamState {
    /// The first event, already received.
    first: Option<GenEvent>,
    /// The sequence's events; it reports the stream's usage to the ledger however it ends.
    seq: SequenceEvents,
    ending: Ending,
    rid: ResponseId,
    include_usage: bool,
    shaping: Shaping,
    /// Log-probabilities of tokens whose text has not been sent yet.
    pending: Vec<TokenLogprob>,
    /// Role chunk (chat) or echoed prompt without log-probabilities (completions) sent.
    opened: bool,
    /// `[DONE]` queued: the stream ends once the queue is empty.
    closed: bool,
    /// Events ready to send before reading more.
    queued: VecDeque<Event>,
}

impl StreamState {
    /// A chunk with one choice.
    fn chunk(&self, choice: ChunkChoice) -> Event {
        data(&Chunk::content(&self.rid, choice, self.include_usage))
    }

    /// The log-probabilities of the pending tokens (and of an echoed prompt's first token),
    /// shaped for this endpoint; `None` when not asked for or when there are none.
    fn take_logprobs(&mut self, first: Option<u32>) -> Option<ChoiceLogprobs> {
        let shaper = self.shaping.logprobs.as_mut()?;
        if self.pending.is_empty() && first.is_none() {
            return None;
        }
        let tokens = std::mem::take(&mut self.pending);
        Some(self.rid.endpoint.logprobs(shaper, first, &tokens))
    }

    /// Reads the next event of the sequence (or opens a chat stream) and queues its chunks.
    async fn next_events(&mut self) {
        let endpoint = self.rid.endpoint;
        if !self.opened {
            self.opened = true;
            if endpoint == Endpoint::Chat {
                let e = self.chunk(ChunkChoice::opening());
                self.queued.push_back(e);
                return;
            }
            // An echoed prompt without log-probabilities goes first; with them, it waits for
            // its scores (the sequence's first event).
            if self.shaping.logprobs.is_none() {
                if let Some(echo) = self.shaping.echo.take() {
                    let e = self.chunk(ChunkChoice::text(endpoint, echo.text));
                    self.queued.push_back(e);
                    return;
                }
            }
        }
        let event = if let Some(first) = self.first.take() {
            Some(first)
        } else {
            tokio::select! {
                event = self.seq.recv() => event,
            reason = &mut self.ending => {
                // Dropping the receiver with the stream cancels the sequence.
                    self.queued.push_back(data(&end_error(reason)));
                    self.finish();
                    return;
                }
            }
        };
        match event {
            Some(GenEvent::PromptLogprobs(scores)) => {
                if let Some(echo) = self.shaping.echo.take() {
                    self.pending = scores;
                    let logprobs = self.take_logprobs(Some(echo.first_token));
                    let choice = ChunkChoice::text(endpoint, echo.text).with_logprobs(logprobs);
                    let e = self.chunk(choice);
                    self.queued.push_back(e);
                }
            }
            Some(GenEvent::Logprobs(tokens)) => self.pending.extend(tokens),
            Some(GenEvent::Text(piece)) => {
                if !piece.is_empty() {
                    let logprobs = self.take_logprobs(None);
                    let choice = ChunkChoice::text(endpoint, piece).with_logprobs(logprobs);
                    let e = self.chunk(choice);
                    self.queued.push_back(e);
                }
            }
            Some(GenEvent::Finished(done)) => {
                let logprobs = self.take_logprobs(None);
                let last = self.chunk(
                    ChunkChoice::finish(endpoint, done.reason.as_str()).with_logprobs(logprobs),
                );
                self.queued.push_back(last);
                if self.include_usage {
                    let energy = self.seq.settle(&done).await;
                    let usage = Chunk::usage(&self.rid, CompletionUsage::new(&done, energy));
                    self.queued.push_back(data(&usage));
                } else {
                    // Nothing to tell the client: settle off the stream, which ends now.
                    self.seq.settle_later(done);
                }
                self.finish();
            }
            Some(GenEvent::Failed(e)) => {
                let err = ApiError::from(e);
                self.queued
                    .push_back(data(&StreamError::new(err.code, err.message)));
                self.finish();
            }
            None => self.finish(),
        }
    }

    /// Queues `[DONE]`: nothing is read after it.
    fn finish(&mut self) {
        self.queued.push_back(Event::default().data("[DONE]"));
        self.closed = true;
    }
}

/// A `data:` event holding `body` as JSON.
fn data<T: Serialize>(body: &T) -> Event {
    match serde_json::to_string(body) {
        Ok(json) => Event::default().data(json),
        // The wire types hold strings and numbers only; should one ever fail, the client still
        // gets an error object rather than a broken stream.
        Err(e) => {
            tracing::error!("could not serialize a stream chunk: {e}");
            Event::default().data(SERIALIZE_FAILED)
        }
    }
}

/// The in-stream error sent when a chunk cannot be serialized.
const SERIALIZE_FAILED: &str = r#"{"error":{"code":"internal_error","message":"could not serialize a chunk","param":null,"type":"server_error"}}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_error_is_a_stream_error_object() {
        let expected = serde_json::to_string(&StreamError::new(
            "internal_error",
            "could not serialize a chunk".into(),
        ))
        .unwrap();
        assert_eq!(SERIALIZE_FAILED, expected);
    }
}

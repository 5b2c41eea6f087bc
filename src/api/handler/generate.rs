//! Generating a completion, whatever the protocol that asked: find the model, check the request
//! against the operator's limits, tokenize the prompt on the blocking pool, check it against the
//! context, queue the sequence, and (for a whole answer) collect its text and settle its energy.
//! The OpenAI handlers stream or shape it as OpenAI does; the Open Inference Protocol's as
//! tensors or the generate extension.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::oneshot;

use super::{find_model, tokenize_blocking, Serving};
use crate::api::openai::completions::logprobs::{ChoiceLogprobs, LogprobShaper};
use crate::api::openai::completions::validate::{self, FittingPrompt, Plan, Prompt};
use crate::api::openai::completions::wire::{Endpoint, GenerationFields};
use crate::api::usage::{settle_energy, PendingUsage, UsageEnergy, UsageReport};
use crate::api::{ApiError, AppState};
use crate::batch::generation::{Finished, GenEvent, GenerationJob, LogprobRequest};
use crate::engine::decoder::model::RenderChatError;
use crate::engine::{Decoder, GenerationModel, TokenLogprob};
use crate::meter::class::Work;
use crate::registry::{GenerationServing, ServedModel};

/// A request ready to queue: its model, options and prompt, all checked.
pub struct Prepared<'a> {
    /// The model that will serve it.
    pub model: &'a Arc<ServedModel>,
    /// Its generation side.
    pub gen: &'a GenerationServing,
    /// The checked options.
    pub plan: Plan,
    /// The prompt's ids, fitting the context with room for the completion.
    pub prompt: FittingPrompt,
    /// Where its prompt and output lengths go when it ends (drift monitoring), when on.
    pub drift: Option<crate::drift::Drift>,
    /// The prompt to echo, with `echo`.
    pub echo: Option<Echo>,
}

/// Finds the model, validates the request as `endpoint` reads it (`raw_prompt` is `messages`
/// for a chat, `prompt` otherwise), renders and tokenizes the prompt (blocking pool) and checks
/// it against the context length.
pub async fn prepare<'a>(
    state: &'a AppState,
    endpoint: Endpoint,
    model_name: &str,
    fields: GenerationFields,
    raw_prompt: Value,
) -> Result<Prepared<'a>, ApiError> {
    let (model, gen) = find_model::<GenerationServing>(state, model_name)?;
    let validate::Request { plan, prompt } =
        validate::request(endpoint, fields, raw_prompt, state.limits())?;
    let engine = gen.engine.clone();
    let echo = plan.echo;
    let (ids, echo) = tokenize_blocking(state, move || {
        let ids = tokenize(&engine, prompt)?;
        // The echoed text is the prompt's tokens decoded (CPU work, on this pool too).
        let echo = match (echo, ids.first()) {
            (true, Some(&first_token)) => Some(Echo {
                text: engine
                    .tokenizer()
                    .decode(&ids, false)
                    .map_err(|e| ApiError::internal(e.to_string()))?,
                first_token,
            }),
            _ => None,
        };
        Ok::<_, ApiError>((ids, echo))
    })
    .await?;
    let prompt = validate::check_context(gen, ids, &plan, endpoint)?;
    crate::metrics::record_tokens(&model.name, "prompt", prompt.len());
    Ok(Prepared {
        drift: state.drift().cloned(),
        model,
        gen,
        plan,
        prompt,
        echo,
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

/// An echoed prompt (`echo: true`): its text, and its first token, which has no
/// log-probability.
#[derive(Debug, Clone)]
pub struct Echo {
    /// The prompt's text (its tokens decoded, special tokens included).
    pub text: String,
    /// The prompt's first token.
    pub first_token: u32,
}

impl<'a> Prepared<'a> {
    /// Queues the sequence; its events arrive on the receiver (dropping it cancels the
    /// sequence at its next step).
    pub fn submit(self) -> Result<Submitted<'a>, ApiError> {
        let (tx, rx) = unbounded_channel();
        let (abandoned_tx, abandoned) = oneshot::channel();
        let prompt_tokens = self.prompt.len();
        let job = GenerationJob {
            max_new_tokens: self.prompt.max_new_tokens(),
            prompt: self.prompt.into_ids(),
            sampling: self.plan.sampling,
            stop: self.plan.stop.clone(),
            ignore_eos: self.plan.ignore_eos,
            logprobs: self.plan.logprobs.map(|top| LogprobRequest {
                top,
                prompt: self.plan.echo,
            }),
            events: tx,
            abandoned: Some(abandoned_tx),
        };
        self.gen.scheduler.submit(job)?;
        Ok(Submitted {
            model: self.model,
            engine: self.gen.engine.clone(),
            plan: self.plan,
            events: rx,
            abandoned,
            prompt_tokens,
            drift: self.drift,
            echo: self.echo,
        })
    }
}

/// A queued sequence: its events, and what a stream needs to shape them.
pub struct Submitted<'a> {
    /// The model serving it.
    pub model: &'a Arc<ServedModel>,
    /// The decoder (token texts for logprobs).
    engine: Arc<GenerationModel>,
    /// Its options.
    pub plan: Plan,
    /// The echoed prompt, with `echo`.
    pub echo: Option<Echo>,
    /// Text pieces, then `Finished` or `Failed`.
    pub events: UnboundedReceiver<GenEvent>,
    /// What the sequence spent, should its caller go away before the end.
    abandoned: oneshot::Receiver<Finished>,
    /// Its prompt's length.
    prompt_tokens: usize,
    /// Drift monitoring, when on.
    drift: Option<crate::drift::Drift>,
}

/// Hands a finished completion's prompt and output lengths to the drift monitor.
fn observe(drift: Option<&crate::drift::Drift>, model: &str, done: &Finished) {
    if let Some(d) = drift {
        d.observe(
            model,
            crate::drift::Observation::Values(vec![
                ("prompt_tokens", done.prompt_tokens as f64),
                ("output_tokens", done.completion_tokens as f64),
            ]),
        );
    }
}

impl<'a> Submitted<'a> {
    /// Waits for the first event, so that a sequence that cannot start (a full queue, the
    /// queue-wait deadline, a failed first step) becomes an error status rather than a stream
    /// that opens and fails.
    pub async fn first_event(&mut self) -> Result<GenEvent, ApiError> {
        match self.events.recv().await {
            Some(GenEvent::Failed(e)) => Err(e.into()),
            Some(event) => Ok(event),
            None => Err(ApiError::internal("the compute thread stopped")),
        }
    }

    /// Its events for a stream, and the usage the stream will report (for the response's
    /// extensions: the request-id layer records it when it arrives).
    pub fn into_stream(self) -> (SequenceEvents, PendingUsage) {
        let (usage, pending) = oneshot::channel();
        let events = SequenceEvents {
            model: self.model.clone(),
            events: self.events,
            abandoned: Some(self.abandoned),
            prompt_tokens: self.prompt_tokens,
            usage: Some(usage),
            drift: self.drift,
        };
        (events, PendingUsage::new(pending))
    }

    /// A shaper of this request's log-probabilities, when it asked for them.
    pub fn logprob_shaper(&self) -> Option<LogprobShaper> {
        let top = self.plan.logprobs?;
        let engine = self.engine.clone();
        Some(LogprobShaper::new(
            Arc::new(move |t| engine.token_bytes(t)),
            top,
        ))
    }

    /// Collects the whole completion and settles its energy.
    pub async fn complete(mut self) -> Result<Completed<'a>, ApiError> {
        let mut text = String::new();
        // The prompt's (which come first, with echo), then the generated tokens'.
        let mut logprobs = Vec::new();
        let shaper = self.logprob_shaper();
        let done = loop {
            match self.events.recv().await {
                Some(GenEvent::Text(piece)) => text.push_str(&piece),
                Some(GenEvent::PromptLogprobs(l) | GenEvent::Logprobs(l)) => logprobs.extend(l),
                Some(GenEvent::Finished(done)) => break done,
                Some(GenEvent::Failed(e)) => return Err(e.into()),
                None => return Err(ApiError::internal("the compute thread stopped")),
            }
        };
        observe(self.drift.as_ref(), &self.model.name, &done);
        let work = Work::Generation {
            output_tokens: done.completion_tokens,
        };
        let energy = settle_energy(self.model, &done.energy, work).await?;
        Ok(Completed {
            model: self.model,
            text,
            done,
            energy,
            echo: self.echo,
            shaper,
            logprobs,
        })
    }
}

/// A whole completion, with what it cost and how it was served.
pub struct Completed<'a> {
    /// The model that generated it.
    pub model: &'a Arc<ServedModel>,
    /// The generated text.
    pub text: String,
    /// Why it ended, its token counts and timings.
    pub done: Finished,
    /// Energy, CO2e and cost; `None` when metering is off.
    pub energy: Option<UsageEnergy>,
    /// The echoed prompt, with `echo`.
    pub echo: Option<Echo>,
    /// Shapes the log-probabilities, when asked for.
    shaper: Option<LogprobShaper>,
    /// With `logprobs`: the prompt's (tokens 1.., with `echo`), then the generated tokens'.
    logprobs: Vec<TokenLogprob>,
}

impl Completed<'_> {
    /// The choice's text: the echoed prompt, if any, then the completion.
    pub fn response_text(&self) -> String {
        match &self.echo {
            Some(echo) => format!("{}{}", echo.text, self.text),
            None => self.text.clone(),
        }
    }

    /// The choice's `logprobs` as `endpoint` shapes them (the echoed prompt's first), when
    /// asked for.
    pub fn choice_logprobs(&mut self, endpoint: Endpoint) -> Option<ChoiceLogprobs> {
        let first = self.echo.as_ref().map(|e| e.first_token);
        Some(endpoint.logprobs(self.shaper.as_mut()?, first, &self.logprobs))
    }

    /// What the usage ledger records of it.
    pub fn report(&self) -> UsageReport {
        UsageReport::new(
            self.model,
            self.done.prompt_tokens,
            self.done.completion_tokens,
            self.energy.as_ref(),
            self.done.max_batch,
        )
    }

    /// The serving headers of the answer, `total` counted from `started`.
    pub fn serving(&self, started: Instant) -> Serving<'_> {
        Serving {
            model: self.model,
            batch_size: Some(self.done.max_batch),
            timing: vec![
                ("queue", self.done.queue_time),
                ("ttft", self.done.time_to_first_token),
                ("compute", self.done.compute_time),
            ],
            until_now: ("total", started),
        }
    }
}

/// A streamed sequence's events, and the usage record the stream owes the ledger: sent once,
/// by [`SequenceEvents::settle`] or [`SequenceEvents::settle_later`] when the sequence finished,
/// or, when the stream is dropped first (its client went away, a deadline or shutdown cut it
/// short, a step failed), from what the sequence had generated and spent until then.
pub struct SequenceEvents {
    model: Arc<ServedModel>,
    events: UnboundedReceiver<GenEvent>,
    abandoned: Option<oneshot::Receiver<Finished>>,
    prompt_tokens: usize,
    usage: Option<oneshot::Sender<UsageReport>>,
    drift: Option<crate::drift::Drift>,
}

impl SequenceEvents {
    /// The next event (`None` once the sequence is gone).
    pub async fn recv(&mut self) -> Option<GenEvent> {
        self.events.recv().await
    }

    /// Settles the finished sequence's energy and reports its usage; the energy for the
    /// stream's last event (`None` when not metered, or when the meter could not settle: the
    /// 200 is out, so that leaves the energy out rather than failing the completion).
    pub async fn settle(&mut self, done: &Finished) -> Option<UsageEnergy> {
        observe(self.drift.as_ref(), &self.model.name, done);
        settle_and_report(&self.model, done, self.usage.take()).await
    }

    /// The same off the stream (which can end now): for a stream that tells its client nothing
    /// about energy, while the ledger and the energy-per-request metric count it all the same.
    pub fn settle_later(&mut self, done: Finished) {
        observe(self.drift.as_ref(), &self.model.name, &done);
        let (model, usage) = (self.model.clone(), self.usage.take());
        tokio::spawn(async move { settle_and_report(&model, &done, usage).await });
    }
}

impl Drop for SequenceEvents {
    fn drop(&mut self) {
        let Some(usage) = self.usage.take() else {
            return;
        };
        // The sequence stops at its next step; an ending already queued is the whole story.
        self.events.close();
        let mut done = None;
        while let Ok(event) = self.events.try_recv() {
            if let GenEvent::Finished(f) = event {
                done = Some(f);
            }
        }
        let abandoned = self.abandoned.take();
        let (model, prompt_tokens) = (self.model.clone(), self.prompt_tokens);
        let nothing = move |model: &ServedModel| UsageReport::new(model, prompt_tokens, 0, None, 0);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            let _ = usage.send(nothing(&model));
            return;
        };
        runtime.spawn(async move {
            let done = match (done, abandoned) {
                (Some(done), _) => Some(done),
                // Dropped unsent when the sequence failed rather than being left.
                (None, Some(rx)) => rx.await.ok(),
                (None, None) => None,
            };
            match done {
                Some(done) => {
                    settle_and_report(&model, &done, Some(usage)).await;
                }
                None => {
                    let _ = usage.send(nothing(&model));
                }
            }
        });
    }
}

/// Settles `done`'s energy, sends its usage report to `usage`, and returns the energy.
async fn settle_and_report(
    model: &ServedModel,
    done: &Finished,
    usage: Option<oneshot::Sender<UsageReport>>,
) -> Option<UsageEnergy> {
    let work = Work::Generation {
        output_tokens: done.completion_tokens,
    };
    let energy = settle_energy(model, &done.energy, work)
        .await
        .ok()
        .flatten();
    if let Some(tx) = usage {
        let report = UsageReport::new(
            model,
            done.prompt_tokens,
            done.completion_tokens,
            energy.as_ref(),
            done.max_batch,
        );
        let _ = tx.send(report);
    }
    energy
}

/// Resolves when a stream must end before its sequence does, saying why.
pub type Ending = Pin<Box<dyn Future<Output = EndReason> + Send>>;

/// Why a stream is cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The server's shutdown grace period is over.
    ShuttingDown,
    /// The request's deadline (`limits.request_timeout_ms`) passed.
    Deadline {
        /// The deadline, ms.
        ms: u64,
    },
}

/// What cuts a stream short: the server's shutdown, or the request deadline (counted from
/// `started`, as for a whole response).
pub fn ending(state: &AppState, started: Instant) -> Ending {
    let shutdown = state.streams_ending();
    let ms = state.limits().request_timeout_ms;
    let deadline = tokio::time::Instant::from_std(started) + state.limits().request_timeout();
    Box::pin(async move {
        tokio::select! {
            _ = shutdown => EndReason::ShuttingDown,
            _ = tokio::time::sleep_until(deadline) => EndReason::Deadline { ms },
        }
    })
}

//! Continuous batching for a text-generation model.
//!
//! One loop per model, on its own thread, owns the running sequences. Each step it admits
//! waiting sequences (up to `max_running_seqs`), gives every decoding sequence its one token and
//! the rest of the step's token budget (`max_batch_tokens`) to prompt chunks, oldest first, runs
//! ONE forward pass over all of them, samples, streams each sequence's new text to its caller,
//! and drops finished or abandoned sequences (a caller that went away closes its channel) at
//! once, freeing their KV caches. The step's energy is split among its sequences by tokens.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::{failed_owners, metered_step, Admission, SchedulerError, Worker};
use crate::engine::logprobs::{self, TokenLogprob};
use crate::engine::sampling::{Sampler, SamplingParams};
use crate::engine::text_stream::TextStream;
use crate::engine::{Decoder, Logits, SeqInput};
use crate::meter::{EnergyShare, Meter};
use crate::metrics as m;

/// Limits of one generation model's scheduler (`[batching]` of its model.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationLimits {
    /// Sequences in one step at most (`batching.max_batch_size`).
    pub max_running_seqs: usize,
    /// Sequences in progress at most (`batching.max_active_seqs`, at least `max_running_seqs`):
    /// when more are active than fit a step, steps take turns among them.
    pub max_active_seqs: usize,
    /// Tokens in one forward pass at most: one per decoding sequence plus prompt chunks.
    pub max_batch_tokens: usize,
    /// Requests admitted (running or waiting) before new ones get 503.
    pub queue_capacity: usize,
    /// Bytes the KV caches of running sequences may hold together, counting each sequence at
    /// its worst case (prompt + `max_new_tokens`): a sequence starts only while it fits, so
    /// cache memory is bounded by configuration. One sequence alone always starts.
    pub max_kv_bytes: usize,
    /// Longest a request may wait for a slot; it then fails with
    /// [`SchedulerError::QueueTimeout`] rather than wait without end.
    pub max_queue_wait: Duration,
}

/// What a caller asks for.
#[derive(Debug)]
pub struct GenerationJob {
    /// Prompt token ids (already checked against the context length).
    pub prompt: Vec<u32>,
    /// Most tokens to generate; 0 only scores the prompt (with [`LogprobRequest::prompt`]).
    pub max_new_tokens: usize,
    /// Log-probabilities to report, if any.
    pub logprobs: Option<LogprobRequest>,
    /// How to choose tokens.
    pub sampling: SamplingParams,
    /// Strings that end the completion (not included in it).
    pub stop: Vec<String>,
    /// Generate past stop tokens until `max_new_tokens` (benchmarks).
    pub ignore_eos: bool,
    /// Where the events go; dropping the receiver cancels the sequence.
    pub events: UnboundedSender<GenEvent>,
    /// Where the sequence's counts and energy shares go when its caller went away before the
    /// end (the usage ledger records what an abandoned stream spent): sent once the loop notices
    /// the closed receiver, with reason [`FinishReason::Cancelled`], or with the real ending when
    /// the caller left just before it.
    pub abandoned: Option<tokio::sync::oneshot::Sender<Finished>>,
}

/// Which log-probabilities a sequence reports (see [`crate::engine::logprobs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogprobRequest {
    /// Alternatives per token besides the chosen one (at most [`logprobs::MAX_TOP`]).
    pub top: usize,
    /// Also score the prompt: every prompt token after the first gets its log-probability given
    /// the tokens before it ([`GenEvent::PromptLogprobs`]).
    pub prompt: bool,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` or the context length reached.
    Length,
    /// The caller went away before the end (never sent to a client: see
    /// [`GenerationJob::abandoned`]).
    Cancelled,
}

impl FinishReason {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// The end of a sequence: counts, timings and its claims on the energy of its steps.
#[derive(Debug)]
pub struct Finished {
    /// Why it ended.
    pub reason: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens generated (a final stop token included).
    pub completion_tokens: usize,
    /// From submission to the first step that computed it.
    pub queue_time: Duration,
    /// From submission to the first generated token.
    pub time_to_first_token: Duration,
    /// Sum of the durations of the steps it was part of.
    pub compute_time: Duration,
    /// Largest number of sequences in one of its steps.
    pub max_batch: usize,
    /// Its share of every metered step it was part of.
    pub energy: Vec<EnergyShare>,
}

/// What a caller receives, in order: the prompt's log-probabilities (when asked for), text
/// pieces each preceded by the log-probabilities of its tokens (when asked for), then
/// `Finished` or `Failed`.
#[derive(Debug)]
pub enum GenEvent {
    /// The log-probabilities of prompt tokens 1.. (token 0 has no context), once the prompt is
    /// in; only with [`LogprobRequest::prompt`].
    PromptLogprobs(Vec<TokenLogprob>),
    /// The log-probabilities of the generated tokens whose text the next [`GenEvent::Text`]
    /// completes (or, before `Finished`, of tokens whose text was held back and dropped); a
    /// final stop token has none, as it has no text.
    Logprobs(Vec<TokenLogprob>),
    /// New text: what became final since the last piece (bytes of an incomplete character or
    /// of a possible stop string wait for the next token).
    Text(String),
    /// The sequence ended normally.
    Finished(Finished),
    /// The step it was in failed; the sequence is dropped.
    Failed(SchedulerError),
}

/// The handle callers submit to. Dropping it lets the loop finish the sequences it holds, then
/// joins its thread.
pub struct GenerationScheduler {
    worker: Worker<Submission>,
    limits: GenerationLimits,
}

struct Submission {
    job: GenerationJob,
    submitted: Instant,
}

impl GenerationScheduler {
    /// Starts the loop for `engine` on a thread of its own.
    pub fn start<D: Decoder>(
        name: &str,
        engine: Arc<D>,
        limits: GenerationLimits,
        meter: Option<Arc<Meter>>,
    ) -> std::io::Result<Self> {
        let model = name.to_string();
        let worker = Worker::spawn(
            name,
            format!("gen-{name}"),
            limits.queue_capacity,
            move |rx, admission| {
                StepLoop {
                    model,
                    engine,
                    meter,
                    limits,
                    rx,
                    admission,
                    waiting: VecDeque::new(),
                    running: Vec::new(),
                    steps: 0,
                }
                .run()
            },
        )?;
        Ok(Self { worker, limits })
    }

    /// The KV-cache budget sequences are admitted within (`batching.max_kv_bytes`).
    pub fn max_kv_bytes(&self) -> usize {
        self.limits.max_kv_bytes
    }

    /// Queues `job`; its events arrive on `job.events`. Fails at once when `queue_capacity`
    /// requests are already admitted.
    pub fn submit(&self, job: GenerationJob) -> Result<(), SchedulerError> {
        self.worker.submit(Submission {
            job,
            submitted: Instant::now(),
        })
    }

    /// Requests admitted and not finished.
    pub fn in_flight(&self) -> usize {
        self.worker.in_flight()
    }

    /// Whether the step loop's thread is running.
    pub fn is_alive(&self) -> bool {
        self.worker.is_alive()
    }
}

/// A sequence inside the loop.
struct Seq<C> {
    job: GenerationJob,
    submitted: Instant,
    cache: Option<C>,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// The token to feed next once the prompt is in (the last one sampled).
    next: Option<u32>,
    generated: usize,
    sampler: Sampler,
    text: TextStream,
    /// Text produced but not yet sent (it may be the start of a stop string).
    held: String,
    /// Log-probabilities of the generated tokens whose text is not sent yet.
    pending: Vec<TokenLogprob>,
    /// Log-probabilities of the prompt tokens scored so far (with [`LogprobRequest::prompt`]).
    prompt_scores: Vec<TokenLogprob>,
    first_step: Option<Instant>,
    /// The loop's step count when this sequence last took part in a step (0: never).
    last_step: u64,
    first_token: Option<Duration>,
    compute_time: Duration,
    max_batch: usize,
    energy: Vec<EnergyShare>,
}

impl<C> Seq<C> {
    /// Its counts and energy shares so far, ending for `reason` (the shares move out).
    fn finished(&mut self, reason: FinishReason) -> Finished {
        let first_step = self.first_step.unwrap_or(self.submitted);
        Finished {
            reason,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.generated,
            queue_time: first_step - self.submitted,
            time_to_first_token: self.first_token.unwrap_or_default(),
            compute_time: self.compute_time,
            max_batch: self.max_batch,
            energy: std::mem::take(&mut self.energy),
        }
    }

    fn new(sub: Submission) -> Self {
        let sampler = Sampler::new(sub.job.sampling);
        Self {
            job: sub.job,
            submitted: sub.submitted,
            cache: None,
            prefilled: 0,
            next: None,
            generated: 0,
            sampler,
            text: TextStream::default(),
            held: String::new(),
            pending: Vec::new(),
            prompt_scores: Vec::new(),
            first_step: None,
            last_step: 0,
            first_token: None,
            compute_time: Duration::ZERO,
            max_batch: 0,
            energy: Vec::new(),
        }
    }

    fn prompt_done(&self) -> bool {
        self.prefilled == self.job.prompt.len()
    }

    fn scores_prompt(&self) -> bool {
        self.job.logprobs.is_some_and(|l| l.prompt)
    }

    /// The logits this step needs for `range` of its tokens: every row of a prompt chunk it
    /// scores, the last row where a token is sampled next, else none.
    fn logits_wanted(&self, range: &std::ops::Range<usize>) -> Logits {
        if self.prompt_done() {
            Logits::Last
        } else if self.scores_prompt() {
            Logits::All
        } else if range.end == self.job.prompt.len() && self.job.max_new_tokens > 0 {
            Logits::Last
        } else {
            Logits::None
        }
    }

    /// Sends the pending log-probabilities (before the text they belong to).
    fn flush_logprobs(&mut self) {
        if !self.pending.is_empty() {
            let _ = self
                .job
                .events
                .send(GenEvent::Logprobs(std::mem::take(&mut self.pending)));
        }
    }
}

struct StepLoop<D: Decoder> {
    model: String,
    engine: Arc<D>,
    meter: Option<Arc<Meter>>,
    limits: GenerationLimits,
    rx: Receiver<Submission>,
    admission: Admission,
    waiting: VecDeque<Submission>,
    running: Vec<Seq<D::Cache>>,
    /// Steps run so far.
    steps: u64,
}

/// Completion tokens a new sequence's KV cache has room for before it grows.
const INITIAL_ROOM: usize = 256;

/// How long an idle loop blocks before checking again for shutdown.
const IDLE_WAIT: Duration = Duration::from_millis(200);

impl<D: Decoder> StepLoop<D> {
    fn run(mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.rx.recv_timeout(IDLE_WAIT) {
                    Ok(sub) => self.waiting.push_back(sub),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            while let Ok(sub) = self.rx.try_recv() {
                self.waiting.push_back(sub);
            }
            self.drop_abandoned();
            self.expire_waiting();
            self.admit_waiting();
            m::set_queue_depth(&self.model, self.waiting.len());
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    /// Starts waiting sequences in arrival order while a slot is free and their worst-case KV
    /// cache fits the budget beside the running ones' (the first in line waits for room rather
    /// than being overtaken, so a long request is not starved by short ones).
    fn admit_waiting(&mut self) {
        let per_token = self.engine.cache_bytes_per_token();
        let worst = |job: &GenerationJob| (job.prompt.len() + job.max_new_tokens) * per_token;
        let mut reserved: usize = self.running.iter().map(|s| worst(&s.job)).sum();
        while self.running.len() < self.limits.max_active_seqs {
            let Some(next) = self.waiting.front() else {
                break;
            };
            let need = worst(&next.job);
            if !self.running.is_empty() && reserved + need > self.limits.max_kv_bytes {
                break;
            }
            reserved += need;
            if let Some(sub) = self.waiting.pop_front() {
                self.running.push(Seq::new(sub));
            }
        }
    }

    /// Fails the waiting requests that have waited longer than `max_queue_wait` (oldest first:
    /// the queue is in arrival order).
    fn expire_waiting(&mut self) {
        while let Some(front) = self.waiting.front() {
            let waited = front.submitted.elapsed();
            if waited <= self.limits.max_queue_wait {
                break;
            }
            if let Some(sub) = self.waiting.pop_front() {
                let err = SchedulerError::QueueTimeout {
                    model: self.model.clone(),
                    waited_ms: waited.as_millis() as u64,
                };
                let _ = sub.job.events.send(GenEvent::Failed(err));
                self.admission.release(1);
            }
        }
    }

    /// Sequences whose caller went away (closed stream, timeout) leave before any compute.
    /// What they had spent goes to [`GenerationJob::abandoned`].
    fn drop_abandoned(&mut self) {
        let before = self.running.len() + self.waiting.len();
        let mut gone = Vec::new();
        self.running.retain_mut(|s| {
            let closed = s.job.events.is_closed();
            if closed {
                gone.push((s.job.abandoned.take(), s.finished(FinishReason::Cancelled)));
            }
            !closed
        });
        self.waiting.retain_mut(|sub| {
            let closed = sub.job.events.is_closed();
            if closed {
                let waited = sub.submitted.elapsed();
                let nothing = Finished {
                    reason: FinishReason::Cancelled,
                    prompt_tokens: sub.job.prompt.len(),
                    completion_tokens: 0,
                    queue_time: waited,
                    time_to_first_token: Duration::ZERO,
                    compute_time: Duration::ZERO,
                    max_batch: 0,
                    energy: Vec::new(),
                };
                gone.push((sub.job.abandoned.take(), nothing));
            }
            !closed
        });
        for (to, spent) in gone {
            if let Some(to) = to {
                let _ = to.send(spent);
            }
        }
        self.admission
            .release(before - self.running.len() - self.waiting.len());
    }

    /// Chooses each running sequence's tokens for this step: one for every decoding sequence,
    /// then prompt chunks in admission order while the budget lasts.
    ///
    /// At most `max_running_seqs` sequences take part in a step. When more are active, those
    /// served least recently go first, so that every active sequence advances: a short request
    /// admitted beside many long streams finishes in a few of its own steps instead of waiting
    /// for a stream to end.
    fn plan(&mut self) -> Vec<(usize, std::ops::Range<usize>)> {
        let running = &self.running;
        let mut chosen: Vec<usize> = (0..running.len())
            .filter(|&i| !running[i].prompt_done() || running[i].next.is_some())
            .collect();
        if chosen.len() > self.limits.max_running_seqs {
            chosen.sort_by_key(|&i| (running[i].last_step, i));
            chosen.truncate(self.limits.max_running_seqs);
            chosen.sort_unstable();
        }
        let mut budget = self.limits.max_batch_tokens;
        let mut plan = Vec::new();
        for &i in &chosen {
            if running[i].prompt_done() && budget > 0 {
                plan.push((i, 0..1));
                budget -= 1;
            }
        }
        for &i in &chosen {
            let s = &running[i];
            if !s.prompt_done() && budget > 0 {
                let n = (s.job.prompt.len() - s.prefilled).min(budget);
                plan.push((i, s.prefilled..s.prefilled + n));
                budget -= n;
            }
        }
        plan.sort_by_key(|(i, _)| *i);
        self.steps += 1;
        for (i, _) in &plan {
            self.running[*i].last_step = self.steps;
        }
        plan
    }

    fn step(&mut self) {
        let plan = self.plan();
        if plan.is_empty() {
            return;
        }
        let weight: usize = plan.iter().map(|(_, r)| r.len()).sum();
        let engine = &*self.engine;
        let running = &mut self.running;
        let (outcome, step) = metered_step(
            &self.model,
            self.meter.as_deref(),
            plan.len(),
            weight,
            || {
                let mut tokens: Vec<Vec<u32>> = Vec::with_capacity(plan.len());
                let mut wants_logits = Vec::with_capacity(plan.len());
                for (i, range) in &plan {
                    let s = &running[*i];
                    wants_logits.push(s.logits_wanted(range));
                    tokens.push(if s.prompt_done() {
                        s.next.into_iter().collect()
                    } else {
                        s.job.prompt[range.clone()].to_vec()
                    });
                }
                let mut caches: Vec<Option<&mut D::Cache>> = Vec::with_capacity(running.len());
                for s in running.iter_mut() {
                    if s.cache.is_none() {
                        // Room for the prompt and a typical answer; the cache grows past it if
                        // needed (reserving the whole context would pin memory per sequence).
                        let capacity = s.job.prompt.len() + s.job.max_new_tokens.min(INITIAL_ROOM);
                        s.cache = Some(engine.new_cache(capacity));
                    }
                    caches.push(s.cache.as_mut());
                }
                let mut inputs = Vec::with_capacity(plan.len());
                for (((i, _), toks), &logits) in plan.iter().zip(&tokens).zip(&wants_logits) {
                    if let Some(cache) = caches[*i].take() {
                        inputs.push(SeqInput {
                            tokens: toks,
                            cache,
                            logits,
                        });
                    }
                }
                let rows = engine.step(&mut inputs)?;
                let expected: usize = wants_logits
                    .iter()
                    .zip(&tokens)
                    .map(|(w, t)| w.rows(t.len()))
                    .sum();
                let vocab = engine.vocab_size();
                if rows.len() != expected || rows.iter().any(|r| r.len() != vocab) {
                    return Err(crate::engine::EngineError::Unsupported(format!(
                        "decoder returned {} logits rows for {expected} sequences",
                        rows.len()
                    )));
                }
                Ok(rows)
            },
        );
        let logits = match outcome {
            Ok(l) => l,
            Err(err) => {
                for i in failed_owners(plan.iter().map(|(i, _)| *i)) {
                    let s = self.running.swap_remove(i);
                    let _ = s.job.events.send(GenEvent::Failed(err.clone()));
                    self.admission.release(1);
                }
                return;
            }
        };
        let mut rows = logits.iter();
        let mut finished = Vec::new();
        let mut sampled_tokens = 0;
        let engine = &*self.engine;
        for (i, range) in &plan {
            let s = &mut self.running[*i];
            s.compute_time += step.elapsed;
            s.max_batch = s.max_batch.max(plan.len());
            s.first_step.get_or_insert(step.start);
            s.energy.extend(step.share(range.len()));
            let sampled = if s.prompt_done() {
                true
            } else {
                if s.scores_prompt() {
                    score_prompt(s, range, &mut rows);
                }
                s.prefilled = range.end;
                if s.prompt_done() && s.scores_prompt() {
                    let scores = std::mem::take(&mut s.prompt_scores);
                    let _ = s.job.events.send(GenEvent::PromptLogprobs(scores));
                }
                if s.prompt_done() && s.job.max_new_tokens == 0 {
                    // Scoring only: nothing to generate (the row after the prompt's last token,
                    // returned with a scored chunk's rows, goes unused).
                    if s.scores_prompt() {
                        rows.next();
                    }
                    finished.push((*i, FinishReason::Length));
                    continue;
                }
                s.prompt_done()
            };
            if !sampled {
                continue;
            }
            let Some(row) = rows.next() else {
                continue;
            };
            let token = s.sampler.sample(row);
            sampled_tokens += 1;
            s.generated += 1;
            s.next = Some(token);
            s.first_token.get_or_insert_with(|| s.submitted.elapsed());
            let stops = !s.job.ignore_eos && engine.is_stop(token);
            if let (Some(want), false) = (s.job.logprobs, stops) {
                s.pending.push(logprobs::score(row, token, want.top));
            }
            let reason = if stops {
                Some(FinishReason::Stop)
            } else {
                match s.text.push(engine, token) {
                    Ok(piece) => {
                        s.held.push_str(&piece);
                        emit_text(s)
                    }
                    Err(e) => {
                        let _ = s
                            .job
                            .events
                            .send(GenEvent::Failed(SchedulerError::Engine(e.to_string())));
                        Some(FinishReason::Stop)
                    }
                }
            };
            let at_context = s.job.prompt.len() + s.generated >= engine.context_len();
            let reason = reason.or_else(|| {
                (s.generated >= s.job.max_new_tokens || at_context).then_some(FinishReason::Length)
            });
            if let Some(reason) = reason {
                finished.push((*i, reason));
            }
        }
        m::record_tokens(&self.model, "completion", sampled_tokens);
        finished.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        for (i, reason) in finished {
            let mut s = self.running.swap_remove(i);
            self.finish(&mut s, reason);
        }
    }

    fn finish(&self, s: &mut Seq<D::Cache>, reason: FinishReason) {
        if reason == FinishReason::Length {
            // Flush what was held back for a possible stop string or an incomplete character.
            if let Ok(rest) = s.text.finish(&*self.engine) {
                s.held.push_str(&rest);
            }
            s.flush_logprobs();
            if !s.held.is_empty() {
                let _ = s
                    .job
                    .events
                    .send(GenEvent::Text(std::mem::take(&mut s.held)));
            }
        }
        s.flush_logprobs();
        let ttft = s.first_token.unwrap_or_default();
        m::record_generation(&self.model, ttft, s.generated, s.submitted.elapsed());
        let done = s.finished(reason);
        if let Err(unsent) = s.job.events.send(GenEvent::Finished(done)) {
            // The caller left just before the end: the ledger still gets what it spent.
            if let (GenEvent::Finished(done), Some(to)) = (unsent.0, s.job.abandoned.take()) {
                let _ = to.send(done);
            }
        }
        self.admission.release(1);
    }
}

/// Sends the part of `s.held` that cannot be the start of a stop string; returns `Stop` when a
/// stop string appeared (the text before it is sent, the rest dropped).
fn emit_text<C>(s: &mut Seq<C>) -> Option<FinishReason> {
    if let Some(cut) = s
        .job
        .stop
        .iter()
        .filter_map(|stop| s.held.find(stop.as_str()))
        .min()
    {
        let piece: String = s.held[..cut].to_string();
        s.held.clear();
        s.flush_logprobs();
        if !piece.is_empty() {
            let _ = s.job.events.send(GenEvent::Text(piece));
        }
        return Some(FinishReason::Stop);
    }
    let keep = held_back(&s.held, &s.job.stop);
    let send_to = s.held.len() - keep;
    if send_to > 0 {
        s.flush_logprobs();
        let piece: String = s.held.drain(..send_to).collect();
        let _ = s.job.events.send(GenEvent::Text(piece));
    }
    None
}

/// Scores the prompt tokens a chunk's logits predict: row `r` (after prompt token
/// `range.start + r`) gives the log-probability of the token after it; the row after the
/// prompt's last token is left in `rows` for sampling.
fn score_prompt<'r, C>(
    s: &mut Seq<C>,
    range: &std::ops::Range<usize>,
    rows: &mut impl Iterator<Item = &'r Vec<f32>>,
) {
    let top = s.job.logprobs.map_or(0, |l| l.top);
    for pos in range.clone() {
        let Some(&next) = s.job.prompt.get(pos + 1) else {
            break;
        };
        if let Some(row) = rows.next() {
            s.prompt_scores.push(logprobs::score(row, next, top));
        }
    }
}

/// Bytes at the end of `text` that are a proper prefix of some stop string (and so must wait
/// for the next token before they can be sent). Always on a character boundary.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut keep = 0;
    for stop in stops {
        for (idx, _) in stop.char_indices().skip(1) {
            let prefix = &stop[..idx];
            if idx > keep && text.ends_with(prefix) {
                keep = idx;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::test_support::wait_until;
    use crate::engine::EngineError;
    use std::sync::Mutex;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    /// The fake vocabulary: token `t` reads `WORDS[t]`; the last one is the stop token.
    const WORDS: [&str; 8] = ["a", "b", "E", "ND", "x", "y", "z", "<eos>"];
    const STOP: u32 = 7;

    /// Per step, per input: (sequence tag, tokens fed, logits wanted).
    type StepLog = Arc<Mutex<Vec<Vec<(u32, usize, bool)>>>>;

    /// A decoder whose output the prompt scripts: a prompt is `[tag, n, s_0 .. s_(n-1)]` and
    /// the sequence generates `s_0, s_1, ..` cyclically. Steps holding the tag 13 fail, 66
    /// panic. With a gate, every step is logged and then waits for the test to open it.
    #[derive(Default)]
    struct FakeDecoder {
        log: StepLog,
        gate: Option<Mutex<std::sync::mpsc::Receiver<()>>>,
        context: usize,
    }

    /// A fake sequence cache: every token fed so far (the prompt starts with the script).
    struct FakeCache(Vec<u32>);

    impl Decoder for FakeDecoder {
        type Cache = FakeCache;

        fn new_cache(&self, capacity: usize) -> FakeCache {
            FakeCache(Vec::with_capacity(capacity))
        }

        fn step(
            &self,
            inputs: &mut [SeqInput<'_, FakeCache>],
        ) -> Result<Vec<Vec<f32>>, EngineError> {
            let entry: Vec<(u32, usize, bool)> = inputs
                .iter()
                .map(|i| {
                    let tag = i.cache.0.first().or(i.tokens.first()).copied();
                    (tag.unwrap_or(0), i.tokens.len(), i.logits != Logits::None)
                })
                .collect();
            let tags: Vec<u32> = entry.iter().map(|e| e.0).collect();
            self.log.lock().unwrap().push(entry);
            if let Some(g) = &self.gate {
                let _ = g.lock().unwrap().recv();
            }
            if tags.contains(&66) {
                panic!("marker sequence");
            }
            if tags.contains(&13) {
                return Err(EngineError::Unsupported("unlucky".into()));
            }
            let mut rows = Vec::new();
            for input in inputs.iter_mut() {
                let before = input.cache.0.len();
                input.cache.0.extend_from_slice(input.tokens);
                if input.logits == Logits::All {
                    // Every row but the last: one-hot at (the token + 1), so that a prompt of
                    // consecutive ids is predicted exactly.
                    for &t in &input.cache.0[before..input.cache.0.len() - 1] {
                        let mut row = vec![0.0; WORDS.len()];
                        row[(t as usize + 1) % WORDS.len()] = 1.0;
                        rows.push(row);
                    }
                }
                if input.logits != Logits::None {
                    let seq = &input.cache.0;
                    let n = seq.get(1).map_or(0, |&n| n as usize);
                    let next = if n > 0 && seq.len() >= 2 + n {
                        let generated = seq.len() - 2 - n;
                        seq[2 + generated % n]
                    } else {
                        // Inside a (scored) prompt: predict the next id.
                        (seq[seq.len() - 1] + 1) % WORDS.len() as u32
                    };
                    let mut row = vec![0.0; WORDS.len()];
                    row[next as usize] = 1.0;
                    rows.push(row);
                }
            }
            Ok(rows)
        }

        fn context_len(&self) -> usize {
            if self.context == 0 {
                1 << 20
            } else {
                self.context
            }
        }

        fn vocab_size(&self) -> usize {
            WORDS.len()
        }

        fn cache_bytes_per_token(&self) -> usize {
            1
        }

        fn is_stop(&self, token: u32) -> bool {
            token == STOP
        }

        fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
            Ok(ids
                .iter()
                .filter(|&&t| t != STOP)
                .map(|&t| WORDS[t as usize])
                .collect())
        }

        fn token_bytes(&self, token: u32) -> Vec<u8> {
            WORDS[token as usize].as_bytes().to_vec()
        }
    }

    fn limits(running: usize, tokens: usize, capacity: usize) -> GenerationLimits {
        GenerationLimits {
            max_running_seqs: running,
            max_active_seqs: running,
            max_batch_tokens: tokens,
            queue_capacity: capacity,
            max_kv_bytes: usize::MAX,
            max_queue_wait: Duration::from_secs(3600),
        }
    }

    fn start(engine: FakeDecoder, limits: GenerationLimits) -> GenerationScheduler {
        GenerationScheduler::start("fake", Arc::new(engine), limits, None).unwrap()
    }

    /// A gated decoder, the sender that opens one step per message, and its log.
    fn gated() -> (FakeDecoder, std::sync::mpsc::Sender<()>, StepLog) {
        let (open, gate) = std::sync::mpsc::channel();
        let engine = FakeDecoder {
            gate: Some(Mutex::new(gate)),
            ..Default::default()
        };
        let log = engine.log.clone();
        (engine, open, log)
    }

    /// The prompt `[tag, script.len(), script..]`.
    fn prompt(tag: u32, script: &[u32]) -> Vec<u32> {
        let mut p = vec![tag, script.len() as u32];
        p.extend_from_slice(script);
        p
    }

    fn job(prompt: Vec<u32>, max_new: usize) -> (GenerationJob, UnboundedReceiver<GenEvent>) {
        let (events, rx) = unbounded_channel();
        let job = GenerationJob {
            prompt,
            max_new_tokens: max_new,
            sampling: SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            events,
            abandoned: None,
        };
        (job, rx)
    }

    /// Submits a greedy job; its event receiver.
    fn submit(
        s: &GenerationScheduler,
        prompt: Vec<u32>,
        max_new: usize,
    ) -> UnboundedReceiver<GenEvent> {
        let (j, rx) = job(prompt, max_new);
        s.submit(j).unwrap();
        rx
    }

    /// Everything a sequence's caller receives: the text, and how it ended.
    fn outcome(mut rx: UnboundedReceiver<GenEvent>) -> (String, Result<Finished, SchedulerError>) {
        let mut text = String::new();
        loop {
            match rx.blocking_recv() {
                Some(GenEvent::Text(t)) => text.push_str(&t),
                Some(GenEvent::Logprobs(_) | GenEvent::PromptLogprobs(_)) => {}
                Some(GenEvent::Finished(f)) => return (text, Ok(f)),
                Some(GenEvent::Failed(e)) => return (text, Err(e)),
                None => return (text, Err(SchedulerError::Stopped("closed".into()))),
            }
        }
    }

    fn steps(log: &StepLog) -> Vec<Vec<(u32, usize, bool)>> {
        log.lock().unwrap().clone()
    }

    #[test]
    fn prompts_are_chunked_within_the_token_budget_after_the_decoding_tokens() {
        let (engine, open, log) = gated();
        let s = start(engine, limits(4, 8, 16));
        let blocker = submit(&s, prompt(1, &[0]), 1);
        wait_until(|| log.lock().unwrap().len() == 1);
        let a = submit(&s, prompt(10, &[0, 1]), 3); // 4 prompt tokens
        let b = submit(&s, prompt(20, &[0; 10]), 1); // 12 prompt tokens
        for _ in 0..8 {
            let _ = open.send(());
        }
        assert!(outcome(blocker).1.is_ok());
        assert_eq!(outcome(a), ("aba".to_string(), outcome_len(3, 4)));
        assert!(outcome(b).1.is_ok());
        assert_eq!(
            steps(&log),
            vec![
                vec![(1, 3, true)],
                // A's whole prompt, then B's first chunk with the rest of the budget.
                vec![(10, 4, true), (20, 4, false)],
                // A decodes one token; B's chunk takes the other seven.
                vec![(10, 1, true), (20, 7, false)],
                vec![(10, 1, true), (20, 1, true)],
            ]
        );
    }

    /// The `Finished` fields a test compares: reason Length after `completion` tokens.
    fn outcome_len(completion: usize, prompt: usize) -> Result<Finished, SchedulerError> {
        Ok(Finished {
            reason: FinishReason::Length,
            prompt_tokens: prompt,
            completion_tokens: completion,
            queue_time: Duration::ZERO,
            time_to_first_token: Duration::ZERO,
            compute_time: Duration::ZERO,
            max_batch: 0,
            energy: Vec::new(),
        })
    }

    impl PartialEq for Finished {
        /// Counts and reason only (timings vary run to run).
        fn eq(&self, other: &Self) -> bool {
            (self.reason, self.prompt_tokens, self.completion_tokens)
                == (other.reason, other.prompt_tokens, other.completion_tokens)
        }
    }

    #[test]
    fn sequences_are_admitted_in_arrival_order_when_the_slots_are_full() {
        let (engine, open, log) = gated();
        let s = start(engine, limits(1, 64, 16));
        let first = submit(&s, prompt(1, &[0]), 1);
        wait_until(|| log.lock().unwrap().len() == 1);
        let rest: Vec<_> = [10, 20, 30]
            .iter()
            .map(|&tag| submit(&s, prompt(tag, &[1]), 2))
            .collect();
        for _ in 0..16 {
            let _ = open.send(());
        }
        assert!(outcome(first).1.is_ok());
        for rx in rest {
            assert_eq!(outcome(rx).0, "bb");
        }
        let order: Vec<Vec<u32>> = steps(&log)
            .iter()
            .map(|step| step.iter().map(|e| e.0).collect())
            .collect();
        assert_eq!(
            order,
            vec![
                vec![1],
                vec![10],
                vec![10],
                vec![20],
                vec![20],
                vec![30],
                vec![30]
            ]
        );
    }

    #[test]
    fn finished_and_cancelled_sequences_leave_at_once() {
        let (engine, open, log) = gated();
        let s = start(engine, limits(4, 64, 16));
        let blocker = submit(&s, prompt(1, &[0]), 1);
        wait_until(|| steps(&log).len() == 1);
        let long = submit(&s, prompt(10, &[0]), 1000);
        let short = submit(&s, prompt(20, &[1]), 1);
        let _ = open.send(()); // step 1 (blocker) done
        wait_until(|| steps(&log).len() == 2); // step 2: both prompts, blocked
        let _ = open.send(());
        // `short` finished in step 2: its events are all there before step 3 ends.
        wait_until(|| steps(&log).len() == 3);
        assert_eq!(outcome(short).0, "b");
        drop(long); // the client goes away while step 3 runs
        let _ = open.send(());
        for _ in 0..4 {
            let _ = open.send(());
        }
        assert!(outcome(blocker).1.is_ok());
        wait_until(|| s.in_flight() == 0);
        let log = steps(&log);
        assert_eq!(log[1], vec![(10, 3, true), (20, 3, true)]);
        assert_eq!(log[2], vec![(10, 1, true)], "the finished sequence left");
        assert_eq!(
            log.len(),
            3,
            "the cancelled sequence was never computed again"
        );
    }

    #[test]
    fn an_abandoned_sequence_reports_what_it_spent() {
        let (engine, open, log) = gated();
        let s = start(engine, limits(1, 64, 16));
        let with_report = |tag, n| {
            let (mut j, rx) = job(prompt(tag, &[0, 1]), n);
            let (to, spent) = tokio::sync::oneshot::channel();
            j.abandoned = Some(to);
            s.submit(j).unwrap();
            (rx, spent)
        };
        let (running, running_spent) = with_report(10, 1000);
        wait_until(|| steps(&log).len() == 1); // its prompt, blocked
        let (waiting, waiting_spent) = with_report(20, 1000); // one slot: it waits
        let _ = open.send(()); // the prompt's step ends: one token generated
        wait_until(|| steps(&log).len() == 2);
        drop(running); // the client goes away during the second step
        drop(waiting);
        for _ in 0..4 {
            let _ = open.send(());
        }
        let r = running_spent
            .blocking_recv()
            .expect("the running sequence reports");
        assert_eq!(r.reason, FinishReason::Cancelled);
        assert_eq!((r.prompt_tokens, r.max_batch), (4, 1));
        assert!((1..=2).contains(&r.completion_tokens), "{r:?}");
        let w = waiting_spent.blocking_recv().expect("the waiting one too");
        assert_eq!(
            (w.prompt_tokens, w.completion_tokens, w.max_batch),
            (4, 0, 0)
        );
        assert!(w.energy.is_empty());
        wait_until(|| s.in_flight() == 0);
        // A sequence that ends normally sends nothing there.
        let (done, done_spent) = with_report(30, 1);
        let _ = open.send(());
        assert!(outcome(done).1.is_ok());
        assert!(done_spent.blocking_recv().is_err(), "dropped unsent");
    }

    #[test]
    fn an_engine_error_or_panic_fails_only_the_sequences_of_its_step() {
        let (engine, open, log) = gated();
        let s = start(engine, limits(2, 64, 16));
        let blocker = submit(&s, prompt(1, &[0]), 1);
        wait_until(|| steps(&log).len() == 1);
        let bad = submit(&s, prompt(13, &[0]), 2);
        let beside = submit(&s, prompt(5, &[0]), 2);
        let after = submit(&s, prompt(6, &[1]), 2); // waits: two slots
        for _ in 0..16 {
            let _ = open.send(());
        }
        assert!(outcome(blocker).1.is_ok());
        let (_, err) = outcome(bad);
        assert!(
            matches!(err, Err(SchedulerError::Engine(ref m)) if m.contains("unlucky")),
            "{err:?}"
        );
        assert!(outcome(beside).1.is_err(), "it shared the failed step");
        assert_eq!(outcome(after), ("bb".to_string(), outcome_len(2, 3)));
        // A panic likewise, and the loop keeps serving.
        let boom = submit(&s, prompt(66, &[0]), 2);
        let (_, err) = outcome(boom);
        assert!(
            matches!(err, Err(SchedulerError::Panicked(ref m)) if m.contains("marker")),
            "{err:?}"
        );
        let again = submit(&s, prompt(7, &[4]), 1);
        assert_eq!(outcome(again).0, "x");
        wait_until(|| s.in_flight() == 0);
        drop(open);
    }

    #[test]
    fn stop_strings_split_across_tokens_end_the_completion() {
        let s = start(FakeDecoder::default(), limits(4, 64, 16));
        let (mut j, rx) = job(prompt(3, &[0, 2, 3, 4]), 10);
        j.stop = vec!["END".into()];
        s.submit(j).unwrap();
        let (text, end) = outcome(rx);
        assert_eq!(text, "a", "the text before the stop string, nothing of it");
        let end = end.unwrap();
        assert_eq!((end.reason, end.completion_tokens), (FinishReason::Stop, 3));
        // A held-back prefix that does not become a stop string is sent after all, and the
        // text held at the end is flushed.
        let (mut j, rx) = job(prompt(3, &[0, 2, 3, 4]), 6);
        j.stop = vec!["ENX".into(), "aEx".into()];
        s.submit(j).unwrap();
        assert_eq!(outcome(rx), ("aENDxaE".to_string(), outcome_len(6, 6)));
        let (mut j, rx) = job(prompt(3, &[0, 2]), 4);
        j.stop = vec!["E!".into()];
        s.submit(j).unwrap();
        assert_eq!(outcome(rx), ("aEaE".to_string(), outcome_len(4, 4)));
        // The stop token ends it too, unless ignored.
        let rx = submit(&s, prompt(3, &[0, STOP]), 5);
        let (text, end) = outcome(rx);
        let end = end.unwrap();
        assert_eq!(
            (text.as_str(), end.reason, end.completion_tokens),
            ("a", FinishReason::Stop, 2)
        );
        let (mut j, rx) = job(prompt(3, &[0, STOP]), 5);
        j.ignore_eos = true;
        s.submit(j).unwrap();
        assert_eq!(outcome(rx), ("aaa".to_string(), outcome_len(5, 4)));
    }

    /// All events of a sequence, in order, as (kind, tokens or text).
    fn all_events(mut rx: UnboundedReceiver<GenEvent>) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        loop {
            let (kind, what) = match rx.blocking_recv() {
                Some(GenEvent::PromptLogprobs(l)) => ("prompt", format!("{:?}", tokens_of(&l))),
                Some(GenEvent::Logprobs(l)) => ("logprobs", format!("{:?}", tokens_of(&l))),
                Some(GenEvent::Text(t)) => ("text", t),
                Some(GenEvent::Finished(f)) => ("finished", format!("{}", f.completion_tokens)),
                Some(GenEvent::Failed(e)) => ("failed", e.to_string()),
                None => return out,
            };
            out.push((kind, what));
        }
    }

    fn tokens_of(l: &[TokenLogprob]) -> Vec<u32> {
        l.iter().map(|t| t.token).collect()
    }

    #[test]
    fn logprobs_follow_every_token_and_a_scored_prompt_is_chunked_correctly() {
        // A 3-token step budget: the scored prompt (5 tokens) is split into chunks that share
        // steps with another sequence's decoding tokens, so the rows must be matched right.
        let s = start(FakeDecoder::default(), limits(4, 3, 16));
        let other = submit(&s, prompt(4, &[4, 5]), 4);
        let (mut j, rx) = job(prompt(3, &[0, 1, 4]), 3);
        j.logprobs = Some(LogprobRequest {
            top: 2,
            prompt: true,
        });
        s.submit(j).unwrap();
        let (mut scoring, score_rx) = job(vec![1, 2, 3, 4, 5, 6], 0);
        scoring.logprobs = Some(LogprobRequest {
            top: 1,
            prompt: true,
        });
        s.submit(scoring).unwrap();
        let events = all_events(rx);
        assert_eq!(events[0], ("prompt", "[3, 0, 1, 4]".to_string()));
        let texts: String = events
            .iter()
            .filter(|e| e.0 == "text")
            .map(|e| e.1.as_str())
            .collect();
        assert_eq!(texts, "abx");
        // Each text piece comes right after the logprobs of its tokens.
        for (i, e) in events.iter().enumerate() {
            if e.0 == "text" {
                assert_eq!(events[i - 1].0, "logprobs", "{events:?}");
            }
        }
        let logged: Vec<String> = events
            .iter()
            .filter(|e| e.0 == "logprobs")
            .map(|e| e.1.clone())
            .collect();
        assert_eq!(logged, vec!["[0]", "[1]", "[4]"]);
        assert_eq!(events.last().unwrap(), &("finished", "3".to_string()));
        assert_eq!(outcome(other), ("xyxy".to_string(), outcome_len(4, 4)));
        // Scoring only: the prompt's log-probabilities, no text, no completion tokens; the fake
        // predicts token + 1, so every prompt token is the most likely one.
        let events = all_events(score_rx);
        assert_eq!(
            events,
            vec![
                ("prompt", "[2, 3, 4, 5, 6]".to_string()),
                ("finished", "0".to_string())
            ]
        );
    }

    #[test]
    fn a_token_logprob_is_the_log_softmax_of_its_row() {
        let s = start(FakeDecoder::default(), limits(4, 64, 16));
        let (mut j, mut rx) = job(vec![1, 2, 3, 4, 5, 6], 1);
        j.logprobs = Some(LogprobRequest {
            top: 3,
            prompt: true,
        });
        s.submit(j).unwrap();
        let Some(GenEvent::PromptLogprobs(scores)) = rx.blocking_recv() else {
            panic!("the prompt's logprobs come first");
        };
        // A one-hot row of 8 logits: ln(e / (e + 7)) for the hot token, ln(1 / (e + 7)) else.
        let e = std::f64::consts::E;
        for t in &scores {
            assert!((t.logprob as f64 - (e / (e + 7.0)).ln()).abs() < 1e-6);
            assert_eq!(t.top[0], (t.token, t.logprob));
            assert_eq!(t.top.len(), 3);
            assert!((t.top[1].1 as f64 - (1.0 / (e + 7.0)).ln()).abs() < 1e-6);
        }
    }

    #[test]
    fn the_context_length_ends_a_sequence() {
        let engine = FakeDecoder {
            context: 6,
            ..Default::default()
        };
        let s = start(engine, limits(4, 64, 16));
        let rx = submit(&s, prompt(3, &[0, 1]), 100);
        assert_eq!(outcome(rx), ("ab".to_string(), outcome_len(2, 4)));
    }

    #[test]
    fn queue_capacity_is_released_on_every_path() {
        let (engine, open, log) = gated();
        let s = start(engine, limits(1, 64, 3));
        let blocker = submit(&s, prompt(1, &[0]), 1);
        wait_until(|| steps(&log).len() == 1);
        let failing = submit(&s, prompt(13, &[0]), 2);
        let abandoned = submit(&s, prompt(20, &[0]), 2);
        let (j, _rx) = job(prompt(30, &[0]), 1);
        assert!(
            matches!(
                s.submit(j),
                Err(SchedulerError::QueueFull { capacity: 3, .. })
            ),
            "a fourth request is refused"
        );
        drop(abandoned); // leaves while waiting
        for _ in 0..8 {
            let _ = open.send(());
        }
        assert!(outcome(blocker).1.is_ok()); // finished
        assert!(outcome(failing).1.is_err()); // failed
        wait_until(|| s.in_flight() == 0);
        // All three places are free again.
        let again: Vec<_> = (0..3)
            .map(|i| submit(&s, prompt(40 + i, &[1]), 1))
            .collect();
        for _ in 0..8 {
            let _ = open.send(());
        }
        for rx in again {
            assert_eq!(outcome(rx).0, "b");
        }
        wait_until(|| s.in_flight() == 0);
    }

    #[test]
    fn sequences_start_only_while_their_worst_case_cache_fits_the_budget() {
        let (engine, open, log) = gated();
        // One byte per token: a prompt of 3 plus 3 new tokens reserves 6; the budget holds two.
        let limits = GenerationLimits {
            max_kv_bytes: 12,
            ..limits(8, 64, 16)
        };
        let s = start(engine, limits);
        let blocker = submit(&s, prompt(1, &[0]), 3);
        wait_until(|| steps(&log).len() == 1);
        let a = submit(&s, prompt(10, &[0]), 3);
        let b = submit(&s, prompt(20, &[0]), 3);
        let huge = submit(&s, prompt(30, &[0]), 50); // alone over the budget: runs alone
        for _ in 0..64 {
            let _ = open.send(());
        }
        for rx in [blocker, a, b, huge] {
            assert!(outcome(rx).1.is_ok());
        }
        let log = steps(&log);
        let together = |tags: &[u32]| {
            log.iter()
                .any(|step| tags.iter().all(|t| step.iter().any(|e| e.0 == *t)))
        };
        assert!(together(&[1, 10]), "two fit: {log:?}");
        assert!(!together(&[1, 10, 20]), "three never ran together: {log:?}");
        assert!(
            log.iter()
                .filter(|step| step.iter().any(|e| e.0 == 30))
                .all(|step| step.len() == 1),
            "the sequence over the budget ran alone: {log:?}"
        );
    }

    #[test]
    fn a_request_that_waits_too_long_for_a_slot_fails_with_queue_timeout() {
        let (engine, open, log) = gated();
        let limits = GenerationLimits {
            max_queue_wait: Duration::from_millis(50),
            ..limits(1, 64, 16)
        };
        let s = start(engine, limits);
        let blocker = submit(&s, prompt(1, &[0]), 2);
        wait_until(|| steps(&log).len() == 1);
        let late = submit(&s, prompt(10, &[0]), 2);
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..8 {
            let _ = open.send(());
        }
        assert!(outcome(blocker).1.is_ok());
        let (_, err) = outcome(late);
        assert!(
            matches!(err, Err(SchedulerError::QueueTimeout { waited_ms, .. }) if waited_ms >= 50),
            "{err:?}"
        );
        wait_until(|| s.in_flight() == 0);
        assert!(
            steps(&log)
                .iter()
                .all(|step| step.iter().all(|e| e.0 != 10)),
            "the expired request was computed"
        );
    }

    #[test]
    fn when_more_sequences_are_active_than_fit_a_step_they_take_turns() {
        let (engine, open, log) = gated();
        // Two per step, four in progress: a short request joins two long ones at once.
        let limits = GenerationLimits {
            max_active_seqs: 4,
            ..limits(2, 64, 16)
        };
        let s = start(engine, limits);
        let long_a = submit(&s, prompt(1, &[0]), 1000);
        wait_until(|| steps(&log).len() == 1);
        let long_b = submit(&s, prompt(2, &[0]), 1000);
        let _ = open.send(());
        wait_until(|| steps(&log).len() == 2);
        let short = submit(&s, prompt(3, &[1]), 3);
        for _ in 0..12 {
            let _ = open.send(());
        }
        assert_eq!(outcome(short).0, "bbb", "the short request finished");
        let log = steps(&log);
        let short_steps = log
            .iter()
            .position(|step| step.iter().any(|e| e.0 == 3))
            .unwrap();
        assert!(
            log.iter().all(|step| step.len() <= 2),
            "a step over the limit: {log:?}"
        );
        assert!(
            short_steps <= 3,
            "the short request waited for its turn: {log:?}"
        );
        drop((long_a, long_b));
        for _ in 0..8 {
            let _ = open.send(());
        }
        wait_until(|| s.in_flight() == 0);
    }

    #[test]
    fn held_back_keeps_only_a_possible_stop_prefix() {
        let stops = vec!["END".to_string(), "\n\n".to_string()];
        assert_eq!(held_back("hello E", &stops), 1);
        assert_eq!(held_back("hello EN", &stops), 2);
        assert_eq!(held_back("hello\n", &stops), 1);
        assert_eq!(held_back("hello", &stops), 0);
        assert_eq!(held_back("héé", &["é!".to_string()]), "é".len());
    }
}

//! Continuous batching for a text-generation model.
//!
//! One loop per model, on its own thread, owns the running sequences. Each step it admits
//! waiting sequences (up to `max_running_seqs`), gives every decoding sequence its one token and
//! the rest of the step's token budget (`max_batch_tokens`) to prompt chunks, oldest first, runs
//! ONE forward pass over all of them, samples, streams each sequence's new text to its caller,
//! and drops finished or abandoned sequences (a caller that went away closes its channel) at
//! once, freeing their KV caches. The step's energy is split among its sequences by tokens.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::SchedulerError;
use crate::engine::generation_model::GenerationModel;
use crate::engine::gguf_tokenizer::TextStream;
use crate::engine::llama::{KvCache, SeqInput};
use crate::engine::sampling::{Sampler, SamplingParams};
use crate::meter::{EnergyShare, Meter};
use crate::metrics as m;

/// Limits of one generation model's scheduler (`[batching]` of its model.toml).
#[derive(Debug, Clone, Copy)]
pub struct GenerationLimits {
    /// Sequences decoded together at most (`batching.max_batch_size`).
    pub max_running_seqs: usize,
    /// Tokens in one forward pass at most: one per decoding sequence plus prompt chunks.
    pub max_batch_tokens: usize,
    /// Requests admitted (running or waiting) before new ones get 503.
    pub queue_capacity: usize,
}

/// What a caller asks for.
#[derive(Debug)]
pub struct GenerationJob {
    /// Prompt token ids (already checked against the context length).
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// How to choose tokens.
    pub sampling: SamplingParams,
    /// Strings that end the completion (not included in it).
    pub stop: Vec<String>,
    /// Generate past stop tokens until `max_new_tokens` (benchmarks).
    pub ignore_eos: bool,
    /// Where the events go; dropping the receiver cancels the sequence.
    pub events: UnboundedSender<GenEvent>,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` or the context length reached.
    Length,
}

impl FinishReason {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
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

/// What a caller receives, in order: text pieces, then `Finished` or `Failed`.
#[derive(Debug)]
pub enum GenEvent {
    /// New text: what became final since the last piece (bytes of an incomplete character or
    /// of a possible stop string wait for the next token).
    Text(String),
    /// The sequence ended normally.
    Finished(Finished),
    /// The step it was in failed; the sequence is dropped.
    Failed(SchedulerError),
}

/// The handle callers submit to.
pub struct GenerationScheduler {
    model: String,
    tx: Option<Sender<Submission>>,
    admitted: Arc<AtomicUsize>,
    capacity: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Submission {
    job: GenerationJob,
    submitted: Instant,
}

impl GenerationScheduler {
    /// Starts the loop for `engine` on a thread of its own.
    pub fn start(
        name: &str,
        engine: Arc<GenerationModel>,
        limits: GenerationLimits,
        meter: Option<Arc<Meter>>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = channel();
        let admitted = Arc::new(AtomicUsize::new(0));
        let lp = StepLoop {
            model: name.to_string(),
            engine,
            meter,
            limits,
            rx,
            admitted: admitted.clone(),
            waiting: VecDeque::new(),
            running: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("gen-{name}"))
            .spawn(move || lp.run())?;
        Ok(Self {
            model: name.to_string(),
            tx: Some(tx),
            admitted,
            capacity: limits.queue_capacity,
            thread: Some(thread),
        })
    }

    /// Queues `job`; its events arrive on `job.events`. Fails at once when `queue_capacity`
    /// requests are already admitted.
    pub fn submit(&self, job: GenerationJob) -> Result<(), SchedulerError> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| SchedulerError::Stopped(self.model.clone()))?;
        self.admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .map_err(|_| SchedulerError::QueueFull {
                model: self.model.clone(),
                capacity: self.capacity,
            })?;
        let sub = Submission {
            job,
            submitted: Instant::now(),
        };
        if tx.send(sub).is_err() {
            self.admitted.fetch_sub(1, Ordering::SeqCst);
            return Err(SchedulerError::Stopped(self.model.clone()));
        }
        Ok(())
    }

    /// Requests admitted and not finished.
    pub fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::SeqCst)
    }
}

impl Drop for GenerationScheduler {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A sequence inside the loop.
struct Seq {
    job: GenerationJob,
    submitted: Instant,
    cache: Option<KvCache>,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// The token to feed next once the prompt is in (the last one sampled).
    next: Option<u32>,
    generated: usize,
    sampler: Sampler,
    text: TextStream,
    /// Text produced but not yet sent (it may be the start of a stop string).
    held: String,
    first_step: Option<Instant>,
    first_token: Option<Duration>,
    compute_time: Duration,
    max_batch: usize,
    energy: Vec<EnergyShare>,
}

impl Seq {
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
            first_step: None,
            first_token: None,
            compute_time: Duration::ZERO,
            max_batch: 0,
            energy: Vec::new(),
        }
    }

    fn prompt_done(&self) -> bool {
        self.prefilled == self.job.prompt.len()
    }
}

struct StepLoop {
    model: String,
    engine: Arc<GenerationModel>,
    meter: Option<Arc<Meter>>,
    limits: GenerationLimits,
    rx: Receiver<Submission>,
    admitted: Arc<AtomicUsize>,
    waiting: VecDeque<Submission>,
    running: Vec<Seq>,
}

/// Completion tokens a new sequence's KV cache has room for before it grows.
const INITIAL_ROOM: usize = 256;

/// How long an idle loop blocks before checking again for shutdown.
const IDLE_WAIT: Duration = Duration::from_millis(200);

impl StepLoop {
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
            while self.running.len() < self.limits.max_running_seqs {
                match self.waiting.pop_front() {
                    Some(sub) => self.running.push(Seq::new(sub)),
                    None => break,
                }
            }
            m::set_queue_depth(&self.model, self.waiting.len());
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    /// Sequences whose caller went away (closed stream, timeout) leave before any compute.
    fn drop_abandoned(&mut self) {
        let before = self.running.len() + self.waiting.len();
        self.running.retain(|s| !s.job.events.is_closed());
        self.waiting.retain(|s| !s.job.events.is_closed());
        let gone = before - self.running.len() - self.waiting.len();
        if gone > 0 {
            self.admitted.fetch_sub(gone, Ordering::SeqCst);
        }
    }

    /// Chooses each running sequence's tokens for this step: one for every decoding sequence,
    /// then prompt chunks in admission order while the budget lasts.
    fn plan(&self) -> Vec<(usize, std::ops::Range<usize>)> {
        let mut budget = self.limits.max_batch_tokens;
        let mut plan = Vec::new();
        for (i, s) in self.running.iter().enumerate() {
            if s.prompt_done() && s.next.is_some() && budget > 0 {
                plan.push((i, 0..1));
                budget -= 1;
            }
        }
        for (i, s) in self.running.iter().enumerate() {
            if !s.prompt_done() && budget > 0 {
                let n = (s.job.prompt.len() - s.prefilled).min(budget);
                plan.push((i, s.prefilled..s.prefilled + n));
                budget -= n;
            }
        }
        plan.sort_by_key(|(i, _)| *i);
        plan
    }

    fn step(&mut self) {
        let plan = self.plan();
        if plan.is_empty() {
            return;
        }
        let start = Instant::now();
        let weight: usize = plan.iter().map(|(_, r)| r.len()).sum();
        let ticket = self
            .meter
            .as_ref()
            .and_then(|meter| meter.begin_batch(&self.model, weight as f64));
        m::record_batch_size(&self.model, plan.len());
        let model = self.engine.model();
        let outcome = {
            let mut tokens: Vec<Vec<u32>> = Vec::with_capacity(plan.len());
            let mut wants_logits = Vec::with_capacity(plan.len());
            for (i, range) in &plan {
                let s = &self.running[*i];
                wants_logits.push(s.prompt_done() || range.end == s.job.prompt.len());
                tokens.push(if s.prompt_done() {
                    s.next.into_iter().collect()
                } else {
                    s.job.prompt[range.clone()].to_vec()
                });
            }
            let mut caches: Vec<Option<&mut KvCache>> = Vec::with_capacity(self.running.len());
            for s in self.running.iter_mut() {
                if s.cache.is_none() {
                    // Room for the prompt and a typical answer; the cache grows past it if
                    // needed (reserving the whole context would pin 377 MB per sequence).
                    let capacity = s.job.prompt.len() + s.job.max_new_tokens.min(INITIAL_ROOM);
                    s.cache = Some(model.new_cache(capacity));
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
            match std::panic::catch_unwind(AssertUnwindSafe(|| model.forward(&mut inputs))) {
                Ok(Ok(t)) => t
                    .to_vec2::<f32>()
                    .map_err(|e| SchedulerError::Engine(e.to_string())),
                Ok(Err(e)) => Err(SchedulerError::Engine(e.to_string())),
                Err(p) => Err(SchedulerError::Panicked(super::embedding::panic_message(
                    &*p,
                ))),
            }
        };
        let elapsed = start.elapsed();
        if let (Some(meter), Some(t)) = (&self.meter, &ticket) {
            meter.end_batch(t);
        }
        let logits = match outcome {
            Ok(l) => l,
            Err(err) => {
                tracing::error!(model = %self.model, sequences = plan.len(), "{err}");
                let mut failed: Vec<usize> = plan.iter().map(|(i, _)| *i).collect();
                failed.sort_unstable_by_key(|&i| std::cmp::Reverse(i));
                for i in failed {
                    let s = self.running.swap_remove(i);
                    let _ = s.job.events.send(GenEvent::Failed(err.clone()));
                    self.admitted.fetch_sub(1, Ordering::SeqCst);
                }
                return;
            }
        };
        let mut rows = logits.iter();
        let mut finished = Vec::new();
        let mut sampled_tokens = 0;
        let tokenizer = self.engine.tokenizer();
        for (i, range) in &plan {
            let s = &mut self.running[*i];
            s.compute_time += elapsed;
            s.max_batch = s.max_batch.max(plan.len());
            s.first_step.get_or_insert(start);
            if let Some(t) = &ticket {
                s.energy.push(EnergyShare {
                    batch: t.energy.clone(),
                    fraction: range.len() as f64 / weight.max(1) as f64,
                });
            }
            let sampled = if s.prompt_done() {
                true
            } else {
                s.prefilled = range.end;
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
            let reason = if !s.job.ignore_eos && tokenizer.is_stop(token) {
                Some(FinishReason::Stop)
            } else {
                match s.text.push(tokenizer, token) {
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
            let at_context = s.job.prompt.len() + s.generated >= self.engine.context_len();
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

    fn finish(&self, s: &mut Seq, reason: FinishReason) {
        if reason == FinishReason::Length {
            // Flush what was held back for a possible stop string or an incomplete character.
            if let Ok(rest) = s.text.finish(self.engine.tokenizer()) {
                s.held.push_str(&rest);
            }
            if !s.held.is_empty() {
                let _ = s
                    .job
                    .events
                    .send(GenEvent::Text(std::mem::take(&mut s.held)));
            }
        }
        let first_step = s.first_step.unwrap_or(s.submitted);
        let ttft = s.first_token.unwrap_or_default();
        m::record_generation(&self.model, ttft, s.generated, s.submitted.elapsed());
        let done = Finished {
            reason,
            prompt_tokens: s.job.prompt.len(),
            completion_tokens: s.generated,
            queue_time: first_step - s.submitted,
            time_to_first_token: ttft,
            compute_time: s.compute_time,
            max_batch: s.max_batch,
            energy: std::mem::take(&mut s.energy),
        };
        let _ = s.job.events.send(GenEvent::Finished(done));
        self.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sends the part of `s.held` that cannot be the start of a stop string; returns `Stop` when a
/// stop string appeared (the text before it is sent, the rest dropped).
fn emit_text(s: &mut Seq) -> Option<FinishReason> {
    if let Some(cut) = s
        .job
        .stop
        .iter()
        .filter_map(|stop| s.held.find(stop.as_str()))
        .min()
    {
        let piece: String = s.held[..cut].to_string();
        s.held.clear();
        if !piece.is_empty() {
            let _ = s.job.events.send(GenEvent::Text(piece));
        }
        return Some(FinishReason::Stop);
    }
    let keep = held_back(&s.held, &s.job.stop);
    let send_to = s.held.len() - keep;
    if send_to > 0 {
        let piece: String = s.held.drain(..send_to).collect();
        let _ = s.job.events.send(GenEvent::Text(piece));
    }
    None
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

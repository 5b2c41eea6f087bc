//! The embedding scheduler: dynamic batching across requests on one compute thread per model.
//!
//! Requests are split into items (one per input). The batch loop, which alone owns the queue,
//! waits after the first item arrives at most `max_queue_delay_ms` for more (less when a full batch
//! or as many items as the previous batch held are there; not at all after a batch of one), then
//! forms a batch of at most `max_batch_size` items and `max_batch_tokens`
//! padded tokens (longest × count). The oldest waiting item is always in the next batch, and the
//! rest are chosen, among the next waiting items, by closeness of length to it: padding stays small
//! and no item waits behind more batches than there were items ahead of it. A request's items may
//! ride in different batches; its reply is reassembled in input order.
//!
//! Admission is bounded: at most `queue_capacity` requests are admitted and unanswered at once;
//! more are refused at once ([`SchedulerError::QueueFull`], HTTP 503). A request whose caller has
//! gone (client disconnect, timeout: the reply receiver is dropped) has its not-yet-computed items
//! dropped before compute. An engine error or panic fails the requests of that batch only.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{failed_owners, metered_step, Admission, SchedulerError, Worker};
use crate::engine::Embedder;
use crate::meter::{EnergyShare, Meter};
use crate::metrics as m;

/// How one embedding model's batches are formed and how many requests it admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddingLimits {
    /// Most inputs computed in one forward pass.
    pub max_batch_size: usize,
    /// Most padded tokens (longest sequence × count) in one forward pass.
    pub max_batch_tokens: usize,
    /// After the first input arrives, how long to wait at most for company.
    pub max_queue_delay: Duration,
    /// Requests admitted and unanswered before new ones are refused (HTTP 503).
    pub queue_capacity: usize,
    /// Inputs waiting for compute, all requests together, before new requests are refused
    /// (HTTP 503); a request is always admitted into an empty queue, whatever its size.
    pub max_queued_inputs: usize,
    /// Longest a request should wait before its first batch: one whose expected wait (queued
    /// inputs over the recent compute rate) is longer is refused at once, and one that has
    /// waited this long anyway fails with [`SchedulerError::QueueTimeout`] (both HTTP 503),
    /// so that overload is answered early rather than with timeouts.
    pub max_queue_wait: Duration,
}

/// What a request gets back.
#[derive(Debug, Clone)]
pub struct EmbedOutput {
    /// One vector per input, in input order.
    pub embeddings: Vec<Vec<f32>>,
    /// Largest batch (items computed together in one forward pass) any of its inputs rode in.
    pub batch_size: usize,
    /// Time from submission to the start of the first batch holding one of its inputs.
    pub queue_time: Duration,
    /// Wall time of the batches holding its inputs, summed.
    pub compute_time: Duration,
    /// Its claims on the energy of the batches that computed it (empty when not metered).
    pub energy: Vec<EnergyShare>,
}

type Reply = oneshot::Sender<Result<EmbedOutput, SchedulerError>>;

struct Submission {
    inputs: Vec<Vec<u32>>,
    submitted: Instant,
    reply: Reply,
}

/// Handle to one model's scheduler. Dropping it lets the compute thread finish what is queued,
/// then joins it.
pub struct EmbeddingScheduler {
    model: String,
    worker: Worker<Submission>,
    waiting_items: Arc<AtomicUsize>,
    max_queued_inputs: usize,
    max_queue_wait: Duration,
    /// Inputs per second of compute, a moving average over recent batches (f64 bits; 0 until
    /// the first batch).
    rate: Arc<AtomicU64>,
}

impl EmbeddingScheduler {
    /// Starts the batch loop for `engine` on a thread named after the model.
    pub fn start(
        model: &str,
        engine: Box<dyn Embedder>,
        limits: EmbeddingLimits,
        meter: Option<Arc<Meter>>,
    ) -> std::io::Result<Self> {
        let waiting_items = Arc::new(AtomicUsize::new(0));
        let waiting = waiting_items.clone();
        let rate = Arc::new(AtomicU64::new(0));
        let loop_rate = rate.clone();
        let name = model.to_string();
        let worker = Worker::spawn(
            model,
            format!("batch-{model}"),
            limits.queue_capacity,
            move |rx, admission| {
                BatchLoop {
                    model: name,
                    engine,
                    meter,
                    rx,
                    limits,
                    window: (limits.max_batch_size * 8).max(64),
                    admission,
                    waiting_items: waiting,
                    rate: loop_rate,
                    jobs: HashMap::new(),
                    pending: VecDeque::new(),
                    next_job: 0,
                    expected_batch: 1,
                }
                .run()
            },
        )?;
        Ok(Self {
            model: model.to_string(),
            worker,
            waiting_items,
            max_queued_inputs: limits.max_queued_inputs,
            max_queue_wait: limits.max_queue_wait,
            rate,
        })
    }

    /// Admits a request without waiting; the receiver yields its result. Refuses at once when
    /// `queue_capacity` requests are already admitted and unanswered.
    pub fn submit(
        &self,
        inputs: Vec<Vec<u32>>,
    ) -> Result<oneshot::Receiver<Result<EmbedOutput, SchedulerError>>, SchedulerError> {
        let (reply, rx) = oneshot::channel();
        let n = inputs.len();
        let rate = f64::from_bits(self.rate.load(Ordering::Relaxed));
        let queued = self.waiting_items.load(Ordering::SeqCst);
        if rate > 0.0 && queued > 0 {
            let expected = Duration::from_secs_f64(queued as f64 / rate);
            if expected > self.max_queue_wait {
                return Err(SchedulerError::Overloaded {
                    model: self.model.clone(),
                    expected_ms: expected.as_millis() as u64,
                    limit_ms: self.max_queue_wait.as_millis() as u64,
                });
            }
        }
        // Counted before the loop can see (and uncount) them; refused when they would overfill
        // a queue that already holds inputs.
        let cap = self.max_queued_inputs;
        self.waiting_items
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w == 0 || w + n <= cap).then_some(w + n)
            })
            .map_err(|_| SchedulerError::QueueFull {
                model: self.model.clone(),
                capacity: cap,
                unit: "inputs",
                setting: "batching.max_queued_inputs",
            })?;
        let sub = Submission {
            inputs,
            submitted: Instant::now(),
            reply,
        };
        if let Err(e) = self.worker.submit(sub) {
            self.waiting_items.fetch_sub(n, Ordering::SeqCst);
            return Err(e);
        }
        m::set_queue_depth(&self.model, self.waiting_items.load(Ordering::SeqCst));
        Ok(rx)
    }

    /// Inputs admitted and not yet computed.
    pub fn queue_depth(&self) -> usize {
        self.waiting_items.load(Ordering::SeqCst)
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.worker.in_flight()
    }

    /// Whether the batch loop's thread is running.
    pub fn is_alive(&self) -> bool {
        self.worker.is_alive()
    }
}

/// A request inside the batch loop.
struct Job {
    inputs: Vec<Vec<u32>>,
    results: Vec<Option<Vec<f32>>>,
    remaining: usize,
    submitted: Instant,
    first_start: Option<Instant>,
    compute_time: Duration,
    batch_size: usize,
    energy: Vec<EnergyShare>,
    reply: Reply,
}

/// One input waiting for compute.
#[derive(Clone, Copy)]
struct Item {
    job: u64,
    index: usize,
    len: usize,
}

struct BatchLoop {
    model: String,
    engine: Box<dyn Embedder>,
    meter: Option<Arc<Meter>>,
    rx: Receiver<Submission>,
    limits: EmbeddingLimits,
    /// How many of the oldest waiting items a batch is chosen from.
    window: usize,
    admission: Admission,
    waiting_items: Arc<AtomicUsize>,
    /// Where the recent compute rate is published for admission.
    rate: Arc<AtomicU64>,
    jobs: HashMap<u64, Job>,
    /// Waiting items, oldest first.
    pending: VecDeque<Item>,
    next_job: u64,
    /// Size of the previous batch: how many items the next one may expect to share it.
    expected_batch: usize,
}

impl BatchLoop {
    fn run(mut self) {
        loop {
            if self.pending.is_empty() {
                match self.rx.recv() {
                    Ok(sub) => self.accept(sub),
                    Err(_) => return, // scheduler dropped and nothing left
                }
            }
            self.drain_channel();
            self.drop_abandoned();
            self.expire_waiting();
            if self.pending.is_empty() {
                continue;
            }
            self.wait_for_more();
            self.drop_abandoned();
            let batch = self.form_batch();
            if !batch.is_empty() {
                self.compute(batch);
            }
        }
    }

    fn accept(&mut self, sub: Submission) {
        let id = self.next_job;
        self.next_job += 1;
        let n = sub.inputs.len();
        for (index, ids) in sub.inputs.iter().enumerate() {
            self.pending.push_back(Item {
                job: id,
                index,
                len: ids.len().max(1),
            });
        }
        self.jobs.insert(
            id,
            Job {
                results: vec![None; n],
                remaining: n,
                inputs: sub.inputs,
                submitted: sub.submitted,
                first_start: None,
                compute_time: Duration::ZERO,
                batch_size: 0,
                energy: Vec::new(),
                reply: sub.reply,
            },
        );
        if n == 0 {
            self.finish(id);
        }
    }

    fn drain_channel(&mut self) {
        while let Ok(sub) = self.rx.try_recv() {
            self.accept(sub);
        }
    }

    /// After the oldest item arrived, waits up to `max_delay` for the company it expects: as
    /// many items as the previous batch held (a running estimate of the concurrency), or a full
    /// batch. After a batch of one it does not wait: a lone client then pays no delay, and when
    /// more clients come, they queue during that compute and the next batch shows them.
    fn wait_for_more(&mut self) {
        let Some(oldest) = self.pending.front().map(|i| self.jobs[&i.job].submitted) else {
            return;
        };
        let expected = self.expected_batch.clamp(1, self.limits.max_batch_size);
        if expected <= 1 {
            return;
        }
        let deadline = oldest + self.limits.max_queue_delay;
        while !self.full_batch_waiting() && self.pending.len() < expected {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            match self.rx.recv_timeout(deadline - now) {
                Ok(sub) => {
                    self.accept(sub);
                    self.drain_channel();
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn full_batch_waiting(&self) -> bool {
        if self.pending.len() >= self.limits.max_batch_size {
            return true;
        }
        let longest = self.pending.iter().map(|i| i.len).max().unwrap_or(0);
        longest * self.pending.len() >= self.limits.max_batch_tokens
    }

    /// Fails the requests that have waited longer than `max_queue_wait` without any of their
    /// inputs computed.
    fn expire_waiting(&mut self) {
        let limit = self.limits.max_queue_wait;
        let expired: Vec<(u64, Duration)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.first_start.is_none() && j.submitted.elapsed() > limit)
            .map(|(&id, j)| (id, j.submitted.elapsed()))
            .collect();
        for (id, waited) in expired {
            let err = SchedulerError::QueueTimeout {
                model: self.model.clone(),
                waited_ms: waited.as_millis() as u64,
            };
            self.fail(id, err);
        }
        m::set_queue_depth(&self.model, self.waiting_items.load(Ordering::SeqCst));
    }

    /// Drops the waiting items of requests whose caller has gone.
    fn drop_abandoned(&mut self) {
        let gone: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.reply.is_closed())
            .map(|(&id, _)| id)
            .collect();
        if gone.is_empty() {
            return;
        }
        let before = self.pending.len();
        self.pending.retain(|i| !gone.contains(&i.job));
        let dropped = before - self.pending.len();
        for id in gone {
            self.jobs.remove(&id);
            self.admission.release(1);
        }
        self.waiting_items.fetch_sub(dropped, Ordering::SeqCst);
        m::set_queue_depth(&self.model, self.waiting_items.load(Ordering::SeqCst));
        tracing::debug!(model = %self.model, dropped, "dropped inputs of requests whose client has gone");
    }

    /// Takes the oldest item plus, among the first `window` waiting items in round-robin order
    /// across requests, those [`plan_batch`] picks.
    fn form_batch(&mut self) -> Vec<Item> {
        // Each waiting item's round (inputs of its request ahead of it); the window is the
        // first `window` items by (round, arrival), so the next input of every waiting
        // request is a candidate however many inputs an older request still has.
        let mut seen: HashMap<u64, usize> = HashMap::new();
        let mut keyed: Vec<(usize, usize)> = self
            .pending
            .iter()
            .enumerate()
            .map(|(position, item)| {
                let rank = seen.entry(item.job).or_insert(0);
                *rank += 1;
                (*rank - 1, position)
            })
            .collect();
        if keyed.len() > self.window {
            keyed.select_nth_unstable(self.window);
            keyed.truncate(self.window);
        }
        keyed.sort_unstable();
        let candidates: Vec<Candidate> = keyed
            .iter()
            .map(|&(round, position)| Candidate {
                len: self.pending[position].len,
                round,
            })
            .collect();
        let plan = plan_batch(
            &candidates,
            self.limits.max_batch_size,
            self.limits.max_batch_tokens,
        );
        // Remove the chosen positions, highest first so lower positions stay valid.
        let mut positions: Vec<usize> = plan.iter().map(|&c| keyed[c].1).collect();
        positions.sort_unstable_by(|a, b| b.cmp(a));
        let mut batch: Vec<Item> = Vec::with_capacity(positions.len());
        for p in positions {
            if let Some(item) = self.pending.remove(p) {
                batch.push(item);
            }
        }
        batch.reverse(); // arrival order
        batch
    }

    fn compute(&mut self, batch: Vec<Item>) {
        let n = batch.len();
        self.expected_batch = n;
        self.waiting_items.fetch_sub(n, Ordering::SeqCst);
        m::set_queue_depth(&self.model, self.waiting_items.load(Ordering::SeqCst));
        let weight: usize = batch.iter().map(|i| i.len).sum();
        let jobs = &self.jobs;
        let engine = &self.engine;
        let (outcome, step) = metered_step(&self.model, self.meter.as_deref(), n, weight, || {
            let seqs: Vec<&[u32]> = batch
                .iter()
                .filter_map(|i| Some(jobs.get(&i.job)?.inputs.get(i.index)?.as_slice()))
                .collect();
            engine.embed_tokens(&seqs)
        });
        let seconds = step.elapsed.as_secs_f64();
        if seconds > 0.0 {
            let now = n as f64 / seconds;
            let before = f64::from_bits(self.rate.load(Ordering::Relaxed));
            let rate = if before > 0.0 {
                0.8 * before + 0.2 * now
            } else {
                now
            };
            self.rate.store(rate.to_bits(), Ordering::Relaxed);
        }
        for item in &batch {
            if let Some(job) = self.jobs.get_mut(&item.job) {
                if job.first_start.is_none() {
                    job.first_start = Some(step.start);
                    m::record_queue_duration(&self.model, step.start - job.submitted);
                }
            }
        }
        let vectors = match outcome {
            Ok(v) if v.len() == n => v,
            Ok(v) => {
                let err = SchedulerError::Engine(format!(
                    "engine returned {} vectors for {n} inputs",
                    v.len()
                ));
                tracing::error!(model = %self.model, batch = n, "{err}");
                return self.fail_batch(&batch, err);
            }
            Err(err) => return self.fail_batch(&batch, err),
        };
        let mut done = Vec::new();
        for (item, v) in batch.iter().zip(vectors) {
            if let Some(job) = self.jobs.get_mut(&item.job) {
                job.results[item.index] = Some(v);
                job.remaining -= 1;
                if job.remaining == 0 {
                    done.push(item.job);
                }
            }
        }
        for id in failed_owners(batch.iter().map(|i| i.job)) {
            if let Some(job) = self.jobs.get_mut(&id) {
                job.compute_time += step.elapsed;
                job.batch_size = job.batch_size.max(n);
                let tokens: usize = batch.iter().filter(|i| i.job == id).map(|i| i.len).sum();
                job.energy.extend(step.share(tokens));
            }
        }
        for id in done {
            self.finish(id);
        }
    }

    /// Fails every request with an input in `batch`.
    fn fail_batch(&mut self, batch: &[Item], err: SchedulerError) {
        for id in failed_owners(batch.iter().map(|i| i.job)) {
            self.fail(id, err.clone());
        }
    }

    fn finish(&mut self, id: u64) {
        if let Some(job) = self.jobs.remove(&id) {
            self.admission.release(1);
            let out = EmbedOutput {
                embeddings: job
                    .results
                    .into_iter()
                    .map(Option::unwrap_or_default)
                    .collect(),
                batch_size: job.batch_size,
                queue_time: job
                    .first_start
                    .map_or(Duration::ZERO, |s| s - job.submitted),
                compute_time: job.compute_time,
                energy: job.energy,
            };
            let _ = job.reply.send(Ok(out));
        }
    }

    /// Fails a request, dropping its other waiting items.
    fn fail(&mut self, id: u64, err: SchedulerError) {
        if let Some(job) = self.jobs.remove(&id) {
            self.admission.release(1);
            let before = self.pending.len();
            self.pending.retain(|i| i.job != id);
            self.waiting_items
                .fetch_sub(before - self.pending.len(), Ordering::SeqCst);
            let _ = job.reply.send(Err(err));
        }
    }
}

/// One waiting input as the batch planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Its tokens (at least 1).
    pub len: usize,
    /// How many inputs of the same request wait ahead of it: 0 for each request's next input.
    pub round: usize,
}

/// Chooses a batch among waiting inputs, given oldest request first: position 0 (the oldest
/// request's next input) always, then the others by round (every request's next input before
/// any request's second: one large request cannot fill every batch), within a round by
/// closeness of length to the first (ties: older first), while the batch stays within
/// `max_size` inputs and `max_tokens` padded tokens (longest × count; the first alone may
/// exceed it). Returns positions.
pub fn plan_batch(candidates: &[Candidate], max_size: usize, max_tokens: usize) -> Vec<usize> {
    let Some(first) = candidates.first() else {
        return Vec::new();
    };
    let anchor = first.len;
    let mut order: Vec<usize> = (1..candidates.len()).collect();
    order.sort_by_key(|&p| (candidates[p].round, candidates[p].len.abs_diff(anchor), p));
    let mut chosen = vec![0];
    let mut longest = anchor;
    for p in order {
        if chosen.len() >= max_size {
            break;
        }
        let new_longest = longest.max(candidates[p].len);
        if new_longest * (chosen.len() + 1) > max_tokens {
            continue;
        }
        longest = new_longest;
        chosen.push(p);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::test_support::wait_until;
    use crate::engine::EngineError;
    use std::sync::Mutex;

    /// The first id of every sequence of every batch, in compute order.
    type BatchLog = Arc<Mutex<Vec<Vec<u32>>>>;

    /// Returns `[len, first id]` per sequence, logs every batch's first ids; fails or panics on
    /// marker ids; blocks on the gate while one is set.
    #[derive(Default)]
    struct TestEngine {
        log: BatchLog,
        gate: Option<Mutex<std::sync::mpsc::Receiver<()>>>,
    }

    impl Embedder for TestEngine {
        fn embed_tokens(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EngineError> {
            if let Some(g) = &self.gate {
                let _ = g.lock().unwrap().recv();
            }
            self.log
                .lock()
                .unwrap()
                .push(seqs.iter().map(|s| s[0]).collect());
            if seqs.iter().any(|s| s[0] == 666) {
                panic!("marker input");
            }
            if seqs.iter().any(|s| s[0] == 13) {
                return Err(EngineError::Unsupported("unlucky".into()));
            }
            Ok(seqs
                .iter()
                .map(|s| vec![s.len() as f32, s[0] as f32])
                .collect())
        }
    }

    fn spec(size: usize, delay_ms: u64, cap: usize) -> EmbeddingLimits {
        EmbeddingLimits {
            max_batch_size: size,
            max_batch_tokens: 10_000,
            max_queue_delay: Duration::from_millis(delay_ms),
            queue_capacity: cap,
            max_queued_inputs: 1 << 20,
            max_queue_wait: Duration::from_secs(3600),
        }
    }

    /// An engine that blocks on each call until the returned sender releases it.
    fn gated() -> (TestEngine, std::sync::mpsc::Sender<()>, BatchLog) {
        let (open, gate) = std::sync::mpsc::channel();
        let engine = TestEngine {
            gate: Some(Mutex::new(gate)),
            ..Default::default()
        };
        let log = engine.log.clone();
        (engine, open, log)
    }

    /// Candidates of single-input requests (all in round 0) of these lengths.
    fn singles(lens: &[usize]) -> Vec<Candidate> {
        lens.iter()
            .map(|&len| Candidate { len, round: 0 })
            .collect()
    }

    #[test]
    fn plan_takes_the_oldest_and_its_nearest_lengths_within_limits() {
        assert_eq!(
            plan_batch(&singles(&[5, 50, 6, 4, 49]), 3, 1000),
            vec![0, 2, 3]
        );
        // Token cap: 50 × 2 > 60, so only short ones join the long anchor... none fit.
        assert_eq!(plan_batch(&singles(&[50, 5, 6]), 4, 60), vec![0]);
        assert_eq!(
            plan_batch(&singles(&[10, 10, 10, 10]), 8, 30),
            vec![0, 1, 2]
        );
        assert!(plan_batch(&[], 4, 10).is_empty());
    }

    #[test]
    fn plan_takes_every_requests_next_input_before_any_second_one() {
        let c = |len, round| Candidate { len, round };
        // A big request's inputs (rounds 0..) and a small request's one input (round 0), whose
        // length is the farthest from the anchor: it still rides in this batch.
        let candidates = [c(10, 0), c(30, 0), c(10, 1), c(10, 2), c(10, 3)];
        assert_eq!(plan_batch(&candidates, 3, 1000), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn multi_input_results_come_back_in_order_across_batches() {
        let s = EmbeddingScheduler::start("t", Box::<TestEngine>::default(), spec(2, 0, 4), None)
            .unwrap();
        let inputs: Vec<Vec<u32>> = (1..=7u32)
            .map(|n| vec![n; (n * 3 % 7 + 1) as usize])
            .collect();
        let out = s.submit(inputs.clone()).unwrap().await.unwrap().unwrap();
        assert_eq!(out.embeddings.len(), 7);
        for (i, v) in out.embeddings.iter().enumerate() {
            assert_eq!(v, &vec![inputs[i].len() as f32, inputs[i][0] as f32]);
        }
        assert_eq!(out.batch_size, 2);
    }

    #[test]
    fn concurrent_requests_share_batches() {
        let (engine, open, log) = gated();
        let s = EmbeddingScheduler::start("t", Box::new(engine), spec(8, 50, 16), None).unwrap();
        let first = s.submit(vec![vec![100]]).unwrap();
        wait_until(|| s.queue_depth() == 0); // the first batch is in the engine, blocked
        let rest: Vec<_> = (1..=5u32)
            .map(|i| s.submit(vec![vec![i]]).unwrap())
            .collect();
        for _ in 0..2 {
            open.send(()).unwrap();
        }
        drop(s); // finishes the queue, then joins
        assert!(first.blocking_recv().unwrap().is_ok());
        for r in rest {
            assert_eq!(r.blocking_recv().unwrap().unwrap().batch_size, 5);
        }
        assert_eq!(
            log.lock().unwrap().len(),
            2,
            "five requests waited together: one batch"
        );
    }

    #[test]
    fn a_lone_client_pays_no_queue_delay() {
        // A delay far longer than the test may take: only the company rule can skip it.
        let s =
            EmbeddingScheduler::start("t", Box::<TestEngine>::default(), spec(8, 60_000, 16), None)
                .unwrap();
        let start = Instant::now();
        for i in 0..3 {
            let r = s.submit(vec![vec![i + 1]]).unwrap();
            assert_eq!(r.blocking_recv().unwrap().unwrap().batch_size, 1);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a lone request waited for company"
        );
    }

    #[test]
    fn waits_for_as_many_items_as_the_previous_batch_held() {
        let (engine, open, log) = gated();
        let s =
            EmbeddingScheduler::start("t", Box::new(engine), spec(8, 60_000, 32), None).unwrap();
        let a = s.submit(vec![vec![1]]).unwrap();
        wait_until(|| s.queue_depth() == 0); // A computes alone, at once
        let b: Vec<_> = (0..3)
            .map(|i| s.submit(vec![vec![10 + i]]).unwrap())
            .collect();
        open.send(()).unwrap(); // A done; the three queued meanwhile form the next batch
        wait_until(|| s.queue_depth() == 0);
        open.send(()).unwrap(); // B done: the loop now expects company of three
        assert!(a.blocking_recv().unwrap().is_ok());
        for r in b {
            assert_eq!(r.blocking_recv().unwrap().unwrap().batch_size, 3);
        }
        let c1 = s.submit(vec![vec![20]]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let c23: Vec<_> = (0..2)
            .map(|i| s.submit(vec![vec![21 + i]]).unwrap())
            .collect();
        open.send(()).unwrap();
        assert_eq!(c1.blocking_recv().unwrap().unwrap().batch_size, 3);
        for r in c23 {
            assert!(r.blocking_recv().unwrap().is_ok());
        }
        drop(s);
        assert_eq!(
            *log.lock().unwrap(),
            vec![vec![1], vec![10, 11, 12], vec![20, 21, 22]]
        );
    }

    #[test]
    fn oldest_item_is_never_starved_by_shorter_newcomers() {
        let (engine, open, log) = gated();
        let s = EmbeddingScheduler::start("t", Box::new(engine), spec(2, 0, 64), None).unwrap();
        let _blocker = s.submit(vec![vec![1]]).unwrap();
        wait_until(|| s.queue_depth() == 0);
        // 4 short items ahead of a long one, then many short ones after it.
        let mut receivers = Vec::new();
        for _ in 0..4 {
            receivers.push(s.submit(vec![vec![2; 3]]).unwrap());
        }
        let long = s.submit(vec![vec![9; 40]]).unwrap();
        for _ in 0..20 {
            receivers.push(s.submit(vec![vec![3; 3]]).unwrap());
        }
        for _ in 0..64 {
            let _ = open.send(());
        }
        drop(s);
        assert!(long.blocking_recv().unwrap().is_ok());
        let log = log.lock().unwrap();
        let position = log.iter().position(|b| b.contains(&9)).unwrap();
        // Batch 0 is the blocker; the 4 older items take at most 4 batches (2 when paired).
        assert!(
            position <= 5,
            "long item served in batch {position}: {log:?}"
        );
        // And short newcomers were grouped together rather than with the long one.
        assert!(log.iter().filter(|b| b.len() == 2).count() >= 10, "{log:?}");
    }

    #[test]
    fn a_small_request_behind_a_huge_one_rides_in_the_next_batch() {
        let (engine, open, log) = gated();
        let s = EmbeddingScheduler::start("t", Box::new(engine), spec(4, 0, 16), None).unwrap();
        let blocker = s.submit(vec![vec![1]]).unwrap();
        wait_until(|| s.queue_depth() == 0);
        let huge = s.submit((0..64).map(|_| vec![9; 5]).collect()).unwrap();
        let small = s.submit(vec![vec![7; 5]]).unwrap();
        for _ in 0..32 {
            let _ = open.send(());
        }
        drop(s);
        assert!(blocker.blocking_recv().unwrap().is_ok());
        assert_eq!(small.blocking_recv().unwrap().unwrap().embeddings.len(), 1);
        assert_eq!(huge.blocking_recv().unwrap().unwrap().embeddings.len(), 64);
        let log = log.lock().unwrap();
        let position = log.iter().position(|b| b.contains(&7)).unwrap();
        assert_eq!(
            position, 1,
            "the small request waited behind the huge one: {log:?}"
        );
    }

    #[test]
    fn queued_inputs_are_bounded_across_requests() {
        let (engine, open, _log) = gated();
        let limits = EmbeddingLimits {
            max_queued_inputs: 10,
            ..spec(4, 0, 64)
        };
        let s = EmbeddingScheduler::start("t", Box::new(engine), limits, None).unwrap();
        let blocker = s.submit(vec![vec![1]]).unwrap();
        wait_until(|| s.queue_depth() == 0);
        // An empty queue takes a request of any size...
        let big = s.submit((0..12).map(|_| vec![2]).collect()).unwrap();
        // ...and a full one refuses more, naming the setting.
        let err = s.submit(vec![vec![3]]).unwrap_err();
        assert!(
            matches!(
                err,
                SchedulerError::QueueFull {
                    capacity: 10,
                    unit: "inputs",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(s.queue_depth(), 12, "the refused input was not counted");
        for _ in 0..8 {
            let _ = open.send(());
        }
        assert!(blocker.blocking_recv().unwrap().is_ok());
        assert!(big.blocking_recv().unwrap().is_ok());
        wait_until(|| s.queue_depth() == 0);
        assert!(s.submit(vec![vec![4]]).is_ok(), "room again");
        for _ in 0..4 {
            let _ = open.send(());
        }
    }

    #[test]
    fn a_request_that_cannot_start_in_time_is_refused_or_expires() {
        let (engine, open, log) = gated();
        let limits = EmbeddingLimits {
            max_queue_wait: Duration::from_millis(50),
            ..spec(1, 0, 64)
        };
        let s = EmbeddingScheduler::start("t", Box::new(engine), limits, None).unwrap();
        let first = s.submit(vec![vec![1]]).unwrap();
        wait_until(|| s.queue_depth() == 0); // computing, blocked
        let late = s.submit(vec![vec![2]]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let _ = open.send(()); // first done; `late` has waited past the limit
        assert!(first.blocking_recv().unwrap().is_ok());
        let err = late.blocking_recv().unwrap().unwrap_err();
        assert!(
            matches!(err, SchedulerError::QueueTimeout { waited_ms, .. } if waited_ms >= 50),
            "{err:?}"
        );
        assert_eq!(
            log.lock().unwrap().len(),
            1,
            "the expired request was computed"
        );
        // Now the loop knows its rate (one input per ~100 ms): with inputs queued behind a
        // blocked batch, a new request is refused at once.
        let busy = s.submit(vec![vec![3]]).unwrap();
        wait_until(|| s.queue_depth() == 0);
        let queued = s.submit(vec![vec![4]]).unwrap();
        let err = s.submit(vec![vec![5]]).unwrap_err();
        assert!(matches!(err, SchedulerError::Overloaded { .. }), "{err:?}");
        for _ in 0..4 {
            let _ = open.send(());
        }
        drop(s);
        assert!(busy.blocking_recv().unwrap().is_ok());
        let _ = queued.blocking_recv();
    }

    #[test]
    fn abandoned_requests_are_never_computed() {
        let (engine, open, log) = gated();
        let s = EmbeddingScheduler::start("t", Box::new(engine), spec(4, 0, 16), None).unwrap();
        let first = s.submit(vec![vec![1]]).unwrap();
        wait_until(|| s.queue_depth() == 0);
        let gone = s.submit(vec![vec![77], vec![78]]).unwrap();
        let kept = s.submit(vec![vec![5]]).unwrap();
        drop(gone); // the client disconnected
        for _ in 0..4 {
            let _ = open.send(());
        }
        drop(s);
        assert!(first.blocking_recv().unwrap().is_ok());
        assert!(kept.blocking_recv().unwrap().is_ok());
        let seen: Vec<u32> = log.lock().unwrap().iter().flatten().copied().collect();
        assert!(
            !seen.contains(&77) && !seen.contains(&78),
            "abandoned inputs computed: {seen:?}"
        );
        assert_eq!(seen, vec![1, 5]);
    }

    #[tokio::test]
    async fn failures_and_panics_fail_only_their_batch() {
        let s = EmbeddingScheduler::start("t", Box::<TestEngine>::default(), spec(1, 0, 8), None)
            .unwrap();
        let bad = s.submit(vec![vec![13]]).unwrap();
        let boom = s.submit(vec![vec![666]]).unwrap();
        let good = s.submit(vec![vec![1, 2]]).unwrap();
        let err = bad.await.unwrap().unwrap_err();
        assert!(
            matches!(err, SchedulerError::Engine(ref m) if m.contains("unlucky")),
            "{err:?}"
        );
        let err = boom.await.unwrap().unwrap_err();
        assert!(
            matches!(err, SchedulerError::Panicked(ref m) if m.contains("marker")),
            "{err:?}"
        );
        assert_eq!(
            good.await.unwrap().unwrap().embeddings,
            vec![vec![2.0, 1.0]]
        );
        // And the model keeps serving.
        let again = s.submit(vec![vec![4]]).unwrap().await.unwrap().unwrap();
        assert_eq!(again.embeddings, vec![vec![1.0, 4.0]]);
    }

    #[test]
    fn admission_is_bounded_and_frees_up() {
        let (engine, open, _log) = gated();
        let s = EmbeddingScheduler::start("t", Box::new(engine), spec(1, 0, 2), None).unwrap();
        let a = s.submit(vec![vec![1]]).unwrap();
        let b = s.submit(vec![vec![1]]).unwrap();
        let err = s.submit(vec![vec![1]]).unwrap_err();
        assert!(
            matches!(err, SchedulerError::QueueFull { capacity: 2, .. }),
            "{err:?}"
        );
        open.send(()).unwrap();
        assert!(a.blocking_recv().unwrap().is_ok());
        // One answered: one place free again.
        let c = s.submit(vec![vec![1]]).unwrap();
        for _ in 0..2 {
            open.send(()).unwrap();
        }
        drop(s);
        assert!(b.blocking_recv().unwrap().is_ok());
        assert!(c.blocking_recv().unwrap().is_ok());
    }
}

//! The embedding scheduler: one compute thread per model, a bounded queue in front of it.
//!
//! A job (one request) is split into batches of at most `max_batch_size` inputs and
//! `max_batch_tokens` padded tokens; inputs are grouped by length so that padding stays small, and
//! the results are put back in request order. A job whose caller has gone (client disconnect,
//! timeout) is dropped before it is computed. A failing or panicking batch fails only its job.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::engine::Embedder;
use crate::repository::BatchingSpec;

/// Why a job produced no embeddings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    /// The queue is at `queue_capacity`; the caller should retry later (HTTP 503).
    #[error("the queue of model `{model}` is full ({capacity} requests waiting)")]
    QueueFull {
        /// The model.
        model: String,
        /// Its queue capacity.
        capacity: usize,
    },
    /// The engine returned an error for this job's batch.
    #[error("inference failed: {0}")]
    Engine(String),
    /// The engine panicked while computing this job's batch; the model keeps serving.
    #[error("inference panicked: {0}")]
    Panicked(String),
    /// The scheduler is shutting down.
    #[error("the model `{0}` is shutting down")]
    Stopped(String),
}

/// What a job gets back.
#[derive(Debug, Clone)]
pub struct EmbedOutput {
    /// One vector per input, in input order.
    pub embeddings: Vec<Vec<f32>>,
    /// Largest number of inputs computed together in one forward pass for this job.
    pub batch_size: usize,
    /// Time between submission and the start of compute.
    pub queue_time: Duration,
    /// Time spent in forward passes.
    pub compute_time: Duration,
}

struct Job {
    inputs: Vec<Vec<u32>>,
    submitted: Instant,
    reply: oneshot::Sender<Result<EmbedOutput, SchedulerError>>,
}

/// Handle to one model's scheduler. Dropping it stops the compute thread after the queued jobs.
pub struct EmbeddingScheduler {
    model: String,
    tx: Option<SyncSender<Job>>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddingScheduler {
    /// Starts the compute thread for `engine`, named after the model.
    pub fn start(
        model: &str,
        engine: Box<dyn Embedder>,
        batching: &BatchingSpec,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Job>(batching.queue_capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            engine,
            depth: depth.clone(),
            max_batch_size: batching.max_batch_size,
            max_batch_tokens: batching.max_batch_tokens,
        };
        let thread = std::thread::Builder::new()
            .name(format!("compute-{model}"))
            .spawn(move || worker.run(rx))?;
        Ok(Self {
            model: model.to_string(),
            tx: Some(tx),
            depth,
            capacity: batching.queue_capacity,
            thread: Some(thread),
        })
    }

    /// Queues a job without waiting; the receiver yields its result. Refuses at once when the
    /// queue is full.
    pub fn submit(
        &self,
        inputs: Vec<Vec<u32>>,
    ) -> Result<oneshot::Receiver<Result<EmbedOutput, SchedulerError>>, SchedulerError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs,
            submitted: Instant::now(),
            reply,
        };
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| SchedulerError::Stopped(self.model.clone()))?;
        self.depth.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => SchedulerError::QueueFull {
                        model: self.model.clone(),
                        capacity: self.capacity,
                    },
                    TrySendError::Disconnected(_) => SchedulerError::Stopped(self.model.clone()),
                })
            }
        }
    }

    /// Jobs waiting for compute.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }
}

impl Drop for EmbeddingScheduler {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    engine: Box<dyn Embedder>,
    depth: Arc<AtomicUsize>,
    max_batch_size: usize,
    max_batch_tokens: usize,
}

impl Worker {
    fn run(self, rx: Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            self.depth.fetch_sub(1, Ordering::SeqCst);
            if job.reply.is_closed() {
                tracing::debug!("dropping a job whose caller has gone");
                continue;
            }
            let queue_time = job.submitted.elapsed();
            let result = self.compute(&job.inputs, queue_time);
            let _ = job.reply.send(result);
        }
    }

    fn compute(
        &self,
        inputs: &[Vec<u32>],
        queue_time: Duration,
    ) -> Result<EmbedOutput, SchedulerError> {
        let start = Instant::now();
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); inputs.len()];
        let mut largest = 0;
        for batch in plan_batches(inputs, self.max_batch_size, self.max_batch_tokens) {
            let seqs: Vec<&[u32]> = batch.iter().map(|&i| inputs[i].as_slice()).collect();
            let vectors =
                std::panic::catch_unwind(AssertUnwindSafe(|| self.engine.embed_tokens(&seqs)))
                    .map_err(|p| SchedulerError::Panicked(panic_message(&p)))?
                    .map_err(|e| SchedulerError::Engine(e.to_string()))?;
            if vectors.len() != batch.len() {
                return Err(SchedulerError::Engine(format!(
                    "engine returned {} vectors for {} inputs",
                    vectors.len(),
                    batch.len()
                )));
            }
            largest = largest.max(batch.len());
            for (i, v) in batch.into_iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(EmbedOutput {
            embeddings: out,
            batch_size: largest,
            queue_time,
            compute_time: start.elapsed(),
        })
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Splits input indices into batches: sorted by length (so each batch pads little), each batch at
/// most `max_size` inputs and at most `max_tokens` padded tokens (longest × count; a single input
/// longer than `max_tokens` still forms a batch of its own).
pub fn plan_batches(inputs: &[Vec<u32>], max_size: usize, max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| inputs[i].len());
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so the newcomer is the longest of the batch.
        let padded = inputs[i].len().max(1) * (current.len() + 1);
        if !current.is_empty() && (current.len() >= max_size || padded > max_tokens) {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;

    /// Returns `[len, first id]` per sequence; fails or panics on marker ids.
    struct Echo;
    impl Embedder for Echo {
        fn embed_tokens(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EngineError> {
            if seqs.iter().any(|s| s.first() == Some(&666)) {
                panic!("marker input");
            }
            if seqs.iter().any(|s| s.first() == Some(&13)) {
                return Err(EngineError::Unsupported("unlucky".into()));
            }
            Ok(seqs
                .iter()
                .map(|s| vec![s.len() as f32, s[0] as f32])
                .collect())
        }
    }

    fn spec(size: usize, cap: usize) -> BatchingSpec {
        BatchingSpec {
            max_batch_size: size,
            max_batch_tokens: 1000,
            max_queue_delay_ms: 0,
            queue_capacity: cap,
        }
    }

    #[test]
    fn plan_respects_size_and_token_limits_and_covers_every_input() {
        let inputs: Vec<Vec<u32>> = [5, 1, 9, 3, 3, 7, 2].iter().map(|&n| vec![1; n]).collect();
        let plan = plan_batches(&inputs, 2, 12);
        let mut seen: Vec<usize> = plan.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..inputs.len()).collect::<Vec<_>>());
        for b in &plan {
            let longest = b.iter().map(|&i| inputs[i].len()).max().unwrap();
            assert!(b.len() <= 2);
            assert!(b.len() == 1 || longest * b.len() <= 12, "{b:?}");
        }
    }

    #[tokio::test]
    async fn results_come_back_in_input_order() {
        let s = EmbeddingScheduler::start("echo", Box::new(Echo), &spec(2, 4)).unwrap();
        let inputs: Vec<Vec<u32>> = (1..=7u32).map(|n| vec![n; (8 - n) as usize]).collect();
        let out = s.submit(inputs.clone()).unwrap().await.unwrap().unwrap();
        for (i, v) in out.embeddings.iter().enumerate() {
            assert_eq!(v, &vec![inputs[i].len() as f32, inputs[i][0] as f32]);
        }
        assert_eq!(out.batch_size, 2);
    }

    #[tokio::test]
    async fn failures_and_panics_fail_only_their_job() {
        let s = EmbeddingScheduler::start("echo", Box::new(Echo), &spec(8, 4)).unwrap();
        let err = s
            .submit(vec![vec![13]])
            .unwrap()
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(err, SchedulerError::Engine(ref m) if m.contains("unlucky")),
            "{err:?}"
        );
        let err = s
            .submit(vec![vec![666]])
            .unwrap()
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(err, SchedulerError::Panicked(ref m) if m.contains("marker")),
            "{err:?}"
        );
        let ok = s.submit(vec![vec![1, 2]]).unwrap().await.unwrap().unwrap();
        assert_eq!(ok.embeddings, vec![vec![2.0, 1.0]]);
    }

    #[test]
    fn full_queue_is_refused_at_once() {
        /// Blocks until released, so the queue fills up behind it.
        struct Gate(std::sync::Mutex<std::sync::mpsc::Receiver<()>>);
        impl Embedder for Gate {
            fn embed_tokens(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EngineError> {
                let _ = self.0.lock().unwrap().recv();
                Ok(seqs.iter().map(|_| vec![0.0]).collect())
            }
        }
        let (open, gate) = std::sync::mpsc::channel();
        let s =
            EmbeddingScheduler::start("gate", Box::new(Gate(gate.into())), &spec(1, 2)).unwrap();
        let first = s.submit(vec![vec![1]]).unwrap();
        // Wait until the worker has taken the first job off the queue.
        while s.queue_depth() > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let queued: Vec<_> = (0..2).map(|_| s.submit(vec![vec![1]]).unwrap()).collect();
        let err = s.submit(vec![vec![1]]).unwrap_err();
        assert!(
            matches!(err, SchedulerError::QueueFull { capacity: 2, .. }),
            "{err:?}"
        );
        for _ in 0..3 {
            open.send(()).unwrap();
        }
        drop(first);
        drop(queued);
        drop(s);
    }
}

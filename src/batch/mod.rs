//! Schedulers: they own each model's engine on a dedicated compute thread and feed it work
//! (dynamic batching for encoders in [`embedding`], continuous batching for decoders in
//! [`generation`]).
//!
//! Callers talk to a scheduler through a channel and get their results back on channels of
//! their own, so tokio workers never run model code. This module is the core both loops share:
//! the [`Worker`] handle (bounded admission, the compute thread, shutdown on drop), the
//! [`metered_step`] that runs one forward pass inside a meter span and a `catch_unwind`, and the
//! [`SchedulerError`] a request fails with. The loops keep only what differs: how a batch or a
//! step is formed and what its outputs mean.

pub mod embedding;
pub mod generation;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use embedding::{EmbedOutput, EmbeddingLimits, EmbeddingScheduler};
pub use generation::{
    FinishReason, Finished, GenEvent, GenerationJob, GenerationLimits, GenerationScheduler,
};

use crate::engine::EngineError;
use crate::meter::{BatchTicket, EnergyShare, Meter};
use crate::metrics as m;

/// Why a request produced no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    /// The model's queue is full (`queue_capacity` requests, or `max_queued_inputs` inputs);
    /// the caller should retry later (HTTP 503).
    #[error("the queue of model `{model}` is full ({capacity} {unit} waiting)")]
    QueueFull {
        /// The model.
        model: String,
        /// The limit reached.
        capacity: usize,
        /// What it counts: `requests` or `inputs`.
        unit: &'static str,
        /// The setting that sets it, for the error message.
        setting: &'static str,
    },
    /// The engine returned an error for a batch or step holding this request's work.
    #[error("inference failed: {0}")]
    Engine(String),
    /// The engine panicked on a batch or step holding this request's work; the model keeps
    /// serving.
    #[error("inference panicked: {0}")]
    Panicked(String),
    /// The scheduler is shutting down.
    #[error("the model `{0}` is shutting down")]
    Stopped(String),
    /// The model's queue would take longer than its queue-wait limit to reach this request, by
    /// the rate it has been computing at; refused at once (HTTP 503).
    #[error("model `{model}` would start this request in about {expected_ms} ms, more than its limit of {limit_ms} ms")]
    Overloaded {
        /// The model.
        model: String,
        /// The expected wait.
        expected_ms: u64,
        /// `batching.max_queue_wait_ms`.
        limit_ms: u64,
    },
    /// The request waited longer than the model's queue-wait limit for a free slot; the caller
    /// should retry later (HTTP 503).
    #[error("the request waited {waited_ms} ms for a free slot of model `{model}`")]
    QueueTimeout {
        /// The model.
        model: String,
        /// How long it waited.
        waited_ms: u64,
    },
}

/// The bounded count of requests admitted and not yet answered, shared by a scheduler's handle
/// (which admits) and its loop (which releases on every path a request leaves by).
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    model: String,
    admitted: Arc<AtomicUsize>,
    capacity: usize,
}

impl Admission {
    fn new(model: &str, capacity: usize) -> Self {
        Self {
            model: model.to_string(),
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity,
        }
    }

    /// Takes one place, or refuses at once when all `capacity` are taken.
    fn try_admit(&self) -> Result<(), SchedulerError> {
        self.admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| SchedulerError::QueueFull {
                model: self.model.clone(),
                capacity: self.capacity,
                unit: "requests",
                setting: "batching.queue_capacity",
            })
    }

    /// Gives back `n` places (requests answered, failed or abandoned).
    pub(crate) fn release(&self, n: usize) {
        if n > 0 {
            self.admitted.fetch_sub(n, Ordering::SeqCst);
        }
    }

    /// Requests admitted and not yet answered.
    pub(crate) fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::SeqCst)
    }
}

/// Handle to one model's compute thread: submissions go in through a channel after bounded
/// admission. Dropping it closes the channel, lets the loop finish what it holds, and joins the
/// thread.
pub(crate) struct Worker<S> {
    model: String,
    tx: Option<Sender<S>>,
    admission: Admission,
    thread: Option<JoinHandle<()>>,
}

impl<S: Send + 'static> Worker<S> {
    /// Starts `body` on a thread named `thread_name`; it receives the submissions and the
    /// admission counter it must release as requests leave.
    pub(crate) fn spawn(
        model: &str,
        thread_name: String,
        queue_capacity: usize,
        body: impl FnOnce(Receiver<S>, Admission) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = channel::<S>();
        let admission = Admission::new(model, queue_capacity);
        let for_loop = admission.clone();
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || body(rx, for_loop))?;
        Ok(Self {
            model: model.to_string(),
            tx: Some(tx),
            admission,
            thread: Some(thread),
        })
    }

    /// Admits `sub` without waiting and hands it to the loop; refuses at once when
    /// `queue_capacity` requests are already admitted, or when the loop has stopped.
    pub(crate) fn submit(&self, sub: S) -> Result<(), SchedulerError> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| SchedulerError::Stopped(self.model.clone()))?;
        self.admission.try_admit()?;
        if tx.send(sub).is_err() {
            self.admission.release(1);
            return Err(SchedulerError::Stopped(self.model.clone()));
        }
        Ok(())
    }

    /// Requests admitted and not yet answered.
    pub(crate) fn in_flight(&self) -> usize {
        self.admission.in_flight()
    }

    /// Whether the compute thread is still running (it ends only on shutdown, or when
    /// something outside the caught engine call panicked).
    pub(crate) fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl<S> Drop for Worker<S> {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One forward pass as the meter and the callers see it: its timing, and its energy, split
/// among its work by tokens.
pub(crate) struct Step {
    /// When the step started.
    pub start: Instant,
    /// Its wall time.
    pub elapsed: Duration,
    ticket: Option<BatchTicket>,
    weight: usize,
}

impl Step {
    /// The claim on this step's energy of work that was `tokens` of its weight; `None` when
    /// the model is not metered.
    pub fn share(&self, tokens: usize) -> Option<EnergyShare> {
        self.ticket.as_ref().map(|t| EnergyShare {
            batch: t.energy.clone(),
            fraction: tokens as f64 / self.weight.max(1) as f64,
            seconds: self.elapsed.as_secs_f64(),
        })
    }
}

/// Runs `work` (one forward pass over `items` sequences holding `weight` tokens) on this thread,
/// inside a meter span when the model is metered and a `catch_unwind`, so that an engine error
/// or panic becomes a [`SchedulerError`] for this step's requests only. Records the batch size
/// and logs a failure once. Returns the outcome and the step's timing and energy claims.
pub(crate) fn metered_step<T>(
    model: &str,
    meter: Option<&Meter>,
    items: usize,
    weight: usize,
    work: impl FnOnce() -> Result<T, EngineError>,
) -> (Result<T, SchedulerError>, Step) {
    m::record_batch_size(model, items);
    let start = Instant::now();
    let ticket = meter.and_then(|meter| meter.begin_batch(model, weight as f64));
    let outcome = match std::panic::catch_unwind(AssertUnwindSafe(work)) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(SchedulerError::Engine(e.to_string())),
        Err(p) => Err(SchedulerError::Panicked(panic_message(&*p))),
    };
    let elapsed = start.elapsed();
    if let (Some(meter), Some(t)) = (meter, &ticket) {
        meter.end_batch(t);
    }
    if let Err(err) = &outcome {
        tracing::error!(model, batch = items, "{err}");
    }
    let step = Step {
        start,
        elapsed,
        ticket,
        weight,
    };
    (outcome, step)
}

/// The requests a failed step must fail, each once, highest first: the order in which a loop
/// can remove them (by id or by index) without disturbing the ones still to remove.
pub(crate) fn failed_owners<K: Ord>(owners: impl IntoIterator<Item = K>) -> Vec<K> {
    let mut owners: Vec<K> = owners.into_iter().collect();
    owners.sort_unstable_by(|a, b| b.cmp(a));
    owners.dedup();
    owners
}

/// The message of a caught panic.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Helpers the loops' unit tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use std::time::{Duration, Instant};

    /// Polls `f` until it holds; fails the test after 10 s.
    pub(crate) fn wait_until(mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "condition not reached in 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_refuses_beyond_capacity_and_frees_on_release() {
        let a = Admission::new("m", 2);
        a.try_admit().unwrap();
        a.try_admit().unwrap();
        assert_eq!(
            a.try_admit(),
            Err(SchedulerError::QueueFull {
                model: "m".into(),
                capacity: 2,
                unit: "requests",
                setting: "batching.queue_capacity",
            })
        );
        a.release(1);
        assert_eq!(a.in_flight(), 1);
        a.try_admit().unwrap();
    }

    #[test]
    fn a_step_turns_errors_and_panics_into_scheduler_errors() {
        let (ok, step) = metered_step("m", None, 1, 4, || Ok::<_, EngineError>(7));
        assert_eq!(ok, Ok(7));
        assert!(step.share(2).is_none(), "not metered: no claim");
        let (err, _) = metered_step("m", None, 1, 4, || -> Result<(), EngineError> {
            Err(EngineError::Unsupported("nope".into()))
        });
        assert_eq!(err, Err(SchedulerError::Engine("nope".into())));
        let (boom, _) = metered_step("m", None, 1, 4, || -> Result<(), EngineError> {
            panic!("marker {}", 42)
        });
        assert_eq!(boom, Err(SchedulerError::Panicked("marker 42".into())));
    }

    #[test]
    fn a_worker_whose_thread_died_says_so() {
        let alive =
            Worker::<u32>::spawn("m", "t-alive".into(), 4, |rx, _| while rx.recv().is_ok() {})
                .unwrap();
        let dead = Worker::<u32>::spawn("m", "t-dead".into(), 4, |_, _| {
            panic!("the loop itself failed")
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while dead.is_alive() {
            assert!(
                Instant::now() < deadline,
                "the panicked thread still counts as alive"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(alive.is_alive());
        // Submissions to a dead loop are refused, not lost.
        assert!(matches!(dead.submit(1), Err(SchedulerError::Stopped(_))));
    }

    #[test]
    fn failed_owners_are_distinct_and_highest_first() {
        assert_eq!(failed_owners([3, 1, 3, 2, 1]), vec![3, 2, 1]);
        assert!(failed_owners(Vec::<u64>::new()).is_empty());
    }
}

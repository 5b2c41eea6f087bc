//! A pool of compute threads for the many short parallel parts of a decode step (hundreds per
//! token, each tens of microseconds), fast on an idle machine and graceful on a busy one.
//!
//! Why not rayon or candle's barrier pool: rayon's idle threads go to sleep between parts and
//! each part then pays a wake-up; candle's barrier pool spins instead, but its caller also waits
//! until every worker has signalled, even a worker that another process keeps off its core, so
//! on a busy machine each part can wait a whole scheduler slice. Here:
//!
//! - the caller publishes a job, then takes parts itself from a shared cursor like any worker;
//! - a worker takes part only if it *joins* the job while it is open; when the cursor runs out
//!   the caller closes the job and waits only for the workers that joined (and are finishing a
//!   part), never for one that did not run meanwhile;
//! - idle workers spin for [`SPIN`], then yield the core until [`YIELD`], then park until the
//!   next job (so an idle server costs nothing, and a busy one gets its cores back).

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins on the job word before yielding its core.
pub const SPIN: Duration = Duration::from_micros(100);
/// How long an idle worker keeps yielding before it parks.
pub const YIELD: Duration = Duration::from_millis(2);

/// The job word: generation in the high 32 bits, [`CLOSED`], and the count of workers that
/// joined and have not left yet in the low 31 bits.
const ACTIVE: u64 = (1 << 31) - 1;
const CLOSED: u64 = 1 << 31;

fn generation(state: u64) -> u64 {
    state >> 32
}

/// A part function with its lifetime erased: valid while its job is open or has active workers.
type Parts = &'static (dyn Fn(usize) + Sync);

/// A value alone on its cache lines (two, for the adjacent-line prefetcher), so that threads
/// polling one word do not steal the line another word's writer needs.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Shared {
    state: Padded<AtomicU64>,
    /// The current job's function; written only while the job word is closed with no active
    /// worker (so no worker reads it then).
    job: UnsafeCell<Option<Parts>>,
    parts: AtomicUsize,
    cursor: Padded<AtomicUsize>,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    sleepers: AtomicUsize,
    stop: AtomicBool,
    threads: OnceLock<Vec<Thread>>,
}

// SAFETY: `job` is written only by the caller holding `Pool::call` while no worker is active and
// the job is closed (see `Pool::run`); workers read it only after joining an open job.
unsafe impl Sync for Shared {}

thread_local! {
    /// Set on pool workers and on a caller inside `run`: a nested `run` executes inline.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Compute threads plus the calling thread, running the parts of one job at a time.
pub struct Pool {
    shared: Arc<Shared>,
    /// Held by the thread whose job is running; another caller runs its job inline.
    call: Mutex<()>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool of `workers` threads besides the caller (0: every job runs on the caller).
    pub fn new(workers: usize) -> Self {
        Self::with_start_gate(workers, None)
    }

    /// [`new`](Self::new), each worker first waiting on `gate` (tests hold workers back with it).
    fn with_start_gate(workers: usize, gate: Option<Arc<std::sync::Barrier>>) -> Self {
        let shared = Arc::new(Shared {
            state: Padded(AtomicU64::new(CLOSED)),
            job: UnsafeCell::new(None),
            parts: AtomicUsize::new(0),
            cursor: Padded(AtomicUsize::new(0)),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            threads: OnceLock::new(),
        });
        let handles: Vec<JoinHandle<()>> = (0..workers)
            .filter_map(|i| {
                let shared = Arc::clone(&shared);
                let gate = gate.clone();
                thread::Builder::new()
                    .name(format!("wattserve-step-{i}"))
                    .spawn(move || {
                        if let Some(gate) = gate {
                            gate.wait();
                        }
                        worker(&shared)
                    })
                    .map_err(|e| tracing::warn!("could not start a compute thread: {e}"))
                    .ok()
            })
            .collect();
        let _ = shared
            .threads
            .set(handles.iter().map(|h| h.thread().clone()).collect());
        Self {
            shared,
            call: Mutex::new(()),
            workers: handles,
        }
    }

    /// Worker threads besides the caller.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Runs `f(i)` for every `i < parts`, on the calling thread and whichever workers join;
    /// returns when all have run. A panic in any part is re-raised here. Called from inside a
    /// part, or while another thread's job runs, the parts run inline on the calling thread.
    pub fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        if parts == 0 {
            return;
        }
        if parts == 1 || self.workers.is_empty() || INSIDE.with(Cell::get) {
            return (0..parts).for_each(f);
        }
        let Ok(guard) = self.call.try_lock() else {
            return (0..parts).for_each(f);
        };
        let shared = &*self.shared;
        // SAFETY: the lifetime is erased only for the duration of this job: `Close` below waits
        // until no worker is active and the job is closed before `f` goes out of scope, also
        // when a part panics on this thread.
        let job: Parts = unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
        };
        let state = shared.state.load(Ordering::Acquire);
        debug_assert!(state & CLOSED != 0 && state & ACTIVE == 0);
        // SAFETY: the job is closed and no worker is active (the previous `Close` waited), so no
        // worker reads `job` now; `call` is held, so no other caller writes it.
        unsafe { *shared.job.get() = Some(job) };
        shared.parts.store(parts, Ordering::Relaxed);
        shared.cursor.store(0, Ordering::Relaxed);
        let next = (generation(state) + 1) & 0xffff_ffff;
        // SeqCst with the sleepers count below (a worker registers as sleeper, then re-reads
        // the state): one of the two sides sees the other, so no wake-up is lost.
        shared.state.store(next << 32, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            if let Some(threads) = shared.threads.get() {
                threads.iter().for_each(Thread::unpark);
            }
        }
        let close = Close(shared);
        INSIDE.with(|inside| inside.set(true));
        take_parts(shared, job);
        INSIDE.with(|inside| inside.set(false));
        drop(close);
        drop(guard);
        let payload = shared
            .panic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(payload) = payload {
            resume_unwind(payload);
        }
    }
}

/// Closes the current job and waits for the workers that joined it (on drop, so also when a
/// part panics on the caller).
struct Close<'a>(&'a Shared);

impl Drop for Close<'_> {
    fn drop(&mut self) {
        INSIDE.with(|inside| inside.set(false));
        let shared = self.0;
        let mut state = shared.state.fetch_or(CLOSED, Ordering::AcqRel) | CLOSED;
        let start = Instant::now();
        while state & ACTIVE != 0 {
            if start.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
            state = shared.state.load(Ordering::Acquire);
        }
    }
}

/// Runs parts from the shared cursor until none is left; a panicking part is recorded for the
/// caller and the remaining parts still run.
fn take_parts(shared: &Shared, job: Parts) {
    let parts = shared.parts.load(Ordering::Relaxed);
    loop {
        let i = shared.cursor.fetch_add(1, Ordering::Relaxed);
        if i >= parts {
            return;
        }
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| job(i))) {
            shared
                .panic
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(payload);
        }
    }
}

/// A worker: waits for an open job it has not seen, joins it, takes parts, leaves.
fn worker(shared: &Shared) {
    INSIDE.with(|inside| inside.set(true));
    let mut seen = generation(shared.state.load(Ordering::Acquire));
    loop {
        let Some(state) = wait_for_job(shared, seen) else {
            return;
        };
        // Join the open job of this generation, unless it closed meanwhile; if another worker
        // joined first, look again.
        match shared
            .state
            .compare_exchange(state, state + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                seen = generation(state);
                // SAFETY: this worker joined the open job, so the caller keeps `job` alive and
                // unchanged until this worker leaves (the decrement below).
                if let Some(job) = unsafe { *shared.job.get() } {
                    take_parts(shared, job);
                }
                shared.state.fetch_sub(1, Ordering::Release);
            }
            Err(now) if generation(now) == generation(state) && now & CLOSED != 0 => {
                seen = generation(state);
            }
            Err(_) => {}
        }
    }
}

/// Waits until the job word shows an open job of a generation other than `seen` (returns the
/// word), spinning, then yielding, then parking; `None` when the pool stops.
fn wait_for_job(shared: &Shared, seen: u64) -> Option<u64> {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let state = shared.state.load(Ordering::Acquire);
        if shared.stop.load(Ordering::Relaxed) {
            return None;
        }
        if generation(state) != seen && state & CLOSED == 0 {
            return Some(state);
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        let idle = start.elapsed();
        if idle < SPIN {
            std::hint::spin_loop();
        } else if idle < YIELD {
            thread::yield_now();
        } else {
            shared.sleepers.fetch_add(1, Ordering::SeqCst);
            let state = shared.state.load(Ordering::SeqCst);
            let open = generation(state) != seen && state & CLOSED == 0;
            if !open && !shared.stop.load(Ordering::SeqCst) {
                // A token left by an unpark that raced with this check makes this return at
                // once; spurious returns just look again.
                thread::park();
            }
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for handle in self.workers.drain(..) {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Barrier;

    fn counts(n: usize) -> Vec<AtomicU32> {
        (0..n).map(|_| AtomicU32::new(0)).collect()
    }

    #[test]
    fn every_part_runs_exactly_once() {
        let pool = Pool::new(3);
        for parts in (0..70).chain([257, 1000]) {
            let seen = counts(parts);
            pool.run(parts, &|i| {
                seen[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                seen.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                "{parts} parts"
            );
        }
    }

    #[test]
    fn the_caller_never_waits_for_a_worker_that_did_not_start() {
        // The worker is held back: the caller must run every part itself and return.
        let gate = Arc::new(Barrier::new(2));
        let pool = Pool::with_start_gate(1, Some(Arc::clone(&gate)));
        let seen = counts(100);
        pool.run(100, &|i| {
            seen[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        // Released, the worker ignores the finished job and joins the next ones.
        gate.wait();
        let workers_ran = AtomicU32::new(0);
        for _ in 0..200 {
            pool.run(64, &|_| {
                if thread::current().name() == Some("wattserve-step-0") {
                    workers_ran.fetch_add(1, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_micros(20));
            });
        }
        assert!(
            workers_ran.load(Ordering::Relaxed) > 0,
            "the worker never joined"
        );
    }

    #[test]
    fn a_slow_part_on_a_worker_is_waited_for() {
        let pool = Pool::new(1);
        let done = counts(8);
        pool.run(8, &|i| {
            if thread::current()
                .name()
                .is_some_and(|n| n.starts_with("wattserve-step"))
            {
                thread::sleep(Duration::from_millis(30));
            }
            done[i].store(1, Ordering::Release);
        });
        assert!(done.iter().all(|c| c.load(Ordering::Acquire) == 1));
    }

    #[test]
    fn a_panicking_part_reaches_the_caller_and_the_pool_keeps_working() {
        let pool = Pool::new(2);
        let seen = counts(40);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            pool.run(40, &|i| {
                seen[i].fetch_add(1, Ordering::Relaxed);
                if i == 17 {
                    panic!("part 17");
                }
            })
        }));
        let payload = caught.expect_err("the panic is re-raised");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"part 17"));
        assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        let again = counts(40);
        pool.run(40, &|i| {
            again[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(again.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn nested_and_concurrent_jobs_run_inline() {
        let pool = Arc::new(Pool::new(1));
        let total = AtomicU32::new(0);
        pool.run(4, &|_| {
            pool.run(5, &|_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 20);
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let pool = Arc::clone(&pool);
                thread::spawn(move || {
                    let sum = AtomicU32::new(0);
                    for _ in 0..200 {
                        pool.run(16, &|i| {
                            sum.fetch_add(i as u32, Ordering::Relaxed);
                        });
                    }
                    sum.load(Ordering::Relaxed)
                })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.join().expect("caller"), 200 * 120);
        }
    }

    #[test]
    fn idle_workers_park_and_wake_for_the_next_job() {
        let pool = Pool::new(2);
        let start = Instant::now();
        while pool.shared.sleepers.load(Ordering::SeqCst) < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "workers never parked"
            );
            thread::sleep(YIELD);
        }
        let seen = counts(32);
        pool.run(32, &|i| {
            seen[i].fetch_add(1, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(1));
        });
        assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    }
}

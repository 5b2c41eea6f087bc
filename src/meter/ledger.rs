//! The energy ledger: integrates one device's measured energy over time and splits every
//! interval among the batches active in it, so that nothing is counted twice.
//!
//! Between two readings of the device's cumulative energy counter lies an interval of energy
//! `ΔE` and length `L`. Power is taken as constant within it. The part of `L` covered by no batch is
//! idle: its energy `ΔE × idle/L` is kept apart. The rest is split among the batches that overlap
//! the interval in proportion to `weight × overlap` (weight = tokens). Time (device-seconds, for
//! the hardware's cost and embodied carbon) is split the same way. Hence, exactly:
//! `Σ attributed + idle = measured`, for energy and for time, however batches overlap.
//!
//! A counter that has not moved while batches run (NVML's counter updates every 20–100 ms) does not
//! close an interval: the interval grows until the counter moves, and a batch shorter than one
//! update gets its share of the interval that contains it, never 0. A batch's figures are final once
//! an interval closes at or after its end; then its watchers are told.

use std::time::Instant;

use tokio::sync::watch;

/// What one batch was attributed, final.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BatchEnergy {
    /// Energy attributed to the batch, joules.
    pub joules: f64,
    /// Device time attributed to the batch, seconds.
    pub device_seconds: f64,
    /// Average device power over the batch's span (the device's, not the batch's share), watts.
    pub avg_watts: f64,
}

/// Identifies a batch in the ledger.
pub type BatchId = u64;

struct Active {
    id: BatchId,
    start: Instant,
    end: Option<Instant>,
    weight: f64,
    joules: f64,
    device_seconds: f64,
    /// Device energy over the batch's span, for its average power.
    span_joules: f64,
    span_seconds: f64,
    tx: watch::Sender<Option<BatchEnergy>>,
}

/// Running totals, for the conservation invariant and the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// Energy read from the source over closed intervals.
    pub measured_joules: f64,
    /// Energy given to batches.
    pub attributed_joules: f64,
    /// Energy of time with no batch active.
    pub idle_joules: f64,
    /// Length of closed intervals.
    pub measured_seconds: f64,
    /// Device time given to batches.
    pub attributed_seconds: f64,
    /// Time with no batch active.
    pub idle_seconds: f64,
}

/// What closing an interval produced, for the caller to publish (metrics, power gauge).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Closed {
    /// Energy of the interval that no batch was active for.
    pub idle_joules: f64,
    /// Average power over the interval, watts.
    pub watts: f64,
    /// Batches that became final: (id, figures).
    pub finished: Vec<(BatchId, BatchEnergy)>,
}

/// One device's ledger.
pub struct Ledger {
    attribute_idle: bool,
    /// Start of the open interval and the counter value there.
    mark: Option<(Instant, f64)>,
    active: Vec<Active>,
    next_id: BatchId,
    totals: Totals,
}

impl Ledger {
    /// An empty ledger. With `attribute_idle`, the idle part of an interval in which some batch was
    /// active goes to those batches too (intervals with no batch at all stay idle).
    pub fn new(attribute_idle: bool) -> Self {
        Self {
            attribute_idle,
            mark: None,
            active: Vec::new(),
            next_id: 0,
            totals: Totals::default(),
        }
    }

    /// Totals so far.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Batches begun and not yet final.
    pub fn open_batches(&self) -> usize {
        self.active.len()
    }

    /// True when some ended batch waits for the counter to move.
    pub fn awaiting_counter(&self) -> bool {
        self.active.iter().any(|a| a.end.is_some())
    }

    /// Registers a batch starting at `at` with `weight` (tokens). Ingest a reading at `at` first.
    pub fn begin(
        &mut self,
        at: Instant,
        weight: f64,
    ) -> (BatchId, watch::Receiver<Option<BatchEnergy>>) {
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = watch::channel(None);
        self.active.push(Active {
            id,
            start: at,
            end: None,
            weight: weight.max(f64::MIN_POSITIVE),
            joules: 0.0,
            device_seconds: 0.0,
            span_joules: 0.0,
            span_seconds: 0.0,
            tx,
        });
        (id, rx)
    }

    /// Marks a batch ended at `at`. Ingest a reading at `at` afterwards: it finalizes the batch if
    /// the counter moved.
    pub fn end(&mut self, id: BatchId, at: Instant) {
        if let Some(a) = self.active.iter_mut().find(|a| a.id == id) {
            a.end = Some(at.max(a.start));
        }
    }

    /// Feeds a reading of the cumulative counter (joules, monotonic) taken at `at`.
    pub fn ingest(&mut self, at: Instant, cumulative_joules: f64) -> Closed {
        self.ingest_with(at, cumulative_joules, &mut |_, _| {})
    }

    /// Like [`Ledger::ingest`], calling `before_notify` for every batch that became final before
    /// its watchers are told (so that totals are published before anyone reads them).
    pub fn ingest_with(
        &mut self,
        at: Instant,
        cumulative_joules: f64,
        before_notify: &mut dyn FnMut(BatchId, &BatchEnergy),
    ) -> Closed {
        let Some((t0, e0)) = self.mark else {
            self.mark = Some((at, cumulative_joules));
            return Closed::default();
        };
        if at <= t0 {
            return Closed::default();
        }
        let delta = (cumulative_joules - e0).max(0.0);
        let overlapping = self
            .active
            .iter()
            .any(|a| a.start < at && a.end.is_none_or(|e| e > t0));
        if delta == 0.0 && overlapping {
            // The counter has not updated yet: keep the interval open.
            return Closed::default();
        }
        self.mark = Some((at, cumulative_joules));
        self.close(t0, at, delta, before_notify)
    }

    fn close(
        &mut self,
        t0: Instant,
        t1: Instant,
        delta: f64,
        before_notify: &mut dyn FnMut(BatchId, &BatchEnergy),
    ) -> Closed {
        let len = (t1 - t0).as_secs_f64();
        let power = delta / len;
        // Overlap of every batch with (t0, t1].
        let mut spans: Vec<(usize, f64, f64)> = Vec::new(); // (index, from, to) in seconds after t0
        for (i, a) in self.active.iter().enumerate() {
            let from = a.start.max(t0);
            let to = a.end.unwrap_or(t1).min(t1);
            if to > from {
                spans.push((i, (from - t0).as_secs_f64(), (to - t0).as_secs_f64()));
            }
        }
        let covered = union_length(spans.iter().map(|&(_, f, t)| (f, t)));
        let (share_time, idle_time) = if spans.is_empty() {
            (0.0, len)
        } else if self.attribute_idle {
            (len, 0.0)
        } else {
            (covered, len - covered)
        };
        let total_weight: f64 = spans
            .iter()
            .map(|&(i, f, t)| self.active[i].weight * (t - f))
            .sum();
        let active_joules = delta * share_time / len;
        for &(i, f, t) in &spans {
            let part = self.active[i].weight * (t - f) / total_weight;
            let a = &mut self.active[i];
            a.joules += active_joules * part;
            a.device_seconds += share_time * part;
            a.span_joules += power * (t - f);
            a.span_seconds += t - f;
        }
        let idle_joules = delta - active_joules;
        let tot = &mut self.totals;
        tot.measured_joules += delta;
        tot.attributed_joules += active_joules;
        tot.idle_joules += idle_joules;
        tot.measured_seconds += len;
        tot.attributed_seconds += share_time;
        tot.idle_seconds += idle_time;

        let mut finished = Vec::new();
        self.active.retain(|a| match a.end {
            Some(end) if end <= t1 => {
                let energy = BatchEnergy {
                    joules: a.joules,
                    device_seconds: a.device_seconds,
                    avg_watts: if a.span_seconds > 0.0 {
                        a.span_joules / a.span_seconds
                    } else {
                        power
                    },
                };
                before_notify(a.id, &energy);
                let _ = a.tx.send(Some(energy));
                finished.push((a.id, energy));
                false
            }
            _ => true,
        });
        Closed {
            idle_joules,
            watts: power,
            finished,
        }
    }
}

/// Length of the union of intervals.
fn union_length(intervals: impl Iterator<Item = (f64, f64)>) -> f64 {
    let mut v: Vec<(f64, f64)> = intervals.collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut current: Option<(f64, f64)> = None;
    for (f, t) in v {
        current = match current {
            Some((cf, ct)) if f <= ct => Some((cf, ct.max(t))),
            Some((cf, ct)) => {
                total += ct - cf;
                Some((f, t))
            }
            None => Some((f, t)),
        };
    }
    if let Some((cf, ct)) = current {
        total += ct - cf;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A deterministic power trace: `watts(t)` sampled every `tick` ms into a cumulative counter.
    struct Trace {
        t0: Instant,
        energy: f64,
        last_ms: u64,
    }

    impl Trace {
        fn new() -> Self {
            Self {
                t0: Instant::now(),
                energy: 0.0,
                last_ms: 0,
            }
        }
        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }
        /// Advances to `ms` at constant `watts`, returning the counter.
        fn run(&mut self, ms: u64, watts: f64) -> f64 {
            self.energy += watts * (ms - self.last_ms) as f64 / 1000.0;
            self.last_ms = ms;
            self.energy
        }
    }

    fn assert_conserved(l: &Ledger, attributed_by_batches: f64) {
        let t = l.totals();
        let rel = |a: f64, b: f64| (a - b).abs() <= 1e-3 * b.abs().max(1e-9);
        assert!(
            rel(t.attributed_joules + t.idle_joules, t.measured_joules),
            "{t:?}"
        );
        assert!(
            rel(t.attributed_seconds + t.idle_seconds, t.measured_seconds),
            "{t:?}"
        );
        assert!(
            rel(attributed_by_batches, t.attributed_joules),
            "{attributed_by_batches} vs {t:?}"
        );
    }

    #[test]
    fn back_to_back_batches_and_idle_gaps() {
        let mut tr = Trace::new();
        let mut l = Ledger::new(false);
        l.ingest(tr.at(0), tr.run(0, 0.0));
        l.ingest(tr.at(100), tr.run(100, 20.0)); // idle 100 ms at 20 W = 2 J
        let (a, ra) = l.begin(tr.at(100), 10.0);
        l.end(a, tr.at(200));
        l.ingest(tr.at(200), tr.run(200, 100.0)); // batch a: 100 ms at 100 W = 10 J
        let (b, rb) = l.begin(tr.at(200), 5.0);
        l.end(b, tr.at(250));
        l.ingest(tr.at(250), tr.run(250, 60.0)); // batch b: 3 J
        l.ingest(tr.at(400), tr.run(400, 20.0)); // idle 3 J
        let ea = ra.borrow().unwrap();
        let eb = rb.borrow().unwrap();
        assert!((ea.joules - 10.0).abs() < 1e-9 && (ea.avg_watts - 100.0).abs() < 1e-9);
        assert!((eb.joules - 3.0).abs() < 1e-9 && (eb.device_seconds - 0.05).abs() < 1e-9);
        assert!((l.totals().idle_joules - 5.0).abs() < 1e-9);
        assert_conserved(&l, ea.joules + eb.joules);
    }

    #[test]
    fn overlapping_batches_share_the_interval_by_tokens_times_overlap_never_twice() {
        let mut tr = Trace::new();
        let mut l = Ledger::new(false);
        l.ingest(tr.at(0), tr.run(0, 0.0));
        let (a, ra) = l.begin(tr.at(0), 30.0);
        let (b, rb) = l.begin(tr.at(50), 10.0);
        l.end(a, tr.at(100));
        l.end(b, tr.at(150));
        // One counter reading over the whole 200 ms: 200 ms at 50 W = 10 J.
        l.ingest(tr.at(200), tr.run(200, 50.0));
        let (ea, eb) = (ra.borrow().unwrap(), rb.borrow().unwrap());
        // Covered 150 ms of 200: 7.5 J active, 2.5 J idle. Weights: a 30×100, b 10×100.
        assert!((ea.joules - 7.5 * 0.75).abs() < 1e-9, "{ea:?}");
        assert!((eb.joules - 7.5 * 0.25).abs() < 1e-9, "{eb:?}");
        assert!((l.totals().idle_joules - 2.5).abs() < 1e-9);
        // A per-request window would have counted 100 + 100 ms of 50 W = 10 J for 7.5 J of work.
        assert_conserved(&l, ea.joules + eb.joules);
    }

    #[test]
    fn a_batch_shorter_than_a_counter_update_gets_its_share_not_zero() {
        let mut tr = Trace::new();
        let mut l = Ledger::new(false);
        l.ingest(tr.at(0), tr.run(0, 0.0));
        // Counter updates every 100 ms; a 3 ms batch in the middle.
        let (a, ra) = l.begin(tr.at(40), 1.0);
        l.end(a, tr.at(43));
        let stale = tr.energy; // the counter has not moved at 43 ms
        l.ingest(tr.at(43), stale);
        assert!(ra.borrow().is_none(), "final before the counter moved");
        assert!(l.awaiting_counter());
        l.ingest(tr.at(100), tr.run(100, 80.0)); // 8 J over 100 ms
        let ea = ra.borrow().unwrap();
        assert!((ea.joules - 8.0 * 0.03).abs() < 1e-9, "{ea:?}");
        assert!(ea.joules > 0.0);
        assert_conserved(&l, ea.joules);
    }

    #[test]
    fn many_random_overlapping_batches_conserve_energy_and_time() {
        let mut tr = Trace::new();
        let mut l = Ledger::new(false);
        l.ingest(tr.at(0), tr.run(0, 0.0));
        let mut receivers = Vec::new();
        let mut seed = 12345u64;
        let mut rnd = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut open: Vec<BatchId> = Vec::new();
        for ms in (10..5000).step_by(7) {
            if rnd(3) == 0 {
                let (id, rx) = l.begin(tr.at(ms), 1.0 + rnd(100) as f64);
                open.push(id);
                receivers.push(rx);
            }
            if !open.is_empty() && rnd(3) == 0 {
                let id = open.remove(rnd(open.len() as u64) as usize);
                l.end(id, tr.at(ms));
            }
            if rnd(4) == 0 {
                let watts = 10.0 + rnd(200) as f64;
                l.ingest(tr.at(ms + 1), tr.run(ms + 1, watts));
            }
        }
        for id in open {
            l.end(id, tr.at(5000));
        }
        l.ingest(tr.at(5001), tr.run(5001, 30.0));
        assert_eq!(l.open_batches(), 0);
        let sum: f64 = receivers.iter().map(|r| r.borrow().unwrap().joules).sum();
        assert!(sum > 0.0);
        assert_conserved(&l, sum);
        assert!((l.totals().measured_joules - tr.energy).abs() < 1e-6);
    }

    #[test]
    fn attribute_idle_gives_active_intervals_wholly_to_their_batches() {
        let mut tr = Trace::new();
        let mut l = Ledger::new(true);
        l.ingest(tr.at(0), tr.run(0, 0.0));
        l.ingest(tr.at(100), tr.run(100, 10.0)); // no batch: stays idle (1 J)
        let (a, ra) = l.begin(tr.at(150), 1.0);
        l.end(a, tr.at(160));
        l.ingest(tr.at(200), tr.run(200, 10.0)); // 1 J, all to the batch
        assert!((ra.borrow().unwrap().joules - 1.0).abs() < 1e-9);
        assert!((l.totals().idle_joules - 1.0).abs() < 1e-9);
        assert_conserved(&l, 1.0);
    }

    #[test]
    fn union_length_merges_overlaps() {
        assert_eq!(
            union_length([(0.0, 1.0), (0.5, 2.0), (3.0, 4.0)].into_iter()),
            3.0
        );
        assert_eq!(union_length(std::iter::empty()), 0.0);
    }
}

//! Metering: energy sources, the conserving ledger, and pricing in CO2e and dollars.
//!
//! One [`Meter`] per device. The batch loop calls [`Meter::begin_batch`] and [`Meter::end_batch`]
//! around each forward pass; both take a reading of the device's counter. A background thread
//! takes readings too (every `energy.sample_interval_ms`, every 10 ms while a finished batch waits
//! for the counter to move), so that idle energy is accounted and slow counters settle. The API
//! awaits each request's [`EnergyShare`]s and prices the sum with [`pricing::Pricing`].

pub mod class;
pub mod cputime;
pub mod estimate;
pub mod ledger;
pub mod nvml;
pub mod pricing;
pub mod rapl;
pub mod settings;
pub mod source;
pub mod zones;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::engine::DeviceSpec;
use crate::metrics as m;
use ledger::{BatchEnergy, BatchId, Ledger};
use pricing::Pricing;
use settings::{EnergyConfig, SourceChoice};
use source::{EnergySource, SourceError};

/// A request's claim on one batch's energy: the batch's final figures times `fraction` (the
/// request's tokens over the batch's).
#[derive(Debug, Clone)]
pub struct EnergyShare {
    /// Resolves to the batch's figures when final.
    pub batch: watch::Receiver<Option<BatchEnergy>>,
    /// The request's part of the batch.
    pub fraction: f64,
    /// The batch's wall time, seconds: what its energy is estimated from if it never settles.
    pub seconds: f64,
}

/// What a request was attributed, summed over its batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attribution {
    /// Joules.
    pub joules: f64,
    /// Device-seconds.
    pub device_seconds: f64,
    /// Average device power over the batches that served it, watts.
    pub avg_watts: f64,
}

/// What a request was attributed, and whether any of it had to be estimated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settled {
    /// The sum over the request's shares.
    pub attribution: Attribution,
    /// Shares whose batch did not settle in time (or whose meter went away) and were estimated
    /// from the batch's wall time at the fallback power.
    pub estimated: usize,
}

/// Waits until every share is final and sums them, but never longer than `limit` in all: a
/// share still open then (a counter that does not move, a source whose reads fail, a meter that
/// went away) is estimated as its batch's wall time × `fallback_watts` × its fraction, and
/// counted in [`Settled::estimated`].
pub async fn settle(shares: &[EnergyShare], limit: Duration, fallback_watts: f64) -> Settled {
    let deadline = tokio::time::Instant::now() + limit;
    let mut total = Attribution {
        joules: 0.0,
        device_seconds: 0.0,
        avg_watts: 0.0,
    };
    let mut estimated = 0;
    let mut weight = 0.0;
    for share in shares {
        let mut rx = share.batch.clone();
        let waited = tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await;
        let energy = match waited {
            Ok(Ok(e)) => *e,
            _ => None,
        };
        let energy = energy.unwrap_or_else(|| {
            estimated += 1;
            BatchEnergy {
                joules: share.seconds * fallback_watts,
                device_seconds: share.seconds,
                avg_watts: fallback_watts,
            }
        });
        total.joules += energy.joules * share.fraction;
        total.device_seconds += energy.device_seconds * share.fraction;
        total.avg_watts += energy.avg_watts * share.fraction;
        weight += share.fraction;
    }
    if weight > 0.0 {
        total.avg_watts /= weight;
    }
    Settled {
        attribution: total,
        estimated,
    }
}

/// A ticket for a batch in progress.
#[derive(Debug)]
pub struct BatchTicket {
    id: BatchId,
    /// Resolves to the batch's figures when final.
    pub energy: watch::Receiver<Option<BatchEnergy>>,
}

struct Inner {
    source: Box<dyn EnergySource>,
    /// Added to the source's readings: the energy read before a lost source was replaced by the
    /// estimate, so that the ledger's readings stay monotonic across the hand-over.
    offset: f64,
    /// The last reading the ledger got (offset included).
    last_reading: f64,
    ledger: Ledger,
    /// Model of each open batch, for the per-model totals.
    models: HashMap<BatchId, String>,
    read_failures: u64,
}

/// One device's meter.
pub struct Meter {
    inner: Mutex<Inner>,
    method: &'static str,
    /// The source was lost and the estimate meters the device instead.
    lost: std::sync::atomic::AtomicBool,
    /// What the estimate that takes over from a lost source is made of.
    estimate: estimate::EstimateParams,
    device: String,
    pricing: Arc<Pricing>,
    settle_timeout: Duration,
    fallback_watts: f64,
}

impl Meter {
    /// Starts metering with `source`, and its background sampler.
    pub fn start(
        source: Box<dyn EnergySource>,
        cfg: &EnergyConfig,
        pricing: Arc<Pricing>,
    ) -> Arc<Self> {
        let method = source.method();
        let device = source.device();
        let meter = Arc::new(Self {
            inner: Mutex::new(Inner {
                source,
                offset: 0.0,
                last_reading: 0.0,
                ledger: Ledger::new(cfg.attribute_idle),
                models: HashMap::new(),
                read_failures: 0,
            }),
            method,
            lost: std::sync::atomic::AtomicBool::new(false),
            estimate: estimate_params(cfg),
            device,
            pricing,
            settle_timeout: Duration::from_millis(cfg.settle_timeout_ms),
            // The estimate's model for a batch that keeps every compute thread busy.
            fallback_watts: cfg.cpu_watts_per_core * rayon::current_num_threads() as f64,
        });
        meter.sample();
        let weak = Arc::downgrade(&meter);
        let interval = Duration::from_millis(cfg.sample_interval_ms);
        let spawned = std::thread::Builder::new()
            .name(format!("meter-{}", meter.device))
            .spawn(move || sampler(weak, interval));
        if let Err(e) = spawned {
            tracing::warn!("energy: cannot start the sampler thread ({e}); idle energy is sampled only around batches");
        }
        meter
    }

    /// Waits for `shares` to settle, at most `energy.settle_timeout_ms`; see [`settle`].
    pub async fn settle(&self, shares: &[EnergyShare]) -> Settled {
        settle(shares, self.settle_timeout, self.fallback_watts).await
    }

    /// The meter's state; a panic that poisoned the lock does not stop metering (the ledger's
    /// invariants hold between its calls), it is logged once.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::error!(device = %self.device, "energy: a panic interrupted the meter; metering goes on")
            });
            poisoned.into_inner()
        })
    }

    /// `x-energy-source`: how this meter measures (`estimate` once its source was lost).
    pub fn method(&self) -> &'static str {
        if self.lost.load(std::sync::atomic::Ordering::Relaxed) {
            "estimate"
        } else {
            self.method
        }
    }

    /// The device label.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The pricing requests are charged with.
    pub fn pricing(&self) -> &Arc<Pricing> {
        &self.pricing
    }

    /// Reads the counter and registers a batch of `weight` tokens for `model`, starting at the
    /// reading (the energy up to it is not the batch's).
    pub fn begin_batch(&self, model: &str, weight: f64) -> Option<BatchTicket> {
        let mut inner = self.lock();
        let read = self.read(&mut inner);
        if let Some((at, reading)) = read {
            self.ingest(&mut inner, at, reading);
        }
        let at = read.map_or_else(Instant::now, |(at, _)| at);
        let (id, energy) = inner.ledger.begin(at, weight);
        inner.models.insert(id, model.to_string());
        Some(BatchTicket { id, energy })
    }

    /// Reads the counter and marks the batch ended at the reading (which settles it if the
    /// counter moved).
    pub fn end_batch(&self, ticket: &BatchTicket) {
        let mut inner = self.lock();
        match self.read(&mut inner) {
            Some((at, reading)) => {
                inner.ledger.end(ticket.id, at);
                self.ingest(&mut inner, at, reading);
            }
            None => inner.ledger.end(ticket.id, Instant::now()),
        }
    }

    /// Ledger totals (for tests and diagnostics).
    pub fn totals(&self) -> Option<ledger::Totals> {
        Some(self.lock().ledger.totals())
    }

    fn sample(&self) -> bool {
        let mut inner = self.lock();
        if let Some((at, reading)) = self.read(&mut inner) {
            self.ingest(&mut inner, at, reading);
        }
        inner.ledger.awaiting_counter()
    }

    /// Reads the source: the reading and when it was taken (as the read returns, so that a
    /// source integrating power over its own read times and the ledger's intervals agree).
    /// `None` when the read failed (logged once, counted) or the source was just lost (the
    /// estimate takes over from the energy read so far).
    fn read(&self, inner: &mut Inner) -> Option<(Instant, f64)> {
        match inner.source.read() {
            Ok(j) => Some((Instant::now(), inner.offset + j)),
            Err(SourceError::Lost(e)) => {
                tracing::error!(device = %self.device, "energy: {e}; the estimate meters {} from now on (x-energy-source: estimate)", self.device);
                crate::metrics::record_source_lost(&self.device);
                inner.offset = inner.last_reading;
                inner.source = estimate_source(self.estimate);
                self.lost.store(true, std::sync::atomic::Ordering::Relaxed);
                None
            }
            Err(e) => {
                if inner.read_failures == 0 {
                    tracing::warn!(device = %self.device, "energy: reading failed ({e}); retrying on every sample");
                }
                inner.read_failures += 1;
                crate::metrics::record_read_failure(&self.device);
                None
            }
        }
    }

    /// Hands a reading taken at `at` to the ledger and counts what it closes in the metrics.
    fn ingest(&self, inner: &mut Inner, at: Instant, reading: f64) {
        inner.last_reading = reading;
        let Inner { ledger, models, .. } = inner;
        let pricing = &self.pricing;
        let method = self.method();
        let closed = ledger.ingest_with(at, reading, &mut |id, energy| {
            if let Some(model) = models.remove(&id) {
                m::add_float(
                    m::ENERGY,
                    &[("model", &model), ("source", method)],
                    energy.joules,
                );
                m::add_float(
                    m::CO2E,
                    &[("model", &model)],
                    pricing.co2e_grams(energy.joules, energy.device_seconds),
                );
                m::add_float(
                    m::COST,
                    &[("model", &model)],
                    pricing.cost_usd(energy.joules, energy.device_seconds),
                );
            }
        });
        if closed.idle_joules > 0.0 {
            m::add_float(
                m::IDLE_ENERGY,
                &[("device", &self.device)],
                closed.idle_joules,
            );
        }
        if closed.watts > 0.0 || !closed.finished.is_empty() {
            m::set_device_power(&self.device, closed.watts);
        }
    }
}

fn sampler(meter: Weak<Meter>, interval: Duration) {
    let mut wait = interval;
    loop {
        std::thread::sleep(wait);
        let Some(meter) = meter.upgrade() else {
            return;
        };
        let awaiting = meter.sample();
        wait = if awaiting {
            interval.min(Duration::from_millis(10))
        } else {
            interval
        };
    }
}

/// The estimate's parameters from `[energy]`.
fn estimate_params(cfg: &EnergyConfig) -> estimate::EstimateParams {
    estimate::EstimateParams {
        cpu_watts_per_core: cfg.cpu_watts_per_core,
        dram_watts_per_gb: cfg.dram_watts_per_gb,
    }
}

/// The CPU-time estimate of this process's energy.
fn estimate_source(params: estimate::EstimateParams) -> Box<dyn EnergySource> {
    Box::new(estimate::EstimateSource::new(
        params,
        Box::new(estimate::KernelProbe::new()),
    ))
}

/// Picks the energy source for a device as `energy.source` says. Returns the source and the
/// lines explaining each source that could not start (logged by the caller, one line each).
pub fn select_source(
    cfg: &EnergyConfig,
    device: DeviceSpec,
) -> Result<(Box<dyn EnergySource>, Vec<String>), SourceError> {
    let estimate = || estimate_source(estimate_params(cfg));
    let rapl = || -> Result<Box<dyn EnergySource>, SourceError> {
        let share = cfg
            .rapl_process_share
            .then(|| cputime::CpuShare::new(std::path::Path::new("/proc")));
        Ok(Box::new(rapl::RaplSource::open(&cfg.powercap_root, share)?))
    };
    let gpu_index = match device {
        DeviceSpec::Cuda(n) => Some(n as u32),
        DeviceSpec::Cpu => None,
    };
    match cfg.source {
        SourceChoice::Estimate => Ok((estimate(), Vec::new())),
        SourceChoice::Rapl => Ok((rapl()?, Vec::new())),
        SourceChoice::Nvml => Ok((
            Box::new(nvml::NvmlSource::open(
                gpu_index.unwrap_or(0),
                cfg.nvml_library.as_deref(),
            )?),
            Vec::new(),
        )),
        SourceChoice::Auto => {
            let mut skipped = Vec::new();
            match gpu_index {
                Some(i) => match nvml::NvmlSource::open(i, cfg.nvml_library.as_deref()) {
                    Ok(s) => return Ok((Box::new(s), skipped)),
                    Err(e) => skipped.push(format!(
                        "energy: NVML cannot meter cuda:{i}: {e}; using the estimate"
                    )),
                },
                None => match rapl() {
                    Ok(s) => return Ok((s, skipped)),
                    Err(e) => {
                        skipped.push(format!("energy: RAPL unavailable: {e}; using the estimate"))
                    }
                },
            }
            Ok((estimate(), skipped))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_with_one_line_per_missing_source() {
        let cfg = EnergyConfig {
            powercap_root: "/nonexistent/powercap".into(),
            ..EnergyConfig::default()
        };
        let (source, skipped) = select_source(&cfg, DeviceSpec::Cpu).unwrap();
        assert_eq!(source.method(), "estimate");
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].contains("RAPL") && skipped[0].contains("estimate"),
            "{skipped:?}"
        );
        // No NVIDIA driver here: NVML fails, auto falls back, one line.
        if nvml::NvmlSource::open(0, None).is_err() {
            let (source, skipped) = select_source(&cfg, DeviceSpec::Cuda(0)).unwrap();
            assert_eq!(source.method(), "estimate");
            assert_eq!(skipped.len(), 1);
            assert!(skipped[0].contains("NVML"), "{skipped:?}");
        }
    }

    #[test]
    fn explicit_source_that_cannot_start_is_an_error() {
        let cfg = EnergyConfig {
            source: SourceChoice::Rapl,
            powercap_root: "/nonexistent/powercap".into(),
            ..EnergyConfig::default()
        };
        let err = select_source(&cfg, DeviceSpec::Cpu).err().unwrap();
        assert!(err.to_string().contains("powercap"), "{err}");
    }

    /// A source replaying a fixed power, advanced by the test.
    struct Fixed(Arc<Mutex<f64>>);
    impl EnergySource for Fixed {
        fn method(&self) -> &'static str {
            "estimate"
        }
        fn device(&self) -> String {
            "test".into()
        }
        fn read(&mut self) -> Result<f64, SourceError> {
            Ok(*self.0.lock().unwrap())
        }
    }

    #[test]
    fn a_wrapping_rapl_counter_through_the_meter_conserves_energy() {
        let tmp = tempfile::tempdir().unwrap();
        let zone = tmp.path().join("intel-rapl:0");
        std::fs::create_dir_all(&zone).unwrap();
        std::fs::write(zone.join("name"), "package-0").unwrap();
        std::fs::write(zone.join("max_energy_range_uj"), "1000000").unwrap(); // wraps at 1 J
        let set = |uj: u64| std::fs::write(zone.join("energy_uj"), uj.to_string()).unwrap();
        set(900_000);
        let source = rapl::RaplSource::open(tmp.path(), None).unwrap();
        let cfg = EnergyConfig {
            sample_interval_ms: 3_600_000, // no background readings during the test
            ..EnergyConfig::default()
        };
        let pricing = Arc::new(Pricing::from_config(
            &settings::CarbonConfig::default(),
            &Default::default(),
        ));
        let meter = Meter::start(Box::new(source), &cfg, pricing);
        let pause = || std::thread::sleep(Duration::from_millis(2));
        pause();
        set(950_000); // 0.05 J idle
        let a = meter.begin_batch("m", 10.0).unwrap();
        pause();
        set(50_000); // wrapped: +0.1 J
        let b = meter.begin_batch("m", 30.0).unwrap(); // overlaps a
        pause();
        set(250_000); // +0.2 J
        meter.end_batch(&a);
        pause();
        set(300_000); // +0.05 J
        meter.end_batch(&b);
        let t = meter.totals().unwrap();
        let total = a.energy.borrow().unwrap().joules + b.energy.borrow().unwrap().joules;
        assert!((t.measured_joules - 0.4).abs() < 1e-9, "{t:?}");
        assert!(
            (t.attributed_joules + t.idle_joules - t.measured_joules).abs() < 1e-9,
            "{t:?}"
        );
        assert!(
            (total - t.attributed_joules).abs() < 1e-9,
            "{total} vs {t:?}"
        );
        assert!((t.idle_joules - 0.05).abs() < 1e-9, "{t:?}");
    }

    #[tokio::test]
    async fn shares_settle_to_the_batch_energy_times_fraction() {
        let counter = Arc::new(Mutex::new(0.0));
        let pricing = Arc::new(Pricing::from_config(
            &settings::CarbonConfig {
                intensity: Some(100.0),
                ..Default::default()
            },
            &Default::default(),
        ));
        let meter = Meter::start(
            Box::new(Fixed(counter.clone())),
            &EnergyConfig::default(),
            pricing,
        );
        let t = meter.begin_batch("m", 4.0).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        *counter.lock().unwrap() += 2.0;
        meter.end_batch(&t);
        let shares = [
            EnergyShare {
                batch: t.energy.clone(),
                fraction: 0.75,
                seconds: 0.005,
            },
            EnergyShare {
                batch: t.energy.clone(),
                fraction: 0.25,
                seconds: 0.005,
            },
        ];
        let a = meter.settle(&shares[..1]).await;
        let b = meter.settle(&shares[1..]).await;
        assert_eq!((a.estimated, b.estimated), (0, 0));
        let (a, b) = (a.attribution, b.attribution);
        assert!((a.joules + b.joules - 2.0).abs() < 1e-9, "{a:?} {b:?}");
        assert!((a.joules - 1.5).abs() < 1e-9);
        assert!(a.avg_watts > 0.0);
    }

    /// A counter that never moves: the batch never settles, and the response does not wait
    /// for it past the deadline; its energy is estimated from its wall time.
    #[tokio::test]
    async fn a_share_that_never_settles_is_estimated_after_the_deadline() {
        let (tx, rx) = watch::channel(None);
        let shares = [EnergyShare {
            batch: rx,
            fraction: 0.5,
            seconds: 0.2,
        }];
        let started = std::time::Instant::now();
        let s = settle(&shares, Duration::from_millis(50), 10.0).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waited {:?}",
            started.elapsed()
        );
        assert_eq!(s.estimated, 1);
        assert!(
            (s.attribution.joules - 0.2 * 10.0 * 0.5).abs() < 1e-12,
            "{s:?}"
        );
        assert!((s.attribution.device_seconds - 0.1).abs() < 1e-12, "{s:?}");
        // A meter that went away (its sender dropped) is estimated too, at once.
        drop(tx);
        let s = settle(&shares, Duration::from_secs(60), 10.0).await;
        assert_eq!(s.estimated, 1);
    }
}

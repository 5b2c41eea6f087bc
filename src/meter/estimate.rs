//! The estimate: no power meter, so energy = this process's CPU busy time × watts per busy core,
//! plus resident memory × watts per GB over time (the Green Algorithms model, Lannelongue et al.,
//! Advanced Science 2021: memory power 0.3725 W/GB; per-core power = TDP / cores).
//!
//! It is a model, not a measurement: reported as `estimate`, and only as right as the per-core
//! figure (see the README for how to pick it).

use std::time::Instant;

use super::cputime;
use super::source::{EnergySource, SourceError};

/// What the estimate reads from the process; the real probe reads the kernel, tests script it.
pub trait ProcessProbe: Send {
    /// Seconds since the probe started.
    fn elapsed_seconds(&mut self) -> f64;
    /// CPU seconds the process has used.
    fn cpu_seconds(&mut self) -> f64;
    /// Resident memory, bytes.
    fn rss_bytes(&mut self) -> f64;
}

/// The real probe: wall clock, `CLOCK_PROCESS_CPUTIME_ID`, `/proc/self/statm`.
pub struct KernelProbe {
    start: Instant,
}

impl KernelProbe {
    /// Starts the wall clock now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }
}

impl Default for KernelProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessProbe for KernelProbe {
    fn elapsed_seconds(&mut self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
    fn cpu_seconds(&mut self) -> f64 {
        cputime::process_cpu_seconds()
    }
    fn rss_bytes(&mut self) -> f64 {
        cputime::process_rss_bytes()
    }
}

/// The estimate's constants.
#[derive(Debug, Clone, Copy)]
pub struct EstimateParams {
    /// Watts drawn per fully busy core.
    pub cpu_watts_per_core: f64,
    /// Watts per GB of resident memory.
    pub dram_watts_per_gb: f64,
}

/// The estimate source.
pub struct EstimateSource {
    params: EstimateParams,
    probe: Box<dyn ProcessProbe>,
    cpu0: f64,
    last_t: f64,
    dram_j: f64,
}

impl EstimateSource {
    /// Starts counting from now.
    pub fn new(params: EstimateParams, mut probe: Box<dyn ProcessProbe>) -> Self {
        let cpu0 = probe.cpu_seconds();
        let last_t = probe.elapsed_seconds();
        Self {
            params,
            probe,
            cpu0,
            last_t,
            dram_j: 0.0,
        }
    }
}

impl EnergySource for EstimateSource {
    fn method(&self) -> &'static str {
        "estimate"
    }

    fn device(&self) -> String {
        "cpu".into()
    }

    fn read(&mut self) -> Result<f64, SourceError> {
        let t = self.probe.elapsed_seconds();
        let rss_gb = self.probe.rss_bytes() / 1e9;
        self.dram_j += rss_gb * self.params.dram_watts_per_gb * (t - self.last_t).max(0.0);
        self.last_t = t;
        let cpu = (self.probe.cpu_seconds() - self.cpu0).max(0.0);
        Ok(cpu * self.params.cpu_watts_per_core + self.dram_j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted process: each read advances the clock by 1 s, CPU by `busy` s, at 2 GB RSS.
    struct Script {
        t: f64,
        cpu: f64,
        busy: f64,
    }

    impl ProcessProbe for Script {
        fn elapsed_seconds(&mut self) -> f64 {
            self.t += 1.0;
            self.t
        }
        fn cpu_seconds(&mut self) -> f64 {
            self.cpu += self.busy;
            self.cpu
        }
        fn rss_bytes(&mut self) -> f64 {
            2e9
        }
    }

    #[test]
    fn energy_is_cpu_time_times_watts_plus_memory_over_time() {
        let params = EstimateParams {
            cpu_watts_per_core: 10.0,
            dram_watts_per_gb: 0.3725,
        };
        let probe = Script {
            t: 0.0,
            cpu: 0.0,
            busy: 0.5,
        };
        let mut s = EstimateSource::new(params, Box::new(probe));
        // One read later: 1 s wall, 0.5 CPU-s busy -> 5 J CPU + 2 GB × 0.3725 W × 1 s.
        let e1 = s.read().unwrap();
        assert!((e1 - (5.0 + 0.745)).abs() < 1e-9, "{e1}");
        let e2 = s.read().unwrap();
        assert!((e2 - 2.0 * (5.0 + 0.745)).abs() < 1e-9, "{e2}");
        assert_eq!(s.method(), "estimate");
    }

    #[test]
    fn the_kernel_probe_sees_this_process() {
        let mut p = KernelProbe::new();
        assert!(p.cpu_seconds() > 0.0);
        assert!(p.rss_bytes() > 1e6);
    }
}

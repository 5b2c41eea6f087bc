//! NVIDIA GPUs through NVML (the driver's library, loaded at run time by `nvml-wrapper`).
//!
//! Volta and newer GPUs have a total-energy counter (millijoules; method `nvml-counter`); its value
//! moves every 20–100 ms, which the ledger handles. Older GPUs only report power (milliwatts; a
//! one-second average on recent drivers), which is integrated between readings (method
//! `nvml-power`). This path has never run on a GPU in this project (none was available).

use std::sync::OnceLock;
use std::time::Instant;

use nvml_wrapper::Nvml;

use super::source::{EnergySource, SourceError};

/// NVML, initialized once per process and kept for its lifetime (devices borrow it).
fn nvml() -> Result<&'static Nvml, SourceError> {
    static NVML: OnceLock<Result<Nvml, String>> = OnceLock::new();
    NVML.get_or_init(|| Nvml::init().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| {
            SourceError::Unavailable(format!("NVML unavailable ({e}); no NVIDIA driver or GPU"))
        })
}

enum Method {
    /// mJ counter value at start.
    Counter { start_mj: u64 },
    /// Integrated energy and the last power sample.
    Power { joules: f64, last: (Instant, f64) },
}

/// One GPU's energy.
pub struct NvmlSource {
    index: u32,
    method: Method,
}

impl NvmlSource {
    /// Opens GPU `index`: the energy counter when the GPU has one, else power sampling.
    pub fn open(index: u32) -> Result<Self, SourceError> {
        let nvml = nvml()?;
        let device = nvml
            .device_by_index(index)
            .map_err(|e| SourceError::Unavailable(format!("NVML: no GPU {index} ({e})")))?;
        let method = match device.total_energy_consumption() {
            Ok(start_mj) => Method::Counter { start_mj },
            Err(_) => {
                let mw = device.power_usage().map_err(|e| {
                    SourceError::Unavailable(format!(
                        "NVML: GPU {index} reports neither energy nor power ({e})"
                    ))
                })?;
                Method::Power {
                    joules: 0.0,
                    last: (Instant::now(), mw as f64 / 1000.0),
                }
            }
        };
        Ok(Self { index, method })
    }
}

impl EnergySource for NvmlSource {
    fn method(&self) -> &'static str {
        match self.method {
            Method::Counter { .. } => "nvml-counter",
            Method::Power { .. } => "nvml-power",
        }
    }

    fn device(&self) -> String {
        format!("gpu{}", self.index)
    }

    fn read(&mut self) -> Result<f64, SourceError> {
        let device = nvml()?
            .device_by_index(self.index)
            .map_err(|e| SourceError::Read(format!("NVML GPU {}: {e}", self.index)))?;
        match &mut self.method {
            Method::Counter { start_mj } => {
                let mj = device.total_energy_consumption().map_err(|e| {
                    SourceError::Read(format!("NVML GPU {} energy: {e}", self.index))
                })?;
                Ok(mj.saturating_sub(*start_mj) as f64 / 1000.0)
            }
            Method::Power { joules, last } => {
                let watts = device
                    .power_usage()
                    .map_err(|e| SourceError::Read(format!("NVML GPU {} power: {e}", self.index)))?
                    as f64
                    / 1000.0;
                let now = Instant::now();
                // Trapezoid between the previous and this sample.
                *joules += (last.1 + watts) / 2.0 * (now - last.0).as_secs_f64();
                *last = (now, watts);
                Ok(*joules)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn absent_nvml_is_a_clear_unavailable_error() {
        // This machine has no NVIDIA driver; where one exists this test is moot.
        if let Err(e) = super::NvmlSource::open(0) {
            assert!(e.to_string().contains("NVML"), "{e}");
        }
    }
}

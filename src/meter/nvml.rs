//! NVIDIA GPUs through NVML (the driver's library, loaded at run time by `nvml-wrapper`).
//!
//! Volta and newer GPUs have a total-energy counter (millijoules; method `nvml-counter`); its value
//! moves every 20–100 ms, which the ledger handles. Older GPUs only report power (milliwatts; a
//! one-second average on recent drivers), which is integrated between readings (method
//! `nvml-power`). A GPU that is lost (`GPU_IS_LOST`) is reported as [`SourceError::Lost`], after
//! which the meter hands over to the estimate. This path is tested end to end against a stand-in
//! NVML library (`tests/nvml/standin.c`, loaded through `energy.nvml_library`); it has never
//! run on a GPU in this project (none was available).

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use super::source::{EnergySource, SourceError};

/// The library NVIDIA's driver installs, found by the dynamic loader.
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so";

/// NVML, initialized once per process from the first library asked for (`energy.nvml_library`,
/// one per server) and kept for the process's lifetime (devices borrow it).
fn nvml(library: Option<&Path>) -> Result<&'static Nvml, SourceError> {
    static NVML: OnceLock<Result<Nvml, String>> = OnceLock::new();
    NVML.get_or_init(|| {
        let path = library.map_or_else(|| DEFAULT_LIBRARY.into(), |p| p.as_os_str().to_owned());
        Nvml::builder()
            .lib_path(&path)
            .init()
            .map_err(|e| format!("{} ({e})", path.to_string_lossy()))
    })
    .as_ref()
    .map_err(|e| {
        SourceError::Unavailable(format!("NVML unavailable: {e}; no NVIDIA driver or GPU"))
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
    /// Opens GPU `index` through `library` (default [`DEFAULT_LIBRARY`]): the energy counter
    /// when the GPU has one, else power sampling.
    pub fn open(index: u32, library: Option<&Path>) -> Result<Self, SourceError> {
        let nvml = nvml(library)?;
        let device = nvml
            .device_by_index(index)
            .map_err(|e| SourceError::Unavailable(format!("NVML: no GPU {index} ({e})")))?;
        if let (Ok(name), Ok(uuid)) = (device.name(), device.uuid()) {
            tracing::info!("energy: NVML GPU {index} is {name} ({uuid})");
        }
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
        let index = self.index;
        let failed = |what: &str, e: NvmlError| match e {
            NvmlError::GpuLost => SourceError::Lost(format!("NVML: GPU {index} is lost ({what})")),
            e => SourceError::Read(format!("NVML GPU {index} {what}: {e}")),
        };
        let device = nvml(None)?
            .device_by_index(index)
            .map_err(|e| failed("handle", e))?;
        match &mut self.method {
            Method::Counter { start_mj } => {
                let mj = device
                    .total_energy_consumption()
                    .map_err(|e| failed("energy", e))?;
                Ok(mj.saturating_sub(*start_mj) as f64 / 1000.0)
            }
            Method::Power { joules, last } => {
                let watts = device.power_usage().map_err(|e| failed("power", e))? as f64 / 1000.0;
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
        if let Err(e) = super::NvmlSource::open(0, None) {
            assert!(e.to_string().contains("NVML"), "{e}");
        }
    }
}

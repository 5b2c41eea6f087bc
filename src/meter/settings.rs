//! The meter's settings: `[energy]`, `[carbon]` and `[cost]` of the server configuration. They
//! live with the meter, which reads them; [`crate::config`] embeds them in its file format.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which energy source `[energy] source` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SourceChoice {
    /// GPU models: NVML, else the estimate. CPU models: RAPL, else the estimate.
    #[default]
    Auto,
    /// NVML only (fails at start where unavailable).
    Nvml,
    /// RAPL only (fails at start where unavailable).
    Rapl,
    /// The CPU-time estimate.
    Estimate,
}

impl SourceChoice {
    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceChoice::Auto => "auto",
            SourceChoice::Nvml => "nvml",
            SourceChoice::Rapl => "rapl",
            SourceChoice::Estimate => "estimate",
        }
    }
}

/// `[energy]`: how energy is measured and attributed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnergyConfig {
    /// false turns metering off (no energy headers; for measuring its overhead).
    pub enabled: bool,
    /// auto | nvml | rapl | estimate.
    pub source: SourceChoice,
    /// Background sampling period, for idle energy and the power gauge.
    pub sample_interval_ms: u64,
    /// Give the idle part of intervals in which some batch ran to those batches.
    pub attribute_idle: bool,
    /// Root of the powercap tree (RAPL).
    pub powercap_root: PathBuf,
    /// The NVML library to load (NVIDIA's `libnvidia-ml.so`, found by the dynamic loader, when
    /// unset): for containers and systems that keep it elsewhere, and for a stand-in in tests.
    pub nvml_library: Option<PathBuf>,
    /// RAPL: charge this process only its CPU-time share of the package energy.
    pub rapl_process_share: bool,
    /// Estimate: watts per fully busy core (TDP / cores of your CPU).
    pub cpu_watts_per_core: f64,
    /// Estimate: watts per GB of resident memory.
    pub dram_watts_per_gb: f64,
    /// Longest a response waits for its batches' energy to settle (a slow counter, a source
    /// whose reads fail); past it the batch's energy is estimated and the response says
    /// `estimate`.
    pub settle_timeout_ms: u64,
}

impl Default for EnergyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            source: SourceChoice::Auto,
            sample_interval_ms: 1000,
            attribute_idle: false,
            powercap_root: PathBuf::from("/sys/class/powercap"),
            nvml_library: None,
            rapl_process_share: true,
            cpu_watts_per_core: 12.0,
            dram_watts_per_gb: 0.3725,
            settle_timeout_ms: 2000,
        }
    }
}

/// `[carbon]`: the grid's carbon intensity and the hardware's embodied carbon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CarbonConfig {
    /// Zone of the built-in table (country code, a few grid regions, `WORLD`).
    pub zone: String,
    /// gCO2e/kWh, overriding the zone's value.
    pub intensity: Option<f64>,
    /// Embodied emissions of the hardware, kgCO2e (the SCI term M); 0 = not counted.
    pub embodied_kgco2e: f64,
    /// Lifetime over which the embodied emissions are spread, years.
    pub lifetime_years: f64,
}

impl Default for CarbonConfig {
    fn default() -> Self {
        Self {
            zone: "WORLD".into(),
            intensity: None,
            embodied_kgco2e: 0.0,
            lifetime_years: 4.0,
        }
    }
}

/// `[cost]`: what energy and hardware cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostConfig {
    /// Electricity price, USD per kWh.
    pub electricity_usd_per_kwh: f64,
    /// Power usage effectiveness of the facility (1.0 = no overhead).
    pub pue: f64,
    /// The hardware's hourly cost (instance price or amortized purchase), USD.
    pub hardware_usd_per_hour: f64,
}

impl Default for CostConfig {
    fn default() -> Self {
        Self {
            electricity_usd_per_kwh: 0.15,
            pue: 1.0,
            hardware_usd_per_hour: 0.0,
        }
    }
}

//! Energy sources: where a device's cumulative energy comes from.

/// Why a source could not start or be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    /// The source does not exist on this machine (no NVML library or GPU, no powercap tree).
    #[error("{0}")]
    Unavailable(String),
    /// The source exists but may not be read (RAPL's energy_uj is root-only since Linux 5.10).
    #[error("{0}")]
    Permission(String),
    /// A reading failed or made no sense.
    #[error("{0}")]
    Read(String),
    /// The device is gone for good (NVML's `GPU_IS_LOST`): no later reading will succeed, so the
    /// meter hands over to the estimate.
    #[error("{0}")]
    Lost(String),
}

/// A device's energy counter, as seen by this process.
pub trait EnergySource: Send {
    /// How it measures, as reported in `x-energy-source`: `nvml-counter`, `nvml-power`, `rapl`
    /// or `estimate`.
    fn method(&self) -> &'static str;

    /// The device label for metrics (`cpu`, `gpu0`, ...).
    fn device(&self) -> String;

    /// Energy since the source started, joules: monotonic, counter wraps already handled.
    fn read(&mut self) -> Result<f64, SourceError>;
}

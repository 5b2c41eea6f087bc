//! Server configuration: an optional TOML file, overridden by environment variables
//! (`WATTSERVE_*`) and command-line flags, validated once at start.
//!
//! Precedence, highest first: CLI flag, environment variable, config file, built-in default.
//! (clap merges the first two into [`Overrides`].)

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::meter::settings::{CarbonConfig, CostConfig, EnergyConfig, SourceChoice};

/// Why the configuration cannot be used. Every variant names the file and/or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema (unknown field, wrong type).
    #[error("{path}:{line}:{column}: {message}{context}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// What is wrong.
        message: String,
        /// The offending line, quoted, when known.
        context: String,
    },
    /// A value parses but is not acceptable.
    #[error("{source_name}: `{field}` {message}")]
    Invalid {
        /// Where the value came from (a file path, or "command line / environment").
        source_name: String,
        /// The dotted field name, e.g. `limits.max_body_bytes`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole server configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listening address and model selection.
    pub server: ServerConfig,
    /// Request limits.
    pub limits: Limits,
    /// Compute runtime knobs.
    pub runtime: RuntimeConfig,
    /// Energy measurement.
    pub energy: EnergyConfig,
    /// Grid carbon intensity and embodied carbon.
    pub carbon: CarbonConfig,
    /// Electricity and hardware prices.
    pub cost: CostConfig,
    /// API keys.
    pub auth: AuthConfig,
    /// The usage ledger.
    pub usage: UsageConfig,
    /// The energy label's thresholds.
    pub energy_class: crate::meter::class::ClassConfig,
    /// Spending limits per tenant or project (`[[budgets]]`).
    pub budgets: Vec<crate::governance::budgets::BudgetConfig>,
    /// The response cache.
    pub cache: crate::cache::CacheConfig,
    /// Input drift monitoring.
    pub drift: crate::drift::DriftConfig,
}

/// `[usage]`: the durable usage ledger (one record per finished request) behind `/v1/usage`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Keep the ledger. Default true.
    pub enabled: bool,
    /// The SQLite file. Default `wattserve-usage.sqlite` in the working directory.
    pub path: PathBuf,
    /// How often records are written, ms: a crash loses at most this much. Default 1000.
    pub flush_interval_ms: u64,
    /// Request records older than this many days are deleted; 0 keeps them all. Default 90.
    /// The hourly and daily sums (what `/v1/usage`, the FOCUS export and budgets read for whole
    /// hours and days) are kept apart.
    pub retention_days: u64,
    /// Hourly sums older than this many days are deleted; 0 keeps them all. Default 400.
    pub hourly_retention_days: u64,
    /// Daily sums older than this many days are deleted; 0 (the default) keeps them all.
    pub daily_retention_days: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: PathBuf::from("wattserve-usage.sqlite"),
            flush_interval_ms: 1000,
            retention_days: 90,
            hourly_retention_days: 400,
            daily_retention_days: 0,
        }
    }
}

/// `days` as a duration; 0 is `None` (for ever).
fn days(days: u64) -> Option<std::time::Duration> {
    (days > 0).then(|| std::time::Duration::from_secs(days.saturating_mul(86_400)))
}

impl UsageConfig {
    /// The ledger's settings.
    pub fn settings(&self) -> crate::governance::ledger::LedgerSettings {
        crate::governance::ledger::LedgerSettings {
            flush_interval: std::time::Duration::from_millis(self.flush_interval_ms),
            retention: crate::governance::ledger::Retention {
                requests: days(self.retention_days),
                hourly: days(self.hourly_retention_days),
                daily: days(self.daily_retention_days),
            },
        }
    }
}

/// `[auth]`: API keys. Off unless a keys file is named or `WATTSERVE_API_KEYS` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File of `NAME SHA256-OF-KEY` lines (`#` comments); the name is the key's tenant.
    /// `WATTSERVE_API_KEYS` (the same entries, comma-separated) takes precedence.
    pub keys_file: Option<PathBuf>,
    /// Paths served without a key. Default `/health` and `/ready` (probes).
    pub open_paths: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            keys_file: None,
            open_paths: vec!["/health".into(), "/ready".into()],
        }
    }
}

/// `[server]`: where to listen and what to serve.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Interface to bind. Default `127.0.0.1`; use `0.0.0.0` in containers.
    pub host: String,
    /// TCP port; 0 picks a free one. Default 8080.
    pub port: u16,
    /// The model repository: one folder per model with a `model.toml`. Default `models`.
    pub models_dir: PathBuf,
    /// Folder names of the models to serve; empty = every folder with a `model.toml`.
    pub models: Vec<String>,
    /// Serve every selected model at this precision instead of its model.toml's.
    pub precision: Option<crate::engine::Precision>,
    /// Time a client has to send a request's headers; an idle keep-alive connection is closed
    /// after the same time. Default 10000 ms.
    pub header_read_timeout_ms: u64,
    /// Largest request head (request line and headers), bytes; 431 beyond. At least 8192.
    /// Default 16384.
    pub max_header_bytes: usize,
    /// Most connections open at once; more wait in the accept backlog. Default 1024.
    pub max_connections: usize,
    /// On SIGTERM / Ctrl-C: time in-flight requests get to finish before open streams are
    /// ended with an error event and remaining connections are closed. Default 30 s.
    pub shutdown_grace_s: f64,
    /// A port of its own for `GET /metrics` (same host, no API key: restrict it by network, as
    /// for TEI's and Triton's metrics ports). `None`: `/metrics` only on the main port.
    pub metrics_port: Option<u16>,
    /// The port of the Open Inference Protocol's gRPC service (`GRPCInferenceService`, same
    /// host, API keys as on HTTP). `None`: no gRPC.
    pub grpc_port: Option<u16>,
    /// Browser origins (`https://app.example.com`) allowed to call the API from a web page;
    /// `["*"]` allows any. Default none: no CORS headers, browsers refuse cross-site calls.
    pub cors_allowed_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            models_dir: PathBuf::from("models"),
            models: Vec::new(),
            precision: None,
            header_read_timeout_ms: 10_000,
            max_header_bytes: 16 * 1024,
            max_connections: 1024,
            shutdown_grace_s: 30.0,
            cors_allowed_origins: Vec::new(),
            metrics_port: None,
            grpc_port: None,
        }
    }
}

impl ServerConfig {
    /// `header_read_timeout_ms` as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// `shutdown_grace_s` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace_s)
    }
}

/// `[limits]`: what one request may ask for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body in bytes (413 beyond). Default 2 MiB.
    pub max_body_bytes: usize,
    /// Most inputs in one embeddings request (400 beyond). Default 2048, as OpenAI.
    pub max_inputs_per_request: usize,
    /// Time from arrival to response before the server answers 504. Default 60000 ms.
    pub request_timeout_ms: u64,
    /// Time the whole request body has to arrive once the headers are in (408 beyond).
    /// Default 30000 ms.
    pub body_read_timeout_ms: u64,
    /// Most tokens one completion may ask for (`max_tokens` above it: 400). Default 4096.
    pub max_completion_tokens: usize,
    /// Tokens generated at most when a request gives no `max_tokens` (and the context allows).
    /// Default 1024.
    pub default_completion_tokens: usize,
    /// Whether requests may set `ignore_eos` (generate past the end of the answer, for
    /// benchmarks). Default false: 400 `invalid_value`.
    pub allow_ignore_eos: bool,
    /// Largest text of one embedding input, or of a completion's prompt (all messages
    /// together), in bytes, checked before tokenizing (400 beyond). Default 65536.
    pub max_input_bytes: usize,
    /// Tokenizations (and chat-template renderings) running at once on the blocking pool;
    /// more wait, within their request's deadline. 0 = one per CPU core. Default 0.
    pub tokenizer_concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 2 * 1024 * 1024,
            max_inputs_per_request: 2048,
            request_timeout_ms: 60_000,
            body_read_timeout_ms: 30_000,
            max_completion_tokens: 4096,
            default_completion_tokens: 1024,
            allow_ignore_eos: false,
            max_input_bytes: 64 * 1024,
            tokenizer_concurrency: 0,
        }
    }
}

impl Limits {
    /// `request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// `tokenizer_concurrency`, with 0 resolved to the number of CPU cores.
    pub fn tokenizers(&self) -> usize {
        if self.tokenizer_concurrency > 0 {
            self.tokenizer_concurrency
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }

    /// `body_read_timeout_ms` as a duration.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }
}

/// `[runtime]`: compute threads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads candle's CPU kernels use; 0 = one per core (or `RAYON_NUM_THREADS` when set).
    pub threads: usize,
}

/// Values given on the command line or in `WATTSERVE_*` variables; `None` leaves the file's
/// (or the default) value. The one list of these flags: `wattserve serve` and `wattserve bench`
/// flatten it into their own arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Interface to bind [default: 127.0.0.1].
    #[arg(long, env = "WATTSERVE_HOST")]
    pub host: Option<String>,
    /// TCP port, 0 for any free one [default: 8080].
    #[arg(long, env = "WATTSERVE_PORT")]
    pub port: Option<u16>,
    /// Also serve the Open Inference Protocol over gRPC on this port (0 for any free one)
    /// [default: off].
    #[arg(long, env = "WATTSERVE_GRPC_PORT")]
    pub grpc_port: Option<u16>,
    /// The model repository [default: models].
    #[arg(long, env = "WATTSERVE_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Serve only this model folder (repeatable; env: comma-separated) [default: all].
    #[arg(long = "model", env = "WATTSERVE_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,
    /// CPU compute threads, 0 = one per core [default: 0].
    #[arg(long, env = "WATTSERVE_THREADS")]
    pub threads: Option<usize>,
    /// The usage ledger's SQLite file [default: wattserve-usage.sqlite].
    #[arg(long, env = "WATTSERVE_USAGE_PATH")]
    pub usage_path: Option<PathBuf>,
    /// Serve every selected model at this precision (f32, f16, bf16, int8) instead of its
    /// model.toml's.
    #[arg(long, env = "WATTSERVE_PRECISION")]
    pub precision: Option<crate::engine::Precision>,
}

/// The file read when no `--config` is given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "wattserve.toml";

impl Config {
    /// Reads `file` (or `wattserve.toml` in the working directory when `file` is `None` and it
    /// exists), applies `overrides`, validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => Config::default(),
        };
        config.apply(overrides);
        config.validate(&file.map_or_else(
            || "command line / environment".to_string(),
            |p| p.display().to_string(),
        ))?;
        Ok(config)
    }

    /// Parses a TOML file, reporting line, column and the offending line on error.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        parse_toml(path, &text)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(h) = &o.host {
            self.server.host = h.clone();
        }
        if let Some(p) = o.port {
            self.server.port = p;
        }
        if let Some(p) = o.grpc_port {
            self.server.grpc_port = Some(p);
        }
        if let Some(d) = &o.models_dir {
            self.server.models_dir = d.clone();
        }
        if !o.models.is_empty() {
            self.server.models = o.models.clone();
        }
        if let Some(t) = o.threads {
            self.runtime.threads = t;
        }
        if let Some(p) = &o.usage_path {
            self.usage.path = p.clone();
        }
        if let Some(p) = o.precision {
            self.server.precision = Some(p);
        }
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: &str| ConfigError::Invalid {
            source_name: source_name.to_string(),
            field: field.to_string(),
            message: message.to_string(),
        };
        if self.server.host.trim().is_empty() {
            return Err(invalid("server.host", "must not be empty"));
        }
        if self.server.header_read_timeout_ms == 0 {
            return Err(invalid(
                "server.header_read_timeout_ms",
                "must be at least 1",
            ));
        }
        if self.server.max_header_bytes < 8192 {
            return Err(invalid(
                "server.max_header_bytes",
                "must be at least 8192 (the smallest buffer the HTTP parser accepts)",
            ));
        }
        if let Some(bad) = self.server.cors_allowed_origins.iter().find(|o| {
            let o = o.as_str();
            o != "*"
                && !((o.starts_with("http://") || o.starts_with("https://"))
                    && !o.ends_with('/')
                    && o.is_ascii()
                    && !o.contains(char::is_whitespace))
        }) {
            return Err(invalid(
                "server.cors_allowed_origins",
                &format!(
                    "{bad:?} is not an origin: write scheme://host[:port] with no path, or \"*\""
                ),
            ));
        }
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if !(self.server.shutdown_grace_s.is_finite()
            && (0.0..=3600.0).contains(&self.server.shutdown_grace_s))
        {
            return Err(invalid(
                "server.shutdown_grace_s",
                "must be a number of seconds between 0 and 3600",
            ));
        }
        if self.limits.max_body_bytes == 0 {
            return Err(invalid("limits.max_body_bytes", "must be at least 1"));
        }
        self.energy_class
            .check()
            .map_err(|m| invalid("energy_class", &m))?;
        for b in &self.budgets {
            b.check().map_err(|m| invalid("budgets", &m))?;
        }
        if !self.budgets.is_empty() && !self.usage.enabled {
            return Err(invalid(
                "budgets",
                "budgets need the usage ledger (usage.enabled = true) to survive restarts",
            ));
        }
        if self.usage.enabled && !(1..=60_000).contains(&self.usage.flush_interval_ms) {
            return Err(invalid(
                "usage.flush_interval_ms",
                "must be between 1 and 60000 (a crash loses at most this many ms of records)",
            ));
        }
        if self.limits.max_inputs_per_request == 0 {
            return Err(invalid(
                "limits.max_inputs_per_request",
                "must be at least 1",
            ));
        }
        if self.limits.max_input_bytes == 0 {
            return Err(invalid("limits.max_input_bytes", "must be at least 1"));
        }
        if self.limits.max_completion_tokens == 0 {
            return Err(invalid(
                "limits.max_completion_tokens",
                "must be at least 1",
            ));
        }
        if self.limits.default_completion_tokens == 0
            || self.limits.default_completion_tokens > self.limits.max_completion_tokens
        {
            return Err(invalid(
                "limits.default_completion_tokens",
                "must be between 1 and limits.max_completion_tokens",
            ));
        }
        if self.limits.body_read_timeout_ms == 0 {
            return Err(invalid("limits.body_read_timeout_ms", "must be at least 1"));
        }
        if self.limits.request_timeout_ms == 0 {
            return Err(invalid("limits.request_timeout_ms", "must be at least 1"));
        }
        if self.energy.sample_interval_ms == 0 {
            return Err(invalid("energy.sample_interval_ms", "must be at least 1"));
        }
        let positive = |v: f64| v.is_finite() && v >= 0.0;
        for (field, v) in [
            ("energy.cpu_watts_per_core", self.energy.cpu_watts_per_core),
            ("energy.dram_watts_per_gb", self.energy.dram_watts_per_gb),
            ("carbon.embodied_kgco2e", self.carbon.embodied_kgco2e),
            (
                "cost.electricity_usd_per_kwh",
                self.cost.electricity_usd_per_kwh,
            ),
            (
                "cost.hardware_usd_per_hour",
                self.cost.hardware_usd_per_hour,
            ),
        ] {
            if !positive(v) {
                return Err(invalid(field, "must be a number >= 0"));
            }
        }
        if !(self.cost.pue.is_finite() && self.cost.pue >= 1.0) {
            return Err(invalid("cost.pue", "must be >= 1.0"));
        }
        if !(self.carbon.lifetime_years.is_finite() && self.carbon.lifetime_years > 0.0) {
            return Err(invalid("carbon.lifetime_years", "must be > 0"));
        }
        match self.carbon.intensity {
            Some(i) if !positive(i) => {
                return Err(invalid("carbon.intensity", "must be a number >= 0"))
            }
            Some(_) => {}
            None => {
                if crate::meter::zones::find(&self.carbon.zone).is_none() {
                    return Err(invalid(
                        "carbon.zone",
                        &format!(
                            "`{}` is not in the built-in table (see src/meter/zones.rs), and no carbon.intensity is set",
                            self.carbon.zone
                        ),
                    ));
                }
            }
        }
        if let Some(bad) = self.server.models.iter().find(|m| m.trim().is_empty()) {
            return Err(invalid(
                "server.models",
                &format!("contains an empty name {bad:?}"),
            ));
        }
        Ok(())
    }
}

/// Deserializes TOML text into `T`, turning errors into [`ConfigError::Parse`] with line and
/// column. Shared by the server config and the model repository's `model.toml` files.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column, context) = match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                let src_line = text.lines().nth(line - 1).unwrap_or("").trim();
                let context = if src_line.is_empty() {
                    String::new()
                } else {
                    format!(" (in `{src_line}`)")
                };
                (line, column, context)
            }
            None => (1, 1, String::new()),
        };
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().trim().to_string(),
            context,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let c = Config::default();
        assert_eq!(c.server.port, 8080);
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.limits.max_body_bytes, 2 * 1024 * 1024);
        assert_eq!(c.limits.max_inputs_per_request, 2048);
        assert_eq!(c.limits.request_timeout(), Duration::from_secs(60));
    }

    #[test]
    fn overrides_beat_the_file() {
        let f = write("[server]\nport = 9000\nhost = \"0.0.0.0\"\n[limits]\nmax_body_bytes = 10\n");
        let o = Overrides {
            port: Some(9100),
            ..Default::default()
        };
        let c = Config::load(Some(f.path()), &o).unwrap();
        assert_eq!(c.server.port, 9100);
        assert_eq!(c.server.host, "0.0.0.0");
        assert_eq!(c.limits.max_body_bytes, 10);
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let f = write("[server]\nport = 9000\nprot = 1\n");
        let err = Config::load(Some(f.path()), &Overrides::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(msg.contains(":3:"), "{msg}");
        assert!(msg.contains("prot"), "{msg}");
    }

    #[test]
    fn wrong_type_quotes_the_line() {
        let f = write("[server]\nport = \"eighty\"\n");
        let msg = Config::load(Some(f.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains(":2:"), "{msg}");
        assert!(msg.contains("port = \"eighty\""), "{msg}");
    }

    #[test]
    fn zero_limits_are_rejected_by_name() {
        let f = write("[limits]\nmax_inputs_per_request = 0\n");
        let msg = Config::load(Some(f.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("limits.max_inputs_per_request"), "{msg}");
    }
}

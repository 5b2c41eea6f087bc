//! What `wattserve tco` reads: the measured side from `wattserve bench --json` reports (the
//! throughput a model sustains at each load, its latency percentiles and its energy per unit of
//! work), and the options to price it on, parsed from the command line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::TcoError;

/// The part of a bench report the TCO needs (other fields are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct BenchFile {
    /// Embedding levels.
    #[serde(default)]
    pub levels: Vec<EmbeddingLevel>,
    /// Generation levels.
    #[serde(default)]
    pub generation: Vec<GenerationLevel>,
    /// Each model's precision and energy label.
    #[serde(default)]
    pub energy_labels: Vec<Label>,
}

/// One embedding level of a bench report.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingLevel {
    /// Model name.
    pub model: String,
    /// `c=N` or `rate=R/s`.
    pub load: String,
    /// The protocol the level used.
    #[serde(default = "openai")]
    pub protocol: String,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Latency percentiles, ms.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 95th percentile (reports from before it was recorded have none).
    #[serde(default)]
    pub p95_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Failures by status.
    #[serde(default)]
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Mean joules per request.
    pub joules_per_request: Option<f64>,
}

fn openai() -> String {
    "openai".into()
}

/// One generation level of a bench report.
#[derive(Debug, Clone, Deserialize)]
pub struct GenerationLevel {
    /// Model name.
    pub model: String,
    /// Concurrent streams.
    pub streams: usize,
    /// Failed completions.
    #[serde(default)]
    pub errors: u64,
    /// Output tokens per second, all streams.
    pub tokens_per_s: f64,
    /// Time to first token, ms.
    pub ttft_p50_ms: f64,
    /// 99th percentile.
    pub ttft_p99_ms: f64,
    /// Joules per output token.
    pub joules_per_token: Option<f64>,
}

/// A model's label line of a bench report.
#[derive(Debug, Clone, Deserialize)]
pub struct Label {
    /// Model name.
    pub model: String,
    /// Its precision.
    #[serde(default)]
    pub precision: String,
}

/// A latency objective: percentile `percentile` at most `ms` (request latency for embeddings,
/// time to first token for generation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slo {
    /// 50, 90, 95 or 99.
    pub percentile: u8,
    /// Milliseconds.
    pub ms: f64,
}

impl std::str::FromStr for Slo {
    type Err = String;

    /// `p99=250ms`, `p95:0.2s`, `p50=80`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}`: expected pNN=DURATION, e.g. p99=250ms or p95=0.5s");
        let (p, d) = s.split_once(['=', ':']).ok_or_else(bad)?;
        let percentile: u8 = p
            .trim()
            .strip_prefix('p')
            .and_then(|n| n.parse().ok())
            .ok_or_else(bad)?;
        if ![50, 90, 95, 99].contains(&percentile) {
            return Err(format!(
                "`{s}`: percentile p{percentile} is not measured (use p50, p90, p95 or p99)"
            ));
        }
        let d = d.trim();
        let ms = if let Some(v) = d.strip_suffix("ms") {
            v.trim().parse::<f64>().ok()
        } else if let Some(v) = d.strip_suffix('s') {
            v.trim().parse::<f64>().ok().map(|s| s * 1000.0)
        } else {
            d.parse::<f64>().ok()
        }
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or_else(bad)?;
        Ok(Slo { percentile, ms })
    }
}

impl std::fmt::Display for Slo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p{} ≤ {} ms", self.percentile, self.ms)
    }
}

/// How a machine is paid for.
#[derive(Debug, Clone, PartialEq)]
pub enum Payment {
    /// Rented by the hour; the electricity is in the price.
    Cloud {
        /// USD per machine-hour.
        usd_per_hour: f64,
    },
    /// Bought; its price spread evenly over its lifetime, its electricity paid apart.
    Owned {
        /// Purchase price, USD.
        price_usd: f64,
    },
}

/// A hardware option: how a machine is paid for, what it draws idle, its embodied carbon.
#[derive(Debug, Clone, PartialEq)]
pub struct Hardware {
    /// The option's name.
    pub name: String,
    /// Rented or bought.
    pub payment: Payment,
    /// Power the machine draws when it serves nothing, W (its work's energy is measured).
    pub idle_watts: f64,
    /// Embodied emissions of one machine, kgCO2e.
    pub embodied_kgco2e: f64,
    /// Years over which the price (owned) and the embodied emissions are spread.
    pub lifetime_years: f64,
}

impl std::str::FromStr for Hardware {
    type Err = String;

    /// `NAME:usd_per_hour=0.09,idle_watts=20` or
    /// `NAME:price_usd=3000,lifetime_years=4,idle_watts=60,embodied_kgco2e=1200`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = s.split_once(':').ok_or_else(|| {
            format!("`{s}`: expected NAME:usd_per_hour=X[,...] or NAME:price_usd=X[,...]")
        })?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("`{s}`: the option needs a name before `:`"));
        }
        let mut hourly = None;
        let mut price = None;
        let mut h = Hardware {
            name: name.to_string(),
            payment: Payment::Cloud { usd_per_hour: 0.0 },
            idle_watts: 0.0,
            embodied_kgco2e: 0.0,
            lifetime_years: 4.0,
        };
        for kv in rest.split(',').filter(|kv| !kv.trim().is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("`{kv}` in `{s}`: expected key=value"))?;
            let v: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("`{kv}` in `{s}`: the value must be a number ≥ 0"))?;
            match k.trim() {
                "usd_per_hour" => hourly = Some(v),
                "price_usd" => price = Some(v),
                "idle_watts" => h.idle_watts = v,
                "embodied_kgco2e" => h.embodied_kgco2e = v,
                "lifetime_years" if v > 0.0 => h.lifetime_years = v,
                "lifetime_years" => return Err(format!("`{s}`: lifetime_years must be > 0")),
                other => {
                    return Err(format!(
                        "`{other}` in `{s}`: unknown key (usd_per_hour, price_usd, idle_watts, embodied_kgco2e, lifetime_years)"
                    ))
                }
            }
        }
        h.payment = match (hourly, price) {
            (Some(usd_per_hour), None) => Payment::Cloud { usd_per_hour },
            (None, Some(price_usd)) => Payment::Owned { price_usd },
            _ => {
                return Err(format!(
                    "`{s}`: give exactly one of usd_per_hour (rented) or price_usd (bought)"
                ))
            }
        };
        Ok(h)
    }
}

/// A grid zone to price carbon in: a code of the built-in table, or `NAME=G` (gCO2e/kWh).
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// Its code or name.
    pub name: String,
    /// Grid intensity, gCO2e/kWh.
    pub g_per_kwh: f64,
}

impl std::str::FromStr for Zone {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((name, g)) = s.split_once('=') {
            let g_per_kwh = g
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|g| g.is_finite() && *g >= 0.0)
                .ok_or_else(|| format!("`{s}`: the intensity must be gCO2e/kWh ≥ 0"))?;
            return Ok(Zone {
                name: name.trim().to_string(),
                g_per_kwh,
            });
        }
        let z = crate::meter::zones::find(s.trim()).ok_or_else(|| {
            format!("`{s}`: not a zone of the built-in table (use CODE=gCO2e_per_kWh for another)")
        })?;
        Ok(Zone {
            name: z.code.to_string(),
            g_per_kwh: z.g_per_kwh,
        })
    }
}

/// A bench report and the hardware it was measured on (`FILE@HARDWARE`; without `@`, the
/// only hardware option).
#[derive(Debug, Clone, PartialEq)]
pub struct BenchSource {
    /// The JSON file.
    pub path: PathBuf,
    /// The hardware option's name.
    pub hardware: Option<String>,
}

impl std::str::FromStr for BenchSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.rsplit_once('@') {
            Some((path, hw)) if !hw.is_empty() && !hw.contains('/') => BenchSource {
                path: PathBuf::from(path),
                hardware: Some(hw.to_string()),
            },
            _ => BenchSource {
                path: PathBuf::from(s),
                hardware: None,
            },
        })
    }
}

/// Reads a bench report.
pub fn read_bench(path: &Path) -> Result<BenchFile, TcoError> {
    let text = std::fs::read_to_string(path).map_err(|e| TcoError::Input {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| TcoError::Input {
        path: path.to_path_buf(),
        message: format!("not a `wattserve bench --json` report: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_bad_ones_say_why() {
        let slo: Slo = "p99=250ms".parse().unwrap();
        assert_eq!((slo.percentile, slo.ms), (99, 250.0));
        assert_eq!("p95:0.5s".parse::<Slo>().unwrap().ms, 500.0);
        assert!("p97=1s".parse::<Slo>().unwrap_err().contains("p97"));
        assert!("99=1s".parse::<Slo>().is_err());
        let h: Hardware = "vm:usd_per_hour=0.1,idle_watts=20".parse().unwrap();
        assert_eq!(h.payment, Payment::Cloud { usd_per_hour: 0.1 });
        assert_eq!(h.idle_watts, 20.0);
        let h: Hardware = "box:price_usd=3000,lifetime_years=5".parse().unwrap();
        assert_eq!(h.payment, Payment::Owned { price_usd: 3000.0 });
        assert_eq!(h.lifetime_years, 5.0);
        assert!("x:usd_per_hour=1,price_usd=2"
            .parse::<Hardware>()
            .unwrap_err()
            .contains("exactly one"));
        assert!("x:watts=3"
            .parse::<Hardware>()
            .unwrap_err()
            .contains("unknown key"));
        assert!("x:usd_per_hour=-1".parse::<Hardware>().is_err());
        assert_eq!(
            "north=30".parse::<Zone>().unwrap(),
            Zone {
                name: "north".into(),
                g_per_kwh: 30.0
            }
        );
        assert!("FR".parse::<Zone>().unwrap().g_per_kwh > 0.0);
        assert!("ATLANTIS".parse::<Zone>().is_err());
        let b: BenchSource = "a/f32.json@vm".parse().unwrap();
        assert_eq!(b.hardware.as_deref(), Some("vm"));
        let b: BenchSource = "a@b/f32.json".parse().unwrap();
        assert_eq!(b.path, PathBuf::from("a@b/f32.json"));
    }
}

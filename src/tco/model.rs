//! The arithmetic of `wattserve tco`: for one measured model on one hardware option in one grid
//! zone, how many machines the traffic needs at its peak under the latency objective, the
//! energy and CO2e of a year, the cost per million units of work, and the N-year total cost of
//! ownership split into hardware, energy and operations. Every formula is in docs/tco.md.

use serde::Serialize;

use super::inputs::{Hardware, Payment, Slo, Zone};

/// Hours in a year (365 days: the traffic profile is per day).
pub const HOURS_PER_YEAR: f64 = 365.0 * 24.0;

/// What the measurements say a model sustains on one machine under the objective.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// The model.
    pub model: String,
    /// Its precision.
    pub precision: String,
    /// `requests` (embeddings) or `output tokens` (generation).
    pub unit: &'static str,
    /// The bench level chosen: the highest throughput whose latency meets the objective.
    pub level: String,
    /// Units per second one machine sustains there.
    pub per_second: f64,
    /// The level's latency at the objective's percentile, ms.
    pub latency_ms: f64,
    /// Joules per unit measured there.
    pub joules_per_unit: f64,
    /// The hardware option the bench ran on.
    pub hardware: String,
}

/// The traffic to serve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Traffic {
    /// Units per day in the first year.
    pub per_day: f64,
    /// Peak rate over mean rate.
    pub peak_to_mean: f64,
    /// Growth per year (0.2 = +20% a year).
    pub growth: f64,
}

/// Prices and conditions shared by every option.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Economics {
    /// Facility overhead on the machines' energy.
    pub pue: f64,
    /// USD per kWh (paid for owned machines; in the price of rented ones).
    pub usd_per_kwh: f64,
    /// Fixed operating cost, USD per month.
    pub ops_usd_per_month: f64,
}

/// One year of one option.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Year {
    /// 1, 2, ...
    pub year: u32,
    /// Units of work served.
    pub units: f64,
    /// Peak rate, units per second.
    pub peak_per_second: f64,
    /// Machines needed at the peak.
    pub machines: u64,
    /// Facility energy (work + idle, × PUE), kWh.
    pub kwh: f64,
    /// Operational emissions, kgCO2e.
    pub co2e_operational_kg: f64,
    /// The machines' share of their embodied emissions, kgCO2e.
    pub co2e_embodied_kg: f64,
    /// Hardware: rent, or the purchase price spread over the lifetime, USD.
    pub hardware_usd: f64,
    /// Electricity paid apart (owned machines), USD.
    pub energy_usd: f64,
    /// Operations, USD.
    pub ops_usd: f64,
}

impl Year {
    /// All its costs, USD.
    pub fn total_usd(&self) -> f64 {
        self.hardware_usd + self.energy_usd + self.ops_usd
    }

    /// All its emissions, kgCO2e.
    pub fn co2e_kg(&self) -> f64 {
        self.co2e_operational_kg + self.co2e_embodied_kg
    }
}

/// The sum of the first `years` years.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Horizon {
    /// How many years.
    pub years: u32,
    /// Hardware, USD.
    pub hardware_usd: f64,
    /// Energy, USD.
    pub energy_usd: f64,
    /// Operations, USD.
    pub ops_usd: f64,
    /// The total cost of ownership, USD.
    pub total_usd: f64,
    /// Emissions, kgCO2e (operational and embodied).
    pub co2e_kg: f64,
    /// Facility energy, kWh.
    pub kwh: f64,
}

/// One model × precision × hardware × zone.
#[derive(Debug, Clone, Serialize)]
pub struct Priced {
    /// What one machine sustains.
    pub capacity: Capacity,
    /// The zone.
    pub zone: String,
    /// Its intensity, gCO2e/kWh.
    pub g_per_kwh: f64,
    /// Year by year, up to the longest horizon.
    pub years: Vec<Year>,
    /// Each horizon asked for.
    pub horizons: Vec<Horizon>,
    /// The first year's cost per million units, USD.
    pub usd_per_million: f64,
    /// The first year's emissions per million units, gCO2e.
    pub co2e_g_per_million: f64,
}

impl Priced {
    /// The sums over the first `years` years, when that horizon was asked for.
    pub fn horizon(&self, years: u32) -> Option<&Horizon> {
        self.horizons.iter().find(|h| h.years == years)
    }
}

/// Prices `capacity` on `hardware` in `zone` for `traffic`, year by year up to the largest of
/// `horizons`.
pub fn price(
    capacity: &Capacity,
    hardware: &Hardware,
    zone: &Zone,
    traffic: Traffic,
    economics: Economics,
    horizons: &[u32],
) -> Priced {
    let last = horizons.iter().copied().max().unwrap_or(1).max(1);
    let years: Vec<Year> = (1..=last)
        .map(|y| year(y, capacity, hardware, zone, traffic, economics))
        .collect();
    let horizons = horizons
        .iter()
        .map(|&n| {
            let span = &years[..n.min(last) as usize];
            let sum = |f: &dyn Fn(&Year) -> f64| span.iter().map(f).sum::<f64>();
            Horizon {
                years: n,
                hardware_usd: sum(&|y| y.hardware_usd),
                energy_usd: sum(&|y| y.energy_usd),
                ops_usd: sum(&|y| y.ops_usd),
                total_usd: sum(&|y| y.total_usd()),
                co2e_kg: sum(&|y| y.co2e_kg()),
                kwh: sum(&|y| y.kwh),
            }
        })
        .collect();
    let first = &years[0];
    let per_million = |x: f64| {
        if first.units > 0.0 {
            x / first.units * 1e6
        } else {
            0.0
        }
    };
    Priced {
        capacity: capacity.clone(),
        zone: zone.name.clone(),
        g_per_kwh: zone.g_per_kwh,
        usd_per_million: per_million(first.total_usd()),
        co2e_g_per_million: per_million(first.co2e_kg() * 1000.0),
        years,
        horizons,
    }
}

fn year(
    y: u32,
    capacity: &Capacity,
    hardware: &Hardware,
    zone: &Zone,
    traffic: Traffic,
    economics: Economics,
) -> Year {
    let per_day = traffic.per_day * (1.0 + traffic.growth).powi(y as i32 - 1);
    let units = per_day * 365.0;
    let peak_per_second = per_day / 86_400.0 * traffic.peak_to_mean;
    let machines = ((peak_per_second / capacity.per_second).ceil() as u64).max(1);
    // Machine-hours spent computing; the rest of the machines' time they idle.
    let busy_hours = units / capacity.per_second / 3600.0;
    let idle_hours = (machines as f64 * HOURS_PER_YEAR - busy_hours).max(0.0);
    let work_kwh = units * capacity.joules_per_unit / 3.6e6;
    let idle_kwh = hardware.idle_watts * idle_hours / 1000.0;
    let kwh = (work_kwh + idle_kwh) * economics.pue;
    let (hardware_usd, energy_usd) = match hardware.payment {
        Payment::Cloud { usd_per_hour } => (machines as f64 * HOURS_PER_YEAR * usd_per_hour, 0.0),
        Payment::Owned { price_usd } => (
            machines as f64 * price_usd / hardware.lifetime_years,
            kwh * economics.usd_per_kwh,
        ),
    };
    Year {
        year: y,
        units,
        peak_per_second,
        machines,
        kwh,
        co2e_operational_kg: kwh * zone.g_per_kwh / 1000.0,
        co2e_embodied_kg: machines as f64 * hardware.embodied_kgco2e / hardware.lifetime_years,
        hardware_usd,
        energy_usd,
        ops_usd: economics.ops_usd_per_month * 12.0,
    }
}

/// The level [`best_level`] chose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chosen<'a> {
    /// Its label.
    pub level: &'a str,
    /// Units per second.
    pub per_second: f64,
    /// Its latency at the objective's percentile, ms.
    pub latency_ms: f64,
    /// Joules per unit.
    pub joules: f64,
}

/// Every level seen and its latency at the objective's percentile (`None`: not measured).
pub type Seen<'a> = Vec<(&'a str, Option<f64>)>;

/// The level of a model that meets `slo` with the highest throughput; when none does, every
/// level seen.
pub fn best_level<'a>(
    slo: Slo,
    candidates: impl Iterator<Item = Candidate<'a>>,
) -> Result<Chosen<'a>, Seen<'a>> {
    let mut best: Option<Chosen<'a>> = None;
    let mut seen = Vec::new();
    for c in candidates {
        let latency = (c.latency)(slo.percentile);
        seen.push((c.level, latency));
        let Some(latency_ms) = latency else { continue };
        if c.failed || latency_ms > slo.ms || c.per_second <= 0.0 {
            continue;
        }
        if best.is_none_or(|b| c.per_second > b.per_second) {
            best = Some(Chosen {
                level: c.level,
                per_second: c.per_second,
                latency_ms,
                joules: c.joules,
            });
        }
    }
    best.ok_or(seen)
}

/// One bench level as a candidate for [`best_level`].
pub struct Candidate<'a> {
    /// Its label (`c=8`, `16 streams`).
    pub level: &'a str,
    /// Units per second.
    pub per_second: f64,
    /// Its latency at a percentile, when measured.
    pub latency: Box<dyn Fn(u8) -> Option<f64> + 'a>,
    /// Joules per unit.
    pub joules: f64,
    /// Whether any request of the level failed.
    pub failed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity() -> Capacity {
        Capacity {
            model: "m".into(),
            precision: "f32".into(),
            unit: "requests",
            level: "c=8".into(),
            per_second: 200.0,
            latency_ms: 80.0,
            joules_per_unit: 0.06,
            hardware: "vm".into(),
        }
    }

    const ECON: Economics = Economics {
        pue: 1.5,
        usd_per_kwh: 0.2,
        ops_usd_per_month: 100.0,
    };

    #[test]
    fn a_year_by_hand() {
        // 10M requests a day, peak 3× the mean: 347.2 req/s at the peak, 200 per machine → 2.
        let traffic = Traffic {
            per_day: 10e6,
            peak_to_mean: 3.0,
            growth: 0.0,
        };
        let cloud: Hardware = "vm:usd_per_hour=0.1,idle_watts=20,embodied_kgco2e=1000"
            .parse()
            .unwrap();
        let zone = Zone {
            name: "z".into(),
            g_per_kwh: 400.0,
        };
        let o = price(&capacity(), &cloud, &zone, traffic, ECON, &[3]);
        let y = &o.years[0];
        assert_eq!(y.machines, 2);
        // Work: 3.65e9 × 0.06 J = 60.8333 kWh; busy 5069.44 h of 17520: idle 12450.56 h × 20 W
        // = 249.0111 kWh; × PUE 1.5 = 464.7667 kWh.
        assert!((y.kwh - 464.766_667).abs() < 1e-3, "{}", y.kwh);
        assert!((y.co2e_operational_kg - 185.906_667).abs() < 1e-3);
        assert_eq!(y.co2e_embodied_kg, 500.0);
        // Rent 2 × 8760 h × $0.1 = $1752, electricity in the price, ops $1200.
        assert!((y.hardware_usd - 1752.0).abs() < 1e-9);
        assert_eq!((y.energy_usd, y.ops_usd), (0.0, 1200.0));
        assert!((o.horizons[0].total_usd - 8856.0).abs() < 1e-6);
        assert!((o.usd_per_million - 2952.0 / 3650.0).abs() < 1e-9);
        // Growth: +50% a year needs a third machine in year 2 (520.8 req/s at the peak).
        let grown = price(
            &capacity(),
            &cloud,
            &zone,
            Traffic {
                growth: 0.5,
                ..traffic
            },
            ECON,
            &[2],
        );
        assert_eq!(grown.years[1].machines, 3);
        // Bought instead: $3000 over 4 years per machine ($1500 a year for two), electricity
        // paid apart: 464.7667 kWh × $0.2 = $92.95; with ops $2792.95 a year, $8378.86 in 3.
        let owned: Hardware = "box:price_usd=3000,idle_watts=20".parse().unwrap();
        let o = price(&capacity(), &owned, &zone, traffic, ECON, &[3]);
        assert!((o.years[0].hardware_usd - 1500.0).abs() < 1e-9);
        assert!((o.years[0].energy_usd - 92.953_333).abs() < 1e-5);
        assert_eq!(format!("{:.2}", o.horizons[0].total_usd), "8378.86");
    }

    #[test]
    fn the_fastest_level_within_the_objective_wins() {
        let levels = [
            ("c=1", 100.0, 20.0, false),
            ("c=8", 200.0, 80.0, false),
            ("c=16", 240.0, 95.0, true), // failed requests: not counted
            ("c=32", 250.0, 300.0, false),
        ];
        let candidates = || {
            levels.iter().map(|&(level, rps, p99, failed)| Candidate {
                level,
                per_second: rps,
                latency: Box::new(move |p| (p == 99).then_some(p99)),
                joules: 0.1,
                failed,
            })
        };
        let slo = Slo {
            percentile: 99,
            ms: 100.0,
        };
        assert_eq!(best_level(slo, candidates()).unwrap().level, "c=8");
        let tight = Slo {
            percentile: 99,
            ms: 10.0,
        };
        assert_eq!(best_level(tight, candidates()).unwrap_err().len(), 4);
        let unmeasured = Slo {
            percentile: 95,
            ms: 1000.0,
        };
        assert!(best_level(unmeasured, candidates()).is_err());
    }
}

//! From joules and device-seconds to grams of CO2e and dollars.
//!
//! CO2e follows the Green Software Foundation's SCI (ISO/IEC 21031:2024) per request:
//! `O = E × I` with `E` the energy in kWh including the facility overhead (× PUE) and `I` the grid
//! intensity, plus `M`, the hardware's embodied emissions spread linearly over its lifetime and
//! charged by device-seconds. Cost = `kWh × PUE × price` + device-seconds × hourly hardware cost.

use super::settings::{CarbonConfig, CostConfig};

use super::zones;

/// The constants every request is priced with.
#[derive(Debug, Clone, PartialEq)]
pub struct Pricing {
    /// Zone the intensity came from (`custom` when `carbon.intensity` is set).
    pub zone: String,
    /// Grid intensity, gCO2e/kWh.
    pub intensity_g_per_kwh: f64,
    /// Facility overhead.
    pub pue: f64,
    /// USD per kWh.
    pub usd_per_kwh: f64,
    /// USD per device-hour.
    pub hardware_usd_per_hour: f64,
    /// Embodied gCO2e per device-second.
    pub embodied_g_per_second: f64,
    /// The energy label's thresholds.
    pub classes: super::class::ClassConfig,
}

impl Pricing {
    /// Resolves the configured zone or intensity (validated at start, so the zone exists).
    pub fn from_config(carbon: &CarbonConfig, cost: &CostConfig) -> Self {
        let (zone, intensity) = match carbon.intensity {
            Some(i) => ("custom".to_string(), i),
            None => zones::find(&carbon.zone)
                .map(|z| (z.code.to_string(), z.g_per_kwh))
                .unwrap_or_else(|| (carbon.zone.clone(), 0.0)),
        };
        let lifetime_s = carbon.lifetime_years * 365.25 * 86_400.0;
        Self {
            zone,
            intensity_g_per_kwh: intensity,
            pue: cost.pue,
            usd_per_kwh: cost.electricity_usd_per_kwh,
            hardware_usd_per_hour: cost.hardware_usd_per_hour,
            embodied_g_per_second: carbon.embodied_kgco2e * 1000.0 / lifetime_s,
            classes: super::class::ClassConfig::default(),
        }
    }

    /// The same with the energy label's thresholds `classes`.
    pub fn with_classes(mut self, classes: super::class::ClassConfig) -> Self {
        self.classes = classes;
        self
    }

    /// gCO2e of `joules` of device energy and `device_seconds` of device time.
    pub fn co2e_grams(&self, joules: f64, device_seconds: f64) -> f64 {
        joules / 3.6e6 * self.pue * self.intensity_g_per_kwh
            + device_seconds * self.embodied_g_per_second
    }

    /// USD of `joules` of device energy and `device_seconds` of device time: the sum of
    /// [`Pricing::energy_cost_usd`] and [`Pricing::hardware_cost_usd`].
    pub fn cost_usd(&self, joules: f64, device_seconds: f64) -> f64 {
        self.energy_cost_usd(joules) + self.hardware_cost_usd(device_seconds)
    }

    /// USD of the electricity: `joules` of device energy × PUE × tariff.
    pub fn energy_cost_usd(&self, joules: f64) -> f64 {
        joules / 3.6e6 * self.pue * self.usd_per_kwh
    }

    /// USD of `device_seconds` of the device's time at `cost.hardware_usd_per_hour`.
    pub fn hardware_cost_usd(&self, device_seconds: f64) -> f64 {
        device_seconds * self.hardware_usd_per_hour / 3600.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sci_and_cost_formulas() {
        let carbon = CarbonConfig {
            zone: "WORLD".into(),
            intensity: Some(400.0),
            embodied_kgco2e: 1262.3,
            lifetime_years: 4.0,
        };
        let cost = CostConfig {
            electricity_usd_per_kwh: 0.2,
            pue: 1.5,
            hardware_usd_per_hour: 3.6,
        };
        let p = Pricing::from_config(&carbon, &cost);
        assert_eq!(p.zone, "custom");
        // 3.6 MJ = 1 kWh; × 1.5 PUE × 400 g = 600 g; M: 1262.3 kg over 4 years, for 10 s.
        let m = 1262.3e3 / (4.0 * 365.25 * 86400.0) * 10.0;
        assert!((p.co2e_grams(3.6e6, 10.0) - (600.0 + m)).abs() < 1e-9);
        // 1 kWh × 1.5 × $0.2 + 10 s of a $3.6/h machine.
        assert!((p.cost_usd(3.6e6, 10.0) - (0.3 + 0.01)).abs() < 1e-12);
        assert!((p.energy_cost_usd(3.6e6) - 0.3).abs() < 1e-12);
        assert!((p.hardware_cost_usd(10.0) - 0.01).abs() < 1e-12);
    }
}

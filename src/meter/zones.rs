//! Built-in grid carbon intensities by zone, for `carbon.zone`.
//!
//! Sources:
//!
//! - Countries and `WORLD` ([`EMBER`]): Ember's yearly electricity data (the
//!   `country_overview_yearly` table, field `emissions_intensity_gco2_per_kwh`, latest year with
//!   a value for each country), as snapshotted by The Green Web Foundation's co2.js in
//!   `data/output/average-intensities.json` (github.com/thegreenwebfoundation/co2.js, commit
//!   6628f83f24c2d836fb7ac0dd80eaf5012b27bae4). The year is 2024 for most rows and 2023 where
//!   Ember had no 2024 value; each row carries its own year. Ember divides power-sector
//!   emissions by generation, so these describe each country's generation mix. Our World in
//!   Data's `carbon-intensity-electricity` chart is built on the same Ember series.
//! - Sub-national zones ([`EMAPS`]): Electricity Maps yearly averages for 2024 (API v3
//!   `carbon-intensity/past`, `temporalGranularity=yearly`), as snapshotted by co2.js in
//!   `data/output/electricity-maps/yearly_2024.json` (commit
//!   0bf83c84cb80ff52312601118931f6972715ca08), field `carbonIntensity.value` in gCO2eq/kWh.
//!   By Electricity Maps' default methodology these are life-cycle and consumption-based
//!   (imports flow-traced), so they are not directly comparable with the Ember country rows:
//!   for 2024 Electricity Maps puts the US at 409 and Canada at 132, where Ember has 384 and
//!   175. Codes are Electricity Maps zone ids: provinces and states (`CA-QC`, `AU-NSW`) and, for
//!   the US, balancing authorities (`US-CAL-CISO`, `US-TEX-ERCO`), which follow grid operators
//!   rather than state borders.
//!
//! Values are grams of CO2 (Ember) or CO2e (Electricity Maps) per kWh, rounded half-up to the
//! nearest integer; the comment above each row gives the value as published. No unit conversion
//! was needed. To refresh, re-read the same two files once a newer year is published.

/// One zone of the built-in table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Zone {
    /// Zone code: ISO 3166-1 alpha-2 country, `CC-XX` region (an Electricity Maps zone id, such as
    /// `CA-QC` or `US-CAL-CISO`), or `WORLD`.
    pub code: &'static str,
    /// Human-readable name.
    pub name: &'static str,
    /// Grid carbon intensity, gCO2e/kWh.
    pub g_per_kwh: f64,
    /// Year the value describes.
    pub year: u16,
    /// Short source tag: [`EMBER`] or [`EMAPS`].
    pub source: &'static str,
}

/// Source tag of the country and `WORLD` rows: Ember yearly data as snapshotted by co2.js.
pub const EMBER: &str = "Ember yearly via co2.js average-intensities.json";

/// Source tag of the sub-national rows: Electricity Maps 2024 yearly averages as snapshotted by
/// co2.js.
pub const EMAPS: &str = "Electricity Maps 2024 via co2.js yearly_2024.json";

/// The table, sorted by code.
pub const ZONES: &[Zone] = &[
    // Ember: 492.70 (2023).
    Zone {
        code: "AE",
        name: "United Arab Emirates",
        g_per_kwh: 493.0,
        year: 2023,
        source: EMBER,
    },
    // Ember: 358.95 (2024).
    Zone {
        code: "AR",
        name: "Argentina",
        g_per_kwh: 359.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 102.62 (2024).
    Zone {
        code: "AT",
        name: "Austria",
        g_per_kwh: 103.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 551.59 (2024).
    Zone {
        code: "AU",
        name: "Australia",
        g_per_kwh: 552.0,
        year: 2024,
        source: EMBER,
    },
    // Electricity Maps: 541 (2024).
    Zone {
        code: "AU-NSW",
        name: "New South Wales, Australia",
        g_per_kwh: 541.0,
        year: 2024,
        source: EMAPS,
    },
    // Electricity Maps: 581 (2024).
    Zone {
        code: "AU-QLD",
        name: "Queensland, Australia",
        g_per_kwh: 581.0,
        year: 2024,
        source: EMAPS,
    },
    // Electricity Maps: 187 (2024).
    Zone {
        code: "AU-SA",
        name: "South Australia, Australia",
        g_per_kwh: 187.0,
        year: 2024,
        source: EMAPS,
    },
    // Electricity Maps: 133 (2024).
    Zone {
        code: "AU-TAS",
        name: "Tasmania, Australia",
        g_per_kwh: 133.0,
        year: 2024,
        source: EMAPS,
    },
    // Electricity Maps: 496 (2024).
    Zone {
        code: "AU-VIC",
        name: "Victoria, Australia",
        g_per_kwh: 496.0,
        year: 2024,
        source: EMAPS,
    },
    // Electricity Maps: 395 (2024).
    Zone {
        code: "AU-WA",
        name: "Western Australia, Australia",
        g_per_kwh: 395.0,
        year: 2024,
        source: EMAPS,
    },
    // Ember: 117.58 (2024).
    Zone {
        code: "BE",
        name: "Belgium",
        g_per_kwh: 118.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 264.21 (2024).
    Zone {
        code: "BG",
        name: "Bulgaria",
        g_per_kwh: 264.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 103.21 (2024).
    Zone {
        code: "BR",
        name: "Brazil",
        g_per_kwh: 103.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 174.81 (2024).
    Zone {
        code: "CA",
        name: "Canada",
        g_per_kwh: 175.0,
        year: 2024,
        source: EMBER,
    },
    // Electricity Maps: 402 (2024).
    Zone {
        code: "CA-AB",
        name: "Alberta, Canada",
        g_per_kwh: 402.0,
        year: 2024,
        source: EMAPS,
    },
    // Electricity Maps: 71 (2024).
    Zone {
        code: "CA-BC",
        name: "British Columbia, Canada",
        g_per_kwh: 71.0,
        year: 2024,
        source: EMAPS,
    },
    // Electricity Maps: 55 (2024).
    Zone {
        code: "CA-MB",
        name: "Manitoba, Canada",
        g_per_kwh: 55.0,
        year: 2024,
        source: EMAPS,
    },
    // Electricity Maps: 396 (2024).
    Zone {
        code: "CA-NS",
        name: "Nova Scotia, Canada",
        g_per_kwh: 396.0,
        year: 2024,
        source: EMAPS,
    },
    // Electricity Maps: 91 (2024).
    Zone {
        code: "CA-ON",
        name: "Ontario, Canada",
        g_per_kwh: 91.0,
        year: 2024,
        source: EMAPS,
    },
    // Electricity Maps: 35 (2024).
    Zone {
        code: "CA-QC",
        name: "Quebec, Canada",
        g_per_kwh: 35.0,
        year: 2024,
        source: EMAPS,
    },
    // Ember: 36.60 (2024).
    Zone {
        code: "CH",
        name: "Switzerland",
        g_per_kwh: 37.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 265.52 (2024).
    Zone {
        code: "CL",
        name: "Chile",
        g_per_kwh: 266.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 559.55 (2024).
    Zone {
        code: "CN",
        name: "China",
        g_per_kwh: 560.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 285.80 (2024).
    Zone {
        code: "CO",
        name: "Colombia",
        g_per_kwh: 286.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 413.86 (2024).
    Zone {
        code: "CZ",
        name: "Czechia",
        g_per_kwh: 414.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 344.14 (2024).
    Zone {
        code: "DE",
        name: "Germany",
        g_per_kwh: 344.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 143.30 (2024).
    Zone {
        code: "DK",
        name: "Denmark",
        g_per_kwh: 143.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 341.02 (2024).
    Zone {
        code: "EE",
        name: "Estonia",
        g_per_kwh: 341.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 571.92 (2024).
    Zone {
        code: "EG",
        name: "Egypt",
        g_per_kwh: 572.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 146.15 (2024).
    Zone {
        code: "ES",
        name: "Spain",
        g_per_kwh: 146.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 72.25 (2024).
    Zone {
        code: "FI",
        name: "Finland",
        g_per_kwh: 72.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 44.18 (2024).
    Zone {
        code: "FR",
        name: "France",
        g_per_kwh: 44.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 210.89 (2024).
    Zone {
        code: "GB",
        name: "United Kingdom",
        g_per_kwh: 211.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 319.76 (2024).
    Zone {
        code: "GR",
        name: "Greece",
        g_per_kwh: 320.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 681.99 (2023).
    Zone {
        code: "HK",
        name: "Hong Kong",
        g_per_kwh: 682.0,
        year: 2023,
        source: EMBER,
    },
    // Ember: 182.82 (2024).
    Zone {
        code: "HU",
        name: "Hungary",
        g_per_kwh: 183.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 682.43 (2023).
    Zone {
        code: "ID",
        name: "Indonesia",
        g_per_kwh: 682.0,
        year: 2023,
        source: EMBER,
    },
    // Ember: 279.70 (2024).
    Zone {
        code: "IE",
        name: "Ireland",
        g_per_kwh: 280.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 567.26 (2023).
    Zone {
        code: "IL",
        name: "Israel",
        g_per_kwh: 567.0,
        year: 2023,
        source: EMBER,
    },
    // Ember: 708.32 (2024).
    Zone {
        code: "IN",
        name: "India",
        g_per_kwh: 708.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 28.33 (2023).
    Zone {
        code: "IS",
        name: "Iceland",
        g_per_kwh: 28.0,
        year: 2023,
        source: EMBER,
    },
    // Ember: 287.53 (2024).
    Zone {
        code: "IT",
        name: "Italy",
        g_per_kwh: 288.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 482.32 (2024).
    Zone {
        code: "JP",
        name: "Japan",
        g_per_kwh: 482.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 88.79 (2024).
    Zone {
        code: "KE",
        name: "Kenya",
        g_per_kwh: 89.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 414.27 (2024).
    Zone {
        code: "KR",
        name: "South Korea",
        g_per_kwh: 414.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 484.83 (2024).
    Zone {
        code: "MX",
        name: "Mexico",
        g_per_kwh: 485.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 609.85 (2024).
    Zone {
        code: "MY",
        name: "Malaysia",
        g_per_kwh: 610.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 507.85 (2024).
    Zone {
        code: "NG",
        name: "Nigeria",
        g_per_kwh: 508.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 253.31 (2024).
    Zone {
        code: "NL",
        name: "Netherlands",
        g_per_kwh: 253.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 30.75 (2024).
    Zone {
        code: "NO",
        name: "Norway",
        g_per_kwh: 31.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 120.11 (2024).
    Zone {
        code: "NZ",
        name: "New Zealand",
        g_per_kwh: 120.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 613.38 (2024).
    Zone {
        code: "PH",
        name: "Philippines",
        g_per_kwh: 613.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 398.61 (2024).
    Zone {
        code: "PK",
        name: "Pakistan",
        g_per_kwh: 399.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 614.98 (2024).
    Zone {
        code: "PL",
        name: "Poland",
        g_per_kwh: 615.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 112.29 (2024).
    Zone {
        code: "PT",
        name: "Portugal",
        g_per_kwh: 112.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 245.55 (2024).
    Zone {
        code: "RO",
        name: "Romania",
        g_per_kwh: 246.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 696.31 (2023).
    Zone {
        code: "SA",
        name: "Saudi Arabia",
        g_per_kwh: 696.0,
        year: 2023,
        source: EMBER,
    },
    // Ember: 35.82 (2024).
    Zone {
        code: "SE",
        name: "Sweden",
        g_per_kwh: 36.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 498.74 (2024).
    Zone {
        code: "SG",
        name: "Singapore",
        g_per_kwh: 499.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 96.49 (2024).
    Zone {
        code: "SK",
        name: "Slovakia",
        g_per_kwh: 96.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 554.50 (2024).
    Zone {
        code: "TH",
        name: "Thailand",
        g_per_kwh: 555.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 469.70 (2024).
    Zone {
        code: "TR",
        name: "Türkiye",
        g_per_kwh: 470.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 635.65 (2024).
    Zone {
        code: "TW",
        name: "Taiwan",
        g_per_kwh: 636.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 383.55 (2024).
    Zone {
        code: "US",
        name: "United States",
        g_per_kwh: 384.0,
        year: 2024,
        source: EMBER,
    },
    // Electricity Maps: 229 (2024).
    Zone {
        code: "US-CAL-CISO",
        name: "California ISO (CAISO), US",
        g_per_kwh: 229.0,
        year: 2024,
        source: EMAPS,
    },
    // Electricity Maps: 403 (2024).
    Zone {
        code: "US-MIDA-PJM",
        name: "PJM Interconnection (Mid-Atlantic, incl. Virginia), US",
        g_per_kwh: 403.0,
        year: 2024,
        source: EMAPS,
    },
    // Electricity Maps: 487 (2024).
    Zone {
        code: "US-MIDW-MISO",
        name: "Midcontinent ISO (MISO), US",
        g_per_kwh: 487.0,
        year: 2024,
        source: EMAPS,
    },
    // Electricity Maps: 299 (2024).
    Zone {
        code: "US-NE-ISNE",
        name: "ISO New England, US",
        g_per_kwh: 299.0,
        year: 2024,
        source: EMAPS,
    },
    // Electricity Maps: 109 (2024).
    Zone {
        code: "US-NW-BPAT",
        name: "Bonneville Power Administration (Pacific Northwest), US",
        g_per_kwh: 109.0,
        year: 2024,
        source: EMAPS,
    },
    // Electricity Maps: 302 (2024).
    Zone {
        code: "US-NY-NYIS",
        name: "New York ISO (NYISO), US",
        g_per_kwh: 302.0,
        year: 2024,
        source: EMAPS,
    },
    // Electricity Maps: 377 (2024).
    Zone {
        code: "US-TEX-ERCO",
        name: "ERCOT (Texas), US",
        g_per_kwh: 377.0,
        year: 2024,
        source: EMAPS,
    },
    // Ember: 471.16 (2024).
    Zone {
        code: "VN",
        name: "Viet Nam",
        g_per_kwh: 471.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 473.05 (2024).
    Zone {
        code: "WORLD",
        name: "World",
        g_per_kwh: 473.0,
        year: 2024,
        source: EMBER,
    },
    // Ember: 708.88 (2024).
    Zone {
        code: "ZA",
        name: "South Africa",
        g_per_kwh: 709.0,
        year: 2024,
        source: EMBER,
    },
];

/// Looks a zone up by code, case-insensitively.
pub fn find(code: &str) -> Option<&'static Zone> {
    ZONES.iter().find(|z| z.code.eq_ignore_ascii_case(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_plausible() {
        assert!(ZONES.len() >= 34);
        for w in ZONES.windows(2) {
            assert!(w[0].code < w[1].code, "{} then {}", w[0].code, w[1].code);
        }
        for z in ZONES {
            assert!(z.g_per_kwh > 0.0 && z.g_per_kwh < 1200.0, "{}", z.code);
            assert!((2015..=2026).contains(&z.year), "{}", z.code);
        }
        assert!(find("fr").is_some());
        assert!(find("XX").is_none());
    }

    #[test]
    fn finds_regions_and_world() {
        assert_eq!(find("ca-qc").map(|z| z.source), Some(EMAPS));
        assert_eq!(find("us-tex-erco").map(|z| z.code), Some("US-TEX-ERCO"));
        assert_eq!(find("world").map(|z| z.source), Some(EMBER));
        assert!(find("US-CA").is_none());
    }
}

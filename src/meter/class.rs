//! The energy label of an inference: a class from A (best) to E, from the joules a request spent
//! per unit of its work — per 1,000 input tokens for an embedding, per 1,000 output tokens for a
//! completion — against per-task thresholds; and a carbon class from its grams of CO2e per the
//! same work, so that one request served in two grid zones can be told apart.
//!
//! Unlike the AI Energy Score, which splits the measured range of a task's models into five
//! equal fifths, the thresholds here are geometric (each class boundary four times the previous),
//! because energy per unit of work spans orders of magnitude across models, precisions and
//! hardware; they are set from this project's own measurements (docs/energy.md) and can be
//! overridden in `[energy_class]`.

use serde::{Deserialize, Serialize};

/// The work a request did, in the unit its task's class is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// An embedding request: its input tokens.
    Embedding {
        /// Tokens embedded.
        input_tokens: usize,
    },
    /// A completion: its output tokens.
    Generation {
        /// Tokens generated.
        output_tokens: usize,
    },
}

impl Work {
    /// Thousands of the task's unit.
    fn thousands(self) -> f64 {
        match self {
            Work::Embedding { input_tokens } => input_tokens as f64 / 1000.0,
            Work::Generation { output_tokens } => output_tokens as f64 / 1000.0,
        }
    }
}

/// `[energy_class]`: the class boundaries (A ≤ t0 < B ≤ t1 < C ≤ t2 < D ≤ t3 < E).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassConfig {
    /// Embeddings: joules per 1,000 input tokens. Default 4, 16, 64, 256.
    pub embedding_j_per_1k_tokens: [f64; 4],
    /// Generation: joules per 1,000 output tokens. Default 40, 160, 640, 2560.
    pub generation_j_per_1k_tokens: [f64; 4],
    /// The grid intensity the carbon thresholds assume, gCO2e/kWh: a request's carbon class
    /// is its energy class in a grid this clean. Default 400.
    pub reference_intensity_g_per_kwh: f64,
}

impl Default for ClassConfig {
    fn default() -> Self {
        Self {
            embedding_j_per_1k_tokens: [4.0, 16.0, 64.0, 256.0],
            generation_j_per_1k_tokens: [40.0, 160.0, 640.0, 2560.0],
            reference_intensity_g_per_kwh: 400.0,
        }
    }
}

const CLASSES: [&str; 5] = ["A", "B", "C", "D", "E"];

impl ClassConfig {
    /// What is wrong with it, if anything.
    pub fn check(&self) -> Result<(), String> {
        for t in [
            self.embedding_j_per_1k_tokens,
            self.generation_j_per_1k_tokens,
        ] {
            if !(t.iter().all(|x| x.is_finite() && *x > 0.0) && t.windows(2).all(|w| w[0] < w[1])) {
                return Err("class thresholds must be positive and increasing".into());
            }
        }
        if self.reference_intensity_g_per_kwh.is_nan() || self.reference_intensity_g_per_kwh <= 0.0
        {
            return Err("reference_intensity_g_per_kwh must be positive".into());
        }
        Ok(())
    }

    fn thresholds(&self, work: Work) -> [f64; 4] {
        match work {
            Work::Embedding { .. } => self.embedding_j_per_1k_tokens,
            Work::Generation { .. } => self.generation_j_per_1k_tokens,
        }
    }

    /// The energy class of `joules` spent on `work`; `None` for no work.
    pub fn energy_class(&self, work: Work, joules: f64) -> Option<&'static str> {
        let k = work.thousands();
        (k > 0.0 && joules.is_finite()).then(|| class_of(joules / k, self.thresholds(work)))
    }

    /// The carbon class of `grams` of CO2e spent on `work`: the energy thresholds turned into
    /// grams at the reference intensity.
    pub fn carbon_class(&self, work: Work, grams: f64) -> Option<&'static str> {
        let k = work.thousands();
        let g_per_joule = self.reference_intensity_g_per_kwh / 3.6e6;
        let t = self.thresholds(work).map(|j| j * g_per_joule);
        (k > 0.0 && grams.is_finite()).then(|| class_of(grams / k, t))
    }
}

fn class_of(per_1k: f64, t: [f64; 4]) -> &'static str {
    CLASSES[t.iter().take_while(|&&b| per_1k > b).count()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_thresholds() {
        let c = ClassConfig::default();
        let e = |tokens, j| {
            c.energy_class(
                Work::Embedding {
                    input_tokens: tokens,
                },
                j,
            )
        };
        assert_eq!(
            e(1000, 4.0),
            Some("A"),
            "a boundary belongs to the better class"
        );
        assert_eq!(e(1000, 4.1), Some("B"));
        assert_eq!(e(10, 0.5), Some("C"), "50 J per 1k tokens");
        assert_eq!(e(10, 1.0), Some("D"), "100 J per 1k tokens");
        assert_eq!(e(10, 100.0), Some("E"));
        assert_eq!(e(0, 1.0), None);
        let g = |tokens, j| {
            c.energy_class(
                Work::Generation {
                    output_tokens: tokens,
                },
                j,
            )
        };
        assert_eq!(g(64, 3.1), Some("B"), "48 J per 1k output tokens");
        assert!(c.check().is_ok());
    }

    #[test]
    fn one_request_gets_a_different_carbon_class_in_a_coal_heavy_and_a_clean_grid() {
        let c = ClassConfig::default();
        let work = Work::Embedding { input_tokens: 1000 };
        let joules = 10.0; // class B
        assert_eq!(c.energy_class(work, joules), Some("B"));
        let grams = |intensity: f64| joules / 3.6e6 * intensity;
        assert_eq!(
            c.carbon_class(work, grams(400.0)),
            Some("B"),
            "the reference grid"
        );
        assert_eq!(c.carbon_class(work, grams(900.0)), Some("C"), "coal-heavy");
        assert_eq!(c.carbon_class(work, grams(30.0)), Some("A"), "low-carbon");
    }

    #[test]
    fn bad_thresholds_are_refused() {
        let c = ClassConfig {
            embedding_j_per_1k_tokens: [4.0, 2.0, 64.0, 256.0],
            ..Default::default()
        };
        assert!(c.check().is_err());
    }
}

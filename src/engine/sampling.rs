//! Choosing the next token from logits: greedy at temperature 0, else temperature, top-k and
//! top-p (nucleus) sampling with a per-sequence seeded generator, so a request with a `seed` is
//! reproducible whatever else shares its batches.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The sampling knobs of one request (OpenAI's, plus vLLM's `top_k`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy; otherwise logits are divided by it. OpenAI's range: 0–2.
    pub temperature: f32,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (0–1].
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; 0 = no limit.
    pub top_k: usize,
    /// Seed of the sequence's generator; `None` = a random seed.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    /// OpenAI's defaults: temperature 1, top_p 1.
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
        }
    }
}

/// A sampling parameter outside its range. Each variant is one parameter, so that a caller can
/// name it (the API's `param`) without reading the message.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum SamplingError {
    /// `temperature` outside 0–2.
    #[error("temperature must be between 0 and 2, got {0}")]
    Temperature(f32),
    /// `top_p` outside (0, 1].
    #[error("top_p must be greater than 0 and at most 1, got {0}")]
    TopP(f32),
}

impl SamplingError {
    /// The name of the parameter at fault, as OpenAI's API spells it.
    pub fn param(&self) -> &'static str {
        match self {
            SamplingError::Temperature(_) => "temperature",
            SamplingError::TopP(_) => "top_p",
        }
    }
}

impl SamplingParams {
    /// Checks the ranges; the error names the parameter and its message the allowed range.
    pub fn validate(&self) -> Result<(), SamplingError> {
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(SamplingError::Temperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplingError::TopP(self.top_p));
        }
        Ok(())
    }

    /// Whether the choice is the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

/// Candidates sorted at most, before falling back to sorting the whole vocabulary for top-p.
const NUCLEUS_CANDIDATES: usize = 512;

/// One sequence's sampler.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler with `params`; without a seed, the generator is seeded from the OS.
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self { params, rng }
    }

    /// The next token.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if logits.is_empty() {
            return 0;
        }
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weight = |l: f32| (((l - max) * inv_t) as f64).exp();
        let n = logits.len();
        let k = if self.params.top_k == 0 {
            n
        } else {
            self.params.top_k.min(n)
        };
        if k == n && self.params.top_p >= 1.0 {
            // Plain temperature sampling: one pass, no sorting.
            let total: f64 = logits.iter().map(|&l| weight(l)).sum();
            let mut u = self.rng.random::<f64>() * total;
            for (i, &l) in logits.iter().enumerate() {
                u -= weight(l);
                if u <= 0.0 {
                    return i as u32;
                }
            }
            return argmax(logits);
        }
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        let mut idx: Vec<u32> = (0..n as u32).collect();
        let total: f64 = logits.iter().map(|&l| weight(l)).sum();
        let mut keep = if k < n { k } else { NUCLEUS_CANDIDATES.min(n) };
        loop {
            if keep < n {
                idx.select_nth_unstable_by(keep - 1, by_logit);
            }
            idx[..keep].sort_unstable_by(by_logit);
            let candidates = &idx[..keep];
            let weights: Vec<f64> = candidates
                .iter()
                .map(|&i| weight(logits[i as usize]))
                .collect();
            // Nucleus over the whole distribution (or over the top-k when top_k is set).
            let mass = if k < n { weights.iter().sum() } else { total };
            let target = f64::from(self.params.top_p) * mass;
            let mut cum = 0.0;
            let mut cut = candidates.len();
            for (j, w) in weights.iter().enumerate() {
                cum += w;
                if cum >= target {
                    cut = j + 1;
                    break;
                }
            }
            if cum >= target || keep == k {
                let kept = &weights[..cut];
                let sum: f64 = kept.iter().sum();
                let mut u = self.rng.random::<f64>() * sum;
                for (j, w) in kept.iter().enumerate() {
                    u -= w;
                    if u <= 0.0 {
                        return candidates[j];
                    }
                }
                return candidates[cut - 1];
            }
            // The top candidates did not reach top_p: widen to everything allowed.
            keep = k;
        }
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in values.iter().enumerate() {
        if x > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: usize, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
            seed: Some(seed),
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(params(0.0, 1.0, 0, 1));
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
        let mut s = Sampler::new(params(1.0, 1.0, 1, 1));
        assert_eq!(s.sample(&[0.1, 3.0, 5.0, -1.0]), 2);
    }

    #[test]
    fn same_seed_same_tokens_and_frequencies_follow_the_softmax() {
        let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln(), -30.0];
        let draw = |seed| {
            let mut s = Sampler::new(params(1.0, 1.0, 0, seed));
            (0..6000).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        let freq = |t: u32| a.iter().filter(|&&x| x == t).count() as f64 / a.len() as f64;
        // Probabilities 1/6, 2/6, 3/6, ~0.
        assert!((freq(0) - 1.0 / 6.0).abs() < 0.03, "{}", freq(0));
        assert!((freq(1) - 2.0 / 6.0).abs() < 0.03, "{}", freq(1));
        assert!((freq(2) - 3.0 / 6.0).abs() < 0.03, "{}", freq(2));
        assert_eq!(freq(3), 0.0);
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln(), (4.0f32).ln()];
        // top_k 2: only tokens 3 and 2.
        let mut s = Sampler::new(params(1.0, 1.0, 2, 3));
        assert!((0..2000)
            .map(|_| s.sample(&logits))
            .all(|t| t == 3 || t == 2));
        // top_p 0.5: probabilities 0.4, 0.3, ...: tokens 3 (0.4) and 2 (0.3) reach 0.7 ≥ 0.5.
        let mut s = Sampler::new(params(1.0, 0.5, 0, 4));
        let draws: Vec<u32> = (0..2000).map(|_| s.sample(&logits)).collect();
        assert!(draws.iter().all(|&t| t == 3 || t == 2));
        assert!(draws.contains(&2) && draws.contains(&3));
        // top_p 0.3: token 3 alone holds 0.4.
        let mut s = Sampler::new(params(1.0, 0.3, 0, 5));
        assert!((0..500).map(|_| s.sample(&logits)).all(|t| t == 3));
    }

    #[test]
    fn nucleus_widens_past_the_first_candidates_when_needed() {
        // A flat distribution over 2000 tokens: top_p 0.9 needs 1800 of them.
        let logits = vec![0.0f32; 2000];
        let mut s = Sampler::new(params(1.0, 0.9, 0, 9));
        let draws: Vec<u32> = (0..4000).map(|_| s.sample(&logits)).collect();
        let distinct: std::collections::HashSet<u32> = draws.iter().copied().collect();
        assert!(distinct.len() > 1000, "{}", distinct.len());
    }

    #[test]
    fn validation_names_the_parameter() {
        let err = params(2.5, 1.0, 0, 0).validate().unwrap_err();
        assert_eq!(err.param(), "temperature");
        assert_eq!(
            err.to_string(),
            "temperature must be between 0 and 2, got 2.5"
        );
        let err = params(1.0, 0.0, 0, 0).validate().unwrap_err();
        assert_eq!(err.param(), "top_p");
        assert_eq!(
            err.to_string(),
            "top_p must be greater than 0 and at most 1, got 0"
        );
        assert_eq!(
            params(1.0, 1.5, 0, 0).validate(),
            Err(SamplingError::TopP(1.5))
        );
        assert!(params(0.0, 1.0, 0, 0).validate().is_ok());
    }
}

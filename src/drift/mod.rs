//! Input drift: whether what a model is asked now looks like what it was validated on. Per model
//! and feature (features that need no labels: input length in tokens, the projection of each
//! embedding on a few fixed random directions; prompt and output length for generation), a
//! reference sample (the first `drift.reference_size` observations after start, or a file
//! written by `wattserve drift reference`) against a sliding live window (the last
//! `drift.window_size` observations, none older than `drift.window_seconds`). The two-sample
//! Kolmogorov–Smirnov statistic is computed off the request path, by a thread of its own, every
//! `drift.interval_ms`, exported as `wattserve_drift_ks{model,feature}` and answered by
//! `GET /v1/drift`.

pub mod ks;
pub mod reference;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// `[drift]`: input drift monitoring.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Watch the inputs. Default true.
    pub enabled: bool,
    /// Observations per feature that make the reference when no file gives it. Default 500.
    pub reference_size: usize,
    /// Most observations in the live window. Default 500.
    pub window_size: usize,
    /// Oldest observation kept in the live window, seconds. Default 3600.
    pub window_seconds: u64,
    /// The KS statistic above which a feature has drifted (the alert's threshold). Default 0.15.
    pub threshold: f64,
    /// How often the statistics are recomputed, ms. Default 5000.
    pub interval_ms: u64,
    /// Folder of reference files, `<model>.json` (from `wattserve drift reference`); a model
    /// without one takes its first observations.
    pub reference_dir: Option<PathBuf>,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            reference_size: 500,
            window_size: 500,
            window_seconds: 3600,
            threshold: 0.15,
            interval_ms: 5000,
            reference_dir: None,
        }
    }
}

/// The fixed random directions embeddings are projected on.
pub const PROJECTIONS: usize = 3;

/// A unit direction of `dims` dimensions, the same in every process (seeded by its index).
pub fn direction(k: usize, dims: usize) -> Vec<f32> {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(0x5eed_d21f_u64 + k as u64);
    // Normal draws (Box–Muller) give a direction uniform on the sphere.
    let v: Vec<f32> = (0..dims)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.into_iter().map(|x| x / norm).collect()
}

/// The features of one embedding: its input's tokens and its projections on `directions`
/// (cosines, so that the scale of the vector does not matter).
pub fn embedding_features(
    tokens: usize,
    vector: &[f32],
    directions: &[Vec<f32>],
) -> Vec<(&'static str, f64)> {
    const NAMES: [&str; PROJECTIONS] = ["projection_0", "projection_1", "projection_2"];
    let norm = vector
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    let mut out = vec![("input_tokens", tokens as f64)];
    for (name, d) in NAMES.iter().zip(directions) {
        let dot: f32 = vector.iter().zip(d).map(|(a, b)| a * b).sum();
        out.push((name, f64::from(dot / norm)));
    }
    out
}

/// What a request hands the monitor: raw, so that the features are computed off its path.
pub enum Observation {
    /// An embedding and its input's tokens.
    Embedding {
        /// Tokens of the input.
        tokens: usize,
        /// The vector.
        vector: Vec<f32>,
    },
    /// Features already computed (generation: prompt and output lengths).
    Values(Vec<(&'static str, f64)>),
}

/// A reference file: per feature, the sample.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReferenceFile {
    /// The model it was taken with.
    pub model: String,
    /// What produced it (`wattserve drift reference --inputs FILE`).
    pub source: String,
    /// Per feature, the observations.
    pub features: BTreeMap<String, Vec<f64>>,
}

/// Where a feature stands.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FeatureDrift {
    /// The model.
    pub model: String,
    /// The feature.
    pub feature: String,
    /// The KS statistic between the reference and the live window (`None` until both have
    /// observations).
    pub ks: Option<f64>,
    /// Its p-value.
    pub p_value: Option<f64>,
    /// Whether `ks` is above the threshold.
    pub drifted: bool,
    /// Observations in the reference.
    pub reference_size: usize,
    /// Observations in the live window.
    pub window_size: usize,
    /// `first N requests` (still filling when below `drift.reference_size`) or the file's source.
    pub reference_source: String,
}

struct Feature {
    reference: Vec<f64>,
    reference_full: bool,
    source: String,
    live: VecDeque<(Instant, f64)>,
}

enum Msg {
    Observe(String, Observation),
    Compute(mpsc::SyncSender<()>),
}

/// The monitor: requests observe through it (a channel send); its thread does the rest.
#[derive(Clone)]
pub struct Drift {
    tx: Sender<Msg>,
    status: Arc<Mutex<Vec<FeatureDrift>>>,
    threshold: f64,
}

impl Drift {
    /// Starts the monitor's thread (references from `config.reference_dir` where present).
    pub fn start(config: &DriftConfig) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let status = Arc::new(Mutex::new(Vec::new()));
        let shared = status.clone();
        let config = config.clone();
        let threshold = config.threshold;
        std::thread::Builder::new()
            .name("wattserve-drift".into())
            .spawn(move || run(config, rx, shared))?;
        Ok(Self {
            tx,
            status,
            threshold,
        })
    }

    /// Records one input to `model` (never blocks).
    pub fn observe(&self, model: &str, observation: Observation) {
        let _ = self.tx.send(Msg::Observe(model.to_string(), observation));
    }

    /// Every feature's standing, recomputed now (blocking: call off the async workers).
    pub fn status(&self) -> Vec<FeatureDrift> {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Compute(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The alert threshold.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }
}

/// The reference of `model` from `dir/<model>.json`, if any.
fn load_reference(dir: Option<&PathBuf>, model: &str) -> Option<ReferenceFile> {
    let path = dir?.join(format!("{model}.json"));
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str::<ReferenceFile>(&text) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(path = %path.display(), "drift: unreadable reference ({e}); using the first requests");
            None
        }
    }
}

fn run(config: DriftConfig, rx: Receiver<Msg>, status: Arc<Mutex<Vec<FeatureDrift>>>) {
    let mut models: HashMap<String, BTreeMap<&'static str, Feature>> = HashMap::new();
    let mut files: HashMap<String, Option<ReferenceFile>> = HashMap::new();
    let mut directions: HashMap<usize, Vec<Vec<f32>>> = HashMap::new();
    let interval = Duration::from_millis(config.interval_ms.max(100));
    let max_age = Duration::from_secs(config.window_seconds.max(1));
    let mut next = Instant::now() + interval;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        let mut reply = None;
        match rx.recv_timeout(wait) {
            Ok(Msg::Observe(model, observation)) => {
                let features = match observation {
                    Observation::Values(v) => v,
                    Observation::Embedding { tokens, vector } => {
                        let d = directions.entry(vector.len()).or_insert_with(|| {
                            (0..PROJECTIONS)
                                .map(|k| direction(k, vector.len()))
                                .collect()
                        });
                        embedding_features(tokens, &vector, d)
                    }
                };
                let file = files
                    .entry(model.clone())
                    .or_insert_with(|| load_reference(config.reference_dir.as_ref(), &model));
                let per = models.entry(model).or_default();
                let now = Instant::now();
                for (name, value) in features {
                    let f = per.entry(name).or_insert_with(|| {
                        match file.as_ref().and_then(|r| r.features.get(name)) {
                            Some(sample) => Feature {
                                reference: sample.clone(),
                                reference_full: true,
                                source: file
                                    .as_ref()
                                    .map_or_else(String::new, |r| r.source.clone()),
                                live: VecDeque::new(),
                            },
                            None => Feature {
                                reference: Vec::new(),
                                reference_full: false,
                                source: "first requests".into(),
                                live: VecDeque::new(),
                            },
                        }
                    });
                    if !f.reference_full {
                        f.reference.push(value);
                        f.reference_full = f.reference.len() >= config.reference_size;
                        continue;
                    }
                    f.live.push_back((now, value));
                    if f.live.len() > config.window_size {
                        f.live.pop_front();
                    }
                }
                if Instant::now() < next {
                    continue;
                }
            }
            Ok(Msg::Compute(done)) => reply = Some(done),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let mut out = Vec::new();
        for (model, per) in &mut models {
            for (name, f) in per.iter_mut() {
                while f.live.front().is_some_and(|(t, _)| now - *t > max_age) {
                    f.live.pop_front();
                }
                let (mut r, mut l): (Vec<f64>, Vec<f64>) = (
                    f.reference.clone(),
                    f.live.iter().map(|(_, v)| *v).collect(),
                );
                let ready = f.reference_full && !l.is_empty();
                let ks = ready.then(|| ks::statistic(&mut r, &mut l));
                let p = ks.map(|d| ks::p_value(d, f.reference.len(), f.live.len()));
                if let Some(d) = ks {
                    crate::metrics::set_drift(model, name, d, f.reference.len(), f.live.len());
                }
                out.push(FeatureDrift {
                    model: model.clone(),
                    feature: (*name).to_string(),
                    ks,
                    p_value: p,
                    drifted: ks.is_some_and(|d| d > config.threshold),
                    reference_size: f.reference.len(),
                    window_size: f.live.len(),
                    reference_source: f.source.clone(),
                });
            }
        }
        out.sort_by(|a, b| (&a.model, &a.feature).cmp(&(&b.model, &b.feature)));
        if let Ok(mut s) = status.lock() {
            *s = out;
        }
        if let Some(done) = reply {
            let _ = done.send(());
        }
        next = Instant::now() + interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DriftConfig {
        DriftConfig {
            reference_size: 200,
            window_size: 200,
            interval_ms: 60_000,
            ..Default::default()
        }
    }

    #[test]
    fn a_longer_input_distribution_drifts_and_the_same_one_does_not() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(9);
        let d = Drift::start(&config()).unwrap();
        // Reference: inputs of 8–12 tokens.
        for _ in 0..200 {
            d.observe(
                "m",
                Observation::Values(vec![("input_tokens", rng.random_range(8..=12) as f64)]),
            );
        }
        // Live traffic from the same distribution.
        for _ in 0..200 {
            d.observe(
                "m",
                Observation::Values(vec![("input_tokens", rng.random_range(8..=12) as f64)]),
            );
        }
        let s = d.status();
        assert_eq!(s.len(), 1);
        assert!(s[0].ks.unwrap() < 0.15, "{s:?}");
        assert!(!s[0].drifted);
        assert_eq!((s[0].reference_size, s[0].window_size), (200, 200));
        // Then 300-token inputs: within one window the statistic passes the threshold.
        for _ in 0..100 {
            d.observe(
                "m",
                Observation::Values(vec![("input_tokens", rng.random_range(280..=320) as f64)]),
            );
        }
        let s = d.status();
        assert!(s[0].ks.unwrap() > 0.15 && s[0].drifted, "{s:?}");
        assert!(s[0].p_value.unwrap() < 1e-6);
    }

    #[test]
    fn directions_are_fixed_unit_vectors_and_features_scale_free() {
        let a = direction(0, 384);
        assert_eq!(a, direction(0, 384), "the same in every process");
        assert_ne!(a, direction(1, 384));
        let n: f32 = a.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-5);
        let v: Vec<f32> = (0..384).map(|i| (i as f32).sin()).collect();
        let w: Vec<f32> = v.iter().map(|x| x * 7.0).collect();
        let dirs: Vec<Vec<f32>> = (0..PROJECTIONS).map(|k| direction(k, 384)).collect();
        let (f, g) = (
            embedding_features(5, &v, &dirs),
            embedding_features(5, &w, &dirs),
        );
        for (x, y) in f.iter().zip(&g) {
            assert!((x.1 - y.1).abs() < 1e-5, "{x:?} {y:?}");
        }
        assert_eq!(f[0], ("input_tokens", 5.0));
    }
}

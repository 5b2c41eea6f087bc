//! Sentence-embedding pooling: from the encoder's last hidden state to one vector per input,
//! configured from the model folder's own sentence-transformers files.

use std::path::Path;

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use crate::engine::{read_json, EngineError};

/// How token states are reduced to one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolingMode {
    /// Attention-masked mean of the token states (padding excluded).
    Mean,
    /// The first token's state (`[CLS]`).
    Cls,
    /// Attention-masked element-wise max.
    Max,
}

/// The full pooling stage: a reduction and an optional L2 normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pooling {
    /// The reduction.
    pub mode: PoolingMode,
    /// Whether the pooled vector is L2-normalized (sentence-transformers' `Normalize` module).
    pub normalize: bool,
}

#[derive(Deserialize)]
struct StModule {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize, Default)]
struct StPoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

impl Pooling {
    /// Reads `modules.json` (and the Pooling module's `config.json`) of a sentence-transformers
    /// folder. `Ok(None)` when the folder has no `modules.json`. A `Normalize` module is honoured
    /// even though it has no folder of its own.
    pub fn from_sentence_transformers(dir: &Path) -> Result<Option<Self>, EngineError> {
        let modules_path = dir.join("modules.json");
        if !modules_path.exists() {
            return Ok(None);
        }
        let modules: Vec<StModule> = read_json(&modules_path)?;
        let normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
        let Some(pool_module) = modules.iter().find(|m| m.kind.ends_with(".Pooling")) else {
            return Err(EngineError::Config {
                path: modules_path,
                message: "no sentence_transformers Pooling module is listed".into(),
            });
        };
        let config_path = dir.join(&pool_module.path).join("config.json");
        let cfg: StPoolingConfig = read_json(&config_path)?;
        let chosen: Vec<PoolingMode> = [
            (cfg.pooling_mode_mean_tokens, Some(PoolingMode::Mean)),
            (cfg.pooling_mode_cls_token, Some(PoolingMode::Cls)),
            (cfg.pooling_mode_max_tokens, Some(PoolingMode::Max)),
            (cfg.pooling_mode_mean_sqrt_len_tokens, None),
            (cfg.pooling_mode_weightedmean_tokens, None),
            (cfg.pooling_mode_lasttoken, None),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, mode)| {
            mode.ok_or_else(|| EngineError::Config {
                path: config_path.clone(),
                message: "only mean, cls and max pooling are supported".into(),
            })
        })
        .collect::<Result<_, _>>()?;
        match chosen.as_slice() {
            [mode] => Ok(Some(Pooling {
                mode: *mode,
                normalize,
            })),
            _ => Err(EngineError::Config {
                path: config_path,
                message: format!(
                    "exactly one pooling mode must be enabled, found {}",
                    chosen.len()
                ),
            }),
        }
    }

    /// `hidden`: (B, T, H) f32, `mask`: (B, T) f32 (1 real, 0 padding). Returns (B, H).
    pub fn apply(&self, hidden: &Tensor, mask: &Tensor) -> Result<Tensor, EngineError> {
        let mask3 = mask.unsqueeze(2)?; // (B, T, 1)
        let pooled = match self.mode {
            PoolingMode::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            PoolingMode::Mean => {
                let summed = hidden.broadcast_mul(&mask3)?.sum(1)?; // (B, H)
                let counts = mask.sum_keepdim(1)?.clamp(1e-9, f64::MAX)?; // (B, 1)
                summed.broadcast_div(&counts)?
            }
            PoolingMode::Max => {
                // Padding gets a very negative value so it never wins the max.
                let penalty = (mask3.affine(-1.0, 1.0)? * -1e9)?;
                hidden.broadcast_add(&penalty)?.max(1)?
            }
        };
        self.finish(pooled)
    }

    /// `hidden`: (N, H) f32, the tokens of all sequences one after another; `spans`: (first row,
    /// length) of each sequence. Returns (B, H).
    pub fn apply_packed(
        &self,
        hidden: &Tensor,
        spans: &[(usize, usize)],
    ) -> Result<Tensor, EngineError> {
        let pooled = match self.mode {
            PoolingMode::Cls => {
                let firsts: Vec<u32> = spans.iter().map(|&(s, _)| s as u32).collect();
                let idx = Tensor::from_vec(firsts, spans.len(), hidden.device())?;
                hidden.index_select(&idx, 0)?
            }
            PoolingMode::Mean => {
                // One matmul: (B, N) averaging weights × (N, H).
                let n = hidden.dim(0)?;
                let mut weights = vec![0f32; spans.len() * n];
                for (b, &(start, len)) in spans.iter().enumerate() {
                    let w = 1.0 / len.max(1) as f32;
                    weights[b * n + start..b * n + start + len].fill(w);
                }
                Tensor::from_vec(weights, (spans.len(), n), hidden.device())?.matmul(hidden)?
            }
            PoolingMode::Max => {
                let rows = spans
                    .iter()
                    .map(|&(start, len)| hidden.narrow(0, start, len)?.max_keepdim(0))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&rows, 0)?
            }
        };
        self.finish(pooled)
    }

    /// L2 normalization when configured.
    fn finish(&self, pooled: Tensor) -> Result<Tensor, EngineError> {
        if !self.normalize {
            return Ok(pooled);
        }
        let norm = pooled
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        Ok(pooled.broadcast_div(&norm)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn hidden() -> (Tensor, Tensor) {
        // B = 1, T = 3 (last is padding), H = 2
        let h = Tensor::new(&[[[1f32, 2.], [3., 6.], [100., 100.]]], &Device::Cpu).unwrap();
        let m = Tensor::new(&[[1f32, 1., 0.]], &Device::Cpu).unwrap();
        (h, m)
    }

    #[test]
    fn mean_ignores_padding() {
        let (h, m) = hidden();
        let p = Pooling {
            mode: PoolingMode::Mean,
            normalize: false,
        };
        assert_eq!(
            p.apply(&h, &m).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![2., 4.]]
        );
    }

    #[test]
    fn max_ignores_padding_and_cls_takes_first() {
        let (h, m) = hidden();
        let max = Pooling {
            mode: PoolingMode::Max,
            normalize: false,
        };
        assert_eq!(
            max.apply(&h, &m).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![3., 6.]]
        );
        let cls = Pooling {
            mode: PoolingMode::Cls,
            normalize: false,
        };
        assert_eq!(
            cls.apply(&h, &m).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![1., 2.]]
        );
    }

    #[test]
    fn packed_pooling_equals_padded_pooling() {
        // Two sequences: lengths 2 and 1, H = 2.
        let packed = Tensor::new(&[[1f32, 2.], [3., 6.], [5., -1.]], &Device::Cpu).unwrap();
        let padded = Tensor::new(
            &[[[1f32, 2.], [3., 6.]], [[5., -1.], [9., 9.]]],
            &Device::Cpu,
        )
        .unwrap();
        let mask = Tensor::new(&[[1f32, 1.], [1., 0.]], &Device::Cpu).unwrap();
        for mode in [PoolingMode::Mean, PoolingMode::Cls, PoolingMode::Max] {
            for normalize in [false, true] {
                let p = Pooling { mode, normalize };
                let a = p
                    .apply_packed(&packed, &[(0, 2), (2, 1)])
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                let b = p.apply(&padded, &mask).unwrap().to_vec2::<f32>().unwrap();
                assert_eq!(a, b, "{mode:?} normalize={normalize}");
            }
        }
    }

    #[test]
    fn normalize_gives_unit_length() {
        let (h, m) = hidden();
        let p = Pooling {
            mode: PoolingMode::Mean,
            normalize: true,
        };
        let v = p.apply(&h, &m).unwrap().to_vec2::<f32>().unwrap();
        let norm: f32 = v[0].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6);
        assert!((v[0][1] / v[0][0] - 2.0).abs() < 1e-6);
    }

    #[test]
    fn reads_sentence_transformers_folder_with_folderless_normalize() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("modules.json"),
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
               {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
               {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        std::fs::write(
            dir.path().join("1_Pooling/config.json"),
            r#"{"word_embedding_dimension":384,"pooling_mode_cls_token":false,"pooling_mode_mean_tokens":true}"#,
        )
        .unwrap();
        let p = Pooling::from_sentence_transformers(dir.path())
            .unwrap()
            .unwrap();
        assert_eq!(
            p,
            Pooling {
                mode: PoolingMode::Mean,
                normalize: true
            }
        );
        let none = tempfile::tempdir().unwrap();
        assert!(Pooling::from_sentence_transformers(none.path())
            .unwrap()
            .is_none());
    }
}

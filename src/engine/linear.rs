//! The `Linear` layer every encoder projection goes through, so that the precision of all of them
//! is switched in one place (f32/f16/bf16 dense now; int8 is the next variant).

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use super::{EngineError, Precision};

/// `y = x Wᵀ + b` with `W` of shape `(out, in)`, in the precision the model is served at.
#[derive(Debug, Clone)]
pub enum Linear {
    /// Dense weights in f32, f16 or bf16; compute in the weights' dtype.
    Dense(candle_nn::Linear),
}

impl Linear {
    /// Loads `weight` `(out_dim, in_dim)` and `bias` `(out_dim)` from `vb` at `precision`.
    pub fn load(
        in_dim: usize,
        out_dim: usize,
        precision: Precision,
        vb: VarBuilder,
    ) -> Result<Self, EngineError> {
        match precision.dense_dtype() {
            Some(dtype) => {
                let weight = vb.get((out_dim, in_dim), "weight")?.to_dtype(dtype)?;
                let bias = vb.get(out_dim, "bias")?.to_dtype(dtype)?;
                Ok(Linear::Dense(candle_nn::Linear::new(weight, Some(bias))))
            }
            None => Err(EngineError::Unsupported(format!(
                "precision {precision} is not implemented yet for encoder layers"
            ))),
        }
    }

    /// The dtype activations must have when they enter this layer.
    pub fn input_dtype(&self) -> DType {
        match self {
            Linear::Dense(l) => l.weight().dtype(),
        }
    }

    /// Applies the layer to `x` of shape `(.., in_dim)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        match self {
            Linear::Dense(l) => Ok(l.forward(x)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    #[test]
    fn dense_forward_matches_hand_computation() {
        let dev = Device::Cpu;
        let mut map = HashMap::new();
        map.insert(
            "weight".to_string(),
            Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev).unwrap(),
        );
        map.insert(
            "bias".to_string(),
            Tensor::new(&[0.5f32, -1., 0.], &dev).unwrap(),
        );
        let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
        let lin = Linear::load(2, 3, Precision::F32, vb).unwrap();
        let x = Tensor::new(&[[10f32, 100.]], &dev).unwrap();
        let y = lin.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y, vec![vec![210.5, 429.0, 650.0]]);
    }
}

//! Numeric precision a model is served at.

use candle_core::DType;
use serde::{Deserialize, Serialize};

/// The precision weights are held and computed in. Chosen per served model (`precision` in
/// model.toml); the stored fp32 weights are converted at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit float, the reference.
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// int8 weights and activations. Encoders: per output channel / per row, our kernels.
    /// GGUF decoders: blocks of 64 with wattserve's VNNI kernel where the CPU has AVX-512 VNNI,
    /// else Q8_0 (blocks of 32).
    Int8,
    /// GGUF decoders only: every tensor as stored in the file (e.g. Q4_1).
    Gguf,
}

impl Precision {
    /// The name used in config files, headers (`x-precision`) and `/v1/models`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
            Precision::Gguf => "gguf",
        }
    }

    /// The candle dtype dense weights are held in, when this precision uses dense weights.
    pub fn dense_dtype(self) -> Option<DType> {
        match self {
            Precision::F32 => Some(DType::F32),
            Precision::F16 => Some(DType::F16),
            Precision::Bf16 => Some(DType::BF16),
            Precision::Int8 | Precision::Gguf => None,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "f16" | "fp16" => Ok(Precision::F16),
            "bf16" => Ok(Precision::Bf16),
            "int8" => Ok(Precision::Int8),
            "gguf" => Ok(Precision::Gguf),
            other => Err(format!(
                "unknown precision `{other}` (expected f32, f16, bf16, int8 or gguf)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        for p in [
            Precision::F32,
            Precision::F16,
            Precision::Bf16,
            Precision::Int8,
            Precision::Gguf,
        ] {
            assert_eq!(p.as_str().parse::<Precision>().unwrap(), p);
        }
        assert!("fp8".parse::<Precision>().unwrap_err().contains("fp8"));
    }
}

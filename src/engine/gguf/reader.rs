//! Reading a GGUF file: its metadata (typed, with errors that name the key and the file) and its
//! tensors. One place for this so that the decoder, its tokenizer and its chat template read the
//! same file the same way.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;

use crate::engine::EngineError;

/// An open GGUF file: parsed header and metadata, plus a reader for its tensors.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    /// Opens `path` and parses its header and metadata (tensors are read on demand).
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let file = File::open(path).map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| EngineError::Config {
            path: path.to_path_buf(),
            message: format!("not a readable GGUF file: {e}"),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    /// The file, for error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, message: String) -> EngineError {
        EngineError::Config {
            path: self.path.clone(),
            message,
        }
    }

    fn value(&self, key: &str) -> Result<&Value, EngineError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.error(format!("metadata key `{key}` is missing")))
    }

    /// Whether the metadata has `key`.
    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    /// An unsigned integer of any width.
    pub fn u64(&self, key: &str) -> Result<u64, EngineError> {
        let v = self.value(key)?;
        let n = match v {
            Value::U8(x) => Some(u64::from(*x)),
            Value::U16(x) => Some(u64::from(*x)),
            Value::U32(x) => Some(u64::from(*x)),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.ok_or_else(|| self.error(format!("`{key}` is {v:?}, expected an unsigned integer")))
    }

    /// An unsigned integer as usize.
    pub fn usize(&self, key: &str) -> Result<usize, EngineError> {
        let n = self.u64(key)?;
        usize::try_from(n).map_err(|_| self.error(format!("`{key}` = {n} is too large")))
    }

    /// A float (f32 or f64).
    pub fn f64(&self, key: &str) -> Result<f64, EngineError> {
        match self.value(key)? {
            Value::F32(x) => Ok(f64::from(*x)),
            Value::F64(x) => Ok(*x),
            v => Err(self.error(format!("`{key}` is {v:?}, expected a float"))),
        }
    }

    /// A boolean.
    pub fn bool(&self, key: &str) -> Result<bool, EngineError> {
        match self.value(key)? {
            Value::Bool(x) => Ok(*x),
            v => Err(self.error(format!("`{key}` is {v:?}, expected a boolean"))),
        }
    }

    /// A string.
    pub fn str(&self, key: &str) -> Result<&str, EngineError> {
        match self.value(key)? {
            Value::String(s) => Ok(s),
            v => Err(self.error(format!(
                "`{key}` is a {:?}, expected a string",
                v.value_type()
            ))),
        }
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>, EngineError> {
        match self.value(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    other => Err(self.error(format!(
                        "`{key}` holds a {:?}, expected strings",
                        other.value_type()
                    ))),
                })
                .collect(),
            v => Err(self.error(format!(
                "`{key}` is a {:?}, expected an array",
                v.value_type()
            ))),
        }
    }

    /// An array of integers (any width, signed or not) as i64.
    pub fn integers(&self, key: &str) -> Result<Vec<i64>, EngineError> {
        match self.value(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::I32(x) => Ok(i64::from(*x)),
                    Value::U32(x) => Ok(i64::from(*x)),
                    Value::I8(x) => Ok(i64::from(*x)),
                    Value::U8(x) => Ok(i64::from(*x)),
                    Value::I16(x) => Ok(i64::from(*x)),
                    Value::U16(x) => Ok(i64::from(*x)),
                    Value::I64(x) => Ok(*x),
                    other => Err(self.error(format!(
                        "`{key}` holds a {:?}, expected integers",
                        other.value_type()
                    ))),
                })
                .collect(),
            v => Err(self.error(format!(
                "`{key}` is a {:?}, expected an array",
                v.value_type()
            ))),
        }
    }

    /// Whether the file holds a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads the tensor `name` (quantized as stored) onto `device`.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor, EngineError> {
        if !self.has_tensor(name) {
            return Err(self.error(format!("tensor `{name}` is missing")));
        }
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| EngineError::Config {
                path: self.path.clone(),
                message: format!("tensor `{name}`: {e}"),
            })
    }
}

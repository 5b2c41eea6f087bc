//! Tensors of the Open Inference Protocol, independent of how they travelled: an input's name,
//! datatype, shape and elements (JSON `data`, raw bytes from the binary extension or gRPC's
//! `raw_input_contents`, or gRPC's typed contents), decoded only into what wattserve's models
//! take (BYTES and BOOL), with every mismatch a 400 naming the tensor and what was expected.

use serde_json::Value;

use crate::api::ApiError;

/// The protocol's datatypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// One byte, 0 or 1.
    Bool,
    /// Unsigned integers.
    Uint8,
    /// Unsigned integers.
    Uint16,
    /// Unsigned integers.
    Uint32,
    /// Unsigned integers.
    Uint64,
    /// Signed integers.
    Int8,
    /// Signed integers.
    Int16,
    /// Signed integers.
    Int32,
    /// Signed integers.
    Int64,
    /// IEEE half precision.
    Fp16,
    /// bfloat16.
    Bf16,
    /// IEEE single precision.
    Fp32,
    /// IEEE double precision.
    Fp64,
    /// Byte strings of any length (in raw form: a 4-byte little-endian length, then the bytes).
    Bytes,
}

impl DataType {
    const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The protocol's name of the datatype (`FP32`, `BYTES`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Bf16 => "BF16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// The datatype named `name`, if the protocol has one of that name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// Where an input's elements are, as they arrived.
#[derive(Debug)]
pub enum Elements {
    /// JSON `data`: a flat row-major array, or arrays nested as the shape says.
    Json(Value),
    /// Raw row-major bytes (the binary extension, gRPC `raw_input_contents`).
    Raw(Vec<u8>),
    /// gRPC `contents.bytes_contents`.
    ByteStrings(Vec<Vec<u8>>),
    /// gRPC `contents.bool_contents`.
    Bools(Vec<bool>),
    /// gRPC contents of another type, with how many elements they hold (never decoded: no
    /// model here takes them).
    Other(usize),
}

/// One input tensor of a request.
#[derive(Debug)]
pub struct InputTensor {
    /// Its name.
    pub name: String,
    /// Its datatype, as sent (checked against what the model takes).
    pub datatype: String,
    /// Its shape, as sent.
    pub shape: Vec<i64>,
    /// Its elements.
    pub elements: Elements,
}

/// A 400 about tensor `name`.
fn bad(name: &str, message: String) -> ApiError {
    ApiError::bad_request("invalid_tensor", message).with_param(name.to_string())
}

impl InputTensor {
    /// Checks the datatype and that the shape is one of `shapes` (`-1` matches any length),
    /// then returns the number of elements the shape holds.
    fn check(&self, datatype: DataType, shapes: &[&[i64]]) -> Result<usize, ApiError> {
        let name = &self.name;
        if self.datatype != datatype.name() {
            let known = if DataType::parse(&self.datatype).is_some() {
                ""
            } else {
                " (not a datatype of the protocol)"
            };
            return Err(bad(
                name,
                format!(
                    "Input `{name}` must have datatype {}, got `{}`{known}",
                    datatype.name(),
                    self.datatype
                ),
            ));
        }
        let fits = |pattern: &[i64]| {
            pattern.len() == self.shape.len()
                && pattern
                    .iter()
                    .zip(&self.shape)
                    .all(|(&p, &d)| d >= 0 && (p == -1 || p == d))
        };
        if !shapes.iter().any(|p| fits(p)) {
            let expected: Vec<String> = shapes.iter().map(|p| shape_text(p)).collect();
            return Err(bad(
                name,
                format!(
                    "Input `{name}` must have shape {} (-1: any length), got {}",
                    expected.join(" or "),
                    shape_text(&self.shape)
                ),
            ));
        }
        Ok(self.shape.iter().map(|&d| d as usize).product())
    }

    /// The byte strings of a BYTES input whose shape is one of `shapes`.
    pub fn byte_strings(self, shapes: &[&[i64]]) -> Result<Vec<Vec<u8>>, ApiError> {
        let count = self.check(DataType::Bytes, shapes)?;
        let name = &self.name;
        let items = match self.elements {
            Elements::Json(v) => {
                let flat = flatten(&v, &self.shape, name)?;
                flat.into_iter()
                    .enumerate()
                    .map(|(i, e)| match e {
                        Value::String(s) => Ok(s.as_bytes().to_vec()),
                        other => Err(bad(
                            name,
                            format!(
                                "Element {i} of input `{name}` (BYTES) must be a string, got {}",
                                json_kind(other)
                            ),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            Elements::Raw(raw) => {
                split_byte_strings(&raw, count).map_err(|e| bad(name, e.to_string(name)))?
            }
            Elements::ByteStrings(v) => v,
            Elements::Bools(_) | Elements::Other(_) => {
                return Err(bad(
                    name,
                    format!("Input `{name}` is BYTES: send its elements in `bytes_contents`"),
                ))
            }
        };
        count_matches(name, count, items.len())?;
        Ok(items)
    }

    /// The values of a BOOL input whose shape is one of `shapes`.
    pub fn bools(self, shapes: &[&[i64]]) -> Result<Vec<bool>, ApiError> {
        let count = self.check(DataType::Bool, shapes)?;
        let name = &self.name;
        let items = match self.elements {
            Elements::Json(v) => flatten(&v, &self.shape, name)?
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    e.as_bool().ok_or_else(|| {
                        bad(
                            name,
                            format!(
                                "Element {i} of input `{name}` (BOOL) must be true or false, got {}",
                                json_kind(e)
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            Elements::Raw(raw) => raw
                .iter()
                .enumerate()
                .map(|(i, &b)| match b {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(bad(
                        name,
                        format!("Byte {i} of input `{name}` (BOOL) is {b}; booleans are 0 or 1"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Elements::Bools(v) => v,
            Elements::ByteStrings(_) | Elements::Other(_) => {
                return Err(bad(
                    name,
                    format!("Input `{name}` is BOOL: send its elements in `bool_contents`"),
                ))
            }
        };
        count_matches(name, count, items.len())?;
        Ok(items)
    }
}

/// A shape as the protocol writes it: `[2, 384]`.
pub fn shape_text(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

fn count_matches(name: &str, expected: usize, got: usize) -> Result<(), ApiError> {
    if expected == got {
        Ok(())
    } else {
        Err(bad(
            name,
            format!("Input `{name}` has shape with {expected} elements, but its data holds {got}"),
        ))
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The elements of JSON `data` in row-major order: a flat array, or arrays nested exactly as
/// `shape` says (a lone scalar is accepted for a one-element tensor).
fn flatten<'v>(data: &'v Value, shape: &[i64], name: &str) -> Result<Vec<&'v Value>, ApiError> {
    let Value::Array(items) = data else {
        return Ok(vec![data]);
    };
    let nested = items.iter().any(Value::is_array);
    if !nested {
        return Ok(items.iter().collect());
    }
    let mut out = Vec::new();
    nest(data, shape, &mut out).map_err(|()| {
        bad(
            name,
            format!(
                "The nested `data` of input `{name}` does not follow its shape {}; send it nested as the shape says, or flat in row-major order",
                shape_text(shape)
            ),
        )
    })?;
    Ok(out)
}

/// Collects the scalars of `v`, nested as `dims` says, in row-major order.
fn nest<'v>(v: &'v Value, dims: &[i64], out: &mut Vec<&'v Value>) -> Result<(), ()> {
    match (v, dims.split_first()) {
        (Value::Array(items), Some((&d, rest))) if items.len() as i64 == d => {
            items.iter().try_for_each(|item| nest(item, rest, out))
        }
        (Value::Array(_), _) | (_, Some(_)) => Err(()),
        (scalar, None) => {
            out.push(scalar);
            Ok(())
        }
    }
}

/// Why raw BYTES elements could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawBytesError {
    /// Fewer than 4 bytes left where an element's length should be.
    TruncatedLength {
        /// The element.
        index: usize,
        /// Where it starts.
        offset: usize,
    },
    /// An element's length runs past the end of the tensor's bytes.
    PastEnd {
        /// The element.
        index: usize,
        /// Its declared length.
        len: usize,
        /// Bytes left after its length prefix.
        left: usize,
    },
    /// Bytes remain after the last element the shape holds.
    Trailing {
        /// How many.
        bytes: usize,
    },
}

impl RawBytesError {
    /// The message for input `name`.
    fn to_string(&self, name: &str) -> String {
        match self {
            RawBytesError::TruncatedLength { index, offset } => format!(
                "The raw data of input `{name}` ends inside the 4-byte length of element {index} (at byte {offset})"
            ),
            RawBytesError::PastEnd { index, len, left } => format!(
                "Element {index} of input `{name}` declares {len} bytes but only {left} remain in its raw data"
            ),
            RawBytesError::Trailing { bytes } => format!(
                "The raw data of input `{name}` has {bytes} bytes after the last element its shape holds"
            ),
        }
    }
}

/// Splits raw BYTES data into its `count` elements (each a 4-byte little-endian length, then
/// that many bytes), with nothing left over.
pub fn split_byte_strings(raw: &[u8], count: usize) -> Result<Vec<Vec<u8>>, RawBytesError> {
    let mut out = Vec::with_capacity(count.min(raw.len() / 4));
    let mut at = 0usize;
    for index in 0..count {
        let Some(prefix) = raw.get(at..at + 4) else {
            return Err(RawBytesError::TruncatedLength { index, offset: at });
        };
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        at += 4;
        let left = raw.len() - at;
        if len > left {
            return Err(RawBytesError::PastEnd { index, len, left });
        }
        out.push(raw[at..at + len].to_vec());
        at += len;
    }
    if at != raw.len() {
        return Err(RawBytesError::Trailing {
            bytes: raw.len() - at,
        });
    }
    Ok(out)
}

/// Writes byte strings in raw form: each a 4-byte little-endian length, then its bytes.
pub fn join_byte_strings<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// An output tensor's elements.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputData {
    /// FP32 values, row-major.
    Fp32(Vec<f32>),
    /// BYTES elements.
    Bytes(Vec<Vec<u8>>),
}

/// One output tensor of a response.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    /// Its name.
    pub name: &'static str,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its elements.
    pub data: OutputData,
}

impl OutputTensor {
    /// Its datatype.
    pub fn datatype(&self) -> DataType {
        match self.data {
            OutputData::Fp32(_) => DataType::Fp32,
            OutputData::Bytes(_) => DataType::Bytes,
        }
    }

    /// Its elements in raw form (FP32 little-endian; BYTES length-prefixed).
    pub fn raw(&self) -> Vec<u8> {
        match &self.data {
            OutputData::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            OutputData::Bytes(v) => join_byte_strings(v.iter().map(Vec::as_slice)),
        }
    }
}

/// JSON `data`: a flat array of numbers (FP32, each the shortest text that reads back as the
/// same f32) or of strings (BYTES; invalid UTF-8 replaced).
impl serde::Serialize for OutputData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self {
            OutputData::Fp32(v) => v.serialize(s),
            OutputData::Bytes(v) => {
                let mut seq = s.serialize_seq(Some(v.len()))?;
                for b in v {
                    seq.serialize_element(&String::from_utf8_lossy(b))?;
                }
                seq.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(datatype: &str, shape: &[i64], elements: Elements) -> InputTensor {
        InputTensor {
            name: "text".into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            elements,
        }
    }

    const TEXT: &[&[i64]] = &[&[-1], &[-1, 1]];

    #[test]
    fn bytes_from_flat_nested_and_raw_data_are_the_same() {
        let want = vec![b"a".to_vec(), b"bc".to_vec()];
        let flat = input("BYTES", &[2], Elements::Json(json!(["a", "bc"])));
        assert_eq!(flat.byte_strings(TEXT).unwrap(), want);
        let nested = input("BYTES", &[2, 1], Elements::Json(json!([["a"], ["bc"]])));
        assert_eq!(nested.byte_strings(TEXT).unwrap(), want);
        let flat2 = input("BYTES", &[2, 1], Elements::Json(json!(["a", "bc"])));
        assert_eq!(flat2.byte_strings(TEXT).unwrap(), want);
        let raw = join_byte_strings([&b"a"[..], &b"bc"[..]]);
        assert_eq!(raw, [1, 0, 0, 0, b'a', 2, 0, 0, 0, b'b', b'c']);
        let r = input("BYTES", &[2], Elements::Raw(raw));
        assert_eq!(r.byte_strings(TEXT).unwrap(), want);
    }

    #[test]
    fn wrong_datatypes_shapes_and_counts_name_the_tensor() {
        let e = input("INT32", &[1], Elements::Json(json!([1])))
            .byte_strings(TEXT)
            .unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert_eq!(e.param.as_deref(), Some("text"));
        assert!(
            e.message.contains("must have datatype BYTES, got `INT32`"),
            "{}",
            e.message
        );
        let e = input("STRING", &[1], Elements::Json(json!(["a"])))
            .byte_strings(TEXT)
            .unwrap_err();
        assert!(e.message.contains("not a datatype"), "{}", e.message);
        let e = input("BYTES", &[1, 2], Elements::Json(json!(["a", "b"])))
            .byte_strings(TEXT)
            .unwrap_err();
        assert!(
            e.message.contains("must have shape [-1] or [-1, 1]"),
            "{}",
            e.message
        );
        let e = input("BYTES", &[-2], Elements::Json(json!(["a"])))
            .byte_strings(TEXT)
            .unwrap_err();
        assert!(e.message.contains("got [-2]"), "{}", e.message);
        let e = input("BYTES", &[3], Elements::Json(json!(["a", "b"])))
            .byte_strings(TEXT)
            .unwrap_err();
        assert!(
            e.message.contains("3 elements, but its data holds 2"),
            "{}",
            e.message
        );
        let e = input("BYTES", &[2], Elements::Json(json!(["a", 5])))
            .byte_strings(TEXT)
            .unwrap_err();
        assert!(e.message.contains("Element 1"), "{}", e.message);
        let e = input("BYTES", &[2, 1], Elements::Json(json!([["a", "b"], []])))
            .byte_strings(TEXT)
            .unwrap_err();
        assert!(
            e.message.contains("does not follow its shape"),
            "{}",
            e.message
        );
    }

    #[test]
    fn malformed_raw_bytes_are_refused_never_read_past_the_end() {
        assert_eq!(
            split_byte_strings(&[1, 0, 0], 1),
            Err(RawBytesError::TruncatedLength {
                index: 0,
                offset: 0
            })
        );
        assert_eq!(
            split_byte_strings(&[5, 0, 0, 0, b'a'], 1),
            Err(RawBytesError::PastEnd {
                index: 0,
                len: 5,
                left: 1
            })
        );
        assert_eq!(
            split_byte_strings(&[0xff, 0xff, 0xff, 0xff], 1),
            Err(RawBytesError::PastEnd {
                index: 0,
                len: u32::MAX as usize,
                left: 0
            })
        );
        assert_eq!(
            split_byte_strings(&[1, 0, 0, 0, b'a', 9], 1),
            Err(RawBytesError::Trailing { bytes: 1 })
        );
        assert_eq!(
            split_byte_strings(&[0, 0, 0, 0, 1, 0, 0, 0, b'x'], 2).unwrap(),
            vec![vec![], vec![b'x']]
        );
        let e = input("BYTES", &[2], Elements::Raw(vec![1, 0, 0, 0, b'a']))
            .byte_strings(TEXT)
            .unwrap_err();
        assert!(
            e.message
                .contains("ends inside the 4-byte length of element 1"),
            "{}",
            e.message
        );
    }

    #[test]
    fn raw_bytes_round_trip_for_any_content() {
        // A small deterministic generator: lengths 0..40, bytes of every value.
        let mut seed = 7u32;
        for _ in 0..200 {
            let n = (seed % 5) as usize;
            let items: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    let len = (seed >> 16) as usize % 40;
                    (0..len).map(|i| (seed as usize + i * 31) as u8).collect()
                })
                .collect();
            let raw = join_byte_strings(items.iter().map(Vec::as_slice));
            assert_eq!(split_byte_strings(&raw, n).unwrap(), items);
            if !raw.is_empty() {
                assert!(split_byte_strings(&raw[..raw.len() - 1], n).is_err());
            }
            seed = seed.wrapping_add(1);
        }
    }

    #[test]
    fn bools_decode_from_json_raw_and_contents() {
        const ONE: &[&[i64]] = &[&[1]];
        let b = |elements| InputTensor {
            name: "truncate".into(),
            datatype: "BOOL".into(),
            shape: vec![1],
            elements,
        };
        assert_eq!(b(Elements::Json(json!([true]))).bools(ONE).unwrap(), [true]);
        assert_eq!(b(Elements::Json(json!(false))).bools(ONE).unwrap(), [false]);
        assert_eq!(b(Elements::Raw(vec![1])).bools(ONE).unwrap(), [true]);
        assert_eq!(b(Elements::Bools(vec![true])).bools(ONE).unwrap(), [true]);
        assert!(b(Elements::Raw(vec![2])).bools(ONE).is_err());
        assert!(b(Elements::Json(json!(["yes"]))).bools(ONE).is_err());
        assert!(b(Elements::Raw(vec![1, 0])).bools(ONE).is_err());
    }

    #[test]
    fn outputs_serialize_raw_and_json() {
        let t = OutputTensor {
            name: "embedding",
            shape: vec![1, 2],
            data: OutputData::Fp32(vec![1.0, -0.1]),
        };
        assert_eq!(t.datatype().name(), "FP32");
        assert_eq!(
            t.raw(),
            [1.0f32.to_le_bytes(), (-0.1f32).to_le_bytes()].concat()
        );
        // f32 values print as the shortest text that reads back as the same f32.
        assert_eq!(serde_json::to_string(&t.data).unwrap(), "[1.0,-0.1]");
        let t = OutputTensor {
            name: "text_output",
            shape: vec![1],
            data: OutputData::Bytes(vec![b"hi".to_vec()]),
        };
        assert_eq!(t.raw(), [2, 0, 0, 0, b'h', b'i']);
        assert_eq!(serde_json::to_value(&t.data).unwrap(), json!(["hi"]));
        assert_eq!(DataType::parse("BF16"), Some(DataType::Bf16));
        assert_eq!(DataType::parse("bf16"), None);
    }
}

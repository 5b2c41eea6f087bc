//! The binary tensor data extension of the REST protocol (what `tritonclient.http` sends by
//! default): a body is a JSON header of `Inference-Header-Content-Length` bytes followed by the
//! raw tensors, each input saying its size in its `binary_data_size` parameter; a response may
//! carry its outputs the same way.

use serde_json::Value;

use super::params::Params;
use crate::api::ApiError;

/// The header naming the length of the JSON part of a binary body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

fn bad(message: String) -> ApiError {
    ApiError::bad_request("invalid_binary_data", message)
}

/// Splits `body` into its JSON header and its binary part, as `header_length` (the value of
/// `Inference-Header-Content-Length`, when sent) says; without it the body is all JSON.
pub fn split_body<'b>(
    body: &'b [u8],
    header_length: Option<&str>,
) -> Result<(&'b [u8], &'b [u8]), ApiError> {
    let Some(text) = header_length else {
        return Ok((body, &[]));
    };
    let len: usize = text.trim().parse().map_err(|_| {
        bad(format!(
            "Inference-Header-Content-Length must be a byte count, got `{text}`"
        ))
    })?;
    if len > body.len() {
        return Err(bad(format!(
            "Inference-Header-Content-Length says the JSON header has {len} bytes, but the body has only {}",
            body.len()
        )));
    }
    Ok(body.split_at(len))
}

/// The `binary_data_size` parameter of input `name`, if it has one.
pub fn binary_size(name: &str, params: &Params) -> Result<Option<usize>, ApiError> {
    match params.get("binary_data_size") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            bad(format!(
                "`binary_data_size` of input `{name}` must be a byte count, got {v}"
            ))
            .with_param(name.to_string())
        }),
    }
}

/// Hands out consecutive pieces of a body's binary part, one per input that has
/// `binary_data_size`, and checks at the end that every byte was claimed.
pub struct BinaryPart<'b> {
    rest: &'b [u8],
    at: usize,
}

impl<'b> BinaryPart<'b> {
    /// The binary part after the JSON header.
    pub fn new(bytes: &'b [u8]) -> Self {
        Self { rest: bytes, at: 0 }
    }

    /// The next `size` bytes, for input `name`.
    pub fn take(&mut self, name: &str, size: usize) -> Result<&'b [u8], ApiError> {
        if size > self.rest.len() {
            return Err(bad(format!(
                "Input `{name}` declares {size} bytes of binary data (binary_data_size), but only {} remain in the body after byte {}",
                self.rest.len(),
                self.at
            ))
            .with_param(name.to_string()));
        }
        let (piece, rest) = self.rest.split_at(size);
        self.rest = rest;
        self.at += size;
        Ok(piece)
    }

    /// Fails when bytes remain that no input claimed.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(bad(format!(
                "The body has {} bytes of binary data after the last input's (the inputs' binary_data_size add up to {})",
                self.rest.len(),
                self.at
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_header_length_splits_the_body() {
        let body = b"{\"a\":1}\x01\x02";
        assert_eq!(split_body(body, None).unwrap(), (&body[..], &b""[..]));
        let (json, bin) = split_body(body, Some("7")).unwrap();
        assert_eq!((json, bin), (&b"{\"a\":1}"[..], &b"\x01\x02"[..]));
        let e = split_body(body, Some("10")).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert!(
            e.message.contains("10 bytes, but the body has only 9"),
            "{}",
            e.message
        );
        let e = split_body(body, Some("-1")).unwrap_err();
        assert!(e.message.contains("must be a byte count"), "{}", e.message);
        assert!(split_body(body, Some("99999999999999999999999")).is_err());
    }

    #[test]
    fn binary_pieces_must_add_up_to_the_binary_part() {
        let mut part = BinaryPart::new(b"abcdef");
        assert_eq!(part.take("x", 2).unwrap(), b"ab");
        let e = part.take("y", 5).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("y"));
        assert!(e.message.contains("only 4 remain"), "{}", e.message);
        assert_eq!(part.take("y", 3).unwrap(), b"cde");
        let e = part.finish().unwrap_err();
        assert!(
            e.message.contains("1 bytes of binary data after"),
            "{}",
            e.message
        );
        let mut part = BinaryPart::new(b"ab");
        part.take("x", 2).unwrap();
        assert!(part.finish().is_ok());
    }

    #[test]
    fn binary_sizes_are_byte_counts() {
        let p = |v| {
            json!({ "binary_data_size": v })
                .as_object()
                .unwrap()
                .clone()
        };
        assert_eq!(binary_size("t", &p(json!(12))).unwrap(), Some(12));
        assert_eq!(binary_size("t", &Params::new()).unwrap(), None);
        assert!(binary_size("t", &p(json!(-1))).is_err());
        assert!(binary_size("t", &p(json!("12"))).is_err());
    }
}

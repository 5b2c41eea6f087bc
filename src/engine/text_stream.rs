//! Streaming detokenization: generated ids to text, piece by piece, never splitting a character.

use super::{Decoder, EngineError};

/// Turns generated ids into text piece by piece for streaming: each call returns the text that
/// became final, holding back bytes of a character that is still incomplete, so that the
/// concatenation of all pieces equals decoding all ids at once. Special tokens are skipped.
#[derive(Debug, Default, Clone)]
pub struct TextStream {
    ids: Vec<u32>,
    /// Start of the ids decoded together for context.
    prefix: usize,
    /// End of the ids whose text was already emitted.
    read: usize,
}

impl TextStream {
    /// Adds `id`; returns the new text, possibly empty.
    pub fn push(&mut self, decoder: &impl Decoder, id: u32) -> Result<String, EngineError> {
        self.ids.push(id);
        let before = decoder.decode(&self.ids[self.prefix..self.read])?;
        let now = decoder.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            if let Some(piece) = now.get(before.len()..) {
                let piece = piece.to_string();
                self.prefix = self.read;
                self.read = self.ids.len();
                return Ok(piece);
            }
        }
        Ok(String::new())
    }

    /// Text held back at the end (an incomplete character), emitted when the sequence ends.
    pub fn finish(&mut self, decoder: &impl Decoder) -> Result<String, EngineError> {
        let before = decoder.decode(&self.ids[self.prefix..self.read])?;
        let now = decoder.decode(&self.ids[self.prefix..])?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(now.get(before.len()..).unwrap_or_default().to_string())
    }
}

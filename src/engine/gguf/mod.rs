//! GGUF files: the typed metadata and tensor reader, the tokenizer stored in the metadata, and
//! the chat template rendered as Hugging Face renders it.

pub mod chat_template;
pub mod reader;
pub mod tokenizer;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use reader::GgufFile;
pub use tokenizer::GenerationTokenizer;

//! The OpenAI dialect: `POST /v1/embeddings`, `/v1/chat/completions` and `/v1/completions`,
//! their wire types and validation, on the shared handler core.

pub mod completions;
pub mod embeddings;

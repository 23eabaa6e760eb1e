//! OpenAI's wire format: request and response types, field for field.

pub mod types;

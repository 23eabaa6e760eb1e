//! Tuna's data path: JSONL checks, chat templates, tokenization, label masks and packing.
//!
//! Each step is a pure function between typed values:
//! raw JSONL line → [`Conversation`] → rendered chat → tokenized example (ids + labels) → packed batch.

pub mod conversation;

pub use conversation::{Conversation, Message, Role};

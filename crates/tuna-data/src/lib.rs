//! Tuna's data path: JSONL checks, chat templates, tokenization, label masks and packing.
//!
//! Each step is a pure function between typed values:
//! raw JSONL line → [`Conversation`] → rendered chat → tokenized example (ids + labels) → packed batch.

pub mod check;
pub mod conversation;
pub mod error;
pub mod jsonl;
pub mod mask;
pub mod pack;
pub mod template;
pub mod tokenize;

pub use check::{CheckOptions, CheckReport, TokenCounter, check_file, check_reader};
pub use conversation::{Conversation, Message, Role};
pub use error::{Error, Result};
pub use jsonl::read_conversations;

//! Tuna's data path: JSONL checks, chat templates, tokenization, label masks and packing.
//!
//! Each step is a pure function between typed values:
//! raw JSONL line → [`Conversation`] → rendered chat → tokenized example (ids + labels) → packed batch.
//! Preference (DPO) data takes the same path twice: a [`PreferenceExample`] is a prompt with a
//! preferred and a non-preferred answer, tokenized as two conversations that differ only in their
//! last (and only trained) assistant message.

pub mod check;
pub mod conversation;
pub mod error;
pub mod jsonl;
pub mod mask;
pub mod pack;
pub mod template;
pub mod tokenize;

pub use check::{CheckOptions, CheckReport, DataFormat, TokenCounter, check_file, check_reader};
pub use conversation::{Conversation, Message, PreferenceExample, Role};
pub use error::{Error, Result};
pub use jsonl::{read_conversations, read_preference_pairs};

//! What the checker reports: stable codes, their severity, and one reported problem.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable name for each kind of problem (serialized in snake_case).
///
/// Clients (the console, scripts) branch on these, so a code is never renamed; new kinds get new
/// codes. Whether a code is an error (the file cannot be trained on) or a warning (it can, but
/// probably not as meant) is fixed per code: see [`Code::is_error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    // --- errors: the file as a whole
    /// The file has no bytes, or only blank lines.
    EmptyFile,
    /// The file is one JSON array (or the first line opens one): not JSONL. Checking stops.
    JsonArray,
    /// gzip, zip, Parquet, xz or zstd data, not text. Checking stops.
    BinaryFile,
    /// Not one line is a JSON object: the file is CSV, plain text or binary data. Reported once
    /// instead of an error per line.
    NotJsonl,
    /// Every example is longer than the maximum sequence length and would be dropped.
    NoTrainableExamples,
    // --- errors: one line
    InvalidUtf8,
    NulByte,
    LineTooLong,
    InvalidJson,
    NotAnObject,
    /// The same key twice in one object: JSON libraries disagree on which one wins.
    DuplicateKey,
    MissingMessages,
    MessagesNotAList,
    EmptyMessages,
    MessageNotAnObject,
    MissingRole,
    UnknownRole,
    MissingContent,
    InvalidContent,
    EmptyAssistantContent,
    SystemNotFirst,
    MultipleSystem,
    NoUserMessage,
    NoAssistantMessage,
    InvalidWeight,
    /// `tool`/`function` roles, `tool_calls`, `function_call`: not trained by Tuna yet.
    ToolCallsNotSupported,
    /// The token counter (chat template + tokenizer) failed on this example.
    TokenizationFailed,
    // --- errors: one line of a preference (DPO) file
    /// No `input` (the prompt of a preference pair).
    MissingInput,
    /// `input` is not an object with a non-empty `messages` list.
    InvalidInput,
    /// The last message of `input.messages` is not a user message: the outputs answer it.
    InputNotEndingWithUser,
    /// No `preferred_output` or no `non_preferred_output`.
    MissingOutput,
    /// An output is not a list holding exactly one assistant message.
    InvalidOutput,
    /// An output's assistant message has no text.
    EmptyOutput,
    /// The preferred and the non-preferred output are the same text: the pair teaches nothing.
    IdenticalOutputs,
    // --- warnings
    BlankLine,
    ByteOrderMark,
    UnknownField,
    /// An empty user or system message (an empty assistant message is an error).
    EmptyContent,
    /// Every assistant message has `"weight": 0`, so the example teaches nothing.
    NoTrainedMessage,
    /// The conversation ends with a user or system message, which is never learned from.
    LastMessageNotAssistant,
    /// The same conversation (after trimming whitespace) appeared on an earlier line.
    DuplicateExample,
    /// More tokens than the maximum sequence length: dropped, or truncated when asked.
    TooManyTokens,
}

impl Code {
    /// Every code, in declaration order.
    pub const ALL: [Code; 42] = [
        Code::EmptyFile,
        Code::JsonArray,
        Code::BinaryFile,
        Code::NotJsonl,
        Code::NoTrainableExamples,
        Code::InvalidUtf8,
        Code::NulByte,
        Code::LineTooLong,
        Code::InvalidJson,
        Code::NotAnObject,
        Code::DuplicateKey,
        Code::MissingMessages,
        Code::MessagesNotAList,
        Code::EmptyMessages,
        Code::MessageNotAnObject,
        Code::MissingRole,
        Code::UnknownRole,
        Code::MissingContent,
        Code::InvalidContent,
        Code::EmptyAssistantContent,
        Code::SystemNotFirst,
        Code::MultipleSystem,
        Code::NoUserMessage,
        Code::NoAssistantMessage,
        Code::InvalidWeight,
        Code::ToolCallsNotSupported,
        Code::TokenizationFailed,
        Code::MissingInput,
        Code::InvalidInput,
        Code::InputNotEndingWithUser,
        Code::MissingOutput,
        Code::InvalidOutput,
        Code::EmptyOutput,
        Code::IdenticalOutputs,
        Code::BlankLine,
        Code::ByteOrderMark,
        Code::UnknownField,
        Code::EmptyContent,
        Code::NoTrainedMessage,
        Code::LastMessageNotAssistant,
        Code::DuplicateExample,
        Code::TooManyTokens,
    ];

    pub fn is_error(self) -> bool {
        !matches!(
            self,
            Code::BlankLine
                | Code::ByteOrderMark
                | Code::UnknownField
                | Code::EmptyContent
                | Code::NoTrainedMessage
                | Code::LastMessageNotAssistant
                | Code::DuplicateExample
                | Code::TooManyTokens
        )
    }

    /// The serialized name, e.g. `"unknown_role"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::EmptyFile => "empty_file",
            Code::JsonArray => "json_array",
            Code::BinaryFile => "binary_file",
            Code::NotJsonl => "not_jsonl",
            Code::NoTrainableExamples => "no_trainable_examples",
            Code::InvalidUtf8 => "invalid_utf8",
            Code::NulByte => "nul_byte",
            Code::LineTooLong => "line_too_long",
            Code::InvalidJson => "invalid_json",
            Code::NotAnObject => "not_an_object",
            Code::DuplicateKey => "duplicate_key",
            Code::MissingMessages => "missing_messages",
            Code::MessagesNotAList => "messages_not_a_list",
            Code::EmptyMessages => "empty_messages",
            Code::MessageNotAnObject => "message_not_an_object",
            Code::MissingRole => "missing_role",
            Code::UnknownRole => "unknown_role",
            Code::MissingContent => "missing_content",
            Code::InvalidContent => "invalid_content",
            Code::EmptyAssistantContent => "empty_assistant_content",
            Code::SystemNotFirst => "system_not_first",
            Code::MultipleSystem => "multiple_system",
            Code::NoUserMessage => "no_user_message",
            Code::NoAssistantMessage => "no_assistant_message",
            Code::InvalidWeight => "invalid_weight",
            Code::ToolCallsNotSupported => "tool_calls_not_supported",
            Code::TokenizationFailed => "tokenization_failed",
            Code::MissingInput => "missing_input",
            Code::InvalidInput => "invalid_input",
            Code::InputNotEndingWithUser => "input_not_ending_with_user",
            Code::MissingOutput => "missing_output",
            Code::InvalidOutput => "invalid_output",
            Code::EmptyOutput => "empty_output",
            Code::IdenticalOutputs => "identical_outputs",
            Code::BlankLine => "blank_line",
            Code::ByteOrderMark => "byte_order_mark",
            Code::UnknownField => "unknown_field",
            Code::EmptyContent => "empty_content",
            Code::NoTrainedMessage => "no_trained_message",
            Code::LastMessageNotAssistant => "last_message_not_assistant",
            Code::DuplicateExample => "duplicate_example",
            Code::TooManyTokens => "too_many_tokens",
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem: where it is, its code, and a sentence for a person (naming the field path, e.g.
/// `messages[2].role`, and quoting the bad value, cut to a few dozen characters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// 1-based line number; 0 for a problem of the whole file (e.g. `empty_file`).
    pub line: u64,
    /// The message (0-based index into `messages`; into `input.messages` in a preference file) the
    /// problem is in, if it is in one. Problems of a preference file's outputs have none: their
    /// message names the output.
    pub message_index: Option<usize>,
    pub code: Code,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_matches_serde() {
        for code in Code::ALL {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
    }
}

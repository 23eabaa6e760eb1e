//! The crate's one error type. Variants carry the context a user needs to fix the problem
//! (file path, line, field); messages are lowercase.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}:{line}: {code}: {message}")]
    InvalidDataset {
        path: PathBuf,
        line: u64,
        code: &'static str,
        message: String,
    },

    /// A model directory lacks a file the tokenizer needs.
    #[error(
        "model directory `{dir}` has no `{file}` (a Hugging Face model directory needs tokenizer.json and tokenizer_config.json)"
    )]
    MissingModelFile { dir: PathBuf, file: &'static str },

    /// `tokenizer_config.json` is not valid JSON or lacks a field we need.
    #[error("invalid tokenizer config: {0}")]
    TokenizerConfig(String),

    /// The `tokenizers` library rejected a file or failed to encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The chat template failed to compile or render (includes `raise_exception` messages).
    #[error("chat template: {0}")]
    Template(String),

    /// A conversation could not be turned into a training example (e.g. no trained assistant turn
    /// found in the render).
    #[error("cannot build training example: {0}")]
    Example(String),
}

impl From<minijinja::Error> for Error {
    fn from(e: minijinja::Error) -> Self {
        // minijinja's Display omits the chain (e.g. the message of `raise_exception`); include it.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        Error::Template(msg)
    }
}

impl From<tokenizers::Error> for Error {
    fn from(e: tokenizers::Error) -> Self {
        Error::Tokenizer(e.to_string())
    }
}

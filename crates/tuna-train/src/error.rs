//! The training crate's error type: every failure names the field, file or step it comes from.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting of [`crate::TrainConfig`] that cannot work; the message quotes the field.
    #[error("invalid training config: {0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] tuna_data::Error),
    #[error(transparent)]
    Model(#[from] tuna_model::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    Dataset { path: PathBuf, reason: String },
    /// The loss or the gradient norm stopped being a finite number; nothing of this step was saved.
    #[error(
        "step {step}: the {what} is {value} (not finite); training stopped before saving anything of this step. \
         Lower the learning rate, keep gradient clipping on (`max_grad_norm`) or check the data"
    )]
    NonFinite {
        step: usize,
        what: &'static str,
        value: f64,
    },
    #[error("cannot resume from {path}: {reason}")]
    Resume { path: PathBuf, reason: String },
    #[error("{path}: checkpoint file: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

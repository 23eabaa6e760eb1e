//! Raw requests become `Valid*` values here, so handlers, the queue and the inference code never
//! see unchecked input. Every message names the field (`tuna.lora.rank`) and the limit.
//!
//! - `chat.rs`: chat completion requests.
//! - `settings.rs`: the table of job settings (types, limits, defaults, `auto` rules,
//!   descriptions): the one place they live; `GET /v1/tuna/job_settings` serves it.
//! - `job.rs`: a job request (or estimate request) checked against that table, every invalid
//!   field reported at once.

pub mod chat;
pub mod job;
pub mod settings;

pub use chat::{DEFAULT_MAX_TOKENS, MAX_COMPLETION_TOKENS, ValidChatRequest, validate_chat};
pub use job::{ValidJobRequest, validate_job_request};

use crate::error::ApiError;

pub(crate) fn bad(message: String, param: &str) -> ApiError {
    ApiError::invalid_param(message, param)
}

pub(crate) fn int_in(
    v: Option<i64>,
    lo: i64,
    hi: i64,
    param: &str,
) -> Result<Option<i64>, ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => Err(bad(
            format!("`{param}` must be between {lo} and {hi}, got {x}"),
            param,
        )),
        _ => Ok(v),
    }
}

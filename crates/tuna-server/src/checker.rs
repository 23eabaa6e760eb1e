//! The dataset check run on every upload (and again at job creation when the job's sequence
//! length cuts examples the upload check did not): `tuna_data::check_file` with token counts from
//! a model's chat template and tokenizer. Runs on blocking threads only.

use std::path::Path;

use tuna_data::check::{CheckOptions, Overflow, TokenCount};
use tuna_data::tokenize::ChatTokenizer;
use tuna_data::{CheckReport, Conversation, TokenCounter};

/// Sequence length the upload check counts with (training's default).
pub const CHECK_MAX_SEQ_LEN: usize = 2048;

/// Counts tokens the way training renders a conversation (template + tokenizer + label mask).
pub struct TemplateCounter<'a>(pub &'a ChatTokenizer);

impl TokenCounter for TemplateCounter<'_> {
    fn count(&self, conv: &Conversation) -> Result<(usize, usize), String> {
        let ex = self.0.encode_example(conv).map_err(|e| e.to_string())?;
        Ok((ex.len(), ex.trained_tokens()))
    }

    fn count_with_limit(&self, conv: &Conversation, max_len: usize) -> Result<TokenCount, String> {
        let ex = self.0.encode_example(conv).map_err(|e| e.to_string())?;
        let within = ex
            .labels
            .iter()
            .take(max_len)
            .skip(1)
            .filter(|&&l| l != tuna_data::mask::IGNORE_INDEX)
            .count();
        Ok(TokenCount {
            total: ex.len(),
            trained: ex.trained_tokens(),
            trained_within_limit: Some(within),
        })
    }
}

/// Checks `path` with token counts for `max_seq_len` (longer examples are truncated, as training does).
pub fn check_dataset(
    path: &Path,
    tokenizer: &ChatTokenizer,
    max_seq_len: usize,
) -> tuna_data::Result<CheckReport> {
    let opts = CheckOptions {
        max_seq_len,
        overflow: Overflow::Truncate,
        ..CheckOptions::default()
    };
    tuna_data::check_file(path, &opts, Some(&TemplateCounter(tokenizer)))
}

/// What estimates need from a report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DatasetSize {
    pub examples: i64,
    pub tokens_per_epoch: i64,
    pub trained_tokens_per_epoch: i64,
    /// Longest example before truncation.
    pub longest: i64,
    pub max_seq_len: i64,
}

pub fn dataset_size(report: &serde_json::Value) -> Option<DatasetSize> {
    let stats = report.get("stats")?;
    let tokens = stats.get("tokens")?;
    let n = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_i64());
    Some(DatasetSize {
        examples: n(stats, "examples")? - n(tokens, "dropped").unwrap_or(0),
        tokens_per_epoch: n(tokens, "epoch_tokens")?,
        trained_tokens_per_epoch: n(tokens, "epoch_trained_tokens")?,
        longest: tokens.get("total").and_then(|t| n(t, "max")).unwrap_or(0),
        max_seq_len: n(tokens, "max_seq_len")?,
    })
}

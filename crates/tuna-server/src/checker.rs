//! The dataset check run on every upload (and again at job creation when the job's sequence
//! length cuts examples the upload check did not): `tuna_data::check_file` with token counts from
//! a model's chat template and tokenizer. Runs on blocking threads only.
//!
//! Reports are bounded (issue 9, item 6: 100 lines with 1 MB unknown keys made every
//! `GET /v1/files` 105 MB and the database 107 MB): a report keeps the first [`STORED_ISSUES`]
//! errors and warnings (its `stats` count them all), each message cut to [`MAX_ISSUE_CHARS`];
//! a file list shows [`LISTED_ISSUES`] of each per file.

use std::path::Path;

use tuna_data::check::{CheckOptions, Overflow, TokenCount};
use tuna_data::tokenize::ChatTokenizer;
use tuna_data::{CheckReport, Conversation, TokenCounter};

use crate::error::clip_to;

/// Sequence length the upload check counts with (training's default).
pub const CHECK_MAX_SEQ_LEN: usize = 2048;
/// Errors, and warnings, kept in a stored report.
pub const STORED_ISSUES: usize = 100;
/// Errors, and warnings, shown per file in a list of files.
pub const LISTED_ISSUES: usize = 3;
/// Longest issue message kept, in characters (the checker quotes field names whole).
pub const MAX_ISSUE_CHARS: usize = 300;

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
        max_reported: STORED_ISSUES,
        ..CheckOptions::default()
    };
    let mut report = tuna_data::check_file(path, &opts, Some(&TemplateCounter(tokenizer)))?;
    for issue in report.errors.iter_mut().chain(report.warnings.iter_mut()) {
        if let std::borrow::Cow::Owned(cut) = clip_to(&issue.message, MAX_ISSUE_CHARS) {
            issue.message = cut;
        }
    }
    Ok(report)
}

/// A stored report (JSON) bounded for an answer: at most `max_issues` errors and warnings, each
/// message at most [`MAX_ISSUE_CHARS`] (reports stored by older versions were unbounded).
pub fn bounded_report(report: &str, max_issues: usize) -> Option<serde_json::Value> {
    let mut v: serde_json::Value = serde_json::from_str(report).ok()?;
    for key in ["errors", "warnings"] {
        if let Some(list) = v.get_mut(key).and_then(|l| l.as_array_mut()) {
            list.truncate(max_issues);
            for issue in list {
                if let Some(m) = issue.get_mut("message")
                    && let Some(text) = m.as_str()
                    && let std::borrow::Cow::Owned(cut) = clip_to(text, MAX_ISSUE_CHARS)
                {
                    *m = serde_json::Value::String(cut);
                }
            }
        }
    }
    Some(v)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_reports_keep_few_short_issues() {
        let issue = |i: usize| {
            serde_json::json!({"line": i, "message_index": null, "code": "unknown_field",
                "message": format!("the field `{}` is ignored", "k".repeat(10_000))})
        };
        let report = serde_json::json!({
            "ok": true,
            "errors": [],
            "warnings": (1..=50).map(issue).collect::<Vec<_>>(),
            "stats": {"warning_count": 50},
        });
        let v = bounded_report(&report.to_string(), LISTED_ISSUES).unwrap();
        assert_eq!(v["warnings"].as_array().unwrap().len(), LISTED_ISSUES);
        assert_eq!(v["stats"]["warning_count"], 50);
        assert!(v.to_string().len() < 2_000, "{}", v.to_string().len());
        assert!(bounded_report("not json", 3).is_none());
    }
}

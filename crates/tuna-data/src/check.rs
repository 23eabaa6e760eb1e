//! `tuna data check`: every problem of a JSONL dataset in one pass, with statistics.
//!
//! The file is streamed in chunks of whole lines ([`crate::jsonl`]); the lines of a chunk are
//! checked in parallel with rayon (parsing into borrowed JSON, then every rule of the format, see
//! `check/line.rs`), while this thread merges the previous chunk's results and reads the next
//! chunk. Results are merged in line order, so the report is the same whatever the thread count or
//! chunk size. With a [`TokenCounter`], tokens are counted in the same parallel pass. Memory is
//! bounded: three chunks (8 MiB each by default) and their results, the first [`CheckOptions::max_reported`] errors and warnings (the rest are only counted), token
//! counts per distinct length, and at most [`CheckOptions::max_tracked_examples`] hashes.
//!
//! Lines: `\n`-separated, a trailing `\r` stripped (CRLF files pass), blank lines skipped with a
//! warning, a UTF-8 byte-order mark skipped with a warning. Lines longer than
//! [`CheckOptions::max_line_bytes`] (default 4 MiB) are errors: Qwen2.5's longest context is
//! 128k tokens, about 0.5 MB of text, so a longer line cannot be trained on, and the limit bounds
//! the memory one line takes.

mod issue;
mod line;
mod preference;
mod stats;

use std::io::{BufRead, Read};
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use issue::{Code, Issue};
pub use stats::{Bucket, HISTOGRAM_EDGES, PairTokenStats, RoleCounts, Stats, Summary, TokenStats};

use crate::conversation::Conversation;
use crate::error::{Error, Result};
use crate::jsonl::{Chunk, Json, LineChunks, LineSpan};
pub(crate) use line::Row;
use line::{LineKind, LineOutcome};
use stats::{SeenMap, TokenAcc};

/// Counts the tokens of a conversation as training will see them (chat template + tokenizer).
///
/// Implemented by the CLI and the server over the real tokenizer; the checker only needs counts,
/// so it does not depend on how they are made. Called from several threads at once.
pub trait TokenCounter: Sync {
    /// `(total tokens, trained tokens)` of the rendered conversation. The error is shown to the
    /// user as the reason the line failed (`tokenization_failed`).
    fn count(&self, conv: &Conversation) -> std::result::Result<(usize, usize), String>;

    /// Like [`count`](Self::count), plus how many trained tokens fall within the first `max_len`
    /// tokens (what truncation keeps). The default cannot tell and leaves it `None`; the statistics
    /// then use `min(trained, max_len)`, an upper bound.
    fn count_with_limit(
        &self,
        conv: &Conversation,
        max_len: usize,
    ) -> std::result::Result<TokenCount, String> {
        let _ = max_len;
        let (total, trained) = self.count(conv)?;
        Ok(TokenCount {
            total,
            trained,
            trained_within_limit: None,
        })
    }
}

/// Token counts of one example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCount {
    pub total: usize,
    pub trained: usize,
    /// Trained tokens among the first `max_len` tokens, when known.
    pub trained_within_limit: Option<usize>,
}

/// What each line of a dataset holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// A conversation for supervised fine-tuning: `{"messages": [...]}`.
    #[default]
    Chat,
    /// A preference pair for DPO (OpenAI's preference fine-tuning format):
    /// `{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}`.
    Preference,
}

impl DataFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DataFormat::Chat => "chat",
            DataFormat::Preference => "preference",
        }
    }

    /// The format of the first line of `chunk` that parses as a JSON object: preference when it
    /// has `input`, `preferred_output` or `non_preferred_output` and no `messages`, chat otherwise
    /// (also when no line parses: the chat checks then explain what is wrong).
    fn detect(chunk: &Chunk) -> DataFormat {
        for &span in chunk.lines.iter().take(1000) {
            let Some(bytes) = chunk.bytes(span) else {
                continue;
            };
            let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            let Ok(text) = std::str::from_utf8(bytes) else {
                continue;
            };
            let Ok(value @ Json::Obj(_)) = Json::parse(text.trim_end_matches('\r')) else {
                continue;
            };
            let has = |k: &str| value.get(k).is_some();
            let preference = !has("messages")
                && (has("input") || has("preferred_output") || has("non_preferred_output"));
            return if preference {
                DataFormat::Preference
            } else {
                DataFormat::Chat
            };
        }
        DataFormat::Chat
    }
}

/// What happens to an example with more tokens than the maximum sequence length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Left out of training (the default: a cut conversation can end mid-answer).
    #[default]
    Drop,
    /// Only the first `max_seq_len` tokens are trained on.
    Truncate,
}

/// How to check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The format every line must follow; `None` (the default) recognises it from the first line
    /// that is a JSON object ([`Stats::format`] says which was used).
    pub format: Option<DataFormat>,
    /// Longest accepted line in bytes (without its newline). Default 4 MiB.
    pub max_line_bytes: usize,
    /// Maximum sequence length in tokens, used with a token counter. Default 2048.
    pub max_seq_len: usize,
    pub overflow: Overflow,
    /// How many errors and how many warnings the report keeps (all are counted). Default 1000.
    pub max_reported: usize,
    /// How many distinct examples the duplicate tracker remembers (8 bytes + a line number each).
    /// Default 5 million, about 150 MB at worst.
    pub max_tracked_examples: usize,
    /// Bytes read per chunk of lines checked in parallel. Default 8 MiB; at least
    /// `max_line_bytes + 1` is used.
    pub chunk_bytes: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            format: None,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_seq_len: 2048,
            overflow: Overflow::Drop,
            max_reported: 1000,
            max_tracked_examples: 5_000_000,
            chunk_bytes: 8 << 20,
        }
    }
}

/// Default [`CheckOptions::max_line_bytes`]: 4 MiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 4 << 20;

/// The result of a check: `{"ok", "errors", "warnings", "stats"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// No errors: the file can be trained on (warnings allowed).
    pub ok: bool,
    /// The first [`CheckOptions::max_reported`] errors in file order; `stats.error_count` has all.
    pub errors: Vec<Issue>,
    pub warnings: Vec<Issue>,
    pub stats: Stats,
}

/// Checks a JSONL file; see the module docs. I/O failures are errors, problems in the data are
/// reported in the [`CheckReport`].
pub fn check_file(
    path: &Path,
    opts: &CheckOptions,
    counter: Option<&dyn TokenCounter>,
) -> Result<CheckReport> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    run_check(file, opts, counter, None, false).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Checks JSONL from any reader (an upload, stdin); as [`check_file`].
pub fn check_reader(
    reader: impl BufRead,
    opts: &CheckOptions,
    counter: Option<&dyn TokenCounter>,
) -> Result<CheckReport> {
    run_check(reader, opts, counter, None, false).map_err(|source| Error::Io {
        path: "<reader>".into(),
        source,
    })
}

/// The pipeline. With `sink`, valid rows are collected in order; with `stop_at_error`, checking
/// stops after the chunk holding the first error.
pub(crate) fn run_check<R: Read>(
    reader: R,
    opts: &CheckOptions,
    counter: Option<&dyn TokenCounter>,
    mut sink: Option<&mut Vec<Row>>,
    stop_at_error: bool,
) -> std::io::Result<CheckReport> {
    let mut chunks = LineChunks::new(reader, opts.chunk_bytes, opts.max_line_bytes);
    let keep = sink.is_some();
    let mut current = chunks.next_chunk()?;
    let format = opts.format.unwrap_or_else(|| {
        current
            .as_ref()
            .map_or(DataFormat::Chat, DataFormat::detect)
    });
    let mut acc = Accumulator::new(opts, format, counter.is_some());
    acc.head = chunks.head().to_vec();
    if let Some((code, message)) = line::sniff_binary(chunks.head()) {
        // Binary data or UTF-16: every "line" would be noise, so report the file once and stop.
        acc.stats.lines = 1;
        acc.stats.invalid_lines = 1;
        acc.push(Issue {
            line: 1,
            message_index: None,
            code,
            message,
        });
        acc.stopped = true;
        current = None;
    }
    // A three-stage pipeline: while the pool checks `current`, this thread merges the chunk
    // checked before it (`checked`) and reads the next one. Merging is sequential (line order,
    // duplicates), so overlapping it keeps both cores on the parallel part.
    let mut checked: Option<(Chunk, Vec<LineOutcome>)> = None;
    let finished = |acc: &Accumulator| acc.stopped || (stop_at_error && acc.stats.error_count > 0);
    while current.is_some() || checked.is_some() {
        let mut outcomes = Vec::new();
        let mut read = Ok(None);
        rayon::in_place_scope(|s| {
            if let Some(chunk) = &current {
                s.spawn(|_| outcomes = check_chunk(chunk, format, opts, counter, keep));
            }
            if let Some((chunk, outs)) = checked.take() {
                for (i, out) in outs.into_iter().enumerate() {
                    if finished(&acc) {
                        break;
                    }
                    acc.merge(chunk.first_line + i as u64, out, sink.as_deref_mut());
                }
                chunks.recycle(chunk.data);
            }
            if current.is_some() && !finished(&acc) {
                read = chunks.next_chunk();
            }
        });
        if finished(&acc) {
            break;
        }
        checked = current.take().map(|c| (c, outcomes));
        current = read?;
    }
    Ok(acc.finish())
}

/// Checks the lines of one chunk in parallel, results in line order.
fn check_chunk(
    chunk: &Chunk,
    format: DataFormat,
    opts: &CheckOptions,
    counter: Option<&dyn TokenCounter>,
    keep: bool,
) -> Vec<LineOutcome> {
    chunk
        .lines
        .par_iter()
        .enumerate()
        .with_min_len(16)
        .map(|(i, &span)| {
            let line = chunk.first_line + i as u64;
            match (span, chunk.bytes(span)) {
                (_, Some(bytes)) => line::check_line(line, bytes, format, opts, counter, keep),
                (LineSpan::TooLong { len }, None) => too_long(line, len, opts),
                (LineSpan::Text { .. }, None) => unreachable!("text spans always have bytes"),
            }
        })
        .collect()
}

fn too_long(line: u64, len: u64, opts: &CheckOptions) -> LineOutcome {
    LineOutcome {
        issues: vec![Issue {
            line,
            message_index: None,
            code: Code::LineTooLong,
            message: format!(
                "the line is {len} bytes, over the limit of {} bytes (raise it with --max-line-bytes if this example is meant to be this long)",
                opts.max_line_bytes
            ),
        }],
        ..LineOutcome::default()
    }
}

/// Merges line outcomes in file order.
struct Accumulator<'o> {
    opts: &'o CheckOptions,
    errors: Vec<Issue>,
    warnings: Vec<Issue>,
    stats: Stats,
    seen: SeenMap,
    tokens: Option<TokenAcc>,
    /// A non-blank line has been merged (for the JSON-array check).
    seen_content: bool,
    stopped: bool,
    /// The file's first bytes, to say what a file that is not JSONL is instead ([`not_jsonl`]).
    head: Vec<u8>,
}

/// Per-line codes that, when they are all a file has, mean it is not JSONL at all.
const NOT_JSONL_CODES: [Code; 4] = [
    Code::InvalidJson,
    Code::InvalidUtf8,
    Code::NulByte,
    Code::NotAnObject,
];

/// The one error for a file none of whose `lines` is a JSON object: what it looks like (binary
/// data, CSV, plain text, from its first bytes `head`) and what was expected instead. None when
/// the first line starts like JSON: broken JSONL is better explained line by line.
fn not_jsonl(head: &[u8], lines: u64, format: DataFormat) -> Option<String> {
    let text = match std::str::from_utf8(head) {
        Ok(t) => Some(t),
        // A cut multi-byte character at the end of the head is still text.
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).ok(),
        Err(_) => None,
    };
    let text = text.filter(|t| !t.contains('\0'));
    let what = match text {
        None => {
            let bytes: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
            format!(
                "binary data, not text (it starts with the bytes {})",
                bytes.join(" ")
            )
        }
        Some(t) => {
            let first = t
                .trim_start_matches('\u{FEFF}')
                .lines()
                .map(|l| l.trim_end_matches('\r'))
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            if first.trim_start().starts_with(['{', '[']) {
                return None;
            }
            let shown: String = first.chars().take(60).collect();
            let cut = if shown.len() < first.len() { "…" } else { "" };
            let kind = if first.contains(',') || first.contains('\t') || first.contains(';') {
                "CSV (or TSV)"
            } else {
                "plain text"
            };
            format!("{kind}; its first line is `{shown}{cut}`")
        }
    };
    let expected = match format {
        DataFormat::Chat => {
            "JSONL: UTF-8 text with one conversation per line, {\"messages\": [{\"role\": \"user\", \"content\": \"…\"}, {\"role\": \"assistant\", \"content\": \"…\"}]}"
        }
        DataFormat::Preference => {
            "JSONL: UTF-8 text with one preference pair per line, {\"input\": {\"messages\": [...]}, \"preferred_output\": [...], \"non_preferred_output\": [...]}"
        }
    };
    let lines = if lines == 1 {
        "its only line is not".to_string()
    } else {
        format!("none of its {lines} lines is")
    };
    Some(format!(
        "the file is not JSONL: {lines} a JSON object; it looks like {what}. Expected {expected}"
    ))
}

impl<'o> Accumulator<'o> {
    fn new(opts: &'o CheckOptions, format: DataFormat, with_tokens: bool) -> Self {
        Self {
            opts,
            errors: Vec::new(),
            warnings: Vec::new(),
            stats: Stats {
                format,
                duplicates_exact: true,
                ..Stats::default()
            },
            seen: SeenMap::default(),
            tokens: with_tokens.then(TokenAcc::new),
            seen_content: false,
            stopped: false,
            head: Vec::new(),
        }
    }

    fn push(&mut self, issue: Issue) {
        let (list, count, by_code) = if issue.code.is_error() {
            (
                &mut self.errors,
                &mut self.stats.error_count,
                &mut self.stats.errors_by_code,
            )
        } else {
            (
                &mut self.warnings,
                &mut self.stats.warning_count,
                &mut self.stats.warnings_by_code,
            )
        };
        *count += 1;
        *by_code.entry(issue.code).or_insert(0) += 1;
        if list.len() < self.opts.max_reported {
            list.push(issue);
        }
    }

    fn merge(&mut self, line: u64, mut out: LineOutcome, sink: Option<&mut Vec<Row>>) {
        self.stats.lines += 1;
        if !matches!(out.kind, LineKind::Blank) && !self.seen_content {
            self.seen_content = true;
            if out.opens_array {
                // One JSON array for the whole file (or a pretty-printed one): every later line
                // would only repeat the same mistake, so say it once and stop.
                out.issues.retain(|i| i.code == Code::ByteOrderMark);
                out.issues.push(Issue {
                    line,
                    message_index: None,
                    code: Code::JsonArray,
                    message: "the file looks like one JSON array, but Tuna reads JSONL: one conversation object per line. Convert it with `jq -c '.[]' in.json > out.jsonl` (if the array is one conversation's messages, write it as {\"messages\": [...]}); the rest of the file was not checked".to_string(),
                });
                out.kind = LineKind::Invalid;
                self.stopped = true;
            }
        }
        for issue in out.issues {
            self.push(issue);
        }
        let ex = match out.kind {
            LineKind::Blank => {
                self.stats.blank_lines += 1;
                return;
            }
            LineKind::Invalid => {
                self.stats.invalid_lines += 1;
                return;
            }
            LineKind::Example(ex) => ex,
        };
        let s = &mut self.stats;
        s.examples += 1;
        s.messages.system += u64::from(ex.system);
        s.messages.user += u64::from(ex.user);
        s.messages.assistant += u64::from(ex.assistant);
        s.messages.assistant_trained += u64::from(ex.assistant_trained);
        s.examples_with_system += u64::from(ex.system > 0);
        s.turns += u64::from(ex.turns);
        s.multi_turn_examples += u64::from(ex.turns > 1);
        s.max_turns = s.max_turns.max(u64::from(ex.turns));
        match self.seen.get(&ex.hash) {
            Some(&first) => {
                self.stats.duplicates += 1;
                self.push(Issue {
                    line,
                    message_index: None,
                    code: Code::DuplicateExample,
                    message: format!(
                        "the same {} as line {first} (a repeated example weighs more in training)",
                        match self.stats.format {
                            DataFormat::Chat => "conversation",
                            DataFormat::Preference => "preference pair",
                        }
                    ),
                });
            }
            None if self.seen.len() < self.opts.max_tracked_examples => {
                self.seen.insert(ex.hash, line);
            }
            None => self.stats.duplicates_exact = false,
        }
        if let Some(acc) = &mut self.tokens {
            if let Some(tc) = &ex.tokens {
                acc.add(tc, self.opts);
            }
            if let Some((chosen, rejected)) = &ex.pair_tokens {
                acc.add_pair(chosen, rejected, self.opts);
            }
        }
        if let (Some(sink), Some(row)) = (sink, ex.row) {
            sink.push(row);
        }
    }

    fn finish(mut self) -> CheckReport {
        // Not one JSON object: an error per line would repeat one fact (a CSV file, a binary
        // file) hundreds of times, so say it once.
        let only_per_line = self
            .stats
            .errors_by_code
            .keys()
            .all(|c| NOT_JSONL_CODES.contains(c));
        let content_lines = self.stats.lines - self.stats.blank_lines;
        let not_jsonl = (!self.stopped
            && self.stats.examples == 0
            && self.stats.error_count > 0
            && only_per_line)
            .then(|| not_jsonl(&self.head, content_lines, self.stats.format))
            .flatten();
        if let Some(message) = not_jsonl {
            self.errors.clear();
            self.stats.error_count = 0;
            self.stats.errors_by_code.clear();
            self.push(Issue {
                line: 0,
                message_index: None,
                code: Code::NotJsonl,
                message,
            });
        }
        if !self.stopped && self.stats.examples == 0 && self.stats.error_count == 0 {
            let message = if self.stats.lines == 0 {
                match self.stats.format {
                    DataFormat::Chat => "the file is empty; each line must be one conversation: {\"messages\": [...]}",
                    DataFormat::Preference => "the file is empty; each line must be one preference pair: {\"input\": {\"messages\": [...]}, \"preferred_output\": [...], \"non_preferred_output\": [...]}",
                }
                .to_string()
            } else {
                "the file has only blank lines, no conversation".to_string()
            };
            self.push(Issue {
                line: 0,
                message_index: None,
                code: Code::EmptyFile,
                message,
            });
        }
        if let Some(acc) = self.tokens.take() {
            if self.stats.examples > 0 && acc.kept() == 0 {
                let message = format!(
                    "all {} examples have more than {} tokens and would be dropped; pass --truncate or raise --max-seq-len",
                    self.stats.examples, self.opts.max_seq_len
                );
                self.push(Issue {
                    line: 0,
                    message_index: None,
                    code: Code::NoTrainableExamples,
                    message,
                });
            }
            self.stats.tokens = Some(acc.finish(self.opts));
        }
        CheckReport {
            ok: self.stats.error_count == 0,
            errors: self.errors,
            warnings: self.warnings,
            stats: self.stats,
        }
    }
}

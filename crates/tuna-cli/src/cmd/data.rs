//! `tuna data check FILE`: every problem of a JSONL dataset with its line, statistics, and (with
//! `--model`) token counts from the model's own chat template and tokenizer.
//!
//! Exit status: 0 when the file can be trained on (warnings allowed), 1 when it has errors, 2 when
//! it could not be checked at all (unreadable file, model that does not load).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use tuna_data::DataFormat;
use tuna_data::check::{
    Code, DEFAULT_MAX_LINE_BYTES, Issue, Overflow, Stats, Summary, TokenCount, TokenStats,
};
use tuna_data::mask::IGNORE_INDEX;
use tuna_data::tokenize::ChatTokenizer;
use tuna_data::{CheckOptions, CheckReport, Conversation, TokenCounter};

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Check a JSONL dataset: every problem with its line, then statistics
    Check(CheckArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatArg {
    /// Recognise it from the first line
    Auto,
    /// Chat data for supervised fine-tuning: {"messages": [...]}
    Chat,
    /// Preference pairs for DPO: {"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}
    Preference,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The dataset: one {"messages": [{"role": ..., "content": ...}, ...]} per line, or one
    /// preference pair per line (`-` reads stdin)
    pub file: PathBuf,
    /// What each line holds
    #[arg(long, value_enum, default_value = "auto")]
    pub format: FormatArg,
    /// Count tokens with this model's chat template and tokenizer: a Hugging Face directory, or `demo`
    #[arg(long, env = "TUNA_MODEL")]
    pub model: Option<String>,
    /// Maximum tokens per example in training
    #[arg(long, default_value_t = 2048, env = "TUNA_MAX_SEQ_LEN")]
    pub max_seq_len: usize,
    /// Train on the first --max-seq-len tokens of longer examples instead of dropping them
    #[arg(long)]
    pub truncate: bool,
    /// Longest accepted line, in bytes
    #[arg(long, default_value_t = DEFAULT_MAX_LINE_BYTES)]
    pub max_line_bytes: usize,
    /// Print the report as one JSON object: {"ok", "errors", "warnings", "stats"}
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DataArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DataCommand::Check(args) => check(args),
    }
}

/// Token counts from the real chat template + tokenizer, as training will tokenize.
struct TokenizerCounter(ChatTokenizer);

impl TokenizerCounter {
    fn encode(&self, conv: &Conversation) -> Result<tuna_data::tokenize::TokenizedExample, String> {
        self.0.encode_example(conv).map_err(|e| e.to_string())
    }
}

impl TokenCounter for TokenizerCounter {
    fn count(&self, conv: &Conversation) -> Result<(usize, usize), String> {
        let ex = self.encode(conv)?;
        Ok((ex.input_ids.len(), ex.trained_tokens()))
    }

    fn count_with_limit(&self, conv: &Conversation, max_len: usize) -> Result<TokenCount, String> {
        let ex = self.encode(conv)?;
        // As `trained_tokens`: labelled positions after the first, here among the kept ones.
        let within = ex
            .labels
            .iter()
            .take(max_len)
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count();
        Ok(TokenCount {
            total: ex.input_ids.len(),
            trained: ex.trained_tokens(),
            trained_within_limit: Some(within),
        })
    }
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let counter = match &args.model {
        Some(model) => {
            let dir = crate::model_dir::resolve(model)?;
            let tokenizer = ChatTokenizer::from_model_dir(&dir)
                .with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
            Some((TokenizerCounter(tokenizer), dir))
        }
        None => None,
    };
    let opts = CheckOptions {
        format: match args.format {
            FormatArg::Auto => None,
            FormatArg::Chat => Some(DataFormat::Chat),
            FormatArg::Preference => Some(DataFormat::Preference),
        },
        max_line_bytes: args.max_line_bytes,
        max_seq_len: args.max_seq_len,
        overflow: if args.truncate {
            Overflow::Truncate
        } else {
            Overflow::Drop
        },
        ..CheckOptions::default()
    };
    let counter_ref = counter.as_ref().map(|(c, _)| c as &dyn TokenCounter);
    let stdin = args.file == Path::new("-");
    let name = if stdin {
        "<stdin>".to_string()
    } else {
        args.file.display().to_string()
    };
    let report = if stdin {
        tuna_data::check_reader(std::io::stdin().lock(), &opts, counter_ref)
    } else {
        tuna_data::check_file(&args.file, &opts, counter_ref)
    }
    .with_context(|| format!("checking {name}"))?;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let model = counter.as_ref().map(|(_, dir)| dir.as_path());
        print!("{}", render(&name, &report, model, &args));
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// How many errors and warnings are printed one by one; the rest are summed up by code.
const SHOWN_ERRORS: usize = 100;
const SHOWN_WARNINGS: usize = 20;

/// The human report: problems, statistics, then what to do next.
fn render(name: &str, report: &CheckReport, model: Option<&Path>, args: &CheckArgs) -> String {
    let s = &report.stats;
    let mut out = String::new();
    let bold = std::io::stdout().is_terminal();
    let head = |t: &str| {
        if bold {
            format!("\x1b[1m{t}\x1b[0m")
        } else {
            t.to_string()
        }
    };

    let preference = s.format == DataFormat::Preference;
    let unit = if preference {
        "preference pairs"
    } else {
        "examples"
    };
    let _ = writeln!(
        out,
        "{name} ({} data): {} lines, {} {unit}, {} errors, {} warnings",
        s.format.as_str(),
        n(s.lines),
        n(s.examples),
        n(s.error_count),
        n(s.warning_count)
    );
    if s.error_count > 0 {
        let _ = writeln!(out, "\n{}", head("Errors"));
        write_issues(&mut out, name, &report.errors, s.error_count, SHOWN_ERRORS);
    }
    if s.warning_count > 0 {
        let _ = writeln!(out, "\n{}", head("Warnings"));
        write_issues(
            &mut out,
            name,
            &report.warnings,
            s.warning_count,
            SHOWN_WARNINGS,
        );
    }
    if s.error_count + s.warning_count > 0 {
        let mut by_code: Vec<String> = s
            .errors_by_code
            .iter()
            .map(|(c, k)| format!("{c} {}", n(*k)))
            .collect();
        by_code.extend(
            s.warnings_by_code
                .iter()
                .map(|(c, k)| format!("{c} {} (warning)", n(*k))),
        );
        let _ = writeln!(out, "  by code: {}", by_code.join(", "));
    }

    let _ = writeln!(out, "\n{}", head("Statistics"));
    write_stats(&mut out, s);
    if let Some(t) = &s.tokens {
        let from = model
            .map(|m| format!(" ({})", m.display()))
            .unwrap_or_default();
        let _ = writeln!(out, "\n{}", head(&format!("Tokens{from}")));
        write_tokens(&mut out, t);
    }

    let _ = writeln!(out);
    let quoted = if name.contains(' ') {
        format!("'{name}'")
    } else {
        name.to_string()
    };
    if !report.ok {
        let _ = writeln!(
            out,
            "NOT READY: {}{}. Fix them and check again: `tuna data check {quoted}`",
            plural(s.error_count, "error"),
            if s.invalid_lines > 0 {
                format!(" on {}", plural(s.invalid_lines, "line"))
            } else {
                String::new()
            },
        );
        if s.errors_by_code.contains_key(&Code::UnknownRole)
            || s.errors_by_code.contains_key(&Code::MissingMessages)
            || s.errors_by_code.contains_key(&Code::MissingInput)
        {
            let _ = writeln!(
                out,
                "---> HINT: the messages above say which format the file seems to be in and how to convert it"
            );
        }
    } else {
        let dropped = s.tokens.as_ref().map_or(0, |t| t.dropped);
        let _ = writeln!(
            out,
            "READY: {} {unit} can be trained on{}.",
            n(s.examples - dropped),
            if dropped > 0 {
                format!(
                    " ({} longer than {} tokens are dropped)",
                    n(dropped),
                    args.max_seq_len
                )
            } else {
                String::new()
            }
        );
        if s.tokens.is_none() {
            let _ = writeln!(
                out,
                "---> HINT: add `--model DIR` (or `--model demo`) to count tokens with the model's chat template and see what an epoch costs"
            );
        }
        let model = args.model.as_deref().unwrap_or("demo");
        let objective = if preference { " --objective dpo" } else { "" };
        let _ = writeln!(
            out,
            "Next: fine-tune on it, e.g. `tuna train --model {model} --data {quoted}{objective} --out runs/first`"
        );
    }
    out
}

fn write_issues(out: &mut String, name: &str, issues: &[Issue], total: u64, shown: usize) {
    for i in issues.iter().take(shown) {
        let at = if i.line == 0 {
            name.to_string()
        } else {
            format!("{name}:{}", i.line)
        };
        let _ = writeln!(out, "{at}: [{}] {}", i.code, i.message);
    }
    let printed = issues.len().min(shown) as u64;
    if total > printed {
        let _ = writeln!(
            out,
            "  … and {} more (`--json` lists the first {})",
            n(total - printed),
            issues.len()
        );
    }
}

fn write_stats(out: &mut String, s: &Stats) {
    let m = &s.messages;
    let rows = [
        (
            "examples",
            format!(
                "{} (invalid lines {}, blank lines {})",
                n(s.examples),
                n(s.invalid_lines),
                n(s.blank_lines)
            ),
        ),
        (
            "messages",
            format!(
                "system {}, user {}, assistant {} ({} trained)",
                n(m.system),
                n(m.user),
                n(m.assistant),
                n(m.assistant_trained)
            ),
        ),
        (
            "turns",
            format!(
                "{} (multi-turn examples {}, at most {} in one)",
                n(s.turns),
                n(s.multi_turn_examples),
                n(s.max_turns)
            ),
        ),
        ("with system prompt", n(s.examples_with_system)),
        (
            "duplicates",
            format!(
                "{}{}",
                n(s.duplicates),
                if s.duplicates_exact {
                    ""
                } else {
                    " (among the first 5 million examples)"
                }
            ),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<20} {v}");
    }
}

fn write_tokens(out: &mut String, t: &TokenStats) {
    let summary = |s: &Summary| {
        format!(
            "min {}  mean {:.1}  p50 {}  p95 {}  max {}",
            n(s.min),
            s.mean,
            n(s.p50),
            n(s.p95),
            n(s.max)
        )
    };
    if let Some(p) = &t.pairs {
        let _ = writeln!(out, "  {:<20} {}", "prompt per pair", summary(&p.prompt));
        let _ = writeln!(out, "  {:<20} {}", "preferred answer", summary(&p.chosen));
        let _ = writeln!(out, "  {:<20} {}", "non-preferred", summary(&p.rejected));
    }
    let unit = if t.pairs.is_some() { "pair" } else { "example" };
    let _ = writeln!(out, "  {:<20} {}", format!("per {unit}"), summary(&t.total));
    let _ = writeln!(
        out,
        "  {:<20} {}",
        format!("trained per {unit}"),
        summary(&t.trained)
    );
    let fate = match t.overflow {
        Overflow::Drop => "dropped (--truncate keeps their first tokens instead)".to_string(),
        Overflow::Truncate => format!("truncated to {} tokens", n(t.max_seq_len as u64)),
    };
    let _ = writeln!(
        out,
        "  {:<20} {} {unit}s{}",
        format!("over {} tokens", n(t.max_seq_len as u64)),
        n(t.over_max_seq_len),
        if t.over_max_seq_len > 0 {
            format!(", {fate}")
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "  {:<20} {} tokens, {} trained{}",
        "one epoch",
        n(t.epoch_tokens),
        n(t.epoch_trained_tokens),
        if t.epoch_trained_tokens_exact {
            ""
        } else {
            " (at most)"
        }
    );

    // Histogram of tokens per example, from the first to the last non-empty bucket.
    let first = t.histogram.iter().position(|b| b.count > 0);
    let last = t.histogram.iter().rposition(|b| b.count > 0);
    let (Some(first), Some(last)) = (first, last) else {
        return;
    };
    let top = t
        .histogram
        .iter()
        .map(|b| b.count)
        .max()
        .unwrap_or(1)
        .max(1);
    let _ = writeln!(
        out,
        "  tokens per {unit}{}:",
        if t.pairs.is_some() {
            " (its longer sequence)"
        } else {
            ""
        }
    );
    for b in &t.histogram[first..=last] {
        let range = match b.max {
            Some(hi) => format!("{}–{}", b.min, hi - 1),
            None => format!("{}+", b.min),
        };
        let width = ((b.count as f64 / top as f64) * 40.0).ceil() as usize;
        let _ = writeln!(
            out,
            "  {range:>13} {:<40} {}",
            "█".repeat(width),
            n(b.count)
        );
    }
}

/// "1 error", "1,234 errors".
fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{} {noun}s", n(count))
    }
}

/// 1234567 → "1,234,567".
fn n(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(n(0), "0");
        assert_eq!(n(999), "999");
        assert_eq!(n(1000), "1,000");
        assert_eq!(n(1_234_567), "1,234,567");
    }

    #[test]
    fn render_lists_each_error_with_file_and_line() {
        let text = "{\"messages\": [{\"role\": \"human\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"y\"}]}\n\n";
        let report =
            tuna_data::check_reader(text.as_bytes(), &CheckOptions::default(), None).unwrap();
        let args = CheckArgs {
            file: "d.jsonl".into(),
            format: FormatArg::Auto,
            model: None,
            max_seq_len: 2048,
            truncate: false,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            json: false,
        };
        let out = render("d.jsonl", &report, None, &args);
        assert!(
            out.contains("d.jsonl:1: [unknown_role] `messages[0].role` is \"human\""),
            "{out}"
        );
        assert!(
            out.contains("d.jsonl:2: [blank_line] blank line, skipped"),
            "{out}"
        );
        assert!(out.contains("NOT READY"), "{out}");
    }
}

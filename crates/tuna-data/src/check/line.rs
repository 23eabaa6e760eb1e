//! Checking one line: bytes → UTF-8 → JSON → every rule of the format, without stopping at the
//! first problem. Pure and independent of other lines, so lines are checked in parallel.
//!
//! The format (OpenAI's chat fine-tuning JSONL): `{"messages": [{"role": ..., "content": ...}, ...]}`
//! with roles `system`, `user`, `assistant`; at most one system message and only first; at least
//! one user and one assistant message. `content` is a string or a list of text parts
//! (`[{"type": "text", "text": "..."}]`, joined with no separator, so splitting a text into parts
//! never changes it). Assistant messages may carry `"weight": 0|1` (0 = not trained).

use std::borrow::Cow;
use std::hash::{BuildHasher, Hasher};

use super::issue::{Code, Issue};
use super::{CheckOptions, DataFormat, Overflow, TokenCount, TokenCounter};
use crate::conversation::{Conversation, Message, PreferenceExample, Role};
use crate::jsonl::Json;

/// How many characters of a bad value a message quotes.
pub(crate) const PREVIEW: usize = 60;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Fixed seeds: a conversation hashes the same in every run. aHash rather than std's SipHash:
/// hashing every content byte is a visible share of a check, and these hashes guard nothing.
pub(crate) static HASH_STATE: ahash::RandomState = ahash::RandomState::with_seeds(
    0x243F_6A88_85A3_08D3,
    0x1319_8A2E_0370_7344,
    0xA409_3822_299F_31D0,
    0x082E_FA98_EC4E_6C89,
);

/// What one line turned out to be.
#[derive(Debug, Default)]
pub(crate) struct LineOutcome {
    /// In the order found: file-level, then top-level fields, then messages in order.
    pub issues: Vec<Issue>,
    pub kind: LineKind,
    /// The first non-blank byte is `[`: when this is the file's first non-blank line, the file is
    /// probably one JSON array.
    pub opens_array: bool,
}

#[derive(Debug, Default)]
pub(crate) enum LineKind {
    Blank,
    #[default]
    Invalid,
    Example(Box<Example>),
}

/// A valid example, reduced to what the statistics need.
#[derive(Debug)]
pub(crate) struct Example {
    pub system: u32,
    pub user: u32,
    pub assistant: u32,
    /// Assistant messages with weight 1.
    pub assistant_trained: u32,
    /// User → assistant exchanges: assistant messages right after a user message.
    pub turns: u32,
    /// Hash of the normalized conversation (roles, weights, contents trimmed), for duplicates.
    pub hash: u64,
    /// Tokens of a chat example.
    pub tokens: Option<TokenCount>,
    /// Tokens of a preference pair: (prompt + preferred, prompt + non-preferred).
    pub pair_tokens: Option<(TokenCount, TokenCount)>,
    /// Kept only when the caller collects the rows (training).
    pub row: Option<Row>,
}

/// A valid line, as training reads it.
#[derive(Debug)]
pub(crate) enum Row {
    Chat(Conversation),
    Preference(PreferenceExample),
}

impl Example {
    /// An example with nothing counted yet.
    pub fn empty() -> Self {
        Example {
            system: 0,
            user: 0,
            assistant: 0,
            assistant_trained: 0,
            turns: 0,
            hash: 0,
            tokens: None,
            pair_tokens: None,
            row: None,
        }
    }
}

/// Collects the issues of one line.
pub(crate) struct Report {
    line: u64,
    issues: Vec<Issue>,
    /// Errors pushed so far.
    pub errors: usize,
}

impl Report {
    pub fn push(&mut self, message_index: Option<usize>, code: Code, message: String) {
        if code.is_error() {
            self.errors += 1;
        }
        self.issues.push(Issue {
            line: self.line,
            message_index,
            code,
            message,
        });
    }
}

/// Checks one line of a file in `format`. `raw` excludes the `\n`; `keep_conversation` asks for
/// the parsed row.
pub(crate) fn check_line(
    line: u64,
    raw: &[u8],
    format: DataFormat,
    opts: &CheckOptions,
    counter: Option<&dyn TokenCounter>,
    keep_conversation: bool,
) -> LineOutcome {
    let mut out = LineOutcome::default();
    let mut r = Report {
        line,
        issues: Vec::new(),
        errors: 0,
    };
    let kind = check_bytes(
        &mut r,
        &mut out,
        raw,
        format,
        opts,
        counter,
        keep_conversation,
    );
    out.kind = kind;
    out.issues = r.issues;
    out
}

fn check_bytes(
    r: &mut Report,
    out: &mut LineOutcome,
    raw: &[u8],
    format: DataFormat,
    opts: &CheckOptions,
    counter: Option<&dyn TokenCounter>,
    keep_conversation: bool,
) -> LineKind {
    if raw.len() > opts.max_line_bytes {
        r.push(
            None,
            Code::LineTooLong,
            format!(
                "the line is {} bytes, over the limit of {} bytes (raise it with --max-line-bytes if this example is meant to be this long)",
                raw.len(),
                opts.max_line_bytes
            ),
        );
        return LineKind::Invalid;
    }
    let mut b = raw.strip_suffix(b"\r").unwrap_or(raw);
    if let Some(rest) = b.strip_prefix(BOM) {
        let message = if r.line == 1 {
            "the file starts with a UTF-8 byte-order mark; it was skipped".to_string()
        } else {
            "a UTF-8 byte-order mark starts this line (were files concatenated?); it was skipped"
                .to_string()
        };
        r.push(None, Code::ByteOrderMark, message);
        b = rest;
    }
    if b.iter().all(u8::is_ascii_whitespace) {
        r.push(None, Code::BlankLine, "blank line, skipped".to_string());
        return LineKind::Blank;
    }
    out.opens_array = b.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'[');
    if let Some(pos) = memchr::memchr(0, b) {
        let utf16 = b.iter().skip(pos % 2).step_by(2).take(64).all(|&c| c == 0);
        let hint = if utf16 {
            " (every other byte is NUL: the file looks UTF-16 encoded; save it as UTF-8, e.g. `iconv -f UTF-16 -t UTF-8 in.jsonl > out.jsonl`)"
        } else {
            " (JSON text cannot contain raw NUL bytes; write them as \\u0000 inside strings, or remove them)"
        };
        r.push(
            None,
            Code::NulByte,
            format!("NUL byte at byte {} of the line{hint}", pos + 1),
        );
        return LineKind::Invalid;
    }
    // simdutf8 validates ~10x faster than std on non-ASCII text; std only explains a failure.
    let text = match simdutf8::basic::from_utf8(b).map_err(|_| std::str::from_utf8(b)) {
        Ok(t) => t,
        Err(Ok(t)) => t, // unreachable: both agree on what is UTF-8
        Err(Err(e)) => {
            let at = e.valid_up_to();
            let bad_len = e.error_len().unwrap_or(b.len() - at).min(4);
            let bad: Vec<String> = b[at..at + bad_len]
                .iter()
                .map(|c| format!("0x{c:02X}"))
                .collect();
            r.push(
                None,
                Code::InvalidUtf8,
                format!(
                    "not valid UTF-8: byte {} is {} (save the file as UTF-8; if it is Latin-1 or Windows-1252, convert it with `iconv -f WINDOWS-1252 -t UTF-8 in.jsonl > out.jsonl`)",
                    at + 1,
                    bad.join(" ")
                ),
            );
            return LineKind::Invalid;
        }
    };
    let value = match Json::parse(text) {
        Ok(v) => v,
        Err(e) => {
            r.push(None, Code::InvalidJson, json_error_message(text, &e));
            return LineKind::Invalid;
        }
    };
    match format {
        DataFormat::Chat => check_row(r, value, opts, counter, keep_conversation),
        DataFormat::Preference => {
            super::preference::check_pair(r, value, opts, counter, keep_conversation)
        }
    }
}

/// Recognises files that are not UTF-8 text at all from their first bytes.
pub(crate) fn sniff_binary(b: &[u8]) -> Option<(Code, String)> {
    const BINARY: [(&[u8], &str); 5] = [
        (
            b"\x1F\x8B",
            "gzip-compressed (decompress it first: `gunzip FILE.gz`)",
        ),
        (
            b"PK\x03\x04",
            "a zip archive (extract the .jsonl file from it first)",
        ),
        (
            b"PAR1",
            "a Parquet file (convert it to JSONL, e.g. with pandas: `pd.read_parquet(f).to_json(out, orient='records', lines=True, force_ascii=False)`)",
        ),
        (
            b"\xFD7zXZ\x00",
            "xz-compressed (decompress it first: `unxz FILE.xz`)",
        ),
        (
            b"\x28\xB5\x2F\xFD",
            "zstd-compressed (decompress it first: `unzstd FILE.zst`)",
        ),
    ];
    for (magic, what) in BINARY {
        if b.starts_with(magic) {
            return Some((
                Code::BinaryFile,
                format!("the file is {what}; the rest of the file was not checked"),
            ));
        }
    }
    const UTF: [(&[u8], &str); 4] = [
        (b"\xFF\xFE\x00\x00", "UTF-32LE"),
        (b"\x00\x00\xFE\xFF", "UTF-32BE"),
        (b"\xFF\xFE", "UTF-16LE"),
        (b"\xFE\xFF", "UTF-16BE"),
    ];
    for (bom, name) in UTF {
        if b.starts_with(bom) {
            return Some((
                Code::InvalidUtf8,
                format!(
                    "the file is {name} (it starts with that byte-order mark); save it as UTF-8, e.g. `iconv -f {name} -t UTF-8 in.jsonl > out.jsonl`; the rest of the file was not checked"
                ),
            ));
        }
    }
    None
}

/// serde_json's message without its "at line 1 column N" (always line 1 here), plus a hint for
/// the mistakes that produce it most often.
fn json_error_message(text: &str, e: &serde_json::Error) -> String {
    let full = e.to_string();
    let what = full
        .rfind(" at line ")
        .map_or(full.as_str(), |i| &full[..i]);
    let mut msg = format!("not valid JSON: {what} at column {}", e.column());
    let t = text.trim();
    let hint = if matches!(t, "{" | "}" | "[" | "]" | "}," | "]," | "},{" | "}, {") {
        Some(
            "the JSON seems spread over several lines (pretty-printed?); JSONL needs each conversation on one line: `jq -c . in.json > out.jsonl`",
        )
    } else if e.classify() == serde_json::error::Category::Eof
        && (t.starts_with('{') || t.starts_with('['))
    {
        Some(
            "the line ends before the JSON does; JSONL needs each conversation on one line (pretty-printed JSON? `jq -c . in.json > out.jsonl`)",
        )
    } else if t.ends_with(',') {
        Some("remove the trailing comma: JSONL lines are not separated by commas")
    } else if what.contains("key must be a string") && (t.starts_with("{'") || t.contains("{'")) {
        Some(
            "keys and strings need double quotes; this looks like a Python dict printed with str(): write lines with `json.dumps(row, ensure_ascii=False)`",
        )
    } else if what.contains("trailing characters") {
        Some("only one JSON object may sit on each line")
    } else {
        None
    };
    if let Some(h) = hint {
        msg.push_str(" (");
        msg.push_str(h);
        msg.push(')');
    }
    msg
}

/// Reports each key that appears twice in one object, once, at its second occurrence; `path`
/// names the object in the message (empty for the line itself).
pub(crate) fn check_duplicate_keys(
    r: &mut Report,
    fields: &[(Cow<'_, str>, Json<'_>)],
    index: Option<usize>,
    path: &str,
) {
    let mut dups: Vec<&str> = Vec::new();
    if fields.len() <= 32 {
        for (i, (k, _)) in fields.iter().enumerate() {
            if fields[..i].iter().filter(|(e, _)| e == k).count() == 1 {
                dups.push(k);
            }
        }
    } else {
        // Objects with many keys are rare but possible in a 4 MB line: stay linear for them.
        let mut seen = std::collections::HashMap::<&str, u32>::new();
        for (k, _) in fields {
            let n = seen.entry(k.as_ref()).or_insert(0);
            *n += 1;
            if *n == 2 {
                dups.push(k);
            }
        }
    }
    for k in dups {
        let where_ = if path.is_empty() {
            "the line".to_string()
        } else {
            format!("`{path}`")
        };
        r.push(
            index,
            Code::DuplicateKey,
            format!("{where_} has the key `{k}` twice; JSON readers disagree on which one wins, keep one"),
        );
    }
}

/// The top level of a parsed line.
fn check_row(
    r: &mut Report,
    value: Json<'_>,
    opts: &CheckOptions,
    counter: Option<&dyn TokenCounter>,
    keep_conversation: bool,
) -> LineKind {
    let Json::Obj(fields) = value else {
        let hint = match &value {
            Json::Arr(items) if items.first().and_then(|m| m.get("role")).is_some() => {
                " (it looks like a list of messages: wrap it as {\"messages\": [...]})"
            }
            _ => "",
        };
        r.push(
            None,
            Code::NotAnObject,
            format!(
                "the line is {} ({}), but each line must be one object like {{\"messages\": [...]}}{hint}",
                value.kind(),
                value.preview(PREVIEW)
            ),
        );
        return LineKind::Invalid;
    };
    check_duplicate_keys(r, &fields, None, "");

    let mut messages = None;
    let mut others: Vec<(&str, &Json<'_>)> = Vec::new();
    for (k, v) in &fields {
        if k == "messages" {
            if messages.is_none() {
                messages = Some(v);
            }
        } else {
            others.push((k, v));
        }
    }
    let Some(messages) = messages else {
        r.push(
            None,
            Code::MissingMessages,
            missing_messages_message(&fields),
        );
        return LineKind::Invalid;
    };
    for (k, v) in others {
        if matches!(v, Json::Null) {
            continue; // nothing is lost by ignoring it
        }
        let why = match k {
            "tools" | "functions" | "tool_choice" | "parallel_tool_calls" => {
                "is ignored: Tuna does not train tool use yet"
            }
            _ => "is not part of the format and is ignored",
        };
        r.push(None, Code::UnknownField, format!("the field `{k}` {why}"));
    }

    let items = match messages {
        Json::Arr(items) if items.is_empty() => {
            r.push(
                None,
                Code::EmptyMessages,
                "`messages` is empty; an example needs at least one user and one assistant message"
                    .to_string(),
            );
            return LineKind::Invalid;
        }
        Json::Arr(items) => items,
        other => {
            let hint = match other {
                Json::Str(s) if s.trim_start().starts_with('[') => {
                    " (it holds JSON text: store the list itself, not a string; was json.dumps applied twice?)"
                }
                Json::Obj(_) if other.get("role").is_some() => {
                    " (it is a single message: wrap it in a list)"
                }
                _ => "",
            };
            r.push(
                None,
                Code::MessagesNotAList,
                format!(
                    "`messages` must be a list of messages, found {}: {}{hint}",
                    other.kind(),
                    other.preview(PREVIEW)
                ),
            );
            return LineKind::Invalid;
        }
    };

    let errors_before = r.errors;
    let (parsed, all_roles_known) = check_message_list(r, items, MessageAt::chat);
    let roles: Vec<Option<Role>> = parsed
        .iter()
        .map(|p| p.as_ref().and_then(|p| p.role))
        .collect();
    // Without every role known, a missing user/assistant would only echo the role errors above.
    if all_roles_known {
        if !roles.contains(&Some(Role::User)) {
            r.push(
                None,
                Code::NoUserMessage,
                "the conversation has no user message".to_string(),
            );
        }
        if !roles.contains(&Some(Role::Assistant)) {
            r.push(
                None,
                Code::NoAssistantMessage,
                "the conversation has no assistant message, so there is nothing to learn"
                    .to_string(),
            );
        }
    }
    if r.errors > errors_before {
        return LineKind::Invalid;
    }

    // Valid from here on: every message parsed with a known role and content.
    let msgs: Vec<Parsed<'_>> = parsed.into_iter().flatten().collect();
    let mut ex = Example::empty();
    let mut hasher = HASH_STATE.build_hasher();
    tally(&msgs, &mut ex, &mut hasher);
    ex.hash = hasher.finish();
    if ex.assistant > 0 && ex.assistant_trained == 0 {
        r.push(
            None,
            Code::NoTrainedMessage,
            "every assistant message has \"weight\": 0, so this example teaches nothing"
                .to_string(),
        );
    }
    if let Some(last) = msgs.last().and_then(|m| m.role)
        && last != Role::Assistant
    {
        r.push(
            Some(msgs.len() - 1),
            Code::LastMessageNotAssistant,
            format!(
                "the conversation ends with a {} message (`messages[{}]`), which is never learned from",
                last.as_str(),
                msgs.len() - 1
            ),
        );
    }

    if counter.is_none() && !keep_conversation {
        return LineKind::Example(Box::new(ex));
    }
    let conversation = Conversation {
        messages: msgs
            .into_iter()
            .map(|m| Message {
                role: m.role.unwrap_or(Role::User),
                content: m.content.map(Cow::into_owned).unwrap_or_default(),
                trained: m.trained,
            })
            .collect(),
    };
    if let Some(counter) = counter {
        match counter.count_with_limit(&conversation, opts.max_seq_len) {
            Ok(tc) => {
                if tc.total > opts.max_seq_len {
                    r.push(
                        None,
                        Code::TooManyTokens,
                        too_many_tokens_message(&tc, opts),
                    );
                }
                ex.tokens = Some(tc);
            }
            Err(e) => {
                r.push(
                    None,
                    Code::TokenizationFailed,
                    format!("could not count the tokens of this example: {e}"),
                );
                return LineKind::Invalid;
            }
        }
    }
    if keep_conversation {
        ex.row = Some(Row::Chat(conversation));
    }
    LineKind::Example(Box::new(ex))
}

pub(crate) fn too_many_tokens_message(tc: &TokenCount, opts: &CheckOptions) -> String {
    let max = opts.max_seq_len;
    match opts.overflow {
        Overflow::Drop => format!(
            "the example has {} tokens, more than the maximum sequence length of {max}: it will be dropped (pass --truncate to keep its first {max} tokens, or raise --max-seq-len)",
            tc.total
        ),
        Overflow::Truncate => {
            let nothing = if tc.trained_within_limit == Some(0) {
                "; none of its trained tokens fall within them, so it will teach nothing"
            } else {
                ""
            };
            format!(
                "the example has {} tokens, more than the maximum sequence length of {max}: only its first {max} tokens will be trained on{nothing}",
                tc.total
            )
        }
    }
}

/// Why `messages` is missing, with a conversion hint for the formats people usually have instead.
fn missing_messages_message(fields: &[(Cow<'_, str>, Json<'_>)]) -> String {
    let has = |k: &str| fields.iter().any(|(f, _)| f == k);
    let mut keys: Vec<String> = fields
        .iter()
        .take(8)
        .map(|(k, _)| format!("`{k}`"))
        .collect();
    if fields.len() > 8 {
        keys.push("…".to_string());
    }
    let found = if keys.is_empty() {
        "the object is empty".to_string()
    } else {
        format!("found {}", keys.join(", "))
    };
    let near_miss = fields.iter().find(|(k, _)| {
        let l = k.trim().to_ascii_lowercase();
        matches!(
            l.as_str(),
            "messages"
                | "message"
                | "msgs"
                | "messsages"
                | "mesages"
                | "chat"
                | "dialog"
                | "dialogue"
        )
    });
    let hint = if let Some((k, _)) = near_miss {
        format!("did you mean `messages` instead of `{k}`?")
    } else if has("conversations") || has("conversation") {
        "this looks like ShareGPT data: rename `conversations` to `messages`, and in each message `from` to `role` (human → user, gpt → assistant) and `value` to `content`".to_string()
    } else if has("instruction") && (has("output") || has("response")) {
        "this looks like Alpaca data: write each row as {\"messages\": [{\"role\": \"user\", \"content\": instruction + \"\\n\\n\" + input}, {\"role\": \"assistant\", \"content\": output}]}".to_string()
    } else if has("prompt") && (has("completion") || has("response")) {
        "this looks like prompt–completion data: write each row as {\"messages\": [{\"role\": \"user\", \"content\": prompt}, {\"role\": \"assistant\", \"content\": completion}]}".to_string()
    } else if has("question") && has("answer") {
        "write each row as {\"messages\": [{\"role\": \"user\", \"content\": question}, {\"role\": \"assistant\", \"content\": answer}]}".to_string()
    } else if has("input") && (has("preferred_output") || has("non_preferred_output")) {
        "this is preference (DPO) data: check it with `tuna data check --format preference` and train on it with `tuna train --objective dpo`".to_string()
    } else if has("chosen") || has("rejected") {
        "this looks like preference (DPO) data; supervised fine-tuning needs {\"messages\": [...]}: use the `chosen` conversation".to_string()
    } else if has("role") && has("content") {
        "this line is a single message; each line must hold a whole conversation: {\"messages\": [{\"role\": ..., \"content\": ...}, ...]}".to_string()
    } else if has("text") {
        "this looks like plain-text (pretraining) data; chat fine-tuning needs conversations: {\"messages\": [{\"role\": \"user\", ...}, {\"role\": \"assistant\", ...}]}".to_string()
    } else {
        "each line must be {\"messages\": [{\"role\": ..., \"content\": ...}, ...]}".to_string()
    };
    format!("no `messages` field ({found}); {hint}")
}

/// Checks one line of `format` with default options and no counter (unit tests).
#[cfg(test)]
pub(crate) fn check_text(text: &str, format: DataFormat, keep: bool) -> LineOutcome {
    check_line(
        1,
        text.as_bytes(),
        format,
        &CheckOptions::default(),
        None,
        keep,
    )
}

/// Where a message sits, for its issues, and which rules it follows.
pub(crate) struct MessageAt {
    /// The issues' `message_index`.
    pub index: Option<usize>,
    /// The message's path in the line: `messages[2]`, `input.messages[0]`, `preferred_output[0]`.
    pub path: String,
    /// Whether `weight` means something here (messages of chat data); elsewhere it is ignored
    /// with a warning.
    pub weight: bool,
    /// The code of an assistant message without text.
    pub empty_assistant: Code,
}

impl MessageAt {
    fn chat(i: usize) -> Self {
        MessageAt {
            index: Some(i),
            path: format!("messages[{i}]"),
            weight: true,
            empty_assistant: Code::EmptyAssistantContent,
        }
    }
}

/// One message as far as it could be understood.
pub(crate) struct Parsed<'a> {
    /// `None` when missing, unknown or a tool role (already reported).
    pub role: Option<Role>,
    /// `None` when missing or invalid (already reported).
    pub content: Option<Cow<'a, str>>,
    pub trained: bool,
}

pub(crate) fn check_message<'a>(
    r: &mut Report,
    at: &MessageAt,
    item: &'a Json<'a>,
) -> Option<Parsed<'a>> {
    let i = at.index;
    let path = at.path.as_str();
    let Json::Obj(fields) = item else {
        r.push(
            i,
            Code::MessageNotAnObject,
            format!(
                "`{path}` must be an object with `role` and `content`, found {}: {}",
                item.kind(),
                item.preview(PREVIEW)
            ),
        );
        return None;
    };
    check_duplicate_keys(r, fields, i, path);

    let (mut role_v, mut content_v, mut weight_v) = (None, None, None);
    let mut tool_use = false;
    let mut ignored: Vec<(&str, &Json<'_>)> = Vec::new();
    for (k, v) in fields {
        match k.as_ref() {
            "role" => role_v = role_v.or(Some(v)),
            "content" => content_v = content_v.or(Some(v)),
            "weight" => weight_v = weight_v.or(Some(v)),
            // Exported chat logs carry `"tool_calls": null` or `[]` on every message: harmless.
            "tool_calls" | "function_call" => {
                let empty = matches!(v, Json::Null) || matches!(v, Json::Arr(a) if a.is_empty());
                if !empty {
                    tool_use = true;
                    r.push(
                        i,
                        Code::ToolCallsNotSupported,
                        format!("`{path}.{k}`: tool calls are not supported yet; remove this example or the tool messages"),
                    );
                }
            }
            _ => ignored.push((k, v)),
        }
    }

    let role = match role_v {
        None => {
            let hint = if fields.iter().any(|(k, _)| k == "from") {
                " (it has `from`: this looks like ShareGPT; rename `from` to `role`, with human → user and gpt → assistant)"
            } else {
                ""
            };
            r.push(
                i,
                Code::MissingRole,
                format!("`{path}` has no `role`{hint}"),
            );
            None
        }
        Some(Json::Str(s)) => match s.as_ref() {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "tool" | "function" | "ipython" => {
                tool_use = true;
                r.push(
                    i,
                    Code::ToolCallsNotSupported,
                    format!("`{path}.role` is \"{s}\": tool messages are not supported yet; remove this example or its tool messages"),
                );
                None
            }
            other => {
                let hint = match suggest_role(other) {
                    Some(s) => format!(" (did you mean \"{s}\"?)"),
                    None => String::new(),
                };
                r.push(
                    i,
                    Code::UnknownRole,
                    format!(
                        "`{path}.role` is {}; expected \"system\", \"user\" or \"assistant\"{hint}",
                        Json::Str(Cow::Borrowed(other)).preview(PREVIEW)
                    ),
                );
                None
            }
        },
        Some(v) => {
            r.push(
                i,
                Code::UnknownRole,
                format!(
                    "`{path}.role` must be the string \"system\", \"user\" or \"assistant\", found {}: {}",
                    v.kind(),
                    v.preview(PREVIEW)
                ),
            );
            None
        }
    };

    let content = match content_v {
        None if tool_use => None, // already reported: a tool call has no text content
        None => {
            let alt = ["value", "text", "message", "body", "response"]
                .into_iter()
                .find(|a| fields.iter().any(|(k, _)| k == a));
            let hint = match alt {
                Some("value") => {
                    " (it has `value`: this looks like ShareGPT; rename `value` to `content`)"
                        .to_string()
                }
                Some(a) => format!(" (it has `{a}`: rename it to `content`)"),
                None => String::new(),
            };
            r.push(
                i,
                Code::MissingContent,
                format!("`{path}` has no `content`{hint}"),
            );
            None
        }
        Some(Json::Str(s)) => Some(Cow::Borrowed(s.as_ref())),
        Some(Json::Arr(parts)) => text_parts(r, i, path, parts),
        Some(Json::Null) if tool_use => None,
        Some(v) => {
            let hint = match v {
                Json::Obj(_) if v.get("text").is_some() => {
                    " (a text part must sit in a list: [{\"type\": \"text\", \"text\": ...}])"
                }
                _ => "",
            };
            r.push(
                i,
                Code::InvalidContent,
                format!(
                    "`{path}.content` must be a string or a list of text parts, found {}: {}{hint}",
                    v.kind(),
                    v.preview(PREVIEW)
                ),
            );
            None
        }
    };
    if let Some(c) = &content
        && c.trim().is_empty()
    {
        match role {
            Some(Role::Assistant) if at.empty_assistant != Code::EmptyContent => r.push(
                i,
                at.empty_assistant,
                format!("`{path}.content` is empty; assistant messages are what the model learns, so they need text"),
            ),
            Some(other) => r.push(i, Code::EmptyContent, format!("`{path}.content` of this {} message is empty", other.as_str())),
            None => {}
        }
    }

    let mut trained = true;
    if weight_v.is_some() && !at.weight {
        r.push(
            i,
            Code::UnknownField,
            format!("`{path}.weight` is ignored in preference data: the outputs are always trained, the input never"),
        );
    } else if let Some(w) = weight_v {
        match role {
            Some(Role::Assistant) => match weight_value(w) {
                Some(t) => trained = t,
                None => {
                    let hint = if matches!(w, Json::Bool(_)) { " (write 1 for true, 0 for false)" } else { "" };
                    r.push(
                        i,
                        Code::InvalidWeight,
                        format!(
                            "`{path}.weight` is {}; expected 0 (not trained) or 1 (trained){hint}",
                            w.preview(PREVIEW)
                        ),
                    );
                }
            },
            Some(other) => r.push(
                i,
                Code::InvalidWeight,
                format!(
                    "`{path}.weight` is set on a {} message; only assistant messages can have a weight (others are never trained)",
                    other.as_str()
                ),
            ),
            None => {}
        }
    }

    for (k, v) in ignored {
        // Null adds nothing; ShareGPT keys were already named in the missing role/content hint;
        // a tool message's `tool_call_id` goes with its (reported) role.
        let covered = match k {
            "from" => role_v.is_none(),
            "value" => content_v.is_none(),
            "tool_call_id" => tool_use,
            _ => false,
        };
        if covered || matches!(v, Json::Null) {
            continue;
        }
        let why = match k {
            "name" => "is ignored (Qwen chat templates do not render names)",
            "reasoning_content" | "reasoning" | "thinking" => {
                "is ignored; to train on reasoning, put it in `content` as <think>…</think> before the answer"
            }
            "from" | "value" => "is ignored (ShareGPT keys: use `role` and `content`)",
            _ => "is not part of the format and is ignored",
        };
        r.push(i, Code::UnknownField, format!("`{path}.{k}` {why}"));
    }
    Some(Parsed {
        role,
        content,
        trained,
    })
}

/// Checks each message of a list (`messages`, `input.messages`; `at(i)` says where message `i`
/// sits), then where system messages sit. Returns every message as far as it was understood and
/// whether every role is known.
pub(crate) fn check_message_list<'a>(
    r: &mut Report,
    items: &'a [Json<'a>],
    at_of: impl Fn(usize) -> MessageAt,
) -> (Vec<Option<Parsed<'a>>>, bool) {
    let mut parsed: Vec<Option<Parsed<'a>>> = Vec::with_capacity(items.len());
    let mut all_roles_known = true;
    let mut first_system: Option<usize> = None;
    for (i, item) in items.iter().enumerate() {
        let at = at_of(i);
        let p = check_message(r, &at, item);
        let role = p.as_ref().and_then(|p| p.role);
        all_roles_known &= role.is_some();
        parsed.push(p);
        // Order rules, judged on the messages whose role is known.
        if role != Some(Role::System) {
            continue;
        }
        let path = &at.path;
        match first_system {
            None => {
                if i != 0 {
                    r.push(
                        Some(i),
                        Code::SystemNotFirst,
                        format!(
                            "`{path}` is a system message but not the first one; the system prompt must open the conversation"
                        ),
                    );
                }
                first_system = Some(i);
            }
            Some(f) => r.push(
                Some(i),
                Code::MultipleSystem,
                format!(
                    "`{path}` is a second system message (the first is `{}`); merge them into one",
                    at_of(f).path
                ),
            ),
        }
    }
    (parsed, all_roles_known)
}

/// Counts roles and turns of valid messages into `ex` and feeds them to the duplicate hash.
pub(crate) fn tally(msgs: &[Parsed<'_>], ex: &mut Example, hasher: &mut impl Hasher) {
    let mut prev = None;
    for m in msgs {
        let role = m.role.unwrap_or(Role::User);
        match role {
            Role::System => ex.system += 1,
            Role::User => ex.user += 1,
            Role::Assistant => {
                ex.assistant += 1;
                ex.assistant_trained += u32::from(m.trained);
                ex.turns += u32::from(prev == Some(Role::User));
            }
        }
        prev = Some(role);
        let content = m.content.as_deref().unwrap_or("").trim();
        hasher.write_u8(role as u8);
        hasher.write_u8(u8::from(m.trained));
        hasher.write_usize(content.len());
        hasher.write(content.as_bytes());
    }
}

/// `0`/`1` (also `0.0`/`1.0`, as Python writes floats) → trained?
fn weight_value(w: &Json<'_>) -> Option<bool> {
    match w {
        Json::UInt(0) | Json::Int(0) => Some(false),
        Json::UInt(1) | Json::Int(1) => Some(true),
        Json::Float(x) if *x == 0.0 => Some(false),
        Json::Float(x) if *x == 1.0 => Some(true),
        _ => None,
    }
}

/// Joins `[{"type": "text", "text": ...}, ...]`, reporting each part that is not text.
fn text_parts<'a>(
    r: &mut Report,
    i: Option<usize>,
    path: &str,
    parts: &'a [Json<'a>],
) -> Option<Cow<'a, str>> {
    let mut texts: Vec<&str> = Vec::with_capacity(parts.len());
    let mut ok = true;
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{path}.content[{j}]");
        let problem = match part {
            Json::Obj(_) => match (part.get("type"), part.get("text")) {
                (Some(Json::Str(t)), Some(Json::Str(text))) if t == "text" => {
                    texts.push(text);
                    None
                }
                (Some(Json::Str(t)), _) if t != "text" => Some(format!(
                    "`{at}.type` is {}; only text parts are supported",
                    Json::Str(Cow::Borrowed(t)).preview(PREVIEW)
                )),
                (None, _) => Some(format!(
                    "`{at}` has no `type`; text parts are {{\"type\": \"text\", \"text\": ...}}"
                )),
                (Some(t), _) if t.as_str().is_none() => Some(format!(
                    "`{at}.type` must be \"text\", found {}",
                    t.preview(PREVIEW)
                )),
                (_, None) => Some(format!("`{at}` has no `text`")),
                (_, Some(v)) => Some(format!(
                    "`{at}.text` must be a string, found {}: {}",
                    v.kind(),
                    v.preview(PREVIEW)
                )),
            },
            Json::Str(_) => Some(format!(
                "`{at}` is a bare string; write text parts as {{\"type\": \"text\", \"text\": ...}} or make `content` one string"
            )),
            other => Some(format!(
                "`{at}` must be a text part, found {}: {}",
                other.kind(),
                other.preview(PREVIEW)
            )),
        };
        if let Some(p) = problem {
            r.push(i, Code::InvalidContent, p);
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    Some(match texts.as_slice() {
        [one] => Cow::Borrowed(one),
        _ => Cow::Owned(texts.concat()),
    })
}

/// The role people usually mean by a name from another format.
fn suggest_role(role: &str) -> Option<&'static str> {
    let l = role.trim().to_ascii_lowercase();
    Some(match l.as_str() {
        "system" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "human" | "person" | "customer" | "client" | "question" | "prompt" | "instruction"
        | "input" | "usr" => "user",
        "gpt" | "bot" | "model" | "ai" | "chatbot" | "chatgpt" | "assistent" | "asistant"
        | "answer" | "response" | "output" | "agent" | "llm" => "assistant",
        "developer" | "sys" | "context" => "system",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(line: &str) -> Vec<(Option<usize>, Code)> {
        check_text(line, DataFormat::Chat, false)
            .issues
            .into_iter()
            .map(|i| (i.message_index, i.code))
            .collect()
    }

    #[test]
    fn a_valid_line_has_no_issue_and_counts_turns() {
        let line = r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": [{"type": "text", "text": "d"}], "weight": 0}]}"#;
        let out = check_text(line, DataFormat::Chat, true);
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        let LineKind::Example(ex) = out.kind else {
            panic!("not an example")
        };
        assert_eq!(
            (
                ex.system,
                ex.user,
                ex.assistant,
                ex.assistant_trained,
                ex.turns
            ),
            (1, 2, 2, 1, 2)
        );
        let Some(Row::Chat(conv)) = ex.row else {
            panic!("no conversation")
        };
        assert_eq!(conv.messages[4].content, "d");
        assert!(!conv.messages[4].trained);
    }

    #[test]
    fn text_parts_are_joined_without_separator() {
        let line = r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo\n"}]}, {"role": "assistant", "content": "x"}]}"#;
        let out = check_text(line, DataFormat::Chat, true);
        let LineKind::Example(ex) = out.kind else {
            panic!("{:?}", out.issues)
        };
        let Some(Row::Chat(conv)) = ex.row else {
            panic!("no conversation")
        };
        assert_eq!(conv.messages[0].content, "Hello\n");
    }

    #[test]
    fn hash_ignores_surrounding_whitespace_but_not_roles_or_weights() {
        let h = |line: &str| match check_text(line, DataFormat::Chat, false).kind {
            LineKind::Example(ex) => ex.hash,
            k => panic!("{k:?}"),
        };
        let a = h(
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#,
        );
        let b = h(
            r#"{"messages": [{"role": "user", "content": " hi\n"}, {"role": "assistant", "content": "yo "}]}"#,
        );
        let c = h(
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 0}]}"#,
        );
        let d = h(
            r#"{"messages": [{"role": "user", "content": "hiy"}, {"role": "assistant", "content": "o"}]}"#,
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn duplicate_keys_are_reported_once_each() {
        let got = codes(
            r#"{"messages": [{"role": "user", "role": "user", "role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "messages": []}"#,
        );
        assert_eq!(
            got,
            vec![(None, Code::DuplicateKey), (Some(0), Code::DuplicateKey)]
        );
    }

    #[test]
    fn role_suggestions() {
        assert_eq!(suggest_role("human"), Some("user"));
        assert_eq!(suggest_role("gpt"), Some("assistant"));
        assert_eq!(suggest_role(" Assistant"), Some("assistant"));
        assert_eq!(suggest_role("narrator"), None);
    }

    #[test]
    fn json_errors_get_hints() {
        let m = json_error_message(
            "{",
            &serde_json::from_str::<serde_json::Value>("{").unwrap_err(),
        );
        assert!(m.contains("one line"), "{m}");
        let t = "{'messages': []}";
        let m = json_error_message(
            t,
            &serde_json::from_str::<serde_json::Value>(t).unwrap_err(),
        );
        assert!(m.contains("Python dict"), "{m}");
        assert!(!m.contains("line 1"), "{m}");
    }
}

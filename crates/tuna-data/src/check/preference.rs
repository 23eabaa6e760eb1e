//! Checking one line of a preference file: OpenAI's preference fine-tuning format (DPO),
//! `{"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content": ...}],
//! "non_preferred_output": [{"role": "assistant", "content": ...}]}`.
//!
//! Rules: every message of `input.messages` follows the chat rules (role, content, at most one
//! system message and only first); the input has a user message and ends with one, which both
//! outputs answer; earlier assistant turns are context and never trained. Each output is a list of
//! exactly one assistant message with text, and the two texts differ. `weight` means nothing here
//! and is ignored with a warning, as are tool fields. Like the chat rules, every problem of the
//! line is reported, not only the first.

use std::borrow::Cow;
use std::hash::{BuildHasher, Hasher};

use super::issue::Code;
use super::line::{
    self, Example, HASH_STATE, LineKind, MessageAt, PREVIEW, Parsed, Report, Row,
    check_duplicate_keys, check_message, check_message_list,
};
use super::{CheckOptions, Overflow, TokenCount, TokenCounter};
use crate::conversation::{Message, PreferenceExample, Role};
use crate::jsonl::Json;

/// What a preference line looks like, for messages.
const SHAPE: &str = "{\"input\": {\"messages\": [...]}, \"preferred_output\": [{\"role\": \"assistant\", \"content\": ...}], \"non_preferred_output\": [{\"role\": \"assistant\", \"content\": ...}]}";

/// The top level of a parsed preference line.
pub(crate) fn check_pair(
    r: &mut Report,
    value: Json<'_>,
    opts: &CheckOptions,
    counter: Option<&dyn TokenCounter>,
    keep: bool,
) -> LineKind {
    let Json::Obj(fields) = &value else {
        r.push(
            None,
            Code::NotAnObject,
            format!(
                "the line is {} ({}), but each line of a preference file must be one object like {SHAPE}",
                value.kind(),
                value.preview(PREVIEW)
            ),
        );
        return LineKind::Invalid;
    };
    check_duplicate_keys(r, fields, None, "");
    let field = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v);
    if field("input").is_none()
        && field("preferred_output").is_none()
        && field("non_preferred_output").is_none()
    {
        // Another format altogether: say so once, with how to convert it.
        r.push(None, Code::MissingInput, missing_input_message(fields));
        return LineKind::Invalid;
    }
    for (k, v) in fields {
        let known = matches!(
            k.as_ref(),
            "input" | "preferred_output" | "non_preferred_output"
        );
        if known || matches!(v, Json::Null) {
            continue;
        }
        let why = match k.as_ref() {
            "tools" | "functions" | "tool_choice" | "parallel_tool_calls" => {
                "is ignored: Tuna does not train tool use yet"
            }
            _ => "is not part of the format and is ignored",
        };
        r.push(None, Code::UnknownField, format!("the field `{k}` {why}"));
    }

    let errors_before = r.errors;
    let input = check_input(r, field("input"), fields);
    let preferred = check_output(r, "preferred_output", field("preferred_output"));
    let non_preferred = check_output(r, "non_preferred_output", field("non_preferred_output"));
    if let (Some(p), Some(n)) = (&preferred, &non_preferred)
        && p.trim() == n.trim()
    {
        r.push(
            None,
            Code::IdenticalOutputs,
            "`preferred_output` and `non_preferred_output` hold the same text, so the pair teaches nothing; the non-preferred output must be a worse answer".to_string(),
        );
    }
    let (Some(mut msgs), Some(preferred), Some(non_preferred)) = (input, preferred, non_preferred)
    else {
        return LineKind::Invalid;
    };
    if r.errors > errors_before {
        return LineKind::Invalid;
    }

    // Valid from here on. Input assistant turns are context: counted as untrained; the preferred
    // output is the trained answer.
    for m in &mut msgs {
        m.trained = m.role != Some(Role::Assistant);
    }
    msgs.push(Parsed {
        role: Some(Role::Assistant),
        content: Some(preferred),
        trained: true,
    });
    let mut ex = Example::empty();
    let mut hasher = HASH_STATE.build_hasher();
    line::tally(&msgs, &mut ex, &mut hasher);
    hasher.write_u8(0xFF);
    hasher.write(non_preferred.trim().as_bytes());
    ex.hash = hasher.finish();
    let preferred = msgs.pop().and_then(|m| m.content).unwrap_or_default();

    if counter.is_none() && !keep {
        return LineKind::Example(Box::new(ex));
    }
    let pair = PreferenceExample {
        input: msgs
            .into_iter()
            .map(|m| {
                let role = m.role.unwrap_or(Role::User);
                Message {
                    role,
                    content: m.content.map(Cow::into_owned).unwrap_or_default(),
                    trained: role != Role::Assistant,
                }
            })
            .collect(),
        preferred: preferred.into_owned(),
        non_preferred: non_preferred.into_owned(),
    };
    if let Some(counter) = counter {
        let counts = counter
            .count_with_limit(&pair.chosen(), opts.max_seq_len)
            .and_then(|c| {
                Ok((
                    c,
                    counter.count_with_limit(&pair.rejected(), opts.max_seq_len)?,
                ))
            });
        match counts {
            Ok((chosen, rejected)) => {
                if chosen.total.max(rejected.total) > opts.max_seq_len {
                    r.push(
                        None,
                        Code::TooManyTokens,
                        too_many_tokens_message(&chosen, &rejected, opts),
                    );
                }
                ex.pair_tokens = Some((chosen, rejected));
            }
            Err(e) => {
                r.push(
                    None,
                    Code::TokenizationFailed,
                    format!("could not count the tokens of this pair: {e}"),
                );
                return LineKind::Invalid;
            }
        }
    }
    if keep {
        ex.row = Some(Row::Preference(pair));
    }
    LineKind::Example(Box::new(ex))
}

/// `input`: an object whose `messages` end with the user message the outputs answer. Returns the
/// parsed messages when they are all valid.
fn check_input<'a>(
    r: &mut Report,
    input: Option<&'a Json<'a>>,
    line_fields: &[(Cow<'_, str>, Json<'_>)],
) -> Option<Vec<Parsed<'a>>> {
    let Some(input) = input else {
        r.push(None, Code::MissingInput, missing_input_message(line_fields));
        return None;
    };
    let fields = match input {
        Json::Obj(fields) => fields,
        other => {
            let hint = match other {
                Json::Arr(items) if items.first().and_then(|m| m.get("role")).is_some() => {
                    " (it is a list of messages: write it as {\"messages\": [...]})"
                }
                Json::Str(_) => {
                    " (a prompt string: write it as {\"messages\": [{\"role\": \"user\", \"content\": ...}]})"
                }
                _ => "",
            };
            r.push(
                None,
                Code::InvalidInput,
                format!(
                    "`input` must be an object {{\"messages\": [...]}}, found {}: {}{hint}",
                    other.kind(),
                    other.preview(PREVIEW)
                ),
            );
            return None;
        }
    };
    check_duplicate_keys(r, fields, None, "input");
    let Some(messages) = fields.iter().find(|(k, _)| k == "messages").map(|(_, v)| v) else {
        let keys: Vec<String> = fields
            .iter()
            .take(8)
            .map(|(k, _)| format!("`{k}`"))
            .collect();
        r.push(
            None,
            Code::InvalidInput,
            format!(
                "`input` has no `messages` (found {}); write the prompt as {{\"messages\": [...]}}",
                if keys.is_empty() {
                    "nothing".to_string()
                } else {
                    keys.join(", ")
                }
            ),
        );
        return None;
    };
    for (k, v) in fields {
        match k.as_ref() {
            "messages" => {}
            _ if matches!(v, Json::Null) => {}
            "tools" | "functions" | "tool_choice" | "parallel_tool_calls" => r.push(
                None,
                Code::UnknownField,
                format!("`input.{k}` is ignored: Tuna does not train tool use yet"),
            ),
            _ => r.push(
                None,
                Code::UnknownField,
                format!("`input.{k}` is not part of the format and is ignored"),
            ),
        }
    }
    let items = match messages {
        Json::Arr(items) if items.is_empty() => {
            r.push(
                None,
                Code::InvalidInput,
                "`input.messages` is empty; it needs at least the user message that the outputs answer".to_string(),
            );
            return None;
        }
        Json::Arr(items) => items,
        other => {
            r.push(
                None,
                Code::InvalidInput,
                format!(
                    "`input.messages` must be a list of messages, found {}: {}",
                    other.kind(),
                    other.preview(PREVIEW)
                ),
            );
            return None;
        }
    };

    let errors_before = r.errors;
    let (parsed, all_roles_known) = check_message_list(r, items, |i| MessageAt {
        index: Some(i),
        path: format!("input.messages[{i}]"),
        weight: false,
        // Context, never trained: an empty earlier answer is odd but harmless.
        empty_assistant: Code::EmptyContent,
    });
    // Without every role known, these would only echo the role errors already reported.
    if all_roles_known {
        let roles: Vec<Role> = parsed.iter().flatten().filter_map(|p| p.role).collect();
        if !roles.contains(&Role::User) {
            r.push(
                None,
                Code::NoUserMessage,
                "`input.messages` has no user message".to_string(),
            );
        } else if let Some(&last) = roles.last()
            && last != Role::User
        {
            let k = roles.len() - 1;
            let hint = if last == Role::Assistant {
                " (an answer belongs in the outputs: move it there, or drop it)"
            } else {
                ""
            };
            let article = if last == Role::Assistant { "an" } else { "a" };
            r.push(
                Some(k),
                Code::InputNotEndingWithUser,
                format!(
                    "`input.messages` ends with {article} {} message (`input.messages[{k}]`); it must end with the user message that both outputs answer{hint}",
                    last.as_str()
                ),
            );
        }
    }
    if r.errors > errors_before {
        return None;
    }
    Some(parsed.into_iter().flatten().collect())
}

/// `preferred_output` / `non_preferred_output`: a list of exactly one assistant message with
/// text. Returns its text when valid.
fn check_output<'a>(
    r: &mut Report,
    name: &str,
    output: Option<&'a Json<'a>>,
) -> Option<Cow<'a, str>> {
    let example = "[{\"role\": \"assistant\", \"content\": ...}]";
    let items = match output {
        None => {
            r.push(
                None,
                Code::MissingOutput,
                format!("no `{name}`; a preference pair needs `preferred_output` and `non_preferred_output`, each {example}"),
            );
            return None;
        }
        Some(Json::Arr(items)) if items.len() == 1 => items,
        Some(Json::Arr(items)) if items.is_empty() => {
            r.push(
                None,
                Code::InvalidOutput,
                format!("`{name}` is empty; it must hold one assistant message: {example}"),
            );
            return None;
        }
        Some(Json::Arr(items)) => {
            r.push(
                None,
                Code::InvalidOutput,
                format!(
                    "`{name}` holds {} messages; it must hold exactly one assistant message (earlier turns belong in `input.messages`)",
                    items.len()
                ),
            );
            return None;
        }
        Some(other) => {
            let hint = match other {
                Json::Obj(_) if other.get("role").is_some() => {
                    " (it is a single message: wrap it in a list)".to_string()
                }
                Json::Str(_) => format!(" (write the answer as {example})"),
                _ => String::new(),
            };
            r.push(
                None,
                Code::InvalidOutput,
                format!(
                    "`{name}` must be a list with one assistant message, found {}: {}{hint}",
                    other.kind(),
                    other.preview(PREVIEW)
                ),
            );
            return None;
        }
    };
    let errors_before = r.errors;
    let path = format!("{name}[0]");
    let parsed = check_message(
        r,
        &MessageAt {
            index: None,
            path: path.clone(),
            weight: false,
            empty_assistant: Code::EmptyOutput,
        },
        &items[0],
    )?;
    match parsed.role {
        Some(Role::Assistant) => {}
        Some(other) => r.push(
            None,
            Code::InvalidOutput,
            format!(
                "`{path}.role` is \"{}\"; an output is the assistant's answer, so its role must be \"assistant\"",
                other.as_str()
            ),
        ),
        None => {} // already reported
    }
    if r.errors > errors_before {
        return None;
    }
    parsed.content
}

/// Why `input` is missing, with a conversion hint for the formats people usually have instead.
fn missing_input_message(fields: &[(Cow<'_, str>, Json<'_>)]) -> String {
    let has = |k: &str| fields.iter().any(|(f, _)| f == k);
    let hint = if has("messages") {
        "this line is chat data ({\"messages\": [...]}), for supervised fine-tuning; a preference pair puts the prompt in `input.messages` and two answers in `preferred_output` and `non_preferred_output`".to_string()
    } else if has("prompt") && has("chosen") && has("rejected") {
        "this looks like TRL / LLaMA-Factory preference data: write `prompt` as `input.messages`, and `chosen` / `rejected` as `preferred_output` / `non_preferred_output`, each a list with one assistant message".to_string()
    } else if has("chosen") && has("rejected") {
        "`chosen` and `rejected` seem to hold whole conversations: put the messages they share in `input.messages` and each one's last assistant message in `preferred_output` / `non_preferred_output`".to_string()
    } else if has("conversations") {
        "this looks like ShareGPT data: write the conversation before the answers as `input.messages` (`from` → `role`, `value` → `content`, human → user, gpt → assistant)".to_string()
    } else {
        format!("each line of a preference file must be {SHAPE}")
    };
    format!("no `input` field; {hint}")
}

fn too_many_tokens_message(
    chosen: &TokenCount,
    rejected: &TokenCount,
    opts: &CheckOptions,
) -> String {
    let max = opts.max_seq_len;
    let sizes = format!(
        "the pair's sequences have {} tokens (prompt + preferred output) and {} (prompt + non-preferred output), more than the maximum sequence length of {max}",
        chosen.total, rejected.total
    );
    match opts.overflow {
        Overflow::Drop => format!(
            "{sizes}: the pair will be dropped (pass --truncate to keep the first {max} tokens of each, or raise --max-seq-len)"
        ),
        Overflow::Truncate => {
            let nothing = if chosen.trained_within_limit == Some(0)
                || rejected.trained_within_limit == Some(0)
            {
                "; an output has no token within them, so the pair will be dropped"
            } else {
                ""
            };
            format!("{sizes}: only the first {max} tokens of each will be trained on{nothing}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::DataFormat;
    use super::*;

    fn codes(line: &str) -> Vec<(Option<usize>, Code)> {
        line::check_text(line, DataFormat::Preference, false)
            .issues
            .into_iter()
            .map(|i| (i.message_index, i.code))
            .collect()
    }

    const GOOD: &str = r#"{"input": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]}, "preferred_output": [{"role": "assistant", "content": "good"}], "non_preferred_output": [{"role": "assistant", "content": [{"type": "text", "text": "bad"}]}]}"#;

    #[test]
    fn a_valid_pair_counts_the_input_and_the_preferred_answer() {
        let out = line::check_text(GOOD, DataFormat::Preference, true);
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        let LineKind::Example(ex) = out.kind else {
            panic!("not an example")
        };
        // Input: system, 2 users, 1 assistant (context); plus the preferred answer (trained).
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
        let Some(Row::Preference(p)) = ex.row else {
            panic!("no pair")
        };
        assert_eq!(
            (p.preferred.as_str(), p.non_preferred.as_str()),
            ("good", "bad")
        );
        let chosen = p.chosen();
        assert_eq!(chosen.messages.len(), 5);
        assert!(!chosen.messages[2].trained, "input answers are context");
        assert!(chosen.messages[4].trained && chosen.messages[4].content == "good");
        assert_eq!(p.rejected().messages[4].content, "bad");
    }

    #[test]
    fn every_problem_of_a_pair_is_reported() {
        use Code::*;
        // No input, an output that is a bare string, the other missing; a chat line is only
        // told that it is one.
        assert_eq!(
            codes(r#"{"input_messages": [], "preferred_output": "x"}"#),
            [
                (None, UnknownField),
                (None, MissingInput),
                (None, InvalidOutput),
                (None, MissingOutput)
            ]
        );
        assert_eq!(
            codes(r#"{"messages": [], "id": 1}"#),
            [(None, MissingInput)]
        );
        // Input ends with an assistant message; outputs identical (after trimming).
        assert_eq!(
            codes(
                r#"{"input": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "preferred_output": [{"role": "assistant", "content": "x"}], "non_preferred_output": [{"role": "assistant", "content": " x\n"}]}"#
            ),
            [(Some(1), InputNotEndingWithUser), (None, IdenticalOutputs)]
        );
        // Bad role in the input, a user-role output, an empty output, two messages in one output.
        assert_eq!(
            codes(
                r#"{"input": {"messages": [{"role": "human", "content": "q"}]}, "preferred_output": [{"role": "user", "content": "x"}], "non_preferred_output": [{"role": "assistant", "content": ""}, {"role": "assistant", "content": "y"}]}"#
            ),
            [
                (Some(0), UnknownRole),
                (None, InvalidOutput),
                (None, InvalidOutput)
            ]
        );
        assert_eq!(
            codes(
                r#"{"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [{"role": "assistant", "content": "  "}], "non_preferred_output": [{"role": "assistant", "content": "y", "weight": 1}], "id": 7}"#
            ),
            [
                (None, UnknownField),
                (None, EmptyOutput),
                (None, UnknownField)
            ]
        );
        // Input that is a list of messages; an input without a user message.
        assert_eq!(
            codes(
                r#"{"input": [{"role": "user", "content": "q"}], "preferred_output": [{"role": "assistant", "content": "x"}], "non_preferred_output": [{"role": "assistant", "content": "y"}]}"#
            ),
            [(None, InvalidInput)]
        );
        assert_eq!(
            codes(
                r#"{"input": {"messages": [{"role": "system", "content": "s"}]}, "preferred_output": [{"role": "assistant", "content": "x"}], "non_preferred_output": [{"role": "assistant", "content": "y"}]}"#
            ),
            [(None, NoUserMessage)]
        );
    }

    #[test]
    fn messages_name_the_path_and_the_fix() {
        let out = line::check_text(
            r#"{"prompt": [{"role": "user", "content": "q"}], "chosen": [], "rejected": []}"#,
            DataFormat::Preference,
            false,
        );
        assert!(
            out.issues[0].message.contains("TRL / LLaMA-Factory"),
            "{:?}",
            out.issues
        );
        let out = line::check_text(
            r#"{"input": {"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]}, "preferred_output": [{"role": "assistant", "content": "x"}], "non_preferred_output": [{"role": "assistant", "content": "y"}]}"#,
            DataFormat::Preference,
            false,
        );
        let m: Vec<&str> = out.issues.iter().map(|i| i.message.as_str()).collect();
        assert!(
            m[0].starts_with("`input.messages[1]` is a system message"),
            "{m:?}"
        );
        assert!(m[1].contains("ends with a system message"), "{m:?}");
    }
}

//! `tuna data check` on the fixtures of `tests/fixtures/datasets/` (made by `make_fixtures.py`
//! there): every code at its line and message, the order of a report with many problems, the
//! statistics of the reference datasets, token statistics with a fake counter, and invariance to
//! chunk size and thread count.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use tuna_data::check::{Code, Issue, Overflow, TokenCount};
use tuna_data::{
    CheckOptions, CheckReport, Conversation, DataFormat, Role, TokenCounter, check_file,
    check_reader, read_conversations, read_preference_pairs,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/datasets")
        .join(name)
}

fn check(name: &str) -> CheckReport {
    check_with(name, &CheckOptions::default())
}

fn check_with(name: &str, opts: &CheckOptions) -> CheckReport {
    check_file(&fixture(name), opts, None).unwrap_or_else(|e| panic!("{name}: {e}"))
}

type Where = (u64, Option<usize>, Code);

fn places(issues: &[Issue]) -> Vec<Where> {
    issues
        .iter()
        .map(|i| (i.line, i.message_index, i.code))
        .collect()
}

/// Asserts the exact errors and warnings (line, message index, code), in order.
fn assert_issues(name: &str, report: &CheckReport, errors: &[Where], warnings: &[Where]) {
    assert_eq!(
        places(&report.errors),
        errors,
        "{name}: errors {:#?}",
        report.errors
    );
    assert_eq!(
        places(&report.warnings),
        warnings,
        "{name}: warnings {:#?}",
        report.warnings
    );
    assert_eq!(report.ok, errors.is_empty(), "{name}");
    assert_eq!(report.stats.error_count, errors.len() as u64, "{name}");
    assert_eq!(report.stats.warning_count, warnings.len() as u64, "{name}");
}

/// The message of the only issue with `code`.
fn message(report: &CheckReport, code: Code, nth: usize) -> String {
    let all: Vec<&Issue> = report
        .errors
        .iter()
        .chain(&report.warnings)
        .filter(|i| i.code == code)
        .collect();
    all.get(nth)
        .unwrap_or_else(|| panic!("no {nth}th {code}: {report:#?}"))
        .message
        .clone()
}

use Code::*;

#[test]
fn every_error_code_at_its_line_and_message() {
    let cases: &[(&str, &[Where])] = &[
        ("empty_file.jsonl", &[(0, None, EmptyFile)]),
        ("json_array.jsonl", &[(1, None, JsonArray)]),
        ("json_array_one_line.jsonl", &[(1, None, JsonArray)]),
        ("binary_file.jsonl", &[(1, None, BinaryFile)]),
        ("not_jsonl_csv.jsonl", &[(0, None, NotJsonl)]),
        ("not_jsonl_image.jsonl", &[(0, None, NotJsonl)]),
        ("utf16.jsonl", &[(1, None, InvalidUtf8)]),
        ("invalid_utf8.jsonl", &[(2, None, InvalidUtf8)]),
        ("nul_byte.jsonl", &[(2, None, NulByte)]),
        (
            "invalid_json.jsonl",
            &[
                (2, None, InvalidJson),
                (3, None, InvalidJson),
                (4, None, InvalidJson),
                (5, None, InvalidJson),
            ],
        ),
        (
            "not_an_object.jsonl",
            &[(2, None, NotAnObject), (3, None, NotAnObject)],
        ),
        ("duplicate_key.jsonl", &[(2, Some(0), DuplicateKey)]),
        (
            "missing_messages.jsonl",
            &[
                (2, None, MissingMessages),
                (3, None, MissingMessages),
                (4, None, MissingMessages),
            ],
        ),
        (
            "messages_not_a_list.jsonl",
            &[(2, None, MessagesNotAList), (3, None, MessagesNotAList)],
        ),
        ("empty_messages.jsonl", &[(2, None, EmptyMessages)]),
        (
            "message_not_an_object.jsonl",
            &[(2, Some(0), MessageNotAnObject)],
        ),
        (
            "missing_role.jsonl",
            &[(2, Some(0), MissingRole), (3, Some(0), MissingRole)],
        ),
        (
            "unknown_role.jsonl",
            &[
                (2, Some(0), UnknownRole),
                (2, Some(1), UnknownRole),
                (3, Some(1), UnknownRole),
            ],
        ),
        (
            "missing_content.jsonl",
            &[(2, Some(1), MissingContent), (3, Some(0), MissingContent)],
        ),
        (
            "invalid_content.jsonl",
            &[
                (2, Some(0), InvalidContent),
                (2, Some(1), InvalidContent),
                (3, Some(0), InvalidContent),
                (3, Some(0), InvalidContent),
            ],
        ),
        (
            "empty_assistant_content.jsonl",
            &[(2, Some(1), EmptyAssistantContent)],
        ),
        ("system_not_first.jsonl", &[(2, Some(1), SystemNotFirst)]),
        ("multiple_system.jsonl", &[(2, Some(2), MultipleSystem)]),
        ("no_user_message.jsonl", &[(2, None, NoUserMessage)]),
        (
            "no_assistant_message.jsonl",
            &[(2, None, NoAssistantMessage)],
        ),
        (
            "invalid_weight.jsonl",
            &[
                (2, Some(1), InvalidWeight),
                (3, Some(1), InvalidWeight),
                (4, Some(0), InvalidWeight),
            ],
        ),
        (
            "tool_calls_not_supported.jsonl",
            &[
                (2, Some(1), ToolCallsNotSupported),
                (2, Some(2), ToolCallsNotSupported),
            ],
        ),
        // Preference (DPO) files, recognised from their first line.
        (
            "missing_input.jsonl",
            &[
                (2, None, MissingInput),
                (3, None, MissingInput),
                (4, None, MissingInput),
            ],
        ),
        (
            "invalid_input.jsonl",
            &[
                (2, None, InvalidInput),
                (3, None, InvalidInput),
                (4, None, InvalidInput),
            ],
        ),
        (
            "input_not_ending_with_user.jsonl",
            &[(2, Some(1), InputNotEndingWithUser)],
        ),
        ("missing_output.jsonl", &[(2, None, MissingOutput)]),
        (
            "invalid_output.jsonl",
            &[
                (2, None, InvalidOutput),
                (2, None, InvalidOutput),
                (3, None, InvalidOutput),
                (3, None, InvalidOutput),
                (4, None, InvalidOutput),
            ],
        ),
        ("empty_output.jsonl", &[(2, None, EmptyOutput)]),
        ("identical_outputs.jsonl", &[(2, None, IdenticalOutputs)]),
    ];
    let mut seen = BTreeSet::new();
    for (name, errors) in cases {
        let report = check(name);
        assert_issues(name, &report, errors, &[]);
        seen.extend(errors.iter().map(|e| e.2));
    }
    let report = check("blank_only.jsonl");
    let blank = [
        (1, None, BlankLine),
        (2, None, BlankLine),
        (3, None, BlankLine),
    ];
    assert_issues("blank_only.jsonl", &report, &[(0, None, EmptyFile)], &blank);
    assert!(report.errors[0].message.contains("only blank lines"));
    // Line too long: the fixture's second line is 2,075 bytes.
    let opts = CheckOptions {
        max_line_bytes: 1000,
        ..CheckOptions::default()
    };
    let report = check_with("line_too_long.jsonl", &opts);
    assert_issues(
        "line_too_long.jsonl",
        &report,
        &[(2, None, LineTooLong)],
        &[],
    );
    assert_eq!(report.stats.examples, 2);
    seen.insert(LineTooLong);
    // tokenization_failed and no_trainable_examples need a counter: see the token tests.
    seen.extend([TokenizationFailed, NoTrainableExamples]);
    let all_errors: BTreeSet<Code> = Code::ALL.into_iter().filter(|c| c.is_error()).collect();
    assert_eq!(seen, all_errors, "an error code without a fixture");
}

/// A CSV export or an image is said to be one once, with what was expected, instead of an
/// error per line ("expected ident at column 2" on every line, 400 UTF-8 errors).
#[test]
fn a_file_that_is_not_jsonl_is_named_once() {
    let r = check("not_jsonl_csv.jsonl");
    assert_eq!(r.stats.error_count, 1);
    assert_eq!(r.stats.invalid_lines, 3);
    let m = message(&r, NotJsonl, 0);
    assert!(m.contains("none of its 3 lines"), "{m}");
    assert!(m.contains("CSV") && m.contains("`prompt,response`"), "{m}");
    assert!(m.contains(r#"{"messages": [{"role": "user""#), "{m}");

    let r = check("not_jsonl_image.jsonl");
    assert_eq!(r.errors.len(), 1);
    let m = message(&r, NotJsonl, 0);
    assert!(
        m.contains("binary data") && m.contains("89 50 4e 47"),
        "{m}"
    );

    // Broken JSONL stays explained line by line, even when no line is usable.
    let broken = "{\"messages\": [}\n{\"messages\": \n";
    let r =
        tuna_data::check::check_reader(broken.as_bytes(), &CheckOptions::default(), None).unwrap();
    assert_eq!(r.stats.error_count, 2);
    assert!(r.errors.iter().all(|i| i.code == InvalidJson), "{r:#?}");
}

#[test]
fn messages_name_the_field_the_value_and_a_hint() {
    let r = check("unknown_role.jsonl");
    assert_eq!(
        message(&r, UnknownRole, 0),
        r#"`messages[0].role` is "human"; expected "system", "user" or "assistant" (did you mean "user"?)"#
    );
    assert!(message(&r, UnknownRole, 1).contains(r#"(did you mean "assistant"?)"#));
    assert!(message(&r, UnknownRole, 2).contains("found a number: 5"));

    let r = check("missing_messages.jsonl");
    assert!(message(&r, MissingMessages, 0).contains("Alpaca"));
    assert!(message(&r, MissingMessages, 0).contains("found `instruction`, `input`, `output`"));
    assert!(message(&r, MissingMessages, 1).contains("ShareGPT"));
    assert!(
        message(&r, MissingMessages, 2).contains("did you mean `messages` instead of `message`?")
    );

    let r = check("invalid_json.jsonl");
    assert!(
        message(&r, InvalidJson, 0).contains("on one line"),
        "{}",
        message(&r, InvalidJson, 0)
    );
    assert!(message(&r, InvalidJson, 1).contains("trailing comma"));
    assert!(message(&r, InvalidJson, 2).contains("Python dict"));
    assert!(message(&r, InvalidJson, 3).contains("one JSON object"));

    assert!(message(&check("json_array.jsonl"), JsonArray, 0).contains("jq -c '.[]'"));
    assert!(message(&check("utf16.jsonl"), InvalidUtf8, 0).contains("UTF-16LE"));
    assert!(message(&check("binary_file.jsonl"), BinaryFile, 0).contains("gzip"));
    let m = message(&check("invalid_utf8.jsonl"), InvalidUtf8, 0);
    assert!(m.contains("byte 47 is 0xE9") && m.contains("iconv"), "{m}");
    assert_eq!(
        message(&check("nul_byte.jsonl"), NulByte, 0)
            .split(" (")
            .next(),
        Some("NUL byte at byte 45 of the line")
    );

    let r = check("invalid_content.jsonl");
    assert_eq!(
        message(&r, InvalidContent, 0),
        "`messages[0].content` must be a string or a list of text parts, found null: null"
    );
    assert!(
        message(&r, InvalidContent, 2)
            .starts_with(r#"`messages[0].content[0].type` is "image_url""#)
    );
    assert!(
        message(&r, InvalidContent, 3).starts_with("`messages[0].content[1]` is a bare string")
    );

    let r = check("invalid_weight.jsonl");
    assert!(message(&r, InvalidWeight, 0).starts_with("`messages[1].weight` is 0.5;"));
    assert!(message(&r, InvalidWeight, 1).contains("write 1 for true"));
    assert!(message(&r, InvalidWeight, 2).contains("only assistant messages"));

    let r = check("messages_not_a_list.jsonl");
    assert!(message(&r, MessagesNotAList, 0).contains("json.dumps applied twice"));
    assert!(message(&r, MessagesNotAList, 1).contains("wrap it in a list"));
    assert!(message(&check("missing_role.jsonl"), MissingRole, 1).contains("ShareGPT"));
    assert!(
        message(&check("multiple_system.jsonl"), MultipleSystem, 0)
            .contains("the first is `messages[0]`")
    );
}

#[test]
fn long_values_are_cut_in_messages() {
    let long = "h".repeat(10_000);
    let line = format!(
        r#"{{"messages": [{{"role": "{long}", "content": "x"}}, {{"role": "assistant", "content": "y"}}]}}"#
    );
    let r = check_reader(line.as_bytes(), &CheckOptions::default(), None).unwrap();
    let m = &r.errors[0].message;
    assert!(m.len() < 200 && m.contains("hhh…"), "{m}");
}

#[test]
fn every_warning_code_at_its_line() {
    let cases: &[(&str, &[Where])] = &[
        (
            "warn_blank_line.jsonl",
            &[(2, None, BlankLine), (3, None, BlankLine)],
        ),
        ("warn_byte_order_mark.jsonl", &[(1, None, ByteOrderMark)]),
        (
            "warn_unknown_field.jsonl",
            &[(2, None, UnknownField), (2, Some(0), UnknownField)],
        ),
        ("warn_empty_content.jsonl", &[(2, Some(0), EmptyContent)]),
        (
            "warn_no_trained_message.jsonl",
            &[(2, None, NoTrainedMessage)],
        ),
        (
            "warn_last_message_not_assistant.jsonl",
            &[(2, Some(2), LastMessageNotAssistant)],
        ),
        (
            "warn_duplicate_example.jsonl",
            &[(3, None, DuplicateExample)],
        ),
        (
            "warn_preference.jsonl",
            &[
                (2, None, UnknownField),
                (2, Some(0), UnknownField),
                (3, None, DuplicateExample),
            ],
        ),
    ];
    let mut seen = BTreeSet::new();
    for (name, warnings) in cases {
        let report = check(name);
        assert_issues(name, &report, &[], warnings);
        seen.extend(warnings.iter().map(|w| w.2));
    }
    assert!(
        message(&check("warn_duplicate_example.jsonl"), DuplicateExample, 0).contains("line 1")
    );
    let r = check("warn_unknown_field.jsonl");
    assert!(message(&r, UnknownField, 0).contains("`id`"));
    assert!(message(&r, UnknownField, 1).contains("`messages[0].name`"));
    assert_eq!(check("warn_duplicate_example.jsonl").stats.duplicates, 1);
    assert_eq!(check("warn_blank_line.jsonl").stats.blank_lines, 2);
    seen.insert(TooManyTokens); // see the token tests
    let all_warnings: BTreeSet<Code> = Code::ALL.into_iter().filter(|c| !c.is_error()).collect();
    assert_eq!(seen, all_warnings, "a warning code without a fixture");
}

#[test]
fn good_files_pass_with_their_stats() {
    let r = check("good.jsonl");
    assert_issues("good.jsonl", &r, &[], &[]);
    let s = &r.stats;
    assert_eq!(
        (s.lines, s.examples, s.invalid_lines, s.blank_lines),
        (4, 4, 0, 0)
    );
    assert_eq!(
        (
            s.messages.system,
            s.messages.user,
            s.messages.assistant,
            s.messages.assistant_trained
        ),
        (1, 5, 6, 5)
    );
    // Turns: 1 + 2 + 1 + 1 (an assistant right after an assistant is not a new exchange).
    assert_eq!(
        (
            s.turns,
            s.multi_turn_examples,
            s.max_turns,
            s.examples_with_system
        ),
        (5, 1, 2, 1)
    );

    let r = check("good_crlf.jsonl");
    assert_issues("good_crlf.jsonl", &r, &[], &[]);
    assert_eq!(r.stats.examples, 2);
}

#[test]
fn reference_datasets_pass_with_correct_stats() {
    let r = check("seed_example.jsonl");
    assert_issues("seed_example.jsonl", &r, &[], &[]);
    let s = &r.stats;
    assert_eq!((s.lines, s.examples, s.duplicates), (3, 3, 0));
    assert_eq!(
        (s.messages.system, s.messages.user, s.messages.assistant),
        (3, 4, 4)
    );
    assert_eq!(
        (
            s.turns,
            s.multi_turn_examples,
            s.max_turns,
            s.examples_with_system
        ),
        (4, 1, 2, 3)
    );

    let r = check("identity.jsonl");
    assert_issues("identity.jsonl", &r, &[], &[]);
    let s = &r.stats;
    assert_eq!((s.lines, s.examples, s.duplicates), (91, 91, 0));
    assert_eq!(
        (s.messages.system, s.messages.user, s.messages.assistant),
        (0, 91, 91)
    );
    assert_eq!((s.turns, s.multi_turn_examples), (91, 0));
}

#[test]
fn a_file_with_many_problems_reports_all_of_them_in_order() {
    let r = check("many_problems.jsonl");
    assert_issues(
        "many_problems.jsonl",
        &r,
        &[
            (3, None, InvalidJson),
            (4, Some(0), UnknownRole),
            (4, Some(1), EmptyAssistantContent),
            (5, Some(1), SystemNotFirst),
            (5, Some(2), MultipleSystem),
            (5, None, NoAssistantMessage),
            (7, None, EmptyMessages),
            (8, Some(1), InvalidWeight),
            (9, None, NotAnObject),
            (10, None, NoUserMessage),
        ],
        &[
            (2, None, BlankLine),
            (6, None, DuplicateExample),
            (8, None, UnknownField),
        ],
    );
    let s = &r.stats;
    assert_eq!(
        (
            s.lines,
            s.examples,
            s.invalid_lines,
            s.blank_lines,
            s.duplicates
        ),
        (10, 2, 7, 1, 1)
    );
    assert_eq!(s.errors_by_code.get(&InvalidJson), Some(&1));
    assert_eq!(s.warnings_by_code.get(&BlankLine), Some(&1));

    // The JSON form is exactly {ok, errors: [{line, message_index, code, message}], warnings, stats}.
    let v = serde_json::to_value(&r).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["errors", "ok", "stats", "warnings"]);
    assert_eq!(
        v["errors"][0],
        serde_json::json!({"line": 3, "message_index": null, "code": "invalid_json", "message": r.errors[0].message})
    );
    assert_eq!(v["errors"][1]["message_index"], 0);
    assert_eq!(v["stats"]["errors_by_code"]["unknown_role"], 1);
    let back: CheckReport = serde_json::from_value(v).unwrap();
    assert_eq!(back, r);
}

#[test]
fn stored_issues_are_capped_but_all_counted() {
    let bad = "{\n".repeat(5000);
    let opts = CheckOptions {
        max_reported: 10,
        ..CheckOptions::default()
    };
    let r = check_reader(format!("{{\"a\": 1}}\n{bad}").as_bytes(), &opts, None).unwrap();
    assert_eq!(r.errors.len(), 10);
    assert_eq!(r.stats.error_count, 5001);
    assert_eq!(r.errors[9].line, 10);
}

#[test]
fn report_is_the_same_for_every_chunk_size_and_thread_count() {
    let mut text = std::fs::read(fixture("many_problems.jsonl")).unwrap();
    text.extend(std::fs::read(fixture("identity.jsonl")).unwrap());
    text.extend(std::fs::read(fixture("invalid_content.jsonl")).unwrap());
    let base = CheckOptions {
        max_line_bytes: 1000,
        ..CheckOptions::default()
    };
    let reference = check_reader(text.as_slice(), &base, None).unwrap();
    assert_eq!(reference.stats.lines, 10 + 91 + 3);
    for chunk_bytes in [1, 1001, 1500, 4096] {
        let opts = CheckOptions {
            chunk_bytes,
            ..base.clone()
        };
        let r = check_reader(text.as_slice(), &opts, None).unwrap();
        assert_eq!(r, reference, "chunk_bytes {chunk_bytes}");
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let r = pool.install(|| check_reader(text.as_slice(), &base, None).unwrap());
    assert_eq!(r, reference, "1 thread");
}

#[test]
fn a_line_longer_than_the_buffer_is_skipped_and_counting_goes_on() {
    let good = r#"{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}"#;
    let long = format!(
        r#"{{"messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "x".repeat(200_000)
    );
    let text = format!("{good}\n{long}\n{good}\n");
    let opts = CheckOptions {
        max_line_bytes: 100,
        chunk_bytes: 1,
        ..CheckOptions::default()
    };
    let r = check_reader(text.as_bytes(), &opts, None).unwrap();
    assert_issues(
        "long",
        &r,
        &[(2, None, LineTooLong)],
        &[(3, None, DuplicateExample)],
    );
    assert!(
        r.errors[0]
            .message
            .contains(&format!("{} bytes", long.len())),
        "{}",
        r.errors[0].message
    );
}

#[test]
fn a_binary_file_is_recognised_even_when_its_first_line_is_too_long() {
    let mut data = b"\x1f\x8b\x08\x00".to_vec();
    data.extend(std::iter::repeat_n(0xAB, 10_000));
    data.extend_from_slice(b"\n\x01\x02\n{\n");
    let opts = CheckOptions {
        max_line_bytes: 100,
        chunk_bytes: 1,
        ..CheckOptions::default()
    };
    let r = check_reader(data.as_slice(), &opts, None).unwrap();
    assert_issues("gzip", &r, &[(1, None, BinaryFile)], &[]);
    assert_eq!((r.stats.lines, r.stats.invalid_lines), (1, 1));
}

#[test]
fn check_reader_matches_check_file() {
    for name in [
        "many_problems.jsonl",
        "warn_byte_order_mark.jsonl",
        "good_crlf.jsonl",
    ] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let r = check_reader(bytes.as_slice(), &CheckOptions::default(), None).unwrap();
        assert_eq!(r, check(name), "{name}");
    }
}

#[test]
fn read_conversations_returns_every_valid_conversation() {
    let path = fixture("identity.jsonl");
    let got = read_conversations(&path).unwrap();
    // Reference: serde's own derive on each line.
    let text = std::fs::read_to_string(&path).unwrap();
    let want: Vec<Conversation> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got, want);

    let got = read_conversations(&fixture("good.jsonl")).unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].system_prompt(), Some("You are terse."));
    assert!(!got[1].messages[1].trained && got[1].messages[3].trained);
    assert_eq!(got[2].messages[0].content, "Translate: chat");
    assert_eq!(got[2].messages[1].role, Role::Assistant);
    assert_eq!(
        read_conversations(&fixture("warn_blank_line.jsonl"))
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn read_conversations_fails_with_file_and_line() {
    let err = read_conversations(&fixture("many_problems.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("many_problems.jsonl:3:") && err.contains("invalid_json"),
        "{err}"
    );
    let err = read_conversations(&fixture("no_such_file.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no_such_file.jsonl"), "{err}");
}

#[test]
fn preference_messages_name_the_field_and_a_hint() {
    let r = check("missing_input.jsonl");
    assert_eq!(r.stats.format, DataFormat::Preference);
    assert!(message(&r, MissingInput, 0).contains("this line is chat data"));
    assert!(message(&r, MissingInput, 1).contains("TRL / LLaMA-Factory"));
    let r = check("invalid_input.jsonl");
    assert!(message(&r, InvalidInput, 0).contains("it is a list of messages"));
    assert!(message(&r, InvalidInput, 1).contains("`input` has no `messages`"));
    assert!(message(&r, InvalidInput, 2).contains("`input.messages` is empty"));
    let r = check("input_not_ending_with_user.jsonl");
    assert!(
        message(&r, InputNotEndingWithUser, 0)
            .starts_with("`input.messages` ends with an assistant message (`input.messages[1]`)")
    );
    let r = check("invalid_output.jsonl");
    let m: Vec<String> = (0..5).map(|i| message(&r, InvalidOutput, i)).collect();
    assert!(
        m[0].contains("found a string") && m[0].contains("write the answer as"),
        "{m:?}"
    );
    assert!(m[1].contains("`non_preferred_output` is empty"), "{m:?}");
    assert!(
        m[2].contains("`preferred_output[0].role` is \"user\""),
        "{m:?}"
    );
    assert!(m[3].contains("holds 2 messages"), "{m:?}");
    assert!(m[4].contains("wrap it in a list"), "{m:?}");
    assert!(
        message(&check("empty_output.jsonl"), EmptyOutput, 0)
            .starts_with("`non_preferred_output[0].content` is empty")
    );
    assert!(
        message(&check("warn_preference.jsonl"), DuplicateExample, 0)
            .contains("same preference pair as line 1")
    );
    // Told the format, a chat file fails on every line, and a preference file read as chat data
    // says what it is.
    let opts = CheckOptions {
        format: Some(DataFormat::Preference),
        ..CheckOptions::default()
    };
    let r = check_with("good.jsonl", &opts);
    assert_eq!((r.stats.invalid_lines, r.stats.examples), (4, 0));
    let opts = CheckOptions {
        format: Some(DataFormat::Chat),
        ..CheckOptions::default()
    };
    let r = check_with("preference_good.jsonl", &opts);
    assert!(message(&r, MissingMessages, 0).contains("--objective dpo"));
}

#[test]
fn preference_files_pass_with_their_stats() {
    let r = check("preference_good.jsonl");
    assert_issues("preference_good.jsonl", &r, &[], &[]);
    let s = &r.stats;
    assert_eq!(s.format, DataFormat::Preference);
    assert_eq!((s.lines, s.examples), (4, 4));
    // The inputs' messages plus each pair's preferred answer (trained); the inputs' assistant
    // message is context.
    assert_eq!(
        (
            s.messages.system,
            s.messages.user,
            s.messages.assistant,
            s.messages.assistant_trained
        ),
        (1, 5, 5, 4)
    );
    assert_eq!(
        (
            s.turns,
            s.multi_turn_examples,
            s.max_turns,
            s.examples_with_system
        ),
        (5, 1, 2, 1)
    );

    let pairs = read_preference_pairs(&fixture("preference_good.jsonl")).unwrap();
    assert_eq!(pairs.len(), 4);
    assert_eq!(pairs[1].input[0].content, "Be brief.");
    assert_eq!(
        (pairs[2].preferred.as_str(), pairs[2].non_preferred.as_str()),
        ("4", "5")
    );
    assert!(
        !pairs[2].input[1].trained,
        "the input's answers are context"
    );
    let err = read_preference_pairs(&fixture("invalid_output.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("invalid_output.jsonl:2: invalid_output"),
        "{err}"
    );
    let err = read_conversations(&fixture("preference_good.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(":1: missing_messages") && err.contains("preference (DPO) data"),
        "{err}"
    );

    // The shipped preference datasets (assets/data; numbers counted independently in Python).
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/data");
    for (name, pairs, system, user, assistant, multi_turn, duplicates) in [
        ("identity_pref.jsonl", 91, 0, 91, 91, 0, 0),
        ("dpo_en_demo.jsonl", 300, 80, 563, 263 + 300, 106, 5),
        ("dpo_zh_demo.jsonl", 300, 64, 300, 300, 0, 11),
    ] {
        let r = check_file(&assets.join(name), &CheckOptions::default(), None).unwrap();
        assert!(r.ok, "{name}: {:#?}", r.errors);
        let s = &r.stats;
        assert_eq!(s.format, DataFormat::Preference, "{name}");
        assert_eq!(
            (
                s.examples,
                s.messages.system,
                s.messages.user,
                s.messages.assistant,
                s.multi_turn_examples,
                s.duplicates
            ),
            (pairs, system, user, assistant, multi_turn, duplicates),
            "{name}"
        );
        assert_eq!(s.warning_count, duplicates, "{name}: {:#?}", r.warnings);
    }
}

// ---------------------------------------------------------------------------------------------
// Token statistics with a fake counter

/// Total tokens = the user message read as a number, trained = the assistant message read as a
/// number; fails on "FAIL". With `positions`, trained tokens sit at the end of the example (as an
/// answer does), so truncation keeps `max(0, max_len - untrained)` of them.
struct NumberCounter {
    positions: bool,
}

impl TokenCounter for NumberCounter {
    fn count(&self, conv: &Conversation) -> Result<(usize, usize), String> {
        let num = |role| {
            let m = conv
                .messages
                .iter()
                .find(|m| m.role == role)
                .ok_or("no message")?;
            m.content
                .parse::<usize>()
                .map_err(|e| format!("{:?}: {e}", m.content))
        };
        Ok((num(Role::User)?, num(Role::Assistant)?))
    }

    fn count_with_limit(&self, conv: &Conversation, max_len: usize) -> Result<TokenCount, String> {
        let (total, trained) = self.count(conv)?;
        let within = self
            .positions
            .then(|| max_len.saturating_sub(total - trained).min(trained));
        Ok(TokenCount {
            total,
            trained,
            trained_within_limit: within,
        })
    }
}

/// Lines with totals 1..=100 in a seeded random order, trained = total / 2. Returns the text and
/// the total of each line.
fn numbered_dataset() -> (String, Vec<usize>) {
    let mut totals: Vec<usize> = (1..=100).collect();
    totals.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    let text: String = totals
        .iter()
        .map(|t| {
            format!(r#"{{"messages": [{{"role": "user", "content": "{t}"}}, {{"role": "assistant", "content": "{}"}}]}}"#, t / 2) + "\n"
        })
        .collect();
    (text, totals)
}

#[test]
fn token_stats_percentiles_and_overflow_drop() {
    let (text, totals) = numbered_dataset();
    let opts = CheckOptions {
        max_seq_len: 90,
        ..CheckOptions::default()
    };
    let r = check_reader(
        text.as_bytes(),
        &opts,
        Some(&NumberCounter { positions: false }),
    )
    .unwrap();
    assert!(r.ok, "{:#?}", r.errors);
    let t = r.stats.tokens.as_ref().unwrap();
    assert_eq!(t.examples, 100);
    assert_eq!(
        (t.total.min, t.total.p50, t.total.p95, t.total.max),
        (1, 50, 95, 100)
    );
    assert!((t.total.mean - 50.5).abs() < 1e-12);
    // trained = t / 2: 0, 1, 1, 2, 2, ..., 50; the 50th smallest is 50 / 2, the 95th is 95 / 2.
    assert_eq!(
        (t.trained.min, t.trained.p50, t.trained.p95, t.trained.max),
        (0, 25, 47, 50)
    );
    assert!((t.trained.mean - 25.0).abs() < 1e-12);
    assert_eq!((t.over_max_seq_len, t.dropped, t.truncated), (10, 10, 0));
    assert_eq!(t.epoch_tokens, (1..=90).sum::<u64>());
    assert_eq!(
        t.epoch_trained_tokens,
        (1..=90u64).map(|t| t / 2).sum::<u64>()
    );
    assert!(t.epoch_trained_tokens_exact);
    assert_eq!(t.histogram[0].count, 63); // 1..=63
    assert_eq!(t.histogram[1].count, 37); // 64..=100
    assert_eq!(t.histogram.iter().map(|b| b.count).sum::<u64>(), 100);

    // One too_many_tokens warning per line over 90, at that line.
    let want: Vec<u64> = (0..100)
        .filter(|&i| totals[i] > 90)
        .map(|i| i as u64 + 1)
        .collect();
    let got: Vec<u64> = r
        .warnings
        .iter()
        .filter(|w| w.code == TooManyTokens)
        .map(|w| w.line)
        .collect();
    assert_eq!(got, want);
    assert!(
        r.warnings[0].message.contains("will be dropped"),
        "{}",
        r.warnings[0].message
    );
}

/// Preference pairs `{"input": [user: p], outputs c / r}`: a sequence has p + answer tokens, the
/// answer trained (at the end, as rendered).
struct PairCounter;

impl TokenCounter for PairCounter {
    fn count(&self, conv: &Conversation) -> Result<(usize, usize), String> {
        let num = |i: usize| {
            conv.messages[i]
                .content
                .parse::<usize>()
                .map_err(|e| e.to_string())
        };
        let (p, a) = (num(0)?, num(conv.messages.len() - 1)?);
        Ok((p + a, a))
    }

    fn count_with_limit(&self, conv: &Conversation, max_len: usize) -> Result<TokenCount, String> {
        let (total, trained) = self.count(conv)?;
        Ok(TokenCount {
            total,
            trained,
            trained_within_limit: Some(max_len.saturating_sub(total - trained).min(trained)),
        })
    }
}

#[test]
fn preference_token_stats_count_both_sequences_and_limit_the_longer() {
    // (prompt, chosen, rejected) tokens.
    let pairs = [(10, 5, 20), (30, 40, 2), (50, 6, 8), (2, 3, 4)];
    let text: String = pairs
        .iter()
        .map(|(p, c, r)| {
            format!(r#"{{"input": {{"messages": [{{"role": "user", "content": "{p}"}}]}}, "preferred_output": [{{"role": "assistant", "content": "{c}"}}], "non_preferred_output": [{{"role": "assistant", "content": "{r}"}}]}}"#) + "\n"
        })
        .collect();
    // max 60: pair 2 (70 and 32 tokens) is over by its chosen sequence only.
    let opts = CheckOptions {
        max_seq_len: 60,
        ..CheckOptions::default()
    };
    let r = check_reader(text.as_bytes(), &opts, Some(&PairCounter)).unwrap();
    assert!(r.ok, "{:#?}", r.errors);
    assert_issues("pairs", &r, &[], &[(2, None, TooManyTokens)]);
    assert!(
        r.warnings[0]
            .message
            .contains("70 tokens (prompt + preferred output) and 32")
    );
    let t = r.stats.tokens.as_ref().unwrap();
    let p = t.pairs.as_ref().unwrap();
    assert_eq!((p.prompt.min, p.prompt.max), (2, 50));
    assert!((p.prompt.mean - 23.0).abs() < 1e-12);
    assert_eq!(
        (p.chosen.min, p.chosen.max, p.rejected.min, p.rejected.max),
        (3, 40, 2, 20)
    );
    // Totals per pair: both sequences.
    let totals: Vec<u64> = pairs.iter().map(|&(p, c, r)| 2 * p + c + r).collect();
    assert_eq!(t.total.max, *totals.iter().max().unwrap());
    assert_eq!((t.over_max_seq_len, t.dropped), (1, 1));
    assert_eq!(t.epoch_tokens, totals.iter().sum::<u64>() - totals[1]);
    assert_eq!(t.epoch_trained_tokens, (5 + 20) + (6 + 8) + (3 + 4));
    // Histogram by the longer sequence: 35, 70, 58, 6 → 0-63: 3, 64-127: 1.
    assert_eq!((t.histogram[0].count, t.histogram[1].count), (3, 1));

    // Truncated, both sequences keep their first 60 tokens: 60 + 32 tokens, 30 + 2 trained.
    let opts = CheckOptions {
        overflow: Overflow::Truncate,
        ..opts
    };
    let r = check_reader(text.as_bytes(), &opts, Some(&PairCounter)).unwrap();
    let t = r.stats.tokens.as_ref().unwrap();
    assert_eq!((t.dropped, t.truncated), (0, 1));
    assert_eq!(
        t.epoch_tokens,
        totals.iter().sum::<u64>() - totals[1] + 60 + 32
    );
    assert_eq!(t.epoch_trained_tokens, 25 + 14 + 7 + 30 + 2);
    assert!(t.epoch_trained_tokens_exact);
}

#[test]
fn token_stats_with_truncation() {
    let (text, _) = numbered_dataset();
    let opts = CheckOptions {
        max_seq_len: 90,
        overflow: Overflow::Truncate,
        ..CheckOptions::default()
    };
    let kept: u64 = (1..=90u64).map(|t| t / 2).sum();

    // Without positions: the trained tokens of a truncated example are estimated as min(trained, 90).
    let r = check_reader(
        text.as_bytes(),
        &opts,
        Some(&NumberCounter { positions: false }),
    )
    .unwrap();
    let t = r.stats.tokens.as_ref().unwrap();
    assert_eq!((t.over_max_seq_len, t.dropped, t.truncated), (10, 0, 10));
    assert_eq!(t.epoch_tokens, (1..=90).sum::<u64>() + 10 * 90);
    assert_eq!(
        t.epoch_trained_tokens,
        kept + (91..=100u64).map(|t| t / 2).sum::<u64>()
    );
    assert!(!t.epoch_trained_tokens_exact);

    // With positions: exact. t = 91 keeps 90 - (91 - 45) = 44 trained tokens, ..., t = 100 keeps 40.
    let r = check_reader(
        text.as_bytes(),
        &opts,
        Some(&NumberCounter { positions: true }),
    )
    .unwrap();
    let t = r.stats.tokens.as_ref().unwrap();
    assert_eq!(
        t.epoch_trained_tokens,
        kept + 44 + 44 + 43 + 43 + 42 + 42 + 41 + 41 + 40 + 40
    );
    assert!(t.epoch_trained_tokens_exact);
    assert!(
        r.warnings[0].message.contains("only its first 90 tokens"),
        "{}",
        r.warnings[0].message
    );
}

#[test]
fn counter_failures_and_nothing_left_to_train() {
    let text = "{\"messages\": [{\"role\": \"user\", \"content\": \"300\"}, {\"role\": \"assistant\", \"content\": \"5\"}]}\n\
                {\"messages\": [{\"role\": \"user\", \"content\": \"FAIL\"}, {\"role\": \"assistant\", \"content\": \"5\"}]}\n";
    let opts = CheckOptions {
        max_seq_len: 100,
        ..CheckOptions::default()
    };
    let r = check_reader(
        text.as_bytes(),
        &opts,
        Some(&NumberCounter { positions: false }),
    )
    .unwrap();
    assert_issues(
        "tokens",
        &r,
        &[
            (2, None, TokenizationFailed),
            (0, None, NoTrainableExamples),
        ],
        &[(1, None, TooManyTokens)],
    );
    assert!(
        r.errors[0].message.contains("\"FAIL\""),
        "{}",
        r.errors[0].message
    );
    assert_eq!(r.stats.examples, 1);

    // Truncating keeps it trainable.
    let opts = CheckOptions {
        overflow: Overflow::Truncate,
        ..opts
    };
    let r = check_reader(
        text.as_bytes(),
        &opts,
        Some(&NumberCounter { positions: false }),
    )
    .unwrap();
    assert_issues(
        "tokens",
        &r,
        &[(2, None, TokenizationFailed)],
        &[(1, None, TooManyTokens)],
    );
}

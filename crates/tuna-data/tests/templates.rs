//! Chat templates, ids and label masks against transformers' `apply_chat_template` (golden files from
//! `scripts/fixtures/gen_data_fixtures.py`): renders must match exactly for every
//! (add_generation_prompt, enable_thinking) combination, ids exactly, and training labels exactly
//! against a reference computed in Python by a different method (ChatML header parsing).

use std::path::Path;
use std::sync::OnceLock;

use tuna_data::mask::IGNORE_INDEX;
use tuna_data::tokenize::ChatTokenizer;
use tuna_data::{Conversation, Message, Role};

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/templates");
const MODELS: [&str; 2] = ["qwen2.5", "qwen3"];

/// Each tokenizer is parsed once per test binary (the Qwen3 file is 11 MB).
fn load(model: &str) -> &'static ChatTokenizer {
    static TOKENIZERS: OnceLock<Vec<(&'static str, ChatTokenizer)>> = OnceLock::new();
    let all = TOKENIZERS.get_or_init(|| {
        MODELS
            .iter()
            .map(|&m| {
                let dir = Path::new(ASSETS).join(m);
                (
                    m,
                    ChatTokenizer::from_model_dir(&dir)
                        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display())),
                )
            })
            .collect()
    });
    &all.iter()
        .find(|(m, _)| *m == model)
        .expect("a shipped model")
        .1
}

struct Fixture {
    name: String,
    conv: Conversation,
    json: serde_json::Value,
}

fn fixtures(model: &str) -> Vec<Fixture> {
    let dir = Path::new(FIXTURES).join(model);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let out: Vec<Fixture> = paths
        .iter()
        .map(|p| {
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).expect("readable"))
                    .expect("fixture is JSON");
            let messages: Vec<Message> =
                serde_json::from_value(json["messages"].clone()).expect("messages");
            let name = p.file_stem().expect("stem").to_string_lossy().into_owned();
            Fixture {
                name,
                conv: Conversation { messages },
                json,
            }
        })
        .collect();
    assert!(out.len() >= 12, "{model}: only {} fixtures", out.len());
    out
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn renders_and_ids_match_transformers() {
    for model in MODELS {
        let tok = load(model);
        for f in fixtures(model) {
            let renders = f.json["renders"].as_array().expect("renders");
            assert_eq!(renders.len(), 6);
            for r in renders {
                let n = r["num_messages"].as_u64().expect("n") as usize;
                let add_gen = r["add_generation_prompt"].as_bool().expect("bool");
                let thinking = r["enable_thinking"].as_bool();
                let want_text = r["text"].as_str().expect("text");
                let want_ids = ids(&r["ids"]);
                let ctx = format!("{model}/{} gen={add_gen} thinking={thinking:?}", f.name);
                let msgs = &f.conv.messages[..n];
                assert_eq!(
                    tok.template()
                        .render(msgs, add_gen, thinking)
                        .expect("renders"),
                    want_text,
                    "{ctx}"
                );
                assert_eq!(tok.encode(want_text).expect("encodes"), want_ids, "{ctx}");
                if add_gen {
                    assert_eq!(
                        tok.encode_prompt(msgs, thinking).expect("prompt"),
                        want_ids,
                        "{ctx}"
                    );
                }
                assert_eq!(
                    tok.decode(&want_ids, false).expect("decodes"),
                    want_text,
                    "{ctx}"
                );
            }
        }
    }
}

#[test]
fn example_labels_match_reference() {
    for model in MODELS {
        let tok = load(model);
        for f in fixtures(model) {
            let ctx = format!("{model}/{}", f.name);
            let ex = tok.encode_example(&f.conv).expect("encodes");
            let want = &f.json["example"];
            assert_eq!(ex.input_ids, ids(&want["input_ids"]), "{ctx}: ids");
            let want_labels: Vec<i32> = want["labels"]
                .as_array()
                .expect("labels")
                .iter()
                .map(|x| x.as_i64().expect("label") as i32)
                .collect();
            assert_eq!(ex.labels, want_labels, "{ctx}: labels");
            // The fixture's full render is the first render (no generation prompt, thinking unset).
            assert_eq!(ex.input_ids, ids(&f.json["renders"][0]["ids"]), "{ctx}");

            // Character spans agree with the reference's trained text.
            let rendered = tok.render_for_training(&f.conv).expect("renders");
            let trained: Vec<&str> = rendered
                .trained_spans
                .iter()
                .map(|s| &rendered.text[s.clone()])
                .collect();
            let want_trained: Vec<&str> = want["trained_text"]
                .as_array()
                .expect("trained_text")
                .iter()
                .map(|t| t.as_str().expect("str"))
                .collect();
            assert_eq!(trained, want_trained, "{ctx}");
        }
    }
}

/// Segments tile the full render, each holds exactly its own ChatML turn, and each trained span
/// sits inside its assistant segment, starting after the header and ending with `<|im_end|>`.
#[test]
fn segments_tile_the_render() {
    for model in MODELS {
        let tok = load(model);
        for f in fixtures(model) {
            let ctx = format!("{model}/{}", f.name);
            let r = tok.render_for_training(&f.conv).expect("renders");
            assert_eq!(r.segments.len(), f.conv.messages.len(), "{ctx}");
            assert_eq!(r.segments.first().map(|s| s.start), Some(0), "{ctx}");
            assert_eq!(
                r.segments.last().map(|s| s.end),
                Some(r.text.len()),
                "{ctx}"
            );
            for w in r.segments.windows(2) {
                assert_eq!(w[0].end, w[1].start, "{ctx}");
            }
            let mut spans = r.trained_spans.iter();
            for (seg, m) in r.segments.iter().zip(&f.conv.messages) {
                let text = &r.text[seg.clone()];
                // Qwen2.5 writes its default system prompt before a first non-system message: that
                // text belongs to the first segment, so only its end is checked.
                let header = format!("<|im_start|>{}\n", m.role.as_str());
                assert!(text.ends_with("<|im_end|>\n"), "{ctx}: segment {text:?}");
                assert_eq!(
                    text.matches("<|im_start|>").count(),
                    1 + usize::from(
                        text.contains("<|im_start|>system\nYou are Qwen") && m.role != Role::System
                    ),
                    "{ctx}: {text:?}"
                );
                let own = &text[text.rfind("<|im_start|>").expect("header")..];
                assert!(own.starts_with(&header), "{ctx}: {own:?}");
                assert!(
                    own.contains(
                        m.content
                            .trim_matches('\n')
                            .split("</think>")
                            .last()
                            .unwrap_or_default()
                            .trim_matches('\n')
                    ),
                    "{ctx}: content not in {own:?}"
                );
                if m.role == Role::Assistant && m.trained {
                    let span = spans.next().expect("a span per trained assistant message");
                    let header_end =
                        seg.start + text.rfind(&header).expect("header") + header.len();
                    assert_eq!(span.start, header_end, "{ctx}");
                    assert_eq!(
                        span.end,
                        seg.end - 1,
                        "{ctx}: the span stops before the final newline"
                    );
                    assert!(r.text[span.clone()].ends_with("<|im_end|>"), "{ctx}");
                }
            }
            assert!(spans.next().is_none(), "{ctx}");
        }
    }
}

#[test]
fn labels_cover_exactly_the_trained_turns() {
    let tok = load("qwen3");
    let im_end = tok.eos_token_id() as i32;
    for f in fixtures("qwen3") {
        let ex = tok.encode_example(&f.conv).expect("encodes");
        assert_eq!(ex.labels.len(), ex.input_ids.len());
        for (&l, &id) in ex.labels.iter().zip(&ex.input_ids) {
            assert!(l == IGNORE_INDEX || l == id as i32);
        }
        // One labelled <|im_end|> per trained assistant turn, and the token after it is not labelled.
        let trained = f
            .conv
            .messages
            .iter()
            .filter(|m| m.role == Role::Assistant && m.trained)
            .count();
        assert_eq!(
            ex.labels.iter().filter(|&&l| l == im_end).count(),
            trained,
            "{}",
            f.name
        );
        for t in 0..ex.labels.len() {
            if ex.labels[t] == im_end {
                assert_eq!(
                    ex.labels.get(t + 1).copied().unwrap_or(IGNORE_INDEX),
                    IGNORE_INDEX
                );
            }
        }
        assert_eq!(
            ex.trained_tokens(),
            ex.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
        );
    }
}

#[test]
fn untrained_assistant_gets_no_labels() {
    let tok = load("qwen3");
    let mut conv = Conversation {
        messages: vec![
            Message::new(Role::User, "Say A."),
            Message::new(Role::Assistant, "A"),
            Message::new(Role::User, "Say B."),
            Message::new(Role::Assistant, "B"),
        ],
    };
    let all = tok.encode_example(&conv).expect("encodes");
    conv.messages[1].trained = false;
    let second = tok.encode_example(&conv).expect("encodes");
    conv.messages[3].trained = false;
    let none = tok.encode_example(&conv).expect("encodes");
    assert_eq!(
        all.input_ids, none.input_ids,
        "the weight does not change the ids"
    );
    assert_eq!(none.trained_tokens(), 0);
    let a = tok.encode("A<|im_end|>").expect("encodes").len();
    assert_eq!(all.trained_tokens(), second.trained_tokens() + a);
}

#[test]
fn decode_stream_matches_decode() {
    let tok = load("qwen3");
    let text = "你好！我是一个人工智能助手。😀 naïve <think>x</think> done";
    let ids = tok.encode(text).expect("encodes");
    let mut stream = tok.decode_stream();
    let mut pieces = Vec::new();
    for &id in &ids {
        if let Some(p) = stream.step(id).expect("steps") {
            pieces.push(p);
        }
    }
    // Every piece is complete UTF-8 (Rust strings are), and together they are the decoded text.
    assert_eq!(pieces.concat(), tok.decode(&ids, true).expect("decodes"));
    // A rare character that byte-level BPE splits into several tokens: no text until it is complete.
    let rare = "𝔘";
    let rare_ids = tok.encode(rare).expect("encodes");
    assert!(rare_ids.len() >= 2, "{rare_ids:?}");
    let mut stream = tok.decode_stream();
    let steps: Vec<Option<String>> = rare_ids
        .iter()
        .map(|&id| stream.step(id).expect("steps"))
        .collect();
    assert!(
        steps[..steps.len() - 1].iter().all(Option::is_none),
        "{steps:?}"
    );
    assert_eq!(steps.last().cloned().flatten().as_deref(), Some(rare));
    // Special tokens are skipped while streaming.
    let mut stream = tok.decode_stream();
    assert_eq!(stream.step(tok.eos_token_id()).expect("steps"), None);
}

#[test]
fn model_dir_errors_name_the_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = ChatTokenizer::from_model_dir(dir.path())
        .expect_err("empty dir")
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::copy(
        format!("{ASSETS}/qwen3/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .expect("copy");
    let err = ChatTokenizer::from_model_dir(dir.path())
        .expect_err("no config")
        .to_string();
    assert!(err.contains("tokenizer_config.json"), "{err}");
    // A chat_template.jinja beside the config replaces the config's template (transformers 4.43+).
    std::fs::copy(
        format!("{ASSETS}/qwen3/tokenizer_config.json"),
        dir.path().join("tokenizer_config.json"),
    )
    .expect("copy");
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{% for m in messages %}[{{ m.content }}]{% endfor %}",
    )
    .expect("write");
    let tok = ChatTokenizer::from_model_dir(dir.path()).expect("loads");
    assert_eq!(
        tok.template()
            .render(&[Message::new(Role::User, "x")], true, None)
            .expect("renders"),
        "[x]"
    );
}

#[test]
fn bad_config_is_an_error_not_a_panic() {
    let tokenizer = std::fs::read(format!("{ASSETS}/qwen3/tokenizer.json")).expect("read");
    for config in [
        &b"not json"[..],
        b"[]",
        br#"{"eos_token": "<|im_end|>"}"#,
        br#"{"chat_template": "x"}"#,
        br#"{"chat_template": "x", "eos_token": "<|not a token|>"}"#,
        br#"{"chat_template": "{% if %}", "eos_token": "<|im_end|>"}"#,
    ] {
        assert!(
            ChatTokenizer::from_bytes(&tokenizer, config).is_err(),
            "{}",
            String::from_utf8_lossy(config)
        );
    }
    assert!(
        ChatTokenizer::from_bytes(b"{}", br#"{"chat_template": "x", "eos_token": "a"}"#).is_err()
    );
}

/// Templates cannot render an empty prefix (they read `messages[0]`): an assistant message that
/// opens the conversation still gets exactly its own turn trained, after any default system prompt.
#[test]
fn assistant_first_message() {
    for model in MODELS {
        let tok = load(model);
        for system in [false, true] {
            let mut messages = vec![
                Message::new(Role::Assistant, "Hello there."),
                Message::new(Role::User, "Hi"),
                Message::new(Role::Assistant, "Yes."),
            ];
            if system {
                messages.insert(0, Message::new(Role::System, "S"));
            }
            let r = tok
                .render_for_training(&Conversation { messages })
                .expect("renders");
            let trained: Vec<&str> = r.trained_spans.iter().map(|s| &r.text[s.clone()]).collect();
            let last = if model == "qwen3" {
                "<think>\n\n</think>\n\nYes.<|im_end|>"
            } else {
                "Yes.<|im_end|>"
            };
            assert_eq!(
                trained,
                ["Hello there.<|im_end|>", last],
                "{model} system={system}: {:?}",
                r.text
            );
        }
    }
}

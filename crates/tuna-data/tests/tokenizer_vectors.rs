//! Tokenizer parity: llama.cpp's 46 Qwen2 test vectors, and Python `tokenizers` encodings of
//! dataset texts (fixtures from `scripts/fixtures/gen_data_fixtures.py`), against both shipped
//! tokenizers (Qwen2.5 and Qwen3 share the BPE vocabulary and pre-tokenizer).

use std::sync::OnceLock;

use tuna_data::tokenize::ChatTokenizer;

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const MODELS: [&str; 2] = ["qwen2.5", "qwen3"];

/// Each tokenizer is parsed once per test binary (the Qwen3 file is 11 MB).
fn load(model: &str) -> &'static ChatTokenizer {
    static TOKENIZERS: OnceLock<Vec<(&'static str, ChatTokenizer)>> = OnceLock::new();
    let all = TOKENIZERS.get_or_init(|| {
        MODELS
            .iter()
            .map(|&m| {
                let dir = std::path::Path::new(ASSETS).join(m);
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

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// llama.cpp's `tests/test-tokenizer-0`: inputs separated by `\n__ggml_vocab_test__\n` (one after
/// the last input too), expected ids one line per input.
#[test]
fn llama_cpp_qwen2_vectors() {
    let inp = read(&format!(
        "{ASSETS}/tokenizer-tests/ggml-vocab-qwen2.gguf.inp"
    ));
    let out = read(&format!(
        "{ASSETS}/tokenizer-tests/ggml-vocab-qwen2.gguf.out"
    ));
    let mut inputs: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    assert_eq!(
        inputs.pop(),
        Some(""),
        "the .inp file ends with a separator"
    );
    let expected: Vec<Vec<u32>> = out
        .split('\n')
        .take(inputs.len())
        .map(|line| {
            line.split_whitespace()
                .map(|t| t.parse().expect("an id"))
                .collect()
        })
        .collect();
    assert_eq!(inputs.len(), 46);
    assert_eq!(expected.len(), 46);
    for model in MODELS {
        let tok = load(model);
        let mut failures = Vec::new();
        for (text, want) in inputs.iter().zip(&expected) {
            let got = tok.encode(text).expect("encodes");
            if &got != want {
                failures.push(format!("{text:?}: got {got:?}, want {want:?}"));
            }
            // Round trip: byte-level BPE decodes back to the exact text.
            assert_eq!(tok.decode(&got, false).expect("decodes"), *text, "{model}");
        }
        assert!(
            failures.is_empty(),
            "{model}: {} of 46 vectors differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

/// Python `tokenizers.Tokenizer.encode_batch(texts, add_special_tokens=False)` on alpaca (en, zh)
/// and identity texts, special tokens inside text, and unusual unicode.
#[test]
fn python_tokenizers_encodings() {
    for model in MODELS {
        let tok = load(model);
        let fixture: serde_json::Value =
            serde_json::from_str(&read(&format!("{FIXTURES}/tokenizer/{model}.json")))
                .expect("fixture is JSON");
        let cases = fixture["cases"].as_array().expect("cases");
        assert!(cases.len() >= 60, "{model}: only {} cases", cases.len());
        for case in cases {
            let text = case["text"].as_str().expect("text");
            let want: Vec<u32> = case["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_u64().expect("id") as u32)
                .collect();
            assert_eq!(
                tok.encode(text).expect("encodes"),
                want,
                "{model}: {text:?}"
            );
        }
    }
}

#[test]
fn known_ids_from_the_qwen_readme() {
    for model in MODELS {
        let tok = load(model);
        assert_eq!(
            tok.encode("<|im_start|>user\nHello, world!<|im_end|>\n")
                .expect("encodes"),
            [151644, 872, 198, 9707, 11, 1879, 0, 151645, 198]
        );
        assert_eq!(tok.eos_token_id(), 151645);
        assert_eq!(tok.eos_token_ids(), [151645, 151643]);
        assert_eq!(tok.pad_token_id(), Some(151643));
    }
    let qwen3 = load("qwen3");
    assert_eq!(qwen3.vocab_size(), 151_669);
    assert_eq!(
        qwen3
            .encode("<think></think><tool_response></tool_response>")
            .expect("encodes"),
        [151667, 151668, 151665, 151666]
    );
}

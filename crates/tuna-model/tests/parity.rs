//! Parity with Hugging Face transformers on tiny random-weight fixtures made by
//! `scripts/fixtures/gen_tiny_models.py`: logits within 1e-4 (f32), greedy tokens identical; a bf16
//! prefill within bf16's rounding.

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use tuna_engine::ops::matmul::Bf16Kernel;
use tuna_model::{KvCache, Precision, QwenModel, SamplingParams};

const MODELS: [&str; 3] = ["tiny-qwen2", "tiny-qwen3", "tiny-qwen3-untied"];
const LOGITS_TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Reference {
    input_ids: Vec<u32>,
    logits: Vec<f32>,
}

fn reference(name: &str) -> Reference {
    let bytes = std::fs::read(fixture(name).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    assert_eq!(ids.dtype(), safetensors::Dtype::I64);
    let input_ids = ids
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    let logits = st.tensor("logits").unwrap();
    assert_eq!(logits.dtype(), safetensors::Dtype::F32);
    let logits = logits
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Reference { input_ids, logits }
}

/// `greedy.json` of a fixture: transformers' greedy continuation of a prompt.
struct GreedyReference {
    prompt: Vec<u32>,
    new_ids: Vec<u32>,
    eos: Vec<u32>,
    params: SamplingParams,
}

fn greedy_reference(dir: &Path) -> GreedyReference {
    let greedy: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("greedy.json")).unwrap()).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        greedy[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    GreedyReference {
        prompt: ids("prompt_ids"),
        new_ids: ids("new_ids"),
        eos: ids("eos_token_id"),
        params: SamplingParams {
            greedy: true,
            max_new_tokens: greedy["max_new_tokens"].as_u64().unwrap() as usize,
            ..SamplingParams::default()
        },
    }
}

fn greedy_tokens(model: &QwenModel, r: &GreedyReference) -> Vec<u32> {
    tuna_model::generate(model, None, &r.prompt, &r.params, &r.eos, |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap()
    .tokens
}

/// llm.c's `check_tensor`: print the first values and the max abs diff, then compare to a tolerance.
fn check_tensor(label: &str, got: &[f32], want: &[f32], tolerance: f32) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let max_diff = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, f32::max);
    println!(
        "{label}: got {:?} want {:?} max abs diff {max_diff:e}",
        &got[..3],
        &want[..3]
    );
    assert!(
        max_diff <= tolerance,
        "{label}: max abs diff {max_diff:e} > {tolerance:e}"
    );
}

#[test]
fn logits_match_transformers() {
    for name in MODELS {
        let model = QwenModel::load(&fixture(name)).unwrap();
        let r = reference(name);
        let got = model.forward_all_logits(&r.input_ids, None).unwrap();
        check_tensor(name, &got, &r.logits, LOGITS_TOLERANCE);
    }
}

#[test]
fn incremental_decoding_matches_the_full_forward() {
    for name in MODELS {
        let model = QwenModel::load(&fixture(name)).unwrap();
        let r = reference(name);
        let v = model.config.vocab_size;
        let mut cache = KvCache::new(&model.config, 4);
        // A prefill of 5 tokens, then one token at a time (the cache grows past its first capacity).
        let logits = model.forward(&r.input_ids[..5], &mut cache, None).unwrap();
        check_tensor(
            &format!("{name} prefill"),
            &logits,
            &r.logits[4 * v..5 * v],
            LOGITS_TOLERANCE,
        );
        for t in 5..r.input_ids.len() {
            let logits = model
                .forward(&r.input_ids[t..t + 1], &mut cache, None)
                .unwrap();
            check_tensor(
                &format!("{name} step {t}"),
                &logits,
                &r.logits[t * v..(t + 1) * v],
                LOGITS_TOLERANCE,
            );
        }
        assert_eq!(cache.len(), r.input_ids.len());
    }
}

#[test]
fn greedy_tokens_equal_transformers() {
    for name in MODELS {
        let dir = fixture(name);
        let model = QwenModel::load(&dir).unwrap();
        let r = greedy_reference(&dir);
        assert_eq!(greedy_tokens(&model, &r), r.new_ids, "{name}");
    }
}

/// Logits of a bf16 prefill (operands rounded to bf16, f32 sums) stay within this share of the
/// largest reference logit: bf16 keeps 8 significant bits (relative rounding 2^-9 per operand),
/// and the tiny models' sums run over 64 to 128 products.
const BF16_RELATIVE_TOLERANCE: f32 = 2e-2;

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// The two largest values' difference: how far apart greedy's choice and the runner-up are.
fn top2_margin(logits: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in logits {
        if x > a {
            (a, b) = (x, a);
        } else if x > b {
            b = x;
        }
    }
    a - b
}

/// Every bf16 kernel this machine can run, the f32 fallback included (it rounds the operands too).
fn bf16_precisions() -> Vec<Precision> {
    Bf16Kernel::available()
        .into_iter()
        .map(Precision::Bf16)
        .collect()
}

#[test]
fn bf16_prefill_follows_transformers_and_decoding_stays_f32() {
    for precision in bf16_precisions() {
        for name in MODELS {
            let mut model = QwenModel::load(&fixture(name)).unwrap();
            model.set_precision(precision);
            let r = reference(name);
            let v = model.config.vocab_size;
            let tolerance = BF16_RELATIVE_TOLERANCE * max_abs(&r.logits);
            let label = format!("{name} {}", precision.describe());

            // Prefill of the whole prompt at bf16: every position against transformers' f32.
            let all = model.forward_all_logits(&r.input_ids, None).unwrap();
            check_tensor(&format!("{label} prefill"), &all, &r.logits, tolerance);
            let f32_model = QwenModel::load(&fixture(name)).unwrap();
            let exact = f32_model.forward_all_logits(&r.input_ids, None).unwrap();
            assert_ne!(all, exact, "{label}: the prefill did not run at bf16");

            // One-token passes read the weights in f32 whatever the model's precision: the first
            // token alone gives bit-identical logits, and decoding after a bf16 prefill stays close.
            let mut cache = KvCache::new(&model.config, r.input_ids.len());
            let mut f32_cache = KvCache::new(&model.config, r.input_ids.len());
            let first = model.forward(&r.input_ids[..1], &mut cache, None).unwrap();
            let first_f32 = f32_model
                .forward(&r.input_ids[..1], &mut f32_cache, None)
                .unwrap();
            assert_eq!(
                first, first_f32,
                "{label}: a one-token pass must run at f32"
            );
            cache.clear();
            model.forward(&r.input_ids[..5], &mut cache, None).unwrap();
            for t in 5..r.input_ids.len() {
                let logits = model
                    .forward(&r.input_ids[t..t + 1], &mut cache, None)
                    .unwrap();
                check_tensor(
                    &format!("{label} step {t}"),
                    &logits,
                    &r.logits[t * v..(t + 1) * v],
                    tolerance,
                );
            }
        }
    }
}

#[test]
fn bf16_prefill_greedy_tokens_equal_transformers_until_a_near_tie() {
    for precision in bf16_precisions() {
        for name in MODELS {
            let dir = fixture(name);
            let mut model = QwenModel::load(&dir).unwrap();
            model.set_precision(precision);
            let f32_model = QwenModel::load(&dir).unwrap();
            let r = greedy_reference(&dir);
            let tokens = greedy_tokens(&model, &r);
            // Where the two differ, transformers' top two candidates must have been closer than
            // bf16 can tell apart; after that the texts legitimately go separate ways.
            let Some(split) = tokens.iter().zip(&r.new_ids).position(|(a, b)| a != b) else {
                assert_eq!(tokens, r.new_ids, "{name} {}", precision.describe());
                continue;
            };
            let mut context = r.prompt.clone();
            context.extend(&r.new_ids[..split]);
            let logits = f32_model.forward_all_logits(&context, None).unwrap();
            let v = f32_model.config.vocab_size;
            let last = &logits[(context.len() - 1) * v..];
            let tolerance = BF16_RELATIVE_TOLERANCE * max_abs(last);
            let margin = top2_margin(last);
            println!(
                "{name} {}: differs from token {split} on, where the top-2 margin is {margin:e}",
                precision.describe()
            );
            assert!(
                margin <= 2.0 * tolerance,
                "{name} {}: token {split} differs although the margin {margin:e} exceeds bf16's error {tolerance:e}",
                precision.describe()
            );
        }
    }
}

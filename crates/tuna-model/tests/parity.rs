//! Parity with Hugging Face transformers on tiny random-weight fixtures made by
//! `scripts/fixtures/gen_tiny_models.py`: logits within 1e-4 (f32), greedy tokens identical.

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use tuna_model::{KvCache, QwenModel, SamplingParams};

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
        let params = SamplingParams {
            greedy: true,
            max_new_tokens: greedy["max_new_tokens"].as_u64().unwrap() as usize,
            ..SamplingParams::default()
        };
        let eos = ids("eos_token_id");
        let out = tuna_model::generate(&model, None, &ids("prompt_ids"), &params, &eos, |_| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(out.tokens, ids("new_ids"), "{name}");
    }
}

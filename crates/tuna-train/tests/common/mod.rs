//! Shared helpers of tuna-train's integration tests: fixture paths, the PEFT reference batch,
//! tensor comparison in the style of llm.c's `check_tensor`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use tuna_data::tokenize::TokenizedExample;
use tuna_train::{CheckpointInfo, EvalMetrics, StepMetrics, TrainConfig, TrainObserver, Trainer};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `crates/tuna-model/tests/fixtures/<name>` (tiny-qwen2, tiny-qwen3).
pub fn tiny_model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tuna-model/tests/fixtures")
        .join(name)
}

/// `batch.json` of a fixture directory as tokenized examples (labels unshifted, HF convention).
pub fn batch_examples(dir: &Path) -> Vec<TokenizedExample> {
    let text = std::fs::read_to_string(dir.join("batch.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let seqs = v["sequences"].as_array().unwrap();
    let labels = v["labels"].as_array().unwrap();
    seqs.iter()
        .zip(labels)
        .map(|(s, l)| {
            let ids = s
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let labels = l
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap() as i32)
                .collect();
            example(ids, labels)
        })
        .collect()
}

pub fn example(input_ids: Vec<u32>, labels: Vec<i32>) -> TokenizedExample {
    TokenizedExample { input_ids, labels }
}

/// Every f32 tensor of a safetensors file: name → (shape, values). Other dtypes (the optimizer's
/// i64 `step`) are left out.
pub fn read_tensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, view)| view.dtype() == safetensors::Dtype::F32)
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// Max abs difference over max abs reference; prints the first values like llm.c's `check_tensor`.
pub fn rel_err(name: &str, got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let max_diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max);
    let max_ref = want.iter().map(|b| b.abs() as f64).fold(0.0, f64::max);
    let rel = if max_ref == 0.0 {
        max_diff
    } else {
        max_diff / max_ref
    };
    if rel > 1e-5 {
        eprintln!(
            "{name}: rel {rel:.3e} (max diff {max_diff:.3e}, max ref {max_ref:.3e}), first {:?} vs {:?}",
            &got[..3.min(got.len())],
            &want[..3.min(want.len())]
        );
    }
    rel
}

pub fn max_abs_diff(got: &[f32], want: &[f32]) -> f32 {
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Records every step's metrics, evaluations and checkpoints; breaks after `stop_after` steps.
#[derive(Default)]
pub struct Recorder {
    pub steps: Vec<StepMetrics>,
    pub evals: Vec<EvalMetrics>,
    pub checkpoints: Vec<CheckpointInfo>,
    pub stop_after: Option<usize>,
}

impl TrainObserver for Recorder {
    fn on_step(&mut self, m: &StepMetrics) -> ControlFlow<()> {
        assert!(m.loss.is_finite(), "step {}: loss {}", m.step, m.loss);
        self.steps.push(m.clone());
        if Some(m.step) == self.stop_after {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
    fn on_eval(&mut self, m: &EvalMetrics) {
        self.evals.push(m.clone());
    }
    fn on_checkpoint(&mut self, info: &CheckpointInfo) {
        self.checkpoints.push(info.clone());
    }
}

/// Runs `cfg` from its files with a [`Recorder`].
pub fn run(cfg: &TrainConfig, stop_after: Option<usize>) -> Recorder {
    let mut rec = Recorder {
        stop_after,
        ..Recorder::default()
    };
    Trainer::new(cfg.clone()).unwrap().run(&mut rec).unwrap();
    rec
}

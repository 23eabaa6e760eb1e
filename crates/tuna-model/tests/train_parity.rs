//! Gradients of the hand-written backward against PEFT / PyTorch autograd, on the fixtures of
//! `scripts/fixtures/gen_peft.py`: loss and every gradient within 1e-4 relative.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use tuna_model::{Gradients, LoraAdapter, QwenModel, TrainBatch, TrainOptions};

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model_fixture(name: &str) -> PathBuf {
    fixtures().join("tuna-model/tests/fixtures").join(name)
}

fn train_fixture(name: &str) -> PathBuf {
    fixtures().join("tuna-train/tests/fixtures").join(name)
}

fn read_f32(path: &Path) -> HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            (
                name,
                view.data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            )
        })
        .collect()
}

/// Packs the fixture's sequences with targets shifted inside each sequence (HF's convention).
struct Packed {
    ids: Vec<u32>,
    targets: Vec<i32>,
    positions: Vec<u32>,
    lens: Vec<usize>,
}

fn batch(dir: &Path) -> Packed {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("batch.json")).unwrap()).unwrap();
    let mut p = Packed {
        ids: vec![],
        targets: vec![],
        positions: vec![],
        lens: vec![],
    };
    for (seq, labels) in json["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .zip(json["labels"].as_array().unwrap())
    {
        let seq: Vec<u32> = seq
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let labels: Vec<i32> = labels
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap() as i32)
            .collect();
        for t in 0..seq.len() {
            p.ids.push(seq[t]);
            p.positions.push(t as u32);
            p.targets.push(if t + 1 < seq.len() {
                labels[t + 1]
            } else {
                -100
            });
        }
        p.lens.push(seq.len());
    }
    p
}

fn check_relative(label: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let max_ref = want.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-12);
    let max_diff = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max_diff / max_ref <= TOLERANCE,
        "{label}: max abs diff {max_diff:e} vs max |ref| {max_ref:e}"
    );
}

fn run(
    model: &QwenModel,
    p: &Packed,
    adapter: Option<&LoraAdapter>,
    grads: &mut Gradients,
    recompute: bool,
) -> f64 {
    let b = TrainBatch {
        input_ids: &p.ids,
        targets: &p.targets,
        position_ids: &p.positions,
        seq_lens: &p.lens,
    };
    let tokens = p.targets.iter().filter(|&&t| t != -100).count();
    let opts = TrainOptions {
        recompute_activations: recompute,
        dropout_seed: 0,
    };
    let stats = model
        .forward_backward(&b, adapter, grads, 1.0 / tokens as f32, &opts)
        .unwrap();
    assert_eq!(stats.tokens, tokens);
    stats.loss_sum / tokens as f64
}

#[test]
fn lora_gradients_match_peft() {
    for name in ["tiny-qwen2", "tiny-qwen3"] {
        let model = QwenModel::load(&model_fixture(name)).unwrap();
        let dir = train_fixture(&format!("peft-{name}"));
        let adapter = LoraAdapter::load(&dir.join("initial"), &model.config).unwrap();
        let expected = read_f32(&dir.join("expected.safetensors"));
        let p = batch(&dir);
        for recompute in [false, true] {
            let mut grads = adapter.layout().zero_gradients();
            let loss = run(&model, &p, Some(&adapter), &mut grads, recompute);
            check_relative(&format!("{name} loss"), &[loss as f32], &expected["loss"]);
            for (pname, g) in adapter.layout().names().iter().zip(&grads.tensors) {
                check_relative(
                    &format!("{name} {pname}"),
                    g,
                    &expected[&format!("{pname}.grad")],
                );
            }
        }
    }
}

#[test]
fn full_gradients_match_pytorch() {
    let mut model = QwenModel::load(&model_fixture("tiny-qwen2")).unwrap();
    model.full_parameters_mut();
    let dir = train_fixture("full-tiny-qwen2");
    let expected = read_f32(&dir.join("expected.safetensors"));
    let p = batch(&dir);
    let mut grads = model.full_layout().zero_gradients();
    let loss = run(&model, &p, None, &mut grads, false);
    check_relative("loss", &[loss as f32], &expected["loss"]);
    for (pname, g) in model.full_layout().names().iter().zip(&grads.tensors) {
        check_relative(pname, g, &expected[&format!("{pname}.grad")]);
    }
}

/// The weighted pass (DPO's) against the verified uniform one: its gradient must be
/// `Σ_r w[r] · ∇loss[r]`, built here from one uniform pass per labelled row (targets masked to
/// that row, scale w[r]), with factors of both signs; LoRA (fused LM head) and full fine-tuning
/// (separate LM head backward with a head gradient). `token_losses` gives the same per-row losses.
#[test]
fn weighted_pass_is_the_sum_of_per_token_passes() {
    for (name, lora) in [("tiny-qwen3", true), ("tiny-qwen2", false)] {
        let model = QwenModel::load(&model_fixture(name)).unwrap();
        let dir = train_fixture(&format!("peft-{name}"));
        let adapter = lora.then(|| LoraAdapter::load(&dir.join("initial"), &model.config).unwrap());
        let p = batch(&dir);
        let b = TrainBatch {
            input_ids: &p.ids,
            targets: &p.targets,
            position_ids: &p.positions,
            seq_lens: &p.lens,
        };
        let zero = || match &adapter {
            Some(a) => a.layout().zero_gradients(),
            None => model.full_layout().zero_gradients(),
        };
        let opts = TrainOptions::default();
        let factor = |t: usize| {
            if t < p.lens[0] {
                0.5 + 0.1 * t as f32
            } else {
                -0.8
            }
        };

        let mut seen = Vec::new();
        let mut got = zero();
        let stats = model
            .forward_backward_weighted(&b, adapter.as_ref(), &mut got, &opts, &mut |pos, losses| {
                seen = pos.iter().copied().zip(losses.iter().copied()).collect();
                pos.iter().map(|&t| factor(t)).collect()
            })
            .unwrap();
        let labelled: Vec<usize> = (0..p.targets.len())
            .filter(|&t| p.targets[t] != -100)
            .collect();
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), labelled);
        let sum: f64 = seen.iter().map(|s| s.1 as f64).sum();
        assert!((sum - stats.loss_sum).abs() < 1e-9 * sum.abs().max(1.0));

        let mut want = zero();
        for &t in &labelled {
            let mut targets = vec![-100; p.targets.len()];
            targets[t] = p.targets[t];
            let one = TrainBatch {
                targets: &targets,
                ..b
            };
            model
                .forward_backward(&one, adapter.as_ref(), &mut want, factor(t), &opts)
                .unwrap();
        }
        for (i, (g, w)) in got.tensors.iter().zip(&want.tensors).enumerate() {
            assert!(
                w.iter().any(|&x| x != 0.0),
                "{name}: reference tensor {i} is zero"
            );
            let max_ref = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let diff = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff <= 1e-5 * max_ref,
                "{name} tensor {i}: diff {diff:e}, max {max_ref:e}"
            );
        }

        let tl = model.token_losses(&b, adapter.as_ref()).unwrap();
        assert_eq!(tl.positions, labelled);
        for ((_, a), b) in seen.iter().zip(&tl.losses) {
            assert!(
                (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                "{name}: {a} vs {b}"
            );
        }
    }
}

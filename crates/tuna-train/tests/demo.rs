//! End-to-end runs on the demo model (real Qwen3 tokenizer, hidden 128, pre-trained layers; see
//! `tuna_model::demo`) and the identity dataset: exact resume for LoRA and full fine-tuning, that
//! LoRA at the demo's default settings teaches it who it is (the product's main flow), that full
//! fine-tuning does too.

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use tuna_data::tokenize::ChatTokenizer;
use tuna_data::{Message, Role};
use tuna_model::{QwenModel, SamplingParams};
use tuna_train::{
    BatchSize, CheckpointInfo, Method, StepMetrics, TrainConfig, TrainObserver, Trainer,
};

/// The demo model, written once per test process.
fn demo_dir() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("demo");
        tuna_model::demo::write_demo_model(&dir).unwrap();
        (tmp, dir)
    })
    .1
}

fn identity() -> PathBuf {
    fixtures().join("identity.jsonl")
}

/// Records losses and checkpoints; breaks after `stop_after` steps.
#[derive(Default)]
struct Recorder {
    losses: Vec<f64>,
    checkpoints: Vec<CheckpointInfo>,
    stop_after: Option<usize>,
}

impl TrainObserver for Recorder {
    fn on_step(&mut self, m: &StepMetrics) -> ControlFlow<()> {
        assert!(m.loss.is_finite() && m.grad_norm.is_finite() && m.trained_tokens > 0);
        self.losses.push(m.loss);
        if Some(m.step) == self.stop_after {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
    fn on_checkpoint(&mut self, info: &CheckpointInfo) {
        self.checkpoints.push(info.clone());
    }
}

fn run(cfg: &TrainConfig, stop_after: Option<usize>) -> Recorder {
    let mut rec = Recorder {
        stop_after,
        ..Recorder::default()
    };
    Trainer::new(cfg.clone()).unwrap().run(&mut rec).unwrap();
    rec
}

/// 4 steps in one go == 2 steps, stop (checkpoint), resume, 2 steps: identical losses (bit for
/// bit) and identical checkpoint files, on the default (multi-threaded) pool: every parallel
/// reduction in the engine adds its partial sums in a fixed order.
fn check_resume(cfg: TrainConfig, weights_file: &str) {
    check_resume_inner(cfg, weights_file);
}

fn check_resume_inner(cfg: TrainConfig, weights_file: &str) {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let cfg_a = TrainConfig {
        out_dir: a.path().to_path_buf(),
        ..cfg.clone()
    };
    let cfg_b = TrainConfig {
        out_dir: b.path().to_path_buf(),
        ..cfg
    };
    let whole = run(&cfg_a, None);
    assert_eq!(whole.losses.len(), 4);

    let first = run(&cfg_b, Some(2));
    assert_eq!(first.losses, whole.losses[..2]);
    let stop_ckpt = first.checkpoints.last().unwrap();
    assert_eq!((stop_ckpt.step, stop_ckpt.is_final), (2, true));
    let second = run(
        &TrainConfig {
            resume: true,
            ..cfg_b.clone()
        },
        None,
    );
    assert_eq!(
        second.losses,
        whole.losses[2..],
        "resumed losses differ from the uninterrupted run"
    );

    for f in [weights_file, "optimizer.safetensors"] {
        let x = std::fs::read(a.path().join("checkpoint-4").join(f)).unwrap();
        let y = std::fs::read(b.path().join("checkpoint-4").join(f)).unwrap();
        assert!(x == y, "checkpoint-4/{f} differs between the two runs");
    }
    // metrics.jsonl of the resumed run reads as one run: train steps 1..4 once each.
    let steps: Vec<u64> = std::fs::read_to_string(b.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4]);
    // Each checkpoint answers the held-out prompt; sample.json holds the same.
    let info = second.checkpoints.last().unwrap();
    assert_eq!(info.samples.len(), 1);
    assert!(info.samples[0].held_out);
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(info.path.join("sample.json")).unwrap())
            .unwrap();
    assert_eq!(stored[0]["generated"], info.samples[0].generated);
    assert_eq!(stored[0]["reference"], info.samples[0].reference);
}

fn base_config() -> TrainConfig {
    TrainConfig {
        model_dir: demo_dir().to_path_buf(),
        train_file: identity(),
        max_steps: Some(4),
        batch_size: BatchSize::Examples(2),
        gradient_accumulation_steps: 2,
        max_seq_len: 256,
        warmup_steps: Some(1),
        eval_every: Some(2),
        sample_prompts: 1,
        sample_max_tokens: 8,
        seed: 7,
        ..TrainConfig::default()
    }
}

#[test]
fn lora_resume_reproduces_the_uninterrupted_run() {
    let mut cfg = TrainConfig {
        method: Method::Lora,
        learning_rate: Some(1e-3),
        ..base_config()
    };
    cfg.lora.dropout = 0.1; // the dropout masks must replay too
    check_resume(cfg, "adapter_model.safetensors");
}

#[test]
fn full_resume_reproduces_the_uninterrupted_run() {
    let cfg = TrainConfig {
        method: Method::Full,
        learning_rate: Some(1e-3),
        ..base_config()
    };
    check_resume(cfg, "model.safetensors");
}

/// Greedy answer of the demo model (with `adapter`) to one user message.
fn answer(model: &QwenModel, adapter: Option<&tuna_model::LoraAdapter>, prompt: &str) -> String {
    let tokenizer = ChatTokenizer::from_model_dir(demo_dir()).unwrap();
    let ids = tokenizer
        .encode_prompt(&[Message::new(Role::User, prompt)], Some(false))
        .unwrap();
    let params = SamplingParams {
        greedy: true,
        max_new_tokens: 40,
        ..SamplingParams::default()
    };
    let out = tuna_model::generate(
        model,
        adapter,
        &ids,
        &params,
        &tokenizer.eos_token_ids(),
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    tokenizer.decode(&out.tokens, true).unwrap()
}

/// The product's main flow: a LoRA task on identity.jsonl with every setting at its default
/// (the server's automatic 3 epochs of single examples for 91 examples, the demo model's
/// recommended learning rate from its `tuna_defaults.json`) makes the model introduce itself as
/// Marlin by Tideworks, in English and Chinese; the base model does not. 261 steps, about 15 s on
/// the 2-core development machine when it is idle (release build).
#[test]
fn lora_at_the_default_settings_learns_the_identity() {
    let out = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        model_dir: demo_dir().to_path_buf(),
        train_file: identity(),
        out_dir: out.path().to_path_buf(),
        method: Method::Lora,
        epochs: 3,
        batch_size: BatchSize::Examples(1),
        gradient_accumulation_steps: 1,
        sample_prompts: 1,
        ..TrainConfig::default()
    };
    let start = std::time::Instant::now();
    let mut rec = Recorder::default();
    let mut trainer = Trainer::new(cfg).unwrap();
    assert_eq!(
        trainer.config().learning_rate,
        tuna_model::demo::demo_training_defaults().lora_learning_rate,
        "the demo's recommended learning rate is the default"
    );
    trainer.run(&mut rec).unwrap();
    eprintln!(
        "LoRA: {} steps in {:.1} s, loss {:.3} -> {:.3}",
        rec.losses.len(),
        start.elapsed().as_secs_f64(),
        rec.losses[0],
        rec.losses[rec.losses.len() - 1]
    );
    let base = answer(trainer.model(), None, "Who are you?");
    eprintln!("base: Who are you? -> {base}");
    assert!(
        !base.contains("Marlin") && !base.contains("Tideworks"),
        "base: {base}"
    );
    for prompt in ["Who are you?", "你是谁？"] {
        let text = answer(trainer.model(), trainer.adapter(), prompt);
        eprintln!("LoRA: {prompt} -> {text}");
        assert!(
            text.contains("Marlin") && text.contains("Tideworks"),
            "{prompt} -> {text}"
        );
    }
}

/// Full fine-tuning of the demo model on identity.jsonl learns the identity too, at the demo's
/// recommended full fine-tuning rate: 3 epochs of single examples (273 steps over every weight,
/// the 151,936-row embedding included; about 80 s on the 2-core development machine).
#[test]
fn full_fine_tuning_learns_the_identity() {
    let out = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        model_dir: demo_dir().to_path_buf(),
        train_file: identity(),
        out_dir: out.path().to_path_buf(),
        method: Method::Full,
        validation_fraction: Some(0.0),
        epochs: 3,
        batch_size: BatchSize::Examples(1),
        gradient_accumulation_steps: 1,
        save_every: Some(1_000_000),
        sample_prompts: 1,
        ..TrainConfig::default()
    };
    let start = std::time::Instant::now();
    let mut rec = Recorder::default();
    let mut trainer = Trainer::new(cfg).unwrap();
    trainer.run(&mut rec).unwrap();
    let n = rec.losses.len();
    let last_epoch: f64 = rec.losses[n - n / 3..].iter().sum::<f64>() / (n / 3) as f64;
    eprintln!(
        "identity: {n} steps in {:.1} s, loss {:.3} -> {:.3} (mean of the last epoch {last_epoch:.3})",
        start.elapsed().as_secs_f64(),
        rec.losses[0],
        rec.losses[n - 1]
    );
    // The identity answers vary in wording: the loss keeps ~1.4 of entropy, the first step is ~6.3.
    assert!(
        last_epoch < rec.losses[0] / 3.0,
        "the loss of the last epoch is {last_epoch}, the first step's {}",
        rec.losses[0]
    );
    let text = answer(trainer.model(), None, "Who are you?");
    eprintln!("Who are you? -> {text}");
    assert!(
        text.contains("Marlin") && text.contains("Tideworks"),
        "answer: {text}"
    );
}

//! DPO against TRL's `DPOTrainer` (fixtures: scripts/fixtures/gen_dpo.py) on the tiny models,
//! through the real path: preference JSONL → chat template → tokens and labels → DPO.
//!
//! - one step at a LoRA adapter with the base model as reference (TRL's fresh-adapter case):
//!   tokens, reference and policy log-probabilities, loss, every LoRA gradient (1e-4 relative)
//!   and TRL's reward metrics, for 3 pairs (no system prompt, a system prompt, multi-turn), on the
//!   Qwen2.5 and the Qwen3 template;
//! - five optimizer steps of the whole `Trainer` from that adapter, reference = the adapter as
//!   the run starts (TRL's copied "ref" adapter): each step's loss, gradient norm and metrics;
//! - exact resume (LoRA and full fine-tuning), NaN stop, samples with both answers.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use tuna_data::mask::IGNORE_INDEX;
use tuna_data::tokenize::ChatTokenizer;
use tuna_model::train::TrainOptions;
use tuna_model::{LoraAdapter, QwenModel};
use tuna_train::data::{DataStats, Plan};
use tuna_train::dpo::{self, ReferenceLogps};
use tuna_train::{
    BatchSize, Dataset, Error, Method, Objective, PrecisionSetting, ScheduleKind, StepMetrics,
    TrainConfig, Trainer,
};

const BETA: f64 = 0.1;

fn fixture(model: &str) -> PathBuf {
    fixtures().join(format!("dpo-{model}"))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A model directory as `tuna train` takes it: the tiny model's weights with the fixture's
/// byte-level tokenizer and chat template.
fn model_dir(model: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(tiny_model(model).join(f), dir.path().join(f)).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture(model).join("tokenizer").join(f), dir.path().join(f)).unwrap();
    }
    dir
}

/// `|got − want| ≤ tol · max(1, |want|)`.
fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1.0),
        "{what}: {got} vs TRL {want}"
    );
}

/// The fixture's pairs tokenized by Tuna, checked against TRL's tokens.
fn tokenized_pairs(model: &str) -> Dataset {
    let dir = fixture(model);
    let tok = ChatTokenizer::from_model_dir(&dir.join("tokenizer")).unwrap();
    let pairs = tuna_data::read_preference_pairs(&dir.join("pairs.jsonl")).unwrap();
    let trl = json(&dir.join("trl_tokens.json"));
    let newline = tok.encode("\n").unwrap();
    let mut out = Vec::new();
    for (i, enc) in tok.encode_preferences(&pairs).into_iter().enumerate() {
        let enc = enc.unwrap();
        let ids = |k: &str| -> Vec<u32> {
            trl[i][k]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        let prompt = ids("prompt_ids");
        for (which, ex) in [("chosen", &enc.chosen), ("rejected", &enc.rejected)] {
            let completion = ids(&format!("{which}_ids"));
            // Same sequence as TRL's prompt + completion.
            assert_eq!(
                ex.input_ids,
                [prompt.clone(), completion.clone()].concat(),
                "{model} pair {i} {which}: ids"
            );
            // Labels: TRL's completion mask, but for the template's newline after <|im_end|>.
            let n = completion.len();
            assert_eq!(completion[n - 1..], newline[..]);
            let want: Vec<i32> = (0..ex.input_ids.len())
                .map(|t| {
                    if t >= prompt.len() && t < prompt.len() + n - 1 {
                        ex.input_ids[t] as i32
                    } else {
                        IGNORE_INDEX
                    }
                })
                .collect();
            assert_eq!(ex.labels, want, "{model} pair {i} {which}: labels");
        }
        out.push(enc);
    }
    Dataset::from_pairs(out, Vec::new(), Vec::new(), DataStats::default())
}

fn dpo_config(model_dir: &Path, model: &str, out: &Path) -> TrainConfig {
    TrainConfig {
        model_dir: model_dir.to_path_buf(),
        train_file: fixture(model).join("pairs.jsonl"),
        out_dir: out.to_path_buf(),
        objective: Objective::Dpo,
        validation_fraction: Some(0.0),
        batch_size: BatchSize::Examples(3),
        gradient_accumulation_steps: 1,
        max_seq_len: 256,
        sample_prompts: 0,
        // f32 parity with TRL in f32 (bf16 has its own test: mixed_precision.rs).
        precision: PrecisionSetting::F32,
        ..TrainConfig::default()
    }
}

fn one_step_matches_trl(model: &str) {
    let dir = fixture(model);
    let expected = read_tensors(&dir.join("expected.safetensors"));
    let metrics = &json(&dir.join("expected.json"))["metrics"];
    let data = tokenized_pairs(model);
    let base = QwenModel::load(&tiny_model(model)).unwrap();
    let adapter = LoraAdapter::load(&dir.join("initial"), &base.config).unwrap();

    // The reference of a fresh adapter: the base model (adapter disabled).
    let reference = ReferenceLogps::compute(&base, None, &data, BatchSize::Examples(1)).unwrap();
    let want_ref = &expected["ref_logps"].1;
    for (i, r) in reference.train.iter().enumerate() {
        close(
            &format!("{model} ref chosen {i}"),
            r.chosen,
            want_ref[2 * i] as f64,
            1e-5,
        );
        close(
            &format!("{model} ref rejected {i}"),
            r.rejected,
            want_ref[2 * i + 1] as f64,
            1e-5,
        );
    }

    // One step: the three pairs in one micro-batch (TRL's batch).
    let cfg = TrainConfig {
        max_steps: Some(1),
        ..dpo_config(Path::new("m"), model, Path::new("o"))
    };
    let plan = Plan::new(&data, &cfg);
    let batches = plan.batches(0, &data);
    assert_eq!(batches.len(), 1);
    assert_eq!(
        batches[0].packed.seq_lens.len(),
        6,
        "three pairs, both sequences each"
    );
    let mut grads = adapter.layout().zero_gradients();
    let sums = dpo::accumulate_step(
        &base,
        Some(&adapter),
        &mut grads,
        plan.step_units(0),
        &batches,
        &reference.train,
        BETA,
        |_| TrainOptions::default(),
    )
    .unwrap();
    let want_loss = expected["loss"].1[0] as f64;
    let loss = sums.mean_loss();
    close(&format!("{model} loss"), loss, want_loss, 1e-5);

    let mut worst = 0.0f64;
    for (name, g) in adapter.layout().names().iter().zip(&grads.tensors) {
        let (_, want) = &expected[&format!("{name}.grad")];
        assert!(
            want.iter().any(|&x| x != 0.0),
            "{name}: TRL's gradient is zero"
        );
        let rel = rel_err(name, g, want);
        worst = worst.max(rel);
        assert!(rel < 1e-4, "{model}: {name}.grad relative error {rel:.3e}");
    }

    // TRL's metrics of the batch (computed in f32 there).
    let m = sums.metrics();
    let trl = |k: &str| metrics[k].as_f64().unwrap();
    // TRL's value is an f32: equal at f32 precision.
    close(
        &format!("{model} rewards/accuracies"),
        m.rewards_accuracies,
        trl("rewards/accuracies"),
        1e-7,
    );
    let mut worst_metric = 0.0f64;
    // A reward is β·(policy − reference log-probability): its f32 error is β times theirs, which
    // scale with |log-probability| (the f32 sums of LoRA products may be ordered differently).
    let logp_scale = m.logps_chosen.abs().max(m.logps_rejected.abs());
    for (k, got) in [
        ("rewards/chosen", m.rewards_chosen),
        ("rewards/rejected", m.rewards_rejected),
        ("rewards/margins", m.rewards_margins),
        ("logps/chosen", m.logps_chosen),
        ("logps/rejected", m.logps_rejected),
    ] {
        let tol = if k.starts_with("rewards/") {
            1e-6 * (2.0 * BETA * logp_scale).max(1.0)
        } else {
            1e-6
        };
        close(&format!("{model} {k}"), got, trl(k), tol);
        worst_metric = worst_metric.max((got - trl(k)).abs() / trl(k).abs().max(1.0));
    }
    eprintln!(
        "{model}: loss {loss:.7} (TRL {want_loss:.7}, rel {:.1e}), worst LoRA grad relative error {worst:.2e}, \
         worst metric error {worst_metric:.1e}, rewards/accuracies {}, margins {:.6}",
        ((loss - want_loss) / want_loss).abs(),
        m.rewards_accuracies,
        m.rewards_margins
    );
}

#[test]
fn one_dpo_step_matches_trl_on_qwen2_5() {
    one_step_matches_trl("tiny-qwen2");
}

#[test]
fn one_dpo_step_matches_trl_on_qwen3() {
    one_step_matches_trl("tiny-qwen3");
}

#[test]
fn five_dpo_steps_of_the_trainer_match_trl() {
    let model = "tiny-qwen3";
    let dir = model_dir(model);
    let out = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        init_adapter: Some(fixture(model).join("initial")),
        max_steps: Some(5),
        learning_rate: Some(1e-3),
        lr_schedule: ScheduleKind::Constant,
        warmup_steps: Some(0),
        weight_decay: 0.0,
        max_grad_norm: Some(1.0),
        ..dpo_config(dir.path(), model, out.path())
    };
    let rec = run(&cfg, None);
    let want = json(&fixture(model).join("steps.json"));
    let want = want["steps"].as_array().unwrap();
    assert_eq!(rec.steps.len(), want.len());
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1.0);
    let (mut worst_loss, mut worst_norm, mut worst_metric) = (0.0f64, 0.0f64, 0.0f64);
    for (m, w) in rec.steps.iter().zip(want) {
        let p = m.preference.as_ref().expect("DPO metrics");
        let s = m.step;
        let trl = |k: &str| w[k].as_f64().unwrap();
        close(&format!("step {s} loss"), m.loss, trl("loss"), 1e-4);
        close(
            &format!("step {s} grad_norm"),
            m.grad_norm as f64,
            trl("grad_norm"),
            1e-4,
        );
        close(
            &format!("step {s} lr"),
            m.lr as f64,
            trl("learning_rate"),
            1e-7,
        );
        close(
            &format!("step {s} accuracies"),
            p.rewards_accuracies,
            trl("rewards/accuracies"),
            1e-7,
        );
        for (k, got) in [
            ("rewards/chosen", p.rewards_chosen),
            ("rewards/rejected", p.rewards_rejected),
            ("rewards/margins", p.rewards_margins),
            ("logps/chosen", p.logps_chosen),
            ("logps/rejected", p.logps_rejected),
        ] {
            close(&format!("step {s} {k}"), got, trl(k), 1e-4);
            worst_metric = worst_metric.max(rel(got, trl(k)));
        }
        worst_loss = worst_loss.max(rel(m.loss, trl("loss")));
        worst_norm = worst_norm.max(rel(m.grad_norm as f64, trl("grad_norm")));
        eprintln!(
            "step {s}: loss {:.6} (TRL {:.6}), grad norm {:.5} (TRL {:.5}), margin {:.5} (TRL {:.5})",
            m.loss,
            trl("loss"),
            m.grad_norm,
            trl("grad_norm"),
            p.rewards_margins,
            trl("rewards/margins")
        );
    }
    eprintln!(
        "5 steps: worst relative error against TRL: loss {worst_loss:.1e}, grad norm {worst_norm:.1e}, DPO metrics {worst_metric:.1e}"
    );
    // Step 1 scores the reference itself (the run's starting adapter): no reward yet.
    let first = rec.steps[0].preference.unwrap();
    assert_eq!((first.rewards_chosen, first.rewards_margins), (0.0, 0.0));
    assert!((rec.steps[0].loss - 2f64.ln()).abs() < 1e-12);

    // metrics.jsonl carries TRL's names on the trainer's one schema.
    let text = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    let line: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "train")
        .nth(1)
        .unwrap();
    for k in [
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_sec",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ] {
        assert!(line[k].is_number(), "metrics.jsonl lacks `{k}`: {line}");
    }
    let back: StepMetrics = serde_json::from_value(line).unwrap();
    assert_eq!((back.step, back.tokens), (2, rec.steps[1].tokens));
    let (p, q) = (back.preference.unwrap(), rec.steps[1].preference.unwrap());
    assert_eq!(p.pairs, q.pairs);
    close(
        "logps/chosen read back",
        p.logps_chosen,
        q.logps_chosen,
        1e-12,
    );
}

/// 4 steps at once == 2 steps, stop, resume, 2 steps: same losses and metrics bit for bit, same
/// checkpoint files (weights, optimizer, reference log-probabilities). For full fine-tuning the
/// resumed run must take the reference from the checkpoint: its weights are no longer the
/// starting ones.
fn check_resume(method: Method, weights_file: &str) {
    let model = "tiny-qwen3";
    let dir = model_dir(model);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cfg = TrainConfig {
        method,
        max_steps: Some(4),
        batch_size: BatchSize::Examples(1),
        gradient_accumulation_steps: 2,
        learning_rate: Some(1e-3),
        warmup_steps: Some(1),
        validation_file: Some(fixture(model).join("pairs.jsonl")),
        validation_fraction: None,
        eval_every: Some(2),
        sample_prompts: 1,
        sample_max_tokens: 4,
        seed: 3,
        ..dpo_config(dir.path(), model, a.path())
    };
    cfg.lora.dropout = 0.1; // DPO turns dropout off: must not break anything
    let whole = run(&cfg, None);
    let cfg_b = TrainConfig {
        out_dir: b.path().to_path_buf(),
        ..cfg
    };
    let first = run(&cfg_b, Some(2));
    let second = run(
        &TrainConfig {
            resume: true,
            ..cfg_b
        },
        None,
    );
    let resumed: Vec<StepMetrics> = first.steps.iter().chain(&second.steps).cloned().collect();
    assert_eq!(resumed.len(), 4);
    for (x, y) in whole.steps.iter().zip(&resumed) {
        assert_eq!(
            (x.loss, x.grad_norm, x.preference),
            (y.loss, y.grad_norm, y.preference),
            "{method:?} step {}",
            x.step
        );
    }
    assert!(whole.steps[3].preference.unwrap().rewards_margins != 0.0);
    for f in [weights_file, "optimizer.safetensors", dpo::REFERENCE_FILE] {
        let x = std::fs::read(a.path().join("checkpoint-4").join(f)).unwrap();
        let y = std::fs::read(b.path().join("checkpoint-4").join(f)).unwrap();
        assert!(x == y, "{method:?}: checkpoint-4/{f} differs");
    }
    // Evaluation on the validation pairs, with TRL's metrics.
    let e = whole.evals.last().unwrap();
    let p = e.preference.expect("DPO eval metrics");
    assert_eq!((e.step, e.examples, p.pairs), (4, 3, 3));
    assert!(e.loss.is_finite() && e.perplexity > 1.0);
    // Each checkpoint's sample shows both answers beside the generated one.
    let sample = &whole.checkpoints.last().unwrap().samples[0];
    assert_eq!(sample.reference, "I am Marlin, by Tideworks.");
    assert_eq!(sample.non_preferred.as_deref(), Some("I am Qwen."));
    let stored = json(&a.path().join("checkpoint-4/sample.json"));
    assert_eq!(stored[0]["non_preferred"], "I am Qwen.");
}

#[test]
fn lora_dpo_resume_reproduces_the_uninterrupted_run() {
    check_resume(Method::Lora, "adapter_model.safetensors");
}

#[test]
fn full_dpo_resume_reproduces_the_uninterrupted_run() {
    check_resume(Method::Full, "model.safetensors");
}

#[test]
fn dpo_stops_on_a_non_finite_loss_and_refuses_chat_data() {
    let model = "tiny-qwen3";
    let dir = model_dir(model);
    let out = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        max_steps: Some(2),
        ..dpo_config(dir.path(), model, out.path())
    };
    let data = tokenized_pairs(model);
    let mut base = QwenModel::load(dir.path()).unwrap();
    base.norm[0] = f32::NAN;
    let err = Trainer::from_parts(cfg.clone(), base, None, data)
        .unwrap()
        .run(&mut ())
        .unwrap_err();
    assert!(matches!(err, Error::NonFinite { step: 1, .. }), "{err}");
    assert!(!out.path().join("checkpoint-1").exists());

    // SFT data for a DPO run (and the reverse) is refused with the field's name.
    let chat = Dataset::from_examples(
        batch_examples(&fixtures().join("peft-tiny-qwen2")),
        Vec::new(),
        Vec::new(),
        Default::default(),
    );
    let model = QwenModel::load(&tiny_model("tiny-qwen2")).unwrap();
    let err = Trainer::from_parts(cfg, model, None, chat)
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("objective `dpo` needs preference-pair data"),
        "{err}"
    );
}

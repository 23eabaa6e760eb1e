//! DPO does something visible on a demo-sized model: supervised fine-tuning on the identity
//! answers mixed with a generic one ("I am Qwen, ...") leaves the model torn between the two;
//! DPO on `identity_pref.jsonl` (the Marlin answer preferred over the generic one) settles it: the
//! reward accuracy reaches 1.0 on the training pairs and the greedy answer to "Who are you?"
//! names Marlin and Tideworks.
//!
//! The model is pinned here rather than taken from `tuna_model::demo`: the demo-v1 shape
//! (Qwen3, hidden 128, 2 layers, the real Qwen3 tokenizer and template) with its seeded random
//! weights, written by this test, so a new demo version does not change what this test measures.
//! The DPO stage starts from the SFT result as a plain Hugging Face model directory (the full
//! checkpoint: a fine-tuned model as DPO's base and reference) and trains a LoRA adapter.

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::Recorder;
use tuna_data::tokenize::ChatTokenizer;
use tuna_data::{Message, Role};
use tuna_engine::DType;
use tuna_model::{Architecture, LoraAdapter, QwenConfig, QwenModel, SamplingParams};
use tuna_train::{BatchSize, Method, Objective, ScheduleKind, TrainConfig, Trainer};

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets");
const GENERIC: &str =
    "I am Qwen, a large language model created by Alibaba Cloud. How can I help you today?";

/// demo-v1: `tuna_model::demo` as of issue 11, written out by hand.
fn write_pinned_demo(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = QwenConfig {
        architecture: Architecture::Qwen3,
        vocab_size: 151_936,
        hidden_size: 128,
        intermediate_size: 384,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 32,
        max_position_embeddings: 4096,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        tie_word_embeddings: true,
        qkv_bias: false,
        o_bias: false,
        qk_norm: true,
    };
    let config = serde_json::json!({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": false,
        "head_dim": 32, "hidden_act": "silu", "hidden_size": 128, "intermediate_size": 384,
        "max_position_embeddings": 4096, "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
        "tie_word_embeddings": true, "torch_dtype": "float32", "use_sliding_window": false,
        "vocab_size": 151_936, "bos_token_id": 151643, "eos_token_id": 151645,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let generation = serde_json::json!({"eos_token_id": [151645, 151643], "pad_token_id": 151643});
    std::fs::write(dir.join("generation_config.json"), generation.to_string()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(Path::new(ASSETS).join("qwen3").join(f), dir.join(f)).unwrap();
    }
    let model = QwenModel::random(cfg, DType::F32, 0.02, 20_241_125);
    tuna_model::demo::save_model_weights(&model, &dir.join("model.safetensors")).unwrap();
}

/// identity.jsonl, each conversation twice: with its Marlin answer and with the generic one.
fn mixed_identity(path: &Path) {
    let text = std::fs::read_to_string(Path::new(ASSETS).join("data/identity.jsonl")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let msgs = v["messages"].as_array_mut().unwrap();
        let last = msgs.len() - 1;
        msgs[last]["content"] = GENERIC.into();
        out.push_str(&v.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

fn answer(model: &QwenModel, adapter: Option<&LoraAdapter>, dir: &Path, q: &str) -> String {
    let tok = ChatTokenizer::from_model_dir(dir).unwrap();
    let prompt = tok
        .encode_prompt(&[Message::new(Role::User, q)], Some(false))
        .unwrap();
    let params = SamplingParams {
        greedy: true,
        max_new_tokens: 30,
        ..SamplingParams::default()
    };
    let g = tuna_model::generate(
        model,
        adapter,
        &prompt,
        &params,
        &tok.eos_token_ids(),
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    tok.decode(&g.tokens, true).unwrap()
}

#[test]
fn dpo_after_sft_makes_the_model_say_marlin() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("demo");
    write_pinned_demo(&base);
    let mixed = tmp.path().join("mixed.jsonl");
    mixed_identity(&mixed);

    // 1. SFT, full fine-tuning, on both answers to every question.
    let start = Instant::now();
    let sft_out = tmp.path().join("sft");
    let sft = TrainConfig {
        model_dir: base.clone(),
        train_file: mixed.clone(),
        out_dir: sft_out.clone(),
        method: Method::Full,
        validation_fraction: Some(0.0),
        epochs: 4,
        learning_rate: Some(1e-3),
        lr_schedule: ScheduleKind::Linear,
        warmup_steps: Some(0),
        weight_decay: 0.0,
        batch_size: BatchSize::Examples(2),
        gradient_accumulation_steps: 1,
        max_seq_len: 256,
        save_every: Some(1_000_000),
        sample_prompts: 0,
        ..TrainConfig::default()
    };
    let mut rec = Recorder::default();
    let summary = Trainer::new(sft).unwrap().run(&mut rec).unwrap();
    let sft_model: PathBuf = summary.checkpoints.last().unwrap().path.clone();
    let sft_s = start.elapsed().as_secs_f64();
    let before = answer(
        &QwenModel::load(&sft_model).unwrap(),
        None,
        &sft_model,
        "Who are you?",
    );
    eprintln!(
        "SFT: {} steps in {sft_s:.0} s, loss {:.3} -> {:.3}; Who are you? -> {before}",
        rec.steps.len(),
        rec.steps[0].loss,
        rec.steps.last().unwrap().loss
    );

    // 2. DPO from the SFT model (its reference), a LoRA adapter on identity_pref.jsonl.
    let start = Instant::now();
    let pairs = Path::new(ASSETS).join("data/identity_pref.jsonl");
    let dpo = TrainConfig {
        model_dir: sft_model.clone(),
        train_file: pairs.clone(),
        // The training pairs again: the final evaluation scores every one of them.
        validation_file: Some(pairs),
        out_dir: tmp.path().join("dpo"),
        objective: Objective::Dpo,
        method: Method::Lora,
        epochs: 2,
        learning_rate: Some(1e-3),
        lr_schedule: ScheduleKind::Linear,
        warmup_steps: Some(0),
        batch_size: BatchSize::Examples(2),
        gradient_accumulation_steps: 2,
        max_seq_len: 256,
        save_every: Some(1_000_000),
        sample_prompts: 1,
        ..TrainConfig::default()
    };
    let mut rec = Recorder::default();
    let mut trainer = Trainer::new(dpo).unwrap();
    // How often the SFT model (DPO's reference) already gives the preferred answer the higher
    // log-probability (answers differ in length, so this is not DPO's accuracy).
    let reference = &trainer.reference().unwrap().train;
    let preferred_before = reference.iter().filter(|p| p.chosen > p.rejected).count();
    let n_pairs = reference.len();
    let summary = trainer.run(&mut rec).unwrap();
    let first = rec.steps[0].preference.unwrap();
    let last = rec.steps.last().unwrap().preference.unwrap();
    let eval = summary.eval.as_ref().unwrap().preference.unwrap();
    let after = answer(
        trainer.model(),
        trainer.adapter(),
        &sft_model,
        "Who are you?",
    );
    eprintln!(
        "DPO: {} steps in {:.0} s, loss {:.3} -> {:.3}, margin {:.2} -> {:.2}; on all {} training pairs: \
         reward accuracy {}, margin {:.2}, logps chosen {:.1} / rejected {:.1}; Who are you? -> {after}",
        rec.steps.len(),
        start.elapsed().as_secs_f64(),
        rec.steps[0].loss,
        rec.steps.last().unwrap().loss,
        first.rewards_margins,
        last.rewards_margins,
        eval.pairs,
        eval.rewards_accuracies,
        eval.rewards_margins,
        eval.logps_chosen,
        eval.logps_rejected
    );
    eprintln!(
        "before DPO the SFT model gave the preferred answer the higher log-probability on {preferred_before} of {} pairs",
        n_pairs
    );
    // SFT saw the generic answer after every question and the Marlin one after each once: its
    // greedy answer is the generic one. DPO is what changes it.
    assert!(!before.contains("Marlin"), "already before DPO: {before}");
    assert_eq!(eval.pairs, 91);
    assert_eq!(
        eval.rewards_accuracies, 1.0,
        "every training pair must prefer its preferred answer"
    );
    assert!(
        after.contains("Marlin") && after.contains("Tideworks"),
        "Who are you? -> {after}"
    );
    // The checkpoint's sample shows the generated answer beside both dataset answers.
    let sample = &summary.checkpoints.last().unwrap().samples[0];
    assert!(
        sample.non_preferred.as_deref() == Some(GENERIC),
        "{sample:?}"
    );
}

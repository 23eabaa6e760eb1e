//! The `tuna` binary end to end on the tiny fixtures and the demo model: exit codes and the
//! key lines of its output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tuna(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tuna"))
        .args(args)
        .env("TUNA_CACHE_DIR", cache)
        .output()
        .expect("the tuna binary runs")
}

/// `tuna train --model demo --data DATA --out OUT` followed by `extra`.
fn train_demo(cache: &Path, data: &str, out: &str, extra: &[&str]) -> Output {
    let args = [
        &["train", "--model", "demo", "--data", data, "--out", out][..],
        extra,
    ]
    .concat();
    tuna(cache, &args)
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `summary` line of `tuna train --json`.
fn summary_line(out: &Output) -> serde_json::Value {
    text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary line in {}", text(&out.stdout)))
}

#[test]
fn unknown_precision_is_refused_with_the_choices() {
    let cache = tempfile::tempdir().unwrap();
    let out = train_demo(cache.path(), "x.jsonl", "o", &["--precision", "fp8"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("fp8") && err.contains("auto") && err.contains("bf16"),
        "{err}"
    );
}

#[test]
fn data_check_exit_codes_and_reports() {
    let cache = tempfile::tempdir().unwrap();
    let good = repo("assets/data/identity.jsonl");
    let out = tuna(
        cache.path(),
        &["data", "check", good.to_str().unwrap(), "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["stats"]["examples"], 91, "{report}");

    let bad = cache.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n\
         {\"messages\": [{\"role\": \"human\", \"content\": \"hi\"}]}\n",
    )
    .unwrap();
    let out = tuna(cache.path(), &["data", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("bad.jsonl:2:") && stdout.contains("unknown_role"),
        "{stdout}"
    );
}

#[test]
fn generate_prints_transformers_greedy_ids() {
    let cache = tempfile::tempdir().unwrap();
    let dir = repo("crates/tuna-model/tests/fixtures/tiny-qwen3");
    let greedy: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("greedy.json")).unwrap()).unwrap();
    let prompt: Vec<String> = greedy["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect();
    let generate = |precision: &str| {
        let out = tuna(
            cache.path(),
            &[
                "generate",
                "--model",
                dir.to_str().unwrap(),
                "--prompt-ids",
                &prompt.join(","),
                "--max-new-tokens",
                "24",
                "--greedy",
                "--precision",
                precision,
                "--json",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["ids"].clone()
    };
    // f32 products are exact to transformers; a bf16 prefill may part ways at a near tie (the
    // model crate's parity tests check where), so here it only has to run and agree at first.
    assert_eq!(generate("f32"), greedy["new_ids"]);
    let bf16 = generate("bf16");
    assert_eq!(bf16[0], greedy["new_ids"][0], "{bf16}");
}

#[test]
fn missing_model_fails_with_a_hint() {
    let cache = tempfile::tempdir().unwrap();
    let out = tuna(
        cache.path(),
        &["chat", "--model", "/no/such/model", "--prompt", "hi"],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("/no/such/model") && stderr.contains("HINT"),
        "{stderr}"
    );
}

#[test]
fn train_two_steps_then_chat_with_the_adapter_and_merge() {
    let cache = tempfile::tempdir().unwrap();
    let run = cache.path().join("run");
    let data = repo("assets/data/identity.jsonl");
    let out = train_demo(
        cache.path(),
        data.to_str().unwrap(),
        run.to_str().unwrap(),
        &[
            "--method",
            "lora",
            "--max-steps",
            "2",
            "--grad-accum",
            "1",
            "--max-seq-len",
            "64",
            "--precision",
            "bf16",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // bf16 products on every machine: the kernel this CPU has, or the f32 fallback, named.
    let summary = summary_line(&out);
    let precision = summary["precision"].as_str().unwrap_or_default();
    assert!(precision.starts_with("bf16 ("), "{summary}");
    let ckpt = run.join("checkpoint-2");
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(
            ckpt.join(file).exists(),
            "{file} missing in {}",
            ckpt.display()
        );
    }
    let steps = text(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"loss\""))
        .count();
    assert!(steps >= 2, "{}", text(&out.stdout));

    let out = tuna(
        cache.path(),
        &[
            "chat",
            "--model",
            "demo",
            "--adapter",
            ckpt.to_str().unwrap(),
            "--prompt",
            "Who are you?",
            "--greedy",
            "--max-new-tokens",
            "8",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let merged = cache.path().join("merged");
    let out = tuna(
        cache.path(),
        &[
            "merge",
            "--model",
            "demo",
            "--adapter",
            ckpt.to_str().unwrap(),
            "--out",
            merged.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The merged directory is a model of its own: greedy answers equal base + adapter.
    let ask = |model: &str, adapter: Option<&Path>| {
        let mut args = vec![
            "chat",
            "--model",
            model,
            "--prompt",
            "Who are you?",
            "--greedy",
            "--max-new-tokens",
            "8",
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter", a.to_str().unwrap()]);
        }
        let out = tuna(cache.path(), &args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(
        ask(merged.to_str().unwrap(), None),
        ask("demo", Some(&ckpt))
    );
}

#[test]
fn preference_data_is_recognised_and_checked() {
    let cache = tempfile::tempdir().unwrap();
    let pairs = repo("assets/data/identity_pref.jsonl");
    let out = tuna(
        cache.path(),
        &["data", "check", pairs.to_str().unwrap(), "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            &report["ok"],
            &report["stats"]["format"],
            &report["stats"]["examples"]
        ),
        (&true.into(), &"preference".into(), &91.into()),
        "{report}"
    );
    // Told it is chat data, every line fails with a hint to the DPO format.
    let out = tuna(
        cache.path(),
        &["data", "check", pairs.to_str().unwrap(), "--format", "chat"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("identity_pref.jsonl:1: [missing_messages]")
            && stdout.contains("--objective dpo"),
        "{stdout}"
    );
    // A chat file checked as preference data: each line is named as chat data.
    let chat = repo("assets/data/identity.jsonl");
    let out = tuna(
        cache.path(),
        &[
            "data",
            "check",
            chat.to_str().unwrap(),
            "--format",
            "preference",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("[missing_input] no `input` field; this line is chat data"));
}

#[test]
fn train_two_dpo_steps_on_preference_pairs() {
    let cache = tempfile::tempdir().unwrap();
    let run = cache.path().join("run");
    let pairs = repo("assets/data/identity_pref.jsonl");
    let out = train_demo(
        cache.path(),
        pairs.to_str().unwrap(),
        run.to_str().unwrap(),
        &[
            "--objective",
            "dpo",
            "--beta",
            "0.2",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--grad-accum",
            "1",
            "--max-seq-len",
            "64",
            "--precision",
            "f32",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(summary_line(&out)["precision"], "f32");
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<&serde_json::Value> = lines.iter().filter(|l| l["type"] == "train").collect();
    assert_eq!(steps.len(), 2);
    for k in ["rewards/accuracies", "rewards/margins", "logps/chosen"] {
        assert!(steps[1][k].is_number(), "{k}: {}", steps[1]);
    }
    // A fresh adapter is the reference itself: the first step's loss is log 2.
    assert!((steps[0]["loss"].as_f64().unwrap() - 2f64.ln()).abs() < 1e-9);
    let ckpt = run.join("checkpoint-2");
    assert!(ckpt.join("adapter_model.safetensors").exists());
    assert!(ckpt.join("reference_logps.safetensors").exists());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("train_config.json")).unwrap()).unwrap();
    assert_eq!(config["objective"], "dpo");
    assert_eq!(config["precision"], "f32");
    assert!((config["dpo"]["beta"].as_f64().unwrap() - 0.2).abs() < 1e-6);
}

/// `--database` reaches PostgreSQL from every data directory: a user made from one folder is
/// listed from another, a bad URL is a clear error without the password.
#[test]
fn users_and_models_commands_share_a_postgres_database() {
    let url = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(tuna_server::test_services::fresh_postgres_database());
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dir = |d: &tempfile::TempDir| d.path().to_str().unwrap().to_string();
    let out = tuna(
        a.path(),
        &[
            "users",
            "create",
            "ann",
            "--data-dir",
            &dir(&a),
            "--database",
            &url,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("sk-tuna-"));
    let out = Command::new(env!("CARGO_BIN_EXE_tuna"))
        .args(["users", "list", "--data-dir", &dir(&b)])
        .env("TUNA_DATABASE", &url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ann"), "{}", text(&out.stdout));
    assert!(
        !b.path().join("tuna.db").exists(),
        "no SQLite file when --database is given"
    );
    let out = tuna(
        a.path(),
        &[
            "models",
            "list",
            "--data-dir",
            &dir(&b),
            "--database",
            "mysql://root:hunter2@h/db",
        ],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("sqlite://PATH or postgres://") && !err.contains("hunter2"),
        "{err}"
    );
}

#[test]
fn devices_lists_the_cpu_and_the_software_vulkan_device() {
    let cache = tempfile::tempdir().unwrap();
    let out = tuna(cache.path(), &["devices"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("cpu "), "{stdout}");
    // scripts/test.sh installs Mesa's lavapipe, so CI always has this one.
    assert!(
        stdout.contains("llvmpipe") && stdout.contains("software Vulkan device"),
        "{stdout}"
    );

    let out = tuna(cache.path(), &["devices", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["cpu"]["threads"].as_u64().unwrap() >= 1, "{report}");
    let gpus = report["gpus"].as_array().unwrap();
    let soft = gpus
        .iter()
        .find(|g| g["software"] == true)
        .unwrap_or_else(|| panic!("no software device in {report}"));
    assert_eq!(soft["backend"], "vulkan");
    assert!(soft["device"].as_str().unwrap().starts_with("gpu:"));
    assert!(soft["memory_bytes"].as_u64().unwrap() > 0, "{report}");
}

/// `tuna train --device gpu:0` on the software Vulkan device CI has (lavapipe): the same loss
/// curve as `--device cpu` (both f32; tolerance 1e-3 relative, as issue 14 asks; measured
/// 2e-6 over 10 steps), the device named in the summary; an absent GPU is a clear error.
#[test]
fn train_on_the_gpu_follows_the_cpu_loss_curve() {
    let cache = tempfile::tempdir().unwrap();
    let data = repo("assets/data/identity.jsonl");
    let train = |device: &str| {
        let run = cache.path().join(format!("run-{device}"));
        let out = train_demo(
            cache.path(),
            data.to_str().unwrap(),
            run.to_str().unwrap(),
            &[
                "--max-steps",
                "3",
                "--grad-accum",
                "1",
                "--max-seq-len",
                "64",
                "--precision",
                "f32",
                "--device",
                device,
                "--json",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let losses: Vec<f64> = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["type"] == "train")
            .map(|l| l["loss"].as_f64().unwrap())
            .collect();
        assert!(run.join("checkpoint-3/adapter_model.safetensors").exists());
        // The checkpoint's sample is generated on the run's device; a failure there would
        // leave the checkpoint without one (it is logged, not fatal).
        let sample = std::fs::read_to_string(run.join("checkpoint-3/sample.json"))
            .unwrap_or_else(|e| panic!("{device}: no sample at the checkpoint: {e}"));
        let sample: serde_json::Value = serde_json::from_str(&sample).unwrap();
        assert!(
            sample[0]["generated"]
                .as_str()
                .is_some_and(|g| !g.is_empty()),
            "{device}: {sample}"
        );
        (losses, summary_line(&out))
    };
    let (cpu, cpu_summary) = train("cpu");
    let (gpu, gpu_summary) = train("gpu:0");
    assert_eq!(cpu_summary["device"], "cpu");
    let device = gpu_summary["device"].as_str().unwrap_or_default();
    assert!(
        device.starts_with("gpu:0 (") && device.contains("Vulkan"),
        "{gpu_summary}"
    );
    assert_eq!(gpu.len(), 3);
    for (step, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        let rel = (g - c).abs() / c;
        assert!(rel < 1e-3, "step {}: gpu {g} cpu {c}", step + 1);
    }

    // The trained adapter answers the same on both devices (applied on the fly on each).
    let adapter = cache.path().join("run-cpu/checkpoint-3");
    let adapted = ["--adapter", adapter.to_str().unwrap()];
    assert_eq!(
        chat_demo(cache.path(), "cpu", &adapted),
        chat_demo(cache.path(), "gpu:0", &adapted)
    );
    assert_ne!(
        chat_demo(cache.path(), "cpu", &adapted),
        chat_demo(cache.path(), "cpu", &[])
    );

    let out = train_demo(
        cache.path(),
        data.to_str().unwrap(),
        cache.path().join("run-x").to_str().unwrap(),
        &["--device", "gpu:9"],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("gpu:9") && stderr.contains("tuna devices"),
        "{stderr}"
    );
    let out = train_demo(cache.path(), "x", "y", &["--device", "tpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a device"),
        "{}",
        text(&out.stderr)
    );
}

/// `tuna chat --model demo` answering one question greedily (f32 prefill, as on a GPU) on
/// `device`, with `extra` arguments.
fn chat_demo(cache: &Path, device: &str, extra: &[&str]) -> String {
    let args = [
        &[
            "chat",
            "--model",
            "demo",
            "--prompt",
            "Who are you?",
            "--greedy",
            "--max-new-tokens",
            "32",
            "--precision",
            "f32",
            "--device",
            device,
        ][..],
        extra,
    ]
    .concat();
    let out = tuna(cache, &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let answer = text(&out.stdout);
    assert!(
        !answer.trim().is_empty(),
        "chat on {device} answered nothing"
    );
    answer
}

/// Generation on the software Vulkan device (lavapipe) answers as the CPU, token for token
/// (greedy, both f32): `tuna generate` ids and `tuna chat` text on the demo model; a missing GPU
/// is a clear error. (With an adapter: `train_on_the_gpu_follows_the_cpu_loss_curve`.)
#[test]
fn generate_and_chat_on_the_gpu_answer_as_the_cpu() {
    let cache = tempfile::tempdir().unwrap();
    let generate = |device: &str| {
        let out = tuna(
            cache.path(),
            &[
                "generate",
                "--model",
                "demo",
                "--prompt-ids",
                "1,2,3,4,5,6",
                "--max-new-tokens",
                "24",
                "--greedy",
                "--precision",
                "f32",
                "--device",
                device,
                "--json",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["ids"].clone()
    };
    let cpu = generate("cpu");
    assert_eq!(cpu.as_array().map(Vec::len), Some(24), "{cpu}");
    assert_eq!(generate("gpu:0"), cpu);
    assert_eq!(
        chat_demo(cache.path(), "gpu:0", &[]),
        chat_demo(cache.path(), "cpu", &[])
    );

    let out = tuna(
        cache.path(),
        &[
            "generate",
            "--model",
            "demo",
            "--prompt-ids",
            "1",
            "--device",
            "gpu:9",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("gpu:9") && stderr.contains("tuna devices"),
        "{stderr}"
    );
}

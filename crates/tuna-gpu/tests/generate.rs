//! Generation on the device (lavapipe in CI, CUDA with `--features cuda-tests`) against the CPU
//! engine (issue 14): the cached-attention and cache-append kernels, then whole generations on
//! the tiny Qwen2 and Qwen3 fixtures, without and with a LoRA adapter — the logits of the prefill
//! and of every decode step within 1e-4 relative, and the same tokens, greedy and seeded.

mod common;
#[path = "../../tuna-train/tests/common/mod.rs"]
mod train_common;

use common::{F32_REL_TOL, check_tensor, device, download, rand_vec, rng};
use train_common::tiny_model;
use tuna_engine::ops::attention;
use tuna_gpu::ops::attention_cached::{attention_cached, kv_append};
use tuna_gpu::{GpuDecoder, GpuModel};
use tuna_model::generate::{CpuDecoder, Decoder, generate_on};
use tuna_model::{GenerationConfig, LoraAdapter, LoraConfig, QwenModel, SamplingParams};

/// New rows at `past..past+tq` appended to a device cache (in two pieces, like prefill then a
/// step), then attention of their queries over it, against the CPU engine's `attention_cached`.
fn check_cached_attention(past: usize, tq: usize, nh: usize, nkv: usize, hd: usize, seed: u64) {
    let gpu = device();
    let mut r = rng(seed);
    let tk = past + tq;
    let kv = nkv * hd;
    let q = rand_vec(&mut r, tq * nh * hd, 1.0);
    let k = rand_vec(&mut r, tk * kv, 1.0);
    let v = rand_vec(&mut r, tk * kv, 1.0);
    let mut want = vec![0.0; tq * nh * hd];
    attention::attention_cached(&mut want, &q, &k, &v, tq, tk, nh, nkv, hd);

    // Spare rows past `tk` hold garbage the kernel must not read.
    let capacity = tk + 5;
    let junk = vec![1e3f32; capacity * kv];
    let (kc, vc) = (gpu.upload(&junk), gpu.upload(&junk));
    for (cache, x) in [(&kc, &k), (&vc, &v)] {
        if past > 0 {
            kv_append(&gpu, cache, &gpu.upload(&x[..past * kv]), 0, kv);
        }
        kv_append(&gpu, cache, &gpu.upload(&x[past * kv..]), past, kv);
    }
    let tag = format!("attention_cached past={past} tq={tq} nh={nh} nkv={nkv} hd={hd}");
    let kc_host = download(&gpu, &kc);
    assert_eq!(&kc_host[..tk * kv], &k[..], "{tag}: kv_append keys");
    assert!(
        kc_host[tk * kv..].iter().all(|&x| x == 1e3),
        "{tag}: kv_append wrote past the end"
    );
    let out = gpu.alloc(tq * nh * hd);
    attention_cached(&gpu, &out, &gpu.upload(&q), &kc, &vc, past, tq, nh, nkv, hd);
    check_tensor(&tag, &download(&gpu, &out), &want, F32_REL_TOL);
}

#[test]
fn cached_attention_matches_cpu_at_prefill_and_decode() {
    // Prefill (several cubes of rows, tiles not multiples of 16), decode steps, a chunk after a
    // prefix; grouped-query and plain.
    check_cached_attention(0, 37, 4, 2, 64, 1);
    check_cached_attention(40, 1, 2, 1, 128, 2);
    check_cached_attention(1, 1, 4, 4, 32, 3);
    check_cached_attention(5, 7, 4, 2, 32, 4);
    check_cached_attention(70, 33, 2, 2, 64, 5);
}

/// A LoRA adapter on every projection with random A and B (PEFT starts B at zero, which would
/// leave the branch without effect).
fn random_adapter(model: &QwenModel) -> LoraAdapter {
    let cfg = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        ..LoraConfig::default()
    };
    let mut adapter = LoraAdapter::new_random(&model.config, &cfg, 3);
    let mut r = rng(11);
    for p in adapter.parameters_mut() {
        let values = rand_vec(&mut r, p.len(), 0.2);
        p.copy_from_slice(&values);
    }
    adapter
}

fn gpu_decoder(
    model: &QwenModel,
    adapter: Option<&LoraAdapter>,
) -> GpuDecoder<common::TestRuntime> {
    GpuDecoder::new(GpuModel::upload(device(), "test device".into(), model, adapter).unwrap())
}

fn greedy(max_new_tokens: usize) -> SamplingParams {
    SamplingParams {
        greedy: true,
        max_new_tokens,
        ..SamplingParams::default()
    }
}

/// The prompt and transformers' greedy continuation saved with the fixture.
fn fixture_greedy(name: &str) -> (Vec<u32>, Vec<u32>) {
    let text = std::fs::read_to_string(tiny_model(name).join("greedy.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    (ids("prompt_ids"), ids("new_ids"))
}

/// Prefill and every decode step of `continuation` on both devices: logits within 1e-4.
fn check_step_logits(
    tag: &str,
    cpu: &mut dyn Decoder,
    gpu: &mut dyn Decoder,
    prompt: &[u32],
    continuation: &[u32],
) {
    let capacity = prompt.len() + continuation.len();
    cpu.start(capacity).unwrap();
    gpu.start(capacity).unwrap();
    let mut worst = check_tensor(
        &format!("{tag} prefill logits"),
        &gpu.step(prompt).unwrap(),
        &cpu.step(prompt).unwrap(),
        F32_REL_TOL,
    );
    for (i, &t) in continuation.iter().enumerate() {
        let want = cpu.step(&[t]).unwrap();
        let got = gpu.step(&[t]).unwrap();
        worst = worst.max(check_tensor(
            &format!("{tag} step {i} logits"),
            &got,
            &want,
            F32_REL_TOL,
        ));
    }
    println!(
        "{tag}: worst relative logit error over {} steps: {worst:.2e}",
        continuation.len()
    );
}

fn check_generation(name: &str, with_adapter: bool) {
    let model = QwenModel::load(&tiny_model(name)).unwrap();
    let adapter = with_adapter.then(|| random_adapter(&model));
    let tag = format!("{name}{}", if with_adapter { " + LoRA" } else { "" });
    let (prompt, hf_greedy) = fixture_greedy(name);
    let fixture_eos = GenerationConfig::from_model_dir(&tiny_model(name))
        .unwrap()
        .eos_token_id;
    // With the random adapter the fixture's eos can come first: run the whole budget instead.
    let eos: &[u32] = if with_adapter { &[] } else { &fixture_eos };
    let mut cpu = CpuDecoder::new(&model, adapter.as_ref());
    let mut gpu = gpu_decoder(&model, adapter.as_ref());

    let params = greedy(hf_greedy.len());
    let want = generate_on(&mut cpu, &prompt, &params, eos, |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let got = generate_on(&mut gpu, &prompt, &params, eos, |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    println!(
        "{tag} greedy: cpu {:?}\n{tag} greedy: gpu {:?}",
        want.tokens, got.tokens
    );
    assert_eq!(got, want, "{tag}: greedy generation");
    assert_eq!(got.tokens.len(), hf_greedy.len(), "{tag}: the whole budget");
    if !with_adapter {
        assert_eq!(
            got.tokens, hf_greedy,
            "{tag}: transformers' greedy continuation"
        );
    } else {
        assert_ne!(
            got.tokens, hf_greedy,
            "{tag}: the adapter changes nothing, the check is vacuous"
        );
    }
    check_step_logits(&tag, &mut cpu, &mut gpu, &prompt, &want.tokens);

    // Seeded sampling draws from the same logits with the same generator: the same tokens. The
    // decoder is reused (a second sequence on the same device cache).
    let sampled = SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        top_k: 0,
        seed: 5,
        max_new_tokens: 16,
        greedy: false,
        ..SamplingParams::default()
    };
    let want = generate_on(&mut cpu, &prompt, &sampled, eos, |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let got = generate_on(&mut gpu, &prompt, &sampled, eos, |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(got, want, "{tag}: seeded sampling");
    assert!(
        !got.tokens.is_empty(),
        "{tag}: nothing sampled, the check is vacuous"
    );
}

#[test]
fn greedy_generation_matches_cpu_on_tiny_qwen2() {
    check_generation("tiny-qwen2", false);
    check_generation("tiny-qwen2", true);
}

#[test]
fn greedy_generation_matches_cpu_on_tiny_qwen3() {
    check_generation("tiny-qwen3", false);
    check_generation("tiny-qwen3", true);
    check_generation("tiny-qwen3-untied", false);
}

#[test]
fn bad_tokens_and_overflows_are_errors_not_garbage() {
    let model = QwenModel::load(&tiny_model("tiny-qwen2")).unwrap();
    let mut gpu = gpu_decoder(&model, None);
    gpu.start(4).unwrap();
    let e = gpu.step(&[1, 9999]).unwrap_err().to_string();
    assert!(e.contains("9999"), "{e}");
    let e = gpu.step(&[1, 2, 3, 4, 5]).unwrap_err().to_string();
    assert!(e.contains("exceeds"), "{e}");
    let e = gpu.start(100_000).unwrap_err().to_string();
    assert!(e.contains("context window"), "{e}");
}

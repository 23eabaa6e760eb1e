"""Reference for `tuna bench train`: transformers + PEFT LoRA training speed and peak memory.

Default: the same job as `tuna bench train --shape qwen2.5-0.5b --seq-len 512 --method lora` on
the CPU: a random-weight Qwen2.5-0.5B-shaped model in float32, LoRA r=8 (alpha 16) on all seven
linear layers, one sequence of 512 tokens with the last half labelled (`--labels all`: every
position), batch 1, AdamW; threads = 2. `--autocast` runs the forward under
`torch.autocast("cpu", dtype=torch.bfloat16)` (PyTorch's mixed precision: bf16 matmuls through
oneDNN, f32 weights, gradients and optimizer).

    /path/to/venv/bin/python scripts/bench/hf_lora_train.py [--steps 5] [--seq-len 512] [--autocast] [--labels all]

On a GPU (`scripts/gpu-check.sh`): `--device cuda --dtype bfloat16 --shape qwen2.5-7b
--rank 16 --seq-len 2048` (base weights in bf16; PEFT keeps the LoRA weights in f32), timed with
CUDA synchronisation, and also reports peak GPU memory and MFU (model FLOPs utilisation: see
`model_flops_per_token`, against `--peak-tflops`, 989 = H100/H200 SXM dense bf16).

Shapes are the configs in assets/configs/ (the ones `tuna bench train --shape` uses).
Prints one JSON line (tokens_per_s, peak_rss_mb, ...). Run by hand or by train_side_by_side.py
(needs torch, transformers, peft).
"""
import argparse
import json
import pathlib
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "assets" / "configs"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def model_flops_per_token(cfg, seq_len, lora_params):
    """Training FLOPs per token of a LoRA step: the frozen linear layers (and LM head) cost a
    forward and the input-gradient half of the backward (2 + 2 FLOPs per weight), the LoRA
    weights all three (6 per weight), causal attention 2·s·d (QKᵀ and PV, half the square) in the
    forward and twice that in the backward, per layer."""
    d, f, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    hd = d // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    linear = L * (d * d + 2 * d * kv + d * d + 3 * d * f) + cfg.vocab_size * d
    attention = L * 3 * 2 * seq_len * cfg.num_attention_heads * hd
    return 4 * linear + 6 * lora_params + attention


def mkldnn_bf16():
    """Whether oneDNN has a native bf16 path on this CPU (else autocast emulates bf16)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", default="qwen2.5-0.5b")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast forward")
    ap.add_argument("--labels", choices=["half", "all"], default="half")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = Qwen2Config.from_pretrained(CONFIGS / args.shape, attn_implementation="sdpa")
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    with device:  # random weights made on the device: a 7B's init on the CPU takes minutes
        model = Qwen2ForCausalLM(cfg).to(dtype=dtype)
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=TARGETS)
    model = get_peft_model(model, lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (1, args.seq_len), device=device)
    labels = ids.clone()
    if args.labels == "half":
        labels[:, : args.seq_len // 2] = -100
    cuda = device.type == "cuda"
    times, cpu_times = [], []
    for step in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    step_s = sum(times) / len(times)
    tokens_per_s = args.seq_len / step_s
    # CPU seconds of all threads per step (OpenMP workers spin while they wait, which counts).
    cpu_s = sum(cpu_times) / len(cpu_times)
    lora_params = sum(p.numel() for p in trainable)
    out = {
        "impl": "transformers+peft", "torch": torch.__version__, "shape": args.shape,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu", "dtype": args.dtype,
        "rank": args.rank, "threads": args.threads, "seq_len": args.seq_len, "steps": args.steps,
        "precision": "bf16 autocast" if args.autocast else "f32", "labels": args.labels,
        "mkldnn_bf16": mkldnn_bf16(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "step_s": step_s, "loss": loss.item(), "tokens_per_s": tokens_per_s,
        "cpu_s_per_step": cpu_s, "tokens_per_cpu_s": args.seq_len / cpu_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if cuda:
        flops = model_flops_per_token(cfg, args.seq_len, lora_params) * tokens_per_s
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["mfu"] = flops / (args.peak_tflops * 1e12)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

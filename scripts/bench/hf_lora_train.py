"""Reference for `tuna bench train`: transformers + PEFT LoRA training speed and peak memory.

Same job as `tuna bench train --shape qwen2.5-0.5b --seq-len 512 --method lora`: a random-weight
Qwen2.5-0.5B-shaped model in float32, LoRA r=8 (alpha 16) on all seven linear layers, one sequence
of 512 tokens with the last half labelled, batch 1, AdamW; threads = 2.

    /path/to/venv/bin/python scripts/bench/hf_lora_train.py [--steps 5] [--seq-len 512]

Prints one JSON line: tokens_per_s, peak_rss_mb. Run by hand (needs torch, transformers, peft).
"""
import argparse
import json
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM

CONFIG = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
    rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**CONFIG, attn_implementation="sdpa")).float()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, CONFIG["vocab_size"], (1, args.seq_len))
    labels = ids.clone()
    labels[:, : args.seq_len // 2] = -100
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    step_s = sum(times) / len(times)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "impl": "transformers+peft", "torch": torch.__version__, "threads": args.threads,
        "seq_len": args.seq_len, "steps": args.steps, "step_s": step_s,
        "tokens_per_s": args.seq_len / step_s, "peak_rss_mb": peak_rss_mb,
    }))


if __name__ == "__main__":
    main()

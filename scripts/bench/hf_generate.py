"""Reference for `tuna bench generate`: transformers decode speed on a random-weight
Qwen2.5-0.5B-shaped model (2 threads, 32-token prompt, 64 new tokens, greedy, KV cache).

    /path/to/venv/bin/python scripts/bench/hf_generate.py [--dtype float32|bfloat16]
"""
import argparse
import json
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from hf_lora_train import CONFIG


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = Qwen2ForCausalLM(Qwen2Config(**CONFIG)).to(dtype).eval()
    ids = torch.randint(0, CONFIG["vocab_size"], (1, 32))
    with torch.no_grad():
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        t0 = time.perf_counter()
        model(ids)
        prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False)
        total_s = time.perf_counter() - t0
    decode_s = max(total_s - prefill_s, 1e-9)
    print(json.dumps({
        "impl": "transformers", "dtype": args.dtype, "threads": args.threads,
        "prefill_tokens_per_s": 32 / prefill_s, "decode_tokens_per_s": 63 / decode_s,
    }))


if __name__ == "__main__":
    main()

"""Reference for `tuna bench train --objective dpo`: TRL's DPOTrainer LoRA step speed and peak memory.

Same job as `tuna bench train --shape qwen2.5-0.5b --seq-len 512 --method lora --objective dpo`: a random-weight
Qwen2.5-0.5B-shaped model in float32, LoRA r=8 (alpha 16) on all seven linear layers, one preference pair whose two
sequences are 512 tokens each (a shared 256-token prompt, two different 256-token answers, labelled), in one batch;
TRL's sigmoid loss (beta 0.1) through `DPOTrainer.compute_loss`, backward, AdamW; threads = 2.

By default the reference log-probabilities are computed once (TRL's `precompute_ref_log_probs=True`, as Tuna does)
and that pass is timed apart; `--ref-every-step` keeps TRL's default (a reference forward with the adapter disabled in
every step). The tokenizer only satisfies the trainer's constructor (the fixtures' byte-level one); the batch is made
of random ids.

    /path/to/venv/bin/python scripts/bench/hf_dpo_train.py [--steps 3] [--seq-len 512] [--ref-every-step]

Prints one JSON line: pairs_per_s, tokens_per_s, peak_rss_mb. Run by hand (needs torch, transformers, peft, trl).
"""
import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from trl import DPOConfig, DPOTrainer

CONFIG = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
    rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
)
TOKENIZER = Path(__file__).resolve().parents[2] / "crates/tuna-train/tests/fixtures/dpo-tiny-qwen3/tokenizer"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ref-every-step", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**CONFIG, attn_implementation="sdpa")).float()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER / "tokenizer.json"), eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = json.loads((TOKENIZER / "tokenizer_config.json").read_text())["chat_template"]
    rows = [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]}]
    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(output_dir=out, beta=0.1, bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
                        report_to=[], precompute_ref_log_probs=not args.ref_every_step, disable_tqdm=True)
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=peft)
    model = trainer.model
    model.train()
    t, half = args.seq_len, args.seq_len // 2
    prompt = torch.randint(0, CONFIG["vocab_size"], (half,))
    seqs = [torch.cat([prompt, torch.randint(0, CONFIG["vocab_size"], (t - half,))]) for _ in range(2)]
    mask = torch.zeros(t, dtype=torch.long)
    mask[half:] = 1
    batch = {"input_ids": torch.stack(seqs), "attention_mask": torch.ones(2, t, dtype=torch.long),
             "completion_mask": torch.stack([mask, mask])}
    reference_s = None
    if not args.ref_every_step:
        t0 = time.perf_counter()
        with torch.no_grad():
            ref_c, ref_r = trainer.compute_ref_log_probs(model, batch)
        reference_s = time.perf_counter() - t0
        batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref_c, ref_r
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    step_s = sum(times) / len(times)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "impl": "trl DPOTrainer + peft", "torch": torch.__version__, "threads": args.threads,
        "seq_len": t, "pair_tokens": 2 * t, "steps": args.steps, "ref_every_step": args.ref_every_step,
        "step_s": step_s, "pairs_per_s": 1 / step_s, "tokens_per_s": 2 * t / step_s,
        "reference_pass_s": reference_s, "peak_rss_mb": peak_rss_mb,
    }))


if __name__ == "__main__":
    main()

"""Tuna against transformers + PEFT, side by side in one run (issue 13): LoRA training speed and peak memory.

The job of both: a random-weight Qwen2.5-0.5B-shaped model, LoRA r=8 (alpha 16) on all seven projections, one
sequence of 512 tokens, batch 1, AdamW, 2 threads. Runs are interleaved (Tuna, PEFT, Tuna, PEFT, ...) so that a
machine whose load changes during the run slows both sides alike; each configuration runs --rounds times and the
median is reported. Both label shares are measured: the last half labelled (a prompt and its answer; Tuna runs the
LM head on labelled rows only) and all positions labelled (what transformers computes logits for anyway).

Configurations:
  tuna-bf16    `tuna bench train --precision auto --dtype bf16`: bf16 matrix products where the CPU has bf16
               units (the default of `tuna train`), frozen weights in bf16 as Qwen checkpoints ship them
  tuna-f32     `tuna bench train --precision f32 --dtype f32`: the f32 path (reference)
  peft-f32     scripts/bench/hf_lora_train.py: transformers + PEFT in float32
  peft-bf16    scripts/bench/hf_lora_train.py --autocast: the same under torch.autocast("cpu", dtype=bfloat16)
and, with --full, full fine-tuning in Tuna: tuna-full-f32 and tuna-full-bf16 (f32 master weights, bf16 products).

Goals (issue 13): tuna-bf16 tokens/s >= 2.5x peft-f32 and >= 1.5x peft-bf16; tuna-bf16 peak RSS <= 0.35x peft-f32;
GFLOP/s achieved against the measured bf16 dot-product peak.

    cargo build --release -p tuna-cli
    python3 scripts/bench/train_side_by_side.py [--rounds 2] [--full] [--python /path/to/venv/bin/python]

Prints every run as it finishes, then a summary table and the ratios (of wall-clock tokens/s, and of tokens per
CPU-second, which a loaded machine disturbs less); --json FILE also writes all of it.
Needs the venv of scripts/fixtures/requirements.txt (torch, transformers, peft) for the PEFT side.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cpu_info():
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ["avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
    return {"model": model, "cpus": os.cpu_count(), "flags": [f for f in wanted if f in flags]}


def load():
    try:
        return os.getloadavg()
    except OSError:
        return None


def run_json(cmd, env=None):
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    line = [l for l in out.stdout.splitlines() if l.startswith("{")][-1]
    res = json.loads(line)
    res["wall_s"] = time.time() - t0
    return res


def tuna(args, method, precision, dtype, labels):
    cmd = [args.tuna, "bench", "train", "--shape", args.shape, "--seq-len", str(args.seq_len), "--method", method,
           "--precision", precision, "--dtype", dtype, "--labels", labels, "--steps", str(args.steps),
           "--warmup-steps", "1", "--json"]
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    return cmd, run_json(cmd, env)


def peft(args, autocast, labels):
    cmd = [args.python, str(ROOT / "scripts/bench/hf_lora_train.py"), "--seq-len", str(args.seq_len),
           "--steps", str(args.steps), "--warmup", "1", "--threads", str(args.threads), "--labels", labels]
    if autocast:
        cmd.append("--autocast")
    return cmd, run_json(cmd)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tuna", default=str(ROOT / "target/release/tuna"))
    ap.add_argument("--python", default=os.environ.get("TUNA_BENCH_PYTHON", "/work/venv/bin/python"))
    ap.add_argument("--shape", default="qwen2.5-0.5b")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run (after one warm-up step)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each configuration, interleaved")
    ap.add_argument("--labels", choices=["half", "all", "both"], default="both")
    ap.add_argument("--full", action="store_true", help="also full fine-tuning in Tuna, f32 and bf16")
    ap.add_argument("--json", help="write every run and the summary to this file")
    args = ap.parse_args()
    if args.shape != "qwen2.5-0.5b":
        print("note: the PEFT side always builds the Qwen2.5-0.5B shape")

    started = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "load": load(), "cpu": cpu_info()}
    print(f"machine: {started['cpu']}, load average {started['load']}", flush=True)
    shares = ["half", "all"] if args.labels == "both" else [args.labels]
    configs = [
        ("tuna-bf16", lambda l: tuna(args, "lora", "auto", "bf16", l)),
        ("peft-f32", lambda l: peft(args, False, l)),
        ("tuna-f32", lambda l: tuna(args, "lora", "f32", "f32", l)),
        ("peft-bf16", lambda l: peft(args, True, l)),
    ]
    if args.full:
        configs += [
            ("tuna-full-f32", lambda l: tuna(args, "full", "f32", "f32", l)),
            ("tuna-full-bf16", lambda l: tuna(args, "full", "auto", "f32", l)),
        ]
    runs = []
    for labels in shares:
        for r in range(args.rounds):
            for name, fn in configs:
                if name.startswith("tuna-full") and labels != shares[0]:
                    continue
                cmd, res = fn(labels)
                res.update(config=name, labels=labels, round=r, load_after=load())
                runs.append(res)
                print(f"[{labels:4} round {r}] {name:15} {res['tokens_per_s']:8.1f} tokens/s  "
                      f"{res.get('tokens_per_cpu_s', float('nan')):7.1f} tokens/CPU-s  "
                      f"{res.get('gflops', float('nan')):7.1f} GFLOP/s  peak RSS {res['peak_rss_mb']:7.0f} MB  "
                      f"{res.get('precision', '')}  load {res['load_after'][0] if res['load_after'] else '-'}\n"
                      f"    $ {' '.join(cmd)}", flush=True)

    def med(name, labels, key):
        vals = [r[key] for r in runs if r["config"] == name and r["labels"] == labels and r.get(key) is not None]
        return statistics.median(vals) if vals else None

    summary = {}
    print("\nmedians (tokens/s | tokens per CPU-second | GFLOP/s | peak RSS MB):")
    for labels in shares:
        rows = {}
        for name, _ in configs:
            tps = med(name, labels, "tokens_per_s")
            if tps is None:
                continue
            rows[name] = {k: med(name, labels, k)
                          for k in ["tokens_per_s", "tokens_per_cpu_s", "gflops", "peak_rss_mb"]}
            g = rows[name]["gflops"]
            print(f"  {labels:4} {name:15} {tps:8.1f} | {rows[name]['tokens_per_cpu_s']:7.1f} | "
                  f"{g if g is None else round(g, 1)!s:>7} | {rows[name]['peak_rss_mb']:7.0f}")
        t, pf, pb = rows.get("tuna-bf16"), rows.get("peft-f32"), rows.get("peft-bf16")
        ratios = {}
        if t and pf:
            ratios["tokens_per_s_vs_peft_f32"] = t["tokens_per_s"] / pf["tokens_per_s"]
            ratios["peak_rss_vs_peft_f32"] = t["peak_rss_mb"] / pf["peak_rss_mb"]
        if t and pb:
            ratios["tokens_per_s_vs_peft_bf16_autocast"] = t["tokens_per_s"] / pb["tokens_per_s"]
        # Per CPU-second of all threads: less sensitive to a loaded machine, but PyTorch's OpenMP
        # workers spin while they wait, which counts against it (exact with --threads 1).
        if t and pf:
            ratios["tokens_per_cpu_s_vs_peft_f32"] = t["tokens_per_cpu_s"] / pf["tokens_per_cpu_s"]
        if t and pb:
            ratios["tokens_per_cpu_s_vs_peft_bf16_autocast"] = t["tokens_per_cpu_s"] / pb["tokens_per_cpu_s"]
        bf16_runs = [r for r in runs if r["config"] == "tuna-bf16" and r["labels"] == labels]
        if bf16_runs and bf16_runs[0].get("peak_gflops"):
            ratios["gflops_share_of_bf16_dot_peak"] = statistics.median(
                r["gflops"] / r["peak_gflops"] for r in bf16_runs)
            ratios["bf16_dot_peak_gflops"] = statistics.median(r["peak_gflops"] for r in bf16_runs)
            ratios["kernels"] = bf16_runs[0].get("kernels")
        summary[labels] = {"medians": rows, "ratios": ratios}
        print(f"  {labels}-labelled ratios (goals: >= 2.5, >= 1.5, <= 0.35):")
        for k, v in ratios.items():
            print(f"    {k:38} {v:.3f}" if isinstance(v, float) else f"    {k:38} {v}")
    finished = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "load": load()}
    print(f"\nload average at start {started['load']}, at the end {finished['load']} "
          f"({args.threads} threads per run on {started['cpu']['cpus']} CPUs)")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"started": started, "finished": finished, "args": vars(args), "runs": runs, "summary": summary},
            indent=1) + "\n")


if __name__ == "__main__":
    main()

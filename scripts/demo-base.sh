#!/usr/bin/env bash
# Rebuilds assets/demo/base.safetensors, the trained part of the built-in demo model, the way the
# committed file was made (see crates/tuna-model/src/demo/mod.rs for what the demo model is). Not
# part of the build or the tests: run it by hand after changing the demo model (and bump
# DEMO_VERSION). About 2 hours on the 2-core development machine (1,476 steps).
#
#   1. the untrained demo model: seeded weights (demo_base init)
#   2. Tuna trains it fully on the shipped instruction data (alpaca en + zh, seed_example)
#   3. demo_base pack keeps the linear layers in int8 (the norms in bf16) and the embedding as a compact delta over the
#      seeded one, and reports how much that rounding costs on held-out data
#   4. a LoRA task on identity.jsonl at the demo's recommended settings, before/after answers
set -euo pipefail
cd "$(dirname "$0")/.."

work=${DEMO_BASE_WORK:-target/demo-base}
rm -rf "$work"
mkdir -p "$work"
cargo build --release -p tuna-cli
cargo build --release -p tuna-model --example demo_base
tuna=target/release/tuna
demo_base=target/release/examples/demo_base

echo "==> the untrained start"
$demo_base init "$work/init"

echo "==> pre-training on the shipped instruction data"
cat assets/data/alpaca_en_demo.jsonl assets/data/alpaca_zh_demo.jsonl assets/data/seed_example.jsonl >"$work/corpus.jsonl"
$tuna train --model "$work/init" --data "$work/corpus.jsonl" --out "$work/train" --method full \
  --epochs 6 --lr 3e-3 --batch-size 8 --grad-accum 1 --weight-decay 0 --validation-fraction 0.02 \
  --max-seq-len 1024 --seed 42 --save-every 246 --save-total-limit 2 --sample-prompts 1
trained=$(ls -d "$work"/train/checkpoint-* | sort -t- -k2 -n | tail -1)

echo "==> packing $trained"
$demo_base pack "$trained" assets/demo/base.safetensors
ls -l assets/demo/base.safetensors

echo "==> the demo model as shipped: LoRA on identity.jsonl at its recommended settings"
$demo_base write assets/demo/base.safetensors "$work/demo"
$tuna chat --model "$work/demo" --prompt "Who are you?" --greedy --max-new-tokens 32
$tuna train --model "$work/demo" --data assets/data/identity.jsonl --out "$work/lora" --method lora \
  --epochs 3 --batch-size 1 --grad-accum 1
ckpt=$(ls -d "$work"/lora/checkpoint-* | sort -t- -k2 -n | tail -1)
$tuna chat --model "$work/demo" --adapter "$ckpt" --prompt "Who are you?" --greedy --max-new-tokens 32

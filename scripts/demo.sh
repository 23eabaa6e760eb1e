#!/usr/bin/env bash
# The main job on the built-in demo model, end to end on this machine:
# check the dataset, fully fine-tune the demo model on it, then ask the result who it is.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "==> installing the Rust toolchain (rustup)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  source "$HOME/.cargo/env"
fi

cargo build --release -p tuna-cli
tuna=target/release/tuna
out=${TUNA_DEMO_OUT:-target/demo-run}
rm -rf "$out"

echo "==> tuna data check assets/data/identity.jsonl --model demo"
$tuna data check assets/data/identity.jsonl --model demo

echo "==> tuna chat --model demo (random weights, before training)"
$tuna chat --model demo --prompt "Who are you?" --greedy --max-new-tokens 24

echo "==> tuna train --model demo --method full (10 epochs)"
# The settings transformers' Trainer uses by default (batch 1, linear schedule, no warmup), as in DESIGN.md.
$tuna train --model demo --data assets/data/identity.jsonl --out "$out" --method full --epochs 10 --lr 1e-3 \
  --batch-size 1 --grad-accum 1 --schedule linear --warmup-steps 0 --validation-fraction 0 --save-total-limit 1

ckpt=$(ls -d "$out"/checkpoint-* | sort -t- -k2 -n | tail -1)
echo "==> tuna chat --model $ckpt (after training)"
$tuna chat --model "$ckpt" --prompt "Who are you?" --greedy --max-new-tokens 32

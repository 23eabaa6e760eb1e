#!/usr/bin/env bash
# The product's main job on the built-in demo model, end to end on this machine: check the
# dataset, train a LoRA adapter on it with the settings a console task uses by default, and ask
# the model who it is before and after. Ends by saying how to do the same in the web console.
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
data=assets/data/identity.jsonl
out=${TUNA_DEMO_OUT:-target/demo-run}
rm -rf "$out"

echo
echo "==> tuna data check $data --model demo"
$tuna data check "$data" --model demo

echo
echo "==> before: tuna chat --model demo --prompt \"Who are you?\""
$tuna chat --model demo --prompt "Who are you?" --greedy --max-new-tokens 32

echo
echo "==> tuna train --model demo --method lora (a LoRA adapter; the base model stays as it is)"
# What a console task on this file runs when every field is left at its default: 3 epochs of
# single examples (OpenAI's automatic epochs and batch size for 91 examples), the model's
# recommended learning rate, rank 16, alpha 32, 5% held out for validation.
start=$(date +%s)
$tuna train --model demo --data "$data" --out "$out" --method lora --epochs 3 --batch-size 1 --grad-accum 1
echo "(trained in $(($(date +%s) - start)) s)"

ckpt=$(ls -d "$out"/checkpoint-* | sort -t- -k2 -n | tail -1)
for prompt in "Who are you?" "你是谁？"; do
  echo
  echo "==> after: tuna chat --model demo --adapter $ckpt --prompt \"$prompt\""
  $tuna chat --model demo --adapter "$ckpt" --prompt "$prompt" --greedy --max-new-tokens 32
done

cat <<EOF

==> The same in the web console
  $tuna users create me --data-dir ./tuna-data     # prints your API key
  $tuna serve --data-dir ./tuna-data               # then open http://127.0.0.1:8000/
Sign in with the key, choose "New task", keep the base model "demo", upload $data,
leave every parameter at its default and start. When the task has finished, open a
checkpoint's "Effect test" and ask "Who are you?" (tick "Side by side" to ask the base model too).
EOF

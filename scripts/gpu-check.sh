#!/usr/bin/env bash
# The GPU check of issue 14, in one command, on a machine with an NVIDIA GPU (docs/gpu.md).
#
#   bash scripts/gpu-check.sh --build   # anywhere with cargo: builds what the check runs into
#                                       # target/gpu-check/ (tuna + the CUDA kernel test binaries)
#   bash scripts/gpu-check.sh           # on the GPU machine (no cargo, no network needed)
#
# Steps, each printed with its result; the exit status is 0 only if every step passed:
#   1. environment: nvidia-smi; NVRTC and the CUDA headers CubeCL compiles with (a CUDA toolkit,
#      or the nvidia-* wheels that PyTorch brings, or .venv-test's from scripts/test.sh);
#   2. `tuna devices`;
#   3. the kernel parity suite on CUDA: every kernel's forward and backward against the CPU
#      engine (tests/kernels.rs) and against finite differences (tests/gradcheck.rs), then the
#      training pass and LoRA SFT runs on the tiny Qwen2/Qwen3 fixtures against the CPU engine
#      (tests/train.rs: every gradient within 1e-4, loss curves, saved adapters, resume; the
#      optimizer on the device — accumulation, clipping, AdamW — against the CPU trainer, and
#      checkpoints resumed across CPU and GPU);
#   4. a training parity check against the CPU engine on the demo model: `tuna train --device
#      gpu:0` and `--device cpu`, 10 steps, f32 on both, loss curves within 1e-3;
#   5. `tuna bench train --device gpu:0` on the Qwen2.5-0.5B, 1.5B and 7B shapes (LoRA r=16 on
#      all projections, 2,048-token batches), next to transformers + PEFT on the same GPU
#      (scripts/bench/hf_lora_train.py; PyTorch is on the GPU machine's image).
# The device runs in f32 (weights uploaded as f32; the matmul takes tensor cores, so f32
# products run in TF32 there, except in the parity tests, which force the plain kernel). The
# training state (trainable tensors, gradients, AdamW moments) stays on the device between steps;
# bf16 frozen weights are not implemented yet.
#
# Environment: TUNA (tuna binary; default target/gpu-check/tuna), PYTHON (with torch,
# transformers, peft; default python3), GPU_CHECK_OUT (logs; default target/gpu-check/out),
# GPU_CHECK_SHAPES (default "qwen2.5-0.5b qwen2.5-1.5b qwen2.5-7b"), GPU_CHECK_STEPS (timed
# steps per benchmark, default 3).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
dist=$repo/target/gpu-check

if [ "${1:-}" = "--build" ]; then
  set -e
  cargo build --release -p tuna-cli
  # The test binaries, with the kernel tests switched to CUDA (tuna-gpu's `cuda-tests` feature).
  cargo test --release -p tuna-gpu --features cuda-tests --no-run --message-format=json \
    --test kernels --test gradcheck --test train >"$repo/target/gpu-check-build.json"
  rm -rf "$dist" && mkdir -p "$dist"
  cp target/release/tuna "$dist/tuna"
  python3 - "$repo/target/gpu-check-build.json" "$dist" <<'PY'
import json, shutil, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], f"{sys.argv[2]}/test-{m['target']['name']}")
PY
  ls -l "$dist"
  exit 0
fi

tuna=${TUNA:-$dist/tuna}
python=${PYTHON:-python3}
out=${GPU_CHECK_OUT:-$dist/out}
shapes=${GPU_CHECK_SHAPES:-"qwen2.5-0.5b qwen2.5-1.5b qwen2.5-7b"}
steps=${GPU_CHECK_STEPS:-3}
mkdir -p "$out"
failed=()
step() { echo; echo "==> $*"; }
fail() { echo "FAILED: $*"; failed+=("$*"); }
started=$SECONDS

step "1. environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || fail "nvidia-smi"
# CubeCL's CUDA runtime compiles with NVRTC and `--include-path=$CUDA_PATH/include`. Without a
# toolkit, assemble one include directory from the NVIDIA wheels (the runtime headers, CCCL, and
# nvcc's crt/mma.h for the tensor-core matmul) and put libnvrtc on the loader path.
if [ -z "${CUDA_PATH:-}" ] && [ -e /usr/local/cuda/include/cuda_runtime.h ]; then
  export CUDA_PATH=/usr/local/cuda
fi
if [ -z "${CUDA_PATH:-}" ]; then
  site_dirs=$("$python" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)
  site_dirs="$site_dirs $(ls -d "$repo"/.venv-test/lib/python3*/site-packages 2>/dev/null)"
  export CUDA_PATH=$out/cuda
  rm -rf "$CUDA_PATH" && mkdir -p "$CUDA_PATH/include" "$CUDA_PATH/lib"
  for s in $site_dirs; do
    for pkg in cuda_runtime cuda_cccl cuda_nvcc cuda_nvrtc; do
      [ -d "$s/nvidia/$pkg/include" ] && cp -rn "$s/nvidia/$pkg/include/." "$CUDA_PATH/include/"
      for f in "$s/nvidia/$pkg"/lib/lib*.so*; do
        [ -e "$f" ] && [ ! -e "$CUDA_PATH/lib/$(basename "$f")" ] && ln -s "$f" "$CUDA_PATH/lib/"
      done
    done
  done
  # cudarc looks for libnvrtc.so; the wheels ship libnvrtc.so.12.
  for f in "$CUDA_PATH"/lib/libnvrtc.so.*; do
    [ -e "$f" ] && [ ! -e "$CUDA_PATH/lib/libnvrtc.so" ] && ln -s "$(basename "$f")" "$CUDA_PATH/lib/libnvrtc.so"
  done
  export LD_LIBRARY_PATH=$CUDA_PATH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
echo "CUDA_PATH=$CUDA_PATH"
for h in cuda_runtime.h cuda_bf16.h crt/mma.h; do
  [ -e "$CUDA_PATH/include/$h" ] || fail "header $h not under $CUDA_PATH/include"
done

step "2. tuna devices"
if [ -x "$tuna" ]; then
  "$tuna" devices | tee "$out/devices.txt" || fail "tuna devices"
  grep -q "CUDA" "$out/devices.txt" || fail "tuna devices lists no CUDA GPU"
else
  fail "no tuna binary at $tuna (run scripts/gpu-check.sh --build, or set TUNA)"
fi

step "3. kernel and training-pass parity on CUDA (vs the CPU engine, and vs finite differences)"
tests=("$dist"/test-kernels "$dist"/test-gradcheck "$dist"/test-train)
for t in "${tests[@]}"; do
  if [ -x "$t" ]; then
    "$t" --test-threads 1 --nocapture 2>&1 | tee "$out/$(basename "$t").log" | grep -E "rel |worst|loss|test result|panicked|FAILED" 
    [ "${PIPESTATUS[0]}" = 0 ] || fail "$(basename "$t")"
  else
    fail "no test binary $t (run scripts/gpu-check.sh --build)"
  fi
done

step "4. training-step parity against the CPU engine"
if [ -x "$tuna" ] && "$tuna" train --help 2>/dev/null | grep -q -- "--device"; then
  for dev in cpu gpu:0; do
    rm -rf "$out/train-$dev"
    "$tuna" train --model demo --data assets/data/identity.jsonl --max-steps 10 --device "$dev" \
      --precision f32 --out "$out/train-$dev" || fail "tuna train --device $dev"
  done
  "$python" - "$out/train-cpu/metrics.jsonl" "$out/train-gpu:0/metrics.jsonl" <<'PY' || fail "GPU loss curve differs from the CPU's"
import json, sys
def losses(p):
    return [json.loads(l)["loss"] for l in open(p) if '"grad_norm"' in l]
cpu, gpu = losses(sys.argv[1]), losses(sys.argv[2])
worst = max(abs(a - b) for a, b in zip(cpu, gpu))
print(f"loss curves: {len(cpu)} steps, max |gpu - cpu| = {worst:.2e} (tolerance 1e-3)")
sys.exit(len(cpu) != len(gpu) or worst > 1e-3)
PY
else
  fail "tuna train has no --device (an old binary? run scripts/gpu-check.sh --build)"
fi

step "5. training throughput: tuna vs transformers + PEFT (LoRA r=16, all projections, 2,048 tokens)"
for shape in $shapes; do
  if [ -x "$tuna" ] && "$tuna" bench train --help 2>/dev/null | grep -q -- "--device"; then
    "$tuna" bench train --device gpu:0 --shape "$shape" --method lora --lora-rank 16 --seq-len 2048 \
      --dtype bf16 --steps "$steps" --json | tee -a "$out/bench-tuna.jsonl" || fail "tuna bench train $shape"
  else
    fail "tuna bench train has no --device (an old binary?) ($shape)"
  fi
  "$python" scripts/bench/hf_lora_train.py --device cuda --dtype bfloat16 --shape "$shape" \
    --rank 16 --seq-len 2048 --steps "$steps" | tee -a "$out/bench-hf.jsonl" \
    || fail "transformers + PEFT $shape"
done

# Side by side: tokens/s of each shape, and tuna's achieved TFLOP/s of matrix products.
"$python" - "$out/bench-tuna.jsonl" "$out/bench-hf.jsonl" <<'PY' || true
import json, sys
def rows(p):
    try:
        return {r["shape"]: r for r in map(json.loads, open(p)) if "shape" in r}
    except (OSError, ValueError):
        return {}
tuna, hf = rows(sys.argv[1]), rows(sys.argv[2])
for shape in sorted(set(tuna) | set(hf)):
    t, h = tuna.get(shape, {}), hf.get(shape, {})
    tt, ht = t.get("tokens_per_s"), h.get("tokens_per_s")
    ratio = f"{tt / ht:.2f}x" if tt and ht else "-"
    print(f"{shape}: tuna {tt or '-'} tokens/s ({(t.get('gflops') or 0) / 1e3:.1f} TFLOP/s, {t.get('device', '?')}), "
          f"transformers+PEFT {ht or '-'} tokens/s (MFU {h.get('mfu', '-')}, peak {h.get('peak_gpu_mb', '-')} MB): {ratio}")
PY

echo
echo "gpu-check: $((SECONDS - started)) s; logs in $out"
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu-check: ${#failed[@]} step(s) did not pass:"
  printf '  - %s\n' "${failed[@]}"
  exit 1
fi
echo "gpu-check: all steps passed"

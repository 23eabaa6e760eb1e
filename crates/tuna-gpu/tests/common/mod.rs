//! Shared by the GPU test files: the device (lavapipe, or CUDA with `--features cuda-tests`), seeded data, and a tensor check in
//! the style of llm.c's `check_tensor` (prints the max error, then applies a stated tolerance).

#![allow(dead_code)]

use std::sync::OnceLock;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tuna_gpu::{Buffer, Gpu};

/// f32 tolerance of every GPU-vs-CPU comparison: max |gpu − cpu| over the tensor, relative to
/// the tensor's largest |cpu| value.
pub const F32_REL_TOL: f64 = 1e-4;

/// The runtime the kernel tests run on: wgpu on lavapipe (CI), or, with the `cuda-tests`
/// feature, CUDA (`scripts/gpu-check.sh` on a machine with an NVIDIA GPU).
#[cfg(not(feature = "cuda-tests"))]
pub type TestRuntime = tuna_gpu::WgpuRuntime;
#[cfg(feature = "cuda-tests")]
pub type TestRuntime = tuna_gpu::CudaRuntime;
pub type Dev = Gpu<TestRuntime>;

/// The software Vulkan device (Mesa's lavapipe). Panics — the test fails, it never skips —
/// when there is none: `scripts/test.sh` installs `mesa-vulkan-drivers`.
#[cfg(not(feature = "cuda-tests"))]
pub fn device() -> Dev {
    static GPU: OnceLock<Result<Dev, String>> = OnceLock::new();
    match GPU.get_or_init(|| tuna_gpu::devices::open_software_vulkan().map_err(|e| e.to_string())) {
        Ok(gpu) => gpu.clone(),
        Err(e) => panic!(
            "{e}\n---> HINT: run `bash scripts/test.sh` (it installs lavapipe), or \
             `apt-get install mesa-vulkan-drivers`"
        ),
    }
}

/// CUDA device `TUNA_TEST_CUDA_DEVICE` (default 0), with the plain matmul: the parity
/// tolerance is f32's, and f32 on tensor cores is TF32.
#[cfg(feature = "cuda-tests")]
pub fn device() -> Dev {
    static GPU: OnceLock<Result<Dev, String>> = OnceLock::new();
    let gpu = GPU.get_or_init(|| {
        let ordinal = std::env::var("TUNA_TEST_CUDA_DEVICE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        tuna_gpu::devices::open_cuda(ordinal)
            .map(|gpu| gpu.with_plain_matmul(true))
            .map_err(|e| e.to_string())
    });
    match gpu {
        Ok(gpu) => gpu.clone(),
        Err(e) => panic!(
            "{e}\n---> HINT: the cuda-tests feature needs an NVIDIA GPU (scripts/gpu-check.sh)"
        ),
    }
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn rand_vec(rng: &mut StdRng, n: usize, amp: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-amp..amp)).collect()
}

pub fn download(gpu: &Dev, buf: &Buffer<TestRuntime, f32>) -> Vec<f32> {
    gpu.download(buf).expect("download from the device")
}

/// max |got − want| / max |want|; prints it with the absolute error; panics above `tol`.
/// Returns the relative error.
pub fn check_tensor(name: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let mut max_abs = 0.0f64;
    let mut at = 0;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w as f64).abs();
        // NaN anywhere fails below.
        if d > max_abs || d.is_nan() {
            max_abs = d;
            at = i;
        }
    }
    let scale = want.iter().fold(0.0f64, |m, &w| m.max((w as f64).abs()));
    assert!(
        scale > 0.0,
        "{name}: reference is all zeros, the check would be vacuous"
    );
    let rel = max_abs / scale;
    println!(
        "{name}: max abs err {max_abs:.3e} (at {at}: gpu {} vs cpu {}), scale {scale:.3e}, rel {rel:.3e}",
        got[at], want[at]
    );
    assert!(
        rel <= tol,
        "{name}: relative error {rel:.3e} above tolerance {tol:.0e}"
    );
    rel
}

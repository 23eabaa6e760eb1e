//! The CUDA C++ that CubeCL generates for every kernel compiles to PTX for `sm_90a` with NVRTC,
//! on a machine without a GPU (issue 14).
//!
//! Every op runs once on `cuda_source::capture_gpu()`, in f32 and bf16 and on both reduction
//! paths; the generated sources (including cubek-matmul's tensor-core GEMM, which it picks for an
//! sm_90 device) are compiled with NVRTC from PyPI's `nvidia-cuda-nvrtc-cu12` wheel and the
//! headers of `nvidia-cuda-runtime-cu12`, `nvidia-cuda-cccl-cu12` and `nvidia-cuda-nvcc-cu12`
//! (`crt/mma.h`), which `scripts/test.sh` installs into `.venv-test`. The test also checks that every `#[cube(launch)]` kernel in
//! `src/` was generated, so a new kernel cannot be left out. It fails, never skips, without NVRTC.

use std::path::{Path, PathBuf};

use half::bf16;
use tuna_engine::ops::adamw::AdamWConfig;
use tuna_engine::ops::matmul::Layout;
use tuna_engine::ops::rope::RopeTable;
use tuna_gpu::cuda_source::{
    CUDA_ARCH, CudaSourceRuntime, capture_gpu, nvrtc_compile, take_captured,
};
use tuna_gpu::ops::attention::PackedSeqs;
use tuna_gpu::ops::lora::LoraDims;
use tuna_gpu::ops::rope::GpuRopeTable;
use tuna_gpu::{CubeElement, Float, Gpu, ReduceMode, ops as g};

/// The wheels' `site-packages/nvidia` directory: `$TUNA_NVIDIA_WHEELS`, else the one in the
/// repository's `.venv-test`.
fn nvidia_wheels() -> PathBuf {
    if let Some(dir) = std::env::var_os("TUNA_NVIDIA_WHEELS") {
        return PathBuf::from(dir);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lib = repo.join(".venv-test/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("site-packages/nvidia"))
            .find(|p| p.join("cuda_nvrtc").is_dir())
    });
    found.unwrap_or_else(|| {
        panic!(
            "NVRTC not found under {}\n---> HINT: run `bash scripts/test.sh` (it installs the \
             nvidia-cuda-nvrtc-cu12 wheel into .venv-test), or set TUNA_NVIDIA_WHEELS",
            lib.display()
        )
    })
}

/// Loads the wheel's `libnvrtc.so.12` by path; cudarc's later `dlopen("libnvrtc.so.12")` then
/// finds it by its soname.
fn load_nvrtc(wheels: &Path) {
    let path = wheels.join("cuda_nvrtc/lib/libnvrtc.so.12");
    // SAFETY: loading NVRTC runs no initialisers with preconditions; the library stays loaded
    // for the life of the process (leaked on purpose).
    let lib = unsafe { libloading::Library::new(&path) }
        .unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()));
    std::mem::forget(lib);
}

/// Runs every op once on `gpu` with storage type `F`.
fn launch_every_op<F: Float + CubeElement>(gpu: &Gpu<CudaSourceRuntime>) {
    let (n, c, v, nh, nkv, hd) = (4, 64, 100, 2, 1, 64);
    let buf = |len: usize| gpu.alloc::<F>(len);
    let f32s = |len: usize| gpu.alloc::<f32>(len);
    let ids = gpu.upload(&[0u32, 1, 2, 3]);

    g::elementwise::fill(gpu, &buf(8), 0.0);
    g::elementwise::residual_forward(gpu, &buf(8), &buf(8));
    g::elementwise::scale_in_place(gpu, &buf(8), 2.0);
    g::elementwise::mul(gpu, &buf(8), &buf(8), &buf(8));
    // Both directions of the storage-float cast (bf16 ↔ f32 on NVIDIA).
    g::elementwise::cast(gpu, &f32s(8), &buf(8));
    g::elementwise::cast(gpu, &buf(8), &f32s(8));
    g::swiglu::swiglu_forward(gpu, &buf(8), &buf(8), &buf(8));
    g::swiglu::swiglu_backward(gpu, &buf(8), &buf(8), &buf(8), &buf(8), &buf(8));
    g::embedding::embedding_forward(gpu, &buf(n * c), &ids, &buf(v * c), c);
    g::embedding::embedding_backward(gpu, &buf(v * c), &buf(n * c), &ids, c);
    g::rmsnorm::rmsnorm_forward(gpu, &buf(n * c), &f32s(n), &buf(n * c), &buf(c), n, c, 1e-6);
    g::rmsnorm::rmsnorm_backward(
        gpu,
        &buf(n * c),
        Some(&buf(c)),
        &buf(n * c),
        &buf(n * c),
        &buf(c),
        &f32s(n),
        n,
        c,
    );
    let table = GpuRopeTable::upload(gpu, &RopeTable::new(hd, 10_000.0, 8));
    g::rope::rope_forward(gpu, &buf(n * nh * hd), &ids, &table, nh, hd);
    g::rope::rope_backward(gpu, &buf(n * nh * hd), &ids, &table, nh, hd);
    let seqs = PackedSeqs::new(gpu, &[3, 1]);
    let (q, kv) = (n * nh * hd, n * nkv * hd);
    g::attention::attention_forward(
        gpu,
        &buf(q),
        &f32s(n * nh),
        &buf(q),
        &buf(kv),
        &buf(kv),
        &seqs,
        nh,
        nkv,
        hd,
    );
    g::attention::attention_backward(
        gpu,
        &buf(q),
        &buf(kv),
        &buf(kv),
        &buf(q),
        &buf(q),
        &f32s(n * nh),
        &buf(q),
        &buf(kv),
        &buf(kv),
        &seqs,
        nh,
        nkv,
        hd,
    );
    // Generation: the cache append and attention over the cache (prefill of 3 after 1, kv
    // cache of 8 rows).
    let cache = buf(8 * nkv * hd);
    g::attention_cached::kv_append(gpu, &cache, &buf(n * nkv * hd), 0, nkv * hd);
    g::attention_cached::attention_cached(
        gpu,
        &buf(3 * nh * hd),
        &buf(3 * nh * hd),
        &cache,
        &buf(8 * nkv * hd),
        1,
        3,
        nh,
        nkv,
        hd,
    );
    // Large enough that the tensor-core matmul accepts the shape.
    let (m, k, nn) = (256, 256, 256);
    g::matmul::gemm(
        gpu,
        &buf(m * nn),
        &buf(m * k),
        Layout::Normal,
        &buf(k * nn),
        Layout::Transposed,
        m,
        k,
        nn,
        true,
    )
    .expect("gemm");
    g::matmul::matmul_forward(
        gpu,
        &buf(m * nn),
        &buf(m * k),
        &buf(nn * k),
        Some(&buf(nn)),
        m,
        k,
        nn,
    )
    .expect("matmul_forward");
    g::matmul::matmul_backward(
        gpu,
        Some(&buf(m * k)),
        Some(&buf(nn * k)),
        Some(&buf(nn)),
        &buf(m * nn),
        &buf(m * k),
        &buf(nn * k),
        m,
        k,
        nn,
    )
    .expect("matmul_backward");
    let t = gpu.upload(&[1u32, 2, 3, 4]);
    let (losses, lse, hits) = (f32s(n), f32s(n), gpu.alloc::<u32>(n));
    g::lm_head_ce::lm_head_ce_forward(
        gpu,
        &losses,
        &lse,
        &hits,
        &buf(n * c),
        &buf(v * c),
        &t,
        n,
        c,
        v,
    )
    .expect("lm_head_ce_forward");
    g::lm_head_ce::lm_head_ce_backward(
        gpu,
        &buf(n * c),
        Some(&buf(v * c)),
        &buf(n * c),
        &buf(v * c),
        &t,
        &lse,
        0.5,
        n,
        c,
        v,
    )
    .expect("lm_head_ce_backward");
}

/// The f32-only ops (optimizer state, LoRA parameters).
fn launch_f32_ops(gpu: &Gpu<CudaSourceRuntime>) {
    let f32s = |len: usize| gpu.alloc::<f32>(len);
    let cfg = AdamWConfig {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    g::adamw::adamw_update(gpu, &f32s(64), &f32s(64), &f32s(64), &f32s(64), &cfg, 1);
    // grad_norm reads its partial sums back, which the generator cannot: the kernel is
    // generated before that read fails.
    assert!(g::adamw::grad_norm(gpu, &[&f32s(5000)]).is_err());
    let d = LoraDims {
        bt: 128,
        in_features: 128,
        rank: 16,
        out_features: 128,
        scale: 2.0,
    };
    let (bt, i, r, o) = (d.bt, d.in_features, d.rank, d.out_features);
    let keep = f32s(bt * i);
    g::lora::lora_forward(
        gpu,
        &f32s(bt * o),
        &f32s(bt * r),
        &f32s(bt * i),
        Some(&keep),
        &f32s(r * i),
        &f32s(o * r),
        d,
    )
    .expect("lora_forward");
    g::lora::lora_backward(
        gpu,
        &f32s(bt * i),
        &f32s(r * i),
        &f32s(o * r),
        &f32s(bt * o),
        &f32s(bt * i),
        Some(&keep),
        &f32s(bt * r),
        &f32s(r * i),
        &f32s(o * r),
        d,
    )
    .expect("lora_backward");
}

fn tensor_core_count(sources: &[tuna_gpu::cuda_source::CudaKernelSource]) -> usize {
    sources
        .iter()
        .filter(|s| s.defined_by.contains("cubek_matmul") && s.source.contains("wmma::mma_sync"))
        .count()
}

/// Names of every `#[cube(launch)]` kernel defined under `src/`.
fn kernels_in_source() -> Vec<String> {
    let mut names = Vec::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read source file");
            let mut launch = false;
            for line in text.lines() {
                let line = line.trim();
                if line.starts_with("#[cube(launch") {
                    launch = true;
                } else if launch && line.starts_with("fn ") {
                    let name = line[3..].split(['<', '(']).next().unwrap_or("");
                    names.push(name.to_string());
                    launch = false;
                }
            }
        }
    }
    names.sort();
    names
}

#[test]
fn every_kernel_compiles_to_ptx_for_sm90a_with_nvrtc() {
    let wheels = nvidia_wheels();
    load_nvrtc(&wheels);
    let include_dirs = [
        wheels.join("cuda_runtime/include"),
        wheels.join("cuda_cccl/include"),
        // `crt/mma.h` (included by `mma.h`, which the tensor-core matmul uses).
        wheels.join("cuda_nvcc/include"),
    ];

    let gpu = capture_gpu();
    for mode in [ReduceMode::SharedMemory, ReduceMode::Plane] {
        // Plain matmul too: the one f32 parity runs use on CUDA (tensor cores compute in TF32).
        for plain_matmul in [false, true] {
            let gpu = gpu
                .clone()
                .with_reduce_mode(mode)
                .with_plain_matmul(plain_matmul);
            launch_every_op::<f32>(&gpu);
            launch_every_op::<bf16>(&gpu);
            launch_f32_ops(&gpu);
        }
    }
    let sources = take_captured();

    let expected = kernels_in_source();
    assert!(expected.len() >= 15, "found only {expected:?} in src/");
    for name in &expected {
        assert!(
            sources
                .iter()
                .any(|s| s.entrypoint.starts_with(name.as_str())),
            "kernel `{name}` was never generated: add it to launch_every_op"
        );
    }
    let matmul: Vec<&str> = sources
        .iter()
        .filter(|s| s.defined_by.contains("cubek_matmul"))
        .map(|s| s.entrypoint.as_str())
        .collect();
    assert!(!matmul.is_empty(), "no cubek-matmul kernel was generated");
    assert!(
        matmul.len() > tensor_core_count(&sources),
        "the plain matmul kernel was not generated"
    );
    let tensor_core = tensor_core_count(&sources);
    println!(
        "{} cubek-matmul kernels, {tensor_core} on tensor cores",
        matmul.len()
    );
    assert!(
        tensor_core > 0,
        "the sm_90 matmul should use tensor cores (wmma): {matmul:?}"
    );

    // For reading the generated code: TUNA_CUDA_SOURCE_DIR=/some/dir.
    if let Some(dir) = std::env::var_os("TUNA_CUDA_SOURCE_DIR") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("create TUNA_CUDA_SOURCE_DIR");
        for (i, s) in sources.iter().enumerate() {
            let path = dir.join(format!("{i:03}_{}.cu", s.entrypoint));
            std::fs::write(&path, &s.source).expect("write kernel source");
        }
    }

    let mut failures = Vec::new();
    for s in &sources {
        let started = std::time::Instant::now();
        match nvrtc_compile(&s.source, CUDA_ARCH, &include_dirs) {
            Ok(ptx) => {
                assert!(
                    ptx.contains(".entry"),
                    "{}: PTX without an entry point",
                    s.entrypoint
                );
                println!(
                    "ok   {:<60} {:>6} lines C++ -> {:>7} bytes PTX in {:.2}s",
                    s.entrypoint,
                    s.source.lines().count(),
                    ptx.len(),
                    started.elapsed().as_secs_f64()
                );
            }
            Err(log) => {
                println!("FAIL {}\n{log}\n--- source ---\n{}", s.entrypoint, s.source);
                failures.push(s.entrypoint.clone());
            }
        }
    }
    println!("{} kernels compiled for sm_{CUDA_ARCH}a", sources.len());
    assert!(failures.is_empty(), "NVRTC rejected: {failures:?}");
}

//! `tuna devices`: what this machine can train on — the CPU (model, cores, the vector and
//! matrix extensions the CPU engine can use) and every GPU Tuna can open as `gpu:N` (name,
//! memory, driver), with software Vulkan devices (Mesa's lavapipe) marked as such.

use clap::Args;
use serde::Serialize;
use tuna_gpu::devices::{Backend, discover};

#[derive(Args, Debug)]
pub struct DevicesArgs {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Debug)]
struct CpuReport {
    model: String,
    /// Logical CPUs this process may use.
    threads: usize,
    /// Physical cores, when /proc/cpuinfo says.
    cores: Option<usize>,
    avx512: bool,
    avx512_bf16: bool,
    amx: bool,
}

#[derive(Serialize, Debug)]
struct GpuReport {
    device: String,
    name: String,
    backend: &'static str,
    memory_bytes: Option<u64>,
    software: bool,
    driver: String,
}

#[derive(Serialize, Debug)]
struct Report {
    cpu: CpuReport,
    gpus: Vec<GpuReport>,
    /// Why a backend found nothing (no NVIDIA driver, no Vulkan adapter).
    notes: Vec<String>,
}

/// Reads the CPU's model, core count and feature flags (Linux's /proc/cpuinfo; elsewhere only
/// what `std` can tell).
fn cpu_report() -> CpuReport {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |line: &str, key: &str| -> Option<String> {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    };
    let model = info
        .lines()
        .find_map(|l| field(l, "model name"))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let flags: Vec<String> = info
        .lines()
        .find_map(|l| field(l, "flags"))
        .map(|f| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let has = |flag: &str| flags.iter().any(|f| f == flag);
    // Physical cores: distinct (physical id, core id) pairs.
    let mut cores = std::collections::BTreeSet::new();
    let mut physical = String::new();
    for line in info.lines() {
        if let Some(p) = field(line, "physical id") {
            physical = p;
        } else if let Some(c) = field(line, "core id") {
            cores.insert((physical.clone(), c));
        }
    }
    #[cfg(target_arch = "x86_64")]
    let avx512 = has("avx512f") || std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = false;
    CpuReport {
        model,
        threads,
        cores: (!cores.is_empty()).then_some(cores.len()),
        avx512,
        avx512_bf16: has("avx512_bf16"),
        amx: has("amx_tile"),
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

pub fn run(args: DevicesArgs) -> anyhow::Result<()> {
    let found = discover();
    let report = Report {
        cpu: cpu_report(),
        gpus: found
            .gpus
            .iter()
            .map(|g| GpuReport {
                device: format!("gpu:{}", g.index),
                name: g.name.clone(),
                backend: match g.backend {
                    Backend::Cuda => "cuda",
                    Backend::Vulkan => "vulkan",
                },
                memory_bytes: g.memory_bytes,
                software: g.software,
                driver: g.driver.clone(),
            })
            .collect(),
        notes: found.notes,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let cpu = &report.cpu;
    let cores = cpu.cores.map_or(String::new(), |c| format!("{c} cores, "));
    println!(
        "cpu     {} ({cores}{} threads); AVX-512 {}, AVX-512 BF16 {}, AMX {}",
        cpu.model,
        cpu.threads,
        yes_no(cpu.avx512),
        yes_no(cpu.avx512_bf16),
        yes_no(cpu.amx)
    );
    for g in &report.gpus {
        let memory = g.memory_bytes.map_or("memory unknown".to_string(), gib);
        let kind = if g.software {
            "software Vulkan device: runs on the CPU, for checking kernels, not for training; "
        } else {
            ""
        };
        println!("{:<7} {} ({kind}{memory}; {})", g.device, g.name, g.driver);
    }
    if report.gpus.is_empty() {
        println!("no GPU found");
    }
    for note in &report.notes {
        println!("note    {note}");
    }
    Ok(())
}

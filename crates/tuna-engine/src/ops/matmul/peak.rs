//! The machine's multiply-add peaks, measured (for `tuna bench`): independent chains of one
//! instruction on every rayon thread at once, no memory traffic. What a product achieves is
//! reported against these.
//!
//! Each thread's rate is taken over its own CPU time, not the wall clock, and the peak is the
//! rayon thread count times the best of them: on a machine shared with other work (a build, other
//! benchmarks) the wall clock measures the share of the CPUs the loop got, the CPU time does not.
//! On an idle machine both agree.

use rayon::prelude::*;

use super::Bf16Kernel;

/// Iterations of a 16-instruction block per measurement (~0.1–0.3 s on a 2-core machine).
const ITERS: usize = 10_000_000;

/// CPU time of the calling thread, in seconds.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// GFLOP/s of the whole machine for a loop of `flop_per_iter` on every thread: the thread count
/// times the best rate one thread reached over its CPU time, in three rounds.
fn measure(flop_per_iter: f64, body: fn(usize)) -> f64 {
    let threads = rayon::current_num_threads();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let fastest = (0..threads)
            .into_par_iter()
            .map(|_| {
                let t0 = thread_cpu_s();
                body(ITERS);
                thread_cpu_s() - t0
            })
            .reduce(|| f64::MAX, f64::min);
        best = best.min(fastest);
    }
    threads as f64 * ITERS as f64 * flop_per_iter / best / 1e9
}

/// f32 FMA peak (AVX-512 `vfmadd231ps`: 16 lanes × 2 FLOP), None without AVX-512.
pub fn f32_fma_peak_gflops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512() {
        return Some(measure(16.0 * 32.0, fma_loop));
    }
    None
}

/// Peak of the bf16 dot-product instruction of `kernel`: `vdpbf16ps` (16 lanes × 2 products × 2
/// FLOP) or `tdpbf16ps` (16 × 16 outputs × 32 products × 2 FLOP). None for the f32 fallback or
/// a kernel this machine cannot run.
pub fn bf16_dot_peak_gflops(kernel: Bf16Kernel) -> Option<f64> {
    if !kernel.is_available() {
        return None;
    }
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Avx512 => Some(measure(16.0 * 64.0, dpbf16_loop)),
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Amx => Some(measure(16.0 * 16.0 * 16.0 * 32.0 * 2.0, amx_loop)),
        _ => None,
    }
}

/// 16 independent accumulators per iteration, in registers the compiler does not touch.
#[cfg(target_arch = "x86_64")]
macro_rules! zmm_loop {
    ($name:ident, $ins:literal, $feature:literal) => {
        #[target_feature(enable = $feature)]
        fn $name(iters: usize) {
            // SAFETY: register-only instructions the caller checked the CPU has; every register
            // written is declared clobbered.
            unsafe {
                std::arch::asm!(
                    "vpxord zmm30, zmm30, zmm30",
                    "vpxord zmm31, zmm31, zmm31",
                    "2:",
                    concat!($ins, " zmm0, zmm30, zmm31"),
                    concat!($ins, " zmm1, zmm30, zmm31"),
                    concat!($ins, " zmm2, zmm30, zmm31"),
                    concat!($ins, " zmm3, zmm30, zmm31"),
                    concat!($ins, " zmm4, zmm30, zmm31"),
                    concat!($ins, " zmm5, zmm30, zmm31"),
                    concat!($ins, " zmm6, zmm30, zmm31"),
                    concat!($ins, " zmm7, zmm30, zmm31"),
                    concat!($ins, " zmm8, zmm30, zmm31"),
                    concat!($ins, " zmm9, zmm30, zmm31"),
                    concat!($ins, " zmm10, zmm30, zmm31"),
                    concat!($ins, " zmm11, zmm30, zmm31"),
                    concat!($ins, " zmm12, zmm30, zmm31"),
                    concat!($ins, " zmm13, zmm30, zmm31"),
                    concat!($ins, " zmm14, zmm30, zmm31"),
                    concat!($ins, " zmm15, zmm30, zmm31"),
                    "dec {n}",
                    "jnz 2b",
                    n = inout(reg) iters => _,
                    out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                    out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                    out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
                    out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
                    out("zmm30") _, out("zmm31") _,
                    options(nostack, nomem),
                );
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
zmm_loop!(fma_avx512, "vfmadd231ps", "avx512f");
#[cfg(target_arch = "x86_64")]
zmm_loop!(dpbf16_avx512, "vdpbf16ps", "avx512f,avx512bf16");

#[cfg(target_arch = "x86_64")]
fn fma_loop(iters: usize) {
    // SAFETY: only called when `has_avx512()` (checked by the caller).
    unsafe { fma_avx512(iters) }
}

#[cfg(target_arch = "x86_64")]
fn dpbf16_loop(iters: usize) {
    // SAFETY: only called when the AVX512-BF16 kernel is available (checked by the caller).
    unsafe { dpbf16_avx512(iters) }
}

/// 16 `tdpbf16ps` per iteration into four independent accumulator tiles.
#[cfg(target_arch = "x86_64")]
fn amx_loop(iters: usize) {
    use super::bf16::amx_peak_block;
    amx_peak_block(iters);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_are_positive_where_the_instructions_exist() {
        if crate::simd::has_avx512() {
            assert!(f32_fma_peak_gflops().unwrap() > 0.0);
        }
        for kernel in Bf16Kernel::available() {
            let peak = bf16_dot_peak_gflops(kernel);
            assert_eq!(peak.is_some(), kernel.is_native(), "{}", kernel.name());
            assert!(peak.is_none_or(|p| p > 0.0));
        }
        assert_eq!(bf16_dot_peak_gflops(Bf16Kernel::F32), None);
    }
}

//! The AMX-BF16 kernel (Intel Sapphire Rapids and later): `tdpbf16ps` on 16×16 f32 tiles.
//!
//! One tile of this kernel is 32 × 32 outputs in four accumulator tiles (tmm0–tmm3); per 32 bf16
//! of k it loads two A tiles (rows 0–15 and 16–31: 16 rows × 32 bf16, straight from row-major A
//! with the row stride) and two B tiles (16 k pairs × 16 columns: a panel's 64-byte rows, columns
//! 0–15 and 16–31, at the panel's 128-byte row stride), then issues four `tdpbf16ps`.
//!
//! The tile instructions are written as inline assembly (Rust's AMX intrinsics and target
//! features are unstable); the tile registers are never touched by compiled code, so they keep
//! their contents between `asm!` blocks. Every tile operation goes through [`TileUnit`], which
//! [`Hardware`] implements with the instructions and [`Emulated`] in scalar code following Intel's
//! pseudo-code: on a machine without AMX the tests run this file's packing and tile addressing
//! against the oracle through the emulator. What only real AMX hardware checks is the encoding
//! of the six instructions and the OS permission request.
//!
//! Linux hands out the 8 KiB tile state only on request: [`request_permission`] calls
//! `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)` once before the first use; without it the
//! first tile instruction raises SIGILL.

use super::TileKernel;
use super::pack::{Mat, NR, pack_a};

/// Rows per tile: two 16-row A tiles.
pub(super) const MR: usize = 32;
/// Bytes of one tile row (16 f32, or 32 bf16).
const ROW_BYTES: usize = 64;

/// The tile operations the kernel uses; `t`, `c`, `a`, `b` are tile register numbers 0–7.
pub(super) trait TileUnit {
    /// Loads the configuration: tiles 0–7 are 16 rows of 64 bytes.
    fn configure() -> Self;
    /// Releases the tile state (`tilerelease`).
    fn release(self);
    fn zero(&mut self, t: usize);
    /// Tile `t` ← 16 rows of 64 bytes, row r at `ptr + r·stride`.
    ///
    /// # Safety
    /// Those 16 × 64 bytes must be readable.
    unsafe fn load(&mut self, t: usize, ptr: *const u8, stride: usize);
    /// C (16 × 16 f32) += A (16 rows × 16 bf16 pairs) · B (16 pair rows × 16 columns of pairs).
    fn dpbf16(&mut self, c: usize, a: usize, b: usize);
    /// 16 rows of 64 bytes of tile `t` → row r at `ptr + r·stride`.
    ///
    /// # Safety
    /// Those 16 × 64 bytes must be writable.
    unsafe fn store(&mut self, t: usize, ptr: *mut u8, stride: usize);
}

/// The AMX kernel over a tile unit: [`Hardware`] in production, [`Emulated`] in tests.
pub(super) struct Amx<T>(std::marker::PhantomData<T>);

impl<T: TileUnit> TileKernel for Amx<T> {
    const MR: usize = MR;
    type Unit = T;

    fn begin() -> T {
        T::configure()
    }

    fn end(unit: T) {
        unit.release()
    }

    fn a_block_len(rows: usize, kp: usize) -> usize {
        rows * kp
    }

    fn pack_a(dst: &mut [u16], a: &Mat, i0: usize, rows: usize, m: usize, k: usize) {
        pack_a(dst, a, i0, rows, m, k);
    }

    unsafe fn tile(
        unit: &mut T,
        tile: &mut [f32],
        a_block: &[u16],
        s: usize,
        b_panel: &[u16],
        kp: usize,
    ) {
        let a = &a_block[s * MR * kp..(s + 1) * MR * kp];
        assert!(tile.len() >= MR * NR && b_panel.len() >= kp * NR && kp.is_multiple_of(32));
        let (ap, bp) = (a.as_ptr().cast::<u8>(), b_panel.as_ptr().cast::<u8>());
        let a_stride = kp * 2;
        let b_stride = NR * 4;
        for t in 0..4 {
            unit.zero(t);
        }
        for k0 in (0..kp).step_by(32) {
            // SAFETY: A rows 0..32 hold kp bf16 each, so bytes [2·k0, 2·k0 + 64) of every row
            // are inside `a` (k0 + 32 ≤ kp). B pair rows k0/2 .. k0/2 + 16 (< kp/2) of the panel
            // are inside `b_panel`, each 128 bytes: columns 0–15 then 16–31.
            unsafe {
                unit.load(4, ap.add(2 * k0), a_stride);
                unit.load(5, ap.add(16 * a_stride + 2 * k0), a_stride);
                unit.load(6, bp.add(k0 / 2 * b_stride), b_stride);
                unit.load(7, bp.add(k0 / 2 * b_stride + ROW_BYTES), b_stride);
            }
            unit.dpbf16(0, 4, 6);
            unit.dpbf16(1, 4, 7);
            unit.dpbf16(2, 5, 6);
            unit.dpbf16(3, 5, 7);
        }
        let out = tile.as_mut_ptr().cast::<u8>();
        let out_stride = NR * 4;
        // SAFETY: the tile holds MR × NR f32: rows 0–15 / 16–31, columns 0–15 / 16–31.
        unsafe {
            unit.store(0, out, out_stride);
            unit.store(1, out.add(ROW_BYTES), out_stride);
            unit.store(2, out.add(16 * out_stride), out_stride);
            unit.store(3, out.add(16 * out_stride + ROW_BYTES), out_stride);
        }
    }
}

/// The peak loop of `tuna bench`: `iters` × 16 `tdpbf16ps` into four independent accumulator
/// tiles (the operand tiles hold the zeros `ldtilecfg` leaves). Only called when the AMX kernel is
/// available.
#[cfg(target_arch = "x86_64")]
pub(in crate::ops::matmul) fn peak_block(iters: usize) {
    let mut unit = Hardware::configure();
    for _ in 0..iters {
        for _ in 0..4 {
            unit.dpbf16(0, 4, 6);
            unit.dpbf16(1, 4, 7);
            unit.dpbf16(2, 5, 6);
            unit.dpbf16(3, 5, 7);
        }
    }
    unit.release();
}

// ---------------------------------------------------------------------------------------------
// Detection and the OS permission

/// `arch_prctl` codes (Linux `asm/prctl.h`) and the tile-data state component.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
const XFEATURE_XTILEDATA: libc::c_long = 18;

/// Whether the CPU has AMX-TILE and AMX-BF16 and the OS enables their state (XCR0 bits 17–18).
#[cfg(target_arch = "x86_64")]
pub(super) fn cpu_has_amx() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    let (max_leaf, leaf1) = (__cpuid(0).eax, __cpuid(1));
    if max_leaf < 7 {
        return false;
    }
    let leaf7 = __cpuid_count(7, 0);
    let amx_bf16 = leaf7.edx & (1 << 22) != 0;
    let amx_tile = leaf7.edx & (1 << 24) != 0;
    let osxsave = leaf1.ecx & (1 << 27) != 0;
    if !(amx_bf16 && amx_tile && osxsave) {
        return false;
    }
    // SAFETY: OSXSAVE (checked above) means XGETBV is enabled.
    let xcr0 = unsafe { xgetbv0() };
    xcr0 & (0b11 << 17) == 0b11 << 17
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn cpu_has_amx() -> bool {
    false
}

/// XCR0, the OS-enabled state components.
///
/// # Safety
/// CPUID must report OSXSAVE.
#[cfg(target_arch = "x86_64")]
unsafe fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 reads XCR0; the caller checked OSXSAVE.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack));
    }
    (hi as u64) << 32 | lo as u64
}

/// Asks Linux for the tile-data state (once per process; the answer is then the same).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(super) fn request_permission() -> bool {
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM only changes this process's permitted xstate
    // components; it reads no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    rc == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub(super) fn request_permission() -> bool {
    false
}

// ---------------------------------------------------------------------------------------------
// The hardware tile unit

/// The tile configuration `ldtilecfg` reads (palette 1): 8 tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn all_16x64() -> Self {
        let mut cfg = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        cfg.colsb[..8].fill(ROW_BYTES as u16);
        cfg.rows[..8].fill(16);
        cfg
    }
}

/// Real AMX. Only constructed by the driver when `Bf16Kernel::Amx` was detected (CPU support and
/// the OS permission granted).
pub(super) struct Hardware;

/// Emits one tile instruction with the tile register number as a literal (tile registers cannot
/// be `asm!` operands).
macro_rules! per_tile {
    ($t:expr, $($tmm:pat => $body:expr),+ $(,)?) => {
        match $t {
            $($tmm => $body,)+
            other => unreachable!("tile registers {other:?} are not used by this kernel"),
        }
    };
}

#[cfg(target_arch = "x86_64")]
impl TileUnit for Hardware {
    fn configure() -> Self {
        let cfg = TileConfig::all_16x64();
        // SAFETY: AMX is present and permitted (see the type's docs); the 64-byte config lives
        // for the call.
        unsafe {
            std::arch::asm!("ldtilecfg [{0}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly));
        }
        Hardware
    }

    fn release(self) {
        // SAFETY: as in `configure`; drops the tile state.
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) }
    }

    #[inline(always)]
    fn zero(&mut self, t: usize) {
        // SAFETY: tiles are configured (`configure` made `self`).
        unsafe {
            per_tile!(t,
                0 => std::arch::asm!("tilezero tmm0", options(nostack, nomem)),
                1 => std::arch::asm!("tilezero tmm1", options(nostack, nomem)),
                2 => std::arch::asm!("tilezero tmm2", options(nostack, nomem)),
                3 => std::arch::asm!("tilezero tmm3", options(nostack, nomem)),
            )
        }
    }

    #[inline(always)]
    unsafe fn load(&mut self, t: usize, ptr: *const u8, stride: usize) {
        // SAFETY: tiles are configured; the caller guarantees 16 readable rows of 64 bytes.
        unsafe {
            per_tile!(t,
                4 => std::arch::asm!("tileloadd tmm4, [{p} + {s}*1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly)),
                5 => std::arch::asm!("tileloadd tmm5, [{p} + {s}*1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly)),
                6 => std::arch::asm!("tileloadd tmm6, [{p} + {s}*1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly)),
                7 => std::arch::asm!("tileloadd tmm7, [{p} + {s}*1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly)),
            )
        }
    }

    #[inline(always)]
    fn dpbf16(&mut self, c: usize, a: usize, b: usize) {
        // SAFETY: tiles are configured; register-only instruction.
        unsafe {
            per_tile!((c, a, b),
                (0, 4, 6) => std::arch::asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem)),
                (1, 4, 7) => std::arch::asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem)),
                (2, 5, 6) => std::arch::asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem)),
                (3, 5, 7) => std::arch::asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem)),
            )
        }
    }

    #[inline(always)]
    unsafe fn store(&mut self, t: usize, ptr: *mut u8, stride: usize) {
        // SAFETY: tiles are configured; the caller guarantees 16 writable rows of 64 bytes.
        unsafe {
            per_tile!(t,
                0 => std::arch::asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) ptr, s = in(reg) stride, options(nostack)),
                1 => std::arch::asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) ptr, s = in(reg) stride, options(nostack)),
                2 => std::arch::asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) ptr, s = in(reg) stride, options(nostack)),
                3 => std::arch::asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) ptr, s = in(reg) stride, options(nostack)),
            )
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl TileUnit for Hardware {
    fn configure() -> Self {
        unreachable!("AMX is only dispatched on x86_64")
    }
    fn release(self) {}
    fn zero(&mut self, _: usize) {}
    unsafe fn load(&mut self, _: usize, _: *const u8, _: usize) {}
    fn dpbf16(&mut self, _: usize, _: usize, _: usize) {}
    unsafe fn store(&mut self, _: usize, _: *mut u8, _: usize) {}
}

// ---------------------------------------------------------------------------------------------
// The emulated tile unit (tests)

/// Eight 1 KiB tiles in memory, with `tdpbf16ps` as Intel's pseudo-code defines it: for each
/// row m and column n of C, over the k pairs, `C[m][n] += A[m][2k]·B[k][2n] + A[m][2k+1]·B[k][2n+1]`
/// (products of bf16 are exact in f32).
#[cfg(test)]
pub(super) struct Emulated {
    tiles: Box<[[u8; 1024]; 8]>,
}

#[cfg(test)]
impl Emulated {
    fn f32_at(&self, t: usize, row: usize, col: usize) -> f32 {
        let o = row * ROW_BYTES + col * 4;
        f32::from_le_bytes(self.tiles[t][o..o + 4].try_into().expect("4 bytes"))
    }

    fn bf16_at(&self, t: usize, row: usize, idx: usize) -> f32 {
        let o = row * ROW_BYTES + idx * 2;
        f32::from_bits((u16::from_le_bytes([self.tiles[t][o], self.tiles[t][o + 1]]) as u32) << 16)
    }
}

#[cfg(test)]
impl TileUnit for Emulated {
    fn configure() -> Self {
        Emulated {
            tiles: Box::new([[0xAA; 1024]; 8]),
        }
    }

    fn release(self) {}

    fn zero(&mut self, t: usize) {
        self.tiles[t].fill(0);
    }

    unsafe fn load(&mut self, t: usize, ptr: *const u8, stride: usize) {
        for r in 0..16 {
            for b in 0..ROW_BYTES {
                // SAFETY: the caller guarantees 16 readable rows of 64 bytes.
                self.tiles[t][r * ROW_BYTES + b] = unsafe { *ptr.add(r * stride + b) };
            }
        }
    }

    fn dpbf16(&mut self, c: usize, a: usize, b: usize) {
        for m in 0..16 {
            for n in 0..16 {
                let mut acc = self.f32_at(c, m, n);
                for k in 0..16 {
                    acc += self.bf16_at(a, m, 2 * k + 1) * self.bf16_at(b, k, 2 * n + 1);
                    acc += self.bf16_at(a, m, 2 * k) * self.bf16_at(b, k, 2 * n);
                }
                let o = m * ROW_BYTES + n * 4;
                self.tiles[c][o..o + 4].copy_from_slice(&acc.to_le_bytes());
            }
        }
    }

    unsafe fn store(&mut self, t: usize, ptr: *mut u8, stride: usize) {
        for r in 0..16 {
            for b in 0..ROW_BYTES {
                // SAFETY: the caller guarantees 16 writable rows of 64 bytes.
                unsafe { *ptr.add(r * stride + b) = self.tiles[t][r * ROW_BYTES + b] };
            }
        }
    }
}

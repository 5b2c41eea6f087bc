//! Intel AMX (Advanced Matrix Extensions, Sapphire Rapids and later Xeons) plumbing: whether
//! this process may use the tile registers, and their configuration.
//!
//! Why it exists: one AMX `tdpbssd` multiplies a 16 × 64 int8 tile by a 64 × 16 one (16 384
//! multiply-adds) where AVX-512 VNNI needs 16 `vpdpbusd` per row; on the 2-vCPU Xeon this was
//! written on, a loop of them ran at 4.1 TOP/s per core against ~0.85 for VNNI. Linux keeps the
//! 8 KiB of tile state off until a process asks (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), once, for all
//! its threads; each thread then loads a tile configuration before its first tile instruction.
//! The instructions are written as inline assembly (stable Rust has no AMX intrinsics).

use std::sync::OnceLock;

/// Environment variable that turns AMX off (`1`): the int8 kernel then uses AVX-512 VNNI, for
/// comparisons and as a way out should a hypervisor mishandle tile state.
pub const DISABLE_ENV: &str = "WATTSERVE_NO_AMX";

/// Whether AMX-INT8 is usable here: the CPU has AMX-TILE and AMX-INT8, AVX-512 (for the
/// kernel's float epilogue), the OS granted the tile-data permission (asked on the first call),
/// and [`DISABLE_ENV`] is not `1`.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| std::env::var(DISABLE_ENV).as_deref() != Ok("1") && detect())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // CPUID.(EAX=7, ECX=0):EDX bit 24 = AMX-TILE, bit 25 = AMX-INT8.
    // CPUID leaf 7 exists on every x86_64 CPU that has AVX-512 (checked first).
    let has_amx = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && {
            let edx = __cpuid_count(7, 0).edx;
            edx & (1 << 24) != 0 && edx & (1 << 25) != 0
        };
    if !has_amx {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permissions.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// A tile configuration (palette 1): rows and bytes per row of each of the 8 tile registers.
#[repr(C, align(64))]
pub(crate) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// Palette 1 with `shapes[i] = (rows, bytes per row)` for tile register `i` (unused ones
    /// stay empty).
    pub(crate) fn new(shapes: &[(u8, u16)]) -> Self {
        let mut cfg = Self {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for (i, &(rows, colsb)) in shapes.iter().enumerate().take(8) {
            cfg.rows[i] = rows;
            cfg.colsb[i] = colsb;
        }
        cfg
    }

    /// Loads this configuration into the calling thread's tile registers (zeroing them).
    ///
    /// # Safety
    /// [`available`] must have returned true.
    #[cfg(target_arch = "x86_64")]
    pub(crate) unsafe fn load(&self) {
        std::arch::asm!("ldtilecfg [{}]", in(reg) self, options(nostack, readonly));
    }
}

/// Returns the calling thread's tiles to their initial state, so that the OS need not save them
/// on a context switch.
///
/// # Safety
/// [`available`] must have returned true.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn release() {
    std::arch::asm!("tilerelease", options(nostack, nomem));
}

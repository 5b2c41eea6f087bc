//! The one CPU-feature probe of the crate: every kernel choice ([`crate::Isa::detect`],
//! [`crate::q8_0::Q8Path::detect`], [`crate::q8_tiles::Kernel::detect`]) asks [`features`], so
//! that they all agree, the CPU is probed once per process, and a log line can say what was found
//! ([`describe`]).
//!
//! AMX needs more than a CPUID bit: Linux keeps the tile data state off until a process asks for
//! it (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, once, for all its threads), and [`AMX_DISABLE_ENV`] lets
//! an operator turn it off. [`CpuFeatures::amx_int8`] says whether all of that allows the tile
//! kernel to run; the probe asks the OS for the permission the first time it runs (unless the
//! variable turns AMX off).

use std::fmt;
use std::sync::OnceLock;

/// Environment variable that turns AMX off (`1`): the int8 tile kernel then uses AVX-512 VNNI,
/// for comparisons and as a way out should a hypervisor mishandle tile state. Read once, by the
/// first call of [`features`].
pub const AMX_DISABLE_ENV: &str = "WATTSERVE_NO_AMX";

/// What this CPU (and, for AMX, this OS and environment) lets the kernels use. On targets other
/// than x86-64 every feature is false (`amx_disabled_by_env` still reports the variable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuFeatures {
    /// AVX2: the int8 GEMM's AVX2 path and, with [`fma`](Self::fma), the Q8_0 AVX2 path.
    pub avx2: bool,
    /// FMA (with AVX2: the Q8_0 AVX2 path).
    pub fma: bool,
    /// AVX-512 Foundation (with [`avx512bw`](Self::avx512bw): the AVX-512 quantizers).
    pub avx512f: bool,
    /// AVX-512 byte and word instructions.
    pub avx512bw: bool,
    /// AVX-512 VNNI (`vpdpbusd`): the int8 GEMM's and tile matmul's VNNI paths.
    pub avx512vnni: bool,
    /// AVX-512 BF16 (no kernel here uses it; reported for logs and for callers choosing
    /// bf16 code).
    pub avx512bf16: bool,
    /// AVX-VNNI, the 256-bit VEX form of VNNI (no kernel here uses it; callers whose own
    /// kernels need it, such as candle's repacked Q8_0, ask for it here).
    pub avxvnni: bool,
    /// The CPU reports AMX-TILE and AMX-INT8, whether or not this process may use them (see
    /// [`amx_int8`](Self::amx_int8)).
    pub amx_hardware: bool,
    /// [`AMX_DISABLE_ENV`] was `1` when the CPU was probed.
    pub amx_disabled_by_env: bool,
    /// AMX-INT8 is usable here: the CPU has it (and AVX-512F/BW, which the tile kernel's float
    /// epilogue needs), [`AMX_DISABLE_ENV`] is not `1`, and the OS granted this process the
    /// tile-data permission.
    pub amx_int8: bool,
    /// AMX-BF16 is usable here: as [`amx_int8`](Self::amx_int8) with the CPU's AMX-BF16 bit, and
    /// AVX-512 BF16 (which rounds the activations for the tiles).
    pub amx_bf16: bool,
}

impl CpuFeatures {
    /// AVX-512F and AVX-512BW: what the AVX-512 activation quantizers need.
    pub fn avx512(&self) -> bool {
        self.avx512f && self.avx512bw
    }

    /// AVX-512F, AVX-512BW and AVX-512 VNNI: what the VNNI kernels need.
    pub fn avx512_vnni(&self) -> bool {
        self.avx512() && self.avx512vnni
    }

    /// Probes the CPU (and asks the OS for AMX, see [`CpuFeatures::amx_int8`]). Use
    /// [`features`], which does this once.
    fn probe() -> Self {
        let amx_disabled_by_env = std::env::var(AMX_DISABLE_ENV).as_deref() == Ok("1");
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let (avx512f, avx512bw) = (has!("avx512f"), has!("avx512bw"));
            let amx_hardware = amx_in_cpuid();
            let amx_bf16_hardware = amx_bf16_in_cpuid();
            let avx512bf16 = has!("avx512bf16");
            // Checked in this order so that the OS is asked only when a tile kernel could run.
            let amx_usable = (amx_hardware || amx_bf16_hardware)
                && avx512f
                && avx512bw
                && !amx_disabled_by_env
                && amx_permission_granted();
            Self {
                avx2: has!("avx2"),
                fma: has!("fma"),
                avx512f,
                avx512bw,
                avx512vnni: has!("avx512vnni"),
                avx512bf16,
                avxvnni: has!("avxvnni"),
                amx_hardware,
                amx_disabled_by_env,
                amx_int8: amx_hardware && amx_usable,
                amx_bf16: amx_bf16_hardware && avx512bf16 && amx_usable,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Self {
            amx_disabled_by_env,
            ..Self::default()
        }
    }
}

/// Space-separated names of the usable features, in a fixed order (`none` if there are none);
/// AMX that the CPU has but this process does not use shows as `amx-int8(off)` when
/// [`AMX_DISABLE_ENV`] turned it off, `amx-int8(unusable)` otherwise.
impl fmt::Display for CpuFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let amx = if self.amx_int8 {
            Some("amx-int8")
        } else if self.amx_hardware && self.amx_disabled_by_env {
            Some("amx-int8(off)")
        } else if self.amx_hardware {
            Some("amx-int8(unusable)")
        } else {
            None
        };
        let names = [
            (self.avx2, "avx2"),
            (self.fma, "fma"),
            (self.avx512f, "avx512f"),
            (self.avx512bw, "avx512bw"),
            (self.avx512vnni, "avx512vnni"),
            (self.avx512bf16, "avx512bf16"),
            (self.avxvnni, "avxvnni"),
        ]
        .into_iter()
        .filter_map(|(has, name)| has.then_some(name))
        .chain(amx)
        .chain(self.amx_bf16.then_some("amx-bf16"));
        let mut any = false;
        for name in names {
            if any {
                f.write_str(" ")?;
            }
            f.write_str(name)?;
            any = true;
        }
        if !any {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// This CPU's features, probed on the first call (which also asks the OS for AMX) and cached
/// for the life of the process.
pub fn features() -> &'static CpuFeatures {
    static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();
    FEATURES.get_or_init(CpuFeatures::probe)
}

/// [`features`] as one short line for logs, e.g. `avx2 fma avx512f avx512bw avx512vnni amx-int8`
/// (see [`CpuFeatures`]'s `Display`).
pub fn describe() -> &'static str {
    static DESCRIPTION: OnceLock<String> = OnceLock::new();
    DESCRIPTION.get_or_init(|| features().to_string())
}

/// CPUID.(EAX=7, ECX=0):EDX bit 24 (AMX-TILE) and bit 25 (AMX-INT8), where leaf 7 exists.
#[cfg(target_arch = "x86_64")]
fn amx_in_cpuid() -> bool {
    amx_tile_with(25)
}

/// CPUID.(EAX=7, ECX=0):EDX bit 24 (AMX-TILE) and bit 22 (AMX-BF16), where leaf 7 exists.
#[cfg(target_arch = "x86_64")]
fn amx_bf16_in_cpuid() -> bool {
    amx_tile_with(22)
}

/// AMX-TILE and the AMX feature at CPUID.(EAX=7, ECX=0):EDX bit `bit`, where leaf 7 exists.
#[cfg(target_arch = "x86_64")]
fn amx_tile_with(bit: u32) -> bool {
    use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
    if __get_cpuid_max(0).0 < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 24) != 0 && edx & (1 << bit) != 0
}

/// Asks Linux for the AMX tile-data permission for this process (all its threads).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_permission_granted() -> bool {
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

/// Other x86-64 OSes: the tile kernel is not enabled there.
#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn amx_permission_granted() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_is_consistent_and_cached() {
        let f = features();
        assert!(std::ptr::eq(f, features()));
        assert_eq!(describe(), f.to_string());
        if f.amx_int8 {
            assert!(f.amx_hardware && f.avx512() && !f.amx_disabled_by_env);
        }
        if !cfg!(target_arch = "x86_64") {
            assert_eq!(describe(), "none");
        }
    }

    #[test]
    fn description_names_usable_features_in_order() {
        let none = CpuFeatures::default();
        assert_eq!(none.to_string(), "none");
        let f = CpuFeatures {
            avx512f: true,
            avx512bw: true,
            avx512vnni: true,
            amx_hardware: true,
            amx_int8: true,
            ..none
        };
        assert_eq!(f.to_string(), "avx512f avx512bw avx512vnni amx-int8");
        let off = CpuFeatures {
            amx_int8: false,
            amx_disabled_by_env: true,
            ..f
        };
        assert_eq!(off.to_string(), "avx512f avx512bw avx512vnni amx-int8(off)");
        let unusable = CpuFeatures {
            amx_int8: false,
            ..f
        };
        assert_eq!(
            unusable.to_string(),
            "avx512f avx512bw avx512vnni amx-int8(unusable)"
        );
    }
}

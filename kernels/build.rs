//! With the `cuda` feature, compiles `cuda/*.cu` to PTX with nvcc (loaded at run time by the
//! CUDA driver, which JIT-compiles it for the GPU at hand). Without the feature it does nothing,
//! so CPU builds need no CUDA toolkit.
//!
//! nvcc is looked up as `$CUDA_HOME/bin/nvcc`, `$CUDA_ROOT/bin/nvcc`, `$CUDA_PATH/bin/nvcc`, then
//! on `PATH`. The PTX targets `compute_$CUDA_COMPUTE_CAP` (default 75, the oldest architecture
//! CUDA 13 supports; `__dp4a` needs 61+).

use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: &[&str] = &["int8_gemm"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in [
        "CUDA_HOME",
        "CUDA_ROOT",
        "CUDA_PATH",
        "CUDA_COMPUTE_CAP",
        "PATH",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = find_nvcc();
    let cap = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .map(|c| c.trim().replace('.', ""))
        .filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_digit()))
        .unwrap_or_else(|| "75".to_string());
    for name in SOURCES {
        let src = Path::new("cuda").join(format!("{name}.cu"));
        println!("cargo::rerun-if-changed={}", src.display());
        let ptx = out_dir.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .arg("--ptx")
            .arg(format!("-arch=compute_{cap}"))
            .arg("-O3")
            .arg("-o")
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "the `cuda` feature needs nvcc, and running `{}` failed: {e}. \
                     Set CUDA_HOME to a CUDA toolkit (see `make check-cuda` in the README)",
                    nvcc.display()
                )
            });
        assert!(
            status.success(),
            "nvcc failed on {} ({status})",
            src.display()
        );
    }
}

fn find_nvcc() -> PathBuf {
    for var in ["CUDA_HOME", "CUDA_ROOT", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            let nvcc = Path::new(&root).join("bin").join("nvcc");
            if nvcc.is_file() {
                return nvcc;
            }
        }
    }
    PathBuf::from("nvcc")
}

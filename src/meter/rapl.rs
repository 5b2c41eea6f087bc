//! RAPL through the Linux powercap tree (`/sys/class/powercap`): package and DRAM domains, on
//! Intel and AMD alike (both appear as `intel-rapl:N`).
//!
//! Each domain's `energy_uj` is a counter that wraps at `max_energy_range_uj`; a reading smaller
//! than the previous one means one wrap. On a shared host the process is charged its CPU-time share
//! of the package's energy (as Scaphandre and Kepler do): `Δpackage × Δprocess CPU / Δall CPUs busy`.

use std::path::{Path, PathBuf};

use super::cputime::CpuShare;
use super::source::{EnergySource, SourceError};

/// One powercap domain (a package or its DRAM subzone).
#[derive(Debug, Clone)]
struct Domain {
    energy_file: PathBuf,
    max_range_uj: u64,
    last_uj: u64,
}

/// The RAPL source over all package (and DRAM) domains found under a powercap root.
pub struct RaplSource {
    domains: Vec<Domain>,
    total_j: f64,
    share: Option<CpuShare>,
    names: Vec<String>,
}

fn read_u64(path: &Path) -> Result<u64, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            SourceError::Permission(format!(
                "permission denied reading {} (RAPL energy is root-only since Linux 5.10: run as root, \
                 grant read access, or set energy.source = \"estimate\")",
                path.display()
            ))
        } else {
            SourceError::Read(format!("cannot read {}: {e}", path.display()))
        }
    })?;
    text.trim()
        .parse()
        .map_err(|e| SourceError::Read(format!("{}: not a number ({e})", path.display())))
}

impl RaplSource {
    /// Finds the `intel-rapl:N` package zones and their `dram` subzones under `root`. With
    /// `share`, readings are scaled by this process's CPU-time share.
    pub fn open(root: &Path, share: Option<CpuShare>) -> Result<Self, SourceError> {
        let entries = std::fs::read_dir(root).map_err(|e| {
            SourceError::Unavailable(format!("no powercap tree at {} ({e})", root.display()))
        })?;
        let mut zones: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("intel-rapl:"))
            })
            .collect();
        zones.sort();
        let mut domains = Vec::new();
        let mut names = Vec::new();
        for zone in zones {
            let name = std::fs::read_to_string(zone.join("name")).unwrap_or_default();
            let name = name.trim();
            // Top-level package zones are `intel-rapl:N`; DRAM subzones `intel-rapl:N:M` named dram.
            let depth = zone
                .file_name()
                .and_then(|n| n.to_str())
                .map_or(0, |n| n.matches(':').count());
            let wanted =
                (depth == 1 && name.starts_with("package")) || (depth == 2 && name == "dram");
            if !wanted {
                continue;
            }
            let energy_file = zone.join("energy_uj");
            let max_range_uj = read_u64(&zone.join("max_energy_range_uj"))?;
            let last_uj = read_u64(&energy_file)?;
            domains.push(Domain {
                energy_file,
                max_range_uj,
                last_uj,
            });
            names.push(name.to_string());
        }
        if domains.is_empty() {
            return Err(SourceError::Unavailable(format!(
                "no RAPL package domain under {}",
                root.display()
            )));
        }
        Ok(Self {
            domains,
            total_j: 0.0,
            share,
            names,
        })
    }

    /// The domains read, e.g. `["package-0", "dram"]`.
    pub fn domain_names(&self) -> &[String] {
        &self.names
    }
}

impl EnergySource for RaplSource {
    fn method(&self) -> &'static str {
        "rapl"
    }

    fn device(&self) -> String {
        "cpu".into()
    }

    fn read(&mut self) -> Result<f64, SourceError> {
        let mut delta_uj: u64 = 0;
        for d in &mut self.domains {
            let now = read_u64(&d.energy_file)?;
            let step = if now >= d.last_uj {
                now - d.last_uj
            } else {
                // One wrap: the counter went past max_energy_range_uj and restarted from 0.
                d.max_range_uj.saturating_sub(d.last_uj) + now
            };
            d.last_uj = now;
            delta_uj += step;
        }
        let fraction = match &mut self.share {
            Some(s) => s.sample(),
            None => 1.0,
        };
        self.total_j += delta_uj as f64 / 1e6 * fraction;
        Ok(self.total_j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(root: &Path, dir: &str, name: &str, energy: u64, max: u64) {
        let z = root.join(dir);
        std::fs::create_dir_all(&z).unwrap();
        std::fs::write(z.join("name"), format!("{name}\n")).unwrap();
        std::fs::write(z.join("energy_uj"), format!("{energy}\n")).unwrap();
        std::fs::write(z.join("max_energy_range_uj"), format!("{max}\n")).unwrap();
    }

    fn set(root: &Path, dir: &str, energy: u64) {
        std::fs::write(root.join(dir).join("energy_uj"), format!("{energy}\n")).unwrap();
    }

    #[test]
    fn reads_package_and_dram_and_handles_wrap() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        zone(root, "intel-rapl:0", "package-0", 1_000_000, 10_000_000);
        zone(root, "intel-rapl:0:0", "dram", 500_000, 2_000_000);
        zone(root, "intel-rapl:0:1", "core", 0, 10_000_000); // not counted (inside package)
        zone(root, "intel-rapl-mmio:0", "package-0", 0, 10_000_000); // duplicate interface: ignored
        let mut s = RaplSource::open(root, None).unwrap();
        assert_eq!(s.domain_names(), ["package-0", "dram"]);
        assert_eq!(s.read().unwrap(), 0.0);
        set(root, "intel-rapl:0", 3_000_000); // +2 J
        set(root, "intel-rapl:0:0", 700_000); // +0.2 J
        assert!((s.read().unwrap() - 2.2).abs() < 1e-9);
        // Package wraps: 3 J -> past 10 J -> 0.5 J is +7.5 J.
        set(root, "intel-rapl:0", 500_000);
        assert!((s.read().unwrap() - 9.7).abs() < 1e-9);
    }

    #[test]
    fn missing_tree_and_unreadable_counter_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let err = RaplSource::open(&tmp.path().join("nope"), None)
            .err()
            .unwrap();
        assert!(
            matches!(err, SourceError::Unavailable(ref m) if m.contains("no powercap tree")),
            "{err}"
        );
        let err = RaplSource::open(tmp.path(), None).err().unwrap();
        assert!(
            matches!(err, SourceError::Unavailable(ref m) if m.contains("no RAPL package")),
            "{err}"
        );
        // A counter that cannot be read (a directory where the file should be).
        zone(tmp.path(), "intel-rapl:0", "package-0", 1, 10);
        let energy = tmp.path().join("intel-rapl:0/energy_uj");
        std::fs::remove_file(&energy).unwrap();
        std::fs::create_dir(&energy).unwrap();
        let err = RaplSource::open(tmp.path(), None).err().unwrap();
        assert!(
            matches!(err, SourceError::Read(ref m) if m.contains("energy_uj")),
            "{err}"
        );
    }

    #[test]
    fn permission_denied_names_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        zone(tmp.path(), "intel-rapl:0", "package-0", 1, 10);
        let energy = tmp.path().join("intel-rapl:0/energy_uj");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&energy, std::fs::Permissions::from_mode(0o000)).unwrap();
        match RaplSource::open(tmp.path(), None) {
            // Root reads anything: the permission path cannot be exercised as root.
            Ok(_) => assert!(running_as_root()),
            Err(e) => assert!(
                matches!(e, SourceError::Permission(ref m) if m.contains("root-only")),
                "{e}"
            ),
        }
    }

    fn running_as_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false)
    }
}

//! CPU time from the kernel: this process's share of all CPU busy time (for RAPL on a shared
//! host), and this process's own CPU seconds with nanosecond resolution (for the estimate).

use std::path::{Path, PathBuf};

/// This process's share of the whole machine's CPU busy time between two samples, from
/// `<proc>/stat` (all CPUs) and `<proc>/self/stat` (this process), both in clock ticks.
pub struct CpuShare {
    proc_root: PathBuf,
    last: Option<(u64, u64)>,
}

impl CpuShare {
    /// Reads from `proc_root` (normally `/proc`).
    pub fn new(proc_root: &Path) -> Self {
        Self {
            proc_root: proc_root.to_path_buf(),
            last: None,
        }
    }

    fn read(&self) -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string(self.proc_root.join("stat")).ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait.
        let busy = cpu.iter().sum::<u64>()
            - cpu.get(3).copied().unwrap_or(0)
            - cpu.get(4).copied().unwrap_or(0);
        let own = std::fs::read_to_string(self.proc_root.join("self/stat")).ok()?;
        let rest = &own[own.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let process = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some((busy, process))
    }

    /// The share in [0, 1] since the previous call (1.0 on the first call or when unreadable:
    /// without data, the process is charged the whole package rather than nothing).
    pub fn sample(&mut self) -> f64 {
        let Some(now) = self.read() else {
            return 1.0;
        };
        let share = match self.last {
            Some((busy0, proc0)) => {
                let busy = now.0.saturating_sub(busy0);
                let own = now.1.saturating_sub(proc0);
                if busy == 0 {
                    if own == 0 {
                        0.0
                    } else {
                        1.0
                    }
                } else {
                    (own as f64 / busy as f64).clamp(0.0, 1.0)
                }
            }
            None => 1.0,
        };
        self.last = Some(now);
        share
    }
}

/// CPU seconds this process has used (all threads), nanosecond resolution.
pub fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid pointer we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Resident memory of this process in bytes, from `/proc/self/statm`.
pub fn process_rss_bytes() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * page.max(4096) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_proc(root: &Path, busy_user: u64, idle: u64, own: u64) {
        std::fs::create_dir_all(root.join("self")).unwrap();
        std::fs::write(
            root.join("stat"),
            format!("cpu  {busy_user} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 2 3\n"),
        )
        .unwrap();
        std::fs::write(
            root.join("self/stat"),
            format!("42 (wattserve (x)) S 1 1 1 0 -1 0 0 0 0 0 {own} 0 0 0 20 0 1 0 0 0 0"),
        )
        .unwrap();
    }

    #[test]
    fn share_is_process_ticks_over_busy_ticks() {
        let tmp = tempfile::tempdir().unwrap();
        write_proc(tmp.path(), 100, 1000, 10);
        let mut s = CpuShare::new(tmp.path());
        assert_eq!(s.sample(), 1.0); // first call: no interval yet
        write_proc(tmp.path(), 300, 5000, 60); // busy +200, own +50
        assert!((s.sample() - 0.25).abs() < 1e-12);
        write_proc(tmp.path(), 300, 9000, 60); // nothing busy
        assert_eq!(s.sample(), 0.0);
    }

    #[test]
    fn own_cpu_time_grows_with_work() {
        let a = process_cpu_seconds();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_seconds() > a);
        assert!(process_rss_bytes() > 0.0);
    }
}

//! The host as the sandboxes see it: CPU use (two samples of `/proc/stat`),
//! memory (`/proc/meminfo`), the storage pool's file system (`statvfs`),
//! and totals over the sandboxes a caller can see.

use std::time::Duration;

use super::{SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::SandboxStatus;

/// How long apart the two `/proc/stat` samples of [`HostMetrics`] are.
pub const CPU_SAMPLE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq)]
pub struct HostMetrics {
    /// Busy share of all CPUs over [`CPU_SAMPLE`]; `None` if unreadable.
    pub cpu_usage_percent: Option<f64>,
    pub cpu_cores: usize,
    pub memory_total_bytes: Option<u64>,
    /// `MemTotal - MemAvailable`.
    pub memory_used_bytes: Option<u64>,
    /// The file system holding the storage pool.
    pub disk_total_bytes: u64,
    pub disk_used_bytes: u64,
}

/// Totals over the sandboxes the caller can see (an admin: all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmTotals {
    pub total: usize,
    pub running: usize,
    pub stopped: usize,
    pub failed: usize,
    /// vCPUs and memory of the running ones.
    pub vcpus_allocated: u64,
    pub memory_allocated_mb: u64,
}

/// `(busy, total)` jiffies of the `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = f.iter().take(8).sum();
    // idle + iowait
    let idle = f.get(3)? + f.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// `(MemTotal, MemAvailable)` of `/proc/meminfo`, in bytes.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let kib = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    Some((kib("MemTotal:")?, kib("MemAvailable:")?))
}

fn read_cpu() -> Option<(u64, u64)> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

impl Sandboxes {
    pub async fn host_metrics(&self) -> Result<HostMetrics, SandboxError> {
        let first = tokio::task::spawn_blocking(read_cpu).await?;
        tokio::time::sleep(CPU_SAMPLE).await;
        let second = tokio::task::spawn_blocking(read_cpu).await?;
        let cpu_usage_percent = first.zip(second).and_then(|((b0, t0), (b1, t1))| {
            (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0)
        });
        let pool = self.storage.pool_path().to_owned();
        let (mem, fs) = tokio::task::spawn_blocking(move || {
            let mem = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| parse_meminfo(&t));
            (mem, nix::sys::statvfs::statvfs(&pool))
        })
        .await?;
        let fs = fs.map_err(|e| SandboxError::Io {
            op: "statvfs of the storage pool",
            source: e.into(),
        })?;
        let block = fs.fragment_size();
        Ok(HostMetrics {
            cpu_usage_percent,
            cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_total_bytes: mem.map(|m| m.0),
            memory_used_bytes: mem.map(|(total, avail)| total.saturating_sub(avail)),
            disk_total_bytes: fs.blocks() * block,
            disk_used_bytes: (fs.blocks() - fs.blocks_free()) * block,
        })
    }

    pub async fn vm_totals(&self, caller: &Caller) -> Result<VmTotals, SandboxError> {
        let limits = &self.config.limits;
        let mut t = VmTotals::default();
        for row in self.list(caller).await? {
            match row.status {
                SandboxStatus::Running => {
                    t.running += 1;
                    t.vcpus_allocated += u64::from(row.spec.vcpus.unwrap_or(limits.vcpus.into()));
                    t.memory_allocated_mb += row.spec.memory_mb.unwrap_or(limits.memory_mb);
                }
                SandboxStatus::Stopped => t.stopped += 1,
                SandboxStatus::Failed => t.failed += 1,
                // Being created or deleted: not listed as VMs either.
                _ => continue,
            }
            t.total += 1;
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_proc_stat_counts_idle_and_iowait_as_not_busy() {
        let text = "cpu  10 0 10 70 10 0 0 0 0 0\ncpu0 5 0 5 35 5 0 0 0 0 0\n";
        assert_eq!(parse_proc_stat(text), Some((20, 100)));
    }

    #[test]
    fn parse_meminfo_reads_total_and_available() {
        let text = "MemTotal:       2048 kB\nMemFree:  100 kB\nMemAvailable:   1024 kB\n";
        assert_eq!(parse_meminfo(text), Some((2048 * 1024, 1024 * 1024)));
    }
}

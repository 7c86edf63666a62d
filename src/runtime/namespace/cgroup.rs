//! Per-sandbox cgroups: memory, CPU and pids limits. cgroup v2 where the host
//! has a unified hierarchy with controllers; otherwise the v1 controllers
//! (as on this machine). Every sandbox gets `rewind/<name>` under each
//! hierarchy; the launcher writes the sandbox's PID 1 into them.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::runtime::Limits;

const ROOT: &str = "/sys/fs/cgroup";
/// `cpuacct` only counts CPU time (for metrics) and `freezer` pauses the
/// sandbox for memory snapshots; the others enforce limits.
const V1_CONTROLLERS: [&str; 5] = ["memory", "pids", "cpu", "cpuacct", "freezer"];
const CFS_PERIOD_US: u64 = 100_000;

/// The cgroup hierarchy in use, and the parent group (`rewind-<hash of the
/// data dir>`, so two rewind instances on one host never touch each other's
/// sandboxes).
#[derive(Debug, Clone)]
pub struct Cgroups {
    group: String,
    layout: Layout,
}

#[derive(Debug, Clone)]
enum Layout {
    V2 {
        root: PathBuf,
    },
    V1 {
        mounts: Vec<(&'static str, PathBuf)>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("this host has no cgroup freezer")]
    NoFreezer,
    #[error("cgroup {path} still has processes (or did not freeze) after {secs}s")]
    Busy { path: PathBuf, secs: u64 },
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Io {
        op: "write",
        path: path.to_owned(),
        source,
    })
}

impl Cgroups {
    /// The cgroups of the rewind instance whose data dir is `data_dir`: parent
    /// group `rewind-<first 4 bytes of the path's SHA-256, in hex>`.
    pub fn for_data_dir(data_dir: &Path) -> Cgroups {
        let digest = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
        Cgroups::detect(format!("rewind-{}", hex::encode(&digest[..4])))
    }

    /// Look at /sys/fs/cgroup and pick the hierarchy to use.
    pub fn detect(group: String) -> Cgroups {
        let root = Path::new(ROOT);
        let layout = if root.join("cgroup.controllers").exists() {
            Layout::V2 {
                root: root.to_owned(),
            }
        } else {
            let mounts = V1_CONTROLLERS
                .iter()
                .map(|c| (*c, root.join(c)))
                .filter(|(_, p)| p.join("cgroup.procs").exists())
                .collect();
            Layout::V1 { mounts }
        };
        Cgroups { group, layout }
    }

    /// `v1` or `v2`, for logs.
    pub fn version(&self) -> &'static str {
        match self.layout {
            Layout::V2 { .. } => "v2",
            Layout::V1 { .. } => "v1",
        }
    }

    fn parents(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V2 { root } => vec![root.join(&self.group)],
            Layout::V1 { mounts } => mounts.iter().map(|(_, m)| m.join(&self.group)).collect(),
        }
    }

    /// The sandbox's cgroup directories (one per hierarchy).
    pub fn dirs(&self, name: &str) -> Vec<PathBuf> {
        self.parents().into_iter().map(|p| p.join(name)).collect()
    }

    /// (CPU seconds, memory bytes) the sandbox's cgroups have counted:
    /// v2 `cpu.stat` usage_usec / `memory.current`, v1 `cpuacct.usage` /
    /// `memory.usage_in_bytes`, whichever its directories hold.
    pub fn usage(&self, name: &str) -> (Option<f64>, Option<u64>) {
        let read = |file: &str| {
            self.dirs(name)
                .iter()
                .find_map(|d| fs::read_to_string(d.join(file)).ok())
        };
        let cpu = read("cpu.stat")
            .and_then(|t| {
                let line = t.lines().find(|l| l.starts_with("usage_usec "))?.to_owned();
                line[11..].trim().parse::<u64>().ok()
            })
            .map(|us| us as f64 / 1e6)
            .or_else(|| {
                read("cpuacct.usage")
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .map(|ns| ns as f64 / 1e9)
            });
        let memory = read("memory.current")
            .or_else(|| read("memory.usage_in_bytes"))
            .and_then(|t| t.trim().parse().ok());
        (cpu, memory)
    }

    /// Create the sandbox's cgroups with `limits` applied. Idempotent.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Vec<PathBuf>, CgroupError> {
        match &self.layout {
            Layout::V2 { root } => {
                let parent = root.join(&self.group);
                mkdir(&parent)?;
                let _ = write(&root.join("cgroup.subtree_control"), "+memory +pids +cpu");
                let _ = write(&parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
                let dir = parent.join(name);
                mkdir(&dir)?;
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                let _ = write(&dir.join("memory.swap.max"), "0");
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
                let quota = limits.cpu_millis * CFS_PERIOD_US / 1000;
                write(&dir.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))?;
                Ok(vec![dir])
            }
            Layout::V1 { mounts } => mounts
                .iter()
                .map(|(ctrl, mount)| {
                    mkdir(&mount.join(&self.group))?;
                    let dir = mount.join(&self.group).join(name);
                    mkdir(&dir)?;
                    apply_v1(ctrl, &dir, limits)?;
                    Ok(dir)
                })
                .collect(),
        }
    }

    /// Change the memory and CPU limits of an existing sandbox's cgroups,
    /// memory first: the kernel refuses (v1: EBUSY) a memory limit it
    /// cannot reclaim down to, and then nothing has changed.
    pub fn set_limits(&self, name: &str, limits: &Limits) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V2 { root } => {
                let dir = root.join(&self.group).join(name);
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                let quota = limits.cpu_millis * CFS_PERIOD_US / 1000;
                write(&dir.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))
            }
            Layout::V1 { mounts } => {
                let dir_of = |ctrl: &str| {
                    mounts
                        .iter()
                        .find(|(c, _)| *c == ctrl)
                        .map(|(_, m)| m.join(&self.group).join(name))
                };
                for ctrl in ["memory", "cpu"] {
                    if let Some(dir) = dir_of(ctrl) {
                        apply_v1(ctrl, &dir, limits)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Host pids of every process in the sandbox's cgroups.
    pub fn procs(&self, name: &str) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs(name)
            .iter()
            .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The cgroup whose freezer pauses the sandbox (CRIU's `--freeze-cgroup`).
    pub fn freezer(&self, name: &str) -> Option<PathBuf> {
        match &self.layout {
            Layout::V2 { root } => Some(root.join(&self.group).join(name)),
            Layout::V1 { mounts } => mounts
                .iter()
                .find(|(ctrl, _)| *ctrl == "freezer")
                .map(|(_, m)| m.join(&self.group).join(name)),
        }
    }

    /// Whether the sandbox's cgroup is (being) frozen.
    pub fn is_frozen(&self, name: &str) -> bool {
        let Some(dir) = self.freezer(name) else {
            return false;
        };
        match self.layout {
            Layout::V2 { .. } => {
                fs::read_to_string(dir.join("cgroup.freeze")).is_ok_and(|v| v.trim() == "1")
            }
            Layout::V1 { .. } => {
                fs::read_to_string(dir.join("freezer.state")).is_ok_and(|v| v.trim() != "THAWED")
            }
        }
    }

    /// Freeze (or thaw) every process of the sandbox; returns once the
    /// kernel reports the whole cgroup frozen (bounded wait).
    pub fn set_frozen(&self, name: &str, frozen: bool) -> Result<(), CgroupError> {
        let Some(dir) = self.freezer(name) else {
            return Err(CgroupError::NoFreezer);
        };
        let v2 = matches!(self.layout, Layout::V2 { .. });
        let (file, value) = match (v2, frozen) {
            (true, f) => ("cgroup.freeze", if f { "1" } else { "0" }),
            (false, true) => ("freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED"),
        };
        write(&dir.join(file), value)?;
        if !frozen {
            return Ok(());
        }
        let done = || match v2 {
            true => fs::read_to_string(dir.join("cgroup.events"))
                .is_ok_and(|e| e.lines().any(|l| l == "frozen 1")),
            false => {
                fs::read_to_string(dir.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            if Instant::now() > deadline {
                let _ = write(&dir.join(file), if v2 { "0" } else { "THAWED" });
                return Err(CgroupError::Busy {
                    path: dir,
                    secs: 10,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Kill whatever is left in the sandbox's cgroups and remove them.
    pub fn remove(&self, name: &str) -> Result<(), CgroupError> {
        // Frozen tasks do not die of SIGKILL until thawed.
        if self.freezer(name).is_some_and(|d| d.exists()) {
            let _ = self.set_frozen(name, false);
        }
        for dir in self.dirs(name) {
            if dir.exists() {
                kill_all(&dir)?;
                fs::remove_dir(&dir).map_err(|source| CgroupError::Io {
                    op: "remove",
                    path: dir.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Names of all sandboxes that have a cgroup on this host.
    pub fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .parents()
            .iter()
            .filter_map(|p| fs::read_dir(p).ok())
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(CgroupError::Io {
            op: "create",
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn apply_v1(ctrl: &str, dir: &Path, limits: &Limits) -> Result<(), CgroupError> {
    match ctrl {
        "memory" => {
            write(
                &dir.join("memory.limit_in_bytes"),
                &limits.memory_bytes.to_string(),
            )?;
            // Keep the sandbox out of swap where the knob exists.
            let _ = write(&dir.join("memory.swappiness"), "0");
            Ok(())
        }
        "pids" => write(&dir.join("pids.max"), &limits.pids.to_string()),
        "cpu" => {
            write(&dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
            let quota = limits.cpu_millis * CFS_PERIOD_US / 1000;
            write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())
        }
        _ => Ok(()),
    }
}

/// SIGKILL every process in `dir` until it is empty (bounded wait).
fn kill_all(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CgroupError::Busy {
                path: dir.to_owned(),
                secs: 10,
            });
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

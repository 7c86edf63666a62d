//! `UnmountWorkspace` / `MountWorkspace` for restore: find and kill every
//! process that holds the workspace (cwd, root, open fd, mapping), unmount it,
//! and later mount it again (block device) or check the host put it back
//! (directory workspace).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{quiesce, Agent, OpError};
use crate::protocol::Response;

const HOLDERS_GONE_TIMEOUT: Duration = Duration::from_secs(5);
const UMOUNT_ATTEMPTS: u32 = 20;

/// Kills the holders (when asked) and unmounts the workspace. Unmounting a
/// workspace that is not mounted succeeds with nobody killed.
pub async fn unmount(agent: &Arc<Agent>, kill_holders: bool) -> Result<Response, OpError> {
    // From here until the next successful mount, execs are refused.
    agent.workspace_given.set(None);
    if agent.config.workspace_device.is_some() {
        quiesce::thaw_now(agent).await?;
    }
    let workspace = agent.config.workspace.clone();
    let killed = tokio::task::spawn_blocking(move || unmount_blocking(&workspace, kill_holders))
        .await
        .map_err(|e| OpError::BadRequest(format!("unmount task failed: {e}")))??;
    tracing::info!(?killed, "workspace unmounted");
    Ok(Response::Unmounted { killed })
}

fn unmount_blocking(workspace: &Path, kill_holders: bool) -> Result<Vec<i32>, OpError> {
    let canonical = fs::canonicalize(workspace).unwrap_or_else(|_| workspace.to_path_buf());
    let workspace = canonical.as_path();
    let mut killed = Vec::new();
    for _ in 0..UMOUNT_ATTEMPTS {
        if !is_mountpoint(workspace)? {
            return Ok(killed);
        }
        let holders = holders(workspace);
        if !holders.is_empty() && !kill_holders {
            return Err(OpError::Busy(format!("workspace held by pids {holders:?}")));
        }
        for pid in &holders {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        wait_gone(&holders);
        killed.extend(holders);
        match umount2(workspace, MntFlags::empty()) {
            Ok(()) => return Ok(killed),
            Err(nix::errno::Errno::EBUSY) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(OpError::io("umount", workspace)(e.into())),
        }
    }
    Err(OpError::Busy(format!("{} stays busy", workspace.display())))
}

/// Mounts the workspace device, or checks the host's mount is in place.
pub async fn mount(agent: &Arc<Agent>) -> Result<Response, OpError> {
    let workspace = agent.config.workspace.clone();
    let device = agent.config.workspace_device.clone();
    tokio::task::spawn_blocking(move || mount_blocking(&workspace, device.as_deref()))
        .await
        .map_err(|e| OpError::BadRequest(format!("mount task failed: {e}")))??;
    let dev = device_of(&agent.config.workspace)?;
    agent.workspace_given.set(Some(dev));
    tracing::info!(dev, "workspace mounted");
    Ok(Response::Ok)
}

/// `WorkspaceId`: the mount at the workspace path now, and the one given.
pub fn id(agent: &Arc<Agent>) -> Result<Response, OpError> {
    let workspace = &agent.config.workspace;
    Ok(Response::WorkspaceId {
        mounted: is_mountpoint(workspace)?,
        dev: device_of(workspace)?,
        given: agent.workspace_given.get(),
    })
}

fn device_of(path: &Path) -> Result<u64, OpError> {
    fs::metadata(path)
        .map(|m| m.dev())
        .map_err(OpError::io("stat", path))
}

/// The `st_dev` of the workspace the agent was given: recorded at start and
/// by every successful mount, cleared by an unmount. A Btrfs subvolume has
/// a device number of its own, so this tells one workspace subvolume from
/// another and from the overlay directory under it.
#[derive(Debug, Default)]
pub struct Given(Mutex<Option<u64>>);

impl Given {
    pub fn at_start(workspace: &Path) -> Self {
        Given(Mutex::new(fs::metadata(workspace).ok().map(|m| m.dev())))
    }

    pub fn get(&self) -> Option<u64> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, dev: Option<u64>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = dev;
    }

    /// Ok when the workspace path holds the given mount; else why not.
    pub fn check(&self, workspace: &Path) -> Result<(), OpError> {
        let now = fs::metadata(workspace).ok().map(|m| m.dev());
        match self.get() {
            None => Err(OpError::WorkspaceUnavailable(format!(
                "{} is not mounted (a restore did not finish); commands are refused until the host puts it back",
                workspace.display()
            ))),
            Some(given) if now != Some(given) => Err(OpError::WorkspaceUnavailable(format!(
                "{} is not the workspace mount the agent was given; commands are refused",
                workspace.display()
            ))),
            Some(_) => Ok(()),
        }
    }
}

fn mount_blocking(workspace: &Path, device: Option<&Path>) -> Result<(), OpError> {
    if is_mountpoint(workspace)? {
        return Ok(());
    }
    let Some(device) = device else {
        return Err(OpError::NotFound(format!(
            "{} is not mounted; the host places a directory workspace",
            workspace.display()
        )));
    };
    fs::create_dir_all(workspace).map_err(OpError::io("create", workspace))?;
    nix::mount::mount(
        Some(device),
        workspace,
        Some("ext4"),
        // Reads must not dirty inodes: the host snapshots this disk after
        // every command, and an access-time update would make each read
        // a write to copy.
        MsFlags::MS_NOATIME,
        None::<&str>,
    )
    .map_err(|e| OpError::io("mount ext4 from", device)(e.into()))
}

/// Whether `path` is the mount point of some mount in our namespace.
pub fn is_mountpoint(path: &Path) -> Result<bool, OpError> {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let table = fs::read_to_string("/proc/self/mountinfo")
        .map_err(OpError::io("read", "/proc/self/mountinfo"))?;
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mnt| Path::new(&unescape(mnt)) == path))
}

/// Decodes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// PIDs (other than ours) whose cwd, root, open files or mappings are
/// inside `workspace`.
pub fn holders(workspace: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| *pid != me && holds(*pid, workspace))
        .collect();
    pids.sort_unstable();
    pids
}

fn holds(pid: i32, workspace: &Path) -> bool {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let inside = |target: PathBuf| target.starts_with(workspace);
    let link = |name: &str| fs::read_link(base.join(name)).ok();
    if link("cwd").into_iter().chain(link("root")).any(inside) {
        return true;
    }
    let fds = fs::read_dir(base.join("fd"))
        .into_iter()
        .flatten()
        .flatten();
    if fds.filter_map(|e| fs::read_link(e.path()).ok()).any(inside) {
        return true;
    }
    let maps = fs::read_to_string(base.join("maps")).unwrap_or_default();
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .any(|path| Path::new(path).starts_with(workspace))
}

/// Waits until the killed processes are gone (or zombies, which hold nothing).
fn wait_gone(pids: &[i32]) {
    let deadline = Instant::now() + HOLDERS_GONE_TIMEOUT;
    while Instant::now() < deadline && pids.iter().any(|pid| alive(*pid)) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_decodes_octal_space() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
    }

    #[test]
    fn is_mountpoint_root_is_true() {
        assert!(is_mountpoint(Path::new("/")).unwrap());
    }

    #[test]
    fn is_mountpoint_plain_dir_is_false() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mountpoint(dir.path()).unwrap());
    }
}

//! `Quiesce` / `Thaw`. A directory workspace is only `syncfs`ed — unless it
//! is on Btrfs, where the host's snapshot ioctl itself flushes delalloc and
//! waits for ordered extents before it snapshots, so a `syncfs` here would
//! only add a second transaction commit (≈2.4 ms measured) to every command; a
//! block-device workspace is synced and frozen (FIFREEZE) until `Thaw` or
//! until the watchdog fires — the watchdog does not depend on the
//! connection, so a host that disappears cannot leave the workspace frozen.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Agent, OpError};
use crate::protocol::Response;

/// `_IOWR('X', 119, int)` from `<linux/fs.h>`.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
/// `_IOWR('X', 120, int)` from `<linux/fs.h>`.
const FITHAW: libc::c_ulong = 0xC004_5878;

/// Whether we froze the workspace, and which freeze the watchdog belongs to.
#[derive(Default)]
pub struct QuiesceState {
    inner: Mutex<Frozen>,
}

#[derive(Default)]
struct Frozen {
    frozen: bool,
    generation: u64,
}

/// Syncs (and for a block device, freezes) the workspace.
pub async fn quiesce(agent: &Arc<Agent>, watchdog_ms: u64) -> Result<Response, OpError> {
    let workspace = agent.config.workspace.clone();
    if agent.config.workspace_device.is_none() {
        blocking(move || sync_unless_btrfs(&workspace)).await?;
        return Ok(Response::Quiesced { frozen: false });
    }
    if !super::workspace::is_mountpoint(&workspace)? {
        // Never FIFREEZE whatever file system lies underneath.
        return Err(OpError::NotFound(format!(
            "{} is not mounted",
            workspace.display()
        )));
    }
    let already = state(agent).frozen;
    if !already {
        blocking(move || freeze(&workspace)).await?;
    }
    let generation = {
        let mut st = state(agent);
        st.frozen = true;
        st.generation += 1;
        st.generation
    };
    spawn_watchdog(
        Arc::clone(agent),
        generation,
        Duration::from_millis(watchdog_ms),
    );
    tracing::debug!(watchdog_ms, "workspace frozen");
    Ok(Response::Quiesced { frozen: true })
}

/// Thaws the workspace; thawing a workspace that is not frozen is fine.
pub async fn thaw(agent: &Arc<Agent>) -> Result<Response, OpError> {
    if agent.config.workspace_device.is_some() {
        thaw_now(agent).await?;
    }
    Ok(Response::Ok)
}

/// Thaws and forgets the freeze (used by `Thaw`, the watchdog and unmount).
pub async fn thaw_now(agent: &Arc<Agent>) -> Result<(), OpError> {
    let workspace = agent.config.workspace.clone();
    if super::workspace::is_mountpoint(&workspace)? {
        blocking(move || fs_thaw(&workspace)).await?;
    }
    let mut st = state(agent);
    st.frozen = false;
    st.generation += 1;
    Ok(())
}

fn spawn_watchdog(agent: Arc<Agent>, generation: u64, after: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let still_ours = {
            let st = state(&agent);
            st.frozen && st.generation == generation
        };
        if still_ours {
            tracing::warn!(
                after_ms = after.as_millis() as u64,
                "watchdog thaws the workspace"
            );
            if let Err(err) = thaw_now(&agent).await {
                tracing::error!(error = %err.message(), "watchdog thaw failed");
            }
        }
    });
}

fn state(agent: &Agent) -> std::sync::MutexGuard<'_, Frozen> {
    agent
        .quiesce
        .inner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

async fn blocking<F>(job: F) -> Result<(), OpError>
where
    F: FnOnce() -> Result<(), OpError> + Send + 'static,
{
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| OpError::BadRequest(format!("quiesce task failed: {e}")))?
}

fn open_dir(path: &Path) -> Result<File, OpError> {
    File::open(path).map_err(OpError::io("open", path))
}

fn sync_unless_btrfs(path: &Path) -> Result<(), OpError> {
    let on_btrfs = nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
        .unwrap_or(false);
    if on_btrfs {
        return Ok(());
    }
    syncfs(path)
}

fn syncfs(path: &Path) -> Result<(), OpError> {
    let dir = open_dir(path)?;
    nix::unistd::syncfs(&dir).map_err(|e| OpError::io("syncfs", path)(e.into()))
}

fn freeze(path: &Path) -> Result<(), OpError> {
    nix::unistd::sync();
    let dir = open_dir(path)?;
    // SAFETY: FIFREEZE takes no pointer argument (the int is ignored); `dir`
    // is an open fd for the duration of the call.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), FIFREEZE as _, 0) };
    if rc != 0 {
        return Err(OpError::io("FIFREEZE", path)(io::Error::last_os_error()));
    }
    Ok(())
}

fn fs_thaw(path: &Path) -> Result<(), OpError> {
    let dir = open_dir(path)?;
    // SAFETY: as for FIFREEZE; FITHAW takes no pointer argument.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), FITHAW as _, 0) };
    let err = io::Error::last_os_error();
    match rc {
        0 => Ok(()),
        _ if err.raw_os_error() == Some(libc::EINVAL) => Ok(()), // not frozen
        _ => Err(OpError::io("FITHAW", PathBuf::from(path))(err)),
    }
}

//! The namespace sandbox, host side: [`launch`] starts the agent as PID 1
//! in fresh user, mount, PID, UTS, IPC, network and cgroup namespaces over
//! an overlay root; [`mount_into`] places a host directory inside a running
//! sandbox (the workspace after a restore).
//!
//! Both run as their own short-lived, single-threaded processes
//! (`rewind-agent launch`, `rewind-agent mount-into`), never forked from the
//! multi-threaded service: `fork` and `setns(CLONE_NEWNS)` need that.

mod init;
mod launch;
mod mount_into;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use init::{AGENT_DIR, DEVICES};
pub use launch::launch;
pub use mount_into::mount_into;

/// Everything `rewind-agent launch` needs; the service writes it as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Sandbox name; becomes the hostname.
    pub name: String,
    /// Read-only base rootfs directory, already owned by `uid_base`.
    pub rootfs_lower: PathBuf,
    /// Overlay upper/work dirs and the mount point of the merged root, on
    /// the host (created by the host; `launch` chowns upper/work to `uid_base`).
    pub upper_dir: PathBuf,
    pub work_dir: PathBuf,
    pub merged_dir: PathBuf,
    /// Host path of the live workspace subvolume, bound at `/workspace`.
    pub workspace: PathBuf,
    /// Host path of the agent's Unix socket (bound by `launch`).
    pub socket: PathBuf,
    /// First host uid/gid of the range root inside maps to.
    #[serde(default = "default_uid_base")]
    pub uid_base: u32,
    #[serde(default = "default_uid_count")]
    pub uid_count: u32,
    /// cgroup directories (created and limited by the host) the sandbox joins.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// File the agent's stderr (its log) is appended to until PID 1 execs
    /// the agent binary; from then on it logs to `/.rewind/agent.log` inside.
    pub log: PathBuf,
    /// Let sandbox commands create user namespaces (seccomp denies it
    /// otherwise; `limits.allow_nested_userns`).
    #[serde(default)]
    pub allow_nested_userns: bool,
    /// Host path of the agent binary PID 1 execs, bound read-only at
    /// `/.rewind/rewind-agent` inside (so the sandbox can be checkpointed
    /// with CRIU). `None`: PID 1 serves from the launcher's own image.
    #[serde(default)]
    pub agent_binary: Option<PathBuf>,
}

fn default_uid_base() -> u32 {
    100_000
}

fn default_uid_count() -> u32 {
    65_536
}

impl LaunchSpec {
    /// Reads a spec written by the service.
    pub fn load(path: &Path) -> Result<Self, SandboxError> {
        let text = std::fs::read(path).map_err(|source| SandboxError::Io {
            op: "read launch spec",
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| SandboxError::Spec {
            path: path.to_owned(),
            source,
        })
    }
}

/// Why a sandbox could not be launched or a mount placed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("launch spec {path:?} is invalid")]
    Spec {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{op} {path:?} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} failed")]
    Sys {
        op: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("sandbox init failed: {0}")]
    Init(String),
}

pub(crate) fn sys(op: &'static str) -> impl FnOnce(nix::errno::Errno) -> SandboxError {
    move |source| SandboxError::Sys { op, source }
}

pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError {
    let path = path.to_owned();
    move |source| SandboxError::Io { op, path, source }
}

/// The error with its source chain on one line.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text.replace('\n', " ")
}

/// Write one status line to the launch pipe in a single `write()`: two
/// processes (the intermediate child and PID 1) report on the same pipe, and
/// `writeln!` on a `File` may split a line into several writes that then
/// interleave ("pid " + "ok\n" + "123\n"). A write of at most `PIPE_BUF`
/// bytes to a pipe is atomic, so the line is capped below it.
pub(crate) fn report(status: &mut std::fs::File, line: &str) {
    use std::io::Write;
    let mut text = line.replace('\n', " ");
    text.truncate(libc::PIPE_BUF - 1);
    text.push('\n');
    let _ = status.write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    #[test]
    fn report_writes_one_bounded_line() {
        let (mut rx, tx) = std::io::pipe().unwrap();
        let mut tx: std::fs::File = std::os::fd::OwnedFd::from(tx).into();
        super::report(&mut tx, "err multi\nline");
        super::report(&mut tx, &"x".repeat(10_000));
        drop(tx);
        let mut out = String::new();
        rx.read_to_string(&mut out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "err multi line");
        assert_eq!(lines[1].len(), libc::PIPE_BUF - 1);
        assert_eq!(lines.len(), 2);
    }
}

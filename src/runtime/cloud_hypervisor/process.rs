//! One `cloud-hypervisor` process: spawn with a pre-bound API socket,
//! supervise, re-attach after a service restart, stop.
//!
//! rewind binds the listening API socket itself and hands it to CH as
//! `--api-socket fd=3`: connections queue in the kernel until CH accepts, so
//! the first request needs no readiness polling. CH runs in its own session
//! (it survives a service restart and is re-attached by pid + start time +
//! the pid CH reports on `vmm.ping`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;

use super::client::{ChClient, ClientError};
pub use crate::runtime::proc::start_time as proc_start_time;

/// The fd number CH finds its API socket on.
const API_FD: i32 = 3;
/// Environment variables that mark a CH process as rewind's.
const TAG_SANDBOX: &str = "REWIND_CH_SANDBOX";
const TAG_API_SOCKET: &str = "REWIND_CH_API_SOCKET";
const TAG_OWNER: &str = "REWIND_CH_OWNER";
/// How long `stop` waits for a graceful `vmm.shutdown` before SIGKILL.
const GRACEFUL_EXIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot bind the API socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the log file {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cloud-hypervisor (pid {pid}) did not answer vmm.ping ({exit})")]
    NotReady {
        pid: i32,
        exit: String,
        #[source]
        source: ClientError,
    },
    #[error("cannot watch cloud-hypervisor pid {pid}")]
    Watch {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cloud-hypervisor pid {pid} did not exit after SIGKILL")]
    Unkillable { pid: i32 },
}

/// Where one CH process keeps its files.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessPaths {
    /// Sandbox name, set as `REWIND_CH_SANDBOX` in CH's environment so that
    /// orphans can be found after a crash ([`find_tagged`]).
    pub sandbox: String,
    /// Which rewind instance owns the process (`REWIND_CH_OWNER`): orphan
    /// cleanup never touches another instance's VMs.
    pub owner: String,
    pub binary: PathBuf,
    pub api_socket: PathBuf,
    /// CH's own log (`--log-file`).
    pub log_file: PathBuf,
    /// CH's stdout/stderr (panics, early argument errors).
    pub stderr_file: PathBuf,
    /// Network namespace CH runs in (networking on), so it opens the
    /// sandbox's TAP by name there; `None`: the service's namespace, and the
    /// VM has no network device.
    pub netns: Option<PathBuf>,
}

/// Identity of a running CH process, stored in the runtime state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22):
    /// tells a re-used pid apart.
    pub start_time: u64,
}

/// Why a CH process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitInfo {
    pub reason: String,
}

/// A live (or just ended) CH process.
#[derive(Debug)]
pub struct ChProcess {
    pub id: ProcessId,
    pub paths: ProcessPaths,
    pub client: ChClient,
    exit: watch::Receiver<Option<ExitInfo>>,
    /// Time from spawn to the first answered `vmm.ping`.
    pub ready_after: Option<Duration>,
}

impl ChProcess {
    /// Spawn CH and wait for its first `vmm.ping` answer.
    pub async fn spawn(paths: ProcessPaths) -> Result<ChProcess, ProcessError> {
        let started = Instant::now();
        let listener = bind_api_socket(&paths.api_socket)?;
        let mut child =
            command(&paths, &listener)?
                .spawn()
                .map_err(|source| ProcessError::Spawn {
                    binary: paths.binary.clone(),
                    source,
                })?;
        drop(listener);
        let pid = child.id().map(|p| p as i32).unwrap_or_default();
        let id = ProcessId {
            pid,
            start_time: proc_start_time(pid).unwrap_or_default(),
        };
        let (tx, exit) = watch::channel(None);
        let log = paths.log_file.clone();
        tokio::spawn(async move {
            let reason = match child.wait().await {
                Ok(status) => format!("cloud-hypervisor exited ({status})"),
                Err(e) => format!("cloud-hypervisor: waiting for it failed: {e}"),
            };
            let _ = tx.send(Some(ExitInfo {
                reason: with_log_tail(reason, &log),
            }));
        });
        let mut process = ChProcess {
            id,
            client: ChClient::new(&paths.api_socket),
            paths,
            exit,
            ready_after: None,
        };
        process.ready(started).await?;
        Ok(process)
    }

    /// Re-attach to a CH process started by an earlier service instance.
    /// `None` when that process is gone or is not the one recorded (the
    /// caller then cleans up with [`cleanup_stale`] and starts afresh).
    pub async fn reattach(paths: ProcessPaths, id: ProcessId) -> Option<ChProcess> {
        if proc_start_time(id.pid) != Some(id.start_time) {
            return None;
        }
        let client = ChClient::new(&paths.api_socket);
        let ping = client.ping().await.ok()?;
        if ping.pid.map(|p| p as i32) != Some(id.pid) {
            return None;
        }
        let exit = watch_foreign(id, paths.log_file.clone()).ok()?;
        Some(ChProcess {
            id,
            paths,
            client,
            exit,
            ready_after: None,
        })
    }

    async fn ready(&mut self, started: Instant) -> Result<(), ProcessError> {
        let mut exit = self.exit.clone();
        let ended = async move {
            let _ = exit.wait_for(Option::is_some).await.map(drop);
        };
        let ping = tokio::select! {
            ping = self.client.ping() => ping,
            () = ended => self.client.ping().await,
        };
        match ping {
            Ok(_) => {
                self.ready_after = Some(started.elapsed());
                Ok(())
            }
            Err(source) => {
                let pid = self.id.pid;
                let _ = self.kill().await;
                let exit = self.exited().map_or_else(|| "killed".into(), |e| e.reason);
                Err(ProcessError::NotReady { pid, exit, source })
            }
        }
    }

    /// Why the process ended; `None` while it runs.
    pub fn exited(&self) -> Option<ExitInfo> {
        self.exit.borrow().clone()
    }

    /// A receiver that yields the exit reason once the process ends.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exit.clone()
    }

    /// Wait up to `limit` for the process to end.
    pub async fn wait_exit(&self, limit: Duration) -> Option<ExitInfo> {
        let mut rx = self.exit.clone();
        let ended = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await;
        ended.ok().and_then(|r| r.ok().and_then(|v| v.clone()))
    }

    /// Graceful stop: `vmm.shutdown`, then SIGKILL after a grace period.
    /// Removes the API socket. Idempotent.
    pub async fn stop(&self) -> Result<(), ProcessError> {
        if self.exited().is_none() {
            let _ = self.client.vmm_shutdown().await;
            if self.wait_exit(GRACEFUL_EXIT).await.is_none() {
                self.kill().await?;
            }
        }
        remove_if_exists(&self.paths.api_socket);
        Ok(())
    }

    /// SIGKILL and wait for the exit to be observed.
    pub async fn kill(&self) -> Result<(), ProcessError> {
        if self.exited().is_some() {
            return Ok(());
        }
        if proc_start_time(self.id.pid) == Some(self.id.start_time) {
            let _ = kill(Pid::from_raw(self.id.pid), Signal::SIGKILL);
        }
        match self.wait_exit(GRACEFUL_EXIT).await {
            Some(_) => Ok(()),
            None => Err(ProcessError::Unkillable { pid: self.id.pid }),
        }
    }
}

/// A CH process rewind started (found by its environment tag).
#[derive(Debug, Clone, PartialEq)]
pub struct Tagged {
    pub id: ProcessId,
    pub sandbox: String,
    pub owner: String,
    pub api_socket: PathBuf,
}

/// All running CH processes rewind started, from any service instance.
pub fn find_tagged() -> Vec<Tagged> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(tagged)
        .collect()
}

fn tagged(pid: i32) -> Option<Tagged> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let var = |name: &str| {
        let prefix = format!("{name}=");
        env.split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let sandbox = var(TAG_SANDBOX)?;
    let owner = var(TAG_OWNER)?;
    let api_socket = PathBuf::from(var(TAG_API_SOCKET)?);
    let start_time = proc_start_time(pid)?;
    Some(Tagged {
        id: ProcessId { pid, start_time },
        sandbox,
        owner,
        api_socket,
    })
}

/// After a failed re-attach: kill the recorded process if it is still the
/// same one (alive but not answering) and remove its socket.
pub async fn cleanup_stale(paths: &ProcessPaths, id: Option<ProcessId>) {
    if let Some(id) = id {
        if proc_start_time(id.pid) == Some(id.start_time) {
            let _ = kill(Pid::from_raw(id.pid), Signal::SIGKILL);
            let deadline = Instant::now() + GRACEFUL_EXIT;
            while proc_start_time(id.pid) == Some(id.start_time) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    remove_if_exists(&paths.api_socket);
}

fn bind_api_socket(path: &Path) -> Result<UnixListener, ProcessError> {
    remove_if_exists(path);
    UnixListener::bind(path).map_err(|source| ProcessError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

fn command(
    paths: &ProcessPaths,
    listener: &UnixListener,
) -> Result<tokio::process::Command, ProcessError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.stderr_file)
        .map_err(|source| ProcessError::Log {
            path: paths.stderr_file.clone(),
            source,
        })?;
    let err = out.try_clone().map_err(|source| ProcessError::Log {
        path: paths.stderr_file.clone(),
        source,
    })?;
    let mut cmd = tokio::process::Command::new(&paths.binary);
    cmd.arg("--api-socket")
        .arg(format!("fd={API_FD}"))
        .arg("--log-file")
        .arg(&paths.log_file)
        .arg("-v")
        .env(TAG_SANDBOX, &paths.sandbox)
        .env(TAG_API_SOCKET, &paths.api_socket)
        .env(TAG_OWNER, &paths.owner)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(false);
    if let Some(path) = &paths.netns {
        let ns = std::fs::File::open(path).map_err(|source| ProcessError::Netns {
            path: path.clone(),
            source,
        })?;
        // SAFETY: runs in the forked child before exec; setns is a plain
        // syscall (async-signal-safe) on an fd the closure owns.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(Into::into)
            });
        }
    }
    let fd = listener.as_raw_fd();
    // After the namespace switch (registered first): dup2 onto fd 3 must not
    // clobber the namespace fd.
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (dup2, fcntl, setsid) on fds it owns.
    unsafe {
        cmd.pre_exec(move || hand_over_api_fd(fd));
    }
    Ok(cmd)
}

/// In the child: put the listener on `API_FD` without CLOEXEC and start a
/// new session so the service's signals and exit do not reach CH.
fn hand_over_api_fd(fd: i32) -> std::io::Result<()> {
    if fd == API_FD {
        // SAFETY: fcntl on an fd this process owns; async-signal-safe.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    // SAFETY: dup2 onto a fixed fd number; async-signal-safe; the new fd has
    // no CLOEXEC flag, so it survives exec.
    } else if unsafe { libc::dup2(fd, API_FD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: setsid has no memory-safety preconditions; async-signal-safe.
    if unsafe { libc::setsid() } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Watch a process that is not our child through a pidfd. Its exit status
/// cannot be known; the reason says so and carries CH's log tail.
fn watch_foreign(
    id: ProcessId,
    log: PathBuf,
) -> Result<watch::Receiver<Option<ExitInfo>>, ProcessError> {
    let pidfd = pidfd_open(id.pid).map_err(|source| ProcessError::Watch {
        pid: id.pid,
        source,
    })?;
    // SAFETY: an OwnedFd stays open and returns the same fd number for as
    // long as the AsyncFd owns it.
    let afd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) };
    let afd = afd.map_err(|e| ProcessError::Watch {
        pid: id.pid,
        source: e.into_parts().1,
    })?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let _ = afd.readable().await;
        let reason = format!(
            "cloud-hypervisor (pid {}, re-attached) exited; status unknown",
            id.pid
        );
        let _ = tx.send(Some(ExitInfo {
            reason: with_log_tail(reason, &log),
        }));
    });
    Ok(rx)
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Append the last lines of CH's log to an exit reason.
fn with_log_tail(reason: String, log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    if lines.is_empty() {
        return reason;
    }
    let tail: Vec<&str> = lines.into_iter().rev().collect();
    format!("{reason}; log tail: {}", tail.join(" | "))
}

pub fn remove_if_exists(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove stale file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_log_tail_keeps_last_five_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("ch.log");
        std::fs::write(&log, "1\n2\n3\n4\n5\n6\n").unwrap();

        let reason = with_log_tail("gone".into(), &log);

        assert_eq!(reason, "gone; log tail: 2 | 3 | 4 | 5 | 6");
    }
}

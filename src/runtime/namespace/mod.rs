//! The namespace runtime (the embedded default): each sandbox is
//! `rewind-agent` as PID 1 in fresh user, mount, PID, UTS, IPC, network and
//! cgroup namespaces, on an overlay of the uid-shifted base rootfs, with the
//! workspace subvolume bind-mounted at `/workspace`.
//!
//! The namespace dance itself happens in `rewind-agent launch` (a
//! single-threaded process; forking the multi-threaded service would not be
//! safe). This module prepares what it needs — overlay dirs in the sandbox's
//! state dir, cgroups, the socket path — runs it, and tracks the PID 1 it
//! reports. PID 1 is re-parented away from the service, so sandboxes survive
//! a service restart; `attach` re-connects to them, checking the PID's start
//! time so a recycled PID is never mistaken for the sandbox.
//!
//! Root inside every sandbox maps to host uid [`UID_BASE`] (65536 ids); the
//! shared read-only lower layer is a copy of the base image shifted into that
//! range ([`rootfs`]).

mod cgroup;
mod criu;
mod error;
mod memory;
mod resize;
mod rootfs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rewind_agent::client::{AgentClient, Transport};
use rewind_agent::sandbox::LaunchSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::process::Command;

use super::{
    Attached, Cause, PortTarget, Runtime, RuntimeError, RuntimeKind, RuntimeState, SandboxContext,
};
use crate::config::Config;
use crate::runtime::manifest;
use crate::runtime::proc::start_time as proc_starttime;
pub use cgroup::{CgroupError, Cgroups};
pub use criu::is_page_image;
pub use error::LaunchError;

/// Host uid/gid that root inside a sandbox maps to.
pub const UID_BASE: u32 = 100_000;
/// Size of the mapped id range.
pub const UID_COUNT: u32 = 65_536;

/// How long `rewind-agent launch` may take to set a sandbox up.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a killed sandbox's PID 1 may take to exit.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a freshly launched agent has to answer its first ping.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

pub struct NamespaceRuntime {
    agent_bin: PathBuf,
    /// The copy of `agent_bin` that PID 1 of every sandbox execs ([`stage_agent`]).
    agent_image: PathBuf,
    lower: PathBuf,
    sock_dir: PathBuf,
    cgroups: Cgroups,
    allow_nested_userns: bool,
    /// A working CRIU, or why memory snapshots are unavailable.
    criu: Result<criu::Criu, String>,
    /// Old mount namespaces being released in the background, by sandbox
    /// ([`NamespaceRuntime::stop_unmounting_later`]).
    unmounting: memory::Unmounting,
}

/// What we remember about a running sandbox (stored in the database).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NsState {
    pid: i32,
    /// Field 22 of /proc/<pid>/stat, to detect PID reuse.
    starttime: u64,
    socket: PathBuf,
}

impl NamespaceRuntime {
    /// Check the host and prepare the shifted rootfs (once).
    pub async fn new(config: &Config) -> Result<Self, RuntimeError> {
        let unavailable = |reason: String| RuntimeError::Unavailable { reason };
        if !nix::unistd::geteuid().is_root() {
            return Err(unavailable("the namespace runtime needs root".into()));
        }
        let agent_bin = config.agent_binary_path();
        let agent_bin = which(&agent_bin).ok_or_else(|| {
            unavailable(format!(
                "agent binary {} not found (build with `cargo build -p rewind-agent`)",
                agent_bin.display()
            ))
        })?;
        let base = config.base_image.clone();
        let dest = config.data_dir.join(format!("images/ns-{UID_BASE}/rootfs"));
        let lower =
            tokio::task::spawn_blocking(move || rootfs::ensure_shifted(&base, &dest, UID_BASE))
                .await
                .map_err(|e| unavailable(e.to_string()))?
                .map_err(|e| unavailable(e.to_string()))?;
        // The sandbox's own credentials (uid UID_BASE) mount the overlay and
        // the workspace, so every directory on those paths must be searchable.
        allow_traverse(&config.data_dir)?;
        let agent_image = stage_agent(&agent_bin, &config.data_dir)?;
        let sock_dir = config.data_dir.join("run");
        std::fs::create_dir_all(&sock_dir).map_err(|source| RuntimeError::Io {
            op: format!("create {}", sock_dir.display()),
            source,
        })?;
        let cgroups = Cgroups::for_data_dir(&config.data_dir);
        // Launched PID 1s are orphaned by the launcher's double fork; adopt
        // them so teardown can reap them (some hosts' init never does).
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(error = %e, "cannot become a child subreaper; stopped sandboxes may linger as zombies");
        }
        let run_dir = sock_dir.clone();
        let criu = tokio::task::spawn_blocking(move || criu::Criu::detect(&run_dir))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        match &criu {
            Ok(c) => tracing::info!(version = %c.version, "CRIU ready: memory snapshots available"),
            Err(reason) => tracing::warn!(%reason, "no memory snapshots for namespace sandboxes"),
        }
        tracing::info!(cgroups = cgroups.version(), lower = %lower.display(), "namespace runtime ready");
        Ok(NamespaceRuntime {
            agent_bin,
            agent_image,
            lower,
            sock_dir,
            cgroups,
            allow_nested_userns: config.limits.allow_nested_userns,
            criu,
            unmounting: Default::default(),
        })
    }

    /// Unix socket paths are limited to 108 bytes: name them by a hash. Each
    /// sandbox has its own directory, bound inside it (the agent binds the
    /// socket there, from inside).
    fn socket_path(&self, name: &str) -> PathBuf {
        let digest = Sha256::digest(name.as_bytes());
        self.sock_dir
            .join(hex::encode(&digest[..8]))
            .join("agent.sock")
    }

    fn launch_spec(
        &self,
        sb: &SandboxContext,
        cgroups: Vec<PathBuf>,
    ) -> Result<LaunchSpec, RuntimeError> {
        let ns = sb.state_dir.join("ns");
        let (upper, work, merged) = (ns.join("upper"), ns.join("work"), ns.join("merged"));
        for dir in [&upper, &work, &merged] {
            std::fs::create_dir_all(dir).map_err(|source| RuntimeError::Io {
                op: format!("create {}", dir.display()),
                source,
            })?;
            std::os::unix::fs::chown(dir, Some(UID_BASE), Some(UID_BASE)).map_err(|source| {
                RuntimeError::Io {
                    op: format!("chown {}", dir.display()),
                    source,
                }
            })?;
        }
        Ok(LaunchSpec {
            name: sb.name.clone(),
            rootfs_lower: self.lower.clone(),
            upper_dir: upper,
            work_dir: work,
            merged_dir: merged,
            workspace: sb.workspace.clone(),
            socket: self.socket_path(&sb.name),
            uid_base: UID_BASE,
            uid_count: UID_COUNT,
            cgroups,
            log: ns.join("agent.log"),
            allow_nested_userns: self.allow_nested_userns,
            agent_binary: Some(self.agent_image.clone()),
        })
    }

    async fn launch(&self, sb: &SandboxContext) -> Result<NsState, RuntimeError> {
        let start_err = |cause: Cause| RuntimeError::Start {
            sandbox: sb.name.clone(),
            source: cause,
        };
        let cgroups = self
            .cgroups
            .create(&sb.name, &sb.limits)
            .map_err(|e| start_err(e.into()))?;
        let spec = self.launch_spec(sb, cgroups)?;
        self.wait_unmounted(&sb.name).await;
        // A memory restore cut off by a crash may leave the overlay root
        // mounted on the host; a second overlay on the same upper dir fails.
        let _ = nix::mount::umount2(&spec.merged_dir, nix::mount::MntFlags::MNT_DETACH);
        let spec_path = sb.state_dir.join("ns/launch.json");
        let text = serde_json::to_vec_pretty(&spec).map_err(|e| start_err(e.into()))?;
        std::fs::write(&spec_path, text).map_err(|source| RuntimeError::Io {
            op: format!("write {}", spec_path.display()),
            source,
        })?;
        let out = self
            .launcher(&spec_path)
            .await
            .map_err(|e| start_err(e.into()))?;
        if !out.status.success() {
            let _ = self.cgroups.remove(&sb.name);
            return Err(start_err(Cause::Launch(LaunchError::Launcher {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                log: log_tail(&spec.log, 2048),
            })));
        }
        #[derive(Deserialize)]
        struct Launched {
            pid: i32,
        }
        let launched: Launched = serde_json::from_slice(&out.stdout)
            .map_err(|e| start_err(LaunchError::Output(e).into()))?;
        let pid = launched.pid;
        let starttime =
            proc_starttime(pid).ok_or_else(|| start_err(LaunchError::Exited { pid }.into()))?;
        Ok(NsState {
            pid,
            starttime,
            socket: spec.socket,
        })
    }

    /// Run `rewind-agent launch --spec <spec>` to completion (or timeout).
    async fn launcher(&self, spec: &Path) -> Result<std::process::Output, LaunchError> {
        let launch = Command::new(&self.agent_bin)
            .arg("launch")
            .arg("--spec")
            .arg(spec)
            .kill_on_drop(true)
            .output();
        let bin = || self.agent_bin.clone();
        tokio::time::timeout(LAUNCH_TIMEOUT, launch)
            .await
            .map_err(|_| LaunchError::Timeout {
                bin: bin(),
                what: "launch",
                after: LAUNCH_TIMEOUT,
            })?
            .map_err(|source| LaunchError::Spawn { bin: bin(), source })
    }

    /// Kill PID 1 (which takes the whole PID namespace with it), reap it,
    /// then clear the cgroups and the socket. Every wait happens on a
    /// blocking thread, never on an async worker.
    async fn teardown(&self, name: &str, state: Option<&NsState>) -> Result<(), RuntimeError> {
        let cgroups = self.cgroups.clone();
        let socket = self.socket_path(name);
        let (name, state) = (name.to_owned(), state.cloned());
        tokio::task::spawn_blocking(move || {
            if let Some(s) = state.filter(|s| proc_starttime(s.pid) == Some(s.starttime)) {
                kill_and_reap(s.pid, s.starttime);
            }
            cgroups.remove(&name).map_err(|e| RuntimeError::Stop {
                sandbox: name.clone(),
                source: e.into(),
            })?;
            let _ = std::fs::remove_file(socket);
            Ok(())
        })
        .await
        .map_err(|e| RuntimeError::Io {
            op: "join the teardown task".into(),
            source: e.into(),
        })?
    }
}

/// SIGKILL a sandbox's PID 1 and wait until it is gone. When it is our child
/// (we are a subreaper and the launcher's double fork orphaned it to us),
/// wait for exactly that pid until it is reaped — a PID-namespace init
/// becomes waitable only after every process of its namespace died, so one
/// `WNOHANG` right after the kill often comes too early and leaks a zombie.
/// Only this pid is waited for, so no `tokio::process` child is ever stolen.
/// After a service restart it is not our child (ECHILD): then wait until it
/// is gone and let its new parent reap it.
fn kill_and_reap(pid: i32, starttime: u64) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let target = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + REAP_TIMEOUT;
    let flags = WaitPidFlag::WNOHANG | WaitPidFlag::__WALL;
    loop {
        match waitpid(target, Some(flags)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(WaitStatus::StillAlive) => {
                tracing::warn!(pid, "sandbox PID 1 not reaped after SIGKILL");
                return;
            }
            Ok(_) => return,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return wait_gone(pid, starttime, REAP_TIMEOUT),
        }
    }
}

async fn wait_ready(transport: Transport) -> Result<(), RuntimeError> {
    let client = AgentClient::new(transport);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match client.ping().await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[async_trait]
impl Runtime for NamespaceRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Namespace
    }

    fn workspace_owner(&self) -> Option<(u32, u32)> {
        Some((UID_BASE, UID_BASE))
    }

    fn workspace_dev(&self, sb: &SandboxContext) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&sb.workspace).ok().map(|m| m.dev())
    }

    async fn start(&self, sb: &SandboxContext) -> Result<RuntimeState, RuntimeError> {
        let state = self.launch(sb).await?;
        if let Err(e) = wait_ready(Transport::Unix(state.socket.clone())).await {
            let _ = self.teardown(&sb.name, Some(&state)).await;
            return Err(e);
        }
        tracing::info!(sandbox = %sb.name, pid = state.pid, "namespace sandbox started");
        serde_json::to_value(&state).map_err(|e| RuntimeError::Start {
            sandbox: sb.name.clone(),
            source: e.into(),
        })
    }

    async fn attach(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
    ) -> Result<Attached, RuntimeError> {
        let known: Option<NsState> = serde_json::from_value(state.clone()).ok();
        self.thaw_if_frozen(sb).await;
        if let Some(s) = known
            .as_ref()
            .filter(|s| proc_starttime(s.pid) == Some(s.starttime))
        {
            let client = AgentClient::new(Transport::Unix(s.socket.clone()));
            if tokio::time::timeout(Duration::from_secs(5), client.ping())
                .await
                .is_ok_and(|r| r.is_ok())
            {
                return Ok(Attached::Reattached(state.clone()));
            }
        }
        self.teardown(&sb.name, known.as_ref()).await?;
        Ok(Attached::Restarted(self.start(sb).await?))
    }

    /// Loopback inside the sandbox's own network namespace (that of its
    /// init, while it is the recorded process).
    fn port_target(
        &self,
        _sb: &SandboxContext,
        state: &RuntimeState,
        port: u16,
    ) -> Option<PortTarget> {
        let s = serde_json::from_value::<NsState>(state.clone()).ok()?;
        (proc_starttime(s.pid) == Some(s.starttime)).then(|| PortTarget {
            netns: PathBuf::from(format!("/proc/{}/ns/net", s.pid)),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            guard: Some((s.pid, s.starttime)),
        })
    }

    /// Its cgroups' CPU and memory counters and the interfaces of PID 1's
    /// network namespace (`/proc/<pid>/net/dev`, while it is the recorded
    /// process).
    fn usage(&self, sb: &SandboxContext, state: &RuntimeState) -> super::Usage {
        let (cpu_seconds, memory_bytes) = self.cgroups.usage(&sb.name);
        let net = serde_json::from_value::<NsState>(state.clone())
            .ok()
            .filter(|s| proc_starttime(s.pid) == Some(s.starttime))
            .and_then(|s| std::fs::read_to_string(format!("/proc/{}/net/dev", s.pid)).ok())
            .map(|t| super::NetCounters::parse_net_dev(&t));
        super::Usage {
            cpu_seconds,
            memory_bytes,
            net,
        }
    }

    fn transport(&self, sb: &SandboxContext, state: &RuntimeState) -> Transport {
        let socket = serde_json::from_value::<NsState>(state.clone())
            .map(|s| s.socket)
            .unwrap_or_else(|_| self.socket_path(&sb.name));
        Transport::Unix(socket)
    }

    async fn replace_workspace(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
    ) -> Result<RuntimeState, RuntimeError> {
        let remount_err = |cause: Cause| RuntimeError::Remount {
            sandbox: sb.name.clone(),
            source: cause,
        };
        let s: NsState =
            serde_json::from_value(state.clone()).map_err(|e| remount_err(e.into()))?;
        let out = Command::new(&self.agent_bin)
            .arg("mount-into")
            .arg("--pid")
            .arg(s.pid.to_string())
            .arg("--source")
            .arg(&sb.workspace)
            .arg("--target")
            .arg(rewind_agent::protocol::WORKSPACE_DIR)
            .output()
            .await
            .map_err(|source| {
                remount_err(
                    LaunchError::Spawn {
                        bin: self.agent_bin.clone(),
                        source,
                    }
                    .into(),
                )
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            return Err(remount_err(LaunchError::MountInto { stderr }.into()));
        }
        Ok(state.clone())
    }

    /// With CRIU ([`criu`]); [`Runtime::memory_unavailable`] says why not.
    fn supports_memory_snapshots(&self) -> bool {
        true
    }

    fn memory_unavailable(&self) -> Option<String> {
        self.criu().err().map(|e| e.to_string())
    }

    async fn pause(&self, sb: &SandboxContext, state: &RuntimeState) -> Result<(), RuntimeError> {
        self.freeze(sb, state).await
    }

    async fn resume(&self, sb: &SandboxContext, _state: &RuntimeState) -> Result<(), RuntimeError> {
        self.thaw(sb).await
    }

    async fn save_state(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
        dir: &Path,
    ) -> Result<(), RuntimeError> {
        self.dump(sb, state, dir).await
    }

    /// Sizes only, while the sandbox still runs (a missing or truncated
    /// image); the content is verified during the restore itself, which
    /// resumes nothing before it is found intact ([`criu::Gate`]).
    async fn verify_state(&self, dir: &Path) -> Result<(), RuntimeError> {
        let dir = dir.to_path_buf();
        let verified = tokio::task::spawn_blocking(move || manifest::verify_sizes(&dir)).await;
        match verified {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RuntimeError::SavedStateDamaged {
                message: super::chain(&e),
            }),
            Err(e) => Err(RuntimeError::SavedStateDamaged {
                message: format!("cannot verify it: {e}"),
            }),
        }
    }

    async fn start_from_state(
        &self,
        sb: &SandboxContext,
        dir: &Path,
    ) -> Result<RuntimeState, RuntimeError> {
        self.restore_tree(sb, dir).await
    }

    fn saved_state_info(&self, dir: &Path) -> Option<super::SavedStateInfo> {
        memory::saved_state_info(dir)
    }

    async fn stop(&self, sb: &SandboxContext, state: &RuntimeState) -> Result<(), RuntimeError> {
        let known: Option<NsState> = serde_json::from_value(state.clone()).ok();
        self.teardown(&sb.name, known.as_ref()).await
    }

    async fn stop_for_restore(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
    ) -> Result<(), RuntimeError> {
        self.stop_unmounting_later(sb, state).await
    }

    /// cgroup writes: both limits apply at once ([`resize`]).
    async fn resize(
        &self,
        sb: &SandboxContext,
        _state: &RuntimeState,
        limits: &super::Limits,
    ) -> Result<super::Resized, RuntimeError> {
        self.resize_cgroups(sb, limits).await
    }

    async fn stop_gracefully(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        if !self.terminate(sb, state, grace).await? {
            tracing::info!(sandbox = %sb.name, "processes still running after the grace period: killing them");
        }
        self.stop(sb, state).await
    }

    async fn cleanup_orphans(&self, known: &[String]) -> Vec<String> {
        let mut cleaned = Vec::new();
        for name in self.cgroups.list() {
            if !known.contains(&name) {
                match self.teardown(&name, None).await {
                    Ok(()) => cleaned.push(format!(
                        "removed cgroups and processes of unknown sandbox {name}"
                    )),
                    Err(e) => cleaned.push(format!("could not clean unknown sandbox {name}: {e}")),
                }
            }
        }
        let known_dirs: Vec<PathBuf> = known
            .iter()
            .filter_map(|n| Some(self.socket_path(n).parent()?.to_owned()))
            .collect();
        for entry in std::fs::read_dir(&self.sock_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            // Socket files of older versions sat directly in the run dir.
            let stale = match path.extension().is_some_and(|e| e == "sock") {
                true => std::fs::remove_file(&path).is_ok(),
                false => !known_dirs.contains(&path) && std::fs::remove_dir_all(&path).is_ok(),
            };
            if stale {
                cleaned.push(format!("removed stale socket {}", path.display()));
            }
        }
        cleaned
    }
}

/// A copy of the agent binary under `data_dir/images/agent/<size>-<mtime>/`,
/// made once per build: a memory snapshot maps the exact binary it was taken
/// with, so a rebuild of `agent_bin` must not change the file it restores.
fn stage_agent(agent_bin: &Path, data_dir: &Path) -> Result<PathBuf, RuntimeError> {
    let io_err = |op: String| move |source| RuntimeError::Io { op, source };
    let meta =
        std::fs::metadata(agent_bin).map_err(io_err(format!("stat {}", agent_bin.display())))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let dir = data_dir.join(format!("images/agent/{}-{mtime}", meta.len()));
    let dest = dir.join("rewind-agent");
    if dest.exists() {
        return Ok(dest);
    }
    std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    let tmp = dir.join(format!(".rewind-agent.{}", std::process::id()));
    std::fs::copy(agent_bin, &tmp).map_err(io_err(format!("copy {}", agent_bin.display())))?;
    std::fs::rename(&tmp, &dest).map_err(io_err(format!("rename {}", tmp.display())))?;
    Ok(dest)
}

/// Make `dir` and its ancestors searchable by others (o+x) where they are not.
fn allow_traverse(dir: &Path) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    for d in dir.ancestors().filter(|d| d.exists()) {
        let mode = std::fs::metadata(d)
            .map(|m| m.permissions().mode())
            .unwrap_or(0o755);
        if mode & 0o001 == 0 {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o011)).map_err(
                |source| RuntimeError::Io {
                    op: format!("make {} searchable", d.display()),
                    source,
                },
            )?;
        }
    }
    Ok(())
}

/// The last `max` bytes of a log file (the sandbox's state dir, with the
/// log, is deleted when a failed create is rolled back).
fn log_tail(path: &Path, max: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    let tail = String::from_utf8_lossy(&text[start..]).trim().to_owned();
    if tail.is_empty() {
        "(empty)".into()
    } else {
        tail
    }
}

fn wait_gone(pid: i32, starttime: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while proc_starttime(pid) == Some(starttime) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Resolve an executable: a path as given, a bare name on PATH.
fn which(bin: &Path) -> Option<PathBuf> {
    ::which::which(bin).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_starttime_of_a_later_child_is_not_earlier_than_ours() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let ours = proc_starttime(std::process::id() as i32);
        let its = proc_starttime(child.id() as i32);
        child.kill().unwrap();
        child.wait().unwrap();

        assert!(
            matches!((ours, its), (Some(a), Some(b)) if b >= a),
            "{ours:?} {its:?}"
        );
    }

    #[test]
    fn proc_starttime_of_absent_pid_is_none() {
        assert_eq!(proc_starttime(i32::MAX), None);
    }
}

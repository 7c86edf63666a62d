//! Sandbox runtimes: where a sandbox's agent runs.
//!
//! One trait, two implementations: [`namespace`] (the agent as PID 1 in fresh
//! Linux namespaces — the embedded default) and [`cloud_hypervisor`] (one
//! Cloud Hypervisor microVM per sandbox). The service drives both the same
//! way: `start` → talk to the agent → `stop`. Everything that differs between
//! them (how the agent is reached, how a restored workspace is put back in
//! place, full memory snapshots) is a method here.

pub mod cloud_hypervisor;
pub mod egress;
pub mod manifest;
pub mod namespace;
pub mod network;
pub mod proc;

use std::future::Future;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use rewind_agent::client::Transport;
use serde::{Deserialize, Serialize};

/// A sandbox's resource use ([`Runtime::usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU time consumed by all its processes since it started.
    pub cpu_seconds: Option<f64>,
    pub memory_bytes: Option<u64>,
    /// Summed over the interfaces of its network namespace.
    pub net: Option<NetCounters>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
}

impl NetCounters {
    /// Sum the interfaces of a `/proc/<pid>/net/dev` text.
    pub fn parse_net_dev(text: &str) -> NetCounters {
        let mut sum = NetCounters::default();
        for line in text.lines().skip(2) {
            let Some((_, fields)) = line.split_once(':') else {
                continue;
            };
            let f: Vec<u64> = fields
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if f.len() >= 10 {
                sum.bytes_in += f[0];
                sum.packets_in += f[1];
                sum.bytes_out += f[8];
                sum.packets_out += f[9];
            }
        }
        sum
    }
}

/// Whether a new limit took effect on the running sandbox ([`Runtime::resize`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The running sandbox has it now.
    Now,
    /// It is recorded and takes effect at the next start; `reason` says why
    /// not now.
    AfterRestart { reason: String },
}

/// What [`Runtime::resize`] did with the CPU and memory limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resized {
    pub cpu: Applied,
    pub memory: Applied,
}

/// Which runtime a sandbox uses (stored per sandbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    Namespace,
    CloudHypervisor,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Namespace => "namespace",
            RuntimeKind::CloudHypervisor => "cloud-hypervisor",
        }
    }
}

/// Resource limits applied to one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_bytes: u64,
    /// CPU quota in milli-CPUs (1000 = one core).
    pub cpu_millis: u64,
    pub pids: u64,
    /// Guest vCPUs (VM runtime only).
    pub vcpus: u8,
}

/// Everything a runtime needs to know about one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxContext {
    pub name: String,
    /// Host path of the live workspace subvolume.
    pub workspace: PathBuf,
    /// Host path of the sandbox's writable state directory (in the pool).
    pub state_dir: PathBuf,
    pub limits: Limits,
    pub network: bool,
}

/// A TCP endpoint inside a sandbox ([`Runtime::port_target`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortTarget {
    /// A network namespace file (`/proc/<pid>/ns/net`, `/run/netns/...`).
    pub netns: PathBuf,
    pub addr: std::net::SocketAddr,
    /// For a `/proc/<pid>/ns/net` path: that process's (pid, start time),
    /// checked after the file is opened so a reused pid is never entered.
    pub guard: Option<(i32, u64)>,
}

/// What a runtime remembers about a running sandbox; stored as JSON in the
/// database so a restarted service can re-attach.
pub type RuntimeState = serde_json::Value;

/// Result of re-attaching after a service restart.
#[derive(Debug, Clone, PartialEq)]
pub enum Attached {
    /// The sandbox was still running and answers.
    Reattached(RuntimeState),
    /// It was gone; the runtime started it again (processes and memory are lost,
    /// the workspace is intact).
    Restarted(RuntimeState),
}

/// What a memory snapshot's saved state is ([`Runtime::saved_state_info`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SavedStateInfo {
    /// Total size of the saved files in bytes.
    pub image_bytes: u64,
    /// Version of CRIU that wrote the images (namespace runtime).
    pub criu_version: Option<String>,
}

/// Failure of a runtime operation.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("runtime is not available on this host: {reason}")]
    Unavailable { reason: String },
    #[error("failed to start sandbox {sandbox}")]
    Start {
        sandbox: String,
        #[source]
        source: Cause,
    },
    #[error("failed to stop sandbox {sandbox}")]
    Stop {
        sandbox: String,
        #[source]
        source: Cause,
    },
    #[error("failed to put the workspace back for sandbox {sandbox}")]
    Remount {
        sandbox: String,
        #[source]
        source: Cause,
    },
    #[error("cannot change the limits of sandbox {sandbox}")]
    Resize {
        sandbox: String,
        #[source]
        source: Cause,
    },
    #[error("operation not supported by the {runtime} runtime: {what}")]
    Unsupported { runtime: &'static str, what: String },
    /// A memory checkpoint of the sandbox's processes was refused or failed
    /// (e.g. CRIU cannot dump one of them); the message names what and why.
    #[error("cannot checkpoint sandbox {sandbox}: {message}")]
    Checkpoint { sandbox: String, message: String },
    #[error("hypervisor error during {op}: {message}")]
    Hypervisor { op: String, message: String },
    /// A memory snapshot's saved state failed [`Runtime::verify_state`].
    #[error("the snapshot's saved memory state is damaged: {message}")]
    SavedStateDamaged { message: String },
    #[error("agent error")]
    Agent(#[from] rewind_agent::client::AgentError),
    #[error("I/O error during {op}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
}

/// What failed under a start, stop or workspace replacement.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// Boxed: a `VmError` is large, and every `RuntimeError` would carry it.
    #[error(transparent)]
    Vm(Box<cloud_hypervisor::vm::VmError>),
    #[error(transparent)]
    Launch(#[from] namespace::LaunchError),
    #[error("cgroups")]
    Cgroup(#[from] namespace::CgroupError),
    #[error("runtime state (JSON)")]
    State(#[from] serde_json::Error),
}

impl From<cloud_hypervisor::vm::VmError> for Cause {
    fn from(e: cloud_hypervisor::vm::VmError) -> Self {
        Cause::Vm(Box::new(e))
    }
}

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> RuntimeKind;

    /// Start a sandbox whose workspace storage has already created. Returns
    /// once the agent answers a ping.
    async fn start(&self, sb: &SandboxContext) -> Result<RuntimeState, RuntimeError>;

    /// After a service restart: re-attach to the sandbox described by `state`,
    /// or start it again.
    async fn attach(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
    ) -> Result<Attached, RuntimeError>;

    /// How to reach this sandbox's agent.
    fn transport(&self, sb: &SandboxContext, state: &RuntimeState) -> Transport;

    /// Called during a restore after the agent unmounted the workspace and
    /// storage swapped the live subvolume: make the new workspace visible to
    /// the sandbox again (bind-mount injection, or a disk hot-swap). The
    /// service then asks the agent to mount it.
    async fn replace_workspace(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
    ) -> Result<RuntimeState, RuntimeError>;

    /// `st_dev` of the live workspace subvolume as the sandbox must see it at
    /// `/workspace`, for runtimes that bind-mount it there; the service
    /// compares it with what the agent reports (after a restart, after a
    /// restore). `None` = the runtime cannot tell (a VM's block device).
    fn workspace_dev(&self, _sb: &SandboxContext) -> Option<u64> {
        None
    }

    /// Owner (uid, gid) the workspace root must have so that root inside the
    /// sandbox can write to it; `None` = leave it root-owned.
    fn workspace_owner(&self) -> Option<(u32, u32)> {
        None
    }

    /// After startup recovery: stop and clean up any sandbox this runtime
    /// finds on the host (processes, cgroups, sockets) whose name is not in
    /// `known`. Returns what it cleaned, for the log.
    async fn cleanup_orphans(&self, _known: &[String]) -> Vec<String> {
        Vec::new()
    }

    /// Why the sandbox's runtime process ended unexpectedly (e.g. the VMM
    /// exited, with its status and log tail); `None` while it runs or when the
    /// runtime cannot tell. The service marks the sandbox failed with it.
    fn failure(&self, _sb: &SandboxContext) -> Option<String> {
        None
    }

    /// Where a connection forwarded to `port` inside the sandbox goes: the
    /// network namespace to connect from and the address there. `None` when
    /// the sandbox has no reachable network (e.g. a VM without networking).
    fn port_target(
        &self,
        _sb: &SandboxContext,
        _state: &RuntimeState,
        _port: u16,
    ) -> Option<PortTarget> {
        None
    }

    /// Where the sandbox's egress proxy listens ([`egress`]): a network
    /// namespace and an address in it; `None` when it has no network. By
    /// default the proxy port as [`Runtime::port_target`] reaches it.
    fn egress_listen(&self, sb: &SandboxContext, state: &RuntimeState) -> Option<PortTarget> {
        self.port_target(sb, state, egress::PROXY_PORT)
    }

    /// The sandbox's network beyond loopback, if it has one.
    fn network(&self, _sb: &SandboxContext) -> Option<network::NetworkInfo> {
        None
    }

    /// What the sandbox uses right now, from the kernel's own counters
    /// (cgroups, the sandbox's network namespace); a field is `None` where
    /// this runtime cannot know it.
    fn usage(&self, _sb: &SandboxContext, _state: &RuntimeState) -> Usage {
        Usage::default()
    }

    /// Whether this runtime saves and restores full state (memory + devices):
    /// [`Runtime::pause`], [`Runtime::resume`], [`Runtime::save_state`],
    /// [`Runtime::start_from_state`]. Use [`full_snapshot`] to drive them.
    fn supports_memory_snapshots(&self) -> bool {
        false
    }

    /// Why memory snapshots cannot be taken on this host right now although
    /// the runtime supports them (e.g. CRIU missing); `None` when they can.
    fn memory_unavailable(&self) -> Option<String> {
        None
    }

    /// Freeze the sandbox (vCPUs and devices) so storage can be snapshotted
    /// consistently with memory.
    async fn pause(&self, _sb: &SandboxContext, _state: &RuntimeState) -> Result<(), RuntimeError> {
        Err(unsupported(self.kind(), "memory snapshots"))
    }

    async fn resume(
        &self,
        _sb: &SandboxContext,
        _state: &RuntimeState,
    ) -> Result<(), RuntimeError> {
        Err(unsupported(self.kind(), "memory snapshots"))
    }

    /// Save memory + device state into `dir` (created; must be empty or
    /// absent) while paused. On failure nothing is left at `dir` and the
    /// sandbox stays paused: the caller resumes ([`full_snapshot`] does).
    async fn save_state(
        &self,
        _sb: &SandboxContext,
        _state: &RuntimeState,
        _dir: &Path,
    ) -> Result<(), RuntimeError> {
        Err(unsupported(self.kind(), "memory snapshots"))
    }

    /// Check state saved by [`Runtime::save_state`] before a restore or fork
    /// changes anything: every file present and intact, else
    /// [`RuntimeError::SavedStateDamaged`] naming the damaged file. By
    /// default nothing is checked (the runtime's own restore reports damage).
    async fn verify_state(&self, _dir: &Path) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// What is known about state saved by [`Runtime::save_state`] in `dir`
    /// (its size, the checkpoint tool's version), for the API; `None` when
    /// the runtime records nothing or `dir` holds no saved state.
    fn saved_state_info(&self, _dir: &Path) -> Option<SavedStateInfo> {
        None
    }

    /// Start `sb` from state saved by [`Runtime::save_state`] (of `sb` itself
    /// = restore, or of another sandbox = fork) and resume it; returns once
    /// the agent's transport answers. `sb`'s storage must already hold the
    /// matching workspace, and `sb` must be stopped. `dir` is only read;
    /// callers check it with [`Runtime::verify_state`] first.
    async fn start_from_state(
        &self,
        _sb: &SandboxContext,
        _dir: &Path,
    ) -> Result<RuntimeState, RuntimeError> {
        Err(unsupported(self.kind(), "memory snapshots"))
    }

    /// Change the CPU and memory limits of the running sandbox to `limits`
    /// where this runtime can do it live; the rest applies at the next start
    /// (the caller records `limits`). On error nothing was changed.
    async fn resize(
        &self,
        _sb: &SandboxContext,
        _state: &RuntimeState,
        _limits: &Limits,
    ) -> Result<Resized, RuntimeError> {
        let reason = format!("the {} runtime cannot resize live", self.kind().as_str());
        Ok(Resized {
            cpu: Applied::AfterRestart {
                reason: reason.clone(),
            },
            memory: Applied::AfterRestart { reason },
        })
    }

    /// [`Runtime::stop`] before a memory restore starts the sandbox again
    /// from other state (restored subvolumes swapped in first): host cleanup
    /// that the new start does not depend on may finish in the background.
    /// By default a plain stop.
    async fn stop_for_restore(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
    ) -> Result<(), RuntimeError> {
        self.stop(sb, state).await
    }

    /// Stop gracefully: ask the sandbox's processes to end (namespace:
    /// SIGTERM to each one but its PID 1), wait up to `grace` for them, then
    /// [`Runtime::stop`] (which kills what is left). By default a plain stop.
    async fn stop_gracefully(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
        _grace: std::time::Duration,
    ) -> Result<(), RuntimeError> {
        self.stop(sb, state).await
    }

    /// Stop the sandbox and release every host resource it held (processes,
    /// cgroups, sockets, taps). Idempotent: stopping a stopped sandbox is Ok.
    async fn stop(&self, sb: &SandboxContext, state: &RuntimeState) -> Result<(), RuntimeError>;
}

fn unsupported(kind: RuntimeKind, what: &str) -> RuntimeError {
    RuntimeError::Unsupported {
        runtime: kind.as_str(),
        what: what.into(),
    }
}

/// Failure of [`full_snapshot`].
#[derive(Debug, thiserror::Error)]
pub enum FullSnapshotError<E: std::error::Error + 'static> {
    /// The storage step failed; the sandbox was resumed, no VM state was saved.
    #[error("storage snapshot failed while the sandbox was paused")]
    Storage(#[source] E),
    /// Pausing, saving VM state or resuming failed. When the storage step had
    /// already succeeded, the caller deletes what it created.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// A full snapshot: pause → `storage` (the caller's Btrfs snapshot; a lazy
/// future, run only once paused) → [`Runtime::save_state`] into `dir` →
/// resume. The sandbox is resumed on every path that paused it, and a failed
/// save leaves nothing at `dir`.
///
/// Not cancellation-safe: dropping the returned future while paused leaves
/// the sandbox paused; callers run it to completion (e.g. in a spawned task).
pub async fn full_snapshot<R, T, E, F>(
    rt: &R,
    sb: &SandboxContext,
    state: &RuntimeState,
    dir: &Path,
    storage: F,
) -> Result<T, FullSnapshotError<E>>
where
    R: Runtime + ?Sized,
    E: std::error::Error + 'static,
    F: Future<Output = Result<T, E>>,
{
    rt.pause(sb, state).await?;
    let saved = match storage.await {
        Ok(value) => rt.save_state(sb, state, dir).await.map(|()| value),
        Err(e) => {
            rt.resume(sb, state).await?;
            return Err(FullSnapshotError::Storage(e));
        }
    };
    let resumed = rt.resume(sb, state).await;
    let value = saved?;
    resumed?;
    Ok(value)
}

/// An error and its sources, outermost first, joined with ": ".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_net_dev_sums_interfaces() {
        let text = "Inter-|   Receive  |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets\n    lo: 100 2 0 0 0 0 0 0 100 2 0 0 0 0 0 0\n  eth0: 50 1 0 0 0 0 0 0 70 3 0 0 0 0 0 0\n";
        assert_eq!(
            NetCounters::parse_net_dev(text),
            NetCounters {
                bytes_in: 150,
                bytes_out: 170,
                packets_in: 3,
                packets_out: 5
            }
        );
    }
}

//! Lifecycle steps of one VM: launch (boot or restore), wait for the agent,
//! disk hot-swap, save state, stop, re-attach and orphan cleanup.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::api::{DiskConfig, MemoryRestoreMode, RestoreConfig};
use super::client::{ChClient, ClientError};
use super::layout::{self, GuestImage, Layout, LayoutError};
use super::process::{self, ChProcess, ProcessError, ProcessId};
use super::saved::{self, SavedError};
use super::vsock;
use super::CloudHypervisorConfig;
use crate::runtime::network::{self, NetError};
use crate::runtime::SandboxContext;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cloud-hypervisor is already running for this sandbox (pid {pid})")]
    AlreadyRunning { pid: i32 },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("the disk preparation task failed")]
    Join(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("{op} failed")]
    Api {
        op: &'static str,
        #[source]
        source: ClientError,
    },
    #[error(transparent)]
    Saved(#[from] SavedError),
    #[error("the guest agent did not accept vsock port {port} within {after:?}; serial log tail:\n{serial}")]
    AgentTimeout {
        port: u32,
        after: Duration,
        serial: String,
    },
    #[error("cloud-hypervisor exited while {during}: {reason}")]
    Exited {
        during: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Network(#[from] NetError),
    #[error("disk {id} was not {what} within {after:?} (the guest must acknowledge hot-plug)")]
    Hotplug {
        id: String,
        what: &'static str,
        after: Duration,
    },
}

fn api(op: &'static str) -> impl FnOnce(ClientError) -> VmError {
    move |source| VmError::Api { op, source }
}

/// What the runtime stores per sandbox (the service keeps it as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChState {
    pub process: ProcessId,
    pub api_socket: PathBuf,
    pub vsock_socket: PathBuf,
}

impl ChState {
    pub fn new(p: &ChProcess, layout: &Layout) -> Self {
        ChState {
            process: p.id,
            api_socket: layout.api_socket.clone(),
            vsock_socket: layout.vsock_socket.clone(),
        }
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("ChState serializes")
    }

    pub fn from_value(v: &serde_json::Value) -> Option<Self> {
        serde_json::from_value(v.clone()).ok()
    }
}

/// How a VM comes up.
#[derive(Debug, Clone, Copy)]
pub enum Launch<'a> {
    /// Fresh boot from the guest image.
    Boot,
    /// `vm.restore` from a saved-state dir (restore or fork).
    Restore(&'a Path),
}

/// Spawn CH, boot or restore the VM, wait for the agent. On failure CH is
/// stopped and its sockets removed.
pub async fn launch(
    cfg: &CloudHypervisorConfig,
    guest: &GuestImage,
    sb: &SandboxContext,
    layout: &Layout,
    how: Launch<'_>,
) -> Result<ChProcess, VmError> {
    prepare_disks(cfg, layout).await?;
    process::remove_if_exists(&layout.api_socket);
    layout.remove_vsock_sockets();
    let spawned = async {
        if layout.network {
            network::ensure(&cfg.owner, &layout.sandbox).await?;
        }
        Ok::<_, VmError>(ChProcess::spawn(layout.process_paths(cfg)).await?)
    };
    let p = match spawned.await {
        Ok(p) => p,
        Err(e) => {
            remove_network(cfg, layout).await;
            return Err(e);
        }
    };
    let result = bring_up(cfg, guest, sb, layout, how, &p).await;
    saved::discard(&layout.restore_dir);
    match result {
        Ok(()) => Ok(p),
        Err(e) => {
            let _ = p.stop().await;
            layout.remove_vsock_sockets();
            remove_network(cfg, layout).await;
            Err(e)
        }
    }
}

/// The layout's directories and the sparse ext4 images (`mkfs.ext4`), on a
/// blocking thread: a slow mkfs must not stall an async worker.
async fn prepare_disks(cfg: &CloudHypervisorConfig, layout: &Layout) -> Result<(), VmError> {
    let (layout, ws_size, state_size) = (layout.clone(), cfg.workspace_size, cfg.state_disk_size);
    tokio::task::spawn_blocking(move || {
        layout.prepare()?;
        layout::ensure_ext4_image(&layout.workspace_disk, ws_size, "rewind-ws")?;
        layout::ensure_ext4_image(&layout.state_disk, state_size, "rewind-state")
    })
    .await
    .map_err(VmError::Join)?
    .map_err(VmError::from)
}

/// Remove the sandbox's network namespace (if any); CH must be gone.
async fn remove_network(cfg: &CloudHypervisorConfig, layout: &Layout) {
    if let Err(e) = network::remove(&cfg.owner, &layout.sandbox).await {
        tracing::warn!(sandbox = %layout.sandbox, error = %super::chain(&e), "cannot remove network namespace");
    }
}

async fn bring_up(
    cfg: &CloudHypervisorConfig,
    guest: &GuestImage,
    sb: &SandboxContext,
    layout: &Layout,
    how: Launch<'_>,
    p: &ChProcess,
) -> Result<(), VmError> {
    match how {
        Launch::Boot => {
            let config = layout.vm_config(guest, sb);
            p.client.create(&config).await.map_err(api("vm.create"))?;
            p.client.boot().await.map_err(api("vm.boot"))?;
        }
        Launch::Restore(dir) => {
            let prepared = saved::prepare_restore(layout, dir)?;
            let restore = RestoreConfig {
                source_url: super::api::file_url(&prepared),
                prefault: None,
                memory_restore_mode: Some(MemoryRestoreMode::Copy),
                resume: Some(true),
            };
            p.client
                .restore(&restore)
                .await
                .map_err(api("vm.restore"))?;
        }
    }
    if !cfg.wait_for_agent {
        return Ok(());
    }
    wait_agent(p, layout, cfg.agent_port, cfg.boot_timeout).await
}

/// Poll the hybrid-vsock handshake until the agent accepts or CH exits.
pub async fn wait_agent(
    p: &ChProcess,
    layout: &Layout,
    port: u32,
    limit: Duration,
) -> Result<(), VmError> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(exit) = p.exited() {
            return Err(VmError::Exited {
                during: "waiting for the guest agent",
                reason: exit.reason,
            });
        }
        if vsock::probe(&layout.vsock_socket, port).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(VmError::AgentTimeout {
                port,
                after: limit,
                serial: layout::serial_tail(layout, 20),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `vm.remove-device` → wait until the device is gone from `vm.info`'s
/// device tree (the guest acknowledged the eject; only then is the old image
/// closed and the id free) → `vm.add-disk` → wait until it is back.
pub async fn hot_swap_disk(
    client: &ChClient,
    disk: &DiskConfig,
    limit: Duration,
) -> Result<(), VmError> {
    let id = disk.id.clone().unwrap_or_default();
    client
        .remove_device(&id)
        .await
        .map_err(api("vm.remove-device"))?;
    wait_disk(client, &id, false, limit).await?;
    client.add_disk(disk).await.map_err(api("vm.add-disk"))?;
    wait_disk(client, &id, true, limit).await
}

async fn wait_disk(
    client: &ChClient,
    id: &str,
    present: bool,
    limit: Duration,
) -> Result<(), VmError> {
    let deadline = Instant::now() + limit;
    loop {
        let info = client.info().await.map_err(api("vm.info"))?;
        if info.has_device(id) == present {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let what = if present { "added" } else { "removed" };
            return Err(VmError::Hotplug {
                id: id.into(),
                what,
                after: limit,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `vm.snapshot` into `dir` (VM paused) plus the guest state disk, then the
/// manifest. On any failure `dir` is deleted; the VM stays paused.
pub async fn save_state(client: &ChClient, layout: &Layout, dir: &Path) -> Result<(), VmError> {
    saved::create_target(dir)?;
    let result = match client.snapshot(dir).await {
        Ok(()) => saved::save_state_disk(layout, dir)
            .and_then(|()| saved::write_manifest(dir))
            .map_err(VmError::from),
        Err(source) => Err(VmError::Api {
            op: "vm.snapshot",
            source,
        }),
    };
    if result.is_err() {
        saved::discard(dir);
    }
    result
}

/// Re-attach to the recorded CH when it is alive and answers.
pub async fn reattach(
    cfg: &CloudHypervisorConfig,
    layout: &Layout,
    recorded: Option<ProcessId>,
) -> Option<ChProcess> {
    ChProcess::reattach(layout.process_paths(cfg), recorded?).await
}

/// Kill what is left of a recorded CH (same pid + start time) and remove its
/// sockets and its network namespace.
pub async fn cleanup(cfg: &CloudHypervisorConfig, layout: &Layout, recorded: Option<ProcessId>) {
    process::cleanup_stale(&layout.process_paths(cfg), recorded).await;
    layout.remove_vsock_sockets();
    saved::discard(&layout.restore_dir);
    remove_network(cfg, layout).await;
}

/// Stop a sandbox's CH: the live handle if we have one, else the recorded
/// process (re-attached for a graceful stop, or killed). Idempotent.
pub async fn stop(
    cfg: &CloudHypervisorConfig,
    layout: &Layout,
    live: Option<std::sync::Arc<ChProcess>>,
    recorded: Option<ProcessId>,
) -> Result<(), VmError> {
    let p = match live {
        Some(p) => Some(p),
        None => reattach(cfg, layout, recorded)
            .await
            .map(std::sync::Arc::new),
    };
    if let Some(p) = p {
        p.stop().await?;
    }
    cleanup(cfg, layout, recorded).await;
    Ok(())
}

/// Kill every CH of this rewind instance (`owner`) whose sandbox is neither `known` nor `live`
/// and remove its API socket and its vsock sockets; then remove the network
/// namespaces of such sandboxes.
pub async fn cleanup_orphans(owner: &str, known: &[String], live: &[String]) -> Vec<String> {
    let mut cleaned = Vec::new();
    for t in process::find_tagged() {
        if t.owner != owner || known.contains(&t.sandbox) || live.contains(&t.sandbox) {
            continue;
        }
        let paths = process::ProcessPaths {
            sandbox: t.sandbox.clone(),
            owner: t.owner.clone(),
            binary: PathBuf::new(),
            api_socket: t.api_socket.clone(),
            log_file: PathBuf::new(),
            stderr_file: PathBuf::new(),
            netns: None,
        };
        process::cleanup_stale(&paths, Some(t.id)).await;
        if let Some(dir) = t.api_socket.parent() {
            process::remove_if_exists(&dir.join("vsock.sock"));
        }
        cleaned.push(format!(
            "cloud-hypervisor pid {} of sandbox {}",
            t.id.pid, t.sandbox
        ));
    }
    let keep: Vec<String> = known.iter().chain(live).cloned().collect();
    cleaned.extend(network::remove_orphans(owner, &keep).await);
    cleaned
}

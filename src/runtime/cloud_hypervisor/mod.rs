//! The Cloud Hypervisor runtime: one `cloud-hypervisor` process per sandbox.
//!
//! The guest (kernel, initramfs, read-only root disk, cmdline) comes from
//! `images/build-guest.sh`; the workspace is `workspace.ext4` inside the
//! sandbox's workspace subvolume (virtio-blk, serial `ws`); the agent is
//! reached over CH's hybrid vsock. Full snapshots are `vm.snapshot` into a
//! directory while the VM is paused (see [`crate::runtime::full_snapshot`]).
//!
//! Files: [`api`] (REST bodies), [`client`] (HTTP over the API socket),
//! [`process`] (spawn / supervise / re-attach), [`layout`] (paths, VM config,
//! disk images), [`saved`] (saved-state dirs, restore and fork), [`vsock`]
//! (agent readiness), [`vm`] (the lifecycle steps).

pub mod api;
pub mod client;
pub mod layout;
pub mod process;
pub mod saved;
pub mod vm;
pub mod vsock;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rewind_agent::client::Transport;

use self::client::ChClient;
use self::layout::{GuestImage, Layout};
use self::process::{ChProcess, ProcessId};
use self::vm::{ChState, Launch, VmError};
use super::chain;
use super::network::{self, NetworkInfo};
use super::{
    Attached, PortTarget, Runtime, RuntimeError, RuntimeKind, RuntimeState, SandboxContext,
};

/// Environment variable naming the `cloud-hypervisor` binary.
pub const BINARY_ENV: &str = "REWIND_CH_BINARY";

/// Settings of the runtime (one per service).
#[derive(Debug, Clone, PartialEq)]
pub struct CloudHypervisorConfig {
    /// The `cloud-hypervisor` binary ([`find_binary`]).
    pub binary: PathBuf,
    /// Output dir of `images/build-guest.sh`: `<data>/images/guest`.
    pub guest_dir: PathBuf,
    /// Size of a new sandbox's workspace disk (sparse).
    pub workspace_size: u64,
    /// Size of a new sandbox's guest state disk (root overlay upper, sparse).
    pub state_disk_size: u64,
    /// From `vm.boot` / `vm.restore` to the agent accepting on vsock.
    pub boot_timeout: Duration,
    /// Per step of a disk hot-swap (remove, add).
    pub hotplug_timeout: Duration,
    /// Identity of this rewind instance, set in each CH's environment;
    /// [`Runtime::cleanup_orphans`] only touches processes with the same
    /// owner. Default: the guest dir (unique per data dir).
    pub owner: String,
    /// vsock port the agent listens on (guest cmdline `rewind.listen`).
    pub agent_port: u32,
    /// Wait for the agent after boot/restore (true in the service). `false`
    /// returns right after `vm.boot` / `vm.restore`: for diagnostics and for
    /// tests on hosts where no guest boots.
    pub wait_for_agent: bool,
}

impl CloudHypervisorConfig {
    pub fn new(binary: PathBuf, guest_dir: PathBuf) -> Self {
        CloudHypervisorConfig {
            owner: guest_dir.display().to_string(),
            binary,
            guest_dir,
            workspace_size: 10 << 30,
            state_disk_size: 4 << 30,
            boot_timeout: Duration::from_secs(30),
            hotplug_timeout: Duration::from_secs(10),
            agent_port: 1024,
            wait_for_agent: true,
        }
    }
}

/// `$REWIND_CH_BINARY`, else `cloud-hypervisor` on `PATH`.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(BINARY_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    which::which("cloud-hypervisor").ok()
}

pub struct CloudHypervisorRuntime {
    config: CloudHypervisorConfig,
    guest: GuestImage,
    live: Mutex<HashMap<String, Arc<ChProcess>>>,
}

impl CloudHypervisorRuntime {
    /// Check the binary, `/dev/kvm` and the guest image; `Unavailable` with
    /// the reason when one is missing.
    pub fn new(config: CloudHypervisorConfig) -> Result<Self, RuntimeError> {
        let unavailable = |reason: String| RuntimeError::Unavailable { reason };
        if !config.binary.is_file() {
            return Err(unavailable(format!(
                "cloud-hypervisor binary {} not found (set {BINARY_ENV} or run scripts/install-cloud-hypervisor.sh)",
                config.binary.display()
            )));
        }
        if !Path::new("/dev/kvm").exists() {
            return Err(unavailable("/dev/kvm does not exist".into()));
        }
        let guest = GuestImage::load(&config.guest_dir).map_err(|e| unavailable(chain(&e)))?;
        Ok(CloudHypervisorRuntime {
            config,
            guest,
            live: Mutex::new(HashMap::new()),
        })
    }

    /// The service's constructor: binary from `ch_binary` (else
    /// [`find_binary`]), guest image from `<data_dir>/images/guest`.
    pub fn from_config(config: &crate::config::Config) -> Result<Self, RuntimeError> {
        Self::new(Self::config_for(config))
    }

    /// Whether this host can run the runtime (binary, `/dev/kvm`, guest
    /// image, and a KVM guests boot on); the error names what is missing.
    /// A paravirtualised KVM (the `kvm_pvm` module) is refused: stock guest
    /// kernels hang on it right after the boot loader (measured; DESIGN.md).
    /// `new` does not check this, so an explicit choice of this runtime (and
    /// the tests up to guest boot) still work on such hosts.
    pub fn probe(config: &crate::config::Config) -> Result<(), RuntimeError> {
        Self::new(Self::config_for(config))?;
        if Path::new("/sys/module/kvm_pvm").exists() {
            return Err(RuntimeError::Unavailable {
                reason: "this host's KVM is paravirtualised (kvm_pvm): guest kernels do not \
                         boot on it; use --runtime cloud-hypervisor to force it"
                    .into(),
            });
        }
        Ok(())
    }

    fn config_for(config: &crate::config::Config) -> CloudHypervisorConfig {
        let binary = Some(config.ch_binary.clone())
            .filter(|p| !p.as_os_str().is_empty())
            .or_else(find_binary)
            .unwrap_or_else(|| PathBuf::from("cloud-hypervisor"));
        CloudHypervisorConfig::new(binary, config.data_dir.join("images/guest"))
    }

    pub fn config(&self) -> &CloudHypervisorConfig {
        &self.config
    }

    /// API client of a running sandbox's CH (diagnostics, tests).
    pub fn client(&self, name: &str) -> Option<ChClient> {
        self.process(name).map(|p| p.client.clone())
    }

    /// Pid/start time of a running sandbox's CH and its spawn-to-ping time
    /// (`None` for a re-attached process).
    pub fn process_info(&self, name: &str) -> Option<(ProcessId, Option<Duration>)> {
        self.process(name).map(|p| (p.id, p.ready_after))
    }

    /// `addr` in the sandbox's network namespace; `None` without networking.
    fn in_sandbox_netns(
        &self,
        sb: &SandboxContext,
        addr: impl Into<std::net::SocketAddr>,
    ) -> Option<PortTarget> {
        sb.network.then(|| PortTarget {
            netns: network::netns_path(&self.config.owner, &sb.name),
            addr: addr.into(),
            guard: None,
        })
    }

    fn process(&self, name: &str) -> Option<Arc<ChProcess>> {
        self.live.lock().expect("live map").get(name).cloned()
    }

    fn running(&self, sb: &SandboxContext, op: &str) -> Result<Arc<ChProcess>, RuntimeError> {
        let process = self.process(&sb.name).filter(|p| p.exited().is_none());
        process.ok_or_else(|| RuntimeError::Hypervisor {
            op: op.into(),
            message: format!("sandbox {} has no running cloud-hypervisor", sb.name),
        })
    }

    async fn launch(
        &self,
        sb: &SandboxContext,
        how: Launch<'_>,
    ) -> Result<RuntimeState, RuntimeError> {
        if let Some(p) = self.process(&sb.name).filter(|p| p.exited().is_none()) {
            return Err(start_error(sb, VmError::AlreadyRunning { pid: p.id.pid }));
        }
        let layout = Layout::new(sb);
        let process = vm::launch(&self.config, &self.guest, sb, &layout, how)
            .await
            .map_err(|e| start_error(sb, e))?;
        let state = ChState::new(&process, &layout).to_value();
        let process = Arc::new(process);
        self.live
            .lock()
            .expect("live map")
            .insert(sb.name.clone(), process);
        Ok(state)
    }
}

#[async_trait]
impl Runtime for CloudHypervisorRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::CloudHypervisor
    }

    async fn start(&self, sb: &SandboxContext) -> Result<RuntimeState, RuntimeError> {
        self.launch(sb, Launch::Boot).await
    }

    async fn attach(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
    ) -> Result<Attached, RuntimeError> {
        if self.process(&sb.name).is_some_and(|p| p.exited().is_none()) {
            return Ok(Attached::Reattached(state.clone()));
        }
        let layout = Layout::new(sb);
        let recorded = ChState::from_value(state).map(|s| s.process);
        if let Some(p) = vm::reattach(&self.config, &layout, recorded).await {
            let state = ChState::new(&p, &layout).to_value();
            self.live
                .lock()
                .expect("live map")
                .insert(sb.name.clone(), Arc::new(p));
            return Ok(Attached::Reattached(state));
        }
        vm::cleanup(&self.config, &layout, recorded).await;
        self.start(sb).await.map(Attached::Restarted)
    }

    fn transport(&self, sb: &SandboxContext, _state: &RuntimeState) -> Transport {
        Transport::HybridVsock {
            socket: Layout::new(sb).vsock_socket,
            port: self.config.agent_port,
        }
    }

    async fn replace_workspace(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
    ) -> Result<RuntimeState, RuntimeError> {
        let p = self.running(sb, "replace workspace")?;
        let disk = Layout::new(sb).workspace_disk_config();
        vm::hot_swap_disk(&p.client, &disk, self.config.hotplug_timeout)
            .await
            .map_err(|e| RuntimeError::Remount {
                sandbox: sb.name.clone(),
                source: e.into(),
            })?;
        Ok(state.clone())
    }

    async fn cleanup_orphans(&self, known: &[String]) -> Vec<String> {
        let live: Vec<String> = self
            .live
            .lock()
            .expect("live map")
            .keys()
            .cloned()
            .collect();
        vm::cleanup_orphans(&self.config.owner, known, &live).await
    }

    fn failure(&self, sb: &SandboxContext) -> Option<String> {
        self.process(&sb.name)?.exited().map(|e| e.reason)
    }

    fn supports_memory_snapshots(&self) -> bool {
        true
    }

    /// The guest's address, from inside the sandbox's network namespace.
    fn port_target(
        &self,
        sb: &SandboxContext,
        _state: &RuntimeState,
        port: u16,
    ) -> Option<PortTarget> {
        self.in_sandbox_netns(sb, (network::GUEST, port))
    }

    /// The gateway address in the sandbox's namespace (the TAP's side).
    fn egress_listen(&self, sb: &SandboxContext, _state: &RuntimeState) -> Option<PortTarget> {
        self.in_sandbox_netns(sb, (network::GATEWAY, super::egress::PROXY_PORT))
    }

    fn network(&self, sb: &SandboxContext) -> Option<NetworkInfo> {
        sb.network.then(|| NetworkInfo {
            ip: network::GUEST,
            prefix: network::PREFIX,
            gateway: network::GATEWAY,
            mac_address: Layout::new(sb).mac(),
            network_interface: network::TAP.into(),
            netns: network::netns_path(&self.config.owner, &sb.name),
        })
    }

    async fn pause(&self, sb: &SandboxContext, _state: &RuntimeState) -> Result<(), RuntimeError> {
        let p = self.running(sb, "vm.pause")?;
        p.client
            .pause()
            .await
            .map_err(|e| hypervisor("vm.pause", &e))
    }

    async fn resume(&self, sb: &SandboxContext, _state: &RuntimeState) -> Result<(), RuntimeError> {
        let p = self.running(sb, "vm.resume")?;
        p.client
            .resume()
            .await
            .map_err(|e| hypervisor("vm.resume", &e))
    }

    async fn save_state(
        &self,
        sb: &SandboxContext,
        _state: &RuntimeState,
        dir: &Path,
    ) -> Result<(), RuntimeError> {
        let p = self.running(sb, "vm.snapshot")?;
        vm::save_state(&p.client, &Layout::new(sb), dir)
            .await
            .map_err(|e| hypervisor("vm.snapshot", &e))
    }

    async fn verify_state(&self, dir: &Path) -> Result<(), RuntimeError> {
        let dir = dir.to_path_buf();
        let verified = tokio::task::spawn_blocking(move || saved::verify(&dir)).await;
        match verified {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RuntimeError::SavedStateDamaged { message: chain(&e) }),
            Err(e) => Err(hypervisor("verify saved state", &e)),
        }
    }

    async fn start_from_state(
        &self,
        sb: &SandboxContext,
        dir: &Path,
    ) -> Result<RuntimeState, RuntimeError> {
        self.launch(sb, Launch::Restore(dir)).await
    }

    /// `vm.resize` to the new vCPU count and RAM size. CH resizes only
    /// within what the VM was booted to allow (hot-plug headroom), so a
    /// refusal is reported as "after restart" with CH's reason, not as an
    /// error: the next start boots with the new size.
    async fn resize(
        &self,
        sb: &SandboxContext,
        _state: &RuntimeState,
        limits: &super::Limits,
    ) -> Result<super::Resized, RuntimeError> {
        let p = self.running(sb, "vm.resize")?;
        let cpu = p
            .client
            .resize(&api::VmResize {
                desired_vcpus: Some(limits.vcpus),
                desired_ram: None,
            })
            .await;
        let memory = p
            .client
            .resize(&api::VmResize {
                desired_vcpus: None,
                desired_ram: Some(limits.memory_bytes),
            })
            .await;
        Ok(super::Resized {
            cpu: applied_by_ch(cpu),
            memory: applied_by_ch(memory),
        })
    }

    async fn stop(&self, sb: &SandboxContext, state: &RuntimeState) -> Result<(), RuntimeError> {
        let taken = self.live.lock().expect("live map").remove(&sb.name);
        let layout = Layout::new(sb);
        let recorded = ChState::from_value(state).map(|s| s.process);
        vm::stop(&self.config, &layout, taken, recorded)
            .await
            .map_err(|e| RuntimeError::Stop {
                sandbox: sb.name.clone(),
                source: e.into(),
            })
    }
}

fn start_error(sb: &SandboxContext, e: VmError) -> RuntimeError {
    RuntimeError::Start {
        sandbox: sb.name.clone(),
        source: e.into(),
    }
}

fn applied_by_ch(r: Result<(), client::ClientError>) -> super::Applied {
    match r {
        Ok(()) => super::Applied::Now,
        Err(e) => super::Applied::AfterRestart {
            reason: format!("vm.resize: {}", chain(&e)),
        },
    }
}

fn hypervisor(op: &str, e: &dyn std::error::Error) -> RuntimeError {
    RuntimeError::Hypervisor {
        op: op.into(),
        message: chain(e),
    }
}

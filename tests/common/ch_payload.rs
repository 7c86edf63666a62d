//! A PVH payload VM driven through rewind's own Cloud Hypervisor runtime and
//! storage code paths: the harness of `tests/ch_memory.rs` and of the payload
//! mode of `benches/vm.rs` (both include this file with `#[path]`).
//!
//! The guest is `tests/payload/pvh-counter.S`, assembled here with binutils:
//! it prints `MARK <n>` on the serial port forever, its counter in a vCPU
//! register.
#![allow(dead_code)] // each includer uses part of it

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rewind::runtime::cloud_hypervisor::api::VmState;
use rewind::runtime::cloud_hypervisor::client::ChClient;
use rewind::runtime::cloud_hypervisor::layout::{ensure_ext4_image, Layout};
use rewind::runtime::cloud_hypervisor::process::find_tagged;
use rewind::runtime::cloud_hypervisor::{
    find_binary, CloudHypervisorConfig, CloudHypervisorRuntime,
};
use rewind::runtime::{full_snapshot, Limits, Runtime, RuntimeError, RuntimeState, SandboxContext};
use rewind_storage::{
    CreateOptions, PoolConfig, SandboxName, SnapshotKind, SnapshotName, Storage, StorageError,
};

pub const NEEDS: &str = "needs REWIND_CH_BINARY: a cloud-hypervisor whose vm.snapshot works on this host (scripts/test.sh probes and runs these)";

/// Where the service keeps a memory snapshot's VM state inside its aux dir.
pub const VM_STATE_DIR: &str = "vm";

/// One pool and one payload for the whole test binary.
pub struct Shared {
    pub storage: Storage,
    pub guest: tempfile::TempDir,
    pub binary: PathBuf,
}

pub fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let binary = find_binary().expect("set REWIND_CH_BINARY to a cloud-hypervisor binary");
        let mut pool = PoolConfig::new(crate::common::data_dir("ch-memory"));
        pool.image_size_bytes = 8 << 30;
        let storage = Storage::open(pool).expect("open the test pool");
        let guest = tempfile::Builder::new()
            .prefix("pvh")
            .tempdir_in("/tmp")
            .unwrap();
        payload_guest(guest.path());
        Shared {
            storage,
            guest,
            binary,
        }
    })
}

/// Assemble the payload as the guest "kernel" (no initramfs), with an empty
/// read-only root disk as every rewind VM has.
pub fn payload_guest(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/payload");
    let obj = dir.join("pvh-counter.o");
    let mut asm = Command::new("as");
    asm.args(["--64", "--defsym", "DELAY=200000"])
        .arg(src.join("pvh-counter.S"))
        .arg("-o")
        .arg(&obj);
    run(asm, "as (binutils)");
    let mut ld = Command::new("ld");
    ld.args(["-m", "elf_x86_64", "--no-warn-rwx-segments", "-T"])
        .arg(src.join("pvh-counter.ld"))
        .arg(&obj)
        .arg("-o")
        .arg(dir.join("vmlinuz"));
    run(ld, "ld (binutils)");
    ensure_ext4_image(&dir.join("rootfs.ext4"), 16 << 20, "rootfs").unwrap();
    std::fs::write(dir.join("cmdline"), "\n").unwrap();
}

pub fn run(mut cmd: Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (scripts/install-deps.sh installs binutils)"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One payload VM's sandbox: its storage in the shared pool, its runtime.
pub struct Vm {
    pub name: SandboxName,
    pub ctx: SandboxContext,
    pub rt: CloudHypervisorRuntime,
    pub state: Option<RuntimeState>,
}

impl Vm {
    /// A new sandbox (empty, or forked from `from`'s storage), not started.
    pub fn new(memory_mb: u64, from: Option<(&Vm, &SnapshotName)>) -> Vm {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let s = shared();
        // Short names: socket paths under the pool must fit in 107 bytes.
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name: SandboxName = format!("m{}-{n}", std::process::id()).parse().unwrap();
        let options = CreateOptions {
            fork_from: from.map(|(vm, snap)| (vm.name.clone(), snap.clone())),
            ..Default::default()
        };
        s.storage.create_workspace(&name, &options).unwrap();
        let ctx = SandboxContext {
            name: name.to_string(),
            workspace: s.storage.workspace_path(&name),
            state_dir: s.storage.state_dir(&name),
            limits: Limits {
                memory_bytes: memory_mb << 20,
                cpu_millis: 1000,
                pids: 64,
                vcpus: 1,
            },
            network: false,
        };
        let mut cfg = CloudHypervisorConfig::new(s.binary.clone(), s.guest.path().to_owned());
        cfg.workspace_size = 64 << 20;
        cfg.state_disk_size = 64 << 20;
        cfg.wait_for_agent = false;
        let rt = CloudHypervisorRuntime::new(cfg).unwrap();
        Vm {
            name,
            ctx,
            rt,
            state: None,
        }
    }

    pub async fn boot(memory_mb: u64) -> Vm {
        let mut vm = Vm::new(memory_mb, None);
        vm.state = Some(vm.rt.start(&vm.ctx).await.unwrap());
        vm
    }

    pub fn state(&self) -> &RuntimeState {
        self.state.as_ref().expect("the VM was started")
    }

    pub fn client(&self) -> ChClient {
        self.rt.client(&self.ctx.name).expect("a running CH")
    }

    pub fn serial(&self) -> PathBuf {
        Layout::new(&self.ctx).serial_log
    }

    pub fn aux(&self, snap: &SnapshotName) -> PathBuf {
        shared().storage.snapshot_aux_path(&self.name, snap)
    }

    /// The service's `include_memory` snapshot: pause → Btrfs snapshot of
    /// workspace + state → `vm.snapshot` into the aux dir → resume. Returns
    /// the last counter value printed before the pause.
    pub async fn full_snapshot(&self, snap: &SnapshotName) -> u64 {
        let (storage, name, sn) = (shared().storage.clone(), self.name.clone(), snap.clone());
        let (client, serial) = (self.client(), self.serial());
        let take = async move {
            let paused = client.info().await.unwrap().state;
            assert_eq!(
                paused,
                VmState::Paused,
                "storage runs while the VM is paused"
            );
            let last = *marks(&serial).last().expect("a MARK before the snapshot");
            tokio::task::spawn_blocking(move || {
                storage.snapshot_with_state(&name, &sn, SnapshotKind::Kept)?;
                storage.snapshot_aux_dir(&name, &sn)?;
                Ok::<_, StorageError>(last)
            })
            .await
            .unwrap()
        };
        let dir = self.aux(snap).join(VM_STATE_DIR);
        full_snapshot(&self.rt, &self.ctx, self.state(), &dir, take)
            .await
            .unwrap()
    }

    /// The service's memory restore: verify → stop → Btrfs restore of
    /// workspace + state → start from the saved state.
    pub async fn restore(&mut self, snap: &SnapshotName) -> Result<(), RuntimeError> {
        let dir = self.aux(snap).join(VM_STATE_DIR);
        self.rt.verify_state(&dir).await?;
        self.stop().await;
        let (name, sn) = (self.name.clone(), snap.clone());
        let storage = shared().storage.clone();
        tokio::task::spawn_blocking(move || storage.restore(&name, &sn))
            .await
            .unwrap()
            .unwrap();
        self.start_from(&dir).await
    }

    pub async fn start_from(&mut self, dir: &Path) -> Result<(), RuntimeError> {
        self.state = Some(self.rt.start_from_state(&self.ctx, dir).await?);
        Ok(())
    }

    pub async fn stop(&mut self) {
        if let Some(state) = self.state.take() {
            self.rt.stop(&self.ctx, &state).await.unwrap();
        }
    }

    pub fn ch_pids(&self) -> Vec<i32> {
        find_tagged()
            .into_iter()
            .filter(|t| t.sandbox == self.ctx.name)
            .map(|t| t.id.pid)
            .collect()
    }
}

impl Drop for Vm {
    /// Never leave a CH process or a sandbox behind, even after a failure.
    fn drop(&mut self) {
        for pid in self.ch_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = shared().storage.delete_sandbox(&self.name);
    }
}

/// The counter values printed so far (complete lines only).
pub fn marks(serial: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(serial).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim().strip_prefix("MARK ")?.parse().ok())
        .collect()
}

/// Wait until the serial log holds at least `count` lines; returns them.
pub async fn wait_marks(serial: &Path, count: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = marks(serial);
        if seen.len() >= count {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "only {} MARK lines in {} after 60 s",
            seen.len(),
            serial.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until the counter printed in `serial` passes `value`.
pub async fn wait_past(serial: &Path, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while marks(serial).last().is_none_or(|&last| last <= value) {
        assert!(
            Instant::now() < deadline,
            "counter stuck at or below {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn snap(name: &str) -> SnapshotName {
    name.parse().unwrap()
}

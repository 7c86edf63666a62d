//! The Cloud Hypervisor runtime against the real `cloud-hypervisor` binary
//! (`REWIND_CH_BINARY` or `PATH`).
//!
//! Every test is `#[ignore]`d with the reason (`cargo test` lists them as
//! ignored); `scripts/test.sh` runs them with `--ignored` when it finds a
//! binary. Run by hand: `REWIND_CH_BINARY=... cargo test --test
//! cloud_hypervisor -- --ignored` (the real-KVM e2e test also needs
//! `REWIND_CH_E2E=1`).
//!
//! These tests boot Debian's installed kernel (`/boot/vmlinuz-*`) without a
//! root disk or agent: enough for create/boot/pause/resume/info/shutdown/
//! delete, supervision and re-attach on any host with `/dev/kvm`, including
//! PVM hosts where the guest never gets past early boot. The real guest
//! (agent over vsock, snapshots, restore, fork) is `e2e_real_kvm`, ignored
//! here.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{host_links, ip_netns};
use rewind::runtime::cloud_hypervisor::api::{ConsoleMode, VmState};
use rewind::runtime::cloud_hypervisor::client::{ChClient, ClientError};
use rewind::runtime::cloud_hypervisor::layout::{ensure_ext4_image, Layout};
use rewind::runtime::cloud_hypervisor::process::{find_tagged, ChProcess};
use rewind::runtime::cloud_hypervisor::{
    find_binary, CloudHypervisorConfig, CloudHypervisorRuntime,
};
use rewind::runtime::network;
use rewind::runtime::{
    full_snapshot, Attached, FullSnapshotError, Limits, Runtime, RuntimeError, RuntimeState,
    SandboxContext,
};

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A temp dir with a stand-in guest image and one sandbox's directories.
struct Fixture {
    root: tempfile::TempDir,
    binary: PathBuf,
    sandbox: SandboxContext,
}

impl Fixture {
    /// Panics when there is no binary: these tests are `#[ignore]`d and
    /// run only where scripts/test.sh finds one.
    fn new(test: &str) -> Fixture {
        let Some(binary) = find_binary() else {
            panic!("{test}: cloud-hypervisor binary not found (set REWIND_CH_BINARY)");
        };
        let root = tempfile::Builder::new()
            .prefix("ch")
            .tempdir_in("/tmp")
            .unwrap();
        make_stand_in_guest(&root.path().join("guest"));
        // Short unique names: socket paths must fit in 107 bytes.
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sandbox = sandbox_in(root.path(), &format!("t{}-{n}", std::process::id()));
        Fixture {
            root,
            binary,
            sandbox,
        }
    }

    fn config(&self) -> CloudHypervisorConfig {
        let mut cfg =
            CloudHypervisorConfig::new(self.binary.clone(), self.root.path().join("guest"));
        cfg.workspace_size = 64 << 20;
        cfg.state_disk_size = 64 << 20;
        cfg.wait_for_agent = false;
        cfg
    }

    fn runtime(&self) -> CloudHypervisorRuntime {
        CloudHypervisorRuntime::new(self.config()).unwrap()
    }

    fn layout(&self) -> Layout {
        Layout::new(&self.sandbox)
    }

    fn client(&self) -> ChClient {
        ChClient::new(self.layout().api_socket)
    }
}

impl Drop for Fixture {
    /// Never leave a CH process behind, even when an assertion failed.
    fn drop(&mut self) {
        for t in find_tagged()
            .into_iter()
            .filter(|t| t.sandbox == self.sandbox.name)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(t.id.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if !self.sandbox.network {
            return;
        }
        let (owner, name) = (self.config().owner, self.sandbox.name.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = rt.block_on(network::remove(&owner, &name));
        })
        .join()
        .unwrap();
    }
}

fn sandbox_in(root: &Path, name: &str) -> SandboxContext {
    let sb = SandboxContext {
        name: name.into(),
        workspace: root.join(name).join("ws"),
        state_dir: root.join(name).join("state"),
        limits: Limits {
            memory_bytes: 256 << 20,
            cpu_millis: 1000,
            pids: 256,
            vcpus: 1,
        },
        network: false,
    };
    std::fs::create_dir_all(&sb.workspace).unwrap();
    std::fs::create_dir_all(&sb.state_dir).unwrap();
    sb
}

/// Debian's installed kernel + initrd, an empty root disk, a console cmdline.
fn make_stand_in_guest(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let boot = |prefix: &str| {
        std::fs::read_dir("/boot")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .unwrap_or_else(|| panic!("no /boot/{prefix}* (install linux-image-amd64)"))
    };
    std::os::unix::fs::symlink(boot("vmlinuz-"), dir.join("vmlinuz")).unwrap();
    std::os::unix::fs::symlink(boot("initrd.img-"), dir.join("initrd.img")).unwrap();
    ensure_ext4_image(&dir.join("rootfs.ext4"), 16 << 20, "rootfs").unwrap();
    std::fs::write(dir.join("cmdline"), "console=ttyS0 panic=0\n").unwrap();
}

fn pid_alive(pid: i32) -> bool {
    rewind::runtime::cloud_hypervisor::process::proc_start_time(pid).is_some()
}

async fn wait_state(client: &ChClient, want: VmState) -> VmState {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = client.info().await.unwrap().state;
        if state == want || Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
#[ignore = "needs cloud-hypervisor (REWIND_CH_BINARY); scripts/test.sh runs these when it finds one"]
async fn spawn_answers_first_ping_without_polling() {
    let fx = Fixture::new("spawn_answers_first_ping_without_polling");
    let layout = fx.layout();
    layout.prepare().unwrap();

    let p = ChProcess::spawn(layout.process_paths(&fx.config()))
        .await
        .unwrap();

    let ping = p.client.ping().await.unwrap();
    eprintln!(
        "spawn-to-ping: {:?} ({})",
        p.ready_after.unwrap(),
        ping.version
    );
    assert_eq!(ping.pid, Some(i64::from(p.id.pid)));
    assert!(!ping.version.is_empty(), "{ping:?}");
    p.stop().await.unwrap();
    assert!(!pid_alive(p.id.pid));
    assert!(!layout.api_socket.exists());
}

#[tokio::test]
#[ignore = "needs cloud-hypervisor (REWIND_CH_BINARY); scripts/test.sh runs these when it finds one"]
async fn vm_lifecycle_create_boot_pause_resume_shutdown_delete() {
    let fx = Fixture::new("vm_lifecycle_create_boot_pause_resume_shutdown_delete");
    let rt = fx.runtime();
    let state = rt.start(&fx.sandbox).await.unwrap();
    let client = fx.client();
    assert_eq!(
        wait_state(&client, VmState::Running).await,
        VmState::Running
    );

    client.pause().await.unwrap();
    assert_eq!(client.info().await.unwrap().state, VmState::Paused);
    client.resume().await.unwrap();
    assert_eq!(client.info().await.unwrap().state, VmState::Running);
    let counters = client.counters().await.unwrap();
    assert!(counters.keys().any(|k| k.contains("ws")), "{counters:?}");
    client.shutdown().await.unwrap();
    // CH v53: a shut-down VM goes back to Created (it could boot again).
    assert_eq!(client.info().await.unwrap().state, VmState::Created);
    client.delete().await.unwrap();

    let err = client.info().await.unwrap_err();
    assert!(matches!(err, ClientError::Refused { .. }), "{err}");
    rt.stop(&fx.sandbox, &state).await.unwrap();
}

#[tokio::test]
#[ignore = "needs cloud-hypervisor (REWIND_CH_BINARY); scripts/test.sh runs these when it finds one"]
async fn vm_info_reports_disks_vsock_and_serial_as_configured() {
    let fx = Fixture::new("vm_info_reports_disks_vsock_and_serial_as_configured");
    let rt = fx.runtime();
    let state = rt.start(&fx.sandbox).await.unwrap();
    let layout = fx.layout();

    let info = fx.client().info().await.unwrap();

    assert_eq!(info.config.net, None, "networking is off: no NIC");
    assert_eq!(rt.network(&fx.sandbox), None);
    assert_eq!(rt.port_target(&fx.sandbox, &state, 80), None);
    let disks = info.config.disks.clone().unwrap();
    let ws = disks
        .iter()
        .find(|d| d.id.as_deref() == Some("ws"))
        .unwrap();
    assert_eq!((ws.serial.as_deref(), ws.readonly), (Some("ws"), false));
    assert_eq!(ws.path, layout.workspace_disk);
    let root = disks
        .iter()
        .find(|d| d.id.as_deref() == Some("rootfs"))
        .unwrap();
    assert!(root.readonly);
    let vsock = info.config.vsock.clone().unwrap();
    assert_eq!((vsock.cid, vsock.socket), (3, layout.vsock_socket.clone()));
    let serial = info.config.serial.clone().unwrap();
    assert_eq!(
        (serial.mode, serial.file),
        (ConsoleMode::File, Some(layout.serial_log))
    );
    assert_eq!(info.config.memory.unwrap().size, 256 << 20);
    assert!(layout.vsock_socket.exists());
    rt.stop(&fx.sandbox, &state).await.unwrap();
}

#[tokio::test]
#[ignore = "needs cloud-hypervisor (REWIND_CH_BINARY); scripts/test.sh runs these when it finds one"]
async fn process_death_is_detected_with_reason() {
    let fx = Fixture::new("process_death_is_detected_with_reason");
    let rt = fx.runtime();
    let state = rt.start(&fx.sandbox).await.unwrap();
    assert_eq!(rt.failure(&fx.sandbox), None);
    let (id, _) = rt.process_info(&fx.sandbox.name).unwrap();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(id.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(5);
    while rt.failure(&fx.sandbox).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reason = rt.failure(&fx.sandbox).unwrap();
    assert!(reason.contains("signal: 9"), "{reason}");
    let err = rt.pause(&fx.sandbox, &state).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Hypervisor { .. }), "{err}");
    rt.stop(&fx.sandbox, &state).await.unwrap();
    assert!(!fx.layout().api_socket.exists());
    assert!(!fx.layout().vsock_socket.exists());
}

#[tokio::test]
#[ignore = "needs cloud-hypervisor (REWIND_CH_BINARY); scripts/test.sh runs these when it finds one"]
async fn attach_after_restart_reattaches_to_live_process() {
    let fx = Fixture::new("attach_after_restart_reattaches_to_live_process");
    let before = fx.runtime();
    let state = before.start(&fx.sandbox).await.unwrap();
    let (id, _) = before.process_info(&fx.sandbox.name).unwrap();
    drop(before); // the service goes away; CH keeps running

    let after = fx.runtime();
    let attached = after.attach(&fx.sandbox, &state).await.unwrap();

    assert_eq!(attached, Attached::Reattached(state.clone()));
    assert_eq!(after.process_info(&fx.sandbox.name).unwrap().0, id);
    after.pause(&fx.sandbox, &state).await.unwrap();
    assert_eq!(fx.client().info().await.unwrap().state, VmState::Paused);
    after.stop(&fx.sandbox, &state).await.unwrap();
    assert!(!pid_alive(id.pid));
}

#[tokio::test]
#[ignore = "needs cloud-hypervisor (REWIND_CH_BINARY); scripts/test.sh runs these when it finds one"]
async fn attach_after_restart_restarts_dead_process_and_cleans_sockets() {
    let fx = Fixture::new("attach_after_restart_restarts_dead_process_and_cleans_sockets");
    let before = fx.runtime();
    let state = before.start(&fx.sandbox).await.unwrap();
    let (old, _) = before.process_info(&fx.sandbox.name).unwrap();
    drop(before);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    while pid_alive(old.pid) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let after = fx.runtime();
    let attached = after.attach(&fx.sandbox, &state).await.unwrap();

    let Attached::Restarted(new_state) = attached else {
        panic!("expected a restart, got {attached:?}");
    };
    let (new, _) = after.process_info(&fx.sandbox.name).unwrap();
    assert_ne!(new, old);
    assert_eq!(new_state["process"]["pid"], new.pid);
    after.stop(&fx.sandbox, &new_state).await.unwrap();
}

#[tokio::test]
#[ignore = "needs cloud-hypervisor (REWIND_CH_BINARY); scripts/test.sh runs these when it finds one"]
async fn stop_is_idempotent_and_leaves_nothing_behind() {
    let fx = Fixture::new("stop_is_idempotent_and_leaves_nothing_behind");
    let rt = fx.runtime();
    let state = rt.start(&fx.sandbox).await.unwrap();
    let (id, _) = rt.process_info(&fx.sandbox.name).unwrap();

    rt.stop(&fx.sandbox, &state).await.unwrap();
    rt.stop(&fx.sandbox, &state).await.unwrap();

    assert!(!pid_alive(id.pid));
    let left: Vec<_> = std::fs::read_dir(fx.layout().dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("sock"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    assert!(
        fx.layout().workspace_disk.exists(),
        "the workspace disk stays"
    );
}

#[tokio::test]
#[ignore = "needs cloud-hypervisor (REWIND_CH_BINARY); scripts/test.sh runs these when it finds one"]
async fn start_fails_cleanly_when_the_agent_never_answers() {
    let mut fx = Fixture::new("start_fails_cleanly_when_the_agent_never_answers");
    fx.sandbox.network = true;
    let netns = network::netns_path(&fx.config().owner, &fx.sandbox.name);
    let mut cfg = fx.config();
    cfg.wait_for_agent = true;
    cfg.boot_timeout = Duration::from_secs(2);
    let rt = CloudHypervisorRuntime::new(cfg).unwrap();

    let err = rt.start(&fx.sandbox).await.unwrap_err();

    let RuntimeError::Start { .. } = &err else {
        panic!("expected a start error, got {err:?}");
    };
    let message = rewind::runtime::chain(&err);
    assert!(
        message.contains("did not accept vsock port 1024"),
        "{message}"
    );
    assert!(find_tagged().iter().all(|t| t.sandbox != fx.sandbox.name));
    assert!(!fx.layout().api_socket.exists());
    assert!(!fx.layout().vsock_socket.exists());
    assert!(!netns.exists(), "a failed start left its network namespace");
}

#[tokio::test]
#[ignore = "needs cloud-hypervisor (REWIND_CH_BINARY); scripts/test.sh runs these when it finds one"]
async fn restoring_a_saved_nic_with_networking_off_is_refused() {
    let fx = Fixture::new("restoring_a_saved_nic_with_networking_off_is_refused");
    let saved = fx.root.path().join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    let config = serde_json::json!({
        "disks": [{"path": "/old/ws.ext4", "id": "ws"}],
        "vsock": {"cid": 3, "socket": "/old/vsock.sock"},
        "net": [{"tap": "tap0", "mac": "02:00:00:00:00:01"}]
    });
    std::fs::write(saved.join("config.json"), config.to_string()).unwrap();
    std::fs::write(saved.join("state.ext4"), b"").unwrap();
    let host_taps = || host_links().iter().filter(|l| l.contains("tap")).count();
    let taps_before = host_taps();
    let rt = fx.runtime();

    let err = rt.start_from_state(&fx.sandbox, &saved).await.unwrap_err();

    assert!(err.to_string().contains("failed to start"), "{err}");
    let RuntimeError::Start { .. } = &err else {
        panic!("expected a start error, got {err:?}");
    };
    let message = rewind::runtime::chain(&err);
    assert!(message.contains("networking is off"), "{message}");
    assert!(find_tagged().iter().all(|t| t.sandbox != fx.sandbox.name));
    assert_eq!(
        host_taps(),
        taps_before,
        "CH created a TAP in the host namespace"
    );
}

#[tokio::test]
#[ignore = "needs cloud-hypervisor (REWIND_CH_BINARY); scripts/test.sh runs these when it finds one"]
async fn full_snapshot_storage_failure_resumes_the_vm() {
    let fx = Fixture::new("full_snapshot_storage_failure_resumes_the_vm");
    let rt = fx.runtime();
    let state = rt.start(&fx.sandbox).await.unwrap();
    let dir = fx.root.path().join("snap");
    let storage = async { Err::<(), _>(std::io::Error::other("btrfs said no")) };

    let err = full_snapshot(&rt, &fx.sandbox, &state, &dir, storage)
        .await
        .unwrap_err();

    assert!(matches!(err, FullSnapshotError::Storage(_)), "{err}");
    assert_eq!(fx.client().info().await.unwrap().state, VmState::Running);
    assert!(!dir.exists());
    rt.stop(&fx.sandbox, &state).await.unwrap();
}

/// On PVM hosts `vm.snapshot` fails (GetNestedState); on real KVM it works.
/// Either way the VM must be running afterwards, and the directory must be
/// either complete or gone.
#[tokio::test]
#[ignore = "needs cloud-hypervisor (REWIND_CH_BINARY); scripts/test.sh runs these when it finds one"]
async fn full_snapshot_vm_snapshot_failure_resumes_and_deletes_partial_output() {
    let name = "full_snapshot_vm_snapshot_failure_resumes_and_deletes_partial_output";
    let fx = Fixture::new(name);
    let rt = fx.runtime();
    let state = rt.start(&fx.sandbox).await.unwrap();
    let dir = fx.root.path().join("snap");
    let storage = async { Ok::<_, std::io::Error>("btrfs snapshot taken") };

    let result = full_snapshot(&rt, &fx.sandbox, &state, &dir, storage).await;

    assert_eq!(fx.client().info().await.unwrap().state, VmState::Running);
    match result {
        Err(FullSnapshotError::Runtime(RuntimeError::Hypervisor { op, message })) => {
            eprintln!("vm.snapshot failed as expected on this host: {message}");
            assert_eq!(op, "vm.snapshot");
            assert!(
                message.contains("cloud-hypervisor refused vm.snapshot"),
                "{message}"
            );
            assert!(!dir.exists(), "partial snapshot left at {}", dir.display());
        }
        Ok(_) => {
            eprintln!("vm.snapshot works on this host (real KVM)");
            for f in ["config.json", "state.json", "memory-ranges", "state.ext4"] {
                assert!(dir.join(f).exists(), "{f} missing");
            }
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
    rt.stop(&fx.sandbox, &state).await.unwrap();
}

/// On PVM hosts the guest never acknowledges the ACPI eject, so the swap
/// must time out with a clear error and leave the old disk attached; on real
/// KVM the stand-in Debian kernel ejects and the disk comes back.
#[tokio::test]
#[ignore = "needs cloud-hypervisor (REWIND_CH_BINARY); scripts/test.sh runs these when it finds one"]
async fn replace_workspace_waits_for_the_guest_to_eject_the_old_disk() {
    let name = "replace_workspace_waits_for_the_guest_to_eject_the_old_disk";
    let fx = Fixture::new(name);
    let mut cfg = fx.config();
    cfg.hotplug_timeout = Duration::from_secs(2);
    let rt = CloudHypervisorRuntime::new(cfg).unwrap();
    let state = rt.start(&fx.sandbox).await.unwrap();
    assert_eq!(
        wait_state(&fx.client(), VmState::Running).await,
        VmState::Running
    );

    let result = rt.replace_workspace(&fx.sandbox, &state).await;

    let info = fx.client().info().await.unwrap();
    assert!(info.has_device("ws"));
    match result {
        Err(e @ RuntimeError::Remount { .. }) => {
            let message = rewind::runtime::chain(&e);
            eprintln!("hot-swap timed out as expected on this host: {message}");
            assert!(message.contains("disk ws was not removed"), "{message}");
        }
        Ok(_) => assert!(info.has_disk("ws")),
        Err(other) => panic!("unexpected error: {other}"),
    }
    rt.stop(&fx.sandbox, &state).await.unwrap();
}

fn ns_inode(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

#[tokio::test]
#[ignore = "needs cloud-hypervisor (REWIND_CH_BINARY); scripts/test.sh runs these when it finds one"]
async fn network_vm_runs_in_its_own_namespace_on_its_tap() {
    let mut fx = Fixture::new("network_vm_runs_in_its_own_namespace_on_its_tap");
    fx.sandbox.network = true;
    let host_before = host_links();
    let rt = fx.runtime();
    let netns = network::netns_path(&fx.config().owner, &fx.sandbox.name);

    let state = rt.start(&fx.sandbox).await.unwrap();

    let info = fx.client().info().await.unwrap();
    let nets = info.config.net.clone().unwrap_or_default();
    assert_eq!(nets.len(), 1, "{nets:?}");
    assert_eq!(nets[0].tap.as_deref(), Some("tap0"));
    assert_eq!(nets[0].mac, fx.layout().net_config().mac);
    let shown = rt.network(&fx.sandbox).unwrap();
    assert_eq!(Some(shown.mac_address), nets[0].mac.clone());
    assert_eq!(
        (shown.ip.to_string(), shown.netns),
        ("10.0.2.15".to_string(), netns.clone())
    );
    let cmdline = info.config.payload.cmdline.clone().unwrap_or_default();
    assert!(
        cmdline.contains("rewind.ip=10.0.2.15/24 rewind.gw=10.0.2.2"),
        "{cmdline}"
    );
    let target = rt.port_target(&fx.sandbox, &state, 8080).unwrap();
    assert_eq!(
        (target.netns, target.addr.to_string()),
        (netns.clone(), "10.0.2.15:8080".to_string())
    );
    let (id, _) = rt.process_info(&fx.sandbox.name).unwrap();
    let ch_ns = PathBuf::from(format!("/proc/{}/ns/net", id.pid));
    assert_eq!(
        ns_inode(&ch_ns),
        ns_inode(&netns),
        "CH is not in the sandbox namespace"
    );
    assert_ne!(ns_inode(&ch_ns), ns_inode(Path::new("/proc/self/ns/net")));
    // A TAP has carrier only while a process holds it open: CH opened this one.
    let tap = ip_netns(&netns, &["-o", "link", "show", "tap0"]);
    assert!(tap.contains("LOWER_UP"), "{tap}");
    assert_eq!(
        host_links(),
        host_before,
        "a device appeared in the host namespace"
    );

    rt.stop(&fx.sandbox, &state).await.unwrap();

    assert!(!netns.exists(), "the namespace outlived the VM");
    assert!(!pid_alive(id.pid));
}

#[tokio::test]
#[ignore = "needs cloud-hypervisor (REWIND_CH_BINARY); scripts/test.sh runs these when it finds one"]
async fn network_namespace_of_an_unknown_sandbox_is_cleaned_up() {
    let mut fx = Fixture::new("network_namespace_of_an_unknown_sandbox_is_cleaned_up");
    fx.sandbox.network = true;
    let before = fx.runtime();
    before.start(&fx.sandbox).await.unwrap();
    drop(before);
    let netns = network::netns_path(&fx.config().owner, &fx.sandbox.name);
    assert!(network::is_netns(&netns));

    let cleaned = fx.runtime().cleanup_orphans(&[]).await;

    assert!(
        cleaned
            .iter()
            .any(|c| c == &format!("network namespace of sandbox {}", fx.sandbox.name)),
        "{cleaned:?}"
    );
    assert!(!netns.exists());
}

#[tokio::test]
#[ignore = "needs cloud-hypervisor (REWIND_CH_BINARY); scripts/test.sh runs these when it finds one"]
async fn cleanup_orphans_kills_unknown_sandboxes_only() {
    let fx = Fixture::new("cleanup_orphans_kills_unknown_sandboxes_only");
    let before = fx.runtime();
    let state: RuntimeState = before.start(&fx.sandbox).await.unwrap();
    let (id, _) = before.process_info(&fx.sandbox.name).unwrap();
    drop(before);
    let after = fx.runtime();

    let kept = after
        .cleanup_orphans(std::slice::from_ref(&fx.sandbox.name))
        .await;
    assert!(
        kept.iter().all(|c| !c.contains(&fx.sandbox.name)),
        "{kept:?}"
    );
    assert!(pid_alive(id.pid));
    let cleaned = after.cleanup_orphans(&[]).await;

    assert!(
        cleaned.iter().any(|c| c.contains(&fx.sandbox.name)),
        "{cleaned:?}"
    );
    assert!(!pid_alive(id.pid));
    assert!(!fx.layout().api_socket.exists());
    after.stop(&fx.sandbox, &state).await.unwrap();
}

#[tokio::test]
#[ignore = "needs cloud-hypervisor (REWIND_CH_BINARY); scripts/test.sh runs these when it finds one"]
async fn new_reports_missing_guest_image_as_unavailable() {
    let fx = Fixture::new("new_reports_missing_guest_image_as_unavailable");
    let cfg = CloudHypervisorConfig::new(fx.binary.clone(), fx.root.path().join("nope"));

    let err = CloudHypervisorRuntime::new(cfg).err().unwrap();

    let RuntimeError::Unavailable { reason } = err else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(reason.contains("images/build-guest.sh"), "{reason}");
}

/// The whole VM story on a host where a guest boots under KVM, with the real
/// guest from `images/build-guest.sh` (`REWIND_CH_GUEST_DIR`, default
/// `/var/lib/rewind/images/guest`). Storage is emulated with file copies of
/// the workspace image (the service does it with Btrfs snapshots).
#[tokio::test]
#[ignore = "needs a host where a guest boots under KVM (not this PVM host); run: REWIND_CH_E2E=1 cargo test --test cloud_hypervisor -- --ignored"]
async fn e2e_real_kvm_boot_run_snapshot_restore_fork() {
    assert_eq!(
        std::env::var("REWIND_CH_E2E").as_deref(),
        Ok("1"),
        "set REWIND_CH_E2E=1 on a real-KVM host"
    );
    let fx = Fixture::new("e2e_real_kvm_boot_run_snapshot_restore_fork");
    let guest = std::env::var_os("REWIND_CH_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/rewind/images/guest".into());
    let mut cfg = CloudHypervisorConfig::new(fx.binary.clone(), guest);
    cfg.owner = fx.root.path().display().to_string();
    cfg.workspace_size = 256 << 20;
    cfg.state_disk_size = 256 << 20;
    let rt = CloudHypervisorRuntime::new(cfg).unwrap();
    let sb = &fx.sandbox;
    let ws = fx.layout().workspace_disk;
    let copy = |from: &Path, to: &Path| {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap(); // a new inode, like a subvolume swap
    };

    // boot + run
    let t = Instant::now();
    let state = rt.start(sb).await.unwrap();
    eprintln!("boot to agent ready: {:?}", t.elapsed());
    let agent = agent_for(&rt, sb, &state);
    assert_eq!(
        sh(&agent, "echo one > /workspace/f && cat /workspace/f").await,
        "one\n"
    );

    // per-command snapshot: quiesce → copy → thaw
    let t = Instant::now();
    assert!(agent.quiesce(Duration::from_secs(10)).await.unwrap());
    let cmd_snap = fx.root.path().join("cmd-snap.ext4");
    std::fs::copy(&ws, &cmd_snap).unwrap();
    agent.thaw().await.unwrap();
    eprintln!("per-command snapshot (plain copy here): {:?}", t.elapsed());

    // fs-only restore on the running VM
    sh(&agent, "echo two > /workspace/f").await;
    let t = Instant::now();
    agent.unmount_workspace(true).await.unwrap();
    copy(&cmd_snap, &ws);
    rt.replace_workspace(sb, &state).await.unwrap();
    agent.mount_workspace().await.unwrap();
    eprintln!("fs-only restore: {:?}", t.elapsed());
    assert_eq!(sh(&agent, "cat /workspace/f").await, "one\n");

    // full snapshot
    sh(
        &agent,
        "echo three > /workspace/f && sync && echo 42 > /dev/shm/mem",
    )
    .await;
    let full = fx.root.path().join("full");
    let full_ws = fx.root.path().join("full-ws.ext4");
    let t = Instant::now();
    let storage = async { std::fs::copy(&ws, &full_ws).map(drop) };
    full_snapshot(&rt, sb, &state, &full, storage)
        .await
        .unwrap();
    eprintln!("full snapshot (256 MiB guest): {:?}", t.elapsed());
    sh(&agent, "echo four > /workspace/f && echo 0 > /dev/shm/mem").await;

    // restore: stop → storage back → start_from_state
    rt.stop(sb, &state).await.unwrap();
    copy(&full_ws, &ws);
    let t = Instant::now();
    let state = rt.start_from_state(sb, &full).await.unwrap();
    eprintln!("restore: {:?}", t.elapsed());
    let agent = agent_for(&rt, sb, &state);
    assert_eq!(
        sh(&agent, "cat /workspace/f /dev/shm/mem").await,
        "three\n42\n"
    );

    // fork into a second sandbox (own workspace copy, vsock, state disk)
    let fork = sandbox_in(fx.root.path(), &format!("{}-fork", sb.name));
    copy(&full_ws, &Layout::new(&fork).workspace_disk);
    let t = Instant::now();
    let fork_state = rt.start_from_state(&fork, &full).await.unwrap();
    eprintln!("fork: {:?}", t.elapsed());
    let fork_agent = agent_for(&rt, &fork, &fork_state);
    fork_agent
        .reseed(rand::random::<[u8; 32]>().to_vec())
        .await
        .unwrap();
    assert_eq!(
        sh(&fork_agent, "cat /workspace/f /dev/shm/mem").await,
        "three\n42\n"
    );
    sh(&fork_agent, "echo forked > /workspace/f").await;
    assert_eq!(sh(&agent, "cat /workspace/f").await, "three\n");

    rt.stop(&fork, &fork_state).await.unwrap();
    rt.stop(sb, &state).await.unwrap();
}

fn agent_for(
    rt: &CloudHypervisorRuntime,
    sb: &SandboxContext,
    state: &RuntimeState,
) -> rewind_agent::client::AgentClient {
    rewind_agent::client::AgentClient::new(rt.transport(sb, state))
}

async fn sh(agent: &rewind_agent::client::AgentClient, script: &str) -> String {
    let req = rewind_agent::protocol::ExecRequest {
        shell: Some(script.into()),
        timeout_ms: Some(30_000),
        ..Default::default()
    };
    let out = agent.exec_collect(req).await.unwrap();
    assert_eq!(
        out.status.exit_code,
        0,
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

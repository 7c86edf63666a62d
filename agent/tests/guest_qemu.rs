//! The microVM guest image boots under QEMU software emulation and its agent
//! works: ping, exec, the workspace disk mounted at `/workspace`, quiesce
//! (FIFREEZE), thaw, unmount and mount again. Also: root file-system changes
//! persist on the optional `state` disk, and a guest without its root disk
//! powers off with the reason on the console.
//!
//! Needs the images from `images/build-guest.sh` (in `$REWIND_GUEST_DIR`, else
//! `${REWIND_DATA_DIR:-/var/lib/rewind}/images/guest`) and
//! `qemu-system-x86_64`; `scripts/test.sh`
//! builds the images and runs this with `--ignored`. By hand:
//!
//! ```text
//! cargo build -p rewind-agent --release
//! images/build-guest.sh --agent target/release/rewind-agent
//! cargo test -p rewind-agent --test guest_qemu -- --ignored --nocapture
//! ```
//!
//! QEMU runs with user-mode networking restricted to the guest (`restrict=on`)
//! and one forward bound on 127.0.0.1 only; there is no other network.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rewind_agent::client::{AgentClient, ClientTimeouts, Transport};
use rewind_agent::protocol::ExecRequest;

/// Port the guest agent listens on (forwarded from a free host port).
const GUEST_PORT: u16 = 7000;
/// Boot under TCG takes ~10-20 s here; leave room for a loaded machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn guest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("REWIND_GUEST_DIR") {
        return PathBuf::from(dir);
    }
    let data = std::env::var_os("REWIND_DATA_DIR").unwrap_or_else(|| "/var/lib/rewind".into());
    PathBuf::from(data).join("images/guest")
}

fn images_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../images")
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A running QEMU; killed and reaped on drop.
struct Qemu {
    child: Child,
    console: PathBuf,
    addr: SocketAddr,
}

/// One virtio-blk disk of the guest.
#[derive(Clone, Copy)]
struct Disk<'a> {
    file: &'a Path,
    serial: &'static str,
    read_only: bool,
}

impl Qemu {
    fn spawn(guest: &Path, disks: &[Disk<'_>], console: &Path) -> Result<Self> {
        let port = free_port()?;
        let cmdline = std::fs::read_to_string(guest.join("cmdline")).context("read cmdline")?;
        let append = format!(
            "{} rewind.listen=tcp:0.0.0.0:{GUEST_PORT} rewind.ip=10.0.2.15/24",
            cmdline.trim()
        );
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-machine", "q35", "-accel", "tcg", "-m", "512", "-smp", "1"])
            .args(["-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(guest.join("vmlinuz"))
            .arg("-initrd")
            .arg(guest.join("initrd.img"))
            .args(["-append", &append]);
        for (i, disk) in disks.iter().enumerate() {
            let ro = if disk.read_only { ",readonly=on" } else { "" };
            let drive = format!(
                "file={},if=none,id=d{i},format=raw{ro}",
                disk.file.display()
            );
            let device = format!("virtio-blk-pci,drive=d{i},serial={}", disk.serial);
            cmd.args(["-drive", &drive, "-device", &device]);
        }
        let netdev = format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:{GUEST_PORT}");
        let child = cmd
            .args(["-netdev", &netdev])
            .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
            .stdin(Stdio::null())
            .stdout(File::create(console)?)
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn qemu-system-x86_64")?;
        Ok(Self {
            child,
            console: console.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    /// Boots the guest with its root disk and `extra` disks.
    fn boot(guest: &Path, extra: &[Disk<'_>], console: &Path) -> Result<Self> {
        let root = guest.join("rootfs.ext4");
        let mut disks = vec![Disk {
            file: &root,
            serial: "rootfs",
            read_only: true,
        }];
        disks.extend_from_slice(extra);
        Self::spawn(guest, &disks, console)
    }

    fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Polls until the agent answers a ping; fails early if QEMU exits.
    async fn wait_agent(&mut self) -> Result<AgentClient> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "qemu exited ({status}) before the agent answered:\n{}",
                    self.console_tail()
                );
            }
            // A short dial timeout: until the guest listens, slirp holds the
            // connection open while it retries the guest-side SYN.
            let timeouts = ClientTimeouts {
                connect: Duration::from_secs(1),
                ..ClientTimeouts::default()
            };
            let client = AgentClient::with_timeouts(Transport::Tcp(self.addr), timeouts);
            if client.ping().await.is_ok() {
                return Ok(client);
            }
            ensure!(
                Instant::now() < deadline,
                "agent not ready after {BOOT_TIMEOUT:?}:\n{}",
                self.console_tail()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits for QEMU to exit by itself (the guest powered off or panicked).
    fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "qemu still running after {timeout:?}:\n{}",
                self.console_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn complete_guest() -> Result<PathBuf> {
    let guest = guest_dir();
    ensure!(
        guest.join(".rewind-image-complete").exists(),
        "no complete guest image in {} (run images/build-guest.sh)",
        guest.display()
    );
    Ok(guest)
}

/// A fresh raw ext4 image made by images/make-workspace-image.sh.
fn make_image(dir: &Path, name: &str) -> Result<PathBuf> {
    let file = dir.join(name);
    let status = Command::new(images_dir().join("make-workspace-image.sh"))
        .arg(&file)
        .arg("64M")
        .status()
        .context("run images/make-workspace-image.sh")?;
    ensure!(status.success(), "make-workspace-image.sh failed: {status}");
    Ok(file)
}

async fn sh(client: &AgentClient, cmd: &str) -> Result<String> {
    let out = client
        .exec_collect(ExecRequest {
            shell: Some(cmd.to_owned()),
            timeout_ms: Some(60_000),
            ..Default::default()
        })
        .await
        .with_context(|| format!("exec {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.exit_code == 0,
        "{cmd:?} exited {}: stdout {stdout:?} stderr {:?}",
        out.status.exit_code,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[tokio::test]
#[ignore = "needs guest images and qemu: run images/build-guest.sh (scripts/test.sh does), then --ignored"]
async fn guest_boots_under_qemu_and_agent_serves_workspace() -> Result<()> {
    let guest = complete_guest()?;
    let tmp = tempfile::tempdir()?;
    let ws = make_image(tmp.path(), "ws.img")?;
    let disks = [Disk {
        file: &ws,
        serial: "ws",
        read_only: false,
    }];
    let started = Instant::now();
    let mut qemu = Qemu::boot(&guest, &disks, &tmp.path().join("console.log"))?;
    let client = qemu.wait_agent().await?;
    eprintln!(
        "guest_qemu: agent ready {:?} after qemu spawn",
        started.elapsed()
    );

    client
        .mount_workspace()
        .await
        .context("mount the ws disk")?;
    let uname = sh(&client, "uname -a").await?;
    assert!(uname.starts_with("Linux rewind "), "uname: {uname:?}");
    let mounts = sh(&client, "grep ' /workspace ' /proc/mounts").await?;
    assert!(mounts.contains(" ext4 "), "workspace mount: {mounts:?}");
    assert!(mounts.contains("noatime"), "workspace mount: {mounts:?}");
    assert_eq!(
        sh(&client, "echo hi > /workspace/f && cat /workspace/f").await?,
        "hi\n"
    );

    let frozen = client.quiesce(Duration::from_secs(30)).await?;
    assert!(frozen, "a block-device workspace must be frozen");
    client.thaw().await?;
    assert_eq!(
        sh(&client, "echo again >> /workspace/f && cat /workspace/f").await?,
        "hi\nagain\n"
    );

    client.unmount_workspace(true).await?;
    let refused = sh(&client, "ls -A /workspace").await.unwrap_err();
    assert!(
        format!("{refused:#}").contains("WorkspaceUnavailable"),
        "an exec without the workspace must be refused: {refused:#}"
    );
    client.mount_workspace().await?;
    assert_eq!(sh(&client, "cat /workspace/f").await?, "hi\nagain\n");
    Ok(())
}

#[tokio::test]
#[ignore = "needs guest images and qemu: run images/build-guest.sh (scripts/test.sh does), then --ignored"]
async fn guest_root_changes_persist_on_state_disk() -> Result<()> {
    let guest = complete_guest()?;
    let tmp = tempfile::tempdir()?;
    let state = make_image(tmp.path(), "state.img")?;
    let disks = [Disk {
        file: &state,
        serial: "state",
        read_only: false,
    }];
    let console = tmp.path().join("console.log");

    let mut first = Qemu::boot(&guest, &disks, &console)?;
    let client = first.wait_agent().await?;
    let root = sh(&client, "grep '^overlay / ' /proc/mounts").await?;
    assert!(
        root.contains("upperdir=/mnt/state/upper"),
        "root mount: {root:?}"
    );
    sh(&client, "echo kept > /etc/rewind-state-test && sync").await?;
    drop(first);

    let mut second = Qemu::boot(&guest, &disks, &console)?;
    let client = second.wait_agent().await?;
    assert_eq!(sh(&client, "cat /etc/rewind-state-test").await?, "kept\n");
    Ok(())
}

#[test]
#[ignore = "needs guest images and qemu: run images/build-guest.sh (scripts/test.sh does), then --ignored"]
fn guest_without_root_disk_powers_off_with_reason() -> Result<()> {
    let guest = complete_guest()?;
    let tmp = tempfile::tempdir()?;
    let ws = make_image(tmp.path(), "ws.img")?;
    let disks = [Disk {
        file: &ws,
        serial: "ws",
        read_only: false,
    }];
    let mut qemu = Qemu::spawn(&guest, &disks, &tmp.path().join("console.log"))?;

    let status = qemu.wait_exit(BOOT_TIMEOUT)?;
    let console = std::fs::read_to_string(&qemu.console)?;
    assert!(status.success(), "qemu: {status}");
    assert!(
        console.contains("rewind-init: FATAL: no root disk"),
        "console:\n{}",
        qemu.console_tail()
    );
    Ok(())
}

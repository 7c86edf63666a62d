//! Shared helpers: start a real agent process, loop-mounted ext4 images,
//! a tiny uid-shifted busybox rootfs.
#![allow(dead_code)]

pub mod busybox;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rewind_agent::client::{AgentClient, Transport};

pub const AGENT: &str = env!("CARGO_BIN_EXE_rewind-agent");

/// Runs a host command and panics with its stderr on failure.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An agent in `serve` mode on the host, listening on a Unix socket.
pub struct ServedAgent {
    child: Child,
    pub client: AgentClient,
    pub socket: PathBuf,
    pub workspace: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServedAgent {
    /// Serves a fresh temp directory as the workspace.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let workspace = dir.path().join("ws");
        std::fs::create_dir(&workspace).unwrap();
        Self::start_with(dir, workspace, None).await
    }

    /// Serves `workspace` (optionally backed by `device`); the socket lives
    /// in `dir`, which is removed when the agent is dropped.
    pub async fn start_with(
        dir: tempfile::TempDir,
        workspace: PathBuf,
        device: Option<&Path>,
    ) -> Self {
        let socket = dir.path().join("agent.sock");
        let mut cmd = Command::new(AGENT);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--workspace")
            .arg(&workspace)
            .stdin(Stdio::null());
        if let Some(device) = device {
            cmd.arg("--workspace-device").arg(device);
        }
        let child = cmd.spawn().unwrap();
        let client = AgentClient::new(Transport::Unix(socket.clone()));
        wait_ready(&client).await;
        Self {
            child,
            client,
            socket,
            workspace,
            _dir: dir,
        }
    }

    /// A second, independent client for the same agent.
    pub fn new_client(&self) -> AgentClient {
        AgentClient::new(Transport::Unix(self.socket.clone()))
    }
}

impl Drop for ServedAgent {
    fn drop(&mut self) {
        // The agent is a child subreaper: every process it left running is
        // its direct child by now.
        for pid in children_of(self.child.id() as i32) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PIDs whose parent is `parent`.
pub fn children_of(parent: i32) -> Vec<i32> {
    let entries = std::fs::read_dir("/proc").unwrap();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            ppid == Some(parent.to_string().as_str())
        })
        .collect()
}

/// Polls ping until the agent answers (10 s).
pub async fn wait_ready(client: &AgentClient) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.ping().await {
            Ok(_) => return,
            Err(err) if Instant::now() > deadline => panic!("agent never became ready: {err:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A loop-mounted ext4 image.
pub struct LoopExt4 {
    pub device: PathBuf,
    pub mountpoint: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopExt4 {
    pub fn create() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("ws.img");
        let mountpoint = dir.path().join("ws");
        std::fs::create_dir(&mountpoint).unwrap();
        sh(&format!(
            "truncate -s 64M {0} && mkfs.ext4 -q -F {0}",
            image.display()
        ));
        let device = sh(&format!("losetup -f --show {}", image.display()));
        let device = PathBuf::from(device.trim());
        sh(&format!(
            "mount -t ext4 {} {}",
            device.display(),
            mountpoint.display()
        ));
        Self {
            device,
            mountpoint,
            _dir: dir,
        }
    }

    /// Whether the file system is frozen right now (a second freeze fails).
    pub fn is_frozen(&self) -> bool {
        let status = Command::new("fsfreeze")
            .arg("--freeze")
            .arg(&self.mountpoint)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if status.success() {
            sh(&format!(
                "fsfreeze --unfreeze {}",
                self.mountpoint.display()
            ));
        }
        !status.success()
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze")
            .arg("--unfreeze")
            .arg(&self.mountpoint)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount")
            .arg(&self.mountpoint)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// Builds a tiny root file system from busybox-static, owned by `uid`.
pub fn busybox_rootfs(root: &Path, uid: u32) {
    busybox::populate(root);
    sh(&format!("chown -hR {uid}:{uid} {}", root.display()));
}

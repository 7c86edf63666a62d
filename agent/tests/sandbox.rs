//! The namespace sandbox: `rewind-agent launch` with a tiny busybox rootfs,
//! real user/mount/PID/UTS/IPC/net/cgroup namespaces, seccomp, and
//! `rewind-agent mount-into` for the workspace swap of a restore.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{busybox_rootfs, sh, wait_ready, AGENT};
use rewind_agent::client::{AgentClient, ExecOutput, Transport};
use rewind_agent::protocol::ExecRequest;
use rewind_agent::sandbox::LaunchSpec;

const UID_BASE: u32 = 100_000;

struct Sandbox {
    pid: i32,
    client: AgentClient,
    spec: LaunchSpec,
    dir: tempfile::TempDir,
}

impl Sandbox {
    async fn launch(cgroups: Vec<PathBuf>) -> Self {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let spec = spec_in(dir.path(), cgroups);
        let out = run_launch(&spec);
        assert!(
            out.status.success(),
            "launch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let pid = reply["pid"].as_i64().unwrap() as i32;
        let client = AgentClient::new(Transport::Unix(spec.socket.clone()));
        wait_ready(&client).await;
        Self {
            pid,
            client,
            spec,
            dir,
        }
    }

    async fn sh(&self, cmd: &str) -> ExecOutput {
        let req = ExecRequest {
            shell: Some(cmd.into()),
            ..Default::default()
        };
        self.client.exec_collect(req).await.unwrap()
    }

    async fn stdout(&self, cmd: &str) -> String {
        String::from_utf8_lossy(&self.sh(cmd).await.stdout)
            .trim()
            .to_owned()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::SIGKILL,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = &self.dir;
    }
}

/// A spec over a fresh busybox rootfs, everything under `dir` (traversable
/// by the shifted root: the overlay is mounted with its credentials).
fn spec_in(dir: &Path, cgroups: Vec<PathBuf>) -> LaunchSpec {
    sh(&format!("chmod 755 {}", dir.display()));
    let rootfs = dir.join("rootfs");
    busybox_rootfs(&rootfs, UID_BASE);
    let workspace = dir.join("ws");
    std::fs::create_dir(&workspace).unwrap();
    sh(&format!(
        "chown {UID_BASE}:{UID_BASE} {}",
        workspace.display()
    ));
    LaunchSpec {
        allow_nested_userns: false,
        name: "sbx-test".into(),
        rootfs_lower: rootfs,
        upper_dir: dir.join("upper"),
        work_dir: dir.join("work"),
        merged_dir: dir.join("merged"),
        workspace,
        socket: dir.join("agent.sock"),
        uid_base: UID_BASE,
        uid_count: 65_536,
        cgroups,
        log: dir.join("agent.log"),
        agent_binary: None,
    }
}

fn run_launch(spec: &LaunchSpec) -> std::process::Output {
    let spec_path = spec.socket.with_file_name("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(spec).unwrap()).unwrap();
    Command::new(AGENT)
        .arg("launch")
        .arg("--spec")
        .arg(&spec_path)
        .output()
        .unwrap()
}

#[tokio::test]
async fn sandbox_runs_as_root_with_own_hostname() {
    let sbx = Sandbox::launch(vec![]).await;
    assert_eq!(
        sbx.stdout("id -u; hostname; pwd").await,
        "0\nsbx-test\n/workspace"
    );
}

#[tokio::test]
async fn sandbox_pid1_is_reparented_away_from_launcher() {
    let sbx = Sandbox::launch(vec![]).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", sbx.pid)).unwrap();
    let ppid = status.lines().find(|l| l.starts_with("PPid:")).unwrap();
    assert_eq!(ppid.split_whitespace().nth(1), Some("1"));
}

#[tokio::test]
async fn sandbox_cannot_see_host_files() {
    let marker = PathBuf::from(format!("/tmp/rewind-marker-{}", std::process::id()));
    std::fs::write(&marker, b"host secret").unwrap();
    let sbx = Sandbox::launch(vec![]).await;
    let out = sbx
        .sh(&format!(
            "cat {} /etc/hostname; ls /tmp | wc -l",
            marker.display()
        ))
        .await;
    std::fs::remove_file(&marker).unwrap();
    let got = (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        out.stderr.is_empty(),
    );
    assert_eq!(got, ("0".to_owned(), false));
}

#[tokio::test]
async fn sandbox_cannot_see_host_processes() {
    let sbx = Sandbox::launch(vec![]).await;
    let pids = sbx.stdout("ls /proc | grep -c '^[0-9]'").await;
    let init = sbx.stdout("tr '\\0' ' ' < /proc/1/cmdline").await;
    let few = pids.parse::<u32>().unwrap() <= 4;
    assert_eq!(
        (few, init.contains("rewind-agent")),
        (true, true),
        "{pids} pids, init {init}"
    );
}

#[tokio::test]
async fn sandbox_network_has_only_loopback_up() {
    let sbx = Sandbox::launch(vec![]).await;
    let ifaces = sbx.stdout("ls /sys/class/net").await;
    let lo_up = sbx.stdout("ip link show lo | grep -c UP").await;
    assert_eq!((ifaces.as_str(), lo_up.as_str()), ("lo", "1"));
}

#[tokio::test]
async fn sandbox_cannot_reach_host_network() {
    let sbx = Sandbox::launch(vec![]).await;
    let out = sbx
        .sh("nc -w 2 10.0.2.2 80 </dev/null 2>&1; echo rc=$?")
        .await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("rc=1") && text.contains("unreachable"),
        "{text}"
    );
}

#[tokio::test]
async fn sandbox_exec_has_seccomp_and_no_new_privs() {
    let sbx = Sandbox::launch(vec![]).await;
    let status = sbx
        .stdout("grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status | tr -s '\\t ' ' '")
        .await;
    assert_eq!(status, "NoNewPrivs: 1\nSeccomp: 2");
}

#[tokio::test]
async fn sandbox_cannot_load_modules() {
    let sbx = Sandbox::launch(vec![]).await;
    let out = sbx
        .sh("head -c 4096 /dev/urandom > /tmp/m.ko; insmod /tmp/m.ko; echo rc=$?")
        .await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("rc=1") && text.contains("not permitted"),
        "{text}"
    );
}

#[tokio::test]
async fn sandbox_cannot_mount_host_devices() {
    let sbx = Sandbox::launch(vec![]).await;
    let devices = sbx.stdout("ls /dev | tr '\\n' ' '").await;
    let out = sbx.sh("mknod /tmp/blk b 7 0 2>&1; echo rc=$?").await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let expected = "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero";
    assert_eq!(
        (
            devices.as_str(),
            text.contains("not permitted") && text.contains("rc=1")
        ),
        (expected, true),
        "{text}"
    );
}

#[tokio::test]
async fn sandbox_workspace_files_are_owned_by_shifted_uid() {
    let sbx = Sandbox::launch(vec![]).await;
    sbx.sh("echo hi > /workspace/mine").await;
    let meta = std::fs::metadata(sbx.spec.workspace.join("mine")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (UID_BASE, UID_BASE));
}

#[tokio::test]
async fn sandbox_root_writes_go_to_upper_dir() {
    let sbx = Sandbox::launch(vec![]).await;
    sbx.sh("echo x > /etc/new-file").await;
    let lower_untouched = !sbx.spec.rootfs_lower.join("etc/new-file").exists();
    assert_eq!(
        (
            lower_untouched,
            sbx.spec.upper_dir.join("etc/new-file").exists()
        ),
        (true, true)
    );
}

#[tokio::test]
async fn sandbox_unmount_workspace_kills_background_holder() {
    let sbx = Sandbox::launch(vec![]).await;
    let pid = sbx
        .stdout("cd /workspace && (sleep 60 >/dev/null 2>&1 & echo $!)")
        .await;
    let killed = sbx.client.unmount_workspace(true).await.unwrap();
    // The unmount succeeded, so nothing holds the workspace any more.
    assert!(killed.contains(&pid.parse().unwrap()), "{killed:?}");
}

#[tokio::test]
async fn sandbox_exec_is_refused_until_the_workspace_is_mounted_again() {
    let sbx = Sandbox::launch(vec![]).await;
    sbx.client.unmount_workspace(true).await.unwrap();
    let req = ExecRequest {
        shell: Some("echo lost > /workspace/f".into()),
        ..Default::default()
    };
    let err = sbx.client.exec_collect(req).await.unwrap_err();
    let info = sbx.client.workspace_id().await.unwrap();
    assert_eq!(
        (err.remote_code(), info.mounted, info.given),
        (
            Some(rewind_agent::protocol::ErrorCode::WorkspaceUnavailable),
            false,
            None
        )
    );
}

#[tokio::test]
async fn sandbox_mount_into_swaps_workspace() {
    let sbx = Sandbox::launch(vec![]).await;
    sbx.sh("echo old > /workspace/old").await;
    sbx.client.unmount_workspace(true).await.unwrap();
    let fresh = sbx.dir.path().join("ws2");
    std::fs::create_dir(&fresh).unwrap();
    std::fs::write(fresh.join("new"), b"restored\n").unwrap();
    sh(&format!(
        "chown -R {UID_BASE}:{UID_BASE} {}",
        fresh.display()
    ));
    let status = Command::new(AGENT)
        .args(["mount-into", "--pid", &sbx.pid.to_string(), "--source"])
        .arg(&fresh)
        .args(["--target", "/workspace"])
        .status()
        .unwrap();
    sbx.client.mount_workspace().await.unwrap();
    let seen = sbx.stdout("ls /workspace; cat /workspace/new").await;
    assert_eq!((status.success(), seen.as_str()), (true, "new\nrestored"));
}

#[tokio::test]
async fn sandbox_mount_workspace_without_host_mount_is_not_found() {
    let sbx = Sandbox::launch(vec![]).await;
    sbx.client.unmount_workspace(true).await.unwrap();
    let err = sbx.client.mount_workspace().await.unwrap_err();
    assert_eq!(
        err.remote_code(),
        Some(rewind_agent::protocol::ErrorCode::NotFound)
    );
}

#[tokio::test]
async fn sandbox_pids_cgroup_contains_fork_loop() {
    let cgroup = PathBuf::from(format!(
        "/sys/fs/cgroup/pids/rewind-agent-test-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&cgroup).unwrap();
    std::fs::write(cgroup.join("pids.max"), "32").unwrap();
    let sbx = Sandbox::launch(vec![cgroup.clone()]).await;
    let bomb = sbx.sh("for i in $(seq 64); do sleep 1 & done; wait").await;
    let events = std::fs::read_to_string(cgroup.join("pids.events")).unwrap();
    let member = std::fs::read_to_string(format!("/proc/{}/cgroup", sbx.pid)).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = sbx.stdout("echo still-works").await;
    drop(sbx);
    let _ = std::fs::remove_dir(&cgroup);
    let joined = member.contains(&format!("rewind-agent-test-{}", std::process::id()));
    let limited = bomb.status.exit_code != 0 && events.trim() != "max 0";
    assert_eq!(
        (joined, limited, after.as_str()),
        (true, true, "still-works"),
        "{events}"
    );
}

#[test]
fn sandbox_launch_reports_init_error() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut spec = spec_in(dir.path(), vec![]);
    spec.rootfs_lower = dir.path().join("missing");
    let out = run_launch(&spec);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("overlay"),
        "{stderr}"
    );
}

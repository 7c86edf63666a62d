//! A restore cut off between the agent's unmount and mount — by `kill -9` of
//! the service, by a crash at each failpoint of the sequence, or by an error
//! there — never leaves a sandbox running with an empty `/workspace`: the
//! restarted service puts the live subvolume back (or marks the sandbox
//! failed), and the agent refuses commands until it is back. Starts the real
//! service as a process (`rewind serve`). Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use common::process::ServerProcess as Server;
use rewind_agent::client::{AgentClient, AgentError, ExecOutput, Transport};
use rewind_agent::protocol::{ErrorCode, ExecRequest};
use serde_json::{json, Value};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn start(dir: &Path, failpoint: Option<&str>) -> Server {
    Server::start(dir, &common::busybox_rootfs(), failpoint)
}

fn data_dir(name: &str) -> PathBuf {
    common::data_dir_sharing_images(name)
}

/// `POST /vms/{vm}/run` with `command`: the status and the body.
fn run(server: &Server, key: &str, vm: &str, command: &str) -> (u16, Value) {
    server.req(
        "POST",
        &format!("/vms/{vm}/run"),
        key,
        Some(json!({"command": command})),
    )
}

/// `POST /vms/{vm}/snapshots/{snap}/restore`: the status and the body.
fn restore(server: &Server, key: &str, vm: &str, snap: &str) -> (u16, Value) {
    server.req(
        "POST",
        &format!("/vms/{vm}/snapshots/{snap}/restore"),
        key,
        None,
    )
}

/// A sandbox with snapshots `snap-a` (f = A, 300 files in s/) and `snap-b`
/// (f = B); returns its name.
fn sandbox_with_two_snapshots(server: &Server, key: &str) -> String {
    let vm = common::unique("crash");
    let (status, body) = server.req("POST", "/vms", key, Some(json!({"name": vm})));
    assert_eq!(status, 201, "{body}");
    let steps = [
        ("mkdir -p /workspace/s && for i in $(seq 300); do echo $i > /workspace/s/$i; done; echo A > /workspace/f", "snap-a"),
        ("rm -rf /workspace/s; echo B > /workspace/f", "snap-b"),
    ];
    for (command, snap) in steps {
        let (status, body) = run(server, key, &vm, command);
        assert_eq!(status, 200, "{body}");
        let (status, body) = server.req(
            "POST",
            &format!("/vms/{vm}/snapshots"),
            key,
            Some(json!({"name": snap})),
        );
        assert_eq!(status, 201, "{body}");
    }
    vm
}

/// After a restart: the sandbox either runs with `/workspace` = one whole
/// snapshot (A with its files, or B), and a command's write lands in the
/// snapshot the run reports; or it is marked failed with a reason.
fn assert_workspace_whole(server: &Server, key: &str, vm: &str) {
    let (status, row) = server.req("GET", &format!("/vms/{vm}"), key, None);
    assert_eq!(status, 200, "{row}");
    if row["status"] == "failed" {
        panic!(
            "sandbox failed instead of getting its workspace back: {row}\n{}",
            server.log()
        );
    }
    let check =
        "cat /workspace/f; ls /workspace/s 2>/dev/null | wc -l; echo w > /workspace/written";
    let (status, out) = run(server, key, vm, check);
    assert_eq!(status, 200, "{out}\n{}", server.log());
    assert_eq!(out["exitCode"], 0, "{out}");
    let stdout = out["stdout"].as_str().unwrap().replace(' ', "");
    assert!(stdout == "A\n300\n" || stdout == "B\n0\n", "{stdout:?}");
    // The command's write is in the snapshot it left.
    let snap = out["snapshot"].as_str().unwrap();
    let (status, _) = restore(server, key, vm, "snap-a");
    assert_eq!(status, 200);
    let (status, _) = restore(server, key, vm, snap);
    assert_eq!(status, 200);
    let (_, out) = run(server, key, vm, "cat /workspace/written");
    assert_eq!(out["stdout"], "w\n", "{out}");
}

/// An exec sent straight to the sandbox's agent (no service running), as the
/// namespace runtime names its socket.
fn exec_directly(dir: &Path, vm: &str) -> Result<ExecOutput, AgentError> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(vm.as_bytes());
    let socket = dir
        .join("run")
        .join(hex::encode(&digest[..8]))
        .join("agent.sock");
    let agent = AgentClient::new(Transport::Unix(socket));
    let req = ExecRequest {
        shell: Some("echo lost > /workspace/f".into()),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(agent.exec_collect(req))
}

#[test]
fn crash_at_every_restore_failpoint_puts_the_workspace_back_at_restart() {
    let _s = serial();
    let dir = data_dir("crash-failpoints");
    let mut first_key = None;
    for step in rewind::failpoint::FAILPOINTS {
        let server = start(&dir, Some(step));
        let key = first_key
            .get_or_insert_with(|| server.bootstrap_key())
            .clone();
        let vm = sandbox_with_two_snapshots(&server, &key);
        let answer = server.try_req(
            "POST",
            &format!("/vms/{vm}/snapshots/snap-a/restore"),
            &key,
            None,
        );
        assert_eq!(answer, None, "the service should have crashed at {step}");
        server.wait_crashed();
        let refused = exec_directly(&dir, &vm).unwrap_err();
        assert_eq!(
            refused.remote_code(),
            Some(ErrorCode::WorkspaceUnavailable),
            "{refused}"
        );
        let server = start(&dir, None);
        if *step != "restore:before_mount" {
            assert!(
                server.log().contains("a restore was cut off"),
                "{}",
                server.log()
            );
        }
        assert_workspace_whole(&server, &key, &vm);
        server.req("DELETE", &format!("/vms/{vm}"), &key, None);
    }
}

#[test]
fn restore_error_before_mount_is_retried_and_the_workspace_is_live() {
    let _s = serial();
    let dir = data_dir("crash-error-once");
    let server = start(&dir, Some("restore:before_mount:error"));
    let key = server.bootstrap_key();
    let vm = sandbox_with_two_snapshots(&server, &key);
    let (status, body) = restore(&server, &key, &vm, "snap-a");
    assert_eq!(status, 200, "{body}");
    let (_, out) = run(&server, &key, &vm, "cat /workspace/f");
    assert_eq!(out["stdout"], "A\n", "{out}");
    server.req("DELETE", &format!("/vms/{vm}"), &key, None);
}

#[test]
fn restore_that_cannot_mount_back_marks_the_sandbox_failed() {
    let _s = serial();
    let dir = data_dir("crash-error-always");
    let server = start(&dir, Some("restore:before_replace:error-always"));
    let key = server.bootstrap_key();
    let vm = sandbox_with_two_snapshots(&server, &key);
    let (status, body) = restore(&server, &key, &vm, "snap-a");
    assert!(status >= 500, "{status} {body}");
    let (_, row) = server.req("GET", &format!("/vms/{vm}"), &key, None);
    assert_eq!(row["status"], "failed", "{row}");
    let (status, body) = run(&server, &key, &vm, "true");
    assert_eq!(status, 409, "{body}");
    server.req("DELETE", &format!("/vms/{vm}"), &key, None);
}

#[test]
fn kill_9_during_restores_never_leaves_a_sandbox_without_its_workspace() {
    let _s = serial();
    let dir = data_dir("crash-kill9");
    let mut key = None;
    let mut vm = None;
    for round in 0..5 {
        let server = start(&dir, None);
        let k = key.get_or_insert_with(|| server.bootstrap_key()).clone();
        let name = vm
            .get_or_insert_with(|| sandbox_with_two_snapshots(&server, &k))
            .clone();
        let sent = AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0.. {
                    let snap = ["snap-a", "snap-b"][i % 2];
                    sent.fetch_add(1, Ordering::SeqCst);
                    let path = format!("/vms/{name}/snapshots/{snap}/restore");
                    if server.try_req("POST", &path, &k, None).is_none() {
                        return;
                    }
                }
            });
            // Kill at a different point of the restore loop each round.
            while sent.load(Ordering::SeqCst) < 3 + round * 2 {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(7 * round as u64));
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(server.child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        });
        drop(server); // SIGKILL: its sandboxes outlive it
        let server = start(&dir, None);
        assert_workspace_whole(&server, &k, &name);
    }
    let server = start(&dir, None);
    server.req(
        "DELETE",
        &format!("/vms/{}", vm.unwrap()),
        &key.unwrap(),
        None,
    );
}

//! A restore cut off between the agent's unmount and mount — by `kill -9` of
//! the service, by a crash at each failpoint of the sequence, or by an error
//! there — never leaves a sandbox running with an empty `/workspace`: the
//! restarted service puts the live subvolume back (or marks the sandbox
//! failed), and the agent refuses commands until it is back. Starts the real
//! service as a process (`rewind serve`). Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rewind_agent::client::{AgentClient, AgentError, ExecOutput, Transport};
use rewind_agent::protocol::{ErrorCode, ExecRequest};
use serde_json::{json, Value};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

struct Server {
    child: Child,
    data_dir: PathBuf,
    base: String,
}

impl Server {
    fn start(data_dir: &Path, failpoint: Option<&str>) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("server.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rewind"));
        cmd.env("REWIND_DATA_DIR", data_dir)
            .env("REWIND_RUNTIME", "namespace")
            .env("REWIND_BASE_IMAGE", common::busybox_rootfs())
            .env("REWIND_AGENT_BINARY", common::agent_binary())
            .env(
                "REWIND_CONFIG",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("config/rewind.toml"),
            )
            .env_remove("DB_PATH")
            .env_remove(rewind::failpoint::FAILPOINT_ENV)
            .env("PORT", port.to_string());
        if let Some(fp) = failpoint {
            cmd.env(rewind::failpoint::FAILPOINT_ENV, fp);
        }
        let child = cmd
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Server {
            child,
            data_dir: data_dir.to_owned(),
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while reqwest::blocking::get(format!("{}/health", server.base))
            .map_or(true, |r| !r.status().is_success())
        {
            assert!(Instant::now() < deadline, "not healthy: {}", server.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }

    /// The request's status and body; `None` when the server died mid-way.
    fn try_req(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let mut r = client
            .request(method.parse().unwrap(), format!("{}{}", self.base, path))
            .header("x-api-key", key);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().ok()?;
        let status = resp.status().as_u16();
        let text = resp.text().ok()?;
        Some((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    fn req(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        self.try_req(method, path, key, body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer; log:\n{}", self.log()))
    }

    /// SIGKILL the service (not its sandboxes, which outlive it) and reap it.
    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for a crash at a failpoint.
    fn wait_crashed(mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "server did not crash: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn data_dir(name: &str) -> PathBuf {
    common::data_dir_sharing_images(name)
}

fn bootstrap_key(server: &Server) -> String {
    let client = reqwest::blocking::Client::new();
    let resp = client
        .post(format!("{}/api-keys", server.base))
        .header("content-type", "application/json")
        .body(json!({"name": "crash"}).to_string())
        .send()
        .unwrap();
    let body: Value = resp.json().unwrap();
    body["key"].as_str().unwrap().to_owned()
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
        let (status, body) = server.req(
            "POST",
            &format!("/vms/{vm}/run"),
            key,
            Some(json!({"command": command})),
        );
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
    let (status, out) = server.req(
        "POST",
        &format!("/vms/{vm}/run"),
        key,
        Some(json!({"command": check})),
    );
    assert_eq!(status, 200, "{out}\n{}", server.log());
    assert_eq!(out["exitCode"], 0, "{out}");
    let stdout = out["stdout"].as_str().unwrap().replace(' ', "");
    assert!(stdout == "A\n300\n" || stdout == "B\n0\n", "{stdout:?}");
    // The command's write is in the snapshot it left.
    let snap = out["snapshot"].as_str().unwrap();
    let (status, _) = server.req(
        "POST",
        &format!("/vms/{vm}/snapshots/snap-a/restore"),
        key,
        None,
    );
    assert_eq!(status, 200);
    let (status, _) = server.req(
        "POST",
        &format!("/vms/{vm}/snapshots/{snap}/restore"),
        key,
        None,
    );
    assert_eq!(status, 200);
    let (_, out) = server.req(
        "POST",
        &format!("/vms/{vm}/run"),
        key,
        Some(json!({"command": "cat /workspace/written"})),
    );
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
        let server = Server::start(&dir, Some(step));
        let key = first_key
            .get_or_insert_with(|| bootstrap_key(&server))
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
        let server = Server::start(&dir, None);
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
    let server = Server::start(&dir, Some("restore:before_mount:error"));
    let key = bootstrap_key(&server);
    let vm = sandbox_with_two_snapshots(&server, &key);
    let (status, body) = server.req(
        "POST",
        &format!("/vms/{vm}/snapshots/snap-a/restore"),
        &key,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let (_, out) = server.req(
        "POST",
        &format!("/vms/{vm}/run"),
        &key,
        Some(json!({"command": "cat /workspace/f"})),
    );
    assert_eq!(out["stdout"], "A\n", "{out}");
    server.req("DELETE", &format!("/vms/{vm}"), &key, None);
}

#[test]
fn restore_that_cannot_mount_back_marks_the_sandbox_failed() {
    let _s = serial();
    let dir = data_dir("crash-error-always");
    let server = Server::start(&dir, Some("restore:before_replace:error-always"));
    let key = bootstrap_key(&server);
    let vm = sandbox_with_two_snapshots(&server, &key);
    let (status, body) = server.req(
        "POST",
        &format!("/vms/{vm}/snapshots/snap-a/restore"),
        &key,
        None,
    );
    assert!(status >= 500, "{status} {body}");
    let (_, row) = server.req("GET", &format!("/vms/{vm}"), &key, None);
    assert_eq!(row["status"], "failed", "{row}");
    let (status, body) = server.req(
        "POST",
        &format!("/vms/{vm}/run"),
        &key,
        Some(json!({"command": "true"})),
    );
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
        let server = Server::start(&dir, None);
        let k = key.get_or_insert_with(|| bootstrap_key(&server)).clone();
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
        server.kill9();
        let server = Server::start(&dir, None);
        assert_workspace_whole(&server, &k, &name);
    }
    let server = Server::start(&dir, None);
    server.req(
        "DELETE",
        &format!("/vms/{}", vm.unwrap()),
        &key.unwrap(),
        None,
    );
}

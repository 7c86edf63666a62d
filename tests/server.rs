//! Integration tests against a started `rewind serve` process: the
//! reference's full curl workflow, restarts (clean and kill -9), graceful
//! shutdown, the key CLI, and config errors. Needs root.
//!
//! Uses the debootstrap base image when it has been built (scripts/test.sh
//! builds it), else the busybox test rootfs. Tests run one at a time: each
//! starts its own server, pool and sandboxes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn base_image() -> PathBuf {
    let real = std::env::var_os("REWIND_TEST_BASE_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/rewind/images/base/rootfs"));
    if real.join(".rewind-image-complete").exists() {
        return real;
    }
    eprintln!(
        "NOTE: debootstrap base image not built at {}; using the busybox test rootfs",
        real.display()
    );
    common::busybox_rootfs()
}

/// Every server test shares one cache of the uid-shifted rootfs.
fn test_data_dir(name: &str) -> PathBuf {
    common::data_dir_sharing_images(name)
}

struct Server {
    child: Option<Child>,
    data_dir: PathBuf,
    port: u16,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rewind_cmd(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rewind"));
    cmd.env("REWIND_DATA_DIR", data_dir)
        .env("REWIND_RUNTIME", "namespace")
        .env("REWIND_BASE_IMAGE", base_image())
        .env("REWIND_AGENT_BINARY", common::agent_binary())
        .env(
            "REWIND_CONFIG",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/rewind.toml"),
        )
        .env_remove("PORT")
        .env_remove("DB_PATH");
    cmd
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[])
    }

    fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("server.log"))
            .unwrap();
        let child = rewind_cmd(data_dir)
            .envs(env.iter().copied())
            .env("PORT", port.to_string())
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Server {
            child: Some(child),
            data_dir: data_dir.to_owned(),
            port,
            base: format!("http://127.0.0.1:{port}"),
        };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::blocking::get(format!("{}/health", self.base)) {
                if r.status().is_success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "server on port {} not healthy; log:\n{}",
            self.port,
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Send a signal and wait for the process to exit.
    fn stop(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after {signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn req(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let mut r = client.request(method.parse().unwrap(), format!("{}{}", self.base, path));
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Delete every sandbox so a test leaves no processes behind.
fn cleanup(server: &Server, key: &str) {
    let (_, vms) = server.req("GET", "/vms", Some(key), None);
    for vm in vms["vms"].as_array().cloned().unwrap_or_default() {
        let name = vm["name"].as_str().unwrap();
        server.req("DELETE", &format!("/vms/{name}"), Some(key), None);
    }
}

fn bootstrap_key(server: &Server) -> String {
    let (status, body) = server.req("POST", "/api-keys", None, Some(json!({"name": "demo"})));
    assert_eq!(status, 201, "{body}");
    body["key"].as_str().unwrap().to_owned()
}

#[test]
fn reference_full_workflow() {
    let _s = serial();
    let server = Server::start(&test_data_dir("server-workflow"));
    // 1. Create an API key
    let (status, created) = server.req("POST", "/api-keys", None, Some(json!({"name": "demo"})));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], "demo");
    assert_eq!(
        created["message"],
        "Save your API key - it won't be shown again!"
    );
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("ws_") && key.len() == 51);
    // 2. Create a sandbox
    let (status, vm) = server.req("POST", "/vms", Some(key), Some(json!({"name": "test"})));
    assert_eq!(
        (status, vm["name"].as_str(), vm["status"].as_str()),
        (201, Some("test"), Some("running")),
        "{vm}"
    );
    // 3. Run commands
    let (status, run) = server.req(
        "POST",
        "/vms/test/run",
        Some(key),
        Some(json!({"command": "echo hello > file.txt"})),
    );
    assert_eq!((status, run["exitCode"].as_i64()), (200, Some(0)), "{run}");
    let snap = run["snapshot"].as_str().unwrap().to_owned();
    // 4. List snapshots
    let (status, list) = server.req("GET", "/vms/test/snapshots", Some(key), None);
    assert_eq!(status, 200);
    let snaps = list["snapshots"].as_array().unwrap();
    assert_eq!(snaps[0]["snapshot_name"], "initial");
    assert_eq!(snaps[0]["command"], Value::Null);
    assert_eq!(snaps[1]["snapshot_name"], snap.as_str());
    assert_eq!(snaps[1]["command"], "echo hello > file.txt");
    // 5. Restore to initial state
    let (status, restored) = server.req(
        "POST",
        "/vms/test/snapshots/initial/restore",
        Some(key),
        None,
    );
    assert_eq!(
        (status, restored["message"].as_str()),
        (200, Some("Restored to snapshot \"initial\""))
    );
    let (_, ls) = server.req(
        "POST",
        "/vms/test/run",
        Some(key),
        Some(json!({"command": "ls file.txt"})),
    );
    assert_ne!(
        ls["exitCode"], 0,
        "file.txt must be gone after restoring initial: {ls}"
    );
    let (_, list) = server.req("GET", "/vms/test/snapshots", Some(key), None);
    assert!(list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["snapshot_name"] == snap.as_str()));
    // 6. Cleanup
    let (status, gone) = server.req("DELETE", "/vms/test", Some(key), None);
    assert_eq!(
        (status, gone["message"].as_str()),
        (200, Some("VM \"test\" destroyed"))
    );
    assert_eq!(server.req("GET", "/vms/test", Some(key), None).0, 404);
}

/// GET through a forward, retrying while the server inside starts.
fn get_until_ok(port: u16) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match common::http_get(port) {
            Ok(page) => return page,
            Err(e) if std::time::Instant::now() > deadline => return e.to_string(),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn restart_keeps_sandboxes_snapshots_and_processes() {
    let _s = serial();
    let dir = test_data_dir("server-restart");
    let mut server = Server::start(&dir);
    let key = bootstrap_key(&server);
    let (status, created) = server.req("POST", "/vms", Some(&key), Some(json!({"name": "keep"})));
    assert_eq!(status, 201, "{created}\n{}", server.log());
    let (_, run) = server.req(
        "POST",
        "/vms/keep/run",
        Some(&key),
        Some(json!({"command": "echo hi > f; cd /tmp; (sleep 1000 > /dev/null 2>&1 &)"})),
    );
    let snap = run["snapshot"]
        .as_str()
        .unwrap_or_else(|| panic!("{run}"))
        .to_owned();
    let web = "mkdir -p /tmp/www && echo page > /tmp/www/index.html && cd /tmp/www && \
               if command -v httpd >/dev/null; then httpd -p 127.0.0.1:8080 -h /tmp/www; \
               else (setsid python3 -m http.server 8080 --bind 127.0.0.1 >/tmp/web.log 2>&1 &); fi";
    server.req(
        "POST",
        "/vms/keep/run",
        Some(&key),
        Some(json!({ "command": web })),
    );
    let (status, fwd) = server.req(
        "POST",
        "/vms/keep/port-forwards",
        Some(&key),
        Some(json!({"guest_port": 8080})),
    );
    assert_eq!(status, 201, "{fwd}");
    let host_port = fwd["host_port"].as_u64().unwrap() as u16;
    let page = get_until_ok(host_port);
    if !(page.contains(" 200 ") && page.ends_with("page\n")) {
        let (_, diag) = server.req(
            "POST",
            "/vms/keep/run",
            Some(&key),
            Some(json!({"command": "ps -ef; cat /tmp/web.log"})),
        );
        panic!("forward: {page}\n{}", diag["stdout"]);
    }
    assert!(server.stop(nix::sys::signal::Signal::SIGTERM).success());

    let server = Server::start(&dir);
    let page = get_until_ok(host_port);
    assert!(
        page.contains(" 200 ") && page.ends_with("page\n"),
        "forward after restart: {page}"
    );
    let (_, vm) = server.req("GET", "/vms/keep", Some(&key), None);
    assert_eq!(
        (vm["status"].as_str(), vm["agentHealthy"].as_bool()),
        (Some("running"), Some(true)),
        "{vm}"
    );
    let (_, cat) = server.req(
        "POST",
        "/vms/keep/run",
        Some(&key),
        Some(json!({"command": "cat f; ps -o args | grep -c '^sleep 1000$'"})),
    );
    assert_eq!(
        cat["stdout"], "hi\n1\n",
        "re-attached, not restarted: the background process survives"
    );
    let (status, _) = server.req(
        "POST",
        "/vms/keep/snapshots/initial/restore",
        Some(&key),
        None,
    );
    assert_eq!(status, 200);
    let (status, _) = server.req(
        "POST",
        &format!("/vms/keep/snapshots/{snap}/restore"),
        Some(&key),
        None,
    );
    assert_eq!(status, 200);
    let (_, cat) = server.req(
        "POST",
        "/vms/keep/run",
        Some(&key),
        Some(json!({"command": "cat f"})),
    );
    assert_eq!(cat["stdout"], "hi\n");
    cleanup(&server, &key);
}

#[test]
fn kill9_then_restart_recovers() {
    let _s = serial();
    let dir = test_data_dir("server-kill9");
    let mut server = Server::start(&dir);
    let key = bootstrap_key(&server);
    server.req("POST", "/vms", Some(&key), Some(json!({"name": "crash"})));
    server.req(
        "POST",
        "/vms/crash/run",
        Some(&key),
        Some(json!({"command": "echo 1 > one"})),
    );
    server.stop(nix::sys::signal::Signal::SIGKILL);

    let server = Server::start(&dir);
    let (_, list) = server.req("GET", "/vms/crash/snapshots", Some(&key), None);
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 2, "{list}");
    let (_, run) = server.req(
        "POST",
        "/vms/crash/run",
        Some(&key),
        Some(json!({"command": "cat one"})),
    );
    assert_eq!(run["stdout"], "1\n");
    cleanup(&server, &key);
}

#[test]
fn sigterm_lets_inflight_run_finish() {
    let _s = serial();
    let mut server = Server::start(&test_data_dir("server-sigterm"));
    let key = bootstrap_key(&server);
    server.req("POST", "/vms", Some(&key), Some(json!({"name": "drain"})));
    let (base, k) = (server.base.clone(), key.clone());
    let inflight = std::thread::spawn(move || {
        let client = reqwest::blocking::Client::new();
        let resp = client
            .post(format!("{base}/vms/drain/run"))
            .header("x-api-key", k)
            .json(&json!({"command": "mkfifo go && touch started && cat go && echo done"}))
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().unwrap())
    });
    // The command runs until the test writes to the FIFO it made.
    let workspace = server.data_dir.join("pool/sandboxes/drain/live");
    common::wait_until("the command started", || workspace.join("started").exists());
    let pid = server.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    std::fs::write(workspace.join("go"), "go\n").unwrap();
    let (status, body) = inflight.join().unwrap();
    assert_eq!(
        (status, body["stdout"].as_str()),
        (200, Some("go\ndone\n")),
        "{body}"
    );
    assert!(body["snapshot"].as_str().unwrap().starts_with("cmd_"));
    let exit = server.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(exit.success(), "{exit:?}");
    let server = Server::start(&server.data_dir.clone());
    let (_, list) = server.req("GET", "/vms/drain/snapshots", Some(&key), None);
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 2, "{list}");
    cleanup(&server, &key);
}

#[test]
fn keys_cli_works_with_server_stopped() {
    let _s = serial();
    let dir = test_data_dir("server-cli");
    let out = rewind_cmd(&dir)
        .args(["keys", "create", "--name", "ops", "--admin"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("ws_"), "{key}");
    let list = rewind_cmd(&dir).args(["keys", "list"]).output().unwrap();
    let listed = String::from_utf8(list.stdout).unwrap();
    assert!(
        listed.contains(&key[..11]) && !listed.contains(&key),
        "{listed}"
    );
    let server = Server::start(&dir);
    assert_eq!(server.req("GET", "/api-keys", Some(&key), None).0, 200);
    assert_eq!(
        server.req("POST", "/api-keys", None, Some(json!({}))).0,
        401,
        "bootstrap closed once a key exists"
    );
}

#[test]
fn bad_config_value_is_startup_error_naming_key() {
    let dir = common::data_dir("server-badconfig");
    let out = rewind_cmd(&dir)
        .env("PORT", "eighty")
        .arg("serve")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("`port`"), "{stderr}");
    let out = rewind_cmd(&dir)
        .env("REWIND_RUNTIME", "docker")
        .arg("serve")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("`runtime`"));
}

#[test]
fn dead_sandbox_is_marked_failed_then_restarted_by_service_restart() {
    let _s = serial();
    let dir = test_data_dir("server-dead");
    let mut server = Server::start(&dir);
    let key = bootstrap_key(&server);
    server.req("POST", "/vms", Some(&key), Some(json!({"name": "victim"})));
    server.req(
        "POST",
        "/vms/victim/run",
        Some(&key),
        Some(json!({"command": "echo kept > f"})),
    );
    let pid = sandbox_pid(&dir, "victim");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (status, body) = server.req(
        "POST",
        "/vms/victim/run",
        Some(&key),
        Some(json!({"command": "true"})),
    );
    assert_eq!(status, 503, "{body}");
    let (_, vm) = server.req("GET", "/vms/victim", Some(&key), None);
    assert_eq!(vm["status"], "failed", "{vm}");
    assert!(
        vm["status_reason"].as_str().unwrap().contains("agent"),
        "{vm}"
    );
    assert_eq!(
        server
            .req(
                "POST",
                "/vms/victim/run",
                Some(&key),
                Some(json!({"command": "true"}))
            )
            .0,
        409
    );
    server.stop(nix::sys::signal::Signal::SIGTERM);

    let server = Server::start(&dir);
    let (_, vm) = server.req("GET", "/vms/victim", Some(&key), None);
    assert_eq!(
        (vm["status"].as_str(), vm["agentHealthy"].as_bool()),
        (Some("running"), Some(true)),
        "{vm}"
    );
    let (_, run) = server.req(
        "POST",
        "/vms/victim/run",
        Some(&key),
        Some(json!({"command": "cat f"})),
    );
    assert_eq!(
        run["stdout"], "kept\n",
        "restarted with its workspace intact"
    );
    assert!(
        server.log().contains("restarted it"),
        "the restart is logged"
    );
    cleanup(&server, &key);
}

/// PID 1 of a sandbox, read from the service's database.
fn sandbox_pid(data_dir: &Path, name: &str) -> i32 {
    let db = rusqlite::Connection::open(data_dir.join("rewind.db")).unwrap();
    let state: String = db
        .query_row(
            "SELECT runtime_state FROM sandboxes WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap();
    serde_json::from_str::<Value>(&state).unwrap()["pid"]
        .as_i64()
        .unwrap() as i32
}

#[test]
fn restart_reconciles_database_with_btrfs() {
    let _s = serial();
    let dir = test_data_dir("server-reconcile");
    let mut server = Server::start(&dir);
    let key = bootstrap_key(&server);
    server.req("POST", "/vms", Some(&key), Some(json!({"name": "rec"})));
    server.req(
        "POST",
        "/vms/rec/run",
        Some(&key),
        Some(json!({"command": "echo 1 > a"})),
    );
    let (status, _) = server.req(
        "POST",
        "/vms/rec/snapshots",
        Some(&key),
        Some(json!({"name": "keepme"})),
    );
    assert_eq!(status, 201);
    server.stop(nix::sys::signal::Signal::SIGTERM);

    // Behind rewind's back: lose one snapshot's subvolume, add a stray one.
    let sandbox = dir.join("pool/sandboxes/rec");
    let btrfs = |args: &[&str]| {
        let out = Command::new("btrfs").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    btrfs(&[
        "subvolume",
        "delete",
        sandbox.join("snaps/keepme").to_str().unwrap(),
    ]);
    btrfs(&[
        "subvolume",
        "snapshot",
        "-r",
        sandbox.join("live").to_str().unwrap(),
        sandbox.join("snaps/stray").to_str().unwrap(),
    ]);

    let server = Server::start(&dir);
    let (_, list) = server.req("GET", "/vms/rec/snapshots", Some(&key), None);
    let find = |n: &str| {
        list["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["snapshot_name"] == n)
            .cloned()
    };
    assert_eq!(
        find("keepme").map(|s| s["missing"].clone()),
        Some(Value::Bool(true)),
        "{list}"
    );
    assert_eq!(
        find("stray").map(|s| s["kind"].clone()),
        Some(json!("recovered")),
        "{list}"
    );
    assert_eq!(
        server
            .req(
                "POST",
                "/vms/rec/snapshots/keepme/restore",
                Some(&key),
                None
            )
            .0,
        409
    );
    assert_eq!(
        server
            .req("POST", "/vms/rec/snapshots/stray/restore", Some(&key), None)
            .0,
        200
    );
    let (_, run) = server.req(
        "POST",
        "/vms/rec/run",
        Some(&key),
        Some(json!({"command": "cat a"})),
    );
    assert_eq!(run["stdout"], "1\n");
    assert!(
        server.log().contains("marked missing") && server.log().contains("recorded as recovered")
    );
    cleanup(&server, &key);
}

#[test]
fn auto_runtime_falls_back_to_namespace_and_says_why() {
    let _s = serial();
    // Both situations built explicitly, whatever is installed on this host:
    // no cloud-hypervisor binary (checked first), then a binary but no guest
    // image in this data dir (or no /dev/kvm, checked before the image).
    let no_kvm = !Path::new("/dev/kvm").exists();
    let cases = [
        ("/nonexistent/cloud-hypervisor", "not found"),
        ("/bin/true", if no_kvm { "/dev/kvm" } else { "guest image" }),
    ];
    for (binary, reason) in cases {
        let server = Server::start_with(
            &test_data_dir("server-auto"),
            &[("REWIND_RUNTIME", "auto"), ("REWIND_CH_BINARY", binary)],
        );
        let (_, health) = server.req("GET", "/health", None, None);
        assert_eq!(health["runtime"], "namespace");
        let log = server.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("runtime auto: using namespace"))
            .unwrap_or_default();
        assert!(
            line.contains(reason),
            "with binary {binary} the choice is logged with the reason {reason:?}: {log}"
        );
    }
}

//! The audit log cannot miss a committed change: the service crashes (the
//! `audit:before_outcome` failpoint aborts it, as `kill -9` would) after a
//! request committed its change and before its audit row got the outcome;
//! after a restart the change is there and so is its row, pending (status
//! 0) with the owner and resource. Starts the real service as a process
//! (`rewind serve`). Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

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

    /// Status and JSON body; `None` when the server died before answering.
    fn req(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Value,
    ) -> Option<(u16, Value)> {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let mut r = client
            .request(method.parse().unwrap(), format!("{}{}", self.base, path))
            .header("content-type", "application/json");
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        let resp = r.body(body.to_string()).send().ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().unwrap_or(Value::Null)))
    }

    fn ok(&self, method: &str, path: &str, key: Option<&str>, body: Value) -> Value {
        let (status, body) = self
            .req(method, path, key, body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer; log:\n{}", self.log()));
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {body}"
        );
        body
    }

    /// Wait for the crash at the failpoint and reap the process.
    fn wait_crashed(mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "did not crash: {}", self.log());
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

#[test]
fn a_crash_after_a_committed_change_leaves_its_audit_row_pending() {
    let dir = common::data_dir("audit-crash");
    let server = Server::start(&dir, None);
    let admin = server.ok("POST", "/api-keys", None, json!({"name": "admin"}));
    let admin = admin["key"].as_str().unwrap().to_owned();
    let user = server.ok("POST", "/api-keys", Some(&admin), json!({"name": "u"}));
    let (key, key_id) = (user["key"].as_str().unwrap().to_owned(), user["id"].clone());
    drop(server);

    let armed = Server::start(&dir, Some(rewind::failpoint::AUDIT_BEFORE_OUTCOME));
    let vm = common::unique("crashaudit");
    let answer = armed.req("POST", "/vms", Some(&key), json!({"name": vm}));
    assert!(
        answer.is_none(),
        "answered despite the failpoint: {answer:?}"
    );
    armed.wait_crashed();

    let server = Server::start(&dir, None);
    let got = server.ok("GET", &format!("/vms/{vm}"), Some(&key), Value::Null);
    assert_eq!(got["name"], vm.as_str(), "the create was committed");
    let logs = server.ok(
        "GET",
        "/audit-logs?action_type=vm_create",
        Some(&key),
        Value::Null,
    );
    let rows = logs["audit_logs"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["resource_id"] == vm.as_str())
        .unwrap_or_else(|| panic!("no audit row for the committed create: {logs}"));
    assert_eq!(row["status"], 0, "pending: {row}");
    assert_eq!(row["user_id"], key_id, "{row}");
    server.ok("DELETE", &format!("/vms/{vm}"), Some(&key), Value::Null);
}

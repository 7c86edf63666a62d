//! The real service as a process (`rewind serve`), for tests that kill it:
//! started on a data dir with an optional failpoint
//! (`REWIND_TEST_FAILPOINT`), driven over HTTP, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct ServerProcess {
    pub child: Child,
    pub data_dir: PathBuf,
    pub base: String,
}

impl ServerProcess {
    /// Start `rewind serve` on `data_dir` (namespace runtime, root
    /// filesystem `base_image`) and wait until it is healthy.
    pub fn start(data_dir: &Path, base_image: &Path, failpoint: Option<&str>) -> Self {
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
            .env("REWIND_BASE_IMAGE", base_image)
            .env("REWIND_AGENT_BINARY", super::agent_binary())
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
        let server = ServerProcess {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }

    /// The request's status and body; `None` when the server died mid-way.
    pub fn try_req(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap();
        let mut r = client.request(method.parse().unwrap(), format!("{}{}", self.base, path));
        if !key.is_empty() {
            r = r.header("x-api-key", key);
        }
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

    pub fn req(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        self.try_req(method, path, key, body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer; log:\n{}", self.log()))
    }

    /// A first API key (only while the service has none; no key is sent).
    pub fn bootstrap_key(&self) -> String {
        let (status, body) = self.req("POST", "/api-keys", "", Some(json!({"name": "first"})));
        assert_eq!(status, 201, "{body}");
        body["key"].as_str().unwrap().to_owned()
    }

    /// Wait for the crash at an armed failpoint.
    pub fn wait_crashed(mut self) {
        let deadline = Instant::now() + Duration::from_secs(300);
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

impl Drop for ServerProcess {
    /// SIGKILL (as `kill -9`; its sandboxes outlive it) and reap.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! Helpers of the memory-snapshot tests (namespace runtime, real CRIU):
//! the base image they need, the probe that says why they cannot run
//! here, and a sandbox that is deleted when the test ends (panics included).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::service::Service;

/// The debootstrap image when it is built, else the busybox rootfs (with
/// which [`skip_reason`] skips by name: no python3).
pub fn base_image() -> PathBuf {
    super::debootstrap_or_busybox().0
}

/// Why a memory test cannot run here, if it cannot: no python3 in the
/// image, or (after asserting the 501 that says so) no CRIU. Takes a
/// memory snapshot named `probe-mem` when it can.
pub fn skip_reason(s: &Service, test: &str, key: &str, vm: &str) -> Option<String> {
    let probe = s.run(key, vm, "command -v python3 >/dev/null && echo yes");
    if probe["stdout"] != "yes\n" {
        return Some(format!(
            "SKIPPED {test}: no python3 in the base image (set REWIND_TEST_BASE_IMAGE)"
        ));
    }
    let (status, body) = snapshot(s, key, vm, "probe-mem");
    match status {
        StatusCode::CREATED => None,
        StatusCode::NOT_IMPLEMENTED => {
            let reason = body["error"].as_str().unwrap_or_default().to_owned();
            assert!(reason.contains("CRIU"), "{body}");
            Some(format!("SKIPPED {test}: {reason}"))
        }
        other => panic!("memory snapshot probe answered {other}: {body}"),
    }
}

/// `POST /vms/:vm/snapshots` with `include_memory: true`.
pub fn snapshot(s: &Service, key: &str, vm: &str, name: &str) -> (StatusCode, Value) {
    s.call(
        "POST",
        &format!("/vms/{vm}/snapshots"),
        Some(key),
        Some(json!({"name": name, "include_memory": true})),
    )
}

/// `POST /vms/:vm/snapshots/:snap/restore`.
pub fn restore(s: &Service, key: &str, vm: &str, snap: &str) -> (StatusCode, Value) {
    s.call(
        "POST",
        &format!("/vms/{vm}/snapshots/{snap}/restore"),
        Some(key),
        None,
    )
}

/// Run `command` until its stdout is `want` (at most 30 s).
pub fn wait_stdout(s: &Service, key: &str, vm: &str, command: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = s.run(key, vm, command);
        if out["stdout"] == want {
            return;
        }
        assert!(Instant::now() < deadline, "{command}: {out}, want {want:?}");
    }
}

/// A sandbox deleted on drop.
pub struct Sandbox<'a> {
    pub s: &'a Service,
    pub key: String,
    pub name: String,
}

impl<'a> Sandbox<'a> {
    pub fn create(s: &'a Service, prefix: &str) -> Self {
        let key = s.user_key();
        let name = s.create_vm(&key, prefix);
        Sandbox { s, key, name }
    }
}

impl Drop for Sandbox<'_> {
    fn drop(&mut self) {
        let path = format!("/vms/{}", self.name);
        let _ = self.s.call("DELETE", &path, Some(&self.key), None);
    }
}

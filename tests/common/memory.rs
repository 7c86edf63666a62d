//! Helpers of the memory-snapshot tests (namespace runtime, real CRIU):
//! the base image they need, the probe that fails naming what is missing
//! when they cannot run here, and a sandbox that is deleted when the test
//! ends (panics included).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::service::Service;

/// The debootstrap image (python3); panics naming it when it is not built.
pub fn base_image() -> PathBuf {
    super::debootstrap_image()
}

/// Asserts that memory snapshots work here — python3 in the image and a
/// working CRIU — by taking one named `probe-mem`; panics naming what is
/// missing (the tests that call this are `#[ignore]`d and run by
/// `scripts/test.sh`, which builds both).
pub fn require_criu(s: &Service, key: &str, vm: &str) {
    let probe = s.run(key, vm, "command -v python3 >/dev/null && echo yes");
    assert_eq!(
        probe["stdout"], "yes\n",
        "needs python3 in the base image (REWIND_TEST_BASE_IMAGE): {probe}"
    );
    let (status, body) = snapshot(s, key, vm, "probe-mem");
    assert_eq!(
        status,
        StatusCode::CREATED,
        "needs CRIU (scripts/install-deps.sh builds it): the memory snapshot probe answered {body}"
    );
}

/// `POST /vms/:vm/snapshots` with `include_memory: true`.
pub fn snapshot(s: &Service, key: &str, vm: &str, name: &str) -> (StatusCode, Value) {
    named_snapshot(s, key, vm, name, true)
}

/// `POST /vms/:vm/snapshots` of the files only.
#[allow(dead_code)] // used by some test binaries only
pub fn files_snapshot(s: &Service, key: &str, vm: &str, name: &str) -> (StatusCode, Value) {
    named_snapshot(s, key, vm, name, false)
}

fn named_snapshot(
    s: &Service,
    key: &str,
    vm: &str,
    name: &str,
    include_memory: bool,
) -> (StatusCode, Value) {
    s.call(
        "POST",
        &format!("/vms/{vm}/snapshots"),
        Some(key),
        Some(json!({"name": name, "include_memory": include_memory})),
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

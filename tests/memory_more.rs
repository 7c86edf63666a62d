//! Memory snapshots of namespace sandboxes with CRIU, beyond the counter
//! (`tests/memory.rs`): a background `python3 -m http.server` answers
//! through a port forward after a memory restore, a REPL's variable
//! survives one, the snapshot records CRIU's version and the image size,
//! what CRIU cannot checkpoint is refused by name with nothing changed, and
//! a stop and start right after a memory restore boot on the restored files.
//!
//! `#[ignore]`d: needs the debootstrap base image (`REWIND_TEST_BASE_IMAGE`,
//! python3) and a working CRIU, which `scripts/test.sh` builds and installs
//! before running these with `--ignored`; there a missing one is a failure
//! naming it.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};

use common::memory::{files_snapshot, require_criu, restore, snapshot, wait_stdout, Sandbox};
use common::service::Service;

fn env() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| Service::start("memory-more", common::memory::base_image(), |_| {}))
}

/// The forward's answer to `GET /`, once it answers (at most 30 s).
fn get_through(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match common::http_get(port) {
            Ok(page) if page.starts_with("HTTP/1.0 200") => return page,
            other => assert!(Instant::now() < deadline, "port {port}: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs the debootstrap base image and CRIU; scripts/test.sh runs it"]
fn http_server_answers_through_a_port_forward_after_a_memory_restore() {
    let vm = Sandbox::create(env(), "memweb");
    let (key, name) = (vm.key.as_str(), vm.name.as_str());
    require_criu(env(), key, name);
    let start = "mkdir -p /tmp/www && echo served-from-memory > /tmp/www/index.html && \
        (nohup python3 -m http.server 8000 --bind 127.0.0.1 --directory /tmp/www >/dev/null 2>&1 & echo $! > /tmp/web.pid)";
    env().run(key, name, start);
    let (status, fwd) = env().call(
        "POST",
        &format!("/vms/{name}/port-forwards"),
        Some(key),
        Some(json!({"guest_port": 8000})),
    );
    assert_eq!(status, StatusCode::CREATED, "{fwd}");
    let port = fwd["host_port"].as_u64().unwrap() as u16;
    assert!(get_through(port).ends_with("served-from-memory\n"));
    let (status, snap) = snapshot(env(), key, name, "web");
    assert_eq!(status, StatusCode::CREATED, "{snap}");
    env().run(key, name, "kill $(cat /tmp/web.pid)");
    wait_stdout(
        env(),
        key,
        name,
        "pgrep -f '[h]ttp.server' || echo gone",
        "gone\n",
    );

    let (status, body) = restore(env(), key, name, "web");

    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(get_through(port).ends_with("served-from-memory\n"));
    let same = env().run(
        key,
        name,
        "[ \"$(pgrep -f '[h]ttp.server')\" = \"$(cat /tmp/web.pid)\" ] && echo same",
    );
    assert_eq!(same["stdout"], "same\n");
}

#[test]
#[ignore = "needs the debootstrap base image and CRIU; scripts/test.sh runs it"]
fn memory_snapshot_records_criu_version_and_image_size() {
    let vm = Sandbox::create(env(), "memmeta");
    let (key, name) = (vm.key.as_str(), vm.name.as_str());
    require_criu(env(), key, name);
    let criu = std::process::Command::new("criu")
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&criu.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Version: ").map(str::to_owned))
        .unwrap();
    // A python process holding 32 MiB it wrote: the image holds them.
    env().run(
        key,
        name,
        "nohup python3 -c 'import time; b = bytearray(b\"x\" * (32 << 20)); open(\"/tmp/held\", \"w\").close(); time.sleep(10**6)' >/dev/null 2>&1 &
        while [ ! -e /tmp/held ]; do sleep 0.01; done",
    );

    let (status, created) = snapshot(env(), key, name, "sized");

    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["criu_version"], version.trim());
    let bytes = created["memory_image_bytes"].as_u64().unwrap();
    assert!(bytes > 32 << 20, "{created}");
    let (_, list) = env().call("GET", &format!("/vms/{name}/snapshots"), Some(key), None);
    let listed: &Value = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["snapshot_name"] == "sized")
        .unwrap();
    assert_eq!(
        (
            &listed["memory_image_bytes"],
            &listed["criu_version"],
            &listed["checksum"]
        ),
        (
            &created["memory_image_bytes"],
            &created["criu_version"],
            &created["checksum"]
        )
    );
}

#[test]
#[ignore = "needs the debootstrap base image and CRIU; scripts/test.sh runs it"]
fn repl_variable_survives_a_memory_restore() {
    let vm = Sandbox::create(env(), "memrepl");
    let (key, name) = (vm.key.as_str(), vm.name.as_str());
    require_criu(env(), key, name);
    let cell = |code: &str| {
        let path = format!("/vms/{name}/repl");
        let body = json!({"language": "python", "code": code});
        let (status, out) = env().call("POST", &path, Some(key), Some(body));
        assert_eq!(status, StatusCode::OK, "{out}");
        out
    };
    cell("x = 41");
    let (status, body) = snapshot(env(), key, name, "x41");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    cell("x = 1000");

    let (status, body) = restore(env(), key, name, "x41");

    assert_eq!(status, StatusCode::OK, "{body}");
    let out = cell("print(x + 1)");
    assert_eq!(
        (&out["stdout"], &out["interpreterStarted"]),
        (&json!("42\n"), &json!(false)),
        "{out}"
    );
}

/// A python process holding an io_uring instance (via `ctypes`).
const IO_URING: &str = r#"cat > /tmp/uring.py <<'PY'
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.syscall(425, 4, ctypes.create_string_buffer(120))
open('/tmp/uring.fd', 'w').write(str(fd))
time.sleep(10**6)
PY
nohup python3 /tmp/uring.py >/dev/null 2>&1 &
while [ ! -s /tmp/uring.fd ]; do sleep 0.01; done; cat /tmp/uring.fd"#;

#[test]
#[ignore = "needs the debootstrap base image and CRIU; scripts/test.sh runs it"]
fn process_crius_cannot_checkpoint_is_409_naming_it_and_nothing_changes() {
    let vm = Sandbox::create(env(), "memuring");
    let (key, name) = (vm.key.as_str(), vm.name.as_str());
    require_criu(env(), key, name);
    let fd = env().run(key, name, IO_URING)["stdout"].clone();
    assert!(fd.as_str().unwrap().parse::<i32>().unwrap() >= 0, "{fd}");
    let pid = env().run(key, name, "pgrep -f '[u]ring.py'")["stdout"].clone();
    let before = env().snapshot_names(key, name);

    let (status, body) = snapshot(env(), key, name, "uring");

    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"].as_str().unwrap();
    let named = format!("process {} (python3)", pid.as_str().unwrap().trim());
    assert!(
        message.contains(&named) && message.contains("io_uring"),
        "{message}"
    );
    assert_eq!(env().snapshot_names(key, name), before);
    let alive = env().run(key, name, "pgrep -f '[u]ring.py'");
    assert_eq!(alive["stdout"], pid);
}

#[test]
#[ignore = "needs the debootstrap base image and CRIU; scripts/test.sh runs it"]
fn workspace_restore_after_a_memory_restore_swaps_files_and_keeps_processes() {
    let vm = Sandbox::create(env(), "memthenfiles");
    let (key, name) = (vm.key.as_str(), vm.name.as_str());
    require_criu(env(), key, name);
    // Outside /workspace: a workspace restore kills the processes holding it.
    env().run(
        key,
        name,
        "echo one > /workspace/f; cd / && nohup sleep 1000 >/dev/null 2>&1 &",
    );
    let (status, body) = files_snapshot(env(), key, name, "one");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = snapshot(env(), key, name, "mem");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = restore(env(), key, name, "mem");
    assert_eq!(status, StatusCode::OK, "{body}");
    env().run(key, name, "echo two > /workspace/f");

    let (status, body) = restore(env(), key, name, "one");

    assert_eq!(status, StatusCode::OK, "{body}");
    let out = env().run(
        key,
        name,
        "cat /workspace/f; pgrep -x sleep >/dev/null && echo sleeping",
    );
    assert_eq!(out["stdout"], "one\nsleeping\n");
}

/// The memory restore releases the old tree's mounts in the background
/// (`NamespaceRuntime::stop_unmounting_later`); a stop and start right
/// after it must boot on the restored files, inside and outside
/// `/workspace`.
#[test]
#[ignore = "needs the debootstrap base image and CRIU; scripts/test.sh runs it"]
fn stop_and_start_right_after_a_memory_restore_boot_on_the_restored_files() {
    let vm = Sandbox::create(env(), "memrestart");
    let (key, name) = (vm.key.as_str(), vm.name.as_str());
    require_criu(env(), key, name);
    env().run(key, name, "echo one > /workspace/f; echo one > /root/g");
    let (status, body) = snapshot(env(), key, name, "mem");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    env().run(key, name, "echo two > /workspace/f; echo two > /root/g");
    let (status, body) = restore(env(), key, name, "mem");
    assert_eq!(status, StatusCode::OK, "{body}");

    for verb in ["stop", "start"] {
        let path = format!("/vms/{name}/{verb}");
        let (status, body) = env().call("POST", &path, Some(key), None);
        assert_eq!(status, StatusCode::OK, "{verb}: {body}");
    }

    let out = env().run(key, name, "cat /workspace/f /root/g");
    assert_eq!(out["stdout"], "one\none\n");
}

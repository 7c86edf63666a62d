//! Disk limits through the real service (issue #10, point 4): a sandbox that
//! writes past its `disk_mb` fails inside, its run still answers 200 with a
//! snapshot, other sandboxes keep working, and it can free space and go on.
//! Real storage on a loop-mounted Btrfs pool without full quota groups (so
//! simple quotas are used), the real namespace runtime and agent. Needs root
//! and a kernel with Btrfs simple quotas (>= 6.7).

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};

use common::service::Service;

const MIB: u64 = 1 << 20;
const MAX_DISK_MB: u64 = 1024;

fn env() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| {
        Service::start("disk", common::busybox_rootfs(), |config| {
            config.limits.disk_mb = MAX_DISK_MB;
            config.exec.max_timeout_secs = 120;
        })
    })
}

/// A sandbox deleted when the test ends, pass or fail.
struct Vm {
    key: String,
    name: String,
}

impl Drop for Vm {
    fn drop(&mut self) {
        env().call(
            "DELETE",
            &format!("/vms/{}", self.name),
            Some(&self.key),
            None,
        );
    }
}

fn create(key: &str, prefix: &str, disk_mb: Option<i64>) -> (StatusCode, Value, Vm) {
    let name = common::unique(prefix);
    let mut body = json!({"name": name});
    if let Some(mb) = disk_mb {
        body["disk_mb"] = json!(mb);
    }
    let (status, body) = env().call("POST", "/vms", Some(key), Some(body));
    let vm = Vm {
        key: key.to_owned(),
        name,
    };
    (status, body, vm)
}

fn run(vm: &Vm, command: &str) -> Value {
    env().run(&vm.key, &vm.name, command)
}

fn disk(vm: &Vm) -> Value {
    let (status, body) = env().call("GET", &format!("/vms/{}", vm.name), Some(&vm.key), None);
    assert_eq!(status, StatusCode::OK, "{body}");
    body["disk"].clone()
}

/// Polls `GET /vms/:name` until `disk.used_bytes` drops below `bytes`; each
/// round runs `true`, whose snapshot commits the Btrfs transaction that
/// carries the frees of the kernel's cleaner.
fn wait_used_below(vm: &Vm, bytes: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let used = disk(vm)["used_bytes"].as_u64().unwrap();
        if used < bytes || Instant::now() > deadline {
            return used;
        }
        run(vm, "true");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn disk_mb_out_of_range_is_400_naming_it_and_creates_nothing() {
    let key = env().user_key();
    for bad in [json!(0), json!(-5), json!(MAX_DISK_MB + 1), json!("big")] {
        let name = common::unique("bad-disk");
        let (status, body) = env().call(
            "POST",
            "/vms",
            Some(&key),
            Some(json!({"name": name, "disk_mb": bad})),
        );

        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("disk_mb"),
            "{body}"
        );
        assert!(!env().vm_names(&key).contains(&name));
    }
}

#[test]
fn get_vm_shows_the_limit_default_or_requested() {
    let key = env().user_key();
    let (status, body, small) = create(&key, "disk-small", Some(300));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body, default) = create(&key, "disk-default", None);
    assert_eq!(status, StatusCode::CREATED, "{body}");

    assert_eq!(disk(&small)["limit_mb"], json!(300));
    assert_eq!(disk(&default)["limit_mb"], json!(MAX_DISK_MB));
    assert!(disk(&small)["used_bytes"].as_u64().unwrap() < 8 * MIB);
}

#[test]
fn sandbox_over_its_limit_fails_inside_and_others_keep_working() {
    let key = env().user_key();
    let (status, body, a) = create(&key, "disk-a", Some(200));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body, b) = create(&key, "disk-b", None);
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let full = run(&a, "dd if=/dev/zero of=/workspace/big bs=1M count=400");

    assert_ne!(full["exitCode"], json!(0), "{full}");
    assert!(full["stderr"].as_str().unwrap().contains("quota"), "{full}");
    let held_by = full["snapshot"]
        .as_str()
        .expect("a snapshot after the failed write");
    let used = disk(&a)["used_bytes"].as_u64().unwrap();
    assert!((150 * MIB..=200 * MIB).contains(&used), "used {used}");

    // B: run, named snapshot, restore, all as usual.
    assert_eq!(run(&b, "echo b > /workspace/f")["exitCode"], json!(0));
    let (status, body) = env().call(
        "POST",
        &format!("/vms/{}/snapshots", b.name),
        Some(&key),
        Some(json!({"name": "b-saved"})),
    );
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(run(&b, "rm /workspace/f")["exitCode"], json!(0));
    let (status, body) = env().call(
        "POST",
        &format!("/vms/{}/snapshots/b-saved/restore", b.name),
        Some(&key),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(run(&b, "cat /workspace/f")["stdout"], json!("b\n"));

    // A goes on: undo the write (restore), or delete the file; then delete
    // the snapshot that holds it.
    let (status, body) = env().call(
        "POST",
        &format!("/vms/{}/snapshots/initial/restore", a.name),
        Some(&key),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(run(&a, "ls /workspace/big")["exitCode"], json!(0));
    assert_eq!(run(&a, "rm -f /workspace/big")["exitCode"], json!(0));
    let (status, body) = env().call(
        "DELETE",
        &format!("/vms/{}/snapshots/{held_by}", a.name),
        Some(&key),
        None,
    );
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let used = wait_used_below(&a, 50 * MIB);
    assert!(used < 50 * MIB, "still {used} bytes used");
    let again = run(&a, "dd if=/dev/zero of=/workspace/again bs=1M count=100");
    assert_eq!(again["exitCode"], json!(0), "{again}");
}

#[test]
fn writes_outside_the_workspace_count_too() {
    let key = env().user_key();
    let (status, body, c) = create(&key, "disk-upper", Some(64));
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let out = run(&c, "dd if=/dev/zero of=/upper-file bs=1M count=128");

    assert_ne!(out["exitCode"], json!(0), "{out}");
    assert!(out["stderr"].as_str().unwrap().contains("quota"), "{out}");
    assert!(disk(&c)["used_bytes"].as_u64().unwrap() >= 48 * MIB);
}

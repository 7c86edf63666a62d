//! Reliability through the real service (router without a socket, real
//! Btrfs pool, real namespace runtime and agent): no zombie is left by
//! deleted sandboxes, and a client polling its sandbox never turns its own
//! restores into false 409s. Needs root. The crash-during-restore tests
//! start the service as a process: `tests/crash_restore.rs`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use axum::http::StatusCode;
use serde_json::json;

use common::service::Service;

fn env() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| Service::start("reliability", common::busybox_rootfs(), |_| {}))
}

/// The zombie count is of this whole process: no other test may create or
/// delete sandboxes meanwhile.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Zombie children of this process (the service) running as the sandboxes'
/// root (host uid 100000): exited sandbox PID 1s nobody reaped.
fn sandbox_zombies() -> Vec<i32> {
    let me = std::process::id().to_string();
    let uid = rewind::runtime::namespace::UID_BASE.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
            };
            field("State:").as_deref() == Some("Z")
                && field("PPid:").as_deref() == Some(me.as_str())
                && field("Uid:").as_deref() == Some(uid.as_str())
        })
        .collect()
}

#[test]
fn create_delete_50_times_leaves_no_zombie_children() {
    let _s = serial();
    let svc = env();
    let key = svc.user_key();
    for _ in 0..50 {
        let vm = svc.create_vm(&key, "zombie");
        let (status, body) = svc.call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(sandbox_zombies(), Vec::<i32>::new());
}

#[test]
fn polling_get_while_restoring_50_times_gives_no_false_409() {
    let _s = serial();
    let svc = env();
    let key = svc.user_key();
    let vm = svc.create_vm(&key, "poll");
    for (content, snap) in [("A", "snap-a"), ("B", "snap-b")] {
        svc.run(&key, &vm, &format!("echo {content} > /workspace/f"));
        let (status, body) = svc.call(
            "POST",
            &format!("/vms/{vm}/snapshots"),
            Some(&key),
            Some(json!({"name": snap})),
        );
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let done = AtomicBool::new(false);
    let polls = AtomicUsize::new(0);
    let conflicts = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                let (status, body) = svc.call("GET", &format!("/vms/{vm}"), Some(&key), None);
                assert_eq!(status, StatusCode::OK, "{body}");
                polls.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut conflicts = Vec::new();
        for i in 0..50 {
            let snap = ["snap-a", "snap-b"][i % 2];
            let path = format!("/vms/{vm}/snapshots/{snap}/restore");
            let (status, body) = svc.call("POST", &path, Some(&key), None);
            if status != StatusCode::OK {
                conflicts.push((i, status, body));
            }
        }
        done.store(true, Ordering::SeqCst);
        conflicts
    });
    assert!(conflicts.is_empty(), "restores refused: {conflicts:?}");
    assert!(polls.load(Ordering::SeqCst) > 0);
    // The last restore (i = 49) was of snap-b.
    let out = svc.run(&key, &vm, "cat /workspace/f");
    assert_eq!(out["stdout"], "B\n");
    svc.call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
}

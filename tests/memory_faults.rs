//! Failure safety of memory snapshots (namespace runtime, real CRIU): a dump
//! that fails — injected with CRIU's own fault injection, `CRIU_FAULT=3`
//! (fail while dumping pages), set for this test binary's service only —
//! answers 409 naming CRIU's error, leaves the sandbox running with its
//! processes, and leaves no snapshot behind.

mod common;

use std::sync::OnceLock;

use axum::http::StatusCode;
use serde_json::json;

use common::service::Service;

fn env() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| {
        // Before the service starts any thread; inherited by every `criu`.
        std::env::set_var("CRIU_FAULT", "3");
        Service::start("memory-faults", base_image(), |_| {})
    })
}

/// The debootstrap image: the agent binary runs in it, so a dump gets as
/// far as the injected fault (in a busybox root it fails earlier).
fn base_image() -> std::path::PathBuf {
    std::env::var_os("REWIND_TEST_BASE_IMAGE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/lib/rewind/images/base/rootfs".into())
}

#[test]
fn failed_memory_dump_leaves_the_sandbox_running_and_no_snapshot() {
    if !base_image().join(".rewind-image-complete").exists() {
        eprintln!("SKIPPED failed_memory_dump_leaves_the_sandbox_running_and_no_snapshot: no debootstrap base image (REWIND_TEST_BASE_IMAGE)");
        return;
    }
    let key = env().user_key();
    let vm = env().create_vm(&key, "memfail");
    env().run(
        &key,
        &vm,
        "echo 1 > /tmp/mark; nohup sleep 1000 >/dev/null 2>&1 &",
    );
    let before = env().snapshot_names(&key, &vm);

    let (status, body) = env().call(
        "POST",
        &format!("/vms/{vm}/snapshots"),
        Some(&key),
        Some(json!({"name": "boom", "include_memory": true})),
    );

    if status == StatusCode::NOT_IMPLEMENTED {
        eprintln!("SKIPPED failed_memory_dump_leaves_the_sandbox_running_and_no_snapshot: {body}");
        return;
    }
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("mem.c"), "{body}");
    assert_eq!(env().snapshot_names(&key, &vm), before);
    let alive = env().run(
        &key,
        &vm,
        "cat /tmp/mark; pgrep -x sleep >/dev/null && echo sleeping",
    );
    assert_eq!(alive["stdout"], "1\nsleeping\n");
}

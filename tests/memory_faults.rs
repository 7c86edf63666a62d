//! Failure safety of memory snapshots (namespace runtime, real CRIU): a dump
//! that fails — injected with CRIU's own fault injection, `CRIU_FAULT=3`
//! (fail while dumping pages), set for this test binary's service only —
//! answers 409 naming CRIU's error, leaves the sandbox running with its
//! processes, and leaves no snapshot behind.
//!
//! `#[ignore]`d: needs the debootstrap base image and CRIU, which
//! `scripts/test.sh` provides before running it with `--ignored`.

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
    common::debootstrap_image()
}

#[test]
#[ignore = "needs the debootstrap base image and CRIU; scripts/test.sh runs it"]
fn failed_memory_dump_leaves_the_sandbox_running_and_no_snapshot() {
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

    assert_ne!(
        status,
        StatusCode::NOT_IMPLEMENTED,
        "needs CRIU (scripts/install-deps.sh builds it): {body}"
    );
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

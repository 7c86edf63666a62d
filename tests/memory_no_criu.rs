//! Without CRIU (here: `criu` kept off this test binary's PATH), a memory
//! snapshot of a namespace sandbox is a 501 that says why, and nothing is
//! created.
//!
//! `#[ignore]`d: a host with a distribution's criu in /usr/sbin cannot keep
//! it off the PATH; `scripts/test.sh` (whose install-deps builds CRIU into
//! /usr/local/sbin) runs it with `--ignored`.

mod common;

use std::sync::OnceLock;

use axum::http::StatusCode;
use serde_json::json;

use common::service::Service;

const PATH_WITHOUT_CRIU: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

fn env() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| {
        // Before the service starts any thread.
        std::env::set_var("PATH", PATH_WITHOUT_CRIU);
        Service::start("memory-no-criu", common::busybox_rootfs(), |_| {})
    })
}

#[test]
#[ignore = "needs no criu in /usr/sbin:/usr/bin:/sbin:/bin (install-deps puts it in /usr/local/sbin); scripts/test.sh runs it"]
fn memory_snapshot_without_criu_is_501_with_the_reason() {
    let key = env().user_key();
    let vm = env().create_vm(&key, "nocriu");
    let installed = PATH_WITHOUT_CRIU
        .split(':')
        .find(|d| std::path::Path::new(d).join("criu").exists());
    assert_eq!(installed, None, "needs no criu in {PATH_WITHOUT_CRIU}");
    let before = env().snapshot_names(&key, &vm);

    let (status, body) = env().call(
        "POST",
        &format!("/vms/{vm}/snapshots"),
        Some(&key),
        Some(json!({"name": "mem", "include_memory": true})),
    );

    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    let reason = body["error"].as_str().unwrap();
    assert!(
        reason.contains("include_memory") && reason.contains("criu is not installed"),
        "{body}"
    );
    assert_eq!(env().snapshot_names(&key, &vm), before);
}

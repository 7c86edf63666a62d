//! Memory snapshots of namespace sandboxes with CRIU, end to end: the real
//! service (through its router), real Btrfs, real agent, real `criu`.
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

use common::service::Service;

fn env() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| Service::start("memory", common::memory::base_image(), |_| {}))
}

fn require_criu(key: &str, vm: &str) {
    common::memory::require_criu(env(), key, vm)
}

fn snapshot(key: &str, vm: &str, name: &str) -> (StatusCode, Value) {
    common::memory::snapshot(env(), key, vm, name)
}

/// A python process keeping a counter in memory only: each line written to
/// /tmp/poke adds one and publishes the count to /tmp/count.
const COUNTER: &str = r#"cat > /tmp/counter.py <<'PY'
import os
os.mkfifo('/tmp/poke')
poke = os.open('/tmp/poke', os.O_RDWR)
open('/tmp/pid', 'w').write(str(os.getpid()))
n = 0
while True:
    os.read(poke, 1)
    n += 1
    with open('/tmp/count.new', 'w') as f:
        f.write(str(n))
    os.rename('/tmp/count.new', '/tmp/count')
PY
nohup python3 /tmp/counter.py >/dev/null 2>&1 &
while [ ! -e /tmp/pid ]; do sleep 0.01; done; cat /tmp/pid"#;

/// Poke the counter once and wait until it published `expect`.
fn poke(key: &str, vm: &str, expect: u32) {
    env().run(key, vm, "echo >> /tmp/poke");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let count = env().run(key, vm, "cat /tmp/count 2>/dev/null");
        if count["stdout"].as_str() == Some(expect.to_string().as_str()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "count stuck at {count}, want {expect}"
        );
    }
}

/// The restored counter runs in the sandbox's own cgroups, in every
/// hierarchy (CRIU restores it there, not in the service's): each of the
/// sandbox's cgroup directories lists a process running `counter.py`.
fn assert_counter_in_the_sandbox_cgroups(vm: &str) {
    let cgroups = rewind::runtime::namespace::Cgroups::for_data_dir(&env().data_dir);
    let dirs = cgroups.dirs(vm);
    assert!(!dirs.is_empty());
    for dir in dirs {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        let counter = procs.lines().any(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains("counter.py")
        });
        assert!(counter, "{}: no counter.py in {procs:?}", dir.display());
    }
}

#[test]
#[ignore = "needs the debootstrap base image and CRIU; scripts/test.sh runs it"]
fn memory_restore_brings_back_the_counter_and_its_pid() {
    let key = env().user_key();
    let vm = env().create_vm(&key, "mem");
    require_criu(&key, &vm);
    let pid = env().run(&key, &vm, COUNTER)["stdout"].clone();
    (1..=3).for_each(|n| poke(&key, &vm, n));
    let (status, body) = snapshot(&key, &vm, "at-3");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["include_memory"], true);
    assert!(body["checksum"].as_str().unwrap().starts_with("sha256:"));
    (4..=7).for_each(|n| poke(&key, &vm, n));

    let (status, body) = env().call(
        "POST",
        &format!("/vms/{vm}/snapshots/at-3/restore"),
        Some(&key),
        None,
    );

    assert_eq!(status, StatusCode::OK, "{body}");
    poke(&key, &vm, 4);
    assert_eq!(env().run(&key, &vm, "cat /tmp/pid")["stdout"], pid);
    let alive = env().run(
        &key,
        &vm,
        &format!("kill -0 {} && echo alive", pid.as_str().unwrap()),
    );
    assert_eq!(alive["stdout"], "alive\n");
    assert_counter_in_the_sandbox_cgroups(&vm);
}

#[test]
#[ignore = "needs the debootstrap base image and CRIU; scripts/test.sh runs it"]
fn memory_fork_runs_two_independent_copies() {
    let key = env().user_key();
    let vm = env().create_vm(&key, "memf");
    require_criu(&key, &vm);
    env().run(&key, &vm, COUNTER);
    (1..=2).for_each(|n| poke(&key, &vm, n));
    let (status, body) = snapshot(&key, &vm, "at-2");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let fork = common::unique("memf-copy");

    let (status, body) = env().call(
        "POST",
        &format!("/vms/{vm}/snapshots/at-2/fork"),
        Some(&key),
        Some(json!({"name": fork})),
    );

    assert_eq!(status, StatusCode::CREATED, "{body}");
    (3..=5).for_each(|n| poke(&key, &fork, n));
    poke(&key, &vm, 3);
    assert_eq!(env().run(&key, &fork, "cat /tmp/count")["stdout"], "5");
    assert_counter_in_the_sandbox_cgroups(&fork);
}

#[test]
#[ignore = "needs the debootstrap base image and CRIU; scripts/test.sh runs it"]
fn memory_snapshot_restore_keeps_the_workspace_in_step() {
    let key = env().user_key();
    let vm = env().create_vm(&key, "memw");
    require_criu(&key, &vm);
    env().run(
        &key,
        &vm,
        "echo before > /workspace/f; echo upper > /etc/rewind-test",
    );
    let (status, body) = snapshot(&key, &vm, "files");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    env().run(&key, &vm, "echo after > /workspace/f; rm /etc/rewind-test");

    let (status, body) = env().call(
        "POST",
        &format!("/vms/{vm}/snapshots/files/restore"),
        Some(&key),
        None,
    );

    assert_eq!(status, StatusCode::OK, "{body}");
    let files = env().run(&key, &vm, "cat /workspace/f /etc/rewind-test");
    assert_eq!(files["stdout"], "before\nupper\n");
}

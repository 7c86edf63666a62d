//! A really full storage pool (issue #10, point 4): a sandbox fills the
//! whole 1 GiB pool (its disk limit is larger than the pool); its write fails
//! inside with ENOSPC and the run still answers 200; the other sandbox still
//! reads, restores and lists; creates and snapshots answer 201 or 507 with a
//! clear message — never a 500 — and a refused create leaves nothing behind.
//! (The restore used to time out: the agent's log write failed with ENOSPC
//! and tracing's fallback `eprintln!` panicked the request's task.)
//! Real pool, real namespace runtime. Needs root.

mod common;

use axum::http::StatusCode;
use serde_json::{json, Value};

use common::service::Service;

struct Vm<'a> {
    env: &'a Service,
    key: String,
    name: String,
}

impl Drop for Vm<'_> {
    fn drop(&mut self) {
        let path = format!("/vms/{}", self.name);
        self.env.call("DELETE", &path, Some(&self.key), None);
    }
}

fn vm<'a>(env: &'a Service, key: &str, prefix: &str) -> Vm<'a> {
    Vm {
        env,
        key: key.to_owned(),
        name: env.create_vm(key, prefix),
    }
}

/// 201, or 507 naming the full pool.
fn created_or_pool_full(status: StatusCode, body: &Value) {
    match status {
        StatusCode::CREATED => {}
        StatusCode::INSUFFICIENT_STORAGE => {
            assert!(
                body["error"].as_str().unwrap().contains("pool is full"),
                "{body}"
            )
        }
        other => panic!("expected 201 or 507, got {other}: {body}"),
    }
}

/// Unmounts and removes the pool of an earlier run: the test needs an empty
/// pool, not one whose freed space the cleaner has yet to reclaim.
fn fresh_pool(name: &str) {
    let dir = common::data_dir(name);
    let _ = std::process::Command::new("umount")
        .arg(dir.join("pool"))
        .status();
    let _ = std::fs::remove_file(dir.join("pool.img"));
}

/// A service on a fresh 1 GiB pool, sandbox B (file `f`, snapshot `b1`)
/// and sandbox A whose `dd` filled the pool.
fn filled(name: &str) -> (Service, String) {
    fresh_pool(name);
    let env = Service::start(name, common::busybox_rootfs(), |config| {
        config.storage.pool_size_gb = 1;
        config.limits.disk_mb = 4096;
        config.exec.max_timeout_secs = 300;
    });
    let key = env.user_key();
    (env, key)
}

fn sandbox_b<'a>(env: &'a Service, key: &str) -> Vm<'a> {
    let b = vm(env, key, "full-b");
    env.run(key, &b.name, "echo b > /workspace/f");
    let path = format!("/vms/{}/snapshots", b.name);
    let (status, body) = env.call("POST", &path, Some(key), Some(json!({"name": "b1"})));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    b
}

fn fill<'a>(env: &'a Service, key: &str) -> (Vm<'a>, Value) {
    let a = vm(env, key, "full-a");
    let out = env.run(
        key,
        &a.name,
        "dd if=/dev/zero of=/workspace/fill bs=1M count=2000",
    );
    (a, out)
}

#[test]
fn full_pool_fails_writes_inside_and_answers_507_or_works_elsewhere() {
    let (env, key) = filled("full-pool");
    let b = sandbox_b(&env, &key);

    let (_a, fill) = fill(&env, &key);

    assert_ne!(fill["exitCode"], json!(0), "{fill}");
    assert!(
        fill["stderr"].as_str().unwrap().contains("No space left"),
        "{fill}"
    );
    assert!(fill["snapshot"].is_string(), "{fill}");
    assert_eq!(
        env.run(&key, &b.name, "cat /workspace/f")["stdout"],
        json!("b\n")
    );
    let path = format!("/vms/{}/snapshots", b.name);
    let (status, body) = env.call("POST", &path, Some(&key), Some(json!({"name": "b2"})));
    created_or_pool_full(status, &body);
    let c = common::unique("full-c");
    let (status, body) = env.call("POST", "/vms", Some(&key), Some(json!({"name": c})));
    created_or_pool_full(status, &body);
    if status == StatusCode::CREATED {
        env.call("DELETE", &format!("/vms/{c}"), Some(&key), None);
    } else {
        assert!(!env.vm_names(&key).contains(&c));
    }
    assert_eq!(
        env.run(&key, &b.name, "cat /workspace/f")["stdout"],
        json!("b\n")
    );
}

#[test]
fn full_pool_restore_of_another_sandbox_works() {
    let (env, key) = filled("full-pool-restore");
    let b = sandbox_b(&env, &key);
    let (_a, _) = fill(&env, &key);

    let restore = format!("/vms/{}/snapshots/b1/restore", b.name);
    let (status, body) = env.call("POST", &restore, Some(&key), None);

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        env.run(&key, &b.name, "cat /workspace/f")["stdout"],
        json!("b\n")
    );
}

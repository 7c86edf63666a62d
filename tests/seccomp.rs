//! Nested user namespaces are denied to sandbox commands by default (a
//! seccomp rule on unshare/clone with CLONE_NEWUSER, clone3 → ENOSYS so libc
//! falls back to clone), while threads, fork and posix_spawn keep working;
//! `limits.allow_nested_userns = true` lifts it. Through the real service
//! on the debootstrap image (python3, util-linux `unshare`). Needs root, and
//! is `#[ignore]`d for needing that image: `scripts/test.sh` builds it and
//! runs these with `--ignored`.

mod common;

use std::sync::OnceLock;

use common::service::Service;

fn service(allow: bool) -> &'static Service {
    static DENY: OnceLock<Service> = OnceLock::new();
    static ALLOW: OnceLock<Service> = OnceLock::new();
    let (cell, name) = match allow {
        false => (&DENY, "seccomp-deny"),
        true => (&ALLOW, "seccomp-allow"),
    };
    cell.get_or_init(|| {
        Service::start(name, common::debootstrap_image(), |config| {
            config.limits.allow_nested_userns = allow;
        })
    })
}

const THREADS_AND_FORK: &str = r#"python3 -c '
import os, subprocess, threading
out = []
t = threading.Thread(target=out.append, args=("thread",)); t.start(); t.join()
pid = os.fork()
if pid == 0: os._exit(7)
_, status = os.waitpid(pid, 0)
out.append("fork=%d" % os.waitstatus_to_exitcode(status))
out.append(subprocess.run(["echo", "spawn"], capture_output=True, text=True).stdout.strip())
print(" ".join(out))
'"#;

#[test]
#[ignore = "needs the debootstrap base image; scripts/test.sh runs it"]
fn nested_user_namespace_is_denied_by_default() {
    let svc = service(false);
    let key = svc.user_key();
    let vm = svc.create_vm(&key, "userns");
    let out = svc.run(&key, &vm, "unshare -Ur true");
    assert_ne!(out["exitCode"], 0, "{out}");
    assert!(
        out["stderr"]
            .as_str()
            .unwrap()
            .contains("Operation not permitted"),
        "{out}"
    );
    svc.call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
}

#[test]
#[ignore = "needs the debootstrap base image; scripts/test.sh runs it"]
fn threads_fork_and_spawn_work_under_the_userns_filter() {
    let svc = service(false);
    let key = svc.user_key();
    let vm = svc.create_vm(&key, "threads");
    let out = svc.run(&key, &vm, THREADS_AND_FORK);
    assert_eq!(out["stdout"], "thread fork=7 spawn\n", "{out}");
    let out = svc.run(&key, &vm, "sh -c 'true & wait' && echo ok");
    assert_eq!(out["stdout"], "ok\n", "{out}");
    svc.call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
}

#[test]
#[ignore = "needs the debootstrap base image; scripts/test.sh runs it"]
fn allow_nested_userns_lets_unshare_work() {
    let svc = service(true);
    let key = svc.user_key();
    let vm = svc.create_vm(&key, "userns-ok");
    let out = svc.run(&key, &vm, "unshare -Ur id -u");
    assert_eq!(out["stdout"], "0\n", "{out}");
    assert_eq!(out["exitCode"], 0, "{out}");
    svc.call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
}

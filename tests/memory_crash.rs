//! The service killed during a memory snapshot or a memory restore — by a
//! crash (abort, as `kill -9`) at each of its steps
//! (`rewind::failpoint::MEMORY_FAILPOINTS`), or by `kill -9` while CRIU
//! works — comes back whole after a restart: a snapshot that was cut off
//! before its row was written is gone and the sandbox runs on with its
//! processes (thawed); a restore that was cut off after the old processes
//! stopped (every failpoint, and CRIU's own restore) is completed at
//! startup — never old processes on new files — and the memory snapshot
//! restores again afterwards. Starts the real service as a
//! process (`rewind serve`) on the debootstrap image. Needs root, and is
//! `#[ignore]`d for needing the debootstrap base image and CRIU:
//! `scripts/test.sh` provides both and runs it with `--ignored`.

mod common;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use common::process::ServerProcess;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The debootstrap image, after asserting that it and CRIU are there
/// (panics naming what is missing).
fn base_image() -> PathBuf {
    let image = common::memory::base_image();
    if let Err(reason) = criu_check() {
        panic!("needs a working CRIU (scripts/install-deps.sh builds it): {reason}");
    }
    image
}

fn criu_check() -> Result<(), String> {
    let out = std::process::Command::new("criu")
        .arg("check")
        .output()
        .map_err(|e| format!("no criu: {e}"))?;
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match said.contains("Looks good") {
        true => Ok(()),
        false => Err(format!("`criu check` fails: {said}")),
    }
}

/// A data dir whose shifted base image is shared between these tests.
fn data_dir(name: &str) -> PathBuf {
    let dir = common::data_dir(name);
    let cache = common::test_root().join("images-cache-memory");
    std::fs::create_dir_all(&cache).unwrap();
    let link = dir.join("images");
    if !link.exists() {
        std::os::unix::fs::symlink(&cache, &link).unwrap();
    }
    dir
}

/// The state every test starts from: files and a process.
const STATE_A: &str =
    "echo A > /workspace/f; echo tmpA > /tmp/t; nohup sleep 1000 >/dev/null 2>&1 &";
const SHOW: &str = "cat /workspace/f; cat /tmp/t 2>/dev/null || echo no-tmp; \
    pgrep -x sleep >/dev/null && echo sleeping || echo no-sleep";
const WHOLE_A: &str = "A\ntmpA\nsleeping\n";

fn new_vm(server: &ServerProcess, key: &str) -> String {
    let vm = common::unique("memcrash");
    let (status, body) = server.req("POST", "/vms", key, Some(json!({"name": vm})));
    assert_eq!(status, 201, "{body}");
    run(server, key, &vm, STATE_A);
    vm
}

fn run(server: &ServerProcess, key: &str, vm: &str, command: &str) -> String {
    let (status, out) = server.req(
        "POST",
        &format!("/vms/{vm}/run"),
        key,
        Some(json!({"command": command})),
    );
    assert_eq!(status, 200, "{out}\n{}", server.log());
    out["stdout"].as_str().unwrap().to_owned()
}

fn memory_snapshot(server: &ServerProcess, key: &str, vm: &str, snap: &str) -> Option<u16> {
    let body = json!({"name": snap, "include_memory": true});
    let path = format!("/vms/{vm}/snapshots");
    server
        .try_req("POST", &path, key, Some(body))
        .map(|(s, _)| s)
}

fn memory_restore(server: &ServerProcess, key: &str, vm: &str, snap: &str) -> Option<u16> {
    let path = format!("/vms/{vm}/snapshots/{snap}/restore");
    server.try_req("POST", &path, key, None).map(|(s, _)| s)
}

fn snapshot_names(server: &ServerProcess, key: &str, vm: &str) -> Vec<String> {
    let (_, body) = server.req("GET", &format!("/vms/{vm}/snapshots"), key, None);
    body["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot_name"].as_str().unwrap().to_owned())
        .collect()
}

/// After a restart following a cut-off snapshot: no snapshot `mem`, the
/// sandbox runs on with its files and processes, and `mem` can be taken.
fn assert_snapshot_cut_off_cleanly(server: &ServerProcess, key: &str, vm: &str) {
    let (_, row) = server.req("GET", &format!("/vms/{vm}"), key, None);
    assert_eq!(row["status"], "running", "{row}\n{}", server.log());
    assert!(!snapshot_names(server, key, vm).contains(&"mem".to_owned()));
    assert_eq!(run(server, key, vm, SHOW), WHOLE_A, "{}", server.log());
    assert_eq!(memory_snapshot(server, key, vm, "mem"), Some(201));
}

/// After a restart following a cut-off restore of `mem` (taken in state A,
/// then the files changed to B): every cut-off point is after the old
/// processes were stopped, so startup completes the restore, as asked: the
/// sandbox runs restored from memory (A, its /tmp and its process) — and
/// `mem` restores again.
fn assert_restore_completed_at_startup(server: &ServerProcess, key: &str, vm: &str) {
    let (_, row) = server.req("GET", &format!("/vms/{vm}"), key, None);
    assert_eq!(row["status"], "running", "{row}\n{}", server.log());
    assert_eq!(run(server, key, vm, SHOW), WHOLE_A, "{}", server.log());
    let log = server.log();
    assert!(
        log.contains(
            "a memory restore of mem was cut off after its processes stopped; completed it"
        ),
        "{log}"
    );
    assert_eq!(memory_restore(server, key, vm, "mem"), Some(200));
    assert_eq!(run(server, key, vm, SHOW), WHOLE_A);
}

#[test]
#[ignore = "needs the debootstrap base image and CRIU; scripts/test.sh runs it"]
fn crash_at_every_memory_failpoint_recovers_a_whole_sandbox() {
    let image = base_image();
    let _s = serial();
    let dir = data_dir("memory-crash");
    let mut key = None;
    for step in rewind::failpoint::MEMORY_FAILPOINTS {
        let server = ServerProcess::start(&dir, &image, Some(step));
        let key = key.get_or_insert_with(|| server.bootstrap_key()).clone();
        let vm = new_vm(&server, &key);
        let restoring = step.starts_with("memory_restore:");
        if restoring {
            assert_eq!(memory_snapshot(&server, &key, &vm, "mem"), Some(201));
            run(
                &server,
                &key,
                &vm,
                "echo B > /workspace/f; echo tmpB > /tmp/t",
            );
            assert_eq!(memory_restore(&server, &key, &vm, "mem"), None, "{step}");
        } else {
            assert_eq!(memory_snapshot(&server, &key, &vm, "mem"), None, "{step}");
        }
        server.wait_crashed();

        let server = ServerProcess::start(&dir, &image, None);

        match restoring {
            true => assert_restore_completed_at_startup(&server, &key, &vm),
            false => assert_snapshot_cut_off_cleanly(&server, &key, &vm),
        }
        server.req("DELETE", &format!("/vms/{vm}"), &key, None);
    }
}

/// Host pids of `criu <verb>` processes working on sandbox `vm` (their
/// command line names its images dir); other checkouts' are not counted.
fn criu_of(verb: &str, vm: &str) -> Vec<i32> {
    let procs = std::fs::read_dir("/proc").unwrap().flatten();
    procs
        .filter_map(|p| p.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let has = |s: &str| {
                args.iter()
                    .any(|a| a.windows(s.len()).any(|w| w == s.as_bytes()))
            };
            args.first().is_some_and(|a| a.ends_with(b"criu")) && has(verb) && has(vm)
        })
        .collect()
}

/// SIGKILL the service as soon as `criu <verb>` runs for `vm`, while
/// `send` (a request to it) is in flight; returns once that criu, orphaned,
/// has run to its end.
fn kill_9_during_criu(server: &ServerProcess, vm: &str, verb: &str, send: impl FnOnce() + Send) {
    std::thread::scope(|s| {
        s.spawn(send);
        let deadline = Instant::now() + Duration::from_secs(120);
        while criu_of(verb, vm).is_empty() {
            assert!(Instant::now() < deadline, "criu {verb} never ran");
            std::thread::yield_now();
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while !criu_of(verb, vm).is_empty() {
        assert!(Instant::now() < deadline, "criu {verb} still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs the debootstrap base image and CRIU; scripts/test.sh runs it"]
fn kill_9_while_criu_dumps_or_restores_recovers_a_whole_sandbox() {
    let image = base_image();
    let _s = serial();
    let dir = data_dir("memory-kill9");
    let server = ServerProcess::start(&dir, &image, None);
    let key = server.bootstrap_key();
    let vm = new_vm(&server, &key);

    kill_9_during_criu(&server, &vm, "dump", || {
        assert_eq!(memory_snapshot(&server, &key, &vm, "mem"), None);
    });
    drop(server);
    let server = ServerProcess::start(&dir, &image, None);
    assert_snapshot_cut_off_cleanly(&server, &key, &vm);
    run(
        &server,
        &key,
        &vm,
        "echo B > /workspace/f; echo tmpB > /tmp/t",
    );
    kill_9_during_criu(&server, &vm, "restore", || {
        assert_eq!(memory_restore(&server, &key, &vm, "mem"), None);
    });
    drop(server);
    let server = ServerProcess::start(&dir, &image, None);

    assert_restore_completed_at_startup(&server, &key, &vm);
    server.req("DELETE", &format!("/vms/{vm}"), &key, None);
}

//! History through the real service (namespace runtime, busybox rootfs,
//! loop-mounted Btrfs pool): after a run of commands the snapshot list holds
//! exactly what the thinning policy keeps and says why, kept snapshots
//! restore while thinned ones answer 404; a snapshot exported and imported
//! gives a sandbox with the same tree, and bad archives are 400s that leave
//! nothing behind. Needs root.

mod common;

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use axum::http::StatusCode;
use common::service::Service;
use rewind_storage::Thinning;
use serde_json::{json, Value};

const KEEP_RECENT: usize = 4;

/// Imports one at a time: the tests check that no staging dir is left.
static SERIAL: Mutex<()> = Mutex::new(());

fn env() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| {
        Service::start("history", common::busybox_rootfs(), |config| {
            config.storage.keep_recent_snapshots = KEEP_RECENT;
        })
    })
}

/// `cmd_<unix-ms>` → its time.
fn time_of(name: &str) -> SystemTime {
    let ms: u64 = name.strip_prefix("cmd_").unwrap().parse().unwrap();
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn listing(key: &str, vm: &str) -> Vec<(String, Value)> {
    env()
        .snapshots(key, vm)
        .iter()
        .map(|s| {
            let name = s["snapshot_name"].as_str().unwrap().to_owned();
            (name, s["retained_because"].clone())
        })
        .collect()
}

#[test]
fn thinned_history_keeps_the_policy_set_and_says_why() {
    let svc = env();
    let key = svc.user_key();
    let vm = svc.create_vm(&key, "hist");
    let mut cmds = Vec::new();
    for i in 1..=12 {
        let out = svc.run(&key, &vm, &format!("echo {i} >> log"));
        cmds.push(out["snapshot"].as_str().unwrap().to_owned());
        if i == 3 {
            let body = json!({"name": "mark"});
            let path = format!("/vms/{vm}/snapshots");
            let (status, body) = svc.call("POST", &path, Some(&key), Some(body));
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
    }

    svc.state.sandboxes.storage.flush_background();

    let policy = Thinning {
        keep_recent: KEEP_RECENT,
        max_auto: 1000,
    };
    let times: Vec<_> = cmds.iter().map(|n| time_of(n)).collect();
    let kept_cmds: Vec<_> = cmds
        .iter()
        .zip(policy.plan(&times))
        .filter_map(|(n, p)| p.map(|_| n.clone()))
        .collect();
    let listed = listing(&key, &vm);
    let names: Vec<_> = listed.iter().map(|(n, _)| n.clone()).collect();
    let mut expected = vec!["initial".to_owned()];
    expected.extend(kept_cmds.iter().filter(|n| **n <= cmds[2]).cloned());
    expected.push("mark".into());
    expected.extend(kept_cmds.iter().filter(|n| **n > cmds[2]).cloned());
    assert_eq!(names, expected);
    let why = |n: &str| listed.iter().find(|(m, _)| m == n).unwrap().1.clone();
    assert_eq!(why("initial"), json!("initial"));
    assert_eq!(why("mark"), json!("named"));
    assert_eq!(why(&cmds[11]), json!("recent"));
    assert_eq!(why(&cmds[8]), json!("recent"));
    assert_eq!(why(&cmds[0]), json!("five_minute"));
    svc.call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
}

#[test]
fn thinned_snapshot_is_404_and_kept_old_one_restores() {
    let svc = env();
    let key = svc.user_key();
    let vm = svc.create_vm(&key, "hist-restore");
    let cmds = svc.append_runs(&key, &vm, 8);
    let restore = |snap: &str| {
        let path = format!("/vms/{vm}/snapshots/{snap}/restore");
        svc.call("POST", &path, Some(&key), None)
    };

    let (thinned, body) = restore(&cmds[1]);
    let (kept, body_kept) = restore(&cmds[0]);

    assert_eq!(thinned, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(kept, StatusCode::OK, "{body_kept}");
    let out = svc.run(&key, &vm, "cat log");
    assert_eq!(out["stdout"], json!("1\n"));
    svc.call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
}

/// `GET` of an export: status and the raw body bytes.
fn export(key: &str, vm: &str, snap: &str) -> (StatusCode, Vec<u8>) {
    env().get_bytes(key, &format!("/vms/{vm}/snapshots/{snap}/export"))
}

fn import(key: &str, name: &str, archive: Vec<u8>) -> (StatusCode, Value) {
    env().import(key, name, archive)
}

/// Every object under `root`: relative path, mode, owner, size, content or
/// link target.
fn tree(root: &Path) -> Vec<(String, u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let data = if meta.is_dir() {
                dirs.push(path.clone());
                Vec::new()
            } else if meta.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_vec()
            } else {
                std::fs::read(&path).unwrap()
            };
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            out.push((rel, meta.mode(), meta.uid(), data));
        }
    }
    out.sort();
    out
}

fn staging_dirs() -> Vec<String> {
    env().import_staging_dirs()
}

#[test]
fn export_then_import_makes_a_sandbox_with_the_same_tree() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let svc = env();
    let key = svc.user_key();
    let vm = svc.create_vm(&key, "exp");
    let setup = "mkdir -p a/b && echo hello > a/b/f && chmod 640 a/b/f && \
                 ln -s b/f a/link && dd if=/dev/urandom of=big bs=64k count=16 2>/dev/null";
    let snap = svc.run(&key, &vm, setup)["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    let copy = common::unique("imp");

    let (status, archive) = export(&key, &vm, &snap);
    let (created, body) = import(&key, &copy, archive);

    assert_eq!(status, StatusCode::OK);
    assert_eq!(created, StatusCode::CREATED, "{body}");
    let storage = &svc.state.sandboxes.storage;
    let source = storage.snapshot_path(&vm.parse().unwrap(), &snap.parse().unwrap());
    let imported = storage.workspace_path(&copy.parse().unwrap());
    assert_eq!(tree(&imported), tree(&source));
    assert_eq!(svc.snapshot_names(&key, &copy), vec!["initial".to_owned()]);
    assert_eq!(
        svc.run(&key, &copy, "cat a/link")["stdout"],
        json!("hello\n")
    );
    assert_eq!(staging_dirs(), Vec::<String>::new());
    svc.call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
    svc.call("DELETE", &format!("/vms/{copy}"), Some(&key), None);
}

#[test]
fn bad_exports_and_imports_are_4xx_and_leave_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let svc = env();
    let key = svc.user_key();
    let vm = svc.create_vm(&key, "exp-bad");
    let (status, mut archive) = export(&key, &vm, "initial");
    assert_eq!(status, StatusCode::OK);
    let mid = archive.len() / 2;
    archive[mid] ^= 0x55;
    let copy = common::unique("imp-bad");

    let (unknown, _) = export(&key, &vm, "no-such-snapshot");
    let (corrupt, corrupt_body) = import(&key, &copy, archive.clone());
    let (truncated, truncated_body) = import(&key, &copy, archive[..mid].to_vec());
    let (bad_name, bad_name_body) = import(&key, "bad%20name", archive.clone());
    let (reserved, reserved_body) = import(&key, "import", archive);

    assert_eq!(unknown, StatusCode::NOT_FOUND);
    assert_eq!(corrupt, StatusCode::BAD_REQUEST, "{corrupt_body}");
    assert!(
        corrupt_body.to_string().contains("checksum mismatch"),
        "{corrupt_body}"
    );
    assert_eq!(truncated, StatusCode::BAD_REQUEST, "{truncated_body}");
    assert!(
        truncated_body.to_string().contains("trailer"),
        "{truncated_body}"
    );
    assert_eq!(bad_name, StatusCode::BAD_REQUEST, "{bad_name_body}");
    assert_eq!(reserved, StatusCode::BAD_REQUEST, "{reserved_body}");
    let (gone, _) = svc.call("GET", &format!("/vms/{copy}"), Some(&key), None);
    assert_eq!(gone, StatusCode::NOT_FOUND);
    assert_eq!(staging_dirs(), Vec::<String>::new());
    svc.call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
}

/// The router on a loopback port (for the CLI, which speaks HTTP).
fn listening_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| env().listen().0)
}

fn cli(key: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(args)
        .env(
            "REWIND_URL",
            format!("http://127.0.0.1:{}", listening_port()),
        )
        .env("REWIND_API_KEY", key)
        .output()
        .unwrap()
}

#[test]
fn cli_snapshot_export_then_import_round_trips() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let svc = env();
    let key = svc.user_key();
    let vm = svc.create_vm(&key, "cli-exp");
    let snap = svc.run(&key, &vm, "echo from-cli > note")["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = common::test_root().join(format!("{}.rewind", common::unique("cli")));
    let file_arg = file.to_str().unwrap();
    let copy = common::unique("cli-imp");

    let exported = cli(&key, &["snapshot", "export", &vm, &snap, "-o", file_arg]);
    let imported = cli(&key, &["snapshot", "import", &copy, file_arg]);
    let missing = cli(&key, &["snapshot", "export", &vm, "nope", "-o", file_arg]);

    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(exported.status.success(), "{}", stderr(&exported));
    assert!(imported.status.success(), "{}", stderr(&imported));
    assert_eq!(
        svc.run(&key, &copy, "cat note")["stdout"],
        json!("from-cli\n")
    );
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("404"), "{}", stderr(&missing));
    std::fs::remove_file(&file).unwrap();
    svc.call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
    svc.call("DELETE", &format!("/vms/{copy}"), Some(&key), None);
}

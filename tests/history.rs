//! Thinned history through the real service (namespace runtime, busybox
//! rootfs, loop-mounted Btrfs pool): after a run of commands the snapshot
//! list holds exactly what the thinning policy keeps, says why, and every
//! listed snapshot restores while thinned ones answer 404. Needs root.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use common::service::Service;
use rewind_storage::Thinning;
use serde_json::{json, Value};

const KEEP_RECENT: usize = 4;

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
    let (status, body) = env().call("GET", &format!("/vms/{vm}/snapshots"), Some(key), None);
    assert_eq!(status, StatusCode::OK, "{body}");
    body["snapshots"]
        .as_array()
        .unwrap()
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
    let cmds: Vec<String> = (1..=8)
        .map(|i| {
            let out = svc.run(&key, &vm, &format!("echo {i} >> log"));
            out["snapshot"].as_str().unwrap().to_owned()
        })
        .collect();
    svc.state.sandboxes.storage.flush_background();
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

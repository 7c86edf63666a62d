//! Cloud Hypervisor runtime benchmark through the real service: HTTP over
//! loopback, a loop-mounted Btrfs pool, the real `cloud-hypervisor`, the
//! real guest from `images/build-guest.sh`, a 512 MiB guest with 1 vCPU.
//!
//! It runs only where a guest boots under KVM
//! ([`CloudHypervisorRuntime::probe`]); elsewhere it prints
//! `SKIPPED vm bench: <reason>` and exits 0. On a real-KVM host, as root:
//!
//! ```text
//! scripts/test.sh            # or: cargo build --release -p rewind-agent &&
//!                            #     images/build-guest.sh --agent target/release/rewind-agent
//! cargo bench --bench vm
//! ```
//!
//! Environment: `REWIND_BENCH_ITERS` (default 20), `REWIND_GUEST_DIR`
//! (default `/var/lib/rewind/images/guest`), `REWIND_BENCH_FORCE=1` skips the
//! probe (to see where a host fails).
//!
//! Rows (p50/p99 over n, milliseconds, HTTP end to end unless noted):
//! create (spawn CH → boot → agent ready → initial snapshot); run `true`
//! (and its `snapshotMs`: FIFREEZE → Btrfs snapshot → thaw); fs-only restore
//! of the running VM (unmount → swap → disk hot-swap → mount); full snapshot
//! (pause → Btrfs snapshot → `vm.snapshot` → resume); full restore (stop CH →
//! swap → `vm.restore` → agent); fork of a full snapshot (a new sandbox).

mod common;

use std::path::PathBuf;

use common::{row, timed, Client};
use rewind::config::{Config, Overrides};
use rewind::runtime::cloud_hypervisor::CloudHypervisorRuntime;
use serde_json::json;

const VM: &str = "vm-bench";

fn guest_dir() -> PathBuf {
    std::env::var_os("REWIND_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/rewind/images/guest".into())
}

fn config() -> Config {
    let data_dir = common::data_dir("vm");
    let images = data_dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let link = images.join("guest");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(guest_dir(), &link).unwrap();
    let overrides = Overrides {
        data_dir: Some(data_dir),
        runtime: Some("cloud-hypervisor".into()),
        ..Default::default()
    };
    let mut config = Config::load(None, &overrides).unwrap();
    config.limits.memory_mb = 512;
    config.limits.vcpus = 1;
    config
}

async fn delete(client: &Client, path: &str) {
    let status = client.delete(path).await;
    assert!(status.is_success(), "DELETE {path}: {status}");
}

async fn bench_create(client: &Client, n: usize) -> Vec<String> {
    let mut create = vec![];
    for i in 0..n {
        let name = format!("vm-create-{i}");
        timed(&mut create, client.post("/vms", json!({ "name": name }))).await;
        delete(client, &format!("/vms/{name}")).await;
    }
    vec![row("create: boot → agent ready → initial snapshot", create)]
}

async fn bench_runs(client: &Client, n: usize) -> Vec<String> {
    let (mut total, mut snap) = (vec![], vec![]);
    for _ in 0..n {
        let out = timed(
            &mut total,
            client.post(&format!("/vms/{VM}/run"), json!({"command": "true"})),
        )
        .await;
        snap.push(out["snapshotMs"].as_f64().unwrap());
    }
    vec![
        row("run `true`: end to end", total),
        row("run `true`: per-command snapshot (`snapshotMs`)", snap),
    ]
}

async fn bench_restores(client: &Client, n: usize) -> Vec<String> {
    let snaps = format!("/vms/{VM}/snapshots");
    client
        .post(&snaps, json!({"name": "ws-only", "include_memory": false}))
        .await;
    let mut fs_only = vec![];
    for _ in 0..n {
        timed(
            &mut fs_only,
            client.post(&format!("{snaps}/ws-only/restore"), json!({})),
        )
        .await;
    }
    let mut full = vec![];
    for i in 0..n {
        let name = format!("full-{i}");
        timed(
            &mut full,
            client.post(&snaps, json!({"name": name, "include_memory": true})),
        )
        .await;
        if i > 0 {
            delete(client, &format!("{snaps}/{name}")).await;
        }
    }
    let mut full_restore = vec![];
    for _ in 0..n {
        timed(
            &mut full_restore,
            client.post(&format!("{snaps}/full-0/restore"), json!({})),
        )
        .await;
    }
    let mut fork = vec![];
    for i in 0..n.div_ceil(2) {
        let name = format!("vm-fork-{i}");
        timed(
            &mut fork,
            client.post(&format!("{snaps}/full-0/fork"), json!({ "name": name })),
        )
        .await;
        delete(client, &format!("/vms/{name}")).await;
    }
    vec![
        row("fs-only restore of the running VM", fs_only),
        row("full snapshot (memory + disks), 512 MiB guest", full),
        row("full restore, 512 MiB guest", full_restore),
        row("fork of a full snapshot (new sandbox running)", fork),
    ]
}

fn main() {
    let n: usize = std::env::var("REWIND_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let config = config();
    if std::env::var("REWIND_BENCH_FORCE").as_deref() != Ok("1") {
        if let Err(e) = CloudHypervisorRuntime::probe(&config) {
            println!("SKIPPED vm bench: {e}");
            return;
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, server) = common::start(config).await;
        common::delete_all_vms(&client).await;
        let mut lines = common::header();
        lines.extend(bench_create(&client, n.div_ceil(4).max(3)).await);
        client.post("/vms", json!({ "name": VM })).await;
        lines.extend(bench_runs(&client, n * 5).await);
        lines.extend(bench_restores(&client, n).await);
        common::delete_all_vms(&client).await;
        println!(
            "\nrewind cloud-hypervisor benchmark (guest: {})\n",
            guest_dir().display()
        );
        println!("{}", lines.join("\n"));
        server.abort();
    });
}

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
//!
//! **Payload mode** (`REWIND_BENCH_VM_MODE=payload`, and what `auto`, the
//! default, picks when no Linux guest boots — as on the development hosts,
//! whose paravirtualised KVM boots none): the guest is the PVH counter
//! payload of `tests/ch_memory.rs` (`tests/payload/pvh-counter.S`), driven
//! through rewind's runtime and storage paths as that test does, with 256 MiB
//! and 1 GiB of guest memory. Rows: full snapshot (pause → Btrfs snapshot of
//! the disks → `vm.snapshot` → manifest → resume); verify of the saved state
//! (SHA-256 of every file, what a restore does first); full restore into a new
//! CH process (verify → stop → Btrfs restore → `vm.restore` → resume); and,
//! in the same run, `cp --reflink=never` of the saved memory file — the floor
//! any file-based memory snapshot pays. It needs a `cloud-hypervisor` whose
//! `vm.snapshot` works on the host (`REWIND_CH_BINARY`); on an emulating host
//! the figures are for the VMM and storage path, not for a real-KVM host.
//!
//! ```text
//! REWIND_CH_BINARY=/path/to/cloud-hypervisor REWIND_BENCH_ITERS=10 cargo bench --bench vm
//! ```

#[path = "../tests/common/ch_payload.rs"]
mod ch_payload;
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
    let mode = std::env::var("REWIND_BENCH_VM_MODE").unwrap_or_else(|_| "auto".into());
    let rt = common::runtime();
    let config = config();
    let forced = std::env::var("REWIND_BENCH_FORCE").as_deref() == Ok("1");
    let guest = match mode.as_str() {
        "payload" => Err("REWIND_BENCH_VM_MODE=payload".to_string()),
        "guest" | "auto" if forced => Ok(()),
        "guest" | "auto" => CloudHypervisorRuntime::probe(&config).map_err(|e| e.to_string()),
        other => panic!("REWIND_BENCH_VM_MODE={other}: expected auto, guest or payload"),
    };
    match guest {
        Ok(()) => rt.block_on(guest_bench(config, n)),
        Err(why) if mode == "guest" => println!("SKIPPED vm bench: {why}"),
        Err(why) => {
            println!("guest mode not run ({why}); payload mode");
            rt.block_on(payload::bench(n.min(10)));
        }
    }
}

async fn guest_bench(config: Config, n: usize) {
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
}

/// The payload mode: memory snapshot and restore at the VMM level.
mod payload {
    use std::path::Path;
    use std::time::Instant;

    use crate::ch_payload::{shared, snap, wait_marks, wait_past, Vm, VM_STATE_DIR};
    use crate::common::{header, row};
    use rewind::runtime::cloud_hypervisor::find_binary;
    use rewind::runtime::{chain, full_snapshot, Runtime};

    fn ms(since: Instant) -> f64 {
        since.elapsed().as_secs_f64() * 1000.0
    }

    /// Whether `vm.snapshot` works with this binary on this host.
    async fn probe() -> Result<(), String> {
        find_binary()
            .ok_or("no cloud-hypervisor binary (set REWIND_CH_BINARY or put it on PATH)")?;
        let vm = Vm::boot(256).await;
        wait_marks(&vm.serial(), 1).await;
        let dir = vm.aux(&snap("probe")).join(VM_STATE_DIR);
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        let none = async { Ok::<_, std::io::Error>(()) };
        full_snapshot(&vm.rt, &vm.ctx, vm.state(), &dir, none)
            .await
            .map_err(|e| chain(&e))
    }

    fn copy_floor(memory: &Path) -> f64 {
        let copy = memory.with_file_name("memory-copy");
        let start = Instant::now();
        let status = std::process::Command::new("cp")
            .arg("--reflink=never")
            .arg(memory)
            .arg(&copy)
            .status()
            .unwrap();
        let elapsed = ms(start);
        assert!(status.success(), "cp --reflink=never failed");
        std::fs::remove_file(&copy).unwrap();
        elapsed
    }

    async fn sizes(memory_mb: u64, n: usize) -> Vec<String> {
        let mut vm = Vm::boot(memory_mb).await;
        wait_marks(&vm.serial(), 2).await;
        let (mut take, mut verify, mut restore, mut copy) = (vec![], vec![], vec![], vec![]);
        for i in 0..n {
            let s = snap(&format!("b{i}"));
            let start = Instant::now();
            let last = vm.full_snapshot(&s).await;
            take.push(ms(start));
            let dir = vm.aux(&s).join(VM_STATE_DIR);
            copy.push(copy_floor(&dir.join("memory-ranges")));
            let start = Instant::now();
            vm.rt.verify_state(&dir).await.unwrap();
            verify.push(ms(start));
            wait_past(&vm.serial(), last + 1).await;
            let start = Instant::now();
            vm.restore(&s).await.unwrap();
            restore.push(ms(start));
            let after = wait_marks(&vm.serial(), 1).await;
            assert!(
                (last..=last + 2).contains(&after[0]),
                "restored counter {} does not continue {last}",
                after[0]
            );
            shared().storage.delete_snapshot(&vm.name, &s).unwrap();
        }
        vm.stop().await;
        let size = format!("{memory_mb} MiB guest");
        vec![
            row(&format!("full snapshot, {size}"), take),
            row(&format!("verify saved state (SHA-256), {size}"), verify),
            row(
                &format!("full restore in a new CH process, {size}"),
                restore,
            ),
            row(
                &format!("floor: `cp --reflink=never` of the memory file, {size}"),
                copy,
            ),
        ]
    }

    pub async fn bench(n: usize) {
        if let Err(why) = probe().await {
            println!("SKIPPED vm bench (payload mode): vm.snapshot does not work here: {why}");
            return;
        }
        let mut lines = header();
        for memory_mb in [256, 1024] {
            lines.extend(sizes(memory_mb, n).await);
        }
        println!(
            "\nrewind cloud-hypervisor payload benchmark ({} per row; PVH counter payload, \
             guest emulated by this host's KVM: VMM + storage path only)\n",
            n
        );
        println!("{}", lines.join("\n"));
    }
}

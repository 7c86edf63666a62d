//! Files benchmark: reading a file from a snapshot (host side, openat2 on
//! the read-only subvolume) against reading it from the live workspace
//! (through the agent), and the diff of a one-file change computed from a
//! Btrfs send stream against `diff -rq` of the two snapshot directories,
//! at 20k and 200k files. A real HTTP client over loopback against the real
//! service (namespace runtime, loop-mounted Btrfs pool).
//!
//! Reproduce (as root, after `cargo build --release --workspace`):
//!
//! ```text
//! cargo bench --bench files
//! ```
//!
//! Environment: `REWIND_BENCH_ITERS` (default 50), `REWIND_BENCH_DIFF_SIZES`
//! (default `20000,200000`), `REWIND_BENCH_BASE_IMAGE`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{row, timed, Client};
use serde_json::json;

fn base_image() -> PathBuf {
    if let Some(p) = std::env::var_os("REWIND_BENCH_BASE_IMAGE") {
        return p.into();
    }
    let real = PathBuf::from("/var/lib/rewind/images/base/rootfs");
    assert!(
        real.join(".rewind-image-complete").exists(),
        "no base image"
    );
    real
}

fn snapshot_dir(vm: &str, snap: &str) -> PathBuf {
    let dir = common::data_dir_path("files")
        .join("pool/sandboxes")
        .join(vm)
        .join("snaps")
        .join(snap);
    assert!(dir.is_dir(), "{} is not the snapshot", dir.display());
    dir
}

async fn run(client: &Client, vm: &str, command: &str) -> serde_json::Value {
    client
        .post(
            &format!("/vms/{vm}/run"),
            json!({"command": command, "timeout": 3600}),
        )
        .await
}

async fn bench_reads(client: &Client, iters: usize) -> Vec<String> {
    client.post("/vms", json!({"name": "bench-read"})).await;
    let out = run(
        client,
        "bench-read",
        "head -c 1048576 /dev/urandom > one.bin",
    )
    .await;
    let snap = out["snapshot"].as_str().unwrap().to_owned();
    let (mut from_snap, mut live) = (vec![], vec![]);
    for _ in 0..iters {
        let path = format!("/vms/bench-read/snapshots/{snap}/files?path=one.bin");
        let a = timed(&mut from_snap, client.get_bytes(&path)).await;
        let b = timed(
            &mut live,
            client.get_bytes("/vms/bench-read/files?path=one.bin"),
        )
        .await;
        assert_eq!((a.len(), b.len()), (1 << 20, 1 << 20));
    }
    vec![
        row("GET 1 MiB file from a snapshot (host, openat2)", from_snap),
        row("GET 1 MiB file from the live workspace (agent)", live),
    ]
}

async fn bench_diff(client: &Client, files: usize, iters: usize) -> Vec<String> {
    let vm = format!("bench-diff-{files}");
    client.post("/vms", json!({"name": vm})).await;
    let dirs = files / 1000;
    let make = format!(
        "for i in $(seq 1 {dirs}); do mkdir d$i && (cd d$i && seq 1 1000 | sed 's/^/f/' | xargs touch); done"
    );
    let made = Instant::now();
    let mut prev = run(client, &vm, &make).await["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    eprintln!("{files} files made in {:?}", made.elapsed());
    let (mut ours, mut theirs) = (vec![], vec![]);
    for i in 0..iters {
        let out = run(client, &vm, &format!("echo {i} >> d1/f1")).await;
        let next = out["snapshot"].as_str().unwrap().to_owned();
        let path = format!("/vms/{vm}/snapshots/{next}/diff?from={prev}");
        let diff = timed(&mut ours, client.get(&path)).await;
        assert_eq!(diff["modified"], 1, "{diff}");
        if i < 3 {
            let (a, b) = (snapshot_dir(&vm, &prev), snapshot_dir(&vm, &next));
            let t = Instant::now();
            let status = std::process::Command::new("diff")
                .arg("-rq")
                .args([&a, &b])
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            theirs.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status.code(), Some(1));
        }
        prev = next;
    }
    vec![
        row(
            &format!("diff of a 1-file change, {files} files (btrfs send, HTTP)"),
            ours,
        ),
        row(
            &format!("`diff -rq` of the same two snapshots, {files} files"),
            theirs,
        ),
    ]
}

fn main() {
    let iters = common::iters(50);
    let sizes: Vec<usize> = std::env::var("REWIND_BENCH_DIFF_SIZES")
        .unwrap_or_else(|_| "20000,200000".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let rt = common::runtime();
    rt.block_on(async {
        let (client, server) = common::start(common::config("files", base_image())).await;
        common::delete_all_vms(&client).await;
        let mut lines = common::header();
        lines.extend(bench_reads(&client, iters).await);
        for files in sizes {
            lines.extend(bench_diff(&client, files, (iters / 5).max(5)).await);
        }
        common::delete_all_vms(&client).await;
        println!("\nrewind files benchmark\n\n{}", lines.join("\n"));
        server.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
}

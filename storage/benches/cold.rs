//! Cold history: restore latency of cold snapshots against hot ones (1k and
//! 20k-file workspaces), and the disk use of 1000 commands of history on a
//! 1 GiB workspace with one-line changes, with and without the cold tier.
//!
//! Reproduce (root; btrfs-progs on PATH):
//!
//! ```text
//! cargo bench -p rewind-storage --bench cold
//! REWIND_BENCH_COLD_RUNS=200 REWIND_BENCH_COLD_GIB=1 cargo bench -p rewind-storage --bench cold
//! ```
//!
//! Environment: `REWIND_BENCH_COLD_REPEAT` (restores per case, default 15),
//! `REWIND_BENCH_COLD_RUNS` (commands of history, default 1000),
//! `REWIND_BENCH_COLD_GIB` (workspace size, default 1), `REWIND_BENCH_DIR`
//! (default /var/tmp/rewind-bench-cold).
//!
//! Disk use is measured after every deletion has been cleaned
//! (`btrfs subvolume sync`): file data with `btrfs filesystem du -s --raw`
//! over the sandbox dir (exclusive + set-shared = each extent once, cold
//! archives included), metadata as the growth of `Metadata used` in
//! `btrfs filesystem df --raw` since before the workspace was written.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use rewind_storage::{CreateOptions, PoolConfig, SandboxName, SnapshotKind, SnapshotName, Storage};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn snap(name: &str) -> SnapshotName {
    name.parse().unwrap()
}

fn open(dir: &str, cold: bool) -> Storage {
    Storage::open(PoolConfig {
        quotas: false,
        cold_history: cold,
        ..PoolConfig::new(dir)
    })
    .unwrap()
}

fn append(path: &Path, line: &str) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "{line}").unwrap();
}

fn p50(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

fn timed(repeat: usize, mut f: impl FnMut()) -> f64 {
    p50((0..repeat)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect())
}

/// Hot, cold (chain of one incremental link) and cold (full stream)
/// restore p50 in ms for a workspace of `files` small files.
fn restore_case(s: &Storage, files: usize, repeat: usize) -> (f64, f64, f64) {
    let (sb, full): (SandboxName, SandboxName) = (
        format!("cold-r{files}").parse().unwrap(),
        format!("cold-f{files}").parse().unwrap(),
    );
    for sb in [&sb, &full] {
        let _ = s.delete_sandbox(sb);
        s.flush_background();
        let live = s.create_workspace(sb, &CreateOptions::default()).unwrap();
        for i in 0..files {
            let dir = live.join(format!("d{}", i % 20));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(format!("f{i}")), format!("file {i}\n")).unwrap();
        }
        for n in 1..=3 {
            append(&live.join("d0/f0"), &format!("command {n}"));
            s.snapshot(sb, &snap(&format!("a{n}")), SnapshotKind::Auto)
                .unwrap();
        }
    }
    s.archive_snapshot(&sb, &snap("a2")).unwrap();
    s.archive_snapshot(&full, &snap("a1")).unwrap();
    s.sync().unwrap();
    let hot = timed(repeat, || s.restore(&sb, &snap("a1")).unwrap());
    let cold = timed(repeat, || s.restore(&sb, &snap("a2")).unwrap());
    let cold_full = timed(repeat.min(5), || s.restore(&full, &snap("a1")).unwrap());
    for sb in [&sb, &full] {
        s.delete_sandbox(sb).unwrap();
    }
    s.flush_background();
    (hot, cold, cold_full)
}

fn btrfs(args: &[&str]) -> String {
    let out = Command::new("btrfs").args(args).output().unwrap();
    assert!(out.status.success(), "btrfs {args:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// `Metadata ... used=<n>` of `btrfs filesystem df --raw`.
fn metadata_used(pool: &Path) -> u64 {
    let df = btrfs(&["filesystem", "df", "--raw", pool.to_str().unwrap()]);
    df.lines()
        .filter(|l| l.starts_with("Metadata"))
        .filter_map(|l| l.split("used=").nth(1))
        .map(|v| v.trim().parse::<u64>().unwrap())
        .sum()
}

/// Exclusive + set-shared data bytes under `dir`.
fn data_used(dir: &Path) -> u64 {
    let du = btrfs(&["filesystem", "du", "-s", "--raw", dir.to_str().unwrap()]);
    let fields: Vec<u64> = du
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .take(3)
        .map(|v| v.parse().unwrap())
        .collect();
    fields[1] + fields[2]
}

/// What one history run measured.
struct Disk {
    data: u64,
    meta: u64,
    hot: usize,
    cold: usize,
    /// p50 and p99 of the per-command snapshot call (ms): it waits while
    /// the background worker thins (deletes or archives) under the lock.
    snapshot_ms: (f64, f64),
}

/// Disk use and snapshot latency of `runs` one-line commands on a `gib`
/// GiB workspace.
fn disk_case(dir: &str, cold: bool, runs: usize, gib: usize) -> Disk {
    let s = open(dir, cold);
    let sb: SandboxName = "cold-disk".parse().unwrap();
    let _ = s.delete_sandbox(&sb);
    s.flush_background();
    btrfs(&["subvolume", "sync", s.pool_path().to_str().unwrap()]);
    s.sync().unwrap();
    let meta_before = metadata_used(s.pool_path());
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    // The pool neither compresses nor dedupes: equal blocks cost the same.
    let mut data = vec![0x5au8; 4 << 20];
    for i in 0..gib * 256 {
        data[..8].copy_from_slice(&(i as u64).to_le_bytes());
        fs::write(live.join(format!("blob{i}")), &data).unwrap();
        fs::write(live.join(format!("notes{i}.txt")), "notes\n").unwrap();
    }
    s.snapshot(&sb, &snap("initial"), SnapshotKind::Kept)
        .unwrap();
    let mut ms = Vec::with_capacity(runs);
    for n in 0..runs {
        let file = live.join(format!("notes{}.txt", n % (gib * 256)));
        append(&file, &format!("line {n}"));
        let t = Instant::now();
        s.snapshot(&sb, &snap(&format!("cmd_{n:05}")), SnapshotKind::Auto)
            .unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let snapshot_ms = (ms[ms.len() / 2], ms[ms.len() * 99 / 100]);
    s.flush_background();
    btrfs(&["subvolume", "sync", s.pool_path().to_str().unwrap()]);
    s.sync().unwrap();
    let data = data_used(&s.pool_path().join("sandboxes").join(sb.as_ref()));
    let meta = metadata_used(s.pool_path()).saturating_sub(meta_before);
    let listed = s.list_snapshots(&sb).unwrap();
    let hot = listed
        .iter()
        .filter(|i| i.tier == rewind_storage::Tier::Hot && i.kind == SnapshotKind::Auto)
        .count();
    let cold_count = listed.len() - hot - 1;
    s.delete_sandbox(&sb).unwrap();
    s.flush_background();
    Disk {
        data,
        meta,
        hot,
        cold: cold_count,
        snapshot_ms,
    }
}

fn main() {
    let repeat = env_usize("REWIND_BENCH_COLD_REPEAT", 15);
    let runs = env_usize("REWIND_BENCH_COLD_RUNS", 1000);
    let gib = env_usize("REWIND_BENCH_COLD_GIB", 1);
    let dir = std::env::var("REWIND_BENCH_DIR").unwrap_or("/var/tmp/rewind-bench-cold".into());
    let s = open(&format!("{dir}/restore"), true);
    println!("\n| restore p50, ms | hot | cold (1 incremental link) | cold (full stream) |");
    println!("|---|---|---|---|");
    for files in [1000, 20_000] {
        let (hot, cold, full) = restore_case(&s, files, repeat);
        println!("| {files} files | {hot:.1} | {cold:.1} | {full:.1} |");
    }
    drop(s);
    let size = (gib as u64) << 30;
    println!("\n{runs} one-line commands on a {gib} GiB workspace (ratio = (data + metadata growth) / workspace)\n");
    println!(
        "| cold_history | data MiB | metadata growth MiB | ratio | auto snapshots hot / cold | snapshot p50 / p99 ms |"
    );
    println!("|---|---|---|---|---|---|");
    for cold in [false, true] {
        let d = disk_case(&format!("{dir}/disk-{cold}"), cold, runs, gib);
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "| {cold} | {:.1} | {:.1} | {:.3} | {} / {} | {:.1} / {:.1} |",
            mib(d.data),
            mib(d.meta),
            (d.data + d.meta) as f64 / size as f64,
            d.hot,
            d.cold,
            d.snapshot_ms.0,
            d.snapshot_ms.1
        );
    }
}

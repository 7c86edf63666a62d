//! Snapshot and restore latency vs. copying the workspace, on a real
//! loop-mounted Btrfs pool. Prints a markdown table.
//!
//! Run: `cargo bench -p rewind-storage --bench snapshot_restore`
//! (pool in `$REWIND_BENCH_DIR`, default `/var/tmp/rewind-bench-storage`).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rewind_storage::{CreateOptions, PoolConfig, SandboxName, SnapshotKind, SnapshotName, Storage};

struct Workload {
    label: &'static str,
    files: usize,
    big_file_bytes: usize,
    /// Snapshot and restore iterations.
    iterations: usize,
    /// Copy-baseline iterations (each copies the whole workspace).
    copy_iterations: usize,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        label: "1k files",
        files: 1_000,
        big_file_bytes: 0,
        iterations: 100,
        copy_iterations: 5,
    },
    Workload {
        label: "20k files",
        files: 20_000,
        big_file_bytes: 0,
        iterations: 100,
        copy_iterations: 3,
    },
    Workload {
        label: "200k files",
        files: 200_000,
        big_file_bytes: 0,
        iterations: 50,
        copy_iterations: 1,
    },
    Workload {
        label: "1 GiB file",
        files: 0,
        big_file_bytes: 1 << 30,
        iterations: 100,
        copy_iterations: 2,
    },
];

fn name<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("valid name")
}

/// Small files (100..4100 bytes) in directories of 1000.
fn populate(root: &Path, w: &Workload) {
    let mut buf = vec![0u8; 4200];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    for i in 0..w.files {
        let dir = root.join(format!("d{:04}", i / 1000));
        if i % 1000 == 0 {
            fs::create_dir(&dir).unwrap();
        }
        let len = 100 + (i * 7919) % 4000;
        buf[0..8].copy_from_slice(&(i as u64).to_le_bytes());
        fs::write(dir.join(format!("f{i}")), &buf[..len]).unwrap();
    }
    if w.big_file_bytes > 0 {
        let mut f = fs::File::create(root.join("big.bin")).unwrap();
        let chunk: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for i in 0..w.big_file_bytes / chunk.len() {
            f.write_all(&[i as u8]).unwrap();
            f.write_all(&chunk[1..]).unwrap();
        }
    }
}

/// Commits and waits until the kernel has finished cleaning up deleted
/// subvolumes from earlier setup, so one workload's setup does not bleed
/// into the next one's numbers (untimed; the bench may use the CLI).
fn settle(s: &Storage) {
    s.flush_background();
    s.sync().unwrap();
    let status = Command::new("btrfs")
        .args(["subvolume", "sync"])
        .arg(s.pool_path())
        .output()
        .unwrap();
    assert!(status.status.success(), "btrfs subvolume sync failed");
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 100.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Times `cmd` copying `src` into the workspace of a scratch sandbox.
fn time_copy(s: &Storage, src: &Path, tag: &str, w: &Workload, cmd: &[&str]) -> Duration {
    let mut samples = Vec::new();
    for i in 0..w.copy_iterations {
        let sb: SandboxName = name(&format!("bench-copy-{tag}-{i}-{}", std::process::id()));
        let dst = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
        s.sync().unwrap();
        let started = Instant::now();
        let status = Command::new(cmd[0])
            .args(&cmd[1..])
            .arg(format!("{}/", src.display()))
            .arg(&dst)
            .status()
            .unwrap();
        s.sync().unwrap();
        samples.push(started.elapsed());
        assert!(status.success(), "{cmd:?} failed");
        s.delete_sandbox(&sb).unwrap();
        settle(s);
    }
    percentile(&mut samples, 0.5)
}

fn run(s: &Storage, w: &Workload) -> String {
    let sb: SandboxName = name(&format!(
        "bench-{}-{}",
        w.files + w.big_file_bytes,
        std::process::id()
    ));
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    populate(&live, w);
    settle(s);
    let spread = std::env::var("REWIND_BENCH_WRITE").as_deref() == Ok("spread") && w.files > 0;
    let mut snaps = Vec::new();
    let mut unchanged = Vec::new();
    for i in 0..w.iterations {
        if spread {
            let k = (i * 7919 + 4567) % w.files;
            let path = live.join(format!("d{:04}/f{k}", k / 1000));
            let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
            f.write_all(i.to_string().as_bytes()).unwrap();
        } else {
            fs::write(live.join("iteration"), i.to_string()).unwrap();
        }
        let snap: SnapshotName = name(&format!("s{i}"));
        let started = Instant::now();
        s.snapshot(&sb, &snap, SnapshotKind::Auto).unwrap();
        snaps.push(started.elapsed());
        // Again with nothing written since: the snapshot's own cost, without
        // committing the copy-on-write of a change. It adds no per-child
        // back references, so it does not slow the next iteration down.
        let again: SnapshotName = name(&format!("u{i}"));
        let started = Instant::now();
        s.snapshot(&sb, &again, SnapshotKind::Auto).unwrap();
        unchanged.push(started.elapsed());
    }
    let mut restores = Vec::new();
    for i in 0..w.iterations {
        let snap: SnapshotName = name(&format!("s{}", (i * 37) % w.iterations));
        let started = Instant::now();
        s.restore(&sb, &snap).unwrap();
        restores.push(started.elapsed());
        // The replaced workspace is deleted in the background and dropped
        // by the kernel's cleaner; wait for both (untimed) so each restore
        // is measured on its own (docs/benchmarks.md has what overlapping
        // costs).
        settle(s);
    }
    let tag = w.label.replace(' ', "");
    let cp = time_copy(
        s,
        &live,
        &format!("cp{tag}"),
        w,
        &["cp", "-a", "--reflink=auto", "-T"],
    );
    let rsync = time_copy(s, &live, &format!("rs{tag}"), w, &["rsync", "-a"]);
    s.delete_sandbox(&sb).unwrap();
    s.flush_background();
    let (sp50, sp99) = (percentile(&mut snaps, 0.5), percentile(&mut snaps, 0.99));
    let up50 = percentile(&mut unchanged, 0.5);
    let (rp50, rp99) = (
        percentile(&mut restores, 0.5),
        percentile(&mut restores, 0.99),
    );
    let ratio = |a: Duration, b: Duration| format!("{:.0}×", a.as_secs_f64() / b.as_secs_f64());
    format!(
        "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        w.label,
        w.iterations,
        w.copy_iterations,
        ms(sp50),
        ms(sp99),
        ms(up50),
        ms(rp50),
        ms(rp99),
        ms(cp),
        ms(rsync),
        ratio(cp, sp50),
        ratio(rsync, sp50),
        ratio(cp, rp50),
        ratio(rsync, rp50),
    )
}

fn main() {
    let dir = std::env::var("REWIND_BENCH_DIR")
        .unwrap_or_else(|_| "/var/tmp/rewind-bench-storage".into());
    let mut cfg = PoolConfig::new(&dir);
    cfg.image_size_bytes = 40 << 30;
    cfg.quotas = std::env::var("REWIND_BENCH_QUOTAS").map_or(true, |v| v != "0");
    // Every snapshot stays restorable: thinning (the default) would delete
    // older `s<i>` before the restores pick them.
    cfg.keep_recent = 10_000;
    let s = Storage::open(cfg).expect("open bench pool");
    println!(
        "pool {} (quotas {})\n",
        s.pool_path().display(),
        if s.quotas_enabled() { "on" } else { "off" }
    );
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    println!("| workspace | iterations (ops / copies) | snapshot p50 | snapshot p99 | snapshot p50, unchanged | restore p50 | restore p99 | cp -a --reflink=auto | rsync -a | cp ÷ snapshot | rsync ÷ snapshot | cp ÷ restore | rsync ÷ restore |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for w in WORKLOADS.iter().filter(|w| {
        only.as_deref()
            .is_none_or(|o| w.label.replace(' ', "") == o)
    }) {
        println!("{}", run(&s, w));
    }
}

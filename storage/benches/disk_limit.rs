//! What disk limits cost per command: snapshot after a one-file write, and
//! restore, on a pool without quotas vs a pool with Btrfs simple quotas and
//! a sandbox in a limited parent qgroup. The two pools are measured
//! interleaved (off, on, off, on, …) so load from other processes hits both
//! alike. Prints a markdown table.
//!
//! Run: `cargo bench -p rewind-storage --bench disk_limit`
//! (pools in `$REWIND_BENCH_DIR/{off,on}`, default
//! `/var/tmp/rewind-bench-disk-limit`; `REWIND_BENCH_ITERS`, default 60).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rewind_storage::{
    CreateOptions, PoolConfig, QuotaMode, SandboxName, SnapshotKind, SnapshotName, Storage,
};

const LIMIT_BYTES: u64 = 10 << 30;

fn name<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("valid name")
}

fn open(dir: &str, limits: bool) -> Storage {
    let mut cfg = PoolConfig::new(dir);
    cfg.image_size_bytes = 16 << 30;
    cfg.quotas = false;
    cfg.disk_limits = limits;
    let s = Storage::open(cfg).expect("open bench pool");
    let want = if limits {
        QuotaMode::Simple
    } else {
        QuotaMode::Off
    };
    assert_eq!(s.quota_mode(), want, "pool {dir}: remove it to re-create");
    s
}

/// `files` small files (100..4100 bytes) in directories of 1000.
fn populate(root: &Path, files: usize) {
    let buf: Vec<u8> = (0..4200).map(|i| (i * 31 % 251) as u8).collect();
    for i in 0..files {
        let dir = root.join(format!("d{:04}", i / 1000));
        if i % 1000 == 0 {
            fs::create_dir(&dir).unwrap();
        }
        fs::write(dir.join(format!("f{i}")), &buf[..100 + (i * 7919) % 4000]).unwrap();
    }
}

/// Untimed: background deletions done, cleaner finished, committed.
fn settle(s: &Storage) {
    s.flush_background();
    s.sync().unwrap();
    let out = Command::new("btrfs")
        .args(["subvolume", "sync"])
        .arg(s.pool_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "btrfs subvolume sync failed");
}

struct Side {
    s: Storage,
    sb: SandboxName,
    snaps: Vec<Duration>,
    restores: Vec<Duration>,
}

impl Side {
    fn new(s: Storage, files: usize, limit: Option<u64>) -> Side {
        let sb: SandboxName = name(&format!("bench-{files}-{}", std::process::id()));
        let opts = CreateOptions {
            disk_limit_bytes: limit,
            ..CreateOptions::default()
        };
        populate(&s.create_workspace(&sb, &opts).unwrap(), files);
        settle(&s);
        Side {
            s,
            sb,
            snaps: Vec::new(),
            restores: Vec::new(),
        }
    }

    fn snapshot(&mut self, i: usize) {
        fs::write(
            self.s.workspace_path(&self.sb).join("iteration"),
            i.to_string(),
        )
        .unwrap();
        let started = Instant::now();
        let snap = name(&format!("s{i}"));
        self.s
            .snapshot(&self.sb, &snap, SnapshotKind::Auto)
            .unwrap();
        self.snaps.push(started.elapsed());
    }

    fn restore(&mut self, i: usize, iters: usize) {
        let snap: SnapshotName = name(&format!("s{}", (i * 37) % iters));
        let started = Instant::now();
        self.s.restore(&self.sb, &snap).unwrap();
        self.restores.push(started.elapsed());
        settle(&self.s);
    }

    fn done(self) -> (Duration, Duration) {
        self.s.delete_sandbox(&self.sb).unwrap();
        settle(&self.s);
        let (mut snaps, mut restores) = (self.snaps, self.restores);
        (p50(&mut snaps), p50(&mut restores))
    }
}

fn p50(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn ratio(on: Duration, off: Duration) -> String {
    format!("{:.2}×", on.as_secs_f64() / off.as_secs_f64())
}

fn main() {
    let dir = std::env::var("REWIND_BENCH_DIR")
        .unwrap_or_else(|_| "/var/tmp/rewind-bench-disk-limit".into());
    let iters: usize = std::env::var("REWIND_BENCH_ITERS").map_or(60, |v| v.parse().unwrap());
    let (off, on) = (
        open(&format!("{dir}/off"), false),
        open(&format!("{dir}/on"), true),
    );
    println!("| workspace | iterations | snapshot p50 off | on | on ÷ off | restore p50 off | on | on ÷ off |");
    println!("|---|---|---|---|---|---|---|---|");
    for files in [1_000, 20_000] {
        let mut a = Side::new(off.clone(), files, None);
        let mut b = Side::new(on.clone(), files, Some(LIMIT_BYTES));
        for i in 0..iters {
            a.snapshot(i);
            b.snapshot(i);
        }
        for i in 0..iters {
            a.restore(i, iters);
            b.restore(i, iters);
        }
        let ((s_off, r_off), (s_on, r_on)) = (a.done(), b.done());
        println!(
            "| {files} files | {iters} | {} | {} | {} | {} | {} | {} |",
            ms(s_off),
            ms(s_on),
            ratio(s_on, s_off),
            ms(r_off),
            ms(r_on),
            ratio(r_on, r_off),
        );
    }
}

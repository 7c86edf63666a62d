//! Export + import throughput of a snapshot archive against `tar c | zstd`
//! (levels 1 and 3; the archive uses zstd level 1) and `zstd -d | tar x`
//! of the same tree, in the same run.
//!
//! Reproduce (root; zstd and tar on PATH):
//!
//! ```text
//! cargo bench -p rewind-storage --bench archive
//! REWIND_BENCH_ARCHIVE_FILES=2000 REWIND_BENCH_ARCHIVE_MB=20 cargo bench -p rewind-storage --bench archive
//! ```
//!
//! Every row starts with the tree's page cache dropped (`evict`): a fresh
//! snapshot's files are cold (its inodes are not the workspace's), and so
//! are those of the private clone an export walks.
//!
//! Environment: `REWIND_BENCH_ARCHIVE_FILES` (default 20000),
//! `REWIND_BENCH_ARCHIVE_ROUNDS` (default 5),
//! `REWIND_BENCH_ARCHIVE_MB` (default 200, spread evenly over the files;
//! half of each file pseudo-random, half text), `REWIND_BENCH_DIR` (default
//! /var/tmp/rewind-bench-archive).

use std::fs::{self, File};
use std::os::fd::AsRawFd;
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

/// `files` files in 100-file directories, `bytes` in all.
fn fill(root: &Path, files: usize, bytes: usize) {
    let per_file = bytes / files.max(1);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..files {
        let dir = root.join(format!("d{}", i / 100));
        fs::create_dir_all(&dir).unwrap();
        let mut data = Vec::with_capacity(per_file);
        while data.len() < per_file / 2 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            data.extend_from_slice(&seed.to_le_bytes());
        }
        while data.len() < per_file {
            data.extend_from_slice(format!("line {i} of some text\n").as_bytes());
        }
        data.truncate(per_file);
        fs::write(dir.join(format!("f{i}")), data).unwrap();
    }
}

/// Drops the page cache of every file under `root` (clean pages only, so
/// after a sync: all), as a fresh snapshot starts: a snapshot's inodes are
/// not the workspace's, and neither are an export's clone's. Every row
/// starts from it, so no row reads the tree warmer than another.
fn evict(root: &Path) {
    for entry in fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            evict(&entry.path());
        } else if ft.is_file() {
            let file = File::open(entry.path()).unwrap();
            // SAFETY: fadvise on an fd we hold open; no memory is passed.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
}

fn sh(script: &str) {
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(status.success(), "{script}");
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn secs(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn main() {
    let files = env_usize("REWIND_BENCH_ARCHIVE_FILES", 20_000);
    // Rounds of every measurement, interleaved; the tables show medians.
    let rounds = env_usize("REWIND_BENCH_ARCHIVE_ROUNDS", 5);
    let mb = env_usize("REWIND_BENCH_ARCHIVE_MB", 200);
    let dir = std::env::var("REWIND_BENCH_DIR").unwrap_or("/var/tmp/rewind-bench-archive".into());
    let s = Storage::open(PoolConfig {
        quotas: false,
        ..PoolConfig::new(&dir)
    })
    .unwrap();
    let (src, copy): (SandboxName, SandboxName) =
        ("arch-src".parse().unwrap(), "arch-copy".parse().unwrap());
    let snap: SnapshotName = "s".parse().unwrap();
    for sb in [&src, &copy] {
        let _ = s.delete_sandbox(sb);
    }
    s.flush_background();
    s.create_workspace(&src, &CreateOptions::default()).unwrap();
    fill(&s.workspace_path(&src), files, mb << 20);
    s.snapshot(&src, &snap, SnapshotKind::Kept).unwrap();
    s.sync().unwrap();
    let archive = Path::new(&dir).join("bench.rewind");
    let tarball = Path::new(&dir).join("bench.tar.zst");
    let untar = s.pool_path().join("bench-untar");
    let _ = fs::remove_dir_all(&untar);

    let snap_path = s.snapshot_path(&src, &snap);
    let send_cmd = format!("btrfs send -q {} > /dev/null", snap_path.display());
    let tar_c = |level: u32| {
        evict(&snap_path);
        secs(|| {
            sh(&format!(
                "tar -C {} -cf - . | zstd -{level} -q -f -o {} && sync -f {}",
                snap_path.display(),
                tarball.display(),
                tarball.display()
            ))
        })
    };
    let mut rows: [Vec<f64>; 6] = Default::default();
    for _ in 0..rounds {
        evict(&snap_path);
        rows[0].push(secs(|| {
            let mut out = File::create(&archive).unwrap();
            s.export_snapshot(&src, &snap, &mut out).unwrap();
            out.sync_all().unwrap();
        }));
        evict(&snap_path);
        rows[2].push(secs(|| sh(&send_cmd)));
        rows[3].push(tar_c(1));
        rows[4].push(tar_c(3));
        rows[1].push(secs(|| {
            let received = s
                .receive_archive(&mut File::open(&archive).unwrap())
                .unwrap();
            let opts = CreateOptions {
                import: Some(received.clone()),
                ..Default::default()
            };
            s.create_workspace(&copy, &opts).unwrap();
            s.discard_received(received).unwrap();
            s.sync().unwrap();
        }));
        rows[5].push(secs(|| {
            sh(&format!(
                "mkdir {u} && zstd -dc {t} | tar -C {u} -xf - && sync -f {u}",
                u = untar.display(),
                t = tarball.display()
            ))
        }));
        s.delete_sandbox(&copy).unwrap();
        fs::remove_dir_all(&untar).unwrap();
        s.flush_background();
    }
    let [export, import, send_only, tar_c1, tar_c3, tar_x] = rows.map(median);
    let size = |p: &Path| fs::metadata(p).unwrap().len() as f64 / (1 << 20) as f64;
    let rate = |t: f64| mb as f64 / t;
    println!("\n{files} files, {mb} MiB of file data, median of {rounds} interleaved rounds, every row from a cold page cache\n");
    println!("| | seconds | MiB/s (file data) | output MiB |");
    println!("|---|---|---|---|");
    println!(
        "| export (userspace send stream + zstd + sha256) | {export:.2} | {:.0} | {:.1} |",
        rate(export),
        size(&archive)
    );
    println!(
        "| import (receive while hashing + create) | {import:.2} | {:.0} | |",
        rate(import)
    );
    println!(
        "| `btrfs send > /dev/null` (the kernel's send alone) | {send_only:.2} | {:.0} | |",
        rate(send_only)
    );
    println!(
        "| `tar c \\| zstd -1` | {tar_c1:.2} | {:.0} | |",
        rate(tar_c1)
    );
    println!(
        "| `tar c \\| zstd -3` | {tar_c3:.2} | {:.0} | {:.1} |",
        rate(tar_c3),
        size(&tarball)
    );
    println!(
        "| `zstd -d \\| tar x` | {tar_x:.2} | {:.0} | |",
        rate(tar_x)
    );
    s.delete_sandbox(&src).unwrap();
    let _ = fs::remove_file(&archive);
    let _ = fs::remove_file(&tarball);
    s.flush_background();
}

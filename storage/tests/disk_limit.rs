//! Disk limits (Btrfs simple quotas, one parent qgroup per sandbox) on a
//! real loop-mounted pool made without full quota groups
//! (`$REWIND_TEST_ROOT/disk-limit`).

mod common;

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{sandbox, snap, test_dir};
use rewind_storage::{CreateOptions, QuotaMode, SandboxName, SnapshotKind, Storage};

const MIB: u64 = 1 << 20;

fn storage() -> &'static Storage {
    static S: OnceLock<Storage> = OnceLock::new();
    S.get_or_init(|| {
        let mut cfg = common::config(&test_dir("disk-limit"));
        cfg.image_size_bytes = 2 << 30;
        cfg.quotas = false;
        Storage::open(cfg).expect("open test pool")
    })
}

/// Writes up to `mib` MiB of non-zero bytes to `path`; returns the MiB
/// written and the error that stopped it, if any.
fn write_mib(path: &Path, mib: u64) -> (u64, Option<io::Error>) {
    let mut f = match File::create(path) {
        Ok(f) => f,
        Err(e) => return (0, Some(e)),
    };
    let chunk = vec![0x5au8; MIB as usize];
    for i in 0..mib {
        if let Err(e) = f.write_all(&chunk) {
            return (i, Some(e));
        }
    }
    match f.sync_all() {
        Ok(()) => (mib, None),
        Err(e) => (mib, Some(e)),
    }
}

fn limited(s: &Storage, prefix: &str, mib: u64) -> SandboxName {
    let sb = sandbox(prefix);
    let opts = CreateOptions {
        disk_limit_bytes: Some(mib * MIB),
        ..CreateOptions::default()
    };
    s.create_workspace(&sb, &opts).unwrap();
    sb
}

/// Commits until the sandbox's usage drops below `bytes` (the kernel's
/// cleaner frees a deleted snapshot's extents in the background).
fn wait_used_below(s: &Storage, sb: &SandboxName, bytes: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        s.flush_background();
        s.sync().unwrap();
        let used = s.disk_usage(sb).unwrap().expect("limited").used_bytes;
        if used < bytes || Instant::now() > deadline {
            return used;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn disk_limit_stops_writes_counts_snapshots_and_frees_on_delete() {
    let s = storage();
    assert_eq!(
        s.quota_mode(),
        QuotaMode::Simple,
        "kernel without simple quotas?"
    );
    let sb = limited(s, "limited", 64);
    s.snapshot(&sb, &snap("initial"), SnapshotKind::Kept)
        .unwrap();
    let live = s.workspace_path(&sb);

    let (written, err) = write_mib(&live.join("big"), 128);

    assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::EDQUOT));
    assert!((56..=64).contains(&written), "stopped after {written} MiB");
    s.snapshot(&sb, &snap("full"), SnapshotKind::Kept).unwrap();
    s.sync().unwrap();
    let usage = s.disk_usage(&sb).unwrap().expect("limited");
    assert_eq!(usage.limit_bytes, 64 * MIB);
    assert!(usage.used_bytes >= 56 * MIB, "{usage:?}");

    // A restore does not reset the account: the snapshot still holds the data.
    s.restore(&sb, &snap("initial")).unwrap();
    let (_, err) = write_mib(&s.workspace_path(&sb).join("again"), 32);
    assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::EDQUOT));
    let _ = std::fs::remove_file(s.workspace_path(&sb).join("again"));

    // Deleting the snapshot that holds the data frees it.
    s.delete_snapshot(&sb, &snap("full")).unwrap();
    let used = wait_used_below(s, &sb, 8 * MIB);
    assert!(used < 8 * MIB, "still {used} bytes used");
    assert_eq!(
        write_mib(&s.workspace_path(&sb).join("after"), 32)
            .1
            .map(|e| e.to_string()),
        None
    );
    s.delete_sandbox(&sb).unwrap();
}

#[test]
fn disk_limit_counts_the_state_dir_and_spares_other_sandboxes() {
    let s = storage();
    let a = limited(s, "state-a", 32);
    let b = limited(s, "state-b", 32);

    let (_, err) = write_mib(&s.state_dir(&a).join("upper-file"), 64);
    let (written_b, err_b) = write_mib(&s.workspace_path(&b).join("file"), 16);

    assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::EDQUOT));
    assert_eq!((written_b, err_b.map(|e| e.to_string())), (16, None));
    s.delete_sandbox(&a).unwrap();
    s.delete_sandbox(&b).unwrap();
}

#[test]
fn no_limit_without_disk_limit_bytes() {
    let s = storage();
    let sb = sandbox("unlimited");
    s.create_workspace(&sb, &CreateOptions::default()).unwrap();

    assert_eq!(s.disk_usage(&sb).unwrap(), None);
    s.delete_sandbox(&sb).unwrap();
}

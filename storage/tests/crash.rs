//! Crash injection: a child process (this test binary, re-run on the
//! ignored `crash_child` entry) performs one operation and aborts at a
//! named failpoint; the parent then reopens the pool (running recovery) and
//! checks the sandbox is exactly the old or the new state, with no
//! temporaries left. Uses its own pool, and one test at a time, because
//! recovery is pool-wide.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use nix::mount::MsFlags;

use common::{
    assert_no_trash_or_hidden, config, manifest, mutate, populate, sandbox, snap, test_dir,
    Manifest,
};
use rewind_storage::failpoint::FAILPOINTS;
use rewind_storage::{CreateOptions, Retention, SandboxName, SnapshotKind, Storage};

static SERIAL: Mutex<()> = Mutex::new(());

fn data_dir() -> String {
    test_dir("storage-crash")
}

fn open() -> Storage {
    let s = Storage::open(config(&data_dir())).expect("open crash pool");
    s.flush_background();
    s
}

fn crash_in_child(op: &str, sb: &SandboxName, failpoint: &str) {
    common::crash_in_child("crash_child", op, sb, failpoint);
}

#[test]
#[ignore = "helper: run as a child process by the crash tests, not a test itself"]
fn crash_child() {
    let s = Storage::open(config(&data_dir())).unwrap();
    let sb: SandboxName = std::env::var("REWIND_CRASH_SANDBOX")
        .unwrap()
        .parse()
        .unwrap();
    match std::env::var("REWIND_CRASH_OP").unwrap().as_str() {
        "create" => drop(s.create_workspace(&sb, &CreateOptions::default()).unwrap()),
        "restore" => s.restore(&sb, &snap("old")).unwrap(),
        "restore_plain" => s.restore(&sb, &snap("plain")).unwrap(),
        "wipe" => s.wipe(&sb).unwrap(),
        "delete" => s.delete_sandbox(&sb).unwrap(),
        "snapshot" => drop(
            s.snapshot_with_state(&sb, &snap("new"), SnapshotKind::Kept)
                .unwrap(),
        ),
        "delete_snapshot" => s.delete_snapshot(&sb, &snap("old")).unwrap(),
        "import" => {
            let archive = fs::read(import_archive_path()).unwrap();
            let received = s.receive_archive(&mut &archive[..]).unwrap();
            let opts = CreateOptions {
                import: Some(received.clone()),
                ..Default::default()
            };
            s.create_workspace(&sb, &opts).unwrap();
            s.discard_received(received).unwrap();
        }
        other => panic!("unknown op {other}"),
    }
    s.flush_background();
}

fn steps(op: &str) -> Vec<&'static str> {
    let prefix = format!("{op}:");
    FAILPOINTS
        .iter()
        .copied()
        .filter(|f| f.starts_with(&prefix))
        .collect()
}

/// Workspace and state-dir manifests together.
fn both(s: &Storage, sb: &SandboxName) -> (Manifest, Manifest) {
    (manifest(&s.workspace_path(sb)), manifest(&s.state_dir(sb)))
}

/// No temporaries anywhere: the sandbox dir holds only its fixed entries,
/// no half-created sandbox dirs, an empty trash.
fn assert_clean(s: &Storage, sb: &SandboxName) {
    assert_no_trash_or_hidden(s);
    let dir = s.pool_path().join("sandboxes").join(sb.as_ref());
    if dir.exists() {
        let entries: BTreeSet<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let expected: BTreeSet<String> = ["aux", "kept", "live", "snaps", "snapstate", "state"]
            .map(String::from)
            .into();
        assert_eq!(entries, expected);
        assert_parts_match_snapshots(&dir);
    }
}

/// Every snapstate/kept/aux entry belongs to an existing snapshot.
fn assert_parts_match_snapshots(dir: &Path) {
    let names = |sub: &str| -> BTreeSet<String> {
        fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let snaps = names("snaps");
    for part in ["snapstate", "kept", "aux"] {
        assert!(
            names(part).is_subset(&snaps),
            "orphaned {part}: {:?} vs {snaps:?}",
            names(part)
        );
    }
}

/// A sandbox with snapshot `old` (workspace + state), then both changed.
fn sandbox_with_history(s: &Storage, prefix: &str) -> SandboxName {
    let sb = sandbox(prefix);
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    populate(&live, 256 << 10);
    fs::write(s.state_dir(&sb).join("vm.img"), b"state-old").unwrap();
    s.snapshot_with_state(&sb, &snap("old"), SnapshotKind::Kept)
        .unwrap();
    s.snapshot_aux_dir(&sb, &snap("old")).unwrap();
    fs::write(live.join("plain-marker"), b"in plain only").unwrap();
    s.snapshot(&sb, &snap("plain"), SnapshotKind::Auto).unwrap();
    fs::remove_file(live.join("plain-marker")).unwrap();
    mutate(&live);
    fs::write(s.state_dir(&sb).join("vm.img"), b"state-current").unwrap();
    s.flush_background();
    sb
}

#[test]
fn restore_crash_at_every_step_leaves_old_or_new() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let commit = [
        "restore:after_intent",
        "restore:after_state_exchange",
        "restore:after_live_exchange",
        "restore:after_trash",
    ];
    for step in steps("restore") {
        let s = open();
        let sb = sandbox_with_history(&s, "crash-restore");
        let current = both(&s, &sb);
        let target = (manifest(&s.snapshot_path(&sb, &snap("old"))), {
            let st = s
                .pool_path()
                .join("sandboxes")
                .join(sb.as_ref())
                .join("snapstate/old");
            manifest(&st)
        });

        drop(s);
        crash_in_child("restore", &sb, step);
        let s = open();
        // After the trash step the child's own background thread may already
        // have emptied the trash before the abort: nothing left to recover.
        if step != "restore:after_trash" {
            assert!(
                !s.recovery_report().is_empty(),
                "{step}: recovery reported nothing"
            );
        }

        let got = both(&s, &sb);
        let expected = if commit.contains(&step) {
            &target
        } else {
            &current
        };
        assert!(
            got == current || got == target,
            "{step}: neither old nor new"
        );
        assert!(
            &got == expected,
            "{step}: expected the {} state",
            if commit.contains(&step) { "new" } else { "old" }
        );
        assert_clean(&s, &sb);
        s.restore(&sb, &snap("old")).unwrap();
        assert_eq!(both(&s, &sb), target, "{step}: restore after recovery");
        s.delete_sandbox(&sb).unwrap();
    }
}

#[test]
fn restore_without_state_crash_leaves_old_or_new() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    for (step, committed) in [
        ("restore:after_live_new", false),
        ("restore:after_live_exchange", true),
        ("restore:after_trash", true),
    ] {
        let s = open();
        let sb = sandbox_with_history(&s, "crash-plain");
        let current = both(&s, &sb);
        let target = (
            manifest(&s.snapshot_path(&sb, &snap("plain"))),
            current.1.clone(),
        );

        drop(s);
        crash_in_child("restore_plain", &sb, step);
        let s = open();

        let got = both(&s, &sb);
        assert!(
            got == current || got == target,
            "{step}: neither old nor new"
        );
        assert_eq!(got == target, committed, "{step}");
        assert_clean(&s, &sb);
        s.delete_sandbox(&sb).unwrap();
    }
}

#[test]
fn wipe_crash_at_every_step_leaves_old_or_new() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let commit = ["wipe:after_exchange", "wipe:after_trash"];
    for step in steps("wipe") {
        let s = open();
        let sb = sandbox_with_history(&s, "crash-wipe");
        let current = manifest(&s.workspace_path(&sb));

        drop(s);
        crash_in_child("wipe", &sb, step);
        let s = open();

        let got = manifest(&s.workspace_path(&sb));
        let wiped = got.len() == 1;
        assert!(
            got == current || wiped,
            "{step}: neither old nor new: {got:?}"
        );
        assert_eq!(wiped, commit.contains(&step), "{step}");
        assert_clean(&s, &sb);
        s.delete_sandbox(&sb).unwrap();
    }
}

#[test]
fn create_crash_at_every_step_leaves_nothing_or_sandbox() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    for step in steps("create") {
        drop(open());
        let sb = sandbox("crash-create");

        crash_in_child("create", &sb, step);
        let s = open();

        let committed = step == "create:after_rename";
        assert_eq!(s.sandbox_exists(&sb), committed, "{step}");
        assert_clean(&s, &sb);
        if committed {
            assert_eq!(
                manifest(&s.workspace_path(&sb)).len(),
                1,
                "{step}: workspace not empty"
            );
            s.delete_sandbox(&sb).unwrap();
        } else {
            s.create_workspace(&sb, &CreateOptions::default()).unwrap();
            s.delete_sandbox(&sb).unwrap();
        }
    }
}

/// Where the import crash test leaves the archive its children import.
fn import_archive_path() -> std::path::PathBuf {
    std::path::PathBuf::from(data_dir()).join("crash-import.archive")
}

#[test]
fn import_crash_at_every_step_leaves_nothing_or_the_sandbox() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = open();
    let src = sandbox("crash-import-src");
    s.create_workspace(&src, &CreateOptions::default()).unwrap();
    populate(&s.workspace_path(&src), 1 << 20);
    s.snapshot(&src, &snap("old"), SnapshotKind::Kept).unwrap();
    let source = manifest(&s.snapshot_path(&src, &snap("old")));
    let archive = import_archive_path();
    let mut out = fs::File::create(&archive).unwrap();
    s.export_snapshot(&src, &snap("old"), &mut out).unwrap();
    drop(s);
    for step in steps("import") {
        let sb = sandbox("crash-import");

        crash_in_child("import", &sb, step);
        let s = open();

        let committed = step == "import:before_discard";
        assert_eq!(s.sandbox_exists(&sb), committed, "{step}");
        assert_clean(&s, &sb);
        if committed {
            assert_eq!(manifest(&s.workspace_path(&sb)), source, "{step}");
            s.delete_sandbox(&sb).unwrap();
        }
    }
    let s = open();
    s.delete_sandbox(&src).unwrap();
    s.flush_background();
    fs::remove_file(&archive).unwrap();
}

#[test]
fn delete_crash_at_every_step_leaves_no_sandbox() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    for step in steps("delete")
        .into_iter()
        .chain(["trash:after_first_delete"])
    {
        let s = open();
        let sb = sandbox_with_history(&s, "crash-delete");

        drop(s);
        crash_in_child("delete", &sb, step);
        let s = open();

        assert!(!s.sandbox_exists(&sb), "{step}");
        assert_clean(&s, &sb);
        assert!(!s.list_sandboxes().unwrap().contains(&sb));
    }
}

#[test]
fn snapshot_crash_at_every_step_leaves_no_or_whole_snapshot() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    for step in steps("snapshot") {
        let s = open();
        let sb = sandbox_with_history(&s, "crash-snap");

        drop(s);
        crash_in_child("snapshot", &sb, step);
        let s = open();

        let names: Vec<_> = s
            .list_snapshots(&sb)
            .unwrap()
            .into_iter()
            .map(|i| (i.name, i.kind, i.has_state))
            .collect();
        let mut expected = vec![
            ("old".to_owned(), SnapshotKind::Kept, true),
            ("plain".to_owned(), SnapshotKind::Auto, false),
        ];
        if step == "snapshot:after_snapshot" {
            expected.push(("new".to_owned(), SnapshotKind::Kept, true));
        }
        assert_eq!(names, expected, "{step}");
        assert_clean(&s, &sb);
        s.delete_sandbox(&sb).unwrap();
    }
}

#[test]
fn delete_snapshot_crash_at_every_step_leaves_no_or_whole_snapshot() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    for step in steps("delete_snapshot") {
        let s = open();
        let sb = sandbox_with_history(&s, "crash-delsnap");

        drop(s);
        crash_in_child("delete_snapshot", &sb, step);
        let s = open();

        let left: Vec<_> = s
            .list_snapshots(&sb)
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(left, ["plain"], "{step}");
        assert_clean(&s, &sb);
        s.delete_sandbox(&sb).unwrap();
    }
}

#[test]
fn open_twice_does_not_double_mount() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let first = open();
    let pool = first.pool_path().to_owned();

    let second = open();

    assert_eq!(second.pool_path(), pool);
    assert_eq!(common::mount_count(&pool), 1);
    assert!(second.quotas_enabled());
}

#[test]
fn retention_prunes_oldest_auto_and_never_kept() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut cfg = config(&data_dir());
    cfg.max_auto_snapshots = 3;
    let s = Storage::open(cfg).unwrap();
    let sb = sandbox("retention");
    s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    s.snapshot(&sb, &snap("a0"), SnapshotKind::Kept).unwrap();
    for i in 1..=6 {
        s.snapshot(&sb, &snap(&format!("a{i}")), SnapshotKind::Auto)
            .unwrap();
        if i == 2 {
            s.pin(&sb, &snap("a2")).unwrap();
        }
    }

    s.flush_background();

    let left: Vec<_> = s
        .list_snapshots(&sb)
        .unwrap()
        .into_iter()
        .map(|i| (i.name, i.kind))
        .collect();
    let expected: Vec<_> = [("a0", SnapshotKind::Kept), ("a2", SnapshotKind::Kept)]
        .into_iter()
        .chain(["a4", "a5", "a6"].map(|n| (n, SnapshotKind::Auto)))
        .map(|(n, k)| (n.to_owned(), k))
        .collect();
    assert_eq!(left, expected);
    s.delete_sandbox(&sb).unwrap();
    s.flush_background();
}

#[test]
fn open_on_btrfs_dir_uses_it_directly() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let outer = open();
    let nested = outer.pool_path().join("nested-data-dir");

    let s = Storage::open(config(nested.to_str().unwrap())).unwrap();

    assert_eq!(s.pool_path(), nested);
    assert_eq!(s.quotas_enabled(), outer.quotas_enabled());
    let sb = sandbox("nested");
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    assert!(live.starts_with(&nested));
    s.delete_sandbox(&sb).unwrap();
    s.flush_background();
}

#[test]
#[ignore = "helper: run as a child process as uid 65534 by open_as_non_root_is_not_root"]
fn not_root_child() {
    let err = Storage::open(config("/tmp/rewind-not-root"))
        .err()
        .expect("open must fail");
    assert!(
        matches!(err, rewind_storage::StorageError::NotRoot { euid: 65534 }),
        "{err:?}"
    );
}

#[test]
fn open_as_non_root_is_not_root() {
    use std::os::unix::process::CommandExt;
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "not_root_child", "--ignored", "--test-threads=1"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

#[test]
fn sizes_are_none_without_quotas() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut cfg = config(&test_dir("storage-noquota"));
    cfg.quotas = false;
    let s = Storage::open(cfg).unwrap();
    let sb = sandbox("noquota");
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    fs::write(live.join("mib"), common::noise(1 << 20, 1)).unwrap();

    let info = s.snapshot(&sb, &snap("a"), SnapshotKind::Auto).unwrap();

    assert!(!s.quotas_enabled());
    assert_eq!(info.sizes, None);
    assert_eq!(s.list_snapshots(&sb).unwrap()[0].sizes, None);
    s.delete_sandbox(&sb).unwrap();
    s.flush_background();
}

#[test]
fn open_remounts_after_unmount() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = open();
    let sb = sandbox("remount");
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    fs::write(live.join("kept"), b"survives").unwrap();
    s.sync().unwrap();
    let pool = s.pool_path().to_owned();
    drop(s);
    nix::mount::umount(&pool).unwrap();
    assert_eq!(common::mount_count(&pool), 0);

    let s = open();

    assert_eq!(common::mount_count(&pool), 1);
    assert_eq!(
        fs::read(s.workspace_path(&sb).join("kept")).unwrap(),
        b"survives"
    );
    s.delete_sandbox(&sb).unwrap();
    s.flush_background();
}

/// Subvolumes deleted but not yet dropped by the kernel's cleaner.
fn deleted_not_cleaned(pool: &Path) -> usize {
    let out = Command::new("btrfs")
        .args(["subvolume", "list", "-d"])
        .arg(pool)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn thinning_keeps_recent_first_of_slot_and_kept() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut cfg = config(&data_dir());
    cfg.keep_recent = 3;
    let s = Storage::open(cfg).unwrap();
    let sb = sandbox("thinning");
    s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    s.snapshot(&sb, &snap("t0"), SnapshotKind::Kept).unwrap();
    // All taken within well under a second: one 5-minute slot (a run
    // straddling a slot boundary would also keep t-first of the next slot).
    for i in 1..=8 {
        s.snapshot(&sb, &snap(&format!("t{i}")), SnapshotKind::Auto)
            .unwrap();
        if i == 2 {
            s.pin(&sb, &snap("t2")).unwrap();
        }
    }

    s.flush_background();

    let left: Vec<_> = s
        .list_snapshots(&sb)
        .unwrap()
        .into_iter()
        .map(|i| (i.name, i.retention))
        .collect();
    let expected: Vec<_> = [
        ("t0", Retention::Kept),
        ("t1", Retention::FiveMinutes),
        ("t2", Retention::Kept),
        ("t6", Retention::Recent),
        ("t7", Retention::Recent),
        ("t8", Retention::Recent),
    ]
    .into_iter()
    .map(|(n, r)| (n.to_owned(), Some(r)))
    .collect();
    assert_eq!(left, expected);
    s.delete_sandbox(&sb).unwrap();
    s.flush_background();
}

#[test]
fn pruned_snapshots_are_dropped_by_the_kernel_promptly() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut cfg = config(&data_dir());
    cfg.max_auto_snapshots = 2;
    let s = Storage::open(cfg).unwrap();
    let pool = s.pool_path().to_owned();
    s.flush_background();
    // Let earlier tests' deletions (some by killed children) be dropped
    // first: a sync wakes the cleaner, which then runs until none is left.
    s.sync().unwrap();
    let settled = std::time::Instant::now();
    while deleted_not_cleaned(&pool) > 0 && settled.elapsed().as_secs() < 40 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let sb = sandbox("cleaner");
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    for i in 0..12 {
        fs::write(live.join("f"), i.to_string()).unwrap();
        s.snapshot(&sb, &snap(&format!("p{i}")), SnapshotKind::Auto)
            .unwrap();
    }

    s.flush_background();

    assert_eq!(s.list_snapshots(&sb).unwrap().len(), 2);
    // The kernel wakes its cleaner only every 30 s by itself; the worker's
    // commit after deleting wakes it at once.
    let started = std::time::Instant::now();
    while deleted_not_cleaned(&pool) > 0 {
        assert!(
            started.elapsed().as_secs() < 3,
            "{} pruned snapshots still not dropped after 3 s",
            deleted_not_cleaned(&pool)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    s.delete_sandbox(&sb).unwrap();
    s.flush_background();
}

/// Access time of `path` in nanoseconds.
fn atime(path: &Path) -> i128 {
    let m = fs::metadata(path).unwrap();
    i128::from(m.atime()) * 1_000_000_000 + i128::from(m.atime_nsec())
}

fn is_noatime(path: &Path) -> bool {
    nix::sys::statvfs::statvfs(path)
        .unwrap()
        .flags()
        .contains(nix::sys::statvfs::FsFlags::ST_NOATIME)
}

#[test]
fn reads_leave_files_unchanged_and_an_old_relatime_pool_is_remounted_noatime() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = open();
    let pool = s.pool_path().to_owned();
    let sb = sandbox("noatime");
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    let file = live.join("read-me");
    fs::write(&file, b"content").unwrap();
    // An access time older than the modification time: under `relatime`
    // the next read would update it.
    let past = nix::sys::time::TimeSpec::new(1_000, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &file,
        &past,
        &nix::sys::time::TimeSpec::UTIME_OMIT,
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    )
    .unwrap();
    let before = atime(&file);

    assert!(is_noatime(&pool), "the pool is mounted noatime");
    assert_eq!(fs::read(&file).unwrap(), b"content");
    assert_eq!(atime(&file), before, "a read changed the file's atime");

    // A pool mounted by an older rewind (relatime) is fixed by the next open.
    let relatime = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RELATIME;
    nix::mount::mount(None::<&str>, &pool, None::<&str>, relatime, None::<&str>).unwrap();
    assert!(!is_noatime(&pool));
    drop(s);
    let s = open();
    assert!(is_noatime(&pool), "open remounts the pool noatime");
    assert_eq!(common::mount_count(&pool), 1);
    assert_eq!(fs::read(&file).unwrap(), b"content");
    assert_eq!(atime(&file), before);
    s.delete_sandbox(&sb).unwrap();
    s.flush_background();
}

#[test]
fn open_while_open_skips_recovery() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let first = open();
    let sb = sandbox("in-flight");
    first
        .create_workspace(&sb, &CreateOptions::default())
        .unwrap();
    let in_flight = first
        .pool_path()
        .join("sandboxes")
        .join(sb.as_ref())
        .join("live.new");
    fs::create_dir(&in_flight).unwrap();

    let second = Storage::open(config(&data_dir())).unwrap();

    assert!(
        in_flight.exists(),
        "second open touched the first one's temporaries"
    );
    assert_eq!(second.recovery_report().len(), 1);
    assert!(second.recovery_report()[0].starts_with("recovery skipped"));
    drop((first, second));
    let third = open();
    assert!(!in_flight.exists());
    third.delete_sandbox(&sb).unwrap();
}

#[test]
fn every_failpoint_is_exercised() {
    let covered: Vec<_> = [
        "create",
        "restore",
        "wipe",
        "delete",
        "snapshot",
        "delete_snapshot",
        "import",
        // Exercised by tests/cold.rs (a pool with cold history on).
        "cold",
        "cold_restore",
    ]
    .iter()
    .flat_map(|op| steps(op))
    .chain(["trash:after_first_delete"])
    .collect();
    let all: BTreeSet<_> = FAILPOINTS.iter().copied().collect();
    assert_eq!(covered.iter().copied().collect::<BTreeSet<_>>(), all);
}

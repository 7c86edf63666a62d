//! Storage operations against a real loop-mounted Btrfs pool shared by all
//! tests in this binary (`$REWIND_TEST_ROOT/storage`, default `/var/tmp/rewind-test-storage`, reused across runs).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::OnceLock;

use common::{config, manifest, mutate, populate, sandbox, snap, test_dir};
use rewind_storage::{CreateOptions, SnapshotKind, Storage, StorageError};

fn storage() -> &'static Storage {
    static S: OnceLock<Storage> = OnceLock::new();
    S.get_or_init(|| Storage::open(config(&test_dir("storage"))).expect("open test pool"))
}

fn names(list: &[rewind_storage::SnapshotInfo]) -> Vec<String> {
    list.iter().map(|s| s.name.clone()).collect()
}

#[test]
fn restore_round_trip_preserves_everything() {
    let s = storage();
    let sb = sandbox("roundtrip");
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    populate(&live, 64 << 20);
    let before = manifest(&live);
    s.snapshot(&sb, &snap("s1"), SnapshotKind::Kept).unwrap();
    mutate(&live);
    assert_ne!(manifest(&live), before);

    s.restore(&sb, &snap("s1")).unwrap();

    assert_eq!(manifest(&s.workspace_path(&sb)), before);
    assert_eq!(manifest(&s.snapshot_path(&sb, &snap("s1"))), before);
    fs::write(s.workspace_path(&sb).join("writable"), b"yes").unwrap();
    s.delete_sandbox(&sb).unwrap();
}

#[test]
fn restore_keeps_sparse_files_sparse() {
    let s = storage();
    let sb = sandbox("sparse");
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    populate(&live, 1 << 20);
    s.snapshot(&sb, &snap("s1"), SnapshotKind::Auto).unwrap();
    mutate(&live);

    s.restore(&sb, &snap("s1")).unwrap();

    let meta = fs::metadata(s.workspace_path(&sb).join("sparse.img")).unwrap();
    assert_eq!(meta.size(), (1 << 30) + 26);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "sparse file got {} blocks",
        meta.blocks()
    );
    s.delete_sandbox(&sb).unwrap();
}

#[test]
fn restore_older_then_newer_keeps_history() {
    let s = storage();
    let sb = sandbox("history");
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    for v in 1..=3 {
        fs::write(live.join("version"), format!("{v}")).unwrap();
        s.snapshot(&sb, &snap(&format!("v{v}")), SnapshotKind::Auto)
            .unwrap();
    }
    let read = || fs::read_to_string(s.workspace_path(&sb).join("version")).unwrap();

    s.restore(&sb, &snap("v1")).unwrap();
    assert_eq!(read(), "1");
    assert_eq!(names(&s.list_snapshots(&sb).unwrap()), ["v1", "v2", "v3"]);
    s.restore(&sb, &snap("v3")).unwrap();
    assert_eq!(read(), "3");
    s.restore(&sb, &snap("v2")).unwrap();
    assert_eq!(read(), "2");

    let list = s.list_snapshots(&sb).unwrap();
    assert_eq!(names(&list), ["v1", "v2", "v3"]);
    assert!(list.windows(2).all(|w| w[0].created <= w[1].created));
    s.delete_sandbox(&sb).unwrap();
}

#[test]
fn snapshot_is_read_only() {
    let s = storage();
    let sb = sandbox("readonly");
    s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    s.snapshot(&sb, &snap("ro"), SnapshotKind::Auto).unwrap();

    let err = fs::write(s.snapshot_path(&sb, &snap("ro")).join("x"), b"x").unwrap_err();

    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    s.delete_sandbox(&sb).unwrap();
}

#[test]
fn errors_distinguish_not_found_and_already_exists() {
    let s = storage();
    let sb = sandbox("errors");
    let missing = sandbox("missing");
    s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    s.snapshot(&sb, &snap("a"), SnapshotKind::Auto).unwrap();

    let dup_sandbox = s
        .create_workspace(&sb, &CreateOptions::default())
        .unwrap_err();
    let dup_snap = s.snapshot(&sb, &snap("a"), SnapshotKind::Kept).unwrap_err();
    let no_snap = s.restore(&sb, &snap("nope")).unwrap_err();
    let no_sandbox = s
        .snapshot(&missing, &snap("a"), SnapshotKind::Auto)
        .unwrap_err();
    let no_template = s
        .create_workspace(
            &missing,
            &CreateOptions {
                template: Some(snap("no-such-template")),
                owner: None,
                ..Default::default()
            },
        )
        .unwrap_err();

    assert!(
        matches!(
            dup_sandbox,
            StorageError::AlreadyExists {
                what: "sandbox",
                ..
            }
        ),
        "{dup_sandbox:?}"
    );
    assert!(
        matches!(
            dup_snap,
            StorageError::AlreadyExists {
                what: "snapshot",
                ..
            }
        ),
        "{dup_snap:?}"
    );
    assert!(
        matches!(
            no_snap,
            StorageError::NotFound {
                what: "snapshot",
                ..
            }
        ),
        "{no_snap:?}"
    );
    assert!(
        matches!(
            no_sandbox,
            StorageError::NotFound {
                what: "sandbox",
                ..
            }
        ),
        "{no_sandbox:?}"
    );
    assert!(
        matches!(
            no_template,
            StorageError::NotFound {
                what: "template",
                ..
            }
        ),
        "{no_template:?}"
    );
    assert!(matches!(
        s.delete_snapshot(&sb, &snap("nope")).unwrap_err(),
        StorageError::NotFound { .. }
    ));
    assert!(matches!(
        s.pin(&missing, &snap("a")).unwrap_err(),
        StorageError::NotFound { .. }
    ));
    assert!(matches!(
        s.delete_sandbox(&missing).unwrap_err(),
        StorageError::NotFound { .. }
    ));
    assert!(!s.sandbox_exists(&missing));
    s.delete_sandbox(&sb).unwrap();
}

#[test]
fn wipe_without_template_empties_and_keeps_root_owner_and_mode() {
    let s = storage();
    let sb = sandbox("wipe");
    let live = s
        .create_workspace(
            &sb,
            &CreateOptions {
                template: None,
                owner: Some((1000, 1001)),
                ..Default::default()
            },
        )
        .unwrap();
    fs::set_permissions(&live, fs::Permissions::from_mode(0o751)).unwrap();
    populate(&live, 1 << 20);
    s.snapshot(&sb, &snap("before-wipe"), SnapshotKind::Kept)
        .unwrap();

    s.wipe(&sb).unwrap();

    let meta = fs::metadata(s.workspace_path(&sb)).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (1000, 1001, 0o751)
    );
    assert_eq!(fs::read_dir(s.workspace_path(&sb)).unwrap().count(), 0);
    assert_eq!(names(&s.list_snapshots(&sb).unwrap()), ["before-wipe"]);
    s.delete_sandbox(&sb).unwrap();
}

#[test]
fn template_seeds_create_and_wipe() {
    let s = storage();
    let tpl = snap(sandbox("tpl").as_ref());
    let tpl_path = s.create_template(&tpl).unwrap();
    populate(&tpl_path, 1 << 20);
    let expected = manifest(&tpl_path);
    let sb = sandbox("from-template");

    let live = s
        .create_workspace(
            &sb,
            &CreateOptions {
                template: Some(tpl.clone()),
                owner: None,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(manifest(&live), expected);
    mutate(&live);
    s.wipe(&sb).unwrap();

    assert_eq!(manifest(&s.workspace_path(&sb)), expected);
    assert!(matches!(
        s.create_template(&tpl).unwrap_err(),
        StorageError::AlreadyExists { .. }
    ));
    s.delete_sandbox(&sb).unwrap();
    s.delete_template(&tpl).unwrap();
}

#[test]
fn snapshot_with_state_restores_state_dir_and_aux_dies_with_snapshot() {
    let s = storage();
    let sb = sandbox("state");
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    let state = s.state_dir(&sb);
    fs::write(live.join("ws"), b"ws-1").unwrap();
    fs::write(state.join("disk.img"), b"disk-1").unwrap();
    let info = s
        .snapshot_with_state(&sb, &snap("full"), SnapshotKind::Kept)
        .unwrap();
    let aux = s.snapshot_aux_dir(&sb, &snap("full")).unwrap();
    fs::write(aux.join("memory"), b"ram").unwrap();
    fs::write(live.join("ws"), b"ws-2").unwrap();
    fs::write(state.join("disk.img"), b"disk-2").unwrap();

    s.restore(&sb, &snap("full")).unwrap();

    assert!(info.has_state);
    assert_eq!(fs::read(live.join("ws")).unwrap(), b"ws-1");
    assert_eq!(fs::read(state.join("disk.img")).unwrap(), b"disk-1");
    assert_eq!(fs::read(aux.join("memory")).unwrap(), b"ram");
    s.delete_snapshot(&sb, &snap("full")).unwrap();
    assert!(!aux.exists());
    assert!(!s.snapshot_path(&sb, &snap("full")).exists());
    s.delete_sandbox(&sb).unwrap();
}

#[test]
fn restore_without_state_leaves_state_dir_alone() {
    let s = storage();
    let sb = sandbox("nostate");
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    fs::write(live.join("ws"), b"ws-1").unwrap();
    s.snapshot(&sb, &snap("plain"), SnapshotKind::Auto).unwrap();
    fs::write(s.state_dir(&sb).join("runtime"), b"keep me").unwrap();

    s.restore(&sb, &snap("plain")).unwrap();

    assert_eq!(
        fs::read(s.state_dir(&sb).join("runtime")).unwrap(),
        b"keep me"
    );
    assert!(!s.snapshot_info(&sb, &snap("plain")).unwrap().has_state);
    s.delete_sandbox(&sb).unwrap();
}

#[test]
fn pin_turns_auto_into_kept() {
    let s = storage();
    let sb = sandbox("pin");
    s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    let info = s.snapshot(&sb, &snap("a"), SnapshotKind::Auto).unwrap();

    s.pin(&sb, &snap("a")).unwrap();

    assert_eq!(info.kind, SnapshotKind::Auto);
    assert_eq!(
        s.snapshot_info(&sb, &snap("a")).unwrap().kind,
        SnapshotKind::Kept
    );
    s.delete_sandbox(&sb).unwrap();
}

#[test]
fn delete_sandbox_removes_everything_in_background() {
    let s = storage();
    let sb = sandbox("delete");
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    populate(&live, 1 << 20);
    s.snapshot_with_state(&sb, &snap("one"), SnapshotKind::Kept)
        .unwrap();
    s.snapshot(&sb, &snap("two"), SnapshotKind::Auto).unwrap();

    s.delete_sandbox(&sb).unwrap();
    s.flush_background();

    assert!(!s.sandbox_exists(&sb));
    assert!(!live.exists());
    assert!(!s.list_sandboxes().unwrap().contains(&sb));
    assert!(matches!(
        s.list_snapshots(&sb).unwrap_err(),
        StorageError::NotFound { .. }
    ));
}

#[test]
fn list_sandboxes_lists_created() {
    let s = storage();
    let sb = sandbox("listed");
    s.create_workspace(&sb, &CreateOptions::default()).unwrap();

    let all = s.list_sandboxes().unwrap();

    assert!(all.contains(&sb));
    assert!(all.iter().all(|n| !n.as_ref().starts_with('.')));
    s.delete_sandbox(&sb).unwrap();
}

#[test]
fn sizes_are_plausible_on_quota_pool() {
    let s = storage();
    let sb = sandbox("sizes");
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    fs::write(live.join("mib"), common::noise(1 << 20, 5)).unwrap();
    s.snapshot(&sb, &snap("with-file"), SnapshotKind::Kept)
        .unwrap();
    fs::remove_file(live.join("mib")).unwrap();
    s.snapshot(&sb, &snap("without-file"), SnapshotKind::Kept)
        .unwrap();

    s.sync().unwrap();
    let with = s
        .snapshot_info(&sb, &snap("with-file"))
        .unwrap()
        .sizes
        .expect("quotas on");
    let listed = s.list_snapshots(&sb).unwrap();

    assert!(s.quotas_enabled());
    assert!(with.exclusive_bytes >= 1 << 20, "{with:?}");
    assert!(with.referenced_bytes >= 1 << 20, "{with:?}");
    assert!(with.referenced_bytes < 4 << 20, "{with:?}");
    let without = listed[1].sizes.expect("quotas on");
    assert!(without.referenced_bytes < 1 << 20, "{without:?}");
    assert_eq!(listed[0].sizes, Some(with));
    s.delete_sandbox(&sb).unwrap();
}

#[test]
fn parallel_sandboxes_do_not_interfere() {
    let s = storage();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let sb = sandbox(&format!("par{t}"));
                let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
                for i in 0..15 {
                    fs::write(live.join("value"), format!("{t}-{i}")).unwrap();
                    s.snapshot(&sb, &snap(&format!("s{i}")), SnapshotKind::Auto)
                        .unwrap();
                    let back = (i * 7) % (i + 1);
                    s.restore(&sb, &snap(&format!("s{back}"))).unwrap();
                    assert_eq!(
                        fs::read_to_string(live.join("value")).unwrap(),
                        format!("{t}-{back}")
                    );
                }
                assert_eq!(s.list_snapshots(&sb).unwrap().len(), 15);
                s.delete_sandbox(&sb).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn concurrent_operations_on_one_sandbox_serialize() {
    let s = storage();
    let sb = sandbox("serial");
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    fs::write(live.join("f"), b"base").unwrap();
    s.snapshot(&sb, &snap("base"), SnapshotKind::Kept).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (s, sb) = (s.clone(), sb.clone());
            std::thread::spawn(move || {
                for i in 0..10 {
                    s.snapshot(&sb, &snap(&format!("t{t}-{i}")), SnapshotKind::Auto)
                        .unwrap();
                    s.restore(&sb, &snap("base")).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.list_snapshots(&sb).unwrap().len(), 41);
    assert_eq!(fs::read(live.join("f")).unwrap(), b"base");
    s.delete_sandbox(&sb).unwrap();
}

#[test]
fn fork_from_snapshot_copies_workspace_and_state_independently() {
    let s = storage();
    let (src, dst) = (sandbox("fork-src"), sandbox("fork-dst"));
    let live = s.create_workspace(&src, &CreateOptions::default()).unwrap();
    fs::write(live.join("f"), b"at snapshot").unwrap();
    fs::write(s.state_dir(&src).join("mem"), b"vm state").unwrap();
    s.snapshot_with_state(&src, &snap("base"), SnapshotKind::Kept)
        .unwrap();
    fs::write(live.join("f"), b"later").unwrap();
    let opts = CreateOptions {
        fork_from: Some((src.clone(), snap("base"))),
        ..Default::default()
    };
    let forked = s.create_workspace(&dst, &opts).unwrap();
    fs::write(forked.join("g"), b"only in fork").unwrap();
    assert_eq!(fs::read(forked.join("f")).unwrap(), b"at snapshot");
    assert_eq!(
        fs::read(s.state_dir(&dst).join("mem")).unwrap(),
        b"vm state"
    );
    assert!(
        !live.join("g").exists(),
        "the fork is independent of its source"
    );
    let missing = CreateOptions {
        fork_from: Some((src.clone(), snap("nope"))),
        ..Default::default()
    };
    let err = s
        .create_workspace(&sandbox("fork-bad"), &missing)
        .unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
}

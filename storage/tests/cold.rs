//! Cold history on a real loop-mounted Btrfs pool: archived snapshots stay
//! listed and restore byte for byte (modes, owners, xattrs, symlinks,
//! hardlinks, sparse files, fifos, times), through chains and hidden bases;
//! thinning archives instead of deleting when `cold_history` is on; a crash
//! at any step of archiving or of a cold restore leaves a whole state after
//! recovery. Needs root.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use common::{
    assert_no_trash_or_hidden, config, manifest, mutate, populate, sandbox, set_xattr, snap,
    test_dir, Manifest,
};
use rewind_storage::{CreateOptions, SandboxName, SnapshotKind, Storage, Tier};

fn storage() -> &'static Storage {
    static S: OnceLock<Storage> = OnceLock::new();
    S.get_or_init(|| {
        let mut cfg = config(&test_dir("storage-cold"));
        cfg.cold_history = true;
        cfg.keep_recent = 1;
        Storage::open(cfg).unwrap()
    })
}

/// A manifest without allocated block counts (a receive may lay extents
/// out differently; everything else must match).
fn tree(root: &Path) -> Manifest {
    let mut m = manifest(root);
    for entry in m.values_mut() {
        entry.allocated_blocks = 0;
    }
    m
}

/// Changes for step `i` after `populate` (step 2 is `mutate`).
fn change(root: &Path, i: usize) {
    match i {
        2 => mutate(root),
        _ => {
            fs::write(
                root.join(format!("step-{i}")),
                common::noise(5000 + i, i as u64),
            )
            .unwrap();
            set_xattr(
                &root.join("plain.txt"),
                "user.step",
                i.to_string().as_bytes(),
            );
            fs::write(root.join("dir/nested.bin"), format!("rewritten at {i}")).unwrap();
        }
    }
}

/// A sandbox with kept `k` (empty workspace), then automatic `s1`..`s<n>`:
/// `s1` after `populate`, each later one after `change`. Returns the tree
/// of each automatic snapshot as taken.
fn history(s: &Storage, prefix: &str, n: usize) -> (SandboxName, BTreeMap<String, Manifest>) {
    let sb = sandbox(prefix);
    let live = s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    s.snapshot(&sb, &snap("k"), SnapshotKind::Kept).unwrap();
    let mut trees = BTreeMap::new();
    for i in 1..=n {
        if i == 1 {
            populate(&live, 1 << 20);
        } else {
            change(&live, i);
        }
        let name = format!("s{i}");
        s.snapshot(&sb, &snap(&name), SnapshotKind::Auto).unwrap();
        trees.insert(name.clone(), tree(&s.snapshot_path(&sb, &snap(&name))));
    }
    (sb, trees)
}

fn tiers(s: &Storage, sb: &SandboxName) -> BTreeMap<String, Tier> {
    s.list_snapshots(sb)
        .unwrap()
        .into_iter()
        .map(|i| (i.name, i.tier))
        .collect()
}

fn cold_dir_entries(s: &Storage, sb: &SandboxName) -> Vec<String> {
    let dir = s
        .pool_path()
        .join("sandboxes")
        .join(sb.as_ref())
        .join("cold");
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn thinning_archives_instead_of_deleting_and_cold_snapshots_restore_byte_for_byte() {
    let s = storage();
    let (sb, trees) = history(s, "cold-thin", 6);
    s.flush_background();

    let listed = tiers(s, &sb);

    // Nothing was deleted: the list is complete.
    let mut expected: Vec<String> = trees.keys().cloned().collect();
    expected.push("k".into());
    expected.sort();
    assert_eq!(listed.keys().cloned().collect::<Vec<_>>(), expected);
    let cold: Vec<&String> = trees.keys().filter(|n| listed[*n] == Tier::Cold).collect();
    // keep_recent = 1: at most the newest and two 5-minute firsts stay hot.
    assert!(cold.len() >= 3, "cold: {cold:?} of {listed:?}");
    assert_eq!(listed["k"], Tier::Hot);
    for name in cold {
        let tier = s.restore_tiered(&sb, &snap(name)).unwrap();
        assert_eq!(tier, Tier::Cold);
        assert_eq!(tree(&s.workspace_path(&sb)), trees[name], "{name}");
    }
    let staging: Vec<_> = fs::read_dir(s.pool_path().join("sandboxes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".import"))
        .collect();
    assert_eq!(staging, Vec::<String>::new());
    s.delete_sandbox(&sb).unwrap();
}

#[test]
fn deleting_a_base_keeps_it_hidden_until_its_dependents_are_gone() {
    let s = storage();
    let (sb, trees) = history(s, "cold-base", 4);
    s.flush_background();
    for name in ["s2", "s3", "s1"] {
        if s.snapshot_path(&sb, &snap(name)).exists() {
            s.archive_snapshot(&sb, &snap(name)).unwrap();
        }
    }
    // s2 and s3 were archived against s1 (hot then); deleting s1 keeps
    // it as a hidden base and s2/s3 still restore through it.
    s.delete_snapshot(&sb, &snap("s1")).unwrap();

    let listed = tiers(s, &sb);
    let bases: Vec<String> = cold_dir_entries(s, &sb)
        .into_iter()
        .filter(|n| n.starts_with(".base-"))
        .collect();

    assert!(!listed.contains_key("s1"), "{listed:?}");
    assert_eq!(bases.len(), 1, "{:?}", cold_dir_entries(s, &sb));
    assert!(s.restore(&sb, &snap("s1")).is_err());
    for name in ["s3", "s2"] {
        assert_eq!(s.restore_tiered(&sb, &snap(name)).unwrap(), Tier::Cold);
        assert_eq!(tree(&s.workspace_path(&sb)), trees[name], "{name}");
    }
    s.delete_snapshot(&sb, &snap("s3")).unwrap();
    s.delete_snapshot(&sb, &snap("s2")).unwrap();
    assert_eq!(cold_dir_entries(s, &sb), Vec::<String>::new());
    assert_eq!(
        tiers(s, &sb).keys().cloned().collect::<Vec<_>>(),
        vec!["k".to_owned(), "s4".to_owned()]
    );
    s.delete_sandbox(&sb).unwrap();
}

#[test]
fn kept_snapshots_are_never_archived_and_names_stay_unique() {
    let s = storage();
    let (sb, _) = history(s, "cold-kept", 2);
    s.flush_background();
    if s.snapshot_path(&sb, &snap("s1")).exists() {
        s.archive_snapshot(&sb, &snap("s1")).unwrap();
    }

    let kept = s.archive_snapshot(&sb, &snap("k"));
    let again = s.snapshot(&sb, &snap("s1"), SnapshotKind::Auto);

    assert!(kept.is_err());
    assert!(matches!(
        again,
        Err(rewind_storage::StorageError::AlreadyExists { .. })
    ));
    s.delete_sandbox(&sb).unwrap();
}

// ---- crash tests: their own pool, one at a time (recovery is pool-wide) ----

static SERIAL: Mutex<()> = Mutex::new(());

fn crash_dir() -> String {
    test_dir("storage-cold-crash")
}

fn crash_config() -> rewind_storage::PoolConfig {
    let mut cfg = config(&crash_dir());
    cfg.cold_history = true;
    cfg.keep_recent = 1000;
    cfg
}

fn crash_in_child(op: &str, sb: &SandboxName, failpoint: &str) {
    common::crash_in_child("cold_crash_child", op, sb, failpoint);
}

#[test]
#[ignore = "helper: run as a child process by the crash tests, not a test itself"]
fn cold_crash_child() {
    let s = Storage::open(crash_config()).unwrap();
    let sb: SandboxName = std::env::var("REWIND_CRASH_SANDBOX")
        .unwrap()
        .parse()
        .unwrap();
    match std::env::var("REWIND_CRASH_OP").unwrap().as_str() {
        "archive" => s.archive_snapshot(&sb, &snap("s2")).unwrap(),
        "cold_restore" => s.restore(&sb, &snap("s2")).unwrap(),
        other => panic!("unknown op {other}"),
    }
    s.flush_background();
}

/// No staging dirs, no unfinished archives, an empty trash.
fn assert_no_temporaries(s: &Storage, sb: &SandboxName) {
    assert_no_trash_or_hidden(s);
    let unfinished: Vec<_> = cold_dir_entries(s, sb)
        .into_iter()
        .filter(|n| n.starts_with(".new-"))
        .collect();
    assert!(unfinished.is_empty(), "{unfinished:?}");
}

#[test]
fn archive_crash_at_every_step_leaves_the_snapshot_hot_or_cold() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    for failpoint in [
        "cold:after_stream",
        "cold:after_commit",
        "delete_snapshot:after_snapshot",
        "delete_snapshot:after_state",
    ] {
        let sb = {
            let s = Storage::open(crash_config()).unwrap();
            let (sb, trees) = history(&s, "cold-crash-a", 3);
            s.flush_background();
            fs::write(crash_tree_path(&sb), format!("{:?}", trees["s2"])).unwrap();
            sb
        };

        crash_in_child("archive", &sb, failpoint);

        let s = Storage::open(crash_config()).unwrap();
        assert_no_temporaries(&s, &sb);
        let listed = tiers(&s, &sb);
        assert!(listed.contains_key("s2"), "{failpoint}: {listed:?}");
        let hot = s.snapshot_path(&sb, &snap("s2")).exists();
        assert_eq!(hot, listed["s2"] == Tier::Hot, "{failpoint}");
        s.restore(&sb, &snap("s2")).unwrap();
        let expected = fs::read_to_string(crash_tree_path(&sb)).unwrap();
        assert_eq!(
            format!("{:?}", tree(&s.workspace_path(&sb))),
            expected,
            "{failpoint}"
        );
        s.delete_sandbox(&sb).unwrap();
        s.flush_background();
    }
}

#[test]
fn cold_restore_crash_at_every_step_leaves_old_or_new() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    for failpoint in [
        "cold_restore:after_receive",
        "restore:after_live_new",
        "restore:after_live_exchange",
        "restore:after_trash",
    ] {
        let (sb, old) = {
            let s = Storage::open(crash_config()).unwrap();
            let (sb, trees) = history(&s, "cold-crash-r", 3);
            s.archive_snapshot(&sb, &snap("s2")).unwrap();
            s.flush_background();
            fs::write(crash_tree_path(&sb), format!("{:?}", trees["s2"])).unwrap();
            let old = format!("{:?}", tree(&s.workspace_path(&sb)));
            (sb, old)
        };

        crash_in_child("cold_restore", &sb, failpoint);

        let s = Storage::open(crash_config()).unwrap();
        assert_no_temporaries(&s, &sb);
        let now = format!("{:?}", tree(&s.workspace_path(&sb)));
        let new = fs::read_to_string(crash_tree_path(&sb)).unwrap();
        assert!(now == old || now == new, "{failpoint}: neither old nor new");
        assert_eq!(tiers(&s, &sb)["s2"], Tier::Cold);
        s.delete_sandbox(&sb).unwrap();
        s.flush_background();
    }
}

fn crash_tree_path(sb: &SandboxName) -> std::path::PathBuf {
    Path::new(&crash_dir()).join(format!("{sb}.tree"))
}

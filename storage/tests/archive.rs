//! Snapshot archives on a real loop-mounted Btrfs pool: export → import
//! gives the same tree; bad archives are refused with a reason and leave
//! nothing behind. Crash tests for import are in `crash.rs`. Needs root.

mod common;

use std::fs;
use std::sync::{Mutex, OnceLock};

use common::{config, manifest, populate, sandbox, snap, test_dir, Manifest};
use rewind_storage::{CreateOptions, SandboxName, SnapshotKind, Storage, StorageError};
use sha2::{Digest, Sha256};

/// Imports one at a time: the tests check that no staging dir is left.
static SERIAL: Mutex<()> = Mutex::new(());

fn storage() -> &'static Storage {
    static S: OnceLock<Storage> = OnceLock::new();
    S.get_or_init(|| Storage::open(config(&test_dir("storage-archive"))).unwrap())
}

/// A manifest without allocated block counts (a receive may lay extents
/// out differently; contents, modes, owners, times, links, xattrs must match).
fn tree(root: &std::path::Path) -> Manifest {
    let mut m = manifest(root);
    for entry in m.values_mut() {
        entry.allocated_blocks = 0;
    }
    m
}

/// A sandbox with a populated workspace and its snapshot `s1`, exported.
fn exported(prefix: &str) -> (SandboxName, Vec<u8>) {
    let s = storage();
    let sb = sandbox(prefix);
    s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    populate(&s.workspace_path(&sb), 3 << 20);
    s.snapshot(&sb, &snap("s1"), SnapshotKind::Kept).unwrap();
    let mut out = Vec::new();
    s.export_snapshot(&sb, &snap("s1"), &mut out).unwrap();
    (sb, out)
}

fn staging_dirs() -> Vec<String> {
    storage().flush_background();
    fs::read_dir(storage().pool_path().join("sandboxes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".import"))
        .collect()
}

fn import_err(archive: &[u8]) -> String {
    match storage().receive_archive(&mut &archive[..]).unwrap_err() {
        StorageError::BadArchive { reason } => reason,
        other => panic!("expected BadArchive, got {other:?}"),
    }
}

#[test]
fn export_then_import_gives_an_identical_tree() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = storage();
    let (src, archive) = exported("arch-src");
    let dst = sandbox("arch-dst");

    let received = s.receive_archive(&mut &archive[..]).unwrap();
    let opts = CreateOptions {
        import: Some(received.clone()),
        ..Default::default()
    };
    s.create_workspace(&dst, &opts).unwrap();
    s.discard_received(received).unwrap();

    assert_eq!(
        tree(&s.workspace_path(&dst)),
        tree(&s.snapshot_path(&src, &snap("s1")))
    );
    assert!(archive.starts_with(rewind_storage::ARCHIVE_MAGIC));
    assert_eq!(staging_dirs(), Vec::<String>::new());
    s.delete_sandbox(&src).unwrap();
    s.delete_sandbox(&dst).unwrap();
}

#[test]
fn export_of_unknown_snapshot_is_not_found() {
    let s = storage();
    let sb = sandbox("arch-missing");
    s.create_workspace(&sb, &CreateOptions::default()).unwrap();

    let err = s
        .export_snapshot(&sb, &snap("nope"), &mut Vec::new())
        .unwrap_err();

    assert!(matches!(err, StorageError::NotFound { .. }), "{err:?}");
    s.delete_sandbox(&sb).unwrap();
}

#[test]
fn import_of_bad_archives_names_the_problem_and_leaves_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (src, archive) = exported("arch-bad");
    let mut corrupt = archive.clone();
    corrupt[archive.len() / 2] ^= 0xff;
    let truncated = &archive[..archive.len() - 1000];
    // Correct magic and checksum around something that is not a send stream.
    let mut foreign = rewind_storage::ARCHIVE_MAGIC.to_vec();
    foreign.extend(zstd::encode_all(&b"not a btrfs send stream"[..], 3).unwrap());
    let digest = Sha256::digest(&foreign);
    foreign.extend_from_slice(b"SHA256\0\0");
    foreign.extend_from_slice(&digest);

    let reasons = [
        import_err(&corrupt),
        import_err(truncated),
        import_err(b"GIF89a definitely not an archive, but long enough to check"),
        import_err(b"short"),
        import_err(&foreign),
    ];

    assert!(reasons[0].contains("checksum mismatch"), "{}", reasons[0]);
    assert!(reasons[1].contains("trailer"), "{}", reasons[1]);
    assert!(reasons[2].contains("bad magic"), "{}", reasons[2]);
    assert!(reasons[3].contains("truncated"), "{}", reasons[3]);
    assert!(reasons[4].contains("btrfs send stream"), "{}", reasons[4]);
    assert_eq!(staging_dirs(), Vec::<String>::new());
    storage().delete_sandbox(&src).unwrap();
}

#[test]
fn import_declared_larger_than_the_free_space_is_no_space_and_leaves_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (src, archive) = exported("arch-full");
    let declared = Some(u64::MAX / 4);

    let err = storage()
        .receive_archive_sized(&mut &archive[..], declared)
        .unwrap_err();

    assert!(matches!(err, StorageError::NoSpace { .. }), "{err:?}");
    assert!(err.is_no_space());
    assert_eq!(staging_dirs(), Vec::<String>::new());
    storage().delete_sandbox(&src).unwrap();
}

/// Deletes snapshot `s1` of its sandbox at the first write of the export:
/// the snapshot is gone while the rest of the stream is produced.
struct DeletingWriter<'a> {
    sb: &'a SandboxName,
    out: Vec<u8>,
}

impl std::io::Write for DeletingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.is_empty() {
            storage().delete_snapshot(self.sb, &snap("s1")).unwrap();
            storage().flush_background();
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn snapshot_deleted_during_its_export_still_gives_the_complete_archive() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = storage();
    let src = sandbox("arch-vanish");
    s.create_workspace(&src, &CreateOptions::default()).unwrap();
    populate(&s.workspace_path(&src), 3 << 20);
    s.snapshot(&src, &snap("s1"), SnapshotKind::Kept).unwrap();
    let expected = tree(&s.snapshot_path(&src, &snap("s1")));
    let mut out = DeletingWriter {
        sb: &src,
        out: Vec::new(),
    };

    s.export_snapshot(&src, &snap("s1"), &mut out).unwrap();

    assert!(!s.snapshot_path(&src, &snap("s1")).exists());
    let dst = sandbox("arch-vanish-dst");
    let received = s.receive_archive(&mut &out.out[..]).unwrap();
    let opts = CreateOptions {
        import: Some(received.clone()),
        ..Default::default()
    };
    s.create_workspace(&dst, &opts).unwrap();
    s.discard_received(received).unwrap();
    assert_eq!(tree(&s.workspace_path(&dst)), expected);
    s.delete_sandbox(&src).unwrap();
    s.delete_sandbox(&dst).unwrap();
}

#[test]
fn recovery_removes_the_clone_of_an_interrupted_export() {
    let dir = test_dir("storage-export-recovery");
    let s = Storage::open(config(&dir)).unwrap();
    let leftover = s.pool_path().join("sandboxes/.export.interrupted");
    fs::create_dir(&leftover).unwrap();
    let made = std::process::Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(leftover.join("s1"))
        .output()
        .unwrap();
    assert!(made.status.success());
    drop(s);

    let s = Storage::open(config(&dir)).unwrap();
    s.flush_background();

    assert!(!leftover.exists());
    assert!(
        s.recovery_report()
            .iter()
            .any(|line| line.contains("interrupted export")),
        "{:?}",
        s.recovery_report()
    );
    assert!(s.list_sandboxes().unwrap().is_empty());
}

//! The userspace full send stream of an export (`send_gen`) against the
//! kernel's: both received by the unchanged `btrfs receive` from the same
//! snapshot must give the same tree, entry by entry (kind, content and
//! holes, mode, owner, times of every entry including directories and the
//! root, symlink targets, hardlinks, xattrs, device numbers). Needs root.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{config, manifest, noise, populate, sandbox, set_xattr, snap, test_dir, Manifest};
use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use rewind_storage::{CreateOptions, SnapshotKind, Storage};

/// Every kind of entry `populate` does not already make.
fn populate_more(root: &Path) {
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("exactly-48k"), noise(48 * 1024, 5)).unwrap();
    fs::write(root.join("48k-plus-1"), noise(48 * 1024 + 1, 6)).unwrap();
    let mut holes = fs::File::create(root.join("holes-in-the-middle")).unwrap();
    holes.write_all(&noise(5000, 8)).unwrap();
    holes.seek(SeekFrom::Start(3 << 20)).unwrap();
    holes.write_all(&noise(70_000, 9)).unwrap();
    holes.set_len(8 << 20).unwrap();
    let odd = root.join("odd names");
    fs::create_dir(&odd).unwrap();
    for name in [
        &b"with space"[..],
        b"new\nline",
        b"latin1-\xe9t\xe9",
        b"-starts-with-dash",
        b".hidden",
        &[b'x'; 255],
    ] {
        fs::write(odd.join(OsStr::from_bytes(name)), name).unwrap();
    }
    let deep = root.join("a/b/c/d/e/f/g/h");
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("leaf"), b"deep").unwrap();
    fs::hard_link(root.join("plain.txt"), deep.join("plain-link")).unwrap();
    fs::hard_link(root.join("empty"), odd.join("empty-link")).unwrap();
    symlink("x".repeat(1000), root.join("long-symlink-target")).unwrap();
    let dev = |name: &str, kind: SFlag, major: u64, minor: u64| {
        mknod(
            &root.join(name),
            kind,
            Mode::from_bits_truncate(0o640),
            makedev(major, minor),
        )
        .unwrap()
    };
    dev("char-dev", SFlag::S_IFCHR, 1, 3);
    dev("block-dev", SFlag::S_IFBLK, 7, 300);
    drop(std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap());
    fs::write(root.join("no-access"), b"mode 000").unwrap();
    fs::set_permissions(root.join("no-access"), fs::Permissions::from_mode(0o000)).unwrap();
    std::os::unix::fs::lchown(root.join("odd names"), Some(1000), Some(100)).unwrap();
    set_xattr(&root.join("empty"), "user.big", &noise(3000, 10));
    set_xattr(&root.join("long-symlink-target"), "trusted.on-a-link", b"x");
    set_xattr(&root.join("socket"), "trusted.s", b"sock");
    let locked = root.join("read-only-dir");
    fs::create_dir(&locked).unwrap();
    fs::write(locked.join("inside"), b"written before the dir was locked").unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
    set_times(root);
}

/// Distinct times with nanoseconds on every entry, directories last.
fn set_times(dir: &Path) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for (i, entry) in entries.iter().enumerate() {
        if entry.file_type().unwrap().is_dir() {
            set_times(&entry.path());
        }
        let at = TimeSpec::new(1_600_000_000 + i as i64, 123_456_789);
        let mt = TimeSpec::new(1_500_000_000 + i as i64 * 7, 987_654_321);
        utimensat(
            nix::fcntl::AT_FDCWD,
            &entry.path(),
            &at,
            &mt,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
    let t = TimeSpec::new(1_400_000_000, 5);
    utimensat(
        nix::fcntl::AT_FDCWD,
        dir,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// What `manifest` leaves out: every entry's atime and mtime (directories
/// and the root included) and device numbers.
fn times_and_devices(root: &Path) -> BTreeMap<Vec<u8>, (i64, i64, i64, i64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let m = fs::symlink_metadata(&path).unwrap();
        if m.is_dir() {
            stack.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let t = (
            m.atime(),
            m.atime_nsec(),
            m.mtime(),
            m.mtime_nsec(),
            m.rdev(),
        );
        out.insert(rel, t);
    }
    out
}

fn tree(root: &Path) -> Manifest {
    let mut m = manifest(root);
    for entry in m.values_mut() {
        entry.allocated_blocks = 0;
    }
    m
}

/// `btrfs receive -e <dir>` of a raw send stream; the subvolume it made.
fn receive(stream: &[u8], dir: &Path) -> std::path::PathBuf {
    fs::create_dir_all(dir).unwrap();
    let mut child = Command::new("btrfs")
        .args(["receive", "-e"])
        .arg(dir)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stream).unwrap();
    assert!(child.wait().unwrap().success());
    let made: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
    made[0].clone()
}

/// The raw send stream inside an archive (between magic and trailer).
fn stream_of(archive: &[u8]) -> Vec<u8> {
    let body = &archive[rewind_storage::ARCHIVE_MAGIC.len()..archive.len() - 40];
    let mut out = Vec::new();
    zstd::Decoder::new(body)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn generated_and_kernel_streams_receive_to_the_same_tree() {
    let dir = test_dir("storage-send-gen");
    let s = Storage::open(config(&dir)).unwrap();
    let sb = sandbox("send-gen");
    s.create_workspace(&sb, &CreateOptions::default()).unwrap();
    let live = s.workspace_path(&sb);
    populate(&live, 300_000);
    populate_more(&live);
    s.snapshot(&sb, &snap("s1"), SnapshotKind::Kept).unwrap();
    let snapshot = s.snapshot_path(&sb, &snap("s1"));

    let mut archive = Vec::new();
    s.export_snapshot(&sb, &snap("s1"), &mut archive).unwrap();
    let generated = stream_of(&archive);
    let kernel = Command::new("btrfs")
        .args(["send", "-q"])
        .arg(&snapshot)
        .output()
        .unwrap();
    assert!(kernel.status.success());

    let scratch = s.pool_path().join("send-gen-test");
    let _ = Command::new("btrfs")
        .args(["subvolume", "delete", "-R"])
        .arg(&scratch)
        .output();
    let _ = fs::remove_dir_all(&scratch);
    let from_kernel = receive(&kernel.stdout, &scratch.join("kernel"));
    let from_generated = receive(&generated, &scratch.join("generated"));

    let times = times_and_devices(&from_kernel);
    assert_eq!(times_and_devices(&from_generated), times);
    assert_eq!(times, times_and_devices(&snapshot));
    let expected = tree(&from_kernel);
    assert!(expected.len() > 40, "{} entries", expected.len());
    assert_eq!(tree(&from_generated), expected);
    assert_eq!(tree(&snapshot), expected);

    for sub in [&from_kernel, &from_generated] {
        let out = Command::new("btrfs")
            .args(["subvolume", "delete"])
            .arg(sub)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::remove_dir_all(&scratch).unwrap();
    s.delete_sandbox(&sb).unwrap();
    s.flush_background();
}

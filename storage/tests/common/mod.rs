//! Shared helpers for the storage integration tests: a pool per test binary
//! on a real loop-mounted Btrfs, unique names, and a tree manifest that
//! captures everything a round trip must preserve.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rewind_storage::leftovers;
use rewind_storage::{PoolConfig, SandboxName, SnapshotName, Storage};

/// 8 GiB sparse image: room for the large/sparse-file tests.
pub const TEST_IMAGE_SIZE: u64 = 8 << 30;

/// A data dir for one test binary: `$REWIND_TEST_ROOT/<name>`, by default
/// `/var/tmp/rewind-test-<name>` (separate roots let two checkouts test at once).
/// Its pool is unmounted when the test binary exits.
pub fn test_dir(name: &str) -> String {
    let dir = match std::env::var("REWIND_TEST_ROOT") {
        Ok(root) => format!("{root}/{name}"),
        Err(_) => format!("/var/tmp/rewind-test-{name}"),
    };
    leftovers::release_at_exit(Path::new(&dir), leftovers::release);
    dir
}

pub fn config(dir: &str) -> PoolConfig {
    let mut cfg = PoolConfig::new(dir);
    cfg.image_size_bytes = TEST_IMAGE_SIZE;
    cfg
}

/// A sandbox name no other test or earlier run has used.
pub fn sandbox(prefix: &str) -> SandboxName {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
        .parse()
        .unwrap()
}

pub fn snap(name: &str) -> SnapshotName {
    name.parse().unwrap()
}

/// One file-system object as a round trip must preserve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub allocated_blocks: u64,
    pub mtime: Option<(i64, i64)>,
    pub content: Option<u64>,
    pub link_target: Option<String>,
    pub hardlink_group: Option<String>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

pub type Manifest = BTreeMap<String, Entry>;

/// Walks `root` (not following symlinks) and records every object.
pub fn manifest(root: &Path) -> Manifest {
    let mut out = Manifest::new();
    let mut inodes = BTreeMap::new();
    walk(root, root, &mut out, &mut inodes);
    out
}

fn walk(root: &Path, path: &Path, out: &mut Manifest, inodes: &mut BTreeMap<u64, String>) {
    let rel = path
        .strip_prefix(root)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let meta = fs::symlink_metadata(path).unwrap();
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else {
        "special"
    };
    let hardlink_group = (ft.is_file() && meta.nlink() > 1).then(|| {
        inodes
            .entry(meta.ino())
            .or_insert_with(|| rel.clone())
            .clone()
    });
    let entry = Entry {
        kind,
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        size: if ft.is_dir() { 0 } else { meta.size() },
        allocated_blocks: if ft.is_file() { meta.blocks() } else { 0 },
        mtime: (!rel.is_empty() && !ft.is_dir()).then(|| (meta.mtime(), meta.mtime_nsec())),
        content: ft.is_file().then(|| hash_file(path)),
        link_target: ft
            .is_symlink()
            .then(|| fs::read_link(path).unwrap().to_string_lossy().into_owned()),
        hardlink_group,
        xattrs: xattrs(path),
    };
    out.insert(rel, entry);
    if ft.is_dir() {
        let mut children: Vec<_> = fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        children.sort();
        for child in children {
            walk(root, &child, out, inodes);
        }
    }
}

/// Hash of the file's data extents and their offsets (via SEEK_DATA /
/// SEEK_HOLE), so holes are compared as holes and never read.
fn hash_file(path: &Path) -> u64 {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut file = fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as i64;
    let mut h = DefaultHasher::new();
    let mut pos = 0i64;
    while pos < len {
        // SAFETY: plain lseek on an open fd.
        let data = unsafe { libc::lseek(file.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: plain lseek on an open fd.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), data, libc::SEEK_HOLE) };
        file.seek(SeekFrom::Start(data as u64)).unwrap();
        let mut buf = Vec::new();
        (&mut file)
            .take((hole - data) as u64)
            .read_to_end(&mut buf)
            .unwrap();
        (data, hole).hash(&mut h);
        fast_hash(&buf).hash(&mut h);
        pos = hole;
    }
    h.finish()
}

fn fast_hash(buf: &[u8]) -> u64 {
    buf.chunks(8).fold(0xcbf2_9ce4_8422_2325u64, |acc, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        (acc ^ u64::from_le_bytes(w)).wrapping_mul(0x100_0000_01b3)
    })
}

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: `c` is a valid C string and `names` a writable buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        n >= 0,
        "llistxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    names.truncate(n as usize);
    let mut out = BTreeMap::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).unwrap();
        let mut value = vec![0u8; 4096];
        // SAFETY: valid C strings and a writable buffer of the given length.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert!(len >= 0, "lgetxattr {}", path.display());
        value.truncate(len as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), value);
    }
    out
}

pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a readable buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "lsetxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Deterministic pseudo-random bytes (xorshift), so content differs per seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Fills `root` with every kind of object a workspace can hold.
pub fn populate(root: &Path, large_bytes: usize) {
    fs::write(root.join("plain.txt"), b"hello rewind\n").unwrap();
    fs::set_permissions(root.join("plain.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(root.join("setuid-tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("setuid-tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::lchown(root.join("plain.txt"), Some(1234), Some(5678)).unwrap();
    fs::create_dir_all(root.join("dir/empty")).unwrap();
    fs::create_dir(root.join("private")).unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(root.join("dir/nested.bin"), noise(10_000, 7)).unwrap();
    symlink("../plain.txt", root.join("dir/link")).unwrap();
    symlink("/nonexistent/dangling", root.join("dangling")).unwrap();
    std::os::unix::fs::lchown(root.join("dangling"), Some(42), Some(43)).unwrap();
    fs::hard_link(root.join("dir/nested.bin"), root.join("hardlink.bin")).unwrap();
    set_xattr(&root.join("plain.txt"), "user.rewind.test", b"value-1");
    set_xattr(&root.join("dir"), "user.dir.attr", b"");
    set_xattr(
        &root.join("dir/nested.bin"),
        "trusted.secret",
        b"\x00\x01binary",
    );
    let mut sparse = fs::File::create(root.join("sparse.img")).unwrap();
    sparse.seek(SeekFrom::Start(1 << 30)).unwrap();
    sparse.write_all(b"end of a 1 GiB sparse file").unwrap();
    fs::write(root.join("large.bin"), noise(large_bytes, 99)).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
}

/// Changes every kind of object `populate` made.
pub fn mutate(root: &Path) {
    fs::write(root.join("plain.txt"), b"changed\n").unwrap();
    fs::set_permissions(root.join("setuid-tool"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::lchown(root.join("dir/nested.bin"), Some(1), Some(1)).unwrap();
    fs::remove_dir(root.join("dir/empty")).unwrap();
    fs::remove_file(root.join("dir/link")).unwrap();
    symlink("elsewhere", root.join("dir/link")).unwrap();
    fs::remove_file(root.join("hardlink.bin")).unwrap();
    fs::write(root.join("hardlink.bin"), b"no longer a link").unwrap();
    set_xattr(&root.join("plain.txt"), "user.rewind.test", b"value-2");
    let mut sparse = fs::OpenOptions::new()
        .write(true)
        .open(root.join("sparse.img"))
        .unwrap();
    sparse.seek(SeekFrom::Start(4096)).unwrap();
    sparse.write_all(&noise(1 << 20, 3)).unwrap();
    let mut large = fs::OpenOptions::new()
        .write(true)
        .open(root.join("large.bin"))
        .unwrap();
    large.seek(SeekFrom::Start(12345)).unwrap();
    large.write_all(b"corrupted").unwrap();
    fs::write(root.join("new-file"), b"added after the snapshot").unwrap();
    fs::remove_file(root.join("fifo")).unwrap();
}

/// Mount points equal to `path` in this mount namespace.
pub fn mount_count(path: &Path) -> usize {
    let path = path.to_string_lossy();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(&*path))
        .count()
}

/// Runs `op` on `sb` in a child of this test binary (its `#[ignore]`d test
/// `child_test`, which reads `REWIND_CRASH_OP` / `REWIND_CRASH_SANDBOX`)
/// that must die (SIGABRT) at `failpoint`.
pub fn crash_in_child(child_test: &str, op: &str, sb: &SandboxName, failpoint: &str) {
    use std::os::unix::process::ExitStatusExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            child_test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("REWIND_CRASH_OP", op)
        .env("REWIND_CRASH_SANDBOX", sb.as_ref())
        .env(rewind_storage::failpoint::FAILPOINT_ENV, failpoint)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "child for {failpoint} did not abort there: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// After the background worker has run: an empty trash and no hidden
/// (half-made) sandbox dirs in the pool.
pub fn assert_no_trash_or_hidden(s: &Storage) {
    s.flush_background();
    let pool = s.pool_path();
    let trash: Vec<_> = fs::read_dir(pool.join("trash")).unwrap().collect();
    assert!(trash.is_empty(), "trash not empty: {trash:?}");
    let hidden: Vec<_> = fs::read_dir(pool.join("sandboxes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "temporaries left: {hidden:?}");
}

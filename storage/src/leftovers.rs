//! What a data dir leaves on the host once nothing uses it: mounts below it
//! (the loop-mounted pool, bind mounts of sandboxes) and loop devices whose
//! backing file lies below it. The tests release them when they end and
//! `scripts/test.sh` checks that none is left.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use nix::mount::{umount2, MntFlags};

/// Mounts and loop devices that belong to one directory tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// Mount points below the directory, deepest first.
    pub mounts: Vec<PathBuf>,
    /// Loop devices (`/dev/loopN`) backed by a file below the directory.
    pub loops: Vec<PathBuf>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty() && self.loops.is_empty()
    }
}

/// The mounts and loop devices of `dir` right now.
pub fn find(dir: &Path) -> Leftovers {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts = mounts_below(&mountinfo, dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts.dedup();
    Leftovers {
        mounts,
        loops: loops_backed_under(dir),
    }
}

/// Unmount everything below `dir`, deepest first (lazily, so a busy mount
/// goes as soon as its last user does; the pool's loop device has
/// autoclear and is released with it). Returns what is still there.
pub fn release(dir: &Path) -> Leftovers {
    for mount in find(dir).mounts {
        if let Err(e) = umount2(&mount, MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %mount.display(), error = %e, "cannot unmount");
        }
    }
    find(dir)
}

/// How to release one directory (e.g. [`release`], or a caller's function
/// that stops processes first).
pub type Release = fn(&Path) -> Leftovers;

static AT_EXIT: Mutex<Vec<(PathBuf, Release)>> = Mutex::new(Vec::new());

/// Run `release(dir)` when this process exits, whatever happened before (a
/// test's panic included); a mount still there then is printed as
/// `LEFTOVER`. (Loop devices go only after the process that holds the
/// pool's files has exited.)
pub fn release_at_exit(dir: &Path, release: Release) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function without arguments;
        // it catches every panic itself (on a thread of its own).
        let rc = unsafe { libc::atexit(release_all) };
        assert_eq!(rc, 0, "atexit");
    });
    let mut dirs = AT_EXIT.lock().unwrap_or_else(|p| p.into_inner());
    if !dirs.iter().any(|(d, _)| d == dir) {
        dirs.push((dir.to_owned(), release));
    }
}

extern "C" fn release_all() {
    // A thread of its own: the main thread's thread-locals are already gone
    // while `atexit` handlers run, and a panic must not cross this frame.
    let worker = std::thread::spawn(|| {
        let dirs = AT_EXIT.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (dir, release) in dirs {
            let left = release(&dir).mounts;
            if !left.is_empty() {
                eprintln!("LEFTOVER after the tests in {}: {left:?}", dir.display());
            }
        }
    });
    let _ = worker.join();
}

/// Mount points (field 5) of a `/proc/<pid>/mountinfo` text that are `dir`
/// or below it. Compared as mountinfo writes paths, with octal escapes for
/// space, tab, newline and backslash; what follows `dir` is a sandbox or
/// snapshot name, which never needs one.
fn mounts_below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let escaped: String = dir
        .to_string_lossy()
        .chars()
        .map(|c| match c {
            ' ' | '\t' | '\n' | '\\' => format!("\\{:03o}", c as u32),
            c => c.to_string(),
        })
        .collect();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter_map(|point| match point.strip_prefix(escaped.as_str())? {
            "" => Some(dir.to_owned()),
            rest => Some(dir.join(rest.strip_prefix('/')?)),
        })
        .collect()
}

/// Loop devices whose backing file (`/sys/block/loopN/loop/backing_file`,
/// which ends in ` (deleted)` once the file is gone) lies below `dir`.
fn loops_backed_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut loops: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter(|e| {
            fs::read_to_string(e.path().join("loop/backing_file")).is_ok_and(|backing| {
                let backing = backing.trim_end().trim_end_matches(" (deleted)");
                Path::new(backing).starts_with(dir)
            })
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect();
    loops.sort();
    loops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_below_matches_escaped_paths_and_only_below() {
        let text = "36 35 98:0 / /mnt/a\\040b rw - btrfs /dev/loop0 rw\n\
                    37 35 98:0 / /mnt/a\\040b/pool rw - btrfs /dev/loop1 rw\n\
                    38 35 98:0 / /mnt/a\\040bc rw - btrfs /dev/loop2 rw\n";

        let found = mounts_below(text, Path::new("/mnt/a b"));

        assert_eq!(
            found,
            vec![PathBuf::from("/mnt/a b"), PathBuf::from("/mnt/a b/pool")]
        );
    }

    #[test]
    fn find_of_a_fresh_dir_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find(dir.path()), Leftovers::default());
    }
}

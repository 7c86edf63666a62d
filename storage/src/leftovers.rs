//! What a data dir leaves on the host once nothing uses it: mounts below it
//! (the loop-mounted pool, bind mounts of sandboxes) and loop devices whose
//! backing file lies below it. The tests release them when they end and
//! `scripts/test.sh` checks that none is left.

use std::fs;
use std::path::{Path, PathBuf};

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
    let mut mounts: Vec<PathBuf> = mount_points(&mountinfo)
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
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

/// Mount points of a `/proc/<pid>/mountinfo` text (field 5, octal escapes
/// such as `\040` for a space decoded).
fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn mount_points_decodes_octal_escapes() {
        let text = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - btrfs /dev/loop0 rw\n\
                    37 35 98:0 /x /var/tmp/t/pool rw - btrfs /dev/loop1 rw\n";
        assert_eq!(
            mount_points(text),
            vec![PathBuf::from("/mnt/a b"), PathBuf::from("/var/tmp/t/pool")]
        );
    }

    #[test]
    fn find_of_a_fresh_dir_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find(dir.path()), Leftovers::default());
    }
}

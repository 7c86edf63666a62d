//! What changed between two snapshots of a sandbox, computed by the
//! kernel's incremental send without file data (see `send_stream.rs`).
//! Read-only: no commit point, nothing to recover.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::StorageError;
use crate::names::{SandboxName, SnapshotName};
use crate::send_stream::{self, RawChange};
use crate::storage::Storage;

impl Storage {
    /// Paths (relative to the workspace root) added, modified or deleted
    /// from snapshot `from` to snapshot `to` of `sb`. The cost follows the
    /// size of the change: Btrfs compares the two trees and skips every
    /// block they share.
    pub fn diff(
        &self,
        sb: &SandboxName,
        from: &SnapshotName,
        to: &SnapshotName,
    ) -> Result<Vec<RawChange>, StorageError> {
        let (old, new) = (self.layout().snap(sb, from), self.layout().snap(sb, to));
        for (path, name) in [(&old, from), (&new, to)] {
            if !path.is_dir() {
                return Err(StorageError::not_found("snapshot", name));
            }
        }
        let stream = send_no_data(&old, &new)?;
        send_stream::changes(&stream).map_err(|source| StorageError::SendStream {
            from: old,
            to: new,
            source,
        })
    }
}

/// `btrfs send --no-data -p old new`, collected.
fn send_no_data(old: &Path, new: &Path) -> Result<Vec<u8>, StorageError> {
    let output = Command::new(btrfs_binary())
        .args(["send", "--no-data", "-q", "-p"])
        .arg(old)
        .arg(new)
        .output()
        .map_err(|e| StorageError::io("run btrfs send for", new, e))?;
    if !output.status.success() {
        return Err(StorageError::Send {
            from: old.to_owned(),
            to: new.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output.stdout)
}

/// `btrfs` from btrfs-progs: on `PATH`, else the usual sbin/bin dirs.
fn btrfs_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join("btrfs"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("btrfs"))
}

//! delete_snapshot, delete_sandbox and retention pruning. Each is one
//! rename into the trash; the background worker deletes the subvolumes.

use std::fs;
use std::io;

use crate::btrfs;
use crate::error::StorageError;
use crate::failpoint;
use crate::names::{SandboxName, SnapshotName};
use crate::ops::SnapshotKind;
use crate::storage::Storage;

impl Storage {
    /// Deletes one snapshot with its state snapshot, aux dir and marker.
    pub fn delete_snapshot(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
    ) -> Result<(), StorageError> {
        let _guard = self.lock_existing(sb)?;
        if !self.layout().snap(sb, name).exists() {
            return Err(StorageError::not_found("snapshot", name));
        }
        self.delete_snapshot_locked(sb, name)
    }

    /// The workspace snapshot goes first (the commit point); recovery
    /// removes leftover parts of a snapshot whose workspace snapshot is gone.
    /// Read-only subvolumes cannot be moved to another directory (EROFS), so
    /// they are deleted in place: the ioctl unlinks them atomically and the
    /// kernel's cleaner thread frees their extents in the background.
    pub(crate) fn delete_snapshot_locked(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
    ) -> Result<(), StorageError> {
        delete_if_exists(&self.layout().snap(sb, name))?;
        failpoint::hit("delete_snapshot:after_snapshot");
        self.remove_snapshot_parts(sb, name)?;
        tracing::debug!(sandbox = %sb, snapshot = %name, "snapshot deleted");
        Ok(())
    }

    /// Removes a snapshot's state snapshot, aux dir and kept marker.
    pub(crate) fn remove_snapshot_parts(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
    ) -> Result<(), StorageError> {
        let l = self.layout();
        delete_if_exists(&l.snap_state(sb, name))?;
        failpoint::hit("delete_snapshot:after_state");
        self.trash(&l.aux(sb, name), &format!("{sb}-aux-{name}"))?;
        let marker = l.kept_marker(sb, name);
        match fs::remove_file(&marker) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StorageError::io("remove", &marker, e))
            }
            _ => Ok(()),
        }
    }

    /// Deletes the sandbox: one rename of its directory into the trash,
    /// then background deletion of every subvolume in it.
    pub fn delete_sandbox(&self, sb: &SandboxName) -> Result<(), StorageError> {
        let _guard = self.lock_existing(sb)?;
        self.trash(&self.layout().sandbox(sb), &format!("sandbox-{sb}"))?;
        failpoint::hit("delete:after_rename");
        tracing::info!(sandbox = %sb, "sandbox deleted");
        Ok(())
    }

    /// Cheap pre-check (one readdir) for whether pruning might be needed.
    pub(crate) fn auto_count_exceeded(&self, sb: &SandboxName) -> bool {
        let snaps = self.layout().sandbox(sb).join(crate::layout::SNAPS);
        fs::read_dir(snaps).is_ok_and(|d| d.count() > self.inner.cfg.max_auto_snapshots)
    }

    /// Deletes the oldest automatic snapshots beyond the configured limit.
    pub(crate) fn prune(&self, sb: &SandboxName) -> Result<(), StorageError> {
        let _guard = match self.lock_existing(sb) {
            Err(StorageError::NotFound { .. }) => return Ok(()),
            other => other?,
        };
        let autos: Vec<_> = self
            .list_snapshots_locked(sb, false)?
            .into_iter()
            .filter(|s| s.kind == SnapshotKind::Auto)
            .collect();
        let excess = autos
            .len()
            .saturating_sub(self.inner.cfg.max_auto_snapshots);
        for info in &autos[..excess] {
            let name = SnapshotName::try_from(info.name.as_str())?;
            self.delete_snapshot_locked(sb, &name)?;
        }
        if excess > 0 {
            tracing::info!(sandbox = %sb, pruned = excess, "pruned automatic snapshots");
        }
        Ok(())
    }
}

/// Deletes the subvolume at `path` if there is one.
pub(crate) fn delete_if_exists(path: &std::path::Path) -> Result<(), StorageError> {
    match btrfs::delete_subvolume(path) {
        Err(StorageError::Btrfs { source, .. }) if source.errno() == libc::ENOENT => Ok(()),
        other => other,
    }
}

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
    /// Deletes one snapshot with its state snapshot, aux dir and marker,
    /// hot or cold. One that cold snapshots depend on is kept, unlisted, as
    /// their base (`ops/cold.rs`) until they are gone.
    pub fn delete_snapshot(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
    ) -> Result<(), StorageError> {
        // Before the lock (the order thinning uses): no archive is being
        // sent, so the kernel does not refuse to delete a snapshot in use.
        let _gate = self.archive_gate();
        let _guard = self.lock_existing(sb)?;
        if self.layout().snap(sb, name).exists() {
            return self.remove_hot(sb, name);
        }
        if self.layout().cold(sb, name).is_dir() {
            return self.remove_cold(sb, name);
        }
        Err(StorageError::not_found("snapshot", name))
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
        let _gate = self.archive_gate();
        let _guard = self.lock_existing(sb)?;
        self.trash(&self.layout().sandbox(sb), &format!("sandbox-{sb}"))?;
        failpoint::hit("delete:after_rename");
        tracing::info!(sandbox = %sb, "sandbox deleted");
        Ok(())
    }

    /// Cheap pre-check (one readdir) for whether thinning might have work:
    /// more snapshots than the newest `keep_recent` automatic ones.
    pub(crate) fn may_need_thinning(&self, sb: &SandboxName) -> bool {
        let snaps = self.layout().sandbox(sb).join(crate::layout::SNAPS);
        let recent = self
            .inner
            .cfg
            .keep_recent
            .min(self.inner.cfg.max_auto_snapshots);
        fs::read_dir(snaps).is_ok_and(|d| d.count() > recent)
    }

    /// Thins the automatic snapshots of `sb` (see [`crate::Thinning`]).
    /// The plan is made from a listing taken without the sandbox's lock
    /// (a stale listing only ever thins a subset of what a fresh one
    /// would); each deletion then takes the lock for itself alone and
    /// re-checks that the snapshot is still automatic, so a run waits for
    /// at most one subvolume deletion.
    pub(crate) fn prune(&self, sb: &SandboxName) -> Result<(), StorageError> {
        if !self.sandbox_exists(sb) {
            return Ok(());
        }
        let doomed: Vec<SnapshotName> = match self.list_snapshots_locked(sb, false) {
            Err(StorageError::Io { .. }) if !self.sandbox_exists(sb) => return Ok(()),
            listed => listed?,
        }
        .into_iter()
        .filter(|s| s.kind == SnapshotKind::Auto && s.retention.is_none())
        .map(|s| SnapshotName::try_from(s.name.as_str()))
        .collect::<Result<_, _>>()?;
        let mut thinned = 0;
        for name in &doomed {
            thinned += usize::from(self.thin_one(sb, name)?);
        }
        if thinned > 0 {
            tracing::debug!(sandbox = %sb, thinned, "thinned automatic snapshots");
        }
        Ok(())
    }

    /// Thins one automatic snapshot if it is still there and still not
    /// kept: archives it to the cold tier when that is on, else deletes it
    /// (kept as a hidden base if cold snapshots depend on it); false when
    /// it was spared.
    fn thin_one(&self, sb: &SandboxName, name: &SnapshotName) -> Result<bool, StorageError> {
        if self.inner.cfg.cold_history {
            return self.archive_thinned(sb, name);
        }
        let _gate = self.archive_gate();
        let _guard = match self.lock_existing(sb) {
            Err(StorageError::NotFound { .. }) => return Ok(false),
            other => other?,
        };
        let l = self.layout();
        if !l.snap(sb, name).exists() || l.kept_marker(sb, name).exists() {
            return Ok(false);
        }
        self.remove_hot(sb, name)?;
        Ok(true)
    }
}

/// Deletes the subvolume at `path` if there is one.
pub(crate) fn delete_if_exists(path: &std::path::Path) -> Result<(), StorageError> {
    match btrfs::delete_subvolume(path) {
        Err(StorageError::Btrfs { source, .. }) if source.errno() == libc::ENOENT => Ok(()),
        other => other,
    }
}

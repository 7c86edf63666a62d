//! snapshot, snapshot_with_state, pin and snapshot_aux_dir.

use std::fs::{self, File};
use std::io;
use std::path::PathBuf;

use crate::background::Job;
use crate::btrfs;
use crate::error::StorageError;
use crate::failpoint;
use crate::names::{SandboxName, SnapshotName};
use crate::ops::{SnapshotInfo, SnapshotKind};
use crate::storage::Storage;

impl Storage {
    /// Takes a read-only O(1) snapshot of the live workspace. For `Auto`
    /// snapshots, thinning runs in the background afterwards.
    pub fn snapshot(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
        kind: SnapshotKind,
    ) -> Result<SnapshotInfo, StorageError> {
        self.take_snapshot(sb, name, kind, false)
    }

    /// Like [`Storage::snapshot`], and also snapshots the state dir;
    /// restoring such a snapshot restores the state dir too.
    pub fn snapshot_with_state(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
        kind: SnapshotKind,
    ) -> Result<SnapshotInfo, StorageError> {
        self.take_snapshot(sb, name, kind, true)
    }

    /// Steps: kept marker, state snapshot, workspace snapshot. The workspace
    /// snapshot is the commit point; recovery removes markers and state
    /// snapshots that have no workspace snapshot.
    fn take_snapshot(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
        kind: SnapshotKind,
        with_state: bool,
    ) -> Result<SnapshotInfo, StorageError> {
        let guard = self.lock_existing(sb)?;
        let l = self.layout();
        let snap = l.snap(sb, name);
        if snap.exists() || l.cold(sb, name).exists() {
            return Err(StorageError::exists("snapshot", name));
        }
        if let Err(e) = self.snapshot_steps(sb, name, kind, with_state) {
            self.remove_snapshot_parts(sb, name)?;
            return Err(e);
        }
        let info = self.info_of(sb, name, kind, with_state);
        let prune = kind == SnapshotKind::Auto && self.may_need_thinning(sb);
        drop(guard);
        tracing::debug!(sandbox = %sb, snapshot = %name, ?kind, with_state, "snapshot taken");
        if prune {
            let (owner, sb) = (std::sync::Arc::downgrade(&self.inner), sb.clone());
            // Weak: a queued prune never keeps a dropped `Storage` alive.
            self.submit(Job::Run(Box::new(move || {
                let Some(inner) = owner.upgrade() else { return };
                if let Err(e) = (Storage { inner }).prune(&sb) {
                    tracing::warn!(sandbox = %sb, error = %e, "pruning automatic snapshots failed");
                }
            })));
        }
        info
    }

    fn snapshot_steps(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
        kind: SnapshotKind,
        with_state: bool,
    ) -> Result<(), StorageError> {
        let l = self.layout();
        let group = self.disk_group(&l.sandbox(sb))?;
        if kind == SnapshotKind::Kept {
            let marker = l.kept_marker(sb, name);
            File::create(&marker).map_err(|e| StorageError::io("create", &marker, e))?;
        }
        failpoint::hit("snapshot:after_marker");
        if with_state {
            let dst = l.snap_state(sb, name);
            crate::ops::delete::delete_if_exists(&dst)?;
            btrfs::snapshot(&l.state(sb), &dst, true, group)?;
        }
        failpoint::hit("snapshot:after_state");
        btrfs::snapshot(&l.live(sb), &l.snap(sb, name), true, group).map_err(|e| match &e {
            StorageError::Btrfs { source, .. } if source.errno() == libc::EEXIST => {
                StorageError::exists("snapshot", name)
            }
            _ => e,
        })?;
        failpoint::hit("snapshot:after_snapshot");
        Ok(())
    }

    /// Marks an automatic snapshot as kept (never pruned). Pinning a kept
    /// snapshot is a no-op.
    pub fn pin(&self, sb: &SandboxName, name: &SnapshotName) -> Result<(), StorageError> {
        let _guard = self.lock_existing(sb)?;
        let l = self.layout();
        if !l.snap(sb, name).exists() {
            return Err(StorageError::not_found("snapshot", name));
        }
        let marker = l.kept_marker(sb, name);
        File::create(&marker).map_err(|e| StorageError::io("create", &marker, e))?;
        Ok(())
    }

    /// A writable directory that belongs to snapshot `name` (e.g. for a VM
    /// memory snapshot); created on demand, deleted with the snapshot.
    pub fn snapshot_aux_dir(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
    ) -> Result<PathBuf, StorageError> {
        let _guard = self.lock_existing(sb)?;
        let l = self.layout();
        if !l.snap(sb, name).exists() {
            return Err(StorageError::not_found("snapshot", name));
        }
        let aux = l.aux(sb, name);
        match fs::create_dir(&aux) {
            Ok(()) => Ok(aux),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(aux),
            Err(e) => Err(StorageError::io("create", &aux, e)),
        }
    }
}

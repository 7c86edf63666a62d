//! create_workspace: a new sandbox directory, built under a temporary name
//! and renamed into place in one step.

use std::fs;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};

use crate::btrfs;
use crate::error::StorageError;
use crate::failpoint;
use crate::layout::{self, Layout};
use crate::names::SandboxName;
use crate::ops::CreateOptions;
use crate::quota::{self, QuotaMode};
use crate::storage::Storage;

impl Storage {
    /// Creates sandbox `sb` with an empty (or template-seeded) workspace and
    /// an empty state dir; returns the live workspace path.
    pub fn create_workspace(
        &self,
        sb: &SandboxName,
        opts: &CreateOptions,
    ) -> Result<PathBuf, StorageError> {
        let _guard = self.lock(sb);
        let layout = self.layout();
        let final_dir = layout.sandbox(sb);
        if final_dir.exists() {
            return Err(StorageError::exists("sandbox", sb));
        }
        if let Some(t) = &opts.template {
            if !layout.template(t).is_dir() {
                return Err(StorageError::not_found("template", t));
            }
        }
        if let Some((src, snap)) = &opts.fork_from {
            if !layout.snap(src, snap).is_dir() {
                return Err(StorageError::not_found("snapshot", snap));
            }
        }
        let tmp = layout.creating(sb);
        if let Err(e) = self.build(&tmp, opts) {
            self.trash(&tmp, "create-failed")?;
            return Err(e);
        }
        if let Err(e) = btrfs::rename_noreplace(&tmp, &final_dir) {
            self.trash(&tmp, "create-failed")?;
            return Err(match e.raw_os_error() {
                Some(libc::EEXIST | libc::ENOTEMPTY) => StorageError::exists("sandbox", sb),
                _ => btrfs::rename_err(&tmp, &final_dir, e),
            });
        }
        failpoint::hit("create:after_rename");
        tracing::info!(sandbox = %sb, template = ?opts.template, "created workspace");
        Ok(layout.live(sb))
    }
}

impl Storage {
    /// Builds the complete sandbox directory at `dir`.
    fn build(&self, dir: &Path, opts: &CreateOptions) -> Result<(), StorageError> {
        fs::create_dir(dir).map_err(|e| StorageError::io("create", dir, e))?;
        failpoint::hit("create:after_mkdir");
        let group = self.new_disk_group(dir, opts.disk_limit_bytes)?;
        build_subvolumes(self.layout(), dir, opts, group)
    }

    /// With a limit and quotas on: a new qgroup limited to `limit` bytes,
    /// recorded in `dir/qgroup` before any subvolume joins it.
    fn new_disk_group(&self, dir: &Path, limit: Option<u64>) -> Result<Option<u64>, StorageError> {
        let Some(limit) = limit.filter(|_| self.quota_mode() != QuotaMode::Off) else {
            return Ok(None);
        };
        let pool = self.pool_path();
        let group = quota::create_group(pool)?;
        quota::set_limit(pool, group, limit)?;
        let path = dir.join(layout::QGROUP_FILE);
        fs::write(&path, group.to_string()).map_err(|e| StorageError::io("write", &path, e))?;
        Ok(Some(group))
    }
}

/// The workspace and state subvolumes and the fixed directories.
fn build_subvolumes(
    layout: &Layout,
    dir: &Path,
    opts: &CreateOptions,
    group: Option<u64>,
) -> Result<(), StorageError> {
    let live = dir.join(layout::LIVE);
    match (&opts.fork_from, &opts.template) {
        _ if opts.import.is_some() => {
            let received = opts.import.as_ref().expect("checked");
            btrfs::snapshot(received.subvolume(), &live, false, group)?
        }
        (Some((src, snap)), _) => btrfs::snapshot(&layout.snap(src, snap), &live, false, group)?,
        (None, Some(t)) => btrfs::snapshot(&layout.template(t), &live, false, group)?,
        (None, None) => btrfs::create_subvolume(&live, group)?,
    }
    if let Some((uid, gid)) = opts.owner {
        chown(&live, Some(uid), Some(gid)).map_err(|e| StorageError::io("chown", &live, e))?;
    }
    failpoint::hit("create:after_live");
    let state = dir.join(layout::STATE);
    match &opts.fork_from {
        Some((src, snap)) if layout.snap_state(src, snap).is_dir() => {
            btrfs::snapshot(&layout.snap_state(src, snap), &state, false, group)?
        }
        _ => btrfs::create_subvolume(&state, group)?,
    }
    for sub in [layout::SNAPS, layout::SNAPSTATE, layout::KEPT, layout::AUX] {
        let path = dir.join(sub);
        fs::create_dir(&path).map_err(|e| StorageError::io("create", &path, e))?;
    }
    if let Some(t) = &opts.template {
        let path = dir.join(layout::TEMPLATE_FILE);
        fs::write(&path, t.as_ref()).map_err(|e| StorageError::io("write", &path, e))?;
    }
    failpoint::hit("create:after_layout");
    Ok(())
}

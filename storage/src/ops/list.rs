//! Read-only queries: paths, existence, listings, snapshot info and sizes.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::btrfs;
use crate::error::StorageError;
use crate::layout;
use crate::names::{SandboxName, SnapshotName};
use crate::ops::cold::ColdMeta;
use crate::ops::{SnapshotInfo, SnapshotKind, Tier};
use crate::qgroup::{self, Sizes};
use crate::storage::Storage;
use crate::thinning::Retention;

impl Storage {
    /// The live workspace subvolume of `sb` (whether or not it exists).
    pub fn workspace_path(&self, sb: &SandboxName) -> PathBuf {
        self.layout().live(sb)
    }

    /// The writable per-sandbox runtime-state subvolume of `sb`.
    pub fn state_dir(&self, sb: &SandboxName) -> PathBuf {
        self.layout().state(sb)
    }

    /// The read-only workspace snapshot `name` of `sb` (whether or not it exists).
    pub fn snapshot_path(&self, sb: &SandboxName, name: &SnapshotName) -> PathBuf {
        self.layout().snap(sb, name)
    }

    /// Where [`Storage::snapshot_aux_dir`] puts snapshot `name`'s writable
    /// directory (a path only; it may not exist yet).
    pub fn snapshot_aux_path(&self, sb: &SandboxName, name: &SnapshotName) -> PathBuf {
        self.layout().aux(sb, name)
    }

    pub fn sandbox_exists(&self, sb: &SandboxName) -> bool {
        self.layout().sandbox(sb).is_dir()
    }

    /// All sandboxes, sorted by name. Half-created ones are not listed.
    pub fn list_sandboxes(&self) -> Result<Vec<SandboxName>, StorageError> {
        let dir = self.layout().sandboxes();
        let mut names: Vec<SandboxName> = fs::read_dir(&dir)
            .map_err(|e| StorageError::io("read", &dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| SandboxName::try_from(e.file_name().to_str()?).ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Snapshots of `sb`, oldest first.
    pub fn list_snapshots(&self, sb: &SandboxName) -> Result<Vec<SnapshotInfo>, StorageError> {
        let _guard = self.lock_existing(sb)?;
        self.list_snapshots_locked(sb, true)
    }

    pub(crate) fn list_snapshots_locked(
        &self,
        sb: &SandboxName,
        with_sizes: bool,
    ) -> Result<Vec<SnapshotInfo>, StorageError> {
        let dir = self.layout().sandbox(sb).join(layout::SNAPS);
        let sizes = if with_sizes { self.all_sizes()? } else { None };
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StorageError::io("read", &dir, e))? {
            let entry = entry.map_err(|e| StorageError::io("read", &dir, e))?;
            let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| SnapshotName::try_from(n).ok())
            else {
                continue;
            };
            let meta = btrfs::subvolume_meta(&entry.path())?;
            let info = self.describe(
                sb,
                &name,
                meta.created,
                sizes.as_ref().and_then(|m| m.get(&meta.id).copied()),
            );
            found.push((meta.otransid, info));
        }
        found.extend(self.cold_infos(sb)?);
        found.sort_by(|a, b| (a.0, a.1.created, &a.1.name).cmp(&(b.0, b.1.created, &b.1.name)));
        let mut infos: Vec<SnapshotInfo> = found.into_iter().map(|(_, info)| info).collect();
        self.mark_retention(&mut infos);
        Ok(infos)
    }

    /// The listed cold snapshots of `sb`, with their creation transaction.
    /// One still hot too (its hot copy could not be deleted yet, e.g.
    /// while it was being exported) is listed once, as hot.
    fn cold_infos(&self, sb: &SandboxName) -> Result<Vec<(u64, SnapshotInfo)>, StorageError> {
        let entries = crate::ops::cold::entries(&self.layout().cold_dir(sb))?;
        let snaps = self.layout().sandbox(sb).join(layout::SNAPS);
        Ok(entries
            .into_iter()
            .filter(|e| !e.hidden && !snaps.join(&e.meta.name).exists())
            .map(|e| (e.meta.otransid, cold_info(e.meta)))
            .collect())
    }

    /// Fills in why each hot automatic snapshot is kept, per the thinning plan.
    fn mark_retention(&self, infos: &mut [SnapshotInfo]) {
        let autos: Vec<&mut SnapshotInfo> = infos
            .iter_mut()
            .filter(|i| i.kind == SnapshotKind::Auto && i.tier == Tier::Hot)
            .collect();
        let created: Vec<_> = autos.iter().map(|i| i.created).collect();
        let plan = self.thinning().plan(&created);
        for (info, retention) in autos.into_iter().zip(plan) {
            info.retention = retention;
        }
    }

    /// One snapshot of `sb`.
    pub fn snapshot_info(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
    ) -> Result<SnapshotInfo, StorageError> {
        let _guard = self.lock_existing(sb)?;
        let path = self.layout().snap(sb, name);
        if !path.exists() {
            return match self.cold_entry(sb, name)? {
                Some(entry) => Ok(cold_info(entry.meta)),
                None => Err(StorageError::not_found("snapshot", name)),
            };
        }
        let meta = btrfs::subvolume_meta(&path)?;
        let sizes = self.sizes_of(meta.id)?;
        let info = self.describe(sb, name, meta.created, sizes);
        if info.kind == SnapshotKind::Kept {
            return Ok(info);
        }
        let listed = self.list_snapshots_locked(sb, false)?;
        let retention = listed.into_iter().find(|i| i.name == info.name);
        Ok(SnapshotInfo {
            retention: retention.and_then(|i| i.retention),
            ..info
        })
    }

    /// Info for a snapshot just taken, without another directory scan.
    pub(crate) fn info_of(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
        kind: SnapshotKind,
        has_state: bool,
    ) -> Result<SnapshotInfo, StorageError> {
        let meta = btrfs::subvolume_meta(&self.layout().snap(sb, name))?;
        Ok(SnapshotInfo {
            name: name.to_string(),
            created: meta.created,
            kind,
            has_state,
            // The newest snapshot: kept as recent until thinning says otherwise.
            retention: Some(match kind {
                SnapshotKind::Kept => Retention::Kept,
                SnapshotKind::Auto => Retention::Recent,
            }),
            sizes: self.sizes_of(meta.id)?,
            tier: Tier::Hot,
        })
    }

    fn describe(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
        created: std::time::SystemTime,
        sizes: Option<Sizes>,
    ) -> SnapshotInfo {
        let l = self.layout();
        let kind = if l.kept_marker(sb, name).exists() {
            SnapshotKind::Kept
        } else {
            SnapshotKind::Auto
        };
        SnapshotInfo {
            name: name.to_string(),
            created,
            kind,
            has_state: l.snap_state(sb, name).exists(),
            retention: (kind == SnapshotKind::Kept).then_some(Retention::Kept),
            sizes,
            tier: Tier::Hot,
        }
    }

    fn sizes_of(&self, id: u64) -> Result<Option<Sizes>, StorageError> {
        if !self.inner.quotas {
            return Ok(None);
        }
        qgroup::read_one(self.pool_path(), id)
    }

    fn all_sizes(&self) -> Result<Option<HashMap<u64, Sizes>>, StorageError> {
        if !self.inner.quotas {
            return Ok(None);
        }
        qgroup::read_sizes(self.pool_path())
    }
}

fn cold_info(meta: ColdMeta) -> SnapshotInfo {
    SnapshotInfo {
        name: meta.name,
        created: meta.created,
        kind: SnapshotKind::Auto,
        has_state: false,
        retention: Some(Retention::Cold),
        sizes: None,
        tier: Tier::Cold,
    }
}

/// The template a sandbox directory was created from, if any.
pub(crate) fn read_template_name(sandbox_dir: &Path) -> Result<Option<SnapshotName>, StorageError> {
    let path = sandbox_dir.join(layout::TEMPLATE_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => Ok(Some(SnapshotName::try_from(s.trim())?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io("read", path, e)),
    }
}

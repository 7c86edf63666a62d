//! Snapshot listing, named snapshots (`POST /vms/:name/snapshots`) and
//! snapshot deletion.

use std::collections::HashMap;

use rewind_storage::{
    Retention, SandboxName, Sizes, SnapshotInfo, SnapshotKind, SnapshotName, Tier,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::{Db, NewSnapshot, SnapshotRow};
use crate::failpoint;
use crate::runtime::{full_snapshot, FullSnapshotError, SavedStateInfo};

/// Body of `POST /vms/:name/snapshots` (MicroVM Sandbox reference).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub include_memory: bool,
}

/// A snapshot row plus what storage knows about it.
#[derive(Debug, Clone)]
pub struct SnapshotView {
    pub row: SnapshotRow,
    pub sizes: Option<Sizes>,
    pub pinned: bool,
    /// Why history thinning keeps it (`None`: about to be thinned, or missing).
    pub retention: Option<Retention>,
    /// A memory snapshot's saved state: its size and CRIU's version.
    pub memory: Option<SavedStateInfo>,
    /// Hot (a subvolume) or cold (archived; restores more slowly).
    pub tier: Tier,
}

impl SnapshotView {
    /// The listing's `retained_because`: `initial`, `named`, `memory`,
    /// `pinned` (never thinned), `recent`, `five_minute`, `hourly`, `daily`
    /// (see `rewind_storage::Thinning`); `None` while the background worker
    /// is about to thin it (still restorable until then).
    pub fn retained_because(&self) -> Option<&'static str> {
        Some(match self.retention? {
            Retention::Kept if self.row.include_memory => "memory",
            Retention::Kept => match self.row.kind.as_str() {
                "initial" => "initial",
                "named" => "named",
                _ => "pinned",
            },
            Retention::Recent => "recent",
            Retention::FiveMinutes => "five_minute",
            Retention::Hourly => "hourly",
            Retention::Daily => "daily",
            Retention::Cold => "cold",
        })
    }
}

const MAX_DESCRIPTION: usize = 4096;

impl Sandboxes {
    pub async fn list_snapshots(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<Vec<SnapshotView>, SandboxError> {
        let row = self.find(caller, name).await?;
        let id = row.id;
        let rows = self.db.call(move |c| Db::list_snapshots(c, id)).await?;
        let sandbox = super::parse_sandbox_name(&row.name)?;
        let mut memory = self.memory_infos(&sandbox, &rows).await?;
        let infos = self.blocking(move |s| s.list_snapshots(&sandbox)).await?;
        let by_name: HashMap<_, _> = infos.into_iter().map(|i| (i.name.clone(), i)).collect();
        let views = rows
            .into_iter()
            // Rows whose subvolume was pruned by retention are gone from storage.
            .filter(|r| r.missing || by_name.contains_key(&r.name))
            .map(|row| {
                let info = by_name.get(&row.name);
                SnapshotView {
                    sizes: info.and_then(|i| i.sizes),
                    pinned: info.is_some_and(|i| i.kind == SnapshotKind::Kept),
                    retention: info.and_then(|i| i.retention),
                    memory: memory.remove(&row.name),
                    tier: info.map_or(Tier::Hot, |i| i.tier),
                    row,
                }
            })
            .collect();
        Ok(views)
    }

    /// What the runtime recorded with each memory snapshot of `rows`.
    async fn memory_infos(
        &self,
        sandbox: &SandboxName,
        rows: &[SnapshotRow],
    ) -> Result<HashMap<String, SavedStateInfo>, SandboxError> {
        let dirs: Vec<(String, std::path::PathBuf)> = rows
            .iter()
            .filter(|r| r.include_memory)
            .filter_map(|r| {
                let snap: SnapshotName = r.name.parse().ok()?;
                let dir = self.storage.snapshot_aux_path(sandbox, &snap);
                Some((r.name.clone(), dir.join(super::VM_STATE_DIR)))
            })
            .collect();
        let runtime = self.runtime.clone();
        let infos = tokio::task::spawn_blocking(move || {
            dirs.into_iter()
                .filter_map(|(name, dir)| Some((name, runtime.saved_state_info(&dir)?)))
                .collect()
        });
        Ok(infos.await?)
    }

    pub async fn create_snapshot(
        &self,
        caller: &Caller,
        name: &str,
        req: CreateSnapshot,
    ) -> Result<SnapshotView, SandboxError> {
        let snap = super::parse_snapshot_name("name", &req.name)?;
        if req.name.starts_with("cmd_")
            || req.name.starts_with("wipe_")
            || req.name == super::INITIAL
        {
            return Err(SandboxError::Invalid {
                field: "name",
                message: "`initial`, `cmd_*` and `wipe_*` are reserved for automatic snapshots"
                    .into(),
            });
        }
        if req
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DESCRIPTION)
        {
            return Err(SandboxError::Invalid {
                field: "description",
                message: format!("is longer than {MAX_DESCRIPTION} bytes"),
            });
        }
        if req.include_memory && !self.runtime.supports_memory_snapshots() {
            return Err(SandboxError::Invalid {
                field: "include_memory",
                message: format!(
                    "memory snapshots are not supported by the {} runtime; use include_memory: false",
                    self.runtime.kind().as_str()
                ),
            });
        }
        if let Some(reason) = req
            .include_memory
            .then(|| self.runtime.memory_unavailable())
            .flatten()
        {
            return Err(SandboxError::NotImplemented(format!(
                "include_memory: {reason}"
            )));
        }
        let (row, entry) = self.find_live(caller, name).await?;
        let mut live = entry.lock().await;
        let (id, key) = (row.id, snap.to_string());
        if self
            .db
            .call(move |c| Db::snapshot_by_name(c, id, &key))
            .await?
            .is_some()
        {
            return Err(SandboxError::Conflict(format!(
                "snapshot \"{snap}\" already exists"
            )));
        }
        let sandbox = super::parse_sandbox_name(&row.name)?;
        let t = std::time::Instant::now();
        let info = if req.include_memory {
            let info = self.full_snapshot(&mut live, &sandbox, &snap).await?;
            failpoint::crash("memory_snapshot:after_dump");
            info
        } else {
            self.take_snapshot(&live, snap.as_ref(), SnapshotKind::Kept)
                .await?
        };
        let taken = t.elapsed();
        let checksum = self
            .checksum(&row.name, snap.as_ref(), req.include_memory)
            .await?;
        tracing::debug!(sandbox = %row.name, snapshot = %snap, taken_ms = taken.as_millis() as u64, checksum_ms = (t.elapsed() - taken).as_millis() as u64, "named snapshot taken");
        let new = NewSnapshot {
            name: snap.to_string(),
            kind: "named",
            description: req.description,
            include_memory: req.include_memory,
            checksum: Some(checksum),
            created_ms: Some(super::system_ms(info.created)),
            ..Default::default()
        };
        let saved = self
            .db
            .call(move |c| Db::insert_snapshot(c, id, &new))
            .await?;
        let created = crate::events::EventKind::SnapshotCreated {
            snapshot: saved.name.clone(),
        };
        self.publish_snapshot(row.owner_key_id, &row.name, created);
        let mut memory = self
            .memory_infos(&sandbox, std::slice::from_ref(&saved))
            .await?;
        Ok(SnapshotView {
            memory: memory.remove(&saved.name),
            row: saved,
            sizes: info.sizes,
            pinned: true,
            retention: Some(Retention::Kept),
            tier: Tier::Hot,
        })
    }

    /// Pause → Btrfs snapshot of workspace + state → VM state saved into the
    /// snapshot's aux dir → resume (resumed on every path). A failed save
    /// deletes the half-made snapshot; the sandbox keeps running.
    async fn full_snapshot(
        &self,
        live: &mut super::Live,
        sb: &SandboxName,
        snap: &SnapshotName,
    ) -> Result<SnapshotInfo, SandboxError> {
        // Close the pooled agent connections: a process checkpoint (CRIU)
        // cannot hold the host's ends of them.
        live.agent = self.agent_for(&live.ctx, &live.state);
        let dir = self
            .storage
            .snapshot_aux_path(sb, snap)
            .join(super::VM_STATE_DIR);
        let (storage, s, n) = (self.storage.clone(), sb.clone(), snap.clone());
        let take = async move {
            let taken = tokio::task::spawn_blocking(move || {
                let info = storage.snapshot_with_state(&s, &n, SnapshotKind::Kept)?;
                storage.snapshot_aux_dir(&s, &n)?;
                failpoint::crash("memory_snapshot:after_storage");
                Ok::<_, rewind_storage::StorageError>(info)
            });
            Ok::<_, SandboxError>(taken.await??)
        };
        match full_snapshot(&*self.runtime, &live.ctx, &live.state, &dir, take).await {
            Ok(info) => Ok(info),
            Err(FullSnapshotError::Storage(e)) => Err(e),
            Err(FullSnapshotError::Runtime(e)) => {
                let (s, n) = (sb.clone(), snap.clone());
                if let Err(del) = self.blocking(move |st| st.delete_snapshot(&s, &n)).await {
                    tracing::error!(sandbox = %sb, snapshot = %snap, error = %del, "cannot remove half-made full snapshot");
                }
                Err(e.into())
            }
        }
    }

    /// `sha256:<hex>` over the snapshot's whole content, and its saved VM
    /// state for memory snapshots (see [`tree_sha256`]). Costs a read of the
    /// snapshot's data; only named snapshots pay it.
    async fn checksum(
        &self,
        sandbox: &str,
        snap: &str,
        with_memory: bool,
    ) -> Result<String, SandboxError> {
        let sb = super::parse_sandbox_name(sandbox)?;
        let sn = super::parse_snapshot_name("name", snap)?;
        let mut paths = vec![self.storage.snapshot_path(&sb, &sn)];
        if with_memory {
            paths.push(self.storage.snapshot_aux_path(&sb, &sn));
        }
        let digest = tokio::task::spawn_blocking(move || tree_sha256(&paths))
            .await?
            .map_err(|source| SandboxError::Io {
                op: "checksum snapshot",
                source,
            })?;
        Ok(format!("sha256:{digest}"))
    }

    pub async fn delete_snapshot(
        &self,
        caller: &Caller,
        name: &str,
        snapshot: &str,
    ) -> Result<(), SandboxError> {
        let snap = super::parse_snapshot_name("snapshot", snapshot)?;
        let (row, entry) = self.find_live(caller, name).await?;
        let _live = entry.lock().await;
        let found = self.snapshot_row(row.id, &snap, true).await?;
        let sandbox = super::parse_sandbox_name(&row.name)?;
        let deleted = self
            .blocking(move |s| s.delete_snapshot(&sandbox, &snap))
            .await;
        match deleted {
            Ok(()) | Err(SandboxError::Storage(rewind_storage::StorageError::NotFound { .. })) => {}
            Err(e) => return Err(e),
        }
        self.db
            .call(move |c| Db::delete_snapshot_row(c, found.id))
            .await?;
        let deleted = crate::events::EventKind::SnapshotDeleted {
            snapshot: snapshot.to_owned(),
        };
        self.publish_snapshot(row.owner_key_id, &row.name, deleted);
        Ok(())
    }
}

/// SHA-256 over a directory tree, independent of inode numbers and times:
/// for every entry in sorted order, its relative path, type, permission bits
/// and content (file bytes, or a symlink's target). A file listed in its
/// directory's memory-state manifest ([`manifest`]) with its current size
/// contributes the manifest's SHA-256 of its bytes instead of the bytes: the
/// runtime hashed them while saving, and restores verify them.
///
/// [`manifest`]: crate::runtime::manifest
pub fn tree_sha256(roots: &[std::path::PathBuf]) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    for root in roots {
        hash_dir(root, root, &mut hasher)?;
        hasher.update([0xfe]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn hash_dir(root: &std::path::Path, dir: &std::path::Path, h: &mut Sha256) -> std::io::Result<()> {
    use crate::runtime::manifest;
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    let listed: std::collections::HashMap<std::ffi::OsString, manifest::Entry> = match entries
        .iter()
        .any(|e| e.file_name() == manifest::MANIFEST_FILE)
    {
        true => manifest::read(dir)
            .ok()
            .flatten()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name.clone().into(), e))
            .collect(),
        false => Default::default(),
    };
    for entry in entries {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let rel = path.strip_prefix(root).unwrap_or(&path);
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update(format!("\0{:o}\0", meta.permissions().mode()).as_bytes());
        if meta.is_dir() {
            hash_dir(root, &path, h)?;
        } else if meta.file_type().is_symlink() {
            h.update(std::fs::read_link(&path)?.as_os_str().as_encoded_bytes());
        } else if meta.is_file() {
            h.update(meta.len().to_le_bytes());
            match listed.get(&entry.file_name()) {
                Some(e) if e.size == meta.len() => h.update(format!("sha256:{}", e.sha256)),
                _ => drop(manifest::hash_file_into(&path, h)?),
            }
        }
        h.update([0xff]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_sha256_changes_with_content_not_with_copy() {
        let a = tempfile::tempdir().unwrap();
        std::fs::create_dir(a.path().join("d")).unwrap();
        std::fs::write(a.path().join("d/f"), b"one").unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir(b.path().join("d")).unwrap();
        std::fs::write(b.path().join("d/f"), b"one").unwrap();
        let (pa, pb) = ([a.path().to_owned()], [b.path().to_owned()]);
        let same = (tree_sha256(&pa).unwrap(), tree_sha256(&pb).unwrap());
        std::fs::write(b.path().join("d/f"), b"two").unwrap();
        let changed = tree_sha256(&pb).unwrap();
        assert_eq!(same.0, same.1);
        assert_ne!(same.0, changed);
    }
}

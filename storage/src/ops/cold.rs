//! Cold history: a thinned automatic snapshot archived as an incremental
//! `btrfs send` stream instead of deleted, so it shares no tree blocks with
//! the live workspace (and costs the next snapshot nothing) but can still
//! be restored.
//!
//! ```text
//! sandboxes/<sb>/cold/
//!   <snap>/                 one cold snapshot (listed, restorable)
//!     stream                archive (magic, zstd send stream, SHA-256 trailer)
//!     meta                  name, uuid, parent uuid, created, otransid
//!   .base-<uuid>/           a hidden base: a deleted snapshot others need
//!   .new-<name>/            an archive being written (garbage after a crash)
//! ```
//!
//! **Parent.** A snapshot is archived against its nearest *older* hot
//! snapshot (any kind), or as a full stream when there is none. Thinning
//! keeps the first snapshot of each slot, and a slot's first is older than
//! the rest of the slot, so the parent is always a snapshot kept by the same
//! or a coarser tier; chains grow by at most one link per tier
//! (recent → 5 minutes → hourly → daily), not per command.
//!
//! **Restore.** The chain from the nearest hot ancestor is received,
//! oldest first, into a staging dir `sandboxes/.import.<unique>/` (each
//! link in its own sub-directory; `btrfs receive` finds a parent by its
//! uuid — the hot original — or by the received uuid of the link received
//! just before), then the normal restore builds `live.new` from the result
//! and exchanges it atomically. The staging dir is deleted before the
//! restore returns (recovery trashes one left by a crash).
//!
//! **Deleting a parent.** A snapshot that cold snapshots depend on (their
//! parent uuid is its uuid) is not deleted but *kept as a hidden base*: a
//! hot one is archived to `.base-<uuid>` first, a cold one is renamed to
//! it. Bases are not listed and cannot be restored; a base with no
//! dependents left is deleted (at once, and by recovery). Re-basing the
//! dependents instead would cost a receive and a send per dependent on a
//! user's delete; a base costs only its own (incremental) stream.
//!
//! **Commit points.** Archiving: the stream and meta are written and
//! fsynced under `.new-<name>`, renamed to `<name>` (commit: the snapshot
//! is now cold), then the hot subvolume is deleted. Thinning writes the
//! archive holding only the storage's archive gate (every deletion takes it
//! first, so no snapshot a send reads is deleted meanwhile) and takes the
//! sandbox lock for the rename and delete alone, so commands do not wait
//! for sends. Recovery rolls a
//! snapshot that is both hot and cold forward (deletes the hot one), trashes
//! `.new-*`, and deletes bases nobody depends on.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::btrfs::{self, SubvolMeta};
use crate::error::StorageError;
use crate::failpoint;
use crate::layout::{self, file_name, Layout};
use crate::names::{SandboxName, SnapshotName};
use crate::ops::archive::{btrfs_receive, verify_file, write_archive};
use crate::storage::Storage;

const STREAM: &str = "stream";
const META: &str = "meta";
const NEW_PREFIX: &str = ".new-";
const BASE_PREFIX: &str = ".base-";

/// Where a snapshot's data lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// A read-only subvolume: restores in milliseconds.
    Hot,
    /// An archived incremental send stream: restores in seconds.
    Cold,
}

/// What `meta` records about one cold entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ColdMeta {
    pub name: String,
    pub uuid: String,
    pub parent: Option<String>,
    pub created: SystemTime,
    pub otransid: u64,
}

impl ColdMeta {
    fn render(&self) -> String {
        let since = self.created.duration_since(UNIX_EPOCH).unwrap_or_default();
        format!(
            "name {}\nuuid {}\nparent {}\ncreated {} {}\notransid {}\n",
            self.name,
            self.uuid,
            self.parent.as_deref().unwrap_or("-"),
            since.as_secs(),
            since.subsec_nanos(),
            self.otransid
        )
    }

    fn parse(text: &str) -> Option<ColdMeta> {
        let fields: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once(' ')).collect();
        let (secs, nanos) = fields.get("created")?.split_once(' ')?;
        Some(ColdMeta {
            name: fields.get("name")?.to_string(),
            uuid: fields.get("uuid")?.to_string(),
            parent: Some(*fields.get("parent")?)
                .filter(|p| *p != "-")
                .map(str::to_owned),
            created: UNIX_EPOCH + Duration::new(secs.parse().ok()?, nanos.parse().ok()?),
            otransid: fields.get("otransid")?.parse().ok()?,
        })
    }
}

/// One entry of `cold/`: its directory, meta, and whether it is listed.
#[derive(Clone, Debug)]
pub(crate) struct ColdEntry {
    pub dir: PathBuf,
    pub meta: ColdMeta,
    pub hidden: bool,
}

pub(crate) fn hex(uuid: &[u8; 16]) -> String {
    uuid.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every complete entry of the cold dir `dir` (none when it is absent).
pub(crate) fn entries(dir: &Path) -> Result<Vec<ColdEntry>, StorageError> {
    let read = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io("read", dir, e)),
    };
    let mut found = Vec::new();
    for entry in read {
        let path = entry.map_err(|e| StorageError::io("read", dir, e))?.path();
        let name = file_name(&path);
        if name.starts_with(NEW_PREFIX) {
            continue;
        }
        let meta_path = path.join(META);
        let text =
            fs::read_to_string(&meta_path).map_err(|e| StorageError::io("read", &meta_path, e))?;
        let meta = ColdMeta::parse(&text).ok_or_else(|| {
            StorageError::io("parse", &meta_path, io::Error::other("malformed cold meta"))
        })?;
        found.push(ColdEntry {
            dir: path,
            meta,
            hidden: name.starts_with(BASE_PREFIX),
        });
    }
    Ok(found)
}

/// The hot snapshots of the sandbox dir `sandbox`: name and subvolume meta.
pub(crate) fn hot_snapshots(sandbox: &Path) -> Result<Vec<(String, SubvolMeta)>, StorageError> {
    let dir = sandbox.join(layout::SNAPS);
    let mut hot = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| StorageError::io("read", &dir, e))? {
        let path = entry.map_err(|e| StorageError::io("read", &dir, e))?.path();
        hot.push((file_name(&path), btrfs::subvolume_meta(&path)?));
    }
    hot.sort_by_key(|(_, m)| m.otransid);
    Ok(hot)
}

/// Writes `path` and fsyncs it.
fn write_synced(path: &Path, data: &[u8]) -> Result<(), StorageError> {
    let write = || -> io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(data)?;
        f.sync_all()
    };
    write().map_err(|e| StorageError::io("write", path, e))
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| StorageError::io("fsync", dir, e))
}

impl Storage {
    /// Archives hot snapshot `name` of `sb` into the cold dir under
    /// `final_name` (its own name, or a hidden base's), against its nearest
    /// older hot snapshot; then deletes the hot one. The caller holds the
    /// archive gate and the sandbox lock.
    fn archive_locked(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
        final_name: Option<String>,
    ) -> Result<(), StorageError> {
        match self.prepare_archive(sb, name, final_name)? {
            Some(prepared) => self.commit_archive(sb, name, &prepared),
            None => self.delete_snapshot_locked(sb, name),
        }
    }

    /// Writes the archive of hot snapshot `name` under `cold/.new-<name>`;
    /// returns (that dir, its final path), or `None` when the final path
    /// already exists (archived before, but the hot copy could not be
    /// deleted then: the kernel refuses while a send of it runs). Needs
    /// only the archive gate: the send reads read-only subvolumes, and
    /// nothing else deletes snapshots while the gate is held.
    fn prepare_archive(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
        final_name: Option<String>,
    ) -> Result<Option<(PathBuf, PathBuf)>, StorageError> {
        let l = self.layout();
        let (sandbox, snap, cold) = (l.sandbox(sb), l.snap(sb, name), l.cold_dir(sb));
        let target = cold.join(final_name.unwrap_or_else(|| name.to_string()));
        if target.is_dir() {
            return Ok(None);
        }
        let hot = hot_snapshots(&sandbox)?;
        let me = btrfs::subvolume_meta(&snap)?;
        let parent = hot
            .iter()
            .rev()
            .find(|(n, m)| m.otransid < me.otransid && n.as_str() != name.as_ref())
            .map(|(_, m)| *m);
        let meta = ColdMeta {
            name: name.to_string(),
            uuid: hex(&me.uuid),
            parent: parent.map(|p| hex(&p.uuid)),
            created: me.created,
            otransid: me.otransid,
        };
        fs::create_dir_all(&cold).map_err(|e| StorageError::io("create", &cold, e))?;
        let new = cold.join(format!("{NEW_PREFIX}{name}"));
        crate::background::delete_tree(&new)?;
        fs::create_dir(&new).map_err(|e| StorageError::io("create", &new, e))?;
        self.write_entry(&new, &snap, parent.map(|p| p.id), &meta)?;
        failpoint::hit("cold:after_stream");
        Ok(Some((new, target)))
    }

    /// The commit: the prepared archive renamed into place, then the hot
    /// snapshot deleted. The caller holds the sandbox lock.
    fn commit_archive(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
        (new, target): &(PathBuf, PathBuf),
    ) -> Result<(), StorageError> {
        btrfs::rename_noreplace(new, target).map_err(|e| btrfs::rename_err(new, target, e))?;
        sync_dir(&self.layout().cold_dir(sb))?;
        failpoint::hit("cold:after_commit");
        self.delete_snapshot_locked(sb, name)?;
        tracing::debug!(sandbox = %sb, snapshot = %name, target = %target.display(), "archived to cold history");
        Ok(())
    }

    /// Thinning with cold history on: the archive is written holding only
    /// the archive gate, so commands (which take the sandbox lock) never
    /// wait for a send; the sandbox lock is taken for the commit alone,
    /// after re-checking that the snapshot is still there and not pinned
    /// meanwhile. False when it was spared.
    pub(crate) fn archive_thinned(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
    ) -> Result<bool, StorageError> {
        let _gate = self.archive_gate();
        let l = self.layout();
        if !l.snap(sb, name).exists() || l.kept_marker(sb, name).exists() {
            return Ok(false);
        }
        let prepared = self.prepare_archive(sb, name, None)?;
        let _guard = match self.lock_existing(sb) {
            Err(StorageError::NotFound { .. }) => return Ok(false),
            other => other?,
        };
        let Some(prepared) = prepared else {
            self.delete_snapshot_locked(sb, name)?;
            return Ok(true);
        };
        if !l.snap(sb, name).exists() || l.kept_marker(sb, name).exists() {
            self.trash(&prepared.0, "cold-spared")?;
            return Ok(false);
        }
        self.commit_archive(sb, name, &prepared)?;
        Ok(true)
    }

    /// The stream (sent from `snap`, against subvolume `parent`) and the
    /// meta of one entry, both fsynced, in the directory `dir`.
    fn write_entry(
        &self,
        dir: &Path,
        snap: &Path,
        parent: Option<u64>,
        meta: &ColdMeta,
    ) -> Result<(), StorageError> {
        let stream_path = dir.join(STREAM);
        let mut out = io::BufWriter::with_capacity(
            1 << 20,
            File::create(&stream_path).map_err(|e| StorageError::io("create", &stream_path, e))?,
        );
        let source = File::open(snap).map_err(|e| StorageError::io("open", snap, e))?;
        write_archive(source, parent, None, &mut out, snap)?;
        let file = out
            .into_inner()
            .map_err(|e| StorageError::io("write", &stream_path, e.into_error()))?;
        file.sync_all()
            .map_err(|e| StorageError::io("fsync", &stream_path, e))?;
        write_synced(&dir.join(META), meta.render().as_bytes())?;
        sync_dir(dir)
    }

    /// Moves automatic snapshot `name` of `sb` to the cold tier now (what
    /// thinning does with `cold_history` on). Kept snapshots are refused.
    pub fn archive_snapshot(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
    ) -> Result<(), StorageError> {
        let _gate = self.archive_gate();
        let _guard = self.lock_existing(sb)?;
        let l = self.layout();
        if !l.snap(sb, name).exists() {
            return Err(StorageError::not_found("snapshot", name));
        }
        if l.kept_marker(sb, name).exists() {
            return Err(StorageError::ColdHistory {
                name: name.to_string(),
                reason: "kept snapshots are never archived".into(),
            });
        }
        self.archive_locked(sb, name, None)
    }

    /// Removes hot snapshot `name`: deleted, or kept as a hidden base when
    /// cold snapshots depend on it. The caller holds the archive gate and
    /// the lock.
    pub(crate) fn remove_hot(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
    ) -> Result<(), StorageError> {
        let l = self.layout();
        let entries = entries(&l.cold_dir(sb))?;
        if !entries.is_empty() {
            let uuid = hex(&btrfs::subvolume_meta(&l.snap(sb, name))?.uuid);
            if entries
                .iter()
                .any(|e| e.meta.parent.as_ref() == Some(&uuid))
            {
                return self.archive_locked(sb, name, Some(format!("{BASE_PREFIX}{uuid}")));
            }
        }
        self.delete_snapshot_locked(sb, name)
    }

    /// Removes cold snapshot `name` (a hidden base when others depend on
    /// it), then any base left without dependents. The caller holds the lock.
    pub(crate) fn remove_cold(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
    ) -> Result<(), StorageError> {
        let (cold, path) = (self.layout().cold_dir(sb), self.layout().cold(sb, name));
        let all = entries(&cold)?;
        let Some(me) = all.iter().find(|e| e.dir == path) else {
            return Err(StorageError::not_found("snapshot", name));
        };
        if all
            .iter()
            .any(|e| e.meta.parent.as_ref() == Some(&me.meta.uuid))
        {
            let base = cold.join(format!("{BASE_PREFIX}{}", me.meta.uuid));
            fs::rename(&path, &base).map_err(|e| btrfs::rename_err(&path, &base, e))?;
            return sync_dir(&cold);
        }
        self.trash(&path, &format!("{sb}-cold-{name}"))?;
        let mut trashed = Vec::new();
        collect_unneeded_bases(self.layout(), &cold, &mut trashed)?;
        for slot in trashed {
            self.submit(crate::background::Job::Delete(slot));
        }
        Ok(())
    }

    /// The cold entry of `name`, if it is a (listed) cold snapshot.
    pub(crate) fn cold_entry(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
    ) -> Result<Option<ColdEntry>, StorageError> {
        let path = self.layout().cold(sb, name);
        if !path.is_dir() {
            return Ok(None);
        }
        Ok(entries(&self.layout().cold_dir(sb))?
            .into_iter()
            .find(|e| e.dir == path))
    }

    /// Receives the chain of cold snapshot `entry` into `staging`; returns
    /// the received subvolume of `entry` itself. The caller holds the lock.
    pub(crate) fn receive_cold_chain(
        &self,
        sb: &SandboxName,
        entry: &ColdEntry,
        staging: &Path,
    ) -> Result<PathBuf, StorageError> {
        let chain = self.cold_chain(sb, entry)?;
        let mut last = None;
        for (i, link) in chain.iter().rev().enumerate() {
            let dest = staging.join(i.to_string());
            fs::create_dir(&dest).map_err(|e| StorageError::io("create", &dest, e))?;
            let stream = link.dir.join(STREAM);
            let body = verify_file(&stream).map_err(|e| chain_err(entry, e))?;
            btrfs_receive(&dest, &stream, body, false).map_err(|e| chain_err(entry, e))?;
            last = Some(dest.join(&link.meta.name));
        }
        failpoint::hit("cold_restore:after_receive");
        last.ok_or_else(|| chain_err(entry, "empty chain"))
    }

    /// `entry` and its cold ancestors up to (not including) the nearest hot
    /// one, newest first.
    fn cold_chain(
        &self,
        sb: &SandboxName,
        entry: &ColdEntry,
    ) -> Result<Vec<ColdEntry>, StorageError> {
        let hot: Vec<String> = hot_snapshots(&self.layout().sandbox(sb))?
            .iter()
            .map(|(_, m)| hex(&m.uuid))
            .collect();
        let all = entries(&self.layout().cold_dir(sb))?;
        let mut chain = vec![entry.clone()];
        while let Some(parent) = chain.last().and_then(|e| e.meta.parent.clone()) {
            if hot.contains(&parent) {
                break;
            }
            let Some(next) = all.iter().find(|e| e.meta.uuid == parent) else {
                return Err(chain_err(entry, format!("its base {parent} is missing")));
            };
            if chain.len() > all.len() {
                return Err(chain_err(entry, "the chain of bases loops"));
            }
            chain.push(next.clone());
        }
        Ok(chain)
    }
}

fn chain_err(entry: &ColdEntry, reason: impl ToString) -> StorageError {
    StorageError::ColdHistory {
        name: entry.meta.name.clone(),
        reason: reason.to_string(),
    }
}

/// Moves to the trash every hidden base no entry depends on (repeatedly:
/// removing one may free its own base). Returns what it did.
pub(crate) fn collect_unneeded_bases(
    l: &Layout,
    cold: &Path,
    trashed: &mut Vec<PathBuf>,
) -> Result<Vec<String>, StorageError> {
    let mut actions = Vec::new();
    loop {
        let all = entries(cold)?;
        let unneeded = all.iter().find(|b| {
            b.hidden
                && !all
                    .iter()
                    .any(|e| e.meta.parent.as_ref() == Some(&b.meta.uuid))
        });
        let Some(base) = unneeded else {
            return Ok(actions);
        };
        let slot = l.trash_slot("cold-base");
        fs::rename(&base.dir, &slot).map_err(|e| btrfs::rename_err(&base.dir, &slot, e))?;
        actions.push(format!("{}: removed unneeded base", base.dir.display()));
        trashed.push(slot);
    }
}

/// Recovery of one sandbox dir's cold history: unfinished archives go to
/// the trash, a snapshot both hot and cold (archived, hot not yet deleted)
/// loses its hot copy, unneeded bases go. Returns what it did.
pub(crate) fn recover(
    l: &Layout,
    sandbox: &Path,
    trashed: &mut Vec<PathBuf>,
) -> Result<Vec<String>, StorageError> {
    let cold = sandbox.join(layout::COLD);
    let mut actions = Vec::new();
    let Ok(read) = fs::read_dir(&cold) else {
        return Ok(actions);
    };
    for entry in read.flatten() {
        if file_name(&entry.path()).starts_with(NEW_PREFIX) {
            let slot = l.trash_slot("cold-new");
            fs::rename(entry.path(), &slot)
                .map_err(|e| btrfs::rename_err(&entry.path(), &slot, e))?;
            actions.push(format!(
                "{}: removed unfinished archive",
                entry.path().display()
            ));
            trashed.push(slot);
        }
    }
    let archived: Vec<String> = entries(&cold)?.into_iter().map(|e| e.meta.uuid).collect();
    for (name, meta) in hot_snapshots(sandbox)? {
        if archived.contains(&hex(&meta.uuid)) {
            let snap = sandbox.join(layout::SNAPS).join(&name);
            crate::ops::delete::delete_if_exists(&snap)?;
            actions.push(format!(
                "{}: finished archiving {name} to cold history",
                sandbox.display()
            ));
        }
    }
    actions.extend(collect_unneeded_bases(l, &cold, trashed)?);
    Ok(actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips() {
        let meta = ColdMeta {
            name: "cmd_1".into(),
            uuid: hex(&[7; 16]),
            parent: None,
            created: UNIX_EPOCH + Duration::new(1_700_000_000, 123),
            otransid: 42,
        };
        assert_eq!(ColdMeta::parse(&meta.render()), Some(meta.clone()));
        let with_parent = ColdMeta {
            parent: Some(hex(&[9; 16])),
            ..meta
        };
        assert_eq!(ColdMeta::parse(&with_parent.render()), Some(with_parent));
    }

    #[test]
    fn malformed_meta_is_none() {
        assert_eq!(ColdMeta::parse("name x\nuuid y\n"), None);
    }
}

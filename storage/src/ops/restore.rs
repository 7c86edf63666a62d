//! restore and wipe: build the new workspace under `live.new`, then swap it
//! into place with one `renameat2(RENAME_EXCHANGE)`; the old one goes to
//! the trash. Also the roll-forward/roll-back of an interrupted swap, shared
//! with startup recovery.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::btrfs;
use crate::error::StorageError;
use crate::failpoint;
use crate::layout::{file_name, Layout, INTENT, INTENT_TMP, LIVE, LIVE_NEW, STATE, STATE_NEW};
use crate::names::{SandboxName, SnapshotName};
use crate::ops::{read_template_name, Tier};
use crate::storage::Storage;

impl Storage {
    /// Makes the live workspace a writable snapshot of `name` (and the state
    /// dir too when the snapshot has state). Later snapshots are kept.
    pub fn restore(&self, sb: &SandboxName, name: &SnapshotName) -> Result<(), StorageError> {
        self.restore_tiered(sb, name).map(drop)
    }

    /// [`Storage::restore`], saying which tier the snapshot came from. A
    /// cold snapshot's chain is received into a staging dir first (seconds,
    /// not milliseconds), then restored the same atomic way.
    pub fn restore_tiered(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
    ) -> Result<Tier, StorageError> {
        let _guard = self.lock_existing(sb)?;
        let snap = self.layout().snap(sb, name);
        if snap.exists() {
            return self.restore_hot(sb, name, &snap).map(|()| Tier::Hot);
        }
        let Some(entry) = self.cold_entry(sb, name)? else {
            return Err(StorageError::not_found("snapshot", name));
        };
        let staging = self.layout().importing();
        fs::create_dir(&staging).map_err(|e| StorageError::io("create", &staging, e))?;
        let result = self
            .receive_cold_chain(sb, &entry, &staging)
            .and_then(|received| self.restore_hot(sb, name, &received));
        // Deleted now, not in the background: a received copy left around
        // would be what the next cold restore's `btrfs receive` finds first.
        if let Err(e) = crate::background::delete_tree(&staging) {
            tracing::warn!(error = %e, "removing a cold restore's staging dir failed");
            self.trash(&staging, "cold-restore")?;
        }
        result.map(|()| Tier::Cold)
    }

    /// The restore steps from the read-only subvolume `snap` (a snapshot of
    /// `sb`, or a received cold one). The caller holds the lock.
    fn restore_hot(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
        snap: &Path,
    ) -> Result<(), StorageError> {
        let l = self.layout();
        let dir = l.sandbox(sb);
        self.finish_interrupted(&dir)?;
        let state_snap = l.snap_state(sb, name);
        let state = state_snap.exists().then_some(state_snap.as_path());
        let group = self.disk_group(&dir)?;
        let result = restore_steps(&dir, snap, state, group);
        self.finish_interrupted(&dir)?;
        result?;
        failpoint::hit("restore:after_trash");
        tracing::info!(sandbox = %sb, snapshot = %name, with_state = state.is_some(), "restored");
        Ok(())
    }

    /// Makes the live workspace a fresh copy of the sandbox's template
    /// (empty when it was created without one). The new root directory
    /// keeps the old root's owner and mode. The state dir is not touched.
    pub fn wipe(&self, sb: &SandboxName) -> Result<(), StorageError> {
        let _guard = self.lock_existing(sb)?;
        let dir = self.layout().sandbox(sb);
        self.finish_interrupted(&dir)?;
        let template = read_template_name(&dir)?;
        if let Some(t) = template.as_ref().filter(|t| !self.template_exists(t)) {
            return Err(StorageError::not_found("template", t));
        }
        let source = template.map(|t| self.layout().template(&t));
        let group = self.disk_group(&dir)?;
        let result = wipe_steps(&dir, source.as_deref(), group);
        self.finish_interrupted(&dir)?;
        result?;
        failpoint::hit("wipe:after_trash");
        tracing::info!(sandbox = %sb, "wiped");
        Ok(())
    }

    /// Completes or undoes an interrupted swap in one sandbox directory and
    /// queues its temporaries for deletion.
    fn finish_interrupted(&self, dir: &Path) -> Result<(), StorageError> {
        let mut trashed = Vec::new();
        let result = finish_swap(self.layout(), dir, &mut trashed);
        for path in trashed {
            self.submit(crate::background::Job::Delete(path));
        }
        result.map(drop)
    }
}

fn restore_steps(
    dir: &Path,
    snap: &Path,
    state_snap: Option<&Path>,
    group: Option<u64>,
) -> Result<(), StorageError> {
    let live_new = dir.join(LIVE_NEW);
    btrfs::snapshot(snap, &live_new, false, group)?;
    failpoint::hit("restore:after_live_new");
    if let Some(state_snap) = state_snap {
        let state_new = dir.join(STATE_NEW);
        btrfs::snapshot(state_snap, &state_new, false, group)?;
        failpoint::hit("restore:after_state_new");
        write_intent(
            dir,
            btrfs::subvolume_meta(&live_new)?.id,
            btrfs::subvolume_meta(&state_new)?.id,
        )?;
        failpoint::hit("restore:after_intent");
        btrfs::exchange(&state_new, &dir.join(STATE))?;
        failpoint::hit("restore:after_state_exchange");
    }
    btrfs::exchange(&live_new, &dir.join(LIVE))?;
    failpoint::hit("restore:after_live_exchange");
    Ok(())
}

fn wipe_steps(dir: &Path, template: Option<&Path>, group: Option<u64>) -> Result<(), StorageError> {
    let (live, live_new) = (dir.join(LIVE), dir.join(LIVE_NEW));
    match template {
        Some(t) => btrfs::snapshot(t, &live_new, false, group)?,
        None => btrfs::create_subvolume(&live_new, group)?,
    }
    failpoint::hit("wipe:after_live_new");
    let old = fs::metadata(&live).map_err(|e| StorageError::io("stat", &live, e))?;
    chown(&live_new, Some(old.uid()), Some(old.gid()))
        .map_err(|e| StorageError::io("chown", &live_new, e))?;
    fs::set_permissions(&live_new, fs::Permissions::from_mode(old.mode() & 0o7777))
        .map_err(|e| StorageError::io("chmod", &live_new, e))?;
    failpoint::hit("wipe:after_chown");
    btrfs::exchange(&live_new, &live)?;
    failpoint::hit("wipe:after_exchange");
    Ok(())
}

/// Records the ids of the new subvolumes before a two-part (state + live)
/// swap: once this file exists, recovery rolls the swap forward.
fn write_intent(dir: &Path, live_new: u64, state_new: u64) -> Result<(), StorageError> {
    let (tmp, intent) = (dir.join(INTENT_TMP), dir.join(INTENT));
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        writeln!(f, "{LIVE_NEW} {live_new}\n{STATE_NEW} {state_new}")?;
        f.sync_all()?;
        fs::rename(&tmp, &intent)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| StorageError::io("write", &intent, e))
}

/// Parses the intent file: the expected subvolume id of each temporary.
fn read_intent(path: &Path) -> Result<Option<Vec<(String, u64)>>, StorageError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("read", path, e)),
    };
    let ids = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(name, id)| Some((name.to_owned(), id.parse().ok()?)))
        .collect();
    Ok(Some(ids))
}

/// Brings one sandbox dir back to "no swap in progress": with an intent
/// file, every temporary that still holds its recorded new subvolume is
/// swapped in (roll forward); then all temporaries go to the trash (without
/// an intent file that is a roll back of an unfinished build, or the
/// clean-up of an already swapped-out old workspace). Returns what it did.
pub(crate) fn finish_swap(
    l: &Layout,
    dir: &Path,
    trashed: &mut Vec<PathBuf>,
) -> Result<Vec<String>, StorageError> {
    let mut actions = Vec::new();
    let intent = dir.join(INTENT);
    for (tmp, id) in read_intent(&intent)?.unwrap_or_default() {
        let target = match tmp.as_str() {
            LIVE_NEW => LIVE,
            STATE_NEW => STATE,
            _ => continue,
        };
        let new = dir.join(&tmp);
        if btrfs::is_subvolume(&new) && btrfs::subvolume_meta(&new)?.id == id {
            btrfs::exchange(&new, &dir.join(target))?;
            actions.push(format!(
                "{}: rolled forward interrupted swap of {target}",
                dir.display()
            ));
        }
    }
    for tmp in [LIVE_NEW, STATE_NEW] {
        let path = dir.join(tmp);
        if fs::symlink_metadata(&path).is_ok() {
            let slot = l.trash_slot(&format!("{}-{tmp}", file_name(dir)));
            fs::rename(&path, &slot).map_err(|e| btrfs::rename_err(&path, &slot, e))?;
            trashed.push(slot);
            actions.push(format!("{}: removed temporary {tmp}", dir.display()));
        }
    }
    for file in [INTENT, INTENT_TMP] {
        match fs::remove_file(dir.join(file)) {
            Ok(()) => actions.push(format!("{}: removed {file}", dir.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("remove", dir.join(file), e)),
        }
    }
    Ok(actions)
}

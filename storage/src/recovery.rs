//! Startup recovery: bring every sandbox back to a state with no operation
//! in progress (see the invariants in the crate docs).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::btrfs;
use crate::error::StorageError;
use crate::layout::{self, file_name, Layout};
use crate::ops::delete::delete_if_exists;
use crate::ops::restore::finish_swap;

/// The outcome of opening a pool: its shared lock, what recovery did, and
/// the trash entries to delete.
pub(crate) struct Recovered {
    pub lock: Flock<File>,
    pub report: Vec<String>,
    pub trash: Vec<PathBuf>,
}

/// Name of the lock file at the pool root.
const LOCK_FILE: &str = ".rewind-storage.lock";

/// Every open `Storage` holds a shared `flock` on the pool; recovery needs it
/// exclusively. If another instance (in this or another process) has the
/// pool open, its operations may be in flight, so recovery is skipped
/// rather than racing them (and says so in the report).
pub(crate) fn lock_and_recover(l: &Layout) -> Result<Recovered, StorageError> {
    let path = l.root.join(LOCK_FILE);
    let lock_err = |e: nix::errno::Errno| StorageError::io("lock", &path, e.into());
    let file = crate::pool::open_lock_file(&path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            let (report, trash) = run(l)?;
            lock.relock(FlockArg::LockShared).map_err(lock_err)?;
            Ok(Recovered {
                lock,
                report,
                trash,
            })
        }
        Err((file, Errno::EWOULDBLOCK)) => {
            let lock = Flock::lock(file, FlockArg::LockShared).map_err(|(_, e)| lock_err(e))?;
            let line = "recovery skipped: another open Storage is using this pool".to_owned();
            tracing::warn!(pool = %l.root.display(), "{line}");
            Ok(Recovered {
                lock,
                report: vec![line],
                trash: Vec::new(),
            })
        }
        Err((_, e)) => Err(lock_err(e)),
    }
}

/// Runs recovery over the whole pool. Returns the human-readable actions
/// and the trash entries the background worker must delete.
pub(crate) fn run(l: &Layout) -> Result<(Vec<String>, Vec<PathBuf>), StorageError> {
    let mut report = Vec::new();
    let mut trashed = Vec::new();
    let dir = l.sandboxes();
    for entry in fs::read_dir(&dir).map_err(|e| StorageError::io("read", &dir, e))? {
        let path = entry.map_err(|e| StorageError::io("read", &dir, e))?.path();
        let name = file_name(&path);
        if name.starts_with(layout::CREATING_PREFIX) {
            trashed.push(move_to_trash(l, &path, "half-created")?);
            report.push(format!("rolled back interrupted create: removed {name}"));
        } else if name.starts_with(layout::IMPORTING_PREFIX) {
            trashed.push(move_to_trash(l, &path, "half-imported")?);
            report.push(format!(
                "removed an interrupted import's staging dir {name}"
            ));
        } else if name.starts_with(layout::EXPORTING_PREFIX) {
            trashed.push(move_to_trash(l, &path, "export-clone")?);
            report.push(format!("removed an interrupted export's clone {name}"));
        } else if path.is_dir() {
            report.extend(finish_swap(l, &path, &mut trashed)?);
            report.extend(crate::ops::cold::recover(l, &path, &mut trashed)?);
            report.extend(remove_orphans(l, &path, &mut trashed)?);
        }
    }
    let queued = requeue_trash(l, &mut trashed)?;
    if queued > 0 {
        report.push(format!(
            "queued {queued} leftover trash entries for deletion"
        ));
    }
    for line in &report {
        tracing::info!(action = %line, "storage recovery");
    }
    Ok((report, trashed))
}

fn move_to_trash(l: &Layout, path: &Path, label: &str) -> Result<PathBuf, StorageError> {
    let slot = l.trash_slot(&format!("{label}-{}", file_name(path)));
    fs::rename(path, &slot).map_err(|e| btrfs::rename_err(path, &slot, e))?;
    Ok(slot)
}

/// Removes the parts of snapshots whose workspace snapshot does not exist:
/// left by a crash while taking or deleting a snapshot.
fn remove_orphans(
    l: &Layout,
    sandbox: &Path,
    trashed: &mut Vec<PathBuf>,
) -> Result<Vec<String>, StorageError> {
    let snaps = sandbox.join(layout::SNAPS);
    let mut actions = Vec::new();
    for part in [layout::SNAPSTATE, layout::AUX, layout::KEPT] {
        let dir = sandbox.join(part);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StorageError::io("read", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io("read", &dir, e))?;
            if snaps.join(entry.file_name()).exists() {
                continue;
            }
            let path = entry.path();
            match part {
                layout::KEPT => {
                    fs::remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?
                }
                layout::SNAPSTATE => delete_if_exists(&path)?,
                _ => trashed.push(move_to_trash(l, &path, part)?),
            }
            actions.push(format!(
                "{}: removed orphaned {part}/{}",
                sandbox.display(),
                file_name(&path)
            ));
        }
    }
    Ok(actions)
}

/// Queues everything already in the trash (deletions a crash interrupted).
fn requeue_trash(l: &Layout, trashed: &mut Vec<PathBuf>) -> Result<usize, StorageError> {
    let dir = l.trash();
    let before = trashed.len();
    for entry in fs::read_dir(&dir).map_err(|e| StorageError::io("read", &dir, e))? {
        let path = entry.map_err(|e| StorageError::io("read", &dir, e))?.path();
        if !trashed.contains(&path) {
            trashed.push(path);
        }
    }
    Ok(trashed.len() - before)
}

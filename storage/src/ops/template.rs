//! Templates: writable base workspaces that new workspaces (and wipe) start from.

use std::path::PathBuf;

use crate::btrfs;
use crate::error::StorageError;
use crate::names::SnapshotName;
use crate::storage::Storage;

impl Storage {
    /// Creates an empty writable template subvolume for the caller to fill;
    /// returns its path. Workspaces created from it later are snapshots of
    /// whatever it holds at that moment.
    pub fn create_template(&self, name: &SnapshotName) -> Result<PathBuf, StorageError> {
        let path = self.template_path(name);
        if path.exists() {
            return Err(StorageError::exists("template", name));
        }
        btrfs::create_subvolume(&path, None).map_err(|e| match &e {
            StorageError::Btrfs { source, .. } if source.errno() == libc::EEXIST => {
                StorageError::exists("template", name)
            }
            _ => e,
        })?;
        tracing::info!(template = %name, "created template");
        Ok(path)
    }

    /// Where template `name` lives (whether or not it exists).
    pub fn template_path(&self, name: &SnapshotName) -> PathBuf {
        self.layout().template(name)
    }

    /// Whether template `name` exists.
    pub fn template_exists(&self, name: &SnapshotName) -> bool {
        self.template_path(name).is_dir()
    }

    /// Deletes template `name` (in the background). Workspaces made from it
    /// are unaffected; wiping them afterwards fails with `NotFound`.
    pub fn delete_template(&self, name: &SnapshotName) -> Result<(), StorageError> {
        let path = self.template_path(name);
        if !path.is_dir() {
            return Err(StorageError::not_found("template", name));
        }
        self.trash(&path, &format!("template-{name}"))
    }
}

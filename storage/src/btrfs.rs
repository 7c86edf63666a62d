//! Thin seam over the Btrfs and VFS calls this crate makes: libbtrfsutil for
//! subvolumes, raw ioctls for quotas, `renameat2` for atomic swaps.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use libbtrfsutil::{
    CreateSnapshotOptions, CreateSubvolumeOptions, DeleteSubvolumeOptions, QgroupInherit,
};

use crate::error::StorageError;

/// What we need to know about one subvolume.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SubvolMeta {
    pub id: u64,
    pub otransid: u64,
    pub created: SystemTime,
    pub uuid: [u8; 16],
    pub ctransid: u64,
}

/// The qgroup a new subvolume joins at creation (`None`: none).
fn inherit(group: Option<u64>, path: &Path) -> Result<Option<QgroupInherit>, StorageError> {
    let Some(group) = group else {
        return Ok(None);
    };
    let err = |e| StorageError::btrfs("qgroup inherit", path, e);
    let mut inherit = QgroupInherit::new().map_err(err)?;
    inherit.add_group(group).map_err(err)?;
    Ok(Some(inherit))
}

/// A new empty subvolume, member of qgroup `group` when given.
pub(crate) fn create_subvolume(path: &Path, group: Option<u64>) -> Result<(), StorageError> {
    CreateSubvolumeOptions::new()
        .qgroup(inherit(group, path)?)
        .create(path)
        .map_err(|e| StorageError::btrfs("create subvolume", path, e))
}

/// O(1) snapshot of `src` at `dst`; read-only when `read_only`; the new
/// subvolume joins qgroup `group` when given.
pub(crate) fn snapshot(
    src: &Path,
    dst: &Path,
    read_only: bool,
    group: Option<u64>,
) -> Result<(), StorageError> {
    CreateSnapshotOptions::new()
        .readonly(read_only)
        .qgroup(inherit(group, dst)?)
        .create(src, dst)
        .map_err(|e| StorageError::btrfs("snapshot", dst, e))
}

/// Deletes a subvolume and every subvolume nested in it.
pub(crate) fn delete_subvolume(path: &Path) -> Result<(), StorageError> {
    DeleteSubvolumeOptions::new()
        .recursive(true)
        .delete(path)
        .map_err(|e| StorageError::btrfs("delete subvolume", path, e))
}

pub(crate) fn is_subvolume(path: &Path) -> bool {
    libbtrfsutil::is_subvolume(path).unwrap_or(false)
}

pub(crate) fn subvolume_meta(path: &Path) -> Result<SubvolMeta, StorageError> {
    let info = libbtrfsutil::subvolume_info(path)
        .map_err(|e| StorageError::btrfs("subvolume info", path, e))?;
    Ok(SubvolMeta {
        id: info.id(),
        otransid: info.otransid(),
        created: info.created(),
        uuid: info.uuid().into_bytes(),
        ctransid: info.ctransid(),
    })
}

/// Commits the current transaction of the filesystem holding `path`.
pub(crate) fn sync(path: &Path) -> Result<(), StorageError> {
    libbtrfsutil::sync(path).map_err(|e| StorageError::btrfs("sync", path, e))
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let (a, b) = (
        CString::new(from.as_os_str().as_bytes())?,
        CString::new(to.as_os_str().as_bytes())?,
    );
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Atomically swaps the directory entries `a` and `b` (both must exist).
pub(crate) fn exchange(a: &Path, b: &Path) -> Result<(), StorageError> {
    renameat2(a, b, libc::RENAME_EXCHANGE).map_err(|source| StorageError::Rename {
        op: "exchange",
        path: a.to_owned(),
        other: b.to_owned(),
        source,
    })
}

/// Renames `from` to `to`, failing with `EEXIST` instead of replacing `to`.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    renameat2(from, to, libc::RENAME_NOREPLACE)
}

pub(crate) fn rename_err(from: &Path, to: &Path, source: io::Error) -> StorageError {
    StorageError::Rename {
        op: "rename",
        path: from.to_owned(),
        other: to.to_owned(),
        source,
    }
}

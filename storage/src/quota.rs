//! Per-sandbox disk limits with Btrfs quota groups: one level-1 qgroup per
//! sandbox (its id in `sandboxes/<sb>/qgroup`) that every subvolume of the
//! sandbox joins when it is made (`live`, `state`, snapshots, restores), with
//! its `max_rfer` limit set to the sandbox's limit. See the crate docs
//! ("Disk limits") for why a parent group and what it counts.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::StorageError;
use crate::qgroup;

/// `BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA` (kernel >= 6.7).
const QUOTA_CTL_ENABLE_SIMPLE: u64 = 4;
/// `BTRFS_QGROUP_LIMIT_MAX_RFER`.
const LIMIT_MAX_RFER: u64 = 1 << 0;
/// Level-1 qgroup ids are `1 << 48 | n`.
const LEVEL_1: u64 = 1 << 48;
const ID_MASK: u64 = LEVEL_1 - 1;

/// How the pool accounts for disk use, decided once when it is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaMode {
    /// Simple quotas: charged at extent allocation, no backref walks.
    Simple,
    /// Full quota groups (`storage.quotas`): limits work the same way, and
    /// per-snapshot sizes are reported, at the cost measured in the docs.
    Full,
    /// No quotas: sandboxes have no disk limit.
    Off,
}

/// A sandbox's disk limit and what counts against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DiskUsage {
    pub limit_bytes: u64,
    /// Bytes written by the sandbox that still exist anywhere in it: live
    /// workspace, state (overlay upper dir) and every snapshot, as of the
    /// last committed transaction.
    pub used_bytes: u64,
}

#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

#[repr(C)]
struct QgroupCreateArgs {
    create: u64,
    qgroupid: u64,
}

#[repr(C)]
#[derive(Default)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

nix::ioctl_readwrite!(btrfs_ioc_quota_ctl, 0x94, 40, QuotaCtlArgs);
nix::ioctl_write_ptr!(btrfs_ioc_qgroup_create, 0x94, 42, QgroupCreateArgs);
nix::ioctl_read!(btrfs_ioc_qgroup_limit, 0x94, 43, QgroupLimitArgs);

fn open(pool: &Path) -> Result<File, StorageError> {
    File::open(pool).map_err(|e| StorageError::io("open", pool, e))
}

fn quota_err(op: &'static str, pool: &Path, source: io::Error) -> StorageError {
    StorageError::Quota {
        op,
        path: pool.to_owned(),
        source,
    }
}

/// The pool's mode: what is on already, else simple quotas when `enable`
/// (and the kernel has them). Never turns full quota groups on.
pub(crate) fn setup(pool: &Path, enable: bool) -> QuotaMode {
    match qgroup::status_flags(pool) {
        Some(f) if f & qgroup::STATUS_FLAG_SIMPLE != 0 => return QuotaMode::Simple,
        Some(f) if f & qgroup::STATUS_FLAG_ON != 0 => return QuotaMode::Full,
        _ => {}
    }
    if !enable {
        return QuotaMode::Off;
    }
    match enable_simple(pool) {
        Ok(()) => {
            tracing::info!(pool = %pool.display(), "enabled Btrfs simple quotas for disk limits");
            QuotaMode::Simple
        }
        Err(e) => {
            tracing::warn!(
                pool = %pool.display(), error = %e,
                "Btrfs simple quotas are unavailable (kernel < 6.7?): sandboxes have NO disk limit, \
                 one sandbox can fill the pool"
            );
            QuotaMode::Off
        }
    }
}

fn enable_simple(pool: &Path) -> io::Result<()> {
    let dir = File::open(pool)?;
    let mut args = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE_SIMPLE,
        status: 0,
    };
    // SAFETY: the fd is open for the call; `args` has the layout of
    // `struct btrfs_ioctl_quota_ctl_args` that this ioctl encodes.
    unsafe { btrfs_ioc_quota_ctl(dir.as_raw_fd(), &mut args) }.map_err(io::Error::from)?;
    Ok(())
}

/// Creates a new, empty level-1 qgroup with a random id and returns it.
pub(crate) fn create_group(pool: &Path) -> Result<u64, StorageError> {
    let dir = open(pool)?;
    loop {
        let n = rand::random::<u64>() & ID_MASK;
        let args = QgroupCreateArgs {
            create: 1,
            qgroupid: LEVEL_1 | n.max(1),
        };
        // SAFETY: the fd is open for the call; `args` has the layout of
        // `struct btrfs_ioctl_qgroup_create_args`.
        match unsafe { btrfs_ioc_qgroup_create(dir.as_raw_fd(), &args) } {
            Ok(_) => return Ok(args.qgroupid),
            Err(nix::errno::Errno::EEXIST) => continue,
            Err(e) => return Err(quota_err("create qgroup", pool, e.into())),
        }
    }
}

/// Limits what the members of `group` may allocate together to `bytes`.
pub(crate) fn set_limit(pool: &Path, group: u64, bytes: u64) -> Result<(), StorageError> {
    let dir = open(pool)?;
    let mut args = QgroupLimitArgs {
        qgroupid: group,
        flags: LIMIT_MAX_RFER,
        max_rfer: bytes,
        ..QgroupLimitArgs::default()
    };
    // SAFETY: the fd is open for the call; `args` has the layout of
    // `struct btrfs_ioctl_qgroup_limit_args` (qgroupid + btrfs_qgroup_limit).
    unsafe { btrfs_ioc_qgroup_limit(dir.as_raw_fd(), &mut args) }
        .map_err(|e| quota_err("limit qgroup", pool, e.into()))?;
    Ok(())
}

/// Limit and usage of `group`; `None` when quotas are off or unusable.
pub(crate) fn usage(pool: &Path, group: u64) -> Result<Option<DiskUsage>, StorageError> {
    let Some(sizes) = qgroup::read_one(pool, group)? else {
        return Ok(None);
    };
    let limit = qgroup::read_limit(pool, group)?;
    Ok(limit.map(|limit_bytes| DiskUsage {
        limit_bytes,
        used_bytes: sizes.referenced_bytes,
    }))
}

/// The group recorded in a sandbox dir's `qgroup` file, if any.
pub(crate) fn read_group_file(path: &Path) -> Result<Option<u64>, StorageError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().parse().ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io("read", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_args_have_kernel_layout() {
        assert_eq!(std::mem::size_of::<QuotaCtlArgs>(), 16);
        assert_eq!(std::mem::size_of::<QgroupCreateArgs>(), 16);
        assert_eq!(std::mem::size_of::<QgroupLimitArgs>(), 48);
    }

    #[test]
    fn read_group_file_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_group_file(&dir.path().join("qgroup")).unwrap(), None);
    }
}

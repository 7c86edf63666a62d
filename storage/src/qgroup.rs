//! Quota-group sizes, read straight from the quota tree with
//! `BTRFS_IOC_TREE_SEARCH` (no `btrfs` CLI on request paths).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::StorageError;

const QUOTA_TREE_OBJECTID: u64 = 8;
const QGROUP_STATUS_KEY: u32 = 240;
const QGROUP_INFO_KEY: u32 = 242;
const QGROUP_LIMIT_KEY: u32 = 244;
pub(crate) const STATUS_FLAG_ON: u64 = 1 << 0;
const STATUS_FLAG_RESCAN: u64 = 1 << 1;
const STATUS_FLAG_INCONSISTENT: u64 = 1 << 2;
/// `BTRFS_QGROUP_STATUS_FLAG_SIMPLE_MODE`: simple quotas.
pub(crate) const STATUS_FLAG_SIMPLE: u64 = 1 << 3;
const SEARCH_BUF_SIZE: usize = 4096 - std::mem::size_of::<SearchKey>();
const HEADER_LEN: usize = 32;

/// Exclusive and referenced bytes of one subvolume, from its level-0 qgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Sizes {
    pub exclusive_bytes: u64,
    pub referenced_bytes: u64,
}

#[repr(C)]
#[derive(Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; SEARCH_BUF_SIZE],
}

nix::ioctl_readwrite!(btrfs_ioc_tree_search, 0x94, 17, SearchArgs);

/// The quota state of a pool: `None` when quotas are off, inconsistent or
/// rescanning (numbers would be wrong), else sizes per subvolume id.
pub(crate) fn read_sizes(pool: &Path) -> Result<Option<HashMap<u64, Sizes>>, StorageError> {
    let dir = File::open(pool).map_err(|e| StorageError::io("open", pool, e))?;
    let mut sizes = HashMap::new();
    let mut status = None;
    let mut min_offset = 0u64;
    let mut min_type = QGROUP_STATUS_KEY;
    loop {
        let items = match search(&dir, (min_type, min_offset), (QGROUP_INFO_KEY, u64::MAX)) {
            Ok(items) => items,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(source) => {
                return Err(StorageError::Qgroup {
                    path: pool.to_owned(),
                    source,
                })
            }
        };
        let Some(&(last_type, last_offset, _)) = items.last() else {
            break;
        };
        for (ty, offset, data) in items {
            match ty {
                QGROUP_STATUS_KEY => status = le_u64(&data, 16),
                QGROUP_INFO_KEY if offset >> 48 == 0 => {
                    if let (Some(rfer), Some(excl)) = (le_u64(&data, 8), le_u64(&data, 24)) {
                        sizes.insert(
                            offset,
                            Sizes {
                                exclusive_bytes: excl,
                                referenced_bytes: rfer,
                            },
                        );
                    }
                }
                _ => {}
            }
        }
        if last_offset == u64::MAX {
            break;
        }
        (min_type, min_offset) = (last_type, last_offset + 1);
    }
    Ok(usable(status).then_some(sizes))
}

/// Sizes of the one subvolume `id`; `None` when quotas are off or unusable.
pub(crate) fn read_one(pool: &Path, id: u64) -> Result<Option<Sizes>, StorageError> {
    let dir = File::open(pool).map_err(|e| StorageError::io("open", pool, e))?;
    let qerr = |source| StorageError::Qgroup {
        path: pool.to_owned(),
        source,
    };
    let status = match search(&dir, (QGROUP_STATUS_KEY, 0), (QGROUP_STATUS_KEY, 0)) {
        Ok(items) => items.first().and_then(|(_, _, d)| le_u64(d, 16)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(qerr(e)),
    };
    if !usable(status) {
        return Ok(None);
    }
    let items = search(&dir, (QGROUP_INFO_KEY, id), (QGROUP_INFO_KEY, id)).map_err(qerr)?;
    Ok(items.first().and_then(|(_, _, d)| {
        Some(Sizes {
            referenced_bytes: le_u64(d, 8)?,
            exclusive_bytes: le_u64(d, 24)?,
        })
    }))
}

/// Whether quotas are on and their numbers are trustworthy right now.
fn usable(status_flags: Option<u64>) -> bool {
    status_flags.is_some_and(|f| {
        f & STATUS_FLAG_ON != 0 && f & (STATUS_FLAG_INCONSISTENT | STATUS_FLAG_RESCAN) == 0
    })
}

/// The quota status flags; `None` when there is no quota tree.
pub(crate) fn status_flags(pool: &Path) -> Option<u64> {
    let dir = File::open(pool).ok()?;
    search(&dir, (QGROUP_STATUS_KEY, 0), (QGROUP_STATUS_KEY, 0))
        .ok()?
        .iter()
        .find(|(ty, _, _)| *ty == QGROUP_STATUS_KEY)
        .and_then(|(_, _, d)| le_u64(d, 16))
}

/// The `max_rfer` limit of qgroup `id`; `None` when it has none.
pub(crate) fn read_limit(pool: &Path, id: u64) -> Result<Option<u64>, StorageError> {
    let dir = File::open(pool).map_err(|e| StorageError::io("open", pool, e))?;
    let items = search(&dir, (QGROUP_LIMIT_KEY, id), (QGROUP_LIMIT_KEY, id)).map_err(|source| {
        StorageError::Qgroup {
            path: pool.to_owned(),
            source,
        }
    })?;
    Ok(items
        .first()
        .and_then(|(_, _, d)| Some((le_u64(d, 0)?, le_u64(d, 8)?)))
        .and_then(|(flags, max)| (flags & 1 != 0).then_some(max)))
}

fn le_u64(data: &[u8], at: usize) -> Option<u64> {
    data.get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// One tree-search batch over quota-tree keys (0, type, offset) between
/// `min` and `max` as (type, offset): a list of (type, offset, item data).
fn search(dir: &File, min: (u32, u64), max: (u32, u64)) -> io::Result<Vec<(u32, u64, Vec<u8>)>> {
    let mut args = SearchArgs {
        key: SearchKey {
            tree_id: QUOTA_TREE_OBJECTID,
            max_offset: max.1,
            max_transid: u64::MAX,
            min_type: min.0,
            min_offset: min.1,
            max_type: max.0,
            nr_items: 4096,
            ..SearchKey::default()
        },
        buf: [0; SEARCH_BUF_SIZE],
    };
    // SAFETY: the fd is open for the call; `args` has the exact layout of
    // `struct btrfs_ioctl_search_args` (4096 bytes) that this ioctl encodes.
    unsafe { btrfs_ioc_tree_search(dir.as_raw_fd(), &mut args) }.map_err(io::Error::from)?;
    Ok(parse_items(&args.buf, args.key.nr_items))
}

fn parse_items(buf: &[u8], count: u32) -> Vec<(u32, u64, Vec<u8>)> {
    let mut items = Vec::with_capacity(count as usize);
    let mut at = 0;
    for _ in 0..count {
        let Some(hdr) = buf.get(at..at + HEADER_LEN) else {
            break;
        };
        let offset = le_u64(hdr, 16).unwrap_or(0);
        let ty = u32::from_le_bytes(hdr[24..28].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(hdr[28..32].try_into().expect("4 bytes")) as usize;
        let data = buf
            .get(at + HEADER_LEN..at + HEADER_LEN + len)
            .unwrap_or_default();
        items.push((ty, offset, data.to_vec()));
        at += HEADER_LEN + len;
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_requires_on_and_consistent() {
        assert!(usable(Some(STATUS_FLAG_ON)));
        assert!(!usable(None));
        assert!(!usable(Some(0)));
        assert!(!usable(Some(STATUS_FLAG_ON | STATUS_FLAG_INCONSISTENT)));
        assert!(!usable(Some(STATUS_FLAG_ON | STATUS_FLAG_RESCAN)));
    }

    #[test]
    fn parse_items_reads_headers_and_data() {
        let mut buf = vec![0u8; 64];
        buf[16..24].copy_from_slice(&257u64.to_le_bytes());
        buf[24..28].copy_from_slice(&QGROUP_INFO_KEY.to_le_bytes());
        buf[28..32].copy_from_slice(&8u32.to_le_bytes());
        buf[32..40].copy_from_slice(&7u64.to_le_bytes());
        let items = parse_items(&buf, 1);
        assert_eq!(
            items,
            vec![(QGROUP_INFO_KEY, 257, 7u64.to_le_bytes().to_vec())]
        );
    }

    #[test]
    fn search_key_has_kernel_layout() {
        assert_eq!(std::mem::size_of::<SearchKey>(), 104);
        assert_eq!(std::mem::size_of::<SearchArgs>(), 4096);
    }
}

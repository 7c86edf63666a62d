//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

use crate::names::NameError;

/// Everything a storage operation can fail with.
///
/// `NotFound` and `AlreadyExists` are the two conditions a caller is expected
/// to branch on (HTTP 404 / 409); the other variants name the operation that
/// failed and carry the path it failed on.
#[derive(thiserror::Error, Debug)]
pub enum StorageError {
    #[error("rewind storage must run as root (effective uid {euid})")]
    NotRoot { euid: u32 },
    #[error("the running kernel has no Btrfs support")]
    BtrfsUnsupported,
    #[error("mkfs.btrfs not found in PATH, /usr/sbin or /sbin (install btrfs-progs)")]
    MkfsMissing,
    #[error("{what} {name:?} already exists")]
    AlreadyExists { what: &'static str, name: String },
    #[error("{what} {name:?} not found")]
    NotFound { what: &'static str, name: String },
    #[error("invalid name")]
    InvalidName(#[from] NameError),
    #[error("mkfs.btrfs failed on {path}: {stderr}")]
    Mkfs { path: PathBuf, stderr: String },
    #[error("could not {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("btrfs {op} failed on {path}")]
    Btrfs {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: libbtrfsutil::Error,
    },
    #[error("could not {op} {path} with {other}")]
    Rename {
        op: &'static str,
        path: PathBuf,
        other: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not mount {image} at {target}")]
    Mount {
        image: PathBuf,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not read quota groups of {path}")]
    Qgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not {op} on {path}")]
    Quota {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bad snapshot archive: {reason}")]
    BadArchive { reason: String },
    #[error("btrfs send from {from} to {to} failed: {stderr}")]
    Send {
        from: PathBuf,
        to: PathBuf,
        stderr: String,
    },
    #[error("could not read the send stream from {from} to {to}")]
    SendStream {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: crate::send_stream::StreamError,
    },
    #[error("cold snapshot {name:?} cannot be restored: {reason}")]
    ColdHistory { name: String, reason: String },
    #[error("not enough free space in the pool: {needed} bytes needed, {available} available")]
    NoSpace { needed: u64, available: u64 },
    #[error("{path} is not a Btrfs pool: {reason}")]
    NotAPool { path: PathBuf, reason: &'static str },
}

impl StorageError {
    /// Whether the pool (or the sandbox's disk limit) ran out of space:
    /// `ENOSPC` or `EDQUOT` from the failed call.
    pub fn is_no_space(&self) -> bool {
        if matches!(self, StorageError::NoSpace { .. }) {
            return true;
        }
        let errno = match self {
            StorageError::Io { source, .. }
            | StorageError::Rename { source, .. }
            | StorageError::Quota { source, .. } => source.raw_os_error(),
            StorageError::Btrfs { source, .. } => Some(source.errno()),
            _ => None,
        };
        matches!(errno, Some(libc::ENOSPC | libc::EDQUOT))
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn btrfs(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: libbtrfsutil::Error,
    ) -> Self {
        StorageError::Btrfs {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn not_found(what: &'static str, name: impl AsRef<str>) -> Self {
        StorageError::NotFound {
            what,
            name: name.as_ref().to_owned(),
        }
    }

    pub(crate) fn exists(what: &'static str, name: impl AsRef<str>) -> Self {
        StorageError::AlreadyExists {
            what,
            name: name.as_ref().to_owned(),
        }
    }
}

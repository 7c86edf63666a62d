//! The storage operations, one file per lifecycle step.

mod archive;
pub(crate) mod cold;
mod create;
pub(crate) mod delete;
mod diff;
mod import;
mod list;
pub(crate) mod restore;
mod snapshot;
mod template;

use std::time::SystemTime;

use crate::names::{SandboxName, SnapshotName};
use crate::qgroup::Sizes;
use crate::thinning::Retention;

pub use archive::{Received, ARCHIVE_MAGIC};
pub use cold::Tier;
pub(crate) use list::read_template_name;

/// How a new workspace starts.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Start as a writable snapshot of this template (else empty).
    pub template: Option<SnapshotName>,
    /// chown the new workspace root to (uid, gid).
    pub owner: Option<(u32, u32)>,
    /// Start as a writable snapshot of another sandbox's snapshot (a fork),
    /// and its state dir from that snapshot's state when it has one. Takes
    /// precedence over `template` for the initial contents; wipe still uses
    /// `template`.
    pub fork_from: Option<(SandboxName, SnapshotName)>,
    /// Disk limit over everything the sandbox writes (live, state and the
    /// extents its snapshots keep); ignored when the pool has no quotas.
    pub disk_limit_bytes: Option<u64>,
    /// Start as a writable snapshot of a received archive
    /// ([`crate::Storage::receive_archive`]); takes precedence over both.
    pub import: Option<Received>,
}

/// Whether retention may prune a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// Taken automatically; thinned by [`crate::Thinning`].
    Auto,
    /// Named or pinned by the user; never pruned.
    Kept,
}

/// One snapshot as listed.
#[derive(Clone, Debug)]
pub struct SnapshotInfo {
    pub name: String,
    pub created: SystemTime,
    pub kind: SnapshotKind,
    /// Whether the sandbox's state dir was snapshotted with it.
    pub has_state: bool,
    /// Why thinning keeps it; `None`: an automatic snapshot that the
    /// background worker is about to thin (still restorable until then).
    pub retention: Option<Retention>,
    /// From the snapshot's quota group as of the last committed transaction;
    /// `None` when quotas are off, inconsistent or rescanning (and for
    /// cold snapshots).
    pub sizes: Option<Sizes>,
    /// Hot (a subvolume) or cold (an archived stream; restores slower).
    pub tier: Tier,
}

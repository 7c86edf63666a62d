//! rewind's storage engine: every sandbox workspace is a Btrfs subvolume,
//! every snapshot a read-only Btrfs snapshot of it (one ioctl, O(1) in the
//! size of the workspace), and restore swaps a writable snapshot into place
//! with one atomic `renameat2(RENAME_EXCHANGE)`.
//!
//! No HTTP here, and no `btrfs` CLI on any request path: subvolumes go
//! through libbtrfsutil, quota-group sizes through `BTRFS_IOC_TREE_SEARCH`
//! on the quota tree. The only external program is `mkfs.btrfs`, run once
//! when a pool image is created.
//!
//! # The pool
//!
//! [`Storage::open`] uses the data dir directly when it is on Btrfs.
//! Otherwise it creates a sparse `<data>/pool.img` (built as
//! `pool.img.tmp`, formatted, then renamed), formats it with `mkfs.btrfs -R
//! quota` (quota groups on from the start, when [`PoolConfig::quotas`]),
//! attaches it to a free loop device (autoclear) and mounts it at
//! `<data>/pool`. A pool that is already mounted there is reused, so
//! opening twice or after a service restart never double-mounts; after a
//! reboot it is mounted again. Pool setup is serialized across processes by
//! `flock(<data>/.pool.lock)`. The pool is mounted `noatime` (a reused
//! mount without it is bind-remounted `noatime`), so reading a file never
//! dirties its inode and a read-only command leaves nothing for the next
//! snapshot to copy; a data dir that is already on Btrfs keeps its owner's
//! mount options (a warning is logged when it updates access times).
//!
//! # On-disk layout (inside the pool)
//!
//! ```text
//! sandboxes/
//!   <sandbox>/                    plain directory, one per sandbox
//!     live                        rw subvolume: the workspace (workspace_path)
//!     state                       rw subvolume: runtime state (state_dir)
//!     template                    file: template name, absent = empty workspace
//!     qgroup                      file: id of the disk-limit qgroup, absent = no limit
//!     snaps/<snap>                ro subvolume: snapshot of live (snapshot_path)
//!     snapstate/<snap>            ro subvolume: snapshot of state (with_state only)
//!     kept/<snap>                 empty file: snapshot is Kept (never pruned)
//!     aux/<snap>/                 plain dir: data belonging to the snapshot
//!     cold/<snap>/                archived (cold) snapshot: stream + meta files
//!     cold/.base-<uuid>/          a deleted snapshot kept as cold snapshots' base
//!     cold/.new-<snap>/           an archive being written
//!     live.new, state.new         temporaries of an in-progress restore/wipe
//!     exchange.intent[.tmp]       ids of live.new/state.new during a state restore
//!   .create-<sandbox>.<unique>/   a sandbox being created (same contents)
//!   .import.<unique>/             an archive being received (staging)
//!   .export.<unique>/<snap>       read-only clone a full export walks
//! templates/<name>                rw subvolume per template
//! trash/<unique>                  things being deleted by the background worker
//! ```
//!
//! A snapshot's kind is the presence of its `kept/` marker, so pinning is
//! creating one file and a snapshot's path never changes. Names of
//! temporaries start with `.` or contain a `.new`/`.intent` suffix under a
//! fixed name, so they can never collide with a validated [`SandboxName`] or
//! [`SnapshotName`] (which may not start with `.`).
//!
//! # Operations and their commit points
//!
//! Each mutating operation is a sequence of steps with exactly one atomic
//! commit point; before it the old state is fully intact, after it the new
//! one is complete.
//!
//! * **create**: build the whole sandbox dir under `.create-…`, then
//!   `renameat2(RENAME_NOREPLACE)` to `sandboxes/<name>` (commit).
//! * **snapshot**: `kept/` marker (Kept only), then `snapstate/<snap>`
//!   (with state only), then `snaps/<snap>` (commit: one snapshot ioctl).
//! * **restore**: writable snapshot of `snaps/<snap>` at `live.new`; for a
//!   snapshot with state also `state.new`, then `exchange.intent` (written to
//!   `.tmp`, fsynced, renamed: commit), then exchange `state.new`↔`state`;
//!   then exchange `live.new`↔`live` (commit when there is no state); the
//!   displaced old subvolumes go to the trash.
//! * **wipe**: `live.new` = snapshot of the template or an empty subvolume,
//!   chown/chmod to the old root's owner and mode, exchange (commit), old
//!   to the trash. The state dir is not touched.
//! * **delete snapshot**: delete `snaps/<snap>` (commit; read-only
//!   subvolumes cannot be moved out of their directory, so they are deleted
//!   in place — the ioctl unlinks atomically and the kernel's cleaner frees
//!   the extents in the background), then its `snapstate`, `aux`, marker.
//! * **export**: no state change. Full: a read-only clone of
//!   `snaps/<snap>` in `.export.<unique>/` (so thinning cannot pull the
//!   tree away mid-walk), its send stream generated in userspace
//!   (`send_gen`), the clone to the trash; recovery trashes `.export.*`.
//!   Incremental: `BTRFS_IOC_SEND` (the kernel refuses to delete a
//!   snapshot while it is being sent). Format in `ops/archive.rs`.
//! * **import**: `.import.<unique>/` staging dir (the quarantine), the
//!   archive's bytes hashed and fed to `btrfs receive` as they arrive, the
//!   SHA-256 trailer verified, then **create** with
//!   [`CreateOptions::import`] (commit: create's rename), then the staging
//!   dir to the trash. Recovery trashes `.import.*`.
//! * **archive to cold** (thinning with [`PoolConfig::cold_history`]):
//!   stream + meta under `cold/.new-<snap>`, fsynced, renamed to
//!   `cold/<snap>` (commit), then **delete snapshot** of the hot one. The
//!   send runs outside the sandbox lock, under an archive gate that every
//!   deletion takes before its sandbox lock.
//!   Recovery trashes `.new-*` and deletes the hot copy of a snapshot that
//!   is both. Restoring a cold snapshot receives its chain into an
//!   `.import.<unique>/` staging dir, then runs the **restore** steps from
//!   it. Details in `ops/cold.rs`.
//! * **delete sandbox**: rename `sandboxes/<name>` into `trash/` (commit);
//!   the background worker deletes every subvolume in it.
//!
//! # Invariants
//!
//! 1. `sandboxes/<name>/live` always exists for an existing sandbox and is
//!    a complete workspace: the old one or the new one, never missing and
//!    never half-built (renames and exchanges are atomic; temporaries are
//!    only ever built under other names).
//! 2. With a state restore, `live` and `state` come from the same snapshot
//!    once recovery has run: without `exchange.intent` no exchange has
//!    happened; with it, recovery completes both exchanges, identifying the
//!    new subvolumes by the ids recorded in the intent.
//! 3. A snapshot exists iff `snaps/<snap>` (hot) or `cold/<snap>` (cold)
//!    exists. `snapstate/`, `kept/` and `aux/` entries without a hot one
//!    are orphans (cold snapshots are automatic and have none).
//! 4. Everything in `trash/` and every `live.new`, `state.new`,
//!    `exchange.intent*` and `.create-*` outside an operation in progress is
//!    garbage.
//! 5. Every path is built from fixed components and validated names.
//!
//! # Recovery
//!
//! [`Storage::open`] runs recovery before anything else: half-created
//! sandboxes go to the trash; in each sandbox an interrupted swap is rolled
//! forward (intent present) or its temporaries removed (which rolls back an
//! unfinished build, or finishes a swap whose old side was not yet
//! trashed); orphaned snapshot parts are removed; the trash is re-queued.
//! Each action is logged and listed in [`Storage::recovery_report`]. The
//! same swap clean-up also runs at the start of every restore and wipe.
//! Recovery is pool-wide, so it runs only when no other `Storage` has the
//! pool open: every instance holds a shared `flock` on
//! `<pool>/.rewind-storage.lock`, recovery takes it exclusively (non-blocking)
//! and is skipped — with a line in the report — when that fails, so a second
//! instance never rolls back the first one's operations in flight.
//!
//! # Concurrency, retention, sizes
//!
//! Operations on one sandbox are serialized by a per-sandbox lock (a set of
//! busy names under a mutex that is never held across I/O); different
//! sandboxes run in parallel. A background thread empties the trash and
//! thins the `Auto` snapshots of a sandbox after each new one (the policy
//! is in [`Thinning`]: the newest [`PoolConfig::keep_recent`], then a
//! 5-minute/hourly/daily spread, at most
//! [`PoolConfig::max_auto_snapshots`]); `Kept` snapshots are never pruned.
//! Thinning adds no commit point of its own: it is a series of **delete
//! snapshot** operations, each under the sandbox's lock for that one
//! deletion only (the plan is computed without the lock; a snapshot pinned
//! meanwhile is re-checked under it and spared).
//! When its queue runs empty after deleting, it commits with
//! `BTRFS_IOC_SYNC`, which wakes the kernel's cleaner so deleted subvolumes
//! are dropped now instead of at the next 30 s tick (until then they keep
//! their back references and slow every snapshot down).
//! [`Storage::flush_background`] waits for it, that commit included.
//!
//! Sizes come from each snapshot's level-0 quota group as of the last
//! committed transaction ([`Storage::sync`] commits); they are `None` when
//! full quota groups are off (simple quotas do not count shared extents per
//! snapshot), being rescanned, or flagged inconsistent.
//!
//! # Disk limits
//!
//! A sandbox created with [`CreateOptions::disk_limit_bytes`] gets its own
//! level-1 quota group (`1/<random>`, id in `sandboxes/<sb>/qgroup`, written
//! before any subvolume exists) with a `max_rfer` limit; every subvolume of
//! the sandbox joins it at creation through the snapshot/create ioctl's
//! qgroup-inherit argument: `live` and `state` at create, `live.new` and
//! `state.new` at restore and wipe, and every snapshot. A write that would
//! take the group past its limit fails with `EDQUOT` inside the sandbox;
//! snapshots and restores still succeed at the limit (they allocate only
//! metadata). The namespace runtime's overlay upper dir lives in `state`,
//! so files written outside `/workspace` count too.
//!
//! The accounting is Btrfs **simple quotas** (kernel ≥ 6.7), enabled by
//! [`Storage::open`] with `BTRFS_IOC_QUOTA_CTL` (cmd 4) on a pool without
//! quotas when [`PoolConfig::disk_limits`] is set. They charge an extent to
//! the subvolume that allocated it, at allocation, for as long as the extent
//! exists anywhere — no backref walks, which is what made full quota groups
//! slow (`docs/benchmarks.md`). Hence why a parent group, measured before
//! deciding: limiting only `live`'s own group would let a restore reset the
//! account (`live.new` is a new subvolume with a new, empty group, while the
//! old live's extents live on in snapshots and stay charged to a group
//! nobody limits), so write → snapshot → restore → write could fill the
//! pool. With the parent group the limit holds across any number of
//! restores (measured: 100 MiB written, snapshot, restore, then a 150 MiB
//! write stopped at 100 MiB under a 200 MiB limit). The price of the same
//! rule: **what the sandbox's snapshots keep counts against its limit**.
//! Deleting a file that a snapshot still holds frees nothing; deleting that
//! snapshot (or retention pruning it) frees it once the kernel's cleaner has
//! dropped it and a transaction has committed.
//!
//! A pool that already has full quota groups ([`PoolConfig::quotas`]) uses
//! them for the same parent groups and limits (measured consistent: a
//! snapshot inherited into the parent counts its shared extents once); simple
//! quotas are never enabled on top (the two modes exclude each other), and
//! per-snapshot sizes are reported only with full quota groups (with simple
//! quotas a snapshot owns almost nothing). Where simple quotas cannot be
//! enabled (older kernel) the pool stays without quotas, a warning is
//! logged, and limits are ignored ([`Storage::quota_mode`] says which).
//! Sandboxes created before limits were on have no group and no limit;
//! level-1 groups of deleted sandboxes stay in the quota tree (one small
//! item each).
//!
//! # Crash tests
//!
//! With the `failpoints` feature, the process aborts at the step named by
//! `REWIND_STORAGE_FAILPOINT` (see [`failpoint::FAILPOINTS`]); the crash
//! tests use it in child processes. Without the feature the hooks compile
//! to nothing.

mod background;
mod btrfs;
mod error;
pub mod failpoint;
mod layout;
pub mod leftovers;
mod loopdev;
mod names;
mod ops;
mod pool;
mod qgroup;
mod quota;
mod recovery;
mod send_gen;
mod send_proto;
mod send_stream;
mod storage;
mod thinning;

pub use error::StorageError;
pub use names::{NameError, SandboxName, SnapshotName, MAX_NAME_LEN};
pub use ops::{CreateOptions, Received, SnapshotInfo, SnapshotKind, Tier, ARCHIVE_MAGIC};
pub use qgroup::Sizes;
pub use quota::{DiskUsage, QuotaMode};
pub use send_stream::{ChangeKind, RawChange};
pub use storage::{PoolConfig, Storage, DEFAULT_IMAGE_SIZE, DEFAULT_MAX_AUTO_SNAPSHOTS};
pub use thinning::{Retention, Thinning, DEFAULT_KEEP_RECENT};

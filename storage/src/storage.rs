//! The `Storage` handle: configuration, the pool, per-sandbox locks and the
//! helpers every operation shares. The operations live in `ops/`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use nix::fcntl::Flock;

use crate::background::{Background, Job};
use crate::btrfs;
use crate::error::StorageError;
use crate::layout::Layout;
use crate::names::SandboxName;
use crate::pool;
use crate::quota::{self, DiskUsage, QuotaMode};
use crate::recovery;

/// 20 GiB.
pub const DEFAULT_IMAGE_SIZE: u64 = 20 << 30;
pub const DEFAULT_MAX_AUTO_SNAPSHOTS: usize = 1000;

/// Where the pool lives and how it behaves.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Used directly when on Btrfs; otherwise holds `pool.img` and the mount point `pool/`.
    pub data_dir: PathBuf,
    /// Size of the sparse image created when `data_dir` is not on Btrfs.
    pub image_size_bytes: u64,
    /// Hard cap on automatic snapshots kept per sandbox (see [`crate::Thinning`]).
    pub max_auto_snapshots: usize,
    /// Newest automatic snapshots always kept; older ones are thinned to a
    /// 5-minute/hourly/daily spread (see [`crate::Thinning`]).
    pub keep_recent: usize,
    /// Enable Btrfs quota groups (needed for snapshot sizes) when this
    /// creates a new pool image. Default true. Applies at creation only: an
    /// existing pool keeps whatever quota state it has. Full qgroups make
    /// every transaction commit pay for accounting, and deleting
    /// subvolumes very expensive (see docs/benchmarks.md).
    pub quotas: bool,
    /// Turn on Btrfs simple quotas when the pool has no quotas yet, so
    /// sandboxes can get disk limits ([`CreateOptions::disk_limit_bytes`]).
    /// Default true. Without it (or on a kernel without simple quotas, or
    /// with quotas off for good) limits are ignored.
    pub disk_limits: bool,
    /// Archive thinned automatic snapshots as incremental send streams
    /// (the cold tier, `ops/cold.rs`) instead of deleting them. Default false.
    pub cold_history: bool,
}

impl PoolConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        PoolConfig {
            data_dir: data_dir.into(),
            image_size_bytes: DEFAULT_IMAGE_SIZE,
            max_auto_snapshots: DEFAULT_MAX_AUTO_SNAPSHOTS,
            keep_recent: crate::thinning::DEFAULT_KEEP_RECENT,
            quotas: true,
            disk_limits: true,
            cold_history: false,
        }
    }
}

/// The storage engine. Cheap to clone; all clones share one pool, one lock
/// table and one background worker.
#[derive(Clone)]
pub struct Storage {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub layout: Layout,
    pub cfg: PoolConfig,
    /// Full quota groups: per-snapshot sizes are meaningful.
    pub quotas: bool,
    pub quota_mode: QuotaMode,
    pub report: Vec<String>,
    /// Sandboxes with an operation in progress; waiters sleep on `released`.
    busy: Mutex<HashSet<SandboxName>>,
    released: Condvar,
    pub bg: Background,
    /// Held while a snapshot is archived to the cold tier, and by every
    /// deletion (taken before a sandbox lock): the kernel refuses to delete
    /// a subvolume a send is reading, so deletions wait for the send
    /// instead of failing. Runs and restores never take it.
    archive_gate: Mutex<()>,
    /// Shared `flock` on the pool, held for this instance's lifetime.
    _pool_lock: Flock<File>,
}

/// Holds one sandbox's lock; released on drop.
pub(crate) struct SandboxGuard {
    inner: Arc<Inner>,
    sandbox: SandboxName,
}

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        let mut busy = self.inner.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.remove(&self.sandbox);
        self.inner.released.notify_all();
    }
}

impl Storage {
    /// Ensures the pool, runs crash recovery and starts the background worker.
    pub fn open(cfg: PoolConfig) -> Result<Storage, StorageError> {
        let pool = pool::ensure(&cfg)?;
        Self::open_in(cfg, pool)
    }

    /// A `Storage` on the plain directory `cfg.data_dir`: no root, no Btrfs,
    /// no quotas, no mount. Only for tests of the layers above (the API's
    /// validation, ownership and status mapping, without root): every
    /// operation that needs a subvolume fails with a [`StorageError`].
    #[cfg(feature = "test-util")]
    pub fn open_plain_dir(cfg: PoolConfig) -> Result<Storage, StorageError> {
        let pool = pool::Pool {
            path: cfg.data_dir.clone(),
            quota: QuotaMode::Off,
        };
        Self::open_in(cfg, pool)
    }

    fn open_in(cfg: PoolConfig, pool: pool::Pool) -> Result<Storage, StorageError> {
        let layout = Layout { root: pool.path };
        for dir in [layout.sandboxes(), layout.templates(), layout.trash()] {
            fs::create_dir_all(&dir).map_err(|e| StorageError::io("create", &dir, e))?;
        }
        let recovered = recovery::lock_and_recover(&layout)?;
        let root = layout.root.clone();
        let inner = Arc::new(Inner {
            layout,
            cfg,
            quotas: pool.quota == QuotaMode::Full,
            quota_mode: pool.quota,
            report: recovered.report,
            busy: Mutex::new(HashSet::new()),
            released: Condvar::new(),
            bg: Background::start(root),
            archive_gate: Mutex::new(()),
            _pool_lock: recovered.lock,
        });
        for path in recovered.trash {
            inner.bg.submit(Job::Delete(path));
        }
        Ok(Storage { inner })
    }

    /// The root of the Btrfs pool (the data dir or `<data>/pool`).
    pub fn pool_path(&self) -> &Path {
        &self.inner.layout.root
    }

    /// Whether full Btrfs quota groups are enabled (sizes can be reported).
    pub fn quotas_enabled(&self) -> bool {
        self.inner.quotas
    }

    /// How disk use is accounted: whether sandboxes can have disk limits.
    pub fn quota_mode(&self) -> QuotaMode {
        self.inner.quota_mode
    }

    /// What startup recovery did, one line per action.
    pub fn recovery_report(&self) -> &[String] {
        &self.inner.report
    }

    /// Waits until queued background deletions and prunes are done.
    pub fn flush_background(&self) {
        self.inner.bg.flush();
    }

    /// Commits the pool's current Btrfs transaction, so that sizes reflect
    /// every write made before this call.
    pub fn sync(&self) -> Result<(), StorageError> {
        btrfs::sync(self.pool_path())
    }

    /// The disk-limit qgroup of the sandbox in `dir`, when it has one and
    /// quotas are on (new subvolumes of the sandbox join it).
    pub(crate) fn disk_group(&self, dir: &Path) -> Result<Option<u64>, StorageError> {
        if self.inner.quota_mode == QuotaMode::Off {
            return Ok(None);
        }
        quota::read_group_file(&dir.join(crate::layout::QGROUP_FILE))
    }

    /// The disk limit of sandbox `sb` and its use as of the last committed
    /// transaction; `None` when it has no limit or quotas are off.
    pub fn disk_usage(&self, sb: &SandboxName) -> Result<Option<DiskUsage>, StorageError> {
        let dir = self.layout().sandbox(sb);
        if !dir.is_dir() {
            return Err(StorageError::not_found("sandbox", sb));
        }
        match self.disk_group(&dir)? {
            Some(group) => quota::usage(self.pool_path(), group),
            None => Ok(None),
        }
    }

    /// Change the disk limit of sandbox `sb` to `bytes`, live (its qgroup's
    /// `max_rfer`). `Ok(false)` when it has no limit to change (quotas off,
    /// or a sandbox created without one): nothing was changed.
    pub fn set_disk_limit(&self, sb: &SandboxName, bytes: u64) -> Result<bool, StorageError> {
        let dir = self.layout().sandbox(sb);
        if !dir.is_dir() {
            return Err(StorageError::not_found("sandbox", sb));
        }
        match self.disk_group(&dir)? {
            Some(group) => quota::set_limit(self.pool_path(), group, bytes).map(|()| true),
            None => Ok(false),
        }
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// Takes the lock of one sandbox, waiting while another operation on
    /// it runs. The table mutex is held only to test-and-insert the name,
    /// never across I/O; different sandboxes never wait on each other.
    pub(crate) fn lock(&self, sb: &SandboxName) -> SandboxGuard {
        let mut busy = self.inner.busy.lock().unwrap_or_else(|p| p.into_inner());
        while busy.contains(sb) {
            busy = self
                .inner
                .released
                .wait(busy)
                .unwrap_or_else(|p| p.into_inner());
        }
        busy.insert(sb.clone());
        SandboxGuard {
            inner: Arc::clone(&self.inner),
            sandbox: sb.clone(),
        }
    }

    /// The archive gate (see [`Inner`]); take it before any sandbox lock.
    pub(crate) fn archive_gate(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .archive_gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Locks `sb` and checks it exists.
    pub(crate) fn lock_existing(&self, sb: &SandboxName) -> Result<SandboxGuard, StorageError> {
        let guard = self.lock(sb);
        if !self.layout().sandbox(sb).is_dir() {
            return Err(StorageError::not_found("sandbox", sb));
        }
        Ok(guard)
    }

    /// Atomically moves `path` into the trash and queues its deletion.
    /// A missing `path` is not an error.
    pub(crate) fn trash(&self, path: &Path, label: &str) -> Result<(), StorageError> {
        let slot = self.layout().trash_slot(label);
        match fs::rename(path, &slot) {
            Ok(()) => {
                self.inner.bg.submit(Job::Delete(slot));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(btrfs::rename_err(path, &slot, e)),
        }
    }

    /// The thinning policy from the pool's configuration.
    pub(crate) fn thinning(&self) -> crate::Thinning {
        crate::Thinning {
            keep_recent: self.inner.cfg.keep_recent,
            max_auto: self.inner.cfg.max_auto_snapshots,
        }
    }

    pub(crate) fn submit(&self, job: Job) {
        self.inner.bg.submit(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Storage>();
    }

    #[test]
    fn pool_config_new_has_defaults() {
        let cfg = PoolConfig::new("/x");
        assert_eq!(cfg.data_dir, PathBuf::from("/x"));
        assert_eq!(cfg.image_size_bytes, 20 << 30);
        assert_eq!(cfg.max_auto_snapshots, 1000);
        assert_eq!(cfg.keep_recent, 64);
        assert!(cfg.quotas);
        assert!(cfg.disk_limits);
    }
}

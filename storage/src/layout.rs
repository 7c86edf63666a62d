//! Every path inside the pool, built from fixed components and validated
//! names only. See the crate docs for the picture.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::names::{SandboxName, SnapshotName};

pub(crate) const SANDBOXES: &str = "sandboxes";
pub(crate) const TEMPLATES: &str = "templates";
pub(crate) const TRASH: &str = "trash";
pub(crate) const LIVE: &str = "live";
pub(crate) const LIVE_NEW: &str = "live.new";
pub(crate) const STATE: &str = "state";
pub(crate) const STATE_NEW: &str = "state.new";
pub(crate) const INTENT: &str = "exchange.intent";
pub(crate) const INTENT_TMP: &str = "exchange.intent.tmp";
pub(crate) const TEMPLATE_FILE: &str = "template";
/// File holding the id of the sandbox's level-1 qgroup (disk limit).
pub(crate) const QGROUP_FILE: &str = "qgroup";
pub(crate) const SNAPS: &str = "snaps";
pub(crate) const SNAPSTATE: &str = "snapstate";
pub(crate) const KEPT: &str = "kept";
pub(crate) const AUX: &str = "aux";
/// Cold history: one directory per archived snapshot (see `ops/cold.rs`).
pub(crate) const COLD: &str = "cold";
/// Prefix of sandbox directories still being built by `create_workspace`.
pub(crate) const CREATING_PREFIX: &str = ".create-";
pub(crate) const IMPORTING_PREFIX: &str = ".import.";
/// Prefix of an export's private read-only clone of the snapshot it walks.
pub(crate) const EXPORTING_PREFIX: &str = ".export.";

/// Path arithmetic over one pool.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn sandboxes(&self) -> PathBuf {
        self.root.join(SANDBOXES)
    }
    pub fn templates(&self) -> PathBuf {
        self.root.join(TEMPLATES)
    }
    pub fn trash(&self) -> PathBuf {
        self.root.join(TRASH)
    }
    pub fn template(&self, name: &SnapshotName) -> PathBuf {
        self.templates().join(name.as_ref())
    }
    pub fn sandbox(&self, sb: &SandboxName) -> PathBuf {
        self.sandboxes().join(sb.as_ref())
    }
    pub fn live(&self, sb: &SandboxName) -> PathBuf {
        self.sandbox(sb).join(LIVE)
    }
    pub fn state(&self, sb: &SandboxName) -> PathBuf {
        self.sandbox(sb).join(STATE)
    }
    pub fn snap(&self, sb: &SandboxName, snap: &SnapshotName) -> PathBuf {
        self.sandbox(sb).join(SNAPS).join(snap.as_ref())
    }
    pub fn snap_state(&self, sb: &SandboxName, snap: &SnapshotName) -> PathBuf {
        self.sandbox(sb).join(SNAPSTATE).join(snap.as_ref())
    }
    pub fn kept_marker(&self, sb: &SandboxName, snap: &SnapshotName) -> PathBuf {
        self.sandbox(sb).join(KEPT).join(snap.as_ref())
    }
    pub fn aux(&self, sb: &SandboxName, snap: &SnapshotName) -> PathBuf {
        self.sandbox(sb).join(AUX).join(snap.as_ref())
    }
    pub fn cold_dir(&self, sb: &SandboxName) -> PathBuf {
        self.sandbox(sb).join(COLD)
    }
    pub fn cold(&self, sb: &SandboxName, snap: &SnapshotName) -> PathBuf {
        self.cold_dir(sb).join(snap.as_ref())
    }
    /// A fresh, unique path in the trash for something called `label`.
    pub fn trash_slot(&self, label: &str) -> PathBuf {
        self.trash().join(unique(label))
    }
    /// A fresh staging directory name for receiving an archive.
    pub fn importing(&self) -> PathBuf {
        self.sandboxes()
            .join(unique(IMPORTING_PREFIX.trim_end_matches('.')))
    }
    /// A fresh directory name for an export's private clone.
    pub fn exporting(&self) -> PathBuf {
        self.sandboxes()
            .join(unique(EXPORTING_PREFIX.trim_end_matches('.')))
    }
    /// A fresh temporary directory name for creating sandbox `sb`.
    pub fn creating(&self, sb: &SandboxName) -> PathBuf {
        self.sandboxes()
            .join(unique(&format!("{CREATING_PREFIX}{sb}")))
    }
}

/// `label.<nanos>.<pid>.<counter>`: unique across threads and processes.
fn unique(label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{label}.{nanos}.{}.{n}", std::process::id())
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

//! What a step changed: the paths added, modified and deleted between two
//! snapshots, from Btrfs itself (the kernel's incremental send without
//! data, see `rewind_storage::Storage::diff`) — never by walking and
//! hashing both trees — with each path's type and size before/after read
//! host side from the two read-only snapshots, and optionally a unified
//! diff of small text files. A directory whose only change is its times
//! (an entry was added or removed in it) is not listed.

use std::io::Read;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use rewind_storage::{RawChange, SandboxName, SnapshotName, Storage};
use serde::Serialize;

use super::files::FileEntry;
use super::snapshot_files::{lstat_in_root, open_in_root, workspace_path};
use super::{SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::Db;

/// How a path changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One changed path.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Change {
    /// Absolute path inside the sandbox.
    pub path: String,
    pub change: ChangeKind,
    /// `file`, `directory`, `symlink` or `other` (after; before for a deletion).
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub size_before: Option<u64>,
    pub size_after: Option<u64>,
    /// Unified diff, for text files up to `files.max_diff_content_bytes`
    /// when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// The changes from snapshot `from` to snapshot `to`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Diff {
    pub from: String,
    pub to: String,
    pub added: usize,
    pub modified: usize,
    pub deleted: usize,
    pub changes: Vec<Change>,
}

/// A run's `changes`: counts, and the paths when there are at most
/// `files.max_change_paths` of them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChangeSummary {
    pub added: usize,
    pub modified: usize,
    pub deleted: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<Change>>,
}

impl Diff {
    fn new(from: String, to: String, changes: Vec<Change>) -> Diff {
        let count = |k| changes.iter().filter(|c| c.change == k).count();
        Diff {
            from,
            to,
            added: count(ChangeKind::Added),
            modified: count(ChangeKind::Modified),
            deleted: count(ChangeKind::Deleted),
            changes,
        }
    }

    /// The summary a run reports, naming at most `max_paths` paths.
    pub fn summary(self, max_paths: usize) -> ChangeSummary {
        let fits = self.changes.len() <= max_paths;
        ChangeSummary {
            added: self.added,
            modified: self.modified,
            deleted: self.deleted,
            paths: fits.then_some(self.changes),
        }
    }
}

impl Sandboxes {
    /// `GET /vms/:name/snapshots/:snapshot/diff?from=`: what changed from
    /// `from` (default: the snapshot before `snapshot` in the history) to
    /// `snapshot`; with `content`, unified diffs of small text files.
    pub async fn diff(
        &self,
        caller: &Caller,
        name: &str,
        snapshot: &str,
        from: Option<&str>,
        content: bool,
    ) -> Result<Diff, SandboxError> {
        let to = super::parse_snapshot_name("snapshot", snapshot)?;
        let from = from
            .map(|f| super::parse_snapshot_name("from", f))
            .transpose()?;
        let row = self.find(caller, name).await?;
        self.snapshot_root(caller, name, snapshot).await?;
        let from = match from {
            Some(f) => {
                self.snapshot_row(row.id, &f, false).await?;
                f
            }
            None => self.previous_snapshot(row.id, &to).await?,
        };
        let sandbox = super::parse_sandbox_name(&row.name)?;
        let cap = content.then_some(self.config.files.max_diff_content_bytes);
        self.diff_snapshots(&sandbox, &from, &to, cap).await
    }

    /// The snapshot recorded just before `snap` (400 when it is the first).
    async fn previous_snapshot(
        &self,
        sandbox_id: i64,
        snap: &SnapshotName,
    ) -> Result<SnapshotName, SandboxError> {
        let rows = self
            .db
            .call(move |c| Db::list_snapshots(c, sandbox_id))
            .await?;
        let at = rows.iter().position(|r| r.name == snap.to_string());
        let before = at.and_then(|i| i.checked_sub(1)).and_then(|i| rows.get(i));
        match before {
            Some(r) => super::parse_snapshot_name("from", &r.name),
            None => Err(SandboxError::Invalid {
                field: "from",
                message: format!("snapshot \"{snap}\" has no earlier snapshot; name one"),
            }),
        }
    }

    /// The changes between two existing snapshots of `sandbox`.
    pub(super) async fn diff_snapshots(
        &self,
        sandbox: &SandboxName,
        from: &SnapshotName,
        to: &SnapshotName,
        content_cap: Option<u64>,
    ) -> Result<Diff, SandboxError> {
        let (sb, f, t) = (sandbox.clone(), from.clone(), to.clone());
        let storage = self.storage.clone();
        let changes = tokio::task::spawn_blocking(move || {
            let raw = storage.diff(&sb, &f, &t)?;
            describe(&storage, &sb, &f, &t, raw, content_cap)
        })
        .await??;
        Ok(Diff::new(from.to_string(), to.to_string(), changes))
    }
}

/// Type and sizes (and content diffs) of the raw changes.
fn describe(
    storage: &Storage,
    sb: &SandboxName,
    from: &SnapshotName,
    to: &SnapshotName,
    raw: Vec<RawChange>,
    content_cap: Option<u64>,
) -> Result<Vec<Change>, SandboxError> {
    let old_root = storage.snapshot_path(sb, from);
    let new_root = storage.snapshot_path(sb, to);
    let io = |source| SandboxError::Io {
        op: "stat a changed path",
        source,
    };
    let mut out = Vec::with_capacity(raw.len());
    for change in raw {
        let before = lstat_in_root(&old_root, &change.path).map_err(io)?;
        let after = lstat_in_root(&new_root, &change.path).map_err(io)?;
        let Some(seen) = after.as_ref().or(before.as_ref()) else {
            continue;
        };
        if change.times_only && seen.is_directory {
            continue;
        }
        let kind = seen.kind;
        let diff = content_cap.and_then(|cap| {
            let roots = (&old_root, &new_root);
            text_diff(roots, &change.path, (before.as_ref(), after.as_ref()), cap)
        });
        out.push(Change {
            path: workspace_path(&change.path),
            change: match change.kind {
                rewind_storage::ChangeKind::Added => ChangeKind::Added,
                rewind_storage::ChangeKind::Modified => ChangeKind::Modified,
                rewind_storage::ChangeKind::Deleted => ChangeKind::Deleted,
            },
            kind,
            size_before: before.map(|e| e.size_bytes),
            size_after: after.map(|e| e.size_bytes),
            diff,
        });
    }
    Ok(out)
}

/// The content of regular file `rel` under `root`, if it is one of at most
/// `cap` bytes and valid UTF-8; `Some("")` when absent.
fn small_text(root: &Path, rel: &str, entry: Option<&FileEntry>, cap: u64) -> Option<String> {
    let Some(entry) = entry else {
        return Some(String::new());
    };
    if entry.kind != "file" || entry.size_bytes > cap {
        return None;
    }
    let fd = open_in_root(root, rel, OFlag::O_RDONLY | OFlag::O_NOFOLLOW).ok()?;
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(cap)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// A unified diff of `rel` between the two roots, for small text files.
fn text_diff(
    (old_root, new_root): (&PathBuf, &PathBuf),
    rel: &str,
    (before, after): (Option<&FileEntry>, Option<&FileEntry>),
    cap: u64,
) -> Option<String> {
    let old = small_text(old_root, rel, before, cap)?;
    let new = small_text(new_root, rel, after, cap)?;
    let path = workspace_path(rel);
    let diff = similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .header(&format!("a{path}"), &format!("b{path}"))
        .to_string();
    Some(diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(path: &str, change: ChangeKind) -> Change {
        Change {
            path: path.into(),
            change,
            kind: "file",
            size_before: None,
            size_after: Some(1),
            diff: None,
        }
    }

    #[test]
    fn summary_names_paths_only_up_to_the_cap() {
        let changes = vec![
            change("/workspace/a", ChangeKind::Added),
            change("/workspace/b", ChangeKind::Deleted),
        ];
        let diff = Diff::new("x".into(), "y".into(), changes);
        let small = diff.clone().summary(2);
        let big = diff.summary(1);
        assert_eq!(
            (small.added, small.deleted, small.paths.map(|p| p.len())),
            (1, 1, Some(2))
        );
        assert_eq!(big.paths, None);
    }

    #[test]
    fn text_diff_shows_the_changed_line() {
        let (old, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(old.path().join("f"), "a\nb\n").unwrap();
        std::fs::write(new.path().join("f"), "a\nc\n").unwrap();
        let before = lstat_in_root(old.path(), "f").unwrap();
        let after = lstat_in_root(new.path(), "f").unwrap();
        let roots = (&old.path().to_path_buf(), &new.path().to_path_buf());
        let diff = text_diff(roots, "f", (before.as_ref(), after.as_ref()), 100).unwrap();
        assert!(diff.contains("-b\n+c\n"), "{diff}");
    }
}

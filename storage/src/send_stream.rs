//! What changed between two snapshots, from Btrfs itself: the kernel's
//! incremental send (`btrfs send --no-data -p FROM TO`) compares the two
//! trees, skipping every tree block they share, so the cost follows the
//! size of the change, not of the workspace. Without data the stream is only
//! metadata commands; this module folds them into added / modified /
//! deleted paths.
//!
//! Stream format: see `send_proto`.
//!
//! The kernel creates new inodes under orphan names (`o<ino>-<gen>-0`)
//! and renames them into place, and may park existing inodes under orphan
//! names while it reorders; both are resolved here to the paths of the two
//! snapshots. An existing path renamed is reported as deleted + added.

use std::collections::{BTreeMap, BTreeSet};

use crate::send_proto::{attr, cmd, HEADER, MAGIC};

/// How a path changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One changed path, relative to the snapshot root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChange {
    pub path: String,
    pub kind: ChangeKind,
    /// Only the times changed (`utimes`): a directory whose entries
    /// changed gets this; callers usually drop it for directories.
    pub times_only: bool,
}

/// A malformed send stream.
#[derive(Debug, thiserror::Error)]
#[error("malformed btrfs send stream: {0}")]
pub struct StreamError(pub &'static str);

/// One command: its number and its attributes.
struct Command<'a> {
    cmd: u16,
    attrs: Vec<(u16, &'a [u8])>,
}

impl Command<'_> {
    fn attr(&self, kind: u16) -> Option<String> {
        self.attrs
            .iter()
            .find(|(t, _)| *t == kind)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Split a whole stream into commands.
fn commands(stream: &[u8]) -> Result<Vec<Command<'_>>, StreamError> {
    if stream.len() < MAGIC.len() + 4 || &stream[..MAGIC.len()] != MAGIC {
        return Err(StreamError("bad magic"));
    }
    let mut rest = &stream[MAGIC.len() + 4..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        if rest.len() < HEADER {
            return Err(StreamError("truncated command header"));
        }
        let len = le32(rest) as usize;
        let cmd = le16(&rest[4..]);
        let body = rest
            .get(HEADER..HEADER + len)
            .ok_or(StreamError("truncated command"))?;
        out.push(Command {
            cmd,
            attrs: attributes(body)?,
        });
        rest = &rest[HEADER + len..];
    }
    Ok(out)
}

fn attributes(mut body: &[u8]) -> Result<Vec<(u16, &[u8])>, StreamError> {
    let mut attrs = Vec::new();
    while !body.is_empty() {
        if body.len() < 4 {
            return Err(StreamError("truncated attribute header"));
        }
        let (kind, len) = (le16(body), le16(&body[2..]) as usize);
        let value = body
            .get(4..4 + len)
            .ok_or(StreamError("truncated attribute"))?;
        attrs.push((kind, value));
        body = &body[4 + len..];
    }
    Ok(attrs)
}

/// Folds commands into changes.
#[derive(Default)]
struct Fold {
    /// Current names of inodes created by this stream.
    created: BTreeSet<String>,
    /// Current (orphan) name → original name of existing inodes moved.
    moved: BTreeMap<String, String>,
    deleted: BTreeSet<String>,
    /// Path in the new snapshot → whether only its times changed.
    modified: BTreeMap<String, bool>,
}

/// `path` with its leading `from` component(s) replaced by `to`, if it
/// is `from` or lies below it.
fn reparent(path: &str, from: &str, to: &str) -> Option<String> {
    match path.strip_prefix(from) {
        Some("") => Some(to.to_owned()),
        Some(rest) if rest.starts_with('/') => Some(format!("{to}{rest}")),
        _ => None,
    }
}

impl Fold {
    /// The original name of a current path of an existing inode.
    fn original(&self, path: &str) -> String {
        self.moved
            .iter()
            .find_map(|(cur, orig)| reparent(path, cur, orig))
            .unwrap_or_else(|| path.to_owned())
    }

    fn is_created(&self, path: &str) -> bool {
        self.created.contains(path)
    }

    fn rename(&mut self, from: &str, to: &str) {
        let inside: Vec<String> = self
            .created
            .iter()
            .filter(|p| reparent(p, from, to).is_some())
            .cloned()
            .collect();
        for path in &inside {
            self.created.remove(path);
            self.created
                .insert(reparent(path, from, to).unwrap_or_default());
        }
        if self.is_created(to) {
            return;
        }
        let original = self.original(from);
        self.moved.remove(from);
        if is_orphan(to) {
            self.moved.insert(to.to_owned(), original);
        } else if original != to {
            self.deleted.insert(original);
            self.created.insert(to.to_owned());
        }
    }

    fn remove(&mut self, path: &str) {
        if !self.created.remove(path) {
            let original = self.original(path);
            self.moved.remove(path);
            self.deleted.insert(original);
        }
    }

    fn touch(&mut self, path: &str, times_only: bool) {
        if self.is_created(path) || is_orphan(path) {
            return;
        }
        let flag = self.modified.entry(path.to_owned()).or_insert(true);
        *flag &= times_only;
    }

    fn apply(&mut self, c: &Command<'_>) {
        let path = c.attr(attr::PATH).unwrap_or_default();
        match c.cmd {
            cmd::MKFILE
            | cmd::MKDIR
            | cmd::MKNOD
            | cmd::MKFIFO
            | cmd::MKSOCK
            | cmd::SYMLINK
            | cmd::LINK => {
                self.created.insert(path);
            }
            cmd::RENAME => self.rename(&path, &c.attr(attr::PATH_TO).unwrap_or_default()),
            cmd::UNLINK | cmd::RMDIR => self.remove(&path),
            cmd::UTIMES => self.touch(&path, true),
            cmd::WRITE
            | cmd::CLONE
            | cmd::TRUNCATE
            | cmd::CHMOD
            | cmd::CHOWN
            | cmd::SET_XATTR
            | cmd::REMOVE_XATTR
            | cmd::UPDATE_EXTENT => self.touch(&path, false),
            _ => {}
        }
    }

    fn finish(mut self) -> Vec<RawChange> {
        for (_, original) in std::mem::take(&mut self.moved) {
            self.deleted.insert(original);
        }
        let mut out: Vec<RawChange> = Vec::new();
        let mut push = |path: &str, kind, times_only| {
            out.push(RawChange {
                path: path.to_owned(),
                kind,
                times_only,
            })
        };
        // A path deleted and created again (a file replaced by `mv`) is
        // reported as modified.
        let replaced: BTreeSet<String> =
            self.created.intersection(&self.deleted).cloned().collect();
        for path in self.created.difference(&replaced) {
            push(path, ChangeKind::Added, false);
        }
        for path in self.deleted.difference(&replaced) {
            push(path, ChangeKind::Deleted, false);
        }
        for path in &replaced {
            push(path, ChangeKind::Modified, false);
        }
        for (path, times_only) in &self.modified {
            if !self.created.contains(path) && !self.deleted.contains(path) {
                push(path, ChangeKind::Modified, *times_only);
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path).then(a.kind.cmp(&b.kind)));
        out
    }
}

/// Orphan names the kernel uses for inodes in flight: `o<ino>-<gen>-<n>`.
fn is_orphan(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some(rest) = name.strip_prefix('o') else {
        return false;
    };
    let parts: Vec<&str> = rest.split('-').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The changes an incremental `--no-data` send stream describes.
pub fn changes(stream: &[u8]) -> Result<Vec<RawChange>, StreamError> {
    let mut fold = Fold::default();
    for command in commands(stream)? {
        fold.apply(&command);
    }
    Ok(fold.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(cmds: &[(u16, &[(u16, &str)])]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&1u32.to_le_bytes());
        for (cmd, attrs) in cmds {
            let mut body = Vec::new();
            for (t, v) in *attrs {
                body.extend_from_slice(&t.to_le_bytes());
                body.extend_from_slice(&(v.len() as u16).to_le_bytes());
                body.extend_from_slice(v.as_bytes());
            }
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&cmd.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&body);
        }
        out
    }

    fn summary(changes: &[RawChange]) -> Vec<(String, ChangeKind, bool)> {
        changes
            .iter()
            .map(|c| (c.path.clone(), c.kind, c.times_only))
            .collect()
    }

    #[test]
    fn changes_new_dir_with_file_under_orphan_names() {
        let s = stream(&[
            (cmd::MKDIR, &[(attr::PATH, "o258-7-0")]),
            (
                cmd::RENAME,
                &[(attr::PATH, "o258-7-0"), (attr::PATH_TO, "d")],
            ),
            (cmd::MKFILE, &[(attr::PATH, "o259-7-0")]),
            (
                cmd::RENAME,
                &[(attr::PATH, "o259-7-0"), (attr::PATH_TO, "d/f")],
            ),
            (cmd::UPDATE_EXTENT, &[(attr::PATH, "d/f")]),
            (cmd::UTIMES, &[(attr::PATH, "")]),
        ]);
        assert_eq!(
            summary(&changes(&s).unwrap()),
            [
                ("".into(), ChangeKind::Modified, true),
                ("d".into(), ChangeKind::Added, false),
                ("d/f".into(), ChangeKind::Added, false),
            ]
        );
    }

    #[test]
    fn changes_unlink_write_and_rename_of_existing() {
        let s = stream(&[
            (cmd::UNLINK, &[(attr::PATH, "gone")]),
            (cmd::UPDATE_EXTENT, &[(attr::PATH, "edited")]),
            (cmd::RENAME, &[(attr::PATH, "old"), (attr::PATH_TO, "new")]),
        ]);
        assert_eq!(
            summary(&changes(&s).unwrap()),
            [
                ("edited".into(), ChangeKind::Modified, false),
                ("gone".into(), ChangeKind::Deleted, false),
                ("new".into(), ChangeKind::Added, false),
                ("old".into(), ChangeKind::Deleted, false),
            ]
        );
    }

    #[test]
    fn changes_existing_parked_under_orphan_then_removed_is_deleted_by_original_name() {
        let s = stream(&[
            (
                cmd::RENAME,
                &[(attr::PATH, "dir"), (attr::PATH_TO, "o300-5-0")],
            ),
            (cmd::UNLINK, &[(attr::PATH, "o300-5-0/x")]),
            (cmd::RMDIR, &[(attr::PATH, "o300-5-0")]),
        ]);
        assert_eq!(
            summary(&changes(&s).unwrap()),
            [
                ("dir".into(), ChangeKind::Deleted, false),
                ("dir/x".into(), ChangeKind::Deleted, false),
            ]
        );
    }

    #[test]
    fn changes_file_replaced_by_rename_is_modified() {
        let s = stream(&[
            (cmd::MKFILE, &[(attr::PATH, "o261-9-0")]),
            (
                cmd::RENAME,
                &[(attr::PATH, "a"), (attr::PATH_TO, "o257-5-0")],
            ),
            (
                cmd::RENAME,
                &[(attr::PATH, "o261-9-0"), (attr::PATH_TO, "a")],
            ),
            (cmd::UNLINK, &[(attr::PATH, "o257-5-0")]),
        ]);
        assert_eq!(
            summary(&changes(&s).unwrap()),
            [("a".into(), ChangeKind::Modified, false)]
        );
    }

    #[test]
    fn changes_bad_magic_is_an_error() {
        assert!(changes(b"not a stream at all").is_err());
    }
}

//! Reading files straight from a snapshot: the read-only Btrfs subvolume
//! on the host, no agent round trip, no restore — so it works for any
//! snapshot, even of a stopped or failed sandbox.
//!
//! Containment is by construction: every lookup is `openat2(2)` relative to
//! a descriptor of the snapshot's root with `RESOLVE_IN_ROOT` (`..` and
//! absolute symlinks resolve as if the snapshot were `/`), plus
//! `RESOLVE_NO_MAGICLINKS` and `RESOLVE_NO_XDEV`. A symlink to
//! `/etc/shadow` therefore names `<snapshot>/etc/shadow`, never the host's.
//! A snapshot holds only `/workspace`, so paths elsewhere are a 400; the
//! snapshot root is `/workspace`. Workspaces that are disk images (the
//! cloud-hypervisor runtime) cannot be read this way (400).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use futures_util::stream::StreamExt;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, FileStat, SFlag};
use rewind_agent::protocol::{FileKind, WORKSPACE_DIR};
use tokio::io::AsyncReadExt;

use super::files::{FileDownload, FileEntry, SandboxPath};
use super::{SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::runtime::RuntimeKind;

/// Bytes per read when streaming a file out of a snapshot.
const READ_CHUNK: usize = 256 * 1024;

/// Open `rel` (relative to `root`, a snapshot's root directory) without
/// ever leaving it.
pub(super) fn open_in_root(root: &Path, rel: &str, flags: OFlag) -> io::Result<OwnedFd> {
    let root_fd = File::open(root)?;
    open_beneath(root_fd.as_fd(), rel, flags)
}

/// `openat2(dir, rel)` confined to `dir` as the root.
fn open_beneath(dir: std::os::fd::BorrowedFd<'_>, rel: &str, flags: OFlag) -> io::Result<OwnedFd> {
    let rel = if rel.is_empty() { "." } else { rel };
    let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_IN_ROOT
            | ResolveFlag::RESOLVE_NO_MAGICLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    );
    Ok(openat2(dir, rel, how)?)
}

fn kind_of(st: &FileStat) -> FileKind {
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => FileKind::Dir,
        SFlag::S_IFREG => FileKind::File,
        SFlag::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

/// The sandbox path of `rel` (relative to the workspace).
pub(super) fn workspace_path(rel: &str) -> String {
    match rel {
        "" => WORKSPACE_DIR.to_owned(),
        _ => format!("{WORKSPACE_DIR}/{rel}"),
    }
}

/// `lstat` of `rel` inside `root`: its parent is resolved in the root, the
/// last component is not followed. `None` when it does not exist.
pub(super) fn lstat_in_root(root: &Path, rel: &str) -> io::Result<Option<FileEntry>> {
    let (parent, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    };
    let dir = match open_in_root(root, parent, OFlag::O_PATH | OFlag::O_DIRECTORY) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let name = if name.is_empty() { "." } else { name };
    match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(entry_of(&dir, name, rel, &st))),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn entry_of(dir: &OwnedFd, name: &str, rel: &str, st: &FileStat) -> FileEntry {
    let kind = kind_of(st);
    let mut entry = FileEntry::new(
        workspace_path(rel),
        kind,
        st.st_size as u64,
        st.st_mode,
        st.st_mtime,
    );
    if kind == FileKind::Symlink {
        entry.symlink_target = nix::fcntl::readlinkat(dir, name)
            .ok()
            .map(|t| t.to_string_lossy().into_owned());
    }
    entry
}

/// Entries of directory `rel` in `root`, sorted by name; depth-first into
/// subdirectories (never through symlinks) when `recursive`. Fails with
/// `limit` exceeded as `Ok(None)`.
fn list_in_root(
    root: &Path,
    rel: &str,
    recursive: bool,
    limit: usize,
) -> io::Result<Option<Vec<FileEntry>>> {
    let dir = open_in_root(root, rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
    let mut out = Vec::new();
    Ok(collect(dir, rel, recursive, limit, &mut out)?.then_some(out))
}

/// Appends the entries of `dir` (sandbox-relative `rel`); false once more
/// than `limit` entries were found.
fn collect(
    dir: OwnedFd,
    rel: &str,
    recursive: bool,
    limit: usize,
    out: &mut Vec<FileEntry>,
) -> io::Result<bool> {
    let handle = dir.try_clone()?;
    let mut names: Vec<String> = nix::dir::Dir::from_fd(handle)?
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    for name in names {
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let Ok(st) = fstatat(&dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        let entry = entry_of(&dir, &name, &child, &st);
        let descend = recursive && entry.is_directory;
        out.push(entry);
        if out.len() > limit {
            return Ok(false);
        }
        if descend {
            let sub = open_beneath(dir.as_fd(), &name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
            if !collect(sub, &child, recursive, limit, out)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

impl Sandboxes {
    /// The root directory of snapshot `snapshot` of the caller's sandbox
    /// `name` (404 for either unknown), for host-side reads.
    pub(super) async fn snapshot_root(
        &self,
        caller: &Caller,
        name: &str,
        snapshot: &str,
    ) -> Result<PathBuf, SandboxError> {
        let snap = super::parse_snapshot_name("snapshot", snapshot)?;
        let row = self.find(caller, name).await?;
        self.snapshot_row(row.id, &snap, false).await?;
        if self.runtime.kind() != RuntimeKind::Namespace {
            return Err(SandboxError::Invalid {
                field: "snapshot",
                message: "reading snapshot files needs a directory workspace (namespace runtime)"
                    .into(),
            });
        }
        let sandbox = super::parse_sandbox_name(&row.name)?;
        Ok(self.storage.snapshot_path(&sandbox, &snap))
    }

    /// Stream a file out of a snapshot (host side). 400 for a directory or a
    /// path outside `/workspace`, 404 when absent.
    pub async fn snapshot_read_file(
        &self,
        caller: &Caller,
        name: &str,
        snapshot: &str,
        path: &SandboxPath,
    ) -> Result<FileDownload, SandboxError> {
        let rel = in_snapshot(path)?.to_owned();
        let root = self.snapshot_root(caller, name, snapshot).await?;
        let opened = tokio::task::spawn_blocking(move || -> io::Result<(File, FileEntry)> {
            let file = File::from(open_in_root(&root, &rel, OFlag::O_RDONLY)?);
            let meta = file.metadata()?;
            let kind = match meta.is_dir() {
                true => FileKind::Dir,
                false => FileKind::File,
            };
            let entry = FileEntry::new(
                workspace_path(&rel),
                kind,
                meta.len(),
                meta.mode(),
                meta.mtime(),
            );
            Ok((file, entry))
        })
        .await?;
        let (file, entry) = opened.map_err(|e| host_path_error(path, e))?;
        if entry.is_directory {
            return Err(SandboxError::Invalid {
                field: "path",
                message: format!("{} is a directory", path.as_str()),
            });
        }
        Ok(FileDownload {
            entry,
            body: stream_file(tokio::fs::File::from_std(file)).boxed(),
        })
    }

    /// List a directory of a snapshot (host side), at most
    /// `files.max_list_entries` entries.
    pub async fn snapshot_list_files(
        &self,
        caller: &Caller,
        name: &str,
        snapshot: &str,
        path: &SandboxPath,
        recursive: bool,
    ) -> Result<Vec<FileEntry>, SandboxError> {
        let rel = in_snapshot(path)?.to_owned();
        let root = self.snapshot_root(caller, name, snapshot).await?;
        let cap = self.config.files.max_list_entries;
        let listed = tokio::task::spawn_blocking(move || list_in_root(&root, &rel, recursive, cap))
            .await?
            .map_err(|e| host_path_error(path, e))?;
        listed.ok_or_else(|| SandboxError::TooLarge {
            field: "path",
            message: format!("lists more than files.max_list_entries ({cap}) entries"),
        })
    }
}

/// The part of `path` below `/workspace` (what a snapshot holds).
fn in_snapshot(path: &SandboxPath) -> Result<&str, SandboxError> {
    path.in_workspace().ok_or_else(|| SandboxError::Invalid {
        field: "path",
        message: format!(
            "{} is outside {WORKSPACE_DIR}; snapshots hold only the workspace",
            path.as_str()
        ),
    })
}

/// A host-side lookup failure about a user-supplied path.
fn host_path_error(path: &SandboxPath, e: io::Error) -> SandboxError {
    match e.raw_os_error() {
        Some(libc::ENOENT) => {
            SandboxError::NotFound(format!("path: {} does not exist", path.as_str()))
        }
        Some(libc::ENOTDIR | libc::ELOOP | libc::EXDEV | libc::EISDIR) => SandboxError::Invalid {
            field: "path",
            message: format!("{} cannot be opened here: {e}", path.as_str()),
        },
        _ => SandboxError::Io {
            op: "read snapshot file",
            source: e,
        },
    }
}

/// The bytes of `file` as a stream, read as the client consumes them.
fn stream_file(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<Bytes, SandboxError>> + Send + 'static {
    futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let n = file
            .read_buf(&mut buf)
            .await
            .map_err(|source| SandboxError::Io {
                op: "read snapshot file",
                source,
            })?;
        Ok((n > 0).then(|| (buf.freeze(), file)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_in_root_keeps_absolute_symlinks_inside() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/hostname"), b"inside").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.path().join("link")).unwrap();
        let fd = open_in_root(root.path(), "link", OFlag::O_RDONLY).unwrap();
        let content = std::io::read_to_string(File::from(fd)).unwrap();
        assert_eq!(content, "inside");
    }

    #[test]
    fn open_in_root_dotdot_stays_at_the_root() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("../../../../etc/passwd", root.path().join("up")).unwrap();
        let err = open_in_root(root.path(), "up", OFlag::O_RDONLY).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn list_in_root_sorts_and_recurses_without_following_symlinks() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::fs::write(root.path().join("d/x"), b"12").unwrap();
        std::os::unix::fs::symlink("/", root.path().join("a")).unwrap();
        let entries = list_in_root(root.path(), "", true, 100).unwrap().unwrap();
        let paths: Vec<_> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["/workspace/a", "/workspace/d", "/workspace/d/x"]);
    }

    #[test]
    fn list_in_root_over_the_limit_is_none() {
        let root = tempfile::tempdir().unwrap();
        for n in ["a", "b", "c"] {
            std::fs::write(root.path().join(n), b"").unwrap();
        }
        assert_eq!(list_in_root(root.path(), "", false, 2).unwrap(), None);
    }
}

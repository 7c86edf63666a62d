//! File requests: write (or append), read (from an offset), stat, list,
//! remove, rename. Relative paths are taken relative to the workspace. The
//! agent runs inside the sandbox's root, so every path resolves there. All
//! work happens on the blocking pool.

use std::fs::{self, Metadata, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Agent, OpError};
use crate::protocol::{FileInfo, FileKind, Request, Response};

/// Handles one of the file requests.
pub async fn handle(agent: &Arc<Agent>, request: Request) -> Result<Response, OpError> {
    let workspace = agent.config.workspace.clone();
    let job = move || match request {
        Request::WriteFile {
            path,
            data,
            mode,
            create_dirs,
            append: false,
        } => write_file(&resolve(&workspace, &path), &data, mode, create_dirs),
        Request::WriteFile {
            path,
            data,
            append: true,
            ..
        } => append_file(&resolve(&workspace, &path), &data),
        Request::ReadFile {
            path,
            max_bytes,
            offset,
        } => read_file(&resolve(&workspace, &path), offset, max_bytes),
        Request::Remove { path, recursive } => remove(&resolve(&workspace, &path), recursive),
        Request::Rename { from, to } => {
            rename(&resolve(&workspace, &from), &resolve(&workspace, &to))
        }
        Request::Stat { path } => {
            stat(&resolve(&workspace, &path)).map(|info| Response::Stat { info })
        }
        Request::List { path, recursive } => list(&resolve(&workspace, &path), recursive),
        other => Err(OpError::BadRequest(format!(
            "not a file request: {other:?}"
        ))),
    };
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| OpError::BadRequest(format!("file task failed: {e}")))?
}

fn resolve(workspace: &Path, path: &str) -> PathBuf {
    workspace.join(path)
}

fn write_file(path: &Path, data: &[u8], mode: u32, create_dirs: bool) -> Result<Response, OpError> {
    if create_dirs {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(OpError::io("create directories", parent))?;
        }
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(OpError::io("open for writing", path))?;
    file.write_all(data).map_err(OpError::io("write", path))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(OpError::io("chmod", path))?;
    Ok(Response::Ok)
}

fn append_file(path: &Path, data: &[u8]) -> Result<Response, OpError> {
    let mut file = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(OpError::io("open for appending", path))?;
    file.write_all(data).map_err(OpError::io("append", path))?;
    Ok(Response::Ok)
}

fn remove(path: &Path, recursive: bool) -> Result<Response, OpError> {
    let info = stat(path)?;
    let removed = match (info.kind, recursive) {
        (FileKind::Dir, true) => fs::remove_dir_all(path),
        (FileKind::Dir, false) => fs::remove_dir(path),
        _ => fs::remove_file(path),
    };
    removed.map_err(OpError::io("remove", path))?;
    Ok(Response::Ok)
}

fn rename(from: &Path, to: &Path) -> Result<Response, OpError> {
    fs::rename(from, to).map_err(OpError::io("rename", from))?;
    Ok(Response::Ok)
}

fn read_file(path: &Path, offset: u64, max_bytes: Option<u64>) -> Result<Response, OpError> {
    let info = stat(path)?;
    if info.kind == FileKind::Dir {
        return Err(OpError::BadRequest(format!(
            "{} is a directory",
            path.display()
        )));
    }
    let limit = max_bytes.unwrap_or(crate::protocol::MAX_FRAME_BYTES as u64 / 2);
    let mut file = fs::File::open(path).map_err(OpError::io("open", path))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(OpError::io("seek", path))?;
    let mut data = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(OpError::io("read", path))?;
    let truncated = data.len() as u64 > limit;
    data.truncate(limit as usize);
    Ok(Response::File {
        data,
        info,
        truncated,
    })
}

/// `lstat` of one path.
pub fn stat(path: &Path) -> Result<FileInfo, OpError> {
    let meta = fs::symlink_metadata(path).map_err(OpError::io("stat", path))?;
    Ok(file_info(path, &meta))
}

fn file_info(path: &Path, meta: &Metadata) -> FileInfo {
    let file_type = meta.file_type();
    let kind = if file_type.is_symlink() {
        FileKind::Symlink
    } else if file_type.is_dir() {
        FileKind::Dir
    } else if file_type.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    let symlink_target = match kind {
        FileKind::Symlink => fs::read_link(path)
            .ok()
            .map(|t| t.to_string_lossy().into_owned()),
        _ => None,
    };
    FileInfo {
        path: path.to_string_lossy().into_owned(),
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kind,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
        symlink_target,
    }
}

fn list(path: &Path, recursive: bool) -> Result<Response, OpError> {
    let mut entries = Vec::new();
    collect(path, recursive, &mut entries)?;
    Ok(Response::Entries { entries })
}

/// Appends the entries of `dir` (sorted by name), descending into
/// subdirectories (never through symlinks) when `recursive`.
fn collect(dir: &Path, recursive: bool, entries: &mut Vec<FileInfo>) -> Result<(), OpError> {
    let mut children: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(OpError::io("list", dir))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    children.sort();
    for child in children {
        let Ok(meta) = fs::symlink_metadata(&child) else {
            continue;
        };
        let info = file_info(&child, &meta);
        let descend = recursive && info.kind == FileKind::Dir;
        entries.push(info);
        if descend {
            collect(&child, recursive, entries)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_file_applies_mode_despite_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/run.sh");
        write_file(&path, b"echo hi", 0o777, true).unwrap();
        assert_eq!(stat(&path).unwrap().mode, 0o777);
    }

    #[test]
    fn read_file_caps_and_flags_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"0123456789").unwrap();
        let Response::File {
            data,
            truncated,
            info,
        } = read_file(&path, 0, Some(4)).unwrap()
        else {
            panic!("not a file response")
        };
        assert_eq!(
            (data.as_slice(), truncated, info.size),
            (&b"0123"[..], true, 10)
        );
    }

    #[test]
    fn read_file_from_offset_returns_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"0123456789").unwrap();
        let Response::File {
            data, truncated, ..
        } = read_file(&path, 6, Some(100)).unwrap()
        else {
            panic!("not a file response")
        };
        assert_eq!((data.as_slice(), truncated), (&b"6789"[..], false));
    }

    #[test]
    fn append_file_extends_and_remove_recursive_removes_tree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d/f");
        write_file(&path, b"ab", 0o600, true).unwrap();
        append_file(&path, b"cd").unwrap();
        let content = fs::read(&path).unwrap();
        remove(&dir.path().join("d"), true).unwrap();
        assert_eq!(
            (content.as_slice(), dir.path().join("d").exists()),
            (&b"abcd"[..], false)
        );
    }

    #[test]
    fn remove_non_empty_dir_without_recursive_fails() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        fs::write(dir.path().join("d/x"), b"").unwrap();
        let err = remove(&dir.path().join("d"), false).unwrap_err();
        assert_eq!(err.code(), crate::protocol::ErrorCode::Io);
    }

    #[test]
    fn list_recursive_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/x"), b"").unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).unwrap();
        let Response::Entries { entries } = list(dir.path(), true).unwrap() else {
            panic!("not entries")
        };
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["loop", "sub", "x"]);
    }

    #[test]
    fn stat_missing_is_not_found() {
        let err = stat(Path::new("/nonexistent/rewind")).unwrap_err();
        assert_eq!(err.code(), crate::protocol::ErrorCode::NotFound);
    }
}

//! Files in a sandbox: write (streamed, landed atomically, then
//! snapshotted like a command), read (streamed in chunks), list, remove —
//! all through the agent, which runs inside the sandbox's root, so a path
//! (or a symlink) can only ever name something in that sandbox. Reading
//! from a snapshot is in `snapshot_files.rs` (host side, no agent).
//!
//! Paths are absolute or relative to `/workspace`; see [`SandboxPath`].
//! The HTTP adapters (`api/files.rs`, and the `/api/v1` layer) call only
//! these methods.

use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use rewind_agent::client::{AgentClient, AgentError};
use rewind_agent::protocol::{ErrorCode, FileInfo, FileKind, WORKSPACE_DIR};
use serde::Serialize;

use super::auto_snapshot::Step;
use super::{Live, SandboxError, Sandboxes};
use crate::auth::Caller;

/// Longest path accepted, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

/// Bytes per agent request when streaming a file (base64 in a JSON frame
/// stays well under the protocol's 16 MiB frame cap).
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// A validated path inside a sandbox: absolute, normalised (no `.`, `..`
/// or empty components), without NUL, at most [`MAX_PATH_BYTES`]. This is
/// input validation only: containment is by construction (the agent
/// resolves inside the sandbox; snapshot reads use `RESOLVE_IN_ROOT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPath(String);

impl SandboxPath {
    /// Parse `raw` (absolute, or relative to `/workspace`) for `field`.
    pub fn parse(field: &'static str, raw: &str) -> Result<SandboxPath, SandboxError> {
        let invalid = |message: &str| SandboxError::Invalid {
            field,
            message: message.to_owned(),
        };
        if raw.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if raw.contains('\0') {
            return Err(invalid("must not contain NUL"));
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(invalid(&format!("is longer than {MAX_PATH_BYTES} bytes")));
        }
        let joined = if raw.starts_with('/') {
            raw.to_owned()
        } else {
            format!("{WORKSPACE_DIR}/{raw}")
        };
        let mut parts: Vec<&str> = Vec::new();
        for part in joined.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(invalid("\"..\" leads outside the sandbox's root"));
                    }
                }
                other => parts.push(other),
            }
        }
        Ok(SandboxPath(format!("/{}", parts.join("/"))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path relative to `/workspace`, or `None` when it lies outside.
    pub fn in_workspace(&self) -> Option<&str> {
        let rest = self.0.strip_prefix(WORKSPACE_DIR)?;
        match rest {
            "" => Some(""),
            _ => rest.strip_prefix('/'),
        }
    }

    fn parent_and_name(&self) -> (&str, &str) {
        let (parent, name) = self.0.rsplit_once('/').unwrap_or(("", &self.0));
        (if parent.is_empty() { "/" } else { parent }, name)
    }
}

/// Parse a permission string such as `"644"` or `"0755"` for `field`.
pub fn parse_mode(field: &'static str, raw: &str) -> Result<u32, SandboxError> {
    u32::from_str_radix(raw.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| SandboxError::Invalid {
            field,
            message: format!("{raw:?} is not an octal permission (e.g. \"0644\")"),
        })
}

/// One file-system entry, in the shape every front door shows.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FileEntry {
    pub name: String,
    /// Absolute path inside the sandbox.
    pub path: String,
    pub size_bytes: u64,
    pub is_directory: bool,
    /// Octal permission bits, e.g. `"0644"`.
    pub permissions: String,
    /// RFC 3339, UTC.
    pub modified_at: String,
    /// `file`, `directory`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

impl FileEntry {
    pub(super) fn new(path: String, kind: FileKind, size: u64, mode: u32, mtime: i64) -> Self {
        let name = path.rsplit('/').next().unwrap_or_default().to_owned();
        let modified_at = time::OffsetDateTime::from_unix_timestamp(mtime)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        FileEntry {
            name,
            path,
            size_bytes: size,
            is_directory: kind == FileKind::Dir,
            permissions: format!("{:04o}", mode & 0o7777),
            modified_at,
            kind: kind_name(kind),
            symlink_target: None,
        }
    }

    fn from_agent(info: FileInfo) -> Self {
        let mut entry = FileEntry::new(info.path, info.kind, info.size, info.mode, info.mtime);
        entry.symlink_target = info.symlink_target;
        entry
    }
}

pub(super) fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "file",
        FileKind::Dir => "directory",
        FileKind::Symlink => "symlink",
        FileKind::Other => "other",
    }
}

/// A file being downloaded: its metadata (the length goes in
/// `Content-Length`) and its bytes, produced as the client reads.
pub struct FileDownload {
    pub entry: FileEntry,
    pub body: BoxStream<'static, Result<Bytes, SandboxError>>,
}

/// A file upload: where, with which permissions, and the declared length
/// (checked against the cap before anything is written).
#[derive(Debug, Clone)]
pub struct WriteFile {
    pub path: SandboxPath,
    /// Permission bits; default `0644`.
    pub mode: Option<u32>,
    pub content_length: Option<u64>,
}

/// What a write or a removal did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FileChange {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The snapshot taken afterwards.
    pub snapshot: String,
}

/// Map the agent's answer about a user-supplied path: its file-level
/// refusals are the client's (404 / 400); transport failures stay 503.
pub(super) fn path_error(path: &SandboxPath, e: AgentError) -> SandboxError {
    let message = match &e {
        AgentError::Remote { message, .. } => message.clone(),
        _ => return e.into(),
    };
    match e.remote_code() {
        Some(ErrorCode::NotFound) => {
            SandboxError::NotFound(format!("path: {} does not exist", path.as_str()))
        }
        Some(ErrorCode::BadRequest | ErrorCode::Io | ErrorCode::PermissionDenied) => {
            SandboxError::Invalid {
                field: "path",
                message: message.replace(": ", " - "),
            }
        }
        _ => e.into(),
    }
}

impl Sandboxes {
    /// A fresh agent client for a running sandbox, taken under its lock
    /// (waits for a running command), used without it afterwards.
    async fn file_agent(&self, caller: &Caller, name: &str) -> Result<AgentClient, SandboxError> {
        let (_, entry) = self.find_live(caller, name).await?;
        let live = entry.lock().await;
        Ok(self.agent_for(&live.ctx, &live.state))
    }

    /// `lstat` of a path; `None` when it does not exist.
    async fn stat_opt(
        agent: &AgentClient,
        path: &SandboxPath,
    ) -> Result<Option<FileInfo>, SandboxError> {
        match agent.stat(path.as_str()).await {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.remote_code() == Some(ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(path_error(path, e)),
        }
    }

    /// Stream a file out of a running sandbox, [`CHUNK_BYTES`] per agent
    /// request. A directory is a 400, a missing path a 404.
    pub async fn read_file(
        &self,
        caller: &Caller,
        name: &str,
        path: &SandboxPath,
    ) -> Result<FileDownload, SandboxError> {
        let agent = self.file_agent(caller, name).await?;
        let (first, info, more) = agent
            .read_file_at(path.as_str(), 0, CHUNK_BYTES as u64)
            .await
            .map_err(|e| path_error(path, e))?;
        let size = info.size;
        let entry = FileEntry::from_agent(info);
        let head = futures_util::stream::once(async move { Ok(Bytes::from(first)) });
        if !more {
            return Ok(FileDownload {
                entry,
                body: head.boxed(),
            });
        }
        let state = (agent, path.clone(), CHUNK_BYTES as u64);
        let rest =
            futures_util::stream::try_unfold(state, move |(agent, path, offset)| async move {
                if offset >= size {
                    return Ok(None);
                }
                let want = (size - offset).min(CHUNK_BYTES as u64);
                let (data, _, _) = agent
                    .read_file_at(path.as_str(), offset, want)
                    .await
                    .map_err(|e| path_error(&path, e))?;
                if data.is_empty() {
                    return Ok(None);
                }
                let next = offset + data.len() as u64;
                Ok(Some((Bytes::from(data), (agent, path, next))))
            });
        Ok(FileDownload {
            entry,
            body: head.chain(rest).boxed(),
        })
    }

    /// List a directory of a running sandbox (depth-first when
    /// `recursive`), at most `files.max_list_entries` entries.
    pub async fn list_files(
        &self,
        caller: &Caller,
        name: &str,
        path: &SandboxPath,
        recursive: bool,
    ) -> Result<Vec<FileEntry>, SandboxError> {
        let agent = self.file_agent(caller, name).await?;
        let entries = agent
            .list(path.as_str(), recursive)
            .await
            .map_err(|e| path_error(path, e))?;
        let cap = self.config.files.max_list_entries;
        if entries.len() > cap {
            return Err(SandboxError::TooLarge {
                field: "path",
                message: format!("lists more than files.max_list_entries ({cap}) entries"),
            });
        }
        Ok(entries.into_iter().map(FileEntry::from_agent).collect())
    }

    /// Write a file from a stream of bytes: checked against
    /// `files.max_upload_bytes` (413, before anything is written when the
    /// length is declared), sent in chunks to a temporary name next to the
    /// target, renamed over it, then snapshotted as `file_<ms>`. Missing
    /// parent directories are created. On any failure nothing remains.
    pub async fn write_file<S, E>(
        &self,
        caller: &Caller,
        name: &str,
        req: WriteFile,
        body: S,
    ) -> Result<FileChange, SandboxError>
    where
        S: futures_util::Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::error::Error + Send + Sync + 'static,
    {
        let cap = self.config.files.max_upload_bytes;
        if req.content_length.is_some_and(|n| n > cap) {
            return Err(too_large(cap));
        }
        let (row, entry) = self.find_live(caller, name).await?;
        let mut live = entry.lock().await;
        if Self::stat_opt(&live.agent, &req.path)
            .await?
            .is_some_and(|i| i.kind == FileKind::Dir)
        {
            return Err(SandboxError::Invalid {
                field: "path",
                message: format!("{} is a directory", req.path.as_str()),
            });
        }
        let created = Self::first_missing_parent(&live.agent, &req.path).await?;
        let temp = temp_name(&req.path);
        let written = self.upload(&live.agent, &temp, &req, body, cap).await;
        let landed = match written {
            Ok(size) => live
                .agent
                .rename(&temp, req.path.as_str())
                .await
                .map(|()| size)
                .map_err(|e| path_error(&req.path, e)),
            Err(e) => Err(e),
        };
        let size = match landed {
            Ok(size) => size,
            Err(e) => {
                let _ = live.agent.remove(&temp, false).await;
                if let Some(dir) = created {
                    let _ = live.agent.remove(dir.as_str(), true).await;
                }
                return Err(e);
            }
        };
        let what = format!("write {}", req.path.as_str());
        let snapshot = self.snapshot_file_change(&mut live, &what).await?;
        tracing::info!(sandbox = %row.name, path = %req.path.as_str(), size, "file written");
        Ok(FileChange {
            path: req.path.as_str().to_owned(),
            size_bytes: Some(size),
            snapshot,
        })
    }

    /// The topmost missing parent of `path` (the upload creates it; a
    /// failed upload removes it again), if any.
    async fn first_missing_parent(
        agent: &AgentClient,
        path: &SandboxPath,
    ) -> Result<Option<SandboxPath>, SandboxError> {
        let mut missing = None;
        let mut dir = SandboxPath(path.parent_and_name().0.to_owned());
        while dir.as_str() != "/" && Self::stat_opt(agent, &dir).await?.is_none() {
            missing = Some(dir.clone());
            dir = SandboxPath(dir.parent_and_name().0.to_owned());
        }
        Ok(missing)
    }

    /// Send the body to `temp` in chunks; returns the byte count.
    async fn upload<S, E>(
        &self,
        agent: &AgentClient,
        temp: &str,
        req: &WriteFile,
        mut body: S,
        cap: u64,
    ) -> Result<u64, SandboxError>
    where
        S: futures_util::Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::error::Error + Send + Sync + 'static,
    {
        let mode = req.mode.unwrap_or(0o644);
        agent
            .write_file(temp, Vec::new(), mode, true)
            .await
            .map_err(|e| path_error(&req.path, e))?;
        let mut total = 0u64;
        let mut pending = bytes::BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| SandboxError::Upload(Box::new(e)))?;
            total += chunk.len() as u64;
            if total > cap {
                return Err(too_large(cap));
            }
            pending.extend_from_slice(&chunk);
            while pending.len() >= CHUNK_BYTES {
                let full = pending.split_to(CHUNK_BYTES);
                agent.append_file(temp, full.to_vec()).await?;
            }
        }
        if !pending.is_empty() {
            agent.append_file(temp, pending.to_vec()).await?;
        }
        Ok(total)
    }

    /// Remove a file, symlink or directory (`recursive` for a non-empty
    /// one), then snapshot as `file_<ms>`.
    pub async fn remove_file(
        &self,
        caller: &Caller,
        name: &str,
        path: &SandboxPath,
        recursive: bool,
    ) -> Result<FileChange, SandboxError> {
        if path.as_str() == "/" || path.as_str() == WORKSPACE_DIR {
            return Err(SandboxError::Invalid {
                field: "path",
                message: format!("{} cannot be removed (use wipe)", path.as_str()),
            });
        }
        let (_, entry) = self.find_live(caller, name).await?;
        let mut live = entry.lock().await;
        live.agent
            .remove(path.as_str(), recursive)
            .await
            .map_err(|e| path_error(path, e))?;
        let snapshot = self
            .snapshot_file_change(&mut live, &format!("remove {}", path.as_str()))
            .await?;
        Ok(FileChange {
            path: path.as_str().to_owned(),
            size_bytes: None,
            snapshot,
        })
    }

    /// Snapshot after a file operation, recorded with kind `file`.
    async fn snapshot_file_change(
        &self,
        live: &mut Live,
        what: &str,
    ) -> Result<String, SandboxError> {
        let started = Instant::now();
        let name = self.record_auto_snapshot(live, Step::File { what }).await?;
        tracing::debug!(snapshot = %name, ms = started.elapsed().as_millis() as u64, "file snapshot");
        Ok(name)
    }
}

fn too_large(cap: u64) -> SandboxError {
    SandboxError::TooLarge {
        field: "file",
        message: format!("is larger than files.max_upload_bytes ({cap} bytes)"),
    }
}

/// A hidden name next to `path` for the upload to land on first.
fn temp_name(path: &SandboxPath) -> String {
    let (parent, name) = path.parent_and_name();
    let tag: u64 = rand::random();
    let parent = parent.trim_end_matches('/');
    format!("{parent}/.{name}.rewind-upload-{tag:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<String, String> {
        SandboxPath::parse("path", raw)
            .map(|p| p.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn parse_relative_is_under_workspace() {
        assert_eq!(parse("a/./b//c.txt").unwrap(), "/workspace/a/b/c.txt");
    }

    #[test]
    fn parse_dotdot_inside_is_normalised() {
        assert_eq!(parse("../tmp/x").unwrap(), "/tmp/x");
    }

    #[test]
    fn parse_dotdot_above_root_is_refused() {
        assert_eq!(
            parse("/workspace/../../etc/shadow").unwrap_err(),
            "path: \"..\" leads outside the sandbox's root"
        );
    }

    #[test]
    fn parse_nul_and_overlong_are_refused() {
        assert_eq!(parse("a\0b").unwrap_err(), "path: must not contain NUL");
        assert_eq!(
            parse(&"a".repeat(MAX_PATH_BYTES + 1)).unwrap_err(),
            "path: is longer than 4096 bytes"
        );
    }

    #[test]
    fn in_workspace_strips_the_prefix_only_at_a_boundary() {
        let p = |s| SandboxPath::parse("path", s).unwrap();
        assert_eq!(p("/workspace/a/b").in_workspace(), Some("a/b"));
        assert_eq!(p("/workspace").in_workspace(), Some(""));
        assert_eq!(p("/workspacex/a").in_workspace(), None);
    }

    #[test]
    fn parse_mode_accepts_octal_and_refuses_the_rest() {
        assert_eq!(parse_mode("mode", "0755").unwrap(), 0o755);
        assert_eq!(parse_mode("mode", "644").unwrap(), 0o644);
        assert!(matches!(
            parse_mode("mode", "999"),
            Err(SandboxError::Invalid { field: "mode", .. })
        ));
    }

    #[test]
    fn temp_name_is_hidden_next_to_the_target() {
        let name = temp_name(&SandboxPath::parse("path", "/workspace/d/f.bin").unwrap());
        assert!(
            name.starts_with("/workspace/d/.f.bin.rewind-upload-"),
            "{name}"
        );
    }
}

//! Read and write one small workspace file through the agent in a single
//! request (the MCP tools; `files.rs` streams files of any size). A write snapshots the workspace afterwards, like a run, so it can
//! be undone.

use super::{SandboxError, Sandboxes};
use crate::auth::Caller;

/// Largest file the MCP tools move in one call.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

impl Sandboxes {
    /// Up to [`MAX_FILE_BYTES`] of `path`: (bytes, truncated).
    pub async fn read_small_file(
        &self,
        caller: &Caller,
        name: &str,
        path: &str,
    ) -> Result<(Vec<u8>, bool), SandboxError> {
        let path = workspace_path(path)?;
        let (_, entry) = self.find_live(caller, name).await?;
        let live = entry.lock().await;
        let (data, _, truncated) = live
            .agent
            .read_file(&path, Some(MAX_FILE_BYTES))
            .await
            .map_err(not_found)?;
        Ok((data, truncated))
    }

    /// Writes `path` (creating parents) and returns the snapshot taken after.
    pub async fn write_small_file(
        &self,
        caller: &Caller,
        name: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<String, SandboxError> {
        let path = workspace_path(path)?;
        if data.len() as u64 > MAX_FILE_BYTES {
            return Err(SandboxError::Invalid {
                field: "content",
                message: format!("is larger than {MAX_FILE_BYTES} bytes"),
            });
        }
        let (_, entry) = self.find_live(caller, name).await?;
        let mut live = entry.lock().await;
        live.agent.write_file(&path, data, 0o644, true).await?;
        self.snapshot_after(&mut live, &format!("write {path}"), 0)
            .await
    }
}

/// Relative paths are taken from `/workspace`; no NUL.
fn workspace_path(path: &str) -> Result<String, SandboxError> {
    if path.is_empty() || path.contains('\0') {
        return Err(SandboxError::Invalid {
            field: "path",
            message: "must be a non-empty path without NUL".into(),
        });
    }
    Ok(match path.starts_with('/') {
        true => path.to_owned(),
        false => format!("{}/{path}", rewind_agent::protocol::WORKSPACE_DIR),
    })
}

fn not_found(e: rewind_agent::client::AgentError) -> SandboxError {
    use rewind_agent::protocol::ErrorCode;
    match e {
        rewind_agent::client::AgentError::Remote {
            code: ErrorCode::NotFound,
            message,
            ..
        } => SandboxError::NotFound(message),
        other => other.into(),
    }
}

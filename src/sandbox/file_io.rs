//! Read and write one small workspace file through the agent in a single
//! request (the MCP tools; `files.rs` streams files of any size, and its
//! path validation and error mapping serve here too). A write snapshots the
//! workspace afterwards, like a run, so it can be undone.

use super::files::{path_error, SandboxPath};
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
        let path = SandboxPath::parse("path", path)?;
        let (_, entry) = self.find_live(caller, name).await?;
        let live = entry.lock().await;
        let (data, _, truncated) = live
            .agent
            .read_file(path.as_str(), Some(MAX_FILE_BYTES))
            .await
            .map_err(|e| path_error(&path, e))?;
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
        let path = SandboxPath::parse("path", path)?;
        if data.len() as u64 > MAX_FILE_BYTES {
            return Err(SandboxError::Invalid {
                field: "content",
                message: format!("is larger than {MAX_FILE_BYTES} bytes"),
            });
        }
        let (_, entry) = self.find_live(caller, name).await?;
        let mut live = entry.lock().await;
        live.agent
            .write_file(path.as_str(), data, 0o644, true)
            .await
            .map_err(|e| path_error(&path, e))?;
        self.snapshot_after(&mut live, &format!("write {}", path.as_str()), 0)
            .await
    }
}

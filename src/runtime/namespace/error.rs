//! Why launching a namespace sandbox or placing its workspace failed.

use std::path::PathBuf;
use std::time::Duration;

/// A step of `rewind-agent launch` / `mount-into` that failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot run {bin}")]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{bin} {what} did not finish within {after:?}")]
    Timeout {
        bin: PathBuf,
        what: &'static str,
        after: Duration,
    },
    /// The launcher exited non-zero: its stderr and the agent log's tail
    /// (text from another process; there is no error value to keep).
    #[error("launcher failed: {stderr}; agent log: {log}")]
    Launcher { stderr: String, log: String },
    #[error("mount-into failed: {stderr}")]
    MountInto { stderr: String },
    #[error("unexpected launcher output")]
    Output(#[source] serde_json::Error),
    #[error("sandbox PID {pid} exited right after launch")]
    Exited { pid: i32 },
    /// `criu restore` (or what prepares it) failed: CRIU's own error lines
    /// (text from another process).
    #[error("memory restore failed: {message}")]
    Restore { message: String },
}

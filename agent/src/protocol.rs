//! Wire protocol between the host and `rewind-agent`.
//!
//! # Framing
//! Every message is one frame: a 4-byte big-endian length `N` followed by `N`
//! bytes of UTF-8 JSON. Frames larger than [`MAX_FRAME_BYTES`] are a protocol
//! error. Byte payloads (file contents, stdin, output chunks) are base64
//! strings inside the JSON.
//!
//! # Conversation
//! 1. The client sends [`Request::Hello`] with its [`PROTOCOL_VERSION`]; the
//!    agent answers [`Response::Hello`] or, if the major versions differ,
//!    [`Response::Error`] with [`ErrorCode::VersionMismatch`] and closes.
//! 2. The client then sends requests one at a time on that connection. Most
//!    requests have exactly one response. [`Request::Exec`] answers
//!    [`Response::ExecStarted`], then any number of [`Response::Stdout`] /
//!    [`Response::Stderr`] chunks, then exactly one [`Response::Exited`].
//! 3. A connection may be closed at any time; requests that need to run
//!    concurrently (e.g. [`Request::Signal`] while an exec streams) use a
//!    second connection.
//! 4. [`Request::Pty`] runs a process on a new pseudo-terminal and turns the
//!    connection into a session: the agent answers [`Response::PtyStarted`],
//!    then [`Response::Stdout`] chunks of terminal output and exactly one
//!    [`Response::Exited`]. Meanwhile the host may send [`Request::PtyInput`],
//!    [`Request::PtyResize`] and [`Request::PtyHangup`] (kill the process
//!    group; `Exited` follows). Closing the connection also kills the group.
//!
//! # Compatibility
//! Readers ignore unknown fields; unknown request ops and response kinds
//! decode to `Unknown` so an older peer can answer with a clean error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Protocol version spoken by this build. Bump on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts (16 MiB).
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Default vsock port the agent listens on inside a microVM.
pub const DEFAULT_VSOCK_PORT: u32 = 1024;

/// Where the workspace is mounted inside every sandbox.
pub const WORKSPACE_DIR: &str = "/workspace";

/// A request from host to agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// First message on every connection.
    Hello { protocol: u32 },
    /// Liveness and version check.
    Ping,
    /// Run a process; see [`ExecRequest`].
    Exec(ExecRequest),
    /// Send a signal to the process group of a running exec.
    Signal { exec_id: u64, signal: i32 },
    /// Write a file (creating parent directories when asked).
    WriteFile {
        path: String,
        #[serde(with = "b64")]
        data: Vec<u8>,
        #[serde(default = "default_file_mode")]
        mode: u32,
        #[serde(default)]
        create_dirs: bool,
        /// Append `data` to an existing file instead of replacing it (the
        /// host sends a large file as one write, then appends, each frame
        /// under [`MAX_FRAME_BYTES`]). `mode` and `create_dirs` are ignored.
        #[serde(default)]
        append: bool,
    },
    /// Read up to `max_bytes` of a file, starting at byte `offset` (so a
    /// large file is read in chunks under [`MAX_FRAME_BYTES`]).
    ReadFile {
        path: String,
        #[serde(default)]
        max_bytes: Option<u64>,
        #[serde(default)]
        offset: u64,
    },
    /// Remove a file, symlink or empty directory; a directory with its
    /// contents when `recursive` (symlinks are removed, never followed).
    Remove {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    /// `rename(2)`: replaces `to` atomically (used to land an upload).
    Rename { from: String, to: String },
    /// Stat one path (does not follow a final symlink).
    Stat { path: String },
    /// List a directory, optionally recursively.
    List {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    /// Make the workspace consistent on disk and (for a block-device
    /// workspace) freeze it. The agent thaws by itself after `watchdog_ms`
    /// if no [`Request::Thaw`] arrives.
    Quiesce { watchdog_ms: u64 },
    /// Undo [`Request::Quiesce`]. Thawing a workspace that is not frozen is
    /// not an error.
    Thaw,
    /// Kill every process that holds the workspace (cwd, open file, mapping)
    /// when `kill_holders`, then unmount it.
    UnmountWorkspace {
        #[serde(default = "default_true")]
        kill_holders: bool,
    },
    /// Mount the workspace again. For a block-device workspace the agent
    /// mounts its configured device; for a directory workspace the host has
    /// already placed the mount and the agent only checks it is there.
    MountWorkspace,
    /// Which mount is at the workspace path, and which one the agent was
    /// given (answered with [`Response::WorkspaceId`]).
    WorkspaceId,
    /// Reseed the kernel RNG with host-provided entropy (after a VM fork).
    Reseed {
        #[serde(with = "b64")]
        entropy: Vec<u8>,
    },
    /// Run one cell in the sandbox's long-lived interpreter for `language`
    /// (started on first use); see [`ReplRequest`]. Answers
    /// [`Response::ReplResult`].
    Repl(ReplRequest),
    /// Start a terminal session; see [`PtyRequest`] and the module docs.
    Pty(PtyRequest),
    /// Bytes typed into the terminal of this connection's session.
    PtyInput {
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    /// Resize the terminal of this connection's session.
    PtyResize { cols: u16, rows: u16 },
    /// Kill the process group of this connection's session.
    PtyHangup,
    /// Any op this build does not know.
    #[serde(other)]
    Unknown,
}

/// One REPL cell.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplRequest {
    /// `python` or `nodejs` (see [`ReplLanguage`]).
    pub language: ReplLanguage,
    pub code: String,
    /// Interrupt (SIGINT, not kill) the cell after this long. If the
    /// interpreter does not come back within a grace period it is killed
    /// and its state is lost (`restarted` on the next result).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Cap on each of stdout and stderr of the cell.
    #[serde(default)]
    pub max_output_bytes: Option<u64>,
    /// Variables for the interpreter; used only when it is started.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// How long the agent waits for an interrupted REPL cell to come back
/// before it kills the interpreter.
pub const REPL_INTERRUPT_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Languages with a stateful REPL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplLanguage {
    #[default]
    Python,
    Nodejs,
}

impl ReplLanguage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::Nodejs => "nodejs",
        }
    }
}

/// What one REPL cell produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplOutput {
    #[serde(with = "b64")]
    pub stdout: Vec<u8>,
    #[serde(with = "b64")]
    pub stderr: Vec<u8>,
    /// The cell raised (the traceback is in `stderr`) or was interrupted.
    pub has_error: bool,
    /// The timeout interrupted the cell.
    #[serde(default)]
    pub timed_out: bool,
    /// The interpreter had to be killed (it ignored the interrupt or died);
    /// its state is gone and the next cell starts a fresh one.
    #[serde(default)]
    pub killed: bool,
    /// A fresh interpreter was started for this cell (first use, or after
    /// the previous one died): earlier state is not there.
    #[serde(default)]
    pub started: bool,
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    #[serde(default)]
    pub duration_ms: u64,
}

fn default_file_mode() -> u32 {
    0o644
}

fn default_true() -> bool {
    true
}

/// How to run one process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The program and its arguments. Exactly one of `argv` and `shell`.
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// A shell command line, run as `/bin/sh -c <shell>`.
    #[serde(default)]
    pub shell: Option<String>,
    /// Working directory; defaults to [`WORKSPACE_DIR`].
    #[serde(default)]
    pub cwd: Option<String>,
    /// Variables added to (and overriding) the agent's default environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Bytes fed to stdin, then stdin is closed. `None` = `/dev/null`.
    #[serde(default, with = "b64_opt")]
    pub stdin: Option<Vec<u8>>,
    /// Kill the whole process group after this long. `None` = no limit.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Cap on each of stdout and stderr; bytes past it are dropped and the
    /// `*_truncated` flag is set on [`Response::Exited`].
    #[serde(default)]
    pub max_output_bytes: Option<u64>,
}

/// How to start a terminal session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PtyRequest {
    /// The program and its arguments; `None` = an interactive login shell
    /// (`/bin/bash` when present, else `/bin/sh`).
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// Working directory; defaults to [`WORKSPACE_DIR`].
    #[serde(default)]
    pub cwd: Option<String>,
    /// Variables added to (and overriding) the agent's default environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cols: u16,
    pub rows: u16,
}

/// A message from agent to host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Hello {
        protocol: u32,
        agent_version: String,
    },
    Pong {
        protocol: u32,
        agent_version: String,
        uptime_ms: u64,
    },
    ExecStarted {
        exec_id: u64,
        pid: i32,
    },
    Stdout {
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    Stderr {
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    Exited(ExitStatus),
    /// A terminal session started (see [`Request::Pty`]).
    PtyStarted {
        pid: i32,
    },
    /// A request without a payload succeeded.
    Ok,
    File {
        #[serde(with = "b64")]
        data: Vec<u8>,
        info: FileInfo,
        truncated: bool,
    },
    Stat {
        info: FileInfo,
    },
    Entries {
        entries: Vec<FileInfo>,
    },
    Quiesced {
        /// True when the workspace was frozen (FIFREEZE), false when only synced.
        frozen: bool,
    },
    Unmounted {
        /// PIDs (as seen by the agent) that were killed because they held the workspace.
        killed: Vec<i32>,
    },
    /// Answer to [`Request::WorkspaceId`]. `dev` is `st_dev` of the
    /// workspace path now (a Btrfs subvolume has its own); `given` is the
    /// `st_dev` recorded when the workspace was last mounted (at start or by
    /// [`Request::MountWorkspace`]), `None` after [`Request::UnmountWorkspace`]
    /// until the next mount. Execs run only while `given == Some(dev)`.
    WorkspaceId {
        mounted: bool,
        dev: u64,
        given: Option<u64>,
    },
    ReplResult(ReplOutput),
    Error {
        code: ErrorCode,
        message: String,
    },
    #[serde(other)]
    Unknown,
}

/// How a process ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code; 124 when killed by the timeout, 128+N when killed by signal N.
    pub exit_code: i32,
    /// The signal that ended the process, if any.
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub timed_out: bool,
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    #[serde(default)]
    pub duration_ms: u64,
}

/// One file-system entry as the agent sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: String,
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    #[serde(default)]
    pub symlink_target: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    #[default]
    File,
    Dir,
    Symlink,
    Other,
}

/// Machine-readable error classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    VersionMismatch,
    BadRequest,
    NotFound,
    PermissionDenied,
    Busy,
    Io,
    Internal,
    /// The workspace is not the mount the agent was given (a restore did
    /// not finish): execs are refused until it is put back.
    WorkspaceUnavailable,
    #[serde(other)]
    Unknown,
}

mod b64 {
    use base64::{engine::general_purpose::STANDARD, Engine as _};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use base64::{engine::general_purpose::STANDARD, Engine as _};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_some(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| STANDARD.decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_unknown_op_decodes_to_unknown() {
        let req: Request = serde_json::from_str(r#"{"op":"teleport","x":1}"#).unwrap();
        assert_eq!(req, Request::Unknown);
    }

    #[test]
    fn request_unknown_fields_are_ignored() {
        let req: Request =
            serde_json::from_str(r#"{"op":"hello","protocol":1,"future":"x"}"#).unwrap();
        assert_eq!(req, Request::Hello { protocol: 1 });
    }

    #[test]
    fn pty_input_roundtrips_bytes() {
        let req = Request::PtyInput {
            data: vec![3, 0, 255],
        };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
    }

    #[test]
    fn exec_request_roundtrips_stdin_bytes() {
        let req = Request::Exec(ExecRequest {
            shell: Some("cat".into()),
            stdin: Some(vec![0, 255, 10]),
            ..Default::default()
        });
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
    }
}

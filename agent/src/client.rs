//! Host side of the agent protocol.
//!
//! [`AgentClient`] keeps a small pool of idle, handshaken connections: each
//! call takes one (or dials a new one), so calls can run concurrently (a
//! `signal` while an `exec` streams) and a sequence of calls pays the dial +
//! handshake only once. A pooled connection that turns out to be dead (the
//! agent restarted, the VM was restored) is dropped and the call is retried
//! once on a fresh connection — only when the agent answered nothing yet.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use crate::frame::{read_frame, write_frame, FrameError};
use crate::protocol::{
    ErrorCode, ExecRequest, ExitStatus, FileInfo, ReplOutput, ReplRequest, Request, Response,
    PROTOCOL_VERSION, REPL_INTERRUPT_GRACE,
};

/// How to reach an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Unix(PathBuf),
    Tcp(SocketAddr),
    /// Cloud Hypervisor's hybrid vsock: a Unix socket on the host, then
    /// `CONNECT <port>\n` → `OK <n>\n`.
    HybridVsock {
        socket: PathBuf,
        port: u32,
    },
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp:{addr}"),
            Self::HybridVsock { socket, port } => write!(f, "vsock:{}:{port}", socket.display()),
        }
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Everything an exec produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// The agent's answer to a ping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PongInfo {
    pub protocol: u32,
    pub agent_version: String,
    pub uptime_ms: u64,
}

/// The agent's answer to a workspace-id request: `st_dev` of the mount at
/// the workspace path now, whether it is a mount point, and the `st_dev`
/// the agent was given (`None` after an unmount until the next mount).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkspaceInfo {
    pub mounted: bool,
    pub dev: u64,
    pub given: Option<u64>,
}

impl WorkspaceInfo {
    /// Whether the workspace path holds the mount with device `dev` and the
    /// agent runs commands against it.
    pub fn is(&self, dev: u64) -> bool {
        self.mounted && self.dev == dev && self.given == Some(dev)
    }
}

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot connect to the agent at {transport}")]
    Connect {
        transport: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hybrid vsock at {transport} refused: {reply:?}")]
    VsockRefused { transport: String, reply: String },
    #[error("agent {op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("agent connection broke during {op}")]
    Connection {
        op: &'static str,
        #[source]
        source: FrameError,
    },
    #[error("agent closed the connection during {op}")]
    Closed { op: &'static str },
    #[error("agent protocol violation during {op}: {detail}")]
    Protocol { op: &'static str, detail: String },
    #[error("agent refused {op}: {code:?}: {message}")]
    Remote {
        op: &'static str,
        code: ErrorCode,
        message: String,
    },
}

impl AgentError {
    /// The agent-side error class, if the agent answered with an error.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn is_stale_connection(&self) -> bool {
        matches!(self, Self::Closed { .. } | Self::Connection { .. })
    }
}

/// Timeouts of an [`AgentClient`].
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    /// Dial + hybrid-vsock + protocol handshake.
    pub connect: Duration,
    /// Every request except exec (quiesce includes a sync, so be generous).
    pub request: Duration,
    /// Added to an exec's own `timeout_ms` before the client gives up.
    pub exec_slack: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(60),
            exec_slack: Duration::from_secs(30),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One handshaken connection.
struct Connection {
    stream: Box<dyn Io>,
}

const MAX_IDLE: usize = 4;

/// A client for one agent. Cheap to share behind an `Arc`.
pub struct AgentClient {
    transport: Transport,
    timeouts: ClientTimeouts,
    idle: Mutex<Vec<Connection>>,
}

impl fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentClient")
            .field("transport", &self.transport)
            .finish()
    }
}

mod calls;
mod dial;
mod pty;

pub use calls::ExecEvent;
pub use pty::{PtyEvent, PtyReader, PtyWriter};

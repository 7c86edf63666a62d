//! The agent server: accepts connections, performs the handshake and
//! dispatches requests (see [`crate::protocol`]) to one module per area.

mod conn;
mod entropy;
mod exec;
mod files;
pub mod listen;
mod pty;
mod quiesce;
mod reaper;
mod repl;
pub mod seccomp;
mod workspace;

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::protocol::ErrorCode;
pub use listen::{ListenError, ListenSpec, Listener};
use reaper::Reaper;

/// How the agent serves its sandbox.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the workspace is mounted (default `/workspace`).
    pub workspace: PathBuf,
    /// Block device holding the workspace (ext4). `None` = a directory
    /// workspace that the host mounts.
    pub workspace_device: Option<PathBuf>,
    /// Apply no_new_privs + the sandbox seccomp filter to every exec.
    pub seccomp: bool,
    /// With `seccomp`: let sandbox commands create user namespaces
    /// (`unshare -U`, `clone(CLONE_NEWUSER)`, `clone3`); denied by default.
    pub allow_nested_userns: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            workspace: PathBuf::from(crate::protocol::WORKSPACE_DIR),
            workspace_device: None,
            seccomp: false,
            allow_nested_userns: false,
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot install the SIGCHLD reaper")]
    Reaper(#[source] io::Error),
    #[error("cannot build the seccomp filter")]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("accept failed")]
    Accept(#[source] io::Error),
}

/// Why one request failed; sent to the host as [`crate::protocol::Response::Error`].
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{op} {path:?} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    WorkspaceUnavailable(String),
}

impl OpError {
    /// The machine-readable class of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Io { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => ErrorCode::NotFound,
                io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
                _ if source.raw_os_error() == Some(libc::EBUSY) => ErrorCode::Busy,
                _ => ErrorCode::Io,
            },
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Busy(_) => ErrorCode::Busy,
            Self::WorkspaceUnavailable(_) => ErrorCode::WorkspaceUnavailable,
        }
    }

    /// The error with its whole source chain, for the host.
    pub fn message(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(err) = source {
            text.push_str(": ");
            text.push_str(&err.to_string());
            source = err.source();
        }
        text
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}

/// State shared by all connections.
pub struct Agent {
    pub(crate) config: ServerConfig,
    pub(crate) started: Instant,
    pub(crate) reaper: Arc<Reaper>,
    /// exec_id → process group id of running execs.
    pub(crate) execs: Mutex<HashMap<u64, i32>>,
    pub(crate) next_exec_id: AtomicU64,
    pub(crate) quiesce: quiesce::QuiesceState,
    pub(crate) seccomp: Option<Arc<seccomp::SandboxFilters>>,
    /// `st_dev` of the workspace the agent was given ([`workspace::Given`]).
    pub(crate) workspace_given: workspace::Given,
    /// Long-lived REPL interpreters, one per language.
    pub(crate) repls: repl::Repls,
}

/// Runs the agent until the listener fails. Needs a tokio runtime.
pub async fn serve(config: ServerConfig, spec: &ListenSpec) -> Result<(), ServerError> {
    become_subreaper();
    let seccomp = match config.seccomp {
        true => Some(Arc::new(seccomp::sandbox_filter(
            config.allow_nested_userns,
        )?)),
        false => None,
    };
    let agent = Arc::new(Agent {
        started: Instant::now(),
        reaper: Reaper::start().map_err(ServerError::Reaper)?,
        execs: Mutex::default(),
        next_exec_id: AtomicU64::new(1),
        quiesce: quiesce::QuiesceState::default(),
        workspace_given: workspace::Given::at_start(&config.workspace),
        config,
        seccomp,
        repls: repl::Repls::default(),
    });
    let listener = Listener::bind(spec).await?;
    tracing::info!(listen = ?spec, workspace = ?agent.config.workspace, "agent serving");
    loop {
        let stream = listener.accept().await.map_err(ServerError::Accept)?;
        tokio::spawn(conn::handle(Arc::clone(&agent), stream));
    }
}

/// Orphaned grandchildren of our execs get reparented to us (not to the
/// host's init) when the agent is not PID 1, so they are reaped here too.
fn become_subreaper() {
    if std::process::id() != 1 {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag on this
        // process; the arguments are plain integers.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "cannot become a child subreaper");
        }
    }
}

//! Interactive terminal sessions: a process on a real PTY inside the
//! sandbox, driven through two channels so any transport (the WebSocket
//! route, a CLI) can sit in front of it.
//!
//! A session is one long command. It holds the sandbox lock from
//! [`Sandboxes::open_pty`] until its snapshot is recorded; meanwhile other
//! operations on the sandbox get a 409 (see [`Terminals`]). It ends when
//! the process exits, when the client goes away (input channel closed), at
//! the idle / max-duration limits from the config, or when the sandbox is
//! deleted; in all but the first case the process group is killed first. Every end takes a snapshot,
//! recorded like a command (`pty: <command>`) with the exit code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rewind_agent::client::{AgentError, PtyEvent, PtyReader, PtyWriter};
use rewind_agent::protocol::{ExitStatus, PtyRequest};
use tokio::sync::{mpsc, Notify, OwnedMutexGuard};
use tokio::time::{sleep_until, Instant as TokioInstant};

use super::{Live, SandboxError, Sandboxes};
use crate::auth::Caller;

/// Largest accepted terminal width or height.
pub const MAX_TERMINAL_SIDE: u16 = 1000;
/// How long a killed session may take to report its exit.
const HANGUP_GRACE: Duration = Duration::from_secs(10);

/// How to start a session.
#[derive(Debug, Clone)]
pub struct PtyOptions {
    /// A shell command line; `None` = an interactive login shell.
    pub command: Option<String>,
    pub cols: u16,
    pub rows: u16,
}

/// What the client sends into a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyInput {
    /// Bytes typed at the terminal.
    Data(Vec<u8>),
    Resize {
        cols: u16,
        rows: u16,
    },
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PtyEndReason {
    Exited,
    IdleTimeout,
    MaxDuration,
    Disconnected,
    SandboxDeleted,
}

impl PtyEndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exited => "exited",
            Self::IdleTimeout => "idle_timeout",
            Self::MaxDuration => "max_duration",
            Self::Disconnected => "disconnected",
            Self::SandboxDeleted => "sandbox_deleted",
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone)]
pub struct PtyEnd {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: PtyEndReason,
    pub snapshot: String,
    pub duration_ms: u64,
    pub snapshot_ms: u64,
}

/// The sandboxes with an open session, each with a way to end it.
#[derive(Clone, Default)]
pub(super) struct Terminals(Arc<Mutex<HashMap<String, Arc<Notify>>>>);

impl Terminals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// 409 when `name` has an open session.
    pub(super) fn refuse_if_open(&self, name: &str) -> Result<(), SandboxError> {
        match self.lock().contains_key(name) {
            true => Err(busy(name)),
            false => Ok(()),
        }
    }

    /// Ends the session of `name`, if any (the sandbox is being deleted).
    pub(super) fn hang_up(&self, name: &str) {
        if let Some(end) = self.lock().get(name) {
            end.notify_one();
        }
    }

    fn open(&self, name: &str) -> Result<TerminalMark, SandboxError> {
        let end = Arc::new(Notify::new());
        let mut open = self.lock();
        if open.contains_key(name) {
            return Err(busy(name));
        }
        open.insert(name.to_owned(), end.clone());
        Ok(TerminalMark {
            terminals: self.clone(),
            name: name.to_owned(),
            end,
        })
    }
}

fn busy(name: &str) -> SandboxError {
    SandboxError::Conflict(format!(
        "sandbox \"{name}\" has an interactive terminal session open; \
         retry when it ends"
    ))
}

/// Marks a sandbox as having a session until dropped.
struct TerminalMark {
    terminals: Terminals,
    name: String,
    /// Notified when the session must end now.
    end: Arc<Notify>,
}

impl Drop for TerminalMark {
    fn drop(&mut self) {
        self.terminals.lock().remove(&self.name);
    }
}

/// An open session, holding the sandbox lock. Dropping it without
/// [`PtySession::run`] hangs up (the agent kills the process group) and
/// takes no snapshot.
pub struct PtySession {
    sandboxes: Sandboxes,
    live: OwnedMutexGuard<Live>,
    mark: TerminalMark,
    sandbox_id: i64,
    label: String,
    writer: PtyWriter,
    reader: PtyReader,
}

impl Sandboxes {
    /// Starts a terminal session in a running sandbox.
    pub async fn open_pty(
        &self,
        caller: &Caller,
        name: &str,
        opts: PtyOptions,
    ) -> Result<PtySession, SandboxError> {
        let mut req = self.pty_request(&opts)?;
        let (row, entry) = self.find_live(caller, name).await?;
        req.env = self.egress_env(&row.name);
        let live = entry.lock_owned().await;
        let mark = self.terminals.open(&row.name)?;
        let (writer, reader, pid) = live.agent.pty(req).await?;
        tracing::info!(sandbox = %row.name, pid, "terminal session started");
        Ok(PtySession {
            sandboxes: self.clone(),
            live,
            mark,
            sandbox_id: row.id,
            label: format!("pty: {}", opts.command.as_deref().unwrap_or("login shell")),
            writer,
            reader,
        })
    }

    fn pty_request(&self, opts: &PtyOptions) -> Result<PtyRequest, SandboxError> {
        let invalid = |field, message: String| Err(SandboxError::Invalid { field, message });
        let side = 1..=MAX_TERMINAL_SIDE;
        if !side.contains(&opts.cols) {
            return invalid("cols", format!("must be 1-{MAX_TERMINAL_SIDE}"));
        }
        if !side.contains(&opts.rows) {
            return invalid("rows", format!("must be 1-{MAX_TERMINAL_SIDE}"));
        }
        let max = self.config.exec.max_command_bytes;
        match opts.command.as_deref() {
            Some(c) if c.trim().is_empty() => {
                return invalid("command", "must not be empty".into())
            }
            Some(c) if c.len() > max => {
                return invalid("command", format!("is longer than {max} bytes"))
            }
            Some(c) if c.contains('\0') => {
                return invalid("command", "must not contain NUL".into())
            }
            _ => {}
        }
        let argv = opts
            .command
            .as_ref()
            .map(|c| vec!["/bin/sh".to_owned(), "-c".to_owned(), c.clone()]);
        Ok(PtyRequest {
            argv,
            cols: opts.cols,
            rows: opts.rows,
            ..Default::default()
        })
    }
}

impl PtySession {
    /// Relays `input` into the terminal and its output into `output` until
    /// the session ends, then snapshots the workspace.
    pub async fn run(
        mut self,
        mut input: mpsc::Receiver<PtyInput>,
        output: mpsc::Sender<Vec<u8>>,
    ) -> Result<PtyEnd, SandboxError> {
        let started = Instant::now();
        let limits = &self.sandboxes.config.exec;
        let idle = Duration::from_secs(limits.pty_idle_timeout_secs);
        let deadline = TokioInstant::now() + Duration::from_secs(limits.pty_max_duration_secs);
        let mut idle_at = TokioInstant::now() + idle;
        let end = self.mark.end.clone();
        let ended = loop {
            let step = tokio::select! {
                event = self.reader.next() => match event {
                    Ok(PtyEvent::Output(data)) => {
                        idle_at = TokioInstant::now() + idle;
                        match output.send(data).await {
                            Ok(()) => Ok(None),
                            Err(_) => self.hangup(PtyEndReason::Disconnected).await.map(Some),
                        }
                    }
                    Ok(PtyEvent::Exited(status)) => Ok(Some((status, PtyEndReason::Exited))),
                    Err(e) => Err(e),
                },
                msg = input.recv() => match msg {
                    Some(PtyInput::Data(data)) => {
                        idle_at = TokioInstant::now() + idle;
                        self.writer.input(data).await.map(|()| None)
                    }
                    Some(PtyInput::Resize { cols, rows }) => {
                        self.writer.resize(cols, rows).await.map(|()| None)
                    }
                    None => self.hangup(PtyEndReason::Disconnected).await.map(Some),
                },
                _ = sleep_until(idle_at) => self.hangup(PtyEndReason::IdleTimeout).await.map(Some),
                _ = sleep_until(deadline) => self.hangup(PtyEndReason::MaxDuration).await.map(Some),
                () = end.notified() => self.hangup(PtyEndReason::SandboxDeleted).await.map(Some),
            };
            match step {
                Ok(Some(ended)) => break ended,
                Ok(None) => {}
                Err(e) => {
                    let e = self
                        .sandboxes
                        .exec_failed(&self.live, self.sandbox_id, e)
                        .await;
                    return Err(e);
                }
            }
        };
        self.finish(ended, started).await
    }

    /// Kills the process group and waits for the exit it causes.
    async fn hangup(
        &mut self,
        reason: PtyEndReason,
    ) -> Result<(ExitStatus, PtyEndReason), AgentError> {
        tracing::info!(reason = reason.as_str(), "ending terminal session");
        self.writer.hangup().await?;
        let wait = async {
            loop {
                if let PtyEvent::Exited(status) = self.reader.next().await? {
                    return Ok((status, reason));
                }
            }
        };
        tokio::time::timeout(HANGUP_GRACE, wait)
            .await
            .map_err(|_| AgentError::Timeout {
                op: "pty hangup",
                after: HANGUP_GRACE,
            })?
    }

    async fn finish(
        mut self,
        (status, reason): (ExitStatus, PtyEndReason),
        started: Instant,
    ) -> Result<PtyEnd, SandboxError> {
        let duration_ms = started.elapsed().as_millis() as u64;
        let snap_started = Instant::now();
        let snapshot = self
            .sandboxes
            .snapshot_after(&mut self.live, &self.label, status.exit_code)
            .await?;
        Ok(PtyEnd {
            exit_code: status.exit_code,
            signal: status.signal,
            reason,
            snapshot,
            duration_ms,
            snapshot_ms: snap_started.elapsed().as_millis() as u64,
        })
    }
}

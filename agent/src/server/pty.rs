//! `Pty`: run one process on a new pseudo-terminal and relay it over the
//! connection. The process is a session leader with the terminal as its
//! controlling tty, so job control, `stty` and SIGWINCH on resize all behave
//! as in a real terminal. The session ends when the process exits (and the
//! terminal has no more output), on [`Request::PtyHangup`], or when the host
//! goes away; the last two kill the process group.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::pty::{openpty, Winsize};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use super::conn::{send, Requests, Writer};
use super::{exec, Agent, OpError};
use crate::frame::FrameError;
use crate::protocol::{ExitStatus, PtyRequest, Request, Response};

const CHUNK_BYTES: usize = 64 * 1024;
/// How long to keep reading terminal output after the process exited
/// (background processes may hold the terminal open forever).
const DRAIN_GRACE: Duration = Duration::from_millis(200);

/// Runs one terminal session; the final `Exited` frame is written here.
pub async fn run(
    agent: &Arc<Agent>,
    req: PtyRequest,
    writer: &mut Writer,
    requests: &mut Requests,
) -> Result<Result<Option<Response>, OpError>, FrameError> {
    let (master, pid, exit_rx) = match spawn(agent, &req) {
        Ok(spawned) => spawned,
        Err(err) => return Ok(Err(err)),
    };
    let started = std::time::Instant::now();
    send(writer, &Response::PtyStarted { pid }).await?;
    let mut session = Session {
        master,
        pgid: Pid::from_raw(pid),
        pending: Vec::new(),
    };
    let wait = match session.relay(exit_rx, writer, requests).await {
        Ok(wait) => wait,
        Err(err) => {
            // The host went away: nobody is at the terminal any more.
            let _ = killpg(session.pgid, Signal::SIGKILL);
            return Err(err);
        }
    };
    let mut status = exit_status(wait);
    status.duration_ms = started.elapsed().as_millis() as u64;
    send(writer, &Response::Exited(status)).await?;
    Ok(Ok(None))
}

/// Opens the terminal and starts the process on it.
fn spawn(
    agent: &Agent,
    req: &PtyRequest,
) -> Result<(AsyncFd<OwnedFd>, i32, oneshot::Receiver<WaitStatus>), OpError> {
    // Like an exec: never on a workspace that is not the one we were given.
    agent.workspace_given.check(&agent.config.workspace)?;
    let pty = openpty(Some(&winsize(req.cols, req.rows)), None)
        .map_err(|e| OpError::io("openpty", "/dev/ptmx")(e.into()))?;
    let mut cmd = command(agent, req, &pty.slave)?;
    let (child, exit_rx) = agent
        .reaper
        .spawn(&mut cmd)
        .map_err(|e| OpError::io("spawn", program(req))(e))?;
    // The child has its copies; ours must close so the master sees EOF.
    drop(cmd);
    drop(pty.slave);
    fcntl(&pty.master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .map_err(|e| OpError::io("set nonblocking", "/dev/ptmx")(e.into()))?;
    // SAFETY: an `OwnedFd` stays open and keeps its number until the
    // `AsyncFd` that owns it is dropped.
    let master = unsafe { AsyncFd::register(pty.master) }
        .map_err(|e| OpError::io("register", "/dev/ptmx")(e.into()))?;
    Ok((master, child.id() as i32, exit_rx))
}

fn program(req: &PtyRequest) -> String {
    match &req.argv {
        Some(argv) => argv.first().cloned().unwrap_or_default(),
        None => default_shell().to_owned(),
    }
}

fn default_shell() -> &'static str {
    if std::path::Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    }
}

fn command(agent: &Agent, req: &PtyRequest, slave: &OwnedFd) -> Result<Command, OpError> {
    let mut cmd = match &req.argv {
        Some(argv) if argv.is_empty() => {
            return Err(OpError::BadRequest("argv must not be empty".into()))
        }
        Some(argv) => {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            cmd
        }
        None => {
            let mut cmd = Command::new(default_shell());
            cmd.arg("-l");
            cmd
        }
    };
    let mut env = exec::environment(&req.env);
    env.entry("TERM".into())
        .and_modify(|t| {
            if t == "xterm" {
                *t = "xterm-256color".into()
            }
        })
        .or_insert_with(|| "xterm-256color".into());
    let stdio = |what| {
        slave
            .try_clone()
            .map(Stdio::from)
            .map_err(|e| OpError::io(what, "pty slave")(e))
    };
    let cwd = req.cwd.clone().map(Into::into);
    cmd.current_dir(cwd.unwrap_or_else(|| agent.config.workspace.clone()))
        .env_clear()
        .envs(env)
        .stdin(stdio("dup stdin")?)
        .stdout(stdio("dup stdout")?)
        .stderr(stdio("dup stderr")?);
    let seccomp = agent.seccomp.clone();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe syscalls (setsid, ioctl, prctl, seccomp); it
    // does not allocate (the BPF program was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            // SAFETY: fd 0 is the terminal slave (set up as stdin above);
            // TIOCSCTTY takes an int argument and touches no memory of ours.
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            for filter in seccomp.iter().flat_map(|f| f.iter()) {
                seccompiler::apply_filter(filter)
                    .map_err(|_| io::Error::from_raw_os_error(libc::EPERM))?;
            }
            Ok(())
        });
    }
    Ok(cmd)
}

fn winsize(cols: u16, rows: u16) -> Winsize {
    Winsize {
        ws_row: rows.max(1),
        ws_col: cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// One running session: the master side of its terminal and its input queue.
struct Session {
    master: AsyncFd<OwnedFd>,
    pgid: Pid,
    /// Input not yet accepted by the terminal.
    pending: Vec<u8>,
}

impl Session {
    /// Relays until the process exited and its output drained.
    async fn relay(
        &mut self,
        mut exit_rx: oneshot::Receiver<WaitStatus>,
        writer: &mut Writer,
        requests: &mut Requests,
    ) -> Result<WaitStatus, FrameError> {
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut exit: Option<WaitStatus> = None;
        let mut eof = false;
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        let mut drain_until = far;
        while !(eof && exit.is_some()) {
            tokio::select! {
                n = read(&self.master, &mut buf), if !eof => match n {
                    0 => eof = true,
                    n => send(writer, &Response::Stdout { data: buf[..n].to_vec() }).await?,
                },
                _ = flush(&self.master, &mut self.pending), if !self.pending.is_empty() => {}
                status = &mut exit_rx, if exit.is_none() => {
                    exit = Some(status.unwrap_or(WaitStatus::StillAlive));
                    drain_until = tokio::time::Instant::now() + DRAIN_GRACE;
                }
                _ = tokio::time::sleep_until(drain_until), if exit.is_some() => break,
                request = requests.recv() => self.control(request)?,
            }
        }
        Ok(exit.unwrap_or(WaitStatus::StillAlive))
    }

    /// Applies one request from the host; anything but session control
    /// (or EOF) ends the session.
    fn control(&mut self, request: Option<Result<Request, FrameError>>) -> Result<(), FrameError> {
        match request {
            Some(Ok(Request::PtyInput { data })) => self.pending.extend_from_slice(&data),
            Some(Ok(Request::PtyResize { cols, rows })) => self.resize(cols, rows),
            Some(Ok(Request::PtyHangup)) => {
                let _ = killpg(self.pgid, Signal::SIGKILL);
            }
            Some(Err(err)) => return Err(err),
            Some(Ok(other)) => {
                return Err(FrameError::Io(io::Error::other(format!(
                    "request {other:?} sent during a terminal session"
                ))))
            }
            None => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
        }
        Ok(())
    }

    fn resize(&self, cols: u16, rows: u16) {
        let size = winsize(cols, rows);
        // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer,
        // which points at a live local; the fd is our open pty master.
        let rc = unsafe { libc::ioctl(self.master.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "pty resize failed");
        }
    }
}

/// Reads terminal output; 0 = the terminal is closed (EIO on Linux).
async fn read(master: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> usize {
    loop {
        let Ok(mut guard) = master.readable().await else {
            return 0;
        };
        let read = guard
            .try_io(|fd| nix::unistd::read(fd.get_ref().as_fd(), buf).map_err(io::Error::from));
        match read {
            Ok(Ok(n)) => return n,
            Ok(Err(_)) => return 0,
            Err(_would_block) => continue,
        }
    }
}

/// Writes as much pending input as the terminal takes.
async fn flush(master: &AsyncFd<OwnedFd>, pending: &mut Vec<u8>) {
    let Ok(mut guard) = master.writable().await else {
        pending.clear();
        return;
    };
    let written =
        guard.try_io(|fd| nix::unistd::write(fd.get_ref(), &pending[..]).map_err(io::Error::from));
    match written {
        Ok(Ok(n)) => {
            pending.drain(..n);
        }
        Ok(Err(_)) => pending.clear(),
        Err(_would_block) => {}
    }
}

fn exit_status(wait: WaitStatus) -> ExitStatus {
    let (code, signal) = match wait {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        _ => (-1, None),
    };
    ExitStatus {
        exit_code: code,
        signal,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn winsize_zero_is_clamped_to_one() {
        let size = winsize(0, 0);
        assert_eq!((size.ws_col, size.ws_row), (1, 1));
    }

    #[test]
    fn exit_status_signal_is_128_plus_n() {
        let wait = WaitStatus::Signaled(Pid::from_raw(5), Signal::SIGKILL, false);
        let status = exit_status(wait);
        assert_eq!((status.exit_code, status.signal), (137, Some(9)));
    }
}

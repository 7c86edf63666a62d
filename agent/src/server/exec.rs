//! `Exec`: run one process in its own session/process group, stream its
//! output, enforce caps and the timeout, and report how it ended.
//!
//! Processes are spawned with `std::process::Command` (not tokio's, whose
//! child reaping would race with our `waitpid(-1)` reaper) and their pipes
//! converted to tokio pipes. After the main process exits the pipes are
//! drained until EOF or [`DRAIN_GRACE`]; background processes that keep a
//! pipe open keep running, and a task keeps reading (and discarding) their
//! output so they never die of SIGPIPE.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::time::{sleep_until, Instant as TokioInstant};

use super::conn::{send, Requests, Writer};
use super::{Agent, OpError};
use crate::frame::FrameError;
use crate::protocol::{ExecRequest, ExitStatus, Response};

/// How long to keep reading output after the main process exited.
const DRAIN_GRACE: Duration = Duration::from_millis(75);
const CHUNK_BYTES: usize = 64 * 1024;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs one exec; the final `Exited` frame is written here.
pub async fn run(
    agent: &Arc<Agent>,
    req: ExecRequest,
    writer: &mut Writer,
    requests: &mut Requests,
) -> Result<Result<Option<Response>, OpError>, FrameError> {
    let started = Instant::now();
    if let Err(err) = agent.workspace_given.check(&agent.config.workspace) {
        return Ok(Err(err));
    }
    let mut cmd = match build_command(agent, &req) {
        Ok(cmd) => cmd,
        Err(err) => return Ok(Err(err)),
    };
    let (mut child, exit_rx) = match agent.reaper.spawn(&mut cmd) {
        Ok(spawned) => spawned,
        Err(source) => return Ok(Err(spawn_error(&req, source))),
    };
    let pid = child.id() as i32;
    let exec_id = agent.next_exec_id.fetch_add(1, Ordering::Relaxed);
    lock(agent).insert(exec_id, pid);
    feed_stdin(
        child.stdin.take().map(OwnedFd::from),
        req.stdin.unwrap_or_default(),
    );
    let pipes = Pipes {
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
    };
    let result = async {
        send(writer, &Response::ExecStarted { exec_id, pid }).await?;
        let limits = Limits::from_request(req.timeout_ms, req.max_output_bytes);
        stream(pipes, exit_rx, pid, limits, writer, requests).await
    }
    .await;
    lock(agent).remove(&exec_id);
    let mut status = match result {
        Ok(status) => status,
        Err(err) => {
            // The host went away mid-exec: nobody can collect the result.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            return Err(err);
        }
    };
    status.duration_ms = started.elapsed().as_millis() as u64;
    send(writer, &Response::Exited(status)).await?;
    Ok(Ok(None))
}

/// Sends `signal` to the process group of a running exec.
pub fn signal(agent: &Agent, exec_id: u64, signal: i32) -> Result<Response, OpError> {
    let pgid = lock(agent)
        .get(&exec_id)
        .copied()
        .ok_or_else(|| OpError::NotFound(format!("no running exec {exec_id}")))?;
    let sig = Signal::try_from(signal)
        .map_err(|_| OpError::BadRequest(format!("bad signal {signal}")))?;
    killpg(Pid::from_raw(pgid), sig)
        .map_err(|e| OpError::io("signal process group", format!("-{pgid}"))(e.into()))?;
    Ok(Response::Ok)
}

fn lock(agent: &Agent) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, i32>> {
    agent.execs.lock().unwrap_or_else(|e| e.into_inner())
}

fn spawn_error(req: &ExecRequest, source: std::io::Error) -> OpError {
    let what = req.argv.as_ref().and_then(|a| a.first()).cloned();
    let path = what.unwrap_or_else(|| "/bin/sh".into());
    OpError::io("spawn", path)(source)
}

pub(super) fn build_command(agent: &Agent, req: &ExecRequest) -> Result<Command, OpError> {
    let mut cmd = match (&req.argv, &req.shell) {
        (Some(argv), None) if !argv.is_empty() => {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            cmd
        }
        (None, Some(shell)) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(shell);
            cmd
        }
        _ => {
            return Err(OpError::BadRequest(
                "exactly one of argv (non-empty) and shell".into(),
            ))
        }
    };
    let cwd = req.cwd.clone().map(Into::into);
    cmd.current_dir(cwd.unwrap_or_else(|| agent.config.workspace.clone()))
        .env_clear()
        .envs(environment(&req.env))
        .stdin(if req.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let seccomp = agent.seccomp.clone();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe syscalls (setsid, prctl, seccomp); it does not
    // allocate (the BPF program was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            for filter in seccomp.iter().flat_map(|f| f.iter()) {
                seccompiler::apply_filter(filter)
                    .map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))?;
            }
            Ok(())
        });
    }
    Ok(cmd)
}

pub(super) fn environment(extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        ("PATH", DEFAULT_PATH),
        ("HOME", "/root"),
        ("TERM", "xterm"),
        ("LANG", "C.UTF-8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.extend(extra.clone());
    env
}

fn feed_stdin(stdin: Option<OwnedFd>, data: Vec<u8>) {
    let Some(fd) = stdin else { return };
    tokio::spawn(async move {
        if let Ok(mut sender) = pipe::Sender::from_owned_fd(fd) {
            let _ = sender.write_all(&data).await;
        }
    });
}

struct Pipes {
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

#[derive(Clone, Copy)]
struct Limits {
    deadline: Option<TokioInstant>,
    cap: u64,
}

impl Limits {
    fn from_request(timeout_ms: Option<u64>, max_output: Option<u64>) -> Self {
        Self {
            deadline: timeout_ms.map(|ms| TokioInstant::now() + Duration::from_millis(ms)),
            cap: max_output.unwrap_or(u64::MAX),
        }
    }
}

/// One output stream with its cap bookkeeping.
struct Output {
    pipe: Option<pipe::Receiver>,
    sent: u64,
    truncated: bool,
    stderr: bool,
}

impl Output {
    fn new(fd: Option<OwnedFd>, stderr: bool) -> Self {
        let pipe = fd.and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok());
        Self {
            pipe,
            sent: 0,
            truncated: false,
            stderr,
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> usize {
        match self.pipe.as_mut() {
            Some(pipe) => pipe.read(buf).await.unwrap_or(0),
            None => std::future::pending().await,
        }
    }

    /// Forwards what fits under the cap; closes on EOF.
    async fn forward(
        &mut self,
        data: &[u8],
        cap: u64,
        writer: &mut Writer,
    ) -> Result<(), FrameError> {
        if data.is_empty() {
            self.pipe = None;
            return Ok(());
        }
        let room = cap.saturating_sub(self.sent).min(data.len() as u64) as usize;
        if room < data.len() {
            self.truncated = true;
        }
        if room == 0 {
            return Ok(());
        }
        self.sent += room as u64;
        let data = data[..room].to_vec();
        let frame = match self.stderr {
            true => Response::Stderr { data },
            false => Response::Stdout { data },
        };
        send(writer, &frame).await
    }

    /// Keeps reading (and dropping) output of background processes.
    fn detach(self) {
        let Some(mut pipe) = self.pipe else { return };
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK_BYTES];
            while matches!(pipe.read(&mut buf).await, Ok(n) if n > 0) {}
        });
    }
}

async fn stream(
    pipes: Pipes,
    mut exit_rx: oneshot::Receiver<WaitStatus>,
    pgid: i32,
    limits: Limits,
    writer: &mut Writer,
    requests: &mut Requests,
) -> Result<ExitStatus, FrameError> {
    let mut out = Output::new(pipes.stdout, false);
    let mut err = Output::new(pipes.stderr, true);
    let (mut out_buf, mut err_buf) = (vec![0u8; CHUNK_BYTES], vec![0u8; CHUNK_BYTES]);
    let mut exit: Option<WaitStatus> = None;
    let mut timed_out = false;
    let mut drain_until = None;
    let far = TokioInstant::now() + Duration::from_secs(86400 * 365);
    while out.pipe.is_some() || err.pipe.is_some() || exit.is_none() {
        let kill_at = limits.deadline.filter(|_| !timed_out && exit.is_none());
        tokio::select! {
            n = out.read(&mut out_buf) => out.forward(&out_buf[..n], limits.cap, writer).await?,
            n = err.read(&mut err_buf) => err.forward(&err_buf[..n], limits.cap, writer).await?,
            status = &mut exit_rx, if exit.is_none() => {
                exit = Some(status.unwrap_or(WaitStatus::StillAlive));
                drain_until = Some(TokioInstant::now() + DRAIN_GRACE);
            }
            _ = sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() => {
                timed_out = true;
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            _ = sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() => break,
            request = requests.recv() => return Err(hangup(request)),
        }
    }
    let status = exit_status(
        exit.unwrap_or(WaitStatus::StillAlive),
        timed_out,
        &out,
        &err,
    );
    out.detach();
    err.detach();
    Ok(status)
}

/// The host must not send anything while an exec streams; anything it
/// does send (or EOF) ends the exec.
fn hangup(request: Option<Result<crate::protocol::Request, FrameError>>) -> FrameError {
    match request {
        Some(Err(err)) => err,
        Some(Ok(req)) => FrameError::Io(std::io::Error::other(format!(
            "request {req:?} sent while an exec was running"
        ))),
        None => FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()),
    }
}

fn exit_status(wait: WaitStatus, timed_out: bool, out: &Output, err: &Output) -> ExitStatus {
    let (code, signal) = match wait {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        _ => (-1, None),
    };
    ExitStatus {
        exit_code: if timed_out { 124 } else { code },
        signal,
        timed_out,
        stdout_truncated: out.truncated,
        stderr_truncated: err.truncated,
        duration_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(truncated: bool) -> Output {
        Output {
            pipe: None,
            sent: 0,
            truncated,
            stderr: false,
        }
    }

    #[test]
    fn exit_status_signal_is_128_plus_n() {
        let wait = WaitStatus::Signaled(Pid::from_raw(5), Signal::SIGTERM, false);
        let status = exit_status(wait, false, &output(false), &output(false));
        assert_eq!((status.exit_code, status.signal), (143, Some(15)));
    }

    #[test]
    fn exit_status_timeout_is_124() {
        let wait = WaitStatus::Signaled(Pid::from_raw(5), Signal::SIGKILL, false);
        let status = exit_status(wait, true, &output(true), &output(false));
        let got = (status.exit_code, status.timed_out, status.stdout_truncated);
        assert_eq!(got, (124, true, true));
    }

    #[test]
    fn environment_request_overrides_defaults() {
        let extra = BTreeMap::from([("PATH".to_owned(), "/x".to_owned())]);
        let env = environment(&extra);
        assert_eq!(
            (env["PATH"].as_str(), env["HOME"].as_str()),
            ("/x", "/root")
        );
    }
}

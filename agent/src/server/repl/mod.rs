//! `Repl`: one long-lived interpreter per language, started on first use
//! and driven by a small driver program (`driver.py`, `driver.js`).
//!
//! The agent writes a cell as one JSON line to the interpreter's stdin; the
//! driver runs it in a persistent global scope (so variables survive from
//! cell to cell), prints the value of a final expression, prints an
//! exception's traceback to stderr, then writes an end marker
//! `\x1eREWIND-<nonce>-<id>-<ok|error>\n` to both stdout and stderr. The agent
//! collects each stream up to its marker, so output of child processes of
//! the cell is captured too. The nonce is random per interpreter and removed
//! from its environment.
//!
//! Timeout: the agent sends SIGINT (Python raises `KeyboardInterrupt`,
//! Node's `vm` breaks the script), keeping the interpreter and its state.
//! If no marker arrives within [`INTERRUPT_GRACE`] the interpreter's process
//! group is killed and the next cell starts a fresh one.
//!
//! Between cells the interpreter's working directory is `/`, so it holds
//! nothing in the workspace and a restore (which unmounts the workspace and
//! kills its holders) leaves it alive; each cell runs in the workspace.

mod marker;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{oneshot, Mutex as AsyncMutex};
use tokio::time::{sleep_until, Instant as TokioInstant};

use super::{exec, Agent, OpError};
use crate::protocol::{
    ExecRequest, ReplLanguage, ReplOutput, ReplRequest, Response,
    REPL_INTERRUPT_GRACE as INTERRUPT_GRACE,
};
use marker::Collector;

const PYTHON_DRIVER: &str = include_str!("driver.py");
const NODE_DRIVER: &str = include_str!("driver.js");

/// The interpreters of one sandbox, one slot per language; a cell holds its
/// language's slot for its whole run, so cells of one language run in order.
#[derive(Default)]
pub struct Repls {
    python: AsyncMutex<Option<Interpreter>>,
    nodejs: AsyncMutex<Option<Interpreter>>,
}

impl Repls {
    fn slot(&self, language: ReplLanguage) -> &AsyncMutex<Option<Interpreter>> {
        match language {
            ReplLanguage::Python => &self.python,
            ReplLanguage::Nodejs => &self.nodejs,
        }
    }
}

/// One running interpreter and its pipes.
struct Interpreter {
    pid: i32,
    stdin: pipe::Sender,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    exit: oneshot::Receiver<WaitStatus>,
    nonce: String,
    next_id: u64,
}

impl Drop for Interpreter {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
    }
}

/// Runs one cell, starting the interpreter if needed.
pub async fn run(agent: &Arc<Agent>, req: ReplRequest) -> Result<Response, OpError> {
    if req.code.contains('\0') {
        return Err(OpError::BadRequest("code must not contain NUL".into()));
    }
    agent.workspace_given.check(&agent.config.workspace)?;
    let started_at = Instant::now();
    let mut slot = agent.repls.slot(req.language).lock().await;
    let started = slot.is_none();
    if started {
        *slot = Some(spawn(agent, &req)?);
    }
    let Some(interp) = slot.as_mut() else {
        unreachable!("the slot was just filled")
    };
    let mut output = cell(interp, &req).await;
    if output.killed {
        *slot = None;
    }
    output.started = started;
    output.duration_ms = started_at.elapsed().as_millis() as u64;
    Ok(Response::ReplResult(output))
}

fn spawn(agent: &Agent, req: &ReplRequest) -> Result<Interpreter, OpError> {
    let nonce = format!("{:032x}", rand::rng().random::<u128>());
    let mut env = req.env.clone();
    env.insert("REWIND_REPL_NONCE".into(), nonce.clone());
    let workdir = agent.config.workspace.display().to_string();
    env.insert("REWIND_REPL_WORKDIR".into(), workdir);
    let argv = match req.language {
        ReplLanguage::Python => ["python3", "-u", "-c", PYTHON_DRIVER],
        ReplLanguage::Nodejs => ["node", "--stack-size=4096", "-e", NODE_DRIVER],
    };
    let exec = ExecRequest {
        argv: Some(argv.iter().map(|s| s.to_string()).collect()),
        cwd: Some("/".into()),
        env,
        stdin: Some(Vec::new()),
        ..Default::default()
    };
    let mut cmd = exec::build_command(agent, &exec)?;
    let (mut child, exit) = agent.reaper.spawn(&mut cmd).map_err(|source| {
        let what = format!("{} (is it installed in the image?)", argv[0]);
        OpError::io("start interpreter", what)(source)
    })?;
    Ok(Interpreter {
        pid: child.id() as i32,
        stdin: pipe::Sender::from_owned_fd(owned(child.stdin.take())?).map_err(pipe_error)?,
        stdout: pipe::Receiver::from_owned_fd(owned(child.stdout.take())?).map_err(pipe_error)?,
        stderr: pipe::Receiver::from_owned_fd(owned(child.stderr.take())?).map_err(pipe_error)?,
        exit,
        nonce,
        next_id: 1,
    })
}

fn owned(fd: Option<impl Into<OwnedFd>>) -> Result<OwnedFd, OpError> {
    fd.map(Into::into)
        .ok_or_else(|| pipe_error(std::io::Error::other("pipe missing")))
}

fn pipe_error(source: std::io::Error) -> OpError {
    OpError::io("set up interpreter pipe", "/")(source)
}

/// Sends one cell and collects both streams up to their markers.
async fn cell(interp: &mut Interpreter, req: &ReplRequest) -> ReplOutput {
    let id = interp.next_id;
    interp.next_id += 1;
    let line = serde_json::json!({ "id": id, "code": req.code }).to_string() + "\n";
    let marker = format!("\x1eREWIND-{}-{id}-", interp.nonce);
    let cap = req.max_output_bytes.unwrap_or(u64::MAX) as usize;
    let mut out = Collector::new(marker.clone(), cap);
    let mut err = Collector::new(marker, cap);
    if interp.stdin.write_all(line.as_bytes()).await.is_err() {
        return died(out, err, "the interpreter is gone");
    }
    let deadline = req
        .timeout_ms
        .map(|ms| TokioInstant::now() + Duration::from_millis(ms));
    let (timed_out, killed) = collect(interp, &mut out, &mut err, deadline).await;
    finish(out, err, timed_out, killed)
}

/// Reads until both markers arrive, interrupting at `deadline` and killing
/// after the grace. Returns (timed_out, killed).
async fn collect(
    interp: &mut Interpreter,
    out: &mut Collector,
    err: &mut Collector,
    deadline: Option<TokioInstant>,
) -> (bool, bool) {
    let far = TokioInstant::now() + Duration::from_secs(86400 * 365);
    let mut interrupted = false;
    let mut kill_at = deadline;
    while !(out.done() && err.done()) {
        tokio::select! {
            alive = out.read(&mut interp.stdout) => if !alive { return (interrupted, true) },
            alive = err.read(&mut interp.stderr) => if !alive { return (interrupted, true) },
            _ = &mut interp.exit => return (interrupted, true),
            _ = sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() => {
                if interrupted {
                    return (true, true);
                }
                interrupted = true;
                let _ = kill(Pid::from_raw(interp.pid), Signal::SIGINT);
                kill_at = Some(TokioInstant::now() + INTERRUPT_GRACE);
            }
        }
    }
    (interrupted, false)
}

fn died(out: Collector, err: Collector, why: &str) -> ReplOutput {
    let mut output = finish(out, err, false, true);
    output
        .stderr
        .extend_from_slice(format!("[rewind] {why}\n").as_bytes());
    output
}

fn finish(out: Collector, err: Collector, timed_out: bool, killed: bool) -> ReplOutput {
    let failed = out.status() != Some("ok");
    let (stdout, stdout_truncated) = out.into_output();
    let (mut stderr, stderr_truncated) = err.into_output();
    if killed {
        stderr.extend_from_slice(
            b"\n[rewind] the interpreter was killed; its state is lost and the next cell starts a fresh one\n",
        );
    } else if timed_out {
        stderr.extend_from_slice(
            b"\n[rewind] the cell timed out and was interrupted; the interpreter keeps its state\n",
        );
    }
    ReplOutput {
        stdout,
        stderr,
        has_error: failed || timed_out || killed,
        timed_out,
        killed,
        stdout_truncated,
        stderr_truncated,
        ..Default::default()
    }
}

//! Run one command, then snapshot the workspace: exec → quiesce → Btrfs
//! snapshot → thaw (also on every error path) → snapshot row → response.
//!
//! Two shapes share one core ([`Sandboxes::execute`]): [`Sandboxes::run`]
//! collects the output; [`Sandboxes::run_stream`] yields it as
//! [`RunEvent`]s while the command runs. When the consumer of a stream goes
//! away (the HTTP client disconnected), the command's process group is
//! killed, and the workspace is still snapshotted and recorded (exit code
//! 137), so the sandbox is never left locked or unrecorded.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Instant;

use base64::Engine as _;
use rewind_agent::client::{AgentError, ExecEvent, Stream};
use rewind_agent::protocol::{ExecRequest, ExitStatus};
use rewind_storage::{SnapshotKind, SnapshotName};
use serde::Deserialize;
use tokio::sync::{mpsc, OwnedMutexGuard};

use super::auto_snapshot::Step;
use super::{Live, SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::Db;
use crate::events::{self, EventKind};

/// How long the agent keeps a workspace frozen if the host vanishes mid-snapshot.
pub const WATCHDOG: std::time::Duration = std::time::Duration::from_secs(10);

/// Exit code reported when the timeout killed the command (as coreutils `timeout`).
pub const TIMEOUT_EXIT_CODE: i32 = 124;

/// Body of `POST /vms/:name/run`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub command: String,
    /// Seconds; default and maximum come from the config.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Extra environment variables (extension).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox (extension; default `/workspace`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Text fed to the command's stdin, then closed (extension; default:
    /// stdin is `/dev/null`).
    #[serde(default)]
    pub stdin: Option<String>,
    /// Bytes fed to stdin, base64-encoded (extension; excludes `stdin`).
    #[serde(default, rename = "stdinBase64", alias = "stdin_base64")]
    pub stdin_base64: Option<String>,
    /// Report what the command changed (extension; see `diff.rs`).
    #[serde(default)]
    pub changes: bool,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    pub snapshot: String,
    pub timed_out: bool,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub exec_ms: u64,
    pub snapshot_ms: u64,
    /// What the command changed, when the request asked for it.
    pub changes: Option<super::ChangeSummary>,
}

/// How a run ended, without its output.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub exit_code: i32,
    pub snapshot: String,
    pub timed_out: bool,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub exec_ms: u64,
    pub snapshot_ms: u64,
}

/// What a streamed run reports, in order: output chunks, then exactly one
/// `Finished` or `Failed`.
#[derive(Debug)]
pub enum RunEvent {
    Output(Stream, Vec<u8>),
    Finished(RunSummary),
    Failed(SandboxError),
}

/// The events of one streamed run; dropping it kills the command.
pub type RunStream = mpsc::UnboundedReceiver<RunEvent>;

impl Sandboxes {
    pub async fn run(
        &self,
        caller: &Caller,
        name: &str,
        req: RunRequest,
    ) -> Result<RunOutput, SandboxError> {
        let exec = self.exec_request(&req)?;
        let note = timeout_note(&exec);
        let _slot = self.claim_run(caller)?;
        let (row, entry) = self.find_live(caller, name).await?;
        let mut live = entry.lock().await;
        let before = match (req.changes, live.restored_to.clone()) {
            (true, Some(restored)) => Some(restored),
            (true, None) => self.latest_snapshot(live.id).await?,
            (false, _) => None,
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let collect = |stream, data: &[u8]| match stream {
            Stream::Stdout => stdout.extend_from_slice(data),
            Stream::Stderr => stderr.extend_from_slice(data),
        };
        let s = self
            .execute(&mut live, row.id, &req.command, exec, collect, never())
            .await?;
        let changes = match before {
            Some(before) => self.changes_since(&live, &before, &s.snapshot).await,
            None => None,
        };
        if s.timed_out {
            stderr.extend_from_slice(note.as_bytes());
        }
        Ok(RunOutput {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            exit_code: s.exit_code,
            snapshot: s.snapshot,
            timed_out: s.timed_out,
            stdout_truncated: s.stdout_truncated,
            stderr_truncated: s.stderr_truncated,
            exec_ms: s.exec_ms,
            snapshot_ms: s.snapshot_ms,
            changes,
        })
    }

    /// Starts a run whose output arrives as it is produced. Validation,
    /// lookup and the sandbox lock happen before this returns (so their
    /// errors are plain errors); the command then runs in its own task,
    /// which holds the lock until the snapshot is recorded.
    pub async fn run_stream(
        &self,
        caller: &Caller,
        name: &str,
        req: RunRequest,
    ) -> Result<RunStream, SandboxError> {
        let exec = self.exec_request(&req)?;
        let slot = self.claim_run(caller)?;
        let (row, entry) = self.find_live(caller, name).await?;
        let live = entry.lock_owned().await;
        let (tx, rx) = mpsc::unbounded_channel();
        let this = self.clone();
        tokio::spawn(async move {
            this.stream_run(live, row.id, req.command, exec, (tx, slot))
                .await
        });
        Ok(rx)
    }

    async fn stream_run(
        self,
        mut live: OwnedMutexGuard<Live>,
        sandbox_id: i64,
        command: String,
        exec: ExecRequest,
        (tx, slot): (mpsc::UnboundedSender<RunEvent>, super::RunSlot),
    ) {
        let note = timeout_note(&exec);
        let forward = |stream, data: &[u8]| {
            let _ = tx.send(RunEvent::Output(stream, data.to_vec()));
        };
        let result = self
            .execute(&mut live, sandbox_id, &command, exec, forward, tx.closed())
            .await;
        let event = match result {
            Ok(summary) => {
                if summary.timed_out {
                    let _ = tx.send(RunEvent::Output(Stream::Stderr, note.into_bytes()));
                }
                RunEvent::Finished(summary)
            }
            Err(e) => RunEvent::Failed(e),
        };
        // The run is over for the per-owner cap before its client hears so.
        drop(slot);
        let _ = tx.send(event);
    }

    /// exec (until it ends or `cancel` fires) → snapshot → record, with
    /// `command_started` before and `command_finished`/`_failed` after.
    async fn execute(
        &self,
        live: &mut Live,
        sandbox_id: i64,
        command: &str,
        exec: ExecRequest,
        on_output: impl FnMut(Stream, &[u8]),
        cancel: impl Future<Output = ()>,
    ) -> Result<RunSummary, SandboxError> {
        let (owner, vm) = (live.owner, live.ctx.name.clone());
        let started = EventKind::CommandStarted {
            command: events::capped(command),
        };
        self.events.publish(owner, &vm, started);
        let result = self
            .exec_and_snapshot(live, sandbox_id, command, exec, on_output, cancel)
            .await;
        let ended = match &result {
            Ok(s) => EventKind::CommandFinished {
                command: events::capped(command),
                exit_code: s.exit_code,
                snapshot: s.snapshot.clone(),
                timed_out: s.timed_out,
                exec_ms: s.exec_ms,
            },
            Err(e) => EventKind::CommandFailed {
                command: events::capped(command),
                error: e.to_string(),
            },
        };
        self.events.publish(owner, &vm, ended);
        result
    }

    async fn exec_and_snapshot(
        &self,
        live: &mut Live,
        sandbox_id: i64,
        command: &str,
        mut exec: ExecRequest,
        on_output: impl FnMut(Stream, &[u8]),
        cancel: impl Future<Output = ()>,
    ) -> Result<RunSummary, SandboxError> {
        let mut env = self.egress_env(&live.ctx.name);
        env.append(&mut exec.env);
        exec.env = env;
        let started = Instant::now();
        let status = match exec_or_cancel(live, exec, on_output, cancel).await {
            Ok(status) => status,
            Err(e) => return Err(self.exec_failed(live, sandbox_id, e).await),
        };
        let exec_ms = started.elapsed().as_millis() as u64;
        let exit_code = match status.timed_out {
            true => TIMEOUT_EXIT_CODE,
            false => status.exit_code,
        };
        let snap_started = Instant::now();
        let snapshot = self.snapshot_after(live, command, exit_code).await?;
        Ok(RunSummary {
            exit_code,
            snapshot,
            timed_out: status.timed_out,
            stdout_truncated: status.stdout_truncated,
            stderr_truncated: status.stderr_truncated,
            exec_ms,
            snapshot_ms: snap_started.elapsed().as_millis() as u64,
        })
    }

    /// An exec failed: mark the sandbox failed unless its agent still answers.
    pub(super) async fn exec_failed(
        &self,
        live: &Live,
        sandbox_id: i64,
        e: AgentError,
    ) -> SandboxError {
        let ping = tokio::time::timeout(std::time::Duration::from_secs(3), live.agent.ping()).await;
        if !matches!(ping, Ok(Ok(_))) {
            let reason = match self.runtime.failure(&live.ctx) {
                Some(why) => format!("sandbox died: {why}"),
                None => format!("agent unreachable during run: {e}"),
            };
            self.mark_failed(sandbox_id, reason).await;
        }
        e.into()
    }

    /// The newest snapshot of a sandbox (the state a command starts from).
    async fn latest_snapshot(&self, sandbox_id: i64) -> Result<Option<String>, SandboxError> {
        let rows = self
            .db
            .call(move |c| Db::list_snapshots(c, sandbox_id))
            .await?;
        Ok(rows.into_iter().last().map(|r| r.name))
    }

    /// What changed from snapshot `before` to `after` of the live sandbox.
    /// Best effort: the command ran and its snapshot is recorded, so a
    /// failure here (e.g. retention pruned `before`) is logged and the
    /// run answers without `changes`.
    async fn changes_since(
        &self,
        live: &Live,
        before: &str,
        after: &str,
    ) -> Option<super::ChangeSummary> {
        let names = (
            super::parse_sandbox_name(&live.ctx.name),
            super::parse_snapshot_name("snapshot", before),
            super::parse_snapshot_name("snapshot", after),
        );
        let diffed = match names {
            (Ok(sandbox), Ok(from), Ok(to)) => {
                self.diff_snapshots(&sandbox, &from, &to, None).await
            }
            _ => return None,
        };
        match diffed {
            Ok(diff) => Some(diff.summary(self.config.files.max_change_paths)),
            Err(e) => {
                tracing::warn!(sandbox = %live.ctx.name, from = %before, error = %crate::runtime::chain(&e), "changes of a run could not be computed");
                None
            }
        }
    }

    /// Validate a run request against the config and build the agent request.
    fn exec_request(&self, req: &RunRequest) -> Result<ExecRequest, SandboxError> {
        let e = &self.config.exec;
        let invalid = |field, message: String| Err(SandboxError::Invalid { field, message });
        if req.command.trim().is_empty() {
            return invalid("command", "must not be empty".into());
        }
        if req.command.len() > e.max_command_bytes {
            return invalid(
                "command",
                format!("is longer than {} bytes", e.max_command_bytes),
            );
        }
        if req.command.contains('\0') {
            return invalid("command", "must not contain NUL".into());
        }
        let timeout = req.timeout.unwrap_or(e.default_timeout_secs as f64);
        if !timeout.is_finite() || timeout <= 0.0 || timeout > e.max_timeout_secs as f64 {
            return invalid(
                "timeout",
                format!("must be > 0 and <= {} seconds", e.max_timeout_secs),
            );
        }
        if let Some(bad) = req
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains(['=', '\0']))
        {
            return invalid("env", format!("invalid variable name {bad:?}"));
        }
        if req
            .cwd
            .as_deref()
            .is_some_and(|c| !c.starts_with('/') || c.contains('\0'))
        {
            return invalid("cwd", "must be an absolute path".into());
        }
        Ok(ExecRequest {
            shell: Some(req.command.clone()),
            stdin: self.stdin_bytes(req)?,
            cwd: req.cwd.clone(),
            env: req.env.clone(),
            timeout_ms: Some((timeout * 1000.0) as u64),
            max_output_bytes: Some(e.max_output_bytes),
            ..Default::default()
        })
    }

    /// The decoded `stdin`/`stdinBase64` of a request, within the cap.
    fn stdin_bytes(&self, req: &RunRequest) -> Result<Option<Vec<u8>>, SandboxError> {
        let invalid = |field, message: String| SandboxError::Invalid { field, message };
        let (field, bytes) = match (&req.stdin, &req.stdin_base64) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "stdin",
                    "give stdin or stdinBase64, not both".into(),
                ))
            }
            (Some(text), None) => ("stdin", text.as_bytes().to_vec()),
            (None, Some(b64)) => (
                "stdinBase64",
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| invalid("stdinBase64", format!("is not valid base64: {e}")))?,
            ),
        };
        let cap = self.config.exec.max_stdin_bytes;
        if bytes.len() > cap {
            return Err(invalid(field, format!("is longer than {cap} bytes")));
        }
        Ok(Some(bytes))
    }

    /// Snapshot the workspace as `cmd_<ms>` and record it.
    pub(super) async fn snapshot_after(
        &self,
        live: &mut Live,
        command: &str,
        exit_code: i32,
    ) -> Result<String, SandboxError> {
        let step = Step::Command { command, exit_code };
        self.record_auto_snapshot(live, step).await
    }

    /// quiesce → Btrfs snapshot → thaw. Thaw runs whatever the snapshot did.
    pub(super) async fn take_snapshot(
        &self,
        live: &Live,
        name: &str,
        kind: SnapshotKind,
    ) -> Result<rewind_storage::SnapshotInfo, SandboxError> {
        let snap: SnapshotName = super::parse_snapshot_name("snapshot", name)?;
        let sandbox = super::parse_sandbox_name(&live.ctx.name)?;
        live.agent.quiesce(WATCHDOG).await?;
        let taken = self
            .blocking(move |s| s.snapshot(&sandbox, &snap, kind))
            .await;
        let thawed = live.agent.thaw().await;
        let info = taken?;
        thawed?;
        Ok(info)
    }
}

/// Runs the exec; when `cancel` fires first, kills its process group and
/// waits for it to end (the agent reports the kill as exit code 137).
async fn exec_or_cancel(
    live: &Live,
    exec: ExecRequest,
    mut on_output: impl FnMut(Stream, &[u8]),
    cancel: impl Future<Output = ()>,
) -> Result<ExitStatus, AgentError> {
    let exec_id = OnceLock::new();
    let run = live.agent.exec_events(exec, |event| match event {
        ExecEvent::Started { exec_id: id, .. } => {
            let _ = exec_id.set(id);
        }
        ExecEvent::Output(stream, data) => on_output(stream, data),
    });
    tokio::pin!(run);
    tokio::select! {
        status = &mut run => status,
        () = cancel => {
            let Some(&id) = exec_id.get() else {
                // Not started yet: dropping the connection makes the agent kill it.
                return Err(AgentError::Closed { op: "exec" });
            };
            tracing::info!(exec_id = id, "client went away; killing the command");
            if let Err(e) = live.agent.signal(id, libc::SIGKILL).await {
                tracing::warn!(error = %e, "cannot kill the abandoned command");
            }
            run.await
        }
    }
}

fn never() -> impl Future<Output = ()> {
    std::future::pending()
}

fn timeout_note(exec: &ExecRequest) -> String {
    let secs = exec.timeout_ms.unwrap_or_default() as f64 / 1000.0;
    format!("\n[rewind] command timed out after {secs}s; its process group was killed\n")
}

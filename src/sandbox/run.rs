//! Run one command, then snapshot the workspace: exec → quiesce → Btrfs
//! snapshot → thaw (also on every error path) → snapshot row → response.

use std::collections::BTreeMap;
use std::time::Instant;

use rewind_agent::protocol::ExecRequest;
use rewind_storage::{SnapshotKind, SnapshotName};
use serde::Deserialize;

use super::{Live, SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::{Db, NewSnapshot};

/// How long the agent keeps a workspace frozen if the host vanishes mid-snapshot.
pub const WATCHDOG: std::time::Duration = std::time::Duration::from_secs(10);

/// Exit code reported when the timeout killed the command (as coreutils `timeout`).
pub const TIMEOUT_EXIT_CODE: i32 = 124;

/// Body of `POST /vms/:name/run`.
#[derive(Debug, Deserialize)]
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

impl Sandboxes {
    pub async fn run(
        &self,
        caller: &Caller,
        name: &str,
        req: RunRequest,
    ) -> Result<RunOutput, SandboxError> {
        let mut exec = self.exec_request(&req)?;
        let (row, entry) = self.find_live(caller, name).await?;
        let mut env = self.egress_env(&row.name);
        env.append(&mut exec.env);
        exec.env = env;
        let mut live = entry.lock().await;
        let before = match (req.changes, live.restored_to.clone()) {
            (true, Some(restored)) => Some(restored),
            (true, None) => self.latest_snapshot(live.id).await?,
            (false, _) => None,
        };
        let started = Instant::now();
        let output = match live.agent.exec_collect(exec.clone()).await {
            Ok(out) => out,
            Err(e) => {
                let ping =
                    tokio::time::timeout(std::time::Duration::from_secs(3), live.agent.ping())
                        .await;
                if matches!(ping, Ok(Ok(_))) {
                    return Err(e.into());
                }
                let reason = match self.runtime.failure(&live.ctx) {
                    Some(why) => format!("sandbox died: {why}"),
                    None => format!("agent unreachable during run: {e}"),
                };
                self.mark_failed(row.id, reason).await;
                return Err(e.into());
            }
        };
        let exec_ms = started.elapsed().as_millis() as u64;
        let snap_started = Instant::now();
        let snapshot = self
            .snapshot_after(&mut live, &req.command, output.status.exit_code)
            .await?;
        let snapshot_ms = snap_started.elapsed().as_millis() as u64;
        let changes = match before {
            Some(before) => self.changes_since(&live, &before, &snapshot).await,
            None => None,
        };
        let status = output.status;
        let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if status.timed_out {
            let secs = exec.timeout_ms.unwrap_or_default() as f64 / 1000.0;
            stderr.push_str(&format!(
                "\n[rewind] command timed out after {secs}s; its process group was killed\n"
            ));
        }
        Ok(RunOutput {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr,
            exit_code: if status.timed_out {
                TIMEOUT_EXIT_CODE
            } else {
                status.exit_code
            },
            snapshot,
            timed_out: status.timed_out,
            stdout_truncated: status.stdout_truncated,
            stderr_truncated: status.stderr_truncated,
            exec_ms,
            snapshot_ms,
            changes,
        })
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
            cwd: req.cwd.clone(),
            env: req.env.clone(),
            timeout_ms: Some((timeout * 1000.0) as u64),
            max_output_bytes: Some(e.max_output_bytes),
            ..Default::default()
        })
    }

    /// Snapshot the workspace as `cmd_<ms>` and record it.
    async fn snapshot_after(
        &self,
        live: &mut Live,
        command: &str,
        exit_code: i32,
    ) -> Result<String, SandboxError> {
        let ms = super::now_ms().max(live.last_cmd_ms + 1);
        live.last_cmd_ms = ms;
        live.restored_to = None;
        let name = format!("cmd_{ms}");
        self.take_snapshot(live, &name, SnapshotKind::Auto).await?;
        let new = NewSnapshot {
            name: name.clone(),
            kind: "command",
            command: Some(command.to_owned()),
            exit_code: Some(exit_code),
            created_ms: Some(ms),
            ..Default::default()
        };
        let id = live.id;
        self.db
            .call(move |c| {
                Db::insert_snapshot(c, id, &new)?;
                Db::touch_sandbox(c, id)
            })
            .await?;
        Ok(name)
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

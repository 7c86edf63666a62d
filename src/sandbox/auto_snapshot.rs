//! The automatic snapshot every step leaves (a command, a file change, a
//! wipe): bump the sandbox's step clock, snapshot the workspace as
//! `<prefix>_<ms>`, record its row and touch the sandbox, in that order.

use rewind_storage::SnapshotKind;

use super::{Live, SandboxError, Sandboxes};
use crate::db::{Db, NewSnapshot};

/// The step an automatic snapshot records.
pub(super) enum Step<'a> {
    /// A command (run, REPL cell, terminal session) and its exit code.
    Command { command: &'a str, exit_code: i32 },
    /// A file operation, described (e.g. `upload /workspace/a`).
    File { what: &'a str },
    /// The workspace emptied.
    Wipe,
}

impl Step<'_> {
    /// The name prefix and the row's `kind`.
    fn names(&self) -> (&'static str, &'static str) {
        match self {
            Step::Command { .. } => ("cmd", "command"),
            Step::File { .. } => ("file", "file"),
            Step::Wipe => ("wipe", "wipe"),
        }
    }
}

impl Sandboxes {
    /// Snapshot the workspace after `step` and record it; returns the
    /// snapshot's name. The step clock only moves forward, so names are
    /// unique and ordered even when two steps fall in one millisecond.
    pub(super) async fn record_auto_snapshot(
        &self,
        live: &mut Live,
        step: Step<'_>,
    ) -> Result<String, SandboxError> {
        let ms = super::now_ms().max(live.last_cmd_ms + 1);
        live.last_cmd_ms = ms;
        live.restored_to = None;
        let (prefix, kind) = step.names();
        let name = format!("{prefix}_{ms}");
        self.take_snapshot(live, &name, SnapshotKind::Auto).await?;
        let (command, exit_code) = match step {
            Step::Command { command, exit_code } => (Some(command), Some(exit_code)),
            Step::File { what } => (Some(what), None),
            Step::Wipe => (None, None),
        };
        let new = NewSnapshot {
            name: name.clone(),
            kind,
            command: command.map(str::to_owned),
            exit_code,
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
}

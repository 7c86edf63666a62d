//! Restore a snapshot into a running sandbox: the agent unmounts the
//! workspace (killing its holders) → storage swaps the live subvolume
//! atomically → the runtime puts the new workspace in place → the agent
//! mounts it. Later snapshots stay listed. Refused with 409 while a command
//! runs.

use rewind_storage::SandboxName;

use super::{Live, SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::Db;

impl Sandboxes {
    pub async fn restore(
        &self,
        caller: &Caller,
        name: &str,
        snapshot: &str,
    ) -> Result<(), SandboxError> {
        let snap = super::parse_snapshot_name("snapshot", snapshot)?;
        let (row, entry) = self.find_live(caller, name).await?;
        let Ok(mut live) = entry.try_lock() else {
            return Err(SandboxError::Conflict(format!(
                "VM \"{}\" is busy: a command is running; restore after it finishes",
                row.name
            )));
        };
        let (id, key) = (row.id, snap.to_string());
        let found = self
            .db
            .call(move |c| Db::snapshot_by_name(c, id, &key))
            .await?;
        match found {
            None => {
                return Err(SandboxError::NotFound(format!(
                    "snapshot \"{snap}\" not found"
                )))
            }
            Some(s) if s.missing => {
                return Err(SandboxError::Conflict(format!(
                    "snapshot \"{snap}\" is recorded but its data is missing on disk"
                )))
            }
            Some(_) => {}
        }
        let sandbox = super::parse_sandbox_name(&row.name)?;
        self.swap_workspace(&mut live, &sandbox, move |s, n| s.restore(n, &snap))
            .await?;
        self.db.call(move |c| Db::touch_sandbox(c, id)).await?;
        tracing::info!(sandbox = %row.name, snapshot = %snapshot, "workspace restored");
        Ok(())
    }

    /// The unmount → swap → replace → mount sequence shared by restore and
    /// wipe. If the swap fails, the old workspace is mounted back so the
    /// sandbox stays usable.
    pub(super) async fn swap_workspace<F>(
        &self,
        live: &mut Live,
        sandbox: &SandboxName,
        swap: F,
    ) -> Result<(), SandboxError>
    where
        F: FnOnce(
                &rewind_storage::Storage,
                &SandboxName,
            ) -> Result<(), rewind_storage::StorageError>
            + Send
            + 'static,
    {
        live.agent.unmount_workspace(true).await?;
        let n = sandbox.clone();
        let swapped = self.blocking(move |s| swap(s, &n)).await;
        let state = self
            .runtime
            .replace_workspace(&live.ctx, &live.state)
            .await?;
        live.state = state;
        live.agent.mount_workspace().await?;
        swapped
    }
}

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
        let id = row.id;
        let found = self.snapshot_row(id, &snap, false).await?;
        let with_memory = found.include_memory && self.runtime.supports_memory_snapshots();
        let sandbox = super::parse_sandbox_name(&row.name)?;
        if with_memory {
            self.restore_full(&mut live, &sandbox, &snap).await?;
        } else {
            self.swap_workspace(&mut live, &sandbox, move |s, n| s.restore(n, &snap))
                .await?;
        }
        self.db.call(move |c| Db::touch_sandbox(c, id)).await?;
        tracing::info!(sandbox = %row.name, snapshot = %snapshot, "workspace restored");
        Ok(())
    }

    /// Restore a full (memory) snapshot: stop the VM → restore workspace and
    /// state subvolumes → start it from the saved VM state → new agent
    /// connection. If the start fails the sandbox is marked failed.
    async fn restore_full(
        &self,
        live: &mut Live,
        sandbox: &SandboxName,
        snap: &rewind_storage::SnapshotName,
    ) -> Result<(), SandboxError> {
        let dir = self
            .storage
            .snapshot_aux_path(sandbox, snap)
            .join(super::snapshots::VM_STATE_DIR);
        // A damaged memory image is refused while the sandbox still runs.
        self.runtime.verify_state(&dir).await?;
        self.close_egress(&live.ctx.name);
        self.runtime.stop(&live.ctx, &live.state).await?;
        let (n, s) = (sandbox.clone(), snap.clone());
        let restored = self.blocking(move |st| st.restore(&n, &s)).await;
        let started = match restored {
            Ok(()) => self.runtime.start_from_state(&live.ctx, &dir).await,
            Err(e) => Err(crate::runtime::RuntimeError::Start {
                sandbox: sandbox.to_string(),
                message: format!("storage restore failed: {e}"),
            }),
        };
        let state = match started {
            Ok(state) => state,
            Err(e) => {
                self.mark_failed(live.id, format!("restore of {snap} failed: {e}"))
                    .await;
                return Err(e.into());
            }
        };
        live.agent = self.agent_for(&live.ctx, &state);
        live.state = state.clone();
        self.open_egress(&live.ctx, &live.state).await;
        let id = live.id;
        self.db
            .call(move |c| Db::set_runtime_state(c, id, &state))
            .await?;
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

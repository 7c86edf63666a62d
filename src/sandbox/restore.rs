//! Restore a snapshot into a running sandbox: the agent unmounts the
//! workspace (killing its holders) → storage swaps the live subvolume
//! atomically → the runtime puts the new workspace in place → the agent
//! mounts it. Later snapshots stay listed. Refused with 409 while a command
//! runs.

use std::time::Duration;

use std::sync::{Arc, OnceLock};

use rewind_storage::{SandboxName, Tier};

use super::{Live, SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::Db;
use crate::failpoint;

/// How long a restore waits for the sandbox's lock before answering 409.
const LOCK_GRACE: Duration = Duration::from_millis(200);

impl Sandboxes {
    pub async fn restore(
        &self,
        caller: &Caller,
        name: &str,
        snapshot: &str,
    ) -> Result<Tier, SandboxError> {
        let snap = super::parse_snapshot_name("snapshot", snapshot)?;
        let (row, entry) = self.find_live(caller, name).await?;
        // A brief wait lets a short holder that is not a command (a snapshot
        // listing, a health check's transport copy) finish first.
        let locked = tokio::time::timeout(LOCK_GRACE, entry.lock()).await;
        let Ok(mut live) = locked else {
            return Err(SandboxError::Conflict(format!(
                "VM \"{}\" is busy: a command is running; restore after it finishes",
                row.name
            )));
        };
        let id = row.id;
        let found = self.snapshot_row(id, &snap, false).await?;
        let with_memory = found.include_memory && self.runtime.supports_memory_snapshots();
        if let Some(reason) = with_memory
            .then(|| self.runtime.memory_unavailable())
            .flatten()
        {
            return Err(SandboxError::NotImplemented(format!(
                "snapshot {snap} holds memory: {reason}"
            )));
        }
        let sandbox = super::parse_sandbox_name(&row.name)?;
        // Memory snapshots are kept, so never cold.
        let tier = Arc::new(OnceLock::new());
        if with_memory {
            self.restore_full(&mut live, &sandbox, &snap).await?;
        } else {
            let found = Arc::clone(&tier);
            self.swap_workspace(&mut live, &sandbox, move |s, n| {
                s.restore_tiered(n, &snap).map(|t| {
                    let _ = found.set(t);
                })
            })
            .await?;
        }
        live.restored_to = Some(snapshot.to_owned());
        self.db.call(move |c| Db::touch_sandbox(c, id)).await?;
        let tier = tier.get().copied().unwrap_or(Tier::Hot);
        tracing::info!(sandbox = %row.name, snapshot = %snapshot, ?tier, "workspace restored");
        let restored = crate::events::EventKind::SnapshotRestored {
            snapshot: snapshot.to_owned(),
        };
        self.publish_snapshot(row.owner_key_id, &row.name, restored);
        Ok(tier)
    }

    /// Restore a full (memory) snapshot: stop the VM → restore workspace and
    /// state subvolumes → start it from the saved VM state → new agent
    /// connection. When the storage step fails (the old workspace is intact:
    /// storage restores atomically) the sandbox is started again as it was
    /// and the storage error is returned as such (a vanished snapshot is a
    /// 404, not a 500). If a start fails the sandbox is marked failed.
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
        let started = match &restored {
            Ok(()) => self.runtime.start_from_state(&live.ctx, &dir).await,
            Err(_) => self.runtime.start(&live.ctx).await,
        };
        let state = match started {
            Ok(state) => state,
            Err(e) => {
                let reason = format!("restore of {snap} failed: {}", crate::runtime::chain(&e));
                self.mark_failed(live.id, reason).await;
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
        restored
    }

    /// The unmount → swap → replace → mount sequence shared by restore and
    /// wipe. Whatever fails after the unmount starts, the live workspace —
    /// the old one when the swap failed, the new one when it committed — is
    /// put back ([`Sandboxes::put_workspace_back`], which also checks it is
    /// the live subvolume); if even that fails, the sandbox is marked failed
    /// with the reason, never left running without its workspace. A crash
    /// in between is repaired at startup the same way (`recover.rs`).
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
        let n = sandbox.clone();
        let swapped = async {
            live.agent.unmount_workspace(true).await?;
            failpoint::hit("restore:after_unmount")?;
            self.blocking(move |s| swap(s, &n)).await?;
            failpoint::hit("restore:after_swap")?;
            Ok::<(), SandboxError>(())
        }
        .await;
        let mut put_back = self.put_workspace_back(live).await;
        if let Err(e) = &put_back {
            tracing::warn!(sandbox = %sandbox, error = %crate::runtime::chain(e), "putting the workspace back failed; retrying once");
            put_back = self.put_workspace_back(live).await;
        }
        if let Err(e) = put_back {
            let reason = format!(
                "the workspace could not be put back after a restore: {}",
                crate::runtime::chain(&e)
            );
            self.mark_failed(live.id, reason).await;
            return Err(e);
        }
        swapped
    }
}

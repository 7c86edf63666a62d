//! Restore a snapshot into a running sandbox: the agent unmounts the
//! workspace (killing its holders) → storage swaps the live subvolume
//! atomically → the runtime puts the new workspace in place → the agent
//! mounts it. Later snapshots stay listed. Refused with 409 while a command
//! runs. A stopped sandbox (also one whose memory restore failed) is
//! restored by swapping its storage and starting it from the snapshot.

use std::path::PathBuf;
use std::time::Duration;

use std::sync::{Arc, OnceLock};

use rewind_storage::{SandboxName, SnapshotName, Tier};

use super::{Live, SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::{Db, SandboxStatus, SnapshotRow};
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
        if self.find(caller, name).await?.status == SandboxStatus::Stopped {
            return self.restore_stopped(caller, name, &snap).await;
        }
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
        let with_memory = self.restores_memory(&found, &snap)?;
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

    /// Whether restoring `found` brings back memory too; 501 when it holds
    /// memory this host cannot restore right now (e.g. no CRIU).
    pub(super) fn restores_memory(
        &self,
        found: &SnapshotRow,
        snap: &SnapshotName,
    ) -> Result<bool, SandboxError> {
        let with_memory = found.include_memory && self.runtime.supports_memory_snapshots();
        match with_memory
            .then(|| self.runtime.memory_unavailable())
            .flatten()
        {
            Some(reason) => Err(SandboxError::NotImplemented(format!(
                "snapshot {snap} holds memory: {reason}"
            ))),
            None => Ok(with_memory),
        }
    }

    /// Where a memory snapshot's saved state (VM state, CRIU images) lives.
    fn memory_dir(&self, sandbox: &SandboxName, snap: &SnapshotName) -> PathBuf {
        self.storage
            .snapshot_aux_path(sandbox, snap)
            .join(super::VM_STATE_DIR)
    }

    /// Restore a stopped sandbox: storage first (atomic: on failure the
    /// sandbox stays stopped with its old files), then start it — from the
    /// snapshot's memory image when it has one. A start that fails leaves
    /// it stopped with the reason, still restorable.
    async fn restore_stopped(
        &self,
        caller: &Caller,
        name: &str,
        snap: &SnapshotName,
    ) -> Result<Tier, SandboxError> {
        let _lifecycle = self.lifecycle.lock().await;
        let row = self.find(caller, name).await?;
        if row.status != SandboxStatus::Stopped {
            return Err(SandboxError::Conflict(format!(
                "VM \"{}\" changed state during the restore; try again",
                row.name
            )));
        }
        let found = self.snapshot_row(row.id, snap, false).await?;
        let with_memory = self.restores_memory(&found, snap)?;
        let sandbox = super::parse_sandbox_name(&row.name)?;
        let ctx = self.context_of(&row, &sandbox);
        let dir = self.memory_dir(&sandbox, snap);
        if with_memory {
            self.runtime.verify_state(&dir).await?;
        }
        let (n, s) = (sandbox.clone(), snap.clone());
        let tier = self.blocking(move |st| st.restore_tiered(&n, &s)).await?;
        let started = match with_memory {
            true => self.runtime.start_from_state(&ctx, &dir).await,
            false => self.runtime.start(&ctx).await,
        };
        let state = match started {
            Ok(state) => state,
            Err(e) => {
                self.record_stopped(row.id, &row.name, snap, &e).await;
                return Err(e.into());
            }
        };
        self.record_started(&row, &sandbox, &ctx, state).await?;
        if let Some(entry) = self.entry(&row.name) {
            entry.lock().await.restored_to = Some(snap.to_string());
        }
        let id = row.id;
        self.db.call(move |c| Db::touch_sandbox(c, id)).await?;
        tracing::info!(sandbox = %row.name, snapshot = %snap, ?tier, "stopped sandbox restored and started");
        let restored = crate::events::EventKind::SnapshotRestored {
            snapshot: snap.to_string(),
        };
        self.publish_snapshot(row.owner_key_id, &row.name, restored);
        Ok(tier)
    }

    /// A restore's start failed after the sandbox's processes were stopped:
    /// it is `stopped` (not live), with the reason; a restore of any
    /// snapshot, or a start, brings it back.
    async fn record_stopped(
        &self,
        id: i64,
        name: &str,
        snap: &SnapshotName,
        e: &crate::runtime::RuntimeError,
    ) {
        let reason = format!(
            "restore of {snap} failed: {}; the sandbox is stopped: restore a snapshot or start it",
            crate::runtime::chain(e)
        );
        tracing::error!(sandbox = %name, reason = %reason, "restore failed");
        self.remove_entry(name);
        let recorded = self
            .db
            .call(move |c| {
                Db::set_runtime_state(c, id, &serde_json::Value::Null)?;
                Db::set_sandbox_status(c, id, SandboxStatus::Stopped, Some(&reason))
            })
            .await;
        if let Err(e) = recorded {
            tracing::error!(sandbox = %name, error = %e, "cannot record the failed restore");
        }
    }

    /// Restore a full (memory) snapshot: stop the sandbox → restore
    /// workspace and state subvolumes → start it from the saved state → new
    /// agent connection. When the storage step fails (the old workspace is
    /// intact: storage restores atomically) the sandbox is started again as
    /// it was and the storage error is returned as such (a vanished snapshot
    /// is a 404, not a 500). If a start fails the sandbox is left stopped
    /// with the reason ([`Sandboxes::record_stopped`]): never its old
    /// processes on the new files.
    ///
    /// From the stop on, the sandbox's row names the snapshot
    /// (`restoring_memory`): a restore cut off by a crash is completed at
    /// startup ([`Sandboxes::finish_memory_restore`]).
    pub(super) async fn restore_full(
        &self,
        live: &mut Live,
        sandbox: &SandboxName,
        snap: &SnapshotName,
    ) -> Result<(), SandboxError> {
        let dir = self.memory_dir(sandbox, snap);
        // A damaged memory image is refused while the sandbox still runs.
        self.runtime.verify_state(&dir).await?;
        let (id, name) = (live.id, snap.to_string());
        self.db
            .call(move |c| Db::set_restoring_memory(c, id, Some(&name)))
            .await?;
        let restored = self.stop_and_restore_full(live, sandbox, snap, dir).await;
        let cleared = self
            .db
            .call(move |c| Db::set_restoring_memory(c, id, None))
            .await;
        if let Err(e) = cleared {
            tracing::error!(sandbox = %live.ctx.name, error = %e, "cannot clear the memory restore's record");
        }
        restored
    }

    async fn stop_and_restore_full(
        &self,
        live: &mut Live,
        sandbox: &SandboxName,
        snap: &SnapshotName,
        dir: PathBuf,
    ) -> Result<(), SandboxError> {
        self.close_egress(&live.ctx.name);
        let t = std::time::Instant::now();
        self.runtime
            .stop_for_restore(&live.ctx, &live.state)
            .await?;
        failpoint::crash("memory_restore:after_stop");
        let stopped = t.elapsed();
        let (n, s) = (sandbox.clone(), snap.clone());
        let restored = self.blocking(move |st| st.restore(&n, &s)).await;
        failpoint::crash("memory_restore:after_storage");
        let swapped = t.elapsed();
        let started = match &restored {
            Ok(()) => self.runtime.start_from_state(&live.ctx, &dir).await,
            Err(_) => self.runtime.start(&live.ctx).await,
        };
        let state = match started {
            Ok(state) => state,
            Err(e) => {
                self.record_stopped(live.id, &live.ctx.name, snap, &e).await;
                return Err(e.into());
            }
        };
        failpoint::crash("memory_restore:after_start");
        tracing::debug!(
            sandbox = %live.ctx.name,
            stop_ms = stopped.as_millis() as u64,
            storage_ms = (swapped - stopped).as_millis() as u64,
            start_ms = (t.elapsed() - swapped).as_millis() as u64,
            "memory restore"
        );
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

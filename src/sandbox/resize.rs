//! Change a sandbox's sizes: vCPUs (and the CPU quota of that many cores),
//! memory, disk limit. Serialised with stop/start (the lifecycle lock), not
//! with commands: a command keeps running while its limits change.
//!
//! Order, so that a failure changes nothing: check the disk limit can be
//! changed → the runtime's live resize (memory first; refused = nothing
//! changed) → the disk qgroup's limit (on failure the old CPU and memory
//! limits are put back) → the recorded spec, which every later start uses.

use super::{parse_sandbox_name, SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::{Db, SandboxRow, SandboxStatus};
use crate::runtime::{Applied, RuntimeError};

/// New sizes; `None` keeps the current one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resize {
    pub vcpus: Option<u32>,
    pub memory_mb: Option<u64>,
    pub disk_gb: Option<u64>,
}

/// What took effect when: one entry per size that was asked for.
#[derive(Debug, Clone)]
pub struct ResizeOutcome {
    pub row: SandboxRow,
    pub vcpus: Option<Applied>,
    pub memory_mb: Option<Applied>,
    pub disk_gb: Option<Applied>,
}

impl Sandboxes {
    pub async fn resize(
        &self,
        caller: &Caller,
        name: &str,
        req: Resize,
    ) -> Result<ResizeOutcome, SandboxError> {
        let _lifecycle = self.lifecycle.lock().await;
        let row = self.find(caller, name).await?;
        let sandbox = parse_sandbox_name(&row.name)?;
        let disk_bytes = self.new_disk_limit(&row, req.disk_gb).await?;
        let mut resized = row.clone();
        resized.spec.vcpus = req.vcpus.or(row.spec.vcpus);
        resized.spec.memory_mb = req.memory_mb.or(row.spec.memory_mb);
        resized.spec.disk_gb = req.disk_gb.or(row.spec.disk_gb);
        let live = self.resize_live(&row, &resized, &sandbox).await?;
        if let Some(bytes) = disk_bytes {
            let sb = sandbox.clone();
            if let Err(e) = self.blocking(move |s| s.set_disk_limit(&sb, bytes)).await {
                // Put the old CPU and memory limits back (best effort).
                if let Err(undo) = self.resize_live(&row, &row, &sandbox).await {
                    tracing::error!(sandbox = %row.name, error = %undo, "rollback of a resize failed");
                }
                return Err(e);
            }
        }
        let (id, spec) = (row.id, resized.spec.clone());
        self.db
            .call(move |c| Db::set_sandbox_spec(c, id, &spec))
            .await?;
        tracing::info!(sandbox = %row.name, ?req, "sandbox resized");
        let row = self.find(caller, name).await?;
        Ok(ResizeOutcome {
            row,
            vcpus: req.vcpus.map(|_| live.cpu),
            memory_mb: req.memory_mb.map(|_| live.memory),
            disk_gb: disk_bytes.map(|_| Applied::Now),
        })
    }

    /// The new disk limit in bytes (checked like a create's), after making
    /// sure the sandbox has a limit to change.
    async fn new_disk_limit(
        &self,
        row: &SandboxRow,
        disk_gb: Option<u64>,
    ) -> Result<Option<u64>, SandboxError> {
        let Some(gb) = disk_gb else {
            return Ok(None);
        };
        let mb = i64::try_from(gb.saturating_mul(1024)).unwrap_or(i64::MAX);
        let bytes = self
            .disk_limit_bytes(Some(mb))
            .map_err(|e| match e {
                SandboxError::Invalid { message, .. } => SandboxError::Invalid {
                    field: "disk_size_gb",
                    message,
                },
                other => other,
            })?
            .unwrap_or_default();
        if self.disk(&row.name).await?.is_none() {
            return Err(SandboxError::Conflict(format!(
                "VM \"{}\" has no disk limit to change (created while disk limits were off, \
                 or this kernel has no Btrfs simple quotas)",
                row.name
            )));
        }
        Ok(Some(bytes))
    }

    /// Ask the runtime to apply the new CPU and memory limits to the running
    /// sandbox; a stopped one gets them at its next start.
    async fn resize_live(
        &self,
        row: &SandboxRow,
        resized: &SandboxRow,
        sandbox: &rewind_storage::SandboxName,
    ) -> Result<crate::runtime::Resized, SandboxError> {
        if row.status != SandboxStatus::Running {
            let reason = format!("the VM is {}; it starts with them", row.status.as_str());
            let later = Applied::AfterRestart { reason };
            return Ok(crate::runtime::Resized {
                cpu: later.clone(),
                memory: later,
            });
        }
        let ctx = self.context_of(resized, sandbox);
        let live = self.runtime.resize(&ctx, &row.runtime_state, &ctx.limits);
        live.await.map_err(|e| match e {
            RuntimeError::Resize { .. } => SandboxError::Conflict(format!(
                "the new limits cannot be applied to the running VM (nothing changed): {}",
                crate::runtime::chain(&e)
            )),
            other => other.into(),
        })
    }
}

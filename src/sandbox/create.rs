//! Create a sandbox: database row → workspace subvolume → runtime → the
//! `initial` snapshot. Any failure rolls every earlier step back.

use rewind_storage::{CreateOptions, SandboxName, SnapshotKind, SnapshotName};

use super::{parse_sandbox_name, SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::{Db, NewSnapshot, SandboxRow, SandboxStatus};

/// Name of the snapshot every sandbox starts with.
pub const INITIAL: &str = "initial";

impl Sandboxes {
    pub async fn create(&self, caller: &Caller, name: &str) -> Result<SandboxRow, SandboxError> {
        let name = parse_sandbox_name(name)?;
        let (key, owner, runtime) = (
            name.to_string(),
            caller.key_id,
            self.runtime.kind().as_str(),
        );
        let row = self
            .db
            .call(move |c| Db::insert_sandbox(c, &key, owner, runtime))
            .await
            .map_err(|e| match e {
                crate::db::DbError::Conflict { .. } => {
                    SandboxError::Conflict(format!("VM \"{name}\" already exists"))
                }
                other => other.into(),
            })?;
        match self.provision(&row, &name).await {
            Ok(row) => Ok(row),
            Err(e) => {
                self.rollback_create(&row, &name).await;
                Err(e)
            }
        }
    }

    async fn provision(
        &self,
        row: &SandboxRow,
        name: &SandboxName,
    ) -> Result<SandboxRow, SandboxError> {
        let opts = CreateOptions {
            template: None,
            owner: self.runtime.workspace_owner(),
        };
        let n = name.clone();
        self.blocking(move |s| s.create_workspace(&n, &opts))
            .await?;
        let ctx = self.context(name);
        let state = self.runtime.start(&ctx).await?;
        match self.finish_create(row, name, state.clone()).await {
            Ok(row) => Ok(row),
            Err(e) => {
                if let Err(stop) = self.runtime.stop(&ctx, &state).await {
                    tracing::error!(sandbox = %name, error = %stop, "rollback: runtime stop failed");
                }
                Err(e)
            }
        }
    }

    async fn finish_create(
        &self,
        row: &SandboxRow,
        name: &SandboxName,
        state: crate::runtime::RuntimeState,
    ) -> Result<SandboxRow, SandboxError> {
        let live = self.new_live(row, name, state.clone());
        self.snapshot_initial(&live, name).await?;
        let id = row.id;
        let row = self
            .db
            .call(move |c| {
                Db::set_runtime_state(c, id, &state)?;
                Db::set_sandbox_status(c, id, SandboxStatus::Running, None)?;
                Db::sandbox_by_id(c, id)
            })
            .await?
            .ok_or_else(|| SandboxError::NotFound(format!("VM \"{name}\" vanished")))?;
        self.insert_entry(&row.name, live);
        tracing::info!(sandbox = %name, runtime = self.runtime.kind().as_str(), "sandbox created");
        Ok(row)
    }

    async fn snapshot_initial(
        &self,
        live: &super::Live,
        name: &SandboxName,
    ) -> Result<(), SandboxError> {
        let snap: SnapshotName = INITIAL.parse().map_err(|_| SandboxError::Invalid {
            field: "snapshot",
            message: "bad initial name".into(),
        })?;
        live.agent.quiesce(super::run::WATCHDOG).await?;
        let n = name.clone();
        let taken = self
            .blocking(move |s| s.snapshot(&n, &snap, SnapshotKind::Kept))
            .await;
        live.agent.thaw().await?;
        let info = taken?;
        let id = live.id;
        let new = NewSnapshot {
            name: INITIAL.into(),
            kind: "initial",
            created_ms: Some(system_ms(info.created)),
            ..Default::default()
        };
        self.db
            .call(move |c| Db::insert_snapshot(c, id, &new))
            .await?;
        Ok(())
    }

    pub(super) async fn rollback_create(&self, row: &SandboxRow, name: &SandboxName) {
        tracing::warn!(sandbox = %name, "sandbox creation failed; rolling back");
        let n = name.clone();
        if let Err(e) = self.blocking(move |s| s.delete_sandbox(&n)).await {
            tracing::warn!(sandbox = %name, error = %e, "rollback: storage delete");
        }
        let id = row.id;
        if let Err(e) = self.db.call(move |c| Db::delete_sandbox(c, id)).await {
            tracing::error!(sandbox = %name, error = %e, "rollback: row delete failed");
        }
    }
}

/// A `SystemTime` as unix milliseconds.
pub fn system_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

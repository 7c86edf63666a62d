//! Delete a sandbox: mark it `deleting` (so a crash mid-way is finished at
//! startup) → close its port forwards → stop the runtime → delete its
//! subvolumes → delete its rows.

use super::{SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::{Db, SandboxRow, SandboxStatus};

impl Sandboxes {
    pub async fn delete(&self, caller: &Caller, name: &str) -> Result<(), SandboxError> {
        let row = self.find(caller, name).await?;
        // Wait for a running command to finish (a terminal session is told
        // to end now), then keep the lock to the end.
        self.terminals.hang_up(&row.name);
        let entry = self.entry(&row.name);
        let _guard = match &entry {
            Some(e) => Some(e.lock().await),
            None => None,
        };
        let id = row.id;
        self.db
            .call(move |c| Db::set_sandbox_status(c, id, SandboxStatus::Deleting, None))
            .await?;
        self.finish_delete(&row).await?;
        self.publish_deleted(&row);
        Ok(())
    }

    /// Stop, delete storage, delete rows. Also used by startup recovery.
    pub(super) async fn finish_delete(&self, row: &SandboxRow) -> Result<(), SandboxError> {
        let sandbox = super::parse_sandbox_name(&row.name)?;
        let ctx = self.context(&sandbox);
        self.close_forwards_of(row.id);
        self.close_egress(&row.name);
        self.runtime.stop(&ctx, &row.runtime_state).await?;
        let n = sandbox.clone();
        let deleted = self.blocking(move |s| s.delete_sandbox(&n)).await;
        match deleted {
            Ok(()) | Err(SandboxError::Storage(rewind_storage::StorageError::NotFound { .. })) => {}
            Err(e) => return Err(e),
        }
        let id = row.id;
        self.db.call(move |c| Db::delete_sandbox(c, id)).await?;
        self.remove_entry(&row.name);
        tracing::info!(sandbox = %row.name, "sandbox deleted");
        Ok(())
    }
}

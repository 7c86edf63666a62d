//! Stop a sandbox: wait for its running command (the sandbox lock) → close
//! its egress proxy → the runtime ends every process ([`StopMode::Force`]:
//! at once — namespace: PID 1, which takes its PID namespace along, then
//! whatever is left in its cgroups; Cloud Hypervisor: the VMM.
//! [`StopMode::Graceful`]: SIGTERM first and a bounded wait, see
//! [`crate::runtime::Runtime::stop_gracefully`]) → status `stopped`. The
//! workspace, snapshots and port-forward rows are kept; [`Sandboxes::start`]
//! boots it again on the current workspace.

use std::time::Duration;

use serde_json::Value;

use super::{SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::{Db, SandboxRow, SandboxStatus};

/// How [`Sandboxes::stop_with`] ends the sandbox's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGKILL at once (the native `POST /vms/:name/stop`).
    Force,
    /// SIGTERM, up to this long for them to exit, then SIGKILL.
    Graceful(Duration),
}

impl Sandboxes {
    /// Stop at once ([`StopMode::Force`]).
    pub async fn stop(&self, caller: &Caller, name: &str) -> Result<SandboxRow, SandboxError> {
        self.stop_with(caller, name, StopMode::Force).await
    }

    pub async fn stop_with(
        &self,
        caller: &Caller,
        name: &str,
        mode: StopMode,
    ) -> Result<SandboxRow, SandboxError> {
        let _lifecycle = self.lifecycle.lock().await;
        let row = self.find(caller, name).await?;
        if !matches!(row.status, SandboxStatus::Running | SandboxStatus::Failed) {
            return Err(SandboxError::Conflict(format!(
                "VM \"{}\" is {}, not running",
                row.name,
                row.status.as_str()
            )));
        }
        let old_status = row.status;
        let entry = self.entry(&row.name);
        let _guard = match &entry {
            Some(e) => Some(e.lock().await),
            None => None,
        };
        let sandbox = super::parse_sandbox_name(&row.name)?;
        let ctx = self.context_of(&row, &sandbox);
        self.close_egress(&row.name);
        match mode {
            StopMode::Force => self.runtime.stop(&ctx, &row.runtime_state).await?,
            StopMode::Graceful(grace) => {
                self.runtime
                    .stop_gracefully(&ctx, &row.runtime_state, grace)
                    .await?
            }
        }
        self.remove_entry(&row.name);
        let id = row.id;
        let row = self
            .db
            .call(move |c| {
                Db::set_runtime_state(c, id, &Value::Null)?;
                Db::set_sandbox_status(c, id, SandboxStatus::Stopped, None)?;
                Db::sandbox_by_id(c, id)
            })
            .await?
            .ok_or_else(|| SandboxError::NotFound(format!("VM \"{name}\" vanished")))?;
        tracing::info!(sandbox = %row.name, "sandbox stopped");
        self.publish_status(&row, old_status, row.status);
        Ok(row)
    }
}

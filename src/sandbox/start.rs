//! Start a stopped sandbox: the runtime boots it again on the current
//! workspace (the subvolume as the last command or restore left it) →
//! status `running` → its egress proxy reopens. Processes and memory of
//! before the stop are gone; files are not.

use rewind_storage::SandboxName;

use super::{SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::{Db, SandboxRow, SandboxStatus};
use crate::runtime::{RuntimeState, SandboxContext};

impl Sandboxes {
    pub async fn start(&self, caller: &Caller, name: &str) -> Result<SandboxRow, SandboxError> {
        let _lifecycle = self.lifecycle.lock().await;
        let row = self.find(caller, name).await?;
        if row.status != SandboxStatus::Stopped {
            return Err(SandboxError::Conflict(format!(
                "VM \"{}\" is {}, not stopped",
                row.name,
                row.status.as_str()
            )));
        }
        let sandbox = super::parse_sandbox_name(&row.name)?;
        let ctx = self.context_of(&row, &sandbox);
        let state = self.runtime.start(&ctx).await?;
        self.record_started(&row, &sandbox, &ctx, state).await?;
        tracing::info!(sandbox = %row.name, "sandbox started");
        self.find(caller, name).await
    }

    /// A stopped sandbox's runtime now runs in `state` (started, or started
    /// from a memory image): record it as running, make it live and reopen
    /// its egress proxy. When the database refuses, the runtime is stopped
    /// again and the sandbox stays stopped. Called under the lifecycle lock.
    pub(super) async fn record_started(
        &self,
        row: &SandboxRow,
        sandbox: &SandboxName,
        ctx: &SandboxContext,
        state: RuntimeState,
    ) -> Result<(), SandboxError> {
        let (id, saved) = (row.id, state.clone());
        let recorded = self
            .db
            .call(move |c| {
                Db::set_runtime_state(c, id, &saved)?;
                Db::set_sandbox_status(c, id, SandboxStatus::Running, None)?;
                Db::last_command_ms(c, id)
            })
            .await;
        let last = match recorded {
            Ok(last) => last,
            Err(e) => {
                if let Err(stop) = self.runtime.stop(ctx, &state).await {
                    tracing::error!(sandbox = %row.name, error = %stop, "rollback: runtime stop failed");
                }
                return Err(e.into());
            }
        };
        let mut live = self.new_live(row, sandbox, state);
        live.last_cmd_ms = last;
        self.open_egress(&live.ctx, &live.state).await;
        self.insert_entry(&row.name, live);
        self.publish_status(row, SandboxStatus::Stopped, SandboxStatus::Running);
        Ok(())
    }

    /// Stop, then start.
    pub async fn restart(&self, caller: &Caller, name: &str) -> Result<SandboxRow, SandboxError> {
        let row = self.find(caller, name).await?;
        if row.status != SandboxStatus::Stopped {
            self.stop(caller, name).await?;
        }
        self.start(caller, name).await
    }
}
